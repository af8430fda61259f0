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

/// Highest offsets known from verified heads (gossip; may run ahead of what is stored).
fn known(network: &NetworkState) -> BTreeMap<SourceId, u64> {
    network.known.clone()
}

/// Stored offsets raised by those known from verified heads.
fn highest(offsets: &OffsetMap, network: &NetworkState) -> BTreeMap<SourceId, u64> {
    let mut map = stored(offsets);
    for (s, o) in known(network) {
        let e = map.entry(s.clone()).or_insert(o);
        *e = (*e).max(o);
    }
    map
}

pub async fn highest_seen(shared: &Shared, r: &Responder) -> Outcome {
    let mut offsets = shared.node.events().offsets_watch();
    let mut network = shared.node.network().subscribe();
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

/// Our own events that no peer is known to store (as of the peers' last digests): what this
/// node would lose if it died now.
fn events_to_send(network: &NetworkState, offsets: &OffsetMap, own: &SourceId) -> u64 {
    let ours = offsets.get(own).map_or(0, |o| o + 1);
    let held = network
        .peers
        .iter()
        .filter_map(|p| p.our_offset_stored)
        .max()
        .map_or(0, |o| o + 1);
    ours.saturating_sub(held)
}

/// The status of API.md's `requestConnectivity`, from the peers the swarm knows.
fn status(
    network: &NetworkState,
    offsets: &OffsetMap,
    own: &SourceId,
    specials: &[String],
) -> (&'static str, Value) {
    let peers = network.peers.len();
    let connected: Vec<&str> = network
        .peers
        .iter()
        .filter(|p| p.connected)
        .map(|p| p.peer_id.as_str())
        .collect();
    let specials_disconnected: Vec<&String> = specials
        .iter()
        .filter(|s| !connected.contains(&s.as_str()))
        .collect();
    let events_to_read: u64 = known(network)
        .into_iter()
        .map(|(s, k)| {
            let s = &s;
            let have = offsets.get(s).map_or(0, |o| o + 1);
            (k + 1).saturating_sub(have)
        })
        .sum();
    let events_to_send = events_to_send(network, offsets, own);
    // Alone (no peer known, or none connected) a node reads nothing new from anyone.
    if connected.is_empty() {
        return (
            "NotConnected",
            json!({"eventsToRead": events_to_read, "eventsToSend": events_to_send}),
        );
    }
    if connected.len() == peers && specials_disconnected.is_empty() {
        return ("FullyConnected", json!({}));
    }
    let level = (connected.len() * 100).checked_div(peers).unwrap_or(100);
    (
        "PartiallyConnected",
        json!({
            "specialsDisconnected": specials_disconnected,
            "swarmConnectivityLevel": level,
            "eventsToRead": events_to_read,
            "eventsToSend": events_to_send,
        }),
    )
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
    let events = shared.node.events();
    let mut shutdown = shared.node.shutdown_signal();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut current: Option<(&'static str, Instant)> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return Ok(Done::Quiet),
        }
        let network = shared.node.network().borrow().clone();
        let (name, mut extra) =
            status(&network, &events.offsets(), shared.node.source(), &specials);
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
