//! Blob format and table tests: tree geometry at the boundary sizes, dedup, delete.

use super::*;
use crate::{Store, StoreConfig};

/// Builds the DAG of `data` cut in `chunk`-byte chunks with `fanout`; returns root, size and
/// all blocks.
fn build_with(data: &[u8], chunk: usize, fanout: usize) -> (Cid, u64, Vec<(Cid, Vec<u8>)>) {
    let mut b = Builder::with_fanout(fanout);
    let mut blocks = Vec::new();
    for c in data.chunks(chunk) {
        let cid = cid::cid_of(RAW, c);
        blocks.push((cid, c.to_vec()));
        blocks.extend(b.push_chunk(cid, c.len() as u64).unwrap());
    }
    let (root, size, last) = b.finish().unwrap();
    blocks.extend(last);
    (root, size, blocks)
}

fn build(data: &[u8], chunk: usize) -> (Cid, u64, Vec<(Cid, Vec<u8>)>) {
    build_with(data, chunk, FANOUT)
}

/// Reads bytes `start..end` back by walking the DAG the way a Range request does (children
/// before the range skipped by their blocksizes); returns the bytes and the nodes read.
fn read(blocks: &[(Cid, Vec<u8>)], root: &Cid, start: u64, end: u64) -> (Vec<u8>, usize) {
    let map: std::collections::HashMap<Cid, &Vec<u8>> =
        blocks.iter().map(|(c, d)| (*c, d)).collect();
    let mut out = Vec::new();
    let mut reads = 0;
    fn walk(
        map: &std::collections::HashMap<Cid, &Vec<u8>>,
        cid: &Cid,
        base: u64,
        (start, end): (u64, u64),
        out: &mut Vec<u8>,
        reads: &mut usize,
    ) {
        let data = map[cid];
        if cid.codec() == RAW {
            let from = start.saturating_sub(base) as usize;
            let to = ((end - base) as usize).min(data.len());
            out.extend_from_slice(&data[from..to]);
            return;
        }
        *reads += 1;
        let node = FileNode::decode(cid, data).unwrap();
        let mut offset = base;
        for (child, size) in node.links.iter().zip(&node.sizes) {
            if offset + size > start && offset < end {
                walk(map, child, offset, (start, end), out, reads);
            }
            offset += size;
        }
    }
    walk(&map, root, 0, (start, end), &mut out, &mut reads);
    (out, reads)
}

/// The height of the DAG under `root` (0: a raw leaf).
fn height(blocks: &[(Cid, Vec<u8>)], root: &Cid) -> usize {
    if root.codec() == RAW {
        return 0;
    }
    let data = &blocks.iter().find(|b| b.0 == *root).unwrap().1;
    let node = FileNode::decode(root, data).unwrap();
    1 + height(blocks, &node.links[0])
}

