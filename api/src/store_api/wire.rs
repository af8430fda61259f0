//! The store API's wire format: frames in and out, and the shapes of its payloads
//! (store-API events, `OffsetMapWithDefault`, `SubscriptionSet`, `EventKey`).
//!
//! Parsing is by hand over `serde_json::Value` so that every rejection names its field
//! (`payload.fromPsnsExcluding.default: ...`); unknown fields are ignored. Event payloads are
//! never re-encoded: outgoing events are written with their stored payload bytes, incoming ones
//! are kept as `RawValue`. Knows nothing of sockets or the engine's services.

use std::collections::BTreeMap;
use std::io::Write;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use shoal_engine::{Event, Filter, OffsetMap, SourceId, StreamSelector};

use crate::json::{write_str, write_str_array};

/// Pond 2.x writes this into `semantics` and `name` of tag-only events.
pub const PLACEHOLDER: &str = "_t_";

/// A parse failure; the message names the field (the v1 API's field errors, shared).
pub use crate::fields::FieldError as BadRequest;
pub use crate::fields::{field, int, string, uint};

pub type Parsed<T> = Result<T, BadRequest>;

// ---- frames in ----

/// A client frame.
#[derive(Debug)]
pub enum Incoming<'a> {
    Request {
        service: String,
        id: u64,
        payload: Option<&'a RawValue>,
    },
    Cancel {
        id: u64,
    },
}

#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(rename = "type", default)]
    ty: Option<Value>,
    #[serde(rename = "serviceId", default)]
    service_id: Option<Value>,
    #[serde(rename = "requestId", default)]
    request_id: Option<Value>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

/// Parses a text frame. On failure, also returns the request id if one could be read (so the
/// error can be addressed to that request).
pub fn parse_frame(text: &str) -> Result<Incoming<'_>, (Option<u64>, BadRequest)> {
    let raw: RawFrame<'_> = serde_json::from_str(text).map_err(|e| {
        (
            None,
            BadRequest(format!("malformed frame (a JSON object is expected): {e}")),
        )
    })?;
    let id = match raw.request_id.as_ref().map(request_id) {
        Some(Ok(id)) => id,
        Some(Err(e)) => return Err((None, e)),
        None => {
            return Err((
                None,
                BadRequest::at("requestId", "missing (a non-negative integer)"),
            ))
        }
    };
    match raw.ty.as_ref().and_then(Value::as_str) {
        Some("request") => {
            let service = match raw.service_id {
                Some(Value::String(s)) => s,
                _ => return Err((Some(id), BadRequest::at("serviceId", "missing (a string)"))),
            };
            let payload = raw.payload.filter(|p| p.get() != "null");
            Ok(Incoming::Request {
                service,
                id,
                payload,
            })
        }
        Some("cancel") => Ok(Incoming::Cancel { id }),
        Some(other) => Err((
            Some(id),
            BadRequest::at(
                "type",
                format!("unknown frame type `{other}` (request or cancel)"),
            ),
        )),
        None => Err((
            Some(id),
            BadRequest::at("type", "missing (\"request\" or \"cancel\")"),
        )),
    }
}

fn request_id(v: &Value) -> Parsed<u64> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 9.1e15)
                    .map(|f| f as u64)
            })
            .ok_or_else(|| BadRequest::at("requestId", "must be a non-negative integer")),
        _ => Err(BadRequest::at(
            "requestId",
            "must be a non-negative integer",
        )),
    }
}

// ---- frames out ----

/// Request id used for errors about frames that carry no readable request id (clients number
/// their requests from 0 up, so this never matches one of theirs).
pub const NO_REQUEST: i64 = -1;

/// `{"type":"next","requestId":N,"payload":<payload>}`.
pub fn next(id: u64, payload: &str) -> String {
    let mut s = String::with_capacity(payload.len() + 48);
    s.push_str("{\"type\":\"next\",\"requestId\":");
    s.push_str(&id.to_string());
    s.push_str(",\"payload\":");
    s.push_str(payload);
    s.push('}');
    s
}

/// `{"type":"complete","requestId":N}`.
pub fn complete(id: u64) -> String {
    format!("{{\"type\":\"complete\",\"requestId\":{id}}}")
}

/// Error kinds of API.md.
#[derive(Debug, Clone)]
pub enum ErrorKind {
    UnknownEndpoint { endpoint: String },
    BadRequest(String),
    ServiceError(Value),
    InternalError,
}

