//! The writer: the one thread that owns the store's write connection and every append.
//!
//! Commands arrive over a bounded mpsc ([`Command`]). The loop takes one command (blocking),
//! then drains whatever else is already queued, up to [`EventsConfig::max_commit_events`]
//! events: that is group commit. It never waits for more work than is queued, so a lone
//! publish is committed at once. Consecutive appends in a drained batch become ONE store
//! append (one transaction, one tree append); then every waiter is answered.
//!
//! After each commit, in this order: the offsets watch is raised, one `Arc<SourceUpdate>` is
//! sent through the fanout (`fanout.rs`: to the replicator, and to each subscription whose
//! filter it may match), the waiters are answered. The fanout is the single path by which
//! subscribers (and the swarm) learn of new events, local ([`Command::Append`]) or replicated
//! ([`Command::ImportBatch`], `import.rs`). Raising the offsets first means a subscriber that reads the
//! offsets after subscribing to the broadcast cannot miss a commit (see `subscribe.rs`).
//!
//! It runs on its own OS thread, not a tokio worker: SQLite calls block, and a dedicated thread
//! needs neither `spawn_blocking` per batch nor a hop back. It knows nothing of HTTP or peers.
//! Other store writes come as typed commands too (block puts for syncs, blob batches, GC steps;
//! `upkeep.rs`): nothing else in the engine holds the write connection.
//!
//! Packing (rewriting the chain of small unpacked appends into full, better compressed leaves)
//! is CPU work of milliseconds that grows with the last leaf, so it is kept off the commit
//! path: after a commit that left the chain deep enough, the writer hands a
//! [`shoal_store::PackTicket`] to the packer thread ([`Packer`]), which computes the packed tree
//! on its own read connection while commits go on; the next append takes the result and
//! appends onto it (re-appending the few events committed meanwhile) in its own transaction.
//! Most tickets are cheap compactions (the recent appends merged into one leaf); a full pack,
//! whose cost grows with the last leaf, follows once compactions stack up (see
//! `Writer::pack_ticket`). One pack is in flight at a time. The store still packs inline if the
//! chain ever gets twice as deep as `max_unpacked_depth` (a backstop for a stuck or starved
//! packer). The packer runs at normal priority on purpose: niced (10) on a loaded machine it
//! fell behind, and the inline backstop stalled commits for 13-88 ms (measured).

mod import;
mod packer;
mod upkeep;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use shoal_store::blob::{BlobMeta, Freed};
use shoal_store::{
    Cid, Event, GcMark, GcStart, GcStats, Lamport, NewEvent, Offset, OffsetMap, Pruned,
    RetentionRule, SourceId, Writer,
};
use tokio::sync::{mpsc, oneshot, watch};

use super::fanout::Fanout;
use super::lamport::{self, LamportClock};
use super::EventsConfig;
use super::{EventsError, PublishEvent};
use crate::metrics::EventCounters;
pub use import::{ImportOutcome, ImportRequest};
use packer::Packer;

/// Where one published event went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub offset: Offset,
    pub lamport: Lamport,
    /// Microseconds since the Unix epoch.
    pub timestamp: u64,
}

/// Events `first..=last` of `source` became available (one commit).
#[derive(Debug)]
pub struct SourceUpdate {
    pub source: SourceId,
    pub first: u64,
    pub last: u64,
    /// The events themselves when the batch is small enough to share (see
    /// [`EventsConfig::inline_update_bytes`]); `None` = read them from the store.
    pub events: Option<Arc<[Event]>>,
    /// The source's new tree root.
    pub root: Cid,
    pub origin: Origin,
}

/// Where the events of a [`SourceUpdate`] came from.
#[derive(Debug)]
pub enum Origin {
    /// Appended here: what the swarm needs to sign and gossip the new head.
    Local {
        /// Lamport and timestamp of the last event.
        lamport: u64,
        timestamp: u64,
        /// Blocks the append created, when small enough to inline (else empty): the swarm's
        /// gossip fast path.
        new_blocks: Arc<[(Cid, Vec<u8>)]>,
    },
    /// Imported from a peer's tree.
    Replicated,
}

/// The writer's answer to one command.
pub type Reply<T> = oneshot::Sender<Result<T, EventsError>>;

