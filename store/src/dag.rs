//! Whole DAGs in and out of the store as CAR v1 files (`shoal store export` / `import`, the
//! `ipfs dag export` / `ipfs dag import` format; the codec is `car.rs`).
//!
//! - [`export`] writes the DAGs under the given roots from the store: the header names the
//!   roots, then every block reachable from them exactly once, each block before its children
//!   (depth first; dag-pb links in order, dag-cbor links in CID order), whatever the codec
//!   (dag-cbor, dag-pb, raw).
//! - [`import`] reads a CAR file twice: first it checks everything (every block hashes to its
//!   CID, only CIDs the store accepts, well-formed dag-cbor and dag-pb, every root's DAG complete
//!   in the file and the store together) and writes nothing; then it stores the blocks in
//!   batches and pins each root in one last transaction. A root that is a blob (a raw block or a
//!   UnixFS file node) is pinned as `blob/<cid>` with its size in `blob_meta` (so the blob API
//!   serves and lists it); any other root as `car/<cid>`. Bad input changes nothing; a failure
//!   in the second pass (a full disk) leaves only unpinned blocks, which GC collects.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};

use crate::blob::{self, BlobMeta, BlobRoot};
use crate::car::{CarError, CarReader, CarWriter};
use crate::cid::{Cid, RAW};
use crate::error::Error;
use crate::log::{Reader, Writer};
use crate::{blocks, schema::now_secs};

/// Alias prefix of imported roots that are not blobs.
pub const CAR_PREFIX: &str = "car/";
/// Bytes of blocks stored in one transaction by [`import`].
const IMPORT_BATCH: usize = 8 << 20;

/// Why an export or import failed.
#[derive(Debug, thiserror::Error)]
pub enum DagError {
    #[error(transparent)]
    Car(#[from] CarError),
    #[error(transparent)]
    Store(#[from] Error),
    #[error("block {0} is not in this store (the DAG is incomplete here)")]
    Missing(Cid),
    #[error("root {root} is incomplete: {missing} block(s) below it are neither in the file nor in the store (first: {first})")]
    Incomplete {
        /// Boxed to keep the error small (it travels in every `Result`).
        root: Box<Cid>,
        missing: usize,
        first: Box<Cid>,
    },
    #[error("the file changed between reading and importing it: {0}")]
    Changed(String),
    #[error("a CAR file names no root")]
    NoRoots,
}

/// What an export or import moved.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Moved {
    pub blocks: u64,
    pub bytes: u64,
}

/// What an import pinned, per root.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Pinned {
    #[serde(serialize_with = "crate::cid::serialize")]
    pub root: Cid,
    /// `blob/<cid>` or `car/<cid>`.
    pub pin: String,
    /// The blob's bytes, for a blob.
    pub size: Option<u64>,
}

/// Writes the DAGs under `roots` to `out` as a CAR v1 stream (see the module doc). `progress`
/// is called after each block with the block's length.
pub fn export<W: Write>(
    reader: &Reader,
    roots: &[Cid],
    out: W,
    mut progress: impl FnMut(u64),
) -> Result<(W, Moved), DagError> {
    if roots.is_empty() {
        return Err(DagError::NoRoots);
    }
    let mut car = CarWriter::new(out, roots)?;
    let mut seen: HashSet<Cid> = HashSet::new();
    let mut moved = Moved::default();
    // Depth first, children in link order: pushed in reverse.
    let mut stack: Vec<Cid> = roots.iter().rev().copied().collect();
    while let Some(cid) = stack.pop() {
        if !seen.insert(cid) {
            continue;
        }
        let data = reader.get_block(&cid)?.ok_or(DagError::Missing(cid))?;
        car.block(&cid, &data)?;
        moved.blocks += 1;
        moved.bytes += data.len() as u64;
        progress(data.len() as u64);
        if cid.codec() != RAW {
            let children = ordered_links(&cid, &data)?;
            stack.extend(children.into_iter().rev().filter(|c| !seen.contains(c)));
        }
    }
    Ok((car.finish()?, moved))
}

/// Links of a block in the order they appear (for dag-pb: link order; dag-cbor: sorted).
fn ordered_links(cid: &Cid, data: &[u8]) -> Result<Vec<Cid>, Error> {
    if cid.codec() == crate::cid::DAG_PB {
        return crate::dagpb::PbNode::decode(data)
            .map(|n| n.links.into_iter().map(|l| l.hash).collect())
            .map_err(|reason| Error::Corrupt { cid: *cid, reason });
    }
    blocks::links(cid, data)
}