/// The shape of the balanced layout at its boundaries, with 4-byte chunks and fanout 3
/// (the reference's 1 MiB and 174 are checked against the reference importer itself in
/// `tests/tests/unixfs.rs`).
#[test]
fn boundary_sizes_round_trip_in_the_balanced_shape() {
    let (chunk, fanout) = (4, 3);
    // (bytes, height): 0 and one chunk are a leaf; 2..=3 chunks one node; 4..=9 two levels;
    // 10..=27 three.
    for (n, want_height) in [
        (0usize, 0usize),
        (1, 0),
        (3, 0),
        (4, 0),
        (5, 1),
        (12, 1),
        (13, 2),
        (36, 2),
        (37, 3),
        (4 * 27, 3),
        (4 * 27 + 1, 4),
    ] {
        let data: Vec<u8> = (0..n).map(|i| (i * 7 % 251) as u8).collect();
        let (root, size, blocks) = build_with(&data, chunk, fanout);
        assert_eq!(size, n as u64);
        assert_eq!(height(&blocks, &root), want_height, "n={n}");
        assert_eq!(read(&blocks, &root, 0, n as u64).0, data, "n={n}");
        for (a, b) in [(0, 3), (1, 9), (n.saturating_sub(9), n), (11, 14), (35, 38)] {
            let (a, b) = (a.min(n), b.min(n));
            if a < b {
                assert_eq!(
                    read(&blocks, &root, a as u64, b as u64).0,
                    &data[a..b],
                    "n={n}"
                );
            }
        }
        // Same bytes, same CID.
        assert_eq!(build_with(&data, chunk, fanout).0, root);
    }
    // The empty blob is the empty raw block, as in IPFS.
    let (root, _, _) = build(b"", 4);
    assert_eq!(
        root.to_string(),
        "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    );
}

/// A range read decodes only the nodes above its chunks: one per level.
#[test]
fn a_range_reads_one_node_per_level() {
    let data: Vec<u8> = (0..4 * 81).map(|i| (i % 251) as u8).collect();
    let (root, _, blocks) = build_with(&data, 4, 3);
    let (got, reads) = read(&blocks, &root, 200, 203);
    assert_eq!(got, &data[200..203]);
    assert_eq!(
        reads, 4,
        "root and one node on each of the three levels below"
    );
}

/// Every node a peer could send is checked: blocksizes that do not add up, do not match the
/// links, an empty child, inline data, another UnixFS type, another codec.
#[test]
fn lying_nodes_are_corrupt() {
    use crate::dagpb::{PbLink, PbNode};
    let chunk = cid::cid_of(RAW, b"x");
    let node = |unixfs: Vec<u8>, links: usize| {
        let data = PbNode {
            links: (0..links)
                .map(|_| PbLink {
                    hash: chunk,
                    name: Some(String::new()),
                    tsize: Some(1),
                })
                .collect(),
            data: Some(unixfs),
        }
        .encode();
        (cid::cid_of(DAG_PB, &data), data)
    };
    let bad = [
        (vec![0x08, 2, 0x18, 3, 0x20, 1, 0x20, 1], 2), // filesize 3, blocksizes 1 + 1
        (vec![0x08, 2, 0x18, 1, 0x20, 1], 2),          // one blocksize for two links
        (vec![0x08, 2, 0x18, 1, 0x20, 1, 0x20, 0], 2), // an empty child
        (vec![0x08, 2, 0x12, 1, b'a', 0x18, 2, 0x20, 1], 1), // inline data
        (vec![0x08, 1, 0x18, 1, 0x20, 1], 1),          // a directory
        (vec![0x08, 2, 0x18, 0], 0),                   // no links
        (vec![0x08, 2, 0x18, 1, 0x20, 1, 0x48, 1], 1), // unknown field 9
    ];
    for (unixfs, links) in bad {
        let (cid, data) = node(unixfs.clone(), links);
        assert!(FileNode::decode(&cid, &data).is_err(), "{unixfs:?}");
    }
    let (_, good) = node(vec![0x08, 2, 0x18, 1, 0x20, 1], 1);
    let as_cbor = cid::cid_of(DAG_CBOR, &good);
    assert!(FileNode::decode(&as_cbor, &good).is_err());
    for junk in [&b""[..], b"\x12", b"\x0a\x05ab"] {
        let cid = cid::cid_of(DAG_PB, junk);
        assert!(FileNode::decode(&cid, junk).is_err());
    }
}

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.sqlite"), StoreConfig::debug()).unwrap();
    (dir, store)
}

fn upload(w: &mut Writer, data: &[u8], chunk: usize, id: &str) -> Cid {
    let (root, size, blocks) = build(data, chunk);
    let refs: Vec<(Cid, &[u8])> = blocks.iter().map(|(c, d)| (*c, d.as_slice())).collect();
    put_hashed(w, &refs, Some((id, None))).unwrap();
    let meta = BlobMeta {
        cid: root,
        size,
        name: Some(id.into()),
        mime: None,
    };
    commit_upload(w, id, &[], &meta).unwrap();
    root
}

