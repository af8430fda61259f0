//! WAL checkpoints off the commit path: a thread with its own connection.
//!
//! SQLite's automatic checkpoint runs inside the COMMIT of whichever connection pushes the WAL
//! over its threshold, i.e. inside a publish: a stall of milliseconds (copy pages, fsync) that
//! every client waiting on that group commit feels. So the writer's connection runs with
//! `wal_autocheckpoint=0`, and this thread checkpoints instead: PASSIVE (never blocks the
//! writer, never waits for readers) after every [`WAKE_BYTES`] written or [`PERIOD`] after a
//! write. A fully checkpointed WAL is restarted from its beginning by the next commit, so
//! it stays small.
//!
//! Bound: a reader that keeps an old snapshot (a long query) can stop PASSIVE from finishing,
//! and the WAL then grows (the anchor system's grew to gigabytes). When the WAL holds more than
//! `StoreConfig::wal_size_limit` bytes after a PASSIVE round, this thread runs TRUNCATE, which
//! takes the write lock and waits up to [`TRUNCATE_WAIT`] for readers: the one case where a
//! commit may wait on a checkpoint, and only for that long. `journal_size_limit` (set on both
//! connections) caps the file left behind after a restart.
//!
//! Restarts: PASSIVE copies frames, but the WAL only starts over from its beginning when a
//! commit finds it fully copied, which back-to-back bulk commits (blob uploads and fetches)
//! never allow: the WAL then grew by every commit (to 1 GB in a 1 GiB upload), each frame a
//! write into fresh file blocks the kernel zero-fills. So a bulk writer calls
//! [`Checkpointer::restart_if_due`] between commits. Once [`RESTART_AT`] eighths of the WAL
//! limit were written since the last restart, this thread first runs a PASSIVE round while the
//! writer goes on (it copies and fsyncs most of the WAL); at the writer's next call after that
//! round (or once [`PARK_AT`] eighths were written) the writer parks while this thread runs
//! RESTART: the writer is idle, so it gets the write lock at once, and only what was committed
//! during that round is left to copy and fsync. The next commit reuses the WAL's blocks. Kept
//! below the limit so `journal_size_limit` never truncates the file between two rounds.

use crate::{error::Result, schema, store::StoreConfig};
use rusqlite::Connection;
use std::{
    sync::{Arc, Condvar, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// Bytes written after which a checkpoint runs at once (≈ SQLite's default of 1000 pages).
const WAKE_BYTES: u64 = 4 << 20;
/// Longest time written data waits for a checkpoint.
const PERIOD: Duration = Duration::from_secs(1);
/// How long a bounding TRUNCATE or a RESTART waits for readers (while holding off the writer).
const TRUNCATE_WAIT: Duration = Duration::from_millis(200);
/// A restart is prepared once this many eighths of the WAL limit were written since the last.
const RESTART_AT: u64 = 5;
/// ... and the writer parks for it at the latest once this many eighths were written.
const PARK_AT: u64 = 7;
/// Longest a writer parks for a restart (the thread may first finish a PASSIVE round).
const RESTART_PARK: Duration = Duration::from_secs(5);

#[derive(Default)]
struct State {
    /// Bytes written since the last checkpoint.
    written: u64,
    /// A checkpoint was asked for explicitly.
    requested: bool,
    /// Bytes written since the WAL last restarted (or was found small).
    since_restart: u64,
    /// Where the next restart stands.
    restart: Restart,
    /// Restart rounds run (successful or not).
    restarts: u64,
    stop: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// Signalled when a restart round ends.
    restarted: Condvar,
}

/// Phases of a restart (see the module doc).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Restart {
    #[default]
    Idle,
    /// The PASSIVE round before the restart is asked for or running.
    Preparing,
    /// That round ran; the writer parks at its next call.
    Prepared,
    /// A writer parks until `restarts` changes.
    Parked,
}

/// What the thread was woken for.
enum Due {
    Passive {
        requested: bool,
    },
    /// The PASSIVE round before a restart.
    Prepare,
    Restart,
}

/// Handle of the checkpoint thread; dropping it stops and joins the thread.
pub(crate) struct Checkpointer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// Bytes written after which [`Self::restart_if_due`] prepares a restart ...
    restart_at: u64,
    /// ... and parks for it at the latest.
    park_at: u64,
}

