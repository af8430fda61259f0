//! Per-source event logs, write side: the [`Writer`] (append, import, pack, put blocks, GC).
//! Reads are in `read.rs`.
//!
//! Each source's current tree is pinned by the alias `source/<id>`. The writer builds new tree
//! nodes with banyan into an in-memory staging area, then writes those blocks and moves the
//! alias in ONE SQLite transaction, so a crash leaves either the old or the new tree, never a
//! mix. Appends use `extend_unpacked` (a new leaf joined by one branch: cost independent of the
//! tree size); `pack` later rewrites the unsealed tail into full leaves, compressed harder, and
//! the replaced blocks become garbage for `gc`.
//!
//! Import check (replication): the new tree must be complete, its count must exceed the
//! current one, and its event at the current last offset must equal ours (key and payload);
//! every new event is decoded once before the alias moves, and every block the import adds is
//! validated (`tree::node`) before banyan walks it. Comparing the whole old prefix would cost
//! O(log size) per import; one event costs O(tree depth), and the signed head (engine) vouches
//! for the rest.

use crate::read::{alias_root, lock, RootCache};
use crate::{
    blocks,
    cid::{self, Cid},
    error::{Error, Result},
    event::{Event, EventFilter, NewEvent, SharedStr, SourceId},
    gc::{self, GcStats},
    schema::{self, now_secs},
    store::StoreConfig,
    tree::{self, EventQuery, EventTree, Key, SqliteReader, Staged, Stager, Staging, Value},
};
// Re-exported because `blob.rs` names the reader through this module.
pub(crate) use crate::read::Reader;
use banyan::{store::BranchCache, StreamBuilder};
use rusqlite::{params, Connection};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use crate::checkpoint::Checkpointer;
use crate::lock::WriterLock;

mod import;

/// Alias name prefix of source trees.
pub(crate) const SOURCE_ALIAS_PREFIX: &str = "source/";

pub(crate) type Forest = banyan::Forest<EventTree, SqliteReader>;
/// Encoded blocks with their CIDs, in write order.
type Blocks = Vec<(Cid, Vec<u8>)>;
type Builder = StreamBuilder<EventTree, Value>;

/// Result of an append.
#[derive(Debug, Clone)]
pub struct Appended {
    /// The source's new tree root.
    pub root: Cid,
    /// Offset of the first appended event.
    pub first: u64,
    /// Offset of the last appended event.
    pub last: u64,
    /// Blocks written by this append (for the inline gossip fast path).
    pub new_blocks: Vec<(Cid, Vec<u8>)>,
    /// The tree was packed by this append (inline, or a background pack installed with it).
    pub packed: bool,
}

/// Result of an import: the offsets that became available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    pub first: u64,
    pub last: u64,
}

/// Result of [`Writer::try_import`].
#[derive(Debug)]
pub enum ImportAttempt {
    /// The alias moved; `events` are the new events when there were few enough to keep.
    Imported {
        imported: Imported,
        events: Option<Vec<Event>>,
    },
    /// The tree is the source's current one already; nothing changed.
    Current,
    /// These blocks reachable from the root are absent; nothing changed.
    Missing(Vec<Cid>),
}

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
    source: SourceId,
    base: Cid,
    count: u64,
    /// The source's replacement epoch at issue (see `Writer::epochs`).
    epoch: u64,
    kind: PackKind,
}

/// What a ticket asks for.
#[derive(Debug, Clone)]
enum PackKind {
    /// banyan's pack: the whole unsealed tail rewritten into full leaves. Its cost grows with
    /// the last (unsealed) leaf, up to a full leaf of events, so it is the rare step.
    Full,
    /// The unpacked appends after `root` (holding `count` events) merged into one leaf on top
    /// of it: costs only the merged events. Each compaction adds one level above `root`.
    Compact { root: Cid, count: u64 },
}

/// A source's tree as of its last pack or compaction: what the unpacked appends sit on.
#[derive(Debug, Clone, Copy)]
struct Base {
    root: Cid,
    count: u64,
    level: i32,
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
    ticket: PackTicket,
    root: Cid,
    blocks: Vec<(Cid, Vec<u8>)>,
}

