//! Reading event logs: the [`Reader`] (sources, streaming and filtered event reads, blocks by
//! CID, missing blocks) and its [`EventIter`].
//!
//! A reader has its own read-only SQLite connection (clones share it) and never holds a read
//! transaction across blocks: each block fetch is its own short statement, so checkpoints
//! always make progress and the WAL stays bounded. The price: a query walking a root that has
//! since been replaced relies on GC's grace period (retired roots stay alive for `gc_grace`)
//! for its blocks to stay present.
//!
//! Invariant: an [`EventIter`] holds at most one leaf's matching events in memory, and yields
//! exactly the events of its tree in the offset range that match the filter, in offset order
//! (descending with `reverse`).

use crate::{
    blocks,
    cid::{self, Cid},
    error::{Error, Result},
    event::{Event, EventFilter, SourceId},
    gc::{self, GcMark, GcStart},
    log::{Forest, SOURCE_ALIAS_PREFIX},
    offset::OffsetMap,
    schema,
    store::StoreConfig,
    tree::{self, EventQuery, EventTree, Key, SqliteReader, TreeConfig, Value},
};
use banyan::{index::NodeInfo, store::BranchCache, FilteredChunk, Tree};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::value::RawValue;
use std::{
    ops::RangeInclusive,
    sync::{Arc, Mutex},
};

/// One source as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInfo {
    pub source: SourceId,
    pub root: Cid,
    /// Number of events (highest offset + 1).
    pub count: u64,
    /// Highest offset.
    pub last_offset: u64,
    /// Bytes of the tree as banyan accounts them (compressed leaves + branch nodes).
    pub bytes: u64,
}

pub(crate) fn lock(conn: &Mutex<Connection>) -> Result<std::sync::MutexGuard<'_, Connection>> {
    conn.lock()
        .map_err(|_| Error::Tree("connection lock poisoned".into()))
}

pub(crate) fn alias_root(conn: &Mutex<Connection>, source: &SourceId) -> Result<Option<Cid>> {
    blocks::alias_get(&*lock(conn)?, &source.alias())
}

/// Recently loaded trees by root. Loading a tree decodes its root node, which for a packed
/// tree holds the keys or summaries of many children (up to a few hundred KB): every query
/// would pay that again. Shared by all readers and the writer of a store; content-addressed,
/// so entries never go stale.
#[derive(Clone, Default)]
pub(crate) struct RootCache(Arc<Mutex<std::collections::VecDeque<(Cid, EventTreeRef)>>>);

type EventTreeRef = Tree<EventTree, Value>;

/// Roots kept: a few per source that is being read while it grows.
const ROOT_CACHE_ENTRIES: usize = 64;

pub(crate) fn load_tree(
    forest: &Forest,
    roots: &RootCache,
    root: &Cid,
) -> Result<Tree<EventTree, Value>> {
    if let Ok(mut cache) = roots.0.lock() {
        if let Some(pos) = cache.iter().position(|(c, _)| c == root) {
            // Move to the front: least recently used entries fall off the back.
            if let Some(entry) = cache.remove(pos) {
                let tree = entry.1.clone();
                cache.push_front(entry);
                return Ok(tree);
            }
        }
    }
    let tree = forest
        .load_tree(tree::secrets(), cid::to_ipld(root)?)
        .map_err(Error::from_tree)?;
    if let Ok(mut cache) = roots.0.lock() {
        cache.push_front((*root, tree.clone()));
        cache.truncate(ROOT_CACHE_ENTRIES);
    }
    Ok(tree)
}

pub(crate) fn info_of(
    source: &SourceId,
    root: Cid,
    tree: &Tree<EventTree, Value>,
) -> Option<SourceInfo> {
    let index = tree.index()?;
    let count = index.count();
    Some(SourceInfo {
        source: source.clone(),
        root,
        count,
        last_offset: count.checked_sub(1)?,
        bytes: index.value_bytes() + index.key_bytes(),
    })
}

/// A read handle: its own read-only connection (shared by clones).
#[derive(Clone)]
pub struct Reader {
    pub(crate) conn: Arc<Mutex<Connection>>,
    pub(crate) forest: Forest,
    pub(crate) roots: RootCache,
    pub(crate) tree_config: TreeConfig,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader").finish_non_exhaustive()
    }
}

fn no_extra(_: &NodeInfo<EventTree, SqliteReader>) {}

impl Reader {
    pub(crate) fn new(
        conn: Connection,
        config: StoreConfig,
        cache: BranchCache<EventTree>,
        roots: RootCache,
    ) -> Self {
        let conn = Arc::new(Mutex::new(conn));
        let forest = Forest::new(SqliteReader::new(conn.clone()), cache);
        Reader {
            conn,
            forest,
            roots,
            tree_config: config.tree,
        }
    }

