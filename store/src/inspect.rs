//! Views for the store inspector (`shoal store ...`, rendered by the CLI): tree shapes,
//! decoded blocks, verification and statistics. Read-only; works on a read-only store while a
//! node writes.
//!
//! Invariant: nothing here trusts block contents: missing or corrupt blocks are reported, not
//! panicked on.

use crate::{
    cid::Cid,
    error::{Error, Result},
    event::SourceId,
    log::Reader,
};
use serde::Serialize;

/// One node of a tree, for `shoal store tree`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeShape {
    /// Preorder number; the root is 0.
    pub id: usize,
    pub parent: Option<usize>,
    /// 0 = leaf.
    pub level: u32,
    #[serde(serialize_with = "crate::cid::serialize_opt")]
    pub cid: Option<Cid>,
    /// Offsets covered, inclusive.
    pub first_offset: u64,
    pub last_offset: u64,
    pub count: u64,
    pub sealed: bool,
    /// Bytes of the node's own block as stored.
    pub block_bytes: Option<u64>,
    /// Leaves: compressed payload bytes; branches: of the whole subtree.
    pub value_bytes: u64,
    /// Leaves: uncompressed payload bytes (dag-cbor), when the leaf could be read.
    pub uncompressed_bytes: Option<u64>,
    /// The node's summary, as JSON.
    pub summary: serde_json::Value,
}

/// A source's tree, node by node in preorder.
#[derive(Debug, Clone, Serialize)]
pub struct TreeShape {
    pub source: SourceId,
    #[serde(serialize_with = "crate::cid::serialize")]
    pub root: Cid,
    pub levels: u32,
    pub count: u64,
    pub nodes: Vec<NodeShape>,
}

/// One block, decoded.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BlockView {
    /// dag-cbor as JSON (links as `{"/": cid}`, bytes as `{"/": {"bytes": hex}}`); banyan
    /// nodes additionally decrypted and decompressed into `items`.
    DagCbor {
        #[serde(serialize_with = "crate::cid::serialize")]
        cid: Cid,
        length: u64,
        value: serde_json::Value,
    },
    /// Raw bytes.
    Raw {
        #[serde(serialize_with = "crate::cid::serialize")]
        cid: Cid,
        length: u64,
        hex: String,
    },
}

/// Kind of a verification problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    Missing,
    HashMismatch,
    Corrupt(String),
}

/// One bad block and the alias (tree) it belongs to.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub alias: String,
    #[serde(serialize_with = "crate::cid::serialize")]
    pub cid: Cid,
    pub kind: ProblemKind,
}

/// Result of [`Reader::verify`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub aliases: u64,
    pub blocks_checked: u64,
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// True when every alias's tree is complete and every block matches its hash.
    pub fn is_sound(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Per-source statistics.
#[derive(Debug, Clone, Serialize)]
pub struct SourceStats {
    pub source: SourceId,
    pub events: u64,
    /// Bytes of all blocks reachable from the source's root.
    pub bytes: u64,
    pub bytes_per_event: f64,
    /// Payload JSON bytes / compressed leaf bytes.
    pub compression_ratio: f64,
}

/// Whole-store statistics.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub blocks: u64,
    pub bytes: u64,
    pub cids: u64,
    pub aliases: u64,
    pub sources: Vec<SourceStats>,
}

impl Reader {
    /// The shape of `source`'s tree.
    pub fn tree_shape(&self, source: &SourceId) -> Result<Option<TreeShape>> {
        let _ = source;
        Err(Error::Invalid("tree_shape: not implemented yet".into()))
    }

    /// One block decoded, if present.
    pub fn block(&self, cid: &Cid) -> Result<Option<BlockView>> {
        let _ = cid;
        Err(Error::Invalid("block: not implemented yet".into()))
    }

    /// Walks every alias: every reachable block present and matching its hash.
    pub fn verify(&self) -> Result<VerifyReport> {
        Err(Error::Invalid("verify: not implemented yet".into()))
    }

    /// Counts and sizes.
    pub fn stats(&self) -> Result<Stats> {
        Err(Error::Invalid("stats: not implemented yet".into()))
    }
}
