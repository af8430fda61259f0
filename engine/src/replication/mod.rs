//! Replication: turns verified heads from the swarm into imported trees, and local appends into
//! gossiped heads.
//!
//! One task (the *replicator*) owns, per source, the sync *target* (the newest head heard of
//! that is not stored yet), the peers that announced it and the inline blocks that came with
//! gossip. Which head is stored per source is the swarm's head book (`swarm/heads.rs`); the
//! replicator reports each finished import to it with `Command::Stored`.
//!
//! A source with a new target joins the next *import batch*: ONE writer command
//! (`EventService::import_batch`) that puts the inline blocks of every source in the batch and
//! imports each tree that is then complete (the store checks it extends the current one and
//! moves the alias atomically; subscribers get the events, carried in the update, through the
//! same path as local events). At most one batch is in flight; heads arriving meanwhile
//! supersede older targets and wait for the next one, so under load batches grow instead of
//! queueing writer work per head. A tree still missing blocks becomes a fetching sync
//! (`sync.rs`; at most one per source, [`MAX_SYNCS`] in all, at most half of them for sources
//! with no tree stored here; free slots go to stored sources first). A newer head arriving
//! mid-sync supersedes the target: the running sync (a prefix of the newer tree, whose blocks are
//! reused) finishes first, then the newer one starts at once. A failed sync is retried with
//! backoff (blocks not found: 200 ms doubling, the relaying peers may still be syncing; else
//! 2 s …), capped at 30 s, or at once when a newer head arrives or a peer turns out to hold
//! the target (its digest answer names it, or it is the source itself).
//!
//! Local appends (updates of [`Origin::Local`]) are signed as heads and handed to the swarm with
//! their new blocks for the gossip fast path. A head's lamport is only its source's claim: the
//! clock moves with the events an import checked (the writer raises it), never before.
//!
//! The replicator never touches the write connection except through the event service (writer
//! thread), nor the network except through the swarm's handle.

mod sync;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cid::Cid;
use libp2p::identity::Keypair;
use libp2p::PeerId;
use shoal_store::{EventFilter, SourceId};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::events::{
    EventService, EventsError, ImportOutcome, ImportRequest, Origin, SourceUpdate,
};
use crate::head::{Head, SignedHead};
use crate::swarm::{self, Command, Event};
use sync::SyncError;

