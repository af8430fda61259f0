//! Reading blobs: open (metadata, fetching the root from peers if needed) and streaming a byte
//! range, local chunks from the store and missing ones through the block exchange.
//!
//! A read is one task feeding a bounded channel (a few chunks), so a slow client back-pressures
//! the read and memory stays bounded: at most [`BlobsConfig::read_ahead`] fetched chunks wait
//! for their turn. Fetches are asked in sessions of [`FETCH_GROUP`] chunks (one `Want` each,
//! the size of one exchange response), so the exchange spreads them over every peer that has
//! them and pipelines them. Every fetched block was verified by the exchange (hash = CID); the
//! chunk's length is checked against the tree's geometry here. Fetched blocks are stored at
//! once (and the root pinned as `blob-cache/<cid>`), so a broken read resumes where it stopped.
//!
//! Dropping the stream ends the task at its next send; fetches it started are cancelled.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shoal_store::blob::{self, BlobMeta, BlobRoot};
use shoal_store::cid::{DAG_PB, RAW};
use shoal_store::{Cid, Reader};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::walk::{ChunkRef, LinkSource, Walk};
use super::{BlobService, BlobsError, ByteStream};
use crate::events::BlobWrite;
use crate::exchange::FetchEvent;

/// A blob's bytes, streamed.
pub type BlobStream = ByteStream;

/// Chunks per fetch session: one exchange response carries about this many 1 MiB chunks.
const FETCH_GROUP: usize = 2;
/// Writes of fetched blocks queued at the writer at once: the read streams and fetches on
/// while the writer pauses for a WAL restart (see [`super::PUTS_IN_FLIGHT`]).
pub(super) const WRITES_IN_FLIGHT: usize = 4;
/// Fetched bytes stored in one transaction (several exchange responses): fewer, larger
/// commits; an interrupted read loses at most this much of what it fetched.
const WRITE_BATCH: usize = 8 << 20;
/// Pause before asking again for blocks no connected peer had.
const RETRY_PAUSE: Duration = Duration::from_millis(300);
/// A progress line is logged every this many fetched bytes.
const LOG_EVERY: u64 = 256 << 20;
/// Local chunks of one read being read at once, ahead of the one being streamed: block files
/// are read from the disk (`Reader::get_chunk`), and one chunk at a time left the disk idle
/// between reads (BENCHMARKS.md, "Blobs"). Memory: this many chunks besides the stream's.
const LOCAL_READS: usize = 8;

/// An opened blob: what a GET/HEAD needs before sending headers.
#[derive(Debug, Clone)]
pub struct Opened {
    pub meta: BlobMeta,
    /// Every chunk is local.
    pub complete: bool,
    root: Arc<BlobRoot>,
}

impl Opened {
    pub fn size(&self) -> u64 {
        self.meta.size
    }
}

pub(super) async fn open(svc: &BlobService, cid: Cid) -> Result<Opened, BlobsError> {
    let not_a_blob = || BlobsError::NotFound(format!("{cid} is not a blob"));
    if cid.codec() != DAG_PB && cid.codec() != RAW {
        return Err(not_a_blob());
    }
    let (meta, data, complete) = svc
        .read(move |r| {
            let meta = blob::meta(r, &cid)?;
            let data = r.get_block(&cid)?;
            let complete = data.is_some() && blob::complete(r, &cid)?;
            Ok((meta, data, complete))
        })
        .await?;
    if let Some(data) = data {
        let root = BlobRoot::decode(&cid, &data).map_err(|_| not_a_blob())?;
        let meta = meta.unwrap_or(BlobMeta {
            cid,
            size: root.size(),
            name: None,
            mime: None,
        });
        return Ok(Opened {
            meta,
            complete,
            root: Arc::new(root),
        });
    }
    // Not here: ask the swarm for the root.
    let mut got = fetch_all(svc, vec![cid]).await?;
    let data = got.pop().map(|(_, d)| d).ok_or_else(not_a_blob)?;
    let root = BlobRoot::decode(&cid, &data).map_err(|e| {
        tracing::warn!(%cid, error = %e, "a peer's block under a wanted blob CID is no blob");
        not_a_blob()
    })?;
    let size = root.size();
    // The size is the peer's claim, but every node below is checked to add up to it
    // (`Walk::next`), so holding the root to the limit holds the whole fetch to it.
    let limit = svc.config().max_blob_bytes;
    if size > limit {
        tracing::warn!(%cid, size, limit, "refusing to fetch a blob over --max-blob-bytes");
        return Err(BlobsError::TooLarge { limit });
    }
    svc.write(BlobWrite::CacheRoot { cid, data, size }).await?;
    tracing::info!(%cid, size, "fetching blob from peers");
    Ok(Opened {
        meta: BlobMeta {
            cid,
            size,
            name: None,
            mime: None,
        },
        // A one-chunk blob is its root, stored now.
        complete: matches!(root, BlobRoot::Leaf { .. }),
        root: Arc::new(root),
    })
}