/// Imports a CAR v1 file (see the module doc). `open` opens the file (it is read twice);
/// `progress` is called with the bytes of the file consumed, once per block of each pass.
pub fn import<R: Read>(
    w: &mut Writer,
    mut open: impl FnMut() -> std::io::Result<R>,
    mut progress: impl FnMut(u64),
) -> Result<(Moved, Vec<Pinned>), DagError> {
    blob::init(w)?;
    // Pass 1: check everything, write nothing.
    let mut car = CarReader::new(open().map_err(CarError::Io)?)?;
    let roots = car.roots().to_vec();
    if roots.is_empty() {
        return Err(DagError::NoRoots);
    }
    let mut in_file: HashSet<Cid> = HashSet::new();
    let mut links: HashMap<Cid, Vec<Cid>> = HashMap::new();
    let mut moved = Moved::default();
    let mut at = car.bytes();
    while let Some((cid, data)) = car.next_block()? {
        if cid.codec() != RAW {
            let children = blocks::links(&cid, &data)?;
            if !children.is_empty() {
                links.insert(cid, children);
            }
        }
        if in_file.insert(cid) {
            moved.blocks += 1;
            moved.bytes += data.len() as u64;
        }
        progress(car.bytes() - at);
        at = car.bytes();
    }
    {
        let r = w.reader();
        for root in &roots {
            check_complete(&r, root, &in_file, &links)?;
        }
    }
    drop(links);
    // Pass 2: store in batches, then pin.
    let mut car = CarReader::new(open().map_err(CarError::Io)?)?;
    if car.roots() != roots.as_slice() {
        return Err(DagError::Changed("other roots".into()));
    }
    let mut batch: Vec<(Cid, Vec<u8>)> = Vec::new();
    let mut batch_bytes = 0;
    let mut at = car.bytes();
    while let Some((cid, data)) = car.next_block()? {
        if !in_file.contains(&cid) {
            return Err(DagError::Changed(format!(
                "block {cid} was not there before"
            )));
        }
        batch_bytes += data.len();
        batch.push((cid, data));
        if batch_bytes >= IMPORT_BATCH {
            store_batch(w, &mut batch)?;
            batch_bytes = 0;
        }
        progress(car.bytes() - at);
        at = car.bytes();
    }
    store_batch(w, &mut batch)?;
    let pinned = pin_roots(w, &roots)?;
    Ok((moved, pinned))
}

/// Every block below `root` is in the file or in the store (a link to a block that only the
/// store holds counts when the store holds its whole DAG).
fn check_complete(
    r: &Reader,
    root: &Cid,
    in_file: &HashSet<Cid>,
    links: &HashMap<Cid, Vec<Cid>>,
) -> Result<(), DagError> {
    let mut missing: Vec<Cid> = Vec::new();
    let mut seen: HashSet<Cid> = HashSet::new();
    let mut stack = vec![*root];
    while let Some(cid) = stack.pop() {
        if !seen.insert(cid) {
            continue;
        }
        if in_file.contains(&cid) {
            if let Some(children) = links.get(&cid) {
                stack.extend(children.iter().copied());
            }
            continue;
        }
        let conn = blob::lock(&r.conn)?;
        missing.extend(blocks::missing(&conn, &cid)?);
    }
    match missing.first() {
        None => Ok(()),
        Some(first) => Err(DagError::Incomplete {
            root: Box::new(*root),
            missing: missing.len(),
            first: Box::new(*first),
        }),
    }
}

fn store_batch(w: &mut Writer, batch: &mut Vec<(Cid, Vec<u8>)>) -> Result<(), DagError> {
    if batch.is_empty() {
        return Ok(());
    }
    let refs: Vec<(Cid, &[u8])> = batch.iter().map(|(c, d)| (*c, d.as_slice())).collect();
    blob::put_hashed(w, &refs, None)?;
    batch.clear();
    Ok(())
}

