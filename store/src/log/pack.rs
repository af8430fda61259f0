//! Packing: rewriting a source's unsealed tail into full leaves. Inline ([`Writer::pack`]) or
//! in the background in three steps: the writer issues a [`PackTicket`]; any thread computes
//! the [`PreparedPack`] on a read connection ([`Reader::prepare_pack`]); the writer installs it
//! ([`Writer::install_pack`]), re-appending what was committed meanwhile.

use super::*;

/// Result of packing a source's tree.
#[derive(Debug, Clone)]
pub struct Packed {
    /// Root after packing (unchanged if it was packed already).
    pub root: Option<Cid>,
    /// False when the tree was packed already and nothing was written.
    pub changed: bool,
    /// Blocks written.
    pub blocks_written: usize,
}

/// Permission to pack one source's tree away from the writer (background packing): names
/// the tree as it was when the ticket was issued. See [`Writer::pack_ticket`].
#[derive(Debug, Clone)]
pub struct PackTicket {
    pub(super) source: SourceId,
    pub(super) base: Cid,
    pub(super) count: u64,
    /// The source's replacement epoch at issue (see `Writer::epochs`).
    pub(super) epoch: u64,
    pub(super) kind: PackKind,
}

/// What a ticket asks for.
#[derive(Debug, Clone)]
pub(super) enum PackKind {
    /// banyan's pack: the whole unsealed tail rewritten into full leaves. Its cost grows with
    /// the last (unsealed) leaf, up to a full leaf of events, so it is the rare step.
    Full,
    /// The unpacked appends after `root` (holding `count` events) merged into one leaf on top
    /// of it: costs only the merged events. Each compaction adds one level above `root`.
    /// `events` are those appends' events when the writer still held them (see [`Tail`]);
    /// else the packer reads them from the tree.
    Compact {
        root: Cid,
        count: u64,
        events: Option<Vec<(Key, Value)>>,
    },
}

/// Most events a [`Tail`] keeps, and most bytes (payloads plus a per-event allowance); past
/// either the tail is dropped and the packer reads the events from the tree, as it always
/// can. Keeping costs the writer a copy of every event appended: worth it for small appends,
/// whose read-back is expensive per event, not for batches (a batch of 100 reads back cheaply
/// per event; uncapped, batches of 100 measured 0.83× the rate without tails in one set).
pub(super) const TAIL_MAX_EVENTS: usize = 1024;
pub(super) const TAIL_MAX_BYTES: usize = 1 << 20;

/// The events appended to a source since its [`Base`], in order: what a compaction merges.
/// Reading them back from the unpacked appends (one small branch and leaf per append, each a
/// block lookup and a decompression) was most of the packer's work (BENCHMARKS.md, issue 18).
/// Valid while `epoch` is the source's epoch (nothing replaced the tree since) and it spans
/// exactly `base.count..builder.count()`; [`Writer::pack_ticket`] checks both.
#[derive(Debug)]
pub(super) struct Tail {
    epoch: u64,
    from: u64,
    events: Vec<(Key, Value)>,
    bytes: usize,
}

impl Tail {
    fn empty(epoch: u64, from: u64) -> Tail {
        Tail {
            epoch,
            from,
            events: Vec::new(),
            bytes: 0,
        }
    }

    fn end(&self) -> u64 {
        self.from + self.events.len() as u64
    }

    /// Drops the events before offset `from` (now in the base).
    fn drain_to(&mut self, from: u64) {
        let n = from.saturating_sub(self.from).min(self.events.len() as u64) as usize;
        for (_, payload) in self.events.drain(..n) {
            self.bytes = self.bytes.saturating_sub(event_bytes(payload.len()));
        }
        self.from += n as u64;
    }
}

/// What an event counts against [`TAIL_MAX_BYTES`].
fn event_bytes(payload: usize) -> usize {
    payload.saturating_add(128)
}

/// A source's tree as of its last pack or compaction: what the unpacked appends sit on.
#[derive(Debug, Clone, Copy)]
pub(super) struct Base {
    pub(super) root: Cid,
    pub(super) count: u64,
    pub(super) level: i32,
}

impl PackTicket {
    /// The source whose tree is to be packed.
    pub fn source(&self) -> &SourceId {
        &self.source
    }
}