/// What the writer does. Each command is one store transaction, except consecutive
/// [`Command::Append`]s, which are folded into one (group commit).
pub enum Command {
    /// Validated events of one publish request.
    Append {
        events: Vec<PublishEvent>,
        reply: Reply<Vec<Stamp>>,
    },
    /// Replication, batched: for each request put its blocks (gossip's inline blocks or
    /// fetched ones), then import its root if complete. One transaction for many sources.
    ImportBatch {
        imports: Vec<ImportRequest>,
        reply: oneshot::Sender<Vec<ImportOutcome>>,
    },
    /// A restored tree (`events restore`): imported like a replicated one, this node's own
    /// source included (the store still checks it extends what is stored).
    RestoreImport {
        import: ImportRequest,
        reply: oneshot::Sender<Vec<ImportOutcome>>,
    },
    /// Blocks fetched ahead of their import (a large sync), hash-checked by the store.
    PutBlocks {
        blocks: Vec<(Cid, Vec<u8>)>,
        /// See [`ImportRequest::checked`].
        checked: bool,
        reply: Reply<()>,
    },
    /// Blob bytes and pins (the blob service's writes).
    Blob { write: BlobWrite, reply: Reply<()> },
    /// Unpins a blob and frees the blocks nothing else uses; `None` if it was not known.
    BlobDelete {
        cid: Cid,
        /// Only the replica and cache pins (a swarm-wide delete), or every pin.
        replica_only: bool,
        reply: Reply<Option<Freed>>,
    },
    /// Starts a GC round; the mark's snapshot must be taken after the reply (see
    /// `maintenance.rs`, `shoal_store::gc`).
    GcStart { reply: Reply<GcStart> },
    /// Deletes up to `budget` candidates of a mark made on a reader, in one transaction.
    GcSweep {
        mark: Box<GcMark>,
        budget: usize,
        reply: Reply<(Box<GcMark>, GcStats)>,
    },
    /// Hands up to `pages` free pages back to the filesystem; replies whether another step
    /// would free more.
    GcVacuum { pages: u32, reply: Reply<bool> },
    /// Asks the store's checkpoint thread for a WAL checkpoint (it does not wait for it).
    Checkpoint { reply: Reply<()> },
    /// Applies retention rules to this node's own source (`retention.rs`).
    Prune {
        rules: Vec<RetentionRule>,
        reply: Reply<Option<Pruned>>,
    },
    /// Finish what is queued before this, persist the clock, close, then reply.
    Shutdown(oneshot::Sender<()>),
    /// Tests: runs a closure on the writer thread (to hold it while commands queue up).
    #[cfg(test)]
    Hold(Box<dyn FnOnce() + Send>),
}

/// Blob writes, each one transaction (see `shoal_store::blob`).
pub enum BlobWrite {
    /// Creates the blob tables if needed and converts blobs of the old format.
    Init,
    /// Stores hashed chunks and the DAG nodes they completed. With `upload`, the batch is
    /// also pinned under that upload (the writer chains each upload's manifests, so batches
    /// may arrive in any order); without, the blocks are fetched ones. `staged`: chunks
    /// already written as files (`Store::stage_block`), by CID and length.
    Put {
        staged: Vec<(Cid, u64)>,
        chunks: Vec<(Cid, Bytes)>,
        links: Vec<(Cid, Vec<u8>)>,
        upload: Option<String>,
    },
    /// Finishes an upload: the last DAG nodes, the metadata, the root's pin.
    Commit {
        upload: String,
        last: Vec<(Cid, Vec<u8>)>,
        meta: BlobMeta,
    },
    /// Drops the pin of an upload that will not finish.
    Abort { upload: String },
    /// Keeps a fetched root block and the size it declares, pinned as cached.
    CacheRoot { cid: Cid, data: Bytes, size: u64 },
    /// Pins a complete blob as a replica held for the swarm (refused while a block is missing).
    PinReplica { cid: Cid },
}

/// The channel ends the rest of the engine keeps.
pub(crate) struct Handles {
    pub commands: mpsc::Sender<Command>,
    pub updates: Arc<Fanout>,
    pub offsets: watch::Receiver<OffsetMap>,
    pub clock: Arc<LamportClock>,
}

/// Starts the writer thread on `recovered.writer`, and the packer thread on `recovered.packer`
/// (a read connection of the same store). Its offsets and clock are what the store holds now.
pub(crate) fn spawn(
    recovered: super::Recovered,
    source: SourceId,
    config: EventsConfig,
    counters: EventCounters,
) -> std::io::Result<(Handles, std::thread::JoinHandle<()>)> {
    let super::Recovered {
        writer,
        packer,
        offsets,
        clock,
        resume,
    } = recovered;
    let clock = Arc::new(clock);
    let (commands, rx) = mpsc::channel(config.command_queue.max(1));
    let updates = Arc::new(Fanout::new(config.update_channel));
    let (offsets_tx, offsets_rx) = watch::channel(offsets);
    let persisted = clock.current();
    let packer = Packer::spawn(packer)?;
    let state = State {
        writer,
        packer,
        source,
        clock: clock.clone(),
        offsets: offsets_tx,
        updates: updates.clone(),
        config,
        counters,
        last_timestamp: 0,
        lamport_covered: persisted,
        uploads: HashMap::new(),
        resume,
    };
    let thread = std::thread::Builder::new()
        .name("shoal-writer".into())
        .spawn(move || state.run(rx))?;
    Ok((
        Handles {
            commands,
            updates,
            offsets: offsets_rx,
            clock,
        },
        thread,
    ))
}

