//! `/api/v1/node`: `id` (the source id as plain text) and `info` (JSON; the struct lives in the
//! engine so that the swarm can add fields without touching the API).

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
    id.or(info).unify()
}
