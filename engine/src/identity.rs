//! The node's identity: an ed25519 keypair kept in the data dir.
//!
//! Owns the key file `<data-dir>/identity.key` (libp2p protobuf encoding, mode 0600). The key is
//! created on first start and loaded on every later one, so the source id (the `PeerId` string)
//! is stable across restarts. Nothing else reads or writes the file.
//!
//! Invariant: a key file that exists but cannot be decoded is an error, never silently replaced —
//! replacing it would give this device a new source id and orphan its event log.

use std::io::Write;
use std::path::{Path, PathBuf};

use libp2p::identity::Keypair;
use libp2p::PeerId;
use shoal_store::SourceId;

/// File name of the key inside the data dir.
pub const KEY_FILE: &str = "identity.key";

/// Why the identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read or write the node key {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the node key {path} is corrupt ({reason}); restore it from a backup — deleting it gives \
         this node a new source id"
    )]
    Corrupt { path: PathBuf, reason: String },
}

/// The node's keypair and the source id derived from it.
#[derive(Clone)]
pub struct Identity {
    keypair: Keypair,
    peer_id: PeerId,
    source: SourceId,
}

impl std::fmt::Debug for Identity {
    // The keypair is secret: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Loads the key from `data_dir`, creating it (and nothing else) if it does not exist yet.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, IdentityError> {
        let path = data_dir.join(KEY_FILE);
        let io = |source| IdentityError::Io {
            path: path.clone(),
            source,
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let keypair = Keypair::from_protobuf_encoding(&bytes).map_err(|e| {
                    IdentityError::Corrupt {
                        path: path.clone(),
                        reason: e.to_string(),
                    }
                })?;
                Ok(Self::from_keypair(keypair))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let keypair = Keypair::generate_ed25519();
                let bytes = keypair
                    .to_protobuf_encoding()
                    .map_err(|e| IdentityError::Corrupt {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                write_private(&path, &bytes).map_err(io)?;
                tracing::info!(path = %path.display(), "created a new node key");
                Ok(Self::from_keypair(keypair))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Wraps an existing keypair (tests, tools).
    pub fn from_keypair(keypair: Keypair) -> Self {
        let peer_id = keypair.public().to_peer_id();
        let source = SourceId::from(peer_id.to_string());
        Self {
            keypair,
            peer_id,
            source,
        }
    }

    /// The keypair: the swarm uses it for transport identity and for signing heads.
    pub fn keypair(&self) -> &Keypair {
        &self.keypair
    }

    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// This node's source id (the `PeerId` string).
    pub fn source(&self) -> &SourceId {
        &self.source
    }
}

/// Writes a new file readable by the owner only. `create_new` so that two nodes started on the
/// same empty dir at once cannot both write a key: the loser fails instead of silently getting a
/// different identity than the file holds.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    // The key must survive a crash right after first start: losing it changes the source id.
    file.sync_all()?;
    if let Some(dir) = path.parent() {
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_stable() {
        let dir = tempfile::tempdir().unwrap();
        let first = Identity::load_or_create(dir.path()).unwrap();
        let second = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(first.source(), second.source());
        assert!(first.source().to_string().starts_with("12D3Koo"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn corrupt_key_is_an_error_not_a_new_identity() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEY_FILE), b"junk").unwrap();
        let err = Identity::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::Corrupt { .. }));
    }
}
