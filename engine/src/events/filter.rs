//! What a query or subscription asks for: selectors (semantics, name, source, tags, time
//! range), order, bounds.

use shoal_store::{Event, EventFilter, OffsetMap, Selector, SourceId};
use std::ops::RangeInclusive;

/// One alternative of a query filter: every field given must equal the event's, the event
/// must carry every listed tag, and its timestamp must lie in `time`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamSelector {
    pub semantics: Option<String>,
    pub name: Option<String>,
    pub source: Option<SourceId>,
    pub tags: Vec<String>,
    /// Inclusive timestamp range (µs since the epoch); `None` = any time.
    pub time: Option<RangeInclusive<u64>>,
}

/// Events matching any of the selectors. An empty list matches nothing;
/// `vec![StreamSelector::default()]` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter(pub Vec<StreamSelector>);

impl Filter {
    /// Everything.
    pub fn all() -> Self {
        Filter(vec![StreamSelector::default()])
    }

    /// Can events of `source` match? (Without building the store filter: the writer asks this
    /// per commit, `fanout.rs`.)
    pub fn selects_source(&self, source: &SourceId) -> bool {
        self.0.iter().any(|s| selects(s, source))
    }

    /// The store filter for one source, `None` when nothing of `source` can match (its reads
    /// are skipped entirely).
    pub fn for_source(&self, source: &SourceId) -> Option<EventFilter> {
        let selectors: Vec<Selector> = self
            .0
            .iter()
            .filter(|s| selects(s, source))
            .map(|s| Selector {
                semantics: s.semantics.clone(),
                name: s.name.clone(),
                tags: s.tags.clone(),
                time: s.time.clone(),
            })
            .collect();
        if selectors.is_empty() {
            return None;
        }
        if selectors.iter().any(|s| *s == Selector::default()) {
            // One catch-all alternative: let the store skip filtering altogether.
            return Some(EventFilter::all());
        }
        Some(EventFilter::selectors(selectors))
    }

    /// Does `event` match? (Live events are filtered in memory with the same rules.)
    pub fn matches(&self, event: &Event) -> bool {
        self.0.iter().any(|s| {
            selects(s, &event.source)
                && s.time.as_ref().is_none_or(|r| r.contains(&event.timestamp))
                && s.semantics.as_deref().is_none_or(|x| x == event.semantics)
                && s.name.as_deref().is_none_or(|x| x == event.name)
                && s.tags
                    .iter()
                    .all(|t| event.tags.iter().any(|have| have == t))
        })
    }
}

/// Does `selector` admit events of `source`?
fn selects(selector: &StreamSelector, source: &SourceId) -> bool {
    selector.source.as_ref().is_none_or(|src| src == source)
}

/// Result order of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Ascending `(lamport, source, offset)`.
    Lamport,
    /// Descending `(lamport, source, offset)`.
    LamportReverse,
    /// Per source ascending offset, sources in ascending id order.
    SourceOrdered,
}

/// A bounded read of stored events.
#[derive(Debug, Clone)]
pub struct Query {
    /// Exclusive: events with offset above the bound; absent source = from the start.
    pub lower: OffsetMap,
    /// Inclusive; `None` = everything stored now. With `Some`, absent sources contribute nothing.
    pub upper: Option<OffsetMap>,
    pub filter: Filter,
    pub order: Order,
}

/// Stored then live events.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Exclusive lower bound; absent source = from the start.
    pub lower: OffsetMap,
    pub filter: Filter,
}
