//! Retention: pruning a source's own tree ([`Writer::prune`]).
//!
//! A [`RetentionRule`] names the events it holds (semantics and/or tags; none = every event)
//! and its limits (newest `max_events`, newest `max_bytes` of payload, events younger than
//! `max_age_us`). An event is prunable when some rule it matches puts it beyond a limit. The
//! tree is packed, then banyan's `retain` replaces every sealed leaf whose events are all
//! prunable (and every sealed branch whose children all are) by its index alone: the link is
//! dropped, the keys and summaries stay, so offsets, counts and summaries never change and the
//! dropped blocks become garbage for `gc`. Pruning is by whole leaves, so up to one leaf more
//! than a limit is kept per rule, and a leaf holding one event no rule prunes is kept whole.
//!
//! Invariant: the newest event of the tree is never pruned (the root stays loadable, a
//! replica can check a pruned tree is the same stream, and the lamport of the source is kept).

use super::*;
use crate::event::Selector;
use banyan::{
    index::{BranchIndex, LeafIndex},
    query::Query,
};

/// One retention rule (the `node` settings scope's `retention` entries).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionRule {
    /// Only events of this semantics (none: any).
    pub semantics: Option<String>,
    /// Only events carrying all of these tags.
    pub tags: Vec<String>,
    /// Keep at most the newest this many matching events.
    pub max_events: Option<u64>,
    /// Keep at most the newest matching events whose payloads (JSON text) total this many bytes.
    pub max_bytes: Option<u64>,
    /// Keep matching events whose timestamp is at most this many microseconds before `now`.
    pub max_age_us: Option<u64>,
}

impl RetentionRule {
    fn selector(&self) -> Selector {
        Selector {
            semantics: self.semantics.clone(),
            name: None,
            tags: self.tags.clone(),
            time: None,
        }
    }

    fn matches_all(&self) -> bool {
        self.semantics.is_none() && self.tags.is_empty()
    }
}

/// Result of a pruning that changed the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pruned {
    /// The source's new root (same count and offsets as before).
    pub root: Cid,
    /// Highest offset (unchanged by pruning).
    pub last_offset: u64,
    /// How many times the tree was pruned at this highest offset (1 for the first): orders
    /// two signed heads at one offset (the later pruning supersedes the earlier tree).
    pub generation: u64,
}

/// A rule with its limits resolved against the tree: matching events below `keep_from` or
/// older than `keep_time` are prunable.
#[derive(Debug, Clone)]
struct Limit {
    selector: Selector,
    matches_all: bool,
    keep_from: u64,
    keep_time: u64,
}

/// The banyan query of a pruning: true = keep.
#[derive(Debug, Clone)]
struct Retain {
    limits: Vec<Limit>,
    /// The tree's highest offset, always kept.
    last: u64,
}

impl Retain {
    fn prunable(&self, offset: u64, time: u64, semantics: &str, tags: &[SharedStr]) -> bool {
        offset != self.last
            && self.limits.iter().any(|l| {
                (offset < l.keep_from || time < l.keep_time)
                    && l.selector.matches(time, semantics, "", tags)
            })
    }
}

impl Query<EventTree> for Retain {
    fn containing(&self, offset: u64, index: &LeafIndex<EventTree>, res: &mut [bool]) {
        let keys = &index.keys;
        for (i, r) in res.iter_mut().enumerate() {
            let (Some(&time), Some(&ni), Some(&si)) = (
                keys.time.get(i),
                keys.name_idx.get(i),
                keys.tag_set_idx.get(i),
            ) else {
                continue;
            };
            let (Some((semantics, _)), Some(tags)) = (
                keys.names.get(ni as usize),
                keys.tag_set_strs.get(si as usize),
            ) else {
                continue;
            };
            *r = !self.prunable(offset + i as u64, time, semantics, tags);
        }
    }

    fn intersecting(&self, offset: u64, index: &BranchIndex<EventTree>, res: &mut [bool]) {
        // Only rules over every event can judge a whole subtree from its summary; the others
        // are judged leaf by leaf (`containing`).
        let mut child_offset = offset;
        for (i, s) in index.summaries.0.iter().enumerate() {
            let last = child_offset.saturating_add(s.count.saturating_sub(1));
            if let Some(r) = res.get_mut(i) {
                let all_prunable = s.count > 0
                    && last < self.last
                    && self
                        .limits
                        .iter()
                        .any(|l| l.matches_all && (last < l.keep_from || s.time.1 < l.keep_time));
                *r = !all_prunable;
            }
            child_offset = child_offset.saturating_add(s.count);
        }
    }
}

