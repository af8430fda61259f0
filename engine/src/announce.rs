//! The announcer task: builds this node's [`NodeStatus`] from the event offsets, the swarm's
//! [`NetworkState`] and what the apps report ([`LocalApps`] on a watch), signs it and hands it
//! to the swarm to gossip — every [`ANNOUNCE_INTERVAL`], [`AFTER_CONNECT`] after the set of
//! connected peers changed (a new peer learns us at once instead of within an interval; the
//! delay lets gossipsub graft it into the mesh first, its heartbeat is 1 s), and soon after
//! the apps report a change. It owns nothing but its last `sentAt` (strictly growing, so
//! receivers keep the newest); dropping it is safe.
//!
//! [`Nodes`] answers "every node of the swarm" (`GET /api/v1/nodes`, `apps ls --all`): this
//! node's status built on the spot, plus every status the swarm task holds.

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};

use libp2p::identity::Keypair;
use serde::Serialize;
use tokio::sync::{oneshot, watch};

use crate::events::EventService;
use crate::status::{
    AppStatus, CommandOutcome, NodeStatus, SignedStatus, ANNOUNCE_INTERVAL, MAX_LISTED,
};
use crate::swarm::{self, NetworkState};

/// Delay between a change of connected peers and the announcement it causes.
pub const AFTER_CONNECT: Duration = Duration::from_millis(1500);
/// Delay between an apps change and its announcement (folds a burst of changes into one).
const AFTER_APPS_CHANGE: Duration = Duration::from_millis(200);
/// How long a listing waits for the swarm task's answer.
const LIST_TIMEOUT: Duration = Duration::from_secs(5);

/// What the apps part of the node reports for the status; `remote/report.rs` is its writer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalApps {
    /// The `node` settings' `displayName`.
    pub display_name: Option<String>,
    pub apps: Vec<AppStatus>,
    /// Outcomes of remote commands carried out here, newest last.
    pub commands: Vec<CommandOutcome>,
}

/// One node as `GET /api/v1/nodes` lists it (API.md: `shoal nodes ls --json`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeEntry {
    pub source: String,
    pub display_name: Option<String>,
    pub version: String,
    /// This node, or a peer it is connected to directly.
    pub connected: bool,
    /// µs since the epoch when its status was last received (now, for this node).
    pub last_seen: u64,
    pub apps: AppCounts,
    pub events: u64,
    /// The peers the node says it is connected to (its status' list; extension of API.md's
    /// shape): source ids only, at most [`MAX_LISTED`], sorted.
    pub peers: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct AppCounts {
    pub running: u64,
    pub deployed: u64,
}

/// A node's status with what this node knows of it.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub source: String,
    pub connected: bool,
    pub last_seen: u64,
    pub status: NodeStatus,
}

impl NodeView {
    pub fn entry(&self) -> NodeEntry {
        NodeEntry {
            source: self.source.clone(),
            display_name: self.status.display_name.clone(),
            version: self.status.version.clone(),
            connected: self.connected,
            last_seen: self.last_seen,
            apps: AppCounts {
                running: self.status.apps_running,
                deployed: self.status.apps_deployed,
            },
            events: self.status.events,
            peers: listed_peers(&self.status.peers),
        }
    }
}

