//! [`Node`]: builds the node's parts in dependency order, each with only the handles it needs,
//! owns their tasks, and shuts them down in order. Nothing is bound late: when a part is built,
//! everything it talks to exists.
//!
//! Task graph (`──▶` bounded mpsc, `══▶` broadcast, `··▶` watch; who owns what):
//!
//! ```text
//!  HTTP / Pond API ──Append──▶ [writer thread] ─commit─▶ store (write connection)
//!   │    ▲   │                  owns every local tree,    ├··▶ offsets      (node info, Pond)
//!   │    │   │                  the Lamport clock;        └══▶ SourceUpdate (subscribers,
//!   │    │   │                  group commit                    replicator)
//!   │    │   └─query/subscribe─▶ [read tasks: spawn_blocking, read-only connections]
//!   │    │
//!   │  blobs (BlobService) ──Blob*─▶ writer;  ──Fetch──▶ swarm
//!   │   └─▶ [blob replicas] reads shoal.blob-replica events, holds what it is asked to
//!   │        (Fetch through blobs, PinReplica), ··▶ NetworkState for placement
//!   │
//!   │  [replicator] ◀──Event::Head── [swarm task] ──··▶ NetworkState (node info, GC, Pond)
//!   │   targets, syncs ──ImportBatch/PutBlocks──▶ writer   owns libp2p Swarm, the head book
//!   │   ══SourceUpdate(Local)══▶ signs our head ──Publish/Stored/Fetch──▶ swarm
//!   │
//!   │  [status announcer] ──AnnounceStatus (signed, every 5 s / on change)──▶ swarm
//!   │   reads offsets, NetworkState, the apps' report; swarm keeps others' statuses in memory
//!   │  [app status reporter] reads apps::Handle (list, 1 s) ··▶ LocalApps (the apps' report)
//!   │  [app command applier] subscribes to shoal.apps commands for us ──▶ apps::Handle
//!   │   (a deploy fetches its package blob through blobs); apps-applied.json
//!   │
//!   │  [retention] ──Prune──▶ writer; signs the pruned head ──Publish──▶ swarm
//!   │   reads the node settings (apps::Handle::watch_node_settings)
//!   │
//!   │  [maintenance] ──Gc/Checkpoint──▶ writer   (waits while a sync receives blocks:
//!   │                                               the replicator's sync-activity watch)
//!   ├─ logs ──▶ [console writer thread] (its own SQLite file)
//!   │                ▲ app output lines
//!   └─ apps::Handle ─Command─▶ [apps thread: owner task] ─Control─▶ [supervisor per app] ─▶ child
//!                    (apps.sqlite3; its own runtime)       ··▶ Status   (process group)
//! ```
//!
//! Failure reporting: the writer answers every command with a `Result` (a failed commit rolls
//! back and is reported to each waiter); the swarm, replicator and maintenance tasks log and
//! retry (a peer's fault never reaches an app); a task that ends early (a bug) shows in
//! `GET /api/v1/node/health` for the swarm (`health.rs`: its `NetworkState` watch closes).
//!
//! Shutdown ([`Node::shutdown`]): the shutdown watch flips (subscriptions, the replicator,
//! maintenance and the swarm end; the swarm saves its head book), then the writer gets
//! `Shutdown` behind every command already queued: it commits them, persists the clock and
//! closes the write connection before the call returns. Servers (HTTP) are stopped by their
//! owner (the CLI) before this, so no new publish races it; a publish that does race it gets
//! `ShuttingDown` (not taken: nothing stored) or `Interrupted` (may be stored).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use serde::Serialize;
use shoal_store::{OffsetMap, SourceId, Store, StoreConfig};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::blobs::BlobService;
use crate::config::Config;
use crate::events::{self, EventService, LamportClock};
use crate::exchange::StoreBlocks;
use crate::identity::{Identity, IdentityError};
use crate::metrics::{self as metrics_mod, Metrics};
use crate::swarm::{self, NetworkState, PeerInfo};

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
    // The causes are `#[source]`s, not repeated in the messages: error chains print each once.
    #[error("cannot open the store")]
    Store(#[from] shoal_store::Error),
    #[error("cannot open the console log")]
    Console(#[from] crate::console::ConsoleError),
    #[error("cannot start a task")]
    Spawn(#[source] std::io::Error),
    #[error("cannot start the swarm")]
    Swarm(#[from] swarm::Error),
    #[error("cannot start the app runtime")]
    Apps(#[from] crate::apps::AppsError),
    #[error("cannot prepare the blob store (converting blobs to UnixFS)")]
    Blobs(#[from] crate::blobs::BlobsError),
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
    /// Sources seen signing two trees at one offset since start (`docs/format.md`, "Forks").
    pub forks: Vec<swarm::ForkInfo>,
}

/// A running node. Owns the writer thread and the node's tasks; [`Node::shutdown`] stops them.
/// Front ends keep a [`NodeHandle`] instead (cheap to clone, no shutdown power).
pub struct Node {
    handle: NodeHandle,
    shutdown: watch::Sender<bool>,
    writer: Option<events::WriterThread>,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    /// The app runtime (its own thread); stopped first at shutdown.
    apps: Option<crate::apps::Runtime>,
}

/// What front ends (HTTP, Pond store API, CLI) need of a node; cheap to clone. Subsystems inside
/// the engine never get one: each is built with the handles it uses.
#[derive(Clone)]
pub struct NodeHandle {
    identity: Identity,
    config: Arc<Config>,
    store: Arc<Store>,
    events: EventService,
    blobs: BlobService,
    network: watch::Receiver<NetworkState>,
    started: Instant,
    shutdown: watch::Receiver<bool>,
    console: crate::console::Console,
    /// Every node of the swarm (`GET /api/v1/nodes`), from the status gossip.
    nodes: crate::announce::Nodes,
    metrics: Metrics,
    backup: crate::dump::Backup,
    apps: crate::apps::Handle,
    /// Records app commands for other nodes (`?to=`).
    commander: crate::remote::Commander,
}

/// How long each task gets to end after the shutdown signal before it is aborted.
const TASK_GRACE: Duration = Duration::from_secs(5);

impl Node {
    /// Creates the data dir and key if needed, opens the store, recovers the clock and offsets,
    /// and starts every part in dependency order: writer → console → swarm → replicator →
    /// blobs → maintenance. Returns once the swarm listens. The blocking parts run on a
    /// blocking thread.
    pub async fn start(mut config: Config) -> Result<Node, NodeError> {
        // Absolute, so that paths built from it mean the same in app processes, which run in
        // their own working directory (`shoal run --data-dir a` gave apps `a/apps/...`).
        config.data_dir =
            std::path::absolute(&config.data_dir).map_err(|source| NodeError::DataDir {
                path: config.data_dir.clone(),
                source,
            })?;
        let cfg = config.clone();
        let Opened {
            identity,
            store,
            recovered,
        } = tokio::task::spawn_blocking(move || open(&cfg))
            .await
            .map_err(|e| NodeError::Spawn(std::io::Error::other(e)))??;
        let store = Arc::new(store);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let offsets = recovered.offsets.clone();
        let resume = recovered.resume.clone();
        let metrics = Metrics::new();
        let (events, writer) = events::start(
            recovered,
            store.clone(),
            identity.source().clone(),
            config.events.clone(),
            shutdown_rx.clone(),
            &metrics,
        )
        .map_err(NodeError::Spawn)?;
        let started = async {
            let console =
                crate::console::Console::start(&config.data_dir, config.console_retention)?;
            let swarm = start_swarm(
                &config,
                &identity,
                &store,
                offsets,
                resume.clone(),
                shutdown_rx.clone(),
            )
            .await?;
            Ok::<_, NodeError>((console, swarm))
        };
        let (console, spawned) = match started.await {
            Ok(parts) => parts,
            Err(e) => {
                let _ = shutdown.send(true);
                writer.stop().await;
                return Err(e);
            }
        };
        let swarm = spawned.handle;
        let replication = crate::replication::spawn(
            events.clone(),
            swarm.clone(),
            spawned.events,
            identity.keypair().clone(),
            spawned.resumed,
            resume.clone(),
            shutdown_rx.clone(),
        );
        let (replicas, replica_inbox) = crate::blobs::replicas::channel();
        let blobs = BlobService::new(
            events.clone(),
            store.clone(),
            Arc::new(swarm.clone()),
            config.blobs.clone(),
            replicas,
        );
        // Blobs of the old format are converted before anything reads them (the replica task
        // maps the old CIDs its events name through what this finds).
        if let Err(e) = blobs.ready().await {
            let _ = shutdown.send(true);
            writer.stop().await;
            return Err(e.into());
        }
        let renaming = blobs.clone();
        tokio::spawn(async move {
            if let Err(e) = renaming.rename_converted().await {
                tracing::warn!(error = %e, "cannot move blob names to their UnixFS CIDs");
            }
        });
        let replica_task = crate::blobs::replicas::spawn(
            replica_inbox,
            blobs.clone(),
            events.clone(),
            swarm.status(),
            shutdown_rx.clone(),
        );
        let backup = crate::dump::Backup::new(
            store.clone(),
            events.clone(),
            swarm.clone(),
            identity.keypair().clone(),
            resume.clone(),
        );
        let resume_task = crate::resume::spawn(resume, shutdown_rx.clone());
        let maintenance = crate::maintenance::spawn(
            events.clone(),
            replication.sync_activity,
            shutdown_rx.clone(),
        );
        let (local_apps, local_apps_rx) = watch::channel(Default::default());
        let local = crate::announce::Local::new(events.clone(), swarm.status(), local_apps_rx);
        let announcer = tokio::spawn(crate::announce::run(
            identity.keypair().clone(),
            local.clone(),
            swarm.clone(),
            shutdown_rx.clone(),
        ));
        let nodes = crate::announce::Nodes::new(local, swarm.clone());
        let apps = crate::apps::Runtime::start(
            crate::apps::AppsConfig {
                data_dir: config.data_dir.clone(),
                node_id: identity.source().to_string(),
                api_addr: config.api_addr,
                store_addr: config.store_addr,
            },
            blobs.clone(),
            console.clone(),
            metrics.apps(),
        );
        let apps = match apps {
            Ok(apps) => apps,
            Err(e) => {
                let _ = shutdown.send(true);
                writer.stop().await;
                return Err(e.into());
            }
        };
        let (outcomes, outcomes_rx) =
            tokio::sync::mpsc::channel(crate::remote::report::OUTCOME_QUEUE);
        let applier = crate::remote::applier::spawn(
            events.clone(),
            apps.handle(),
            config.data_dir.clone(),
            outcomes,
            shutdown_rx.clone(),
        );
        let reporter = crate::remote::report::spawn(
            apps.handle(),
            local_apps,
            outcomes_rx,
            shutdown_rx.clone(),
        );
        let commander =
            crate::remote::Commander::new(events.clone(), blobs.clone(), config.data_dir.clone());
        let retention = crate::retention::spawn(
            events.clone(),
            swarm.clone(),
            identity.keypair().clone(),
            apps.handle().watch_node_settings(),
            shutdown_rx.clone(),
        );
        tracing::info!(source = %identity.source(), data_dir = %config.data_dir.display(), "node started");
        Ok(Node {
            handle: NodeHandle {
                identity,
                config: Arc::new(config),
                store,
                events,
                blobs,
                network: swarm.status(),
                started: Instant::now(),
                shutdown: shutdown_rx,
                console,
                nodes,
                metrics,
                backup,
                apps: apps.handle(),
                commander,
            },
            apps: Some(apps),
            shutdown,
            writer: Some(writer),
            // Stopped in this order: the replicator before the swarm it sends to.
            tasks: vec![
                ("app command applier", applier),
                ("app status reporter", reporter),
                ("retention", retention),
                ("resume", resume_task),
                ("replicator", replication.task),
                ("blob replicas", replica_task),
                ("maintenance", maintenance),
                ("status", announcer),
                ("swarm", spawned.task),
            ],
        })
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

    /// Stops the node: ends subscriptions and tasks (each gets [`TASK_GRACE`], then is
    /// aborted: imports are atomic), commits what the writer has queued, persists the clock and
    /// closes the store. Not cancel-safe: await it to the end.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        // Apps first: they may still publish while they stop.
        if let Some(apps) = self.apps.take() {
            apps.shutdown().await;
        }
        for (name, mut task) in std::mem::take(&mut self.tasks) {
            if tokio::time::timeout(TASK_GRACE, &mut task).await.is_err() {
                tracing::warn!(task = name, "task did not stop in time; aborted");
                task.abort();
            }
        }
        if let Some(writer) = self.writer.take() {
            writer.stop().await;
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

    /// Dump and restore of the event logs (`events dump` / `restore`).
    pub fn backup(&self) -> crate::dump::Backup {
        self.backup.clone()
    }

    /// Every node of the swarm, from the status gossip (this node included).
    pub fn nodes(&self) -> crate::announce::Nodes {
        self.nodes.clone()
    }

    /// Records app commands for other nodes (`?to=`; `remote/`).
    pub fn commander(&self) -> crate::remote::Commander {
        self.commander.clone()
    }

    /// The app runtime (clone it freely).
    pub fn apps(&self) -> crate::apps::Handle {
        self.apps.clone()
    }

    /// The blob service (clone it freely).
    pub fn blobs(&self) -> BlobService {
        self.blobs.clone()
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

    /// The swarm's view of the network (listen addresses, peers, known offsets); changes wake
    /// the receiver.
    pub fn network(&self) -> watch::Receiver<NetworkState> {
        self.network.clone()
    }

    /// Whether the swarm task still runs: it owns the sender of [`Self::network`], so the watch
    /// closes when the task ends (after shutdown, or a panic).
    pub fn swarm_running(&self) -> bool {
        self.network.has_changed().is_ok()
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
        swarm::dialable(&addr, self.identity.peer_id())
    }

    /// The swarm's connectivity as Pond's `requestConnectivity` reports it.
    pub fn connectivity(&self, specials: &[String]) -> crate::connectivity::Connectivity {
        crate::connectivity::Connectivity::of(
            &self.network.borrow(),
            &self.events.offsets(),
            self.source(),
            specials,
        )
    }

    /// The node's metric handles (the HTTP server counts its requests with them).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The `/metrics` exposition in `format`: the counted metrics and the state read now.
    /// Safe to drop.
    pub async fn metrics_text(&self, format: metrics_mod::Format) -> String {
        let offsets = self.events.offsets();
        let (peers_connected, known) = {
            let network = self.network.borrow();
            let connected = network.peers.values().filter(|p| p.connected).count() as u64;
            (connected, network.known.clone())
        };
        let store = self.store.clone();
        let sizes = tokio::task::spawn_blocking(move || {
            let blob_bytes = match store
                .reader()
                .and_then(|r| shoal_store::blob::bytes_pinned(&r))
            {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot sum blob sizes for /metrics");
                    0
                }
            };
            (store_disk_bytes(&store), blob_bytes)
        })
        .await;
        let (store_bytes, blob_bytes) = sizes.unwrap_or((0, 0));
        let snapshot = metrics_mod::Snapshot {
            peers_connected,
            store_bytes,
            blob_bytes,
            ..Default::default()
        }
        .with_sources(&offsets, &known);
        self.metrics.encode(&snapshot, format)
    }

    /// A snapshot for `GET /api/v1/node/info`. Safe to drop.
    pub async fn info(&self) -> NodeInfo {
        let offsets: OffsetMap = self.events.offsets();
        let network = self.network.borrow().clone();
        let store = self.store.clone();
        let store_bytes = tokio::task::spawn_blocking(move || store_disk_bytes(&store))
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
            peers: network.peers.into_values().collect(),
            streams,
            events: offsets.iter().map(|(_, o)| o + 1).sum(),
            store_bytes,
            sources: source_progress(&offsets, &network.known),
            forks: network.forks,
        }
    }
}

/// Starts the swarm with the node's settings; `offsets` is what the store holds now.
async fn start_swarm(
    config: &Config,
    identity: &Identity,
    store: &Store,
    offsets: OffsetMap,
    resume: crate::resume::Resume,
    shutdown: watch::Receiver<bool>,
) -> Result<swarm::Spawned, NodeError> {
    let mut swarm_cfg = swarm::Config::new(identity.keypair().clone());
    swarm_cfg.resume = resume;
    swarm_cfg.listen = config.swarm_addrs.clone();
    swarm_cfg.peers = config.peers.clone();
    swarm_cfg.mdns = config.mdns;
    swarm_cfg.heads_file = Some(config.data_dir.join(swarm::HEADS_FILE));
    // A measuring knob, not a setting: which exchange fetches blocks from shoal peers
    // (BENCHMARKS.md compares the two with it).
    if std::env::var("SHOAL_BLOCK_EXCHANGE").as_deref() == Ok("shoal") {
        swarm_cfg.block_exchange = swarm::BlockExchange::Shoal;
    }
    let reachable = config.mdns
        || config.swarm_addrs.iter().any(|a| {
            !a.iter()
                .any(|p| matches!(p, Protocol::Ip4(ip) if ip.is_loopback()))
        });
    match &config.swarm_key {
        Some(path) => swarm_cfg.swarm_key = Some(swarm::read_swarm_key(path)?),
        // A loopback-only node without mDNS (tests, one-machine setups) is not exposed.
        None if !reachable => {}
        None => tracing::warn!(
            "no swarm key: any shoal node that reaches this one (mDNS finds them on the LAN) can \
             join the swarm and read and write every stream; `shoal swarm keygen -o swarm.key` \
             makes one, `--swarm-key swarm.key` on every node uses it"
        ),
    }
    let blocks = Arc::new(StoreBlocks::open(store)?);
    Ok(swarm::spawn(swarm_cfg, blocks, offsets, shutdown).await?)
}

/// The store's size on disk (database, WAL, shared memory, block files); 0 when unreadable.
fn store_disk_bytes(store: &Store) -> u64 {
    store.disk_bytes().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot measure the store's size on disk");
        0
    })
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

/// What `open` recovers from the data dir.
struct Opened {
    identity: Identity,
    store: Store,
    recovered: events::Recovered,
}

fn open(config: &Config) -> Result<Opened, NodeError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| NodeError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    // A key without a store: the store was lost (resume the own source, `resume.rs`).
    let store_lost =
        !config.store_path().exists() && config.data_dir.join(crate::identity::KEY_FILE).exists();
    // The store first: opening it takes the data dir's writer lock, so a second node on this
    // dir is refused before it reads (or, on a fresh dir, creates) the key.
    let store = Store::open(&config.store_path(), store_config(config.durability))?;
    store.check_on_open()?;
    let identity = Identity::load_or_create(&config.data_dir)?;
    let writer = store.writer()?;
    let reader = store.reader()?;
    let offsets: OffsetMap = reader
        .sources()?
        .into_iter()
        .map(|info| (info.source, info.last_offset))
        .collect();
    let clock = LamportClock::recover(&reader)?;
    let resume = crate::resume::Resume::new(
        Some(config.data_dir.clone()),
        store_lost,
        offsets.get(identity.source()),
        config.resume_timeout,
    );
    Ok(Opened {
        identity,
        recovered: events::Recovered {
            writer,
            packer: store.reader()?,
            offsets,
            clock,
            resume,
        },
        store,
    })
}

/// The store settings a node uses. Every append compresses its new leaf on the writer thread,
/// so on the publish path: zstd level 1 needs a far smaller context than 3 (allocated and
/// cleared per leaf). Packing runs on the packer thread, but on a 2-core device it competes
/// with publishing for CPU: level 3 costs a few ms per leaf where level 10 costs ~30 ms (for
/// 17% fewer bytes and ~25% faster leaf reads; see BENCHMARKS.md, Store).
fn store_config(durability: shoal_store::Durability) -> StoreConfig {
    let mut config = StoreConfig {
        durability,
        ..StoreConfig::default()
    };
    config.tree.zstd_level_append = 1;
    config.tree.zstd_level_pack = 3;
    config
}

impl Drop for Node {
    fn drop(&mut self) {
        // Dropped without `shutdown`: still end subscriptions. The writer exits when the last
        // command sender is gone (after committing what is queued).
        let _ = self.shutdown.send(true);
    }
}
