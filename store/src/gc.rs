//! Incremental garbage collection: delete blocks that no alias reaches.
//!
//! Live = reachable (through `refs`) from any alias, or from a root retired less than
//! `grace` ago, or written less than `grace` ago (blocks put for an import that has not
//! happened yet). One call computes the live set with one recursive query and deletes at most
//! `budget` dead CIDs (block, its refs, its cid row) in one transaction, so a call's cost and
//! its WAL growth are bounded; call again while [`GcStats::more`] is true.
//!
//! Invariant: GC never deletes a block reachable from an alias. Reachability uses only the
//! `refs` table, which holds the links of every present block (see `blocks.rs`).

use crate::{
    error::Result,
    schema::{self, now_secs},
};
use rusqlite::{params, Connection};
use serde::Serialize;
use std::time::Duration;

/// What one GC call freed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcStats {
    /// Blocks deleted.
    pub blocks_deleted: u64,
    /// Bytes of block data deleted.
    pub bytes_freed: u64,
    /// CID rows deleted (blocks plus placeholders of never-fetched links).
    pub cids_deleted: u64,
    /// True when the budget was exhausted: there may be more garbage.
    pub more: bool,
}

/// Deletes at most `budget` unreachable CIDs.
pub(crate) fn collect(conn: &mut Connection, grace: Duration, budget: usize) -> Result<GcStats> {
    let cutoff = now_secs() - grace.as_secs() as i64;
    let tx = conn.transaction()?;
    tx.prepare_cached(schema::RETIRED_EXPIRE)?
        .execute(params![cutoff])?;
    let dead: Vec<(i64, Option<i64>)> = {
        let mut stmt = tx.prepare_cached(schema::GARBAGE)?;
        let rows = stmt.query_map(params![cutoff, budget as i64], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        rows.collect::<std::result::Result<_, _>>()?
    };
    let mut stats = GcStats {
        more: dead.len() >= budget,
        ..GcStats::default()
    };
    {
        let mut del_block = tx.prepare_cached(schema::GC_DELETE_BLOCK)?;
        let mut del_refs = tx.prepare_cached(schema::GC_DELETE_REFS)?;
        let mut del_cid = tx.prepare_cached(schema::GC_DELETE_CID)?;
        for (id, len) in &dead {
            if let Some(len) = len {
                del_block.execute(params![id])?;
                stats.blocks_deleted += 1;
                stats.bytes_freed += (*len).max(0) as u64;
            }
            del_refs.execute(params![id])?;
            del_cid.execute(params![id])?;
            stats.cids_deleted += 1;
        }
    }
    tx.commit()?;
    Ok(stats)
}
