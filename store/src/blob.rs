//! Blobs in the block store: fixed-size chunks under a tree of dag-cbor link blocks.
//!
//! Owns the blob format (chunking, link blocks, the tree's geometry), the blob tables
//! (`blob_meta`: size, name, content type per known blob) and the blob side of pins and deletion.
//! It knows nothing of HTTP or peers: the engine feeds it bytes and fetched blocks.
//!
//! # Format (also in `docs/format.md` terms)
//!
//! - A *chunk* is a raw block (CIDv1, raw, SHA-256) of exactly [`CHUNK_SIZE`] bytes, except the
//!   last chunk of a blob, which is shorter (never empty).
//! - A *link block* is dag-cbor `{"c": chunk size, "h": height ≥ 1, "l": [links], "s": bytes
//!   below}`. Height 1 links chunks; height `h` links link blocks of height `h − 1`. At most
//!   [`FANOUT`] links. Every child except the last is full, so the child holding byte `o` is
//!   `o / (c · FANOUT^(h−1))`: a Range request finds its chunks without reading any other.
//! - The blob's CID is its root link block's (the empty blob is `{"c", "h": 1, "l": [], "s": 0}`).
//!   Same bytes → same chunks → same tree → same CID. Identical chunks are stored once.
//!
//! # Pins
//!
//! `blob/<cid>` pins a blob put here; `blob-replica/<cid>` one held as a replica for the swarm;
//! `blob-cache/<cid>` keeps one fetched from a peer;
//! `blob-upload/<id>` pins the chunks of an upload in progress (a chain of small manifest blocks),
//! so GC never takes them before the root exists. [`delete`] removes a blob's pins and at once
//! frees its blocks that no other pin (or recently retired root) reaches.
//!
//! Invariant: a `blob_meta` row exists for every pinned blob; a pin is only ever set on a root
//! whose link block is stored (its children may still be missing for a blob being fetched).

use std::collections::BTreeMap;

use libipld::{cbor::DagCborCodec, codec::Codec, Ipld};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::{
    blocks,
    cid::{self, Cid, DAG_CBOR, RAW},
    error::{Error, Result},
    log::{Reader, Writer},
    schema::now_secs,
};

/// Bytes per chunk (the last one of a blob may be shorter). See `docs/blobs.md` for why fixed
/// and why 1 MiB.
pub const CHUNK_SIZE: usize = 1 << 20;
/// Links per link block: ~40 KiB blocks; two levels cover 1 TiB.
pub const FANOUT: usize = 1024;
/// Alias prefix of blobs put on this node.
pub const PIN_PREFIX: &str = "blob/";
/// Alias prefix of blobs fetched from peers.
pub const CACHE_PREFIX: &str = "blob-cache/";
/// Alias prefix of uploads in progress.
pub const UPLOAD_PREFIX: &str = "blob-upload/";
/// Alias prefix of blobs held as a replica for the swarm (kept until the blob is deleted
/// swarm-wide).
pub const REPLICA_PREFIX: &str = "blob-replica/";
/// Deepest tree accepted from a peer (FANOUT^6 chunks is far beyond any disk).
const MAX_HEIGHT: u64 = 6;
/// Largest link block accepted: [`FANOUT`] links of 41 bytes (a tag-42 CID of a SHA-256
/// multihash) plus the three integers is ~41 KiB; anything larger is a lie, refused before
/// any decoder allocates for it.
pub const MAX_LINK_BLOCK: usize = 48 << 10;

const CREATE: &str = "CREATE TABLE IF NOT EXISTS blob_meta (
    cid   BLOB PRIMARY KEY,
    size  INTEGER NOT NULL,
    name  TEXT,
    mime  TEXT,
    added INTEGER NOT NULL
) WITHOUT ROWID;";
const META_UPSERT: &str = "INSERT INTO blob_meta (cid, size, name, mime, added) \
     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(cid) DO UPDATE SET \
     name = coalesce(excluded.name, blob_meta.name), mime = coalesce(excluded.mime, blob_meta.mime)";
