//! The range walk of a blob read: the chunks covering `start..end`, in order, one at a time,
//! reading (or fetching) each node only when the walk goes down into it.
//!
//! Memory is one frame per DAG level (at most [`MAX_DEPTH`]), each holding one decoded UnixFS
//! node (at most `dagpb::MAX_LINKS` links), whatever the blob's size or the range's: a read of a
//! huge blob never builds a whole level, let alone the list of all its chunks. Each node's
//! `blocksizes` say where its children start, so the walk goes straight down to the first
//! chunk of the range. Every node is checked against its parent (its filesize is the parent's
//! blocksize for it) and every chunk's length against its blocksize (by the read), so a lying
//! DAG is `Corrupt` at the first block that does not fit.

use std::sync::Arc;

use shoal_store::blob::{BlobRoot, FileNode};
use shoal_store::cid::{DAG_PB, RAW};
use shoal_store::Cid;

use super::BlobsError;

/// Deepest DAG read (the balanced layout of 174 links needs 8 levels for 2^64 bytes; a chain
/// of one-link nodes from a peer stops here).
pub(super) const MAX_DEPTH: usize = 32;

/// A chunk of the range: its CID, offset in the blob and length.
#[derive(Debug, Clone, Copy)]
pub(super) struct ChunkRef {
    pub cid: Cid,
    pub offset: u64,
    pub len: u64,
}

/// One node on the way down, and which of its children are still to visit.
struct Frame {
    node: Arc<FileNode>,
    /// Next child to visit, and where it starts in the blob.
    next: usize,
    offset: u64,
}

/// Where nodes come from (the read: local store, else peers).
pub(super) trait LinkSource {
    /// The bytes of node `cid` (fetched and stored if not local).
    async fn link_block(&mut self, cid: Cid) -> Result<bytes::Bytes, BlobsError>;
}

/// The walk over the chunks of `start..end`.
pub(super) struct Walk {
    start: u64,
    end: u64,
    stack: Vec<Frame>,
    /// A one-chunk blob: its leaf, until yielded.
    leaf: Option<ChunkRef>,
}

impl Walk {
    pub(super) fn new(root: &BlobRoot, start: u64, end: u64) -> Walk {
        let mut walk = Walk {
            start,
            end,
            stack: Vec::new(),
            leaf: None,
        };
        match root {
            BlobRoot::Leaf { cid, size } => {
                if start < end.min(*size) {
                    walk.leaf = Some(ChunkRef {
                        cid: *cid,
                        offset: 0,
                        len: *size,
                    });
                }
            }
            BlobRoot::File(node) => walk.enter(Arc::new(node.clone()), 0),
        }
        walk
    }

    /// Pushes `node` (covering bytes from `base`), positioned at its first child that reaches
    /// into the range, if the range touches it.
    fn enter(&mut self, node: Arc<FileNode>, base: u64) {
        if self.start >= self.end
            || self.end <= base
            || self.start >= base.saturating_add(node.size)
        {
            return;
        }
        let mut next = 0;
        let mut offset = base;
        // Children wholly before the range are skipped without reading them.
        while let Some(size) = node.sizes.get(next) {
            if offset.saturating_add(*size) > self.start {
                break;
            }
            offset = offset.saturating_add(*size);
            next += 1;
        }
        self.stack.push(Frame { node, next, offset });
    }

