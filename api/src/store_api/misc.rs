//! Snapshots (`shoal_engine::snapshots`), and the app's logging and command reports (the
//! console service's log, readable with `shoal logs tail`).

use std::collections::BTreeMap;

use serde_json::value::RawValue;
use serde_json::{json, Value};
use shoal_engine::console::{Entry, Severity};
use shoal_engine::snapshots::{EventKey, Snapshot, SnapshotError};

use super::conn::{Done, Outcome, Responder};
use super::wire::{self, BadRequest, ErrorKind};
use super::Shared;

pub const STORE_SNAPSHOT: &str = "/ax/snapshots/storeSnapshot";
pub const RETRIEVE_SNAPSHOT: &str = "/ax/snapshots/retrieveSnapshot";
pub const INVALIDATE_SNAPSHOTS: &str = "/ax/snapshots/invalidateSnapshots";
pub const LOGGING: &str = "/ax/misc/logging";
pub const COMMANDS: &str = "/ax/misc/commands";

/// `logName` of entries from this API.
const LOG_NAME: &str = "pond";

fn snapshot_error(e: SnapshotError) -> ErrorKind {
    if e.is_full() {
        return ErrorKind::ServiceError(Value::String(e.to_string()));
    }
    tracing::warn!(error = %e, "store API: snapshot store failed");
    ErrorKind::InternalError
}

async fn reply(r: &Responder, payload: &str) -> Outcome {
    Ok(if r.next(payload).await {
        Done::Complete
    } else {
        Done::Quiet
    })
}

fn key(v: &wire::EventKey) -> EventKey {
    EventKey {
        lamport: v.lamport,
        source: v.source.clone(),
        psn: v.psn,
    }
}

pub async fn store_snapshot(shared: &Shared, payload: Option<&RawValue>, r: &Responder) -> Outcome {
    let obj = wire::object(payload, "an object {semantics, name, key, psnMap, ...}")?;
    let p = "payload";
    let event_key = wire::EventKey::parse(wire::field(&obj, p, "key")?, "payload.key")?;
    let psn_map = wire::psn_map(wire::field(&obj, p, "psnMap")?, "payload.psnMap")?;
    let horizon = match obj.get("horizon") {
        None | Some(Value::Null) => None,
        Some(h) => Some(
            wire::EventKey::parse(h, "payload.horizon")?
                .to_json()
                .to_string(),
        ),
    };
    let snapshot = Snapshot {
        semantics: wire::string(&obj, p, "semantics")?,
        name: wire::string(&obj, p, "name")?,
        version: wire::uint(&obj, p, "version")?,
        tag: wire::string(&obj, p, "tag")?,
        key: key(&event_key),
        cycle: wire::uint(&obj, p, "cycle")?,
        psn_map: psn_map.to_string(),
        horizon,
        state: wire::string(&obj, p, "blob")?,
    };
    let stored = shared
        .snapshots
        .store(snapshot)
        .await
        .map_err(snapshot_error)?;
    reply(r, if stored { "true" } else { "false" }).await
}

pub async fn retrieve_snapshot(
    shared: &Shared,
    payload: Option<&RawValue>,
    r: &Responder,
) -> Outcome {
    let obj = wire::object(payload, "an object {semantics, name, version}")?;
    let p = "payload";
    let semantics = wire::string(&obj, p, "semantics")?;
    let name = wire::string(&obj, p, "name")?;
    let version = wire::uint(&obj, p, "version")?;
    let found = shared
        .snapshots
        .latest(semantics, name, version)
        .await
        .map_err(snapshot_error)?;
    let Some(s) = found else {
        return reply(r, "null").await;
    };
    let psn_map: Value = serde_json::from_str(&s.psn_map).unwrap_or_else(|_| json!({}));
    let horizon: Value = s
        .horizon
        .as_deref()
        .and_then(|h| serde_json::from_str(h).ok())
        .unwrap_or(Value::Null);
    let body = json!({
        "state": s.state,
        "psnMap": psn_map,
        "eventKey": {"lamport": s.key.lamport, "psn": s.key.psn, "sourceId": s.key.source},
        "horizon": horizon,
        "cycle": s.cycle,
    });
    reply(r, &body.to_string()).await
}

