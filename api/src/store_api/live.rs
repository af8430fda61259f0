//! The live state services: they stay open and push changes.
//!
//! - `requestPresent`: the node's stored offsets (the engine's offsets watch, raised after
//!   every commit, local or replicated), sent at once and again on every change;
//! - `highestSeenOffsets`: per source the higher of stored and known-from-gossip offsets (the
//!   swarm's `NetworkState`), pushed whenever either changes;
//! - `requestConnectivity`: the swarm's real peer state, every `reportEveryMs`; `eventsToSend`
//!   counts our events no peer has reported storing (peers' digests, every few seconds).
//!
//! A watch only holds the latest value, so a client that reads slowly gets fewer, newer maps,
//! never a growing backlog.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use serde_json::{json, Value};
use shoal_engine::connectivity::{Connectivity, Status};
use shoal_engine::{NetworkState, OffsetMap, SourceId};

use super::conn::{Done, Outcome, Responder};
use super::wire::{self, BadRequest};
use super::Shared;

/// Fastest connectivity report accepted (a smaller `reportEveryMs` is raised to this).
const MIN_REPORT: Duration = Duration::from_millis(100);

fn stored(offsets: &OffsetMap) -> BTreeMap<SourceId, u64> {
    offsets.iter().map(|(s, o)| (s.clone(), o)).collect()
}

pub async fn present(shared: &Shared, r: &Responder) -> Outcome {
    let mut offsets = shared.node.events().offsets_watch();
    let mut shutdown = shared.node.shutdown_signal();
    loop {
        let map = stored(&offsets.borrow_and_update());
        if !r.next(&wire::offsets_with_default(&map)).await {
            return Ok(Done::Quiet);
        }
        tokio::select! {
            changed = offsets.changed() => if changed.is_err() { return Ok(Done::Quiet) },
            _ = shutdown.changed() => return Ok(Done::Quiet),
        }
    }
}

/// Stored offsets raised by those known from verified heads.
fn highest(offsets: &OffsetMap, network: &NetworkState) -> BTreeMap<SourceId, u64> {
    let mut map = stored(offsets);
    for (s, &o) in &network.known {
        let e = map.entry(s.clone()).or_insert(o);
        *e = (*e).max(o);
    }
    map
}

pub async fn highest_seen(shared: &Shared, r: &Responder) -> Outcome {
    let mut offsets = shared.node.events().offsets_watch();
    let mut network = shared.node.network();
    let mut shutdown = shared.node.shutdown_signal();
    let mut last: Option<BTreeMap<SourceId, u64>> = None;
    loop {
        let map = highest(&offsets.borrow_and_update(), &network.borrow_and_update());
        if last.as_ref() != Some(&map) {
            if !r.next(&wire::offsets_with_default(&map)).await {
                return Ok(Done::Quiet);
            }
            last = Some(map);
        }
        tokio::select! {
            changed = offsets.changed() => if changed.is_err() { return Ok(Done::Quiet) },
            changed = network.changed() => if changed.is_err() { return Ok(Done::Quiet) },
            _ = shutdown.changed() => return Ok(Done::Quiet),
        }
    }
}

/// API.md's `requestConnectivity` report: the engine's [`Connectivity`] in Pond's shape.
fn report(c: &Connectivity) -> Value {
    match c.status {
        Status::FullyConnected => json!({}),
        Status::NotConnected => json!({
            "eventsToRead": c.events_to_read,
            "eventsToSend": c.events_to_send,
        }),
        Status::PartiallyConnected => json!({
            "specialsDisconnected": c.specials_disconnected,
            "swarmConnectivityLevel": c.level,
            "eventsToRead": c.events_to_read,
            "eventsToSend": c.events_to_send,
        }),
    }
}

pub async fn connectivity(shared: &Shared, payload: Option<&RawValue>, r: &Responder) -> Outcome {
    let obj = wire::object(payload, "an object {special, reportEveryMs, ...}")?;
    let specials: Vec<String> = match obj.get("special") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| s.as_str().map(String::from))
            .collect::<Option<_>>()
            .ok_or_else(|| BadRequest::at("payload.special", "must be an array of source ids"))?,
        Some(_) => {
            return Err(BadRequest::at("payload.special", "must be an array of source ids").into())
        }
    };
    let every =
        Duration::from_millis(wire::uint(&obj, "payload", "reportEveryMs")?).max(MIN_REPORT);
    let mut shutdown = shared.node.shutdown_signal();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut current: Option<(&'static str, Instant)> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return Ok(Done::Quiet),
        }
        let connectivity = shared.node.connectivity(&specials);
        let name = connectivity.status.as_str();
        let mut extra = report(&connectivity);
        let since = match current {
            Some((n, since)) if n == name => since,
            _ => {
                let now = Instant::now();
                current = Some((name, now));
                now
            }
        };
        if let Value::Object(m) = &mut extra {
            m.insert("status".into(), Value::from(name));
            m.insert(
                "inCurrentStatusForMs".into(),
                Value::from(since.elapsed().as_millis() as u64),
            );
        }
        if !r.next(&extra.to_string()).await {
            return Ok(Done::Quiet);
        }
    }
}
