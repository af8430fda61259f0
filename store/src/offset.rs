//! [`OffsetMap`]: the highest offset stored per source.
//!
//! Invariant: an absent source means "no event of it"; offsets in the map only ever grow
//! through [`OffsetMap::update`].

use crate::event::SourceId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Highest offset per source (inclusive). Serializes as a JSON object `{source: offset}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OffsetMap(BTreeMap<SourceId, u64>);

impl OffsetMap {
    /// An empty map: nothing of any source.
    pub fn new() -> Self {
        Self::default()
    }

    /// Highest offset of `source`, `None` when nothing of it is known.
    pub fn get(&self, source: &SourceId) -> Option<u64> {
        self.0.get(source).copied()
    }

    /// Raises the entry of `source` to `offset` (never lowers it). Returns true if it grew.
    pub fn update(&mut self, source: SourceId, offset: u64) -> bool {
        match self.0.get_mut(&source) {
            Some(have) if *have >= offset => false,
            Some(have) => {
                *have = offset;
                true
            }
            None => {
                self.0.insert(source, offset);
                true
            }
        }
    }

    /// Sources and their highest offsets, ordered by source.
    pub fn iter(&self) -> impl Iterator<Item = (&SourceId, u64)> {
        self.0.iter().map(|(s, o)| (s, *o))
    }

    /// Number of sources.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when no source is present.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The underlying map.
    pub fn as_map(&self) -> &BTreeMap<SourceId, u64> {
        &self.0
    }
}

impl FromIterator<(SourceId, u64)> for OffsetMap {
    fn from_iter<T: IntoIterator<Item = (SourceId, u64)>>(iter: T) -> Self {
        let mut m = Self::new();
        for (s, o) in iter {
            m.update(s, o);
        }
        m
    }
}

impl From<BTreeMap<SourceId, u64>> for OffsetMap {
    fn from(m: BTreeMap<SourceId, u64>) -> Self {
        Self(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_only_grows() {
        let mut m = OffsetMap::new();
        let s = SourceId::new("a");
        assert!(m.update(s.clone(), 3));
        assert!(!m.update(s.clone(), 2));
        assert_eq!(m.get(&s), Some(3));
        assert!(m.update(s.clone(), 5));
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"a":5}"#);
    }
}
