//! `/api/v1/apps` (API.md "Apps", HTTP) and the web apps' pages at `/apps/<id>/`.
//!
//! Routes map onto [`shoal_engine::apps::Handle`]; status codes come from `error.rs`. A package
//! upload is read up to [`MAX_PACKAGE_BYTES`] (413 beyond, at once when `Content-Length` says
//! so). `?to=` and `?all=true` (the swarm-wide forms) are answered 400 until the swarm-wide
//! runtime lands: [`SwarmForm`] is the hook where they plug in.
//!
//! Web apps: `GET /apps/<id>/<path>` serves files of the app's `dist` directory (`/apps/<id>/`
//! is its `main` page; `/apps/<id>` redirects there so relative links resolve). Paths are
//! percent-decoded per segment and refused when a segment is `..`, `.`, or holds `\` or NUL; the
//! resolved file must stay inside `dist` after following links. Pages are same-origin with the
//! API, so they use it like any client (browser safety: `origin.rs`).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use shoal_engine::apps::{Handle, Package, MAX_PACKAGE_BYTES};
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::error::{self, ApiError};

/// The query of app commands: the swarm-wide forms (`to`, `all`) and `start`/`purge`.
#[derive(Debug, Default, Deserialize)]
pub struct SwarmForm {
    /// `?to=<source>|all`: record the command for other nodes (not supported yet).
    pub to: Option<String>,
    /// `?all=true` on the list: every node's apps (not supported yet).
    pub all: Option<bool>,
    /// `?start=false` on a deploy.
    pub start: Option<bool>,
    /// `?purge=true` on an undeploy.
    pub purge: Option<bool>,
}

impl SwarmForm {
    /// Refuses the swarm-wide forms this node cannot carry out yet.
    fn local_only(&self) -> Result<(), ApiError> {
        if self.to.is_some() {
            return Err(ApiError::bad_request(
                "to: deploying to other nodes is not supported yet; run the command against that node's API",
            ));
        }
        if self.all == Some(true) {
            return Err(ApiError::bad_request(
                "all: listing other nodes' apps is not supported yet; ask each node",
            ));
        }
        Ok(())
    }
}

/// The app routes.
pub fn routes(apps: Handle) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let with = move || {
        let apps = apps.clone();
        warp::any().map(move || apps.clone())
    };
    let list = warp::path!("api" / "v1" / "apps")
        .and(warp::get())
        .and(with())
        .and(warp::query::<SwarmForm>())
        .then(|apps: Handle, q: SwarmForm| async move {
            if let Err(e) = q.local_only() {
                return e.into_response();
            }
            match apps.list().await {
                Ok(list) => warp::reply::json(&list).into_response(),
                Err(e) => error::from_apps(e).into_response(),
            }
        });
    let deploy = warp::path!("api" / "v1" / "apps")
        .and(warp::post())
        .and(with())
        .and(warp::query::<SwarmForm>())
        .and(crate::body::limited(MAX_PACKAGE_BYTES))
        .then(
            |apps: Handle, q: SwarmForm, body: bytes::Bytes| async move {
                if let Err(e) = q.local_only() {
                    return e.into_response();
                }
                if body.is_empty() {
                    return ApiError::bad_request(
                        "body: send the package (.tar.gz made by `shoal apps package`)",
                    )
                    .into_response();
                }
                match apps
                    .deploy(Package::Bytes(body), q.start.unwrap_or(true))
                    .await
                {
                    Ok(d) => warp::reply::with_status(warp::reply::json(&d), StatusCode::CREATED)
                        .into_response(),
                    Err(e) => error::from_apps(e).into_response(),
                }
            },
        );
    let action = warp::path!("api" / "v1" / "apps" / String / String)
        .and(warp::post())
        .and(with())
        .and(warp::query::<SwarmForm>())
        .then(
            |id: String, action: String, apps: Handle, q: SwarmForm| async move {
                if let Err(e) = q.local_only() {
                    return e.into_response();
                }
                let done = match action.as_str() {
                    "start" => apps.start(&id).await,
                    "stop" => apps.stop(&id).await,
                    "restart" => apps.restart(&id).await,
                    _ => {
                        return ApiError::not_found("no such endpoint: use start, stop or restart")
                            .into_response()
                    }
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
        .then(|id: String, apps: Handle, q: SwarmForm| async move {
            if let Err(e) = q.local_only() {
                return e.into_response();
            }
            match apps.undeploy(&id, q.purge.unwrap_or(false)).await {
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
            |id: String, tail: warp::path::Tail, full: warp::path::FullPath, apps: Handle| async move {
                // `/apps/<id>` → `/apps/<id>/`, so the page's relative links resolve inside it.
                if tail.as_str().is_empty() && !full.as_str().ends_with('/') {
                    let mut resp = StatusCode::MOVED_PERMANENTLY.into_response();
                    if let Ok(v) = HeaderValue::from_str(&format!("/apps/{id}/")) {
                        resp.headers_mut().insert(header::LOCATION, v);
                    }
                    return resp;
                }
                match web_file(&apps, &id, tail.as_str()).await {
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
