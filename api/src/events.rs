//! `/api/v1/events`: offsets, publish, query, subscribe (API.md, wire-compatible with the
//! ActyxOS v1 Event Service).
//!
//! Owns the v1 request shapes and the event envelope. Requests are parsed by hand from JSON so
//! that every error names its field (`data[3].semantics: ...`, `lowerBound.<source>: ...`);
//! unknown fields are ignored, and `null` counts as absent for optional fields. Validation of
//! event contents is the engine's (`PublishEvent`), so every front end rejects the same inputs.

use std::io::Write;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use shoal_engine::{
    Event, EventService, Filter, OffsetMap, Order, PublishEvent, Query, SourceId, StreamSelector,
    Subscription,
};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter as _, Reply};

use crate::error::{from_events, ApiError};
use crate::json::{write_str, write_str_array};
use crate::{body, fields, ndjson, ApiConfig};

/// The event routes.
pub fn routes(
    events: EventService,
    config: ApiConfig,
) -> impl warp::Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let with = move || {
        let events = events.clone();
        warp::any().map(move || events.clone())
    };
    let limit = config.max_body_bytes;
    let keepalive = config.keepalive;

    let offsets = warp::path!("api" / "v1" / "events" / "offsets")
        .and(warp::get())
        .and(with())
        .map(|events: EventService| offsets(&events));
    let publish = warp::path!("api" / "v1" / "events" / "publish")
        .and(warp::post())
        .and(with())
        .and(body::limited(limit))
        .then(|events: EventService, body: Bytes| async move { publish(&events, &body).await });
    let query = warp::path!("api" / "v1" / "events" / "query")
        .and(warp::post())
        .and(with())
        .and(body::limited(limit))
        .map(|events: EventService, body: Bytes| query(&events, &body));
    let subscribe = warp::path!("api" / "v1" / "events" / "subscribe")
        .and(warp::post())
        .and(with())
        .and(body::limited(limit))
        .map(move |events: EventService, body: Bytes| subscribe(&events, &body, keepalive));
    offsets
        .or(publish)
        .unify()
        .or(query)
        .unify()
        .or(subscribe)
        .unify()
}

fn offsets(events: &EventService) -> Response {
    warp::reply::json(&events.offsets()).into_response()
}

fn reply_result(result: Result<Response, ApiError>) -> Response {
    match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

// ---- publish ----

#[derive(Deserialize)]
struct PublishBody<'a> {
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(default)]
    semantics: Option<Value>,
    #[serde(default)]
    name: Option<Value>,
    #[serde(default)]
    tags: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    payload: Option<Box<RawValue>>,
}

/// `Some` whenever the field is there, `null` included (payload `null` is valid, absent is not).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// Parses a publish body into events (their contents are validated by the engine).
pub fn parse_publish(body: &[u8]) -> Result<Vec<PublishEvent>, ApiError> {
    let top: PublishBody<'_> = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))?;
    // serde also fills a struct from an array (positionally): the body must be an object.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    let data = top
        .data
        .filter(|d| d.get() != "null")
        .ok_or_else(|| ApiError::bad_request("data: missing (an array of events)"))?;
    let items: Vec<&RawValue> = serde_json::from_str(data.get())
        .map_err(|_| ApiError::bad_request("data: must be an array of events"))?;
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let raw: RawEvent = serde_json::from_str(item.get())
            .map_err(|_| ApiError::bad_request(format!("data[{i}]: must be an object")))?;
        let string = |field: &str, v: Option<Value>| match v {
            Some(Value::String(s)) => Ok(s),
            None | Some(Value::Null) => Err(ApiError::bad_request(format!(
                "data[{i}].{field}: missing (a string)"
            ))),
            Some(_) => Err(ApiError::bad_request(format!(
                "data[{i}].{field}: must be a string"
            ))),
        };
        let semantics = string("semantics", raw.semantics)?;
        let name = string("name", raw.name)?;
        let tags = match raw.tags {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(tags)) => tags
                .into_iter()
                .map(|t| match t {
                    Value::String(s) => Ok(s),
                    _ => Err(ApiError::bad_request(format!(
                        "data[{i}].tags: must be an array of strings"
                    ))),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(ApiError::bad_request(format!(
                    "data[{i}].tags: must be an array of strings"
                )))
            }
        };
        let payload = raw
            .payload
            .ok_or_else(|| ApiError::bad_request(format!("data[{i}].payload: missing")))?;
        out.push(PublishEvent {
            semantics,
            name,
            tags,
            payload,
            timestamp: None,
        });
    }
    Ok(out)
}