/// Fetches every block of `cids` from peers (retrying until the fetch timeout passes without
/// progress); returns them in no particular order.
async fn fetch_all(svc: &BlobService, cids: Vec<Cid>) -> Result<Vec<(Cid, Bytes)>, BlobsError> {
    let fetcher = svc.fetcher().clone();
    let timeout = svc.config().fetch_timeout;
    let (tx, mut rx) = mpsc::channel(16);
    let mut wanted: HashSet<Cid> = cids.iter().copied().collect();
    let mut out = Vec::new();
    if !fetcher.fetch(cids, tx.clone()).await {
        return Err(BlobsError::ShuttingDown);
    }
    let mut deadline = Instant::now() + timeout;
    while !wanted.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        // Checked here, not only by `timeout`: a zero timeout still polls `recv` once, and
        // peers that answer "not found" at once would otherwise keep this loop alive forever.
        let event = if left.is_zero() {
            Err(())
        } else {
            tokio::time::timeout(left, rx.recv()).await.map_err(|_| ())
        };
        match event {
            Ok(Some(FetchEvent::Blocks(blocks))) => {
                for (cid, data) in blocks {
                    if wanted.remove(&cid) {
                        out.push((cid, Bytes::from(data)));
                    }
                }
                deadline = Instant::now() + timeout;
            }
            Ok(Some(FetchEvent::NotFound(again))) => {
                tokio::time::sleep(RETRY_PAUSE.min(left)).await;
                if !fetcher.fetch(again, tx.clone()).await {
                    return Err(BlobsError::ShuttingDown);
                }
            }
            Ok(None) | Err(_) => {
                return Err(BlobsError::NotFound(format!(
                    "no peer delivered {} block(s) within {timeout:?}",
                    wanted.len()
                )))
            }
        }
    }
    Ok(out)
}