/// `{"type":"error","requestId":N,"kind":K}`.
pub fn error(id: i64, kind: &ErrorKind) -> String {
    let kind = match kind {
        ErrorKind::UnknownEndpoint { endpoint } => serde_json::json!({
            "type": "unknownEndpoint", "endpoint": endpoint,
            "validEndpoints": super::SERVICES,
        }),
        ErrorKind::BadRequest(message) => {
            serde_json::json!({"type": "badRequest", "message": message})
        }
        ErrorKind::ServiceError(value) => {
            serde_json::json!({"type": "serviceError", "value": value})
        }
        ErrorKind::InternalError => serde_json::json!({"type": "internalError"}),
    };
    serde_json::json!({"type": "error", "requestId": id, "kind": kind}).to_string()
}

/// Appends the store-API form of `e` to `out`; the payload goes out as stored.
pub fn write_event(out: &mut Vec<u8>, e: &Event) {
    out.extend_from_slice(b"{\"sourceId\":");
    write_str(out, e.source.as_str());
    let _ = write!(
        out,
        ",\"psn\":{},\"lamport\":{},\"timestamp\":{},\"semantics\":",
        e.offset, e.lamport, e.timestamp
    );
    write_str(out, &e.semantics);
    out.extend_from_slice(b",\"name\":");
    write_str(out, &e.name);
    out.extend_from_slice(b",\"tags\":");
    write_str_array(out, &e.tags);
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(e.payload.get().as_bytes());
    out.push(b'}');
}

/// A JSON array of store-API events.
pub fn events_array<'a>(events: impl IntoIterator<Item = &'a Event>) -> String {
    let mut out = Vec::with_capacity(4096);
    out.push(b'[');
    for (i, e) in events.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_event(&mut out, e);
    }
    out.push(b']');
    // Only valid UTF-8 went in (strings from `str`, payloads from `RawValue`).
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// `{"psns":{...},"default":"min"}` for a map of offsets.
pub fn offsets_with_default(map: &BTreeMap<SourceId, u64>) -> String {
    let mut psns = Map::new();
    for (s, o) in map {
        psns.insert(s.to_string(), Value::from(*o));
    }
    serde_json::json!({"psns": psns, "default": "min"}).to_string()
}

// ---- payload shapes ----

/// The payload as a JSON object (`what` describes the expected payload in the error).
pub fn object(payload: Option<&RawValue>, what: &str) -> Parsed<Map<String, Value>> {
    let raw = payload.ok_or_else(|| BadRequest::at("payload", format!("missing ({what})")))?;
    match serde_json::from_str::<Value>(raw.get()) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(BadRequest::at("payload", format!("must be {what}"))),
    }
}

/// `{"lamport","psn","sourceId"}`, ordered `(lamport, sourceId, psn)`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventKey {
    pub lamport: u64,
    pub source: String,
    pub psn: u64,
}

impl EventKey {
    pub fn parse(v: &Value, path: &str) -> Parsed<EventKey> {
        let obj = v
            .as_object()
            .ok_or_else(|| BadRequest::at(path, "must be an object {lamport, psn, sourceId}"))?;
        Ok(EventKey {
            lamport: uint(obj, path, "lamport")?,
            psn: uint(obj, path, "psn")?,
            source: string(obj, path, "sourceId")?,
        })
    }

    pub fn to_json(&self) -> Value {
        serde_json::json!({"lamport": self.lamport, "psn": self.psn, "sourceId": self.source})
    }
}

/// A plain `{source: psn}` map (snapshots' `psnMap`), checked and passed through.
pub fn psn_map(v: &Value, path: &str) -> Parsed<Value> {
    let obj = v
        .as_object()
        .ok_or_else(|| BadRequest::at(path, "must be an object {sourceId: psn}"))?;
    for (k, p) in obj {
        if !p.is_number() {
            return Err(BadRequest::at(&format!("{path}.{k}"), "must be a number"));
        }
    }
    Ok(v.clone())
}

/// One side of `OffsetMapWithDefault`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Min,
    Max,
    /// A psn; `-1` (or below) = before the first event.
    Psn(i64),
}

/// `{"psns":{...},"default":"min"|"max"|psn}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetMapWithDefault {
    pub psns: BTreeMap<SourceId, i64>,
    pub default: Limit,
}