async fn publish(events: &EventService, body: &[u8]) -> Response {
    let result = async {
        let batch = parse_publish(body)?;
        let published = events
            .publish(batch)
            .await
            .map_err(|e| from_events(e, "data"))?;
        // The 201 body (extension): where each event went, in request order.
        let mut out = Vec::with_capacity(16 + published.stamps.len() * 96);
        out.extend_from_slice(b"{\"data\":[");
        let source = serde_json::to_string(published.source.as_str()).unwrap_or_default();
        for (i, s) in published.stamps.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let _ = write!(
                out,
                "{{\"source\":{source},\"offset\":{},\"lamport\":{},\"timestamp\":{}}}",
                s.offset, s.lamport, s.timestamp
            );
        }
        out.extend_from_slice(b"]}");
        let mut resp = Response::new(out.into());
        *resp.status_mut() = StatusCode::CREATED;
        resp.headers_mut().insert(
            warp::http::header::CONTENT_TYPE,
            warp::http::HeaderValue::from_static("application/json"),
        );
        Ok(resp)
    }
    .await;
    reply_result(result)
}

// ---- query / subscribe ----

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request("the body must be a JSON object")),
        Err(e) => Err(ApiError::bad_request(format!("malformed JSON body: {e}"))),
    }
}

/// An OffsetMap field: integers ≥ -1; -1 means "nothing of this source" (same as absent).
fn parse_offsets(field: &str, v: Option<&Value>) -> Result<Option<OffsetMap>, ApiError> {
    let map = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(map)) => map,
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "{field}: must be an object of source ids to offsets"
            )))
        }
    };
    let mut out = OffsetMap::new();
    for (source, offset) in map {
        let offset = offset.as_i64().ok_or_else(|| {
            ApiError::bad_request(format!("{field}.{source}: must be an integer ≥ -1"))
        })?;
        match offset {
            -1 => {}
            o if o < -1 => {
                return Err(ApiError::bad_request(format!(
                    "{field}.{source}: must be ≥ -1, got {o}"
                )))
            }
            o => {
                out.update(SourceId::new(source.clone()), o as u64);
            }
        }
    }
    Ok(Some(out))
}

fn parse_subscriptions(v: Option<&Value>) -> Result<Filter, ApiError> {
    let list = match v {
        Some(Value::Array(list)) => list,
        None | Some(Value::Null) => {
            return Err(ApiError::bad_request(
                "subscriptions: missing (a list of filters)",
            ))
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "subscriptions: must be a list of filters",
            ))
        }
    };
    let mut selectors = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let path = format!("subscriptions[{i}]");
        let obj = fields::object(item, &path, "an object")?;
        // A misspelt key (`nmae`) would otherwise leave a filter that matches everything; v1
        // clients send only the keys below, so refusing the others breaks none of them.
        fields::only_known_keys(
            obj,
            &path,
            &FILTER_KEYS,
            "a filter has semantics, name, source, tags, fromTime and toTime",
        )?;
        let from = opt_micros(obj, &path, "fromTime")?;
        let to = opt_micros(obj, &path, "toTime")?;
        if let (Some(f), Some(t)) = (from, to) {
            if f > t {
                return Err(ApiError::bad_request(format!(
                    "{path}: fromTime {f} is after toTime {t} (both inclusive, µs since the epoch)"
                )));
            }
        }
        selectors.push(StreamSelector {
            semantics: fields::opt_string(obj, &path, "semantics")?,
            name: fields::opt_string(obj, &path, "name")?,
            source: fields::opt_string(obj, &path, "source")?.map(SourceId::new),
            tags: fields::string_list(obj, &path, "tags")?,
            time: match (from, to) {
                (None, None) => None,
                (f, t) => Some(f.unwrap_or(0)..=t.unwrap_or(u64::MAX)),
            },
        });
    }
    Ok(Filter(selectors))
}

/// An optional time bound of a filter: µs since the epoch, an integer ≥ 0.
fn opt_micros(obj: &Map<String, Value>, path: &str, key: &str) -> Result<Option<u64>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            ApiError::bad_request(format!(
                "{path}.{key}: must be an integer ≥ 0 (µs since the epoch, inclusive)"
            ))
        }),
    }
}

/// Keys of a v1 subscription filter: the v1 three, and API.md's extensions (`tags` and the
/// inclusive time bounds `fromTime`/`toTime`).
const FILTER_KEYS: [&str; 6] = ["semantics", "name", "source", "tags", "fromTime", "toTime"];