/// How often [`Writer::checkpoint`] tries TRUNCATE, and the pause between tries.
const TRUNCATE_TRIES: u32 = 10;
const TRUNCATE_RETRY: std::time::Duration = std::time::Duration::from_millis(20);

/// The writer: the one owner of the write connection and of every local tree.
pub struct Writer {
    conn: Arc<Mutex<Connection>>,
    forest: Forest,
    roots: RootCache,
    config: StoreConfig,
    /// Current trees of sources appended to, so an append needs no root reload.
    builders: HashMap<SourceId, Builder>,
    /// Per source, bumped whenever its tree is replaced rather than extended (pack, import,
    /// installed pack): a pack ticket from an older epoch is stale.
    epochs: HashMap<SourceId, u64>,
    /// Per source with a cached builder: the tree its unpacked appends sit on (none = every
    /// event is in unpacked appends, e.g. a new source).
    bases: HashMap<SourceId, Base>,
    written_since_checkpoint: u64,
    /// Checkpoints the WAL on its own connection and thread, so commits never run one (file
    /// stores only; an in-memory store checkpoints inline).
    checkpointer: Option<Checkpointer>,
    /// Tree nodes from peers already validated by an import (content-addressed, so they stay
    /// valid): later imports of the same source validate only what is new. Bounded.
    validated: std::collections::HashSet<Cid>,
    /// Makes this the only writing process of the store file (`lock.rs`); dropped last.
    _lock: WriterLock,
}

/// Entries of `Writer::validated` before it is cleared.
const MAX_VALIDATED: usize = 200_000;

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

impl Writer {
    pub(crate) fn new(
        conn: Connection,
        lock: WriterLock,
        config: StoreConfig,
        cache: BranchCache<EventTree>,
        roots: RootCache,
    ) -> Result<Writer> {
        let checkpointer = Checkpointer::spawn(&conn, &config)?;
        let conn = Arc::new(Mutex::new(conn));
        let forest = Forest::new(SqliteReader::new(conn.clone()), cache);
        Ok(Writer {
            conn,
            forest,
            roots,
            config,
            builders: HashMap::new(),
            epochs: HashMap::new(),
            bases: HashMap::new(),
            written_since_checkpoint: 0,
            checkpointer,
            validated: Default::default(),
            _lock: lock,
        })
    }

    /// A reader over the writer's own connection (sees everything the writer committed).
    pub fn reader(&self) -> Reader {
        Reader {
            conn: self.conn.clone(),
            forest: self.forest.clone(),
            roots: self.roots.clone(),
            tree_config: self.config.tree.clone(),
        }
    }

    /// Appends `events` to `source`'s log: builds the new tree and, in one SQLite transaction,
    /// writes its blocks and moves the source's alias. On error nothing changed.
    pub fn append(&mut self, source: &SourceId, events: Vec<NewEvent>) -> Result<Appended> {
        self.append_inner(source, events, None)
    }

    /// [`Writer::append`] onto the packed tree of `pack` (background packing, step 3, in the
    /// same transaction as the append, so the append's new root is the packed one). When the
    /// pack no longer applies (see [`Writer::install_pack`]) or cannot be used, this is a plain
    /// append: a pack never makes an append fail. [`Appended::packed`] tells which.
    pub fn append_with_pack(
        &mut self,
        source: &SourceId,
        events: Vec<NewEvent>,
        pack: PreparedPack,
    ) -> Result<Appended> {
        self.append_inner(source, events, Some(pack))
    }