/// Fetching syncs running at once (different sources).
pub const MAX_SYNCS: usize = 32;
/// Of those, syncs of sources with no tree stored here yet. Anybody can invent sources whose
/// blocks nobody serves (a hostile peer does, by the thousand, and holds their fetches open):
/// they must never take the slots of the sources this node already follows.
const MAX_UNPROVEN_SYNCS: usize = MAX_SYNCS / 2;
/// Sources per import batch (one writer command).
const MAX_BATCH: usize = 256;
/// Inline blocks kept for syncs not started yet, all sources together.
const MAX_STASHED_BYTES: usize = 32 << 20;
/// First retry after blocks were not found (doubles per failure).
const NOT_FOUND_RETRY: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often the sources are scanned for retries that are due and for free sync slots (at
/// most; each one also waits for the next tick).
const SCAN_PERIOD: Duration = Duration::from_millis(100);
const TICK: Duration = Duration::from_millis(250);

/// The running replicator.
pub struct Spawned {
    /// Ends when `shutdown` flips or the swarm's event channel closes; dropping or aborting it
    /// is safe (imports are atomic).
    pub task: JoinHandle<()>,
    /// When a sync last received blocks (`None`: never): fetched blocks are unreferenced until
    /// their import, so GC waits while this is recent (`maintenance.rs`).
    pub sync_activity: watch::Receiver<Option<Instant>>,
}

/// Starts the replicator: it takes verified heads from `heads` (the swarm's events), syncs and
/// imports them through `events`, and gossips local appends through `swarm`, signed with
/// `keypair`. `resumed` are targets saved before a restart.
pub fn spawn(
    events: EventService,
    swarm: swarm::Handle,
    heads: mpsc::Receiver<Event>,
    keypair: Keypair,
    resumed: Vec<SignedHead>,
    resume: crate::resume::Resume,
    shutdown: watch::Receiver<bool>,
) -> Spawned {
    let (activity, sync_activity) = watch::channel(None);
    let mut replicator = Replicator::new(events, swarm, keypair, resume, activity);
    for head in resumed {
        let st = replicator.sources.entry(head.head.source).or_default();
        st.target = Some(head);
    }
    // Subscribed before this returns: an append right after `spawn` is gossiped too (one
    // before it is covered by `publish_own`).
    let updates = replicator.events.updates();
    let task = tokio::spawn(async move {
        replicator.publish_own().await;
        replicator.start_due();
        replicator.run(updates, heads, shutdown).await
    });
    Spawned {
        task,
        sync_activity,
    }
}

#[derive(Default)]
struct SourceState {
    target: Option<SignedHead>,
    /// Peers that announced the target (asked first).
    peers: Vec<PeerId>,
    stash: Vec<(Cid, Vec<u8>)>,
    /// In an import batch or a fetching sync.
    running: bool,
    /// The target's blocks are missing and every sync slot was taken: queued again only when
    /// a slot is free.
    awaits_slot: bool,
    retry_at: Option<Instant>,
    failures: u32,
}

type SyncResult = (PeerId, SignedHead, Result<u64, SyncError>);
type BatchResult = (
    Vec<(PeerId, SignedHead)>,
    Result<Vec<ImportOutcome>, EventsError>,
);

struct Replicator {
    events: EventService,
    keypair: Keypair,
    own: PeerId,
    swarm: swarm::Handle,
    sources: HashMap<PeerId, SourceState>,
    syncs: JoinSet<SyncResult>,
    /// Sources of running syncs that have no tree stored here (at most [`MAX_UNPROVEN_SYNCS`]).
    unproven: HashSet<PeerId>,
    /// The import batch in flight (at most one; see `flush_batch`).
    batches: JoinSet<BatchResult>,
    /// Sources waiting for the next import batch.
    batch_queue: Vec<PeerId>,
    stashed: usize,
    /// Written by sync tasks whenever they receive blocks.
    activity: Arc<watch::Sender<Option<Instant>>>,
    /// Resuming the own source after a lost store: peers' trees of it are imported.
    resume: crate::resume::Resume,
    /// Looks for roots before the writer is asked to import (`import_batch`).
    reader: Option<shoal_store::Reader>,
    /// When `start_due` last scanned every source.
    scanned: Option<Instant>,
}

impl Replicator {
    /// A replicator with no source state yet; blocks received by syncs are reported on
    /// `activity`.
    fn new(
        events: EventService,
        swarm: swarm::Handle,
        keypair: Keypair,
        resume: crate::resume::Resume,
        activity: watch::Sender<Option<Instant>>,
    ) -> Self {
        let reader = match events.reader() {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "no reader for the replicator: every import goes to the writer");
                None
            }
        };
        Replicator {
            own: keypair.public().to_peer_id(),
            keypair,
            events,
            swarm,
            sources: HashMap::new(),
            syncs: JoinSet::new(),
            unproven: HashSet::new(),
            batches: JoinSet::new(),
            batch_queue: Vec::new(),
            stashed: 0,
            activity: Arc::new(activity),
            resume,
            reader,
            scanned: None,
        }
    }
}

fn source_id(peer: &PeerId) -> SourceId {
    SourceId::new(peer.to_string())
}

