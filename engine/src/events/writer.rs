//! The writer: the one thread that owns the store's write connection and every append.
//!
//! Commands arrive over a bounded mpsc ([`Command`]). The loop takes one command (blocking),
//! then drains whatever else is already queued, up to [`EventsConfig::max_commit_events`]
//! events: that is group commit. It never waits for more work than is queued, so a lone
//! publish is committed at once. Consecutive appends in a drained batch become ONE store
//! append (one transaction, one tree append); then every waiter is answered.
//!
//! After each commit, in this order: the offsets watch is raised, one `Arc<SourceUpdate>` is
//! sent on the update broadcast, the waiters are answered. The broadcast is the single path by
//! which subscribers (and the swarm) learn of new events, local ([`Command::Append`]) or
//! replicated ([`Command::Import`]). Raising the offsets first means a subscriber that reads the
//! offsets after subscribing to the broadcast cannot miss a commit (see `subscribe.rs`).
//!
//! It runs on its own OS thread, not a tokio worker: SQLite calls block, and a dedicated thread
//! needs neither `spawn_blocking` per batch nor a hop back. It knows nothing of HTTP or peers.
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

use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{SystemTime, UNIX_EPOCH};

use shoal_store::{
    Cid, Event, NewEvent, OffsetMap, PackTicket, PreparedPack, Reader, SourceId, Writer,
};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::lamport::{self, LamportClock};
use super::{EventsError, PublishEvent};
use crate::config::EventsConfig;

/// Where one published event went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub offset: u64,
    pub lamport: u64,
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
    /// Appended here (`true`) or imported from a peer.
    pub local: bool,
    /// Lamport and timestamp of the last event (local appends; 0 for imports).
    pub lamport: u64,
    pub timestamp: u64,
    /// Blocks the append created (local appends small enough to inline; else empty): the
    /// swarm's gossip fast path.
    pub new_blocks: Arc<[(Cid, Vec<u8>)]>,
}

/// A job run with the write connection (see `EventService::with_writer`).
pub type Job = Box<dyn FnOnce(&mut Writer) + Send>;

/// What the writer does.
pub enum Command {
    /// Validated events of one publish request.
    Append {
        events: Vec<PublishEvent>,
        reply: oneshot::Sender<Result<Vec<Stamp>, EventsError>>,
    },
    /// Replication: move `source` to `root` (all blocks present).
    Import {
        source: SourceId,
        root: Cid,
        reply: oneshot::Sender<Result<shoal_store::Imported, EventsError>>,
    },
    /// Replication, batched: for each request put its blocks (gossip's inline blocks), then
    /// import its root if complete. One command for the heads of many sources.
    ImportBatch {
        imports: Vec<ImportRequest>,
        reply: oneshot::Sender<Vec<ImportOutcome>>,
    },
    /// Anything else that needs the write connection.
    Run(Job),
    /// Finish what is queued before this, persist the clock, close, then reply.
    Shutdown(oneshot::Sender<()>),
}

/// One source of an [`Command::ImportBatch`].
#[derive(Debug)]
pub struct ImportRequest {
    pub source: SourceId,
    pub root: Cid,
    /// Blocks to put first (hash-verified by the store).
    pub blocks: Vec<(Cid, Vec<u8>)>,
}

/// What became of one [`ImportRequest`].
#[derive(Debug)]
pub enum ImportOutcome {
    /// The source moved to the root; subscribers were told.
    Imported(shoal_store::Imported),
    /// The root is the source's tree already.
    Current,
    /// These blocks are still absent (fetch them, then import).
    Missing(Vec<Cid>),
    Failed(EventsError),
}

/// Imported events up to this many travel with the update (subscribers need no store read).
const IMPORT_INLINE_EVENTS: u64 = 1024;

fn own_source_error() -> EventsError {
    EventsError::Invalid {
        index: None,
        field: "source",
        reason: "cannot import this node's own source".into(),
    }
}

/// The channel ends the rest of the engine keeps.
pub(crate) struct Handles {
    pub commands: mpsc::Sender<Command>,
    pub updates: broadcast::Sender<Arc<SourceUpdate>>,
    pub offsets: watch::Receiver<OffsetMap>,
    pub clock: Arc<LamportClock>,
}

