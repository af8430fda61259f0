//! Replication: turns verified heads from the swarm into imported trees, and local appends into
//! gossiped heads.
//!
//! One task (the *replicator*) owns, per source, the head stored here, the newest head known
//! (the sync *target*) and the inline blocks that came with gossip. A source with a new target
//! joins the next *import batch*: ONE writer command (`EventService::import_batch`) that puts
//! the inline blocks of every source in the batch and imports each tree that is then complete
//! (the store checks it extends the current one and moves the alias atomically; subscribers get
//! the events, carried in the update, through the same path as local events). At most one batch
//! is in flight; heads arriving meanwhile supersede older targets and wait for the next one, so
//! under load batches grow instead of queueing writer work per head. A tree still missing blocks
//! becomes a fetching sync (at most one per source, [`MAX_SYNCS`] in all): fetch the missing
//! blocks through the swarm's exchange (verified there), put them, and import-or-learn-what-is-
//! missing again, one tree level per round. A newer head arriving mid-sync supersedes the
//! target: the running sync (a prefix of the newer tree, whose blocks are reused) finishes
//! first, then the newer one starts at once. A failed sync is retried with backoff (blocks not
//! found: 200 ms doubling, the relaying peers may still be syncing; else 2 s …), capped at 30 s,
//! or at once when a newer head arrives.
//!
//! Local appends (updates with `local`) are signed as heads and handed to the swarm with their
//! new blocks for the gossip fast path. Every head seen raises the Lamport clock.
//!
//! Restarts: the stored and target heads are kept in `<data dir>/swarm-heads` (rewritten
//! atomically at most once a second); on start, stored heads whose root is still the store's
//! are served again, and targets beyond the store resume syncing. The replicator never touches
//! the write connection except through the event service (writer thread).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cid::Cid;
use libp2p::multiaddr::Protocol;
use libp2p::PeerId;
use shoal_store::{EventFilter, Reader, SourceId};
use tokio::sync::{broadcast, mpsc};
use tokio::task::{JoinHandle, JoinSet};

use crate::events::{EventsError, ImportOutcome, ImportRequest, SourceUpdate};
use crate::exchange::{BlockSource, FetchEvent};
use crate::head::{Head, SignedHead};
use crate::node::{NetworkState, NodeHandle, PeerInfo};
use crate::swarm::{self, Command, Event};

