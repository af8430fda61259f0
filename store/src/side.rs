//! Side databases: SQLite files of their own beside the block store (the console log, Pond
//! snapshots). SQLite has one writer lock per database, and a chatty app's logging or a large
//! snapshot must never hold up a publish's group commit.

use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a connection waits for a lock held by another connection before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Failures of a side database. Callers name the database (the console log, the snapshot
/// store) when they report one.
#[derive(Debug, thiserror::Error)]
pub enum SideDbError {
    /// The file could not be opened or created.
    #[error("cannot open {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// The disk is full; the failed write stored nothing.
    #[error("disk full: nothing was written; free disk space")]
    Full(#[source] rusqlite::Error),
    /// Any other SQLite failure.
    #[error("{0}")]
    Sqlite(#[source] rusqlite::Error),
}

impl From<rusqlite::Error> for SideDbError {
    fn from(e: rusqlite::Error) -> Self {
        if crate::error::is_disk_full(&e) {
            SideDbError::Full(e)
        } else {
            SideDbError::Sqlite(e)
        }
    }
}

/// Opens (creating if missing) the side database at `path` for writing: WAL, so readers never
/// block the writer, with the given `synchronous` level, and runs `create` (idempotent DDL).
pub(crate) fn open_writer(
    path: &Path,
    synchronous: &str,
    create: &str,
) -> Result<Connection, SideDbError> {
    let open_err = |source| SideDbError::Open {
        path: path.to_owned(),
        source,
    };
    let conn = Connection::open(path).map_err(open_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(open_err)?;
    conn.pragma_update(None, "synchronous", synchronous)
        .map_err(open_err)?;
    conn.execute_batch(create).map_err(open_err)?;
    Ok(conn)
}

/// Opens the side database at `path` read-only; its writer must have created it.
pub(crate) fn open_reader(path: &Path) -> Result<Connection, SideDbError> {
    let open_err = |source| SideDbError::Open {
        path: path.to_owned(),
        source,
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
    Ok(conn)
}
