//! The console log: apps' log entries (the console service of API.md), kept durably with bounded
//! retention in their own SQLite file (`console.sqlite3` in the data dir, chosen by the engine).
//!
//! A separate file, not a table in the block store's database (see `side`).
//!
//! Table `entries(seq, ts, entry)`: `seq` is the insertion order (strictly increasing, never
//! reused, also across restarts thanks to `AUTOINCREMENT`), `ts` the entry's `logTimestamp` in
//! microseconds since the Unix epoch (for `since`), `entry` the entry as compact JSON text,
//! stored as-is and served without re-encoding.
//!
//! Invariants: after every append at most `retention` entries remain, the oldest go first; a
//! successful [`ConsoleWriter::append`] is on disk (`synchronous=FULL`) before it returns. Reads
//! use their own WAL connections ([`ConsoleReader`]) and never block the writer.

use crate::side;
use rusqlite::{params, Connection};
use std::path::Path;

/// Failures of the console log. Nothing here is caused by an entry's content: entries are
/// validated before they get here.
pub use crate::side::SideDbError as Error;

/// Default number of entries kept (the newest ones).
pub const DEFAULT_RETENTION: u64 = 100_000;

/// Result alias of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

const CREATE: &str = r#"
CREATE TABLE IF NOT EXISTS entries (
    seq   INTEGER PRIMARY KEY AUTOINCREMENT,
    ts    INTEGER NOT NULL,
    entry TEXT NOT NULL
);
"#;

/// An entry to store: its `logTimestamp` (micros since the epoch) and its JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLogEntry {
    pub timestamp: i64,
    pub json: String,
}

/// A stored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Insertion order; strictly increasing.
    pub seq: u64,
    /// `logTimestamp`, micros since the Unix epoch.
    pub timestamp: i64,
    /// The entry as compact JSON text.
    pub json: String,
}

/// The one write connection of a console log file.
pub struct ConsoleWriter {
    conn: Connection,
    retention: u64,
}

impl ConsoleWriter {
    /// Opens (creating if missing) the console log at `path`, keeping the newest `retention`
    /// entries (at least one).
    pub fn open(path: &Path, retention: u64) -> Result<Self> {
        // FULL: a returned append survives a crash.
        let conn = side::open_writer(path, "FULL", CREATE)?;
        Ok(ConsoleWriter {
            conn,
            retention: retention.max(1),
        })
    }

    /// Appends `entries` in one transaction, then drops what falls out of retention. Returns the
    /// stored entries with their sequence numbers, in order.
    pub fn append(&mut self, entries: Vec<NewLogEntry>) -> Result<Vec<LogEntry>> {
        let tx = self.conn.transaction()?;
        let mut stored = Vec::with_capacity(entries.len());
        {
            let mut insert =
                tx.prepare_cached("INSERT INTO entries (ts, entry) VALUES (?1, ?2)")?;
            for e in entries {
                insert.execute(params![e.timestamp, e.json])?;
                let seq = u64::try_from(tx.last_insert_rowid()).unwrap_or(0);
                stored.push(LogEntry {
                    seq,
                    timestamp: e.timestamp,
                    json: e.json,
                });
            }
        }
        if let Some(last) = stored.last() {
            // Retention by sequence number: one range delete on the primary key.
            let keep_from = last.seq.saturating_sub(self.retention);
            if keep_from > 0 {
                tx.execute(
                    "DELETE FROM entries WHERE seq <= ?1",
                    params![i64::try_from(keep_from).unwrap_or(i64::MAX)],
                )?;
            }
        }
        tx.commit()?;
        Ok(stored)
    }
}

/// A read-only connection; cheap to open, one per reading request.
pub struct ConsoleReader {
    conn: Connection,
}

impl ConsoleReader {
    /// Opens the console log at `path` for reading. The writer must have created it.
    pub fn open(path: &Path) -> Result<Self> {
        Ok(ConsoleReader {
            conn: side::open_reader(path)?,
        })
    }

    /// Up to `limit` entries with `seq > after`, and `timestamp >= since` when given, in
    /// insertion order. Paging keeps a long read's memory bounded.
    pub fn page(&self, after: u64, since: Option<i64>, limit: usize) -> Result<Vec<LogEntry>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, ts, entry FROM entries WHERE seq > ?1 AND ts >= ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows = stmt.query_map(
            params![
                i64::try_from(after).unwrap_or(i64::MAX),
                since.unwrap_or(i64::MIN),
                i64::try_from(limit).unwrap_or(i64::MAX)
            ],
            |row| {
                Ok(LogEntry {
                    seq: u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0),
                    timestamp: row.get(1)?,
                    json: row.get(2)?,
                })
            },
        )?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row?);
        }
        Ok(out)
    }

    /// Number of entries currently kept.
    pub fn count(&self) -> Result<u64> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM entries", [], |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ts: i64, n: u32) -> NewLogEntry {
        NewLogEntry {
            timestamp: ts,
            json: format!("{{\"message\":\"m{n}\"}}"),
        }
    }

    #[test]
    fn append_read_and_retention() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.sqlite3");
        let mut w = ConsoleWriter::open(&path, 5).unwrap();
        let stored = w
            .append((0..3).map(|i| entry(i * 10, i as u32)).collect())
            .unwrap();
        assert_eq!(stored.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
        let r = ConsoleReader::open(&path).unwrap();
        assert_eq!(r.page(0, None, 100).unwrap().len(), 3);
        assert_eq!(r.page(1, None, 100).unwrap()[0].seq, 2);
        assert_eq!(r.page(0, Some(10), 100).unwrap().len(), 2);
        assert_eq!(r.page(0, None, 2).unwrap().len(), 2);

        w.append((3..8).map(|i| entry(i * 10, i as u32)).collect())
            .unwrap();
        assert_eq!(r.count().unwrap(), 5);
        let all = r.page(0, None, 100).unwrap();
        assert_eq!(all.first().unwrap().seq, 4);
        assert_eq!(all.last().unwrap().json, "{\"message\":\"m7\"}");
    }

    #[test]
    fn entries_survive_reopen_and_seq_continues() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.sqlite3");
        {
            let mut w = ConsoleWriter::open(&path, 2).unwrap();
            w.append(vec![entry(1, 1), entry(2, 2), entry(3, 3)])
                .unwrap();
        }
        let mut w = ConsoleWriter::open(&path, 2).unwrap();
        let r = ConsoleReader::open(&path).unwrap();
        assert_eq!(r.count().unwrap(), 2);
        let next = w.append(vec![entry(4, 4)]).unwrap();
        assert_eq!(next[0].seq, 4);
        let seqs: Vec<u64> = r.page(0, None, 10).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [3, 4]);
    }
}