/// Fetching syncs running at once (different sources).
pub const MAX_SYNCS: usize = 32;
/// Sources per import batch (one writer command).
const MAX_BATCH: usize = 256;
/// Inline blocks kept for syncs not started yet, all sources together.
const MAX_STASHED_BYTES: usize = 32 << 20;
/// Blocks are put in batches of about this many bytes.
const PUT_BATCH_BYTES: usize = 8 << 20;
/// A fetch that delivers nothing for this long fails (and is retried).
const FETCH_STALL: Duration = Duration::from_secs(60);
/// Fetch rounds per sync (one per tree level that was missing).
const MAX_ROUNDS: usize = 64;
const HEADS_FILE: &str = "swarm-heads";
/// First retry after blocks were not found (doubles per failure).
const NOT_FOUND_RETRY: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Why replication could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error(transparent)]
    Swarm(#[from] swarm::Error),
    #[error("cannot open a store reader: {0}")]
    Store(#[from] shoal_store::Error),
}

/// Why one sync failed (it is retried).
#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error("{0} blocks not found at any connected peer")]
    NotFound(usize),
    #[error("no block arrived for {0:?}")]
    Stalled(Duration),
    #[error("the tree is still incomplete after {0} fetch rounds")]
    TooDeep(usize),
    #[error("the swarm stopped")]
    SwarmStopped,
    #[error(transparent)]
    Events(#[from] EventsError),
    #[error(transparent)]
    Store(#[from] shoal_store::Error),
}

/// Serves peers' `Want`s from the store through a few read connections, taken in turn: one
/// connection (a mutex) made concurrent `Want`s for blob chunks (1 MiB each) wait on each other.
struct StoreBlocks {
    readers: Vec<Reader>,
    next: std::sync::atomic::AtomicUsize,
}

/// Read connections of [`StoreBlocks`]: as many as the swarm serves `Want`s at once.
const SERVE_READERS: usize = 4;

impl StoreBlocks {
    fn open(store: &shoal_store::Store) -> Result<StoreBlocks, shoal_store::Error> {
        let readers = (0..SERVE_READERS)
            .map(|_| store.reader())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(StoreBlocks {
            readers,
            next: Default::default(),
        })
    }
}

impl BlockSource for StoreBlocks {
    fn get_block(&self, cid: &Cid) -> Result<Option<Vec<u8>>, String> {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.readers[i % self.readers.len()]
            .get_block(cid)
            .map_err(|e| e.to_string())
    }
}

/// The running swarm and replicator; [`Replication::stop`] ends both.
pub struct Replication {
    swarm: swarm::Handle,
    task: JoinHandle<()>,
    swarm_task: JoinHandle<()>,
}

impl Replication {
    pub fn swarm(&self) -> &swarm::Handle {
        &self.swarm
    }

    /// Stops the replicator (aborting running syncs: imports are atomic) and the swarm.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
        drop(self.swarm);
        self.swarm_task.abort();
        let _ = self.swarm_task.await;
    }
}

/// Starts the swarm and the replicator for `node`; returns once the swarm listens.
pub async fn start(node: NodeHandle) -> Result<Replication, ReplicationError> {
    let cfg = node.config();
    let mut swarm_cfg = swarm::Config::new(node.identity().keypair().clone());
    swarm_cfg.listen = cfg.swarm_addrs.clone();
    swarm_cfg.peers = cfg.peers.clone();
    swarm_cfg.mdns = cfg.mdns;
    if let Some(path) = &cfg.swarm_key {
        swarm_cfg.swarm_key = Some(swarm::read_swarm_key(path)?);
    }
    let blocks = Arc::new(StoreBlocks::open(node.store())?);
    let (handle, events, swarm_task) = swarm::spawn(swarm_cfg, blocks).await?;
    let mut replicator = Replicator {
        own: node.identity().peer_id(),
        heads_path: node.config().data_dir.join(HEADS_FILE),
        swarm: handle.clone(),
        node,
        sources: HashMap::new(),
        syncs: JoinSet::new(),
        batches: JoinSet::new(),
        batch_queue: Vec::new(),
        stashed: 0,
        dirty: false,
    };
    replicator.publish_network();
    replicator.restore().await;
    let task = tokio::spawn(replicator.run(events));
    Ok(Replication {
        swarm: handle,
        task,
        swarm_task,
    })
}

#[derive(Default)]
struct SourceState {
    stored: Option<SignedHead>,
    target: Option<SignedHead>,
    /// Peers that announced the target (asked first).
    peers: Vec<PeerId>,
    stash: Vec<(Cid, Vec<u8>)>,
    /// In an import batch or a fetching sync.
    running: bool,
    retry_at: Option<Instant>,
    failures: u32,
}

type SyncResult = (PeerId, SignedHead, Result<u64, SyncError>);
type BatchResult = (
    Vec<(PeerId, SignedHead)>,
    Result<Vec<ImportOutcome>, EventsError>,
);

struct Replicator {
    node: NodeHandle,
    own: PeerId,
    swarm: swarm::Handle,
    sources: HashMap<PeerId, SourceState>,
    syncs: JoinSet<SyncResult>,
    /// The import batch in flight (at most one; see `flush_batch`).
    batches: JoinSet<BatchResult>,
    /// Sources waiting for the next import batch.
    batch_queue: Vec<PeerId>,
    stashed: usize,
    dirty: bool,
    heads_path: PathBuf,
}

fn source_id(peer: &PeerId) -> SourceId {
    SourceId::new(peer.to_string())
}

fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl Replicator {
    async fn run(mut self, mut events: mpsc::Receiver<Event>) {
        let mut updates = self.node.events().updates();
        let mut shutdown = self.node.shutdown_signal();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // Node info and connectivity read the network state: keep it fresh (it is a cheap copy).
        let mut net_tick = tokio::time::interval(Duration::from_millis(250));
        net_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                Some(done) = self.batches.join_next(), if !self.batches.is_empty() => match done {
                    Ok(result) => self.on_batch_done(result).await,
                    Err(e) => tracing::error!(error = %e, "an import batch task failed"),
                },
                Some(done) = self.syncs.join_next(), if !self.syncs.is_empty() => match done {
                    Ok(result) => self.on_sync_done(result).await,
                    Err(e) => tracing::error!(error = %e, "a sync task failed"),
                },
                update = updates.recv() => match update {
                    Ok(u) => self.on_update(&u).await,
                    Err(broadcast::error::RecvError::Lagged(_)) => self.publish_own().await,
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                ev = events.recv() => match ev {
                    Some(Event::Head { head, blocks, from }) => self.on_head(head, blocks, from),
                    None => break,
                },
                _ = net_tick.tick() => self.publish_network(),
                _ = tick.tick() => {
                    self.start_due();
                    if self.dirty {
                        self.persist();
                    }
                }
            }
            self.flush_batch();
        }
        self.syncs.abort_all();
        if self.dirty {
            self.persist();
        }
    }

    /// A local append: sign its head and gossip it with its new blocks.
    async fn on_update(&mut self, u: &SourceUpdate) {
        if !u.local {
            return;
        }
        let head = Head {
            source: self.own,
            root: u.root,
            offset: u.last,
            lamport: u.lamport,
            timestamp: u.timestamp,
        };
        match head.sign(self.node.identity().keypair()) {
            Ok(head) => {
                let blocks = u.new_blocks.to_vec();
                let _ = self.swarm.send(Command::Publish { head, blocks }).await;
            }
            Err(e) => tracing::error!(error = %e, "cannot sign our head"),
        }
    }

    /// Signs and publishes our own head from the store (startup, or after lagging).
    async fn publish_own(&mut self) {
        let reader = match self.node.store().reader() {
            Ok(r) => r,
            Err(e) => return tracing::warn!(error = %e, "cannot read our own head"),
        };
        let source = source_id(&self.own);
        let own = self.own;
        let read =
            tokio::task::spawn_blocking(move || -> Result<Option<Head>, shoal_store::Error> {
                let Some(info) = reader.source(&source)? else {
                    return Ok(None);
                };
                let last = reader
                    .events(
                        &source,
                        info.last_offset..=info.last_offset,
                        &EventFilter::all(),
                        false,
                    )?
                    .next()
                    .transpose()?;
                Ok(Some(Head {
                    source: own,
                    root: info.root,
                    offset: info.last_offset,
                    lamport: last.as_ref().map_or(0, |e| e.lamport),
                    timestamp: last.as_ref().map_or(0, |e| e.timestamp),
                }))
            })
            .await;
        let head = match read {
            Ok(Ok(Some(head))) => head,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => return tracing::warn!(error = %e, "cannot read our own head"),
            Err(e) => return tracing::warn!(error = %e, "reading our own head panicked"),
        };
        if let Ok(head) = head.sign(self.node.identity().keypair()) {
            let _ = self
                .swarm
                .send(Command::Publish {
                    head,
                    blocks: vec![],
                })
                .await;
        }
    }

    fn stored_offset(&self, source: &PeerId) -> Option<u64> {
        self.node.events().offsets().get(&source_id(source))
    }

    fn on_head(&mut self, head: SignedHead, blocks: Vec<(Cid, Vec<u8>)>, from: PeerId) {
        self.node.events().observe_lamport(head.head.lamport);
        let source = head.head.source;
        if source == self.own {
            return;
        }
        let stored = self.stored_offset(&source);
        if stored.is_some_and(|o| o > head.head.offset) {
            return;
        }
        let stashed_total = self.stashed;
        let st = self.sources.entry(source).or_default();
        if stored == Some(head.head.offset) && st.stored.is_some() {
            return;
        }
        // Keep inline blocks even when this head is not the newest: a newer target may need them.
        let size: usize = blocks.iter().map(|(_, d)| d.len()).sum();
        if !blocks.is_empty() && stashed_total + size <= MAX_STASHED_BYTES {
            st.stash.extend(blocks);
            self.stashed += size;
        }
        if !st.peers.contains(&from) {
            st.peers.insert(0, from);
            st.peers.truncate(8);
        }
        if st
            .target
            .as_ref()
            .is_some_and(|t| t.head.offset >= head.head.offset)
        {
            return;
        }
        tracing::debug!(%source, offset = head.head.offset, %from, "newer head");
        st.target = Some(head);
        st.retry_at = None;
        self.dirty = true;
        self.maybe_start(source);
    }

    fn start_due(&mut self) {
        let now = Instant::now();
        let due: Vec<PeerId> = self
            .sources
            .iter()
            .filter(|(_, s)| {
                !s.running && s.target.is_some() && s.retry_at.is_none_or(|t| t <= now)
            })
            .map(|(p, _)| *p)
            .collect();
        for source in due {
            self.maybe_start(source);
        }
    }

    /// Queues `source`'s target for the next import batch (if it is not syncing already).
    fn maybe_start(&mut self, source: PeerId) {
        let Some(st) = self.sources.get_mut(&source) else {
            return;
        };
        if st.running || st.target.is_none() || st.retry_at.is_some_and(|t| t > Instant::now()) {
            return;
        }
        st.running = true;
        self.batch_queue.push(source);
    }

    /// Starts the next import batch unless one is in flight: ONE writer command puts the
    /// inline blocks of every queued source and imports each complete target. Heads that
    /// arrive meanwhile supersede older targets and wait for the next batch, so under load
    /// batches grow instead of queueing one writer round trip per head.
    fn flush_batch(&mut self) {
        if !self.batches.is_empty() || self.batch_queue.is_empty() {
            return;
        }
        let take = self.batch_queue.len().min(MAX_BATCH);
        let mut heads = Vec::with_capacity(take);
        let mut imports = Vec::with_capacity(take);
        for source in self.batch_queue.drain(..take) {
            let Some(st) = self.sources.get_mut(&source) else {
                continue;
            };
            let Some(head) = st.target.clone() else {
                st.running = false;
                continue;
            };
            let stash = std::mem::take(&mut st.stash);
            let bytes: usize = stash.iter().map(|(_, d)| d.len()).sum();
            self.stashed -= bytes.min(self.stashed);
            imports.push(ImportRequest {
                source: source_id(&source),
                root: head.head.root,
                blocks: stash,
            });
            heads.push((source, head));
        }
        if imports.is_empty() {
            return;
        }
        let node = self.node.clone();
        self.batches.spawn(async move {
            let result = node.events().import_batch(imports).await;
            (heads, result)
        });
    }

    async fn on_batch_done(&mut self, (heads, result): BatchResult) {
        let outcomes = match result {
            Ok(o) => o,
            Err(e) => {
                for (source, head) in heads {
                    self.sync_failed(source, &head, &SyncError::Events(e.clone()));
                }
                self.start_due();
                return;
            }
        };
        for ((source, head), outcome) in heads.into_iter().zip(outcomes) {
            match outcome {
                ImportOutcome::Imported(i) => {
                    self.sync_ok(source, head, i.last + 1 - i.first).await
                }
                ImportOutcome::Current => self.sync_ok(source, head, 0).await,
                ImportOutcome::Failed(e) => self.sync_failed(source, &head, &SyncError::Events(e)),
                ImportOutcome::Missing(missing) => {
                    if self.syncs.len() >= MAX_SYNCS {
                        // Not now: `start_due` queues it again once syncs finish.
                        if let Some(st) = self.sources.get_mut(&source) {
                            st.running = false;
                        }
                        continue;
                    }
                    let peers = self
                        .sources
                        .get(&source)
                        .map(|st| st.peers.clone())
                        .unwrap_or_default();
                    let node = self.node.clone();
                    let swarm = self.swarm.clone();
                    self.syncs.spawn(async move {
                        let result = sync(&node, &swarm, &head, missing, peers).await;
                        (source, head, result)
                    });
                }
            }
        }
        self.start_due();
    }

    async fn on_sync_done(&mut self, (source, head, result): SyncResult) {
        match result {
            Ok(events) => self.sync_ok(source, head, events).await,
            Err(e) => self.sync_failed(source, &head, &e),
        }
        self.start_due();
    }

    async fn sync_ok(&mut self, source: PeerId, head: SignedHead, events: u64) {
        let Some(st) = self.sources.get_mut(&source) else {
            return;
        };
        st.running = false;
        st.failures = 0;
        st.retry_at = None;
        if st
            .target
            .as_ref()
            .is_some_and(|t| t.head.offset <= head.head.offset)
        {
            st.target = None;
        }
        if events > 0 {
            tracing::debug!(
                %source, offset = head.head.offset, events,
                age_ms = crate::swarm::age_ms(head.head.timestamp), "sync finished"
            );
        }
        st.stored = Some(head.clone());
        self.dirty = true;
        let _ = self.swarm.send(Command::Stored(head)).await;
    }

    fn sync_failed(&mut self, source: PeerId, head: &SignedHead, e: &SyncError) {
        let Some(st) = self.sources.get_mut(&source) else {
            return;
        };
        st.running = false;
        st.failures += 1;
        let backoff = match e {
            // Usually transient: the peers that relayed the head are still syncing it
            // themselves. Ask again soon, then back off.
            SyncError::NotFound(_) => {
                (NOT_FOUND_RETRY * (1 << (st.failures - 1).min(8))).min(MAX_BACKOFF)
            }
            _ => Duration::from_secs(1 << st.failures.min(5)).min(MAX_BACKOFF),
        };
        st.retry_at = Some(Instant::now() + backoff);
        tracing::warn!(%source, offset = head.head.offset, error = %e, retry_in = ?backoff, "sync failed");
    }

    /// Mirrors the swarm's view into the node's network state (node info, connectivity).
    fn publish_network(&self) {
        let mut listen = self.swarm.listen_addrs();
        // Loopback first: it is what `shoal run` prints when listening on 0.0.0.0.
        listen.sort_by_key(|a| {
            !a.iter()
                .any(|p| matches!(p, Protocol::Ip4(ip) if ip.is_loopback()))
        });
        let peers = self
            .swarm
            .peers()
            .into_iter()
            .map(|p| PeerInfo {
                peer_id: p.peer_id.to_string(),
                addrs: p.addrs.iter().map(|a| a.to_string()).collect(),
                connected: p.connected,
                last_seen: Some(micros(p.last_seen)),
                our_offset_stored: p.our_offset_stored,
            })
            .collect();
        let known = self
            .swarm
            .known_offsets()
            .into_iter()
            .map(|(p, o)| (source_id(&p), o))
            .collect();
        self.node.network().send_replace(NetworkState {
            listen_addrs: listen,
            peers,
            known,
        });
    }

    /// Writes the heads file (atomically, off the async threads).
    fn persist(&mut self) {
        self.dirty = false;
        let mut out = Vec::new();
        for st in self.sources.values() {
            for (kind, h) in [(0u8, &st.stored), (1u8, &st.target)] {
                if let Some(h) = h {
                    let b = h.encode();
                    out.push(kind);
                    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
                    out.extend_from_slice(&b);
                }
            }
        }
        let path = self.heads_path.clone();
        tokio::task::spawn_blocking(move || {
            let tmp = path.with_extension("tmp");
            let res = std::fs::write(&tmp, &out).and_then(|_| std::fs::rename(&tmp, &path));
            if let Err(e) = res {
                tracing::warn!(path = %path.display(), error = %e, "cannot save known heads");
            }
        });
    }

    /// Loads the heads file, re-serves stored heads and resumes syncs; publishes our own head.
    async fn restore(&mut self) {
        let path = self.heads_path.clone();
        let bytes = tokio::task::spawn_blocking(move || std::fs::read(path))
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_default();
        let mut r = crate::head::Reader::new(&bytes);
        while !r.is_empty() {
            let (Ok(kind), Ok(len)) = (r.u8(), r.u16()) else {
                break;
            };
            let Ok(head) = r.take(len as usize).and_then(SignedHead::decode) else {
                break;
            };
            if head.verify().is_err() || head.head.source == self.own {
                continue;
            }
            let source = head.head.source;
            let stored = self.stored_offset(&source);
            let st = self.sources.entry(source).or_default();
            if kind == 0 && stored == Some(head.head.offset) {
                st.stored = Some(head.clone());
                let _ = self.swarm.send(Command::Stored(head)).await;
            } else if kind == 1 && stored.is_none_or(|o| o < head.head.offset) {
                tracing::info!(%source, offset = head.head.offset, "resuming an incomplete sync");
                st.target = Some(head);
            }
        }
        self.publish_own().await;
        self.start_due();
    }
}

