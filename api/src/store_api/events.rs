//! The event services of the store API, mapped onto the node's one `EventService`:
//! `requestPersistedEvents` is an engine query, `requestAllEvents` an engine subscription (or,
//! with finite bounds, engine queries repeated as the offsets grow), `persistEvents` the
//! group-commit publish path. Nothing here reads the store itself.
//!
//! Tag subscriptions (`{"type":"tags"}`) are handed to the engine as a superset filter (so the
//! store's branch summaries still skip subtrees) and matched exactly here (`wire::SubscriptionSet::
//! matches`): an untagged event counts as tagged `semantics:<s>` and `fish_name:<n>`.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use shoal_engine::{
    Event, EventStream, EventsError, OffsetMap, Order, PublishEvent, Query, Subscription,
};

use super::conn::{Done, Outcome, Responder};
use super::wire::{
    self, BadRequest, ErrorKind, Limit, OffsetMapWithDefault, Parsed, SubscriptionSet,
};
use super::Shared;

pub const GET_SOURCE_ID: &str = "/ax/events/getSourceId";
pub const REQUEST_PRESENT: &str = "/ax/events/requestPresent";
pub const HIGHEST_SEEN: &str = "/ax/events/highestSeenOffsets";
pub const REQUEST_PERSISTED: &str = "/ax/events/requestPersistedEvents";
pub const REQUEST_ALL: &str = "/ax/events/requestAllEvents";
pub const PERSIST: &str = "/ax/events/persistEvents";
pub const CONNECTIVITY: &str = "/ax/events/requestConnectivity";

impl From<BadRequest> for ErrorKind {
    fn from(b: BadRequest) -> Self {
        ErrorKind::BadRequest(b.0)
    }
}

/// Engine errors as store-API error kinds; `prefix` locates an invalid event (`payload.events`).
pub fn from_events(e: EventsError, prefix: &str) -> ErrorKind {
    match e {
        EventsError::Invalid {
            index,
            field,
            reason,
        } => ErrorKind::BadRequest(match index {
            Some(i) => format!("{prefix}[{i}].{field}: {reason}"),
            None => format!("{prefix}: {field}: {reason}"),
        }),
        EventsError::StorageFull(e) => ErrorKind::ServiceError(Value::String(e.to_string())),
        e @ (EventsError::ShuttingDown | EventsError::Interrupted | EventsError::Resuming) => {
            ErrorKind::ServiceError(Value::String(e.to_string()))
        }
        e @ (EventsError::Storage(_) | EventsError::Task(_) | EventsError::ClockExhausted) => {
            tracing::warn!(error = %e, "store API: storage error");
            ErrorKind::InternalError
        }
    }
}

pub async fn get_source_id(shared: &Shared, r: &Responder) -> Outcome {
    let id = Value::String(shared.node.source().to_string()).to_string();
    Ok(if r.next(&id).await {
        Done::Complete
    } else {
        Done::Quiet
    })
}

/// Payload of `requestPersistedEvents` and `requestAllEvents`.
struct EventsRequest {
    from: OffsetMapWithDefault,
    to: OffsetMapWithDefault,
    set: SubscriptionSet,
    order: Order,
    /// Most events to deliver.
    count: u64,
}

impl EventsRequest {
    fn parse(payload: Option<&RawValue>, reverse_allowed: bool) -> Parsed<Self> {
        let obj = wire::object(
            payload,
            "an object {fromPsnsExcluding, toPsnsIncluding, subscriptionSet, sortOrder, ...}",
        )?;
        let p = "payload";
        let from = OffsetMapWithDefault::parse(
            wire::field(&obj, p, "fromPsnsExcluding")?,
            "payload.fromPsnsExcluding",
        )?;
        let to = OffsetMapWithDefault::parse(
            wire::field(&obj, p, "toPsnsIncluding")?,
            "payload.toPsnsIncluding",
        )?;
        let set = SubscriptionSet::parse(
            wire::field(&obj, p, "subscriptionSet")?,
            "payload.subscriptionSet",
        )?;
        let order = match obj.get("sortOrder").and_then(Value::as_str) {
            None => Order::Lamport,
            Some("eventKey") => Order::Lamport,
            Some("reverseEventKey") if reverse_allowed => Order::LamportReverse,
            Some("unsorted") => Order::SourceOrdered,
            Some(other) => {
                return Err(BadRequest::at(
                    "payload.sortOrder",
                    format!(
                        "unknown sort order `{other}` (eventKey, {}unsorted)",
                        if reverse_allowed {
                            "reverseEventKey, "
                        } else {
                            ""
                        }
                    ),
                ))
            }
        };
        let count = match obj.get("count") {
            None | Some(Value::Null) => u64::MAX,
            Some(Value::String(s)) if s == "max" => u64::MAX,
            Some(v) => v.as_u64().ok_or_else(|| {
                BadRequest::at("payload.count", "must be \"max\" or a non-negative integer")
            })?,
        };
        Ok(Self {
            from,
            to,
            set,
            order,
            count,
        })
    }
}

