//! Replicated trees: the writer's side of replication. A batch puts the blocks that came with
//! the heads (or were fetched) and imports every complete tree, all in ONE store transaction
//! (`shoal_store::Writer::import_batch`); then each import raises the offsets and reaches
//! subscribers as an update of [`Origin::Replicated`], the same path local appends take.

use std::sync::Arc;

use shoal_store::{Cid, SourceId};

use super::{Origin, SourceUpdate, State};
use crate::events::EventsError;

/// One source of an [`super::Command::ImportBatch`].
#[derive(Debug)]
pub struct ImportRequest {
    pub source: SourceId,
    pub root: Cid,
    /// Blocks to put first (hash-verified by the store).
    pub blocks: Vec<(Cid, Vec<u8>)>,
    /// Every one of `blocks` was opened as a tree node already
    /// (`shoal_store::tree::validate_block`, as a fetching sync does): the import does not
    /// open them again.
    pub checked: bool,
}

/// What became of one [`ImportRequest`].
#[derive(Debug)]
pub enum ImportOutcome {
    /// The source moved to the root; subscribers were told.
    Imported(shoal_store::Imported),
    /// The root is the source's tree already.
    Current,
    /// These blocks are still absent (fetch them, then import).
    Missing(Vec<Cid>),
    Failed(EventsError),
}

/// Imported events up to this many travel with the update (subscribers need no store read).
const IMPORT_INLINE_EVENTS: u64 = 1024;

fn own_source_error() -> EventsError {
    EventsError::Invalid {
        index: None,
        field: "source",
        reason: "cannot import this node's own source".into(),
    }
}

impl State {
    /// Puts every request's blocks and imports each complete root, all in ONE store
    /// transaction (see `shoal_store::Writer::import_batch`), then tells subscribers. This
    /// node's own source is refused unless `own_allowed` (a restore by the operator).
    pub(super) fn import_batch(
        &mut self,
        imports: Vec<ImportRequest>,
        own_allowed: bool,
    ) -> Vec<ImportOutcome> {
        let mut blocks = Vec::new();
        let mut targets = Vec::with_capacity(imports.len());
        for r in imports {
            if r.checked {
                self.writer.note_checked(r.blocks.iter().map(|(c, _)| *c));
            }
            blocks.extend(r.blocks);
            targets.push((r.source, r.root));
        }
        // Only this node appends to its own log; a peer's copy of it is never newer, except
        // while this node resumes its source after losing its store (`resume.rs`).
        let own_allowed = own_allowed || self.resume.is_resuming();
        let own = targets
            .iter()
            .map(|(s, _)| !own_allowed && s == &self.source)
            .collect::<Vec<_>>();
        let store_targets: Vec<(SourceId, Cid)> = targets
            .iter()
            .zip(&own)
            .filter(|(_, own)| !**own)
            .map(|(t, _)| t.clone())
            .collect();
        let mut results =
            match self
                .writer
                .import_batch(&blocks, &store_targets, IMPORT_INLINE_EVENTS)
            {
                Ok(results) => results.into_iter(),
                Err(e) => {
                    // Gossip blocks were hash-checked already: this is the disk. Fail them all.
                    tracing::warn!(error = %e, sources = targets.len(), "import batch failed");
                    let err = EventsError::from(e);
                    return targets
                        .into_iter()
                        .map(|_| ImportOutcome::Failed(err.clone()))
                        .collect();
                }
            };
        targets
            .into_iter()
            .zip(own)
            .map(|((source, root), own)| {
                if own {
                    return ImportOutcome::Failed(own_source_error());
                }
                match results.next() {
                    Some(Ok(attempt)) => self.imported(source, root, attempt),
                    Some(Err(e)) => ImportOutcome::Failed(e.into()),
                    None => ImportOutcome::Failed(EventsError::from(shoal_store::Error::Invalid(
                        "the store answered fewer imports than asked".into(),
                    ))),
                }
            })
            .collect()
    }

    /// After the store answered an import: raises the offsets and broadcasts the update.
    fn imported(
        &mut self,
        source: SourceId,
        root: Cid,
        attempt: shoal_store::ImportAttempt,
    ) -> ImportOutcome {
        let (imported, events) = match attempt {
            shoal_store::ImportAttempt::Imported { imported, events } => (imported, events),
            shoal_store::ImportAttempt::Current => return ImportOutcome::Current,
            shoal_store::ImportAttempt::Missing(m) => return ImportOutcome::Missing(m),
        };
        // Only now, with the tree checked, may its lamports move our clock.
        self.clock.observe(imported.last_lamport);
        if source == self.source {
            self.resume.stored(imported.last);
        }
        let known = self.offsets.borrow().get(&source);
        if known.is_some_and(|k| k >= imported.last) {
            return ImportOutcome::Imported(imported);
        }
        // Events new here: everything above what was stored of this source.
        // (`known < imported.last` here; a peer's offsets are not trusted to leave room.)
        let new_events = imported
            .last
            .saturating_add(1)
            .saturating_sub(known.map_or(0, |k| k.saturating_add(1)));
        self.counters.imported(new_events);
        self.offsets.send_modify(|o| {
            o.update(source.clone(), imported.last);
        });
        let update = SourceUpdate {
            source,
            first: imported.first,
            last: imported.last,
            // Shared like a local append's events, under the same size bound.
            events: events
                .filter(|e| {
                    !e.is_empty()
                        && e.iter().map(|e| e.payload.get().len()).sum::<usize>()
                            <= self.config.inline_update_bytes
                })
                .map(Arc::from),
            root,
            origin: Origin::Replicated,
        };
        self.updates.send(Arc::new(update));
        ImportOutcome::Imported(imported)
    }
}
