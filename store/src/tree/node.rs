//! Opening banyan node blocks safely: outer dag-cbor envelope, decryption, decompression
//! (banyan caps it at 16 MiB), and a well-formedness check of every inner dag-cbor item
//! before any libipld decoder sees it. Used to validate trees received from peers before
//! banyan walks them, and by the inspector to show a block's content.
//!
//! Invariant: [`open`] and [`validate`] return errors, never panic, on any input.

use super::EventTree;
use crate::blocks::{check_dag_cbor, split_dag_cbor_seq};
use banyan::index::Index;
use banyan::{chacha20::XNonce, store::ZstdDagCborSeq, TreeTypes};
use libipld::{
    cbor::DagCborCodec,
    codec::{Codec, Decode},
    Ipld,
};
use std::io::{Read, Seek};

/// A banyan node, opened.
pub(crate) struct Node {
    /// Offset of the node's bytes in the tree's cipher stream.
    pub cipher_offset: u64,
    /// Links listed in the clear.
    pub links: Vec<libipld::Cid>,
    /// Uncompressed length of the content.
    pub uncompressed: usize,
    /// Compressed length of the content.
    pub compressed: usize,
    /// The content: one dag-cbor item per child (branch) or per value (leaf).
    pub items: Vec<Vec<u8>>,
}

/// What a node holds.
pub(crate) enum Content {
    Branch(Vec<Index<EventTree>>),
    Leaf(Vec<String>),
}

/// Reads the whole rest of the decompressed buffer: lets us check the bytes before decoding.
struct Whole(Vec<u8>);

impl Decode<DagCborCodec> for Whole {
    fn decode<R: Read + Seek>(_: DagCborCodec, r: &mut R) -> anyhow::Result<Self> {
        let mut v = Vec::new();
        r.read_to_end(&mut v)?;
        Ok(Whole(v))
    }
}

