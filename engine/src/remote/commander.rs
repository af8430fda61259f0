//! The commanding side (`?to=` on the apps and settings routes): checks what it can here and
//! records the [`Command`] as an event of this node's log. The target carries it out when the
//! event reaches it (`applier.rs`); nothing here waits for that.
//!
//! Checked here, so a bad command is refused with a clear error and records nothing: the
//! target (`all` or a parseable source id) and, for a deploy, the package (unpacked into a
//! scratch directory and its manifest validated, as a local deploy would). Not checkable here:
//! settings against the app's schema (the app may not be deployed on this node) and whether
//! the target has the app; the target refuses those and reports the outcome in its status.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;

use super::{Action, Command, CommandError, Target};
use crate::apps::{AppsError, PackageError, MAX_PACKAGE_BYTES};
use crate::blobs::BlobService;
use crate::events::{EventService, EventsError};

/// Records app commands for other nodes; cheap to clone.
#[derive(Clone)]
pub struct Commander {
    events: EventService,
    blobs: BlobService,
    /// Where deploy packages are unpacked to be checked (`<data-dir>/apps`).
    scratch: PathBuf,
    seq: Arc<AtomicU64>,
}

/// A recorded command: the event that carries it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Given {
    /// `<source>/<offset>` of the command event (targets report outcomes under this name).
    pub command: String,
    pub to: String,
    pub action: &'static str,
    /// App id or settings scope.
    pub app: String,
}

/// A recorded deploy (the answer of `POST /api/v1/apps?to=`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GivenDeploy {
    pub id: String,
    pub version: String,
    /// CID of the package blob the targets fetch.
    pub package: String,
    pub command: String,
    pub to: String,
}

/// Why a command was not recorded (nothing was).
#[derive(Debug, thiserror::Error)]
pub enum GiveError {
    /// `to` is neither `all` nor a source id.
    #[error("to: `{0}` is not a source id; give a node's source id (`shoal nodes ls`) or `all`")]
    Target(String),
    /// The command does not fit the bounds of a command (an id too long, ...).
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The package is invalid, too large, or could not be stored as a blob.
    #[error(transparent)]
    Apps(#[from] AppsError),
    /// The command event could not be published.
    #[error("cannot record the command: {0}")]
    Events(#[source] EventsError),
}

impl Commander {
    pub fn new(events: EventService, blobs: BlobService, data_dir: PathBuf) -> Self {
        Self {
            events,
            blobs,
            scratch: data_dir.join("apps"),
            seq: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Checks the package, stores it as a blob and records its deployment to `to`.
    pub async fn deploy(
        &self,
        to: &str,
        bytes: Bytes,
        start: bool,
    ) -> Result<GivenDeploy, GiveError> {
        let target = parse_target(to)?;
        if bytes.len() as u64 > MAX_PACKAGE_BYTES {
            return Err(AppsError::TooLarge.into());
        }
        let manifest = self.check_package(bytes.clone()).await?;
        let package = crate::apps::store_package(&self.blobs, bytes).await?;
        let given = self
            .give(
                &target,
                Action::Deploy {
                    app: manifest.id.clone(),
                    version: manifest.version.to_string(),
                    package: package.to_string(),
                    start,
                },
            )
            .await?;
        Ok(GivenDeploy {
            id: manifest.id,
            version: manifest.version.to_string(),
            package: package.to_string(),
            command: given.command,
            to: given.to,
        })
    }

    /// Records `action` for `to` (any action but a deploy, which goes through [`Self::deploy`]).
    pub async fn command(&self, to: &str, action: Action) -> Result<Given, GiveError> {
        let target = parse_target(to)?;
        self.give(&target, action).await
    }

    async fn give(&self, target: &Target, action: Action) -> Result<Given, GiveError> {
        let command = Command {
            to: target.as_str().to_string(),
            action,
        };
        let event = command.to_event()?;
        // What a target will accept, checked before anything is recorded.
        Command::parse(event.payload.get())?;
        let published = self
            .events
            .publish(vec![event])
            .await
            .map_err(GiveError::Events)?;
        let offset = published.stamps.first().map_or(0, |s| s.offset.0);
        let given = Given {
            command: format!("{}/{}", published.source, offset),
            to: command.to.clone(),
            action: command.action.name(),
            app: command.action.subject().to_string(),
        };
        tracing::info!(command = %given.command, to = %given.to, action = given.action, app = %given.app, "app command recorded");
        Ok(given)
    }

    /// Unpacks the package into a scratch directory to validate it as a deploy would.
    async fn check_package(&self, bytes: Bytes) -> Result<crate::apps::Manifest, AppsError> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let dir = self
            .scratch
            .join(format!(".check-{}-{n}", std::process::id()));
        tokio::task::spawn_blocking(move || {
            let checked = crate::apps::package::unpack(&bytes, &dir);
            let _ = std::fs::remove_dir_all(&dir);
            checked
        })
        .await
        .map_err(|e| AppsError::Storage(format!("the package check failed: {e}")))?
        .map_err(|e: PackageError| AppsError::Package(e))
    }
}

fn parse_target(to: &str) -> Result<Target, GiveError> {
    let target = Target::parse(to).map_err(|_| GiveError::Target(to.to_string()))?;
    if let Target::Source(s) = &target {
        s.parse::<libp2p::PeerId>()
            .map_err(|_| GiveError::Target(to.to_string()))?;
    }
    Ok(target)
}