    /// The next chunk of the range, or `None` after the last.
    pub(super) async fn next(
        &mut self,
        links: &mut impl LinkSource,
    ) -> Result<Option<ChunkRef>, BlobsError> {
        if let Some(leaf) = self.leaf.take() {
            return Ok(Some(leaf));
        }
        loop {
            let depth = self.stack.len();
            let Some(top) = self.stack.last_mut() else {
                return Ok(None);
            };
            let (Some(&cid), Some(&size)) =
                (top.node.links.get(top.next), top.node.sizes.get(top.next))
            else {
                self.stack.pop();
                continue;
            };
            let offset = top.offset;
            if offset >= self.end {
                self.stack.pop();
                continue;
            }
            top.next += 1;
            top.offset = offset.saturating_add(size);
            match cid.codec() {
                RAW => {
                    return Ok(Some(ChunkRef {
                        cid,
                        offset,
                        len: size,
                    }))
                }
                DAG_PB if depth < MAX_DEPTH => {
                    let data = links.link_block(cid).await?;
                    let child = FileNode::decode(&cid, &data)?;
                    if child.size != size {
                        return Err(BlobsError::Corrupt(format!(
                            "node {cid} holds {} bytes, its parent says {size}",
                            child.size
                        )));
                    }
                    self.enter(Arc::new(child), offset);
                }
                DAG_PB => {
                    return Err(BlobsError::Corrupt(format!(
                        "the blob's DAG is deeper than {MAX_DEPTH} levels at {cid}"
                    )))
                }
                _ => {
                    return Err(BlobsError::Corrupt(format!(
                        "{cid} is neither a raw chunk nor a dag-pb node"
                    )))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_store::blob::unixfs::Builder;
    use shoal_store::cid::cid_of;
    use std::collections::HashMap;

    /// Nodes from a map, counting reads.
    struct Blocks {
        map: HashMap<Cid, Vec<u8>>,
        reads: usize,
    }

    impl LinkSource for Blocks {
        async fn link_block(&mut self, cid: Cid) -> Result<bytes::Bytes, BlobsError> {
            self.reads += 1;
            self.map
                .get(&cid)
                .map(|d| bytes::Bytes::from(d.clone()))
                .ok_or_else(|| BlobsError::NotFound(cid.to_string()))
        }
    }

    /// The DAG of `n` chunks of 1 KiB (all the same chunk) with fanout `fanout`.
    fn dag(n: usize, fanout: usize) -> (BlobRoot, Blocks) {
        let chunk = cid_of(RAW, &[7; 1024]);
        let mut b = Builder::with_fanout(fanout);
        let mut map = HashMap::from([(chunk, vec![7; 1024])]);
        for _ in 0..n {
            map.extend(b.push_chunk(chunk, 1024).unwrap());
        }
        let (root, _, last) = b.finish().unwrap();
        map.extend(last);
        let root = BlobRoot::decode(&root, &map[&root]).unwrap();
        (root, Blocks { map, reads: 0 })
    }

    /// Issue 12 item 2: a read of a big blob walks it chunk by chunk with one node per level in
    /// memory, never the list of every chunk of the range.
    #[tokio::test]
    async fn a_range_is_walked_lazily_one_node_per_level() {
        let (root, mut blocks) = dag(4 * 4 * 4 * 4, 4);
        let mut walk = Walk::new(&root, 0, root.size());
        let mut expect = 0;
        for _ in 0..12 {
            let c = walk.next(&mut blocks).await.unwrap().unwrap();
            assert_eq!((c.offset, c.len), (expect, 1024));
            expect += 1024;
        }
        // Three levels down to the first leaves, then two more nodes of the lowest level.
        assert_eq!(blocks.reads, 3 + 2);
        assert!(walk.stack.len() <= 4);
    }

    /// A range inside the blob starts at the right chunk, stops after the last one, and reads
    /// only the nodes above its chunks.
    #[tokio::test]
    async fn a_range_yields_exactly_its_chunks() {
        let (root, mut blocks) = dag(174 * 3, 174);
        let (start, end) = (200 * 1024 + 100, 200 * 1024 + 3000);
        let mut walk = Walk::new(&root, start, end);
        let mut got = Vec::new();
        while let Some(c) = walk.next(&mut blocks).await.unwrap() {
            got.push(c.offset);
        }
        assert_eq!(got, vec![200 * 1024, 201 * 1024, 202 * 1024]);
        assert_eq!(
            blocks.reads, 1,
            "only the second of the three nodes below the root"
        );
    }

    /// A one-chunk blob is its leaf.
    #[tokio::test]
    async fn a_one_chunk_blob_is_its_leaf() {
        let (root, mut blocks) = dag(1, 174);
        assert!(matches!(root, BlobRoot::Leaf { size: 1024, .. }));
        let mut walk = Walk::new(&root, 10, 20);
        let c = walk.next(&mut blocks).await.unwrap().unwrap();
        assert_eq!((c.offset, c.len), (0, 1024));
        assert!(walk.next(&mut blocks).await.unwrap().is_none());
    }

    fn file_node(children: &[(Cid, u64)]) -> (Cid, Vec<u8>) {
        FileNode {
            size: children.iter().map(|c| c.1).sum(),
            links: children.iter().map(|c| c.0).collect(),
            sizes: children.iter().map(|c| c.1).collect(),
        }
        .encode()
    }

    /// A child whose size does not fit its parent is `Corrupt`.
    #[tokio::test]
    async fn a_child_that_does_not_fit_is_corrupt() {
        let chunk = cid_of(RAW, b"x");
        let (liar, liar_data) = file_node(&[(chunk, 1)]);
        let (root, root_data) = file_node(&[(liar, 5000), (chunk, 1)]);
        let mut blocks = Blocks {
            map: HashMap::from([(liar, liar_data)]),
            reads: 0,
        };
        let root = BlobRoot::decode(&root, &root_data).unwrap();
        let mut walk = Walk::new(&root, 0, 10);
        assert!(matches!(
            walk.next(&mut blocks).await,
            Err(BlobsError::Corrupt(_))
        ));
    }

    /// Issue 15: a peer's chain of one-link nodes deeper than [`MAX_DEPTH`] is `Corrupt`, not a
    /// walk without end.
    #[tokio::test]
    async fn a_dag_deeper_than_the_bound_is_corrupt() {
        let mut child = cid_of(RAW, b"x");
        let mut map = HashMap::new();
        for _ in 0..MAX_DEPTH + 2 {
            let (cid, data) = file_node(&[(child, 1)]);
            map.insert(cid, data);
            child = cid;
        }
        let root = BlobRoot::decode(&child, &map[&child]).unwrap();
        let mut blocks = Blocks { map, reads: 0 };
        let mut walk = Walk::new(&root, 0, 1);
        assert!(matches!(
            walk.next(&mut blocks).await,
            Err(BlobsError::Corrupt(_))
        ));
        assert!(blocks.reads < MAX_DEPTH);
    }
}
