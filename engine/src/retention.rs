//! Retention: the `node` settings scope's `retention` rules applied to this node's own source
//! (API.md "Apps" → Settings; the store's `log/prune.rs` does the pruning).
//!
//! One task reads the rules from the node settings watch and, every [`PERIOD`] and at once
//! when the settings change, asks the writer to prune (a writer command, queued behind
//! publishes like any other). A pruning keeps every offset and changes the root, so the task
//! signs a head at the same offset with the next pruning generation (`Head::pruned`) and hands
//! it to the swarm like a local append's head: peers take it as newer than the tree they hold,
//! fetch the new branch nodes, import it (the store checks it is the same stream) and their GC
//! frees the leaves it no longer links. Only the source's own node ever prunes its tree.
//!
//! Blobs follow their names: a blob this node named (a `shoal.blob-name` event of its own source,
//! `blobs.rs`) is unpinned here once a pruning dropped that name event and no remaining name
//! event of any source names the blob; GC then frees its blocks.
//!
//! A pass without a `maxAgeSecs` rule is skipped when neither the rules nor the tree changed
//! since the last pass (nothing could be pruned then).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use libp2p::identity::Keypair;
use serde_json::Value;
use shoal_store::{Cid, EventFilter, Reader, RetentionRule, Selector, SourceId};
use tokio::sync::watch;

use crate::events::EventService;
use crate::head::Head;
use crate::swarm::{self, Command};

/// Time between passes: pruning happens within a minute of becoming due.
pub const PERIOD: Duration = Duration::from_secs(10);

/// The rules of the node settings (`{"retention": [...]}`); entries that are not objects or
/// name no limit are skipped (the settings schema refuses them anyway).
pub fn rules_of(settings: &Value) -> Vec<RetentionRule> {
    let Some(rules) = settings.get("retention").and_then(Value::as_array) else {
        return Vec::new();
    };
    rules
        .iter()
        .filter_map(|r| {
            let r = r.as_object()?;
            let rule = RetentionRule {
                semantics: r.get("semantics").and_then(Value::as_str).map(Into::into),
                tags: r
                    .get("tags")
                    .and_then(Value::as_array)
                    .map(|t| {
                        t.iter()
                            .filter_map(|t| t.as_str().map(Into::into))
                            .collect()
                    })
                    .unwrap_or_default(),
                max_events: r.get("maxEvents").and_then(Value::as_u64),
                max_bytes: r.get("maxBytes").and_then(Value::as_u64),
                max_age_us: r
                    .get("maxAgeSecs")
                    .and_then(Value::as_u64)
                    .map(|s| s.saturating_mul(1_000_000)),
            };
            (rule.max_events.is_some() || rule.max_bytes.is_some() || rule.max_age_us.is_some())
                .then_some(rule)
        })
        .collect()
}

/// Runs retention until `shutdown` flips.
pub(crate) fn spawn(
    events: EventService,
    swarm: swarm::Handle,
    keypair: Keypair,
    mut settings: watch::Receiver<Value>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // What the last pass saw: rules and root; a pass with the same and no age rule is moot.
        let mut last: Option<(Vec<RetentionRule>, Option<Cid>)> = None;
        // The apps runtime that owns the settings stopped: keep the rules last in force.
        let mut closed = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                changed = settings.changed(), if !closed => closed = changed.is_err(),
                _ = crate::stopped(&mut shutdown) => return,
            }
            let rules = rules_of(&settings.borrow_and_update());
            if rules.is_empty() {
                last = None;
                continue;
            }
            let root = current_root(&events).await;
            let aged = rules.iter().any(|r| r.max_age_us.is_some());
            if !aged && last.as_ref() == Some(&(rules.clone(), root)) {
                continue;
            }
            let names_before = own_names(&events).await;
            match events.prune(rules.clone()).await {
                Ok(Some(pruned)) => {
                    tracing::info!(root = %pruned.root, offset = pruned.last_offset, generation = pruned.generation, "retention pruned this node's events");
                    announce(&events, &swarm, &keypair, pruned).await;
                    last = Some((rules, current_root(&events).await));
                    if let Some(before) = names_before {
                        unpin_unnamed(&events, before).await;
                    }
                }
                Ok(None) => last = Some((rules, root)),
                Err(e) => tracing::warn!(error = %e, "retention pass failed; trying again later"),
            }
        }
    })
}

/// The name events (`blobs.rs`) of `source` in `reader`: offset → named CID.
fn names_of(reader: &Reader, source: &SourceId) -> Result<BTreeMap<u64, Cid>, shoal_store::Error> {
    let filter = EventFilter::selectors(vec![Selector {
        semantics: Some(crate::blobs::NAME_SEMANTICS.into()),
        ..Selector::default()
    }]);
    let mut out = BTreeMap::new();
    for event in reader.events(source, 0..=u64::MAX, &filter, false)? {
        let event = event?;
        let cid = serde_json::from_str::<Value>(event.payload.get())
            .ok()
            .and_then(|v| v.get("cid")?.as_str()?.parse::<Cid>().ok());
        if let Some(cid) = cid {
            out.insert(event.offset, cid);
        }
    }
    Ok(out)
}