/// A packed tree computed by [`Reader::prepare_pack`], not yet stored: hand it to
/// [`Writer::install_pack`].
#[derive(Debug)]
pub struct PreparedPack {
    pub(super) ticket: PackTicket,
    pub(super) root: Cid,
    pub(super) blocks: Vec<(Cid, Vec<u8>)>,
}

impl Writer {
    /// Packs `source`'s tree: the unsealed tail is rewritten into full leaves (zstd at the pack
    /// level) and branches; sealed subtrees are reused. Replaced blocks become garbage.
    pub fn pack(&mut self, source: &SourceId) -> Result<Packed> {
        let Some(root) = alias_root(&self.conn, source)? else {
            return Ok(Packed {
                root: None,
                changed: false,
                blocks_written: 0,
            });
        };
        let mut txn = StagedTxn::new(&self.forest);
        let Some(new_root) = txn.pack(self.config.tree.pack(), &root)? else {
            return Ok(Packed {
                root: Some(root),
                changed: false,
                blocks_written: 0,
            });
        };
        let blocks = txn.blocks()?;
        self.commit(&blocks, Some((&source.alias(), &new_root)), true)?;
        self.builders.remove(source);
        self.bump_epoch(source);
        Ok(Packed {
            root: Some(new_root),
            changed: new_root != root,
            blocks_written: blocks.len(),
        })
    }

    /// Background packing, step 1 (on the writer): a ticket when more than half of
    /// `TreeConfig::max_unpacked_depth` appends sit unpacked on the source's base (its tree as
    /// of the last pack or compaction). The ticket asks for a compaction (those appends merged
    /// into one leaf: cheap) while fewer than half that depth of compactions are stacked, else
    /// for a full pack. So the tree stays within about `max_unpacked_depth` levels, and the
    /// expensive full pack (it rewrites the whole unsealed last leaf) runs about once per
    /// (depth/2)² appends instead of once per depth. `None` when no pack is due or the source
    /// was not appended to through this writer. Cheap: no I/O. `append` itself packs inline
    /// only at twice that depth, a backstop for a writer whose packer does not keep up.
    pub fn pack_ticket(&self, source: &SourceId) -> Option<PackTicket> {
        let builder = self.builders.get(source)?;
        let half = (self.config.tree.max_unpacked_depth / 2).max(1) as i32;
        let base = self.bases.get(source);
        // Unpacked appends since the last pack or compaction.
        let chain = builder.level() - base.map_or(0, |b| b.level);
        if chain <= half {
            return None;
        }
        // Compactions stack up one level each: after half the depth of them, a full pack.
        let kind = match base {
            Some(b) if b.level <= half => PackKind::Compact {
                root: b.root,
                count: b.count,
                events: self
                    .tails
                    .get(source)
                    .filter(|t| {
                        t.epoch == self.epoch(source)
                            && t.from == b.count
                            && t.end() == builder.count()
                    })
                    .map(|t| t.events.clone()),
            },
            _ => PackKind::Full,
        };
        Some(PackTicket {
            source: source.clone(),
            base: cid::from_ipld(&builder.link()?).ok()?,
            count: builder.count(),
            epoch: self.epoch(source),
            kind,
        })
    }

    /// Background packing, step 3 (on the writer): stores a pack computed by
    /// [`Reader::prepare_pack`] and moves the alias to it, in one transaction. Events
    /// appended since the ticket was issued are appended again on top of the packed tree, so
    /// the cost here is one small append however long the pack took. Returns `None`, storing
    /// nothing, when the ticket is stale (the tree was replaced meanwhile, not just extended)
    /// or the tree was packed already. The replaced blocks become garbage for `gc`.
    /// [`Writer::append_with_pack`] does the same as part of an append.
    pub fn install_pack(&mut self, prepared: PreparedPack) -> Result<Option<Packed>> {
        let source = prepared.ticket.source.clone();
        let Some(current) = self.builders.remove(&source) else {
            return Ok(None);
        };
        let (builder, blocks, base) = match self.rebase(&current, prepared) {
            Ok(Some(rebased)) => rebased,
            Ok(None) => {
                self.builders.insert(source, current);
                return Ok(None);
            }
            Err(e) => {
                self.builders.insert(source, current);
                return Err(e);
            }
        };
        let root = root_of(&builder)?;
        if let Err(e) = self.commit(&blocks, Some((&source.alias(), &root)), true) {
            self.builders.insert(source, current);
            return Err(e);
        }
        let epoch_before = self.epoch(&source);
        let count = builder.count();
        self.builders.insert(source.clone(), builder);
        self.bases.insert(source.clone(), base);
        self.bump_epoch(&source);
        self.advance_tail(&source, epoch_before, count, None);
        Ok(Some(Packed {
            root: Some(root),
            changed: true,
            blocks_written: blocks.len(),
        }))
    }