/// A blob fetched from a peer and held as a replica: the pin needs every block, a release
/// frees it, and a release never takes a blob that was put here.
#[test]
fn replica_pins_need_every_block_and_a_release_keeps_own_puts() {
    let (_dir, store) = store();
    let mut w = store.writer().unwrap();
    init(&mut w).unwrap();
    // As a fetch stores it: the root first (cached), then the chunks.
    let (root, size, blocks) = build(b"AAAABBBBCC", 4);
    let (root_data, rest): (Vec<_>, Vec<_>) = blocks.iter().partition(|(c, _)| *c == root);
    cache_root(&mut w, &root, &root_data[0].1, size).unwrap();
    let err = pin_replica(&mut w, &root).unwrap_err();
    assert!(err.to_string().contains("lacks 3 block(s)"), "{err}");
    let refs: Vec<(Cid, &[u8])> = rest.iter().map(|(c, d)| (*c, d.as_slice())).collect();
    put_hashed(&mut w, &refs, None).unwrap();
    pin_replica(&mut w, &root).unwrap();
    let r = store.reader().unwrap();
    assert!(list(&r).unwrap().iter().all(|e| e.pinned && e.complete));
    let freed = release_replica(&mut w, &root).unwrap().unwrap();
    assert_eq!(freed.blocks, 4, "three chunks and the root");
    assert!(list(&r).unwrap().is_empty());
    assert!(
        pin_replica(&mut w, &root).is_err(),
        "released: no longer known"
    );

    // Put here and also held as a replica: the release drops only the replica pin.
    let own = upload(&mut w, b"DDDDEEEE", 4, "own");
    pin_replica(&mut w, &own).unwrap();
    let freed = release_replica(&mut w, &own).unwrap().unwrap();
    assert_eq!(freed, Freed::default());
    assert!(complete(&r, &own).unwrap());
    assert_eq!(list(&r).unwrap().len(), 1);
}

#[test]
fn put_list_dedup_and_delete_frees_only_unshared_blocks() {
    let (_dir, store) = store();
    let mut w = store.writer().unwrap();
    init(&mut w).unwrap();
    let x = upload(&mut w, b"AAAABBBB", 4, "x");
    let y = upload(&mut w, b"BBBBCCCC", 4, "y");
    let r = store.reader().unwrap();
    let listed = list(&r).unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|e| e.complete && e.pinned));
    assert_eq!(meta(&r, &x).unwrap().unwrap().size, 8);
    // B is stored once.
    let count = |r: &Reader| -> i64 {
        r.conn
            .lock()
            .unwrap()
            .query_row("SELECT count(*) FROM blocks", [], |x| x.get(0))
            .unwrap()
    };
    let before = count(&r);
    let freed = delete(&mut w, &x).unwrap().unwrap();
    assert_eq!(freed.blocks, 2, "chunk A and x's root node; B is shared");
    assert_eq!(count(&r), before - 2);
    assert!(!r.has_block(&cid::cid_of(RAW, b"AAAA")).unwrap());
    assert!(r.has_block(&cid::cid_of(RAW, b"BBBB")).unwrap());
    assert!(complete(&r, &y).unwrap());
    assert_eq!(delete(&mut w, &x).unwrap(), None);
    assert_eq!(list(&r).unwrap().len(), 1);
}

#[test]
fn an_upload_in_progress_survives_gc() {
    let (_dir, store) = store();
    let mut w = store.writer().unwrap();
    init(&mut w).unwrap();
    let a = cid::cid_of(RAW, b"aaaa");
    let b = cid::cid_of(RAW, b"bbbb");
    let m = put_hashed(&mut w, &[(a, b"aaaa")], Some(("u1", None))).unwrap();
    put_hashed(&mut w, &[(b, b"bbbb")], Some(("u1", m))).unwrap();
    while w.gc(1000).unwrap().more {}
    let r = store.reader().unwrap();
    assert!(r.has_block(&a).unwrap() && r.has_block(&b).unwrap());
    abort_upload(&mut w, "u1").unwrap();
    while w.gc(1000).unwrap().more {}
    assert!(!r.has_block(&a).unwrap());
}