/// Fetches the `missing` blocks of `head`'s tree (and those they reveal, one round per tree
/// level) and imports it. Returns the number of new events.
async fn sync(
    node: &NodeHandle,
    swarm: &swarm::Handle,
    head: &SignedHead,
    mut missing: Vec<Cid>,
    peers: Vec<PeerId>,
) -> Result<u64, SyncError> {
    let source = source_id(&head.head.source);
    let root = head.head.root;
    let started = Instant::now();
    let mut fetched = 0usize;
    tracing::info!(source = %source, offset = head.head.offset, blocks = missing.len(), "sync started: fetching");
    for _ in 0..MAX_ROUNDS {
        fetched += fetch(node, swarm, missing, peers.clone()).await?;
        // Import if complete, else learn what the fetched blocks revealed: one writer hop.
        let request = ImportRequest {
            source: source.clone(),
            root,
            blocks: vec![],
        };
        let outcome = node.events().import_batch(vec![request]).await?;
        match outcome.into_iter().next() {
            Some(ImportOutcome::Imported(imported)) => {
                let events = imported.last + 1 - imported.first;
                tracing::info!(
                    source = %source, offset = imported.last, events, blocks = fetched,
                    secs = started.elapsed().as_secs_f64(), "sync finished"
                );
                return Ok(events);
            }
            Some(ImportOutcome::Current) => return Ok(0),
            Some(ImportOutcome::Missing(m)) => missing = m,
            Some(ImportOutcome::Failed(e)) => return Err(e.into()),
            None => return Err(SyncError::SwarmStopped),
        }
    }
    Err(SyncError::TooDeep(MAX_ROUNDS))
}

