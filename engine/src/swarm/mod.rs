//! The swarm: one task owns the libp2p `Swarm` (see `task.rs`) and talks to the rest of the
//! node only through messages.
//!
//! ```text
//!   replication ──Command──▶ [swarm task] ──Event::Head──▶ replication
//!   (Publish, Stored,          owns Swarm,          (verified heads, inline blocks)
//!    Fetch → FetchEvents)      Fetcher, heads
//!                                 │ Want from a peer
//!                                 ▼
//!                       spawn_blocking(BlockSource)   (bounded by a semaphore)
//! ```
//!
//! The task touches no SQLite: blocks for peers are read by blocking workers through
//! [`crate::exchange::BlockSource`]; received heads and blocks go out as [`Event`]s and
//! [`crate::exchange::FetchEvent`]s. Every head is verified (signature by the claimed source)
//! before gossipsub may forward it or anyone sees it. All channels are bounded; a full event
//! channel drops the head (the periodic digest brings it back).
//!
//! Membership: TCP + optional pnet swarm key + noise + yamux; identify; ping (a failed ping
//! closes the connection); mDNS unless disabled; `--peer` addresses redialled with exponential
//! backoff (1 s to 30 s) whenever not connected.

mod behaviour;
pub mod gossip;
mod task;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use cid::Cid;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::pnet::PreSharedKey;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use behaviour::BuildError;
pub(crate) use task::age_ms;

use crate::exchange::{BlockSource, FetchEvent};
use crate::head::SignedHead;

/// Swarm settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub keypair: Keypair,
    /// Listen addresses (e.g. `/ip4/0.0.0.0/tcp/4001`).
    pub listen: Vec<Multiaddr>,
    /// Bootstrap peers, redialled with backoff.
    pub peers: Vec<Multiaddr>,
    /// Pre-shared swarm key; nodes with another key cannot connect.
    pub swarm_key: Option<PreSharedKey>,
    pub mdns: bool,
    /// How often each connected peer is sent our digest (catch-up, multi-hop).
    pub digest_interval: Duration,
}

impl Config {
    pub fn new(keypair: Keypair) -> Self {
        Self {
            keypair,
            listen: vec![],
            peers: vec![],
            swarm_key: None,
            mdns: true,
            digest_interval: Duration::from_secs(5),
        }
    }
}

/// Errors of the swarm.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("the swarm task has stopped")]
    Stopped,
    #[error("cannot read swarm key {path}: {reason}")]
    SwarmKey { path: String, reason: String },
}

/// What the rest of the node asks of the swarm.
#[derive(Debug)]
pub enum Command {
    /// A local append: gossip the head (with its new blocks inline when small) and serve it.
    Publish {
        head: SignedHead,
        blocks: Vec<(Cid, Vec<u8>)>,
    },
    /// The tree of this head is now stored here: answer digests with it.
    Stored(SignedHead),
    /// Fetch these blocks (verified) into `reply`; dropping the receiver cancels.
    Fetch {
        cids: Vec<Cid>,
        preferred: Vec<PeerId>,
        reply: mpsc::Sender<FetchEvent>,
    },
    /// Dial an address once.
    Dial(Multiaddr),
}

/// What the swarm tells replication.
#[derive(Debug)]
pub enum Event {
    /// A verified head from the network (gossip or a digest answer), with verified inline blocks.
    Head {
        head: SignedHead,
        blocks: Vec<(Cid, Vec<u8>)>,
        from: PeerId,
    },
}

/// A peer as the node API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub peer_id: PeerId,
    pub addrs: Vec<Multiaddr>,
    pub connected: bool,
    pub last_seen: SystemTime,
    /// Highest offset of this node's own events the peer stores, from the peer's last digest
    /// (sent on connect and every `digest_interval`; kept after it disconnects).
    pub our_offset_stored: Option<u64>,
}

/// State the task publishes for readers (small; the lock is never held across `.await`).
#[derive(Debug, Default)]
pub(crate) struct Shared {
    listen: Vec<Multiaddr>,
    peers: BTreeMap<PeerId, PeerInfo>,
    /// Highest offset per source known from verified heads (may be ahead of what is stored).
    known: BTreeMap<PeerId, u64>,
}

/// A handle to the swarm task; cheap to clone. The task stops when every handle is dropped.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    shared: Arc<Mutex<Shared>>,
    local: PeerId,
}

impl Handle {
    /// Sends a command, waiting for room. Dropping the future is safe (nothing was sent).
    pub async fn send(&self, cmd: Command) -> Result<(), Error> {
        self.tx.send(cmd).await.map_err(|_| Error::Stopped)
    }

    pub fn local_peer_id(&self) -> PeerId {
        self.local
    }

    /// Whether the swarm task still runs: it drops its command receiver when it ends, after
    /// shutdown or a panic (health check).
    pub fn is_running(&self) -> bool {
        !self.tx.is_closed()
    }

    fn read<T>(&self, f: impl FnOnce(&Shared) -> T) -> T {
        match self.shared.lock() {
            Ok(g) => f(&g),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    /// Addresses the swarm listens on.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.read(|s| s.listen.clone())
    }

    /// An address another node can dial, ending in `/p2p/<id>`: loopback if we listen on it
    /// (as with 0.0.0.0), else the first concrete listen address.
    pub fn dialable_addr(&self) -> Option<Multiaddr> {
        let addrs = self.listen_addrs();
        let is_loopback = |a: &Multiaddr| {
            a.iter()
                .any(|p| matches!(p, Protocol::Ip4(ip) if ip.is_loopback()))
        };
        let pick = addrs
            .iter()
            .find(|a| is_loopback(a))
            .or_else(|| addrs.first())?;
        Some(pick.clone().with(Protocol::P2p(self.local)))
    }

    /// Known peers (connected or seen).
    pub fn peers(&self) -> Vec<PeerInfo> {
        self.read(|s| s.peers.values().cloned().collect())
    }

    /// Highest offset per source known from gossip.
    pub fn known_offsets(&self) -> BTreeMap<PeerId, u64> {
        self.read(|s| s.known.clone())
    }
}

/// Reads a swarm key file (`/key/swarm/psk/1.0.0/` format).
pub fn read_swarm_key(path: &std::path::Path) -> Result<PreSharedKey, Error> {
    let err = |reason: String| Error::SwarmKey {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    text.parse::<PreSharedKey>().map_err(|e| err(e.to_string()))
}

/// A new random swarm key in the standard file format.
pub fn generate_swarm_key() -> String {
    let bytes: [u8; 32] = rand::random();
    PreSharedKey::new(bytes).to_key_file()
}

/// Starts the swarm task: listens, dials the bootstrap peers, and returns once the first listen
/// address is known (so it can be printed). `blocks` answers peers' `Want`s.
pub async fn spawn(
    config: Config,
    blocks: Arc<dyn BlockSource>,
) -> Result<(Handle, mpsc::Receiver<Event>, JoinHandle<()>), Error> {
    let local = config.keypair.public().to_peer_id();
    let shared = Arc::new(Mutex::new(Shared::default()));
    let (tx, rx) = mpsc::channel(256);
    let (events_tx, events_rx) = mpsc::channel(1024);
    let mut task = task::Task::new(config, blocks, rx, events_tx, shared.clone())?;
    task.wait_listening().await?;
    let join = tokio::spawn(task.run());
    Ok((Handle { tx, shared, local }, events_rx, join))
}

#[cfg(test)]
mod tests;
