//! The bounded integrity check a node runs when it opens its store (DESIGN.md: "The store
//! checks integrity at startup"). The complete check is `shoal store verify`
//! ([`Reader::verify`](crate::Reader::verify)): it reads and hashes every reachable block, in
//! time proportional to the store. This one must not delay a start by that much, so it checks
//! what a node touches first, in time proportional to the number of aliases and sources:
//!
//! - every alias's root block is present (one SQL query over `aliases`): a source's tree, a
//!   pinned or cached blob, an upload in progress;
//! - every source's tree opens and its latest event reads: the root and the path down to the
//!   last leaf, the leaf the next append extends and the events the Lamport clock recovers from
//!   (a few block reads per source);
//! - SQLite's `PRAGMA quick_check` (page, b-tree and record structure; no index cross-check)
//!   when file and WAL hold at most [`QUICK_CHECK_MAX_BYTES`]: it reads them whole, so a larger
//!   store skips it and says so in the report. See `BENCHMARKS.md` ("Start-up check") for what it
//!   costs.
//!
//! Not checked here: blocks below the last leaf of each tree, blob chunks, hashes.
//!
//! Invariant: a store that fails is reported as [`Error::Damaged`] naming the first problem and
//! the command that lists them all; nothing is changed or repaired.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::blocks;
use crate::error::{Error, Result};
use crate::event::EventFilter;
use crate::store::Store;

/// Largest store (file plus WAL, bytes) whose SQLite structure is checked at start-up; above
/// it that part is skipped. `quick_check` reads every page: measured here (BENCHMARKS.md,
/// "Start-up check") at ~1.3 GB/s from the page cache (a restarted process) but ~60 MB/s from a
/// cold disk (the first start after a reboot), so 64 MiB costs at most about a second.
pub const QUICK_CHECK_MAX_BYTES: u64 = 64 << 20;

/// What the start-up check did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenCheck {
    pub aliases: u64,
    pub sources: u64,
    /// `quick_check` ran (`true`) or was skipped because file and WAL hold more than
    /// [`QUICK_CHECK_MAX_BYTES`].
    pub quick_check: bool,
    /// The store file plus its WAL.
    pub file_bytes: u64,
    pub took: Duration,
}

impl Store {
    /// The bounded start-up check (module doc). `Err(Error::Damaged)` when the store is damaged;
    /// other errors when it cannot be read at all.
    pub fn check_on_open(&self) -> Result<OpenCheck> {
        self.check_inner().map_err(|e| match e {
            // SQLite saw a malformed page while reading: that is damage too.
            Error::Sqlite(rusqlite::Error::SqliteFailure(f, _))
                if matches!(
                    f.code,
                    rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase
                ) =>
            {
                damaged(self.path(), format!("SQLite reports: {f}"))
            }
            e => e,
        })
    }

    fn check_inner(&self) -> Result<OpenCheck> {
        let start = Instant::now();
        let damaged = |problem: String| damaged(self.path(), problem);
        let reader = self.reader()?;
        let absent = {
            let conn = reader.lock()?;
            blocks::aliases_without_root(&conn)?
        };
        if let Some((alias, root)) = absent.first() {
            return Err(damaged(format!(
                "the root block {root} of `{alias}` is missing{}",
                match absent.len() {
                    1 => String::new(),
                    n => format!(" ({} aliases lack their root)", n),
                }
            )));
        }
        let aliases = {
            let conn = reader.lock()?;
            blocks::all_aliases(&conn)?.len() as u64
        };
        let sources = reader
            .sources()
            .map_err(|e| damaged(format!("a source's tree cannot be opened: {e}")))?;
        for info in &sources {
            let last = info.last_offset;
            let read = reader
                .events(&info.source, last..=last, &EventFilter::all(), false)
                .and_then(|mut events| events.next().transpose());
            match read {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(damaged(format!(
                        "the latest event ({last}) of source {} is not in its tree",
                        info.source
                    )))
                }
                Err(e) => {
                    return Err(damaged(format!(
                        "the latest event ({last}) of source {} cannot be read: {e}",
                        info.source
                    )))
                }
            }
        }
        let file_bytes = std::fs::metadata(self.path())?.len() + wal_bytes(self.path());
        let quick_check = file_bytes <= QUICK_CHECK_MAX_BYTES;
        if quick_check {
            let conn = reader.lock()?;
            let mut stmt = conn.prepare("PRAGMA quick_check")?;
            let found: Vec<String> = stmt
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<std::result::Result<_, _>>()?;
            if found.first().map(String::as_str) != Some("ok") {
                return Err(damaged(format!(
                    "SQLite's quick_check found: {}",
                    found.join("; ")
                )));
            }
        }
        let report = OpenCheck {
            aliases,
            sources: sources.len() as u64,
            quick_check,
            file_bytes,
            took: start.elapsed(),
        };
        tracing::info!(
            aliases = report.aliases,
            sources = report.sources,
            file_bytes,
            quick_check = if quick_check {
                "ok"
            } else {
                "skipped (file too large)"
            },
            took_ms = report.took.as_secs_f64() * 1e3,
            "store start-up check passed"
        );
        Ok(report)
    }
}