/// Sends `chunk` (already filtered) as one `next`, counting down `left`. False = stop.
async fn send_chunk(r: &Responder, chunk: &[Event], left: &mut u64) -> bool {
    let take = (*left).min(chunk.len() as u64) as usize;
    if take == 0 {
        return true;
    }
    *left -= take as u64;
    r.next(&wire::events_array(&chunk[..take])).await
}

/// Streams an engine query to the client. `Ok(false)` = the client is gone.
async fn forward(
    shared: &Shared,
    mut stream: EventStream,
    req: &EventsRequest,
    left: &mut u64,
    r: &Responder,
) -> Result<bool, ErrorKind> {
    let me = shared.node.source();
    let exact = req.set.filter_is_exact();
    while *left > 0 {
        let Some(chunk) = stream.next_chunk().await else {
            break;
        };
        let mut chunk = chunk.map_err(|e| from_events(e, "payload"))?;
        if !exact {
            chunk.retain(|e| req.set.matches(e, me));
        }
        if !send_chunk(r, &chunk, left).await {
            return Ok(false);
        }
    }
    Ok(true)
}

pub async fn persisted(shared: &Shared, payload: Option<&RawValue>, r: &Responder) -> Outcome {
    let req = EventsRequest::parse(payload, true)?;
    let events = shared.node.events();
    let present = events.offsets();
    let query = Query {
        lower: req.from.lower(&present),
        upper: Some(req.to.upper(&present).unwrap_or(present)),
        filter: req.set.filter(shared.node.source()),
        order: req.order,
    };
    let mut left = req.count;
    let stream = events.query(query);
    Ok(if forward(shared, stream, &req, &mut left, r).await? {
        Done::Complete
    } else {
        Done::Quiet
    })
}

pub async fn all(shared: &Shared, payload: Option<&RawValue>, r: &Responder) -> Outcome {
    let req = EventsRequest::parse(payload, false)?;
    if req.count == 0 {
        return Ok(Done::Complete);
    }
    if req.to.default == Limit::Max {
        live_unbounded(shared, req, r).await
    } else {
        live_bounded(shared, req, r).await
    }
}

/// Upper bound open for sources not listed: one engine subscription (stored, then live).
async fn live_unbounded(shared: &Shared, req: EventsRequest, r: &Responder) -> Outcome {
    let events = shared.node.events();
    let me = shared.node.source();
    let present = events.offsets();
    let mut stream = events.subscribe(Subscription {
        lower: req.from.lower(&present),
        filter: req.set.filter(me),
    });
    let exact = req.set.filter_is_exact() && req.to.psns.is_empty();
    let mut left = req.count;
    while let Some(chunk) = stream.next_chunk().await {
        let mut chunk = chunk.map_err(|e| from_events(e, "payload"))?;
        if !exact {
            chunk.retain(|e| req.set.matches(e, me) && req.to.admits(&e.source, e.offset));
        }
        if !send_chunk(r, &chunk, &mut left).await {
            return Ok(Done::Quiet);
        }
        if left == 0 {
            return Ok(Done::Complete);
        }
    }
    // The node is shutting down.
    Ok(Done::Quiet)
}

/// Every source bounded: engine queries over (covered, bound ∧ present], repeated whenever the
/// stored offsets grow, until every bound is reached.
async fn live_bounded(shared: &Shared, req: EventsRequest, r: &Responder) -> Outcome {
    let events = shared.node.events();
    let mut offsets = events.offsets_watch();
    let mut shutdown = shared.node.shutdown_signal();
    let mut covered = req.from.lower(&events.offsets());
    let mut left = req.count;
    loop {
        let present = offsets.borrow_and_update().clone();
        let upper = req.to.upper(&present).unwrap_or_default();
        let query = Query {
            lower: covered.clone(),
            upper: Some(upper.clone()),
            filter: req.set.filter(shared.node.source()),
            order: req.order,
        };
        if !forward(shared, events.query(query), &req, &mut left, r).await? {
            return Ok(Done::Quiet);
        }
        if left == 0 {
            return Ok(Done::Complete);
        }
        for (s, o) in upper.iter() {
            covered.update(s.clone(), o);
        }
        if reached(&req.to, &covered) {
            return Ok(Done::Complete);
        }
        tokio::select! {
            changed = offsets.changed() => if changed.is_err() { return Ok(Done::Quiet) },
            _ = shutdown.changed() => return Ok(Done::Quiet),
        }
    }
}

/// Has every finite bound been covered? (A numeric default bounds sources not seen yet, which
/// can never be known to be reached.)
fn reached(to: &OffsetMapWithDefault, covered: &OffsetMap) -> bool {
    to.default == Limit::Min
        && to.psns.iter().all(|(s, &p)| {
            p < 0
                || covered
                    .get(s)
                    .is_some_and(|c| c != u64::MAX && c >= p as u64)
        })
}