/// Starts the writer thread on `writer`, and the packer thread on `packer` (a read connection
/// of the same store). `offsets` and `clock` are what the store holds now.
pub(crate) fn spawn(
    writer: Writer,
    packer: Reader,
    source: SourceId,
    offsets: OffsetMap,
    clock: Arc<LamportClock>,
    config: EventsConfig,
) -> std::io::Result<(Handles, std::thread::JoinHandle<()>)> {
    let (commands, rx) = mpsc::channel(config.command_queue.max(1));
    let (updates, _) = broadcast::channel(config.update_channel.max(1));
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
        last_timestamp: 0,
        lamport_covered: persisted,
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
    updates: broadcast::Sender<Arc<SourceUpdate>>,
    config: EventsConfig,
    /// Timestamps of local events never go backwards, even if the wall clock does.
    last_timestamp: u64,
    /// Highest lamport that is durable (persisted meta or a stored event).
    lamport_covered: u64,
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
                Command::Import {
                    source,
                    root,
                    reply,
                } => {
                    let _ = reply.send(self.import(source, root));
                }
                Command::ImportBatch { imports, reply } => {
                    let _ = reply.send(self.import_batch(imports));
                }
                Command::Run(job) => job(&mut self.writer),
                Command::Shutdown(reply) => {
                    self.persist_clock();
                    drop(self);
                    let _ = reply.send(());
                    return;
                }
            }
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
        let n = batch.len() as u64;
        let first_lamport = self.clock.reserve(n);
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
                    local: true,
                    lamport: first_lamport + n - 1,
                    timestamp: last_timestamp,
                    new_blocks,
                };
                // No receivers is fine (no subscriber, no swarm yet).
                let _ = self.updates.send(Arc::new(update));
                let mut i = 0usize;
                for (count, reply) in waiters {
                    let stamps = (i..i + count)
                        .map(|j| Stamp {
                            offset: appended.first + j as u64,
                            lamport: first_lamport + j as u64,
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

    fn import(
        &mut self,
        source: SourceId,
        root: Cid,
    ) -> Result<shoal_store::Imported, EventsError> {
        match self.try_import(source, root)? {
            ImportOutcome::Imported(imported) => Ok(imported),
            ImportOutcome::Missing(missing) => {
                Err(shoal_store::Error::MissingBlock(missing[0]).into())
            }
            ImportOutcome::Current => Err(shoal_store::Error::NotExtending {
                source_id: String::new(),
                root: Box::new(root),
                reason: "it is the current tree".into(),
            }
            .into()),
            ImportOutcome::Failed(e) => Err(e),
        }
    }

    /// Puts every request's blocks and imports each complete root, all in ONE store
    /// transaction (see `shoal_store::Writer::import_batch`), then tells subscribers.
    fn import_batch(&mut self, imports: Vec<ImportRequest>) -> Vec<ImportOutcome> {
        let mut blocks = Vec::new();
        let mut targets = Vec::with_capacity(imports.len());
        for r in imports {
            blocks.extend(r.blocks);
            targets.push((r.source, r.root));
        }
        // Only this node appends to its own log; a peer's copy of it is never newer.
        let own = targets
            .iter()
            .map(|(s, _)| s == &self.source)
            .collect::<Vec<_>>();
        let store_targets: Vec<(SourceId, Cid)> = targets
            .iter()
            .zip(&own)
            .filter(|(_, own)| !**own)
            .map(|(t, _)| t.clone())
            .collect();
        let mut results =
            match self
                .writer
                .import_batch(&blocks, &store_targets, IMPORT_INLINE_EVENTS)
            {
                Ok(results) => results.into_iter(),
                Err(e) => {
                    // Gossip blocks were hash-checked already: this is the disk. Fail them all.
                    tracing::warn!(error = %e, sources = targets.len(), "import batch failed");
                    let err = EventsError::from(e);
                    return targets
                        .into_iter()
                        .map(|_| ImportOutcome::Failed(err.clone()))
                        .collect();
                }
            };
        targets
            .into_iter()
            .zip(own)
            .map(|((source, root), own)| {
                if own {
                    return ImportOutcome::Failed(own_source_error());
                }
                match results.next() {
                    Some(Ok(attempt)) => self.imported(source, root, attempt),
                    Some(Err(e)) => ImportOutcome::Failed(e.into()),
                    None => ImportOutcome::Failed(EventsError::from(shoal_store::Error::Invalid(
                        "the store answered fewer imports than asked".into(),
                    ))),
                }
            })
            .collect()
    }

    /// Imports `root` as `source`'s tree if complete; on success raises the offsets and
    /// broadcasts the update (with the events when there are few).
    fn try_import(&mut self, source: SourceId, root: Cid) -> Result<ImportOutcome, EventsError> {
        if source == self.source {
            return Err(own_source_error());
        }
        let attempt = self
            .writer
            .try_import(&source, root, IMPORT_INLINE_EVENTS)?;
        Ok(self.imported(source, root, attempt))
    }

    /// After the store answered an import: raises the offsets and broadcasts the update.
    fn imported(
        &mut self,
        source: SourceId,
        root: Cid,
        attempt: shoal_store::ImportAttempt,
    ) -> ImportOutcome {
        let (imported, events) = match attempt {
            shoal_store::ImportAttempt::Imported { imported, events } => (imported, events),
            shoal_store::ImportAttempt::Current => return ImportOutcome::Current,
            shoal_store::ImportAttempt::Missing(m) => return ImportOutcome::Missing(m),
        };
        let known = self.offsets.borrow().get(&source);
        if known.is_some_and(|k| k >= imported.last) {
            return ImportOutcome::Imported(imported);
        }
        self.offsets.send_modify(|o| {
            o.update(source.clone(), imported.last);
        });
        let update = SourceUpdate {
            source,
            first: imported.first,
            last: imported.last,
            // Shared like a local append's events, under the same size bound.
            events: events
                .filter(|e| {
                    !e.is_empty()
                        && e.iter().map(|e| e.payload.get().len()).sum::<usize>()
                            <= self.config.inline_update_bytes
                })
                .map(Arc::from),
            root,
            local: false,
            lamport: 0,
            timestamp: 0,
            new_blocks: Arc::new([]),
        };
        let _ = self.updates.send(Arc::new(update));
        ImportOutcome::Imported(imported)
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

/// The packer thread: computes packs of this node's tree on its own read connection, one at a
/// time, for the writer (see the module doc). Dropping it stops and joins the thread.
struct Packer {
    jobs: Option<std_mpsc::Sender<PackTicket>>,
    done: std_mpsc::Receiver<Result<PreparedPack, shoal_store::Error>>,
    in_flight: bool,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Packer {
    fn spawn(reader: Reader) -> std::io::Result<Packer> {
        let (jobs, tickets) = std_mpsc::channel::<PackTicket>();
        let (results, done) = std_mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("shoal-packer".into())
            .spawn(move || {
                // Ends when the writer drops its sender (shutdown).
                while let Ok(ticket) = tickets.recv() {
                    let started = std::time::Instant::now();
                    let prepared = reader.prepare_pack(ticket);
                    tracing::debug!(took = ?started.elapsed(), ok = prepared.is_ok(), "pack prepared");
                    if results.send(prepared).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Packer {
            jobs: Some(jobs),
            done,
            in_flight: false,
            thread: Some(thread),
        })
    }

    /// No pack is being computed or waiting to be installed.
    fn idle(&self) -> bool {
        !self.in_flight
    }

    fn start(&mut self, ticket: PackTicket) {
        if let Some(jobs) = &self.jobs {
            self.in_flight = jobs.send(ticket).is_ok();
        }
    }

    /// A finished pack, if one is waiting (never blocks).
    fn ready(&mut self) -> Option<PreparedPack> {
        if !self.in_flight {
            return None;
        }
        match self.done.try_recv() {
            Ok(Ok(pack)) => {
                self.in_flight = false;
                Some(pack)
            }
            Ok(Err(e)) => {
                // Not fatal: the next commit asks again, and `append` packs inline as a backstop.
                tracing::warn!(error = %e, "background pack failed");
                self.in_flight = false;
                None
            }
            Err(std_mpsc::TryRecvError::Empty) => None,
            Err(std_mpsc::TryRecvError::Disconnected) => {
                tracing::error!("the packer thread is gone; packing inline from now on");
                self.jobs = None;
                self.in_flight = false;
                None
            }
        }
    }
}

impl Drop for Packer {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
