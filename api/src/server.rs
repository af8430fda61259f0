//! The HTTP server under every shoal endpoint (events/node API, console, Pond store API).
//!
//! Our own accept loop instead of `warp::serve`, for two reasons:
//! - `TCP_NODELAY` on every accepted socket: a response written in two parts otherwise stalls
//!   ~40 ms on Nagle + delayed ACK, and one-event-per-request clients crawl;
//! - streaming bodies: warp 0.4 cannot build one, so replies from `ndjson.rs` carry their body
//!   stream in a [`StreamSlot`] extension that this server installs as the body.
//!
//! Every request first passes the server's browser-safety [`Guard`] (`origin.rs`): a refused
//! one is answered 403 before any route sees it, its body unread.
//!
//! Shutdown: [`HttpServer::shutdown`] stops accepting, lets in-flight requests finish for a
//! grace period, then closes what is left (long-lived streams end earlier anyway, when the node
//! signals shutdown).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower_service::Service;
use warp::Filter;

use shoal_engine::metrics::HttpRequests;

use crate::ndjson::{BoxError, StreamSlot};
use crate::origin::Guard;

/// How long in-flight requests may take to finish after shutdown starts.
const GRACE: Duration = Duration::from_secs(3);

type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A bound, running server.
pub struct HttpServer {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    /// Binds `addr` and serves `filter` on it, to requests `guard` lets through. Fails if the
    /// address cannot be bound.
    pub async fn bind<F>(addr: SocketAddr, guard: Guard, filter: F) -> std::io::Result<HttpServer>
    where
        F: Filter<Extract = (warp::reply::Response,), Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
    {
        Self::bind_counted(addr, guard, None, filter).await
    }

    /// [`Self::bind`], counting every answered request (refusals too) in `requests` by route
    /// pattern (`metrics::route_pattern`) and status.
    pub async fn bind_counted<F>(
        addr: SocketAddr,
        guard: Guard,
        requests: Option<HttpRequests>,
        filter: F,
    ) -> std::io::Result<HttpServer>
    where
        F: Filter<Extract = (warp::reply::Response,), Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
    {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, guard, requests, filter, stopped));
        Ok(HttpServer {
            local_addr,
            stop,
            task,
        })
    }

    /// The address actually bound (the port is concrete even if 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, waits up to the grace period for open requests, then closes them.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn accept_loop<F>(
    listener: TcpListener,
    guard: Guard,
    requests: Option<HttpRequests>,
    filter: F,
    mut stopped: watch::Receiver<bool>,
) where
    F: Filter<Extract = (warp::reply::Response,), Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
{
    // Boxed once: each request clones the service, so the route tree is cloned as one `Arc`
    // (its groups are boxed too, `routes` in lib.rs: unboxed, these clones and their drops were
    // ~12% of a single-event publish's node CPU).
    let filter = filter.boxed();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        // Reap finished connection tasks so the set does not grow with the node's uptime.
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            _ = stopped.changed() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Typically out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, %peer, "cannot set TCP_NODELAY");
        }
        let svc = warp::service(filter.clone());
        let guard = guard.clone();
        let requests = requests.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let mut svc = svc.clone();
            let refused = guard.check(req.headers()).err();
            let counted = requests
                .clone()
                .map(|r| (r, crate::metrics::route_pattern(req.uri().path())));
            async move {
                let resp = match refused {
                    Some(e) => {
                        tracing::debug!(%peer, error = %e, "refused a request (browser safety)");
                        warp::Reply::into_response(e)
                    }
                    None => match svc.call(req).await {
                        Ok(resp) => resp,
                        Err(never) => match never {},
                    },
                };
                // Counted when the head is ready: a stream's status is known before its body.
                if let Some((requests, route)) = counted {
                    requests.answered(route, resp.status().as_u16());
                }
                Ok::<_, Infallible>(with_stream_body(resp))
            }
        });
        let builder =
            hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
        let conn = graceful.watch(
            builder
                .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                .into_owned(),
        );
        connections.spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("closing connections still open after the grace period");
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

/// Installs a reply's streaming body, if it has one; else passes warp's body through.
fn with_stream_body(resp: warp::reply::Response) -> hyper::Response<Body> {
    let (mut parts, body) = resp.into_parts();
    let stream = parts
        .extensions
        .remove::<StreamSlot>()
        .and_then(|slot| slot.take());
    let body: Body = match stream {
        Some(stream) => StreamBody::new(stream.map_ok(Frame::data)).boxed_unsync(),
        None => body.map_err(|e| Box::new(e) as BoxError).boxed_unsync(),
    };
    hyper::Response::from_parts(parts, body)
}