    /// The tree `current` would be with `prepared`'s packed prefix: its packed tree plus the
    /// events `current` gained since the ticket, appended again. Returns the new builder and
    /// every block it needs that may not be stored (the pack's and the rebase's), or `None`
    /// when the pack does not apply (stale ticket, other source, nothing packed). Writes
    /// nothing.
    pub(super) fn rebase(
        &self,
        current: &Builder,
        prepared: PreparedPack,
    ) -> Result<Option<(Builder, Blocks, Base)>> {
        let PreparedPack {
            ticket,
            root: packed_root,
            blocks: packed_blocks,
        } = prepared;
        let count = current.count();
        if packed_root == ticket.base
            || self.epoch(&ticket.source) != ticket.epoch
            || count < ticket.count
        {
            return Ok(None);
        }
        let mut txn = StagedTxn::new(&self.forest);
        // The pack's blocks go first, as if this transaction had written them: the rebase
        // reads the packed tree's right edge, and `blocks` hands them back with its own.
        txn.stage(packed_blocks)?;
        let mut builder = txn.builder(self.config.tree.append(), &packed_root)?;
        let base = Base {
            root: packed_root,
            count: ticket.count,
            level: builder.level(),
        };
        let rebased = count - ticket.count;
        if rebased > 0 {
            // Appended while the pack was computed: the same events, in the same order, on top
            // of the packed prefix (read from the unpacked tail, whose leaves are small).
            let tail = current.snapshot();
            let query = EventQuery::new(ticket.count..=count - 1, EventFilter::all());
            let mut entries: Vec<(Key, Value)> = Vec::with_capacity(rebased as usize);
            for chunk in self.forest.iter_filtered_chunked(&tail, query, &|_| ()) {
                let chunk = chunk.map_err(Error::from_tree)?;
                entries.extend(chunk.data.into_iter().map(|(_, k, v)| (k, v)));
            }
            if entries.len() as u64 != rebased {
                return Err(Error::Tree(format!(
                    "rebasing a pack: read {} of {rebased} events",
                    entries.len()
                )));
            }
            txn.extend(&mut builder, entries)?;
        }
        Ok(Some((builder, txn.blocks()?, base)))
    }

    /// Depth of the unpacked chain at which `append` packs inline.
    pub(super) fn backstop_depth(&self) -> i32 {
        (self.config.tree.max_unpacked_depth as i32).saturating_mul(2)
    }

    pub(super) fn bump_epoch(&mut self, source: &SourceId) {
        *self.epochs.entry(source.clone()).or_insert(0) += 1;
    }

    pub(super) fn epoch(&self, source: &SourceId) -> u64 {
        self.epochs.get(source).copied().unwrap_or(0)
    }

    /// Whether `events`, about to be appended to `source`, still fit its tail.
    pub(super) fn tail_room(&self, source: &SourceId, events: &[(Key, Value)]) -> bool {
        let (kept, bytes) = self
            .tails
            .get(source)
            .map_or((0, 0), |t| (t.events.len(), t.bytes));
        if kept.saturating_add(events.len()) > TAIL_MAX_EVENTS {
            return false;
        }
        let adding = events.iter().fold(0usize, |sum, (_, payload)| {
            sum.saturating_add(event_bytes(payload.len()))
        });
        bytes.saturating_add(adding) <= TAIL_MAX_BYTES
    }