/// Parses a v1 query body.
pub fn parse_query(body: &[u8]) -> Result<Query, ApiError> {
    let obj = parse_object(body)?;
    let lower = parse_offsets("lowerBound", obj.get("lowerBound"))?.unwrap_or_default();
    let upper = parse_offsets("upperBound", obj.get("upperBound"))?
        .ok_or_else(|| ApiError::bad_request("upperBound: missing (an offset map)"))?;
    let filter = parse_subscriptions(obj.get("subscriptions"))?;
    let order = match obj.get("order") {
        Some(Value::String(s)) => match s.as_str() {
            "lamport" => Order::Lamport,
            "lamport-reverse" => Order::LamportReverse,
            "source-ordered" => Order::SourceOrdered,
            other => {
                return Err(ApiError::bad_request(format!(
                "order: unknown order `{other}` (one of lamport, lamport-reverse, source-ordered)"
            )))
            }
        },
        None | Some(Value::Null) => {
            return Err(ApiError::bad_request(
                "order: missing (lamport, lamport-reverse or source-ordered)",
            ))
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "order: must be one of lamport, lamport-reverse, source-ordered",
            ))
        }
    };
    Ok(Query {
        lower,
        upper: Some(upper),
        filter,
        order,
    })
}

/// Parses a v1 subscribe body.
pub fn parse_subscribe(body: &[u8]) -> Result<Subscription, ApiError> {
    let obj = parse_object(body)?;
    Ok(Subscription {
        lower: parse_offsets("lowerBound", obj.get("lowerBound"))?.unwrap_or_default(),
        filter: parse_subscriptions(obj.get("subscriptions"))?,
    })
}

fn query(events: &EventService, body: &[u8]) -> Response {
    reply_result(parse_query(body).map(|q| ndjson::response(events.query(q), encode_event, None)))
}

fn subscribe(events: &EventService, body: &[u8], keepalive: std::time::Duration) -> Response {
    reply_result(
        parse_subscribe(body)
            .map(|s| ndjson::response(events.subscribe(s), encode_event, Some(keepalive))),
    )
}

