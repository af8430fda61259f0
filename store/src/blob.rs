//! Blobs in the block store: a UnixFS v1 file per blob (`unixfs.rs`: 1 MiB raw leaves under
//! dag-pb nodes, exactly as `ipfs add --cid-version=1 --raw-leaves --chunker=size-1048576`).
//!
//! Owns the blob format, the blob tables (`blob_meta`: size, name, content type per known blob;
//! `blob_alias`: CIDs of the old format and the UnixFS CID each became), the conversion of
//! blobs of the old format at start-up ([`init`]), and the blob side of pins and deletion. It
//! knows nothing of HTTP or peers: the engine feeds it bytes and fetched blocks.
//!
//! # Format (see `docs/format.md`, "Blobs")
//!
//! - The blob's CID is its DAG's root: the raw leaf itself for a blob of at most one chunk (the
//!   empty blob is the empty raw block), else a dag-pb UnixFS `File` node. Same bytes → same
//!   CID as IPFS. Identical chunks are stored once.
//! - Each node lists the bytes below each child (`blocksizes`), so a Range request finds its
//!   chunks without reading any other block.
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
//! whose block is stored (its children may still be missing for a blob being fetched).

use libipld::{cbor::DagCborCodec, codec::Codec, Ipld};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::{
    blocks,
    cid::{self, Cid, DAG_CBOR, DAG_PB, RAW},
    error::{Error, Result},
    log::{Reader, Writer},
    schema::now_secs,
};

pub mod legacy;
pub mod unixfs;

pub use unixfs::{Block, Builder, FileNode, FANOUT};

/// Bytes per chunk (the last one of a blob may be shorter). See `docs/blobs.md` for why fixed
/// and why 1 MiB.
pub const CHUNK_SIZE: usize = 1 << 20;
/// Alias prefix of blobs put on this node.
pub const PIN_PREFIX: &str = "blob/";
/// Alias prefix of blobs fetched from peers.
pub const CACHE_PREFIX: &str = "blob-cache/";
/// Alias prefix of uploads in progress.
pub const UPLOAD_PREFIX: &str = "blob-upload/";
/// Alias prefix of blobs held as a replica for the swarm (kept until the blob is deleted
/// swarm-wide).
pub const REPLICA_PREFIX: &str = "blob-replica/";

const CREATE: &str = "CREATE TABLE IF NOT EXISTS blob_meta (
    cid   BLOB PRIMARY KEY,
    size  INTEGER NOT NULL,
    name  TEXT,
    mime  TEXT,
    added INTEGER NOT NULL
) WITHOUT ROWID;";
const CREATE_ALIAS: &str = "CREATE TABLE IF NOT EXISTS blob_alias (
    old BLOB PRIMARY KEY,
    new BLOB NOT NULL
) WITHOUT ROWID;";
const META_UPSERT: &str = "INSERT INTO blob_meta (cid, size, name, mime, added) \
     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(cid) DO UPDATE SET \
     name = coalesce(excluded.name, blob_meta.name), mime = coalesce(excluded.mime, blob_meta.mime)";
const META_GET: &str = "SELECT size, name, mime FROM blob_meta WHERE cid = ?1";
const META_GET_ADDED: &str = "SELECT size, name, mime, added FROM blob_meta WHERE cid = ?1";
const META_ALL: &str = "SELECT cid, size, name, mime FROM blob_meta ORDER BY added, cid";
const META_DELETE: &str = "DELETE FROM blob_meta WHERE cid = ?1";
/// Ids reachable from `?1` that no alias and no retired root reaches.
const ONLY_UNDER: &str = "WITH RECURSIVE \
     live(id) AS (SELECT id FROM aliases UNION SELECT id FROM retired \
        UNION SELECT refs.child FROM refs JOIN live ON refs.parent = live.id), \
     mine(id) AS (SELECT ?1 UNION SELECT refs.child FROM refs JOIN mine ON refs.parent = mine.id) \
     SELECT mine.id, coalesce(length(blocks.data), files.size), files.id IS NOT NULL, cids.cid \
     FROM mine JOIN cids ON cids.id = mine.id LEFT JOIN blocks ON blocks.id = mine.id \
     LEFT JOIN files ON files.id = mine.id WHERE mine.id NOT IN (SELECT id FROM live)";

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

