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

/// A compaction ticket carries the events appended since the base (the writer's tail), so the
/// packer reads nothing back; also when installs come late, alone or inside an append, and
/// after an inline pack. Debug builds check every carried event against the tree in
/// `prepare_pack`, so a wrong tail fails the `unwrap` below.
#[test]
fn compaction_tickets_carry_the_appended_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.sqlite"), StoreConfig::debug()).unwrap();
    let mut w = store.writer().unwrap();
    let r = store.reader().unwrap();
    let source = SourceId::new("tail");
    let (mut carried, mut read) = (0, 0);
    let mut pending: Option<(PreparedPack, u64)> = None;
    for i in 0..600u64 {
        // Installed 0–3 appends after its ticket, alternately alone and inside the append.
        let batch: Vec<NewEvent> = (0..1 + i % 2).map(|k| ev(i * 2 + k)).collect();
        match pending.take() {
            Some((p, due)) if due <= i && i % 2 == 0 => {
                w.append_with_pack(&source, batch, p).unwrap();
            }
            Some((p, due)) if due <= i => {
                w.install_pack(p).unwrap();
                w.append(&source, batch).unwrap();
            }
            other => {
                pending = other;
                w.append(&source, batch).unwrap();
            }
        }
        if pending.is_none() {
            if let Some(ticket) = w.pack_ticket(&source) {
                match &ticket.kind {
                    PackKind::Compact {
                        events: Some(_), ..
                    } => carried += 1,
                    PackKind::Compact { events: None, .. } => read += 1,
                    PackKind::Full => {}
                }
                pending = Some((r.prepare_pack(ticket).unwrap(), i + i % 4));
            }
        }
    }
    assert!(carried > 10 && read == 0, "{carried} carried, {read} read");
    // An inline pack (no packer) leaves a tail that the next compaction uses.
    for i in 0..200u64 {
        w.append(&source, vec![ev(2000 + i)]).unwrap();
    }
    let mut after_inline = 0;
    for i in 0..100u64 {
        w.append(&source, vec![ev(3000 + i)]).unwrap();
        if let Some(ticket) = w.pack_ticket(&source) {
            if matches!(
                ticket.kind,
                PackKind::Compact {
                    events: Some(_),
                    ..
                }
            ) {
                after_inline += 1;
            }
            let p = r.prepare_pack(ticket).unwrap();
            w.install_pack(p).unwrap();
        }
    }
    assert!(after_inline > 0);
    let got = offsets_and_payloads(&r, &source);
    assert_eq!(got.len() as u64, w.builders[&source].count());
    for (n, (offset, _)) in got.iter().enumerate() {
        assert_eq!(*offset, n as u64);
    }
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

/// Single-event appends, with the writer parking for restarts between commits as the node's
/// writer does: the WAL stays within its limit. Each append writes a few hundred bytes of
/// blocks but several pages; counted by block bytes, the restart came after ~100 times the
/// limit, and the WAL grew to hundreds of MB in the node (cut back by a long TRUNCATE).
#[test]
fn single_event_appends_keep_the_wal_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sqlite");
    let limit = 1u64 << 20;
    let config = StoreConfig {
        wal_size_limit: limit,
        ..StoreConfig::debug()
    };
    let store = Store::open(&path, config).unwrap();
    let mut w = store.writer().unwrap();
    let wal = dir.path().join("s.sqlite-wal");
    let source = SourceId::new("steady");
    let mut largest = 0;
    let mut blocks = 0u64;
    for i in 0..1_000u64 {
        let appended = w.append(&source, vec![ev(i)]).unwrap();
        blocks += appended
            .new_blocks
            .iter()
            .map(|(_, b)| b.len() as u64)
            .sum::<u64>();
        w.restart_wal_if_due();
        largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
    }
    assert!(
        blocks < limit,
        "the test needs appends whose blocks are below the limit: {blocks}"
    );
    // A restart is due after 5/8 of the limit and the writer parks for it at 7/8 at the latest;
    // frames add their headers.
    assert!(
        largest <= limit + limit / 4,
        "the WAL grew to {largest} bytes (limit {limit})"
    );
}

fn tagged(i: u64, tag: &str) -> NewEvent {
    NewEvent {
        tags: vec![tag.to_string()],
        ..ev(i)
    }
}

