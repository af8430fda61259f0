//! The owner task of the app runtime: the one holder of the apps database and the app table.
//!
//! It runs on its own thread with a single-threaded tokio runtime (the supervisors and their
//! log forwarders run there too), so apps, however busy or broken, share no worker thread with
//! the node's HTTP or event tasks; and the blocking SQLite calls of the owner (one small
//! statement per command) block no one else. Children are forked from this thread, which
//! lives as long as the runtime, so their `PR_SET_PDEATHSIG` fires only when the node dies.
//!
//! Every command is handled to the end before the next one: validation first, then the disk
//! (database, package dirs), then messages to supervisors (`try_send`: the owner never waits
//! for a supervisor, which may be busy stopping a child for up to 10 s).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use super::db::{Db, Row};
use super::manifest::{Body, Manifest};
use super::settings::{self, Schema, NODE_SCOPE};
use super::supervisor::{self, Control, Launch, Observers, Status, Supervisor, STOP_GRACE};
use super::{AppInfo, AppList, AppsConfig, AppsError, Command, Deployed, State, WebRoot};
use crate::console::Console;
use crate::metrics::AppMetrics;

type WebMap = Arc<BTreeMap<String, WebRoot>>;

/// The watches the owner publishes: the `node` scope's settings, the web apps' files, the app
/// list.
pub(super) struct Published {
    pub node_settings: watch::Receiver<Value>,
    pub web: watch::Receiver<WebMap>,
    pub list: watch::Receiver<AppList>,
}

/// Opens the database, then starts the owner thread.
pub(super) fn spawn(
    config: AppsConfig,
    console: Console,
    metrics: AppMetrics,
    rx: mpsc::Receiver<Command>,
    stop: oneshot::Receiver<()>,
    done: oneshot::Sender<()>,
) -> Result<(Published, std::thread::JoinHandle<()>), AppsError> {
    let apps_dir = config.data_dir.join("apps");
    std::fs::create_dir_all(&apps_dir).map_err(|e| storage(&apps_dir, e))?;
    let db = Db::open(&config.data_dir).map_err(|e| AppsError::Storage(e.to_string()))?;
    let node_settings = db
        .settings(NODE_SCOPE)
        .map_err(|e| AppsError::Storage(e.to_string()))?
        .unwrap_or_else(|| serde_json::json!({}));
    let (node_tx, node_rx) = watch::channel(node_settings);
    let (web_tx, web_rx) = watch::channel(WebMap::default());
    let (list_tx, list_rx) = watch::channel(AppList::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| AppsError::Storage(format!("cannot start the apps runtime: {e}")))?;
    let thread = std::thread::Builder::new()
        .name("apps".into())
        .spawn(move || {
            rt.block_on(async move {
                let node_schema = match Schema::compile(&settings::node_schema()) {
                    Ok(s) => s,
                    Err(e) => {
                        // A bug in our own schema: refuse every node setting rather than none.
                        tracing::error!(error = %e, "the node settings schema does not compile");
                        Schema::any()
                    }
                };
                let mut owner = Owner {
                    api: config.api_addr,
                    store: config.store_addr,
                    config,
                    apps_dir,
                    db,
                    console,
                    apps: BTreeMap::new(),
                    node_settings: node_tx,
                    node_schema,
                    web: web_tx,
                    list: list_tx,
                    observers: Observers {
                        changed: Arc::new(Notify::new()),
                        metrics,
                    },
                    serving: false,
                    seq: 0,
                    retiring: Vec::new(),
                };
                owner.load();
                owner.run(rx, stop).await;
                owner.shutdown().await;
                let _ = done.send(());
            });
        })
        .map_err(|e| AppsError::Storage(format!("cannot start the apps thread: {e}")))?;
    let published = Published {
        node_settings: node_rx,
        web: web_rx,
        list: list_rx,
    };
    Ok((published, thread))
}

fn storage(path: &Path, e: std::io::Error) -> AppsError {
    AppsError::Storage(format!("{}: {e}", path.display()))
}

struct App {
    manifest: Manifest,
    /// The unpacked package.
    dir: PathBuf,
    package: String,
    /// Whether the operator wants it running.
    run: bool,
    /// Process apps only.
    sup: Option<Supervisor>,
}