pub(crate) fn lock(
    conn: &std::sync::Mutex<Connection>,
) -> Result<std::sync::MutexGuard<'_, Connection>> {
    conn.lock()
        .map_err(|_| Error::Invalid("store connection lock poisoned".into()))
}

/// A blob's root, decoded: where a read starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobRoot {
    /// A blob of at most one chunk: its raw leaf is the blob.
    Leaf { cid: Cid, size: u64 },
    /// A UnixFS file node.
    File(FileNode),
}

impl BlobRoot {
    /// Decodes a root block (checked like any node from a peer).
    pub fn decode(cid: &Cid, data: &[u8]) -> Result<BlobRoot> {
        match cid.codec() {
            RAW => Ok(BlobRoot::Leaf {
                cid: *cid,
                size: data.len() as u64,
            }),
            DAG_PB => FileNode::decode(cid, data).map(BlobRoot::File),
            _ => Err(Error::Corrupt {
                cid: *cid,
                reason: "a blob is a raw block or a dag-pb UnixFS file".into(),
            }),
        }
    }

    /// The blob's bytes.
    pub fn size(&self) -> u64 {
        match self {
            BlobRoot::Leaf { size, .. } => *size,
            BlobRoot::File(node) => node.size,
        }
    }
}

/// Creates the blob tables (idempotent), drops the pins of uploads a previous process left
/// (killed mid-upload, or its abort failed on a full disk) and converts blobs of the old format
/// to UnixFS ([`migrate`]); call once with the writer before using blobs, before any upload
/// starts.
pub fn init(w: &mut Writer) -> Result<()> {
    {
        let conn = writer_conn(w);
        let conn = lock(&conn)?;
        conn.execute_batch(CREATE)?;
        conn.execute_batch(CREATE_ALIAS)?;
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
    }
    migrate(w)
}

/// Converts every blob of the old format (a dag-cbor root, `legacy.rs`) to UnixFS, one
/// transaction per blob: the new DAG over the same chunks (only the old link blocks are read;
/// the chunks are the same raw blocks), the metadata and every pin (`blob/`, `blob-replica/`,
/// `blob-cache/`) moved to the new CID, `blob_alias` mapping the old CID to the new one (the
/// engine resolves old CIDs through it: names, replica events and app packages recorded before
/// keep working here), and the old link blocks deleted. A blob whose old tree is not all
/// here (a fetch cut short) cannot be converted: its cache pin is dropped and it is forgotten.
/// A failed conversion (a full disk) is logged, not returned: the next start tries again.
fn migrate(w: &mut Writer) -> Result<()> {
    let conn = writer_conn(w);
    let conn = lock(&conn)?;
    let old: Vec<Cid> = {
        let mut stmt = conn.prepare("SELECT cid FROM blob_meta ORDER BY added, cid")?;
        let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for row in rows {
            let cid = cid::from_bytes(&row?)?;
            if cid.codec() == DAG_CBOR {
                out.push(cid);
            }
        }
        out
    };
    if old.is_empty() {
        return Ok(());
    }
    // Old link blocks are deleted: the "validated means complete" rule of imports must not
    // count on them.
    drop(conn);
    w.forget_validated();
    let conn = writer_conn(w);
    let mut conn = lock(&conn)?;
    tracing::info!(
        blobs = old.len(),
        "converting blobs of the old format to UnixFS"
    );
    for cid in old {
        match migrate_one(&mut conn, &cid) {
            Ok(Some(new)) => tracing::info!(old = %cid, new = %new, "blob converted to UnixFS"),
            Ok(None) => tracing::warn!(old = %cid,
                "blob of the old format not all here (a fetch cut short): forgotten"),
            // Left as it is (unreadable, listed); `shoal blobs rm` deletes it.
            Err(e @ Error::Corrupt { .. }) => {
                tracing::warn!(old = %cid, error = %e, "cannot convert a damaged blob of the old format")
            }
            // E.g. a full disk: the node starts all the same (reads must work); the blobs not
            // converted yet stay as they are and the next start tries again.
            Err(e) => {
                tracing::warn!(old = %cid, error = %e,
                    "cannot convert blobs of the old format now; the next start tries again");
                break;
            }
        }
    }
    Ok(())
}