/// Meta key of a source's pruning generation (`"<offset> <generation>"`).
fn generation_key(source: &SourceId) -> String {
    format!("pruned/{source}")
}

impl Writer {
    /// Applies `rules` to `source`'s tree (this node's own source) at time `now_us` (µs since
    /// the epoch): packs it, drops the leaves whose events are all prunable, and moves the
    /// alias, in one transaction. `None` when nothing was dropped (nothing written).
    pub fn prune(
        &mut self,
        source: &SourceId,
        rules: &[RetentionRule],
        now_us: u64,
    ) -> Result<Option<Pruned>> {
        let Some(root) = alias_root(&self.conn, source)? else {
            return Ok(None);
        };
        if rules.is_empty() {
            return Ok(None);
        }
        let reader = self.reader();
        let tree = reader.load_tree(&root)?;
        let count = tree.count();
        if count == 0 {
            return Ok(None);
        }
        let last = count - 1;
        let mut limits = Vec::with_capacity(rules.len());
        for rule in rules {
            limits.push(Limit {
                selector: rule.selector(),
                matches_all: rule.matches_all(),
                keep_from: self.keep_from(&reader, source, &root, rule, last)?,
                keep_time: rule.max_age_us.map_or(0, |age| now_us.saturating_sub(age)),
            });
        }
        let query = Retain { limits, last };
        let mut txn = StagedTxn::new(&self.forest);
        let packed = txn.pack(self.config.tree.pack(), &root)?.unwrap_or(root);
        let mut builder = txn.builder(self.config.tree.pack(), &packed)?;
        txn.retain(&mut builder, &query)?;
        let new_root = root_of(&builder)?;
        if new_root == packed {
            // Nothing dropped: a pack alone is the packer's business.
            return Ok(None);
        }
        let key = generation_key(source);
        let generation = match reader.meta_get(&key)? {
            Some(v) => parse_generation(&v)
                .filter(|(o, _)| *o == last)
                .map_or(1, |(_, g)| g.saturating_add(1)),
            None => 1,
        };
        let blocks = txn.blocks()?;
        self.commit(&blocks, Some((&source.alias(), &new_root)), true)?;
        self.meta_set(&key, format!("{last} {generation}").as_bytes())?;
        self.builders.remove(source);
        self.bases.remove(source);
        self.bump_epoch(source);
        Ok(Some(Pruned {
            root: new_root,
            last_offset: last,
            generation,
        }))
    }

    /// The lowest offset `rule`'s count and byte limits keep (matching events below it are
    /// prunable): a reverse walk over the matching events, stopped at the first one beyond.
    fn keep_from(
        &self,
        reader: &Reader,
        source: &SourceId,
        root: &Cid,
        rule: &RetentionRule,
        last: u64,
    ) -> Result<u64> {
        if rule.max_events.is_none() && rule.max_bytes.is_none() {
            return Ok(0);
        }
        if rule.max_events == Some(0) || rule.max_bytes == Some(0) {
            return Ok(last.saturating_add(1));
        }
        if let (true, None, Some(n)) = (rule.matches_all(), rule.max_bytes, rule.max_events) {
            // Every event matches: no walk needed.
            return Ok(last.saturating_add(1).saturating_sub(n));
        }
        let filter = EventFilter::selectors(vec![rule.selector()]);
        let (mut n, mut bytes) = (0u64, 0u64);
        for event in reader.events_at(source, root, 0..=last, &filter, true)? {
            let event = event?;
            n += 1;
            bytes = bytes.saturating_add(event.payload.get().len() as u64);
            if rule.max_bytes.is_some_and(|max| bytes > max) {
                return Ok(event.offset.saturating_add(1));
            }
            if rule.max_events.is_some_and(|max| n >= max) {
                return Ok(event.offset);
            }
        }
        Ok(0)
    }
}

impl Reader {
    /// The pruning generation of `source` at its highest offset `last` (0: never pruned
    /// there), as [`Writer::prune`] recorded it: what this node's signed head carries.
    pub fn pruned_generation(&self, source: &SourceId, last: u64) -> Result<u64> {
        Ok(self
            .meta_get(&generation_key(source))?
            .as_deref()
            .and_then(parse_generation)
            .filter(|(o, _)| *o == last)
            .map_or(0, |(_, g)| g))
    }
}

fn parse_generation(v: &[u8]) -> Option<(u64, u64)> {
    let s = std::str::from_utf8(v).ok()?;
    let (o, g) = s.split_once(' ')?;
    Some((o.parse().ok()?, g.parse().ok()?))
}