    pub(crate) fn lock(&self) -> Result<std::sync::MutexGuard<'_, Connection>> {
        lock(&self.conn)
    }

    /// Every source with a tree, ordered by source id.
    pub fn sources(&self) -> Result<Vec<SourceInfo>> {
        let aliases = blocks::aliases_with_prefix(&*lock(&self.conn)?, SOURCE_ALIAS_PREFIX)?;
        let mut out = Vec::with_capacity(aliases.len());
        for (name, root) in aliases {
            let source = SourceId::new(&name[SOURCE_ALIAS_PREFIX.len()..]);
            let tree = load_tree(&self.forest, &self.roots, &root)?;
            out.extend(info_of(&source, root, &tree));
        }
        Ok(out)
    }

    /// One source, if the store has a tree for it.
    pub fn source(&self, source: &SourceId) -> Result<Option<SourceInfo>> {
        let Some(root) = alias_root(&self.conn, source)? else {
            return Ok(None);
        };
        let tree = load_tree(&self.forest, &self.roots, &root)?;
        Ok(info_of(source, root, &tree))
    }

    /// Highest offset of every source.
    pub fn offsets(&self) -> Result<OffsetMap> {
        Ok(self
            .sources()?
            .into_iter()
            .map(|i| (i.source, i.last_offset))
            .collect())
    }

    /// Streams the events of `source` in `range` (inclusive offsets; clamped to what exists)
    /// that match `filter`, in ascending offset order or descending with `reverse`. Memory is
    /// bounded by one leaf. The tree is the one current when this is called.
    pub fn events(
        &self,
        source: &SourceId,
        range: RangeInclusive<u64>,
        filter: &EventFilter,
        reverse: bool,
    ) -> Result<EventIter> {
        let Some(root) = alias_root(&self.conn, source)? else {
            return Ok(EventIter::empty());
        };
        let tree = load_tree(&self.forest, &self.roots, &root)?;
        self.events_of_tree(source, root, tree, range, filter, reverse)
    }

    /// Like [`Reader::events`] but over the tree at `root` (not necessarily the current one).
    pub fn events_at(
        &self,
        source: &SourceId,
        root: &Cid,
        range: RangeInclusive<u64>,
        filter: &EventFilter,
        reverse: bool,
    ) -> Result<EventIter> {
        let tree = load_tree(&self.forest, &self.roots, root)?;
        self.events_of_tree(source, *root, tree, range, filter, reverse)
    }

    pub(crate) fn events_of_tree(
        &self,
        source: &SourceId,
        root: Cid,
        tree: Tree<EventTree, Value>,
        range: RangeInclusive<u64>,
        filter: &EventFilter,
        reverse: bool,
    ) -> Result<EventIter> {
        let count = tree.count();
        if count == 0 || filter.is_empty() || range.is_empty() || *range.start() >= count {
            return Ok(EventIter::empty());
        }
        let (lo, hi) = (*range.start(), (*range.end()).min(count - 1));
        let query = EventQuery::new(lo..=hi, filter.clone());
        let chunks: ChunkIter = if reverse {
            Box::new(
                self.forest
                    .iter_filtered_chunked_reverse(&tree, query, &no_extra),
            )
        } else {
            Box::new(self.forest.iter_filtered_chunked(&tree, query, &no_extra))
        };
        Ok(EventIter {
            chunks: Some(chunks),
            buf: Vec::new().into_iter(),
            reverse,
            source: source.clone(),
            root,
            lo,
            hi,
            skipped: 0,
        })
    }

    /// The bytes of a block, if present.
    pub fn get_block(&self, cid: &Cid) -> Result<Option<Vec<u8>>> {
        // The connection is held for the row only, not while a file is read: clones of one
        // reader read several chunk files at once (a blob read keeps some in flight).
        let found = blocks::locate(&*lock(&self.conn)?, cid)?;
        match found {
            Some(found) => found.read(cid),
            None => Ok(None),
        }
    }

    /// The bytes of a block like [`Reader::get_block`], for streaming them out: a block file is
    /// read with `O_DIRECT` unless the page cache holds it (`files.rs`), with no copy on the
    /// way. Reads through clones of one reader overlap (the connection is held for the row only).
    pub fn get_chunk(&self, cid: &Cid) -> Result<Option<bytes::Bytes>> {
        let found = blocks::locate(&*lock(&self.conn)?, cid)?;
        match found {
            Some(blocks::Located::Inline(data)) => Ok(Some(data.into())),
            Some(blocks::Located::File(dir, size)) => dir.read_bytes(cid, size),
            None => Ok(None),
        }
    }

    /// Every block of the DAG under `root` (root included), in no particular order (for
    /// exports such as `shoal events dump`). `None` when a block
    /// is absent (the DAG is incomplete here).
    pub fn dag_blocks(&self, root: &Cid) -> Result<Option<Vec<Cid>>> {
        let reached = blocks::reachable(&*lock(&self.conn)?, root)?;
        if reached.iter().any(|r| !r.present) {
            return Ok(None);
        }
        Ok(Some(reached.into_iter().map(|r| r.cid).collect()))
    }

    /// Is the block present?
    pub fn has_block(&self, cid: &Cid) -> Result<bool> {
        blocks::has(&*lock(&self.conn)?, cid)
    }

    /// CIDs of the DAG under `root` (root included) that are absent. Empty = complete. Links
    /// below an absent block are unknown until it arrives: ask again after fetching.
    pub fn missing_blocks(&self, root: &Cid) -> Result<Vec<Cid>> {
        blocks::missing(&*lock(&self.conn)?, root)
    }

    /// Aliases whose DAG is incomplete, with the absent CIDs found so far (links below an
    /// absent block are unknown). Cheap (SQL over `refs`, no block is read): meant for the
    /// startup check; `verify` also checks every block's hash.
    pub fn incomplete_aliases(&self) -> Result<Vec<(String, Vec<Cid>)>> {
        let conn = self.lock()?;
        let mut out = Vec::new();
        for (name, root) in blocks::all_aliases(&conn)? {
            let missing = blocks::missing(&conn, &root)?;
            if !missing.is_empty() {
                out.push((name, missing));
            }
        }
        Ok(out)
    }

    /// The CID pinned under an alias name.
    pub fn alias(&self, name: &str) -> Result<Option<Cid>> {
        blocks::alias_get(&*lock(&self.conn)?, name)
    }

    /// A value stored with [`Writer::meta_set`].
    pub fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(lock(&self.conn)?
            .prepare_cached(schema::META_GET)?
            .query_row(params![key], |r| r.get(0))
            .optional()?)
    }

    /// Finds up to `limit` garbage candidates for [`crate::Writer::gc_sweep`], from one
    /// snapshot (see `gc.rs`). `start` must come from [`crate::Writer::gc_start`], called
    /// before this.
    pub fn gc_mark(&self, start: GcStart, limit: usize) -> Result<GcMark> {
        gc::mark(&mut *lock(&self.conn)?, start, limit)
    }

    pub(crate) fn load_tree(&self, root: &Cid) -> Result<Tree<EventTree, Value>> {
        load_tree(&self.forest, &self.roots, root)
    }
}

