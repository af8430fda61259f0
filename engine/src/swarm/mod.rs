//! The swarm: one task owns the libp2p `Swarm` (see `task.rs`) and talks to the rest of the
//! node only through messages. It runs on a runtime of its own (threads `shoal-swarm`,
//! `crate::own_runtime`), so peers' traffic never queues in front of the node's HTTP requests.
//!
//! ```text
//!   replication ──Command──▶ [swarm task] ──Event::Head──▶ replication
//!   blobs ──Command::Fetch──▶  owns Swarm,     ──FetchEvents──▶ the fetch's caller
//!   (Publish, Stored,          Fetcher, the       (verified heads, inline blocks)
//!    Fetch, Dial)              head book ──watch──▶ NetworkState (node info, GC, store API)
//!                                 │ Want from a peer
//!                                 ▼
//!                       spawn_blocking(BlockSource)   (bounded by a semaphore)
//! ```
//!
//! The task touches no SQLite: blocks for peers are read by blocking workers through
//! [`crate::exchange::BlockSource`]; received heads and blocks go out as [`Event`]s and
//! [`crate::exchange::FetchEvent`]s. It owns the head book (`heads.rs`: the newest known and the
//! stored head per source, saved across restarts) and is the only writer of [`NetworkState`],
//! which it publishes on a `watch`. Every head is verified (signature by the claimed source)
//! before gossipsub may forward it or anyone sees it. All channels are bounded; a full event
//! channel drops the head (the periodic digest brings it back).
//!
//! Membership: TCP (keep-alive) + optional pnet swarm key + noise + yamux; identify; ping (a
//! failed ping closes the connection; a peer that runs none, as IPFS peers, is kept and TCP
//! keep-alive notices when it is gone); mDNS unless disabled; `--peer` addresses (and mDNS finds, at most
//! 64) redialled with exponential backoff (1 s to 30 s) whenever not connected (`redial.rs`).

mod behaviour;
mod budget;
pub mod forks;
pub mod gossip;
pub(crate) mod heads;
mod redial;
mod statuses;
mod task;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cid::Cid;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::pnet::PreSharedKey;
use libp2p::{Multiaddr, PeerId};
use serde::Serialize;
use shoal_store::{OffsetMap, SourceId};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub use behaviour::{transport, BuildError};
pub use forks::ForkInfo;
pub use heads::FILE as HEADS_FILE;
pub use statuses::Received as ReceivedStatus;
pub(crate) use task::age_ms;
pub use task::BlockExchange;

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
    /// Where the head book is saved across restarts (`None`: not saved).
    pub heads_file: Option<PathBuf>,
    /// Resuming the own source: peers' digests say how far they hold it, and their heads of
    /// it go to the replicator (`crate::resume`).
    pub resume: crate::resume::Resume,
    /// Which exchange fetches blocks from shoal peers (IPFS peers always get Bitswap).
    pub block_exchange: BlockExchange,
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
            heads_file: None,
            resume: crate::resume::Resume::done(),
            block_exchange: BlockExchange::Bitswap,
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
    #[error(
        "swarm address {addr} is in use by another process; give this node another --swarm-addr"
    )]
    InUse {
        addr: Multiaddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the swarm task has stopped")]
    Stopped,
    #[error("cannot start the swarm's threads")]
    Threads(#[source] std::io::Error),
    #[error("cannot read the swarm key {path}; make one with `shoal swarm keygen -o {path}`")]
    SwarmKeyRead {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not a swarm key (a `/key/swarm/psk/1.0.0/` file); make one with \
         `shoal swarm keygen -o FILE` and give every node of the swarm the same file"
    )]
    SwarmKeyFormat {
        path: String,
        #[source]
        source: libp2p::pnet::KeyParseError,
    },
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
    /// Gossip this node's signed status (`crate::status`).
    AnnounceStatus(crate::status::SignedStatus),
    /// Every other node's status as last received and not expired.
    Statuses(oneshot::Sender<Vec<ReceivedStatus>>),
    /// The heads whose trees are stored here, as digests serve them (`events dump`).
    StoredHeads(oneshot::Sender<Vec<SignedHead>>),
}

/// What the swarm tells replication.
#[derive(Debug)]
// `Head` is the common variant, one per head received: boxing it would allocate per head.
#[allow(clippy::large_enum_variant)]
pub enum Event {
    /// A verified head from the network (gossip or a digest answer), with verified inline blocks.
    Head {
        head: SignedHead,
        blocks: Vec<(Cid, Vec<u8>)>,
        from: PeerId,
        /// `from` stores this head's tree: it answered a digest with it, or it is the head's
        /// own source. A relayed gossip head says nothing of the kind (peers forward heads
        /// before they import them).
        held: bool,
    },
    /// The head book gave up `source` (never stored here) for a newer one: the replicator
    /// drops its sync target.
    Forgotten { source: PeerId },
}