const META_GET: &str = "SELECT size, name, mime FROM blob_meta WHERE cid = ?1";
const META_ALL: &str = "SELECT cid, size, name, mime FROM blob_meta ORDER BY added, cid";
const META_DELETE: &str = "DELETE FROM blob_meta WHERE cid = ?1";
/// Ids reachable from `?1` that no alias and no retired root reaches.
const ONLY_UNDER: &str = "WITH RECURSIVE \
     live(id) AS (SELECT id FROM aliases UNION SELECT id FROM retired \
        UNION SELECT refs.child FROM refs JOIN live ON refs.parent = live.id), \
     mine(id) AS (SELECT ?1 UNION SELECT refs.child FROM refs JOIN mine ON refs.parent = mine.id) \
     SELECT mine.id, length(blocks.data) FROM mine LEFT JOIN blocks ON blocks.id = mine.id \
     WHERE mine.id NOT IN (SELECT id FROM live)";

/// One link block, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkNode {
    /// Chunk size of the blob.
    pub chunk: u64,
    /// 1 = links chunks.
    pub height: u64,
    /// Bytes below this node.
    pub size: u64,
    pub links: Vec<Cid>,
}

impl LinkNode {
    /// Bytes one child of this node covers when full.
    pub fn child_span(&self) -> u64 {
        (self.chunk).saturating_mul((FANOUT as u64).saturating_pow((self.height - 1) as u32))
    }

    /// The dag-cbor bytes and CID of this node.
    pub fn encode(&self) -> Result<(Cid, Vec<u8>)> {
        let links = self
            .links
            .iter()
            .map(|c| Ok(Ipld::Link(cid::to_ipld(c)?)))
            .collect::<Result<Vec<_>>>()?;
        let map: BTreeMap<String, Ipld> = [
            ("c".to_string(), Ipld::Integer(self.chunk as i128)),
            ("h".to_string(), Ipld::Integer(self.height as i128)),
            ("l".to_string(), Ipld::List(links)),
            ("s".to_string(), Ipld::Integer(self.size as i128)),
        ]
        .into_iter()
        .collect();
        let data = DagCborCodec
            .encode(&Ipld::StringMap(map))
            .map_err(|e| Error::Invalid(format!("cannot encode a link block: {e}")))?;
        Ok((cid::cid_of(DAG_CBOR, &data), data))
    }

    /// Decodes and checks a link block (bytes may come from a peer: every field is checked
    /// against the geometry, so a lying tree is `Corrupt`, never a panic or a huge allocation).
    pub fn decode(cid: &Cid, data: &[u8]) -> Result<LinkNode> {
        let corrupt = |reason: &str| Error::Corrupt {
            cid: *cid,
            reason: format!("not a blob link block: {reason}"),
        };
        if cid.codec() != DAG_CBOR {
            return Err(corrupt("not dag-cbor"));
        }
        if data.len() > MAX_LINK_BLOCK {
            return Err(corrupt(&format!(
                "{} bytes, more than a link block of {FANOUT} links",
                data.len()
            )));
        }
        // libipld allocates whatever length a header declares and recurses without bound: the
        // bytes may be a peer's, so they are checked (definite lengths that fit in the block,
        // bounded nesting) before it sees them.
        crate::blocks::check_dag_cbor(data).map_err(|e| corrupt(&e))?;
        let ipld: Ipld = DagCborCodec
            .decode(data)
            .map_err(|e| corrupt(&e.to_string()))?;
        let Ipld::StringMap(map) = ipld else {
            return Err(corrupt("not a map"));
        };
        let int = |k: &str| match map.get(k) {
            Some(Ipld::Integer(i)) if (0..=u64::MAX as i128).contains(i) => Ok(*i as u64),
            _ => Err(corrupt(&format!(
                "field {k} missing or not an unsigned integer"
            ))),
        };
        let (chunk, height, size) = (int("c")?, int("h")?, int("s")?);
        let Some(Ipld::List(list)) = map.get("l") else {
            return Err(corrupt("field l missing"));
        };
        let links = list
            .iter()
            .map(|l| match l {
                Ipld::Link(c) => cid::from_ipld(c),
                _ => Err(corrupt("a link is not a CID")),
            })
            .collect::<Result<Vec<_>>>()?;
        let node = LinkNode {
            chunk,
            height,
            size,
            links,
        };
        if chunk == 0 || chunk > 4 << 20 || height == 0 || height > MAX_HEIGHT {
            return Err(corrupt("chunk size or height out of range"));
        }
        if node.links.len() > FANOUT {
            return Err(corrupt("too many links"));
        }
        let span = node.child_span();
        let n = node.links.len() as u64;
        // Every child but the last is full; the last holds 1..=span bytes.
        let fits = match n {
            0 => size == 0 && height == 1,
            n => size > (n - 1).saturating_mul(span) && size <= n.saturating_mul(span),
        };
        if !fits {
            return Err(corrupt("size does not match the links"));
        }
        let want = if height == 1 { RAW } else { DAG_CBOR };
        if node.links.iter().any(|l| l.codec() != want) {
            return Err(corrupt("link of the wrong kind"));
        }
        Ok(node)
    }