impl OffsetMapWithDefault {
    pub fn parse(v: &Value, path: &str) -> Parsed<Self> {
        let obj = v
            .as_object()
            .ok_or_else(|| BadRequest::at(path, "must be an object {psns, default}"))?;
        let psns_path = format!("{path}.psns");
        let mut psns = BTreeMap::new();
        match obj.get("psns") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (k, p) in m {
                    let n = p
                        .as_i64()
                        .or_else(|| p.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
                        .ok_or_else(|| {
                            BadRequest::at(&format!("{psns_path}.{k}"), "must be a number")
                        })?;
                    psns.insert(SourceId::new(k.clone()), n);
                }
            }
            Some(_) => return Err(BadRequest::at(&psns_path, "must be an object")),
        }
        let default = match obj.get("default") {
            Some(Value::String(s)) if s == "min" => Limit::Min,
            Some(Value::String(s)) if s == "max" => Limit::Max,
            Some(n @ Value::Number(_)) => Limit::Psn(
                n.as_i64()
                    .or_else(|| n.as_f64().map(|f| f as i64))
                    .unwrap_or(-1),
            ),
            _ => {
                return Err(BadRequest::at(
                    &format!("{path}.default"),
                    "must be \"min\", \"max\" or a psn",
                ))
            }
        };
        Ok(Self { psns, default })
    }

    pub fn get(&self, source: &SourceId) -> Limit {
        self.psns
            .get(source)
            .map_or(self.default, |&p| Limit::Psn(p))
    }

    /// As an exclusive lower bound over the sources `present` now: the engine's `OffsetMap`
    /// (absent = from the start). Sources whose bound excludes everything get `u64::MAX`.
    pub fn lower(&self, present: &OffsetMap) -> OffsetMap {
        let mut out = OffsetMap::new();
        let sources = present
            .iter()
            .map(|(s, _)| s.clone())
            .chain(self.psns.keys().cloned());
        for s in sources {
            match self.get(&s) {
                Limit::Min => {}
                Limit::Max => {
                    out.update(s, u64::MAX);
                }
                Limit::Psn(p) if p >= 0 => {
                    out.update(s, p as u64);
                }
                Limit::Psn(_) => {}
            }
        }
        out
    }

    /// As an inclusive upper bound over the sources `present` now (absent = nothing), each
    /// clamped to what is stored, or `None` when nothing is bounded (everything stored).
    pub fn upper(&self, present: &OffsetMap) -> Option<OffsetMap> {
        if self.default == Limit::Max && self.psns.is_empty() {
            return None;
        }
        let mut out = OffsetMap::new();
        for (s, have) in present.iter() {
            match self.get(s) {
                Limit::Min => {}
                Limit::Max => {
                    out.update(s.clone(), have);
                }
                Limit::Psn(p) if p >= 0 => {
                    out.update(s.clone(), (p as u64).min(have));
                }
                Limit::Psn(_) => {}
            }
        }
        Some(out)
    }

    /// Is an event of `source` at `psn` within this inclusive upper bound?
    pub fn admits(&self, source: &SourceId, psn: u64) -> bool {
        match self.get(source) {
            Limit::Min => false,
            Limit::Max => true,
            Limit::Psn(p) => p >= 0 && psn <= p as u64,
        }
    }
}

/// `SubscriptionSet` of API.md.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionSet {
    All,
    Empty,
    /// `(semantics, name, source)`, `None` = any.
    Or(Vec<(Option<String>, Option<String>, Option<SourceId>)>),
    /// `(tags, local)`.
    Tags(Vec<(Vec<String>, bool)>),
}

impl SubscriptionSet {
    pub fn parse(v: &Value, path: &str) -> Parsed<Self> {
        let obj = v
            .as_object()
            .ok_or_else(|| BadRequest::at(path, "must be an object {type, ...}"))?;
        let ty = obj.get("type").and_then(Value::as_str).ok_or_else(|| {
            BadRequest::at(
                &format!("{path}.type"),
                "missing (\"all\", \"empty\", \"or\" or \"tags\")",
            )
        })?;
        let subs_path = format!("{path}.subscriptions");
        let subs = || match obj.get("subscriptions") {
            Some(Value::Array(a)) => Ok(a),
            _ => Err(BadRequest::at(&subs_path, "missing (an array)")),
        };
        match ty {
            "all" => Ok(Self::All),
            "empty" => Ok(Self::Empty),
            "or" => {
                let mut out = Vec::new();
                for (i, s) in subs()?.iter().enumerate() {
                    let p = format!("{subs_path}[{i}]");
                    let o = s
                        .as_object()
                        .ok_or_else(|| BadRequest::at(&p, "must be an object"))?;
                    let any = |name: &str| -> Parsed<Option<String>> {
                        match o.get(name) {
                            None | Some(Value::Null) => Ok(None),
                            Some(Value::String(s)) if s.is_empty() => Ok(None),
                            Some(Value::String(s)) => Ok(Some(s.clone())),
                            Some(_) => {
                                Err(BadRequest::at(&format!("{p}.{name}"), "must be a string"))
                            }
                        }
                    };
                    out.push((
                        any("semantics")?,
                        any("name")?,
                        any("sourceId")?.map(SourceId::new),
                    ));
                }
                Ok(Self::Or(out))
            }
            "tags" => {
                let mut out = Vec::new();
                for (i, s) in subs()?.iter().enumerate() {
                    let p = format!("{subs_path}[{i}]");
                    let o = s
                        .as_object()
                        .ok_or_else(|| BadRequest::at(&p, "must be an object {tags, local}"))?;
                    let tags = match o.get("tags") {
                        Some(Value::Array(a)) => a
                            .iter()
                            .map(|t| t.as_str().map(String::from))
                            .collect::<Option<Vec<_>>>()
                            .ok_or_else(|| {
                                BadRequest::at(&format!("{p}.tags"), "must be an array of strings")
                            })?,
                        _ => {
                            return Err(BadRequest::at(
                                &format!("{p}.tags"),
                                "missing (an array of strings)",
                            ))
                        }
                    };
                    let local = match o.get("local") {
                        None | Some(Value::Null) => false,
                        Some(Value::Bool(b)) => *b,
                        Some(_) => {
                            return Err(BadRequest::at(&format!("{p}.local"), "must be a boolean"))
                        }
                    };
                    out.push((tags, local));
                }
                Ok(Self::Tags(out))
            }
            other => Err(BadRequest::at(
                &format!("{path}.type"),
                format!("unknown subscription set type `{other}` (all, empty, or, tags)"),
            )),
        }
    }

