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
