//! Pond snapshots: a fish's serialized state at an event key, kept locally (never replicated)
//! in their own SQLite file (`snapshots.sqlite3` in the data dir, chosen by the engine).
//!
//! A separate file, like the console log (see `side`).
//!
//! Table `snapshots`: one row per (fish = semantics + name, version, tag, event key). Invariants
//! kept by [`SnapshotDb::store`]: a fish has snapshots of one version only (storing a newer
//! version deletes the older ones; an older version than what is stored is refused), and at
//! most `keep` rows (the newest event keys stay). Event keys order as `(lamport, source, psn)`.

use std::path::Path;

use crate::side;
use rusqlite::{params, Connection, OptionalExtension};

/// Failures of the snapshot store.
pub use crate::side::SideDbError as Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

const CREATE: &str = r#"
CREATE TABLE IF NOT EXISTS snapshots (
    semantics TEXT NOT NULL,
    name      TEXT NOT NULL,
    version   INTEGER NOT NULL,
    tag       TEXT NOT NULL,
    lamport   INTEGER NOT NULL,
    source    TEXT NOT NULL,
    psn       INTEGER NOT NULL,
    cycle     INTEGER NOT NULL,
    psn_map   TEXT NOT NULL,
    horizon   TEXT,
    state     TEXT NOT NULL,
    PRIMARY KEY (semantics, name, version, tag, lamport, source, psn)
) WITHOUT ROWID;
"#;

/// An event key: `(lamport, source, psn)`, compared in that order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventKey {
    pub lamport: u64,
    pub source: String,
    pub psn: u64,
}

/// One stored snapshot. `psn_map` and `horizon` are JSON text, kept as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub semantics: String,
    pub name: String,
    pub version: u64,
    pub tag: String,
    pub key: EventKey,
    pub cycle: u64,
    pub psn_map: String,
    pub horizon: Option<String>,
    pub state: String,
}

