//! The app runtime of one node (API.md "Apps"): packages deployed here, their settings, and the
//! supervision of process apps. Knows nothing of HTTP (`shoal-api` maps routes onto
//! [`Handle`]) nor of other nodes (desired state across the swarm builds on `Handle`).
//!
//! Parts, each the owner of one thing:
//! - `manifest.rs`: `shoal-app.toml` → a validated [`manifest::Manifest`];
//! - `package.rs`: `.tar.gz` packing and the untrusted-input unpacking;
//! - `settings.rs`: JSON Schema checks and the `node` scope's schema;
//! - `db.rs`: `<data-dir>/apps.sqlite3` (deployed apps, whether each should run, settings);
//! - `runtime.rs`: the **owner task**, on its own thread and single-threaded runtime: the only
//!   holder of the database and the app table; takes [`Handle`] commands over a bounded channel;
//! - `supervisor.rs`: one task per process app, owning its child; `restart.rs` its pure restart
//!   rule; `limits.rs` memory/CPU limits (cgroup v2 or rlimits).
//!
//! Invariants: the owner never waits for an app (a stop is a message to the supervisor, which
//! may take [`supervisor::STOP_GRACE`]), so a hanging or crash-looping app delays no command;
//! a rejected command (bad package, invalid settings) changes nothing; what should run is in
//! the database before the command is answered, so a node restart brings it back.
//!
//! Disk layout: `<data-dir>/apps/<id>/<version>/` is the unpacked package (one version kept),
//! `<data-dir>/apps/<id>/data/` the app's working directory (kept across versions, removed only
//! by `undeploy --purge`), `<data-dir>/apps/.staging-*` and `.trash-*` transient.

pub mod manifest;
pub mod package;
pub mod settings;

mod db;
mod limits;
mod restart;
mod runtime;
mod supervisor;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::blobs::{BlobService, BlobsError, Cid, PutOptions};

pub use limits::{mechanism as limits_mechanism, Mechanism as LimitsMechanism};
pub use manifest::{Kind, Manifest, ManifestError};
pub use package::{PackageError, MAX_PACKAGE_BYTES};
pub use settings::{Invalid, NODE_SCOPE};
pub use supervisor::STOP_GRACE;

/// Lifecycle state of an app (API.md; serialized kebab-case: `invalid-settings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Installing,
    Stopped,
    Starting,
    Running,
    Failed,
    InvalidSettings,
}

/// One app as `GET /api/v1/apps` lists it.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AppInfo {
    pub id: String,
    pub version: String,
    pub kind: &'static str,
    pub state: State,
    pub settings_valid: bool,
    pub pid: Option<u32>,
    pub restarts: u64,
    pub started_at: Option<String>,
    /// The node's source id.
    pub node: String,
    /// CID of the deployed package blob.
    pub package: String,
}

/// Every app of this node, as [`Handle::list`] answers; what [`Handle::watch_list`] carries.
pub type AppList = Arc<Vec<AppInfo>>;

/// The answer to a deploy.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Deployed {
    pub id: String,
    pub version: String,
    /// CID of the package blob.
    pub package: String,
}

/// Where a package comes from.
#[derive(Debug, Clone)]
pub enum Package {
    /// The package file itself; stored as a blob first.
    Bytes(Bytes),
    /// A blob already known here or to the swarm (fetched and verified chunk by chunk).
    Blob(Cid),
}

/// A web app's files, for the API to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebRoot {
    /// The directory served at `/apps/<id>/`.
    pub dist: PathBuf,
    /// The page served for `/apps/<id>/`.
    pub main: String,
}

