//! Banyan tree types for event logs: [`EventTree`] ([`TreeTypes`]), keys, summaries, the
//! query, the tree configuration, and the glue between banyan and the block store.
//!
//! One tree per source. Each leaf holds up to [`TreeConfig::max_leaf_count`] payloads (JSON
//! text as dag-cbor strings, zstd-compressed); the keys of a leaf live columnar in its parent
//! branch ([`KeySeq`]), and higher branches hold one [`Summary`] per child, so queries skip
//! subtrees by looking only at branch nodes. Blocks are banyan's format: a dag-cbor
//! `[cipher_offset, [links...], bytes]` whose bytes are the zstd-compressed node, encrypted
//! with banyan's stream cipher under the all-zero key (shoal does not use banyan's encryption;
//! every node uses the same key so any node can read any tree).
//!
//! Invariant: the link type is a CIDv1 dag-cbor SHA2-256 of the block's bytes, so banyan's
//! links are exactly the store's CIDs.

mod glue;
mod key;
pub(crate) mod node;
mod query;
#[cfg(test)]
mod skip_tests;
mod summary;

pub(crate) use glue::{SqliteReader, Staged, Stager, Staging};
pub use key::{Key, KeySeq};
pub use query::EventQuery;
pub use summary::{Bloom, NameSet, Summary, SummarySeq, TagSet, MAX_EXACT_NAMES, MAX_EXACT_TAGS};

use crate::error::{Error, Result};
use banyan::{Config, Secrets, TreeTypes};

/// Banyan tree types of an event log.
#[derive(Debug, Clone)]
pub struct EventTree;

impl TreeTypes for EventTree {
    type Key = Key;
    type Summary = Summary;
    type KeySeq = KeySeq;
    type SummarySeq = SummarySeq;
    type Link = libipld::Cid;
}

/// The value stored per event: its payload's JSON text.
pub(crate) type Value = String;

/// The secrets every shoal tree uses (banyan's encryption is not used: all-zero keys).
pub(crate) fn secrets() -> Secrets {
    Secrets::default()
}

/// Checks that `data`, the block of `cid`, is a well-formed node of an event tree (a dag-cbor
/// block whose envelope, decryption, decompression and content all check out), as every block
/// of a peer's tree must be before its import walks it. The bytes are not hashed here: the
/// exchange and the store's puts check `cid` against them. Costs about one decompression of
/// the node, so a replicator can check fetched blocks before they reach the writer.
pub fn validate_block(cid: &crate::Cid, data: &[u8]) -> std::result::Result<(), String> {
    if cid.codec() != crate::cid::DAG_CBOR {
        return Err("a tree links only dag-cbor nodes".into());
    }
    node::validate(data)
}

/// Shape of event trees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeConfig {
    /// Most events in one leaf. Small enough that a selective query decompresses little for
    /// each leaf it cannot skip: 4,096 events of ~100 bytes are ~400 KB to decompress, where
    /// the 1 MiB leaves that 16,384 allowed made a rare-tag query ~7x slower (BENCHMARKS.md,
    /// tag query) for ~7% less stored bytes.
    pub max_leaf_count: usize,
    /// A leaf is full (sealed) once its compressed size reaches this many bytes (≤ 1 MiB).
    pub target_leaf_size: usize,
    /// A leaf is full once its uncompressed size reaches this many bytes (≤ 16 MiB); also
    /// the bound that stops decompression bombs.
    pub max_uncompressed_leaf_size: usize,
    /// Children (leaves) of a level-1 branch. Such a branch holds its leaves' keys (about 5
    /// bytes per event compressed), so it is kept small: a query that needs one leaf loads
    /// one level-1 branch, and 8 × 16k events of keys is a few hundred KB, not megabytes.
    pub max_key_branches: usize,
    /// Children of higher branches, which hold one bounded summary per child.
    pub max_summary_branches: usize,
    /// zstd level for appends: fast, since appends are on the publish path.
    pub zstd_level_append: i32,
    /// zstd level of the packing that `append` does itself (see `max_unpacked_depth`): it
    /// runs on the publish path, so moderate. Leaves it seals keep this level.
    pub zstd_level_auto_pack: i32,
    /// zstd level for explicit packing (`Writer::pack`), which runs in the background.
    pub zstd_level_pack: i32,
    /// The writer hands out a background pack ticket (`Writer::pack_ticket`) when the chain
    /// of unpacked appends is deeper than this, and append packs the tree itself at twice this
    /// depth, so reads stay fast even if nobody packs.
    pub max_unpacked_depth: u32,
}

impl Default for TreeConfig {
    fn default() -> Self {
        Self {
            max_leaf_count: 4 * 1024,
            target_leaf_size: 512 * 1024,
            max_uncompressed_leaf_size: 1024 * 1024,
            max_key_branches: 8,
            max_summary_branches: 32,
            zstd_level_append: 1,
            zstd_level_auto_pack: 3,
            zstd_level_pack: 10,
            max_unpacked_depth: 64,
        }
    }
}

impl TreeConfig {
    /// Tiny leaves and branches: interesting tree shapes from few events. Tests only.
    pub fn debug() -> Self {
        Self {
            max_leaf_count: 10,
            target_leaf_size: 10_000,
            max_uncompressed_leaf_size: 16 * 1024 * 1024,
            max_key_branches: 4,
            max_summary_branches: 4,
            zstd_level_append: 1,
            zstd_level_auto_pack: 2,
            zstd_level_pack: 3,
            max_unpacked_depth: 16,
        }
    }

    fn banyan(&self, zstd_level: i32) -> Config {
        Config {
            max_summary_branches: self.max_summary_branches,
            max_key_branches: self.max_key_branches,
            max_leaf_count: self.max_leaf_count,
            target_leaf_size: self.target_leaf_size,
            max_uncompressed_leaf_size: self.max_uncompressed_leaf_size,
            zstd_level,
        }
    }

    /// Config used by appends.
    pub(crate) fn append(&self) -> Config {
        self.banyan(self.zstd_level_append)
    }

    /// Config used by packing.
    pub(crate) fn pack(&self) -> Config {
        self.banyan(self.zstd_level_pack)
    }

    /// Config used by the packing inside `append`.
    pub(crate) fn auto_pack(&self) -> Config {
        self.banyan(self.zstd_level_auto_pack)
    }

    /// Checks the settings are ones banyan accepts.
    pub fn validate(&self) -> Result<()> {
        for c in [self.append(), self.auto_pack(), self.pack()] {
            c.validate()
                .map_err(|e| Error::Invalid(format!("tree config: {e}")))?;
        }
        if self.max_leaf_count == 0 {
            return Err(Error::Invalid("tree config: max_leaf_count is 0".into()));
        }
        // Compared with banyan's `i32` tree level: a bigger value would wrap to a negative
        // depth and make every append pack inline.
        if self.max_unpacked_depth > i32::MAX as u32 {
            return Err(Error::Invalid(format!(
                "tree config: max_unpacked_depth {} is over {}",
                self.max_unpacked_depth,
                i32::MAX
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_rejects_a_depth_that_wraps_banyan_levels() {
        assert!(TreeConfig::default().validate().is_ok());
        assert!(TreeConfig::debug().validate().is_ok());
        let deep = TreeConfig {
            max_unpacked_depth: i32::MAX as u32,
            ..TreeConfig::default()
        };
        assert!(deep.validate().is_ok());
        let wraps = TreeConfig {
            max_unpacked_depth: u32::MAX,
            ..TreeConfig::default()
        };
        assert!(wraps.validate().is_err());
    }
}
