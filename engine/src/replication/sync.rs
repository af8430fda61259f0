//! One fetching sync: fetch the blocks a source's new tree lacks through the swarm's exchange
//! (verified there), and import the tree once complete, one tree level per round.
//!
//! Every fetched block is opened as a tree node on a blocking thread before the writer gets it
//! ([`checked`]): a peer's block that is none fails the sync unstored, and the writer does not
//! open the checked ones again (`ImportRequest::checked`), so a catch-up decodes its blocks
//! beside the writer's commits rather than on the writer.
//!
//! Each round ends in ONE writer command: the last blocks of the round go into the import
//! request, so the store puts them and tries the import in one transaction (a round answered
//! at once, the common case after gossip, is one transaction). Blocks that arrive while more
//! are expected are put ahead (`PutBlocks`) whenever nothing else is waiting or
//! [`PUT_BATCH_BYTES`] are held, so the writer works while the network fetches and a large
//! catch-up never holds more than that in memory.

use std::time::{Duration, Instant};

use cid::Cid;
use libp2p::PeerId;
use tokio::sync::{mpsc, watch};

use super::source_id;
use crate::events::{EventService, EventsError, ImportOutcome, ImportRequest};
use crate::exchange::FetchEvent;
use crate::head::SignedHead;
use crate::swarm::{self, Command};

/// Blocks are put in batches of about this many bytes.
const PUT_BATCH_BYTES: usize = 8 << 20;
/// A fetch that delivers nothing for this long fails (and is retried).
const FETCH_STALL: Duration = Duration::from_secs(60);
/// Fetch rounds per sync (one per tree level that was missing).
const MAX_ROUNDS: usize = 64;

/// Why one sync failed (it is retried).
#[derive(Debug, thiserror::Error)]
pub(super) enum SyncError {
    #[error("{0} blocks not found at any connected peer")]
    NotFound(usize),
    #[error("no block arrived for {0:?}")]
    Stalled(Duration),
    #[error("the tree is still incomplete after {0} fetch rounds")]
    TooDeep(usize),
    #[error("block {cid} is no tree node: {reason}")]
    Invalid { cid: Cid, reason: String },
    #[error("the swarm stopped")]
    SwarmStopped,
    /// The blocking check of fetched blocks ended without an answer: it panicked, or the node
    /// is shutting down.
    #[error("the check of fetched blocks did not finish")]
    CheckInterrupted(#[source] tokio::task::JoinError),
    #[error(transparent)]
    Events(#[from] EventsError),
}

/// Fetches the `missing` blocks of `head`'s tree (and those they reveal, one round per tree
/// level) and imports it. Returns the number of new events.
pub(super) async fn sync(
    events: &EventService,
    swarm: &swarm::Handle,
    activity: &watch::Sender<Option<Instant>>,
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
        let (count, blocks) = fetch(events, swarm, activity, missing, peers.clone()).await?;
        fetched += count;
        // Put the rest of the round's blocks and import if complete, else learn what the
        // fetched blocks revealed: one writer transaction.
        let request = ImportRequest {
            source: source.clone(),
            root,
            blocks,
            checked: true,
        };
        let outcome = events.import_batch(vec![request]).await?;
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

/// Fetched bytes up to which [`checked`] opens the blocks on the calling task: a few small
/// nodes take microseconds, less than the hop to a blocking thread and back (the 10-node mesh
/// measured that hop in its delivery p99).
const CHECK_INLINE_BYTES: usize = 64 << 10;

/// `blocks` if every one is a well-formed tree node (`shoal_store::tree::validate_block`),
/// checked on a blocking thread unless they are small. A peer's block that is none (a hostile
/// one serves 4 MiB byte strings and 100,000-deep nestings that hash right) never reaches the
/// writer: it used to be put, read back and found wrong there, ~10 ms of the writer per block
/// while publishes waited.
async fn checked(blocks: Vec<(Cid, Vec<u8>)>) -> Result<Vec<(Cid, Vec<u8>)>, SyncError> {
    fn check(blocks: Vec<(Cid, Vec<u8>)>) -> Result<Vec<(Cid, Vec<u8>)>, SyncError> {
        for (cid, data) in &blocks {
            shoal_store::tree::validate_block(cid, data)
                .map_err(|reason| SyncError::Invalid { cid: *cid, reason })?;
        }
        Ok(blocks)
    }
    if blocks.iter().map(|(_, d)| d.len()).sum::<usize>() <= CHECK_INLINE_BYTES {
        return check(blocks);
    }
    tokio::task::spawn_blocking(move || check(blocks))
        .await
        .map_err(SyncError::CheckInterrupted)?
}

/// Fetches `cids` through the swarm. Puts what arrives in batches of [`PUT_BATCH_BYTES`] and
/// returns the number of blocks fetched and the last, partial batch (for the import request).
async fn fetch(
    events: &EventService,
    swarm: &swarm::Handle,
    activity: &watch::Sender<Option<Instant>>,
    cids: Vec<Cid>,
    preferred: Vec<PeerId>,
) -> Result<(usize, Vec<(Cid, Vec<u8>)>), SyncError> {
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
                let blocks = checked(blocks).await?;
                activity.send_replace(Some(Instant::now()));
                done += blocks.len();
                got += blocks.len();
                batch_bytes += blocks.iter().map(|(_, d)| d.len()).sum::<usize>();
                batch.extend(blocks);
                // Put while more is coming (the writer works while the network fetches: a
                // 1M-event catch-up took ~40% longer holding everything to the end), but keep
                // the last blocks for the import request, so a small round is one transaction.
                let more = done < total;
                if batch_bytes >= PUT_BATCH_BYTES || (more && rx.is_empty()) {
                    events.put_blocks(std::mem::take(&mut batch), true).await?;
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
    if not_found > 0 {
        // Keep what did arrive: the retry then asks only for the rest.
        if !batch.is_empty() {
            events.put_blocks(batch, true).await?;
        }
        return Err(SyncError::NotFound(not_found));
    }
    Ok((got, batch))
}
