//! Subscriptions: every stored matching event above the lower bound, then each new one.
//!
//! One task per subscription. Guarantee (API.md): per source, offsets strictly ascend without
//! gaps (among matching events) and nothing is delivered twice. How:
//! 1. subscribe to the writer's updates FIRST (a broadcast of this subscription's own, sent only
//!    the updates that may match its filter; `fanout.rs`), then read the offsets present. The
//!    writer raises the offsets before it broadcasts, so every commit is either in that snapshot
//!    or arrives on the broadcast (or both — then it is skipped), or holds nothing that
//!    matches (then the next update sent says so: [`Notice::clean_from`]);
//! 2. catch up: read (lower, present] from the store in lamport order;
//! 3. live: for each update, deliver the offsets above what this subscription has covered per
//!    source (`covered`), from the shared events when the update carries them and starts at or
//!    before the next wanted offset, else from the store;
//! 4. a subscription that fell behind the broadcast (`Lagged`) does not buffer: it re-reads
//!    (covered, present] from the store, like step 2.
//!
//! Memory per subscription is the bounded output channel; a consumer that stops reading parks
//! this task, its broadcast receiver lags (the broadcast never waits for it, so publishing is
//! not slowed) and it catches up from the store once the consumer reads again.

use shoal_store::{Event, OffsetMap};
use tokio::sync::{broadcast, mpsc};

use super::fanout::Notice;
use super::query::{read, Sink};
use super::{plan, ChunkSender, EventStream, Filter, Order, Plan, Reads, Subscription};

/// Starts a subscription. `updates` must have been subscribed before this call's snapshot of
/// the offsets, which happens inside.
pub(crate) fn spawn(
    reads: Reads,
    updates: broadcast::Receiver<Notice>,
    subscription: Subscription,
) -> EventStream {
    let (tx, rx) = mpsc::channel(reads.config.read_chunks_buffered.max(1));
    tokio::spawn(run(reads, updates, subscription, tx));
    EventStream::new(rx)
}

async fn run(
    reads: Reads,
    mut updates: broadcast::Receiver<Notice>,
    subscription: Subscription,
    tx: ChunkSender,
) {
    let mut shutdown = reads.shutdown.clone();
    if *shutdown.borrow_and_update() {
        return;
    }
    let filter = subscription.filter;
    // Highest offset per source already covered (delivered or known not to match).
    let mut covered = subscription.lower;
    if !catch_up(&reads, &filter, &mut covered, &tx).await {
        return;
    }
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            _ = shutdown.changed() => return,
            received = updates.recv() => match received {
                Ok(notice) => {
                    if !deliver(&reads, &filter, &mut covered, &notice, &tx).await {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "subscriber lagged; re-reading from the store");
                    if !catch_up(&reads, &filter, &mut covered, &tx).await {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// Reads (covered, present] of every source and marks it covered. False = stop.
async fn catch_up(
    reads: &Reads,
    filter: &Filter,
    covered: &mut OffsetMap,
    tx: &ChunkSender,
) -> bool {
    let present = reads.offsets.borrow().clone();
    let plan = plan(&present, covered, None, filter);
    if !read_blocking(reads, plan, tx).await {
        return false;
    }
    for (source, offset) in present.iter() {
        covered.update(source.clone(), offset);
    }
    true
}

/// Delivers what the notice's update adds beyond `covered`. False = stop.
async fn deliver(
    reads: &Reads,
    filter: &Filter,
    covered: &mut OffsetMap,
    notice: &Notice,
    tx: &ChunkSender,
) -> bool {
    let update = &notice.update;
    let mut next = covered.get(&update.source).map_or(0, |c| c + 1);
    if update.last < next {
        return true;
    }
    // The updates the fanout did not send hold nothing for this filter: no store read.
    if notice.clean_from <= next && update.first > next {
        covered.update(update.source.clone(), update.first - 1);
        next = update.first;
    }
    match &update.events {
        Some(events) if update.first <= next => {
            let chunk: Vec<Event> = events
                .iter()
                .filter(|e| e.offset >= next && filter.matches(e))
                .cloned()
                .collect();
            if !chunk.is_empty() && tx.send(Ok(chunk)).await.is_err() {
                return false;
            }
        }
        // Not shared, or a gap before it (should not happen without a lag): read the store.
        _ => {
            if let Some(f) = filter.for_source(&update.source) {
                let mut plan = Plan::new();
                plan.insert(update.source.clone(), (next, update.last, f));
                if !read_blocking(reads, plan, tx).await {
                    return false;
                }
            }
        }
    }
    covered.update(update.source.clone(), update.last);
    true
}

/// Runs a lamport-ordered read of `plan` on a blocking thread into `tx`. False = stop (the
/// consumer is gone or the read failed; a failure is sent to the consumer first).
async fn read_blocking(reads: &Reads, plan: Plan, tx: &ChunkSender) -> bool {
    if plan.is_empty() {
        return true;
    }
    let store = reads.store.clone();
    let chunk = reads.config.read_chunk.max(1);
    let tx = tx.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let mut sink = Sink::new(&tx, chunk);
        match read(&store, plan, Order::Lamport, &mut sink) {
            Ok(()) => sink.flush(),
            Err(e) => {
                tracing::warn!(error = %e, "subscription read failed");
                let _ = tx.blocking_send(Err(e));
                false
            }
        }
    })
    .await;
    joined.unwrap_or(false)
}
