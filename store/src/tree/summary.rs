//! Summaries of subtrees ([`Summary`]) and their sequences in branch nodes ([`SummarySeq`]).
//!
//! A summary holds the event count, lamport and time ranges, the set of (semantics, name)
//! pairs and the set of tags of a subtree. The two sets stay exact up to [`MAX_EXACT_NAMES`] /
//! [`MAX_EXACT_TAGS`] entries; beyond that they become a fixed 2048-bit bloom filter, so a
//! summary never grows past a few KiB however large the subtree.
//!
//! Wire form of a summary (dag-cbor 5-tuple): `[count, [lamport_min, lamport_max],
//! [time_min, time_max], names, tags]` where `names` is either a list of strings
//! `[s0, n0, s1, n1, ...]` or a list of 32 `u64` words (the bloom filter) and `tags` a list of
//! strings or 32 words, told apart by a leading 0 (exact) or 1 (bloom) element:
//! `[0, "a", "b"]` / `[1, w0, ..., w31]`. The bloom hash (FNV-1a 64 over a kind byte and
//! length-prefixed strings, 4 probes by double hashing) is fixed: it is part of the format.
//!
//! Invariant: a summary never rejects an event of its subtree (a bloom filter may say "maybe"
//! for absent names; it never says "no" for present ones); decoding junk never panics.

use super::key::KeySeq;
use crate::event::SharedStr;
use banyan::index::{CompactSeq, Summarizable};
use libipld::{
    cbor::DagCborCodec,
    codec::{Decode, Encode},
    Ipld,
};
use std::{io, iter::FromIterator};

/// Exact (semantics, name) pairs kept before switching to a bloom filter.
pub const MAX_EXACT_NAMES: usize = 32;
/// Exact tags kept before switching to a bloom filter.
pub const MAX_EXACT_TAGS: usize = 64;
const BLOOM_WORDS: usize = 32;
const BLOOM_BITS: u64 = (BLOOM_WORDS * 64) as u64;
const PROBES: u64 = 4;

/// A fixed-size bloom filter over strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bloom(pub(crate) Box<[u64; BLOOM_WORDS]>);

impl Bloom {
    fn empty() -> Self {
        Self(Box::new([0; BLOOM_WORDS]))
    }

    fn probes(hash: u64) -> impl Iterator<Item = u64> {
        // Double hashing: h1 + i*h2, with h2 odd so probes differ.
        let h2 = splitmix(hash) | 1;
        (0..PROBES).map(move |i| hash.wrapping_add(i.wrapping_mul(h2)) % BLOOM_BITS)
    }

    fn insert(&mut self, hash: u64) {
        for bit in Self::probes(hash) {
            self.0[(bit / 64) as usize] |= 1 << (bit % 64);
        }
    }

    fn may_contain(&self, hash: u64) -> bool {
        Self::probes(hash).all(|bit| self.0[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
    }

    fn union(&mut self, other: &Bloom) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a |= *b;
        }
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// FNV-1a 64 over a kind byte and length-prefixed parts: the bloom filter's hash (fixed format).
fn hash(kind: u8, parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    eat(kind);
    for p in parts {
        for b in (p.len() as u64).to_le_bytes() {
            eat(b);
        }
        for b in p.bytes() {
            eat(b);
        }
    }
    h
}

fn hash_pair(s: &str, n: &str) -> u64 {
    hash(b'P', &[s, n])
}
fn hash_semantics(s: &str) -> u64 {
    hash(b'S', &[s])
}
fn hash_name(n: &str) -> u64 {
    hash(b'N', &[n])
}
fn hash_tag(t: &str) -> u64 {
    hash(b'T', &[t])
}

/// The (semantics, name) pairs of a subtree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameSet {
    /// Sorted, distinct.
    Exact(Vec<(SharedStr, SharedStr)>),
    /// Holds, for each pair, the pair, its semantics and its name.
    Bloom(Bloom),
}

/// The tags of a subtree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagSet {
    /// Sorted, distinct.
    Exact(Vec<SharedStr>),
    Bloom(Bloom),
}

impl NameSet {
    fn insert_bloom(bloom: &mut Bloom, s: &str, n: &str) {
        bloom.insert(hash_pair(s, n));
        bloom.insert(hash_semantics(s));
        bloom.insert(hash_name(n));
    }

