//! shoal-api: the HTTP face of a node (API.md), on warp.
//!
//! Principal items:
//! - [`routes`]: every events and node endpoint, with errors in API.md's format;
//! - [`HttpServer`] (`server.rs`): binds an address and serves a filter with `TCP_NODELAY` and
//!   streaming bodies; the console and Pond store APIs use it too;
//! - [`ApiConfig`]: the API's limits;
//! - [`origin::Guard`]: browser safety (API.md), checked by the server before every route.
//!
//! One file per route group (`events.rs`, `node.rs`); `error.rs` is the only place status codes
//! and `errorCode`s are chosen; `ndjson.rs` streams; `body.rs` reads bounded JSON bodies. No
//! business logic here: requests map onto `shoal_engine` calls.

pub mod apps;
pub mod blobs;
pub mod body;
pub mod console;
pub mod dashboard;
pub mod dump;
pub mod error;
pub mod events;
pub mod fields;
mod json;
pub mod metrics;
pub mod ndjson;
pub mod node;
mod node_events;
pub mod nodes;
pub mod origin;
pub mod server;
pub mod settings;
pub mod store_api;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use shoal_engine::{Config, NodeHandle};
use warp::reply::Response;
use warp::Filter;

pub use error::ApiError;
pub use server::HttpServer;

/// Limits of the HTTP API.
#[derive(Debug, Clone, Copy)]
pub struct ApiConfig {
    /// Largest JSON body accepted (413 above).
    pub max_body_bytes: u64,
    /// Silence after which a subscription sends a keep-alive `\n`.
    pub keepalive: Duration,
}

impl ApiConfig {
    pub fn from_config(config: &Config) -> Self {
        Self {
            max_body_bytes: config.max_body_bytes,
            keepalive: config.keepalive,
        }
    }
}

/// Events and node endpoints of `node`, every rejection turned into an API error.
pub fn routes(
    node: NodeHandle,
    config: ApiConfig,
    servers: Arc<node::Servers>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let blob_service = node.blobs();
    let console = console::read_route(node.console(), config, node.shutdown_signal());
    let apps = node.apps();
    let commander = node.commander();
    let nodes = node.nodes();
    // Each group boxed: warp's `or` clones the routes after the one it tries first, on every
    // request, and unboxed that cloned every handle they hold (a single-event publish spent
    // ~10% of its CPU in those clones and drops). A boxed group clones as one `Arc`.
    events::routes(node.events(), config)
        .boxed()
        .or(dashboard::routes().boxed())
        .unify()
        .or(console.boxed())
        .unify()
        .or(dump::routes(node.backup()).boxed())
        .unify()
        .or(nodes::routes(node.clone()).boxed())
        .unify()
        .or(metrics::routes(node.clone()).boxed())
        .unify()
        .or(node::routes(node, servers).boxed())
        .unify()
        .or(blobs::routes(blob_service, config.max_body_bytes).boxed())
        .unify()
        .or(apps::routes(apps.clone(), commander.clone(), nodes).boxed())
        .unify()
        .or(settings::routes(apps, commander, config.max_body_bytes).boxed())
        .unify()
        .recover(error::recover)
        .unify()
}

/// Binds the events/node API on `node`'s configured `api-addr`; node info reports the other
/// servers' addresses once they are set in `servers`.
pub async fn serve(node: NodeHandle, servers: Arc<node::Servers>) -> std::io::Result<HttpServer> {
    let config = ApiConfig::from_config(node.config());
    let addr = node.config().api_addr;
    let guard = origin::Guard::new(&node.config().web);
    let requests = node.metrics().http();
    HttpServer::bind_counted(addr, guard, Some(requests), routes(node, config, servers)).await
}
