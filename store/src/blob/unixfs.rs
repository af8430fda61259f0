//! The blob DAG: a UnixFS v1 file, built exactly as `ipfs add --cid-version=1 --raw-leaves
//! --chunker=size-1048576` builds it (`tests/tests/unixfs.rs` compares CIDs with the reference
//! importer of Helia, `ipfs-unixfs-importer`, run with the settings of those flags).
//!
//! - Leaves: the chunks, raw blocks (CIDv1, raw, SHA-256) of [`super::CHUNK_SIZE`] bytes (the
//!   last one shorter).
//! - A file of at most one chunk is its raw leaf; the empty file is the empty raw block.
//! - Otherwise the leaves are grouped in order into nodes of at most [`FANOUT`] children, those
//!   nodes again, and so on until one node is left (balanced layout). A node is dag-pb (CIDv1,
//!   0x70) with one link per child (`Name` "", `Tsize` = the child's bytes plus, for a node,
//!   its block size and its children's `Tsize`) and `Data` = UnixFS `Data {Type: File, filesize,
//!   blocksizes}` (one blocksize per child: the file bytes below it).
//!
//! Reading takes nodes from peers too, so [`FileNode::decode`] is strict and bounded: the node
//! must be a UnixFS `File` without inline data whose blocksizes (all > 0) match its links and
//! add up to its filesize, with raw or dag-pb children.

use crate::cid::{self, Cid, DAG_PB, RAW};
use crate::dagpb::{put_uint, Fields, PbLink, PbNode, Value};
use crate::error::{Error, Result};

/// Children per node (the importers' `maxChildrenPerNode`, kubo's balanced layout default).
pub const FANOUT: usize = 174;
/// UnixFS `Data.Type` of a file.
const TYPE_FILE: u64 = 2;

/// A block: CID and bytes.
pub type Block = (Cid, Vec<u8>);

/// One node of a blob's DAG, decoded: its children and the file bytes below each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileNode {
    /// File bytes below this node (UnixFS `filesize`).
    pub size: u64,
    pub links: Vec<Cid>,
    /// File bytes below each link (UnixFS `blocksizes`).
    pub sizes: Vec<u64>,
}

impl FileNode {
    /// Decodes and checks a node (the bytes may be a peer's: see the module doc).
    pub fn decode(cid: &Cid, data: &[u8]) -> Result<FileNode> {
        let corrupt = |reason: &str| Error::Corrupt {
            cid: *cid,
            reason: format!("not a UnixFS file node: {reason}"),
        };
        if cid.codec() != DAG_PB {
            return Err(corrupt("not dag-pb"));
        }
        let pb = PbNode::decode(data).map_err(|e| corrupt(&e))?;
        let unixfs = pb
            .data
            .as_deref()
            .ok_or_else(|| corrupt("no UnixFS data"))?;
        let (mut kind, mut filesize, mut sizes) = (None, None, Vec::new());
        let mut fields = Fields::new(unixfs);
        while let Some(field) = fields.next().map_err(|e| corrupt(&e))? {
            match field {
                (1, Value::Uint(t)) => kind = Some(t),
                (2, Value::Bytes([])) => {}
                (2, _) => {
                    return Err(corrupt(
                        "inline file data is not supported (raw leaves only)",
                    ))
                }
                (3, Value::Uint(s)) => filesize = Some(s),
                (4, Value::Uint(s)) => {
                    if sizes.len() >= pb.links.len() {
                        return Err(corrupt("more blocksizes than links"));
                    }
                    sizes.push(s);
                }
                (4, Value::Bytes(packed)) => {
                    let mut p = Fields::new(packed);
                    while let Some(s) = p.packed_next().map_err(|e| corrupt(&e))? {
                        if sizes.len() >= pb.links.len() {
                            return Err(corrupt("more blocksizes than links"));
                        }
                        sizes.push(s);
                    }
                }
                // hashType, fanout, mode, mtime: nothing a file's bytes depend on.
                (5..=8, _) => {}
                (n, _) => return Err(corrupt(&format!("unexpected UnixFS field {n}"))),
            }
        }
        if kind != Some(TYPE_FILE) {
            return Err(corrupt("not of type File"));
        }
        if pb.links.is_empty() || sizes.len() != pb.links.len() {
            return Err(corrupt("blocksizes do not match the links"));
        }
        if sizes.contains(&0) {
            return Err(corrupt("an empty child"));
        }
        let total = sizes
            .iter()
            .try_fold(0u64, |acc, s| acc.checked_add(*s))
            .ok_or_else(|| corrupt("blocksizes overflow"))?;
        if filesize != Some(total) {
            return Err(corrupt("filesize is not the sum of the blocksizes"));
        }
        let links: Vec<Cid> = pb.links.into_iter().map(|l| l.hash).collect();
        if links
            .iter()
            .any(|l| !(l.codec() == RAW || l.codec() == DAG_PB))
        {
            return Err(corrupt("a child is neither raw nor dag-pb"));
        }
        Ok(FileNode {
            size: total,
            links,
            sizes,
        })
    }
}