    fn from_pairs(mut pairs: Vec<(SharedStr, SharedStr)>) -> Self {
        pairs.sort();
        pairs.dedup();
        if pairs.len() <= MAX_EXACT_NAMES {
            NameSet::Exact(pairs)
        } else {
            let mut bloom = Bloom::empty();
            for (s, n) in &pairs {
                Self::insert_bloom(&mut bloom, s, n);
            }
            NameSet::Bloom(bloom)
        }
    }

    fn union(&self, other: &NameSet) -> NameSet {
        match (self, other) {
            (NameSet::Exact(a), NameSet::Exact(b)) => {
                NameSet::from_pairs(a.iter().chain(b.iter()).cloned().collect())
            }
            (NameSet::Bloom(a), NameSet::Bloom(b)) => {
                let mut a = a.clone();
                a.union(b);
                NameSet::Bloom(a)
            }
            (NameSet::Bloom(a), NameSet::Exact(e)) | (NameSet::Exact(e), NameSet::Bloom(a)) => {
                let mut a = a.clone();
                for (s, n) in e {
                    Self::insert_bloom(&mut a, s, n);
                }
                NameSet::Bloom(a)
            }
        }
    }

    /// Can the subtree hold an event with this semantics and name (`None` = any)?
    pub fn may_contain(&self, semantics: Option<&str>, name: Option<&str>) -> bool {
        match self {
            NameSet::Exact(pairs) => pairs.iter().any(|(s, n)| {
                semantics.is_none_or(|x| x == &**s) && name.is_none_or(|x| x == &**n)
            }),
            NameSet::Bloom(b) => match (semantics, name) {
                (Some(s), Some(n)) => b.may_contain(hash_pair(s, n)),
                (Some(s), None) => b.may_contain(hash_semantics(s)),
                (None, Some(n)) => b.may_contain(hash_name(n)),
                (None, None) => true,
            },
        }
    }
}

impl TagSet {
    fn from_tags(mut tags: Vec<SharedStr>) -> Self {
        tags.sort();
        tags.dedup();
        if tags.len() <= MAX_EXACT_TAGS {
            TagSet::Exact(tags)
        } else {
            let mut bloom = Bloom::empty();
            for t in &tags {
                bloom.insert(hash_tag(t));
            }
            TagSet::Bloom(bloom)
        }
    }

    fn union(&self, other: &TagSet) -> TagSet {
        match (self, other) {
            (TagSet::Exact(a), TagSet::Exact(b)) => {
                TagSet::from_tags(a.iter().chain(b.iter()).cloned().collect())
            }
            (TagSet::Bloom(a), TagSet::Bloom(b)) => {
                let mut a = a.clone();
                a.union(b);
                TagSet::Bloom(a)
            }
            (TagSet::Bloom(a), TagSet::Exact(e)) | (TagSet::Exact(e), TagSet::Bloom(a)) => {
                let mut a = a.clone();
                for t in e {
                    a.insert(hash_tag(t));
                }
                TagSet::Bloom(a)
            }
        }
    }

    /// Can the subtree hold an event carrying `tag`?
    pub fn may_contain(&self, tag: &str) -> bool {
        match self {
            TagSet::Exact(tags) => tags.binary_search_by(|t| (**t).cmp(tag)).is_ok(),
            TagSet::Bloom(b) => b.may_contain(hash_tag(tag)),
        }
    }
}

/// What a branch knows about one child subtree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Number of events.
    pub count: u64,
    /// Inclusive lamport range.
    pub lamport: (u64, u64),
    /// Inclusive time range.
    pub time: (u64, u64),
    pub names: NameSet,
    pub tags: TagSet,
}

impl Summary {
    fn combine(&self, other: &Summary) -> Summary {
        Summary {
            count: self.count.saturating_add(other.count),
            lamport: (
                self.lamport.0.min(other.lamport.0),
                self.lamport.1.max(other.lamport.1),
            ),
            time: (self.time.0.min(other.time.0), self.time.1.max(other.time.1)),
            names: self.names.union(&other.names),
            tags: self.tags.union(&other.tags),
        }
    }

    /// The summary of nothing (the identity of `combine` apart from the ranges, which are
    /// inverted so any real range replaces them).
    fn empty() -> Summary {
        Summary {
            count: 0,
            lamport: (u64::MAX, 0),
            time: (u64::MAX, 0),
            names: NameSet::Exact(Vec::new()),
            tags: TagSet::Exact(Vec::new()),
        }
    }