    /// Size of child `i` (`i < links.len()`).
    pub fn child_size(&self, i: usize) -> u64 {
        let span = self.child_span();
        self.size
            .saturating_sub((i as u64).saturating_mul(span))
            .min(span)
    }
}

/// A block: CID and bytes.
pub type Block = (Cid, Vec<u8>);

/// Builds a blob's tree as chunks arrive, with at most `FANOUT` pending links per level (memory
/// is O(height · FANOUT), whatever the blob's size).
#[derive(Debug, Default)]
pub struct TreeBuilder {
    chunk: u64,
    /// `levels[k]`: completed nodes of height `k` (0 = chunks) not yet linked, with their sizes.
    levels: Vec<Vec<(Cid, u64)>>,
    size: u64,
}

impl TreeBuilder {
    /// A builder for [`CHUNK_SIZE`] chunks.
    pub fn new() -> Self {
        Self::with_chunk(CHUNK_SIZE as u64)
    }

    /// A builder for chunks of `chunk` bytes (tests use tiny chunks for deep trees).
    pub fn with_chunk(chunk: u64) -> Self {
        Self {
            chunk,
            ..Self::default()
        }
    }

    /// Bytes pushed so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Chunk `data` (at most [`CHUNK_SIZE`] bytes; only the last may be shorter) and its CID:
    /// `cid_of(RAW, data)`. Returns the link blocks this completed, to store with the chunk.
    pub fn push_chunk(&mut self, cid: Cid, len: u64) -> Result<Vec<(Cid, Vec<u8>)>> {
        self.size += len;
        self.push(0, cid, len)
    }

    fn push(&mut self, level: usize, cid: Cid, len: u64) -> Result<Vec<(Cid, Vec<u8>)>> {
        if self.levels.len() <= level {
            self.levels.resize_with(level + 1, Vec::new);
        }
        self.levels[level].push((cid, len));
        let mut out = Vec::new();
        if self.levels[level].len() == FANOUT {
            let (cid, data, size) = self.emit(level)?;
            out.push((cid, data));
            out.extend(self.push(level + 1, cid, size)?);
        }
        Ok(out)
    }

    fn emit(&mut self, level: usize) -> Result<(Cid, Vec<u8>, u64)> {
        let children = std::mem::take(&mut self.levels[level]);
        let size = children.iter().map(|(_, s)| s).sum();
        let node = LinkNode {
            chunk: self.chunk,
            height: level as u64 + 1,
            size,
            links: children.into_iter().map(|(c, _)| c).collect(),
        };
        let (cid, data) = node.encode()?;
        Ok((cid, data, size))
    }