/// Converts one old-format blob (see [`migrate`]); `None` when its tree is incomplete (then it
/// was dropped).
fn migrate_one(conn: &mut Connection, old: &Cid) -> Result<Option<Cid>> {
    let tx = conn.transaction()?;
    let now = now_secs();
    let (size, name, mime, added): (i64, Option<String>, Option<String>, i64) = tx
        .prepare_cached(META_GET_ADDED)?
        .query_row(params![old.to_bytes()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
    let mut builder = Builder::new();
    let mut new_blocks = Vec::new();
    let complete = legacy::chunks(&tx, old, |chunk, len| {
        new_blocks.extend(builder.push_chunk(chunk, len)?);
        Ok(())
    })?;
    let old_id = blocks::cid_id(&tx, old)?;
    if !complete {
        for prefix in [PIN_PREFIX, REPLICA_PREFIX, CACHE_PREFIX] {
            set_alias_quietly(&tx, &format!("{prefix}{old}"), None, now)?;
        }
        tx.prepare_cached(META_DELETE)?
            .execute(params![old.to_bytes()])?;
        let files = match old_id {
            Some(id) => free_unreached(&tx, id)?.1,
            None => Vec::new(),
        };
        tx.commit()?;
        blocks::remove_files(conn, &files);
        return Ok(None);
    }
    if builder.size() != size.max(0) as u64 {
        return Err(Error::Corrupt {
            cid: *old,
            reason: format!(
                "the blob's tree holds {} bytes, its record says {size}",
                builder.size()
            ),
        });
    }
    let (new, _, last) = builder.finish()?;
    new_blocks.extend(last);
    for (cid, data) in &new_blocks {
        blocks::put_trusted(&tx, cid, data, now)?;
    }
    let meta = BlobMeta {
        cid: new,
        size: size.max(0) as u64,
        name,
        mime,
    };
    upsert_meta(&tx, &meta, added)?;
    for prefix in [PIN_PREFIX, REPLICA_PREFIX, CACHE_PREFIX] {
        if blocks::alias_get(&tx, &format!("{prefix}{old}"))?.is_some() {
            set_alias_quietly(&tx, &format!("{prefix}{new}"), Some(&new), now)?;
            set_alias_quietly(&tx, &format!("{prefix}{old}"), None, now)?;
        }
    }
    tx.prepare_cached(META_DELETE)?
        .execute(params![old.to_bytes()])?;
    tx.execute(
        "INSERT INTO blob_alias (old, new) VALUES (?1, ?2) \
         ON CONFLICT(old) DO UPDATE SET new = excluded.new",
        params![old.to_bytes(), new.to_bytes()],
    )?;
    let files = match old_id {
        Some(id) => free_unreached(&tx, id)?.1,
        None => Vec::new(),
    };
    tx.commit()?;
    blocks::remove_files(conn, &files);
    Ok(Some(new))
}

/// The CIDs of the old format converted here, each with the UnixFS CID it became.
pub fn aliases(r: &Reader) -> Result<Vec<(Cid, Cid)>> {
    let conn = lock(&r.conn)?;
    let mut stmt = conn.prepare_cached("SELECT old, new FROM blob_alias")?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (old, new) = row?;
        out.push((cid::from_bytes(&old)?, cid::from_bytes(&new)?));
    }
    Ok(out)
}

/// Stores blocks the caller hashed itself (chunks it cut, DAG nodes it encoded, or blocks the
/// exchange verified), in one transaction. With `upload = Some((id, prev))` the batch also
/// writes a manifest block linking them and `prev` and pins it as `blob-upload/<id>`; returns
/// the manifest's CID (pass it as `prev` next time). On error nothing was stored.
pub fn put_hashed(
    w: &mut Writer,
    blocks: &[(Cid, &[u8])],
    upload: Option<(&str, Option<Cid>)>,
) -> Result<Option<Cid>> {
    put_staged(w, &[], blocks, upload)
}

/// As [`put_hashed`], plus `staged` blocks that [`crate::Store::stage_block`] already wrote as
/// files, by CID and length: the writer checks each file and records it, and the caller need
/// not keep their bytes until the commit. A staged file that is gone (or of another length)
/// fails the batch, and nothing is stored. The upload's manifest links the staged blocks first.
pub fn put_staged(
    w: &mut Writer,
    staged: &[(Cid, u64)],
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
    let as_files = crate::files::BlockFiles::of(&conn).is_some();
    let result = put_hashed_tx(&mut conn, staged, blocks, upload);
    if auto != 0 {
        conn.pragma_update(None, "wal_autocheckpoint", auto)?;
    }
    drop(conn);
    if result.is_ok() {
        // Only what went into the WAL: blocks stored as files never pass through it.
        let bytes: usize = blocks
            .iter()
            .filter(|(c, d)| !(as_files && crate::files::is_file_block(c, d.len())))
            .map(|(_, d)| d.len())
            .sum();
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
    staged: &[(Cid, u64)],
    blocks: &[(Cid, &[u8])],
    upload: Option<(&str, Option<Cid>)>,
) -> Result<Option<Cid>> {
    let tx = conn.transaction()?;
    let now = now_secs();
    for (cid, len) in staged {
        blocks::put_staged(&tx, cid, *len, now)?;
    }
    for (cid, data) in blocks {
        blocks::put_trusted(&tx, cid, data, now)?;
    }
    let mut manifest = None;
    if let Some((id, prev)) = upload {
        let mut links = staged
            .iter()
            .map(|(c, _)| c)
            .chain(blocks.iter().map(|(c, _)| c))
            .map(|c| Ok(Ipld::Link(cid::to_ipld(c)?)))
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
pub(crate) fn set_alias_quietly(
    conn: &Connection,
    name: &str,
    cid: Option<&Cid>,
    now: i64,
) -> Result<()> {
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

/// Finishes an upload in one transaction: stores the last DAG nodes, records the metadata,
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

/// Records `meta` and pins its blob as put here (`blob/<cid>`), on `conn` (in the caller's
/// transaction): for blobs imported whole (`dag.rs`).
pub(crate) fn pin_local(conn: &Connection, meta: &BlobMeta, now: i64) -> Result<()> {
    upsert_meta(conn, meta, now)?;
    set_alias_quietly(
        conn,
        &format!("{PIN_PREFIX}{}", meta.cid),
        Some(&meta.cid),
        now,
    )
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

/// Stores a fetched root block (verified by the caller), records the blob and keeps it as
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
    let (freed, files) = match blocks::cid_id(&tx, root)? {
        Some(id) => free_unreached(&tx, id)?,
        None => (Freed::default(), Vec::new()),
    };
    tx.commit()?;
    blocks::remove_files(&conn, &files);
    Ok(known.then_some(freed))
}

/// Deletes every block under the CID with id `root` (itself included) that no alias and no
/// recently retired root reaches. The blocks kept as files are returned: remove them with
/// [`blocks::remove_files`] once the transaction committed.
fn free_unreached(tx: &Connection, root: i64) -> Result<(Freed, Vec<Cid>)> {
    let mut freed = Freed::default();
    let mut files = Vec::new();
    type Row = (i64, Option<i64>, bool, Vec<u8>);
    let dead: Vec<Row> = {
        let mut stmt = tx.prepare(ONLY_UNDER)?;
        let rows = stmt.query_map(params![root], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        rows.collect::<std::result::Result<_, _>>()?
    };
    for (id, len, file, cid) in dead {
        let file = if file {
            Some(cid::from_bytes(&cid)?)
        } else {
            None
        };
        let deleted = blocks::delete(tx, id, len, file)?;
        if let Some(bytes) = deleted.bytes {
            freed.blocks += 1;
            freed.bytes += bytes;
        }
        files.extend(deleted.file);
    }
    Ok((freed, files))
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
