//! Store upkeep while the node runs: garbage collection and WAL checkpoints.
//!
//! Blocks become garbage when appends pack the tree (the replaced leaves and branches), when a
//! replicated source moves to a newer root, and when a blob is deleted. Nothing else frees them,
//! so one task runs a GC round every [`PERIOD`]: a mark on a read connection finds up to
//! [`MARK_LIMIT`] unreachable blocks while commits go on (the walk of the live set grows with
//! the store, so it must not run on the writer), then the writer deletes them in steps of
//! [`SWEEP_BUDGET`] and hands free pages back in steps of [`VACUUM_PAGES`]. Each step is one
//! short write transaction queued behind publishes like any other writer command, so a publish
//! waits for at most one step. Blocks younger than the store's GC grace period are kept (a
//! running query may still need them).
//!
//! Blocks fetched for a sync are not reachable from any alias until the sync imports its root,
//! so a round waits while a sync is receiving blocks (the replicator publishes when one last
//! did): a sync that takes longer than the grace period must not lose what it fetched. A sync
//! that received nothing for [`SYNC_QUIET`] is stalled (an unfetchable head, a peer that
//! withholds blocks) and does not hold GC back; neither does a stream of syncs for longer than
//! [`MAX_PAUSE`] (a peer dripping blocks): then a round runs, and a sync that loses blocks
//! fetches them again. It used to wait while any source was known beyond what is stored, so one
//! head whose blocks never came switched GC off for the life of the process.
//!
//! Packing is not done here: the writer thread has its own packer (`events/writer/`).

use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::events::{EventService, EventsError};

/// Time between GC rounds.
const PERIOD: Duration = Duration::from_secs(30);
/// Unreachable CIDs one mark finds at most (memory: tens of bytes each).
const MARK_LIMIT: usize = 20_000;
/// Marks in one round at most, so a huge backlog is worked off over several rounds.
const MAX_MARKS: usize = 5;
/// CIDs one sweep step deletes at most: one step must take about a millisecond, because a
/// publish that arrives meanwhile waits for it.
const SWEEP_BUDGET: usize = 200;
/// Free pages one vacuum step hands back at most (1 MiB at 4 KiB pages), for the same reason.
const VACUUM_PAGES: u32 = 256;
/// A sync that received no block for this long does not hold GC back (the store's GC grace:
/// what it received within that is kept anyway).
pub(crate) const SYNC_QUIET: Duration = Duration::from_secs(60);
/// GC waits for syncs at most this long in a row.
pub(crate) const MAX_PAUSE: Duration = Duration::from_secs(600);

/// Runs GC steps through `events`' writer every [`PERIOD`], waiting while `sync_activity`
/// (when a sync last received blocks) says a sync is under way, until `shutdown` becomes true.
/// Dropping the returned handle's task is safe.
pub(crate) fn spawn(
    events: EventService,
    sync_activity: watch::Receiver<Option<Instant>>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick fires at once; the store was just checked at start
        let mut paused_since: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = crate::stopped(&mut shutdown) => return,
            }
            let now = Instant::now();
            let last = *sync_activity.borrow();
            if wait_for_syncs(last, paused_since, now) {
                paused_since.get_or_insert(now);
                tracing::debug!("gc round skipped: a sync is receiving blocks");
                continue;
            }
            if paused_since.take().is_some_and(|t| now - t >= MAX_PAUSE) {
                tracing::info!(paused = ?MAX_PAUSE, "gc runs although syncs go on (they fetch again what it frees)");
            }
            round(&events).await;
        }
    })
}

/// Whether this round waits: a sync received blocks within [`SYNC_QUIET`] (`last`), and GC has
/// not waited for [`MAX_PAUSE`] already (`paused_since`).
fn wait_for_syncs(last: Option<Instant>, paused_since: Option<Instant>, now: Instant) -> bool {
    let active = last.is_some_and(|t| now.saturating_duration_since(t) < SYNC_QUIET);
    let too_long = paused_since.is_some_and(|t| now.saturating_duration_since(t) >= MAX_PAUSE);
    active && !too_long
}

/// One GC round: marks on a reader and bounded sweep steps on the writer while the marks find
/// more garbage, then vacuum steps and a checkpoint.
async fn round(events: &EventService) {
    let mut freed = shoal_store::GcStats::default();
    for _ in 0..MAX_MARKS {
        let stats = match mark_and_sweep(events).await {
            Ok(stats) => stats,
            Err(EventsError::ShuttingDown | EventsError::Interrupted) => return,
            Err(err) => {
                tracing::warn!(%err, "gc failed; retrying next round");
                return;
            }
        };
        freed.blocks_deleted += stats.blocks_deleted;
        freed.bytes_freed += stats.bytes_freed;
        // Another mark only if this one stopped at its limit and got somewhere.
        if !stats.more || stats.cids_deleted == 0 {
            break;
        }
    }
    if freed.blocks_deleted == 0 {
        return;
    }
    loop {
        match events.gc_vacuum(VACUUM_PAGES).await {
            Ok(true) => {}
            Ok(false) => break,
            Err(EventsError::ShuttingDown | EventsError::Interrupted) => return,
            Err(err) => {
                tracing::warn!(%err, "handing free pages back failed; retrying next round");
                break;
            }
        }
    }
    tracing::info!(
        blocks = freed.blocks_deleted,
        bytes = freed.bytes_freed,
        "gc freed unreachable blocks"
    );
    // The store's checkpoint thread does it: no wait for readers on the writer's thread.
    if let Err(err) = events.request_checkpoint().await {
        tracing::warn!(%err, "wal checkpoint failed");
    }
}

/// One mark and its sweep; what the sweep freed (`more`: the mark stopped at its limit).
async fn mark_and_sweep(events: &EventService) -> Result<shoal_store::GcStats, EventsError> {
    let start = events.gc_start().await?;
    let started = Instant::now();
    let mut mark = events.gc_mark(start, MARK_LIMIT).await?;
    tracing::debug!(candidates = mark.candidates(), took = ?started.elapsed(), "gc mark");
    // At least one step, also for an empty mark: it expires retired roots and sweeps a block
    // directory for files without a row.
    loop {
        mark = events.gc_sweep(mark, SWEEP_BUDGET).await?.0;
        if mark.is_swept() {
            return Ok(mark.freed().clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12 item 4: a head whose blocks never come no longer switches GC off; a peer that
    /// drips blocks holds it back at most MAX_PAUSE.
    #[test]
    fn only_a_sync_receiving_blocks_holds_gc_back_and_not_for_ever() {
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        // No sync ever: GC runs.
        assert!(!wait_for_syncs(None, None, at(0)));
        // A sync received blocks 10 s ago: wait.
        assert!(wait_for_syncs(Some(at(0)), None, at(10)));
        // Stalled (nothing for a minute, e.g. an unfetchable head): run.
        assert!(!wait_for_syncs(Some(at(0)), None, at(61)));
        // Blocks keep coming, but GC has waited ten minutes: run.
        assert!(wait_for_syncs(Some(at(599)), Some(at(0)), at(599)));
        assert!(!wait_for_syncs(Some(at(600)), Some(at(0)), at(600)));
    }
}