pub(super) fn read_range(svc: BlobService, opened: Opened, start: u64, end: u64) -> BlobStream {
    let (tx, rx) = mpsc::channel(4);
    let opened_cid = opened.meta.cid;
    tokio::spawn(async move {
        let result = async {
            let store = svc.inner.store.clone();
            let reader = tokio::task::spawn_blocking(move || store.reader()).await??;
            let mut read = Read {
                svc,
                reader,
                tx: tx.clone(),
                fetch: None,
                pending: HashMap::new(),
                requested: HashSet::new(),
                classified: 0,
                writes: VecDeque::new(),
                unwritten: Vec::new(),
                unwritten_bytes: 0,
                fetched: 0,
                started: Instant::now(),
                reading: VecDeque::new(),
                next_read: 0,
            };
            let result = read.run(&opened, start, end).await;
            // Failed or the client went away: keep what arrived, so the next request resumes
            // from it.
            let _ = read.store_fetched().await;
            while let Some(w) = read.writes.pop_front() {
                let _ = w.await;
            }
            result
        }
        .await;
        if let Err(e) = result {
            // The client sees the body end short of its Content-Length (a broken download,
            // never a complete-looking one); this line says why.
            tracing::warn!(cid = %opened_cid, start, end, error = %e, "blob read failed");
            let _ = tx.send(Err(e)).await;
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// A local chunk read on a blocking thread: its bytes, `None` if it is not here.
type LocalRead = JoinHandle<Result<Option<Bytes>, shoal_store::Error>>;

struct Read {
    svc: BlobService,
    reader: Reader,
    tx: mpsc::Sender<Result<Bytes, BlobsError>>,
    fetch: Option<(mpsc::Sender<FetchEvent>, mpsc::Receiver<FetchEvent>)>,
    /// Fetched chunks waiting for their turn.
    pending: HashMap<Cid, Bytes>,
    /// Chunks asked from peers and not yet arrived.
    requested: HashSet<Cid>,
    /// Chunks before this index were checked for being local (and asked for if not).
    classified: usize,
    writes: VecDeque<JoinHandle<Result<(), BlobsError>>>,
    /// Fetched blocks not yet handed to the writer (see [`WRITE_BATCH`]).
    unwritten: Vec<(Cid, Bytes)>,
    unwritten_bytes: usize,
    fetched: u64,
    started: Instant,
    /// Local reads under way ([`Read::local_ahead`]): chunk index in the range, the read.
    reading: VecDeque<(usize, LocalRead)>,
    /// Chunks before this index had a local read started (or were skipped for one).
    next_read: usize,
}

impl LinkSource for Read {
    async fn link_block(&mut self, cid: Cid) -> Result<Bytes, BlobsError> {
        if let Some(d) = self.local(cid).await? {
            return Ok(d);
        }
        let got = fetch_all(&self.svc, vec![cid]).await?;
        let data = got
            .into_iter()
            .find(|(c, _)| *c == cid)
            .map(|(_, d)| d)
            .ok_or_else(|| BlobsError::NotFound(format!("no peer delivered node {cid}")))?;
        self.svc
            .write(BlobWrite::Put {
                staged: Vec::new(),
                chunks: vec![(cid, data.clone())],
                links: Vec::new(),
                upload: None,
            })
            .await?;
        Ok(data)
    }
}

impl Read {
    async fn run(&mut self, opened: &Opened, start: u64, end: u64) -> Result<(), BlobsError> {
        if start >= end {
            return Ok(());
        }
        // The chunks from the current one to `read_ahead` past it; the walk yields the rest.
        let ahead = self.svc.config().read_ahead.max(1);
        let mut walk = Walk::new(&opened.root, start, end);
        let mut window: VecDeque<ChunkRef> = VecDeque::new();
        let mut walked = false;
        let mut i = 0usize;
        loop {
            while !walked && window.len() <= ahead {
                match walk.next(self).await? {
                    Some(c) => window.push_back(c),
                    None => walked = true,
                }
            }
            let Some(&c) = window.front() else {
                break;
            };
            let last = walked && window.len() == 1;
            let data = match self.pending.remove(&c.cid) {
                Some(d) => d,
                None => {
                    let local = if self.requested.contains(&c.cid) {
                        None
                    } else {
                        self.local_ahead(&window, i).await?
                    };
                    match local {
                        Some(d) => d,
                        None => {
                            self.ask_ahead(&window, i, i).await?;
                            if !self.requested.contains(&c.cid) {
                                // A repeated chunk whose first copy is still being written.
                                self.ask(vec![c.cid]).await?;
                            }
                            self.wait_for(c.cid).await?
                        }
                    }
                }
            };
            if self.fetch.is_some() {
                self.ask_ahead(&window, i, i + 1).await?;
            }
            if data.len() as u64 != c.len {
                return Err(BlobsError::Corrupt(format!(
                    "chunk {} has {} bytes, the tree says {}",
                    c.cid,
                    data.len(),
                    c.len
                )));
            }
            if last {
                // Stored before the client has the last byte: a HEAD right after the download
                // then reports the blob complete.
                self.store_fetched().await?;
                while let Some(w) = self.writes.pop_front() {
                    w.await??;
                }
            }
            let from = start.saturating_sub(c.offset) as usize;
            let to = (end - c.offset).min(c.len) as usize;
            if self.tx.send(Ok(data.slice(from..to))).await.is_err() {
                return Ok(()); // the client went away
            }
            window.pop_front();
            i += 1;
        }
        while let Some(w) = self.writes.pop_front() {
            w.await??;
        }
        if self.fetched > 0 {
            let secs = self.started.elapsed().as_secs_f64().max(1e-3);
            tracing::info!(cid = %opened.meta.cid, bytes = self.fetched,
                mb_per_s = (self.fetched as f64 / secs / 1e6) as u64, "blob fetch done");
        }
        Ok(())
    }

    /// The local bytes of `window`'s front (chunk `i`), `None` if it is not here; first
    /// starts local reads of the chunks after it, up to [`LOCAL_READS`] at once, so the disk
    /// has several reads queued while the stream sends. Chunks already asked from peers or
    /// fetched are not read; a chunk read ahead that is not here comes back `None` at its
    /// turn and is fetched then.
    async fn local_ahead(
        &mut self,
        window: &VecDeque<ChunkRef>,
        i: usize,
    ) -> Result<Option<Bytes>, BlobsError> {
        while self.reading.front().is_some_and(|(at, _)| *at < i) {
            self.reading.pop_front(); // streamed from elsewhere meanwhile
        }
        self.next_read = self.next_read.max(i);
        let end = i + window.len();
        while self.next_read < end && self.reading.len() < LOCAL_READS {
            let at = self.next_read;
            self.next_read += 1;
            let cid = window[at - i].cid;
            if at > i && (self.requested.contains(&cid) || self.pending.contains_key(&cid)) {
                continue;
            }
            let reader = self.reader.clone();
            let read = tokio::task::spawn_blocking(move || reader.get_chunk(&cid));
            self.reading.push_back((at, read));
        }
        match self.reading.front() {
            Some((at, _)) if *at == i => match self.reading.pop_front() {
                Some((_, read)) => Ok(read.await??),
                None => Ok(None),
            },
            _ => self.local(window[0].cid).await,
        }
    }

    async fn local(&self, cid: Cid) -> Result<Option<Bytes>, BlobsError> {
        let reader = self.reader.clone();
        Ok(tokio::task::spawn_blocking(move || reader.get_chunk(&cid)).await??)
    }

    /// Asks peers for the chunks in `from .. from + read_ahead` that are neither local, nor
    /// fetched, nor asked for already. `window[0]` is chunk number `front` of the range.
    async fn ask_ahead(
        &mut self,
        window: &VecDeque<ChunkRef>,
        front: usize,
        from: usize,
    ) -> Result<(), BlobsError> {
        let upto = (from + self.svc.config().read_ahead.max(1)).min(front + window.len());
        let start = self.classified.max(from);
        if start >= upto {
            return Ok(());
        }
        self.classified = upto;
        let candidates: Vec<Cid> = window
            .range(start - front..upto - front)
            .map(|c| c.cid)
            .filter(|c| !self.pending.contains_key(c) && !self.requested.contains(c))
            .collect();
        let reader = self.reader.clone();
        let absent: Vec<Cid> = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for c in candidates {
                if !reader.has_block(&c)? {
                    out.push(c);
                }
            }
            Ok::<_, shoal_store::Error>(out)
        })
        .await??;
        let mut seen = HashSet::new();
        let absent: Vec<Cid> = absent.into_iter().filter(|c| seen.insert(*c)).collect();
        for group in absent.chunks(FETCH_GROUP) {
            self.ask(group.to_vec()).await?;
        }
        Ok(())
    }

    async fn ask(&mut self, cids: Vec<Cid>) -> Result<(), BlobsError> {
        let fetcher = self.svc.fetcher().clone();
        let tx = match &self.fetch {
            Some((tx, _)) => tx.clone(),
            None => {
                let (tx, rx) = mpsc::channel(16);
                self.fetch = Some((tx.clone(), rx));
                tx
            }
        };
        self.requested.extend(cids.iter().copied());
        if !fetcher.fetch(cids, tx).await {
            return Err(BlobsError::ShuttingDown);
        }
        Ok(())
    }

    /// Waits until `cid` was fetched, storing and keeping everything that arrives meanwhile.
    async fn wait_for(&mut self, cid: Cid) -> Result<Bytes, BlobsError> {
        let timeout = self.svc.config().fetch_timeout;
        let mut deadline = Instant::now() + timeout;
        loop {
            if let Some(d) = self.pending.remove(&cid) {
                return Ok(d);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            // An explicit deadline check: see `fetch_all`.
            let event = match &mut self.fetch {
                _ if left.is_zero() => Err(()),
                Some((_, rx)) => tokio::time::timeout(left, rx.recv()).await.map_err(|_| ()),
                None => Ok(None),
            };
            match event {
                Ok(Some(FetchEvent::Blocks(blocks))) => {
                    deadline = Instant::now() + timeout;
                    self.arrived(blocks).await?;
                }
                Ok(Some(FetchEvent::NotFound(again))) => {
                    // No connected peer has them now; a peer may come back (restart, partition).
                    tokio::time::sleep(RETRY_PAUSE.min(left)).await;
                    self.requested.retain(|c| !again.contains(c));
                    for group in again.chunks(FETCH_GROUP) {
                        self.ask(group.to_vec()).await?;
                    }
                }
                Ok(None) | Err(_) => {
                    return Err(BlobsError::NotFound(format!(
                        "no peer delivered chunk {cid} within {timeout:?}"
                    )))
                }
            }
        }
    }

    /// Keeps verified blocks for streaming and stores them (bounded writes in flight).
    async fn arrived(&mut self, blocks: Vec<(Cid, Vec<u8>)>) -> Result<(), BlobsError> {
        let blocks: Vec<(Cid, Bytes)> = blocks
            .into_iter()
            .filter(|(c, _)| self.requested.remove(c))
            .map(|(c, d)| (c, Bytes::from(d)))
            .collect();
        if blocks.is_empty() {
            return Ok(());
        }
        let before = self.fetched;
        for (c, d) in &blocks {
            self.fetched += d.len() as u64;
            self.unwritten_bytes += d.len();
            self.pending.insert(*c, d.clone());
        }
        self.unwritten.extend(blocks);
        if before / LOG_EVERY != self.fetched / LOG_EVERY {
            let secs = self.started.elapsed().as_secs_f64().max(1e-3);
            tracing::info!(
                bytes = self.fetched,
                mb_per_s = (self.fetched as f64 / secs / 1e6) as u64,
                "blob fetch progress"
            );
        }
        if self.unwritten_bytes >= WRITE_BATCH {
            self.store_fetched().await?;
        }
        Ok(())
    }

    /// Hands the fetched blocks not yet stored to the writer (at most [`WRITES_IN_FLIGHT`]
    /// writes queued).
    async fn store_fetched(&mut self) -> Result<(), BlobsError> {
        if self.unwritten.is_empty() {
            return Ok(());
        }
        let blocks = std::mem::take(&mut self.unwritten);
        self.unwritten_bytes = 0;
        while self.writes.len() >= WRITES_IN_FLIGHT {
            if let Some(w) = self.writes.pop_front() {
                w.await??;
            }
        }
        let svc = self.svc.clone();
        self.writes.push_back(tokio::spawn(async move {
            let (staged, chunks) = stage(&svc, blocks).await?;
            svc.write(BlobWrite::Put {
                staged,
                chunks,
                links: Vec::new(),
                upload: None,
            })
            .await
        }));
        Ok(())
    }
}

/// Writes the fetched blocks the store keeps as files to their places, one after another on
/// one bulk thread (`bulk.rs`), so the writer's commit of them only records them
/// (`Store::stage_block`). One thread per batch ([`WRITES_IN_FLIGHT`] batches at once), not
/// one per block: each `O_DIRECT` write of a fetched (unaligned) block copies it into an
/// aligned buffer, and with one thread per block (up to 32 at once) B's peak RSS in
/// `bench_blobs` was 160–170 MB, with one per batch 137–138 MB (BENCHMARKS.md, "Blobs"); four
/// concurrent writes keep the disk as busy. Returns the blocks now files by CID and length (their bytes are dropped
/// here: the stream holds its own copy until sent) and the others with their bytes.
type Staged = (Vec<(Cid, u64)>, Vec<(Cid, Bytes)>);
async fn stage(svc: &BlobService, blocks: Vec<(Cid, Bytes)>) -> Result<Staged, BlobsError> {
    let store = svc.inner.store.clone();
    let job: JoinHandle<shoal_store::Result<Staged>> = svc.inner.bulk.spawn_blocking(move || {
        let (mut staged, mut chunks) = (Vec::new(), Vec::new());
        for (cid, data) in blocks {
            if store.stage_block(&cid, &data)? {
                staged.push((cid, data.len() as u64));
            } else {
                chunks.push((cid, data));
            }
        }
        Ok((staged, chunks))
    });
    Ok(job.await??)
}
