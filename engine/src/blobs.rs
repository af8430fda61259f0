//! The blob service: put (streamed), read ranges (streamed, fetched from peers when not local),
//! list, delete, and swarm-wide names.
//!
//! Actors and what each owns:
//! - an *upload* (one per `put` call) cuts the body into [`CHUNK_SIZE`] chunks and hashes each on
//!   a bulk thread (`bulk.rs`: below the priority of publishes) while it reads on (at most
//!   [`HASHES_IN_FLIGHT`] at once; the same thread writes the chunk to its file beside the
//!   database, `Store::stage_block`), then hands batches of about [`PUT_BATCH`] bytes to the
//!   writer thread (at most [`PUTS_IN_FLIGHT`] queued; a chunk written as a file goes there as
//!   its CID and length, without its bytes): reading, hashing and writing overlap, and memory
//!   per upload is bounded by about `HASHES_IN_FLIGHT` chunks whatever the size. Each
//!   batch also moves the upload's pin (see `shoal_store::blob`), so GC never takes its chunks;
//!   the last batch pins the root. An upload that fails or is dropped leaves only unpinned blocks.
//! - a *read* (`fetch.rs`, one task per GET) walks the UnixFS DAG for the asked range, then sends
//!   chunk after chunk into a bounded channel; local chunks are read on blocking threads, missing
//!   ones are fetched through the swarm's block exchange (verified there: every block hashes to
//!   its CID; a peer that lies is skipped and the block asked elsewhere), stored as they arrive,
//!   and streamed as soon as the next needed chunk is there. What was fetched stays (pinned as
//!   `blob-cache/<cid>`), so an interrupted read resumes where it stopped.
//! - names are events (semantics [`NAME_SEMANTICS`], the blob name as event name), so they
//!   replicate like any event; the latest assignment in Lamport order wins.
//! - replicas (`replicas.rs`): a put may ask for N holders; the replica task records requests,
//!   holds and releases as events and holds what other nodes ask this node to hold.
//!
//! This module knows nothing of HTTP; the store does the bytes, the swarm moves blocks.

mod bulk;
mod fetch;
pub mod replicas;
mod walk;

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use serde_json::value::RawValue;
use shoal_store::blob::{self, Builder};
use shoal_store::cid::{cid_of, RAW};
use shoal_store::{OffsetMap, Store, DIRECT_ALIGN};
use tokio::sync::mpsc;

use crate::events::{
    BlobWrite, EventService, EventsError, Filter, Order, PublishEvent, Query, StreamSelector,
};
use crate::exchange::FetchEvent;

pub use fetch::{BlobStream, Opened};
pub use shoal_store::blob::{BlobEntry, BlobMeta, Freed, CHUNK_SIZE};
pub use shoal_store::Cid;

/// Semantics of the events that name blobs.
pub const NAME_SEMANTICS: &str = "shoal.blob-name";
/// Tag carried by name events.
pub const NAME_TAG: &str = "shoal:blob-name";
/// Bytes of chunks handed to the writer in one transaction.
pub const PUT_BATCH: usize = 4 * CHUNK_SIZE;
/// Batches of one upload queued at the writer at once: hashing the next overlaps writing, and
/// the body is read on while the writer pauses for a WAL restart (tens of ms, two fsyncs, every
/// ~40–56 MiB; see `shoal_store`'s `checkpoint.rs`).
pub const PUTS_IN_FLIGHT: usize = 6;
/// Chunks of one upload being hashed and written to their files at once, on blocking threads,
/// while the body is read on. Each waits for two flushes (its file, its directory) that take
/// milliseconds on a busy disk but cost no CPU; the filesystem's journal serves concurrent
/// flushes with one commit, so many in flight keep the disk, not the flushes, the limit
/// (measured in BENCHMARKS.md, "Blobs": 4 left the node a third of a core busy during a put).
pub const HASHES_IN_FLIGHT: usize = 16;

