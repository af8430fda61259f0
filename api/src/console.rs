//! The console service's HTTP API (API.md "Console service"), served on its own address
//! (`--console-addr`, default 127.0.0.1:4457):
//! - `POST /api/v1/logs` — one entry; 201 with an empty body once it is stored durably;
//! - `GET /api/v1/logs[?since=<RFC 3339>][&follow=true]` — NDJSON of stored entries (in the order
//!   they were logged), with `follow` then new ones as they come.
//!
//! Requests are parsed by hand from JSON so every error names its field (`severity: ...`,
//! `labels.zone: ...`); unknown fields are ignored and `null` counts as absent for optional ones.
//! Storage is the engine's ([`Console`]); this file only maps HTTP onto it.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Map, Value};
use shoal_engine::console::{parse_rfc3339, Console, ConsoleError, Entry, Severity, StoreError};
use shoal_engine::NodeHandle;
use tokio::sync::watch;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::error::ApiError;
use crate::origin::Guard;
use crate::{body, error, ndjson, ApiConfig, HttpServer};

/// The console routes, every rejection turned into an API error (404/405 included), ready to be
/// served on the console address. `following` streams end when `shutdown` turns true.
pub fn routes(
    console: Console,
    config: ApiConfig,
    shutdown: watch::Receiver<bool>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let with = move || {
        let console = console.clone();
        warp::any().map(move || console.clone())
    };
    let keepalive = config.keepalive;
    let post = warp::path!("api" / "v1" / "logs")
        .and(warp::post())
        .and(with())
        .and(body::limited(config.max_body_bytes))
        .then(|console: Console, body: Bytes| async move {
            match append(&console, &body).await {
                Ok(()) => {
                    warp::reply::with_status(warp::reply(), StatusCode::CREATED).into_response()
                }
                Err(e) => e.into_response(),
            }
        });
    let get = warp::path!("api" / "v1" / "logs")
        .and(warp::get())
        .and(with())
        .and(warp::query::<HashMap<String, String>>())
        .map(move |console: Console, query: HashMap<String, String>| {
            match read(&console, &query, keepalive, shutdown.clone()) {
                Ok(r) => r,
                Err(e) => e.into_response(),
            }
        });
    post.or(get).unify().recover(error::recover).unify()
}

/// `GET /api/v1/logs` alone, for the API server (the dashboard reads the console log from its
/// own origin); rejections are left to the API's recover.
pub fn read_route(
    console: Console,
    config: ApiConfig,
    shutdown: watch::Receiver<bool>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let keepalive = config.keepalive;
    warp::path!("api" / "v1" / "logs")
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .map(move |query: HashMap<String, String>| {
            match read(&console, &query, keepalive, shutdown.clone()) {
                Ok(r) => r,
                Err(e) => e.into_response(),
            }
        })
}

/// Binds the console API of `node` on its configured `console-addr`; `api` is the address the
/// node's API (and its pages) is served on (browser safety, `origin.rs`).
pub async fn serve_node(node: NodeHandle, api: SocketAddr) -> std::io::Result<HttpServer> {
    let config = ApiConfig::from_config(node.config());
    let guard = Guard::new(&node.config().web).with_page_port(api.port());
    serve(
        node.console(),
        node.config().console_addr,
        guard,
        config,
        node.shutdown_signal(),
    )
    .await
}

/// Binds the console API on `addr`.
pub async fn serve(
    console: Console,
    addr: SocketAddr,
    guard: Guard,
    config: ApiConfig,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<HttpServer> {
    HttpServer::bind(addr, guard, routes(console, config, shutdown)).await
}

async fn append(console: &Console, body: &[u8]) -> Result<(), ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))?;
    let entry = parse_entry(value)?;
    console.append(entry).await.map_err(|e| match &e {
        ConsoleError::Store(store) if matches!(**store, StoreError::Full(_)) => {
            ApiError::storage_full(e.to_string())
        }
        ConsoleError::Closed => ApiError::overloaded("the node is shutting down; retry"),
        _ => ApiError::internal(e.to_string()),
    })
}

