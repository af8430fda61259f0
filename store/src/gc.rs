//! Incremental garbage collection: delete blocks that no alias reaches.
//!
//! Live = reachable (through `refs`) from any alias, or from a root retired less than
//! `grace` ago, or written less than `grace` ago (blocks put for an import that has not
//! happened yet). GC runs in two phases so that the writer is never held for a walk of the
//! whole store:
//!
//! - **mark** ([`mark`]): one recursive query computes the live set and returns up to `limit`
//!   dead CIDs ("candidates"), ordered parents before children. In the node it runs on a read
//!   connection (a snapshot) while commits go on. A candidate with a parent that is not a
//!   candidate itself (young, or cut off by the limit) is left out, with everything below it.
//! - **sweep** ([`sweep`]): the writer deletes candidates in that order in bounded steps (block,
//!   its refs, its cid row; one transaction per step), re-checking each: a candidate written
//!   or linked to since the mark is kept, and so is every candidate below a kept one.
//!
//! Why the re-check suffices: after the mark, a candidate becomes reachable again only through
//! a new link or alias to it or to a candidate above it. Every put touches the block and each
//! of its children, and every alias move touches its target (`cids.added`, `blocks.rs`), with
//! a clock that never goes back ([`schema::now_secs`]); [`GcStart`] is taken on the writer
//! before the mark's snapshot, so every write the snapshot does not see touches with a time
//! after the mark's cutoff. A touched candidate is kept and passes that on to the candidates
//! below it; candidates whose parents are not all candidates were left out by the mark.
//!
//! After deleting, free pages are handed back to the filesystem in bounded steps ([`vacuum`];
//! `auto_vacuum=INCREMENTAL`), so the file shrinks after packing instead of keeping the size
//! of the unpacked appends.
//!
//! Blocks stored as files (`files.rs`) lose their row in the transaction and their file right
//! after it commits; each finished sweep also sweeps one of the 256 block directories for files
//! without a row older than `grace` (what a crash between the two, or a batch that never
//! committed, left).
//!
//! Invariant: GC never deletes a block reachable from an alias. Reachability uses only the
//! `refs` table, which holds the links of every present block (see `blocks.rs`).

use crate::{
    blocks, cid,
    error::Result,
    files::BlockFiles,
    schema::{self, now_secs},
};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// What GC freed.
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
    /// True when the mark's limit was reached: there may be more garbage.
    pub more: bool,
}

impl GcStats {
    fn add(&mut self, other: &GcStats) {
        self.blocks_deleted += other.blocks_deleted;
        self.bytes_freed += other.bytes_freed;
        self.cids_deleted += other.cids_deleted;
        self.files_swept += other.files_swept;
        self.more |= other.more;
    }
}

/// The start of a GC round, taken on the writer ([`crate::Writer::gc_start`]) before the mark's
/// snapshot: the time every later write touches with (see the module doc).
#[derive(Debug, Clone, Copy)]
pub struct GcStart {
    /// Blocks written (or linked to, or aliased) at or before this are candidates.
    cutoff: i64,
}

impl GcStart {
    /// For a mark on another connection than the sweep's: writes may come between the two, so
    /// the cutoff is at least a second back (a touch in the mark's own second must count as
    /// after it).
    pub(crate) fn concurrent(grace: Duration) -> GcStart {
        GcStart::exact(grace.max(Duration::from_secs(1)))
    }

    /// For a mark and sweep with no write between them (one call on the writer).
    pub(crate) fn exact(grace: Duration) -> GcStart {
        let grace = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
        GcStart {
            cutoff: now_secs().saturating_sub(grace),
        }
    }
}

/// The dead CIDs one mark found, parents before children, and how far the sweep got.
#[derive(Debug)]
pub struct GcMark {
    cutoff: i64,
    /// Candidates in sweep order, each with its parents (all candidates, earlier in the order).
    order: Vec<(i64, Vec<i64>)>,
    /// Position of the next candidate to sweep.
    next: usize,
    /// Candidates found touched at the sweep, and the candidates below them.
    kept: HashSet<i64>,
    /// Freed so far by this mark's sweep; `more`: the mark stopped at its limit.
    freed: GcStats,
}

