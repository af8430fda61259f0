//! [`Node`]: starts the node's parts, owns their tasks, and shuts them down in order.
//!
//! Task graph (arrows = bounded channels; `=>` = broadcast):
//!
//! ```text
//!  HTTP / Pond API handlers ──publish──▶ [writer thread] ◀──import/run── swarm (issue 4)
//!        │        ▲                            │  owns the store's write connection,
//!        │        │ EventStream                │  the Lamport clock persistence
//!        │        │ (bounded chunks)           ├─▶ offsets watch  (offsets, requestPresent)
//!        │   [query: spawn_blocking]           └═▶ updates broadcast (Arc<SourceUpdate>)
//!        │        ▲  read-only connection              ║            ║
//!        └─query──┘                                    ▼            ▼
//!        └─subscribe──▶ [subscription task] ◀══════════╝     swarm (gossip heads)
//!                         └─ catch-up/lag re-reads: spawn_blocking, read-only connection
//! ```
//!
//! Shutdown ([`Node::shutdown`]): the shutdown watch flips (subscriptions end), then the writer
//! gets `Shutdown` behind every command already queued: it commits them, persists the clock and
//! closes the write connection before the call returns. Servers (HTTP) are stopped by their
//! owner (the CLI) before this, so no new publish races it; a publish that does race it gets
//! `ShuttingDown`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use serde::Serialize;
use shoal_store::{OffsetMap, SourceId, Store, StoreConfig};
use tokio::sync::{oneshot, watch};

use crate::config::Config;
use crate::events::{writer, EventService, LamportClock};
use crate::identity::{Identity, IdentityError};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot create the data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("cannot open the store: {0}")]
    Store(#[from] shoal_store::Error),
    #[error("cannot open the console log: {0}")]
    Console(#[from] crate::console::ConsoleError),
    #[error("cannot start a task: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("cannot start the swarm: {0}")]
    Replication(#[from] crate::replication::ReplicationError),
}

/// A peer as the swarm sees it (filled in by the swarm).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerInfo {
    pub peer_id: String,
    pub addrs: Vec<String>,
    pub connected: bool,
    /// Microseconds since the Unix epoch, when last heard of.
    pub last_seen: Option<u64>,
    /// Highest offset of this node's own events the peer stores, as of the peer's last digest
    /// (every few seconds); absent until it reported any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub our_offset_stored: Option<u64>,
}

/// The swarm's view of the network, published by the swarm task on [`Node::network`]; empty
/// until a swarm runs.
#[derive(Debug, Clone, Default)]
pub struct NetworkState {
    /// Addresses the swarm actually listens on (concrete ports).
    pub listen_addrs: Vec<Multiaddr>,
    pub peers: Vec<PeerInfo>,
    /// Highest offset per source known from verified heads (may run ahead of what is stored).
    pub known: std::collections::BTreeMap<SourceId, u64>,
}

/// Replication progress of one source: stored here vs known from the swarm.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceProgress {
    pub source: String,
    /// Highest offset stored here (`None`: nothing yet).
    pub stored_offset: Option<u64>,
    /// Highest offset known from gossip (`None`: never heard of it from a peer).
    pub known_offset: Option<u64>,
}

/// `GET /api/v1/node/info`. New facts go here as new fields (v1 clients ignore unknown ones).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    pub source: String,
    pub version: String,
    pub uptime_secs: u64,
    pub listen_addrs: Vec<String>,
    pub peers: Vec<PeerInfo>,
    /// Streams stored: distinct (semantics, name, source), as API.md defines a stream.
    pub streams: u64,
    /// Stored events over all sources.
    pub events: u64,
    /// Size of the store's files on disk.
    pub store_bytes: u64,
    /// Per source: offset stored vs known from gossip (what is still to replicate).
    pub sources: Vec<SourceProgress>,
}

/// A running node. Owns the writer thread; [`Node::shutdown`] stops it. Front ends keep a
/// [`NodeHandle`] instead (cheap to clone, no shutdown power).
pub struct Node {
    handle: NodeHandle,
    shutdown: watch::Sender<bool>,
    commands: tokio::sync::mpsc::Sender<writer::Command>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// The swarm and replicator (issue 4).
    replication: Option<crate::replication::Replication>,
}

