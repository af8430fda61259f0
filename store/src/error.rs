//! The store's one error type.
//!
//! Owns the mapping from SQLite, banyan and codec failures to variants in our own terms
//! (`MissingBlock`, `Corrupt`, `Full`, ...). `rusqlite` errors stay behind `#[source]` so callers
//! never match on them. Invariant: no variant is produced by a panic path; every failure that
//! disk or peer data can cause arrives here as a value.

use cid::Cid;

/// Result alias used throughout the store.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A block that should be present is absent (e.g. a tree is incomplete, or garbage collection
    /// removed it while a long query still walked an old root).
    #[error("block {0} is missing from the store")]
    MissingBlock(Cid),
    /// A block's bytes cannot be decoded as what they should be.
    #[error("block {cid} is corrupt: {reason}")]
    Corrupt { cid: Cid, reason: String },
    /// Bytes offered under a CID do not hash to it; nothing was stored.
    #[error("block bytes do not match {cid}: the sender is broken or lying; nothing was stored")]
    HashMismatch { cid: Cid },
    /// A CID the store does not accept (only CIDv1, SHA2-256, dag-cbor or raw).
    #[error("unsupported CID {cid}: {reason}")]
    UnsupportedCid { cid: String, reason: String },
    /// Import of a tree that does not extend the current one for that source.
    #[error("tree {root} for source {source_id} does not extend the current tree: {reason}")]
    NotExtending {
        source_id: String,
        /// Boxed to keep `Error` small (it travels in every `Result`).
        root: Box<Cid>,
        reason: String,
    },
    /// The disk is full (SQLITE_FULL; a full disk under a block file is a [`Error::BlockFile`]
    /// for which [`Error::is_full`] is true). Nothing of the failed transaction was kept.
    #[error("disk full: the store could not write; free disk space and retry")]
    Full(#[source] rusqlite::Error),
    /// Another process (or another open store in this one) holds the store's writer lock:
    /// a store has one writing process at a time (see `lock.rs`). Nothing was written.
    #[error(
        "the store is in use by {}: a store has one writer at a time; stop that process first (lock file {})",
        holder(.pid),
        .path.display()
    )]
    Locked {
        /// The lock file.
        path: std::path::PathBuf,
        /// The holder's pid, when the lock file names one.
        pid: Option<u32>,
    },
    /// The store file is opened read-only, or its single writer was already handed out.
    #[error("not writable: {0}")]
    ReadOnly(&'static str),
    /// A caller-provided argument is invalid (e.g. an empty batch, an invalid payload).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// Any other SQLite failure.
    #[error("sqlite: {0}")]
    Sqlite(#[source] rusqlite::Error),
    /// A failure inside the banyan tree code that is not a missing block.
    #[error("tree: {0}")]
    Tree(String),
    /// The start-up check (`check.rs`) found damage; nothing was changed.
    #[error(
        "the store {} is damaged: {problem}. A node does not start on a damaged store: run \
         `shoal store verify --data-dir {}` to list every problem",
        .path.display(),
        .data_dir.display()
    )]
    Damaged {
        path: std::path::PathBuf,
        data_dir: std::path::PathBuf,
        problem: String,
    },
    /// Writing, reading or flushing a block file beside the database (`files.rs`) failed.
    #[error("block file {}: {source}", .path.display())]
    BlockFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Filesystem errors around opening the store.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        if is_disk_full(&e) {
            Error::Full(e)
        } else {
            Error::Sqlite(e)
        }
    }
}

/// SQLite says the disk is full: `SQLITE_FULL`, or `SQLITE_IOERR_SHMSIZE` (the WAL index
/// `-shm` could not grow; seen with errno ENOSPC on a full tmpfs, where it made a publish a
/// 500 instead of a 507).
pub(crate) fn is_disk_full(e: &rusqlite::Error) -> bool {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => {
            f.code == rusqlite::ErrorCode::DiskFull
                || f.extended_code == rusqlite::ffi::SQLITE_IOERR_SHMSIZE
        }
        _ => false,
    }
}

fn holder(pid: &Option<u32>) -> String {
    match pid {
        Some(pid) => format!("process {pid}"),
        None => "another process".to_string(),
    }
}

impl Error {
    /// Turn a banyan (anyhow) error back into ours: our own errors travel through banyan's
    /// `anyhow::Error` unchanged (the block reader raises them), so downcast first.
    pub(crate) fn from_tree(e: anyhow::Error) -> Self {
        match e.downcast::<Error>() {
            Ok(ours) => ours,
            Err(other) => Error::Tree(format!("{other:#}")),
        }
    }

    /// True when retrying after freeing disk space could succeed.
    pub fn is_full(&self) -> bool {
        match self {
            Error::Full(_) => true,
            Error::BlockFile { source, .. } => {
                source.kind() == std::io::ErrorKind::StorageFull
                    || source.kind() == std::io::ErrorKind::QuotaExceeded
            }
            _ => false,
        }
    }
}
