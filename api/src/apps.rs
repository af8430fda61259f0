//! `/api/v1/apps` (API.md "Apps", HTTP) and the web apps' pages at `/apps/<id>/`.
//!
//! Routes map onto [`shoal_engine::apps::Handle`]; status codes come from `error.rs`. A package
//! upload is read up to [`MAX_PACKAGE_BYTES`] (413 beyond, at once when `Content-Length` says
//! so). The swarm-wide forms: `?to=<source>|all` records the command as an event
//! ([`Commander`]; the targets carry it out when it reaches them) and answers at once — 201
//! with the package for a deploy, 202 `{"command","to","action","app"}` otherwise; `?all=true`
//! on the list adds every other node's apps as their gossiped status last reported them.
//!
//! Web apps: `GET /apps/<id>/<path>` serves files of the app's `dist` directory (`/apps/<id>/`
//! is its `main` page; `/apps/<id>` redirects there so relative links resolve). Paths are
//! percent-decoded per segment and refused when a segment is `..`, `.`, or holds `\` or NUL; the
//! resolved file must stay inside `dist` after following links. Pages are same-origin with the
//! API, so they use it like any client (browser safety: `origin.rs`).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::json;
use shoal_engine::announce::Nodes;
use shoal_engine::apps::{Handle, Package, MAX_PACKAGE_BYTES};
use shoal_engine::remote::{Action, Commander};
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::error::{self, ApiError};

/// The query of app commands: the swarm-wide forms (`to`, `all`) and `start`/`purge`.
#[derive(Debug, Default, Deserialize)]
pub struct SwarmForm {
    /// `?to=<source>|all`: record the command for those nodes.
    pub to: Option<String>,
    /// `?all=true` on the list: every node's apps.
    pub all: Option<bool>,
    /// `?start=false` on a deploy.
    pub start: Option<bool>,
    /// `?purge=true` on an undeploy.
    pub purge: Option<bool>,
}

/// Records `action` for `to` and answers 202 with the command.
pub async fn give(commander: &Commander, to: &str, action: Action) -> Response {
    match commander.command(to, action).await {
        Ok(given) => warp::reply::with_status(warp::reply::json(&given), StatusCode::ACCEPTED)
            .into_response(),
        Err(e) => error::from_give(e).into_response(),
    }
}

fn created<T: serde::Serialize>(v: &T) -> Response {
    warp::reply::with_status(warp::reply::json(v), StatusCode::CREATED).into_response()
}

/// What the app routes use.
#[derive(Clone)]
struct Parts {
    apps: Handle,
    commander: Commander,
    nodes: Nodes,
}

/// The app routes.
pub fn routes(
    apps: Handle,
    commander: Commander,
    nodes: Nodes,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let parts = Parts {
        apps,
        commander,
        nodes,
    };
    let with = move || {
        let parts = parts.clone();
        warp::any().map(move || parts.clone())
    };
    let list = warp::path!("api" / "v1" / "apps")
        .and(warp::get())
        .and(with())
        .and(warp::query::<SwarmForm>())
        .then(|p: Parts, q: SwarmForm| async move {
            if q.to.is_some() {
                return ApiError::bad_request("to: a listing takes `all=true`, not `to`")
                    .into_response();
            }
            let local = match p.apps.list().await {
                Ok(list) => list,
                Err(e) => return error::from_apps(e).into_response(),
            };
            if q.all != Some(true) {
                return warp::reply::json(&local).into_response();
            }
            let mut all: Vec<serde_json::Value> = local
                .iter()
                .filter_map(|a| serde_json::to_value(a).ok())
                .collect();
            // This node first (listed fresh above), then the others as their status says.
            for node in p.nodes.list().await.into_iter().skip(1) {
                for a in node.status.apps {
                    all.push(json!({
                        "id": a.id, "version": a.version, "kind": a.kind, "state": a.state,
                        "settingsValid": a.settings_valid, "pid": a.pid, "restarts": a.restarts,
                        "startedAt": a.started_at, "node": node.source,
                    }));
                }
            }
            warp::reply::json(&all).into_response()
        });
    let deploy = warp::path!("api" / "v1" / "apps")
        .and(warp::post())
        .and(with())
        .and(warp::query::<SwarmForm>())
        .and(crate::body::limited(MAX_PACKAGE_BYTES))
        .then(|p: Parts, q: SwarmForm, body: bytes::Bytes| async move {
            if body.is_empty() {
                return ApiError::bad_request(
                    "body: send the package (.tar.gz made by `shoal apps package`)",
                )
                .into_response();
            }
            let start = q.start.unwrap_or(true);
            match q.to {
                Some(to) => match p.commander.deploy(&to, body, start).await {
                    Ok(d) => created(&d),
                    Err(e) => error::from_give(e).into_response(),
                },
                None => match p.apps.deploy(Package::Bytes(body), start).await {
                    Ok(d) => created(&d),
                    Err(e) => error::from_apps(e).into_response(),
                },
            }
        });
    let action = warp::path!("api" / "v1" / "apps" / String / String)
        .and(warp::post())
        .and(with())
        .and(warp::query::<SwarmForm>())
        .then(
            |id: String, action: String, p: Parts, q: SwarmForm| async move {
                let remote = match action.as_str() {
                    "start" => Action::Start { app: id.clone() },
                    "stop" => Action::Stop { app: id.clone() },
                    "restart" => Action::Restart { app: id.clone() },
                    _ => {
                        return ApiError::not_found("no such endpoint: use start, stop or restart")
                            .into_response()
                    }
                };
                if let Some(to) = q.to {
                    return give(&p.commander, &to, remote).await;
                }
                let done = match remote {
                    Action::Start { .. } => p.apps.start(&id).await,
                    Action::Stop { .. } => p.apps.stop(&id).await,
                    _ => p.apps.restart(&id).await,
                };
                match done {
                    Ok(()) => StatusCode::ACCEPTED.into_response(),
                    Err(e) => error::from_apps(e).into_response(),
                }
            },
        );
    let undeploy = warp::path!("api" / "v1" / "apps" / String)
        .and(warp::delete())
        .and(with())
        .and(warp::query::<SwarmForm>())
        .then(|id: String, p: Parts, q: SwarmForm| async move {
            let purge = q.purge.unwrap_or(false);
            if let Some(to) = q.to {
                return give(&p.commander, &to, Action::Undeploy { app: id, purge }).await;
            }
            match p.apps.undeploy(&id, purge).await {
                Ok(()) => StatusCode::NO_CONTENT.into_response(),
                Err(e) => error::from_apps(e).into_response(),
            }
        });
    let web = warp::path("apps")
        .and(warp::path::param::<String>())
        .and(warp::path::tail())
        .and(warp::path::full())
        .and(warp::get())
        .and(with())
        .then(
            |id: String, tail: warp::path::Tail, full: warp::path::FullPath, p: Parts| async move {
                // `/apps/<id>` → `/apps/<id>/`, so the page's relative links resolve inside it.
                if tail.as_str().is_empty() && !full.as_str().ends_with('/') {
                    let mut resp = StatusCode::MOVED_PERMANENTLY.into_response();
                    if let Ok(v) = HeaderValue::from_str(&format!("/apps/{id}/")) {
                        resp.headers_mut().insert(header::LOCATION, v);
                    }
                    return resp;
                }
                match web_file(&p.apps, &id, tail.as_str()).await {
                    Ok(resp) => resp,
                    Err(e) => e.into_response(),
                }
            },
        );
    list.or(deploy)
        .unify()
        .or(action)
        .unify()
        .or(undeploy)
        .unify()
        .or(web)
        .unify()
}