/// Validates a posted entry; the error names the first bad field.
fn parse_entry(value: Value) -> Result<Entry, ApiError> {
    let Value::Object(mut obj) = value else {
        return Err(ApiError::bad_request(
            "body must be a JSON object (one log entry)",
        ));
    };
    let severity_text = required_string(&mut obj, "severity")?;
    let severity = Severity::parse(&severity_text).ok_or_else(|| {
        ApiError::bad_request(format!(
            "severity: `{severity_text}` is not one of debug, info, warn, error"
        ))
    })?;
    let log_name = required_string(&mut obj, "logName")?;
    let message = required_string(&mut obj, "message")?;
    let producer_name = required_string(&mut obj, "producerName")?;
    let producer_version = required_string(&mut obj, "producerVersion")?;
    let labels = match obj.remove("labels") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(map)) => {
            let mut labels = BTreeMap::new();
            for (k, v) in map {
                match v {
                    Value::String(s) => {
                        labels.insert(k, s);
                    }
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "labels.{k}: must be a string, got {}",
                            kind(&other)
                        )))
                    }
                }
            }
            labels
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "labels: must be an object of strings, got {}",
                kind(&other)
            )))
        }
    };
    let log_timestamp = match obj.remove("logTimestamp") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            parse_rfc3339(&s)
                .map_err(|why| ApiError::bad_request(format!("logTimestamp: {why}")))?;
            Some(s)
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "logTimestamp: must be an RFC 3339 string, got {}",
                kind(&other)
            )))
        }
    };
    let additional_data = match obj.remove("additionalData") {
        None => None,
        Some(v) => Some(
            serde_json::value::to_raw_value(&v)
                .map_err(|e| ApiError::bad_request(format!("additionalData: {e}")))?,
        ),
    };
    Ok(Entry {
        severity,
        log_name,
        message,
        labels,
        producer_name,
        producer_version,
        log_timestamp,
        additional_data,
    })
}

fn required_string(obj: &mut Map<String, Value>, field: &str) -> Result<String, ApiError> {
    match obj.remove(field) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(ApiError::bad_request(format!(
            "{field}: missing (required)"
        ))),
        Some(other) => Err(ApiError::bad_request(format!(
            "{field}: must be a string, got {}",
            kind(&other)
        ))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn read(
    console: &Console,
    query: &HashMap<String, String>,
    keepalive: std::time::Duration,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Response, ApiError> {
    let since = query
        .get("since")
        .map(|s| parse_rfc3339(s).map_err(|why| ApiError::bad_request(format!("since: {why}"))))
        .transpose()?;
    let follow = match query.get("follow").map(String::as_str) {
        None | Some("false") => false,
        Some("true") | Some("") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "follow: `{other}` is not true or false"
            )))
        }
    };
    // A follower ends when the node shuts down, so the server's grace period is not spent on it.
    let stopped = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    let entries = console.read(since, follow).take_until(stopped);
    Ok(ndjson::response(
        entries,
        |line: &String, buf: &mut Vec<u8>| buf.extend_from_slice(line.as_bytes()),
        follow.then_some(keepalive),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any posted entry is stored or refused with a 400; any `since` parses or is a 400
        /// (issue 12 item 9's audit).
        #[test]
        fn entry_and_since_parsers_never_panic(
            v in crate::json::arbitrary(),
            since in "[0-9T:.Z+-]{0,30}|\\PC{0,30}",
        ) {
            let full = |field: &str, value: Value| {
                let mut obj = serde_json::json!({"severity": "info", "logName": "l",
                    "message": "m", "producerName": "p", "producerVersion": "1"});
                obj[field] = value;
                obj
            };
            for entry in [
                v.clone(),
                full("labels", v.clone()),
                full("logTimestamp", v.clone()),
                full("logTimestamp", Value::from(since.clone())),
                full("additionalData", v.clone()),
                full("severity", v.clone()),
            ] {
                if let Err(e) = parse_entry(entry) {
                    prop_assert_eq!(e.code(), "ERR_BAD_REQUEST");
                }
            }
            let _ = parse_rfc3339(&since);
        }
    }
}
