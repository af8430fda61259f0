//! Store upkeep while the node runs: garbage collection and WAL checkpoints.
//!
//! Blocks become garbage when appends pack the tree (the replaced leaves and branches), when a
//! replicated source moves to a newer root, and when a blob is deleted. Nothing else frees them,
//! so one task runs a bounded GC step on the writer every [`PERIOD`], and keeps stepping while a
//! step reports more garbage. Each step is one short write transaction queued behind publishes
//! like any other writer command, capped by [`GC_BUDGET`] so it never holds the writer for long.
//! Blocks younger than the store's GC grace period are kept (a running query may still need
//! them). Blocks fetched for a sync are not reachable from any alias until the sync imports its
//! root, so a round is skipped while any source is known (from gossip) beyond what is stored:
//! a sync that takes longer than the grace period must not lose what it already fetched.
//!
//! Packing is not done here: the writer thread has its own packer (`events/writer.rs`).

use std::time::Duration;

use tokio::sync::watch;

use crate::events::{EventService, EventsError};
use crate::swarm::NetworkState;

/// Time between GC rounds.
const PERIOD: Duration = Duration::from_secs(30);
/// CIDs deleted per GC step: small enough that one step takes milliseconds.
const GC_BUDGET: usize = 2_000;
/// Steps in one round at most, so a huge backlog is worked off over several rounds.
const MAX_STEPS: usize = 50;

/// Runs GC steps through `events`' writer, pausing while `network` knows of heads beyond the
/// store, until `shutdown` becomes true. Dropping the returned handle's task is safe.
pub(crate) fn spawn(
    events: EventService,
    network: watch::Receiver<NetworkState>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick fires at once; the store was just checked at start
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = crate::stopped(&mut shutdown) => return,
            }
            if syncing(&events, &network) {
                tracing::debug!("gc round skipped: a sync is in progress");
                continue;
            }
            round(&events).await;
        }
    })
}

/// Whether some source is known beyond what is stored (its sync is pending or running).
fn syncing(events: &EventService, network: &watch::Receiver<NetworkState>) -> bool {
    let stored = events.offsets();
    let network = network.borrow();
    network
        .known
        .iter()
        .any(|(source, known)| stored.get(source).is_none_or(|have| have < *known))
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
