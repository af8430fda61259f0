//! The blob format before UnixFS (shoal ≤ 0.x, issue 15 replaced it): 1 MiB raw chunks under
//! dag-cbor link blocks `{"c": chunk size, "h": height, "l": [links], "s": bytes below}` (at
//! most 1,024 links; every child full but the last). Only read now, by the start-up migration
//! that converts such blobs to UnixFS (`super::migrate`); tests also write it, to build stores
//! of the old format.

use std::collections::BTreeMap;

use libipld::{cbor::DagCborCodec, codec::Codec, Ipld};

use rusqlite::Connection;

use crate::blocks;
use crate::cid::{self, Cid, DAG_CBOR, RAW};
use crate::error::{Error, Result};

/// Links per link block.
pub const FANOUT: usize = 1024;
/// Deepest tree accepted (FANOUT^6 chunks is far beyond any disk).
const MAX_HEIGHT: u64 = 6;
/// Largest link block accepted: [`FANOUT`] links of 41 bytes plus the three integers is
/// ~41 KiB; anything larger is a lie, refused before any decoder allocates for it.
pub const MAX_LINK_BLOCK: usize = 48 << 10;

/// One link block, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkNode {
    /// Chunk size of the blob.
    pub chunk: u64,
    /// 1 = links chunks.
    pub height: u64,
    /// Bytes below this node.
    pub size: u64,
    pub links: Vec<Cid>,
}

impl LinkNode {
    /// Bytes one child of this node covers when full.
    pub fn child_span(&self) -> u64 {
        (self.chunk).saturating_mul((FANOUT as u64).saturating_pow((self.height - 1) as u32))
    }

    /// The dag-cbor bytes and CID of this node.
    pub fn encode(&self) -> Result<(Cid, Vec<u8>)> {
        let links = self
            .links
            .iter()
            .map(|c| Ok(Ipld::Link(cid::to_ipld(c)?)))
            .collect::<Result<Vec<_>>>()?;
        let map: BTreeMap<String, Ipld> = [
            ("c".to_string(), Ipld::Integer(self.chunk as i128)),
            ("h".to_string(), Ipld::Integer(self.height as i128)),
            ("l".to_string(), Ipld::List(links)),
            ("s".to_string(), Ipld::Integer(self.size as i128)),
        ]
        .into_iter()
        .collect();
        let data = DagCborCodec
            .encode(&Ipld::StringMap(map))
            .map_err(|e| Error::Invalid(format!("cannot encode a link block: {e}")))?;
        Ok((cid::cid_of(DAG_CBOR, &data), data))
    }

    /// Decodes and checks a link block (bytes may come from a peer: every field is checked
    /// against the geometry, so a lying tree is `Corrupt`, never a panic or a huge allocation).
    pub fn decode(cid: &Cid, data: &[u8]) -> Result<LinkNode> {
        let corrupt = |reason: &str| Error::Corrupt {
            cid: *cid,
            reason: format!("not a blob link block: {reason}"),
        };
        if cid.codec() != DAG_CBOR {
            return Err(corrupt("not dag-cbor"));
        }
        if data.len() > MAX_LINK_BLOCK {
            return Err(corrupt(&format!(
                "{} bytes, more than a link block of {FANOUT} links",
                data.len()
            )));
        }
        // libipld allocates whatever length a header declares and recurses without bound: the
        // bytes may be a peer's, so they are checked (definite lengths that fit in the block,
        // bounded nesting) before it sees them.
        crate::blocks::check_dag_cbor(data).map_err(|e| corrupt(&e))?;
        let ipld: Ipld = DagCborCodec
            .decode(data)
            .map_err(|e| corrupt(&e.to_string()))?;
        let Ipld::StringMap(map) = ipld else {
            return Err(corrupt("not a map"));
        };
        let int = |k: &str| match map.get(k) {
            Some(Ipld::Integer(i)) if (0..=u64::MAX as i128).contains(i) => Ok(*i as u64),
            _ => Err(corrupt(&format!(
                "field {k} missing or not an unsigned integer"
            ))),
        };
        let (chunk, height, size) = (int("c")?, int("h")?, int("s")?);
        let Some(Ipld::List(list)) = map.get("l") else {
            return Err(corrupt("field l missing"));
        };
        let links = list
            .iter()
            .map(|l| match l {
                Ipld::Link(c) => cid::from_ipld(c),
                _ => Err(corrupt("a link is not a CID")),
            })
            .collect::<Result<Vec<_>>>()?;
        let node = LinkNode {
            chunk,
            height,
            size,
            links,
        };
        if chunk == 0 || chunk > 4 << 20 || height == 0 || height > MAX_HEIGHT {
            return Err(corrupt("chunk size or height out of range"));
        }
        if node.links.len() > FANOUT {
            return Err(corrupt("too many links"));
        }
        let span = node.child_span();
        let n = node.links.len() as u64;
        // Every child but the last is full; the last holds 1..=span bytes.
        let fits = match n {
            0 => size == 0 && height == 1,
            n => size > (n - 1).saturating_mul(span) && size <= n.saturating_mul(span),
        };
        if !fits {
            return Err(corrupt("size does not match the links"));
        }
        let want = if height == 1 { RAW } else { DAG_CBOR };
        if node.links.iter().any(|l| l.codec() != want) {
            return Err(corrupt("link of the wrong kind"));
        }
        Ok(node)
    }

    /// Size of child `i` (`i < links.len()`).
    pub fn child_size(&self, i: usize) -> u64 {
        let span = self.child_span();
        self.size
            .saturating_sub((i as u64).saturating_mul(span))
            .min(span)
    }
}

/// Walks the old tree under `root` in byte order, calling `chunk(cid, len)` for each chunk
/// (chunks are not read). `Ok(false)` when a link block is not stored here (a fetch cut short).
pub(super) fn chunks(
    conn: &Connection,
    root: &Cid,
    mut chunk: impl FnMut(Cid, u64) -> Result<()>,
) -> Result<bool> {
    let Some(data) = blocks::get(conn, root)? else {
        return Ok(false);
    };
    let mut stack = vec![(LinkNode::decode(root, &data)?, 0usize)];
    while let Some((node, next)) = stack.last_mut() {
        let i = *next;
        if i >= node.links.len() {
            stack.pop();
            continue;
        }
        *next += 1;
        let (cid, size, height) = (node.links[i], node.child_size(i), node.height);
        if height == 1 {
            chunk(cid, size)?;
            continue;
        }
        let Some(data) = blocks::get(conn, &cid)? else {
            return Ok(false);
        };
        let child = LinkNode::decode(&cid, &data)?;
        if child.size != size || child.height + 1 != height {
            return Err(Error::Corrupt {
                cid,
                reason: "an old blob link block does not fit its parent".into(),
            });
        }
        stack.push((child, 0));
    }
    Ok(true)
}