/// This node's own name events (`None` when they cannot be read: then no blob is unpinned).
async fn own_names(events: &EventService) -> Option<BTreeMap<u64, Cid>> {
    let reader = events.reader().ok()?;
    let source = events.source().clone();
    match tokio::task::spawn_blocking(move || names_of(&reader, &source)).await {
        Ok(Ok(names)) => Some(names),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot read this node's blob names");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading this node's blob names panicked");
            None
        }
    }
}

/// Unpins the blobs whose name events (`before`, this node's) a pruning dropped, unless a
/// remaining name event of any source still names them.
async fn unpin_unnamed(events: &EventService, before: BTreeMap<u64, Cid>) {
    if before.is_empty() {
        return;
    }
    let Ok(reader) = events.reader() else {
        return;
    };
    let own = events.source().clone();
    let found = tokio::task::spawn_blocking(move || {
        let after = names_of(&reader, &own)?;
        let dropped: BTreeSet<Cid> = before
            .iter()
            .filter(|(offset, _)| !after.contains_key(offset))
            .map(|(_, cid)| *cid)
            .collect();
        if dropped.is_empty() {
            return Ok(dropped);
        }
        let mut named = BTreeSet::new();
        for info in reader.sources()? {
            named.extend(names_of(&reader, &info.source)?.into_values());
        }
        Ok::<_, shoal_store::Error>(dropped.difference(&named).copied().collect())
    })
    .await;
    let unnamed = match found {
        Ok(Ok(unnamed)) => unnamed,
        Ok(Err(e)) => return tracing::warn!(error = %e, "cannot read the blob names after pruning"),
        Err(e) => return tracing::warn!(error = %e, "reading the blob names panicked"),
    };
    for cid in unnamed {
        match events.blob_delete(cid, false).await {
            Ok(Some(freed)) => {
                tracing::info!(%cid, blocks = freed.blocks, "unpinned a blob whose name events were pruned")
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(%cid, error = %e, "cannot unpin a blob whose name was pruned"),
        }
    }
}

async fn current_root(events: &EventService) -> Option<Cid> {
    let reader = events.reader().ok()?;
    let source = events.source().clone();
    tokio::task::spawn_blocking(move || reader.source(&source).ok().flatten().map(|i| i.root))
        .await
        .ok()
        .flatten()
}

/// Signs the pruned tree's head (same offset, next generation) and gossips it.
async fn announce(
    events: &EventService,
    swarm: &swarm::Handle,
    keypair: &Keypair,
    pruned: shoal_store::Pruned,
) {
    let Ok(reader) = events.reader() else {
        return;
    };
    let source = events.source().clone();
    let offset = pruned.last_offset;
    let last = tokio::task::spawn_blocking(move || {
        reader
            .events(&source, offset..=offset, &EventFilter::all(), false)?
            .next()
            .transpose()
    })
    .await;
    let last = match last {
        Ok(Ok(Some(e))) => e,
        Ok(Ok(None)) => return tracing::warn!("the pruned tree has no newest event"),
        Ok(Err(e)) => return tracing::warn!(error = %e, "cannot read the pruned tree's head"),
        Err(e) => return tracing::warn!(error = %e, "reading the pruned tree's head panicked"),
    };
    let head = Head {
        source: keypair.public().to_peer_id(),
        root: pruned.root,
        offset,
        lamport: last.lamport,
        timestamp: last.timestamp,
        pruned: pruned.generation,
    };
    match head.sign(keypair) {
        Ok(head) => {
            let _ = swarm
                .send(Command::Publish {
                    head,
                    blocks: vec![],
                })
                .await;
        }
        Err(e) => tracing::error!(error = %e, "cannot sign the pruned head"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rules_are_read_from_the_node_settings() {
        assert!(rules_of(&json!({})).is_empty());
        let rules = rules_of(&json!({"retention": [
            {"semantics": "s", "tags": ["a", "b"], "maxEvents": 5},
            {"maxAgeSecs": 2, "maxBytes": 100},
            {"semantics": "no limit"}
        ]}));
        assert_eq!(
            rules,
            vec![
                RetentionRule {
                    semantics: Some("s".into()),
                    tags: vec!["a".into(), "b".into()],
                    max_events: Some(5),
                    ..RetentionRule::default()
                },
                RetentionRule {
                    max_bytes: Some(100),
                    max_age_us: Some(2_000_000),
                    ..RetentionRule::default()
                },
            ]
        );
    }
}