/// Back-to-back blob commits never leave the WAL fully copied, so it only starts over when
/// the checkpoint thread restarts it between two batches (it grew to 1 GB in a 1 GiB upload).
#[test]
fn back_to_back_blob_batches_keep_the_wal_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sqlite");
    let limit = 4u64 << 20;
    let config = StoreConfig {
        wal_size_limit: limit,
        ..StoreConfig::debug()
    };
    let store = Store::open(&path, config).unwrap();
    let mut w = store.writer().unwrap();
    init(&mut w).unwrap();
    let wal = dir.path().join("s.sqlite-wal");
    let batch = 1usize << 20;
    let mut seed = 1u64;
    let mut largest = 0;
    for _ in 0..48 {
        let chunks: Vec<Vec<u8>> = (0..4)
            .map(|_| {
                (0..batch / 4)
                    .map(|_| {
                        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                        (seed >> 56) as u8
                    })
                    .collect()
            })
            .collect();
        let blocks: Vec<(Cid, &[u8])> = chunks
            .iter()
            .map(|c| (cid::cid_of(RAW, c), c.as_slice()))
            .collect();
        put_hashed(&mut w, &blocks, None).unwrap();
        largest = largest.max(std::fs::metadata(&wal).unwrap().len());
    }
    // 48 MiB written; a restart is due after 3/4 of the limit, so the WAL never holds more
    // than that plus one batch (and SQLite's frame headers and b-tree pages).
    assert!(
        largest <= limit + 2 * batch as u64,
        "the WAL grew to {largest} bytes (limit {limit})"
    );
}

/// Stores `data` as a blob of the old format (dag-cbor link blocks over `chunk`-byte chunks,
/// as shoal wrote it before issue 15) and pins it as put here; returns its root and blocks.
fn put_old_format(w: &mut Writer, data: &[u8], chunk: usize, name: &str) -> (Cid, Vec<Block>) {
    use legacy::{LinkNode, FANOUT as OLD_FANOUT};
    let mut blocks: Vec<Block> = data
        .chunks(chunk)
        .map(|c| (cid::cid_of(RAW, c), c.to_vec()))
        .collect();
    let mut level: Vec<(Cid, u64)> = blocks.iter().map(|(c, d)| (*c, d.len() as u64)).collect();
    let mut height = 1;
    let root = loop {
        let mut up = Vec::new();
        for group in level.chunks(OLD_FANOUT) {
            let node = LinkNode {
                chunk: chunk as u64,
                height,
                size: group.iter().map(|g| g.1).sum(),
                links: group.iter().map(|g| g.0).collect(),
            };
            let (cid, bytes) = node.encode().unwrap();
            blocks.push((cid, bytes));
            up.push((cid, node.size));
        }
        if level.is_empty() {
            // The old empty blob: an empty height-1 node.
            let (cid, bytes) = LinkNode {
                chunk: chunk as u64,
                height: 1,
                size: 0,
                links: vec![],
            }
            .encode()
            .unwrap();
            blocks.push((cid, bytes));
            break cid;
        }
        if up.len() == 1 {
            break up[0].0;
        }
        level = up;
        height += 1;
    };
    let refs: Vec<(Cid, &[u8])> = blocks.iter().map(|(c, d)| (*c, d.as_slice())).collect();
    put_hashed(w, &refs, Some((name, None))).unwrap();
    let meta = BlobMeta {
        cid: root,
        size: data.len() as u64,
        name: Some(name.into()),
        mime: Some("application/octet-stream".into()),
    };
    commit_upload(w, name, &[], &meta).unwrap();
    (root, blocks)
}

