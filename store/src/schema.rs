//! All SQL of the store: the schema, connection settings and every statement text.
//!
//! Tables:
//! - `cids(id, cid)`: every CID the store knows, present or only referenced. Ids are stable
//!   handles so `refs` and `aliases` stay small.
//! - `blocks(id, data)`: the bytes of present blocks (`id` = `cids.id`) stored inline.
//! - `files(id, size)`: present blocks whose bytes are a file beside the database (raw blocks
//!   of at least `files::FILE_MIN` bytes, see `files.rs`). A block is present when it has a
//!   `blocks` or a `files` row.
//! - `refs(parent, child)`: links of each present dag-cbor block, extracted once at put time,
//!   so reachability (GC, missing blocks, verify) is pure SQL and never decodes a block.
//! - `aliases(name, id)`: named pins (one per source's current tree, later one per blob).
//! - `retired(id, at)`: roots an alias moved away from, kept alive for a grace period so a
//!   query still walking an old root does not lose its blocks to GC.
//! - `meta(key, value)`: a small key/value store for the engine (lamport clock, ...).
//!
//! Invariant: a `refs` row exists only for a present parent block, and `cids.added` is the
//! time (seconds) the row or its block was last written; GC never deletes rows younger than
//! its grace period, so blocks put just before an import are not collected in between.

use crate::error::Result;
use rusqlite::Connection;
use std::time::Duration;

/// Schema version, in `PRAGMA user_version`.
/// 2 added `files` (large raw blocks as files): a build that knows only 1 would take those
/// blocks for missing.
pub(crate) const VERSION: i64 = 2;

const CREATE: &str = r#"
CREATE TABLE IF NOT EXISTS cids (
    id    INTEGER PRIMARY KEY,
    cid   BLOB NOT NULL UNIQUE,
    added INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS blocks (
    id   INTEGER PRIMARY KEY,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    id   INTEGER PRIMARY KEY,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS refs (
    parent INTEGER NOT NULL,
    child  INTEGER NOT NULL,
    PRIMARY KEY (parent, child)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS aliases (
    name TEXT PRIMARY KEY,
    id   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS retired (
    id INTEGER NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS retired_at ON retired(at);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;
"#;

/// Durability of a committed transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous=NORMAL` in WAL mode: a commit is written to the WAL file (write(2)) before
    /// COMMIT returns, so it survives the process being killed (kill -9, panic, OOM kill): the
    /// kernel still holds the written pages. Only an OS crash or power loss can lose the most
    /// recent commits, and even then the database stays consistent. One fsync per checkpoint
    /// instead of one per commit: this is what makes single-event appends fast.
    #[default]
    Process,
    /// `synchronous=FULL`: the WAL is fsynced at every commit, so commits also survive power
    /// loss, at the price of one fsync per transaction.
    PowerLoss,
}

/// How long a connection waits for a lock before failing with SQLITE_BUSY.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

fn sync_mode(durability: Durability) -> &'static str {
    match durability {
        Durability::Process => "NORMAL",
        Durability::PowerLoss => "FULL",
    }
}

/// Prepared statements kept per connection. rusqlite keeps 16 by default, fewer than the
/// store's distinct statements (~30), so a busy writer re-prepared statements on every call.
const STATEMENT_CACHE: usize = 64;

/// Query planner stability (`SQLITE_DBCONFIG_ENABLE_QPSG`): without it, this SQLite (3.54)
/// marks even `WHERE cids.cid = ?1` as depending on the bound value, so a cached statement
/// is re-parsed and re-planned at every step with a new value (`sqlite3Reprepare`: ~9x the
/// cost of the lookup itself, and ~10% of a replicating writer's CPU). Our statements have
/// one sensible plan each and the store never runs ANALYZE, so nothing is lost.
fn plan_once(conn: &Connection) -> Result<()> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

/// Settings for the write connection.
pub(crate) fn configure_writer(
    conn: &mut Connection,
    durability: Durability,
    wal_limit: u64,
) -> Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Write transactions take the write lock at BEGIN, where SQLite waits out the busy timeout.
    // A deferred one that reads first and then writes is refused at once (SQLITE_BUSY, no
    // waiting, to avoid deadlock) when the lock is held for a moment elsewhere, e.g. by a
    // checkpoint thread (SQLite readers also take it briefly to re-read a WAL header that was
    // being written): publishes failed with "database is locked" in 3 of ~40 mesh benchmark
    // runs once inserting a cid started with a lookup.
    conn.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    plan_once(conn)?;
    // Free pages go back to the filesystem (see `gc.rs`): packing and GC free most of what
    // unpacked appends wrote, and without this the file would keep that size forever. Only
    // takes effect on a new, empty database, so it comes before anything writes the header
    // (switching to WAL does).
    conn.pragma_update(None, "auto_vacuum", 2)?; // 2 = INCREMENTAL
                                                 // WAL: readers (queries, the inspector) never block the writer nor each other.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", sync_mode(durability))?;
    // After a checkpoint resets the WAL, truncate it to this size: keeps the file bounded even
    // after one huge transaction (the anchor system's WAL grew to gigabytes).
    conn.pragma_update(None, "journal_size_limit", wal_limit as i64)?;
    // Automatic PASSIVE checkpoints every ~4 MB of WAL (1000 pages of 4 KiB), the default made
    // explicit. For a store file, the writer turns them off once its checkpoint thread runs
    // (`checkpoint.rs`): an automatic checkpoint runs inside a commit.
    conn.pragma_update(None, "wal_autocheckpoint", 1000)?;
    conn.pragma_update(None, "foreign_keys", false)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "cache_size", -16384)?; // 16 MiB page cache
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > VERSION {
        return Err(crate::error::Error::Invalid(format!(
            "store schema version {version} is newer than this build understands ({VERSION}); \
             use a newer shoal"
        )));
    }
    conn.execute_batch(CREATE)?;
    conn.pragma_update(None, "user_version", VERSION)?;
    Ok(())
}

/// Settings for the checkpoint thread's connection (`checkpoint.rs`).
pub(crate) fn configure_checkpointer(
    conn: &Connection,
    durability: Durability,
    wal_limit: u64,
) -> Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "synchronous", sync_mode(durability))?;
    conn.pragma_update(None, "journal_size_limit", wal_limit as i64)?;
    // It never writes: its own automatic checkpoints would never trigger anyway.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    Ok(())
}