    /// Closes the tree: returns the root CID, the size, and the last link blocks to store.
    pub fn finish(mut self) -> Result<(Cid, u64, Vec<Block>)> {
        let mut out = Vec::new();
        let mut level = 0;
        loop {
            if self.levels.len() <= level {
                self.levels.resize_with(level + 1, Vec::new);
            }
            let above_empty = self.levels[level + 1..].iter().all(|l| l.is_empty());
            let here = self.levels[level].len();
            if level >= 1 && above_empty && here == 1 {
                let root = self.levels[level][0].0;
                return Ok((root, self.size, out));
            }
            if here > 0 || (level == 0 && above_empty) {
                // Also the empty blob: an empty height-1 node.
                let (cid, data, size) = self.emit(level)?;
                out.push((cid, data));
                if self.levels.len() <= level + 1 {
                    self.levels.resize_with(level + 2, Vec::new);
                }
                self.levels[level + 1].push((cid, size));
            }
            level += 1;
        }
    }
}

/// What the store knows of one blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlobMeta {
    #[serde(serialize_with = "cid::serialize")]
    pub cid: Cid,
    pub size: u64,
    pub name: Option<String>,
    pub mime: Option<String>,
}

/// A listed blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlobEntry {
    #[serde(flatten)]
    pub meta: BlobMeta,
    /// Every chunk is local.
    pub complete: bool,
    /// Kept until deleted: put on this node, or held as a replica for the swarm (not only
    /// fetched).
    pub pinned: bool,
}

/// What [`delete`] freed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Freed {
    pub blocks: u64,
    pub bytes: u64,
}

fn writer_conn(w: &Writer) -> std::sync::Arc<std::sync::Mutex<Connection>> {
    w.reader().conn
}

fn lock(conn: &std::sync::Mutex<Connection>) -> Result<std::sync::MutexGuard<'_, Connection>> {
    conn.lock()
        .map_err(|_| Error::Invalid("store connection lock poisoned".into()))
}

/// Creates the blob tables (idempotent) and drops the pins of uploads a previous process left
/// (killed mid-upload, or its abort failed on a full disk); call once with the writer before
/// using blobs, before any upload starts.
pub fn init(w: &mut Writer) -> Result<()> {
    let conn = writer_conn(w);
    let conn = lock(&conn)?;
    conn.execute_batch(CREATE)?;
    // Best effort: on a full disk reads must still work; the pins go at the next start.
    let dropped = blocks::aliases_with_prefix(&conn, UPLOAD_PREFIX).and_then(|stale| {
        for (name, _) in &stale {
            set_alias_quietly(&conn, name, None, now_secs())?;
        }
        Ok(stale.len())
    });
    match dropped {
        Ok(0) => {}
        Ok(n) => tracing::info!(uploads = n, "dropped the pins of abandoned uploads"),
        Err(e) => tracing::warn!(error = %e, "cannot drop the pins of abandoned uploads"),
    }
    Ok(())
}

/// Stores blocks the caller hashed itself (chunks it cut, link blocks it encoded, or blocks the
/// exchange verified), in one transaction. With `upload = Some((id, prev))` the batch also
/// writes a manifest block linking them and `prev` and pins it as `blob-upload/<id>`; returns
/// the manifest's CID (pass it as `prev` next time). On error nothing was stored.
pub fn put_hashed(
    w: &mut Writer,
    blocks: &[(Cid, &[u8])],
    upload: Option<(&str, Option<Cid>)>,
) -> Result<Option<Cid>> {
    let conn = writer_conn(w);
    let mut conn = lock(&conn)?;
    // Blob batches are large: SQLite's automatic checkpoint (every ~4 MiB of WAL, each with two
    // fsyncs) would run at almost every batch, inside the commit. A writer with a checkpoint
    // thread has it off already (0); otherwise it is off for this commit and `Writer::wrote`
    // checkpoints every `checkpoint_after_bytes` instead. A commit is durable against a
    // process kill once written to the WAL either way (see `schema::Durability`).
    let auto: i64 = conn.pragma_query_value(None, "wal_autocheckpoint", |r| r.get(0))?;
    if auto != 0 {
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    }
    let result = put_hashed_tx(&mut conn, blocks, upload);
    if auto != 0 {
        conn.pragma_update(None, "wal_autocheckpoint", auto)?;
    }
    drop(conn);
    if result.is_ok() {
        let bytes: usize = blocks.iter().map(|(_, d)| d.len()).sum();
        // The batch is committed whatever happens here: a checkpoint that fails (disk full,
        // busy) must not report it lost; the WAL keeps the data and a later one retries.
        if let Err(e) = w.wrote(bytes as u64) {
            tracing::warn!(error = %e, "wal checkpoint after blob writes failed");
        }
        // Back-to-back blob commits never leave the WAL fully copied, so it would never start
        // over on its own (see `checkpoint.rs`).
        w.restart_wal_if_due();
    }
    result
}

