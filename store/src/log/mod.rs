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
//! current one or equal it (the source pruned its tree, `prune.rs`), and its event at the
//! current last offset must equal ours (key and payload) where both trees still hold it;
//! every new event is decoded once before the alias moves, and every block the import adds is
//! validated (`tree::node`) before banyan walks it. Comparing the whole old prefix would cost
//! O(log size) per import; one event costs O(tree depth), and the signed head (engine) vouches
//! for the rest.
//!
//! Files: this one (the writer: appends, block puts, GC, checkpoints, the commit), `import.rs`
//! (replicated trees), `pack.rs` (inline and background packing), `prune.rs` (retention),
//! `staged.rs` (banyan transactions staged in memory), `tests.rs`.

use crate::read::{alias_root, lock, RootCache};
use crate::{
    blocks,
    cid::{self, Cid},
    error::{Error, Result},
    event::{Event, EventFilter, NewEvent, SharedStr, SourceId},
    gc::{self, GcMark, GcStart, GcStats},
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
mod pack;
mod prune;
mod staged;

use pack::{Base, Tail};
pub use pack::{PackTicket, Packed, PreparedPack};
pub use prune::{Pruned, RetentionRule};
use staged::{guarded, load_builder, root_of, to_entries, StagedTxn};

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
    /// Lamport of the last imported event (checked: lamports strictly increase along a
    /// source and stay at most [`crate::MAX_LAMPORT`]).
    pub last_lamport: u64,
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
    /// Per source, the events appended since its base, while they are few (`pack::Tail`): a
    /// compaction ticket carries them, so the packer need not read them back.
    tails: HashMap<SourceId, Tail>,
    written_since_checkpoint: u64,
    /// Checkpoints the WAL on its own connection and thread, so commits never run one (file
    /// stores only; an in-memory store checkpoints inline).
    checkpointer: Option<Checkpointer>,
    /// Tree nodes from peers already validated by an import (content-addressed, so they stay
    /// valid): later imports of the same source validate only what is new. Bounded.
    validated: std::collections::HashSet<Cid>,
    /// Blocks the caller already opened as tree nodes ([`Writer::note_checked`]): an import
    /// takes each as a valid node once, without opening it again. Bounded.
    checked: std::collections::HashSet<Cid>,
    /// The block directory the next GC call sweeps for files without a row (`files.rs`).
    sweep_shard: u8,
    /// Of the database file, for [`crate::checkpoint::wal_bytes_written`].
    page_size: u64,
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
        let page_size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
        // Writes a previous process left half done (only this process writes block files now).
        if let Some(files) = crate::files::BlockFiles::of(&conn) {
            files.clear_tmp();
        }
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
            tails: HashMap::new(),
            written_since_checkpoint: 0,
            checkpointer,
            validated: Default::default(),
            checked: Default::default(),
            sweep_shard: 0,
            page_size: page_size.max(512) as u64,
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
        let epoch_before = self.epoch(source);
        let entries = to_entries(events);
        let kept = self.tail_room(source, &entries).then(|| entries.clone());
        txn.extend(&mut builder, entries)?;
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
        self.advance_tail(source, epoch_before, first, kept);
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

    /// Deletes at most `budget` unreachable blocks in one go: mark, sweep and vacuum on this
    /// connection (see `gc.rs`). For tools and tests; the node marks on a reader
    /// ([`Self::gc_start`], [`Reader::gc_mark`], [`Self::gc_sweep`], [`Self::gc_vacuum`]).
    pub fn gc(&mut self, budget: usize) -> Result<GcStats> {
        let start = GcStart::exact(self.config.gc_grace);
        let mut mark = gc::mark(&mut *lock(&self.conn)?, start, budget)?;
        self.gc_sweep(&mut mark, usize::MAX)?;
        if mark.freed().blocks_deleted > 0 {
            self.gc_vacuum(gc::VACUUM_PAGES_PER_CALL)?;
        }
        Ok(mark.freed().clone())
    }

    /// Starts a GC round: what the mark's snapshot, taken after this returns, compares with
    /// (see `gc.rs`).
    pub fn gc_start(&self) -> GcStart {
        GcStart::concurrent(self.config.gc_grace)
    }

    /// Deletes up to `budget` candidates of `mark` in one transaction (see `gc.rs`); returns
    /// what this step freed. Call at least once per mark, also an empty one: the first step
    /// expires retired roots, the last sweeps a block directory for files without a row.
    pub fn gc_sweep(&mut self, mark: &mut GcMark, budget: usize) -> Result<GcStats> {
        let grace = self.config.gc_grace;
        let shard = self.sweep_shard;
        let stats = gc::sweep(&mut *lock(&self.conn)?, mark, budget, shard, grace)?;
        if mark.is_swept() {
            self.sweep_shard = shard.wrapping_add(1);
        }
        if stats.blocks_deleted > 0 {
            self.forget_validated();
            self.written_since_checkpoint += stats.bytes_freed;
            self.maybe_checkpoint()?;
        }
        Ok(stats)
    }

    /// Hands up to `pages` free pages of the database file back to the filesystem; returns
    /// whether another call would hand back more.
    pub fn gc_vacuum(&mut self, pages: u32) -> Result<bool> {
        gc::vacuum(&*lock(&self.conn)?, pages)
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

    /// Call between two commits (blob batches, the node's writer between commands): parks while
    /// the checkpoint thread restarts the WAL when enough was written since its last restart
    /// (`checkpoint.rs`), so the WAL stays bounded under back-to-back commits. A store without
    /// the thread checkpoints inline.
    pub fn restart_wal_if_due(&mut self) {
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
            // The checkpointer counts bytes itself; commits never checkpoint. What the WAL
            // grew by is SQLite's count of pages written: a single-event append writes a few
            // hundred bytes of blocks but tens of KiB of pages (tree nodes, indexes); blob
            // chunks kept as files count by their bytes.
            let blocks = std::mem::take(&mut self.written_since_checkpoint);
            let wal = crate::checkpoint::wal_bytes_written(&*lock(&self.conn)?, self.page_size);
            c.written(blocks.max(wal));
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

#[cfg(test)]
mod tests;
