//! The applier: every node's task that carries out the app commands addressed to it (its
//! source id or `all`), local and replicated alike, through its own app runtime.
//!
//! It subscribes to command events tagged for this node or for `all` above the offsets
//! recorded in `applied.rs` (stored ones first, then live ones as they are stored, whether
//! published here or replicated — after a partition heals too), and handles them one at a
//! time: parse (a bad one is logged and skipped), admit (once per event, the last command per
//! subject wins), carry out, record. The record is saved after each command, before the next.
//!
//! A deploy fetches the package blob through the blob service (from peers when it is not
//! here). A package no peer delivers is retried with backoff for [`FETCH_PATIENCE`] (the
//! commanding node may be out of reach a while after its command came through another node);
//! meanwhile later commands wait, which keeps them in order. Other failures (the app is not
//! deployed here, invalid settings, a bad package) are final: logged, recorded as handled.
//! The outcome of each command goes to the status reporter (`report.rs`).
//!
//! Shutdown: the task ends between commands, or in a fetch retry without recording it (the
//! next start carries it out).

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use shoal_store::Event;
use tokio::sync::{mpsc, watch};

use super::applied::{self, Admit, Applied, Stamp};
use super::{Action, Command, Target, TAG};
use crate::apps::{AppsError, Handle, Package};
use crate::blobs::BlobsError;
use crate::events::{EventService, Filter, StreamSelector, Subscription};
use crate::status::CommandOutcome;

/// How long a deploy keeps trying to fetch a package no peer delivers.
pub const FETCH_PATIENCE: Duration = Duration::from_secs(600);
/// First wait between fetch attempts (doubling to [`FETCH_BACKOFF_MAX`]).
const FETCH_BACKOFF: Duration = Duration::from_secs(1);
const FETCH_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long the applier waits before resubscribing after its subscription broke.
const RESUBSCRIBE: Duration = Duration::from_secs(5);

/// Starts the applier of node `me`; outcomes go to `outcomes` (dropped when full).
pub fn spawn(
    events: EventService,
    apps: Handle,
    data_dir: PathBuf,
    outcomes: mpsc::Sender<CommandOutcome>,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let path = data_dir.join(applied::FILE);
        let applied = tokio::task::spawn_blocking({
            let path = path.clone();
            move || Applied::load(&path)
        })
        .await
        .unwrap_or_default();
        let me = events.source().to_string();
        let mut applier = Applier {
            me,
            apps,
            applied,
            path,
            outcomes,
            shutdown,
        };
        applier.run(&events).await;
        tracing::debug!("app command applier stopped");
    })
}

struct Applier {
    me: String,
    apps: Handle,
    applied: Applied,
    path: PathBuf,
    outcomes: mpsc::Sender<CommandOutcome>,
    shutdown: watch::Receiver<bool>,
}

/// Longest outcome text put into the status (an error message may quote a peer's input).
const MAX_OUTCOME: usize = 256;

