//! Node health: what `GET /api/v1/node/health` answers, for supervisors and load balancers.
//!
//! A node is healthy when it is not shutting down, its store answers a read (a fresh read-only
//! connection reads the sources table, bounded by [`STORE_READ_TIMEOUT`]) and its swarm task
//! still runs (replication needs it). The check only reads what the node already publishes; it
//! touches no writer state and costs one short SQLite read, so polling it every few seconds is
//! fine. Dropping [`check`]'s future is safe.

use std::time::Duration;

use crate::node::NodeHandle;

/// How long the store may take to answer the health read. A WAL read never waits for the
/// writer, so a slower answer means a stuck disk or a starved blocking pool: unhealthy either way.
pub const STORE_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a node is not healthy; the message is the reason given to the caller.
#[derive(Debug, thiserror::Error)]
pub enum Unhealthy {
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error("the store does not answer a read: {0}")]
    Store(#[source] shoal_store::Error),
    #[error("the store did not answer a read within {0:?}")]
    StoreTimeout(Duration),
    #[error("the store read panicked (a bug): see the node's log")]
    StorePanicked,
    #[error(
        "the swarm task is not running: nothing replicates; see the node's log and restart it"
    )]
    SwarmStopped,
}

/// Checks the node; `Ok` when healthy.
pub async fn check(node: &NodeHandle) -> Result<(), Unhealthy> {
    if *node.shutdown_signal().borrow() {
        return Err(Unhealthy::ShuttingDown);
    }
    let store = node.store().clone();
    let read = tokio::task::spawn_blocking(move || store.reader()?.sources().map(|_| ()));
    match tokio::time::timeout(STORE_READ_TIMEOUT, read).await {
        Err(_) => return Err(Unhealthy::StoreTimeout(STORE_READ_TIMEOUT)),
        // Cancelled: the runtime is shutting down.
        Ok(Err(join)) if join.is_cancelled() => return Err(Unhealthy::ShuttingDown),
        Ok(Err(_)) => return Err(Unhealthy::StorePanicked),
        Ok(Ok(Err(e))) => return Err(Unhealthy::Store(e)),
        Ok(Ok(Ok(()))) => {}
    }
    if node.swarm_running() {
        Ok(())
    } else {
        Err(Unhealthy::SwarmStopped)
    }
}
