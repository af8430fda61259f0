//! GC keeps everything reachable and frees the rest; `verify` finds missing and corrupt blocks
//! and names the tree they belong to.

use serde_json::value::RawValue;
use shoal_store::{EventFilter, NewEvent, ProblemKind, SourceId, Store, StoreConfig};

fn ev(i: u64) -> NewEvent {
    NewEvent {
        semantics: "machine".into(),
        name: format!("m{}", i % 5),
        tags: vec![],
        lamport: i,
        timestamp: i,
        payload: RawValue::from_string(format!("{{\"reading\":{i}}}")).unwrap(),
    }
}

fn fill(store: &Store, source: &SourceId, batches: u64) -> u64 {
    let mut w = store.writer().unwrap();
    let mut n = 0;
    for b in 0..batches {
        let events: Vec<_> = (n..n + 1 + b % 3).map(ev).collect();
        n += events.len() as u64;
        w.append(source, events).unwrap();
    }
    n
}

fn count_blocks(path: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("SELECT count(*) FROM blocks", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn gc_frees_replaced_blocks_and_keeps_reachable_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sqlite");
    let store = Store::open(&path, StoreConfig::debug()).unwrap();
    let a = SourceId::new("a");
    let b = SourceId::new("b");
    // Store::writer hands out one writer; take it once and use it for everything.
    let mut w = store.writer().unwrap();
    let mut n = 0;
    for batch in 0..40u64 {
        let events: Vec<_> = (n..n + 1 + batch % 3).map(ev).collect();
        n += events.len() as u64;
        w.append(&a, events.clone()).unwrap();
        w.append(&b, events).unwrap();
    }
    // An orphan block nobody pins: garbage from the start.
    let orphan = b"orphan".to_vec();
    let orphan_cid = shoal_store::cid::cid_of(shoal_store::cid::RAW, &orphan);
    w.put_blocks(&[(orphan_cid, orphan)]).unwrap();

    let before = count_blocks(&path);
    w.pack(&a).unwrap();
    w.pack(&b).unwrap();
    let mut freed = 0;
    loop {
        let stats = w.gc(7).unwrap();
        freed += stats.blocks_deleted;
        assert!(stats.blocks_deleted <= 7);
        if !stats.more {
            break;
        }
    }
    let after = count_blocks(&path);
    assert!(freed > 0, "packing replaced blocks, GC must free them");
    assert!(after < before);
    let r = store.reader().unwrap();
    assert!(!r.has_block(&orphan_cid).unwrap());
    let report = r.verify().unwrap();
    assert!(report.is_sound(), "{:?}", report.problems);
    // Everything left is reachable: a second GC frees nothing.
    assert_eq!(w.gc(1000).unwrap().blocks_deleted, 0);
    assert_eq!(report.blocks_checked as i64, after);
    for s in [&a, &b] {
        let got: Vec<u64> = r
            .events(s, 0..=u64::MAX, &EventFilter::all(), false)
            .unwrap()
            .map(|e| e.unwrap().offset)
            .collect();
        assert_eq!(got, (0..n).collect::<Vec<_>>());
    }
}

#[test]
fn gc_grace_protects_recent_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.sqlite"), StoreConfig::default()).unwrap();
    let mut w = store.writer().unwrap();
    let data = b"just fetched, import pending".to_vec();
    let cid = shoal_store::cid::cid_of(shoal_store::cid::RAW, &data);
    w.put_blocks(&[(cid, data)]).unwrap();
    assert_eq!(w.gc(100).unwrap().blocks_deleted, 0);
    assert!(store.reader().unwrap().has_block(&cid).unwrap());
}

#[test]
fn verify_names_missing_and_corrupt_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sqlite");
    let store = Store::open(&path, StoreConfig::debug()).unwrap();
    let source = SourceId::new("victim");
    fill(&store, &source, 30);
    let r = store.reader().unwrap();
    assert!(r.verify().unwrap().is_sound());
    assert!(r.incomplete_aliases().unwrap().is_empty());

    // Damage two blocks of the tree behind the store's back: the newest two, written by the
    // last append (its root and its leaf), so both are certainly part of the current tree.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let ids: Vec<i64> = conn
        .prepare("SELECT id FROM blocks ORDER BY id DESC LIMIT 2")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    conn.execute(
        "UPDATE blocks SET data = X'8300800a' WHERE id = ?1",
        [ids[0]],
    )
    .unwrap();
    conn.execute("DELETE FROM blocks WHERE id = ?1", [ids[1]])
        .unwrap();
    drop(conn);

    let incomplete = store.reader().unwrap().incomplete_aliases().unwrap();
    assert_eq!(incomplete.len(), 1);
    assert_eq!(incomplete[0].0, "source/victim");
    let report = store.reader().unwrap().verify().unwrap();
    assert!(!report.is_sound());
    assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
    assert!(report
        .problems
        .iter()
        .any(|p| p.kind == ProblemKind::HashMismatch));
    assert!(report
        .problems
        .iter()
        .any(|p| p.kind == ProblemKind::Missing));
    assert!(report.problems.iter().all(|p| p.alias == "source/victim"));
}