/// Retention by count: whole sealed leaves of the oldest events go, the newest `max_events`
/// stay (plus at most one leaf), offsets and count stay; a replica imports the pruned tree
/// (same length) and GC frees the dropped leaves on both.
#[test]
fn prune_by_count_drops_old_leaves_and_a_replica_follows() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("a.sqlite"), StoreConfig::debug()).unwrap();
    let replica = Store::open(&dir.path().join("b.sqlite"), StoreConfig::debug()).unwrap();
    let leaf = store.config().tree.max_leaf_count as u64;
    let mut w = store.writer().unwrap();
    let mut wb = replica.writer().unwrap();
    let r = store.reader().unwrap();
    let rb = replica.reader().unwrap();
    let source = SourceId::new("own");
    for i in 0..100 {
        w.append(&source, vec![ev(i)]).unwrap();
    }
    let copy = |w: &Writer, wb: &mut Writer| {
        let root = w.reader().source(&source).unwrap().unwrap().root;
        let blocks: Vec<(Cid, Vec<u8>)> = w
            .reader()
            .dag_blocks(&root)
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|c| (c, w.reader().get_block(&c).unwrap().unwrap()))
            .collect();
        wb.import_batch(&blocks, &[(source.clone(), root)], 0)
            .unwrap()
            .pop()
            .unwrap()
            .unwrap();
    };
    copy(&w, &mut wb);
    let rule = RetentionRule {
        max_events: Some(25),
        ..RetentionRule::default()
    };
    let pruned = w
        .prune(&source, std::slice::from_ref(&rule), 0)
        .unwrap()
        .unwrap();
    assert_eq!((pruned.last_offset, pruned.generation), (99, 1));
    assert_eq!(r.pruned_generation(&source, 99).unwrap(), 1);
    let left = offsets_and_payloads(&r, &source);
    assert!(
        left.len() >= 25 && left.len() as u64 <= 25 + leaf,
        "{}",
        left.len()
    );
    let first = left[0].0;
    let want: Vec<(u64, String)> = (first..100)
        .map(|i| (i, format!("{{\"i\":{i}}}")))
        .collect();
    assert_eq!(left, want);
    assert_eq!(r.offsets().unwrap().get(&source), Some(99));
    // Nothing more to drop: no new tree.
    assert!(w.prune(&source, &[rule], 0).unwrap().is_none());
    copy(&w, &mut wb);
    assert_eq!(offsets_and_payloads(&rb, &source), want);
    // A node that never held the tree imports the pruned one from scratch.
    let fresh = Store::open(&dir.path().join("c.sqlite"), StoreConfig::debug()).unwrap();
    copy(&w, &mut fresh.writer().unwrap());
    assert_eq!(
        offsets_and_payloads(&fresh.reader().unwrap(), &source),
        want
    );
    assert_eq!(
        fresh.reader().unwrap().offsets().unwrap().get(&source),
        Some(99)
    );
    // The replica extends the pruned tree with new events as usual.
    w.append(&source, vec![ev(100)]).unwrap();
    copy(&w, &mut wb);
    assert_eq!(offsets_and_payloads(&rb, &source).last().unwrap().0, 100);
    for (w, r) in [(&mut w, &r), (&mut wb, &rb)] {
        let freed = w.gc(100_000).unwrap();
        assert!(freed.blocks_deleted > 0, "{freed:?}");
        assert!(r.verify().unwrap().is_sound());
        assert_eq!(offsets_and_payloads(r, &source).len(), want.len() + 1);
    }
}

/// Rules by tag, by payload bytes and by age hold only the events they match; the newest
/// event always stays; an event under no rule is never pruned.
#[test]
fn prune_by_tag_bytes_and_age() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("a.sqlite"), StoreConfig::debug()).unwrap();
    let mut w = store.writer().unwrap();
    let r = store.reader().unwrap();
    let source = SourceId::new("own");
    // 0..50 tagged "tmp", 50..60 untagged, 60..100 tagged "tmp" again.
    for i in 0..100 {
        let e = if (50..60).contains(&i) {
            ev(i)
        } else {
            tagged(i, "tmp")
        };
        w.append(&source, vec![e]).unwrap();
    }
    let by_tag = RetentionRule {
        tags: vec!["tmp".into()],
        max_events: Some(0),
        ..RetentionRule::default()
    };
    w.prune(&source, &[by_tag], 0).unwrap().unwrap();
    let left: Vec<u64> = offsets_and_payloads(&r, &source)
        .iter()
        .map(|e| e.0)
        .collect();
    assert!((50..60).all(|i| left.contains(&i)), "{left:?}");
    assert!(left.contains(&99));
    assert!(left.len() < 40, "{left:?}");

    let source = SourceId::new("bytes");
    for i in 0..100 {
        w.append(&source, vec![ev(i)]).unwrap();
    }
    // Payloads `{"i":NN}` are 8 bytes: 200 bytes keep 25 events.
    let by_bytes = RetentionRule {
        max_bytes: Some(200),
        ..RetentionRule::default()
    };
    w.prune(&source, &[by_bytes], 0).unwrap().unwrap();
    let left = offsets_and_payloads(&r, &source);
    assert!(left.len() >= 25 && left.len() <= 35, "{}", left.len());

    // Timestamps are the offsets (µs): at now = 1_000_060 and max age 1 s, events 0..60 go.
    let source = SourceId::new("age");
    for i in 0..100 {
        w.append(&source, vec![ev(i)]).unwrap();
    }
    let by_age = RetentionRule {
        max_age_us: Some(1_000_000),
        ..RetentionRule::default()
    };
    w.prune(&source, &[by_age], 1_000_060).unwrap().unwrap();
    let left: Vec<u64> = offsets_and_payloads(&r, &source)
        .iter()
        .map(|e| e.0)
        .collect();
    assert!(left.first().is_some_and(|&f| f <= 60 && f > 40), "{left:?}");
    assert_eq!(left.last(), Some(&99));
}