/// Serves one file of web app `id`.
async fn web_file(apps: &Handle, id: &str, tail: &str) -> Result<Response, ApiError> {
    let root = apps
        .web_root(id)
        .ok_or_else(|| ApiError::not_found(format!("no web app `{id}` runs here")))?;
    let rel = if tail.is_empty() {
        PathBuf::from(&root.main)
    } else {
        safe_path(tail)?
    };
    let dist = root.dist.clone();
    let found = tokio::task::spawn_blocking(move || -> Option<(PathBuf, Vec<u8>)> {
        let base = dist.canonicalize().ok()?;
        let mut path = base.join(&rel).canonicalize().ok()?;
        if !path.starts_with(&base) {
            return None;
        }
        if path.is_dir() {
            path = path.join("index.html");
        }
        let bytes = std::fs::read(&path).ok()?;
        Some((path, bytes))
    })
    .await
    .map_err(|e| ApiError::internal(format!("reading a web app file failed: {e}")))?;
    let (path, bytes) =
        found.ok_or_else(|| ApiError::not_found(format!("no file `{tail}` in web app `{id}`")))?;
    let mut resp = Response::new(bytes.into());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(&path)),
    );
    resp.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

/// A request tail as a relative path of plain segments, or 404 (never a path outside).
fn safe_path(tail: &str) -> Result<PathBuf, ApiError> {
    let refused = || ApiError::not_found("no such file");
    let mut out = PathBuf::new();
    for raw in tail.split('/') {
        if raw.is_empty() {
            continue;
        }
        let seg = percent_decode(raw).ok_or_else(refused)?;
        if seg == "." || seg == ".." || seg.contains(['\\', '\0', '/']) {
            return Err(refused());
        }
        out.push(seg);
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn content_type(path: &Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .as_deref()
    {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("ico") => "image/x-icon",
        Some("webp") => "image/webp",
        Some("wasm") => "application/wasm",
        Some("woff2") => "font/woff2",
        Some("woff") => "font/woff",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_is_refused() {
        assert_eq!(safe_path("a/b.js").unwrap(), PathBuf::from("a/b.js"));
        assert_eq!(safe_path("a%20b.js").unwrap(), PathBuf::from("a b.js"));
        for bad in [
            "../x",
            "a/../../x",
            "%2e%2e/x",
            "a%2f..%2fb",
            "a%5c..",
            "%00",
            "%zz",
        ] {
            assert!(safe_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn content_types() {
        assert_eq!(
            content_type(Path::new("a/index.HTML")),
            "text/html; charset=utf-8"
        );
        assert_eq!(
            content_type(Path::new("x.mjs")),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type(Path::new("x")), "application/octet-stream");
    }
}
