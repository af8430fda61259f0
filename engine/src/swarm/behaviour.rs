//! The libp2p stack: TCP (nodelay) → optional pnet (swarm key) → noise → yamux, and the
//! composed behaviour (gossipsub for heads, the block exchange, identify, ping, optional mDNS).
//!
//! With a swarm key every connection starts with the pnet handshake: a node with another key (or
//! none) cannot complete it, so it never gets to noise, let alone to our protocols.

use std::time::Duration;

use futures::future::Either;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{gossipsub, identify, mdns, noise, ping, tcp, yamux, PeerId, Transport};
use sha2::Digest;

use super::gossip::MAX_MESSAGE;
use crate::exchange;

/// Errors building the stack.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("noise setup failed: {0}")]
    Noise(#[source] noise::Error),
    #[error("gossipsub setup failed: {0}")]
    Gossipsub(String),
    #[error("mDNS setup failed (run with --no-mdns to go without): {0}")]
    Mdns(#[source] std::io::Error),
}

/// Everything the swarm speaks.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub gossipsub: gossipsub::Behaviour,
    pub exchange: exchange::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
}

/// Ping period; a failed ping closes the connection (the bootstrap redial then takes over).
pub const PING_INTERVAL: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(10);

impl Behaviour {
    pub fn new(key: &Keypair, mdns_on: bool) -> Result<Self, BuildError> {
        let peer_id = key.public().to_peer_id();
        // Anonymous: a head is signed by its source already (checked before anything uses or
        // forwards it), so gossipsub's own per-message signature would only cost an ed25519
        // sign per publish and a verify per received copy (duplicates included) — at 10
        // nodes the largest CPU cost of the whole node.
        let gossip_cfg = gossipsub::ConfigBuilder::default()
            .validation_mode(gossipsub::ValidationMode::Anonymous)
            .validate_messages()
            .max_transmit_size(MAX_MESSAGE)
            .heartbeat_interval(Duration::from_secs(1))
            // Content-addressed ids: the same head relayed twice is one message.
            .message_id_fn(|m: &gossipsub::Message| {
                gossipsub::MessageId::from(&sha2::Sha256::digest(&m.data)[..16])
            })
            .build()
            .map_err(|e| BuildError::Gossipsub(e.to_string()))?;
        let gossipsub =
            gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, gossip_cfg)
                .map_err(|e| BuildError::Gossipsub(e.to_string()))?;
        let identify = identify::Behaviour::new(
            identify::Config::new("/shoal/id/1".into(), key.public())
                .with_agent_version(format!("shoal/{}", env!("CARGO_PKG_VERSION"))),
        );
        let ping = ping::Behaviour::new(
            ping::Config::new()
                .with_interval(PING_INTERVAL)
                .with_timeout(PING_TIMEOUT),
        );
        let mdns = if mdns_on {
            Some(
                mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)
                    .map_err(BuildError::Mdns)?,
            )
        } else {
            None
        };
        Ok(Self {
            gossipsub,
            exchange: exchange::behaviour(),
            identify,
            ping,
            mdns: mdns.into(),
        })
    }
}

fn pnet_error(e: libp2p::pnet::PnetError) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// TCP + (pnet) + noise + yamux.
pub fn transport(
    key: &Keypair,
    psk: Option<PreSharedKey>,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, BuildError> {
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
    let base = tcp.and_then(move |socket, _| async move {
        match psk {
            Some(psk) => PnetConfig::new(psk)
                .handshake(socket)
                .await
                .map(Either::Left)
                .map_err(pnet_error),
            None => Ok(Either::Right(socket)),
        }
    });
    let noise = noise::Config::new(key).map_err(BuildError::Noise)?;
    Ok(base
        .upgrade(Version::V1Lazy)
        .authenticate(noise)
        .multiplex(yamux::Config::default())
        .timeout(Duration::from_secs(20))
        .boxed())
}