type ChunkIter =
    Box<dyn Iterator<Item = anyhow::Result<FilteredChunk<(u64, Key, Value), ()>>> + Send>;

/// Streaming iterator of events; holds at most one leaf's matches in memory.
pub struct EventIter {
    chunks: Option<ChunkIter>,
    buf: std::vec::IntoIter<(u64, Key, Value)>,
    reverse: bool,
    source: SourceId,
    root: Cid,
    lo: u64,
    hi: u64,
    /// Offsets of the range passed in chunks without events (see [`EventIter::skipped`]).
    skipped: u64,
}

impl std::fmt::Debug for EventIter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventIter")
            .field("source", &self.source)
            .field("range", &(self.lo..=self.hi))
            .field("reverse", &self.reverse)
            .finish()
    }
}

impl EventIter {
    fn empty() -> Self {
        EventIter {
            chunks: None,
            buf: Vec::new().into_iter(),
            reverse: false,
            source: SourceId::new(""),
            root: cid::cid_of(cid::RAW, b""),
            lo: 0,
            hi: 0,
            skipped: 0,
        }
    }

    /// Offsets of the range walked so far that yielded no event: with [`EventFilter::all`],
    /// the events pruned by retention (their leaves are gone, their keys or summaries stay).
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    fn to_event(&self, (offset, key, value): (u64, Key, Value)) -> Result<Event> {
        let payload = RawValue::from_string(value).map_err(|e| Error::Corrupt {
            cid: self.root,
            reason: format!("payload of event {offset} is not JSON: {e}"),
        })?;
        Ok(Event {
            source: self.source.clone(),
            offset,
            lamport: key.lamport,
            timestamp: key.time,
            semantics: key.semantics.to_string(),
            name: key.name.to_string(),
            tags: key.tags.iter().map(|t| t.to_string()).collect(),
            payload,
        })
    }
}

impl Iterator for EventIter {
    type Item = Result<Event>;

    fn next(&mut self) -> Option<Result<Event>> {
        loop {
            let item = if self.reverse {
                self.buf.next_back()
            } else {
                self.buf.next()
            };
            if let Some(item) = item {
                return Some(self.to_event(item));
            }
            let chunk = match self.chunks.as_mut()?.next() {
                None => {
                    self.chunks = None;
                    return None;
                }
                Some(Err(e)) => {
                    self.chunks = None;
                    return Some(Err(Error::from_tree(e)));
                }
                Some(Ok(chunk)) => chunk,
            };
            // Past the requested range: stop instead of walking the rest of the tree.
            let past = if self.reverse {
                chunk.range.end <= self.lo
            } else {
                chunk.range.start > self.hi
            };
            if past && chunk.data.is_empty() {
                self.chunks = None;
                return None;
            }
            if chunk.data.is_empty() {
                let (lo, hi) = (
                    chunk.range.start.max(self.lo),
                    chunk.range.end.min(self.hi + 1),
                );
                self.skipped += hi.saturating_sub(lo);
            }
            self.buf = chunk.data.into_iter();
        }
    }
}