/// Opens a banyan node block (any shoal tree node).
pub(crate) fn open(data: &[u8]) -> Result<Node, String> {
    check_dag_cbor(data)?;
    let outer: Ipld = DagCborCodec.decode(data).map_err(|e| e.to_string())?;
    let (cipher_offset, links) = match &outer {
        Ipld::List(l) if l.len() == 3 => match (&l[0], &l[1], &l[2]) {
            (Ipld::Integer(o), Ipld::List(links), Ipld::Bytes(_)) => {
                let o = u64::try_from(*o).map_err(|_| "negative cipher offset".to_string())?;
                let links = links
                    .iter()
                    .map(|l| match l {
                        Ipld::Link(c) => Ok(*c),
                        _ => Err("a link list holds a non-link".to_string()),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                (o, links)
            }
            _ => return Err("not a banyan node".into()),
        },
        _ => return Err("not a banyan node".into()),
    };
    let key = super::secrets().index_key().to_owned();
    let nonce = XNonce::from_slice(EventTree::NONCE);
    let (seq, _) = ZstdDagCborSeq::decrypt(data, &key, nonce).map_err(|e| e.to_string())?;
    let compressed = seq.compressed().len();
    let whole = seq
        .items::<Whole>()
        .map_err(|e| format!("decompress: {e}"))?
        .into_iter()
        .next()
        .map(|w| w.0)
        .unwrap_or_default();
    let items = split_dag_cbor_seq(&whole)?
        .into_iter()
        .map(|r| whole[r].to_vec())
        .collect();
    Ok(Node {
        cipher_offset,
        links,
        uncompressed: whole.len(),
        compressed,
        items,
    })
}

/// Decodes a node's content as a branch (children indices) or a leaf (payload strings).
pub(crate) fn content(node: &Node) -> Result<Content, String> {
    if node.items.is_empty() {
        return Err("empty node".into());
    }
    let as_index: Result<Vec<Index<EventTree>>, _> = node
        .items
        .iter()
        .map(|i| DagCborCodec.decode::<Index<EventTree>>(i))
        .collect();
    if let Ok(children) = as_index {
        return Ok(Content::Branch(children));
    }
    node.items
        .iter()
        .map(|i| DagCborCodec.decode::<String>(i).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()
        .map(Content::Leaf)
}

/// Checks a block is a decodable node of an event tree.
pub(crate) fn validate(data: &[u8]) -> Result<(), String> {
    let node = open(data)?;
    match content(&node)? {
        Content::Branch(children) => {
            // banyan assumes non-empty subtrees; a peer must not be able to trip that.
            if children.iter().any(|c| c.count() == 0) {
                return Err("branch with an empty child".into());
            }
            Ok(())
        }
        Content::Leaf(values) => {
            for v in values {
                serde_json::from_str::<&serde_json::value::RawValue>(&v)
                    .map_err(|e| format!("payload is not JSON: {e}"))?;
            }
            Ok(())
        }
    }
}

/// The node's content as JSON for the inspector.
pub(crate) fn items_json(node: &Node) -> Vec<serde_json::Value> {
    node.items
        .iter()
        .map(|i| match DagCborCodec.decode::<Ipld>(i) {
            Ok(ipld) => crate::inspect::ipld_to_json(&ipld),
            Err(e) => serde_json::json!({ "undecodable": e.to_string() }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        cid::{cid_of, DAG_CBOR},
        event::{NewEvent, SourceId},
        store::{Store, StoreConfig},
    };

    fn some_blocks() -> Vec<Vec<u8>> {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.sqlite"), StoreConfig::debug()).unwrap();
        let mut w = store.writer().unwrap();
        let events = (0..25u64)
            .map(|i| NewEvent {
                semantics: "s".into(),
                name: "n".into(),
                tags: vec!["t".into()],
                lamport: i,
                timestamp: i,
                payload: serde_json::value::RawValue::from_string(format!("[{i}]")).unwrap(),
            })
            .collect();
        let a = w.append(&SourceId::new("x"), events).unwrap();
        a.new_blocks.into_iter().map(|(_, d)| d).collect()
    }

    #[test]
    fn our_blocks_open_and_validate() {
        for b in some_blocks() {
            let node = open(&b).unwrap();
            assert!(!node.items.is_empty());
            validate(&b).unwrap();
            assert_eq!(items_json(&node).len(), node.items.len());
        }
    }

    #[test]
    fn junk_never_panics() {
        for b in some_blocks() {
            // Every 5th byte keeps this fast in debug builds while still hitting headers,
            // links, the cipher offset and the compressed payload.
            for i in (0..b.len()).step_by(5) {
                for x in [0u8, 0x18, 0x5b, 0x9b, 0xff] {
                    let mut junk = b.clone();
                    junk[i] = x;
                    let _ = validate(&junk);
                }
                let _ = validate(&b[..i]);
            }
        }
        // Hostile headers: huge lengths, deep nesting, wrong shapes.
        for junk in [
            vec![
                0x83, 0x00, 0x80, 0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            ],
            vec![0x81; 5000],
            vec![
                0x83, 0x1b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x80, 0x40,
            ],
        ] {
            assert!(validate(&junk).is_err());
            let _ = cid_of(DAG_CBOR, &junk);
        }
    }

    /// Blocks of one real tree, made once for all cases.
    fn blocks_once() -> &'static [Vec<u8>] {
        static BLOCKS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
        BLOCKS.get_or_init(some_blocks)
    }

    fn cases() -> u32 {
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1024)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(cases()))]

        /// Tree blocks come from peers: random changes, insertions and cuts of real blocks
        /// (which reach much further into the decoder than random bytes) never panic, and
        /// a changed block that still validates is a well-formed node. The long run is
        /// `PROPTEST_CASES=100000 cargo test --release -p shoal-store decoders` (BENCHMARKS.md).
        #[test]
        fn decoders_tree_block_mutations(
            which in 0usize..64,
            edits in proptest::collection::vec((0u8..3, proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 1..4),
        ) {
            let blocks = blocks_once();
            let mut b = blocks[which % blocks.len()].clone();
            for (kind, i, x) in edits {
                let n = b.len();
                match kind {
                    0 if n > 0 => b[i % n] = x,
                    1 => b.insert(i % (n + 1), x),
                    _ => b.truncate(i % (n + 1)),
                }
            }
            if validate(&b).is_ok() {
                proptest::prop_assert!(open(&b).is_ok());
            }
        }
    }
}
