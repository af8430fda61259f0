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

use crate::read::{alias_root, load_tree, lock, RootCache};
use crate::{
    blocks,
    cid::{self, Cid, DAG_CBOR},
    error::{Error, Result},
    event::{EventFilter, NewEvent, SharedStr, SourceId},
    gc::{self, GcStats},
    schema::{self, now_secs},
    store::StoreConfig,
    tree::{self, EventTree, Key, SqliteReader, Stager, Staging, Value},
};
// Re-exported because `blob.rs` names the reader through this module.
pub(crate) use crate::read::Reader;
use banyan::{store::BranchCache, StreamBuilder};
use rusqlite::{params, Connection};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

/// Alias name prefix of source trees.
pub(crate) const SOURCE_ALIAS_PREFIX: &str = "source/";

pub(crate) type Forest = banyan::Forest<EventTree, SqliteReader>;
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
}

/// Result of an import: the offsets that became available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    pub first: u64,
    pub last: u64,
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

/// The writer: the one owner of the write connection and of every local tree.
pub struct Writer {
    conn: Arc<Mutex<Connection>>,
    forest: Forest,
    roots: RootCache,
    config: StoreConfig,
    /// Current trees of sources appended to, so an append needs no root reload.
    builders: HashMap<SourceId, Builder>,
    written_since_checkpoint: u64,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

impl Writer {
    pub(crate) fn new(
        conn: Connection,
        config: StoreConfig,
        cache: BranchCache<EventTree>,
        roots: RootCache,
    ) -> Result<Writer> {
        let conn = Arc::new(Mutex::new(conn));
        let forest = Forest::new(SqliteReader::new(conn.clone()), cache);
        Ok(Writer {
            conn,
            forest,
            roots,
            config,
            builders: HashMap::new(),
            written_since_checkpoint: 0,
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
        if events.is_empty() {
            return Err(Error::Invalid("append of an empty batch".into()));
        }
        let n = events.len() as u64;
        // Taken out of the cache: on any error it is dropped and reloaded from the alias.
        let mut builder = self.take_builder(source)?;
        let first = builder.count();
        let staging = Staging::default();
        let mut txn = self
            .forest
            .transaction(|r| (r.with_staging(staging.clone()), Stager(staging.clone())));
        txn.extend_unpacked(&mut builder, to_entries(events))
            .map_err(Error::from_tree)?;
        let packed = builder.level() > self.config.tree.max_unpacked_depth as i32;
        if packed {
            // Keep reads fast without relying on the background packer. This runs on the
            // publish path and recompresses every event appended since the last sealed leaf,
            // so it uses its own, moderate zstd level; leaves it seals keep that level.
            let root = builder
                .link()
                .ok_or_else(|| Error::Tree("empty tree".into()))?;
            let mut packer: Builder = txn
                .load_stream_builder(tree::secrets(), self.config.tree.auto_pack(), root)
                .map_err(Error::from_tree)?;
            txn.pack(&mut packer).map_err(Error::from_tree)?;
            let root = packer
                .link()
                .ok_or_else(|| Error::Tree("empty tree".into()))?;
            builder = txn
                .load_stream_builder(tree::secrets(), self.config.tree.append(), root)
                .map_err(Error::from_tree)?;
        }
        let root = builder
            .link()
            .ok_or_else(|| Error::Tree("append produced an empty tree".into()))?;
        let root = cid::from_ipld(&root)?;
        let new_blocks = drain(&staging)?;
        self.commit(&new_blocks, Some((&source.alias(), &root)), packed)?;
        self.builders.insert(source.clone(), builder);
        Ok(Appended {
            root,
            first,
            last: first + n - 1,
            new_blocks,
        })
    }

    /// Stores blocks received from outside, each hash-verified (and dag-cbor checked) before
    /// it is written, all in one transaction. On error nothing was stored.
    pub fn put_blocks(&mut self, blocks: &[(Cid, Vec<u8>)]) -> Result<()> {
        self.commit_blocks(blocks, None, true, false)
    }

    /// Makes `root` the tree of `source` (replication). All its blocks must be present. The new
    /// tree must extend the current one (see the module doc). Moves the alias atomically.
    pub fn import(&mut self, source: &SourceId, root: Cid) -> Result<Imported> {
        let not_extending = |reason: String| Error::NotExtending {
            source_id: source.to_string(),
            root: Box::new(root),
            reason,
        };
        if root.codec() != DAG_CBOR {
            return Err(not_extending("a tree root is a dag-cbor block".into()));
        }
        let missing = self.reader().missing_blocks(&root)?;
        if let Some(first) = missing.first() {
            return Err(Error::MissingBlock(*first));
        }
        let current = alias_root(&self.conn, source)?;
        if current == Some(root) {
            return Err(not_extending("it is the current tree".into()));
        }
        // Validate the blocks this import adds before banyan walks them: banyan trusts its
        // input (it asserts and allocates what headers claim), a peer's bytes are not trusted.
        self.validate_new_blocks(&root, current.as_ref())?;
        let forest = self.forest.clone();
        let roots = self.roots.clone();
        let new = guarded(root, || load_tree(&forest, &roots, &root))?;
        let new_count = new.count();
        let old_count = match current {
            None => 0,
            Some(current) => {
                let old = load_tree(&self.forest, &self.roots, &current)?;
                let old_count = old.count();
                if new_count <= old_count {
                    return Err(not_extending(format!(
                        "it holds {new_count} events, the current tree {old_count}"
                    )));
                }
                if old_count > 0 {
                    let at = old_count - 1;
                    let ours = self.forest.get(&old, at).map_err(Error::from_tree)?;
                    let theirs = guarded(root, || forest.get(&new, at).map_err(Error::from_tree))?;
                    if ours.is_none() || ours != theirs {
                        return Err(not_extending(format!("event {at} differs")));
                    }
                }
                old_count
            }
        };
        if new_count == 0 {
            return Err(not_extending("it is empty".into()));
        }
        // Decode every new event once, so a malformed tree never becomes a source's tree.
        let reader = self.reader();
        let decoded = guarded(root, || {
            let mut n = 0u64;
            for event in reader.events_of_tree(
                source,
                root,
                new.clone(),
                old_count..=new_count - 1,
                &EventFilter::all(),
                false,
            )? {
                event?;
                n += 1;
            }
            Ok(n)
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
        self.commit(&[], Some((&source.alias(), &root)), true)?;
        self.builders.remove(source);
        Ok(Imported {
            first: old_count,
            last: new_count - 1,
        })
    }

    /// Checks every block reachable from `root` but not from `current` opens as a tree node.
    fn validate_new_blocks(&self, root: &Cid, current: Option<&Cid>) -> Result<()> {
        let conn = lock(&self.conn)?;
        let old: std::collections::HashSet<Cid> = match current {
            Some(c) => blocks::reachable(&conn, c)?
                .into_iter()
                .map(|r| r.cid)
                .collect(),
            None => Default::default(),
        };
        for r in blocks::reachable(&conn, root)? {
            if old.contains(&r.cid) {
                continue;
            }
            if r.cid.codec() != DAG_CBOR {
                return Err(Error::Corrupt {
                    cid: r.cid,
                    reason: "a tree links only dag-cbor nodes".into(),
                });
            }
            let data = blocks::get(&conn, &r.cid)?.ok_or(Error::MissingBlock(r.cid))?;
            tree::node::validate(&data).map_err(|reason| Error::Corrupt { cid: r.cid, reason })?;
        }
        Ok(())
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
        let staging = Staging::default();
        let mut txn = self
            .forest
            .transaction(|r| (r.with_staging(staging.clone()), Stager(staging.clone())));
        // Loaded with the real config so sealing is judged as when the tree was built.
        let mut packer: Builder = txn
            .load_stream_builder(
                tree::secrets(),
                self.config.tree.pack(),
                cid::to_ipld(&root)?,
            )
            .map_err(Error::from_tree)?;
        if self
            .forest
            .is_packed(&packer.snapshot())
            .map_err(Error::from_tree)?
        {
            return Ok(Packed {
                root: Some(root),
                changed: false,
                blocks_written: 0,
            });
        }
        txn.pack(&mut packer).map_err(Error::from_tree)?;
        let new_root = packer
            .link()
            .ok_or_else(|| Error::Tree("pack produced an empty tree".into()))?;
        let new_root = cid::from_ipld(&new_root)?;
        let blocks = drain(&staging)?;
        self.commit(&blocks, Some((&source.alias(), &new_root)), true)?;
        self.builders.remove(source);
        Ok(Packed {
            root: Some(new_root),
            changed: new_root != root,
            blocks_written: blocks.len(),
        })
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

    /// Checkpoints the WAL into the database and truncates it. Call periodically (e.g. when
    /// idle): it waits for readers briefly and gives up (PASSIVE) rather than blocking.
    pub fn checkpoint(&mut self) -> Result<()> {
        let conn = lock(&self.conn)?;
        // TRUNCATE needs no reader on an old snapshot; fall back to PASSIVE when busy.
        let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        if busy != 0 {
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        }
        self.written_since_checkpoint = 0;
        Ok(())
    }

    /// `blob.rs` committed `bytes` of blob blocks on this connection outside `commit_blocks`:
    /// count them towards the next checkpoint like any other write.
    pub(crate) fn wrote(&mut self, bytes: u64) -> Result<()> {
        self.written_since_checkpoint += bytes;
        self.maybe_checkpoint()
    }

    fn maybe_checkpoint(&mut self) -> Result<()> {
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
            Some(root) => self
                .forest
                .load_stream_builder(
                    tree::secrets(),
                    self.config.tree.append(),
                    cid::to_ipld(&root)?,
                )
                .map_err(Error::from_tree),
            None => Ok(StreamBuilder::new(
                self.config.tree.append(),
                tree::secrets(),
            )),
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

fn drain(staging: &Staging) -> Result<Vec<(Cid, Vec<u8>)>> {
    Ok(staging
        .lock()
        .map_err(|_| Error::Tree("staging poisoned".into()))?
        .drain())
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