    fn append_inner(
        &mut self,
        source: &SourceId,
        events: Vec<NewEvent>,
        pack: Option<PreparedPack>,
    ) -> Result<Appended> {
        if events.is_empty() {
            return Err(Error::Invalid("append of an empty batch".into()));
        }
        let n = events.len() as u64;
        // Taken out of the cache: on any error it is dropped and reloaded from the alias.
        let mut builder = self.take_builder(source)?;
        let mut txn = StagedTxn::new(&self.forest);
        let mut replaced = false;
        if let Some(pack) = pack.filter(|p| p.ticket.source == *source) {
            match self.rebase(&builder, pack) {
                Ok(Some((rebased, blocks, base))) => {
                    builder = rebased;
                    self.bases.insert(source.clone(), base);
                    txn.stage(blocks)?;
                    replaced = true;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "background pack not installed"),
            }
        }
        let first = builder.count();
        txn.extend(&mut builder, to_entries(events))?;
        let packed = builder.level() > self.backstop_depth();
        if packed {
            // Backstop: keeps reads fast when no background packer keeps up (see
            // `pack_ticket`). This runs on the
            // publish path and recompresses every event appended since the last sealed leaf,
            // so it uses its own, moderate zstd level; leaves it seals keep that level.
            let root = root_of(&builder)?;
            let packed_root = txn.pack(self.config.tree.auto_pack(), &root)?;
            builder = txn.builder(self.config.tree.append(), &packed_root.unwrap_or(root))?;
        }
        let root = root_of(&builder)?;
        let new_blocks = txn.blocks()?;
        if let Err(e) = self.commit(
            &new_blocks,
            Some((&source.alias(), &root)),
            packed || replaced,
        ) {
            // The builder is dropped: the next append reloads it (and its base) from the alias.
            self.bases.remove(source);
            return Err(e);
        }
        if packed {
            self.bases.insert(
                source.clone(),
                Base {
                    root,
                    count: builder.count(),
                    level: builder.level(),
                },
            );
        }
        self.builders.insert(source.clone(), builder);
        if packed || replaced {
            self.bump_epoch(source);
        }
        Ok(Appended {
            root,
            first,
            last: first + n - 1,
            new_blocks,
            packed: packed || replaced,
        })
    }

