//! Round trips through a real store file: append, read forwards/backwards, filter, reopen.

use serde_json::value::RawValue;
use shoal_store::{EventFilter, NewEvent, Selector, SourceId, Store, StoreConfig};

fn ev(i: u64) -> NewEvent {
    NewEvent {
        semantics: format!("sem{}", i % 3),
        name: format!("name{}", i % 2),
        tags: if i.is_multiple_of(4) {
            vec!["four".into()]
        } else {
            vec![]
        },
        lamport: 10 + i,
        timestamp: 1_000_000 + i * 7,
        payload: RawValue::from_string(format!("{{\"i\":{i}}}")).unwrap(),
    }
}

#[test]
fn append_read_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.sqlite");
    let source = SourceId::new("src-a");
    {
        let store = Store::open(&path, StoreConfig::debug()).unwrap();
        let mut w = store.writer().unwrap();
        let mut next = 0;
        for batch in [1u64, 5, 17, 40, 3] {
            let events: Vec<_> = (next..next + batch).map(ev).collect();
            let a = w.append(&source, events).unwrap();
            assert_eq!(a.first, next);
            assert_eq!(a.last, next + batch - 1);
            assert!(!a.new_blocks.is_empty());
            next += batch;
        }
        let r = store.reader().unwrap();
        let all: Vec<_> = r
            .events(&source, 0..=u64::MAX, &EventFilter::all(), false)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        assert_eq!(all.len() as u64, next);
        for (i, e) in all.iter().enumerate() {
            assert_eq!(e.offset, i as u64);
            assert_eq!(e.payload.get(), format!("{{\"i\":{i}}}"));
            assert_eq!(e.lamport, 10 + i as u64);
        }
        let rev: Vec<_> = r
            .events(&source, 5..=20, &EventFilter::all(), true)
            .unwrap()
            .map(|e| e.unwrap().offset)
            .collect();
        assert_eq!(rev, (5..=20).rev().collect::<Vec<_>>());
        let f = EventFilter::selectors(vec![Selector::semantics_name("sem1", "name0")]);
        let got: Vec<_> = r
            .events(&source, 0..=u64::MAX, &f, false)
            .unwrap()
            .map(|e| e.unwrap().offset)
            .collect();
        let want: Vec<_> = (0..next)
            .filter(|i| i % 3 == 1 && i.is_multiple_of(2))
            .collect();
        assert_eq!(got, want);
        let packed = w.pack(&source).unwrap();
        assert!(packed.changed);
    }
    let store = Store::open_read_only(&path).unwrap();
    let r = store.reader().unwrap();
    let info = r.sources().unwrap();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].count, 66);
    let tagged: Vec<_> = r
        .events(
            &source,
            0..=u64::MAX,
            &EventFilter::selectors(vec![Selector::tags(["four"])]),
            false,
        )
        .unwrap()
        .map(|e| e.unwrap().offset)
        .collect();
    assert_eq!(
        tagged,
        (0..66u64)
            .filter(|i| i.is_multiple_of(4))
            .collect::<Vec<_>>()
    );
}

#[test]
fn inspector_views() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.sqlite"), StoreConfig::debug()).unwrap();
    let mut w = store.writer().unwrap();
    let source = SourceId::new("inspected");
    for i in 0..9u64 {
        w.append(&source, (i * 7..i * 7 + 7).map(ev).collect())
            .unwrap();
    }
    w.pack(&source).unwrap();
    let r = store.reader().unwrap();
    let shape = r.tree_shape(&source).unwrap().unwrap();
    assert_eq!(shape.count, 63);
    assert_eq!(shape.nodes[0].first_offset, 0);
    assert_eq!(shape.nodes[0].last_offset, 62);
    // Children of every branch partition its offset range, in order.
    for parent in &shape.nodes {
        let children: Vec<_> = shape
            .nodes
            .iter()
            .filter(|n| n.parent == Some(parent.id))
            .collect();
        if children.is_empty() {
            assert_eq!(parent.level, 0);
            assert!(parent.uncompressed_bytes.unwrap() > 0);
            continue;
        }
        assert_eq!(children[0].first_offset, parent.first_offset);
        assert_eq!(children.last().unwrap().last_offset, parent.last_offset);
        for pair in children.windows(2) {
            assert_eq!(pair[0].last_offset + 1, pair[1].first_offset);
        }
    }
    let root = r.block(&shape.root).unwrap().unwrap();
    let json = serde_json::to_value(&root).unwrap();
    assert_eq!(json["kind"], "dag_cbor");
    assert!(json["value"]["banyan"]["items"].as_array().unwrap().len() > 1);
    let stats = r.stats().unwrap();
    assert_eq!(stats.sources.len(), 1);
    assert_eq!(stats.sources[0].events, 63);
    assert!(stats.sources[0].compression_ratio > 0.0);
    assert!(serde_json::to_string(&shape).is_ok());
}