/// Pins every root in one transaction: blobs as `blob/<cid>` (with a `blob_meta` row), others
/// as `car/<cid>`.
fn pin_roots(w: &mut Writer, roots: &[Cid]) -> Result<Vec<Pinned>, DagError> {
    let conn = w.reader().conn;
    let mut conn = blob::lock(&conn)?;
    let tx = conn.transaction().map_err(Error::from)?;
    let now = now_secs();
    let mut out = Vec::new();
    for root in roots {
        let data = blocks::get(&tx, root)?.ok_or(DagError::Missing(*root))?;
        let pinned = match BlobRoot::decode(root, &data) {
            Ok(blob_root) => {
                let meta = BlobMeta {
                    cid: *root,
                    size: blob_root.size(),
                    name: None,
                    mime: None,
                };
                blob::pin_local(&tx, &meta, now)?;
                Pinned {
                    root: *root,
                    pin: format!("{}{root}", blob::PIN_PREFIX),
                    size: Some(meta.size),
                }
            }
            Err(_) => {
                let name = format!("{CAR_PREFIX}{root}");
                blob::set_alias_quietly(&tx, &name, Some(root), now)?;
                Pinned {
                    root: *root,
                    pin: name,
                    size: None,
                }
            }
        };
        if !out.contains(&pinned) {
            out.push(pinned);
        }
    }
    tx.commit().map_err(Error::from)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cid::{cid_of, DAG_CBOR};
    use crate::{Store, StoreConfig};
    use libipld::{cbor::DagCborCodec, codec::Codec, Ipld};

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.sqlite"), StoreConfig::debug()).unwrap();
        (dir, store)
    }

    /// A dag-cbor block listing `children`.
    fn list(children: &[Cid]) -> (Cid, Vec<u8>) {
        let links = children
            .iter()
            .map(|c| Ipld::Link(crate::cid::to_ipld(c).unwrap()))
            .collect();
        let data = DagCborCodec.encode(&Ipld::List(links)).unwrap();
        (cid_of(DAG_CBOR, &data), data)
    }

    fn block_count(store: &Store) -> i64 {
        let r = store.reader().unwrap();
        let conn = r.conn.lock().unwrap();
        conn.query_row("SELECT count(*) FROM blocks", [], |x| x.get(0))
            .unwrap()
    }

    /// A dag-cbor DAG (no blob) goes out and in again, each block once, pinned as `car/<cid>`;
    /// a file whose root is incomplete imports nothing.
    #[test]
    fn a_dag_cbor_dag_round_trips_and_an_incomplete_one_imports_nothing() {
        let (_a_dir, a) = store();
        let mut wa = a.writer().unwrap();
        blob::init(&mut wa).unwrap();
        let (x, y) = (cid_of(RAW, b"x"), cid_of(RAW, b"y"));
        let (inner, inner_data) = list(&[y, x]);
        let (root, root_data) = list(&[x, inner]);
        let blocks: Vec<(Cid, &[u8])> = vec![
            (x, b"x"),
            (y, b"y"),
            (inner, &inner_data),
            (root, &root_data),
        ];
        blob::put_hashed(&mut wa, &blocks, None).unwrap();
        let (car, moved) = export(&a.reader().unwrap(), &[root], Vec::new(), |_| {}).unwrap();
        assert_eq!(moved.blocks, 4, "x once, though linked twice");
        let mut reader = CarReader::new(&car[..]).unwrap();
        assert_eq!(reader.roots(), &[root]);
        assert_eq!(
            reader.next_block().unwrap().unwrap().0,
            root,
            "the root first"
        );

        let (_b_dir, b) = store();
        let mut wb = b.writer().unwrap();
        let (_, pinned) = import(&mut wb, || Ok(&car[..]), |_| {}).unwrap();
        assert_eq!(pinned.len(), 1);
        assert_eq!(pinned[0].pin, format!("car/{root}"));
        assert_eq!(pinned[0].size, None);
        let rb = b.reader().unwrap();
        assert_eq!(rb.alias(&format!("car/{root}")).unwrap(), Some(root));
        assert_eq!(block_count(&b), 4);

        // Without `y`: refused, nothing stored.
        let mut partial = CarWriter::new(Vec::new(), &[root]).unwrap();
        for (cid, data) in [(root, &root_data[..]), (inner, &inner_data), (x, b"x")] {
            partial.block(&cid, data).unwrap();
        }
        let partial = partial.finish().unwrap();
        let (_c_dir, c) = store();
        let mut wc = c.writer().unwrap();
        match import(&mut wc, || Ok(&partial[..]), |_| {}) {
            Err(DagError::Incomplete { first, .. }) => assert_eq!(*first, y),
            other => panic!("{other:?}"),
        }
        assert_eq!(block_count(&c), 0);
        // Into a store that has `y`'s DAG already, the same file is complete.
        blob::put_hashed(&mut wc, &[(y, b"y")], None).unwrap();
        import(&mut wc, || Ok(&partial[..]), |_| {}).unwrap();
        // A root the store lacks cannot be exported.
        assert!(matches!(
            export(
                &c.reader().unwrap(),
                &[cid_of(RAW, b"z")],
                Vec::new(),
                |_| {}
            ),
            Err(DagError::Missing(_))
        ));
    }
}
