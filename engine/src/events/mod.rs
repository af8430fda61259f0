//! The event service: publish, query, subscribe, offsets — the one entry point every front end
//! (HTTP API, Pond store API, CLI) and the swarm go through.
//!
//! Parts, one module each:
//! - [`writer`]: the single writer thread (group commit, imports, every other store write as a
//!   typed command), the only code that holds the write connection;
//! - [`lamport`]: the clock;
//! - `publish.rs`: what an app publishes and its validation (so every front end rejects the
//!   same inputs with the same reasons); `filter.rs`: what a read asks for;
//! - [`query`]: bounded, ordered reads on read-only connections;
//! - [`subscribe`]: stored-then-live streams fed by the writer's update broadcast;
//! - `stream.rs`: [`EventStream`], the bounded stream queries and subscriptions hand out.
//!
//! This file holds [`EventService`] (the handle), [`EventsError`] and [`start`]. It knows
//! nothing of HTTP or peers.

mod fanout;
mod filter;
pub mod lamport;
mod publish;
pub mod query;
mod stream;
pub mod subscribe;
pub mod writer;

use std::collections::BTreeMap;
use std::sync::Arc;

use shoal_store::{EventFilter, OffsetMap, SourceId, Store};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

pub use filter::{Filter, Order, Query, StreamSelector, Subscription};
pub use lamport::LamportClock;
pub use publish::{
    PublishEvent, Published, MAX_NAME_BYTES, MAX_PAYLOAD_BYTES, MAX_TAGS, MAX_TAG_BYTES,
};
pub(crate) use stream::ChunkSender;
pub use stream::EventStream;
pub use writer::{BlobWrite, ImportOutcome, ImportRequest, Origin, SourceUpdate, Stamp};

/// Bounds of the event service's channels and batches; each is a memory bound, see the field.
#[derive(Debug, Clone)]
pub struct EventsConfig {
    /// Group commit cap: most events appended in one transaction. Bounds the writer's batch
    /// memory and how long one commit can delay the next waiter.
    pub max_commit_events: usize,
    /// Writer command queue (requests waiting for the writer). Publishers wait when it is full.
    pub command_queue: usize,
    /// Committed updates kept for the replicator when it has not caught up yet (for each
    /// subscription at most 32 of its own, `fanout.rs`). One further behind re-reads the
    /// store instead.
    pub update_channel: usize,
    /// Updates whose events total more payload bytes than this are broadcast without their
    /// events (subscribers read them from the store): bounds the memory a receiver that is
    /// behind holds to about `update_channel * inline_update_bytes` (32 × for a subscription).
    pub inline_update_bytes: usize,
    /// Events per chunk handed from a store reader thread to a query or subscription stream.
    pub read_chunk: usize,
    /// Chunks buffered between a reader thread and its consumer.
    pub read_chunks_buffered: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            max_commit_events: 10_000,
            command_queue: 1024,
            update_channel: 128,
            inline_update_bytes: 64 * 1024,
            read_chunk: 256,
            read_chunks_buffered: 4,
        }
    }
}

/// Why an event-service call failed. Cheap to clone: one commit's error is answered to every
/// waiter of the group.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EventsError {
    /// Bad input; nothing was stored. `index` is the event's position in a publish batch.
    #[error("{}{field}: {reason}", index.map(|i| format!("[{i}].")).unwrap_or_default())]
    Invalid {
        index: Option<usize>,
        field: &'static str,
        reason: String,
    },
    /// The disk is full; nothing of the failed batch was stored.
    #[error("storage full: {0}")]
    StorageFull(#[source] Arc<shoal_store::Error>),
    /// The store failed. For a publish: the batch was not stored (the transaction rolled back).
    #[error("storage error: {0}")]
    Storage(#[source] Arc<shoal_store::Error>),
    /// The node's Lamport clock reached [`shoal_store::MAX_LAMPORT`]: nothing was stored. Cannot
    /// happen by counting (2^53 events); the clock only gets there if a lamport that high was
    /// stored, which imports refuse.
    #[error("the node's Lamport clock is at its limit; nothing was stored")]
    ClockExhausted,
    /// A blocking read task died (a bug: it panicked); nothing was changed.
    #[error("a read task failed: {0}")]
    Task(#[source] Arc<tokio::task::JoinError>),
    /// The node is shutting down and did not take the call: nothing was stored.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// This node lost its store and is learning from peers how far they hold its own events
    /// (`resume.rs`): nothing was stored.
    #[error(
        "this node is resuming its own events after its store was lost: publishes wait until a \
         peer says how far it holds them (at most --resume-timeout-secs); nothing was stored, \
         retry later"
    )]
    Resuming,
    /// The node shut down while the call was queued or running: a publish may or may not have
    /// been stored (query before publishing it again, or it may be stored twice).
    #[error("the node shut down during the call; it may have been carried out")]
    Interrupted,
}