/// Writes the v1 envelope of `e` (without the newline). The payload is written as stored.
pub fn encode_event(e: &Event, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"stream\":{\"semantics\":");
    write_str(out, &e.semantics);
    out.extend_from_slice(b",\"name\":");
    write_str(out, &e.name);
    out.extend_from_slice(b",\"source\":");
    write_str(out, e.source.as_str());
    let _ = write!(
        out,
        "}},\"timestamp\":{},\"lamport\":{},\"offset\":{},\"payload\":",
        e.timestamp, e.lamport, e.offset
    );
    out.extend_from_slice(e.payload.get().as_bytes());
    if !e.tags.is_empty() {
        out.extend_from_slice(b",\"tags\":");
        write_str_array(out, &e.tags);
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn msg(r: Result<impl std::fmt::Debug, ApiError>) -> String {
        r.unwrap_err().message().to_string()
    }

    fn bad_request_or_ok<T>(r: Result<T, ApiError>) -> Result<(), TestCaseError> {
        if let Err(e) = r {
            prop_assert_eq!(e.code(), "ERR_BAD_REQUEST", "{}", e.message());
        }
        Ok(())
    }

    proptest! {
        /// Any body, JSON or not, is accepted or refused with a 400 naming the problem: never a
        /// panic, never a 500 (issue 12 item 9's audit).
        #[test]
        fn request_parsers_never_panic(
            v in crate::json::arbitrary(),
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let wrapped = [
                v.clone(),
                json!({"data": [v.clone()]}),
                json!({"data": v.clone()}),
                json!({"data": [{"semantics": "s", "name": "n", "payload": 1, "tags": v.clone()}]}),
                json!({"upperBound": v.clone(), "lowerBound": v.clone(),
                       "subscriptions": v.clone(), "order": v.clone()}),
                json!({"upperBound": {}, "subscriptions": [v.clone()], "order": "lamport"}),
                json!({"lowerBound": v.clone(), "subscriptions": [v.clone()]}),
            ];
            let mut bodies: Vec<Vec<u8>> = wrapped.iter().map(|w| w.to_string().into_bytes()).collect();
            bodies.push(bytes);
            for body in &bodies {
                bad_request_or_ok(parse_publish(body))?;
                bad_request_or_ok(parse_query(body))?;
                bad_request_or_ok(parse_subscribe(body))?;
            }
        }
    }

    #[test]
    fn publish_errors_name_fields() {
        assert!(msg(parse_publish(b"{")).starts_with("malformed JSON"));
        assert!(msg(parse_publish(b"{}")).starts_with("data: missing"));
        assert!(msg(parse_publish(br#"{"data":{}}"#)).starts_with("data: must be an array"));
        assert!(msg(parse_publish(br#"{"data":[1]}"#)).starts_with("data[0]: must be an object"));
        assert!(
            msg(parse_publish(br#"{"data":[{"name":"n","payload":1}]}"#))
                .starts_with("data[0].semantics: missing")
        );
        assert!(msg(parse_publish(
            br#"{"data":[{"semantics":"s","name":3,"payload":1}]}"#
        ))
        .starts_with("data[0].name: must be a string"));
        assert!(
            msg(parse_publish(br#"{"data":[{"semantics":"s","name":"n"}]}"#))
                .starts_with("data[0].payload: missing")
        );
        let ok = parse_publish(
            br#"{"data":[{"semantics":"s","name":"n","payload":null,"extra":1,"tags":["a"]}]}"#,
        )
        .unwrap();
        assert_eq!(ok[0].payload.get(), "null");
        assert_eq!(ok[0].tags, vec!["a"]);
    }

    #[test]
    fn query_errors_name_fields() {
        assert!(
            msg(parse_query(br#"{"subscriptions":[],"order":"lamport"}"#))
                .starts_with("upperBound: missing")
        );
        assert!(msg(parse_query(
            br#"{"upperBound":{},"subscriptions":[],"order":"random"}"#
        ))
        .starts_with("order: unknown order"));
        assert!(msg(parse_query(
            br#"{"upperBound":{"a":-2},"subscriptions":[],"order":"lamport"}"#
        ))
        .starts_with("upperBound.a: must be ≥ -1"));
        assert!(msg(parse_query(br#"{"upperBound":{},"order":"lamport"}"#))
            .starts_with("subscriptions: missing"));
        let q = parse_query(
            br#"{"lowerBound":{"a":-1,"b":2},"upperBound":{"a":5},"subscriptions":[{}],"order":"source-ordered"}"#,
        )
        .unwrap();
        assert_eq!(q.lower.len(), 1);
        assert_eq!(q.order, Order::SourceOrdered);
        assert_eq!(q.filter, Filter::all());
    }

    #[test]
    fn filters_refuse_unknown_keys_and_take_tags() {
        let m = msg(parse_query(
            br#"{"upperBound":{},"subscriptions":[{"name":"a"},{"nmae":"a","x":1}],"order":"lamport"}"#,
        ));
        assert!(
            m.starts_with("subscriptions[1]: unknown key(s) `nmae`, `x`"),
            "{m}"
        );
        assert!(msg(parse_subscribe(br#"{"subscriptions":[{"Name":"a"}]}"#))
            .contains("unknown key(s) `Name`"));
        assert!(
            msg(parse_subscribe(br#"{"subscriptions":[{"fromTime":-1}]}"#))
                .starts_with("subscriptions[0].fromTime: must be an integer ≥ 0")
        );
        assert!(
            msg(parse_subscribe(br#"{"subscriptions":[{"toTime":"x"}]}"#))
                .starts_with("subscriptions[0].toTime: must be an integer ≥ 0")
        );
        assert!(msg(parse_subscribe(
            br#"{"subscriptions":[{"fromTime":5,"toTime":4}]}"#
        ))
        .starts_with("subscriptions[0]: fromTime 5 is after toTime 4"));
        let t = parse_subscribe(
            br#"{"subscriptions":[{"fromTime":5},{"toTime":9},{"fromTime":1,"toTime":1}]}"#,
        )
        .unwrap();
        assert_eq!(t.filter.0[0].time, Some(5..=u64::MAX));
        assert_eq!(t.filter.0[1].time, Some(0..=9));
        assert_eq!(t.filter.0[2].time, Some(1..=1));
        assert!(
            msg(parse_subscribe(br#"{"subscriptions":[{"tags":["a",""]}]}"#))
                .starts_with("subscriptions[0].tags: must be a list")
        );
        let s = parse_subscribe(
            br#"{"subscriptions":[{"semantics":"s","tags":["a","b"],"fromTime":null}]}"#,
        )
        .unwrap();
        assert_eq!(s.filter.0[0].tags, vec!["a", "b"]);
        assert_eq!(s.filter.0[0].semantics.as_deref(), Some("s"));
    }

    #[test]
    fn envelope_format() {
        let e = Event {
            source: SourceId::new("src"),
            offset: 3,
            lamport: 7,
            timestamp: 11,
            semantics: "s\"q".into(),
            name: "n".into(),
            tags: vec![],
            payload: RawValue::from_string("{\"a\":1}".into()).unwrap(),
        };
        let mut out = Vec::new();
        encode_event(&e, &mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"stream":{"semantics":"s\"q","name":"n","source":"src"},
                "timestamp":11,"lamport":7,"offset":3,"payload":{"a":1}})
        );
    }
}