struct Owner {
    config: AppsConfig,
    apps_dir: PathBuf,
    db: Db,
    console: Console,
    apps: BTreeMap<String, App>,
    node_settings: watch::Sender<Value>,
    node_schema: Schema,
    web: watch::Sender<WebMap>,
    /// What `list` answers, republished after every command and supervisor change.
    list: watch::Sender<AppList>,
    /// Supervisors wake the owner through `observers.changed`.
    observers: Observers,
    api: SocketAddr,
    store: SocketAddr,
    /// Whether the API serves (the first `Serving`): apps start only from then on.
    serving: bool,
    seq: u64,
    /// Supervisors of undeployed apps, stopping; awaited at shutdown.
    retiring: Vec<tokio::task::JoinHandle<()>>,
}

impl Owner {
    /// Loads the deployed apps from the database and their unpacked packages.
    fn load(&mut self) {
        let rows = match self.db.apps() {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the deployed apps");
                return;
            }
        };
        for row in rows {
            let dir = self.apps_dir.join(&row.id).join(&row.version);
            match Manifest::load(&dir) {
                Ok(manifest) => {
                    let sup = matches!(manifest.body, Body::Process(_)).then(|| {
                        supervisor::spawn(
                            self.console.clone(),
                            State::Stopped,
                            self.observers.clone(),
                        )
                    });
                    self.apps.insert(
                        row.id.clone(),
                        App {
                            manifest,
                            dir,
                            package: row.package,
                            run: row.run,
                            sup,
                        },
                    );
                }
                Err(e) => {
                    tracing::error!(app = %row.id, error = %e, "a deployed app's package is unusable; deploy it again")
                }
            }
        }
        self.publish_web();
        self.publish_list();
    }

    async fn run(&mut self, mut rx: mpsc::Receiver<Command>, mut stop: oneshot::Receiver<()>) {
        let changed = self.observers.changed.clone();
        loop {
            tokio::select! {
                _ = &mut stop => return,
                c = rx.recv() => match c {
                    Some(c) => self.handle(c).await,
                    None => return,
                },
                // A supervisor's status changed (state, pid, restarts).
                _ = changed.notified() => {}
            }
            self.publish_list();
        }
    }

    /// Publishes the app list if it changed, and the running-apps gauge with it.
    fn publish_list(&self) {
        let list = self.list();
        let running = list.iter().filter(|a| a.state == State::Running).count();
        self.observers.metrics.set_running(running as u64);
        self.list.send_if_modified(|old| {
            if **old == list {
                false
            } else {
                *old = Arc::new(list);
                true
            }
        });
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Install {
                bytes,
                package,
                start,
                reply,
            } => {
                let _ = reply.send(self.install(bytes, package, start).await);
            }
            Command::Start(id, reply) => {
                let _ = reply.send(self.start(&id, false));
            }
            Command::Restart(id, reply) => {
                let _ = reply.send(self.start(&id, true));
            }
            Command::Stop(id, reply) => {
                let _ = reply.send(self.stop(&id));
            }
            Command::Undeploy { id, purge, reply } => {
                let _ = reply.send(self.undeploy(&id, purge));
            }
            Command::List(reply) => {
                let _ = reply.send(self.list());
            }
            Command::GetSettings(scope, reply) => {
                let _ = reply.send(self.get_settings(&scope));
            }
            Command::SetSettings(scope, value, reply) => {
                let _ = reply.send(self.set_settings(&scope, Some(value)));
            }
            Command::UnsetSettings(scope, reply) => {
                let _ = reply.send(self.set_settings(&scope, None));
            }
            Command::Schema(scope, reply) => {
                let _ = reply.send(self.schema(&scope));
            }
            Command::Serving { api, store } => {
                self.api = api;
                self.store = store;
                if !self.serving {
                    self.serving = true;
                    let ids: Vec<String> = self.apps.keys().cloned().collect();
                    for id in ids {
                        self.apply(&id, false);
                    }
                }
            }
        }
    }

    fn db_err(e: super::db::DbError) -> AppsError {
        AppsError::Storage(e.to_string())
    }

    async fn install(
        &mut self,
        bytes: Bytes,
        package: String,
        start: bool,
    ) -> Result<Deployed, AppsError> {
        self.seq += 1;
        let staging = self
            .apps_dir
            .join(format!(".staging-{}-{}", std::process::id(), self.seq));
        let dest = staging.clone();
        let unpacked = tokio::task::spawn_blocking(move || super::package::unpack(&bytes, &dest))
            .await
            .map_err(|e| AppsError::Storage(format!("the unpacking task failed: {e}")));
        let manifest = match unpacked {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                remove_later(staging);
                return Err(e.into());
            }
            Err(e) => {
                remove_later(staging);
                return Err(e);
            }
        };
        let id = manifest.id.clone();
        let version = manifest.version.to_string();
        let app_dir = self.apps_dir.join(&id);
        let dir = app_dir.join(&version);
        // From here on the new version replaces the old: move the old files aside (a running
        // process keeps its open files), put the new ones in place.
        let swap = (|| {
            std::fs::create_dir_all(&app_dir)?;
            if dir.exists() {
                std::fs::rename(&dir, self.trash_name())?;
            }
            std::fs::rename(&staging, &dir)
        })();
        if let Err(e) = swap {
            remove_later(staging);
            return Err(storage(&dir, e));
        }
        let row = Row {
            id: id.clone(),
            version: version.clone(),
            package: package.clone(),
            run: start,
        };
        self.db.put_app(&row).map_err(Self::db_err)?;
        let previous = self.apps.remove(&id);
        let mut sup = None;
        if let Some(old) = previous {
            if old.dir != dir && old.dir.exists() {
                let trash = self.trash_name();
                match std::fs::rename(&old.dir, &trash) {
                    Ok(()) => remove_later(trash),
                    Err(e) => {
                        tracing::warn!(app = %id, error = %e, "cannot remove the previous version")
                    }
                }
            }
            sup = old.sup;
        }
        let is_process = matches!(manifest.body, Body::Process(_));
        match (is_process, sup.is_some()) {
            (true, false) => {
                sup = Some(supervisor::spawn(
                    self.console.clone(),
                    State::Stopped,
                    self.observers.clone(),
                ))
            }
            (false, true) => {
                // Now a web app: dropping the control channel stops the old process.
                if let Some(old) = sup.take() {
                    self.retiring.push(old.task);
                }
            }
            _ => {}
        }
        tracing::info!(app = %id, %version, %package, start, "app deployed");
        self.apps.insert(
            id.clone(),
            App {
                manifest,
                dir,
                package: package.clone(),
                run: start,
                sup,
            },
        );
        self.apply(&id, true);
        self.publish_web();
        Ok(Deployed {
            id,
            version,
            package,
        })
    }

    fn trash_name(&mut self) -> PathBuf {
        self.seq += 1;
        self.apps_dir
            .join(format!(".trash-{}-{}", std::process::id(), self.seq))
    }

    /// The settings in force for app `id` and whether they validate.
    fn app_settings(&self, id: &str, app: &App) -> Result<(Value, bool), AppsError> {
        let value = self
            .db
            .settings(id)
            .map_err(Self::db_err)?
            .unwrap_or_else(|| app.manifest.defaults.clone());
        let valid = app.manifest.schema.validate(&value).is_ok();
        Ok((value, valid))
    }

    /// Makes app `id` do what it should: run (with its current settings) if wanted, valid and
    /// the API serves; else not. `restart`: a running child is replaced (new version or new
    /// settings); else a running one is left alone.
    fn apply(&mut self, id: &str, restart: bool) {
        let Some(app) = self.apps.get(id) else { return };
        let (settings, valid) = match self.app_settings(id, app) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(app = id, error = %e, "cannot read the app's settings");
                return;
            }
        };
        let Some(sup) = &app.sup else {
            self.publish_web();
            return;
        };
        let running = matches!(sup.status.borrow().state, State::Running | State::Starting);
        let control = if app.run && valid && self.serving {
            if running && !restart {
                return;
            }
            let Body::Process(process) = &app.manifest.body else {
                return;
            };
            Control::Run(Box::new(Launch {
                id: id.to_string(),
                version: app.manifest.version.to_string(),
                package_dir: app.dir.clone(),
                work_dir: self.apps_dir.join(id).join("data"),
                process: process.clone(),
                env: self.env(app, &settings),
            }))
        } else if running {
            Control::Stop
        } else {
            return;
        };
        if let Err(e) = sup.control.try_send(control) {
            tracing::warn!(app = id, error = %e, "the app's supervisor is busy; command dropped");
        }
    }

    /// API.md's environment, on top of the manifest's own `env`.
    fn env(&self, app: &App, settings: &Value) -> BTreeMap<String, String> {
        let loopback = |a: SocketAddr| {
            if a.ip().is_unspecified() {
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), a.port())
            } else {
                a
            }
        };
        let mut env = match &app.manifest.body {
            Body::Process(p) => p.env.clone(),
            Body::Web(_) => BTreeMap::new(),
        };
        let settings = settings.to_string();
        let m = &app.manifest;
        env.insert("SHOAL_APP_ID".into(), m.id.clone());
        env.insert("SHOAL_APP_VERSION".into(), m.version.to_string());
        env.insert("SHOAL_NODE_ID".into(), self.config.node_id.clone());
        env.insert("SHOAL_API".into(), format!("http://{}", loopback(self.api)));
        env.insert("SHOAL_APP_SETTINGS".into(), settings.clone());
        env.insert("SHOAL_APP_DIR".into(), app.dir.display().to_string());
        env.insert(
            "AX_STORE_URI".into(),
            format!("ws://{}/store_api", loopback(self.store)),
        );
        env.insert("AX_APP_SETTINGS".into(), settings);
        env
    }

    fn start(&mut self, id: &str, restart: bool) -> Result<(), AppsError> {
        let app = self
            .apps
            .get(id)
            .ok_or_else(|| AppsError::NotFound(id.to_string()))?;
        let (settings, valid) = self.app_settings(id, app)?;
        if !valid {
            let why = app
                .manifest
                .schema
                .validate(&settings)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            return Err(AppsError::Conflict(format!(
                "the settings of `{id}` do not validate ({why}): set valid ones with \
                 `shoal settings set {id} JSON` first"
            )));
        }
        self.db.set_run(id, true).map_err(Self::db_err)?;
        if let Some(app) = self.apps.get_mut(id) {
            app.run = true;
        }
        self.apply(id, restart);
        self.publish_web();
        Ok(())
    }

    fn stop(&mut self, id: &str) -> Result<(), AppsError> {
        if !self.apps.contains_key(id) {
            return Err(AppsError::NotFound(id.to_string()));
        }
        self.db.set_run(id, false).map_err(Self::db_err)?;
        if let Some(app) = self.apps.get_mut(id) {
            app.run = false;
        }
        self.apply(id, false);
        self.publish_web();
        Ok(())
    }

    fn undeploy(&mut self, id: &str, purge: bool) -> Result<(), AppsError> {
        if !self.apps.contains_key(id) {
            return Err(AppsError::NotFound(id.to_string()));
        }
        self.db.remove_app(id, purge).map_err(Self::db_err)?;
        let Some(app) = self.apps.remove(id) else {
            return Ok(());
        };
        self.publish_web();
        // Move the files aside at once (so a new deploy of the id starts clean); remove them
        // once the supervisor, which drops its control channel's end and stops the child, is
        // done.
        let mut trash = Vec::new();
        let mut aside = |path: &Path, owner: &mut Owner| {
            if path.exists() {
                let t = owner.trash_name();
                match std::fs::rename(path, &t) {
                    Ok(()) => trash.push(t),
                    Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove"),
                }
            }
        };
        aside(&app.dir, self);
        if purge {
            let data = self.apps_dir.join(id).join("data");
            aside(&data, self);
        }
        let task = match app.sup {
            Some(sup) => {
                drop(sup.control);
                Some(sup.task)
            }
            None => None,
        };
        let app_dir = self.apps_dir.join(id);
        let cleanup = tokio::spawn(async move {
            if let Some(task) = task {
                let _ = tokio::time::timeout(STOP_GRACE + Duration::from_secs(5), task).await;
            }
            let _ = tokio::task::spawn_blocking(move || {
                for t in trash {
                    let _ = std::fs::remove_dir_all(t);
                }
                // Empty once both version and data are gone; fails harmlessly otherwise.
                let _ = std::fs::remove_dir(app_dir);
            })
            .await;
        });
        self.retiring.push(cleanup);
        tracing::info!(app = id, purge, "app undeployed");
        Ok(())
    }

    fn list(&self) -> Vec<AppInfo> {
        self.apps
            .iter()
            .map(|(id, app)| {
                let valid = self.app_settings(id, app).map(|(_, v)| v).unwrap_or(false);
                let status = match &app.sup {
                    Some(sup) => sup.status.borrow().clone(),
                    None => Status {
                        state: if app.run {
                            State::Running
                        } else {
                            State::Stopped
                        },
                        pid: None,
                        restarts: 0,
                        started_at: None,
                    },
                };
                let state = if !valid && !matches!(status.state, State::Running) {
                    State::InvalidSettings
                } else {
                    status.state
                };
                AppInfo {
                    id: id.clone(),
                    version: app.manifest.version.to_string(),
                    kind: app.manifest.kind().as_str(),
                    state,
                    settings_valid: valid,
                    pid: status.pid,
                    restarts: status.restarts,
                    started_at: status.started_at,
                    node: self.config.node_id.clone(),
                    package: app.package.clone(),
                }
            })
            .collect()
    }

    fn get_settings(&self, scope: &str) -> Result<Value, AppsError> {
        if scope == NODE_SCOPE {
            return Ok(self.node_settings.borrow().clone());
        }
        let app = self
            .apps
            .get(scope)
            .ok_or_else(|| AppsError::NotFound(scope.to_string()))?;
        Ok(self.app_settings(scope, app)?.0)
    }

    /// `Some`: validate and store; `None`: back to the defaults.
    fn set_settings(&mut self, scope: &str, value: Option<Value>) -> Result<(), AppsError> {
        if scope == NODE_SCOPE {
            let value = match value {
                Some(v) => {
                    self.node_schema
                        .validate(&v)
                        .map_err(AppsError::InvalidSettings)?;
                    self.db.set(scope, &v).map_err(Self::db_err)?;
                    v
                }
                None => {
                    self.db.unset(scope).map_err(Self::db_err)?;
                    serde_json::json!({})
                }
            };
            self.node_settings.send_replace(value);
            return Ok(());
        }
        let app = self
            .apps
            .get(scope)
            .ok_or_else(|| AppsError::NotFound(scope.to_string()))?;
        match value {
            Some(v) => {
                app.manifest
                    .schema
                    .validate(&v)
                    .map_err(AppsError::InvalidSettings)?;
                self.db.set(scope, &v).map_err(Self::db_err)?;
            }
            None => self.db.unset(scope).map_err(Self::db_err)?,
        }
        tracing::info!(app = scope, "app settings changed");
        self.apply(scope, true);
        Ok(())
    }

    fn schema(&self, scope: &str) -> Result<Value, AppsError> {
        if scope == NODE_SCOPE {
            return Ok(settings::node_schema());
        }
        self.apps
            .get(scope)
            .map(|a| a.manifest.schema_json.clone())
            .ok_or_else(|| AppsError::NotFound(scope.to_string()))
    }

    fn publish_web(&self) {
        let map: BTreeMap<String, WebRoot> = self
            .apps
            .iter()
            .filter(|(id, app)| {
                app.run && self.app_settings(id, app).map(|(_, v)| v).unwrap_or(false)
            })
            .filter_map(|(id, app)| match &app.manifest.body {
                Body::Web(w) => Some((
                    id.clone(),
                    WebRoot {
                        dist: app.dir.join(&w.dist),
                        main: w.main.clone(),
                    },
                )),
                Body::Process(_) => None,
            })
            .collect();
        self.web.send_if_modified(|old| {
            if **old == map {
                false
            } else {
                *old = Arc::new(map);
                true
            }
        });
    }

    /// Stops every app: their control channels close, each supervisor stops its child
    /// (SIGTERM, SIGKILL after the grace) and ends.
    async fn shutdown(&mut self) {
        let mut tasks = std::mem::take(&mut self.retiring);
        for (_, app) in std::mem::take(&mut self.apps) {
            if let Some(sup) = app.sup {
                drop(sup.control);
                tasks.push(sup.task);
            }
        }
        let all = futures::future::join_all(tasks);
        if tokio::time::timeout(STOP_GRACE + Duration::from_secs(2), all)
            .await
            .is_err()
        {
            tracing::warn!("some apps did not stop in time");
        }
        tracing::info!("apps stopped");
    }
}

/// Removes a transient directory in the background.
fn remove_later(path: PathBuf) {
    tokio::task::spawn_blocking(move || {
        if path.exists() {
            let _ = std::fs::remove_dir_all(&path);
        }
    });
}