impl EventsError {
    /// Whether the failed call may still have acted (a publish may be stored).
    pub fn may_have_acted(&self) -> bool {
        matches!(self, EventsError::Interrupted)
    }
}

impl From<shoal_store::Error> for EventsError {
    fn from(e: shoal_store::Error) -> Self {
        if e.is_full() {
            EventsError::StorageFull(Arc::new(e))
        } else {
            EventsError::Storage(Arc::new(e))
        }
    }
}

impl From<tokio::task::JoinError> for EventsError {
    fn from(e: tokio::task::JoinError) -> Self {
        EventsError::Task(Arc::new(e))
    }
}

fn invalid(index: Option<usize>, field: &'static str, reason: impl Into<String>) -> EventsError {
    EventsError::Invalid {
        index,
        field,
        reason: reason.into(),
    }
}

/// Handle on the event service; cheap to clone.
#[derive(Clone)]
pub struct EventService {
    inner: Arc<Inner>,
}

struct Inner {
    source: SourceId,
    store: Arc<Store>,
    commands: mpsc::Sender<writer::Command>,
    updates: Arc<fanout::Fanout>,
    offsets: watch::Receiver<OffsetMap>,
    clock: Arc<LamportClock>,
    config: EventsConfig,
    shutdown: watch::Receiver<bool>,
    publish_latency: crate::metrics::PublishLatency,
}