impl FileNode {
    /// The block of this node, each link's `Tsize` set to its blocksize (right for raw
    /// children; the [`Builder`] writes the real ones). For tests and tools.
    pub fn encode(&self) -> Block {
        let children: Vec<Child> = self
            .links
            .iter()
            .zip(&self.sizes)
            .map(|(cid, size)| Child {
                cid: *cid,
                size: *size,
                tsize: *size,
            })
            .collect();
        let data = encode_node(&children);
        (cid::cid_of(DAG_PB, &data), data)
    }
}

/// The dag-pb bytes of a file node over `children`.
fn encode_node(children: &[Child]) -> Vec<u8> {
    let mut unixfs = Vec::with_capacity(16 + 5 * children.len());
    let size = children
        .iter()
        .fold(0u64, |acc, c| acc.saturating_add(c.size));
    put_uint(&mut unixfs, 1, TYPE_FILE);
    put_uint(&mut unixfs, 3, size);
    for c in children {
        put_uint(&mut unixfs, 4, c.size);
    }
    PbNode {
        links: children
            .iter()
            .map(|c| PbLink {
                hash: c.cid,
                name: Some(String::new()),
                tsize: Some(c.tsize),
            })
            .collect(),
        data: Some(unixfs),
    }
    .encode()
}

/// A child waiting for its parent: CID, file bytes, cumulative DAG size (`Tsize`).
#[derive(Debug, Clone, Copy)]
struct Child {
    cid: Cid,
    size: u64,
    tsize: u64,
}

/// Builds a blob's DAG as chunks arrive, with at most [`FANOUT`] pending children per level
/// (memory is O(height · FANOUT), whatever the blob's size). Same chunks → same DAG as the
/// reference importer's balanced layout.
#[derive(Debug)]
pub struct Builder {
    fanout: usize,
    /// `levels[k]`: completed children of height `k` (0 = leaves) not yet linked.
    levels: Vec<Vec<Child>>,
    size: u64,
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    pub fn new() -> Self {
        Self::with_fanout(FANOUT)
    }

    /// A builder with another fanout (tests make deep DAGs with few chunks).
    pub fn with_fanout(fanout: usize) -> Self {
        Self {
            fanout: fanout.max(2),
            levels: Vec::new(),
            size: 0,
        }
    }

    /// Bytes pushed so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Adds the next chunk (`cid = cid_of(RAW, chunk)`, `len` its bytes, > 0). Returns the
    /// nodes this completed, to store with the chunk.
    pub fn push_chunk(&mut self, cid: Cid, len: u64) -> Result<Vec<Block>> {
        self.size = self.size.saturating_add(len);
        let mut out = Vec::new();
        self.push(
            0,
            Child {
                cid,
                size: len,
                tsize: len,
            },
            &mut out,
        );
        Ok(out)
    }

    fn push(&mut self, level: usize, child: Child, out: &mut Vec<Block>) {
        if self.levels.len() <= level {
            self.levels.resize_with(level + 1, Vec::new);
        }
        self.levels[level].push(child);
        if self.levels[level].len() == self.fanout {
            let parent = self.emit(level, out);
            self.push(level + 1, parent, out);
        }
    }

    /// Links the pending children of `level` into one node.
    fn emit(&mut self, level: usize, out: &mut Vec<Block>) -> Child {
        let children = std::mem::take(&mut self.levels[level]);
        let size = children
            .iter()
            .fold(0u64, |acc, c| acc.saturating_add(c.size));
        let data = encode_node(&children);
        let tsize = children
            .iter()
            .fold(data.len() as u64, |acc, c| acc.saturating_add(c.tsize));
        let cid = cid::cid_of(DAG_PB, &data);
        out.push((cid, data));
        Child { cid, size, tsize }
    }

    /// Closes the DAG: returns the root CID, the size, and the last blocks to store (the empty
    /// raw block for an empty file).
    pub fn finish(mut self) -> Result<(Cid, u64, Vec<Block>)> {
        let mut out = Vec::new();
        if self.levels.iter().all(Vec::is_empty) {
            let cid = cid::cid_of(RAW, b"");
            return Ok((cid, 0, vec![(cid, Vec::new())]));
        }
        let mut level = 0;
        loop {
            if self.levels.len() <= level + 1 {
                self.levels.resize_with(level + 2, Vec::new);
            }
            let above_empty = self.levels[level + 1..].iter().all(Vec::is_empty);
            let here = self.levels[level].len();
            if above_empty && here == 1 {
                // One child left at the top: it is the root (a one-chunk file is its leaf).
                return Ok((self.levels[level][0].cid, self.size, out));
            }
            if here > 0 {
                let parent = self.emit(level, &mut out);
                self.levels[level + 1].push(parent);
            }
            level += 1;
        }
    }
}
