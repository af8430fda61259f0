//! Property tests of every decoder of bytes a peer chooses: signed heads, gossip messages,
//! exchange requests and responses, blob DAG nodes (dag-pb, UnixFS), and the heads file (which a crash or a
//! full disk can leave half written). Each decoder gets a round trip (what we encode decodes
//! to the same value) and junk that must never panic: random bytes, and *mutations* of valid
//! encodings (bytes changed, inserted, cut), which get much further into a decoder than random
//! bytes, whose first byte is almost always a wrong tag.
//!
//! `cargo test -p shoal-engine decoders` runs [`DEFAULT_CASES`] cases per property; the long
//! run (BENCHMARKS.md, "Decoder property tests") sets `PROPTEST_CASES`, e.g.
//! `PROPTEST_CASES=100000 cargo test --release -p shoal-engine decoders`.

use cid::Cid;
use libp2p::identity::Keypair;
use proptest::prelude::*;
use sha2::Digest;

use crate::exchange::wire::{Request, Response, SHA2_256};
use crate::exchange::DigestEntry;
use crate::head::{Head, SignedHead};
use crate::swarm::gossip;

/// Cases per property in the short run (`cargo test`).
const DEFAULT_CASES: u32 = 2048;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    ProptestConfig {
        cases,
        // A failing case is shrunk and reported; its seed goes to proptest-regressions/.
        ..ProptestConfig::default()
    }
}

fn cid_of(codec: u64, data: &[u8]) -> Cid {
    let mh = cid::multihash::Multihash::<64>::wrap(SHA2_256, &sha2::Sha256::digest(data))
        .expect("a 32-byte digest fits in 64");
    Cid::new_v1(codec, mh)
}

fn key() -> Keypair {
    Keypair::ed25519_from_bytes([9u8; 32]).expect("32 bytes are an ed25519 secret")
}

fn signed(offset: u64, lamport: u64, root: &[u8]) -> SignedHead {
    let key = key();
    Head {
        source: key.public().to_peer_id(),
        root: cid_of(0x71, root),
        offset,
        lamport,
        timestamp: offset.wrapping_mul(7),
        pruned: 0,
    }
    .sign(&key)
    .expect("ed25519 signing does not fail")
}

/// A change to a valid encoding: set a byte, insert one, or cut the tail.
#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Insert(usize, u8),
    Cut(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Cut),
    ]
}

fn mutate(mut bytes: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
    for m in ms {
        let n = bytes.len();
        match *m {
            Mutation::Set(i, b) if n > 0 => bytes[i % n] = b,
            Mutation::Insert(i, b) => bytes.insert(i % (n + 1), b),
            Mutation::Cut(i) => bytes.truncate(i % (n + 1)),
            Mutation::Set(..) => {}
        }
    }
    bytes
}