/// Settings of the blob service.
#[derive(Debug, Clone)]
pub struct BlobsConfig {
    /// Largest blob accepted by `put` (413 above).
    pub max_blob_bytes: u64,
    /// A read waiting for a block no peer delivers gives up after this (404 when nothing was
    /// sent yet, else the stream breaks).
    pub fetch_timeout: Duration,
    /// Chunks fetched ahead of the one being streamed.
    pub read_ahead: usize,
    /// Nodes that hold a blob put without `replicas` (1: this one alone).
    pub default_replicas: u32,
    /// How long a put with replicas waits for its holders before answering 202.
    pub replica_timeout: Duration,
}

impl Default for BlobsConfig {
    fn default() -> Self {
        Self {
            max_blob_bytes: 64 << 30,
            fetch_timeout: Duration::from_secs(10),
            read_ahead: 32,
            default_replicas: 1,
            replica_timeout: Duration::from_secs(60),
        }
    }
}

/// Why a blob call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BlobsError {
    /// Bad input (a malformed CID or name); nothing changed.
    #[error("{0}")]
    Invalid(String),
    /// Not here and no peer delivered it in time.
    #[error("{0}")]
    NotFound(String),
    /// The body passed the limit; nothing was kept.
    #[error("blob larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    /// The disk is full; the upload was dropped and the store is as before.
    #[error("storage full: {0}")]
    StorageFull(#[source] Arc<shoal_store::Error>),
    #[error("storage error: {0}")]
    Storage(#[source] Arc<shoal_store::Error>),
    /// The name event could not be published (the event service refused it).
    #[error("cannot record the blob's name: {0}")]
    Name(#[source] EventsError),
    /// A blocking task died (a bug: it panicked).
    #[error("a blob task failed: {0}")]
    Task(#[source] Arc<tokio::task::JoinError>),
    /// The client's body broke off; nothing was kept.
    #[error("cannot read the request body: {0}")]
    Body(String),
    /// Stored or fetched data does not form the blob its CID says (a peer sent a valid block
    /// of a lying tree, or the store is damaged).
    #[error("blob data is corrupt: {0}")]
    Corrupt(String),
    #[error("the node is shutting down")]
    ShuttingDown,
}

impl From<shoal_store::Error> for BlobsError {
    fn from(e: shoal_store::Error) -> Self {
        match e {
            e if e.is_full() => BlobsError::StorageFull(Arc::new(e)),
            e @ shoal_store::Error::Corrupt { .. } => BlobsError::Corrupt(e.to_string()),
            e => BlobsError::Storage(Arc::new(e)),
        }
    }
}

impl From<EventsError> for BlobsError {
    fn from(e: EventsError) -> Self {
        match e {
            EventsError::Invalid { field, reason, .. } => {
                BlobsError::Invalid(format!("{field}: {reason}"))
            }
            EventsError::StorageFull(e) => BlobsError::StorageFull(e),
            EventsError::Storage(e) => BlobsError::Storage(e),
            EventsError::Task(e) => BlobsError::Task(e),
            EventsError::ShuttingDown | EventsError::Interrupted => BlobsError::ShuttingDown,
            e @ (EventsError::ClockExhausted | EventsError::Resuming) => BlobsError::Name(e),
        }
    }
}

impl From<tokio::task::JoinError> for BlobsError {
    fn from(e: tokio::task::JoinError) -> Self {
        BlobsError::Task(Arc::new(e))
    }
}

/// How the service asks peers for blocks (the swarm implements it; tests may fake it).
pub trait BlockFetch: Send + Sync + 'static {
    /// Starts fetching `cids` into `reply` (verified blocks, or `NotFound`). Resolves to
    /// `false` when the swarm is gone. Dropping the receiver cancels the fetch.
    fn fetch(&self, cids: Vec<Cid>, reply: mpsc::Sender<FetchEvent>) -> BoxFuture<'static, bool>;
}

impl BlockFetch for crate::swarm::Handle {
    fn fetch(&self, cids: Vec<Cid>, reply: mpsc::Sender<FetchEvent>) -> BoxFuture<'static, bool> {
        let swarm = self.clone();
        Box::pin(async move {
            swarm
                .send(crate::swarm::Command::Fetch {
                    cids,
                    preferred: Vec::new(),
                    reply,
                })
                .await
                .is_ok()
        })
    }
}

/// A blob of [`BlobService::list`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listed {
    #[serde(flatten)]
    pub entry: BlobEntry,
    /// Nodes known to hold it pinned, this one included.
    pub replicas: usize,
}