impl Replicator {
    async fn run(
        mut self,
        mut updates: broadcast::Receiver<Arc<SourceUpdate>>,
        mut heads: mpsc::Receiver<Event>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                biased;
                // A finished batch first, also at shutdown: its `Stored` reports let the swarm
                // save those heads before it stops.
                Some(done) = self.batches.join_next(), if !self.batches.is_empty() => match done {
                    Ok(result) => self.on_batch_done(result).await,
                    Err(e) => tracing::error!(error = %e, "an import batch task failed"),
                },
                _ = crate::stopped(&mut shutdown) => break,
                Some(done) = self.syncs.join_next(), if !self.syncs.is_empty() => match done {
                    Ok(result) => self.on_sync_done(result).await,
                    Err(e) => tracing::error!(error = %e, "a sync task failed"),
                },
                update = updates.recv() => match update {
                    Ok(u) => self.on_updates(u, &mut updates).await,
                    Err(broadcast::error::RecvError::Lagged(_)) => self.publish_own().await,
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                ev = heads.recv() => match ev {
                    Some(Event::Head { head, blocks, from, held }) => {
                        self.on_head(head, blocks, from, held)
                    }
                    Some(Event::Forgotten { source }) => self.forget(&source),
                    None => break,
                },
                _ = tick.tick() => self.start_due(),
            }
            self.flush_batch();
        }
        self.syncs.abort_all();
    }

    /// Local appends: sign the head of the newest and gossip it with the new blocks of all.
    /// Every commit already waiting on the broadcast is taken with `first`, so a burst of
    /// commits costs one signature and one gossip message instead of one per commit (the newest
    /// head covers the older ones; a peer that misses blocks fetches them).
    async fn on_updates(
        &mut self,
        first: Arc<SourceUpdate>,
        updates: &mut broadcast::Receiver<Arc<SourceUpdate>>,
    ) {
        let mut newest: Option<(Arc<SourceUpdate>, u64, u64)> = None;
        let mut blocks: Vec<(Cid, Vec<u8>)> = Vec::new();
        // Past the gossip limit no block goes inline (peers fetch them): stop copying.
        let mut inline = Some(0usize);
        let mut next = Some(first);
        while let Some(u) = next.take() {
            if let Origin::Local {
                lamport,
                timestamp,
                new_blocks,
            } = &u.origin
            {
                inline = inline
                    .map(|n| n + new_blocks.iter().map(|(_, d)| d.len()).sum::<usize>())
                    .filter(|&n| n <= swarm::gossip::INLINE_LIMIT);
                match inline {
                    Some(_) => blocks.extend(new_blocks.iter().cloned()),
                    None => blocks.clear(),
                }
                let (lamport, timestamp) = (*lamport, *timestamp);
                newest = Some((u, lamport, timestamp));
            }
            next = match updates.try_recv() {
                Ok(u) => Some(u),
                // The newest head read from the store covers whatever was missed.
                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    return self.publish_own().await;
                }
                Err(_) => None,
            };
        }
        let Some((u, lamport, timestamp)) = newest else {
            return;
        };
        let head = Head {
            source: self.own,
            root: u.root,
            offset: u.last,
            lamport,
            timestamp,
            pruned: 0,
        };
        match head.sign(&self.keypair) {
            Ok(head) => {
                let _ = self.swarm.send(Command::Publish { head, blocks }).await;
            }
            Err(e) => tracing::error!(error = %e, "cannot sign our head"),
        }
    }

    /// Signs and publishes our own head from the store (startup, or after lagging).
    async fn publish_own(&mut self) {
        let reader = match self.events.reader() {
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
                    // A pruned tree is signed with its generation (`retention.rs`), else a
                    // peer holding it would take this head for a fork.
                    pruned: reader.pruned_generation(&source, info.last_offset)?,
                }))
            })
            .await;
        let head = match read {
            Ok(Ok(Some(head))) => head,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => return tracing::warn!(error = %e, "cannot read our own head"),
            Err(e) => return tracing::warn!(error = %e, "reading our own head panicked"),
        };
        if let Ok(head) = head.sign(&self.keypair) {
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
        self.events.offsets().get(&source_id(source))
    }

    fn on_head(&mut self, head: SignedHead, blocks: Vec<(Cid, Vec<u8>)>, from: PeerId, held: bool) {
        // The head's lamport is the source's claim: the clock moves only with imported,
        // checked events (the writer does it), and a lamport no tree may hold drops the head.
        if head.head.lamport > shoal_store::MAX_LAMPORT {
            tracing::warn!(source = %head.head.source, %from, lamport = head.head.lamport, "dropped a head with a lamport past the limit");
            return;
        }
        let source = head.head.source;
        // Our own tree is imported only while resuming after a lost store (`crate::resume`).
        if source == self.own && !self.resume.wants(head.head.offset) {
            return;
        }
        let stored = self.stored_offset(&source);
        if stored.is_some_and(|o| o > head.head.offset) {
            return;
        }
        let stashed_total = self.stashed;
        let st = self.sources.entry(source).or_default();
        // Keep inline blocks even when this head is not the newest: a newer target may need them.
        let size: usize = blocks.iter().map(|(_, d)| d.len()).sum();
        if !blocks.is_empty() && stashed_total + size <= MAX_STASHED_BYTES {
            st.stash.extend(blocks);
            self.stashed += size;
        }
        // A peer that holds the tree is asked first.
        if held || !st.peers.contains(&from) {
            st.peers.retain(|p| *p != from);
            st.peers.insert(0, from);
            st.peers.truncate(8);
        }
        if let Some(target) = &st.target {
            let (have, got) = (target.head.position(), head.head.position());
            // A sync that failed for want of blocks is worth trying again at once when a peer
            // turns out to hold the whole target: the peers that relayed its head may simply
            // not have imported it yet, and a relayed head arriving again says nothing new.
            let retry = held && have == got && st.retry_at.is_some();
            if have >= got {
                if retry {
                    st.retry_at = None;
                    self.maybe_start(source);
                }
                return;
            }
        }
        tracing::debug!(%source, offset = head.head.offset, %from, "newer head");
        st.target = Some(head);
        st.retry_at = None;
        // A new target may be complete with its inline blocks: it goes to the writer now.
        st.awaits_slot = false;
        self.maybe_start(source);
    }

    /// The head book gave `source` up (its tree was never stored here): its target and stash
    /// go. A sync still running for it finishes or fails on its own.
    fn forget(&mut self, source: &PeerId) {
        if let Some(st) = self.sources.remove(source) {
            let bytes: usize = st.stash.iter().map(|(_, d)| d.len()).sum();
            self.stashed -= bytes.min(self.stashed);
        }
    }

    /// Keeps the per-source state within the head book's limit also when a `Forgotten` event
    /// was lost (the swarm does not wait for a busy replicator): idle sources go first, then
    /// the targets that failed most.
    fn prune(&mut self) {
        if self.sources.len() <= swarm::heads::MAX_SOURCES {
            return;
        }
        self.sources
            .retain(|_, s| s.running || s.target.is_some() || !s.stash.is_empty());
        let over = self.sources.len().saturating_sub(swarm::heads::MAX_SOURCES);
        if over > 0 {
            let mut failing: Vec<(u32, PeerId)> = self
                .sources
                .iter()
                .filter(|(_, s)| !s.running && s.failures > 0)
                .map(|(p, s)| (s.failures, *p))
                .collect();
            failing.sort_unstable_by_key(|f| std::cmp::Reverse(f.0));
            for (_, source) in failing.into_iter().take(over) {
                self.forget(&source);
            }
        }
    }

    /// After `finished` sources ended a batch or a sync: each goes on at once if a newer target
    /// came meanwhile; the scan of all sources (thousands under attack) for retries that are
    /// due and for free sync slots runs at most every [`SCAN_PERIOD`].
    fn start_soon(&mut self, finished: impl IntoIterator<Item = PeerId>) {
        for source in finished {
            if self.sources.get(&source).is_some_and(|s| !s.awaits_slot) {
                self.maybe_start(source);
            }
        }
        if self.scanned.is_none_or(|t| t.elapsed() >= SCAN_PERIOD) {
            self.start_due();
        }
    }

    fn start_due(&mut self) {
        self.prune();
        let now = Instant::now();
        self.scanned = Some(now);
        // Sources that found every sync slot taken go back to the writer only as slots free
        // up: re-importing all of them after every batch kept the writer busy for nothing
        // while syncs were full (thousands of invented sources under attack). Sources with a
        // tree stored here get the free slots first, the least failing first.
        let mut due = Vec::new();
        let mut waiting = Vec::new();
        // Peer ids of the stored sources, parsed once (they are few; printing a peer id per
        // waiting source, thousands under attack, took 40% of a node's CPU).
        let mut stored: Option<HashSet<PeerId>> = None;
        let free = MAX_SYNCS.saturating_sub(self.syncs.len());
        for (source, s) in &self.sources {
            if s.running || s.target.is_none() || s.retry_at.is_some_and(|t| t > now) {
                continue;
            }
            if s.awaits_slot {
                if free == 0 {
                    continue;
                }
                let stored = stored.get_or_insert_with(|| {
                    let offsets = self.events.offsets();
                    offsets
                        .iter()
                        .filter_map(|(s, _)| s.as_str().parse().ok())
                        .collect()
                });
                waiting.push((!stored.contains(source), s.failures, *source));
            } else {
                due.push(*source);
            }
        }
        due.extend(take_slots(
            waiting,
            free,
            MAX_UNPROVEN_SYNCS.saturating_sub(self.unproven.len()),
        ));
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
                checked: false,
            });
            heads.push((source, head));
        }
        if imports.is_empty() {
            return;
        }
        let events = self.events.clone();
        let reader = self.reader.clone();
        self.batches.spawn(async move {
            let result = import_batch(&events, reader, imports).await;
            (heads, result)
        });
    }

    async fn on_batch_done(&mut self, (heads, result): BatchResult) {
        let finished: Vec<PeerId> = heads.iter().map(|(s, _)| *s).collect();
        let outcomes = match result {
            Ok(o) => o,
            Err(e) => {
                for (source, head) in heads {
                    self.sync_failed(source, &head, &SyncError::Events(e.clone()));
                }
                self.start_soon(finished);
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
                    let unproven = self.stored_offset(&source).is_none();
                    if self.syncs.len() >= MAX_SYNCS
                        || (unproven && self.unproven.len() >= MAX_UNPROVEN_SYNCS)
                    {
                        // Not now: `start_due` queues it again once a sync slot is free.
                        if let Some(st) = self.sources.get_mut(&source) {
                            st.running = false;
                            st.awaits_slot = true;
                        }
                        continue;
                    }
                    if let Some(st) = self.sources.get_mut(&source) {
                        st.awaits_slot = false;
                    }
                    let peers = self
                        .sources
                        .get(&source)
                        .map(|st| st.peers.clone())
                        .unwrap_or_default();
                    let events = self.events.clone();
                    let swarm = self.swarm.clone();
                    let activity = self.activity.clone();
                    if unproven {
                        self.unproven.insert(source);
                    }
                    self.syncs.spawn(async move {
                        let result =
                            sync::sync(&events, &swarm, &activity, &head, missing, peers).await;
                        (source, head, result)
                    });
                }
            }
        }
        self.start_soon(finished);
    }

    async fn on_sync_done(&mut self, (source, head, result): SyncResult) {
        self.unproven.remove(&source);
        match result {
            Ok(events) => self.sync_ok(source, head, events).await,
            Err(e) => self.sync_failed(source, &head, &e),
        }
        self.start_soon([source]);
    }

    async fn sync_ok(&mut self, source: PeerId, head: SignedHead, events: u64) {
        // A source forgotten meanwhile has no state left; its import still counts.
        if let Some(st) = self.sources.get_mut(&source) {
            st.running = false;
            st.failures = 0;
            st.retry_at = None;
            if st
                .target
                .as_ref()
                .is_some_and(|t| t.head.position() <= head.head.position())
            {
                st.target = None;
            }
        }
        if events > 0 {
            tracing::debug!(
                %source, offset = head.head.offset, events,
                age_ms = crate::swarm::age_ms(head.head.timestamp), "sync finished"
            );
        }
        // The tree is checked; the head's own claims are not: one whose offset is not its
        // tree's is not kept or relayed (its source signed a wrong head).
        let stored = self.stored_offset(&source);
        if stored != Some(head.head.offset) {
            tracing::warn!(
                %source, claimed = head.head.offset, stored = ?stored,
                "a head's offset does not match its tree; dropped (the source signed a wrong head)"
            );
            return;
        }
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
}