    /// Stores blocks received from outside, each hash-verified (and dag-cbor checked) before
    /// it is written, all in one transaction. On error nothing was stored.
    pub fn put_blocks(&mut self, blocks: &[(Cid, Vec<u8>)]) -> Result<()> {
        self.commit_blocks(blocks, None, true, false)
    }

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
            },
            _ => PackKind::Full,
        };
        Some(PackTicket {
            source: source.clone(),
            base: cid::from_ipld(&builder.link()?).ok()?,
            count: builder.count(),
            epoch: self.epochs.get(source).copied().unwrap_or(0),
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
        self.builders.insert(source.clone(), builder);
        self.bases.insert(source.clone(), base);
        self.bump_epoch(&source);
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
    fn rebase(
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
            || self.epochs.get(&ticket.source).copied().unwrap_or(0) != ticket.epoch
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
    fn backstop_depth(&self) -> i32 {
        (self.config.tree.max_unpacked_depth as i32).saturating_mul(2)
    }

    fn bump_epoch(&mut self, source: &SourceId) {
        *self.epochs.entry(source.clone()).or_insert(0) += 1;
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

    /// Deletes at most `budget` unreachable blocks (see `gc.rs`).
    pub fn gc(&mut self, budget: usize) -> Result<GcStats> {
        let grace = self.config.gc_grace;
        let stats = gc::collect(&mut *lock(&self.conn)?, grace, budget)?;
        if stats.blocks_deleted > 0 {
            self.forget_validated();
            self.written_since_checkpoint += stats.bytes_freed;
            self.maybe_checkpoint()?;
        }
        Ok(stats)
    }

    /// Pins `cid` under `name` (e.g. a blob), or unpins with `None`. Names starting with
    /// `source/` are reserved for source trees.
    pub fn set_alias(&mut self, name: &str, cid: Option<&Cid>) -> Result<()> {
        if name.starts_with(SOURCE_ALIAS_PREFIX) {
            return Err(Error::Invalid(format!("alias {name}: reserved prefix")));
        }
        let conn = lock(&self.conn)?;
        blocks::alias_set(&conn, name, cid, now_secs(), true)
    }

    /// Stores a small value under `key` (durable like an append).
    pub fn meta_set(&mut self, key: &str, value: &[u8]) -> Result<()> {
        lock(&self.conn)?
            .prepare_cached(schema::META_SET)?
            .execute(params![key, value])?;
        Ok(())
    }

    /// Checkpoints the WAL into the database and truncates it (the file shrinks to what GC
    /// left). Call when idle, never on the commit path: it waits briefly for readers and for
    /// the checkpoint thread, then gives up (PASSIVE) rather than blocking.
    pub fn checkpoint(&mut self) -> Result<()> {
        let conn = lock(&self.conn)?;
        // TRUNCATE is busy while a reader is on an old snapshot, or while the checkpoint thread
        // runs its own checkpoint (SQLite allows one at a time): retry a few times.
        for _ in 0..TRUNCATE_TRIES {
            let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
            if busy == 0 {
                self.written_since_checkpoint = 0;
                return Ok(());
            }
            std::thread::sleep(TRUNCATE_RETRY);
        }
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        self.written_since_checkpoint = 0;
        Ok(())
    }

    /// `blob.rs` committed `bytes` of blob blocks on this connection outside `commit_blocks`:
    /// count them towards the next checkpoint like any other write.
    pub(crate) fn wrote(&mut self, bytes: u64) -> Result<()> {
        self.written_since_checkpoint += bytes;
        self.maybe_checkpoint()
    }

    /// Call between two bulk commits (blob batches): parks while the checkpoint thread restarts
    /// the WAL when enough was written since its last restart (`checkpoint.rs`), so the WAL
    /// stays bounded under back-to-back commits. A store without the thread checkpoints inline.
    pub(crate) fn restart_wal_if_due(&mut self) {
        if let Some(c) = &self.checkpointer {
            c.restart_if_due();
        }
    }

    /// Asks the background checkpointer for a checkpoint soon (e.g. after GC freed a lot), or
    /// checkpoints now on a store without one. Never waits for readers on the writer's thread.
    pub fn request_checkpoint(&mut self) -> Result<()> {
        match &self.checkpointer {
            Some(c) => {
                c.request();
                Ok(())
            }
            None => self.checkpoint(),
        }
    }

    fn maybe_checkpoint(&mut self) -> Result<()> {
        if let Some(c) = &self.checkpointer {
            // The checkpointer counts bytes itself; commits never checkpoint.
            c.written(std::mem::take(&mut self.written_since_checkpoint));
            return Ok(());
        }
        if self.written_since_checkpoint >= self.config.checkpoint_after_bytes {
            self.checkpoint()?;
        }
        Ok(())
    }

    fn take_builder(&mut self, source: &SourceId) -> Result<Builder> {
        if let Some(b) = self.builders.remove(source) {
            return Ok(b);
        }
        match alias_root(&self.conn, source)? {
            Some(root) => {
                let builder = load_builder(&self.forest, self.config.tree.append(), &root)?;
                // Unknown shape: treat the whole tree as the base, so the first ticket is a
                // full pack if it is deep.
                self.bases.insert(
                    source.clone(),
                    Base {
                        root,
                        count: builder.count(),
                        level: builder.level(),
                    },
                );
                Ok(builder)
            }
            None => {
                self.bases.remove(source);
                Ok(StreamBuilder::new(
                    self.config.tree.append(),
                    tree::secrets(),
                ))
            }
        }
    }

    /// Writes `blocks` we encoded ourselves and moves one alias, in one transaction; the old
    /// root is retired (kept for GC's grace period) unless the new tree still contains it.
    fn commit(
        &mut self,
        blocks: &[(Cid, Vec<u8>)],
        alias: Option<(&str, &Cid)>,
        retire: bool,
    ) -> Result<()> {
        self.commit_blocks(blocks, alias, false, retire)
    }

    /// Writes `blocks` (hash-verified first when `from_outside`) and moves one alias, in one
    /// transaction: all or nothing.
    fn commit_blocks(
        &mut self,
        blocks: &[(Cid, Vec<u8>)],
        alias: Option<(&str, &Cid)>,
        from_outside: bool,
        retire: bool,
    ) -> Result<()> {
        let now = now_secs();
        let mut bytes = 0u64;
        {
            let mut conn = lock(&self.conn)?;
            let tx = conn.transaction()?;
            for (cid, data) in blocks {
                if from_outside {
                    blocks::put_verified(&tx, cid, data, now)?;
                } else {
                    blocks::put_trusted(&tx, cid, data, now)?;
                }
                bytes += data.len() as u64;
            }
            if let Some((name, root)) = alias {
                blocks::alias_set(&tx, name, Some(root), now, retire)?;
            }
            tx.commit()?;
        }
        self.written_since_checkpoint += bytes;
        self.maybe_checkpoint()
    }
}

impl Reader {
    /// Background packing, step 2 (anywhere but the writer's thread): computes the packed
    /// form of the tree a [`PackTicket`] names, writing nothing (the new blocks are kept in
    /// memory, at most one leaf per tree level plus branches). CPU-heavy: it recompresses
    /// every event since the last sealed leaf, at the pack level.
    pub fn prepare_pack(&self, ticket: PackTicket) -> Result<PreparedPack> {
        let mut txn = StagedTxn::new(&self.forest);
        if let PackKind::Compact { root, count } = &ticket.kind {
            if ticket.count <= *count {
                let root = ticket.base;
                return Ok(PreparedPack {
                    ticket,
                    root,
                    blocks: Vec::new(),
                });
            }
            // The events after the base, read from the ticket's tree (small unpacked leaves),
            // appended to the base as one leaf.
            let mut merged = txn.builder(self.tree_config.append(), root)?;
            let tree = self.load_tree(&ticket.base)?;
            let query = EventQuery::new(*count..=ticket.count - 1, EventFilter::all());
            let mut entries: Vec<(Key, Value)> = Vec::new();
            for chunk in self.forest.iter_filtered_chunked(&tree, query, &|_| ()) {
                let chunk = chunk.map_err(Error::from_tree)?;
                entries.extend(chunk.data.into_iter().map(|(_, k, v)| (k, v)));
            }
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

/// A banyan transaction whose new blocks are staged in memory (and read back from there)
/// until [`StagedTxn::blocks`] hands them over, to be written with the alias move in one
/// SQLite transaction.
struct StagedTxn {
    staging: Staging,
    txn: banyan::Transaction<EventTree, SqliteReader, Stager>,
}

impl StagedTxn {
    fn new(forest: &Forest) -> Self {
        let staging = Staging::default();
        let txn =
            forest.transaction(|r| (r.with_staging(staging.clone()), Stager(staging.clone())));
        Self { staging, txn }
    }

    /// Stages `blocks` as if this transaction had written them.
    fn stage(&mut self, blocks: Blocks) -> Result<()> {
        let mut staged = self.staged()?;
        for (c, data) in blocks {
            staged.insert(cid::to_ipld(&c)?, data);
        }
        Ok(())
    }

    /// The tree at `root` (stored or staged), to extend or pack with `config`.
    fn builder(&self, config: banyan::Config, root: &Cid) -> Result<Builder> {
        load_builder(&self.txn, config, root)
    }

    /// Appends `entries` to `builder` as one unpacked leaf.
    fn extend(&mut self, builder: &mut Builder, entries: Vec<(Key, Value)>) -> Result<()> {
        self.txn
            .extend_unpacked(builder, entries)
            .map_err(Error::from_tree)
    }

    /// Packs the tree at `root` with `config` (loaded with it, so sealing is judged as when
    /// the tree was built): the new root, or `None` when it was packed already.
    fn pack(&mut self, config: banyan::Config, root: &Cid) -> Result<Option<Cid>> {
        let mut packer = self.builder(config, root)?;
        if self
            .txn
            .is_packed(&packer.snapshot())
            .map_err(Error::from_tree)?
        {
            return Ok(None);
        }
        self.txn.pack(&mut packer).map_err(Error::from_tree)?;
        root_of(&packer).map(Some)
    }

    /// The staged blocks, in write order.
    fn blocks(self) -> Result<Blocks> {
        Ok(self.staged()?.drain())
    }

    fn staged(&self) -> Result<std::sync::MutexGuard<'_, Staged>> {
        self.staging
            .lock()
            .map_err(|_| Error::Tree("staging poisoned".into()))
    }
}

fn load_builder(forest: &Forest, config: banyan::Config, root: &Cid) -> Result<Builder> {
    forest
        .load_stream_builder(tree::secrets(), config, cid::to_ipld(root)?)
        .map_err(Error::from_tree)
}

/// The root of a tree being built (never empty once events were added).
fn root_of(builder: &Builder) -> Result<Cid> {
    let root = builder
        .link()
        .ok_or_else(|| Error::Tree("the tree is empty".into()))?;
    cid::from_ipld(&root)
}

/// Runs `f` on a tree that came from a peer, turning a panic inside banyan (it asserts on some
/// malformed shapes) into a `Corrupt` error instead of taking the node down.
fn guarded<T>(root: Cid, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(Error::Corrupt {
            cid: root,
            reason: "malformed tree".into(),
        })
    })
}

/// Keys and values for banyan, with names and tags interned across the batch.
fn to_entries(events: Vec<NewEvent>) -> Vec<(Key, Value)> {
    let mut strings: HashMap<String, SharedStr> = HashMap::new();
    let mut intern = |s: String| -> SharedStr {
        if let Some(shared) = strings.get(&s) {
            return shared.clone();
        }
        let shared = SharedStr::from(s.as_str());
        strings.insert(s, shared.clone());
        shared
    };
    events
        .into_iter()
        .map(|e| {
            let key = Key {
                lamport: e.lamport,
                time: e.timestamp,
                semantics: intern(e.semantics),
                name: intern(e.name),
                tags: e.tags.into_iter().map(&mut intern).collect(),
            };
            (key, String::from(Box::<str>::from(e.payload)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use serde_json::value::RawValue;

    fn ev(i: u64) -> NewEvent {
        NewEvent {
            semantics: "sem".into(),
            name: format!("n{}", i % 3),
            tags: vec![],
            lamport: i,
            timestamp: i,
            payload: RawValue::from_string(format!("{{\"i\":{i}}}")).unwrap(),
        }
    }

    fn offsets_and_payloads(r: &Reader, source: &SourceId) -> Vec<(u64, String)> {
        r.events(source, 0..=u64::MAX, &EventFilter::all(), false)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.offset, e.payload.get().to_string())
            })
            .collect()
    }

    /// Without a background packer, `append` packs inline once the unpacked chain is twice
    /// `max_unpacked_depth` deep: the tree stays shallow and every event reads back in order.
    #[test]
    fn append_packs_inline_at_the_backstop_depth() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.sqlite"), StoreConfig::debug()).unwrap();
        let depth = store.config().tree.max_unpacked_depth as u64;
        let mut w = store.writer().unwrap();
        let r = store.reader().unwrap();
        let source = SourceId::new("inline");
        let mut inline_packs = 0;
        for i in 0..5 * depth {
            inline_packs += w.append(&source, vec![ev(i)]).unwrap().packed as u32;
        }
        assert!(inline_packs >= 2, "{inline_packs} inline packs");
        let want: Vec<(u64, String)> = (0..5 * depth)
            .map(|i| (i, format!("{{\"i\":{i}}}")))
            .collect();
        assert_eq!(offsets_and_payloads(&r, &source), want);
        let shape = r.tree_shape(&source).unwrap().unwrap();
        let top = shape.nodes.iter().map(|n| n.level).max().unwrap();
        assert!(top as u64 <= 2 * depth + 1, "level {top}");
        assert!(r.verify().unwrap().is_sound());
    }

    /// A pack computed on a reader while appends go on, installed by a later append: the events
    /// are all there in order, the packed prefix is full sealed leaves, and GC frees the blocks
    /// the pack replaced.
    #[test]
    fn background_pack_rebases_and_its_replaced_blocks_are_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.sqlite"), StoreConfig::debug()).unwrap();
        let max_leaf = store.config().tree.max_leaf_count as u64;
        let mut w = store.writer().unwrap();
        let r = store.reader().unwrap();
        let source = SourceId::new("bg");
        let mut n = 0u64;
        let mut ticket = None;
        while ticket.is_none() {
            // Four per append: full leaves before the chain is deep enough for a ticket.
            w.append(&source, (n..n + 4).map(ev).collect()).unwrap();
            n += 4;
            ticket = w.pack_ticket(&source);
        }
        let ticket = ticket.unwrap();
        let packed_count = n;
        let prepared = r.prepare_pack(ticket).unwrap();
        // Committed while the pack was computed: these must be appended again.
        for _ in 0..3 {
            w.append(&source, vec![ev(n)]).unwrap();
            n += 1;
        }
        let appended = w
            .append_with_pack(&source, vec![ev(n), ev(n + 1)], prepared)
            .unwrap();
        n += 2;
        assert!(appended.packed);
        assert_eq!((appended.first, appended.last), (n - 2, n - 1));
        assert!(w.pack_ticket(&source).is_none(), "the chain is short again");

        let want: Vec<(u64, String)> = (0..n).map(|i| (i, format!("{{\"i\":{i}}}"))).collect();
        assert_eq!(offsets_and_payloads(&r, &source), want);
        let shape = r.tree_shape(&source).unwrap().unwrap();
        let leaves: Vec<_> = shape.nodes.iter().filter(|n| n.level == 0).collect();
        let full = packed_count / max_leaf;
        assert!(full > 0, "the test needs at least one full leaf");
        for leaf in &leaves[..full as usize] {
            assert_eq!(leaf.count, max_leaf);
            assert!(leaf.sealed, "{leaf:?}");
        }
        // After the full leaves: the pack's last (partial) leaf, the rebased events, the append.
        assert!(leaves.len() as u64 <= full + 3, "{} leaves", leaves.len());

        // Grace is zero in the debug config: what the pack replaced is garbage at once.
        let mut freed = 0;
        loop {
            let stats = w.gc(1000).unwrap();
            freed += stats.blocks_deleted;
            if !stats.more {
                break;
            }
        }
        assert!(
            freed > 0,
            "the unpacked chain the pack replaced must be freed"
        );
        assert!(r.verify().unwrap().is_sound());
        assert_eq!(offsets_and_payloads(&r, &source), want);
    }

    #[test]
    fn install_pack_alone_and_stale_tickets() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.sqlite"), StoreConfig::debug()).unwrap();
        let mut w = store.writer().unwrap();
        let r = store.reader().unwrap();
        let source = SourceId::new("bg");
        let mut n = 0u64;
        let next_ticket = |w: &mut Writer, n: &mut u64| loop {
            w.append(&source, vec![ev(*n)]).unwrap();
            *n += 1;
            if let Some(t) = w.pack_ticket(&source) {
                return t;
            }
        };
        // Installed on its own, with a rebase of two events.
        let prepared = r.prepare_pack(next_ticket(&mut w, &mut n)).unwrap();
        w.append(&source, vec![ev(n), ev(n + 1)]).unwrap();
        n += 2;
        let packed = w.install_pack(prepared).unwrap().expect("installed");
        assert_eq!(r.alias(&source.alias()).unwrap(), packed.root);
        let want: Vec<(u64, String)> = (0..n).map(|i| (i, format!("{{\"i\":{i}}}"))).collect();
        assert_eq!(offsets_and_payloads(&r, &source), want);

        // The tree was replaced (an explicit pack) after the ticket: the ticket is stale.
        let prepared = r.prepare_pack(next_ticket(&mut w, &mut n)).unwrap();
        w.pack(&source).unwrap();
        let root = r.alias(&source.alias()).unwrap();
        assert!(w.install_pack(prepared).unwrap().is_none());
        let appended = w.append(&source, vec![ev(n)]).unwrap();
        n += 1;
        assert!(!appended.packed);
        assert_ne!(Some(appended.root), root);
        let want: Vec<(u64, String)> = (0..n).map(|i| (i, format!("{{\"i\":{i}}}"))).collect();
        assert_eq!(offsets_and_payloads(&r, &source), want);

        // A stale pack handed to an append: a plain append.
        let prepared = r.prepare_pack(next_ticket(&mut w, &mut n)).unwrap();
        w.pack(&source).unwrap();
        let appended = w.append_with_pack(&source, vec![ev(n)], prepared).unwrap();
        n += 1;
        assert!(!appended.packed);
        let want: Vec<(u64, String)> = (0..n).map(|i| (i, format!("{{\"i\":{i}}}"))).collect();
        assert_eq!(offsets_and_payloads(&r, &source), want);
    }

    /// The engine's protocol over many single-event appends: compactions, then a full pack
    /// once they stack up; the tree stays shallow, no append falls back to packing inline, every
    /// event reads back, and GC frees what the packs replaced.
    #[test]
    fn compactions_then_full_packs_keep_the_tree_shallow() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.sqlite"), StoreConfig::debug()).unwrap();
        let depth = store.config().tree.max_unpacked_depth;
        let mut w = store.writer().unwrap();
        let r = store.reader().unwrap();
        let source = SourceId::new("cp");
        let (mut compactions, mut full) = (0, 0);
        let mut pending: Option<PreparedPack> = None;
        let mut deepest = 0;
        for i in 0..600u64 {
            let appended = match pending.take() {
                Some(p) => {
                    let a = w.append_with_pack(&source, vec![ev(i)], p).unwrap();
                    assert!(a.packed, "a fresh ticket's pack is installed");
                    a
                }
                None => {
                    let a = w.append(&source, vec![ev(i)]).unwrap();
                    assert!(!a.packed, "append {i} packed inline");
                    a
                }
            };
            assert_eq!(appended.first, i);
            if let Some(ticket) = w.pack_ticket(&source) {
                match ticket.kind {
                    PackKind::Full => full += 1,
                    PackKind::Compact { .. } => compactions += 1,
                }
                pending = Some(r.prepare_pack(ticket).unwrap());
            }
            deepest = deepest.max(w.builders[&source].level());
        }
        assert!(
            compactions > 0 && full > 1,
            "{compactions} compactions, {full} full"
        );
        assert!(deepest <= depth as i32 + 2, "depth {deepest}");
        let want: Vec<(u64, String)> = (0..600).map(|i| (i, format!("{{\"i\":{i}}}"))).collect();
        assert_eq!(offsets_and_payloads(&r, &source), want);
        let mut freed = 0;
        loop {
            let stats = w.gc(1000).unwrap();
            freed += stats.blocks_deleted;
            if !stats.more {
                break;
            }
        }
        assert!(freed > 0);
        assert!(r.verify().unwrap().is_sound());
        assert_eq!(offsets_and_payloads(&r, &source), want);
    }

    /// Commits never checkpoint (`wal_autocheckpoint=0`); the checkpoint thread copies the WAL
    /// into the database file.
    #[test]
    fn the_checkpoint_thread_checkpoints_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let store = Store::open(&path, StoreConfig::debug()).unwrap();
        let mut w = store.writer().unwrap();
        let auto: i64 = lock(&w.conn)
            .unwrap()
            .pragma_query_value(None, "wal_autocheckpoint", |r| r.get(0))
            .unwrap();
        assert_eq!(auto, 0);
        let source = SourceId::new("ck");
        let mut written = 0u64;
        // ~6 MB of hex payloads, ~3 MB compressed: the checkpointer wakes by time, not size.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for batch in 0..60u64 {
            let events = (0..100)
                .map(|i| {
                    let mut hex = String::with_capacity(1000);
                    for _ in 0..63 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        hex.push_str(&format!("{x:016x}"));
                    }
                    let mut e = ev(batch * 100 + i);
                    e.payload = RawValue::from_string(format!("\"{hex}\"")).unwrap();
                    e
                })
                .collect();
            let appended = w.append(&source, events).unwrap();
            written += appended
                .new_blocks
                .iter()
                .map(|(_, b)| b.len() as u64)
                .sum::<u64>();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let db_now = std::fs::metadata(&path).unwrap().len();
            // Nothing is freed (no GC): every block written ends up in the database file.
            if db_now >= written {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not checkpointed: db file {db_now} bytes, {written} bytes of blocks written"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
