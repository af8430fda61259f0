//! The key of one event in a tree ([`Key`]) and the columnar sequence of a leaf's keys
//! ([`KeySeq`]).
//!
//! Wire form of a `KeySeq` (dag-cbor, a 7-tuple; see docs/format.md):
//! `[lamport_deltas, time_deltas, names, name_idx, tags, tag_sets, tag_set_idx]` where the
//! deltas are `i64` differences to the previous event (the first to 0, wrapping), `names` is a
//! flat list `[semantics0, name0, semantics1, name1, ...]` of distinct pairs, `tags` the distinct
//! tags, `tag_sets` the distinct tag sets as lists of indices into `tags`, and `name_idx` /
//! `tag_set_idx` one index per event. Columns of small integers compress well under zstd.
//!
//! Invariant: a decoded `KeySeq` has at least one key, all per-event columns have the same
//! length and every index is in bounds; decoding junk yields an error, never a panic.

use crate::event::SharedStr;
use banyan::index::CompactSeq;
use libipld::{
    cbor::DagCborCodec,
    codec::{Decode, Encode},
    DagCbor,
};
use std::{collections::HashMap, io, iter::FromIterator, sync::Arc};

/// The key of one event: what queries look at without loading payloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub lamport: u64,
    /// Microseconds since the Unix epoch.
    pub time: u64,
    pub semantics: SharedStr,
    pub name: SharedStr,
    /// Sorted, deduplicated.
    pub tags: Arc<[SharedStr]>,
}

/// The keys of one leaf, column by column, with names and tag sets interned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySeq {
    pub(crate) lamport: Vec<u64>,
    pub(crate) time: Vec<u64>,
    /// Distinct (semantics, name) pairs.
    pub(crate) names: Vec<(SharedStr, SharedStr)>,
    pub(crate) name_idx: Vec<u32>,
    /// Distinct tags.
    pub(crate) tags: Vec<SharedStr>,
    /// Distinct tag sets, as indices into `tags` (for queries) and as strings (for keys).
    pub(crate) tag_sets: Vec<Vec<u32>>,
    pub(crate) tag_set_strs: Vec<Arc<[SharedStr]>>,
    pub(crate) tag_set_idx: Vec<u32>,
}

#[derive(DagCbor)]
#[ipld(repr = "tuple")]
struct Wire {
    lamport: Vec<i64>,
    time: Vec<i64>,
    names: Vec<String>,
    name_idx: Vec<u32>,
    tags: Vec<String>,
    tag_sets: Vec<Vec<u32>>,
    tag_set_idx: Vec<u32>,
}

fn deltas(values: &[u64]) -> Vec<i64> {
    let mut prev = 0u64;
    values
        .iter()
        .map(|v| {
            let d = v.wrapping_sub(prev) as i64;
            prev = *v;
            d
        })
        .collect()
}

fn undeltas(deltas: &[i64]) -> Vec<u64> {
    let mut prev = 0u64;
    deltas
        .iter()
        .map(|d| {
            prev = prev.wrapping_add(*d as u64);
            prev
        })
        .collect()
}

impl KeySeq {
    fn from_wire(w: Wire) -> anyhow::Result<Self> {
        let n = w.lamport.len();
        anyhow::ensure!(n > 0, "empty key sequence");
        anyhow::ensure!(
            w.time.len() == n && w.name_idx.len() == n && w.tag_set_idx.len() == n,
            "key columns differ in length"
        );
        anyhow::ensure!(w.names.len().is_multiple_of(2), "names must come in pairs");
        let names: Vec<(SharedStr, SharedStr)> = w
            .names
            .chunks_exact(2)
            .map(|p| {
                (
                    SharedStr::from(p[0].as_str()),
                    SharedStr::from(p[1].as_str()),
                )
            })
            .collect();
        anyhow::ensure!(
            w.name_idx.iter().all(|i| (*i as usize) < names.len()),
            "name index out of bounds"
        );
        let tags: Vec<SharedStr> = w.tags.iter().map(|t| SharedStr::from(t.as_str())).collect();
        anyhow::ensure!(
            w.tag_sets
                .iter()
                .all(|set| set.iter().all(|i| (*i as usize) < tags.len())),
            "tag index out of bounds"
        );
        anyhow::ensure!(
            w.tag_set_idx
                .iter()
                .all(|i| (*i as usize) < w.tag_sets.len()),
            "tag set index out of bounds"
        );
        let tag_set_strs = w
            .tag_sets
            .iter()
            .map(|set| set.iter().map(|i| tags[*i as usize].clone()).collect())
            .collect();
        Ok(Self {
            lamport: undeltas(&w.lamport),
            time: undeltas(&w.time),
            names,
            name_idx: w.name_idx,
            tags,
            tag_sets: w.tag_sets,
            tag_set_strs,
            tag_set_idx: w.tag_set_idx,
        })
    }

    fn to_wire(&self) -> Wire {
        Wire {
            lamport: deltas(&self.lamport),
            time: deltas(&self.time),
            names: self
                .names
                .iter()
                .flat_map(|(s, n)| [s.to_string(), n.to_string()])
                .collect(),
            name_idx: self.name_idx.clone(),
            tags: self.tags.iter().map(|t| t.to_string()).collect(),
            tag_sets: self.tag_sets.clone(),
            tag_set_idx: self.tag_set_idx.clone(),
        }
    }
}

