//! `GET /api/v1/nodes`: every node of the swarm as this node knows it from the status gossip
//! (`shoal_engine::status`), this node first — the list `shoal nodes ls --json` prints
//! (API.md, "Apps"). Nodes reached only through others are listed too; `connected` says
//! whether this node is connected to them directly.

use shoal_engine::NodeHandle;
use warp::reply::Response;
use warp::{Filter, Reply};

pub fn routes(
    node: NodeHandle,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::path!("api" / "v1" / "nodes")
        .and(warp::get())
        .and(warp::any().map(move || node.clone()))
        .then(|node: NodeHandle| async move {
            let entries: Vec<_> = node
                .nodes()
                .list()
                .await
                .iter()
                .map(|n| n.entry())
                .collect();
            warp::reply::json(&entries).into_response()
        })
}