/// Settings for a read connection.
pub(crate) fn configure_reader(conn: &Connection) -> Result<()> {
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    plan_once(conn)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "cache_size", -8192)?; // 8 MiB page cache
    Ok(())
}

/// A store last written by a build before `files` (schema 1) has no such table, and a reader
/// cannot add one: an empty temporary one answers the same. Call before `query_only` is set
/// (it refuses temporary tables too); a read-only connection cannot make one at all.
pub(crate) fn files_standin(conn: &Connection) -> Result<()> {
    if !has_files_table(conn)? {
        conn.execute_batch(FILES_STANDIN)?;
    }
    Ok(())
}

/// Does the database have the `files` table (schema 2)?
pub(crate) fn has_files_table(conn: &Connection) -> Result<bool> {
    Ok(conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'files'",
        [],
        |r| r.get(0),
    )?)
}

const FILES_STANDIN: &str =
    "CREATE TEMP TABLE IF NOT EXISTS files (id INTEGER PRIMARY KEY, size INTEGER NOT NULL)";

pub(crate) const CID_ID: &str = "SELECT id FROM cids WHERE cid = ?1";
pub(crate) const CID_LOOKUP: &str = "SELECT id, added FROM cids WHERE cid = ?1";
pub(crate) const CID_NEW: &str = "INSERT INTO cids (cid, added) VALUES (?1, ?2)";
pub(crate) const CID_TOUCH: &str = "UPDATE cids SET added = ?2 WHERE id = ?1";
pub(crate) const BLOCK_INSERT: &str = "INSERT OR IGNORE INTO blocks (id, data) VALUES (?1, ?2)";
pub(crate) const FILE_INSERT: &str = "INSERT OR IGNORE INTO files (id, size) VALUES (?1, ?2)";
pub(crate) const INLINE_HAS: &str = "SELECT 1 FROM blocks WHERE id = ?1";
/// The inline bytes or the file size of a block (both NULL: known but absent).
pub(crate) const BLOCK_GET: &str = "SELECT blocks.data, files.size FROM cids \
     LEFT JOIN blocks ON blocks.id = cids.id LEFT JOIN files ON files.id = cids.id \
     WHERE cids.cid = ?1";