impl Encode<DagCborCodec> for KeySeq {
    fn encode<W: io::Write>(&self, c: DagCborCodec, w: &mut W) -> anyhow::Result<()> {
        self.to_wire().encode(c, w)
    }
}

impl Decode<DagCborCodec> for KeySeq {
    fn decode<R: io::Read + io::Seek>(c: DagCborCodec, r: &mut R) -> anyhow::Result<Self> {
        Self::from_wire(Wire::decode(c, r)?)
    }
}

impl CompactSeq for KeySeq {
    type Item = Key;

    fn len(&self) -> usize {
        self.lamport.len()
    }

    fn get(&self, i: usize) -> Option<Key> {
        let (s, n) = self.names.get(*self.name_idx.get(i)? as usize)?;
        Some(Key {
            lamport: *self.lamport.get(i)?,
            time: *self.time.get(i)?,
            semantics: s.clone(),
            name: n.clone(),
            tags: self
                .tag_set_strs
                .get(*self.tag_set_idx.get(i)? as usize)?
                .clone(),
        })
    }

    fn estimated_size(&self) -> usize {
        let strings: usize = self
            .names
            .iter()
            .map(|(s, n)| s.len() + n.len() + 32)
            .sum::<usize>()
            + self.tags.iter().map(|t| t.len() + 16).sum::<usize>();
        std::mem::size_of::<Self>()
            + self.lamport.len() * (8 + 8 + 4 + 4)
            + self
                .tag_sets
                .iter()
                .map(|s| 24 + s.len() * 4)
                .sum::<usize>()
            + strings
    }
}

impl FromIterator<Key> for KeySeq {
    fn from_iter<I: IntoIterator<Item = Key>>(iter: I) -> Self {
        let mut seq = KeySeq {
            lamport: Vec::new(),
            time: Vec::new(),
            names: Vec::new(),
            name_idx: Vec::new(),
            tags: Vec::new(),
            tag_sets: Vec::new(),
            tag_set_strs: Vec::new(),
            tag_set_idx: Vec::new(),
        };
        let mut names: HashMap<(SharedStr, SharedStr), u32> = HashMap::new();
        let mut tags: HashMap<SharedStr, u32> = HashMap::new();
        let mut tag_sets: HashMap<Vec<u32>, u32> = HashMap::new();
        for key in iter {
            seq.lamport.push(key.lamport);
            seq.time.push(key.time);
            let pair = (key.semantics.clone(), key.name.clone());
            let next = names.len() as u32;
            let ni = *names.entry(pair.clone()).or_insert_with(|| {
                seq.names.push(pair);
                next
            });
            seq.name_idx.push(ni);
            let set: Vec<u32> = key
                .tags
                .iter()
                .map(|t| {
                    let next = tags.len() as u32;
                    *tags.entry(t.clone()).or_insert_with(|| {
                        seq.tags.push(t.clone());
                        next
                    })
                })
                .collect();
            let next = tag_sets.len() as u32;
            let si = *tag_sets.entry(set.clone()).or_insert_with(|| {
                seq.tag_sets.push(set);
                seq.tag_set_strs.push(key.tags.clone());
                next
            });
            seq.tag_set_idx.push(si);
        }
        seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libipld::codec::Codec;

    pub(crate) fn key(lamport: u64, time: u64, s: &str, n: &str, tags: &[&str]) -> Key {
        Key {
            lamport,
            time,
            semantics: s.into(),
            name: n.into(),
            tags: tags.iter().map(|t| SharedStr::from(*t)).collect(),
        }
    }

    #[test]
    fn round_trip() {
        let keys = vec![
            key(5, 1000, "a", "x", &[]),
            key(7, 900, "a", "x", &["t1"]),
            key(8, u64::MAX, "b", "y", &["t1", "t2"]),
            key(1, 0, "a", "x", &["t1"]),
        ];
        let seq: KeySeq = keys.iter().cloned().collect();
        assert_eq!(seq.to_vec(), keys);
        let bytes = DagCborCodec.encode(&seq).unwrap();
        let back: KeySeq = DagCborCodec.decode(&bytes).unwrap();
        assert_eq!(back, seq);
        assert_eq!(back.to_vec(), keys);
    }

    #[test]
    fn junk_never_panics() {
        let seq: KeySeq = vec![key(1, 2, "s", "n", &["t"])].into_iter().collect();
        let bytes = DagCborCodec.encode(&seq).unwrap();
        for i in 0..bytes.len() {
            for b in [0u8, 1, 0x17, 0x18, 0x80, 0xff] {
                let mut junk = bytes.clone();
                junk[i] = b;
                if crate::blocks::check_dag_cbor(&junk).is_ok() {
                    let _ = DagCborCodec.decode::<KeySeq>(&junk);
                }
            }
            let _ = DagCborCodec.decode::<KeySeq>(&bytes[..i]);
        }
    }
}