    fn to_ipld(&self) -> Ipld {
        let strings = |v: Vec<String>| Ipld::List(v.into_iter().map(Ipld::String).collect());
        let bloom = |b: &Bloom| {
            Ipld::List(
                std::iter::once(Ipld::Integer(1))
                    .chain(b.0.iter().map(|w| Ipld::Integer(*w as i128)))
                    .collect(),
            )
        };
        let exact = |v: Vec<String>| {
            let Ipld::List(mut l) = strings(v) else {
                unreachable!("strings makes lists")
            };
            l.insert(0, Ipld::Integer(0));
            Ipld::List(l)
        };
        let names = match &self.names {
            NameSet::Exact(pairs) => exact(
                pairs
                    .iter()
                    .flat_map(|(s, n)| [s.to_string(), n.to_string()])
                    .collect(),
            ),
            NameSet::Bloom(b) => bloom(b),
        };
        let tags = match &self.tags {
            TagSet::Exact(tags) => exact(tags.iter().map(|t| t.to_string()).collect()),
            TagSet::Bloom(b) => bloom(b),
        };
        Ipld::List(vec![
            Ipld::Integer(self.count as i128),
            Ipld::List(vec![
                Ipld::Integer(self.lamport.0 as i128),
                Ipld::Integer(self.lamport.1 as i128),
            ]),
            Ipld::List(vec![
                Ipld::Integer(self.time.0 as i128),
                Ipld::Integer(self.time.1 as i128),
            ]),
            names,
            tags,
        ])
    }

    fn from_ipld(ipld: Ipld) -> anyhow::Result<Summary> {
        fn u64_of(i: &Ipld) -> anyhow::Result<u64> {
            match i {
                Ipld::Integer(x) => Ok(u64::try_from(*x)?),
                _ => anyhow::bail!("expected an integer"),
            }
        }
        fn pair(i: &Ipld) -> anyhow::Result<(u64, u64)> {
            match i {
                Ipld::List(l) if l.len() == 2 => Ok((u64_of(&l[0])?, u64_of(&l[1])?)),
                _ => anyhow::bail!("expected a pair"),
            }
        }
        enum Set {
            Exact(Vec<SharedStr>),
            Bloom(Bloom),
        }
        fn set(i: &Ipld) -> anyhow::Result<Set> {
            let Ipld::List(l) = i else {
                anyhow::bail!("expected a list")
            };
            match l.first().map(u64_of).transpose()? {
                Some(0) => Ok(Set::Exact(
                    l[1..]
                        .iter()
                        .map(|s| match s {
                            Ipld::String(s) => Ok(SharedStr::from(s.as_str())),
                            _ => anyhow::bail!("expected a string"),
                        })
                        .collect::<anyhow::Result<_>>()?,
                )),
                Some(1) if l.len() == BLOOM_WORDS + 1 => {
                    let mut b = Bloom::empty();
                    for (w, i) in b.0.iter_mut().zip(l[1..].iter()) {
                        *w = u64_of(i)?;
                    }
                    Ok(Set::Bloom(b))
                }
                _ => anyhow::bail!("unknown set kind"),
            }
        }
        let Ipld::List(l) = ipld else {
            anyhow::bail!("summary must be a list")
        };
        anyhow::ensure!(l.len() == 5, "summary must have 5 fields");
        let names = match set(&l[3])? {
            Set::Exact(v) => {
                anyhow::ensure!(v.len().is_multiple_of(2), "names must come in pairs");
                NameSet::Exact(
                    v.chunks_exact(2)
                        .map(|p| (p[0].clone(), p[1].clone()))
                        .collect(),
                )
            }
            Set::Bloom(b) => NameSet::Bloom(b),
        };
        let tags = match set(&l[4])? {
            Set::Exact(v) => TagSet::Exact(v),
            Set::Bloom(b) => TagSet::Bloom(b),
        };
        Ok(Summary {
            count: u64_of(&l[0])?,
            lamport: pair(&l[1])?,
            time: pair(&l[2])?,
            names,
            tags,
        })
    }
}

impl Summarizable<Summary> for KeySeq {
    fn summarize(&self) -> Summary {
        if self.lamport.is_empty() {
            return Summary::empty();
        }
        let range = |v: &[u64]| {
            (
                v.iter().copied().min().unwrap_or(0),
                v.iter().copied().max().unwrap_or(0),
            )
        };
        Summary {
            count: self.lamport.len() as u64,
            lamport: range(&self.lamport),
            time: range(&self.time),
            names: NameSet::from_pairs(self.names.clone()),
            tags: TagSet::from_tags(self.tags.clone()),
        }
    }
}

