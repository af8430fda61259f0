//! Replication's write side: making a peer's tree a source's tree (see the module doc of
//! `log.rs` for what an import checks).
//!
//! An import is split in two: [`Writer::check_import`] reads and validates (it writes
//! nothing), then the alias moves. [`Writer::import_batch`] runs the checks of many sources
//! and their alias moves in ONE transaction, together with the blocks that came with them:
//! a replicating node imports hundreds of heads a second, and one commit per head wrote the
//! same few pages (aliases, retired, cids) to the WAL again and again.

use super::{guarded, ImportAttempt, Imported, Writer, MAX_VALIDATED};
use crate::read::{alias_root, load_tree, lock};
use crate::MAX_LAMPORT;
use crate::{
    blocks,
    cid::{Cid, DAG_CBOR},
    error::{Error, Result},
    event::{Event, EventFilter, SourceId},
    schema::now_secs,
    tree,
};
use rusqlite::Connection;
use std::sync::{Arc, Mutex};

/// What [`Writer::check_import`] found; nothing was written yet.
enum Checked {
    Current,
    Missing(Vec<Cid>),
    /// Complete and valid: moving the alias imports it. `validated` are the tree nodes the
    /// import adds, validated now; they join `Writer::validated` once the alias moved.
    Ready {
        imported: Imported,
        events: Option<Vec<Event>>,
        validated: Vec<Cid>,
    },
}

/// An explicit transaction on the writer's connection that does not hold the connection's
/// lock, so banyan (which reads through the same connection) can load the trees it checks
/// and sees the blocks put earlier in it. Rolled back unless committed.
struct OpenTxn {
    conn: Arc<Mutex<Connection>>,
    done: bool,
}

impl OpenTxn {
    fn begin(conn: &Arc<Mutex<Connection>>) -> Result<OpenTxn> {
        lock(conn)?.execute_batch("BEGIN IMMEDIATE")?;
        Ok(OpenTxn {
            conn: conn.clone(),
            done: false,
        })
    }

    fn commit(mut self) -> Result<()> {
        self.done = true;
        let committed = lock(&self.conn)?.execute_batch("COMMIT");
        if let Err(e) = committed {
            self.rollback();
            return Err(e.into());
        }
        Ok(())
    }

    fn rollback(&self) {
        if let Ok(conn) = lock(&self.conn) {
            if !conn.is_autocommit() {
                // Nothing more to do if it fails: SQLite rolls back on the next BEGIN anyway.
                let _ = conn.execute_batch("ROLLBACK");
            }
        }
    }
}

impl Drop for OpenTxn {
    fn drop(&mut self) {
        if !self.done {
            self.rollback();
        }
    }
}

impl Writer {
    /// Makes `root` the tree of `source` (replication). All its blocks must be present. The new
    /// tree must extend the current one (see the module doc). Moves the alias atomically.
    pub fn import(&mut self, source: &SourceId, root: Cid) -> Result<Imported> {
        match self.try_import(source, root, 0)? {
            ImportAttempt::Imported { imported, .. } => Ok(imported),
            ImportAttempt::Missing(missing) => Err(Error::MissingBlock(missing[0])),
            ImportAttempt::Current => Err(Error::NotExtending {
                source_id: source.to_string(),
                root: Box::new(root),
                reason: "it is the current tree".into(),
            }),
        }
    }

    /// Like [`Writer::import`], but a tree with absent blocks is not an error: it answers which
    /// blocks are absent (one walk instead of a check and an error), and a tree that is the
    /// current one already answers `Current`. When the import adds at most `keep_events`
    /// events, they are returned (decoded anyway for validation), so the caller can hand them
    /// to subscribers without reading them back.
    pub fn try_import(
        &mut self,
        source: &SourceId,
        root: Cid,
        keep_events: u64,
    ) -> Result<ImportAttempt> {
        match self.check_import(source, root, keep_events)? {
            Checked::Current => Ok(ImportAttempt::Current),
            Checked::Missing(m) => Ok(ImportAttempt::Missing(m)),
            Checked::Ready {
                imported,
                events,
                validated,
            } => {
                self.commit(&[], Some((&source.alias(), &root)), true)?;
                self.imported(source, validated);
                Ok(ImportAttempt::Imported { imported, events })
            }
        }
    }