fn clip(mut s: String) -> String {
    if s.len() > MAX_OUTCOME {
        let mut end = MAX_OUTCOME;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// What became of one command.
enum Done {
    Ok,
    /// Refused or failed for good (recorded as handled).
    Failed(String),
    /// The node is stopping: not recorded, carried out after the next start.
    Stopping,
}

impl Applier {
    async fn run(&mut self, events: &EventService) {
        loop {
            let mut stream = events.subscribe(self.subscription());
            loop {
                let mut shutdown = self.shutdown.clone();
                let event = tokio::select! {
                    _ = crate::stopped(&mut shutdown) => return,
                    e = stream.next() => e,
                };
                match event {
                    Some(Ok(event)) => {
                        if !self.handle(&event).await {
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "app command subscription broke; resubscribing");
                        break;
                    }
                    None => break,
                }
            }
            let mut shutdown = self.shutdown.clone();
            tokio::select! {
                _ = crate::stopped(&mut shutdown) => return,
                _ = tokio::time::sleep(RESUBSCRIBE) => {}
            }
        }
    }

    /// Command events for this node or for all, above what was handled.
    fn subscription(&self) -> Subscription {
        let selector = |to: Target| StreamSelector {
            tags: vec![TAG.to_string(), to.tag()],
            ..StreamSelector::default()
        };
        Subscription {
            lower: self.applied.lower(),
            filter: Filter(vec![
                selector(Target::All),
                selector(Target::Source(self.me.clone())),
            ]),
        }
    }

    /// Handles one event; false when the node is stopping.
    async fn handle(&mut self, event: &Event) -> bool {
        let source = event.source.to_string();
        let id = format!("{source}/{}", event.offset);
        let command = match Command::parse(event.payload.get()) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(command = %id, error = %e, "skipping a bad app command");
                self.record(&source, event.offset, None).await;
                return true;
            }
        };
        // The tags chose the event; the payload must agree (a peer may write any tags).
        if !Target::parse(&command.to).is_ok_and(|t| t.includes(&self.me)) {
            self.record(&source, event.offset, None).await;
            return true;
        }
        let stamp = Stamp {
            lamport: event.lamport,
            source: source.clone(),
        };
        let subject = command.action.subject_key();
        let outcome = match self.applied.admit(&source, event.offset, &stamp, &subject) {
            Admit::Handled => return true,
            Admit::Superseded => {
                tracing::info!(command = %id, subject = %subject, "app command superseded by a later one; skipped");
                self.record(&source, event.offset, None).await;
                "skipped: a later command for it was carried out".to_string()
            }
            Admit::Apply => match self.carry_out(&id, &command.action).await {
                Done::Stopping => return false,
                Done::Ok => {
                    tracing::info!(command = %id, action = command.action.name(), app = command.action.subject(), "app command carried out");
                    self.record(&source, event.offset, Some((subject, stamp)))
                        .await;
                    "ok".to_string()
                }
                Done::Failed(why) => {
                    tracing::warn!(command = %id, action = command.action.name(), app = command.action.subject(), error = %why, "app command failed");
                    self.record(&source, event.offset, None).await;
                    why
                }
            },
        };
        let _ = self.outcomes.try_send(CommandOutcome {
            command: id,
            action: command.action.name().to_string(),
            app: command.action.subject().to_string(),
            outcome: clip(outcome),
        });
        true
    }

    /// Marks the event handled (and the subject's last command, if carried out) and saves.
    async fn record(&mut self, source: &str, offset: u64, applied: Option<(String, Stamp)>) {
        self.applied.handled(source, offset);
        if let Some((subject, stamp)) = applied {
            self.applied.applied(&subject, stamp);
        }
        let (record, path) = (self.applied.clone(), self.path.clone());
        let saved = tokio::task::spawn_blocking(move || record.save(&path)).await;
        if let Ok(Err(e)) = saved {
            tracing::warn!(error = %e, "cannot save the record of applied app commands; they may repeat after a restart");
        }
    }

    async fn carry_out(&mut self, id: &str, action: &Action) -> Done {
        let result = match action {
            Action::Deploy { package, start, .. } => return self.deploy(id, package, *start).await,
            Action::Start { app } => self.apps.start(app).await,
            Action::Stop { app } => self.apps.stop(app).await,
            Action::Restart { app } => self.apps.restart(app).await,
            Action::Undeploy { app, purge } => match self.apps.undeploy(app, *purge).await {
                // Already gone (e.g. the command repeats after a crash): what it asks holds.
                Err(AppsError::NotFound(_)) => Ok(()),
                r => r,
            },
            Action::Settings { scope, settings } => {
                self.apps.set_settings(scope, settings.clone()).await
            }
            Action::UnsetSettings { scope } => self.apps.unset_settings(scope).await,
        };
        match result {
            Ok(()) => Done::Ok,
            Err(AppsError::Closed) => Done::Stopping,
            Err(e) => Done::Failed(e.to_string()),
        }
    }

    /// Deploys the package blob, retrying while no peer delivers it.
    async fn deploy(&mut self, id: &str, package: &str, start: bool) -> Done {
        let cid = match package.parse() {
            Ok(cid) => cid,
            Err(e) => return Done::Failed(format!("package: `{package}` is not a CID: {e}")),
        };
        let give_up = tokio::time::Instant::now() + FETCH_PATIENCE;
        let mut backoff = FETCH_BACKOFF;
        loop {
            match self.apps.deploy(Package::Blob(cid), start).await {
                Ok(_) => return Done::Ok,
                Err(AppsError::Closed) => return Done::Stopping,
                Err(AppsError::Blob(BlobsError::NotFound(why)))
                    if tokio::time::Instant::now() + backoff < give_up =>
                {
                    tracing::info!(command = id, %cid, error = %why, retry_in = ?backoff, "app package not delivered yet; retrying");
                    let mut shutdown = self.shutdown.clone();
                    tokio::select! {
                        _ = crate::stopped(&mut shutdown) => return Done::Stopping,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(FETCH_BACKOFF_MAX);
                }
                Err(AppsError::Blob(BlobsError::ShuttingDown)) => return Done::Stopping,
                Err(e) => return Done::Failed(e.to_string()),
            }
        }
    }
}