pub(crate) const BLOCK_HAS: &str = "SELECT 1 FROM cids WHERE cids.cid = ?1 AND \
     (EXISTS (SELECT 1 FROM blocks WHERE blocks.id = cids.id) \
     OR EXISTS (SELECT 1 FROM files WHERE files.id = cids.id))";
pub(crate) const REF_INSERT: &str = "INSERT OR IGNORE INTO refs (parent, child) VALUES (?1, ?2)";
pub(crate) const ALIAS_GET: &str =
    "SELECT cids.cid FROM aliases JOIN cids ON cids.id = aliases.id WHERE aliases.name = ?1";
pub(crate) const ALIAS_ID: &str = "SELECT id FROM aliases WHERE name = ?1";
pub(crate) const ALIAS_SET: &str = "INSERT INTO aliases (name, id) VALUES (?1, ?2) \
     ON CONFLICT(name) DO UPDATE SET id = excluded.id";
pub(crate) const ALIAS_DELETE: &str = "DELETE FROM aliases WHERE name = ?1";
pub(crate) const ALIAS_LIST: &str = "SELECT aliases.name, cids.cid FROM aliases \
     JOIN cids ON cids.id = aliases.id WHERE aliases.name >= ?1 AND aliases.name < ?2 \
     ORDER BY aliases.name";
pub(crate) const RETIRED_INSERT: &str = "INSERT INTO retired (id, at) VALUES (?1, ?2)";
pub(crate) const RETIRED_EXPIRE: &str = "DELETE FROM retired WHERE at <= ?1";
pub(crate) const META_GET: &str = "SELECT value FROM meta WHERE key = ?1";
pub(crate) const META_SET: &str = "INSERT INTO meta (key, value) VALUES (?1, ?2) \
     ON CONFLICT(key) DO UPDATE SET value = excluded.value";

/// Every id reachable from `?1` (a cid id), the root included.
pub(crate) const REACHABLE_FROM: &str = "WITH RECURSIVE reach(id) AS ( \
        SELECT ?1 \
        UNION SELECT refs.child FROM refs JOIN reach ON refs.parent = reach.id) \
     SELECT reach.id, cids.cid, blocks.id IS NOT NULL OR files.id IS NOT NULL, \
        coalesce(length(blocks.data), files.size) \
     FROM reach JOIN cids ON cids.id = reach.id LEFT JOIN blocks ON blocks.id = reach.id \
     LEFT JOIN files ON files.id = reach.id";

/// CIDs reachable from `?1` whose block is absent.
pub(crate) const MISSING_FROM: &str = "WITH RECURSIVE reach(id) AS ( \
        SELECT ?1 \
        UNION SELECT refs.child FROM refs JOIN reach ON refs.parent = reach.id) \
     SELECT cids.cid FROM reach JOIN cids ON cids.id = reach.id \
     WHERE NOT EXISTS (SELECT 1 FROM blocks WHERE blocks.id = reach.id) \
     AND NOT EXISTS (SELECT 1 FROM files WHERE files.id = reach.id)";

