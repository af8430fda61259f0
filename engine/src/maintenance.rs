//! Store upkeep while the node runs: garbage collection and WAL checkpoints.
//!
//! Blocks become garbage when appends pack the tree (the replaced leaves and branches), when a
//! replicated source moves to a newer root, and when a blob is deleted. Nothing else frees them,
//! so one task runs a bounded GC step on the writer every [`PERIOD`], and keeps stepping while a
//! step reports more garbage. Each step is one short write transaction queued behind publishes
//! like any other writer command, capped by [`GC_BUDGET`] so it never holds the writer for long.
//! Blocks younger than the store's GC grace period are kept (a running query may still need
//! them).
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
/// CIDs deleted per GC step: small enough that one step takes milliseconds.
const GC_BUDGET: usize = 2_000;
/// Steps in one round at most, so a huge backlog is worked off over several rounds.
const MAX_STEPS: usize = 50;
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

/// One GC round: bounded steps while there is more garbage, then a checkpoint.
async fn round(events: &EventService) {
    let (mut blocks, mut bytes) = (0u64, 0u64);
    for _ in 0..MAX_STEPS {
        match events.gc_step(GC_BUDGET).await {
            Ok(stats) => {
                blocks += stats.blocks_deleted;
                bytes += stats.bytes_freed;
                if !stats.more {
                    break;
                }
            }
            Err(EventsError::ShuttingDown | EventsError::Interrupted) => return,
            Err(err) => {
                tracing::warn!(%err, "gc step failed; retrying next round");
                return;
            }
        }
    }
    if blocks > 0 {
        tracing::info!(blocks, bytes, "gc freed unreachable blocks");
        // The store's checkpoint thread does it: no wait for readers on the writer's thread.
        if let Err(err) = events.request_checkpoint().await {
            tracing::warn!(%err, "wal checkpoint failed");
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
