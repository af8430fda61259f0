//! [`Store`]: opening the SQLite file and handing out its connections.
//!
//! Owns the file path, the settings, the one write connection (handed out once, as the
//! [`Writer`]) and the branch cache shared by every reader and the writer (safe to share:
//! blocks are immutable and content-addressed). Readers get their own read-only connections,
//! so queries never wait on the writer (WAL mode).

use crate::{
    cid::Cid,
    error::{Error, Result},
    files::{self, BlockFiles},
    lock::WriterLock,
    log::Writer,
    read::{Reader, RootCache},
    schema::{self, Durability},
    tree::{EventTree, TreeConfig},
};
use banyan::store::BranchCache;
use rusqlite::{Connection, OpenFlags};
use std::{
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

/// Settings of a store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// What a committed append survives. Default: the process being killed (see [`Durability`]).
    pub durability: Durability,
    /// Shape of the event trees (leaf sizes, branching, compression).
    pub tree: TreeConfig,
    /// GC keeps blocks written, and roots retired, less than this long ago. Protects blocks put
    /// for an import that has not happened yet, and queries still walking an old root.
    pub gc_grace: Duration,
    /// The WAL file is truncated to this size after each checkpoint.
    pub wal_size_limit: u64,
    /// The writer runs a checkpoint after this many bytes of blocks written since the last.
    pub checkpoint_after_bytes: u64,
    /// Bytes of decoded branch nodes cached across readers and the writer.
    pub branch_cache_bytes: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            durability: Durability::default(),
            tree: TreeConfig::default(),
            gc_grace: Duration::from_secs(60),
            wal_size_limit: 64 << 20,
            checkpoint_after_bytes: 32 << 20,
            branch_cache_bytes: 64 << 20,
        }
    }
}

impl StoreConfig {
    /// Small trees and no GC grace: for tests that want interesting shapes from few events.
    pub fn debug() -> Self {
        Self {
            tree: TreeConfig::debug(),
            gc_grace: Duration::ZERO,
            ..Self::default()
        }
    }
}

/// An opened store file.
pub struct Store {
    path: PathBuf,
    config: StoreConfig,
    /// The write connection and the lock that makes it the only writer, until taken.
    writer: Mutex<Option<(Connection, WriterLock)>>,
    cache: BranchCache<EventTree>,
    roots: RootCache,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the store at `path` (a SQLite file; its directory must
    /// exist), sets WAL mode and creates the schema. Takes the store's writer lock first (see
    /// `lock.rs`): fails at once with [`Error::Locked`] while another process writes it.
    pub fn open(path: &Path, config: StoreConfig) -> Result<Store> {
        config.tree.validate()?;
        // Before anything touches the file: a refused open must change nothing.
        let lock = WriterLock::acquire(path)?;
        let mut conn = Connection::open(path)?;
        schema::configure_writer(&mut conn, config.durability, config.wal_size_limit)?;
        Ok(Store {
            path: path.to_path_buf(),
            cache: BranchCache::new(config.branch_cache_bytes),
            roots: RootCache::default(),
            config,
            writer: Mutex::new(Some((conn, lock))),
        })
    }

    /// Opens an existing store for reading only; works while a node has it open (WAL readers
    /// never block the writer). [`Store::writer`] fails on such a store.
    pub fn open_read_only(path: &Path) -> Result<Store> {
        if !path.exists() {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no store at {}", path.display()),
            )));
        }
        let config = StoreConfig::default();
        let store = Store {
            path: path.to_path_buf(),
            cache: BranchCache::new(config.branch_cache_bytes),
            roots: RootCache::default(),
            config,
            writer: Mutex::new(None),
        };
        // Fail now rather than at the first query if the file cannot be read.
        store.reader()?;
        Ok(store)
    }

    /// The one writer. Fails on a read-only store and on the second call. The writer lock moves
    /// with it: it is released when the writer is dropped, even if this `Store` lives on.
    pub fn writer(&self) -> Result<Writer> {
        let (conn, lock) = self
            .writer
            .lock()
            .map_err(|_| Error::ReadOnly("writer lock poisoned"))?
            .take()
            .ok_or(Error::ReadOnly(
                "the store is read-only or its writer was already taken",
            ))?;
        Writer::new(
            conn,
            lock,
            self.config.clone(),
            self.cache.clone(),
            self.roots.clone(),
        )
    }

    /// A new reader with its own read-only connection (cheap: one file open). Readers are
    /// `Clone` (clones share the connection); use one per thread for parallel queries.
    pub fn reader(&self) -> Result<Reader> {
        let conn = open_read_connection(&self.path)?;
        Ok(Reader::new(
            conn,
            self.config.clone(),
            self.cache.clone(),
            self.roots.clone(),
        ))
    }

    /// Writes a block that the store keeps as a file (a raw block of at least
    /// [`crate::FILE_MIN`] bytes) to its place beside the database now, flushed, so that the
    /// writer's later commit of it only records it (`files.rs`); does nothing for other blocks.
    /// For callers off the writer's thread (uploads, fetches), so block bytes are written in
    /// parallel and never inside the writer's transactions. `data` must hash to `cid`
    /// (callers hashed or verified it), as for every block handed to the writer. A file the
    /// writer never records is removed by GC after its grace period.
    ///
    /// Returns `true` when the block is now a file: hand the writer only its CID and length
    /// (`blob::put_staged`), so its bytes need not wait in memory for the commit.
    pub fn stage_block(&self, cid: &Cid, data: &[u8]) -> Result<bool> {
        if !files::is_file_block(cid, data.len()) {
            return Ok(false);
        }
        BlockFiles::beside(&self.path).write(cid, data)?;
        Ok(true)
    }

    /// Bytes the store takes on disk: the SQLite file, its WAL and shared-memory files, and
    /// the block files beside it (summed from their rows, not by listing the directory).
    pub fn disk_bytes(&self) -> Result<u64> {
        let sqlite: u64 = ["", "-wal", "-shm"]
            .iter()
            .filter_map(|suffix| {
                let mut p = self.path.clone().into_os_string();
                p.push(suffix);
                std::fs::metadata(p).ok().map(|m| m.len())
            })
            .sum();
        let reader = self.reader()?;
        let files: i64 = reader
            .lock()?
            .query_row(schema::COUNT_FILES, [], |r| r.get(1))?;
        Ok(sqlite + files.max(0) as u64)
    }

    /// Path of the SQLite file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The settings in use.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }
}

/// A read-only connection. Falls back to a read-write connection limited by `query_only` when
/// SQLite refuses a read-only open of a WAL database whose `-shm` file does not exist yet (no
/// writer has it open), or the store predates the `files` table: the fallback can create
/// that file and temporary tables but never writes data.
fn open_read_connection(path: &Path) -> Result<Connection> {
    let ro = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = match Connection::open_with_flags(path, ro) {
        Ok(conn) => match conn.query_row("SELECT count(*) FROM aliases", [], |_| Ok(())) {
            // A store of schema 1 has no `files` table: the reader makes an empty temporary
            // one (`schema::files_standin`), which a read-only connection cannot.
            Ok(()) if schema::has_files_table(&conn)? => conn,
            _ => open_query_only(path)?,
        },
        Err(_) => open_query_only(path)?,
    };
    schema::configure_reader(&conn)?;
    Ok(conn)
}

fn open_query_only(path: &Path) -> Result<Connection> {
    let rw = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, rw)?;
    schema::files_standin(&conn)?;
    conn.pragma_update(None, "query_only", true)?;
    Ok(conn)
}
