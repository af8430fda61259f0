//! Writer tests: inline and background packing, stale tickets, checkpoints.

use super::pack::PackKind;
use super::*;
use crate::store::Store;
use serde_json::value::RawValue;

fn ev(i: u64) -> NewEvent {
    NewEvent {
        semantics: "sem".into(),
        name: format!("n{}", i % 3),
        tags: vec![],
        lamport: i,
        timestamp: i,
        payload: RawValue::from_string(format!("{{\"i\":{i}}}")).unwrap(),
    }
}

fn offsets_and_payloads(r: &Reader, source: &SourceId) -> Vec<(u64, String)> {
    r.events(source, 0..=u64::MAX, &EventFilter::all(), false)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.offset, e.payload.get().to_string())
        })
        .collect()
}

/// Without a background packer, `append` packs inline once the unpacked chain is twice
/// `max_unpacked_depth` deep: the tree stays shallow and every event reads back in order.
#[test]
fn append_packs_inline_at_the_backstop_depth() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.sqlite"), StoreConfig::debug()).unwrap();
    let depth = store.config().tree.max_unpacked_depth as u64;
    let mut w = store.writer().unwrap();
    let r = store.reader().unwrap();
    let source = SourceId::new("inline");
    let mut inline_packs = 0;
    for i in 0..5 * depth {
        inline_packs += w.append(&source, vec![ev(i)]).unwrap().packed as u32;
    }
    assert!(inline_packs >= 2, "{inline_packs} inline packs");
    let want: Vec<(u64, String)> = (0..5 * depth)
        .map(|i| (i, format!("{{\"i\":{i}}}")))
        .collect();
    assert_eq!(offsets_and_payloads(&r, &source), want);
    let shape = r.tree_shape(&source).unwrap().unwrap();
    let top = shape.nodes.iter().map(|n| n.level).max().unwrap();
    assert!(top as u64 <= 2 * depth + 1, "level {top}");
    assert!(r.verify().unwrap().is_sound());
}

/// A pack computed on a reader while appends go on, installed by a later append: the events
/// are all there in order, the packed prefix is full sealed leaves, and GC frees the blocks
/// the pack replaced.
#[test]
fn background_pack_rebases_and_its_replaced_blocks_are_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.sqlite"), StoreConfig::debug()).unwrap();
    let max_leaf = store.config().tree.max_leaf_count as u64;
    let mut w = store.writer().unwrap();
    let r = store.reader().unwrap();
    let source = SourceId::new("bg");
    let mut n = 0u64;
    let mut ticket = None;
    while ticket.is_none() {
        // Four per append: full leaves before the chain is deep enough for a ticket.
        w.append(&source, (n..n + 4).map(ev).collect()).unwrap();
        n += 4;
        ticket = w.pack_ticket(&source);
    }
    let ticket = ticket.unwrap();
    let packed_count = n;
    let prepared = r.prepare_pack(ticket).unwrap();
    // Committed while the pack was computed: these must be appended again.
    for _ in 0..3 {
        w.append(&source, vec![ev(n)]).unwrap();
        n += 1;
    }
    let appended = w
        .append_with_pack(&source, vec![ev(n), ev(n + 1)], prepared)
        .unwrap();
    n += 2;
    assert!(appended.packed);
    assert_eq!((appended.first, appended.last), (n - 2, n - 1));
    assert!(w.pack_ticket(&source).is_none(), "the chain is short again");

    let want: Vec<(u64, String)> = (0..n).map(|i| (i, format!("{{\"i\":{i}}}"))).collect();
    assert_eq!(offsets_and_payloads(&r, &source), want);
    let shape = r.tree_shape(&source).unwrap().unwrap();
    let leaves: Vec<_> = shape.nodes.iter().filter(|n| n.level == 0).collect();
    let full = packed_count / max_leaf;
    assert!(full > 0, "the test needs at least one full leaf");
    for leaf in &leaves[..full as usize] {
        assert_eq!(leaf.count, max_leaf);
        assert!(leaf.sealed, "{leaf:?}");
    }
    // After the full leaves: the pack's last (partial) leaf, the rebased events, the append.
    assert!(leaves.len() as u64 <= full + 3, "{} leaves", leaves.len());

    // Grace is zero in the debug config: what the pack replaced is garbage at once.
    let mut freed = 0;
    loop {
        let stats = w.gc(1000).unwrap();
        freed += stats.blocks_deleted;
        if !stats.more {
            break;
        }
    }
    assert!(
        freed > 0,
        "the unpacked chain the pack replaced must be freed"
    );
    assert!(r.verify().unwrap().is_sound());
    assert_eq!(offsets_and_payloads(&r, &source), want);
}

