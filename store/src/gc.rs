//! Incremental garbage collection: delete blocks that no alias reaches.
//!
//! Live = reachable (through `refs`) from any alias, or from a root retired less than
//! `grace` ago, or written less than `grace` ago (blocks put for an import that has not
//! happened yet). One call computes the live set with one recursive query and deletes at most
//! `budget` dead CIDs (block, its refs, its cid row) in one transaction, so a call's cost and
//! its WAL growth are bounded; call again while [`GcStats::more`] is true.
//!
//! After deleting, up to 16 MiB of free pages are handed back to the filesystem
//! (`auto_vacuum=INCREMENTAL`), so the file shrinks after packing instead of keeping the size
//! of the unpacked appends.
//!
//! Blocks stored as files (`files.rs`) lose their row in the transaction and their file right
//! after it commits; each call also sweeps one of the 256 block directories for files without a
//! row older than `grace` (what a crash between the two, or a batch that never committed, left).
//!
//! Invariant: GC never deletes a block reachable from an alias. Reachability uses only the
//! `refs` table, which holds the links of every present block (see `blocks.rs`).

use crate::{
    blocks, cid,
    error::Result,
    files::BlockFiles,
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
    /// Block files without a row removed by the sweep (left by a crash; `files.rs`).
    pub files_swept: u64,
    /// True when the budget was exhausted: there may be more garbage.
    pub more: bool,
}

/// Deletes at most `budget` unreachable CIDs, then sweeps block directory `shard` for files
/// without a row (`files.rs`).
pub(crate) fn collect(
    conn: &mut Connection,
    grace: Duration,
    budget: usize,
    shard: u8,
) -> Result<GcStats> {
    let cutoff = now_secs() - grace.as_secs() as i64;
    let tx = conn.transaction()?;
    tx.prepare_cached(schema::RETIRED_EXPIRE)?
        .execute(params![cutoff])?;
    type Row = (i64, Option<i64>, bool, Vec<u8>);
    let dead: Vec<Row> = {
        let mut stmt = tx.prepare_cached(schema::GARBAGE)?;
        let rows = stmt.query_map(params![cutoff, budget as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        rows.collect::<std::result::Result<_, _>>()?
    };
    let mut stats = GcStats {
        more: dead.len() >= budget,
        ..GcStats::default()
    };
    let mut files = Vec::new();
    for (id, len, file, cid) in &dead {
        let file = if *file {
            Some(cid::from_bytes(cid)?)
        } else {
            None
        };
        let deleted = blocks::delete(&tx, *id, *len, file)?;
        if let Some(bytes) = deleted.bytes {
            stats.blocks_deleted += 1;
            stats.bytes_freed += bytes;
        }
        files.extend(deleted.file);
        stats.cids_deleted += 1;
    }
    tx.commit()?;
    blocks::remove_files(conn, &files);
    // The deletes are committed: a sweep that fails (a directory unreadable) is retried when
    // this directory's turn comes again, and must not make the call look failed.
    if let Some(dir) = BlockFiles::of(conn) {
        match dir.sweep(conn, shard, grace) {
            Ok((swept, bytes)) => {
                stats.files_swept = swept;
                stats.bytes_freed += bytes;
            }
            Err(e) => tracing::warn!(error = %e, shard, "cannot sweep a block-file directory"),
        }
    }
    if stats.blocks_deleted > 0 {
        // Hand free pages back to the filesystem, bounded per call like the deletes (a no-op
        // on databases created before auto_vacuum=INCREMENTAL was set).
        // Stepped to completion: each step of this pragma frees pages.
        let mut stmt = conn.prepare(&format!(
            "PRAGMA incremental_vacuum({VACUUM_PAGES_PER_CALL})"
        ))?;
        let mut rows = stmt.query([])?;
        while rows.next()?.is_some() {}
    }
    Ok(stats)
}

/// Free pages returned to the filesystem per GC call (16 MiB at 4 KiB pages).
const VACUUM_PAGES_PER_CALL: u32 = 4096;

#[cfg(test)]
mod tests {
    use crate::{
        event::{NewEvent, SourceId},
        store::{Store, StoreConfig},
    };

    #[test]
    fn gc_shrinks_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let store = Store::open(&path, StoreConfig::debug()).unwrap();
        let mut w = store.writer().unwrap();
        let source = SourceId::new("s");
        for i in 0..300u64 {
            let payload = format!("{{\"i\":{i},\"pad\":\"{}\"}}", "y".repeat(300));
            let e = NewEvent {
                semantics: "s".into(),
                name: "n".into(),
                tags: vec![],
                lamport: i,
                timestamp: i,
                payload: serde_json::value::RawValue::from_string(payload).unwrap(),
            };
            w.append(&source, vec![e]).unwrap();
        }
        w.pack(&source).unwrap();
        w.checkpoint().unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        while w.gc(100_000).unwrap().blocks_deleted > 0 {}
        w.checkpoint().unwrap();
        let after = std::fs::metadata(&path).unwrap().len();
        let conn = rusqlite::Connection::open(&path).unwrap();
        let mode: i64 = conn
            .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, 2);
        let free: i64 = conn
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))
            .unwrap();
        assert_eq!(free, 0, "free pages went back to the filesystem");
        assert!(after < before, "{after} >= {before}");
    }
}
