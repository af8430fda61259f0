//! The node dashboard (API.md "Metrics and dashboard"): static files compiled into the binary
//! and served at `/` and `/ui/<file>` on the API address, so the page is same-origin with the
//! API it reads (browser safety: `origin.rs` admits the node's own pages) and works offline.
//!
//! The files are plain HTML, CSS and an ES module under `api/ui/`: no build step, no CDN.
//! What the page shows comes from the API itself; its live view is `GET /api/v1/node/events`
//! (`node.rs`).

use warp::reply::Response;
use warp::{Filter, Reply};

/// Every file of the page: name under `/ui/`, content type, bytes.
const FILES: [(&str, &str, &str); 3] = [
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../ui/index.html"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../ui/style.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../ui/app.js"),
    ),
];

fn file(name: &str) -> Option<Response> {
    let (_, content_type, body) = FILES.iter().find(|(n, _, _)| *n == name)?;
    let mut resp = warp::reply::with_header(*body, "content-type", *content_type).into_response();
    // The page changes with the binary: a restarted node must not be shown with a stale script.
    resp.headers_mut().insert(
        "cache-control",
        warp::http::HeaderValue::from_static("no-cache"),
    );
    Some(resp)
}

/// `GET /` and `GET /ui/<file>`; other `/ui/` names are 404.
pub fn routes() -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let index = warp::path::end()
        .and(warp::get())
        .and_then(|| async { file("index.html").ok_or_else(warp::reject::not_found) });
    let ui = warp::path!("ui" / String)
        .and(warp::get())
        .and_then(|name: String| async move { file(&name).ok_or_else(warp::reject::not_found) });
    index.or(ui).unify()
}
