//! dag-pb (multicodec 0x70): the IPLD codec of UnixFS nodes, written by hand (two protobuf
//! messages, see the IPLD `dag-pb` spec):
//!
//! ```text
//! message PBLink { optional bytes Hash = 1; optional string Name = 2; optional uint64 Tsize = 3; }
//! message PBNode { repeated PBLink Links = 2; optional bytes Data = 1; }
//! ```
//!
//! Encoding is the canonical one of the spec (and of `@ipld/dag-pb`, go-merkledag): the links
//! first, in order, each with Hash, Name, Tsize in field order; then Data. Decoding takes bytes
//! that may come from a peer: every length is checked against the bytes left, the block size and
//! the link count are capped, and anything but the fields above is an error, so a hostile block
//! is an `Err`, never a panic or an allocation larger than the block.

use crate::cid::Cid;

/// Largest dag-pb block decoded (a UnixFS node of 174 links is ~8 KiB; peers' blocks are at
/// most 2 MiB by Bitswap's own limit).
pub const MAX_BLOCK: usize = 2 << 20;
/// Most links decoded in one node (the importers write 174; 1,024 at most in practice).
pub const MAX_LINKS: usize = 8192;

/// A link of a dag-pb node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PbLink {
    pub hash: Cid,
    pub name: Option<String>,
    pub tsize: Option<u64>,
}

/// A dag-pb node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PbNode {
    pub links: Vec<PbLink>,
    pub data: Option<Vec<u8>>,
}

impl PbNode {
    /// The canonical bytes of this node.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for link in &self.links {
            let mut l = Vec::new();
            put_bytes(&mut l, 1, &link.hash.to_bytes());
            if let Some(name) = &link.name {
                put_bytes(&mut l, 2, name.as_bytes());
            }
            if let Some(tsize) = link.tsize {
                put_uint(&mut l, 3, tsize);
            }
            put_bytes(&mut out, 2, &l);
        }
        if let Some(data) = &self.data {
            put_bytes(&mut out, 1, data);
        }
        out
    }

    /// Decodes a dag-pb block (bounded; see the module doc).
    pub fn decode(data: &[u8]) -> Result<PbNode, String> {
        if data.len() > MAX_BLOCK {
            return Err(format!("{} bytes, more than {MAX_BLOCK}", data.len()));
        }
        let mut node = PbNode::default();
        let mut r = Fields::new(data);
        while let Some(field) = r.next()? {
            match field {
                (2, Value::Bytes(l)) => {
                    if node.data.is_some() {
                        return Err("a link after the data".into());
                    }
                    if node.links.len() >= MAX_LINKS {
                        return Err(format!("more than {MAX_LINKS} links"));
                    }
                    node.links.push(decode_link(l)?);
                }
                (1, Value::Bytes(d)) => {
                    if node.data.is_some() {
                        return Err("two data fields".into());
                    }
                    node.data = Some(d.to_vec());
                }
                (n, _) => return Err(format!("unexpected field {n} in a PBNode")),
            }
        }
        Ok(node)
    }
}

fn decode_link(data: &[u8]) -> Result<PbLink, String> {
    let mut r = Fields::new(data);
    let (mut hash, mut name, mut tsize) = (None, None, None);
    let mut last = 0;
    while let Some(field) = r.next()? {
        let n = field.0;
        if n <= last {
            return Err("PBLink fields out of order or repeated".into());
        }
        last = n;
        match field {
            (1, Value::Bytes(h)) => {
                hash = Some(Cid::try_from(h).map_err(|e| format!("a link's CID: {e}"))?)
            }
            (2, Value::Bytes(s)) => {
                name = Some(
                    std::str::from_utf8(s)
                        .map_err(|_| "a link's name is not UTF-8".to_string())?
                        .to_string(),
                )
            }
            (3, Value::Uint(t)) => tsize = Some(t),
            (n, _) => return Err(format!("unexpected field {n} in a PBLink")),
        }
    }
    Ok(PbLink {
        hash: hash.ok_or("a link without a CID")?,
        name,
        tsize,
    })
}