fn put_hashed_tx(
    conn: &mut Connection,
    blocks: &[(Cid, &[u8])],
    upload: Option<(&str, Option<Cid>)>,
) -> Result<Option<Cid>> {
    let tx = conn.transaction()?;
    let now = now_secs();
    for (cid, data) in blocks {
        blocks::put_trusted(&tx, cid, data, now)?;
    }
    let mut manifest = None;
    if let Some((id, prev)) = upload {
        let mut links = blocks
            .iter()
            .map(|(c, _)| Ok(Ipld::Link(cid::to_ipld(c)?)))
            .collect::<Result<Vec<_>>>()?;
        if let Some(prev) = prev {
            links.push(Ipld::Link(cid::to_ipld(&prev)?));
        }
        let data = DagCborCodec
            .encode(&Ipld::List(links))
            .map_err(|e| Error::Invalid(format!("cannot encode a manifest: {e}")))?;
        let m = cid::cid_of(DAG_CBOR, &data);
        blocks::put_trusted(&tx, &m, &data, now)?;
        set_alias_quietly(&tx, &format!("{UPLOAD_PREFIX}{id}"), Some(&m), now)?;
        manifest = Some(m);
    }
    tx.commit()?;
    Ok(manifest)
}

/// Sets or removes an alias without retiring the old target (upload manifests and deleted
/// blobs need no grace: nothing reads them).
fn set_alias_quietly(conn: &Connection, name: &str, cid: Option<&Cid>, now: i64) -> Result<()> {
    match cid {
        Some(cid) => {
            let id = blocks::cid_id_touch(conn, cid, now)?;
            conn.execute(
                "INSERT INTO aliases (name, id) VALUES (?1, ?2) \
                 ON CONFLICT(name) DO UPDATE SET id = excluded.id",
                params![name, id],
            )?;
        }
        None => {
            conn.execute("DELETE FROM aliases WHERE name = ?1", params![name])?;
        }
    }
    Ok(())
}

/// Finishes an upload in one transaction: stores the last link blocks, records the metadata,
/// pins the root as `blob/<cid>` and drops the upload's pin.
pub fn commit_upload(
    w: &mut Writer,
    upload_id: &str,
    last_blocks: &[(Cid, Vec<u8>)],
    meta: &BlobMeta,
) -> Result<()> {
    let conn = writer_conn(w);
    let mut conn = lock(&conn)?;
    let tx = conn.transaction()?;
    let now = now_secs();
    for (cid, data) in last_blocks {
        blocks::put_trusted(&tx, cid, data, now)?;
    }
    upsert_meta(&tx, meta, now)?;
    set_alias_quietly(
        &tx,
        &format!("{PIN_PREFIX}{}", meta.cid),
        Some(&meta.cid),
        now,
    )?;
    set_alias_quietly(&tx, &format!("{UPLOAD_PREFIX}{upload_id}"), None, now)?;
    tx.commit()?;
    Ok(())
}

/// Drops the pin of an abandoned upload (its chunks become garbage unless shared).
pub fn abort_upload(w: &mut Writer, upload_id: &str) -> Result<()> {
    let conn = writer_conn(w);
    let conn = lock(&conn)?;
    set_alias_quietly(
        &conn,
        &format!("{UPLOAD_PREFIX}{upload_id}"),
        None,
        now_secs(),
    )
}