fn blocks() -> impl Strategy<Value = Vec<(Cid, Vec<u8>)>> {
    proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..6)
        .prop_map(|datas| datas.into_iter().map(|d| (cid_of(0x55, &d), d)).collect())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn decoders_head_roundtrip_and_mutations(
        offset in any::<u64>(), lamport in any::<u64>(), root in proptest::collection::vec(any::<u8>(), 0..8),
        ms in proptest::collection::vec(mutation(), 1..4),
    ) {
        let head = signed(offset, lamport, &root);
        let bytes = head.encode();
        prop_assert_eq!(SignedHead::decode(&bytes).map_err(|e| e.to_string()), Ok(head.clone()));
        let junk = mutate(bytes.clone(), &ms);
        if let Ok(h) = SignedHead::decode(&junk) {
            // Decoding may succeed (e.g. a cut that is itself a valid prefix never is, but a
            // set to the same byte is); a changed signed body must then fail verification.
            if h != head {
                prop_assert!(h.verify().is_err());
            }
        }
    }

    #[test]
    fn decoders_gossip_roundtrip_and_mutations(
        offset in any::<u64>(), blocks in blocks(), ms in proptest::collection::vec(mutation(), 1..4),
    ) {
        let head = signed(offset, offset, b"r");
        let bytes = gossip::encode(&head, &blocks);
        let m = gossip::decode(&bytes).map_err(|e| e.to_string());
        prop_assert_eq!(m.map(|m| (m.head, m.blocks)), Ok((head.clone(), blocks.clone())));
        if let Ok(m) = gossip::decode(&mutate(bytes, &ms)) {
            // Whatever passes was verified: the head by its signature, blocks by their hash.
            prop_assert!(m.head.verify().is_ok());
            for (c, d) in &m.blocks {
                prop_assert!(crate::exchange::wire::verify_block(c, d));
            }
        }
    }

    #[test]
    fn decoders_gossip_junk_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = gossip::decode(&bytes);
    }

    #[test]
    fn decoders_requests_roundtrip_and_mutations(
        datas in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..16), 0..40),
        digest in proptest::collection::vec((any::<[u8; 8]>(), any::<u64>(), 0u64..3), 0..40),
        ms in proptest::collection::vec(mutation(), 1..4),
    ) {
        let want = Request::Want(datas.iter().map(|d| cid_of(0x71, d)).collect());
        let digest = Request::Digest(
            digest
                .into_iter()
                .map(|(source_hash, offset, pruned)| DigestEntry { source_hash, offset, pruned })
                .collect(),
        );
        for req in [want, digest] {
            let bytes = req.encode();
            prop_assert_eq!(Request::decode(&bytes).ok(), Some(req));
            let _ = Request::decode(&mutate(bytes, &ms));
        }
    }

    #[test]
    fn decoders_responses_roundtrip_and_mutations(
        blocks in blocks(),
        missing in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..8), 0..10),
        heads in proptest::collection::vec(any::<u64>(), 0..5),
        ms in proptest::collection::vec(mutation(), 1..4),
    ) {
        let have_not = missing.iter().map(|d| cid_of(0x55, d)).collect();
        let heads = Response::Heads(heads.into_iter().map(|o| signed(o, o, b"h")).collect());
        for resp in [Response::Blocks { blocks: blocks.clone(), have_not }, heads] {
            let bytes = resp.encode();
            prop_assert_eq!(Response::decode(&bytes).ok(), Some(resp));
            let _ = Response::decode(&mutate(bytes, &ms));
        }
    }

    #[test]
    fn decoders_wire_junk_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Request::decode(&bytes);
        let _ = Response::decode(&bytes);
        let _ = SignedHead::decode(&bytes);
    }

    #[test]
    fn decoders_unixfs_nodes_roundtrip_and_mutations(
        sizes in proptest::collection::vec(1u64..=1 << 30, 1..200), ms in proptest::collection::vec(mutation(), 1..4),
    ) {
        use shoal_store::blob::FileNode;
        let links: Vec<shoal_store::Cid> = (0..sizes.len())
            .map(|i| shoal_store::cid::cid_of(if i % 2 == 0 { 0x55 } else { 0x70 }, &(i as u64).to_be_bytes()))
            .collect();
        let node = FileNode { size: sizes.iter().sum(), links, sizes };
        let (cid, data) = node.encode();
        prop_assert_eq!(FileNode::decode(&cid, &data).ok(), Some(node));
        let junk = mutate(data, &ms);
        let junk_cid = shoal_store::cid::cid_of(0x70, &junk);
        if let Ok(n) = FileNode::decode(&junk_cid, &junk) {
            // What decodes satisfies what a range read relies on.
            prop_assert_eq!(n.links.len(), n.sizes.len());
            prop_assert_eq!(n.sizes.iter().sum::<u64>(), n.size);
            prop_assert!(n.sizes.iter().all(|s| *s > 0));
        }
    }

    #[test]
    fn decoders_unixfs_junk_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let cid = shoal_store::cid::cid_of(0x70, &bytes);
        let _ = shoal_store::blob::FileNode::decode(&cid, &bytes);
        let _ = shoal_store::dagpb::PbNode::decode(&bytes);
    }

    #[test]
    fn decoders_heads_file_never_panics(
        offsets in proptest::collection::vec(any::<u64>(), 0..6), ms in proptest::collection::vec(mutation(), 0..4),
    ) {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let path = dir.path().join(crate::swarm::HEADS_FILE);
        let mut bytes = Vec::new();
        for o in &offsets {
            let h = signed(*o, *o, b"f").encode();
            bytes.push(1);
            bytes.extend_from_slice(&(h.len() as u16).to_be_bytes());
            bytes.extend_from_slice(&h);
        }
        std::fs::write(&path, mutate(bytes, &ms)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let own = Keypair::generate_ed25519().public().to_peer_id();
        let (book, resume) =
            crate::swarm::heads::HeadBook::load(Some(path), own, &shoal_store::OffsetMap::new());
        // Every head handed to the replicator was verified on load.
        for h in &resume {
            prop_assert!(h.verify().is_ok());
        }
        prop_assert!(book.known_offsets().count() <= offsets.len());
    }
}
