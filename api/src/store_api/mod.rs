//! The WebSocket store API for Actyx Pond apps (API.md, last section):
//! `ws://<store-addr>/store_api`.
//!
//! Parties: one Pond app per connection, the node. Goal: real `@actyx/pond` 1.x/2.x apps (and
//! 3.x through its v1 fallback) run unchanged. Non-goals: authentication (apps on a node are
//! trusted), the Actyx v2 HTTP API (every other path on the store address is a plain 404 JSON
//! error, which is what makes Pond 3 fall back to this socket). Web pages are kept out by the
//! server's browser-safety guard (`origin.rs`): a WebSocket has no CORS, so without it any page
//! open in the device's browser could read and write every event here.
//!
//! Parts, one module each:
//! - [`wire`]: frames and payload shapes, parsed by hand so errors name their field;
//! - [`conn`]: one connection — framing, multiplexing, cancel, the bounded outgoing backlog;
//! - [`events`]: the event services, mapped onto the node's one `EventService` (the same query
//!   engine, subscription mechanism and group-commit publish path as the HTTP API);
//! - [`live`]: `requestPresent`, `highestSeenOffsets`, `requestConnectivity`;
//! - [`misc`]: snapshots (`shoal_engine::snapshots`), logging and commands (the console log).
//!
//! Frame errors: a request whose payload has the wrong shape gets `badRequest` naming the
//! field; a frame that is not JSON or carries no readable `requestId` gets `badRequest` with
//! `requestId` -1 ([`wire::NO_REQUEST`]), a number no client uses, so Pond's own request
//! routing ignores it. The connection stays usable in every case.
//!
//! Limits (per connection): [`MAX_IN_FLIGHT`] concurrent requests, [`OUT_QUEUE`] outgoing frames
//! and [`OUT_BYTES`] buffered, and a peer that accepts no data for [`STALL`] is disconnected: a client that stops
//! reading costs a bounded amount of memory and never slows other clients or publishing (its
//! subscriptions park and lag the engine's broadcast instead of holding it up).

pub mod conn;
pub mod events;
pub mod live;
pub mod misc;
pub mod wire;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use shoal_engine::snapshots::Snapshots;
use shoal_engine::NodeHandle;
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::HttpServer;

/// Every service this API offers (`unknownEndpoint` lists them).
pub const SERVICES: &[&str] = &[
    events::GET_SOURCE_ID,
    events::REQUEST_PRESENT,
    events::HIGHEST_SEEN,
    events::REQUEST_PERSISTED,
    events::REQUEST_ALL,
    events::PERSIST,
    events::CONNECTIVITY,
    misc::STORE_SNAPSHOT,
    misc::RETRIEVE_SNAPSHOT,
    misc::INVALIDATE_SNAPSHOTS,
    misc::LOGGING,
    misc::COMMANDS,
];

/// Concurrent requests per connection; more get a `serviceError` until some finish.
pub const MAX_IN_FLIGHT: usize = 4096;
/// Outgoing frames buffered per connection before request tasks wait.
pub const OUT_QUEUE: usize = 64;
/// Outgoing bytes buffered per connection (frames queued or in the socket's write buffer)
/// before request tasks wait: with [`OUT_QUEUE`], what a client that stops reading can cost.
pub const OUT_BYTES: usize = 4 * 1024 * 1024;
/// A connection whose client accepts no data for this long is closed.
pub const STALL: Duration = Duration::from_secs(30);
/// Largest incoming message.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// What every connection shares.
#[derive(Clone)]
pub struct Shared {
    pub node: NodeHandle,
    pub snapshots: Snapshots,
}

/// The store address's routes: `/store_api` (WebSocket) and a 404 JSON error for anything else.
pub fn routes(
    shared: Arc<Shared>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let socket = warp::path("store_api")
        .and(warp::path::end())
        .and(warp::ws())
        .map(move |ws: warp::ws::Ws| {
            let shared = shared.clone();
            ws.max_message_size(MAX_MESSAGE_BYTES)
                .max_frame_size(MAX_MESSAGE_BYTES)
                .on_upgrade(move |socket| conn::run(socket, shared))
                .into_response()
        });
    // Any other path is a rejection `recover` answers with a 404 JSON error (Pond 3 probes
    // `/api/v2/node/id` here and falls back to the socket on any non-2xx answer).
    socket.recover(crate::error::recover).unify()
}

/// Binds the store API on `node`'s configured `store-addr`; opens the snapshot store in the
/// data dir. `api` is the address the node's API (and its pages, whose apps may use this
/// socket) is served on (browser safety, `origin.rs`).
pub async fn serve(node: NodeHandle, api: std::net::SocketAddr) -> std::io::Result<HttpServer> {
    let data_dir = node.config().data_dir.clone();
    let snapshots = tokio::task::spawn_blocking(move || Snapshots::open(&data_dir))
        .await
        .map_err(std::io::Error::other)?
        .map_err(std::io::Error::other)?;
    let addr = node.config().store_addr;
    let guard = crate::origin::Guard::new(&node.config().web).with_page_port(api.port());
    let shared = Arc::new(Shared { node, snapshots });
    HttpServer::bind(addr, guard, routes(shared)).await
}
