//! Blob format and table tests: tree geometry at the boundary sizes, dedup, delete.

use super::*;
use crate::{Store, StoreConfig};

/// Builds the tree of `data` cut in `chunk`-byte chunks; returns root, size and all blocks.
fn build(data: &[u8], chunk: usize) -> (Cid, u64, Vec<(Cid, Vec<u8>)>) {
    let mut b = TreeBuilder::with_chunk(chunk as u64);
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

/// Reads bytes `start..end` back by walking the tree the way a Range request does.
fn read(blocks: &[(Cid, Vec<u8>)], root: &Cid, start: u64, end: u64) -> Vec<u8> {
    let map: std::collections::HashMap<Cid, &Vec<u8>> =
        blocks.iter().map(|(c, d)| (*c, d)).collect();
    let get = |c: &Cid| map[c].clone();
    let mut out = Vec::new();
    let mut pos = start;
    while pos < end {
        let mut node = LinkNode::decode(root, &get(root)).unwrap();
        let mut off = pos;
        loop {
            let span = node.child_span();
            let i = (off / span) as usize;
            let child = node.links[i];
            off %= span;
            if node.height == 1 {
                let data = get(&child);
                let take = ((end - pos) as usize).min(data.len() - off as usize);
                out.extend_from_slice(&data[off as usize..off as usize + take]);
                pos += take as u64;
                break;
            }
            node = LinkNode::decode(&child, &get(&child)).unwrap();
        }
    }
    out
}

#[test]
fn boundary_sizes_round_trip() {
    let chunk = 4;
    // 0, 1, chunk-1, chunk, chunk+1, a full height-1 node, one more (height 2), and two levels.
    for n in [
        0,
        1,
        3,
        4,
        5,
        4 * FANOUT,
        4 * FANOUT + 1,
        4 * FANOUT * 2 + 3,
    ] {
        let data: Vec<u8> = (0..n).map(|i| (i * 7 % 251) as u8).collect();
        let (root, size, blocks) = build(&data, chunk);
        assert_eq!(size, n as u64);
        let top = LinkNode::decode(&root, &blocks.iter().find(|b| b.0 == root).unwrap().1).unwrap();
        assert_eq!(top.size, n as u64);
        let want_height = if n <= 4 * FANOUT { 1 } else { 2 };
        assert_eq!(top.height, want_height, "n={n}");
        if n <= 8 {
            assert_eq!(read(&blocks, &root, 0, n as u64), data, "n={n}");
        }
        // Ranges around the ends and the first subtree boundary.
        let edges = [
            (0, 3),
            (1, 9),
            (n.saturating_sub(9), n),
            (4 * FANOUT - 2, 4 * FANOUT + 1),
        ];
        for (a, b) in edges {
            let (a, b) = (a.min(n), b.min(n));
            if a < b {
                assert_eq!(
                    read(&blocks, &root, a as u64, b as u64),
                    &data[a..b],
                    "n={n}"
                );
            }
        }
        // Same bytes, same CID.
        assert_eq!(build(&data, chunk).0, root);
    }
}

#[test]
fn lying_link_blocks_are_corrupt() {
    let chunk = cid::cid_of(RAW, b"x");
    let bad = [
        LinkNode {
            chunk: 4,
            height: 1,
            size: 9,
            links: vec![chunk, chunk],
        }, // too big
        LinkNode {
            chunk: 4,
            height: 1,
            size: 4,
            links: vec![chunk, chunk],
        }, // last empty
        LinkNode {
            chunk: 0,
            height: 1,
            size: 0,
            links: vec![],
        },
        LinkNode {
            chunk: 4,
            height: 2,
            size: 1,
            links: vec![chunk],
        }, // raw under height 2
        LinkNode {
            chunk: 4,
            height: 99,
            size: 1,
            links: vec![chunk],
        },
    ];
    for node in bad {
        let (cid, data) = node.encode().unwrap();
        assert!(LinkNode::decode(&cid, &data).is_err(), "{node:?}");
    }
    for junk in [&b""[..], b"\xa0", b"\x80", b"\xa1\x61c\x01"] {
        let cid = cid::cid_of(DAG_CBOR, junk);
        assert!(LinkNode::decode(&cid, junk).is_err());
    }
}

/// Issue 12 item 2: a peer serves the block under a wanted blob CID. libipld allocates what a
/// header declares and recurses per nesting level, so before the fix a list claiming 2^32
/// items aborted the process (allocation failure) and 40,000 nested lists overflowed the
/// stack. Both must be `Corrupt`, as must a block larger than any link block.
#[test]
fn a_peer_link_block_declaring_huge_lengths_or_deep_nesting_is_corrupt_not_a_crash() {
    // {"l": [<2^32 items>...]} with a few bytes of items.
    let mut huge = vec![0xa1, 0x61, b'l', 0x9b, 0, 0, 0, 1, 0, 0, 0, 0];
    huge.extend_from_slice(&[0; 16]);
    // 40,000 nested one-item lists: under MAX_LINK_BLOCK, so only the nesting bound stops it.
    let mut deep = vec![0x81; 40_000];
    deep.push(0x00);
    assert!(deep.len() < MAX_LINK_BLOCK);
    let mut big_map = vec![0xbb, 0, 0, 0, 0, 0, 0, 0x10, 0];
    big_map.extend_from_slice(&[0x60; 32]);
    let oversized = vec![0x40; MAX_LINK_BLOCK + 1];
    for (what, junk) in [
        ("huge list", huge),
        ("deep nesting", deep),
        ("huge map", big_map),
        ("oversized", oversized),
    ] {
        let cid = cid::cid_of(DAG_CBOR, &junk);
        match LinkNode::decode(&cid, &junk) {
            Err(Error::Corrupt { .. }) => {}
            other => panic!("{what}: {other:?}"),
        }
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
    assert_eq!(freed.blocks, 2, "chunk A and x's link block; B is shared");
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