#[derive(Deserialize)]
struct RawUnstored {
    #[serde(default)]
    semantics: Option<Value>,
    #[serde(default)]
    name: Option<Value>,
    #[serde(default)]
    timestamp: Option<Value>,
    #[serde(default)]
    tags: Option<Value>,
    #[serde(default)]
    payload: Option<Box<RawValue>>,
}

/// Parses `persistEvents`' payload into events to publish.
fn parse_persist(payload: Option<&RawValue>) -> Parsed<Vec<PublishEvent>> {
    #[derive(Deserialize)]
    struct Top<'a> {
        #[serde(borrow, default)]
        events: Option<&'a RawValue>,
    }
    let raw = payload.ok_or_else(|| BadRequest::at("payload", "missing (an object {events})"))?;
    let top: Top<'_> = serde_json::from_str(raw.get())
        .map_err(|_| BadRequest::at("payload", "must be an object {events}"))?;
    let list = top
        .events
        .filter(|e| e.get() != "null")
        .ok_or_else(|| BadRequest::at("payload.events", "missing (an array of events)"))?;
    let items: Vec<&RawValue> = serde_json::from_str(list.get())
        .map_err(|_| BadRequest::at("payload.events", "must be an array of events"))?;
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let at = |f: &str| format!("payload.events[{i}].{f}");
        let e: RawUnstored = serde_json::from_str(item.get())
            .map_err(|_| BadRequest::at(&format!("payload.events[{i}]"), "must be an object"))?;
        let string = |f: &str, v: Option<Value>| match v {
            Some(Value::String(s)) => Ok(s),
            None | Some(Value::Null) => Err(BadRequest::at(&at(f), "missing (a string)")),
            Some(_) => Err(BadRequest::at(&at(f), "must be a string")),
        };
        let semantics = string("semantics", e.semantics)?;
        let name = string("name", e.name)?;
        let timestamp = match e.timestamp {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                    .ok_or_else(|| {
                        BadRequest::at(&at("timestamp"), "must be microseconds since the epoch")
                    })?,
            ),
        };
        let tags = match e.tags {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .into_iter()
                .map(|t| match t {
                    Value::String(s) => Some(s),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| BadRequest::at(&at("tags"), "must be an array of strings"))?,
            Some(_) => return Err(BadRequest::at(&at("tags"), "must be an array of strings")),
        };
        // Pond leaves out an `undefined` payload; store it as `null`.
        let payload = match e.payload {
            Some(p) => p,
            None => RawValue::from_string("null".into())
                .map_err(|e| BadRequest::at(&at("payload"), e))?,
        };
        out.push(PublishEvent {
            semantics,
            name,
            tags,
            payload,
            timestamp,
        });
    }
    Ok(out)
}

pub async fn persist(shared: &Shared, payload: Option<&RawValue>, r: &Responder) -> Outcome {
    let batch = parse_persist(payload)?;
    if batch.is_empty() {
        return Ok(if r.next("{\"events\":[]}").await {
            Done::Complete
        } else {
            Done::Quiet
        });
    }
    let events = shared.node.events();
    let published = events
        .publish(batch.clone())
        .await
        .map_err(|e| from_events(e, "payload.events"))?;
    // The stored events, in request order (tags sorted and deduplicated as stored).
    let stored: Vec<Event> = batch
        .into_iter()
        .zip(published.stamps)
        .map(|(e, stamp)| {
            let mut tags = e.tags;
            tags.sort_unstable();
            tags.dedup();
            Event {
                source: published.source.clone(),
                offset: stamp.offset.get(),
                lamport: stamp.lamport.get(),
                timestamp: stamp.timestamp,
                semantics: e.semantics,
                name: e.name,
                tags,
                payload: e.payload,
            }
        })
        .collect();
    let mut body = String::with_capacity(64 + stored.len() * 128);
    body.push_str("{\"events\":");
    body.push_str(&wire::events_array(&stored));
    body.push('}');
    Ok(if r.next(&body).await {
        Done::Complete
    } else {
        Done::Quiet
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Issue 12 item 9's audit: the event services' payloads parse or are a `badRequest`.
        #[test]
        fn payload_parsers_never_panic(v in crate::json::arbitrary()) {
            let events_request = serde_json::json!({"fromPsnsExcluding": v.clone(),
                "toPsnsIncluding": {"psns": {}, "default": "max"}, "subscriptionSet": v.clone(),
                "sortOrder": v.clone(), "count": v.clone()});
            let persist = serde_json::json!({"events": [v.clone()]});
            let persist_fields = serde_json::json!({"events": [{"semantics": "s", "name": "n",
                "timestamp": v.clone(), "tags": v.clone(), "payload": v.clone()}]});
            for payload in [&v, &events_request, &persist, &persist_fields] {
                let Ok(raw) = RawValue::from_string(payload.to_string()) else { continue };
                let _ = EventsRequest::parse(Some(&raw), true);
                let _ = parse_persist(Some(&raw));
            }
        }
    }
}
