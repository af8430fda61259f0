//! `/api/v1/node`: `id` (the source id as plain text), `info` (JSON; the struct lives in the
//! engine so that the swarm can add fields without touching the API; this file adds where the
//! node's other HTTP servers listen, [`Servers`], so clients given only the API URL find the
//! console), `events` (the same info as server-sent events, on every change: `node_events.rs`)
//! and `health` (200
//! `{"status":"ok"}`, or 503 `ERR_UNHEALTHY` naming the reason; the check is
//! `shoal_engine::health`).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use shoal_engine::NodeHandle;
use warp::reply::Response;
use warp::{Filter, Reply};

/// Where the console and store API servers listen, once bound: `shoal run` binds the API
/// first and fills this in after the others (their ports may be chosen by the OS). Until then,
/// and for an API served without them, node info reports the configured addresses.
#[derive(Debug, Default)]
pub struct Servers {
    console: OnceLock<SocketAddr>,
    store: OnceLock<SocketAddr>,
}

impl Servers {
    /// Records the bound addresses (the first call wins).
    pub fn set(&self, console: SocketAddr, store: SocketAddr) {
        let _ = self.console.set(console);
        let _ = self.store.set(store);
    }
}

/// The node routes.
pub fn routes(
    node: NodeHandle,
    servers: Arc<Servers>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let with = move || {
        let node = node.clone();
        warp::any().map(move || node.clone())
    };
    let id = warp::path!("api" / "v1" / "node" / "id")
        .and(warp::get())
        .and(with())
        .map(|node: NodeHandle| {
            // text/plain, no trailing newline (API.md).
            warp::reply::with_header(
                node.source().to_string(),
                "content-type",
                "text/plain; charset=utf-8",
            )
            .into_response()
        });
    let info_servers = servers.clone();
    let info = warp::path!("api" / "v1" / "node" / "info")
        .and(warp::get())
        .and(with())
        .then(move |node: NodeHandle| {
            let servers = info_servers.clone();
            async move {
                match info_json(&node, &servers).await {
                    Ok(info) => warp::reply::json(&info).into_response(),
                    Err(e) => crate::error::ApiError::internal(e.to_string()).into_response(),
                }
            }
        });
    let events = warp::path!("api" / "v1" / "node" / "events")
        .and(warp::get())
        .and(with())
        .map(move |node: NodeHandle| crate::node_events::response(node, servers.clone()));
    let health = warp::path!("api" / "v1" / "node" / "health")
        .and(warp::get())
        .and(with())
        .then(|node: NodeHandle| async move {
            match shoal_engine::health::check(&node).await {
                Ok(()) => warp::reply::json(&serde_json::json!({"status": "ok"})).into_response(),
                Err(e) => crate::error::ApiError::unhealthy(e.to_string()).into_response(),
            }
        });
    id.or(info).unify().or(health).unify().or(events).unify()
}

/// Node info as `GET /api/v1/node/info` answers it: the engine's facts plus where this node's
/// other servers listen.
pub(crate) async fn info_json(
    node: &NodeHandle,
    servers: &Servers,
) -> Result<serde_json::Value, serde_json::Error> {
    let mut info = serde_json::to_value(node.info().await)?;
    let config = node.config();
    let console = servers
        .console
        .get()
        .copied()
        .unwrap_or(config.console_addr);
    let store = servers.store.get().copied().unwrap_or(config.store_addr);
    info["consoleAddr"] = console.to_string().into();
    info["storeAddr"] = store.to_string().into();
    Ok(info)
}