/// What front ends (HTTP, Pond store API, swarm) need of a node; cheap to clone.
#[derive(Clone)]
pub struct NodeHandle {
    identity: Identity,
    config: Arc<Config>,
    store: Arc<Store>,
    events: EventService,
    network: Arc<watch::Sender<NetworkState>>,
    started: Instant,
    shutdown: watch::Receiver<bool>,
    console: crate::console::Console,
    /// The swarm, once it runs (the blob service fetches blocks through it).
    swarm: Arc<std::sync::OnceLock<crate::swarm::Handle>>,
}

impl Node {
    /// Creates the data dir and key if needed, opens the store, recovers the clock and offsets,
    /// and starts the writer. The blocking parts run on a blocking thread.
    pub async fn start(config: Config) -> Result<Node, NodeError> {
        let cfg = config.clone();
        let opened = tokio::task::spawn_blocking(move || open(&cfg))
            .await
            .map_err(|e| NodeError::Spawn(std::io::Error::other(e)))??;
        let (identity, store, writer_conn, offsets, clock) = opened;
        let store = Arc::new(store);
        let clock = Arc::new(clock);
        let (handles, thread) = writer::spawn(
            writer_conn,
            store.reader()?,
            identity.source().clone(),
            offsets,
            clock,
            config.events.clone(),
        )
        .map_err(NodeError::Spawn)?;
        let commands = handles.commands.clone();
        let console = crate::console::Console::start(&config.data_dir, config.console_retention)?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let events = EventService::new(
            identity.source().clone(),
            store.clone(),
            handles,
            config.events.clone(),
            shutdown_rx.clone(),
        );
        tracing::info!(source = %identity.source(), data_dir = %config.data_dir.display(), "node started");
        let mut node = Node {
            handle: NodeHandle {
                identity,
                config: Arc::new(config),
                store,
                events,
                network: Arc::new(watch::channel(NetworkState::default()).0),
                started: Instant::now(),
                shutdown: shutdown_rx,
                console,
                swarm: Arc::new(std::sync::OnceLock::new()),
            },
            shutdown,
            commands,
            writer: Some(thread),
            replication: None,
        };
        // Store upkeep: GC of replaced blocks; ends with the shutdown signal.
        crate::maintenance::spawn(node.handle.clone());
        // The swarm and replicator (issue 4): returns once the swarm listens.
        match crate::replication::start(node.handle()).await {
            Ok(r) => {
                let _ = node.handle.swarm.set(r.swarm().clone());
                node.replication = Some(r);
            }
            Err(e) => {
                node.shutdown().await;
                return Err(e.into());
            }
        }
        Ok(node)
    }

    /// A handle for front ends.
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// The event service (clone it freely).
    pub fn events(&self) -> EventService {
        self.handle.events()
    }

    pub fn source(&self) -> &SourceId {
        self.handle.source()
    }

    pub fn config(&self) -> &Config {
        self.handle.config()
    }

    /// See [`NodeHandle::swarm_addr`].
    pub fn swarm_addr(&self) -> Multiaddr {
        self.handle.swarm_addr()
    }

    /// See [`NodeHandle::info`].
    pub async fn info(&self) -> NodeInfo {
        self.handle.info().await
    }

    /// Ends subscriptions and tells long-lived tasks to stop, but keeps the writer running:
    /// call it before stopping servers so their streams close at once, then [`Node::shutdown`].
    pub fn signal_shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Stops the node: ends subscriptions, commits what the writer has queued, persists the
    /// clock and closes the store. Not cancel-safe: await it to the end.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(replication) = self.replication.take() {
            replication.stop().await;
        }
        let (reply, done) = oneshot::channel();
        if self
            .commands
            .send(writer::Command::Shutdown(reply))
            .await
            .is_ok()
        {
            let _ = done.await;
        }
        if let Some(thread) = self.writer.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        tracing::info!(source = %self.handle.source(), "node stopped");
    }
}

impl NodeHandle {
    /// The console service (apps' log entries); clone it freely.
    pub fn console(&self) -> crate::console::Console {
        self.console.clone()
    }

    /// The event service (clone it freely).
    pub fn events(&self) -> EventService {
        self.events.clone()
    }

