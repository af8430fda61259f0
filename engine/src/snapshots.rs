//! Pond snapshots on this node: store, retrieve the latest of a fish and version, invalidate
//! those above an event key. Local and durable (`snapshots.sqlite3` in the data dir, its own
//! SQLite file so snapshot writes never hold up the event writer), bounded per fish
//! ([`KEEP_PER_FISH`]); a newer version drops older ones (`shoal_store::snapshot`).
//!
//! [`Snapshots`] is a cheap handle; each call runs on a blocking thread and holds the one
//! connection's mutex only there (never across an `.await`). Dropping a call's future after it
//! started may still complete it.

use std::path::Path;
use std::sync::{Arc, Mutex};

use shoal_store::snapshot::{Error as StoreError, SnapshotDb};
pub use shoal_store::snapshot::{EventKey, Snapshot};

/// File name of the snapshot store inside the data dir.
pub const SNAPSHOTS_FILE: &str = "snapshots.sqlite3";

/// Snapshots kept per fish (the newest event keys).
pub const KEEP_PER_FISH: usize = 8;

/// Why a snapshot call failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot store: {0}")]
    Store(#[from] StoreError),
    /// A previous call panicked while holding the database (a bug); the store is not used again.
    #[error("the snapshot store is unavailable: a previous call failed unexpectedly")]
    Poisoned,
    /// The blocking task died (a bug: it panicked).
    #[error("a snapshot call failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

impl SnapshotError {
    /// The disk is full (nothing was stored).
    pub fn is_full(&self) -> bool {
        matches!(self, SnapshotError::Store(StoreError::Full(_)))
    }
}

/// Handle on the snapshot store; cheap to clone.
#[derive(Clone)]
pub struct Snapshots {
    db: Arc<Mutex<SnapshotDb>>,
}

impl Snapshots {
    /// Opens (creating) `<data_dir>/snapshots.sqlite3`. Blocking.
    pub fn open(data_dir: &Path) -> Result<Snapshots, SnapshotError> {
        let db = SnapshotDb::open(&data_dir.join(SNAPSHOTS_FILE))?;
        Ok(Snapshots {
            db: Arc::new(Mutex::new(db)),
        })
    }

    async fn with<T, F>(&self, f: F) -> Result<T, SnapshotError>
    where
        T: Send + 'static,
        F: FnOnce(&mut SnapshotDb) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = db.lock().map_err(|_| SnapshotError::Poisoned)?;
            f(&mut guard).map_err(SnapshotError::from)
        })
        .await
        .map_err(SnapshotError::Task)?
    }

    /// Stores `snapshot`; false if the fish already has a newer version (nothing stored).
    pub async fn store(&self, snapshot: Snapshot) -> Result<bool, SnapshotError> {
        self.with(move |db| db.store(&snapshot, KEEP_PER_FISH))
            .await
    }

    /// The latest snapshot of the fish for `version`, if any.
    pub async fn latest(
        &self,
        semantics: String,
        name: String,
        version: u64,
    ) -> Result<Option<Snapshot>, SnapshotError> {
        self.with(move |db| db.latest(&semantics, &name, version))
            .await
    }

    /// Deletes the fish's snapshots above `key`; returns how many.
    pub async fn invalidate(
        &self,
        semantics: String,
        name: String,
        key: EventKey,
    ) -> Result<usize, SnapshotError> {
        self.with(move |db| db.invalidate(&semantics, &name, &key))
            .await
    }
}
