//! The event types shared by every crate: what the engine hands the store ([`NewEvent`]), what
//! reads return ([`Event`]), the source id, and query filters ([`EventFilter`], [`Selector`]).
//!
//! Invariant: a payload is compact JSON text kept as-is ([`RawValue`]); the store never
//! re-encodes it, so responses can write it without another JSON pass. Tags are part of every
//! event from the start (sorted and deduplicated by the engine; may be empty).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::{fmt, ops::RangeInclusive, sync::Arc};

/// A source: one device's single log. In practice the libp2p `PeerId` string of the node; the
/// store treats it as an opaque, ordered string.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SourceId(String);

impl SourceId {
    /// Wraps a source id string (not validated: any non-empty string works for the store).
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The string form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The alias under which this source's current tree root is pinned.
    pub(crate) fn alias(&self) -> String {
        format!("{}{}", crate::log::SOURCE_ALIAS_PREFIX, self.0)
    }
}

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SourceId({})", self.0)
    }
}

impl From<&str> for SourceId {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

impl From<String> for SourceId {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// Largest lamport a store accepts: JavaScript clients read lamports as numbers, which are
/// exact only up to 2^53 - 1, and a clock that could reach 2^64 could wrap. A peer's tree with a
/// larger lamport is refused, so one bad device cannot push every node's clock there.
pub const MAX_LAMPORT: u64 = (1 << 53) - 1;

/// Position of an event in its source's log: 0 for the first, one more for each next.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Offset(pub u64);

/// A Lamport timestamp: strictly increasing along each source's log and above every lamport
/// its node saw before (the order events sort in across sources).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Lamport(pub u64);

impl Offset {
    pub fn get(self) -> u64 {
        self.0
    }
}

impl Lamport {
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for Lamport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An event to append: everything but source and offset, which the log assigns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewEvent {
    pub semantics: String,
    pub name: String,
    /// Sorted and deduplicated by the engine; may be empty.
    #[serde(default)]
    pub tags: Vec<String>,
    pub lamport: u64,
    /// Microseconds since the Unix epoch.
    pub timestamp: u64,
    /// Compact JSON text, stored as-is.
    pub payload: Box<RawValue>,
}

/// A stored event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub source: SourceId,
    /// Position in the source's log: starts at 0, gapless.
    pub offset: u64,
    pub lamport: u64,
    /// Microseconds since the Unix epoch.
    pub timestamp: u64,
    pub semantics: String,
    pub name: String,
    pub tags: Vec<String>,
    pub payload: Box<RawValue>,
}

/// One alternative of a filter: every given field must match, the event must carry every
/// listed tag and its timestamp must lie in `time`. An all-`None`, no-tags selector matches
/// every event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selector {
    pub semantics: Option<String>,
    pub name: Option<String>,
    /// All required.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Inclusive timestamp range (microseconds) of this alternative alone (the filter's own
    /// `time` applies to every alternative).
    #[serde(default)]
    pub time: Option<RangeInclusive<u64>>,
}

impl Selector {
    /// Matches events with exactly this semantics and name.
    pub fn semantics_name(semantics: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            semantics: Some(semantics.into()),
            name: Some(name.into()),
            tags: Vec::new(),
            time: None,
        }
    }

    /// Matches events carrying every one of `tags`.
    pub fn tags<S: Into<String>>(tags: impl IntoIterator<Item = S>) -> Self {
        Self {
            semantics: None,
            name: None,
            tags: tags.into_iter().map(Into::into).collect(),
            time: None,
        }
    }

    /// Does an event with these fields match?
    pub fn matches(
        &self,
        timestamp: u64,
        semantics: &str,
        name: &str,
        tags: &[impl AsRef<str>],
    ) -> bool {
        self.time.as_ref().is_none_or(|r| r.contains(&timestamp))
            && self.semantics.as_deref().is_none_or(|s| s == semantics)
            && self.name.as_deref().is_none_or(|n| n == name)
            && self
                .tags
                .iter()
                .all(|t| tags.iter().any(|have| have.as_ref() == t))
    }
}

/// What a read selects besides the offset range. The default selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// `None` = every event; `Some(vec![])` = nothing; otherwise events matching any selector.
    pub selectors: Option<Vec<Selector>>,
    /// Inclusive lamport range.
    pub lamport: Option<RangeInclusive<u64>>,
    /// Inclusive timestamp range (microseconds).
    pub time: Option<RangeInclusive<u64>>,
}

impl EventFilter {
    /// Selects every event.
    pub fn all() -> Self {
        Self::default()
    }

    /// Selects events matching any of `selectors`.
    pub fn selectors(selectors: Vec<Selector>) -> Self {
        Self {
            selectors: Some(selectors),
            ..Self::default()
        }
    }

    /// Does an event with these fields match? (The reference semantics the tree queries must
    /// agree with; summaries only ever skip what this would reject.)
    pub fn matches(
        &self,
        lamport: u64,
        timestamp: u64,
        semantics: &str,
        name: &str,
        tags: &[impl AsRef<str>],
    ) -> bool {
        self.lamport.as_ref().is_none_or(|r| r.contains(&lamport))
            && self.time.as_ref().is_none_or(|r| r.contains(&timestamp))
            && self.selectors.as_ref().is_none_or(|sels| {
                sels.iter()
                    .any(|s| s.matches(timestamp, semantics, name, tags))
            })
    }

    /// True when nothing can match (an empty selector list or an empty range).
    pub fn is_empty(&self) -> bool {
        self.selectors.as_ref().is_some_and(|s| s.is_empty())
            || self.lamport.as_ref().is_some_and(|r| r.is_empty())
            || self.time.as_ref().is_some_and(|r| r.is_empty())
    }
}

/// Shared, immutable strings of a key, so one leaf's keys share their names and tags.
pub(crate) type SharedStr = Arc<str>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_semantics() {
        let tags = ["a", "b"];
        assert!(Selector::default().matches(0, "s", "n", &tags));
        assert!(Selector::semantics_name("s", "n").matches(0, "s", "n", &tags));
        assert!(!Selector::semantics_name("s", "x").matches(0, "s", "n", &tags));
        assert!(Selector::tags(["a"]).matches(0, "s", "n", &tags));
        assert!(Selector::tags(["a", "b"]).matches(0, "s", "n", &tags));
        assert!(!Selector::tags(["a", "c"]).matches(0, "s", "n", &tags));
    }

    #[test]
    fn filter_semantics() {
        let none: [&str; 0] = [];
        assert!(EventFilter::all().matches(1, 2, "s", "n", &none));
        assert!(!EventFilter::selectors(vec![]).matches(1, 2, "s", "n", &none));
        assert!(EventFilter::selectors(vec![]).is_empty());
        let f = EventFilter {
            lamport: Some(5..=6),
            ..EventFilter::all()
        };
        assert!(!f.matches(4, 2, "s", "n", &none));
        assert!(f.matches(5, 2, "s", "n", &none));
    }
}
