//! The libp2p stack: TCP (nodelay, keep-alive) → optional pnet (swarm key) → noise → yamux, and
//! the composed behaviour (gossipsub for heads, the block exchanges `/shoal/exchange/1` and
//! Bitswap, identify, ping, optional mDNS).
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
use libp2p::{
    connection_limits, gossipsub, identify, mdns, noise, ping, tcp, yamux, PeerId, Transport,
};
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
    /// First, so a connection over the limits is denied before any other behaviour sets up
    /// anything for it.
    pub limits: connection_limits::Behaviour,
    pub gossipsub: gossipsub::Behaviour,
    pub exchange: exchange::Behaviour,
    pub bitswap: exchange::bitswap::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
}

/// Connections being set up at once, accepted (anyone reaching the port can open them) and
/// dialled (the redial list and mDNS are capped already).
pub const MAX_PENDING_INCOMING: u32 = 32;
pub const MAX_PENDING_OUTGOING: u32 = 64;
/// Established connections in all, and accepted ones: a shop floor's swarm is far smaller; a
/// peer minting identities cannot take more.
pub const MAX_ESTABLISHED: u32 = 256;
pub const MAX_ESTABLISHED_INCOMING: u32 = 192;
/// Connections to one peer: two nodes dialling each other at once make two; a few more cover
/// redials racing a reconnect.
pub const MAX_CONNECTIONS_PER_PEER: u32 = 4;

fn limits() -> connection_limits::Behaviour {
    connection_limits::Behaviour::new(
        connection_limits::ConnectionLimits::default()
            .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
            .with_max_pending_outgoing(Some(MAX_PENDING_OUTGOING))
            .with_max_established(Some(MAX_ESTABLISHED))
            .with_max_established_incoming(Some(MAX_ESTABLISHED_INCOMING))
            .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER)),
    )
}

/// Gossip score below which a peer's messages are dropped unread (gossipsub's graylist).
pub const GRAYLIST_THRESHOLD: f64 = -80.0;

/// Gossipsub peer scoring that counts only invalid messages (P4: a head whose signature or
/// inline block fails, or a node status whose signature fails, reported `Reject` by the swarm task),
/// on both topics. Each costs `10 · count²`, so
/// a third invalid message in a short time puts the sender below [`GRAYLIST_THRESHOLD`] and
/// gossipsub ignores it; the count halves every second, so a peer that stops recovers within
/// seconds. The other score parts are off: delivery-rate penalties would hurt honest quiet or
/// slow devices, and IP colocation would hurt every test swarm on 127.0.0.1. An honest peer
/// never relays an invalid message (it validates before forwarding), so it is never penalised.
fn gossip_scoring(
    topics: &[gossipsub::TopicHash],
) -> (gossipsub::PeerScoreParams, gossipsub::PeerScoreThresholds) {
    let topic_params = gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.0,
        first_message_deliveries_weight: 0.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -10.0,
        invalid_message_deliveries_decay: 0.5,
        ..gossipsub::TopicScoreParams::default()
    };
    let params = gossipsub::PeerScoreParams {
        topics: topics
            .iter()
            .map(|t| (t.clone(), topic_params.clone()))
            .collect(),
        app_specific_weight: 0.0,
        ip_colocation_factor_weight: 0.0,
        behaviour_penalty_weight: 0.0,
        slow_peer_weight: 0.0,
        decay_interval: Duration::from_secs(1),
        ..gossipsub::PeerScoreParams::default()
    };
    let thresholds = gossipsub::PeerScoreThresholds {
        gossip_threshold: -10.0,
        publish_threshold: -50.0,
        graylist_threshold: GRAYLIST_THRESHOLD,
        ..gossipsub::PeerScoreThresholds::default()
    };
    (params, thresholds)
}

/// Ping period; a failed ping closes the connection (the bootstrap redial then takes over).
/// A peer that runs no ping (IPFS nodes such as Helia) is kept: TCP keep-alive
/// ([`KEEPALIVE_IDLE`]) and a bound on unacknowledged data ([`TCP_USER_TIMEOUT`]) close its
/// connection once it is dead.
pub const PING_INTERVAL: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection idle this long is probed by TCP keep-alive (every [`KEEPALIVE_INTERVAL`], up to
/// [`KEEPALIVE_PROBES`] times, then closed by the kernel).
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(15);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_PROBES: u32 = 3;
/// Data unacknowledged for this long closes the connection (instead of minutes of
/// retransmissions to a peer that is gone).
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// Turns on keep-alive probes and the user timeout; a socket that refuses keeps the defaults.
fn keep_alive(socket: &tcp::tokio::TcpStream) {
    let sock = socket2::SockRef::from(&socket.0);
    let params = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    if let Err(e) = sock
        .set_tcp_keepalive(&params)
        .and_then(|()| sock.set_tcp_user_timeout(Some(TCP_USER_TIMEOUT)))
    {
        tracing::debug!(error = %e, "cannot set TCP keep-alive");
    }
}

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
        let mut gossipsub =
            gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, gossip_cfg)
                .map_err(|e| BuildError::Gossipsub(e.to_string()))?;
        let (params, thresholds) = gossip_scoring(&[
            gossipsub::IdentTopic::new(super::gossip::TOPIC).hash(),
            gossipsub::IdentTopic::new(crate::status::TOPIC).hash(),
        ]);
        gossipsub
            .with_peer_score(params, thresholds)
            .map_err(BuildError::Gossipsub)?;
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
            limits: limits(),
            gossipsub,
            exchange: exchange::behaviour(),
            bitswap: exchange::bitswap::Behaviour::new(),
            identify,
            ping,
            mdns: mdns.into(),
        })
    }
}

fn pnet_error(e: libp2p::pnet::PnetError) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Streams per connection yamux accepts, chosen for what it does to the receive windows (which
/// libp2p-yamux does not let us set directly): yamux grows a stream's window beyond its 256 KiB
/// only out of 1 GiB − streams × 256 KiB per connection, here 768 KiB, so no stream's window
/// exceeds 1 MiB. js-libp2p's yamux (Helia) sends a stream's whole window as one frame, and
/// rust yamux drops the connection on a frame over 1 MiB ("frame body is too large"): with
/// larger windows an IPFS peer sending us blocks lost its connection within seconds. 1 MiB per
/// stream is ample on a LAN (1 GB/s at 1 ms). `SHOAL_YAMUX_WINDOWS=uncapped` leaves yamux's
/// default (a measuring knob for BENCHMARKS.md, not a setting: IPFS peers then lose their
/// connections).
const YAMUX_MAX_STREAMS: usize = 4093;

/// TCP + (pnet) + noise + yamux.
pub fn transport(
    key: &Keypair,
    psk: Option<PreSharedKey>,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, BuildError> {
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
    let base = tcp.and_then(move |socket, _| async move {
        keep_alive(&socket);
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
    let mut muxer = yamux::Config::default();
    if std::env::var("SHOAL_YAMUX_WINDOWS").as_deref() != Ok("uncapped") {
        muxer.set_max_num_streams(YAMUX_MAX_STREAMS);
    }
    Ok(base
        .upgrade(Version::V1Lazy)
        .authenticate(noise)
        .multiplex(muxer)
        .timeout(Duration::from_secs(20))
        .boxed())
}