/// Bytes in the store's WAL file (`<file>-wal`), 0 if there is none.
fn wal_bytes(path: &Path) -> u64 {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(wal).map_or(0, |m| m.len())
}

fn damaged(path: &Path, problem: String) -> Error {
    Error::Damaged {
        path: path.to_path_buf(),
        data_dir: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
        problem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NewEvent, SourceId, StoreConfig};
    use serde_json::value::RawValue;

    const FILE: &str = "store.sqlite";

    /// A closed store with `n` events of one source, appended one by one (a deep debug tree).
    fn store_with_events(dir: &Path, n: u64) {
        let store = Store::open(&dir.join(FILE), StoreConfig::debug()).unwrap();
        let mut w = store.writer().unwrap();
        for i in 0..n {
            let e = NewEvent {
                semantics: "s".into(),
                name: "n".into(),
                tags: vec![],
                lamport: i,
                timestamp: i,
                payload: RawValue::from_string(format!("{{\"i\":{i}}}")).unwrap(),
            };
            w.append(&SourceId::new("src"), vec![e]).unwrap();
        }
    }

    /// Deletes block rows as a disk fault or a careless tool would (`sql` selects their ids).
    fn delete_blocks(dir: &Path, sql: &str) {
        let conn = rusqlite::Connection::open(dir.join(FILE)).unwrap();
        let n = conn
            .execute(&format!("DELETE FROM blocks WHERE id IN ({sql})"), [])
            .unwrap();
        assert!(n > 0, "{sql} deleted nothing");
    }

    fn check(dir: &Path) -> Result<OpenCheck> {
        Store::open(&dir.join(FILE), StoreConfig::debug())
            .unwrap()
            .check_on_open()
    }

    fn expect_damaged(dir: &Path, mentions: &str) {
        match check(dir) {
            Err(e @ Error::Damaged { .. }) => {
                let text = e.to_string();
                assert!(text.contains(mentions), "{text}");
                assert!(text.contains("shoal store verify --data-dir"), "{text}");
            }
            other => panic!("expected Damaged, got {other:?}"),
        }
    }

    #[test]
    fn a_healthy_store_passes() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(check(dir.path()).unwrap().sources, 0);
        store_with_events(dir.path(), 50);
        let report = check(dir.path()).unwrap();
        assert_eq!(report.sources, 1);
        assert!(report.aliases >= 1);
        assert!(report.quick_check);
    }

    #[test]
    fn a_missing_root_is_found() {
        let dir = tempfile::tempdir().unwrap();
        store_with_events(dir.path(), 50);
        delete_blocks(
            dir.path(),
            "SELECT id FROM aliases WHERE name LIKE 'source/%'",
        );
        expect_damaged(dir.path(), "root block");
    }

    #[test]
    fn a_missing_last_leaf_is_found() {
        let dir = tempfile::tempdir().unwrap();
        store_with_events(dir.path(), 50);
        // Every block below the root written by the last append: the path to the last leaf.
        delete_blocks(
            dir.path(),
            "SELECT child FROM refs WHERE parent = \
             (SELECT id FROM aliases WHERE name LIKE 'source/%') \
             AND child = (SELECT max(child) FROM refs WHERE parent = \
             (SELECT id FROM aliases WHERE name LIKE 'source/%'))",
        );
        expect_damaged(dir.path(), "latest event (49)");
    }

    #[test]
    fn a_damaged_file_is_found_by_quick_check() {
        let dir = tempfile::tempdir().unwrap();
        store_with_events(dir.path(), 50);
        // Checkpoint everything into the main file, then overwrite one page in its middle.
        {
            let conn = rusqlite::Connection::open(dir.path().join(FILE)).unwrap();
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .unwrap();
        }
        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let page = 4096;
        let pages = bytes.len() / page;
        assert!(pages > 4, "{pages} pages");
        let mid = (pages / 2) * page;
        bytes[mid..mid + page].fill(0xA5);
        std::fs::write(&path, bytes).unwrap();
        expect_damaged(dir.path(), "SQLite");
    }
}
