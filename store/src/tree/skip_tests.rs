//! How many blocks a filtered read loads: a rare tag (or a narrow time range) must cost the
//! path to its leaves, not a walk of the tree. Counted with a block store wrapper under a
//! forest without a branch cache (every node visited is one block read), as banyan's own tests
//! count reads; the query is the same [`EventQuery`] that [`crate::Reader::events`] runs.

use super::{EventQuery, EventTree, SqliteReader, Value};
use crate::{cid, event::EventFilter, NewEvent, Selector, SourceId, Store, StoreConfig};
use banyan::{
    index::NodeInfo,
    store::{BranchCache, ReadOnlyStore},
    Forest,
};
use serde_json::value::RawValue;
use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

/// Counts every block banyan asks for.
#[derive(Clone)]
struct Counting {
    inner: SqliteReader,
    reads: Arc<AtomicUsize>,
}

impl ReadOnlyStore<libipld::Cid> for Counting {
    fn get(&self, link: &libipld::Cid) -> anyhow::Result<Box<[u8]>> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.get(link)
    }
}

fn no_extra(_: &NodeInfo<EventTree, Counting>) {}

const EVENTS: u64 = 20_000;
/// Offsets that carry the rare tag: one short burst (an alarm), inside one or two leaves.
const RARE: std::ops::Range<u64> = 12_345..12_350;

fn events() -> Vec<NewEvent> {
    (0..EVENTS)
        .map(|i| {
            let mut tags = vec![format!("line-{}", i % 3), "plant".to_string()];
            if RARE.contains(&i) {
                tags.push("alarm".into());
            }
            tags.sort();
            NewEvent {
                semantics: format!("machine-{}", i % 5),
                name: format!("m{}", i % 7),
                tags,
                lamport: i,
                timestamp: 1_000_000 + i * 10,
                payload: RawValue::from_string(format!("{{\"i\":{i}}}")).unwrap(),
            }
        })
        .collect()
}

/// (events returned, blocks read) of one forward read of the whole tree under `filter`.
fn read(store: &Store, source: &SourceId, filter: EventFilter) -> (u64, usize) {
    let reader = store.reader().unwrap();
    let reads = Arc::new(AtomicUsize::new(0));
    let counting = Counting {
        inner: SqliteReader::new(reader.conn.clone()),
        reads: reads.clone(),
    };
    let forest: Forest<EventTree, Counting> = Forest::new(counting, BranchCache::new(0));
    let root = reader.source(source).unwrap().unwrap().root;
    let tree = forest
        .load_tree::<Value>(super::secrets(), cid::to_ipld(&root).unwrap())
        .unwrap();
    let query = EventQuery::new(0..=u64::MAX, filter);
    let mut n = 0;
    for chunk in forest.iter_filtered_chunked(&tree, query, &no_extra) {
        n += chunk.unwrap().data.len() as u64;
    }
    (n, reads.load(Ordering::Relaxed))
}

#[test]
fn rare_selections_read_only_the_path_to_their_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.sqlite"), StoreConfig::debug()).unwrap();
    let source = SourceId::new("src");
    {
        let mut w = store.writer().unwrap();
        for batch in events().chunks(500) {
            w.append(&source, batch.to_vec()).unwrap();
        }
        w.pack(&source).unwrap();
    }
    let shape = store
        .reader()
        .unwrap()
        .tree_shape(&source)
        .unwrap()
        .unwrap();
    let depth = shape.nodes.iter().map(|n| n.level).max().unwrap() as usize;
    let leaves = shape.nodes.iter().filter(|n| n.level == 0).count();
    let blocks = shape.nodes.len();

    let (all, full_reads) = read(&store, &source, EventFilter::all());
    assert_eq!(all, EVENTS);
    assert!(
        full_reads >= blocks,
        "{full_reads} reads for {blocks} nodes"
    );

    // The rare tag lies in one or two leaves: the read loads the root-to-leaf paths to them and
    // nothing else. Without a branch cache banyan loads a branch again when it opens a leaf
    // below it (the full scan reads 4,667 blocks for 2,667 nodes: one extra per leaf), so a
    // path costs up to two reads per level; measured: 24 reads here against 4,667 for the scan.
    let rare = EventFilter::selectors(vec![Selector::tags(["alarm"])]);
    let (n, rare_reads) = read(&store, &source, rare);
    assert_eq!(n, RARE.end - RARE.start);
    let bound = 4 * (depth + 1);
    assert!(
        rare_reads <= bound && rare_reads * 100 <= full_reads,
        "a tag in {} events read {rare_reads} blocks (depth {depth}, bound {bound}; the full \
         scan read {full_reads} of {blocks} nodes, {leaves} leaves)",
        RARE.end - RARE.start
    );

    // A tag no event carries (absent from every exact tag set) reads the root (twice at most).
    let (n, none_reads) = read(
        &store,
        &source,
        EventFilter::selectors(vec![Selector::tags(["nowhere"])]),
    );
    assert_eq!(n, 0);
    assert!(none_reads <= 2, "{none_reads} reads for an absent tag");

    // A selector's own time range skips like the filter's: 10 µs per event, so this is the
    // same burst selected by time.
    let by_time = EventFilter::selectors(vec![Selector {
        time: Some(1_000_000 + RARE.start * 10..=1_000_000 + (RARE.end - 1) * 10),
        ..Selector::default()
    }]);
    let (n, time_reads) = read(&store, &source, by_time);
    assert_eq!(n, RARE.end - RARE.start);
    assert!(
        time_reads <= bound,
        "{time_reads} reads by time (bound {bound})"
    );

    // Tag and time together: the alternative must match both, so a time range outside the
    // burst reads no leaf at all.
    let (n, both_reads) = read(
        &store,
        &source,
        EventFilter::selectors(vec![Selector {
            time: Some(0..=1_000_000 + 100 * 10),
            ..Selector::tags(["alarm"])
        }]),
    );
    assert_eq!(n, 0);
    assert!(both_reads <= bound, "{both_reads} reads (bound {bound})");
}