    /// Puts `blocks` (from outside: each hash-verified) and imports each of `targets` like
    /// [`Writer::try_import`], all in ONE transaction. A target that fails its checks fails
    /// alone (nothing of it is written); `Err` means the transaction failed (disk): nothing
    /// was stored. Targets are checked in order, each seeing the blocks and aliases before it.
    pub fn import_batch(
        &mut self,
        blocks: &[(Cid, Vec<u8>)],
        targets: &[(SourceId, Cid)],
        keep_events: u64,
    ) -> Result<Vec<Result<ImportAttempt>>> {
        let now = now_secs();
        let txn = OpenTxn::begin(&self.conn)?;
        let mut bytes = 0u64;
        {
            let conn = lock(&self.conn)?;
            for (cid, data) in blocks {
                blocks::put_verified(&conn, cid, data, now)?;
                bytes += data.len() as u64;
            }
        }
        let mut results = Vec::with_capacity(targets.len());
        let mut ready = Vec::new();
        for (source, root) in targets {
            let result = match self.check_import(source, *root, keep_events) {
                Ok(Checked::Current) => Ok(ImportAttempt::Current),
                Ok(Checked::Missing(m)) => Ok(ImportAttempt::Missing(m)),
                Ok(Checked::Ready {
                    imported,
                    events,
                    validated,
                }) => {
                    // A failed write leaves the transaction in doubt: fail the whole batch.
                    blocks::alias_set(&*lock(&self.conn)?, &source.alias(), Some(root), now, true)?;
                    ready.push((source, validated));
                    Ok(ImportAttempt::Imported { imported, events })
                }
                Err(e) => Err(e),
            };
            results.push(result);
        }
        txn.commit()?;
        for (source, validated) in ready {
            self.imported(source, validated);
        }
        self.written_since_checkpoint += bytes;
        // Committed whatever happens here: a failed checkpoint must not report the imports
        // lost (their subscribers would never be told); the next commit tries again.
        if let Err(e) = self.maybe_checkpoint() {
            tracing::warn!(error = %e, "checkpoint after an import batch failed");
        }
        Ok(results)
    }

    /// After `source`'s alias moved to an imported tree: its nodes count as validated, and
    /// the cached builder and pack tickets of the old tree are void.
    fn imported(&mut self, source: &SourceId, validated: Vec<Cid>) {
        for cid in &validated {
            self.checked.remove(cid);
        }
        self.validated.extend(validated);
        self.builders.remove(source);
        self.bump_epoch(source);
    }

    /// Everything an import checks, writing nothing.
    fn check_import(&mut self, source: &SourceId, root: Cid, keep_events: u64) -> Result<Checked> {
        let not_extending = |reason: String| Error::NotExtending {
            source_id: source.to_string(),
            root: Box::new(root),
            reason,
        };
        if root.codec() != DAG_CBOR {
            return Err(not_extending("a tree root is a dag-cbor block".into()));
        }
        let current = alias_root(&self.conn, source)?;
        if current == Some(root) {
            return Ok(Checked::Current);
        }
        // One walk of what the new tree adds (validated subtrees are complete, so it stops
        // there): what is absent, and every added node validated before banyan walks it.
        let (missing, validated) = self.walk_new_blocks(&root, current.as_ref())?;
        if !missing.is_empty() {
            return Ok(Checked::Missing(missing));
        }
        let forest = self.forest.clone();
        let roots = self.roots.clone();
        let new = guarded(root, || load_tree(&forest, &roots, &root))?;
        let new_count = new.count();
        // The lamport of the event before the first new one: each new one must be above.
        let mut prev_lamport: Option<u64> = None;
        let old_count = match current {
            None => 0,
            Some(current) => {
                let old = load_tree(&self.forest, &self.roots, &current)?;
                let old_count = old.count();
                if new_count < old_count {
                    return Err(not_extending(format!(
                        "it holds {new_count} events, the current tree {old_count}"
                    )));
                }
                if old_count > 0 {
                    // Either side may have pruned this event (retention keeps keys, drops
                    // leaves): compared when both hold it. The newest event is never pruned,
                    // so a pruned tree of the same length (`new_count == old_count`) is
                    // always compared.
                    let at = old_count - 1;
                    let ours = self.forest.get(&old, at).map_err(Error::from_tree)?;
                    let theirs = guarded(root, || forest.get(&new, at).map_err(Error::from_tree))?;
                    match (&ours, &theirs) {
                        (Some(a), Some(b)) if a != b => {
                            return Err(not_extending(format!("event {at} differs")));
                        }
                        (_, None) if new_count == old_count => {
                            return Err(not_extending(format!(
                                "a tree of the same length without its newest event {at}"
                            )));
                        }
                        _ => {}
                    }
                    prev_lamport = ours.or(theirs).map(|(key, _)| key.lamport);
                }
                old_count
            }
        };
        if new_count == 0 {
            return Err(not_extending("it is empty".into()));
        }
        if new_count == old_count {
            // The source pruned its tree (same events, fewer leaves): nothing new to decode.
            return Ok(Checked::Ready {
                imported: Imported {
                    first: old_count,
                    last: old_count - 1,
                    last_lamport: prev_lamport.unwrap_or(0),
                },
                events: None,
                validated,
            });
        }
        // Decode every new event once, so a malformed tree never becomes a source's tree.
        let reader = self.reader();
        let keep = new_count - old_count <= keep_events;
        let (decoded, kept) = guarded(root, || {
            let mut n = 0u64;
            let mut kept = Vec::new();
            let mut events = reader.events_of_tree(
                source,
                root,
                new.clone(),
                old_count..=new_count - 1,
                &EventFilter::all(),
                false,
            )?;
            for event in events.by_ref() {
                let event = event?;
                // Lamports order events across sources (and pick the winner of a name): one
                // that does not increase, or is past what clients can read, breaks both.
                if prev_lamport.is_some_and(|p| event.lamport <= p) || event.lamport > MAX_LAMPORT {
                    return Err(not_extending(format!(
                        "event {} has lamport {} after {}: lamports must increase, up to {MAX_LAMPORT}",
                        event.offset,
                        event.lamport,
                        prev_lamport.map_or("none".to_string(), |p| p.to_string()),
                    )));
                }
                prev_lamport = Some(event.lamport);
                if keep {
                    kept.push(event);
                }
                n += 1;
            }
            // Pruned by the source (retention): counted by their keys or summaries.
            Ok((n + events.skipped(), kept))
        })?;
        if decoded != new_count - old_count {
            return Err(Error::Corrupt {
                cid: root,
                reason: format!(
                    "tree claims {} new events, its leaves hold {decoded}",
                    new_count - old_count
                ),
            });
        }
        Ok(Checked::Ready {
            imported: Imported {
                first: old_count,
                last: new_count - 1,
                last_lamport: prev_lamport.unwrap_or(0),
            },
            events: keep.then_some(kept),
            validated,
        })
    }

