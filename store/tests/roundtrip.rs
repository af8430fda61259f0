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
