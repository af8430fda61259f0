//! How the writer's commits reach those who follow them.
//!
//! The replicator (and anything else that needs every commit) holds a receiver of one broadcast
//! ([`Fanout::all`]). A subscription gets a broadcast of its own ([`Fanout::matching`]): after
//! a commit the writer sends it the update only when one of the update's events matches the
//! subscription's filter (or when the update does not carry its events). A subscription to one
//! app's events is then not woken by every other commit: each woken task was a wake-up on the
//! publish path of a 2-core device, and the node's two internal subscriptions (app commands,
//! blob replicas) alone cost every publish's delivery ~45 µs of its p50 (issue 18,
//! BENCHMARKS.md).
//!
//! A subscription must still learn that the skipped offsets hold nothing for it, or it would
//! read them from the store before the next update it gets (`subscribe.rs` reads gaps). So each
//! [`Notice`] says from which offset of its source on nothing matched: `clean_from`.
//!
//! Bounds: the writer checks at most [`CHECKED_EVENTS`] events per subscription and commit (a
//! larger commit is sent), and a subscription's broadcast keeps at most [`RING`] updates for it
//! while it is behind (further behind, it re-reads the store), so a stalled subscription holds
//! at most `RING × EventsConfig::inline_update_bytes` of updates alive.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use shoal_store::SourceId;
use tokio::sync::broadcast;

use super::{Filter, SourceUpdate};

/// Events of one commit the writer checks against one subscription's filter; a commit with more
/// is sent without checking (the subscription filters it).
const CHECKED_EVENTS: usize = 64;
/// Updates a subscription's broadcast keeps for it (at most `update_channel`).
const RING: usize = 32;

/// One update sent to a subscription.
#[derive(Debug, Clone)]
pub(crate) struct Notice {
    pub update: Arc<SourceUpdate>,
    /// No event of the update's source in `clean_from..update.first` matched the filter (they
    /// were in updates not sent). Equal to `update.first` when nothing was skipped.
    pub clean_from: u64,
}

struct Matching {
    filter: Filter,
    tx: broadcast::Sender<Notice>,
    /// Per source, the first offset of the updates skipped since the last one sent.
    skipped: HashMap<SourceId, u64>,
}

pub(crate) struct Fanout {
    all: broadcast::Sender<Arc<SourceUpdate>>,
    matching: Mutex<Vec<Matching>>,
    /// Updates each subscription's broadcast keeps.
    ring: usize,
}

impl Fanout {
    /// Broadcasts that keep up to `capacity` updates for a receiver that is behind (each
    /// subscription's at most [`RING`]).
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            all: broadcast::channel(capacity).0,
            matching: Mutex::new(Vec::new()),
            ring: capacity.min(RING),
        }
    }

    /// Every commit from now on.
    pub(crate) fn all(&self) -> broadcast::Receiver<Arc<SourceUpdate>> {
        self.all.subscribe()
    }

    /// The commits from now on that may hold events matching `filter` (see the module doc).
    pub(crate) fn matching(&self, filter: Filter) -> broadcast::Receiver<Notice> {
        let (tx, rx) = broadcast::channel(self.ring);
        self.lock().push(Matching {
            filter,
            tx,
            skipped: HashMap::new(),
        });
        rx
    }

    /// Sends a commit (on the writer thread, after the offsets were raised).
    pub(crate) fn send(&self, update: Arc<SourceUpdate>) {
        let mut matching = self.lock();
        // Subscriptions that ended are dropped here, the only place that looks at them.
        matching.retain(|m| m.tx.receiver_count() > 0);
        for m in matching.iter_mut() {
            if may_match(&m.filter, &update) {
                let clean_from = m.skipped.remove(&update.source).unwrap_or(update.first);
                // A receiver that is behind lags and re-reads the store: nothing to do here.
                let _ = m.tx.send(Notice {
                    update: update.clone(),
                    clean_from,
                });
            } else if !m.skipped.contains_key(&update.source)
                && m.filter.selects_source(&update.source)
            {
                // Only the first skip since the last notice allocates. A source the filter
                // cannot select is never sent, so nothing is kept for it.
                m.skipped.insert(update.source.clone(), update.first);
            }
        }
        drop(matching);
        // No receivers is fine (no swarm yet).
        let _ = self.all.send(update);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Matching>> {
        // The lists stay consistent whatever panicked while they were held.
        self.matching.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether `update` may hold an event `filter` matches: checked on the events it carries (up to
/// [`CHECKED_EVENTS`]), else on its source alone. Allocates nothing: it runs on the writer.
fn may_match(filter: &Filter, update: &SourceUpdate) -> bool {
    match &update.events {
        Some(events) if events.len() <= CHECKED_EVENTS => events.iter().any(|e| filter.matches(e)),
        _ => filter.selects_source(&update.source),
    }
}