    pub fn source(&self) -> &SourceId {
        self.identity.source()
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The store (for read connections; writes go through the event service).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The swarm's handle, once it runs.
    pub fn swarm(&self) -> Option<crate::swarm::Handle> {
        self.swarm.get().cloned()
    }

    /// Where the swarm publishes its listen addresses and peers.
    pub fn network(&self) -> &Arc<watch::Sender<NetworkState>> {
        &self.network
    }

    /// Flips to `true` when the node shuts down: long-lived tasks (swarm, servers) select on it.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    /// The swarm address to print and dial: the first actual listen address if the swarm runs,
    /// else the first configured one; a wildcard IP becomes loopback; ends in `/p2p/<id>`.
    pub fn swarm_addr(&self) -> Multiaddr {
        let listening = self.network.borrow().listen_addrs.first().cloned();
        let addr = listening
            .or_else(|| self.config.swarm_addrs.first().cloned())
            .unwrap_or_else(Multiaddr::empty);
        dialable(&addr, self.identity.peer_id())
    }

    /// A snapshot for `GET /api/v1/node/info`. Safe to drop.
    pub async fn info(&self) -> NodeInfo {
        let offsets: OffsetMap = self.events.offsets();
        let network = self.network.borrow().clone();
        let store_path = self.store.path().to_path_buf();
        let store_bytes = tokio::task::spawn_blocking(move || {
            ["", "-wal", "-shm"]
                .iter()
                .filter_map(|suffix| {
                    let mut p = store_path.clone().into_os_string();
                    p.push(suffix);
                    std::fs::metadata(p).ok().map(|m| m.len())
                })
                .sum()
        })
        .await
        .unwrap_or(0);
        let streams = match self.events.stream_count().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot count streams");
                0
            }
        };
        NodeInfo {
            source: self.source().to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_secs: self.started.elapsed().as_secs(),
            listen_addrs: network.listen_addrs.iter().map(|a| a.to_string()).collect(),
            peers: network.peers,
            streams,
            events: offsets.iter().map(|(_, o)| o + 1).sum(),
            store_bytes,
            sources: source_progress(&offsets, &network.known),
        }
    }
}

/// Union of stored and known offsets, by source.
fn source_progress(
    stored: &OffsetMap,
    known: &std::collections::BTreeMap<SourceId, u64>,
) -> Vec<SourceProgress> {
    let mut all: std::collections::BTreeMap<&SourceId, SourceProgress> = Default::default();
    for (source, o) in stored.iter() {
        all.entry(source)
            .or_insert_with(|| SourceProgress {
                source: source.to_string(),
                stored_offset: None,
                known_offset: None,
            })
            .stored_offset = Some(o);
    }
    for (source, &o) in known {
        all.entry(source)
            .or_insert_with(|| SourceProgress {
                source: source.to_string(),
                stored_offset: None,
                known_offset: None,
            })
            .known_offset = Some(o);
    }
    all.into_values().collect()
}

type Opened = (
    Identity,
    Store,
    shoal_store::Writer,
    OffsetMap,
    LamportClock,
);

fn open(config: &Config) -> Result<Opened, NodeError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| NodeError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    // The store first: opening it takes the data dir's writer lock, so a second node on this
    // dir is refused before it reads (or, on a fresh dir, creates) the key.
    let store = Store::open(&config.store_path(), store_config())?;
    let identity = Identity::load_or_create(&config.data_dir)?;
    let writer = store.writer()?;
    let reader = store.reader()?;
    let offsets: OffsetMap = reader
        .sources()?
        .into_iter()
        .map(|info| (info.source, info.last_offset))
        .collect();
    let clock = LamportClock::recover(&reader)?;
    Ok((identity, store, writer, offsets, clock))
}

/// The store settings a node uses. Every append compresses its new leaf on the writer thread,
/// so on the publish path: zstd level 1 needs a far smaller context than 3 (allocated and
/// cleared per leaf). Packing runs on the packer thread, but on a 2-core device it competes
/// with publishing for CPU: level 3 costs a few ms per leaf where level 10 costs ~30 ms (for
/// 17% fewer bytes and ~25% faster leaf reads; see BENCHMARKS.md, Store).
fn store_config() -> StoreConfig {
    let mut config = StoreConfig::default();
    config.tree.zstd_level_append = 1;
    config.tree.zstd_level_pack = 3;
    config
}

/// `addr` with a wildcard IP replaced by loopback and `/p2p/<peer>` appended (once).
pub fn dialable(addr: &Multiaddr, peer: libp2p::PeerId) -> Multiaddr {
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

impl Drop for Node {
    fn drop(&mut self) {
        // Dropped without `shutdown`: still end subscriptions. The writer exits when the last
        // command sender is gone (after committing what is queued).
        let _ = self.shutdown.send(true);
    }
}