/// A peer as node info shows it (`GET /api/v1/node/info` `peers[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerInfo {
    pub peer_id: String,
    pub addrs: Vec<String>,
    pub connected: bool,
    /// Microseconds since the Unix epoch, when last heard of (`None`: never, only dialled).
    pub last_seen: Option<u64>,
    /// Highest offset of this node's own events the peer stores, from the peer's last digest
    /// (sent on connect and every `digest_interval`; kept after it disconnects); absent until
    /// it reported any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub our_offset_stored: Option<u64>,
    /// Why the last attempt to connect failed, until a connection succeeds (e.g. "handshake
    /// failed: different swarm key?", "Connection refused").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Its gossipsub score, rounded, while connected: only invalid gossip lowers it, and below
    /// `behaviour::GRAYLIST_THRESHOLD` (-80) its gossip is dropped unread.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gossip_score: Option<i64>,
}

/// The swarm's view of the network. The swarm task is its only writer and publishes it on a
/// `watch` ([`Handle::status`]); everyone else reads it there.
#[derive(Debug, Clone, Default)]
pub struct NetworkState {
    /// Addresses the swarm actually listens on (concrete ports), loopback first: that is what
    /// `shoal run` prints when listening on 0.0.0.0.
    pub listen_addrs: Vec<Multiaddr>,
    pub peers: BTreeMap<PeerId, PeerInfo>,
    /// Highest offset per source known from verified heads (may run ahead of what is stored).
    pub known: BTreeMap<SourceId, u64>,
    /// Sources seen signing two trees at one offset (at most [`forks::MAX_FORKS`]).
    pub forks: Vec<ForkInfo>,
    /// Grows when the node list (`GET /api/v1/nodes`) changes in what it shows of a node other
    /// than its counters: a node joins or expires, its peers, apps, name or version change.
    /// Wakes the dashboard's feed, whose swarm picture draws every node's peers.
    pub node_list_changes: u64,
}

/// Peers node info lists at most: a peer holding the swarm key can connect under ever new
/// identities, and each would otherwise stay in the map for the life of the process.
pub const MAX_PEERS_LISTED: usize = 1024;

impl NetworkState {
    /// Makes room for one more peer entry: when [`MAX_PEERS_LISTED`] are listed, the
    /// disconnected peer heard of longest ago goes (connected peers are bounded far below by
    /// the connection limits, so one is always there to go).
    pub(crate) fn make_room_for_peer(&mut self) {
        if self.peers.len() < MAX_PEERS_LISTED {
            return;
        }
        let oldest = self
            .peers
            .iter()
            .filter(|(_, p)| !p.connected)
            .min_by_key(|(_, p)| p.last_seen)
            .map(|(id, _)| *id);
        if let Some(id) = oldest {
            self.peers.remove(&id);
        }
    }

    /// An address another node can dial, ending in `/p2p/<id>`: loopback if we listen on it
    /// (as with 0.0.0.0), else the first concrete listen address.
    pub fn dialable_addr(&self, local: PeerId) -> Option<Multiaddr> {
        self.listen_addrs.first().map(|a| dialable(a, local))
    }
}

/// A handle to the swarm task; cheap to clone. The task stops when every handle is dropped.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    status: watch::Receiver<NetworkState>,
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

    /// The network state as the swarm task publishes it (changes wake the receiver).
    pub fn status(&self) -> watch::Receiver<NetworkState> {
        self.status.clone()
    }

    /// See [`NetworkState::dialable_addr`].
    pub fn dialable_addr(&self) -> Option<Multiaddr> {
        self.status.borrow().dialable_addr(self.local)
    }

    /// Known peers (connected or seen).
    pub fn peers(&self) -> Vec<PeerInfo> {
        self.status.borrow().peers.values().cloned().collect()
    }

    /// Highest offset per source known from gossip.
    pub fn known_offsets(&self) -> BTreeMap<SourceId, u64> {
        self.status.borrow().known.clone()
    }
}

/// `addr` with a wildcard IP replaced by loopback and `/p2p/<peer>` appended (once).
pub fn dialable(addr: &Multiaddr, peer: PeerId) -> Multiaddr {
    let mut out = Multiaddr::empty();
    for p in addr.iter() {
        match p {
            Protocol::Ip4(ip) if ip.is_unspecified() => {
                out.push(Protocol::Ip4([127, 0, 0, 1].into()))
            }
            Protocol::Ip6(ip) if ip.is_unspecified() => {
                out.push(Protocol::Ip6(std::net::Ipv6Addr::LOCALHOST))
            }
            Protocol::P2p(_) => {}
            other => out.push(other),
        }
    }
    out.push(Protocol::P2p(peer));
    out
}

