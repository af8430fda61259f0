//! What this node tells the swarm of its apps: the reporter task fills [`LocalApps`], which
//! the status announcer (`announce.rs`) signs and gossips. So `apps ls --all` and `nodes ls`
//! on any node show this node's apps without a single event: status is gossip, kept in memory
//! by each node, newest per node (`status/mod.rs` says why not events).
//!
//! It reads the app runtime's list every [`POLL`] (a state change shows in the swarm within
//! that plus the announcer's short delay; the announcer sends only when something changed or
//! its interval passed), the `node` settings' `displayName`, and the outcomes of remote
//! commands from the applier (the last [`OUTCOMES`]).

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::announce::LocalApps;
use crate::apps::{AppInfo, Handle};
use crate::status::{AppStatus, CommandOutcome};

/// How often the app list is read.
pub const POLL: Duration = Duration::from_secs(1);
/// Command outcomes kept for the status.
pub const OUTCOMES: usize = 16;
/// Outcomes queued between the applier and the reporter.
pub const OUTCOME_QUEUE: usize = 64;

/// Runs the reporter until `shutdown` flips or the app runtime closes.
pub fn spawn(
    apps: Handle,
    report: watch::Sender<LocalApps>,
    mut outcomes: mpsc::Receiver<CommandOutcome>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut node_settings = apps.watch_node_settings();
        let mut recent: VecDeque<CommandOutcome> = VecDeque::new();
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut outcomes_open = true;
        loop {
            tokio::select! {
                _ = crate::stopped(&mut shutdown) => break,
                _ = tick.tick() => {}
                _ = node_settings.changed() => {}
                o = outcomes.recv(), if outcomes_open => match o {
                    Some(o) => {
                        recent.push_back(o);
                        while recent.len() > OUTCOMES {
                            recent.pop_front();
                        }
                    }
                    None => outcomes_open = false,
                },
            }
            let Ok(list) = apps.list().await else { break };
            let display_name = node_settings
                .borrow_and_update()
                .get("displayName")
                .and_then(|v| v.as_str())
                .map(str::to_string);
            let now = LocalApps {
                display_name,
                apps: list.into_iter().map(status_of).collect(),
                commands: recent.iter().cloned().collect(),
            };
            report.send_if_modified(|old| {
                let changed = *old != now;
                *old = now;
                changed
            });
        }
    })
}

fn status_of(app: AppInfo) -> AppStatus {
    AppStatus {
        id: app.id,
        version: app.version,
        kind: app.kind.to_string(),
        // `State` serializes to its API name (`invalid-settings`).
        state: serde_json::to_value(app.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        settings_valid: app.settings_valid,
        pid: app.pid,
        restarts: app.restarts,
        started_at: app.started_at,
    }
}