impl GcMark {
    /// Every candidate has been swept (deleted or kept).
    pub fn is_swept(&self) -> bool {
        self.next >= self.order.len()
    }

    /// Candidates found by the mark.
    pub fn candidates(&self) -> usize {
        self.order.len()
    }

    /// What the sweep freed so far; `more` when the mark stopped at its limit.
    pub fn freed(&self) -> &GcStats {
        &self.freed
    }
}

/// Finds up to `limit` dead CIDs (module doc). Reads only; one read transaction, so the live set
/// and the links come from one snapshot.
pub(crate) fn mark(conn: &mut Connection, start: GcStart, limit: usize) -> Result<GcMark> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Deferred)?;
    let dead: Vec<i64> = {
        let mut stmt = tx.prepare_cached(schema::GARBAGE)?;
        let rows = stmt.query_map(params![start.cutoff, limit as i64], |r| r.get(0))?;
        rows.collect::<std::result::Result<_, _>>()?
    };
    let truncated = dead.len() >= limit;
    let candidates: HashSet<i64> = dead.iter().copied().collect();
    // The parents of each candidate. refs has no index by child: one pass over it, which costs
    // about what the live-set query did.
    let mut parents: HashMap<i64, Vec<i64>> = HashMap::new();
    if !candidates.is_empty() {
        let mut stmt = tx.prepare_cached(schema::ALL_REFS)?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let child: i64 = row.get(1)?;
            if candidates.contains(&child) {
                parents.entry(child).or_default().push(row.get(0)?);
            }
        }
    }
    drop(tx);
    Ok(GcMark {
        cutoff: start.cutoff,
        order: sweep_order(&dead, &candidates, parents),
        next: 0,
        kept: HashSet::new(),
        freed: GcStats {
            more: truncated,
            ..GcStats::default()
        },
    })
}

/// Orders `dead` (as a set: `candidates`) parents before children (Kahn's algorithm over the
/// links among them), leaving out every candidate with a parent outside it, and everything
/// below it.
fn sweep_order(
    dead: &[i64],
    candidates: &HashSet<i64>,
    mut parents: HashMap<i64, Vec<i64>>,
) -> Vec<(i64, Vec<i64>)> {
    let mut children: HashMap<i64, Vec<i64>> = HashMap::new();
    let mut waiting: HashMap<i64, usize> = HashMap::new();
    let mut ready: Vec<i64> = Vec::new();
    for &id in dead {
        let of = parents.get(&id).map(Vec::as_slice).unwrap_or_default();
        if of.iter().any(|p| !candidates.contains(p)) {
            continue;
        }
        for &p in of {
            children.entry(p).or_default().push(id);
        }
        if of.is_empty() {
            ready.push(id);
        } else {
            waiting.insert(id, of.len());
        }
    }
    // What is below a left-out candidate never becomes ready: left out too.
    let mut order = Vec::with_capacity(dead.len());
    while let Some(id) = ready.pop() {
        for child in children.get(&id).map(Vec::as_slice).unwrap_or_default() {
            if let Some(n) = waiting.get_mut(child) {
                *n -= 1;
                if *n == 0 {
                    waiting.remove(child);
                    ready.push(*child);
                }
            }
        }
        order.push((id, parents.remove(&id).unwrap_or_default()));
    }
    order
}