/// Imports a batch through the writer, except the trees that came without blocks and whose
/// root is not here: they are missing their root, which a reader can tell without the writer.
/// Under attack those are nearly all (sources invented by the thousand, with roots nobody
/// serves), and asking the writer about each kept publishes waiting behind it.
async fn import_batch(
    events: &EventService,
    reader: Option<shoal_store::Reader>,
    imports: Vec<ImportRequest>,
) -> Result<Vec<ImportOutcome>, EventsError> {
    let Some(reader) = reader else {
        return events.import_batch(imports).await;
    };
    let roots: Vec<Option<Cid>> = imports
        .iter()
        .map(|r| r.blocks.is_empty().then_some(r.root))
        .collect();
    let absent = tokio::task::spawn_blocking(move || {
        roots
            .into_iter()
            .map(|root| root.is_some_and(|c| reader.has_block(&c).is_ok_and(|has| !has)))
            .collect::<Vec<bool>>()
    })
    .await
    .unwrap_or_default();
    if !absent.iter().any(|a| *a) {
        return events.import_batch(imports).await;
    }
    let mut outcomes: Vec<Option<ImportOutcome>> = Vec::with_capacity(imports.len());
    let mut to_writer = Vec::new();
    for (i, r) in imports.into_iter().enumerate() {
        if absent.get(i).copied().unwrap_or(false) {
            outcomes.push(Some(ImportOutcome::Missing(vec![r.root])));
        } else {
            outcomes.push(None);
            to_writer.push(r);
        }
    }
    let mut written = if to_writer.is_empty() {
        Vec::new()
    } else {
        events.import_batch(to_writer).await?
    }
    .into_iter();
    Ok(outcomes
        .into_iter()
        .map_while(|o| o.or_else(|| written.next()))
        .collect())
}

/// Which of the sources waiting for a sync slot get the `free` ones: those with a tree stored
/// here first (`unproven` false), the least failing first; at most `free_unproven` of the rest.
fn take_slots(
    mut waiting: Vec<(bool, u32, PeerId)>,
    free: usize,
    free_unproven: usize,
) -> Vec<PeerId> {
    // Only the first `free` matter: select them, then order just those.
    if free == 0 {
        return Vec::new();
    }
    if waiting.len() > free {
        waiting.select_nth_unstable(free - 1);
        waiting.truncate(free);
    }
    waiting.sort_unstable();
    let (mut free, mut free_unproven) = (free, free_unproven);
    let mut out = Vec::new();
    for (unproven, _, source) in waiting {
        if free == 0 || (unproven && free_unproven == 0) {
            break;
        }
        if unproven {
            free_unproven -= 1;
        }
        free -= 1;
        out.push(source);
    }
    out
}

#[cfg(test)]
mod tests;