/// What `put` takes besides the bytes.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    pub name: Option<String>,
    pub mime: Option<String>,
}

/// The blob service; cheap to clone.
#[derive(Clone)]
pub struct BlobService {
    inner: Arc<Inner>,
}

struct Inner {
    events: EventService,
    replicas: replicas::Replicas,
    store: Arc<Store>,
    config: BlobsConfig,
    fetch: Arc<dyn BlockFetch>,
    /// Set once the blob tables exist: the CIDs of the old format converted here, each with
    /// the UnixFS CID it became (`shoal_store::blob::aliases`; written only by that start-up
    /// conversion).
    init: tokio::sync::OnceCell<std::collections::HashMap<Cid, Cid>>,
    uploads: AtomicU64,
    /// Threads for hashing and block files, below the priority of publishes.
    bulk: bulk::Bulk,
    /// Uploads whose pin could not be dropped (disk full): retried before the next upload.
    unpin_later: Mutex<Vec<String>>,
}

impl BlobService {
    /// The blob service over `store`, writing through `events`' writer, fetching what is not
    /// here through `fetch` (the swarm), asking `replicas` (the replica task, started with
    /// [`replicas::spawn`] on this service) who holds what.
    pub fn new(
        events: EventService,
        store: Arc<Store>,
        fetch: Arc<dyn BlockFetch>,
        config: BlobsConfig,
        replicas: replicas::Replicas,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                events,
                replicas,
                store,
                config,
                fetch,
                init: tokio::sync::OnceCell::new(),
                uploads: AtomicU64::new(0),
                bulk: bulk::Bulk::new(),
                unpin_later: Mutex::new(Vec::new()),
            }),
        }
    }

    pub fn config(&self) -> &BlobsConfig {
        &self.inner.config
    }

    fn fetcher(&self) -> &Arc<dyn BlockFetch> {
        &self.inner.fetch
    }

    /// Creates the blob tables and converts blobs of the old format (the node calls it at
    /// start-up; every blob call makes sure of it).
    pub async fn ready(&self) -> Result<(), BlobsError> {
        self.inner
            .init
            .get_or_try_init(|| async {
                self.inner.events.blob_write(BlobWrite::Init).await?;
                let store = self.inner.store.clone();
                let aliases =
                    tokio::task::spawn_blocking(move || blob::aliases(&store.reader()?)).await??;
                Ok::<_, BlobsError>(aliases.into_iter().collect())
            })
            .await?;
        Ok(())
    }

    /// The CID a blob has here: `cid` itself, or the UnixFS CID a blob of the old format
    /// became when this node converted it (names, replica events and app packages recorded
    /// before the conversion still name the old CID).
    pub fn canonical(&self, cid: Cid) -> Cid {
        self.inner
            .init
            .get()
            .and_then(|aliases| aliases.get(&cid))
            .copied()
            .unwrap_or(cid)
    }

    /// One blob write on the writer thread.
    async fn write(&self, write: BlobWrite) -> Result<(), BlobsError> {
        Ok(self.inner.events.blob_write(write).await?)
    }

    /// Runs `f` with a fresh read connection on a blocking thread.
    async fn read<T, F>(&self, f: F) -> Result<T, BlobsError>
    where
        T: Send + 'static,
        F: FnOnce(&shoal_store::Reader) -> shoal_store::Result<T> + Send + 'static,
    {
        self.ready().await?;
        let store = self.inner.store.clone();
        Ok(tokio::task::spawn_blocking(move || f(&store.reader()?)).await??)
    }

    /// Stores the bytes of `body` as a blob; returns its CID and size. Never holds more than a
    /// few chunks in memory. On any error nothing stays pinned. Dropping the future abandons the
    /// upload (its chunks are collected as garbage unless another blob uses them).
    pub async fn put<S, E>(&self, body: S, options: PutOptions) -> Result<BlobMeta, BlobsError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        self.ready().await?;
        self.retry_unpins().await;
        let id = format!(
            "{}-{}",
            std::process::id(),
            self.inner.uploads.fetch_add(1, Ordering::Relaxed)
        );
        let mut upload = Upload {
            service: self.clone(),
            id: id.clone(),
            builder: Builder::new(),
            hashing: std::collections::VecDeque::new(),
            staged: Vec::new(),
            batch: Vec::new(),
            links: Vec::new(),
            batch_bytes: 0,
            in_flight: std::collections::VecDeque::new(),
            done: false,
        };
        let result = upload.run(body, &options).await;
        if result.is_err() {
            // Wait for queued batches so the pin is dropped after them, not before.
            while let Some(job) = upload.in_flight.pop_front() {
                let _ = job.await;
            }
            self.unpin(id.clone()).await;
        }
        upload.done = true;
        result
    }

    /// Drops the pin of an upload that will not finish. When that fails too (the disk is
    /// full), the next upload retries it, and the next start drops every upload pin.
    async fn unpin(&self, id: String) {
        let retry = id.clone();
        if let Err(e) = self.write(BlobWrite::Abort { upload: id }).await {
            tracing::warn!(upload = %retry, error = %e, "cannot unpin an abandoned upload yet");
            if let Ok(mut later) = self.inner.unpin_later.lock() {
                later.push(retry);
            }
        }
    }

    async fn retry_unpins(&self) {
        let ids = match self.inner.unpin_later.lock() {
            Ok(mut later) => std::mem::take(&mut *later),
            Err(_) => return,
        };
        for id in ids {
            self.unpin(id).await;
        }
    }

    /// Metadata and local completeness of a blob, fetching its root from peers if needed.
    pub async fn open(&self, cid: Cid) -> Result<Opened, BlobsError> {
        self.ready().await?;
        fetch::open(self, self.canonical(cid)).await
    }

    /// Streams bytes `start..end` of an opened blob (fetching what is missing).
    pub fn read_range(&self, opened: &Opened, start: u64, end: u64) -> BlobStream {
        fetch::read_range(self.clone(), opened.clone(), start, end)
    }

    /// Every blob known here, with how many nodes are known to hold it pinned.
    pub async fn list(&self) -> Result<Vec<Listed>, BlobsError> {
        let entries = self.read(blob::list).await?;
        let holders = self
            .inner
            .replicas
            .holders(entries.iter().map(|e| e.meta.cid).collect())
            .await?;
        let me = self.inner.events.source();
        Ok(entries
            .into_iter()
            .zip(holders)
            .map(|(entry, mut holders)| {
                if entry.pinned {
                    holders.insert(me.clone());
                }
                Listed {
                    replicas: holders.len(),
                    entry,
                }
            })
            .collect())
    }

    /// Asks the swarm to hold `cid` on `wanted` nodes in all (this one included) and waits up
    /// to the configured timeout for them; returns how many hold it then. Replication goes on
    /// in the background after a timeout (the request is an event). Dropping the future is
    /// safe: the request, once recorded, stays.
    pub async fn replicate(&self, meta: &BlobMeta, wanted: u32) -> Result<usize, BlobsError> {
        let wanted = wanted.clamp(1, replicas::MAX_REPLICAS);
        if wanted > 1 {
            let need = (wanted - 1) as usize;
            let holders = self.inner.replicas.place(meta.cid, need).await?;
            let op = replicas::Op::Request {
                size: meta.size,
                wanted,
                holders: holders.iter().map(ToString::to_string).collect(),
            };
            replicas::publish(&self.inner.events, meta.cid, &op).await?;
            tracing::info!(cid = %meta.cid, wanted, ?holders, "blob replicas requested");
            let wait = self.inner.replicas.wait(meta.cid, wanted as usize);
            if tokio::time::timeout(self.inner.config.replica_timeout, wait)
                .await
                .is_err()
            {
                tracing::info!(cid = %meta.cid, wanted, "blob replicas not all confirmed in time; replication goes on");
            }
        }
        let mut holders = self
            .inner
            .replicas
            .holders(vec![meta.cid])
            .await?
            .pop()
            .unwrap_or_default();
        holders.insert(self.inner.events.source().clone());
        Ok(holders.len())
    }

    /// Unpins the blob and frees its blocks no other blob or tree uses; a replicated blob is
    /// released swarm-wide (every holder drops its replica). `NotFound` if it was not known
    /// here.
    pub async fn delete(&self, cid: Cid) -> Result<blob::Freed, BlobsError> {
        self.ready().await?;
        let cid = self.canonical(cid);
        let freed = self.inner.events.blob_delete(cid, false).await?;
        let freed = freed.ok_or_else(|| BlobsError::NotFound(format!("no blob {cid} here")))?;
        tracing::info!(%cid, blocks = freed.blocks, bytes = freed.bytes, "blob deleted");
        if self.inner.replicas.live(cid).await? {
            replicas::publish(&self.inner.events, cid, &replicas::Op::Released).await?;
            tracing::info!(%cid, "blob released swarm-wide");
        }
        Ok(freed)
    }

    /// Names `cid` swarm-wide (an event, so it replicates). `NotFound` if the blob is unknown
    /// here. Returns once the event is durably stored.
    pub async fn set_name(&self, name: &str, cid: Cid) -> Result<(), BlobsError> {
        self.ready().await?;
        let cid = self.canonical(cid);
        let meta = self
            .read(move |r| blob::meta(r, &cid))
            .await?
            .ok_or_else(|| BlobsError::NotFound(format!("no blob {cid} here")))?;
        let payload =
            serde_json::json!({"cid": cid.to_string(), "size": meta.size, "mime": meta.mime});
        let payload = RawValue::from_string(payload.to_string())
            .map_err(|e| BlobsError::Invalid(format!("name: {e}")))?;
        self.inner
            .events
            .publish(vec![PublishEvent {
                semantics: NAME_SEMANTICS.into(),
                name: name.into(),
                tags: vec![NAME_TAG.into()],
                payload,
                timestamp: None,
            }])
            .await
            .map_err(|e| match e {
                EventsError::Invalid { reason, .. } => {
                    BlobsError::Invalid(format!("name: {reason}"))
                }
                e => e.into(),
            })?;
        Ok(())
    }

    /// The CID a name points to: the name event latest in Lamport order, from any node.
    pub async fn resolve(&self, name: &str) -> Result<Cid, BlobsError> {
        let mut events = self.name_events(Some(name));
        let not_found = || BlobsError::NotFound(format!("no blob is named {name:?}"));
        let event = events.next().await.ok_or_else(not_found)??;
        let cid = named_cid(&event)?;
        self.ready().await?;
        Ok(self.canonical(cid))
    }

    /// The name events (of `name`, or all), latest first in Lamport order.
    fn name_events(&self, name: Option<&str>) -> crate::events::EventStream {
        self.inner.events.query(Query {
            lower: OffsetMap::new(),
            upper: None,
            filter: Filter(vec![StreamSelector {
                semantics: Some(NAME_SEMANTICS.into()),
                name: name.map(Into::into),
                ..StreamSelector::default()
            }]),
            order: Order::LamportReverse,
        })
    }

    /// Points the names whose latest event names a CID this node converted from the old blob
    /// format (see [`BlobService::canonical`]) at the new CID, with a new name event: nodes that
    /// never held the blob cannot fetch it by its old CID, and retention follows names. Run once
    /// after start-up; a name that cannot be re-pointed now (e.g. while the node is resuming)
    /// is logged and tried again at the next start.
    pub async fn rename_converted(&self) -> Result<(), BlobsError> {
        self.ready().await?;
        if self
            .inner
            .init
            .get()
            .is_none_or(|aliases| aliases.is_empty())
        {
            return Ok(());
        }
        let mut latest: Vec<(String, Cid)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut events = self.name_events(None);
        while let Some(event) = events.next().await {
            let event = event?;
            if seen.insert(event.name.clone()) {
                match named_cid(&event) {
                    Ok(cid) if self.canonical(cid) != cid => latest.push((event.name, cid)),
                    _ => {}
                }
            }
        }
        for (name, old) in latest {
            let new = self.canonical(old);
            match self.set_name(&name, new).await {
                Ok(()) => tracing::info!(%name, %old, %new, "blob name moved to the UnixFS CID"),
                Err(e) => tracing::warn!(%name, %old, %new, error = %e,
                    "cannot move a blob name to the UnixFS CID yet (next start retries)"),
            }
        }
        Ok(())
    }
}