/// Sweeps up to `budget` candidates of `mark` in one transaction (module doc). When the last
/// candidate is swept, also sweeps block directory `shard` for files without a row
/// (`files.rs`). Returns what this step freed.
pub(crate) fn sweep(
    conn: &mut Connection,
    mark: &mut GcMark,
    budget: usize,
    shard: u8,
    grace: Duration,
) -> Result<GcStats> {
    let mut stats = GcStats::default();
    let tx = conn.transaction()?;
    if mark.next == 0 {
        tx.prepare_cached(schema::RETIRED_EXPIRE)?
            .execute(params![mark.cutoff])?;
    }
    let mut files = Vec::new();
    let end = mark
        .next
        .saturating_add(budget.max(1))
        .min(mark.order.len());
    for (id, parents) in &mark.order[mark.next..end] {
        if parents.iter().any(|p| mark.kept.contains(p)) {
            mark.kept.insert(*id);
            continue;
        }
        type Row = (i64, Option<i64>, bool, Vec<u8>);
        let row: Option<Row> = tx
            .prepare_cached(schema::GC_CANDIDATE)?
            .query_row(params![id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()?;
        let Some((added, len, file, cid)) = row else {
            continue; // deleted since the mark (a blob delete)
        };
        if added > mark.cutoff {
            // Written, linked to or aliased since the mark (or a new row under a reused id).
            mark.kept.insert(*id);
            continue;
        }
        let file = if file {
            Some(cid::from_bytes(&cid)?)
        } else {
            None
        };
        let deleted = blocks::delete(&tx, *id, len, file)?;
        if let Some(bytes) = deleted.bytes {
            stats.blocks_deleted += 1;
            stats.bytes_freed += bytes;
        }
        files.extend(deleted.file);
        stats.cids_deleted += 1;
    }
    mark.next = end;
    tx.commit()?;
    blocks::remove_files(conn, &files);
    if mark.is_swept() {
        // The deletes are committed: a sweep that fails (a directory unreadable) is retried
        // when this directory's turn comes again, and must not make the call look failed.
        if let Some(dir) = BlockFiles::of(conn) {
            match dir.sweep(conn, shard, grace) {
                Ok((swept, bytes)) => {
                    stats.files_swept = swept;
                    stats.bytes_freed += bytes;
                }
                Err(e) => tracing::warn!(error = %e, shard, "cannot sweep a block-file directory"),
            }
        }
    }
    mark.freed.add(&stats);
    Ok(stats)
}

/// Hands up to `pages` free pages back to the filesystem. Returns whether another call would
/// hand back more: free pages remain and this call freed some (on a database created before
/// auto_vacuum=INCREMENTAL was set the pragma frees nothing, so this is false at once).
pub(crate) fn vacuum(conn: &Connection, pages: u32) -> Result<bool> {
    let free = |conn: &Connection| -> Result<i64> {
        Ok(conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?)
    };
    let before = free(conn)?;
    if before == 0 {
        return Ok(false);
    }
    // Stepped to completion: each step of this pragma frees pages.
    let mut stmt = conn.prepare(&format!("PRAGMA incremental_vacuum({pages})"))?;
    let mut rows = stmt.query([])?;
    while rows.next()?.is_some() {}
    let after = free(conn)?;
    Ok(after > 0 && after < before)
}

/// Free pages returned to the filesystem per [`crate::Writer::gc`] call (16 MiB at 4 KiB pages).
pub(crate) const VACUUM_PAGES_PER_CALL: u32 = 4096;

#[cfg(test)]
mod tests {
    use super::sweep_order;
    use crate::{
        cid::{cid_of, Cid, DAG_CBOR, RAW},
        event::{NewEvent, SourceId},
        store::{Store, StoreConfig},
    };
    use libipld::{cbor::DagCborCodec, codec::Codec, Ipld};
    use std::collections::HashMap;

    /// A store with small trees and no GC grace, its file's path, and its directory.
    fn open() -> (tempfile::TempDir, std::path::PathBuf, Store) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let store = Store::open(&path, StoreConfig::debug()).unwrap();
        (dir, path, store)
    }

    /// A dag-cbor block linking to `children`.
    fn node(children: &[Cid]) -> (Cid, Vec<u8>) {
        let ipld = Ipld::List(
            children
                .iter()
                .map(|c| Ipld::Link(crate::cid::to_ipld(c).unwrap()))
                .collect(),
        );
        let data = DagCborCodec.encode(&ipld).unwrap();
        (cid_of(DAG_CBOR, &data), data)
    }

    /// Candidates are swept parents first; one whose parent is not a candidate is left out, and
    /// so is everything below it.
    #[test]
    fn the_sweep_order_puts_parents_first_and_leaves_out_what_has_other_parents() {
        // 1 -> 2 -> 3; 4 -> 5 with 5 also linked from 9 (not a candidate); 5 -> 6.
        let parents = HashMap::from([(2, vec![1]), (3, vec![2]), (5, vec![4, 9]), (6, vec![5])]);
        let dead = [3, 6, 5, 2, 4, 1];
        let order: Vec<i64> = sweep_order(&dead, &dead.into_iter().collect(), parents)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let at = |id| order.iter().position(|&x| x == id);
        assert_eq!(order.len(), 4, "{order:?}");
        assert!(at(1) < at(2) && at(2) < at(3), "{order:?}");
        assert!(
            at(4).is_some() && at(5).is_none() && at(6).is_none(),
            "{order:?}"
        );
    }

    /// Issue 12 (GC off the writer): the mark runs on a reader while the writer goes on. A
    /// candidate that a block written after the mark links to is kept by the sweep, and so is
    /// everything below it (which the new write did not touch); other candidates go.
    #[test]
    fn a_candidate_linked_to_after_the_mark_is_kept_with_everything_below_it() {
        let (_dir, path, store) = open();
        let mut w = store.writer().unwrap();
        let leaf = b"leaf".to_vec();
        let leaf_cid = cid_of(RAW, &leaf);
        let (mid, mid_data) = node(&[leaf_cid]);
        let (top, top_data) = node(&[mid]);
        let other = b"other".to_vec();
        let other_cid = cid_of(RAW, &other);
        w.put_blocks(&[
            (leaf_cid, leaf),
            (mid, mid_data),
            (top, top_data),
            (other_cid, other),
        ])
        .unwrap();
        // Written long ago, and nothing pins them: all four are garbage.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute("UPDATE cids SET added = added - 100", [])
            .unwrap();

        let start = w.gc_start();
        let mut mark = store.reader().unwrap().gc_mark(start, 100).unwrap();
        assert_eq!(mark.candidates(), 4);
        // Meanwhile the writer stores a new root that links to `mid`, and pins it.
        let (new_root, new_data) = node(&[mid, mid]);
        w.put_blocks(&[(new_root, new_data)]).unwrap();
        w.set_alias("blob/new", Some(&new_root)).unwrap();
        while !mark.is_swept() {
            w.gc_sweep(&mut mark, 1).unwrap();
        }

        let r = store.reader().unwrap();
        assert!(r.has_block(&new_root).unwrap());
        assert!(r.has_block(&mid).unwrap(), "linked to after the mark");
        assert!(r.has_block(&leaf_cid).unwrap(), "below a kept candidate");
        assert!(!r.has_block(&top).unwrap());
        assert!(!r.has_block(&other_cid).unwrap());
        assert_eq!(mark.freed().blocks_deleted, 2);
        assert!(r.missing_blocks(&new_root).unwrap().is_empty());
    }

    /// A mark limited to fewer candidates than there is garbage still gets somewhere on a tree
    /// whose root was stored before its children (a fetched blob): the mark goes top down.
    #[test]
    fn a_small_limit_works_off_a_tree_stored_root_first() {
        let (_dir, _, store) = open();
        let mut w = store.writer().unwrap();
        let leaves: Vec<(Cid, Vec<u8>)> = (0..50u32)
            .map(|i| {
                let data = i.to_be_bytes().to_vec();
                (cid_of(RAW, &data), data)
            })
            .collect();
        let ids: Vec<Cid> = leaves.iter().map(|(c, _)| *c).collect();
        let (root, root_data) = node(&ids);
        w.put_blocks(&[(root, root_data)]).unwrap();
        w.put_blocks(&leaves).unwrap();
        let mut deleted = 0;
        for _ in 0..20 {
            let stats = w.gc(7).unwrap();
            deleted += stats.blocks_deleted;
            if !stats.more {
                break;
            }
        }
        assert_eq!(deleted, 51);
    }

    #[test]
    fn gc_shrinks_the_file() {
        let (_dir, path, store) = open();
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
