//! Blocks by CID, their links, and aliases (named pins), over one SQLite connection. Large
//! raw blocks keep their bytes in files beside the database (`files.rs`); this module is the
//! one place that decides which and reads and deletes them.
//!
//! Owns: `put`/`get`/`has`, link extraction at put time (into `refs`), alias moves, and the
//! "what is missing below this root" walk. It does not decide what is garbage (`gc.rs`) nor
//! what a block means (`tree/`).
//!
//! Invariants:
//! - a block is stored only under the CID its bytes hash to: callers hand in bytes from outside
//!   through [`put_verified`], which checks the hash first; blocks the store itself encodes go
//!   through [`put_trusted`] with a CID computed from the same bytes;
//! - every stored dag-cbor block is well-formed dag-cbor and its links are in `refs`, so every
//!   reachability question is answered by SQL without decoding blocks;
//! - moving an alias records the previous root in `retired` (see `gc.rs`).

use crate::{
    cid::{self, Cid, DAG_CBOR, DAG_PB, RAW},
    error::{Error, Result},
    files::{self, BlockFiles},
    schema,
};
use libipld::{cbor::DagCborCodec, codec::Codec, Ipld};
use rusqlite::{params, Connection, OptionalExtension};

/// Deepest nesting of a dag-cbor block we accept. Our own blocks nest at most ~8 deep; the
/// bound stops a hostile block from overflowing the decoder's stack.
const MAX_DEPTH: usize = 64;

/// Stores a block received from outside: checks the CID is supported and the bytes hash to it,
/// checks dag-cbor blocks are well-formed, records their links. Idempotent.
pub(crate) fn put_verified(conn: &Connection, cid: &Cid, data: &[u8], now: i64) -> Result<()> {
    cid::verify(cid, data)?;
    put_trusted(conn, cid, data, now)
}

/// Stores a block whose CID the caller computed from `data` itself. A large raw block goes to
/// its file beside the database (`files.rs`; usually written there already by
/// [`crate::Store::stage_block`], then this only checks it) and gets a `files` row; every
/// other block is stored inline. A block stored inline before stays so.
pub(crate) fn put_trusted(conn: &Connection, cid: &Cid, data: &[u8], now: i64) -> Result<()> {
    let children = links(cid, data)?;
    let id = cid_id_touch(conn, cid, now)?;
    match BlockFiles::of(conn).filter(|_| files::is_file_block(cid, data.len())) {
        Some(dir) => {
            if !stored_inline(conn, id)? {
                dir.write(cid, data)?;
                conn.prepare_cached(schema::FILE_INSERT)?
                    .execute(params![id, data.len() as i64])?;
            }
        }
        None => {
            conn.prepare_cached(schema::BLOCK_INSERT)?
                .execute(params![id, data])?;
        }
    }
    if !children.is_empty() {
        let mut insert_ref = conn.prepare_cached(schema::REF_INSERT)?;
        for child in children {
            let child_id = cid_id_touch(conn, &child, now)?;
            insert_ref.execute(params![id, child_id])?;
        }
    }
    Ok(())
}

/// Records a large raw block that [`crate::Store::stage_block`] wrote as a file: checks the
/// file (there, `len` bytes) and adds the block's rows. A block stored inline before stays so.
pub(crate) fn put_staged(conn: &Connection, cid: &Cid, len: u64, now: i64) -> Result<()> {
    let Some(dir) = BlockFiles::of(conn).filter(|_| files::is_file_block(cid, len as usize)) else {
        return Err(Error::Invalid(format!(
            "block {cid} of {len} bytes is not one the store keeps as a file"
        )));
    };
    let id = cid_id_touch(conn, cid, now)?;
    if !stored_inline(conn, id)? {
        dir.check(cid, len)?;
        conn.prepare_cached(schema::FILE_INSERT)?
            .execute(params![id, len as i64])?;
    }
    Ok(())
}

/// Whether block `id` is stored inline (in the database, not as a file).
fn stored_inline(conn: &Connection, id: i64) -> Result<bool> {
    Ok(conn
        .prepare_cached(schema::INLINE_HAS)?
        .query_row(params![id], |_| Ok(()))
        .optional()?
        .is_some())
}

