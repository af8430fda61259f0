//! Streams of a source: its distinct (semantics, name) pairs (API.md: a stream is
//! `{semantics, name, source}`), read from the tree's summaries rather than its events.
//!
//! A child whose summary names its pairs exactly (up to `MAX_EXACT_NAMES`) is counted from
//! the summary and not visited; only children summarized by a bloom filter are descended
//! into, down to the key columns of leaves (kept in their parent branch). No leaf (payload)
//! block is ever loaded.

use crate::{
    error::{Error, Result},
    event::{SharedStr, SourceId},
    read::Reader,
    tree::{EventTree, NameSet},
};
use banyan::{
    index::{BranchIndex, LeafIndex},
    query::Query,
};
use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
};

type Pairs = Arc<Mutex<BTreeSet<(SharedStr, SharedStr)>>>;

/// A banyan query that matches nothing and collects the names it sees on the way.
#[derive(Debug, Clone, Default)]
struct NamesQuery(Pairs);

impl NamesQuery {
    fn add<'a>(&self, pairs: impl Iterator<Item = &'a (SharedStr, SharedStr)>) {
        if let Ok(mut set) = self.0.lock() {
            set.extend(pairs.cloned());
        }
    }
}

impl Query<EventTree> for NamesQuery {
    fn containing(&self, _offset: u64, index: &LeafIndex<EventTree>, res: &mut [bool]) {
        self.add(index.keys.names.iter());
        res.iter_mut().for_each(|r| *r = false);
    }

    fn intersecting(&self, _offset: u64, index: &BranchIndex<EventTree>, res: &mut [bool]) {
        for (s, r) in index.summaries.0.iter().zip(res.iter_mut()) {
            if let NameSet::Exact(pairs) = &s.names {
                self.add(pairs.iter());
                *r = false;
            }
        }
    }
}

impl Reader {
    /// The distinct (semantics, name) pairs of `source`'s events: its streams.
    pub fn stream_names(&self, source: &SourceId) -> Result<BTreeSet<(String, String)>> {
        let Some(info) = self.source(source)? else {
            return Ok(BTreeSet::new());
        };
        let tree = self.load_tree(&info.root)?;
        let query = NamesQuery::default();
        for chunk in self
            .forest
            .iter_filtered_chunked(&tree, query.clone(), &|_| ())
        {
            chunk.map_err(Error::from_tree)?;
        }
        let pairs = query
            .0
            .lock()
            .map_err(|_| Error::Tree("names lock poisoned".into()))?;
        Ok(pairs
            .iter()
            .map(|(s, n)| (s.to_string(), n.to_string()))
            .collect())
    }

    /// Streams over all sources: distinct (semantics, name, source).
    pub fn stream_count(&self) -> Result<u64> {
        let mut n = 0u64;
        for info in self.sources()? {
            n += self.stream_names(&info.source)?.len() as u64;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        event::{NewEvent, SourceId},
        store::{Store, StoreConfig},
    };
    use serde_json::value::RawValue;
    use std::collections::BTreeSet;

    #[test]
    fn streams_are_distinct_semantics_and_name_per_source() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.sqlite"), StoreConfig::debug()).unwrap();
        let mut w = store.writer().unwrap();
        let ev = |i: u64, names: u64| NewEvent {
            semantics: format!("sem{}", i % 2),
            name: format!("name{}", i % names),
            tags: vec![],
            lamport: i,
            timestamp: i,
            payload: RawValue::from_string(i.to_string()).unwrap(),
        };
        // `a`: 3 names (exact summaries); `b`: 100 (bloom summaries above the leaves).
        let (a, b) = (SourceId::new("a"), SourceId::new("b"));
        for i in 0..60u64 {
            w.append(&a, vec![ev(i, 3)]).unwrap();
        }
        for i in (0..1000u64).step_by(50) {
            w.append(&b, (i..i + 50).map(|i| ev(i, 100)).collect())
                .unwrap();
        }
        w.pack(&b).unwrap();
        let r = store.reader().unwrap();
        let want_a: BTreeSet<(String, String)> = (0..60)
            .map(|i| (format!("sem{}", i % 2), format!("name{}", i % 3)))
            .collect();
        let want_b: BTreeSet<(String, String)> = (0..1000)
            .map(|i| (format!("sem{}", i % 2), format!("name{}", i % 100)))
            .collect();
        assert_eq!(r.stream_names(&a).unwrap(), want_a);
        assert_eq!(r.stream_names(&b).unwrap(), want_b);
        assert_eq!(
            r.stream_count().unwrap(),
            (want_a.len() + want_b.len()) as u64
        );
        assert!(r.stream_names(&SourceId::new("none")).unwrap().is_empty());
    }
}