struct State {
    writer: Writer,
    packer: Packer,
    source: SourceId,
    clock: Arc<LamportClock>,
    offsets: watch::Sender<OffsetMap>,
    updates: Arc<Fanout>,
    config: EventsConfig,
    /// What this thread commits, counted for `/metrics`.
    counters: EventCounters,
    /// Timestamps of local events never go backwards, even if the wall clock does.
    last_timestamp: u64,
    /// Highest lamport that is durable (persisted meta or a stored event).
    lamport_covered: u64,
    /// The latest manifest of each upload in progress (see [`BlobWrite::Put`]).
    uploads: HashMap<String, Option<Cid>>,
    /// While resuming the own source, publishes are refused and peers' trees of it imported.
    resume: crate::resume::Resume,
}

/// Waiters of one group commit, with how many events each brought.
type Waiters = Vec<(usize, oneshot::Sender<Result<Vec<Stamp>, EventsError>>)>;

impl State {
    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut pending: Option<Command> = None;
        loop {
            let first = match pending.take() {
                Some(c) => c,
                None => match rx.blocking_recv() {
                    Some(c) => c,
                    // Every sender is gone: the node was dropped without shutdown.
                    None => {
                        self.persist_clock();
                        return;
                    }
                },
            };
            match first {
                Command::Append { events, reply } => {
                    // Group commit: take the appends already queued, up to the cap.
                    let mut count = events.len();
                    let mut batch = events;
                    let mut waiters: Waiters = vec![(count, reply)];
                    while count < self.config.max_commit_events {
                        match rx.try_recv() {
                            Ok(Command::Append { events, reply }) => {
                                count += events.len();
                                waiters.push((events.len(), reply));
                                batch.extend(events);
                            }
                            // Anything else runs after this commit, in queue order.
                            Ok(other) => {
                                pending = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.append(batch, waiters);
                }
                Command::ImportBatch { imports, reply } => {
                    let _ = reply.send(self.import_batch(imports, false));
                }
                Command::RestoreImport { import, reply } => {
                    let _ = reply.send(self.import_batch(vec![import], true));
                }
                Command::PutBlocks {
                    blocks,
                    checked,
                    reply,
                } => {
                    if checked {
                        self.writer.note_checked(blocks.iter().map(|(c, _)| *c));
                    }
                    let _ = reply.send(self.writer.put_blocks(&blocks).map_err(Into::into));
                }
                Command::Blob { write, reply } => {
                    let _ = reply.send(self.blob(write).map_err(Into::into));
                }
                Command::BlobDelete {
                    cid,
                    replica_only,
                    reply,
                } => {
                    let freed = if replica_only {
                        shoal_store::blob::release_replica(&mut self.writer, &cid)
                    } else {
                        shoal_store::blob::delete(&mut self.writer, &cid)
                    };
                    let _ = reply.send(freed.map_err(Into::into));
                }
                Command::GcStart { reply } => {
                    let _ = reply.send(Ok(self.writer.gc_start()));
                }
                Command::GcSweep {
                    mut mark,
                    budget,
                    reply,
                } => {
                    let swept = self.writer.gc_sweep(&mut mark, budget);
                    let _ = reply.send(swept.map(|stats| (mark, stats)).map_err(Into::into));
                }
                Command::GcVacuum { pages, reply } => {
                    let _ = reply.send(self.writer.gc_vacuum(pages).map_err(Into::into));
                }
                Command::Checkpoint { reply } => {
                    let _ = reply.send(self.writer.request_checkpoint().map_err(Into::into));
                }
                Command::Prune { rules, reply } => {
                    let now = self.now_micros();
                    let pruned = self.writer.prune(&self.source, &rules, now);
                    let _ = reply.send(pruned.map_err(Into::into));
                }
                #[cfg(test)]
                Command::Hold(f) => f(),
                Command::Shutdown(reply) => {
                    self.persist_clock();
                    drop(self);
                    let _ = reply.send(());
                    return;
                }
            }
            // Between commands, no transaction open: the one place where the writer parks for
            // a WAL restart when one is due (`shoal_store::checkpoint`), so that the WAL stays
            // bounded at a steady publish rate without a long TRUNCATE.
            self.writer.restart_wal_if_due();
            if pending.is_none() && rx.is_empty() {
                // Idle: a good moment to make lamports seen from peers durable.
                if self.clock.current() > self.lamport_covered {
                    self.persist_clock();
                }
            }
        }
    }

    fn now_micros(&mut self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        self.last_timestamp = self.last_timestamp.max(now);
        self.last_timestamp
    }

    fn append(&mut self, batch: Vec<PublishEvent>, waiters: Waiters) {
        if self.resume.is_resuming() {
            // Peers may hold our source beyond what is stored here (`resume.rs`).
            for (_, reply) in waiters {
                let _ = reply.send(Err(EventsError::Resuming));
            }
            return;
        }
        let n = batch.len() as u64;
        let Some(first_lamport) = self.clock.reserve(n) else {
            tracing::error!(
                lamport = self.clock.current(),
                "the Lamport clock is at its limit; refusing to append"
            );
            for (_, reply) in waiters {
                let _ = reply.send(Err(EventsError::ClockExhausted));
            }
            return;
        };
        let now = self.now_micros();
        let payload_bytes: usize = batch.iter().map(|e| e.payload.get().len()).sum();
        let share = payload_bytes <= self.config.inline_update_bytes;
        let next_offset = self.offsets.borrow().get(&self.source).map_or(0, |o| o + 1);
        let mut shared: Vec<Event> = Vec::with_capacity(if share { batch.len() } else { 0 });
        let events: Vec<NewEvent> = batch
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                let new = NewEvent {
                    semantics: e.semantics,
                    name: e.name,
                    tags: e.tags,
                    lamport: first_lamport + i as u64,
                    timestamp: e.timestamp.unwrap_or(now),
                    payload: e.payload,
                };
                if share {
                    shared.push(Event {
                        source: self.source.clone(),
                        offset: next_offset + i as u64,
                        lamport: new.lamport,
                        timestamp: new.timestamp,
                        semantics: new.semantics.clone(),
                        name: new.name.clone(),
                        tags: new.tags.clone(),
                        payload: new.payload.clone(),
                    });
                }
                new
            })
            .collect();
        let timestamps: Vec<u64> = events.iter().map(|e| e.timestamp).collect();
        let last_timestamp = timestamps.last().copied().unwrap_or(now);
        let started = std::time::Instant::now();
        let result = match self.packer.ready() {
            Some(pack) => self.writer.append_with_pack(&self.source, events, pack),
            None => self.writer.append(&self.source, events),
        };
        tracing::debug!(events = n, waiters = waiters.len(), took = ?started.elapsed(), "commit");
        if result.is_ok() && self.packer.idle() {
            if let Some(ticket) = self.writer.pack_ticket(&self.source) {
                self.packer.start(ticket);
            }
        }
        match result {
            Ok(appended) => {
                if appended.first != next_offset || appended.last + 1 - appended.first != n {
                    // The store and our offsets disagree: the shared events would carry wrong
                    // offsets, so let subscribers read the store instead.
                    tracing::error!(
                        expected = next_offset,
                        first = appended.first,
                        last = appended.last,
                        "store assigned unexpected offsets"
                    );
                    shared.clear();
                }
                self.lamport_covered = self.lamport_covered.max(first_lamport + n - 1);
                self.counters.published(n);
                self.offsets.send_modify(|o| {
                    o.update(self.source.clone(), appended.last);
                });
                let inline_bytes: usize = appended.new_blocks.iter().map(|(_, b)| b.len()).sum();
                let new_blocks: Arc<[(Cid, Vec<u8>)]> =
                    if inline_bytes <= self.config.inline_update_bytes {
                        appended.new_blocks.into()
                    } else {
                        Arc::new([])
                    };
                let update = SourceUpdate {
                    source: self.source.clone(),
                    first: appended.first,
                    last: appended.last,
                    events: (share && !shared.is_empty()).then(|| shared.into()),
                    root: appended.root,
                    origin: Origin::Local {
                        lamport: first_lamport + n - 1,
                        timestamp: last_timestamp,
                        new_blocks,
                    },
                };
                self.updates.send(Arc::new(update));
                let mut i = 0usize;
                for (count, reply) in waiters {
                    let stamps = (i..i + count)
                        .map(|j| Stamp {
                            offset: Offset(appended.first + j as u64),
                            lamport: Lamport(first_lamport + j as u64),
                            timestamp: timestamps[j],
                        })
                        .collect();
                    i += count;
                    // A waiter that went away still had its events stored.
                    let _ = reply.send(Ok(stamps));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, events = n, "append failed; nothing stored");
                self.clock.unreserve(first_lamport, n);
                let err = EventsError::from(e);
                for (_, reply) in waiters {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
    }

    fn persist_clock(&mut self) {
        let value = self.clock.current();
        if value <= self.lamport_covered {
            return;
        }
        match self
            .writer
            .meta_set(lamport::META_KEY, &LamportClock::encode(value))
        {
            Ok(()) => self.lamport_covered = value,
            // Not fatal: stored events still bound the clock on restart.
            Err(e) => tracing::warn!(error = %e, "cannot persist the lamport clock"),
        }
    }
}