/// A status' peer list as it may be shown: another node wrote it, so entries that are not
/// peer ids are left out, and it is bounded like the lists a node sends.
fn listed_peers(peers: &[String]) -> Vec<String> {
    let mut out: Vec<String> = peers
        .iter()
        .filter(|p| p.parse::<libp2p::PeerId>().is_ok())
        .take(MAX_LISTED)
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Builds this node's status from the parts that know each fact.
#[derive(Clone)]
pub struct Local {
    events: EventService,
    network: watch::Receiver<NetworkState>,
    apps: watch::Receiver<LocalApps>,
    started: Instant,
}

impl Local {
    pub fn new(
        events: EventService,
        network: watch::Receiver<NetworkState>,
        apps: watch::Receiver<LocalApps>,
    ) -> Self {
        Self {
            events,
            network,
            apps,
            started: Instant::now(),
        }
    }

    pub fn status(&self) -> NodeStatus {
        let events = self
            .events
            .offsets()
            .iter()
            .fold(0u64, |n, (_, o)| n.saturating_add(o.saturating_add(1)));
        let peers = connected_peers(&self.network.borrow());
        let apps = self.apps.borrow().clone();
        let running = apps.apps.iter().filter(|a| a.state == "running").count();
        NodeStatus {
            display_name: apps.display_name,
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_secs: self.started.elapsed().as_secs(),
            events,
            peers: peers.into_iter().take(MAX_LISTED).collect(),
            apps_running: running as u64,
            apps_deployed: apps.apps.len() as u64,
            apps: apps.apps.into_iter().take(MAX_LISTED).collect(),
            commands: apps
                .commands
                .into_iter()
                .rev()
                .take(MAX_LISTED)
                .rev()
                .collect(),
        }
    }
}

fn connected_peers(network: &NetworkState) -> BTreeSet<String> {
    network
        .peers
        .values()
        .filter(|p| p.connected)
        .map(|p| p.peer_id.clone())
        .collect()
}

/// µs since the Unix epoch (0 before it).
fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Every node of the swarm as this node knows it.
#[derive(Clone)]
pub struct Nodes {
    local: Local,
    swarm: swarm::Handle,
}

impl Nodes {
    pub fn new(local: Local, swarm: swarm::Handle) -> Self {
        Self { local, swarm }
    }

    /// This node first, then the others by source id. Safe to drop. If the swarm task does
    /// not answer (stopped), only this node is listed.
    pub async fn list(&self) -> Vec<NodeView> {
        let local = NodeView {
            source: self.swarm.local_peer_id().to_string(),
            connected: true,
            last_seen: now_micros(),
            status: self.local.status(),
        };
        let (tx, rx) = oneshot::channel();
        let received = match self.swarm.send(swarm::Command::Statuses(tx)).await {
            Ok(()) => tokio::time::timeout(LIST_TIMEOUT, rx)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default(),
            Err(_) => vec![],
        };
        let connected = connected_peers(&self.local.network.borrow());
        let mut others: Vec<NodeView> = received
            .into_iter()
            .map(|r| {
                let source = r.status.source.to_string();
                NodeView {
                    connected: connected.contains(&source),
                    source,
                    last_seen: r.last_seen,
                    status: r.status.status,
                }
            })
            .collect();
        others.sort_by(|a, b| a.source.cmp(&b.source));
        std::iter::once(local).chain(others).collect()
    }
}

/// Runs the announcer until `shutdown` flips.
pub async fn run(
    key: Keypair,
    mut local: Local,
    swarm: swarm::Handle,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last_sent = 0u64;
    let mut peers = connected_peers(&local.network.borrow());
    let mut next = tokio::time::Instant::now() + AFTER_CONNECT;
    let mut apps_open = true;
    loop {
        tokio::select! {
            _ = crate::stopped(&mut shutdown) => break,
            _ = tokio::time::sleep_until(next) => {
                let sent_at = now_micros().max(last_sent.saturating_add(1));
                match SignedStatus::sign(&key, sent_at, local.status()) {
                    Ok(status) => {
                        if swarm.send(swarm::Command::AnnounceStatus(status)).await.is_err() {
                            break;
                        }
                        last_sent = sent_at;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot sign the node status"),
                }
                next = tokio::time::Instant::now() + ANNOUNCE_INTERVAL;
            }
            changed = local.network.changed() => {
                if changed.is_err() {
                    break;
                }
                let now = connected_peers(&local.network.borrow_and_update());
                if now != peers {
                    peers = now;
                    next = next.min(tokio::time::Instant::now() + AFTER_CONNECT);
                }
            }
            changed = local.apps.changed(), if apps_open => {
                if changed.is_err() {
                    // No apps part (or it stopped): nothing more will change there.
                    apps_open = false;
                } else {
                    local.apps.borrow_and_update();
                    next = next.min(tokio::time::Instant::now() + AFTER_APPS_CHANGE);
                }
            }
        }
    }
    tracing::debug!("status announcer stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_peers_keep_peer_ids_only_sorted_and_bounded() {
        let ids: Vec<String> = (0..MAX_LISTED + 5)
            .map(|_| {
                Keypair::generate_ed25519()
                    .public()
                    .to_peer_id()
                    .to_string()
            })
            .collect();
        let mut given = vec!["<script>".to_string(), ids[1].clone()];
        given.extend(ids.iter().cloned());
        let listed = listed_peers(&given);
        assert!(!listed.iter().any(|p| p == "<script>"));
        assert_eq!(listed.len(), MAX_LISTED - 1, "bounded, then deduplicated");
        assert!(listed.windows(2).all(|w| w[0] < w[1]), "sorted, no repeats");
    }
}