    /// Brings `source`'s tail up to date after its tree grew from `first` events (its epoch
    /// was `epoch_before`) by `appended` (`None`: nothing appended, or too much to keep),
    /// and its base may have moved. A tail that cannot say which events follow the base is
    /// dropped: tickets then leave the reading to the packer.
    pub(super) fn advance_tail(
        &mut self,
        source: &SourceId,
        epoch_before: u64,
        first: u64,
        appended: Option<Vec<(Key, Value)>>,
    ) {
        let base = self.bases.get(source).map_or(0, |b| b.count);
        let count = self.builders.get(source).map_or(0, |b| b.count());
        let mut tail = match self.tails.remove(source) {
            Some(mut t) if t.epoch == epoch_before && t.from <= base && base <= t.end() => {
                t.drain_to(base);
                t
            }
            // Nothing follows the base yet (a new source, or everything was just packed).
            _ if base == first || base == count => Tail::empty(epoch_before, base),
            _ => return,
        };
        tail.epoch = self.epoch(source);
        if tail.end() == first && first < count {
            let Some(events) = appended else { return };
            for event in events {
                tail.bytes = tail.bytes.saturating_add(event_bytes(event.1.len()));
                tail.events.push(event);
            }
        }
        if tail.end() == count {
            self.tails.insert(source.clone(), tail);
        }
    }

    /// Packs every source whose tree is not packed.
    pub fn pack_all(&mut self) -> Result<Vec<(SourceId, Packed)>> {
        let sources = self.reader().sources()?;
        let mut out = Vec::new();
        for info in sources {
            let packed = self.pack(&info.source)?;
            if packed.changed {
                out.push((info.source, packed));
            }
        }
        Ok(out)
    }
}

impl Reader {
    /// The events at `range` of the tree `root`, in order.
    fn read_events(
        &self,
        root: &Cid,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<Vec<(Key, Value)>> {
        let tree = self.load_tree(root)?;
        let query = EventQuery::new(range, EventFilter::all());
        let mut entries: Vec<(Key, Value)> = Vec::new();
        for chunk in self.forest.iter_filtered_chunked(&tree, query, &|_| ()) {
            let chunk = chunk.map_err(Error::from_tree)?;
            entries.extend(chunk.data.into_iter().map(|(_, k, v)| (k, v)));
        }
        Ok(entries)
    }

    /// Background packing, step 2 (anywhere but the writer's thread): computes the packed
    /// form of the tree a [`PackTicket`] names, writing nothing (the new blocks are kept in
    /// memory, at most one leaf per tree level plus branches). CPU-heavy: it recompresses
    /// every event since the last sealed leaf, at the pack level.
    pub fn prepare_pack(&self, mut ticket: PackTicket) -> Result<PreparedPack> {
        let mut txn = StagedTxn::new(&self.forest);
        if let PackKind::Compact {
            root,
            count,
            events,
        } = &mut ticket.kind
        {
            let (root, count, events) = (*root, *count, events.take());
            if ticket.count <= count {
                let root = ticket.base;
                return Ok(PreparedPack {
                    ticket,
                    root,
                    blocks: Vec::new(),
                });
            }
            // The events after the base, as the writer kept them or read from the ticket's tree
            // (small unpacked leaves), appended to the base as one leaf.
            let mut merged = txn.builder(self.tree_config.append(), &root)?;
            let entries = match events {
                // Debug builds (the tests) check them against the tree.
                Some(events) if !cfg!(debug_assertions) => events,
                _ => {
                    let read = self.read_events(&ticket.base, count..=ticket.count - 1)?;
                    if events.as_ref().is_some_and(|e| *e != read) {
                        return Err(Error::Tree(
                            "compacting: the writer's events differ from the tree's".into(),
                        ));
                    }
                    read
                }
            };
            if entries.len() as u64 != ticket.count - count {
                return Err(Error::Tree(format!(
                    "compacting: read {} of {} events",
                    entries.len(),
                    ticket.count - count
                )));
            }
            txn.extend(&mut merged, entries)?;
            return Ok(PreparedPack {
                ticket,
                root: root_of(&merged)?,
                blocks: txn.blocks()?,
            });
        }
        let root = txn.pack(self.tree_config.pack(), &ticket.base)?;
        Ok(PreparedPack {
            root: root.unwrap_or(ticket.base),
            blocks: txn.blocks()?,
            ticket,
        })
    }
}