    /// Walks the new tree from `root`, skipping subtrees validated by an earlier import (each
    /// was complete then, and `validated` is cleared whenever blocks are deleted, so it still
    /// is): answers the absent blocks and, if none is, the present added blocks, each
    /// validated (`tree::node`: banyan trusts its input, a peer's bytes are not trusted). The
    /// caller adds those (and the current tree's blocks, when it was not validated yet) to
    /// `validated` once the import is committed. Cost: the blocks the
    /// import adds, not the whole tree (the recursive SQL walk of every block was a tenth of a
    /// replicating writer). After a restart the current tree's blocks are trusted once more
    /// by walking it (the store only holds trees it validated or built).
    fn walk_new_blocks(
        &mut self,
        root: &Cid,
        current: Option<&Cid>,
    ) -> Result<(Vec<Cid>, Vec<Cid>)> {
        let conn = lock(&self.conn)?;
        if self.validated.len() > MAX_VALIDATED {
            self.validated.clear();
        }
        // Trusted but not in `validated` until the import commits (the current tree may be
        // uncommitted itself, set earlier in the same batch).
        let mut trusted = std::collections::HashSet::new();
        if let Some(c) = current {
            if !self.validated.contains(c) {
                trusted.extend(blocks::reachable(&conn, c)?.into_iter().map(|r| r.cid));
            }
        }
        let mut missing = Vec::new();
        let mut added = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![*root];
        while let Some(cid) = stack.pop() {
            if self.validated.contains(&cid) || trusted.contains(&cid) || !seen.insert(cid) {
                continue;
            }
            let Some(data) = blocks::get(&conn, &cid)? else {
                missing.push(cid);
                continue;
            };
            if !self.checked.contains(&cid) {
                tree::validate_block(&cid, &data)
                    .map_err(|reason| Error::Corrupt { cid, reason })?;
            }
            stack.extend(blocks::links(&cid, &data)?);
            added.push(cid);
        }
        if !missing.is_empty() {
            added.clear();
        }
        added.extend(trusted);
        Ok((missing, added))
    }

    /// Notes blocks the caller opened with [`crate::tree::validate_block`] (a replicator checks
    /// a peer's blocks on its own threads, off the writer's): the import that adds one takes it
    /// as a valid node without opening it again; until then the note is kept, across the
    /// rounds of a sync. Blocks are content-addressed, so a noted block stays valid. A block
    /// not noted is opened by the import as before.
    pub fn note_checked(&mut self, cids: impl IntoIterator<Item = Cid>) {
        if self.checked.len() > MAX_VALIDATED {
            self.checked.clear();
        }
        self.checked.extend(cids);
    }

    /// Forgets which blocks were validated: called when blocks are deleted, since a validated
    /// block no longer implies its subtree is present.
    pub(crate) fn forget_validated(&mut self) {
        self.validated.clear();
    }
}