/// Why an app command failed. Each says whether anything changed: nothing did, except where
/// noted.
#[derive(Debug, thiserror::Error)]
pub enum AppsError {
    /// No app (or settings scope) of that id here.
    #[error("no app `{0}` is deployed here")]
    NotFound(String),
    /// The package is not a valid app package (the message names the problem).
    #[error(transparent)]
    Package(#[from] PackageError),
    /// The settings do not validate (the path names where).
    #[error("settings do not validate: {0}")]
    InvalidSettings(#[source] Invalid),
    /// The app cannot do that now (e.g. start while its settings are invalid).
    #[error("{0}")]
    Conflict(String),
    /// The package blob could not be stored or read.
    #[error("package blob: {0}")]
    Blob(#[source] BlobsError),
    /// The package is larger than [`MAX_PACKAGE_BYTES`].
    #[error("the package is larger than {MAX_PACKAGE_BYTES} bytes")]
    TooLarge,
    /// The apps database or the apps directory failed (a disk problem).
    #[error("app storage: {0}")]
    Storage(String),
    /// The app runtime is shut down (the node is stopping); nothing was done.
    #[error("the app runtime is shut down")]
    Closed,
}

/// What the app runtime needs of the node.
#[derive(Debug, Clone)]
pub struct AppsConfig {
    pub data_dir: PathBuf,
    /// The node's source id (`SHOAL_NODE_ID`).
    pub node_id: String,
    /// Configured API and store addresses; [`Handle::serving`] replaces them with the bound
    /// ones.
    pub api_addr: SocketAddr,
    pub store_addr: SocketAddr,
}

pub(crate) enum Command {
    Install {
        bytes: Bytes,
        package: String,
        start: bool,
        reply: oneshot::Sender<Result<Deployed, AppsError>>,
    },
    Start(String, oneshot::Sender<Result<(), AppsError>>),
    Stop(String, oneshot::Sender<Result<(), AppsError>>),
    Restart(String, oneshot::Sender<Result<(), AppsError>>),
    Undeploy {
        id: String,
        purge: bool,
        reply: oneshot::Sender<Result<(), AppsError>>,
    },
    List(oneshot::Sender<Vec<AppInfo>>),
    GetSettings(
        String,
        oneshot::Sender<Result<serde_json::Value, AppsError>>,
    ),
    SetSettings(
        String,
        serde_json::Value,
        oneshot::Sender<Result<(), AppsError>>,
    ),
    UnsetSettings(String, oneshot::Sender<Result<(), AppsError>>),
    Schema(
        String,
        oneshot::Sender<Result<serde_json::Value, AppsError>>,
    ),
    Serving {
        api: SocketAddr,
        store: SocketAddr,
    },
}

/// The app runtime of this node: deploy, start/stop, list, settings. Cheap to clone; every
/// method is one message to the runtime's owner task (bounded queue) and its answer, so a call
/// never waits for an app process — `stop` returns once the stop is under way, and
/// [`Handle::list`] shows when it is done. Dropping a call's future is safe: a command already
/// queued is still carried out.
///
/// ```ignore
/// let apps = node.apps();
/// let d = apps.deploy(Package::Bytes(tar_gz), true).await?;      // stored as a blob, started
/// apps.set_settings(&d.id, json!({"n": 3})).await?;             // validated; restarts the app
/// let running = apps.list().await?;                               // state, pid, restarts, …
/// let mut node = apps.watch_node_settings();                      // `node` scope, live
/// let name = node.borrow()["displayName"].as_str();
/// ```
///
/// Scopes: an app's id, or [`NODE_SCOPE`] (`"node"`: `displayName`, `retention`, ...). Errors:
/// [`AppsError`]; `NotFound` for an unknown id, `InvalidSettings` with the failing JSON path,
/// `Conflict` for a start that cannot happen. Packages come as bytes or as a blob CID; the
/// latter is fetched from the swarm if not local (the swarm-wide deployment builds on it).
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    blobs: BlobService,
    node_settings: watch::Receiver<serde_json::Value>,
    web: watch::Receiver<Arc<std::collections::BTreeMap<String, WebRoot>>>,
    list: watch::Receiver<AppList>,
}

/// Commands queued for the owner before callers wait (back-pressure beyond).
const QUEUE: usize = 64;

impl Handle {
    /// Stores the package as a blob (bytes) or reads it (CID), unpacks and validates it, and
    /// deploys it: a new version replaces the old one only once it is unpacked and valid (a
    /// failed deploy leaves the old version as it was, running or not). `start`: start it (if
    /// its settings validate; else it is `invalid-settings`).
    pub async fn deploy(&self, package: Package, start: bool) -> Result<Deployed, AppsError> {
        let (bytes, cid) = match package {
            Package::Bytes(bytes) => {
                let cid = store_package(&self.blobs, bytes.clone()).await?;
                (bytes, cid)
            }
            Package::Blob(cid) => (self.read_blob(cid).await?, cid),
        };
        let (reply, rx) = oneshot::channel();
        self.send(Command::Install {
            bytes,
            package: cid.to_string(),
            start,
            reply,
        })
        .await?;
        rx.await.map_err(|_| AppsError::Closed)?
    }

    /// The bytes of a package blob, verified chunk by chunk by the blob service.
    async fn read_blob(&self, cid: Cid) -> Result<Bytes, AppsError> {
        let opened = self.blobs.open(cid).await.map_err(AppsError::Blob)?;
        if opened.meta.size > MAX_PACKAGE_BYTES {
            return Err(AppsError::TooLarge);
        }
        let mut stream = self.blobs.read_range(&opened, 0, opened.meta.size);
        let mut buf = Vec::with_capacity(opened.meta.size as usize);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(AppsError::Blob)?;
            if (buf.len() + chunk.len()) as u64 > MAX_PACKAGE_BYTES {
                return Err(AppsError::TooLarge);
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.into())
    }

    /// Starts a stopped or failed app (a running one is left as it is). `Conflict` when its
    /// settings do not validate.
    pub async fn start(&self, id: &str) -> Result<(), AppsError> {
        self.call(|r| Command::Start(id.to_string(), r)).await?
    }

    /// Stops an app (SIGTERM, SIGKILL after 10 s); it stays stopped across node restarts.
    pub async fn stop(&self, id: &str) -> Result<(), AppsError> {
        self.call(|r| Command::Stop(id.to_string(), r)).await?
    }

    /// Stops and starts an app (not counted in `restarts`).
    pub async fn restart(&self, id: &str) -> Result<(), AppsError> {
        self.call(|r| Command::Restart(id.to_string(), r)).await?
    }

    /// Stops an app and removes its package; its `data/` dir and settings go too with `purge`.
    pub async fn undeploy(&self, id: &str, purge: bool) -> Result<(), AppsError> {
        self.call(|reply| Command::Undeploy {
            id: id.to_string(),
            purge,
            reply,
        })
        .await?
    }

    /// Every app deployed here, by id.
    pub async fn list(&self) -> Result<Vec<AppInfo>, AppsError> {
        self.call(Command::List).await
    }

    /// The settings in force for `scope` (stored, else the defaults).
    pub async fn settings(&self, scope: &str) -> Result<serde_json::Value, AppsError> {
        self.call(|r| Command::GetSettings(scope.to_string(), r))
            .await?
    }

    /// Validates and stores settings for `scope`; a running app restarts with them. Invalid →
    /// `InvalidSettings` and nothing changes.
    pub async fn set_settings(
        &self,
        scope: &str,
        value: serde_json::Value,
    ) -> Result<(), AppsError> {
        self.call(|r| Command::SetSettings(scope.to_string(), value, r))
            .await?
    }

    /// Back to the defaults (a running app restarts with them).
    pub async fn unset_settings(&self, scope: &str) -> Result<(), AppsError> {
        self.call(|r| Command::UnsetSettings(scope.to_string(), r))
            .await?
    }

    /// The JSON Schema of `scope`.
    pub async fn schema(&self, scope: &str) -> Result<serde_json::Value, AppsError> {
        self.call(|r| Command::Schema(scope.to_string(), r)).await?
    }

    /// The `node` scope's settings in force, updated on every change (`{}` until set). Other
    /// parts of the node (retention, the node's display name) read them here.
    pub fn watch_node_settings(&self) -> watch::Receiver<serde_json::Value> {
        self.node_settings.clone()
    }

    /// The app list, republished whenever it changes (a deploy, a start or stop, an app that
    /// exits or is restarted, new settings): what a live view listens to instead of polling
    /// [`Handle::list`]. It may lag a command's answer by a moment; `list` never does.
    pub fn watch_list(&self) -> watch::Receiver<AppList> {
        self.list.clone()
    }

    /// The files of web app `id`, if deployed and started.
    pub fn web_root(&self, id: &str) -> Option<WebRoot> {
        self.web.borrow().get(id).cloned()
    }

    /// Tells the runtime where the node's API and store API listen (bound addresses, for the
    /// apps' environment) and that they serve: the first call starts the apps that were running
    /// before the node stopped.
    pub async fn serving(&self, api: SocketAddr, store: SocketAddr) -> Result<(), AppsError> {
        self.send(Command::Serving { api, store }).await
    }

    async fn send(&self, command: Command) -> Result<(), AppsError> {
        self.tx.send(command).await.map_err(|_| AppsError::Closed)
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, AppsError> {
        let (reply, rx) = oneshot::channel();
        self.send(make(reply)).await?;
        rx.await.map_err(|_| AppsError::Closed)
    }
}

/// The running app runtime; [`Runtime::shutdown`] stops every app.
pub struct Runtime {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    done: Option<oneshot::Receiver<()>>,
}

impl Runtime {
    /// Opens the apps database and starts the owner thread. Apps that should run start on the
    /// first [`Handle::serving`]. `metrics`: `shoal_apps_running`, `shoal_app_restarts_total`.
    pub fn start(
        config: AppsConfig,
        blobs: BlobService,
        console: crate::console::Console,
        metrics: crate::metrics::AppMetrics,
    ) -> Result<Runtime, AppsError> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (stop, stop_rx) = oneshot::channel();
        let (done_tx, done) = oneshot::channel();
        let (published, thread) = runtime::spawn(config, console, metrics, rx, stop_rx, done_tx)?;
        Ok(Runtime {
            handle: Handle {
                tx,
                blobs,
                node_settings: published.node_settings,
                web: published.web,
                list: published.list,
            },
            stop: Some(stop),
            thread: Some(thread),
            done: Some(done),
        })
    }

    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Stops every app (SIGTERM, SIGKILL after [`STOP_GRACE`]) and the owner thread. Not
    /// cancel-safe: await it to the end.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            let _ =
                tokio::time::timeout(STOP_GRACE + std::time::Duration::from_secs(5), done).await;
        }
        if let Some(thread) = self.thread.take() {
            // The owner has signalled `done`; joining takes no longer than its runtime's drop.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // Dropped without `shutdown`: the owner still stops its apps (children also die with
        // the node process through PR_SET_PDEATHSIG).
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Stores package bytes as a blob (what a node deploys from, and what peers fetch); the
/// package's CID. Refuses a package over [`MAX_PACKAGE_BYTES`].
pub(crate) async fn store_package(blobs: &BlobService, bytes: Bytes) -> Result<Cid, AppsError> {
    if bytes.len() as u64 > MAX_PACKAGE_BYTES {
        return Err(AppsError::TooLarge);
    }
    let body = futures::stream::iter([Ok::<_, std::io::Error>(bytes)]);
    let options = PutOptions {
        name: None,
        mime: Some("application/gzip".into()),
    };
    let meta = blobs.put(body, options).await.map_err(AppsError::Blob)?;
    Ok(meta.cid)
}