#[test]
fn install_pack_alone_and_stale_tickets() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.sqlite"), StoreConfig::debug()).unwrap();
    let mut w = store.writer().unwrap();
    let r = store.reader().unwrap();
    let source = SourceId::new("bg");
    let mut n = 0u64;
    let next_ticket = |w: &mut Writer, n: &mut u64| loop {
        w.append(&source, vec![ev(*n)]).unwrap();
        *n += 1;
        if let Some(t) = w.pack_ticket(&source) {
            return t;
        }
    };
    // Installed on its own, with a rebase of two events.
    let prepared = r.prepare_pack(next_ticket(&mut w, &mut n)).unwrap();
    w.append(&source, vec![ev(n), ev(n + 1)]).unwrap();
    n += 2;
    let packed = w.install_pack(prepared).unwrap().expect("installed");
    assert_eq!(r.alias(&source.alias()).unwrap(), packed.root);
    let want: Vec<(u64, String)> = (0..n).map(|i| (i, format!("{{\"i\":{i}}}"))).collect();
    assert_eq!(offsets_and_payloads(&r, &source), want);

    // The tree was replaced (an explicit pack) after the ticket: the ticket is stale.
    let prepared = r.prepare_pack(next_ticket(&mut w, &mut n)).unwrap();
    w.pack(&source).unwrap();
    let root = r.alias(&source.alias()).unwrap();
    assert!(w.install_pack(prepared).unwrap().is_none());
    let appended = w.append(&source, vec![ev(n)]).unwrap();
    n += 1;
    assert!(!appended.packed);
    assert_ne!(Some(appended.root), root);
    let want: Vec<(u64, String)> = (0..n).map(|i| (i, format!("{{\"i\":{i}}}"))).collect();
    assert_eq!(offsets_and_payloads(&r, &source), want);

    // A stale pack handed to an append: a plain append.
    let prepared = r.prepare_pack(next_ticket(&mut w, &mut n)).unwrap();
    w.pack(&source).unwrap();
    let appended = w.append_with_pack(&source, vec![ev(n)], prepared).unwrap();
    n += 1;
    assert!(!appended.packed);
    let want: Vec<(u64, String)> = (0..n).map(|i| (i, format!("{{\"i\":{i}}}"))).collect();
    assert_eq!(offsets_and_payloads(&r, &source), want);
}

/// The engine's protocol over many single-event appends: compactions, then a full pack
/// once they stack up; the tree stays shallow, no append falls back to packing inline, every
/// event reads back, and GC frees what the packs replaced.
#[test]
fn compactions_then_full_packs_keep_the_tree_shallow() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.sqlite"), StoreConfig::debug()).unwrap();
    let depth = store.config().tree.max_unpacked_depth;
    let mut w = store.writer().unwrap();
    let r = store.reader().unwrap();
    let source = SourceId::new("cp");
    let (mut compactions, mut full) = (0, 0);
    let mut pending: Option<PreparedPack> = None;
    let mut deepest = 0;
    for i in 0..600u64 {
        let appended = match pending.take() {
            Some(p) => {
                let a = w.append_with_pack(&source, vec![ev(i)], p).unwrap();
                assert!(a.packed, "a fresh ticket's pack is installed");
                a
            }
            None => {
                let a = w.append(&source, vec![ev(i)]).unwrap();
                assert!(!a.packed, "append {i} packed inline");
                a
            }
        };
        assert_eq!(appended.first, i);
        if let Some(ticket) = w.pack_ticket(&source) {
            match ticket.kind {
                PackKind::Full => full += 1,
                PackKind::Compact { .. } => compactions += 1,
            }
            pending = Some(r.prepare_pack(ticket).unwrap());
        }
        deepest = deepest.max(w.builders[&source].level());
    }
    assert!(
        compactions > 0 && full > 1,
        "{compactions} compactions, {full} full"
    );
    assert!(deepest <= depth as i32 + 2, "depth {deepest}");
    let want: Vec<(u64, String)> = (0..600).map(|i| (i, format!("{{\"i\":{i}}}"))).collect();
    assert_eq!(offsets_and_payloads(&r, &source), want);
    let mut freed = 0;
    loop {
        let stats = w.gc(1000).unwrap();
        freed += stats.blocks_deleted;
        if !stats.more {
            break;
        }
    }
    assert!(freed > 0);
    assert!(r.verify().unwrap().is_sound());
    assert_eq!(offsets_and_payloads(&r, &source), want);
}

/// Commits never checkpoint (`wal_autocheckpoint=0`); the checkpoint thread copies the WAL
/// into the database file.
#[test]
fn the_checkpoint_thread_checkpoints_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sqlite");
    let store = Store::open(&path, StoreConfig::debug()).unwrap();
    let mut w = store.writer().unwrap();
    let auto: i64 = lock(&w.conn)
        .unwrap()
        .pragma_query_value(None, "wal_autocheckpoint", |r| r.get(0))
        .unwrap();
    assert_eq!(auto, 0);
    let source = SourceId::new("ck");
    let mut written = 0u64;
    // ~6 MB of hex payloads, ~3 MB compressed: the checkpointer wakes by time, not size.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for batch in 0..60u64 {
        let events = (0..100)
            .map(|i| {
                let mut hex = String::with_capacity(1000);
                for _ in 0..63 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    hex.push_str(&format!("{x:016x}"));
                }
                let mut e = ev(batch * 100 + i);
                e.payload = RawValue::from_string(format!("\"{hex}\"")).unwrap();
                e
            })
            .collect();
        let appended = w.append(&source, events).unwrap();
        written += appended
            .new_blocks
            .iter()
            .map(|(_, b)| b.len() as u64)
            .sum::<u64>();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let db_now = std::fs::metadata(&path).unwrap().len();
        // Nothing is freed (no GC): every block written ends up in the database file.
        if db_now >= written {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not checkpointed: db file {db_now} bytes, {written} bytes of blocks written"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