/// The id of `cid`, creating the row (as a placeholder without block) if needed, and marking
/// it as written now so GC leaves it alone for its grace period.
///
/// A lookup first, then a plain INSERT or a rowid UPDATE (only when `added` changes): an
/// upsert with RETURNING, per block and per link, made SQLite open a statement journal and an
/// ephemeral result table each time (a fifth of a replicating writer's CPU).
pub(crate) fn cid_id_touch(conn: &Connection, cid: &Cid, now: i64) -> Result<i64> {
    let bytes = cid.to_bytes();
    let found: Option<(i64, i64)> = conn
        .prepare_cached(schema::CID_LOOKUP)?
        .query_row(params![bytes], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    match found {
        Some((id, added)) => {
            if added < now {
                conn.prepare_cached(schema::CID_TOUCH)?
                    .execute(params![id, now])?;
            }
            Ok(id)
        }
        None => {
            conn.prepare_cached(schema::CID_NEW)?
                .execute(params![bytes, now])?;
            Ok(conn.last_insert_rowid())
        }
    }
}

/// The id of `cid` if the store knows it.
pub(crate) fn cid_id(conn: &Connection, cid: &Cid) -> Result<Option<i64>> {
    Ok(conn
        .prepare_cached(schema::CID_ID)?
        .query_row(params![cid.to_bytes()], |r| r.get(0))
        .optional()?)
}

/// The bytes of `cid`, if present (read from its file for a block stored as one; a file
/// deleted since its row was read counts as absent).
pub(crate) fn get(conn: &Connection, cid: &Cid) -> Result<Option<Vec<u8>>> {
    match locate(conn, cid)? {
        Some(found) => found.read(cid),
        None => Ok(None),
    }
}

/// Where a present block's bytes are: in its row, or in a file (read it with
/// [`Located::read`], which needs no connection: a reader reads files without holding its
/// connection, so reads of several chunks overlap).
pub(crate) enum Located {
    Inline(Vec<u8>),
    File(BlockFiles, i64),
}

impl Located {
    pub(crate) fn read(self, cid: &Cid) -> Result<Option<Vec<u8>>> {
        match self {
            Located::Inline(data) => Ok(Some(data)),
            Located::File(dir, size) => dir.read(cid, size),
        }
    }
}

/// The row of `cid`: its bytes, or the file and size they are in; `None` when absent.
pub(crate) fn locate(conn: &Connection, cid: &Cid) -> Result<Option<Located>> {
    let row: Option<(Option<Vec<u8>>, Option<i64>)> = conn
        .prepare_cached(schema::BLOCK_GET)?
        .query_row(params![cid.to_bytes()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(match row {
        Some((Some(data), _)) => Some(Located::Inline(data)),
        Some((None, Some(size))) => BlockFiles::of(conn).map(|dir| Located::File(dir, size)),
        Some((None, None)) | None => None,
    })
}

/// What deleting one CID's rows freed.
#[derive(Debug, Default)]
pub(crate) struct Deleted {
    /// Bytes of the block, if it was present.
    pub bytes: Option<u64>,
    /// Its bytes are a file: remove it with [`remove_files`] once the transaction committed.
    pub file: Option<Cid>,
}

/// Deletes the rows of CID id `id` (its block or file row, its links, the CID itself), in the
/// caller's transaction. `cid` and `file` as the GC or blob queries returned them.
pub(crate) fn delete(
    conn: &Connection,
    id: i64,
    bytes: Option<i64>,
    file: Option<Cid>,
) -> Result<Deleted> {
    if bytes.is_some() {
        conn.prepare_cached(schema::GC_DELETE_BLOCK)?
            .execute(params![id])?;
        conn.prepare_cached(schema::GC_DELETE_FILE)?
            .execute(params![id])?;
    }
    conn.prepare_cached(schema::GC_DELETE_REFS)?
        .execute(params![id])?;
    conn.prepare_cached(schema::GC_DELETE_CID)?
        .execute(params![id])?;
    Ok(Deleted {
        bytes: bytes.map(|b| b.max(0) as u64),
        file: file.filter(|_| bytes.is_some()),
    })
}

/// Removes the files of deleted blocks; call after the deleting transaction committed (a
/// crash before leaves complete files without rows, which the GC sweep removes).
pub(crate) fn remove_files(conn: &Connection, cids: &[Cid]) {
    if let Some(dir) = BlockFiles::of(conn) {
        for cid in cids {
            dir.remove(cid);
        }
    }
}

/// Is `cid` present?
pub(crate) fn has(conn: &Connection, cid: &Cid) -> Result<bool> {
    Ok(conn
        .prepare_cached(schema::BLOCK_HAS)?
        .query_row(params![cid.to_bytes()], |_| Ok(()))
        .optional()?
        .is_some())
}

/// The CID an alias points to.
pub(crate) fn alias_get(conn: &Connection, name: &str) -> Result<Option<Cid>> {
    let bytes: Option<Vec<u8>> = conn
        .prepare_cached(schema::ALIAS_GET)?
        .query_row(params![name], |r| r.get(0))
        .optional()?;
    bytes.map(|b| cid::from_bytes(&b)).transpose()
}

/// Points `name` at `cid` (or removes it with `None`). With `retire`, the previous target is
/// recorded in `retired` so it stays alive for GC's grace period; callers skip that when the
/// new target still links to the old one (an unpacked append), which keeps it alive anyway.
pub(crate) fn alias_set(
    conn: &Connection,
    name: &str,
    cid: Option<&Cid>,
    now: i64,
    retire: bool,
) -> Result<()> {
    let previous: Option<i64> = conn
        .prepare_cached(schema::ALIAS_ID)?
        .query_row(params![name], |r| r.get(0))
        .optional()?;
    match cid {
        Some(cid) => {
            let id = cid_id_touch(conn, cid, now)?;
            if previous == Some(id) {
                return Ok(());
            }
            conn.prepare_cached(schema::ALIAS_SET)?
                .execute(params![name, id])?;
        }
        None => {
            conn.prepare_cached(schema::ALIAS_DELETE)?
                .execute(params![name])?;
        }
    }
    if let (Some(previous), true) = (previous, retire) {
        conn.prepare_cached(schema::RETIRED_INSERT)?
            .execute(params![previous, now])?;
    }
    Ok(())
}

/// Aliases whose names start with `prefix`, ordered by name.
pub(crate) fn aliases_with_prefix(conn: &Connection, prefix: &str) -> Result<Vec<(String, Cid)>> {
    // Upper bound of the prefix range: the prefix with its last char bumped past any suffix.
    let upper = format!("{prefix}\u{10FFFF}");
    aliases(conn, schema::ALIAS_LIST, params![prefix, upper])
}

/// Every alias, ordered by name.
pub(crate) fn all_aliases(conn: &Connection) -> Result<Vec<(String, Cid)>> {
    aliases(conn, schema::ALL_ALIASES, [])
}

/// Aliases whose root block is absent (the start-up check, `check.rs`): one indexed lookup per
/// alias, no block read.
pub(crate) fn aliases_without_root(conn: &Connection) -> Result<Vec<(String, Cid)>> {
    aliases(conn, schema::ALIASES_WITHOUT_ROOT, [])
}

/// The `(name, cid)` rows of an alias query.
fn aliases(
    conn: &Connection,
    sql: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<(String, Cid)>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(args, |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (name, bytes) = row?;
        out.push((name, cid::from_bytes(&bytes)?));
    }
    Ok(out)
}

/// CIDs in the DAG below `root` (root included) whose blocks are absent. Links of absent
/// blocks are unknown, so a sync asks again after fetching these.
pub(crate) fn missing(conn: &Connection, root: &Cid) -> Result<Vec<Cid>> {
    let Some(id) = cid_id(conn, root)? else {
        return Ok(vec![*root]);
    };
    let mut stmt = conn.prepare_cached(schema::MISSING_FROM)?;
    let rows = stmt.query_map(params![id], |r| r.get::<_, Vec<u8>>(0))?;
    let mut out = Vec::new();
    for row in rows {
        out.push(cid::from_bytes(&row?)?);
    }
    Ok(out)
}

/// One block of a DAG walk: its CID, whether present, its size.
#[derive(Debug, Clone)]
pub(crate) struct Reached {
    pub cid: Cid,
    pub present: bool,
    pub bytes: u64,
}

/// Every block reachable from `root`, root included, present or not.
pub(crate) fn reachable(conn: &Connection, root: &Cid) -> Result<Vec<Reached>> {
    let Some(id) = cid_id(conn, root)? else {
        return Ok(vec![Reached {
            cid: *root,
            present: false,
            bytes: 0,
        }]);
    };
    let mut stmt = conn.prepare_cached(schema::REACHABLE_FROM)?;
    let rows = stmt.query_map(params![id], |r| {
        Ok((
            r.get::<_, Vec<u8>>(1)?,
            r.get::<_, bool>(2)?,
            r.get::<_, Option<i64>>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (cid, present, bytes) = row?;
        out.push(Reached {
            cid: cid::from_bytes(&cid)?,
            present,
            bytes: bytes.unwrap_or(0).max(0) as u64,
        });
    }
    Ok(out)
}

/// Links of a block: none for raw, every tag-42 link for dag-cbor, the links of dag-pb.
/// Rejects malformed dag-cbor and dag-pb.
pub(crate) fn links(cid: &Cid, data: &[u8]) -> Result<Vec<Cid>> {
    match cid.codec() {
        RAW => Ok(Vec::new()),
        DAG_CBOR => {
            let corrupt = |reason: String| Error::Corrupt { cid: *cid, reason };
            check_dag_cbor(data).map_err(corrupt)?;
            let mut found: Vec<libipld::Cid> = Vec::new();
            DagCborCodec
                .references::<Ipld, _>(data, &mut found)
                .map_err(|e| corrupt(format!("links: {e}")))?;
            found.sort();
            found.dedup();
            found.iter().map(cid::from_ipld).collect()
        }
        DAG_PB => crate::dagpb::links(data).map_err(|reason| Error::Corrupt { cid: *cid, reason }),
        other => Err(Error::UnsupportedCid {
            cid: cid.to_string(),
            reason: format!("codec {other:#x}"),
        }),
    }
}

/// Checks `data` is exactly one well-formed dag-cbor item: definite lengths that fit in the
/// remaining bytes, only tag 42, bounded nesting. Run before any libipld decoder sees bytes
/// from outside, because those decoders allocate the length a header claims and recurse
/// without bound.
pub(crate) fn check_dag_cbor(data: &[u8]) -> std::result::Result<(), String> {
    let end = check_item(data, 0, 0)?;
    if end != data.len() {
        return Err(format!("{} trailing bytes", data.len() - end));
    }
    Ok(())
}

/// Splits a CBOR sequence (RFC 8742, e.g. the decompressed content of a banyan node) into
/// its items, checking each as [`check_dag_cbor`] does.
pub(crate) fn split_dag_cbor_seq(
    data: &[u8],
) -> std::result::Result<Vec<std::ops::Range<usize>>, String> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let end = check_item(data, pos, 0)?;
        out.push(pos..end);
        pos = end;
    }
    Ok(out)
}

/// Checks the item at `pos`; returns the position after it.
fn check_item(data: &[u8], pos: usize, depth: usize) -> std::result::Result<usize, String> {
    if depth > MAX_DEPTH {
        return Err("nested too deep".into());
    }
    let first = *data.get(pos).ok_or("truncated")?;
    let major = first >> 5;
    let info = first & 0x1f;
    let (arg, mut pos) = read_arg(data, pos + 1, info)?;
    let remaining = (data.len() - pos) as u64;
    match major {
        0 | 1 => Ok(pos),
        2 | 3 => {
            if arg > remaining {
                return Err("string longer than the block".into());
            }
            let end = pos + arg as usize;
            if major == 3 && std::str::from_utf8(&data[pos..end]).is_err() {
                return Err("text is not UTF-8".into());
            }
            Ok(end)
        }
        4 | 5 => {
            let items = if major == 5 {
                arg.checked_mul(2)
            } else {
                Some(arg)
            };
            // Every item takes at least one byte: a larger count is a lie.
            match items {
                Some(n) if n <= remaining => {
                    for _ in 0..n {
                        pos = check_item(data, pos, depth + 1)?;
                    }
                    Ok(pos)
                }
                _ => Err("collection longer than the block".into()),
            }
        }
        6 => {
            if arg != 42 {
                return Err(format!("tag {arg} is not allowed in dag-cbor"));
            }
            check_item(data, pos, depth + 1)
        }
        _ => match info {
            20..=23 => Ok(pos), // false, true, null, undefined
            25..=27 => Ok(pos), // floats (argument already consumed)
            _ => Err(format!("simple value {info} is not allowed in dag-cbor")),
        },
    }
}

/// Reads the argument of a header whose additional info is `info`.
fn read_arg(data: &[u8], pos: usize, info: u8) -> std::result::Result<(u64, usize), String> {
    let n = match info {
        0..=23 => return Ok((info as u64, pos)),
        24 => 1,
        25 => 2,
        26 => 4,
        27 => 8,
        _ => return Err("indefinite or reserved length is not allowed in dag-cbor".into()),
    };
    let bytes = data.get(pos..pos + n).ok_or("truncated")?;
    let arg = bytes.iter().fold(0u64, |acc, b| (acc << 8) | *b as u64);
    Ok((arg, pos + n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        schema::configure_writer(&mut conn, Default::default(), 1 << 20).unwrap();
        conn
    }

    #[test]
    fn put_get_has_and_links() {
        let conn = open();
        let leaf = b"raw chunk".to_vec();
        let leaf_cid = cid::cid_of(RAW, &leaf);
        let parent = DagCborCodec
            .encode(&vec![cid::to_ipld(&leaf_cid).unwrap()])
            .unwrap();
        let parent_cid = cid::cid_of(DAG_CBOR, &parent);
        put_verified(&conn, &parent_cid, &parent, 0).unwrap();
        assert_eq!(missing(&conn, &parent_cid).unwrap(), vec![leaf_cid]);
        assert!(!has(&conn, &leaf_cid).unwrap());
        put_verified(&conn, &leaf_cid, &leaf, 0).unwrap();
        assert!(missing(&conn, &parent_cid).unwrap().is_empty());
        assert_eq!(get(&conn, &leaf_cid).unwrap(), Some(leaf));
        assert_eq!(links(&parent_cid, &parent).unwrap(), vec![leaf_cid]);
        assert!(matches!(
            put_verified(&conn, &leaf_cid, b"other", 0),
            Err(Error::HashMismatch { .. })
        ));
    }

    #[test]
    fn alias_moves_retire_the_old_root() {
        let conn = open();
        let a = cid::cid_of(RAW, b"a");
        let b = cid::cid_of(RAW, b"b");
        alias_set(&conn, "x", Some(&a), 1, true).unwrap();
        alias_set(&conn, "x", Some(&b), 2, true).unwrap();
        assert_eq!(alias_get(&conn, "x").unwrap(), Some(b));
        let retired: i64 = conn
            .query_row("SELECT count(*) FROM retired", [], |r| r.get(0))
            .unwrap();
        assert_eq!(retired, 1);
        assert_eq!(aliases_with_prefix(&conn, "x").unwrap().len(), 1);
        assert!(aliases_with_prefix(&conn, "y").unwrap().is_empty());
    }

    #[test]
    fn malformed_dag_cbor_is_rejected() {
        for junk in [
            &[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..],
            &[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..],
            &[0x9f, 0xff][..],
            &[0xc1, 0x00][..],
            &[0x01, 0x02][..],
            &[][..],
        ] {
            let c = cid::cid_of(DAG_CBOR, junk);
            assert!(links(&c, junk).is_err(), "{junk:?}");
        }
        let deep = vec![0x81; 10_000];
        assert!(check_dag_cbor(&deep).is_err());
    }
}