async fn put(node: &NodeHandle, blocks: Vec<(Cid, Vec<u8>)>) -> Result<(), SyncError> {
    node.events()
        .with_writer(move |w| w.put_blocks(&blocks))
        .await??;
    Ok(())
}

/// Fetches `cids` through the swarm, putting them as they arrive. Returns blocks fetched.
async fn fetch(
    node: &NodeHandle,
    swarm: &swarm::Handle,
    cids: Vec<Cid>,
    preferred: Vec<PeerId>,
) -> Result<usize, SyncError> {
    let total = cids.len();
    let (tx, mut rx) = mpsc::channel(16);
    swarm
        .send(Command::Fetch {
            cids,
            preferred,
            reply: tx,
        })
        .await
        .map_err(|_| SyncError::SwarmStopped)?;
    let (mut done, mut not_found, mut got) = (0, 0, 0);
    let mut batch: Vec<(Cid, Vec<u8>)> = Vec::new();
    let mut batch_bytes = 0;
    while done < total {
        match tokio::time::timeout(FETCH_STALL, rx.recv()).await {
            Ok(Some(FetchEvent::Blocks(blocks))) => {
                done += blocks.len();
                got += blocks.len();
                batch_bytes += blocks.iter().map(|(_, d)| d.len()).sum::<usize>();
                batch.extend(blocks);
                // Put when the batch is big or nothing else is waiting (keeps latency low).
                if batch_bytes >= PUT_BATCH_BYTES || rx.is_empty() {
                    put(node, std::mem::take(&mut batch)).await?;
                    batch_bytes = 0;
                }
            }
            Ok(Some(FetchEvent::NotFound(cids))) => {
                done += cids.len();
                not_found += cids.len();
            }
            Ok(None) => return Err(SyncError::SwarmStopped),
            Err(_) => return Err(SyncError::Stalled(FETCH_STALL)),
        }
    }
    if !batch.is_empty() {
        put(node, batch).await?;
    }
    if not_found > 0 {
        return Err(SyncError::NotFound(not_found));
    }
    Ok(got)
}
