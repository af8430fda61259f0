//! `GET /metrics` (Prometheus text 0.0.4, or OpenMetrics 1.0 when the scraper's `Accept` asks
//! for it) and the route patterns the API server counts requests under.
//!
//! The metrics themselves are the engine's (`shoal_engine::metrics`); this file only picks the
//! format and names routes. [`route_pattern`] maps a request path onto one of a fixed set of
//! patterns (`/api/v1/blobs/{cid}`, never the CID itself), so `shoal_http_requests_total` has a
//! bounded number of series whatever paths clients send.

use shoal_engine::metrics::Format;
use shoal_engine::NodeHandle;
use warp::reply::Response;
use warp::{Filter, Reply};

/// The `/metrics` route.
pub fn routes(
    node: NodeHandle,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::path!("metrics")
        .and(warp::get())
        .and(warp::header::optional::<String>("accept"))
        .then(move |accept: Option<String>| {
            let node = node.clone();
            async move {
                let format = match accept {
                    Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
                    _ => Format::Prometheus,
                };
                let text = node.metrics_text(format).await;
                warp::reply::with_header(text, "content-type", format.content_type())
                    .into_response()
            }
        })
}

/// The route pattern `path` belongs to, for `shoal_http_requests_total{route}`; `"other"` for
/// any path no route serves (404s of scanners must not make series).
pub fn route_pattern(path: &str) -> &'static str {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        [""] => "/",
        ["metrics"] => "/metrics",
        ["ui", ..] => "/ui/{file}",
        ["apps", _, ..] => "/apps/{id}/{file}",
        ["api", "v1", rest @ ..] => match rest {
            ["events", "offsets"] => "/api/v1/events/offsets",
            ["events", "publish"] => "/api/v1/events/publish",
            ["events", "query"] => "/api/v1/events/query",
            ["events", "subscribe"] => "/api/v1/events/subscribe",
            ["events", "subscribe_monotonic"] => "/api/v1/events/subscribe_monotonic",
            ["node", "id"] => "/api/v1/node/id",
            ["node", "info"] => "/api/v1/node/info",
            ["node", "health"] => "/api/v1/node/health",
            ["node", "events"] => "/api/v1/node/events",
            ["nodes"] => "/api/v1/nodes",
            ["blobs"] => "/api/v1/blobs",
            ["blobs", "names", _] => "/api/v1/blobs/names/{name}",
            ["blobs", _] => "/api/v1/blobs/{cid}",
            ["apps"] => "/api/v1/apps",
            ["apps", _] => "/api/v1/apps/{id}",
            ["apps", _, ..] => "/api/v1/apps/{id}/{action}",
            ["settings", _] => "/api/v1/settings/{scope}",
            ["logs"] => "/api/v1/logs",
            _ => "other",
        },
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::route_pattern;

    #[test]
    fn paths_map_to_patterns_not_to_themselves() {
        for (path, pattern) in [
            ("/", "/"),
            ("/metrics", "/metrics"),
            ("/ui/app.js", "/ui/{file}"),
            ("/api/v1/events/publish", "/api/v1/events/publish"),
            (
                "/api/v1/blobs/bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
                "/api/v1/blobs/{cid}",
            ),
            (
                "/api/v1/blobs/names/report.pdf",
                "/api/v1/blobs/names/{name}",
            ),
            (
                "/api/v1/settings/com.example.app",
                "/api/v1/settings/{scope}",
            ),
            ("/apps/com.example/index.html", "/apps/{id}/{file}"),
            ("/wp-admin/setup.php", "other"),
            ("/api/v1/events/publish/extra", "other"),
            ("/api/v2/node/id", "other"),
        ] {
            assert_eq!(route_pattern(path), pattern, "{path}");
        }
    }
}