/// The writer thread of a running event service; [`WriterThread::stop`] commits what is queued,
/// persists the clock and closes the store's write connection.
pub struct WriterThread {
    commands: mpsc::Sender<writer::Command>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WriterThread {
    /// Stops the writer after every command queued before this call. Not cancel-safe: await it
    /// to the end.
    pub async fn stop(mut self) {
        let (reply, done) = oneshot::channel();
        if self
            .commands
            .send(writer::Command::Shutdown(reply))
            .await
            .is_ok()
        {
            let _ = done.await;
        }
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// What the writer takes over from an opened store.
pub struct Recovered {
    /// The store's one write connection.
    pub writer: shoal_store::Writer,
    /// A read connection for the packer thread.
    pub packer: shoal_store::Reader,
    /// What the store holds now.
    pub offsets: OffsetMap,
    pub clock: LamportClock,
    /// Whether the own source is being resumed (publishes held; `resume.rs`).
    pub resume: crate::resume::Resume,
}

/// Starts the writer thread (and its packer) on `recovered` and the event service over it, for
/// this node's `source`; queries and subscriptions end when `shutdown` flips. What it commits
/// and how long publishes take are counted in `metrics`.
pub fn start(
    recovered: Recovered,
    store: Arc<Store>,
    source: SourceId,
    config: EventsConfig,
    shutdown: watch::Receiver<bool>,
    metrics: &crate::metrics::Metrics,
) -> std::io::Result<(EventService, WriterThread)> {
    let (handles, thread) =
        writer::spawn(recovered, source.clone(), config.clone(), metrics.events())?;
    let thread = WriterThread {
        commands: handles.commands.clone(),
        thread: Some(thread),
    };
    let service = EventService {
        inner: Arc::new(Inner {
            source,
            store,
            commands: handles.commands,
            updates: handles.updates,
            offsets: handles.offsets,
            clock: handles.clock,
            config,
            shutdown,
            publish_latency: metrics.publish_latency(),
        }),
    };
    Ok((service, thread))
}

impl EventService {
    /// This node's source id.
    pub fn source(&self) -> &SourceId {
        &self.inner.source
    }

    /// Appends `events` (1 or more) as one batch: all stored or none. Returns once the batch is
    /// committed. Dropping the future after it was queued does not cancel the append: the batch
    /// may still be stored.
    pub async fn publish(&self, mut events: Vec<PublishEvent>) -> Result<Published, EventsError> {
        let started = std::time::Instant::now();
        if events.is_empty() {
            return Err(invalid(None, "data", "at least one event is required"));
        }
        for (i, e) in events.iter_mut().enumerate() {
            e.validate(i)?;
        }
        let stamps = self
            .call(|reply| writer::Command::Append { events, reply })
            .await?;
        // Committed publishes only: a refused one says nothing about the commit path.
        self.inner.publish_latency.observe(started.elapsed());
        Ok(Published {
            source: self.inner.source.clone(),
            stamps,
        })
    }

    /// Highest stored offset per source (local and replicated).
    pub fn offsets(&self) -> OffsetMap {
        self.inner.offsets.borrow().clone()
    }

    /// Follows [`Self::offsets`]: changes after every commit (Pond's `requestPresent`).
    pub fn offsets_watch(&self) -> watch::Receiver<OffsetMap> {
        self.inner.offsets.clone()
    }

    /// Every committed update, local and replicated, in commit order. A receiver that falls
    /// more than [`EventsConfig::update_channel`] updates behind gets `Lagged` and must re-read
    /// from the store.
    pub fn updates(&self) -> broadcast::Receiver<Arc<SourceUpdate>> {
        self.inner.updates.all()
    }

    /// Raises the Lamport clock past a lamport seen from a peer.
    pub fn observe_lamport(&self, lamport: u64) {
        self.inner.clock.observe(lamport);
    }

    /// Highest lamport used or seen.
    pub fn lamport(&self) -> u64 {
        self.inner.clock.current()
    }

    /// Stored events within bounds, in the requested order; never waits for new events.
    pub fn query(&self, query: Query) -> EventStream {
        query::spawn(self.reads(), query)
    }

    /// Stored events above `lower`, then every new matching event as it is committed.
    /// Ends when the node shuts down or the stream is dropped.
    pub fn subscribe(&self, subscription: Subscription) -> EventStream {
        let updates = self.inner.updates.matching(subscription.filter.clone());
        subscribe::spawn(self.reads(), updates, subscription)
    }

    /// Replication, batched: one writer command that puts each request's blocks and imports
    /// each complete root (see [`writer::Command::ImportBatch`]); one outcome per request.
    /// Safe to drop: each import happens entirely or not at all.
    pub async fn import_batch(
        &self,
        imports: Vec<ImportRequest>,
    ) -> Result<Vec<ImportOutcome>, EventsError> {
        let (reply, rx) = oneshot::channel();
        self.send(writer::Command::ImportBatch { imports, reply })
            .await?;
        rx.await.map_err(|_| EventsError::Interrupted)
    }

    /// Imports one restored tree (`events restore`) like a replicated one, this node's own
    /// source included; the store checks it extends what is stored.
    pub async fn restore_import(
        &self,
        import: ImportRequest,
    ) -> Result<ImportOutcome, EventsError> {
        let (reply, rx) = oneshot::channel();
        self.send(writer::Command::RestoreImport { import, reply })
            .await?;
        let mut outcomes = rx.await.map_err(|_| EventsError::Interrupted)?;
        outcomes.pop().ok_or(EventsError::Interrupted)
    }

    /// Stores blocks fetched ahead of their import (hash-checked by the store); `checked` as
    /// in [`ImportRequest::checked`].
    pub async fn put_blocks(
        &self,
        blocks: Vec<(shoal_store::Cid, Vec<u8>)>,
        checked: bool,
    ) -> Result<(), EventsError> {
        self.call(|reply| writer::Command::PutBlocks {
            blocks,
            checked,
            reply,
        })
        .await
    }

    /// One blob write on the writer (see [`BlobWrite`]).
    pub async fn blob_write(&self, write: BlobWrite) -> Result<(), EventsError> {
        self.call(|reply| writer::Command::Blob { write, reply })
            .await
    }

    /// Unpins blob `cid` and frees its blocks nothing else uses; `None` if not known here.
    pub async fn blob_delete(
        &self,
        cid: shoal_store::Cid,
        replica_only: bool,
    ) -> Result<Option<shoal_store::blob::Freed>, EventsError> {
        self.call(|reply| writer::Command::BlobDelete {
            cid,
            replica_only,
            reply,
        })
        .await
    }

    /// Starts a GC round (see `maintenance.rs`).
    pub(crate) async fn gc_start(&self) -> Result<shoal_store::GcStart, EventsError> {
        self.call(|reply| writer::Command::GcStart { reply }).await
    }

    /// Finds up to `limit` garbage candidates on a read connection of its own, on a thread of
    /// its own in `SCHED_BATCH` (the walk of the live set is CPU work that must not preempt
    /// publishes): the writer goes on committing meanwhile.
    pub(crate) async fn gc_mark(
        &self,
        start: shoal_store::GcStart,
        limit: usize,
    ) -> Result<shoal_store::GcMark, EventsError> {
        let reader = self.reader()?;
        let (tx, rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("shoal-gc-mark".into())
            .spawn(move || {
                yield_to_wakers();
                let _ = tx.send(reader.gc_mark(start, limit));
            })
            .map_err(|e| EventsError::from(shoal_store::Error::Io(e)))?;
        Ok(rx.await.map_err(|_| EventsError::Interrupted)??)
    }

    /// Deletes up to `budget` candidates of `mark` on the writer (one transaction).
    pub(crate) async fn gc_sweep(
        &self,
        mark: shoal_store::GcMark,
        budget: usize,
    ) -> Result<(shoal_store::GcMark, shoal_store::GcStats), EventsError> {
        let (mark, stats) = self
            .call(|reply| writer::Command::GcSweep {
                mark: Box::new(mark),
                budget,
                reply,
            })
            .await?;
        Ok((*mark, stats))
    }

    /// Hands up to `pages` free pages back to the filesystem; whether another call would free
    /// more.
    pub(crate) async fn gc_vacuum(&self, pages: u32) -> Result<bool, EventsError> {
        self.call(|reply| writer::Command::GcVacuum { pages, reply })
            .await
    }

    /// Applies retention `rules` to this node's own source: `Some` when leaves were dropped
    /// (the new root, to be signed and announced).
    pub async fn prune(
        &self,
        rules: Vec<shoal_store::RetentionRule>,
    ) -> Result<Option<shoal_store::Pruned>, EventsError> {
        self.call(|reply| writer::Command::Prune { rules, reply })
            .await
    }

    /// Asks the store's checkpoint thread for a WAL checkpoint.
    pub async fn request_checkpoint(&self) -> Result<(), EventsError> {
        self.call(|reply| writer::Command::Checkpoint { reply })
            .await
    }

    /// Streams stored: distinct (semantics, name, source) over all sources (API.md's
    /// `streams` of node info). Read from the trees' summaries, on a blocking thread.
    pub async fn stream_count(&self) -> Result<u64, EventsError> {
        let reader = self.reader()?;
        Ok(tokio::task::spawn_blocking(move || reader.stream_count()).await??)
    }

    /// A read-only connection for ad-hoc reads (use it in `spawn_blocking`).
    pub fn reader(&self) -> Result<shoal_store::Reader, EventsError> {
        Ok(self.inner.store.reader()?)
    }

    /// Runs `f` on the writer thread (tests hold the writer with it).
    #[cfg(test)]
    pub(crate) async fn hold_writer(&self, f: impl FnOnce() + Send + 'static) {
        let _ = self.send(writer::Command::Hold(Box::new(f))).await;
    }

    /// Commands waiting for the writer (tests use it to line up a group commit).
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.inner.commands.max_capacity() - self.inner.commands.capacity()
    }

    /// Sends the command `make` builds around a reply channel and waits for the answer.
    async fn call<T>(
        &self,
        make: impl FnOnce(writer::Reply<T>) -> writer::Command,
    ) -> Result<T, EventsError> {
        let (reply, rx) = oneshot::channel();
        self.send(make(reply)).await?;
        // Queued, so the writer may act on it even if its answer is lost.
        rx.await.map_err(|_| EventsError::Interrupted)?
    }

    async fn send(&self, command: writer::Command) -> Result<(), EventsError> {
        self.inner
            .commands
            .send(command)
            .await
            .map_err(|_| EventsError::ShuttingDown)
    }

    fn reads(&self) -> Reads {
        Reads {
            store: self.inner.store.clone(),
            offsets: self.inner.offsets.clone(),
            config: self.inner.config.clone(),
            shutdown: self.inner.shutdown.clone(),
        }
    }
}

/// What a query or subscription needs to read: a way to open read connections, the current
/// offsets, the chunk bounds, and the node's shutdown signal.
#[derive(Clone)]
pub(crate) struct Reads {
    pub store: Arc<Store>,
    pub offsets: watch::Receiver<OffsetMap>,
    pub config: EventsConfig,
    pub shutdown: watch::Receiver<bool>,
}

/// Per-source inclusive offset range to read.
pub(crate) type Plan = BTreeMap<SourceId, (u64, u64, EventFilter)>;

/// The ranges (lower, min(upper, present)] per source with a non-empty filter.
pub(crate) fn plan(
    present: &OffsetMap,
    lower: &OffsetMap,
    upper: Option<&OffsetMap>,
    filter: &Filter,
) -> Plan {
    let mut plan = Plan::new();
    for (source, have) in present.iter() {
        let to = match upper {
            None => have,
            Some(upper) => match upper.get(source) {
                Some(u) => u.min(have),
                None => continue,
            },
        };
        let from = match lower.get(source) {
            Some(l) => match l.checked_add(1) {
                Some(f) => f,
                None => continue,
            },
            None => 0,
        };
        if from > to {
            continue;
        }
        if let Some(f) = filter.for_source(source) {
            if !f.is_empty() {
                plan.insert(source.clone(), (from, to, f));
            }
        }
    }
    plan
}

/// An event service over a fresh store, without the rest of a node (engine unit tests).
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// The event service over a new store in `dir`; stop it with `writer.stop()`.
    pub(crate) struct Parts {
        pub events: EventService,
        pub store: Arc<Store>,
        pub writer: WriterThread,
        /// Subscriptions end when this flips or is dropped.
        pub _shutdown: watch::Sender<bool>,
    }

    /// Opens (or creates) the store in `dir` for `source`, with what it holds.
    pub(crate) fn start(dir: &std::path::Path, source: &str) -> Parts {
        start_with(dir, source, EventsConfig::default())
    }

    /// [`start`] with other event-service bounds.
    pub(crate) fn start_with(dir: &std::path::Path, source: &str, config: EventsConfig) -> Parts {
        let path = dir.join(crate::config::STORE_FILE);
        let store = Store::open(&path, shoal_store::StoreConfig::default()).expect("open store");
        let reader = store.reader().expect("reader");
        let clock = LamportClock::recover(&reader).expect("clock");
        let offsets: OffsetMap = reader
            .sources()
            .expect("sources")
            .into_iter()
            .map(|info| (info.source, info.last_offset))
            .collect();
        let recovered = Recovered {
            writer: store.writer().expect("writer"),
            packer: reader,
            offsets,
            clock,
            resume: crate::resume::Resume::done(),
        };
        let store = Arc::new(store);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (events, writer) = super::start(
            recovered,
            store.clone(),
            SourceId::new(source),
            config,
            shutdown_rx,
            &crate::metrics::Metrics::new(),
        )
        .expect("start writer");
        Parts {
            events,
            store,
            writer,
            _shutdown: shutdown,
        }
    }
}

/// Puts the calling thread (the packer, the GC mark) in `SCHED_BATCH`: the same share of CPU
/// as before (its nice value is unchanged, so the packer keeps up: niced it fell behind, see
/// the writer's module doc), but the kernel no longer lets its wake-ups preempt a running
/// thread, and treats it as the CPU-bound work it is, so a waking writer or HTTP worker takes
/// the core first (issue 18). Best effort: a kernel that refuses leaves the normal policy.
fn yield_to_wakers() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 = the calling thread; `param` is a valid sched_param for SCHED_BATCH.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "SCHED_BATCH refused");
    }
}

#[cfg(test)]
mod tests;