/// The CID a name event names.
fn named_cid(event: &shoal_store::Event) -> Result<Cid, BlobsError> {
    #[derive(serde::Deserialize)]
    struct Named {
        cid: String,
    }
    let named: Named = serde_json::from_str(event.payload.get())
        .map_err(|e| BlobsError::Corrupt(format!("name event: {e}")))?;
    named
        .cid
        .parse()
        .map_err(|e| BlobsError::Corrupt(format!("name event cid: {e}")))
}

type Job = tokio::task::JoinHandle<Result<(), BlobsError>>;
/// A chunk being hashed and written: its CID, bytes, and whether it is now a file.
type Hashing = tokio::task::JoinHandle<Result<(Cid, Bytes, bool), shoal_store::Error>>;

/// One upload in progress (see the module doc).
struct Upload {
    service: BlobService,
    id: String,
    builder: Builder,
    /// Chunks being hashed, in body order.
    hashing: std::collections::VecDeque<Hashing>,
    /// Hashed chunks and the DAG nodes they completed, not yet handed to the writer: chunks
    /// written as files by CID and length (their bytes are dropped), the others with bytes.
    staged: Vec<(Cid, u64)>,
    batch: Vec<(Cid, Bytes)>,
    links: Vec<(Cid, Vec<u8>)>,
    batch_bytes: usize,
    in_flight: std::collections::VecDeque<Job>,
    done: bool,
}