fn upsert_meta(conn: &Connection, meta: &BlobMeta, now: i64) -> Result<()> {
    conn.prepare_cached(META_UPSERT)?.execute(params![
        meta.cid.to_bytes(),
        meta.size as i64,
        meta.name,
        meta.mime,
        now
    ])?;
    Ok(())
}

/// Stores a fetched root link block (verified by the caller), records the blob and keeps it as
/// `blob-cache/<cid>` so what is fetched survives GC and a later request resumes from it.
pub fn cache_root(w: &mut Writer, root: &Cid, data: &[u8], size: u64) -> Result<()> {
    let conn = writer_conn(w);
    let mut conn = lock(&conn)?;
    let tx = conn.transaction()?;
    let now = now_secs();
    blocks::put_trusted(&tx, root, data, now)?;
    let meta = BlobMeta {
        cid: *root,
        size,
        name: None,
        mime: None,
    };
    upsert_meta(&tx, &meta, now)?;
    if blocks::alias_get(&tx, &format!("{PIN_PREFIX}{root}"))?.is_none() {
        set_alias_quietly(&tx, &format!("{CACHE_PREFIX}{root}"), Some(root), now)?;
    }
    tx.commit()?;
    Ok(())
}

/// Records name / content type of a known blob (e.g. from a name event).
pub fn set_meta(w: &mut Writer, meta: &BlobMeta) -> Result<()> {
    let conn = writer_conn(w);
    let conn = lock(&conn)?;
    upsert_meta(&conn, meta, now_secs())
}

/// Unpins `root` and deletes, in one transaction, every block under it that no other pin or
/// retired root reaches. Returns `None` if the blob was not known here.
pub fn delete(w: &mut Writer, root: &Cid) -> Result<Option<Freed>> {
    unpin(w, root, &[PIN_PREFIX, REPLICA_PREFIX, CACHE_PREFIX])
}

/// Pins a blob whose every block is stored as a replica (`blob-replica/<cid>`), in one
/// transaction with the check. [`Error::Invalid`] when a block is missing or the blob is not
/// known here.
pub fn pin_replica(w: &mut Writer, root: &Cid) -> Result<()> {
    let conn = writer_conn(w);
    let mut conn = lock(&conn)?;
    let tx = conn.transaction()?;
    if meta_on(&tx, root)?.is_none() {
        return Err(Error::Invalid(format!("blob {root} is not known here")));
    }
    let missing = blocks::missing(&tx, root)?;
    if !missing.is_empty() {
        return Err(Error::Invalid(format!(
            "blob {root} lacks {} block(s) here",
            missing.len()
        )));
    }
    set_alias_quietly(
        &tx,
        &format!("{REPLICA_PREFIX}{root}"),
        Some(root),
        now_secs(),
    )?;
    tx.commit()?;
    Ok(())
}

/// Drops the replica and cache pins of `root` (the blob was deleted swarm-wide) and frees what
/// no other pin reaches; a blob put on this node (`blob/<cid>`) stays. `None` if the blob was
/// not known here.
pub fn release_replica(w: &mut Writer, root: &Cid) -> Result<Option<Freed>> {
    unpin(w, root, &[REPLICA_PREFIX, CACHE_PREFIX])
}

