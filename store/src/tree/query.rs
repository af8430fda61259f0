//! [`EventQuery`]: an offset range plus an [`EventFilter`], as a banyan [`Query`].
//!
//! On branches it looks at each child's [`Summary`] (count → offset range, lamport and time
//! ranges, name and tag sets) and clears the children that cannot hold a match, so whole
//! subtrees are skipped without being loaded. On leaves it checks each key exactly.
//!
//! Invariant: `intersecting` never clears a child that holds a matching event, and
//! `containing` agrees exactly with [`EventFilter::matches`] plus the offset range.

use super::{key::KeySeq, summary::Summary, EventTree};
use crate::event::{EventFilter, Selector};
use banyan::{
    index::{BranchIndex, CompactSeq, LeafIndex},
    query::Query,
};
use std::ops::RangeInclusive;

/// Offset range + filter.
#[derive(Debug, Clone)]
pub struct EventQuery {
    offsets: RangeInclusive<u64>,
    filter: EventFilter,
}

impl EventQuery {
    pub fn new(offsets: RangeInclusive<u64>, filter: EventFilter) -> Self {
        Self { offsets, filter }
    }

    fn ranges_overlap(a: &RangeInclusive<u64>, lo: u64, hi: u64) -> bool {
        lo <= hi && *a.start() <= hi && lo <= *a.end()
    }

    /// May the subtree summarized by `s`, starting at `offset`, hold a match?
    fn may_match(&self, offset: u64, s: &Summary) -> bool {
        if s.count == 0 {
            return false;
        }
        let last = offset.saturating_add(s.count - 1);
        Self::ranges_overlap(&self.offsets, offset, last)
            && self
                .filter
                .lamport
                .as_ref()
                .is_none_or(|r| Self::ranges_overlap(r, s.lamport.0, s.lamport.1))
            && self
                .filter
                .time
                .as_ref()
                .is_none_or(|r| Self::ranges_overlap(r, s.time.0, s.time.1))
            && self.filter.selectors.as_ref().is_none_or(|sels| {
                sels.iter().any(|sel| {
                    sel.time
                        .as_ref()
                        .is_none_or(|r| Self::ranges_overlap(r, s.time.0, s.time.1))
                        && s.names
                            .may_contain(sel.semantics.as_deref(), sel.name.as_deref())
                        && sel.tags.iter().all(|t| s.tags.may_contain(t))
                })
            })
    }

    /// Per selector: which of the leaf's names and tag sets match.
    fn leaf_tables(sels: &[Selector], keys: &KeySeq) -> Vec<(Vec<bool>, Vec<bool>)> {
        sels.iter()
            .map(|sel| {
                let names = keys
                    .names
                    .iter()
                    .map(|(s, n)| {
                        sel.semantics.as_deref().is_none_or(|x| x == &**s)
                            && sel.name.as_deref().is_none_or(|x| x == &**n)
                    })
                    .collect();
                let tag_sets = keys
                    .tag_set_strs
                    .iter()
                    .map(|set| {
                        sel.tags
                            .iter()
                            .all(|t| set.iter().any(|have| &**have == t.as_str()))
                    })
                    .collect();
                (names, tag_sets)
            })
            .collect()
    }
}

impl Query<EventTree> for EventQuery {
    fn containing(&self, offset: u64, index: &LeafIndex<EventTree>, res: &mut [bool]) {
        let keys = &index.keys;
        let sels = self.filter.selectors.as_deref();
        let tables = sels.map(|sels| Self::leaf_tables(sels, keys));
        let n = keys.len().min(res.len());
        for (i, r) in res.iter_mut().enumerate().take(n) {
            if !*r {
                continue;
            }
            let o = offset + i as u64;
            let ok = self.offsets.contains(&o)
                && self
                    .filter
                    .lamport
                    .as_ref()
                    .is_none_or(|r| r.contains(&keys.lamport[i]))
                && self
                    .filter
                    .time
                    .as_ref()
                    .is_none_or(|r| r.contains(&keys.time[i]))
                && tables.as_ref().zip(sels).is_none_or(|(t, sels)| {
                    let ni = keys.name_idx[i] as usize;
                    let si = keys.tag_set_idx[i] as usize;
                    t.iter().zip(sels).any(|((names, sets), sel)| {
                        names[ni]
                            && sets[si]
                            && sel.time.as_ref().is_none_or(|r| r.contains(&keys.time[i]))
                    })
                });
            *r = ok;
        }
    }

    fn intersecting(&self, offset: u64, index: &BranchIndex<EventTree>, res: &mut [bool]) {
        let mut child_offset = offset;
        for (i, s) in index.summaries.0.iter().enumerate() {
            if let Some(r) = res.get_mut(i) {
                if *r {
                    *r = self.may_match(child_offset, s);
                }
            }
            child_offset = child_offset.saturating_add(s.count);
        }
    }
}