/// The links of a dag-pb block (for the store's `refs`), sorted and deduplicated.
pub(crate) fn links(data: &[u8]) -> Result<Vec<Cid>, String> {
    let mut out: Vec<Cid> = PbNode::decode(data)?
        .links
        .into_iter()
        .map(|l| l.hash)
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// A protobuf field's value: varint or length-delimited (the only wire types dag-pb and UnixFS
/// use; others are errors).
pub(crate) enum Value<'a> {
    Uint(u64),
    Bytes(&'a [u8]),
}

/// Reads protobuf fields one by one from a byte slice.
pub(crate) struct Fields<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    /// The next `(field number, value)`, `None` at the end.
    pub(crate) fn next(&mut self) -> Result<Option<(u64, Value<'a>)>, String> {
        if self.pos >= self.data.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let (field, wire) = (key >> 3, key & 7);
        if field == 0 {
            return Err("field number 0".into());
        }
        let value = match wire {
            0 => Value::Uint(self.varint()?),
            2 => {
                let len = self.varint()?;
                let left = (self.data.len() - self.pos) as u64;
                if len > left {
                    return Err("a field longer than the block".into());
                }
                let end = self.pos + len as usize;
                let bytes = &self.data[self.pos..end];
                self.pos = end;
                Value::Bytes(bytes)
            }
            w => return Err(format!("wire type {w} of field {field} is not allowed")),
        };
        Ok(Some((field, value)))
    }

    /// The next varint of a packed repeated field (a `Fields` over that field's bytes).
    pub(crate) fn packed_next(&mut self) -> Result<Option<u64>, String> {
        if self.pos >= self.data.len() {
            return Ok(None);
        }
        self.varint().map(Some)
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for i in 0..10 {
            let b = *self.data.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            let bits = (b & 0x7f) as u64;
            if i == 9 && bits > 1 {
                return Err("varint overflows 64 bits".into());
            }
            value |= bits << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint longer than 10 bytes".into())
    }
}

/// Appends an unsigned LEB128 varint.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a varint field.
pub(crate) fn put_uint(out: &mut Vec<u8>, field: u64, v: u64) {
    put_varint(out, field << 3);
    put_varint(out, v);
}

/// Appends a length-delimited field.
pub(crate) fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, (field << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cid::{cid_of, RAW};

    #[test]
    fn round_trip_in_canonical_order() {
        let node = PbNode {
            links: vec![
                PbLink {
                    hash: cid_of(RAW, b"a"),
                    name: Some(String::new()),
                    tsize: Some(1),
                },
                PbLink {
                    hash: cid_of(RAW, b"b"),
                    name: None,
                    tsize: None,
                },
            ],
            data: Some(vec![8, 2]),
        };
        let bytes = node.encode();
        assert_eq!(bytes[0], 0x12, "links come first");
        assert_eq!(PbNode::decode(&bytes).unwrap(), node);
        assert_eq!(links(&bytes).unwrap().len(), 2);
    }

    #[test]
    fn hostile_bytes_are_errors() {
        for junk in [
            &[0x12, 0xff, 0xff, 0xff, 0xff, 0x0f][..], // a link longer than the block
            &[0x0a, 0x00, 0x12, 0x00][..],             // a link after the data
            &[0x1a, 0x00][..],                         // unknown field
            &[0x12, 0x02, 0x18, 0x01][..],             // a link without a CID
            &[0x0d, 0, 0, 0, 0][..],                   // fixed32 wire type
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
            ][..], // overflow
            &[0x12][..],                               // truncated
        ] {
            assert!(PbNode::decode(junk).is_err(), "{junk:?}");
        }
        assert!(PbNode::decode(&vec![0; MAX_BLOCK + 1]).is_err());
    }
}
