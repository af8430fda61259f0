//! `<data-dir>/apps.sqlite3`: what the app runtime must remember across node restarts — which
//! apps are deployed (id, version, package CID), whether each should run, and the settings
//! stored per scope. Owned by the apps owner task alone (one connection, no other writer).
//!
//! Every change is one statement (autocommit), so a crash leaves either the old or the new row.
//! Runtime state (pid, restarts, state) is not stored: it is rebuilt by starting what should run.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

/// File name inside the data dir.
pub const DB_FILE: &str = "apps.sqlite3";

/// A failure of the apps database.
#[derive(Debug, thiserror::Error)]
#[error("apps database {path}: {source}")]
pub struct DbError {
    path: PathBuf,
    #[source]
    source: rusqlite::Error,
}

/// A deployed app as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub id: String,
    pub version: String,
    pub package: String,
    /// Whether the operator wants it running (start/stop, not crashes).
    pub run: bool,
}

pub struct Db {
    conn: Connection,
    path: PathBuf,
}

impl Db {
    pub fn open(data_dir: &Path) -> Result<Db, DbError> {
        let path = data_dir.join(DB_FILE);
        let err = |source| DbError {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(err)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE IF NOT EXISTS apps (
                 id TEXT PRIMARY KEY, version TEXT NOT NULL, package TEXT NOT NULL,
                 run INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS settings (scope TEXT PRIMARY KEY, value TEXT NOT NULL);",
        )
        .map_err(err)?;
        Ok(Db { conn, path })
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> DbError + '_ {
        move |source| DbError {
            path: self.path.clone(),
            source,
        }
    }

    pub fn apps(&self) -> Result<Vec<Row>, DbError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, version, package, run FROM apps ORDER BY id")
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Row {
                    id: r.get(0)?,
                    version: r.get(1)?,
                    package: r.get(2)?,
                    run: r.get::<_, i64>(3)? != 0,
                })
            })
            .map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }

    pub fn put_app(&self, row: &Row) -> Result<(), DbError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO apps (id, version, package, run) VALUES (?1, ?2, ?3, ?4)",
                params![row.id, row.version, row.package, row.run as i64],
            )
            .map(drop)
            .map_err(self.err())
    }

    pub fn set_run(&self, id: &str, run: bool) -> Result<(), DbError> {
        self.conn
            .execute(
                "UPDATE apps SET run = ?2 WHERE id = ?1",
                params![id, run as i64],
            )
            .map(drop)
            .map_err(self.err())
    }

    /// Forgets an app; its settings go too when `purge`.
    pub fn remove_app(&self, id: &str, purge: bool) -> Result<(), DbError> {
        self.conn
            .execute("DELETE FROM apps WHERE id = ?1", params![id])
            .map_err(self.err())?;
        if purge {
            self.unset(id)?;
        }
        Ok(())
    }

    /// The stored settings of `scope` (`None`: defaults apply).
    pub fn settings(&self, scope: &str) -> Result<Option<serde_json::Value>, DbError> {
        let text: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM settings WHERE scope = ?1",
                params![scope],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())?;
        // A row we wrote is JSON; a corrupt one counts as absent (defaults) rather than fatal.
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    pub fn set(&self, scope: &str, value: &serde_json::Value) -> Result<(), DbError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO settings (scope, value) VALUES (?1, ?2)",
                params![scope, value.to_string()],
            )
            .map(drop)
            .map_err(self.err())
    }

    pub fn unset(&self, scope: &str) -> Result<(), DbError> {
        self.conn
            .execute("DELETE FROM settings WHERE scope = ?1", params![scope])
            .map(drop)
            .map_err(self.err())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_settings_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let row = Row {
            id: "com.example.a".into(),
            version: "1.0.0".into(),
            package: "bafk".into(),
            run: true,
        };
        {
            let db = Db::open(dir.path()).unwrap();
            db.put_app(&row).unwrap();
            db.set("com.example.a", &serde_json::json!({"n": 1}))
                .unwrap();
            db.set_run("com.example.a", false).unwrap();
        }
        let db = Db::open(dir.path()).unwrap();
        assert_eq!(db.apps().unwrap(), vec![Row { run: false, ..row }]);
        assert_eq!(db.settings("com.example.a").unwrap().unwrap()["n"], 1);
        db.remove_app("com.example.a", true).unwrap();
        assert!(db.apps().unwrap().is_empty());
        assert!(db.settings("com.example.a").unwrap().is_none());
    }
}