impl Upload {
    async fn run<S, E>(&mut self, body: S, options: &PutOptions) -> Result<BlobMeta, BlobsError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let limit = self.service.inner.config.max_blob_bytes;
        let mut body = std::pin::pin!(body);
        let mut chunk = chunk_buffer();
        let mut total: u64 = 0;
        while let Some(piece) = body.next().await {
            let mut piece = piece.map_err(|e| BlobsError::Body(e.to_string()))?;
            total += piece.len() as u64;
            if total > limit {
                return Err(BlobsError::TooLarge { limit });
            }
            while !piece.is_empty() {
                let take = (CHUNK_SIZE - chunk.len()).min(piece.len());
                chunk.extend_from_slice(&piece.split_to(take));
                if chunk.len() == CHUNK_SIZE {
                    let full = std::mem::replace(&mut chunk, chunk_buffer());
                    self.add(full.freeze()).await?;
                }
            }
        }
        if !chunk.is_empty() {
            self.add(chunk.freeze()).await?;
        }
        while let Some(h) = self.hashing.pop_front() {
            self.hashed(h).await?;
        }
        self.flush().await?;
        while let Some(job) = self.in_flight.pop_front() {
            join(job).await?;
        }
        let builder = std::mem::take(&mut self.builder);
        let (cid, size, last) = builder.finish()?;
        let meta = BlobMeta {
            cid,
            size,
            name: options.name.clone(),
            mime: options.mime.clone(),
        };
        self.service
            .write(BlobWrite::Commit {
                upload: self.id.clone(),
                last,
                meta: meta.clone(),
            })
            .await?;
        tracing::info!(%cid, size, "blob stored");
        Ok(meta)
    }

    /// Starts hashing `chunk`; takes in the chunks hashed meanwhile (in order), waiting only
    /// when [`HASHES_IN_FLIGHT`] are running.
    async fn add(&mut self, chunk: Bytes) -> Result<(), BlobsError> {
        while self.hashing.front().is_some_and(|h| h.is_finished())
            || self.hashing.len() >= HASHES_IN_FLIGHT
        {
            if let Some(h) = self.hashing.pop_front() {
                self.hashed(h).await?;
            }
        }
        // Hashed, then written to its file beside the database on this thread too (a no-op
        // for a chunk the store keeps inline), so the writer's commit only records it.
        let store = self.service.inner.store.clone();
        self.hashing
            .push_back(self.service.inner.bulk.spawn_blocking(move || {
                let cid = cid_of(RAW, &chunk);
                let staged = store.stage_block(&cid, &chunk)?;
                Ok((cid, chunk, staged))
            }));
        Ok(())
    }

    /// Extends the tree with a hashed chunk; queues the batch at the writer once it is full.
    async fn hashed(&mut self, hashing: Hashing) -> Result<(), BlobsError> {
        let (cid, data, staged) = hashing.await??;
        self.links
            .extend(self.builder.push_chunk(cid, data.len() as u64)?);
        self.batch_bytes += data.len();
        if staged {
            self.staged.push((cid, data.len() as u64));
        } else {
            self.batch.push((cid, data));
        }
        if self.batch_bytes >= PUT_BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    /// Queues the batch at the writer (waiting while [`PUTS_IN_FLIGHT`] are queued).
    async fn flush(&mut self) -> Result<(), BlobsError> {
        if self.staged.is_empty() && self.batch.is_empty() && self.links.is_empty() {
            return Ok(());
        }
        let staged = std::mem::take(&mut self.staged);
        let hashed = std::mem::take(&mut self.batch);
        let links = std::mem::take(&mut self.links);
        self.batch_bytes = 0;
        while self.in_flight.len() >= PUTS_IN_FLIGHT {
            if let Some(job) = self.in_flight.pop_front() {
                join(job).await?;
            }
        }
        let service = self.service.clone();
        let write = BlobWrite::Put {
            staged,
            chunks: hashed,
            links,
            upload: Some(self.id.clone()),
        };
        self.in_flight
            .push_back(tokio::spawn(async move { service.write(write).await }));
        Ok(())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.done {
            // Dropped mid-way (client went away and the handler future was dropped): unpin.
            let Ok(rt) = tokio::runtime::Handle::try_current() else {
                return;
            };
            let service = self.service.clone();
            let id = self.id.clone();
            rt.spawn(async move { service.unpin(id).await });
        }
    }
}

/// An empty buffer for one chunk whose bytes start on a [`DIRECT_ALIGN`] boundary, so the
/// store writes the chunk's file with `O_DIRECT` straight from it, without a copy
/// (`shoal_store`'s `files.rs`).
fn chunk_buffer() -> BytesMut {
    let mut buf = BytesMut::with_capacity(CHUNK_SIZE + DIRECT_ALIGN);
    let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
    buf.resize(start, 0);
    buf.advance(start);
    buf
}

async fn join(job: Job) -> Result<(), BlobsError> {
    job.await?
}

/// Boxed byte stream of a read.
pub(crate) type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, BlobsError>> + Send>>;

#[cfg(test)]
mod tests;