    /// The engine filter: a superset of what [`Self::matches`] accepts (so the store's summaries
    /// still skip subtrees); exact matching happens in [`Self::matches`].
    pub fn filter(&self, me: &SourceId) -> Filter {
        match self {
            Self::All => Filter::all(),
            Self::Empty => Filter(Vec::new()),
            Self::Or(subs) => Filter(
                subs.iter()
                    .map(|(semantics, name, source)| StreamSelector {
                        semantics: semantics.clone(),
                        name: name.clone(),
                        source: source.clone(),
                        tags: Vec::new(),
                        time: None,
                    })
                    .collect(),
            ),
            Self::Tags(subs) => {
                let mut out = Vec::new();
                for (tags, local) in subs {
                    let source = local.then(|| me.clone());
                    out.push(StreamSelector {
                        source: source.clone(),
                        tags: tags.clone(),
                        ..StreamSelector::default()
                    });
                    // Untagged events carry their implicit tags `semantics:` / `fish_name:`.
                    if let Some((semantics, name)) = implicit_selector(tags) {
                        out.push(StreamSelector {
                            semantics,
                            name,
                            source,
                            tags: Vec::new(),
                            time: None,
                        });
                    }
                }
                Filter(out)
            }
        }
    }

    /// Exactly API.md's matching rule.
    pub fn matches(&self, e: &Event, me: &SourceId) -> bool {
        match self {
            Self::All => true,
            Self::Empty => false,
            Self::Or(subs) => subs.iter().any(|(semantics, name, source)| {
                semantics.as_deref().is_none_or(|s| s == e.semantics)
                    && name.as_deref().is_none_or(|n| n == e.name)
                    && source.as_ref().is_none_or(|s| *s == e.source)
            }),
            Self::Tags(subs) => subs.iter().any(|(tags, local)| {
                (!local || e.source == *me)
                    && if e.tags.is_empty() {
                        tags.iter().all(|t| implicit_has(e, t))
                    } else {
                        tags.iter().all(|t| e.tags.iter().any(|have| have == t))
                    }
            }),
        }
    }

    /// Is this set exactly what its engine filter selects (no post-filter needed)?
    pub fn filter_is_exact(&self) -> bool {
        matches!(self, Self::All | Self::Empty | Self::Or(_))
    }
}

/// Does an untagged event carry `tag` implicitly?
fn implicit_has(e: &Event, tag: &str) -> bool {
    if let Some(s) = tag.strip_prefix("semantics:") {
        return e.semantics != PLACEHOLDER && e.semantics == s;
    }
    if let Some(n) = tag.strip_prefix("fish_name:") {
        return e.name != PLACEHOLDER && e.name == n;
    }
    false
}

/// The semantics/name selector that finds untagged events implicitly carrying all of `tags`,
/// or `None` when no untagged event can.
fn implicit_selector(tags: &[String]) -> Option<(Option<String>, Option<String>)> {
    let (mut semantics, mut name): (Option<&str>, Option<&str>) = (None, None);
    for t in tags {
        if let Some(s) = t.strip_prefix("semantics:") {
            if s == PLACEHOLDER || semantics.is_some_and(|x| x != s) {
                return None;
            }
            semantics = Some(s);
        } else if let Some(n) = t.strip_prefix("fish_name:") {
            if n == PLACEHOLDER || name.is_some_and(|x| x != n) {
                return None;
            }
            name = Some(n);
        } else {
            return None;
        }
    }
    Some((semantics.map(String::from), name.map(String::from)))
}

#[cfg(test)]
mod tests;