/// The snapshot file's one connection.
pub struct SnapshotDb {
    conn: Connection,
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl SnapshotDb {
    /// Opens (creating) the snapshot file at `path`.
    pub fn open(path: &Path) -> Result<SnapshotDb> {
        // NORMAL: a snapshot lost in a power cut is only recomputed.
        let conn = side::open_writer(path, "NORMAL", CREATE)?;
        Ok(SnapshotDb { conn })
    }

    /// Stores `s`, dropping the fish's snapshots of older versions and all but the `keep`
    /// newest event keys. Returns false (storing nothing) if the fish has a newer version.
    pub fn store(&mut self, s: &Snapshot, keep: usize) -> Result<bool> {
        let tx = self.conn.transaction()?;
        let newest: Option<i64> = tx.query_row(
            "SELECT MAX(version) FROM snapshots WHERE semantics = ?1 AND name = ?2",
            params![s.semantics, s.name],
            |r| r.get(0),
        )?;
        if newest.is_some_and(|v| uint(v) > s.version) {
            return Ok(false);
        }
        tx.execute(
            "DELETE FROM snapshots WHERE semantics = ?1 AND name = ?2 AND version < ?3",
            params![s.semantics, s.name, int(s.version)],
        )?;
        tx.execute(
            "INSERT OR REPLACE INTO snapshots
                (semantics, name, version, tag, lamport, source, psn, cycle, psn_map, horizon, state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                s.semantics,
                s.name,
                int(s.version),
                s.tag,
                int(s.key.lamport),
                s.key.source,
                int(s.key.psn),
                int(s.cycle),
                s.psn_map,
                s.horizon,
                s.state
            ],
        )?;
        tx.execute(
            "DELETE FROM snapshots WHERE semantics = ?1 AND name = ?2 AND (lamport, source, psn) NOT IN (
                SELECT lamport, source, psn FROM snapshots WHERE semantics = ?1 AND name = ?2
                ORDER BY lamport DESC, source DESC, psn DESC LIMIT ?3)",
            params![s.semantics, s.name, int(keep.max(1) as u64)],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// The fish's snapshot of `version` with the highest event key.
    pub fn latest(&self, semantics: &str, name: &str, version: u64) -> Result<Option<Snapshot>> {
        Ok(self
            .conn
            .query_row(
                "SELECT tag, lamport, source, psn, cycle, psn_map, horizon, state FROM snapshots
                 WHERE semantics = ?1 AND name = ?2 AND version = ?3
                 ORDER BY lamport DESC, source DESC, psn DESC LIMIT 1",
                params![semantics, name, int(version)],
                |r| {
                    Ok(Snapshot {
                        semantics: semantics.to_string(),
                        name: name.to_string(),
                        version,
                        tag: r.get(0)?,
                        key: EventKey {
                            lamport: uint(r.get(1)?),
                            source: r.get(2)?,
                            psn: uint(r.get(3)?),
                        },
                        cycle: uint(r.get(4)?),
                        psn_map: r.get(5)?,
                        horizon: r.get(6)?,
                        state: r.get(7)?,
                    })
                },
            )
            .optional()?)
    }

    /// Deletes the fish's snapshots whose event key is above `key`; returns how many.
    pub fn invalidate(&mut self, semantics: &str, name: &str, key: &EventKey) -> Result<usize> {
        Ok(self.conn.execute(
            "DELETE FROM snapshots WHERE semantics = ?1 AND name = ?2
               AND (lamport, source, psn) > (?3, ?4, ?5)",
            params![semantics, name, int(key.lamport), key.source, int(key.psn)],
        )?)
    }

    /// Snapshots stored for a fish (all versions).
    pub fn count(&self, semantics: &str, name: &str) -> Result<u64> {
        let n: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM snapshots WHERE semantics = ?1 AND name = ?2",
            params![semantics, name],
            |r| r.get(0),
        )?;
        Ok(uint(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(version: u64, lamport: u64, state: &str) -> Snapshot {
        Snapshot {
            semantics: "s".into(),
            name: "n".into(),
            version,
            tag: "t".into(),
            key: EventKey {
                lamport,
                source: "src".into(),
                psn: lamport,
            },
            cycle: 0,
            psn_map: "{}".into(),
            horizon: None,
            state: state.into(),
        }
    }

    #[test]
    fn store_retrieve_invalidate_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshots.sqlite3");
        let mut db = SnapshotDb::open(&path).unwrap();
        assert_eq!(db.latest("s", "n", 1).unwrap(), None);
        assert!(db.store(&snap(1, 10, "a"), 3).unwrap());
        assert!(db.store(&snap(1, 20, "b"), 3).unwrap());
        assert_eq!(db.latest("s", "n", 1).unwrap().unwrap().state, "b");
        // Bounded per fish: the newest keys stay.
        for l in 30..40 {
            assert!(db.store(&snap(1, l, "c"), 3).unwrap());
        }
        assert_eq!(db.count("s", "n").unwrap(), 3);
        // Invalidate above a key.
        let key = EventKey {
            lamport: 37,
            source: "src".into(),
            psn: 37,
        };
        assert_eq!(db.invalidate("s", "n", &key).unwrap(), 2);
        assert_eq!(db.latest("s", "n", 1).unwrap().unwrap().key.lamport, 37);
        // A newer version drops older ones; an older one is refused.
        assert!(db.store(&snap(2, 5, "v2"), 3).unwrap());
        assert_eq!(db.count("s", "n").unwrap(), 1);
        assert_eq!(db.latest("s", "n", 1).unwrap(), None);
        assert!(!db.store(&snap(1, 50, "old"), 3).unwrap());
        assert_eq!(db.latest("s", "n", 2).unwrap().unwrap().state, "v2");
        // Durable across reopen.
        drop(db);
        let db = SnapshotDb::open(&path).unwrap();
        assert_eq!(db.latest("s", "n", 2).unwrap().unwrap().state, "v2");
    }
}