/// Reads a swarm key file (`/key/swarm/psk/1.0.0/` format).
pub fn read_swarm_key(path: &std::path::Path) -> Result<PreSharedKey, Error> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| Error::SwarmKeyRead {
        path: shown.clone(),
        source,
    })?;
    text.parse::<PreSharedKey>()
        .map_err(|source| Error::SwarmKeyFormat {
            path: shown,
            source,
        })
}

/// Refuses a listen address whose TCP port another process holds. libp2p binds with
/// `SO_REUSEPORT`, so a second node on the same port would start and silently share (or steal)
/// the first one's connections; a plain bind, which does not share, tells.
fn check_port_free(addr: &Multiaddr) -> Result<(), Error> {
    let mut ip = None;
    let mut port = None;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(std::net::IpAddr::V4(a)),
            Protocol::Ip6(a) => ip = Some(std::net::IpAddr::V6(a)),
            Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    match (ip, port) {
        (Some(ip), Some(port)) if port != 0 => std::net::TcpListener::bind((ip, port))
            .map(drop)
            .or_else(|source| match source.kind() {
                std::io::ErrorKind::AddrInUse => Err(Error::InUse {
                    addr: addr.clone(),
                    source,
                }),
                // Other failures (no such address here) are libp2p's to report.
                _ => Ok(()),
            }),
        _ => Ok(()),
    }
}

/// A new random swarm key in the standard file format.
pub fn generate_swarm_key() -> String {
    let bytes: [u8; 32] = rand::random();
    PreSharedKey::new(bytes).to_key_file()
}

/// A started swarm: what the rest of the node keeps of it.
pub struct Spawned {
    pub handle: Handle,
    /// Verified heads from the network, for the replicator.
    pub events: mpsc::Receiver<Event>,
    /// Saved heads beyond what the store holds: syncs to resume.
    pub resumed: Vec<SignedHead>,
    /// Ends after `shutdown` flips (saving the head book) or when every handle is dropped.
    pub task: JoinHandle<()>,
}

/// Starts the swarm task: loads the head book (`stored` is what the store holds now), listens,
/// dials the bootstrap peers, and returns once the first listen address is known (so it can be
/// printed). `blocks` answers peers' `Want`s.
pub async fn spawn(
    config: Config,
    blocks: Arc<dyn BlockSource>,
    stored: OffsetMap,
    shutdown: watch::Receiver<bool>,
) -> Result<Spawned, Error> {
    for addr in &config.listen {
        check_port_free(addr)?;
    }
    let local = config.keypair.public().to_peer_id();
    let file = config.heads_file.clone();
    let (book, resumed) =
        tokio::task::spawn_blocking(move || heads::HeadBook::load(file, local, &stored))
            .await
            .map_err(|_| Error::Stopped)?;
    let initial = NetworkState {
        known: book.known_offsets().collect(),
        ..NetworkState::default()
    };
    let (status_tx, status) = watch::channel(initial);
    let (tx, rx) = mpsc::channel(256);
    let (events_tx, events_rx) = mpsc::channel(1024);
    let (ready_tx, ready_rx) = oneshot::channel();
    let run = async move {
        // Made on the swarm's runtime: libp2p's listeners register with the runtime that is
        // current when they are made.
        let made = task::Task::new(config, blocks, rx, events_tx, status_tx, book);
        let mut task = match made {
            Ok(task) => task,
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        if let Err(e) = task.wait_listening().await {
            let _ = ready_tx.send(Err(e));
            return;
        }
        if ready_tx.send(Ok(())).is_ok() {
            task.run(shutdown).await;
        }
    };
    let task =
        crate::own_runtime::spawn("shoal-swarm", SWARM_THREADS, run).map_err(Error::Threads)?;
    ready_rx.await.map_err(|_| Error::Stopped)??;
    Ok(Spawned {
        handle: Handle { tx, status, local },
        events: events_rx,
        resumed,
        task,
    })
}

/// Worker threads of the swarm's runtime (`crate::own_runtime`): two, so one connection's
/// noise and yamux work (a blob transfer) does not hold up the others; with one, the mesh of
/// `bench_swarm` beside a busy process on each core fell behind (p99 1.9 s instead of 0.17 s).
const SWARM_THREADS: usize = 2;

#[cfg(test)]
mod tests;