impl Checkpointer {
    /// Starts the thread for the store `writer` is connected to, and turns the writer's
    /// automatic checkpoints off. `None` (and nothing changed) for a store that is not a WAL
    /// file, e.g. in memory: the writer then checkpoints itself.
    pub(crate) fn spawn(writer: &Connection, config: &StoreConfig) -> Result<Option<Checkpointer>> {
        let Some(path) = writer.path().filter(|p| !p.is_empty()).map(String::from) else {
            return Ok(None);
        };
        let mode: String = writer.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Ok(None);
        }
        let conn = Connection::open(&path)?;
        schema::configure_checkpointer(&conn, config.durability, config.wal_size_limit)?;
        let page_size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
        let shared = Arc::new(Shared::default());
        let worker = Worker {
            conn,
            shared: shared.clone(),
            wal_limit: config.wal_size_limit,
            page_size: page_size.max(512) as u64,
        };
        let eighth = config.wal_size_limit / 8;
        let thread = std::thread::Builder::new()
            .name("shoal-checkpoint".into())
            .spawn(move || worker.run())?;
        // Only now: if anything above failed, the writer keeps SQLite's own checkpoints.
        writer.pragma_update(None, "wal_autocheckpoint", 0)?;
        Ok(Some(Checkpointer {
            shared,
            thread: Some(thread),
            restart_at: (eighth * RESTART_AT).max(1),
            park_at: (eighth * PARK_AT).max(1),
        }))
    }

    /// The writer committed `bytes` (of blocks).
    pub(crate) fn written(&self, bytes: u64) {
        let Ok(mut state) = self.shared.state.lock() else {
            return;
        };
        let before = state.written;
        state.written = before.saturating_add(bytes.max(1));
        state.since_restart = state.since_restart.saturating_add(bytes);
        if before < WAKE_BYTES && state.written >= WAKE_BYTES {
            self.shared.wake.notify_one();
        }
    }

    /// Call on the writer's thread between two commits, with no transaction open. When enough
    /// was written since the WAL last restarted, first asks for a PASSIVE round, then (at a
    /// later call, see the module doc) parks until this thread has run a RESTART checkpoint,
    /// so the next commit writes from the WAL's beginning. Returns whether it parked. A
    /// restart that readers kept from finishing is retried after another half of the
    /// threshold.
    pub(crate) fn restart_if_due(&self) -> bool {
        let Ok(mut state) = self.shared.state.lock() else {
            return false;
        };
        if state.since_restart < self.restart_at || state.stop {
            return false;
        }
        match state.restart {
            Restart::Idle => {
                state.restart = Restart::Preparing;
                self.shared.wake.notify_one();
                return false;
            }
            Restart::Preparing if state.since_restart < self.park_at => return false,
            Restart::Preparing | Restart::Prepared | Restart::Parked => {}
        }
        let started = Instant::now();
        let round = state.restarts;
        state.restart = Restart::Parked;
        self.shared.wake.notify_one();
        let deadline = started + RESTART_PARK;
        while state.restarts == round && !state.stop {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            state = match self.shared.restarted.wait_timeout(state, left) {
                Ok((s, _)) => s,
                Err(_) => return true,
            };
        }
        tracing::debug!(parked = ?started.elapsed(), "writer parked for a wal restart");
        true
    }

    /// Checkpoint soon, whatever was written.
    pub(crate) fn request(&self) {
        if let Ok(mut state) = self.shared.state.lock() {
            state.requested = true;
            self.shared.wake.notify_one();
        }
    }
}

