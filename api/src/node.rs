//! `/api/v1/node`: `id` (the source id as plain text), `info` (JSON; the struct lives in the
//! engine so that the swarm can add fields without touching the API) and `health` (200
//! `{"status":"ok"}`, or 503 `ERR_UNHEALTHY` naming the reason; the check is
//! `shoal_engine::health`).

use shoal_engine::NodeHandle;
use warp::reply::Response;
use warp::{Filter, Reply};

/// The node routes.
pub fn routes(
    node: NodeHandle,
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
    let info = warp::path!("api" / "v1" / "node" / "info")
        .and(warp::get())
        .and(with())
        .then(
            |node: NodeHandle| async move { warp::reply::json(&node.info().await).into_response() },
        );
    let health = warp::path!("api" / "v1" / "node" / "health")
        .and(warp::get())
        .and(with())
        .then(|node: NodeHandle| async move {
            match shoal_engine::health::check(&node).await {
                Ok(()) => warp::reply::json(&serde_json::json!({"status": "ok"})).into_response(),
                Err(e) => crate::error::ApiError::unhealthy(e.to_string()).into_response(),
            }
        });
    id.or(info).unify().or(health).unify()
}