pub async fn invalidate_snapshots(
    shared: &Shared,
    payload: Option<&RawValue>,
    r: &Responder,
) -> Outcome {
    let obj = wire::object(payload, "an object {semantics, name, key}")?;
    let p = "payload";
    let semantics = wire::string(&obj, p, "semantics")?;
    let name = wire::string(&obj, p, "name")?;
    let event_key = wire::EventKey::parse(wire::field(&obj, p, "key")?, "payload.key")?;
    let n = shared
        .snapshots
        .invalidate(semantics.clone(), name.clone(), key(&event_key))
        .await
        .map_err(snapshot_error)?;
    if n > 0 {
        tracing::info!(semantics, name, invalidated = n, "snapshots invalidated");
    }
    reply(r, "null").await
}

/// Pond's levels (`DEBUG`, `INFO`, `WARN`/`WARNING`, `ERROR`, any case) as console severities.
fn severity(level: &str) -> Severity {
    match level.to_ascii_lowercase().as_str() {
        "debug" | "trace" => Severity::Debug,
        "warn" | "warning" => Severity::Warn,
        "error" | "fatal" => Severity::Error,
        _ => Severity::Info,
    }
}

async fn log(
    shared: &Shared,
    severity: Severity,
    message: String,
    labels: BTreeMap<String, String>,
    data: Option<&RawValue>,
) -> Result<(), ErrorKind> {
    let entry = Entry {
        severity,
        log_name: LOG_NAME.into(),
        message,
        labels,
        producer_name: "actyx-pond".into(),
        producer_version: String::new(),
        log_timestamp: None,
        additional_data: data.map(ToOwned::to_owned),
    };
    shared.node.console().append(entry).await.map_err(|e| {
        tracing::warn!(error = %e, "store API: cannot write the console log");
        ErrorKind::ServiceError(Value::String(format!("cannot store the log entry: {e}")))
    })
}

pub async fn logging(shared: &Shared, payload: Option<&RawValue>, r: &Responder) -> Outcome {
    let obj = wire::object(payload, "an object {level, tag, message}")?;
    let p = "payload";
    let level = wire::string(&obj, p, "level")?;
    let tag = wire::string(&obj, p, "tag")?;
    let message = wire::string(&obj, p, "message")?;
    let labels = BTreeMap::from([("tag".to_string(), tag)]);
    log(shared, severity(&level), message, labels, None).await?;
    reply(r, "null").await
}

pub async fn commands(shared: &Shared, payload: Option<&RawValue>, r: &Responder) -> Outcome {
    let obj = wire::object(payload, "an object {type, ...}")?;
    let ty = match obj.get("type") {
        Some(Value::String(t)) => t.clone(),
        _ => return Err(BadRequest::at("payload.type", "missing (a string)").into()),
    };
    if ty == "subscribe" {
        // A channel for commands to the app; shoal sends none yet. Stays open until cancelled
        // or the node shuts down.
        let mut shutdown = shared.node.shutdown_signal();
        let _ = shutdown.wait_for(|stop| *stop).await;
        return Ok(Done::Quiet);
    }
    let (severity, message) = match ty.as_str() {
        "alert" => (
            Severity::Warn,
            format!(
                "alert: {}",
                obj.get("message").and_then(Value::as_str).unwrap_or("")
            ),
        ),
        "meta" => (
            Severity::Info,
            format!(
                "meta: {}",
                obj.get("message").and_then(Value::as_str).unwrap_or("")
            ),
        ),
        other => (Severity::Debug, other.to_string()),
    };
    let labels = BTreeMap::from([("command".to_string(), ty.clone())]);
    log(shared, severity, message, labels, payload).await?;
    reply(r, "null").await
}