/// Drops the pins `prefixes` of `root`, and its metadata once no pin is left, and frees every
/// block under it that no other pin or retired root reaches, in one transaction.
fn unpin(w: &mut Writer, root: &Cid, prefixes: &[&str]) -> Result<Option<Freed>> {
    // Deleted blocks would break the "validated means complete" rule of imports.
    w.forget_validated();
    let conn = writer_conn(w);
    let mut conn = lock(&conn)?;
    let tx = conn.transaction()?;
    let now = now_secs();
    let known = tx
        .prepare_cached(META_GET)?
        .query_row(params![root.to_bytes()], |_| Ok(()))
        .optional()?
        .is_some();
    for prefix in prefixes {
        set_alias_quietly(&tx, &format!("{prefix}{root}"), None, now)?;
    }
    let still_pinned = [PIN_PREFIX, REPLICA_PREFIX]
        .iter()
        .map(|p| blocks::alias_get(&tx, &format!("{p}{root}")))
        .collect::<Result<Vec<_>>>()?
        .iter()
        .any(Option::is_some);
    if !still_pinned {
        tx.prepare_cached(META_DELETE)?
            .execute(params![root.to_bytes()])?;
    }
    let mut freed = Freed::default();
    if let Some(id) = blocks::cid_id(&tx, root)? {
        let dead: Vec<(i64, Option<i64>)> = {
            let mut stmt = tx.prepare(ONLY_UNDER)?;
            let rows = stmt.query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<std::result::Result<_, _>>()?
        };
        for (id, len) in dead {
            if let Some(len) = len {
                tx.execute("DELETE FROM blocks WHERE id = ?1", params![id])?;
                freed.blocks += 1;
                freed.bytes += len.max(0) as u64;
            }
            tx.execute("DELETE FROM refs WHERE parent = ?1", params![id])?;
            tx.execute("DELETE FROM cids WHERE id = ?1", params![id])?;
        }
    }
    tx.commit()?;
    Ok(known.then_some(freed))
}

/// Metadata of a blob known here (put here or being fetched).
pub fn meta(r: &Reader, root: &Cid) -> Result<Option<BlobMeta>> {
    let conn = lock(&r.conn)?;
    meta_on(&conn, root)
}

fn meta_on(conn: &Connection, root: &Cid) -> Result<Option<BlobMeta>> {
    Ok(conn
        .prepare_cached(META_GET)?
        .query_row(params![root.to_bytes()], |r| {
            Ok(BlobMeta {
                cid: *root,
                size: r.get::<_, i64>(0)?.max(0) as u64,
                name: r.get(1)?,
                mime: r.get(2)?,
            })
        })
        .optional()?)
}

/// Is every block of the blob local?
pub fn complete(r: &Reader, root: &Cid) -> Result<bool> {
    let conn = lock(&r.conn)?;
    Ok(blocks::missing(&conn, root)?.is_empty())
}

/// Every blob known here.
pub fn list(r: &Reader) -> Result<Vec<BlobEntry>> {
    let conn = lock(&r.conn)?;
    type Row = (Vec<u8>, i64, Option<String>, Option<String>);
    let rows: Vec<Row> = {
        let mut stmt = conn.prepare_cached(META_ALL)?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        rows.collect::<std::result::Result<_, _>>()?
    };
    let mut out = Vec::with_capacity(rows.len());
    for (cid, size, name, mime) in rows {
        let cid = cid::from_bytes(&cid)?;
        let pinned = blocks::alias_get(&conn, &format!("{PIN_PREFIX}{cid}"))?.is_some()
            || blocks::alias_get(&conn, &format!("{REPLICA_PREFIX}{cid}"))?.is_some();
        let complete = blocks::missing(&conn, &cid)?.is_empty();
        out.push(BlobEntry {
            meta: BlobMeta {
                cid,
                size: size.max(0) as u64,
                name,
                mime,
            },
            complete,
            pinned,
        });
    }
    Ok(out)
}

/// Sum of the declared sizes of the blobs pinned here (uploaded, or fetched and kept): what
/// `/metrics` reports as blob bytes stored. One alias lookup per blob; no block is read.
pub fn bytes_pinned(r: &Reader) -> Result<u64> {
    let conn = lock(&r.conn)?;
    let mut stmt = conn.prepare_cached(META_ALL)?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))?;
    let mut total = 0u64;
    for row in rows {
        let (cid, size) = row?;
        let cid = cid::from_bytes(&cid)?;
        if blocks::alias_get(&conn, &format!("{PIN_PREFIX}{cid}"))?.is_some() {
            total = total.saturating_add(size.max(0) as u64);
        }
    }
    Ok(total)
}

/// Chunk indices covering bytes `start..end` (end exclusive, `start < end`).
pub fn chunk_span(start: u64, end: u64, chunk: u64) -> std::ops::Range<u64> {
    start / chunk..end.div_ceil(chunk)
}

#[cfg(test)]
mod tests;
