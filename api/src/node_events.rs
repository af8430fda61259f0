//! `GET /api/v1/node/events`: node info and the app list as server-sent events
//! (`text/event-stream`), what the dashboard's live view listens to instead of polling.
//!
//! Two kinds of event, each sent once at the start and then after every change:
//! - unnamed (`message`): the whole node info (as `GET /api/v1/node/info`), after a change of
//!   the swarm's `NetworkState` watch (peers, known offsets, addresses, the node list) or of the
//!   stored offsets;
//! - `event: apps`: the app list (as `GET /api/v1/apps`), after the app runtime republishes it
//!   (deploy, start/stop, an exit or restart, new settings).
//!
//! Changes are coalesced: after a change the stream waits [`COALESCE`] and
//! sends one event for everything that changed meanwhile, so a 100k-event publish costs a few
//! events a second per open tab, not one per commit. A comment line is sent after
//! [`KEEPALIVE`] of silence (proxies). The stream ends when the node shuts down or the client
//! goes away; it holds no buffer beyond the one event being written.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use shoal_engine::NodeHandle;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;

use crate::ndjson::{BoxError, StreamSlot};
use crate::node::Servers;

/// Wait after a change before sending, collecting further changes into the same event.
const COALESCE: Duration = Duration::from_millis(250);
/// Silence after which a keep-alive comment is sent.
const KEEPALIVE: Duration = Duration::from_secs(15);

struct State {
    node: NodeHandle,
    servers: Arc<Servers>,
    network: tokio::sync::watch::Receiver<shoal_engine::NetworkState>,
    offsets: tokio::sync::watch::Receiver<shoal_engine::OffsetMap>,
    apps: tokio::sync::watch::Receiver<shoal_engine::apps::AppList>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    first: bool,
}

/// What woke the stream.
enum Wake {
    Node,
    Apps,
    Quiet,
    End,
}

/// The 200 event-stream response.
pub(crate) fn response(node: NodeHandle, servers: Arc<Servers>) -> Response {
    let state = State {
        network: node.network(),
        offsets: node.events().offsets_watch(),
        apps: node.apps().watch_list(),
        shutdown: node.shutdown_signal(),
        node,
        servers,
        first: true,
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        let (mut node_changed, mut apps_changed) = (st.first, st.first);
        if !st.first {
            let wake = tokio::select! {
                r = st.network.changed() => if r.is_ok() { Wake::Node } else { Wake::End },
                r = st.offsets.changed() => if r.is_ok() { Wake::Node } else { Wake::End },
                r = st.apps.changed() => if r.is_ok() { Wake::Apps } else { Wake::End },
                _ = shoal_wait(&mut st.shutdown) => Wake::End,
                _ = tokio::time::sleep(KEEPALIVE) => Wake::Quiet,
            };
            match wake {
                Wake::End => return None,
                Wake::Quiet => {
                    return Some((
                        Ok::<_, BoxError>(Bytes::from_static(b": keep-alive\n\n")),
                        st,
                    ))
                }
                Wake::Node => node_changed = true,
                Wake::Apps => apps_changed = true,
            }
            tokio::time::sleep(COALESCE).await;
            // Everything up to now goes into these events.
            node_changed |= st.network.has_changed().unwrap_or(false)
                | st.offsets.has_changed().unwrap_or(false);
            apps_changed |= st.apps.has_changed().unwrap_or(false);
            st.network.borrow_and_update();
            st.offsets.borrow_and_update();
        }
        st.first = false;
        let mut events = String::new();
        if node_changed {
            match crate::node::info_json(&st.node, &st.servers).await {
                Ok(info) => events += &format!("data: {info}\n\n"),
                Err(e) => return Some((Err(Box::new(e) as BoxError), st)),
            }
        }
        if apps_changed {
            let list = st.apps.borrow_and_update().clone();
            match serde_json::to_string(&*list) {
                Ok(json) => events += &format!("event: apps\ndata: {json}\n\n"),
                Err(e) => return Some((Err(Box::new(e) as BoxError), st)),
            }
        }
        Some((Ok(Bytes::from(events)), st))
    });
    let mut resp = Response::new(Bytes::new().into());
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp.extensions_mut()
        .insert(StreamSlot::new(Box::pin(stream)));
    resp
}

/// Resolves once `shutdown` is true or its sender is gone.
async fn shoal_wait(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}