/// Garbage: ids not reachable from any alias nor from a root retired after `?1`, and not
/// written after `?1` (`?1` = now − grace, in seconds); at most `?2` of them. Per id: its
/// bytes (NULL when absent), whether they are a file, its CID.
/// GC candidates (`gc.rs`): dead CIDs (not reachable from an alias or a root retired after
/// ?1, written at or before ?1), top down: first those no block links to, then, breadth first,
/// the dead CIDs they link to; at most ?2. Top down so that a limited mark still finds CIDs
/// whose parents are all among the candidates.
pub(crate) const GARBAGE: &str = "WITH RECURSIVE live(id) AS ( \
        SELECT id FROM aliases \
        UNION SELECT id FROM retired WHERE at > ?1 \
        UNION SELECT refs.child FROM refs JOIN live ON refs.parent = live.id), \
     dead(id) AS ( \
        SELECT cids.id FROM cids WHERE cids.added <= ?1 \
            AND cids.id NOT IN (SELECT id FROM live) \
            AND cids.id NOT IN (SELECT child FROM refs) \
        UNION SELECT refs.child FROM refs JOIN dead ON refs.parent = dead.id \
            JOIN cids ON cids.id = refs.child \
            WHERE cids.added <= ?1 AND refs.child NOT IN (SELECT id FROM live)) \
     SELECT id FROM dead LIMIT ?2";
pub(crate) const ALL_REFS: &str = "SELECT parent, child FROM refs";
/// A GC candidate as the sweep re-reads it: when last touched, its size, whether a file.
pub(crate) const GC_CANDIDATE: &str =
    "SELECT cids.added, coalesce(length(blocks.data), files.size), \
     files.id IS NOT NULL, cids.cid \
     FROM cids LEFT JOIN blocks ON blocks.id = cids.id LEFT JOIN files ON files.id = cids.id \
     WHERE cids.id = ?1";
pub(crate) const GC_DELETE_BLOCK: &str = "DELETE FROM blocks WHERE id = ?1";
pub(crate) const GC_DELETE_FILE: &str = "DELETE FROM files WHERE id = ?1";
pub(crate) const GC_DELETE_REFS: &str = "DELETE FROM refs WHERE parent = ?1";
pub(crate) const GC_DELETE_CID: &str = "DELETE FROM cids WHERE id = ?1";

pub(crate) const COUNT_BLOCKS: &str = "SELECT count(*), coalesce(sum(length(data)), 0) FROM blocks";
pub(crate) const COUNT_FILES: &str = "SELECT count(*), coalesce(sum(size), 0) FROM files";
pub(crate) const COUNT_CIDS: &str = "SELECT count(*) FROM cids";
pub(crate) const ALL_ALIASES: &str =
    "SELECT aliases.name, cids.cid FROM aliases JOIN cids ON cids.id = aliases.id ORDER BY 1";
pub(crate) const ALIASES_WITHOUT_ROOT: &str = "SELECT aliases.name, cids.cid FROM aliases \
     JOIN cids ON cids.id = aliases.id \
     WHERE NOT EXISTS (SELECT 1 FROM blocks WHERE blocks.id = aliases.id) \
     AND NOT EXISTS (SELECT 1 FROM files WHERE files.id = aliases.id) ORDER BY 1";

/// Seconds since the Unix epoch, for `added` / `retired.at`. Never goes back within the
/// process, even if the wall clock does: GC's sweep tells what was touched since its mark by a
/// later `added` (`gc.rs`).
pub(crate) fn now_secs() -> i64 {
    static LATEST: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let before = LATEST.fetch_max(wall, std::sync::atomic::Ordering::Relaxed);
    before.max(wall)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::{params, OptionalExtension, StatementStatus};

    /// A cached lookup bound to new values is planned once (see `plan_once`).
    #[test]
    fn cached_statements_are_not_reprepared_per_value() {
        let mut conn = Connection::open_in_memory().unwrap();
        configure_writer(&mut conn, Durability::Process, 1 << 20).unwrap();
        for i in 0..10u8 {
            let mut stmt = conn.prepare_cached(BLOCK_GET).unwrap();
            let got: Option<Vec<u8>> = stmt
                .query_row(params![vec![i; 36]], |r| r.get(0))
                .optional()
                .unwrap();
            assert_eq!(got, None);
            assert_eq!(stmt.get_status(StatementStatus::RePrepare), 0);
        }
    }
}