/// Bytes of pages `conn` wrote (to the WAL) since the last call: SQLite's own count
/// (`SQLITE_DBSTATUS_CACHE_WRITE`, reset by each call), times `page_size`.
pub(crate) fn wal_bytes_written(conn: &Connection, page_size: u64) -> u64 {
    let (mut pages, mut highwater) = (0, 0);
    // SAFETY: `conn.handle()` is the live database handle `conn` owns, used on this thread
    // only for this call; the two out-pointers are valid for writes.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_db_status(
            conn.handle(),
            rusqlite::ffi::SQLITE_DBSTATUS_CACHE_WRITE,
            &mut pages,
            &mut highwater,
            1,
        )
    };
    if rc != rusqlite::ffi::SQLITE_OK {
        return 0;
    }
    (pages.max(0) as u64).saturating_mul(page_size)
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        if let Ok(mut state) = self.shared.state.lock() {
            state.stop = true;
            self.shared.wake.notify_one();
            self.shared.restarted.notify_all();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Worker {
    conn: Connection,
    shared: Arc<Shared>,
    wal_limit: u64,
    page_size: u64,
}

impl Worker {
    fn run(self) {
        loop {
            match self.wait() {
                None => return,
                Some(Due::Passive { requested }) => {
                    // A prepared restart no blob batch came to take (the transfer ended):
                    // drop it, so size-triggered rounds run again; the next batch re-prepares.
                    if let Ok(mut state) = self.shared.state.lock() {
                        if state.restart == Restart::Prepared {
                            state.restart = Restart::Idle;
                        }
                    }
                    if let Err(e) = self.checkpoint(requested) {
                        tracing::warn!(error = %e, "wal checkpoint failed; retrying later");
                    }
                }
                Some(Due::Prepare) => {
                    if let Err(e) = self.checkpoint(true) {
                        tracing::warn!(error = %e, "wal checkpoint failed; retrying later");
                    }
                    // Unless the writer already parked (it wrote too much meanwhile).
                    if let Ok(mut state) = self.shared.state.lock() {
                        if state.restart == Restart::Preparing {
                            state.restart = Restart::Prepared;
                        }
                    }
                }
                Some(Due::Restart) => self.restart(),
            }
        }
    }

    /// Waits until a checkpoint is due; `None` = stop.
    fn wait(&self) -> Option<Due> {
        let mut state = self.shared.state.lock().ok()?;
        let mut deadline: Option<Instant> = None;
        loop {
            if state.stop {
                return None;
            }
            match state.restart {
                Restart::Parked => {
                    state.requested = false;
                    state.written = 0;
                    return Some(Due::Restart);
                }
                Restart::Preparing => {
                    state.requested = false;
                    state.written = 0;
                    return Some(Due::Prepare);
                }
                Restart::Idle | Restart::Prepared => {}
            }
            // Once a restart is prepared the writer is about to park: a round started now
            // would make it wait for that round too (the period still bounds the wait).
            let by_size = state.written >= WAKE_BYTES && state.restart != Restart::Prepared;
            if state.requested || by_size {
                break;
            }
            let timeout = match (state.written > 0, deadline) {
                (false, _) => PERIOD,
                (true, None) => {
                    deadline = Some(Instant::now() + PERIOD);
                    PERIOD
                }
                (true, Some(d)) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => break,
                },
            };
            state = self.shared.wake.wait_timeout(state, timeout).ok()?.0;
        }
        let requested = state.requested;
        state.requested = false;
        state.written = 0;
        Some(Due::Passive { requested })
    }

    /// Runs RESTART while a writer parks in [`Checkpointer::restart_if_due`], then lets it go.
    fn restart(&self) {
        let started = Instant::now();
        let result = self.conn.busy_timeout(TRUNCATE_WAIT).and_then(|()| {
            let r = self
                .conn
                .query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                });
            self.conn.busy_timeout(schema::BUSY_TIMEOUT)?;
            r
        });
        let Ok(mut state) = self.shared.state.lock() else {
            return;
        };
        match result {
            Ok((0, log)) => {
                tracing::debug!(frames = log, took = ?started.elapsed(), "wal restarted");
                state.since_restart = 0;
            }
            Ok((_, log)) => {
                tracing::debug!(frames = log, "wal restart: readers busy; retrying later");
                state.since_restart /= 2;
            }
            Err(e) => {
                tracing::warn!(error = %e, "wal restart failed; retrying later");
                state.since_restart /= 2;
            }
        }
        state.restarts = state.restarts.wrapping_add(1);
        state.restart = Restart::Idle;
        self.shared.restarted.notify_all();
    }

    fn checkpoint(&self, requested: bool) -> Result<()> {
        let started = Instant::now();
        // (busy, frames in the WAL, frames checkpointed)
        let (busy, log, done): (i64, i64, i64) =
            self.conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?;
        let wal_bytes = (log.max(0) as u64).saturating_mul(self.page_size + 24);
        tracing::trace!(busy, log, done, took = ?started.elapsed(), requested, "wal checkpoint");
        if let Ok(mut state) = self.shared.state.lock() {
            // What the WAL holds since it last started over, as SQLite counts it: the writer's
            // own count is of block bytes only, and an append of a few hundred bytes writes
            // tens of KiB of pages (tree nodes, indexes). At a steady publish rate the WAL
            // rarely starts over on its own (a commit comes in between the checkpoint and the
            // next write), so without this it grew to hundreds of MB and was cut back by a
            // TRUNCATE that held the writer for 200-640 ms (seen under bench_hostile).
            state.since_restart = wal_bytes.saturating_add(state.written);
        }
        if wal_bytes > self.wal_limit && done < log {
            // Readers kept the WAL from being reset: bound it, holding the writer briefly.
            self.conn.busy_timeout(TRUNCATE_WAIT)?;
            let result: rusqlite::Result<i64> =
                self.conn
                    .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0));
            self.conn.busy_timeout(schema::BUSY_TIMEOUT)?;
            match result {
                Ok(0) => tracing::info!(wal_bytes, took = ?started.elapsed(), "wal truncated"),
                Ok(_) | Err(_) => {
                    tracing::debug!(wal_bytes, "wal over its limit, readers busy; retrying");
                    // Come back soon rather than after the next write.
                    if let Ok(mut state) = self.shared.state.lock() {
                        state.written = state.written.max(1);
                    }
                }
            }
        }
        Ok(())
    }
}