/// Issue 15 item 2: a store written in the old blob format (dag-cbor link blocks) is converted
/// at start-up: each blob gets the UnixFS DAG the reference importer builds for its bytes, its
/// metadata and pins move to the new CID, the old CID maps to the new one, the old link blocks
/// go and the chunks stay; a blob fetched only in part is forgotten.
#[test]
fn blobs_of_the_old_format_are_converted_at_init() {
    let (_dir, store) = store();
    let mut w = store.writer().unwrap();
    // The tables as the old code made them (init's CREATE is the same for blob_meta).
    {
        let conn = writer_conn(&w);
        lock(&conn).unwrap().execute_batch(CREATE).unwrap();
    }
    let small: Vec<u8> = b"AAAABBBBCC".to_vec();
    // 1,026 chunks: a height-2 old tree (1,024 links per link block).
    let big: Vec<u8> = (0..1025 * 4 + 2).map(|i| (i * 13 % 251) as u8).collect();
    let one: Vec<u8> = b"ABC".to_vec();
    let (old_small, _) = put_old_format(&mut w, &small, 4, "small");
    let (old_big, big_blocks) = put_old_format(&mut w, &big, 4, "big");
    let (old_one, _) = put_old_format(&mut w, &one, 4, "one");
    let (old_empty, _) = put_old_format(&mut w, b"", 4, "empty");
    pin_replica(&mut w, &old_big).unwrap();
    // A fetch cut short: the root cached, a link block below it missing.
    let partial: Vec<u8> = (0..1025 * 4).map(|i| (i * 3 % 7) as u8).collect();
    // (Its blocks are made in a scratch store; only the root comes here.)
    let scratch_dir = tempfile::tempdir().unwrap();
    let scratch = Store::open(&scratch_dir.path().join("x.sqlite"), StoreConfig::debug()).unwrap();
    let mut sw = scratch.writer().unwrap();
    init(&mut sw).unwrap();
    let (old_partial, partial_blocks) = put_old_format(&mut sw, &partial, 4, "p");
    let root_data = &partial_blocks
        .iter()
        .find(|b| b.0 == old_partial)
        .unwrap()
        .1;
    cache_root(&mut w, &old_partial, root_data, partial.len() as u64).unwrap();

    init(&mut w).unwrap();

    let r = store.reader().unwrap();
    let converted: std::collections::HashMap<Cid, Cid> = aliases(&r).unwrap().into_iter().collect();
    assert_eq!(converted.len(), 4, "the partial blob is not converted");
    for (old, data, name) in [
        (old_small, &small, "small"),
        (old_big, &big, "big"),
        (old_one, &one, "one"),
        (old_empty, &Vec::new(), "empty"),
    ] {
        let new = converted[&old];
        assert_eq!(new, build(data, 4).0, "{name}: the UnixFS CID of its bytes");
        assert!(!r.has_block(&old).unwrap(), "{name}: old root deleted");
        assert_eq!(meta(&r, &old).unwrap(), None);
        let m = meta(&r, &new).unwrap().unwrap();
        assert_eq!((m.size, m.name.as_deref()), (data.len() as u64, Some(name)));
        assert_eq!(m.mime.as_deref(), Some("application/octet-stream"));
        assert!(r.alias(&format!("blob/{new}")).unwrap().is_some());
        assert!(r.alias(&format!("blob/{old}")).unwrap().is_none());
        assert!(complete(&r, &new).unwrap(), "{name}");
        // The bytes read back through the new DAG.
        let mut blocks = Vec::new();
        for c in reachable_cids(&r, &new) {
            blocks.push((c, r.get_block(&c).unwrap().unwrap()));
        }
        assert_eq!(&read(&blocks, &new, 0, data.len() as u64).0, data, "{name}");
    }
    let big_new = converted[&old_big];
    assert!(r
        .alias(&format!("blob-replica/{big_new}"))
        .unwrap()
        .is_some());
    // Every old link block is gone; no chunk is.
    for (c, _) in &big_blocks {
        assert_eq!(r.has_block(c).unwrap(), c.codec() == RAW, "{c}");
    }
    assert!(meta(&r, &old_partial).unwrap().is_none());
    assert!(r
        .alias(&format!("blob-cache/{old_partial}"))
        .unwrap()
        .is_none());
    assert_eq!(list(&r).unwrap().len(), 4);
    // Idempotent: a second start converts nothing more.
    init(&mut w).unwrap();
    assert_eq!(aliases(&r).unwrap().len(), 4);
    assert_eq!(list(&r).unwrap().len(), 4);
}

fn reachable_cids(r: &Reader, root: &Cid) -> Vec<Cid> {
    let conn = r.conn.lock().unwrap();
    blocks::reachable(&conn, root)
        .unwrap()
        .into_iter()
        .map(|b| b.cid)
        .collect()
}