/// The summaries of a branch's children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummarySeq(pub(crate) Vec<Summary>);

impl Encode<DagCborCodec> for SummarySeq {
    fn encode<W: io::Write>(&self, c: DagCborCodec, w: &mut W) -> anyhow::Result<()> {
        Ipld::List(self.0.iter().map(Summary::to_ipld).collect()).encode(c, w)
    }
}

impl Decode<DagCborCodec> for SummarySeq {
    fn decode<R: io::Read + io::Seek>(c: DagCborCodec, r: &mut R) -> anyhow::Result<Self> {
        let Ipld::List(items) = Ipld::decode(c, r)? else {
            anyhow::bail!("summaries must be a list")
        };
        anyhow::ensure!(!items.is_empty(), "a branch has at least one child");
        Ok(SummarySeq(
            items
                .into_iter()
                .map(Summary::from_ipld)
                .collect::<anyhow::Result<_>>()?,
        ))
    }
}

impl CompactSeq for SummarySeq {
    type Item = Summary;

    fn len(&self) -> usize {
        self.0.len()
    }

    fn get(&self, i: usize) -> Option<Summary> {
        self.0.get(i).cloned()
    }

    fn estimated_size(&self) -> usize {
        self.0.len() * (std::mem::size_of::<Summary>() + 512)
    }
}

impl FromIterator<Summary> for SummarySeq {
    fn from_iter<I: IntoIterator<Item = Summary>>(iter: I) -> Self {
        SummarySeq(iter.into_iter().collect())
    }
}

impl Summarizable<Summary> for SummarySeq {
    fn summarize(&self) -> Summary {
        let mut iter = self.0.iter();
        match iter.next() {
            Some(first) => iter.fold(first.clone(), |acc, s| acc.combine(s)),
            None => Summary::empty(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::key::Key;
    use libipld::codec::Codec;
    use std::sync::Arc;

    fn key(l: u64, s: &str, n: &str, tags: &[&str]) -> Key {
        Key {
            lamport: l,
            time: l * 10,
            semantics: s.into(),
            name: n.into(),
            tags: tags
                .iter()
                .map(|t| SharedStr::from(*t))
                .collect::<Arc<[_]>>(),
        }
    }

    #[test]
    fn summary_round_trip_and_bloom_fallback() {
        let many: KeySeq = (0..200u64)
            .map(|i| key(i, &format!("s{}", i % 50), "n", &[&format!("t{i}")]))
            .collect();
        let few: KeySeq = vec![key(1000, "a", "b", &["x"])].into_iter().collect();
        let seq: SummarySeq = vec![many.summarize(), few.summarize()]
            .into_iter()
            .collect();
        let bytes = DagCborCodec.encode(&seq).unwrap();
        let back: SummarySeq = DagCborCodec.decode(&bytes).unwrap();
        assert_eq!(back, seq);
        let all: Summary = back.summarize();
        assert_eq!(all.count, 201);
        assert_eq!(all.lamport, (0, 1000));
        assert!(matches!(all.names, NameSet::Bloom(_)));
        assert!(matches!(all.tags, TagSet::Bloom(_)));
        for i in 0..200u64 {
            assert!(all
                .names
                .may_contain(Some(&format!("s{}", i % 50)), Some("n")));
            assert!(all.tags.may_contain(&format!("t{i}")));
        }
        assert!(all.names.may_contain(Some("a"), Some("b")));
        assert!(all.names.may_contain(None, Some("b")));
        assert!(Summarizable::<Summary>::summarize(&few)
            .names
            .may_contain(Some("a"), None));
        assert!(!Summarizable::<Summary>::summarize(&few)
            .names
            .may_contain(Some("a"), Some("c")));
        assert!(!Summarizable::<Summary>::summarize(&few)
            .tags
            .may_contain("y"));
    }

    #[test]
    fn junk_never_panics() {
        let few: KeySeq = vec![key(1, "a", "b", &["x"])].into_iter().collect();
        let seq = SummarySeq(vec![few.summarize()]);
        let bytes = DagCborCodec.encode(&seq).unwrap();
        for i in 0..bytes.len() {
            for b in [0u8, 1, 0x17, 0x20, 0x80, 0xff] {
                let mut junk = bytes.clone();
                junk[i] = b;
                if crate::blocks::check_dag_cbor(&junk).is_ok() {
                    let _ = DagCborCodec.decode::<SummarySeq>(&junk);
                }
            }
        }
    }
}
