//! Large raw blocks as files beside the SQLite file, so their bytes hit the disk once.
//!
//! A block in SQLite's WAL mode is written twice (into the WAL, then by a checkpoint into the
//! database file), and the checkpoints that copy it park the writer, which also commits every
//! event append. So raw blocks of at least [`FILE_MIN`] bytes (blob chunks) keep only their
//! row in `cids` and a `files(id, size)` row in the database; their bytes live in
//! `<store file>.blocks/<first byte of the digest, hex>/<cid>`, written once. The anchor is
//! iroh-blobs' file store: small data inline in its database (up to 16 KiB), larger data as files
//! beside it, moved into place from a temp dir on the same filesystem.
//!
//! Bytes are written with `O_DIRECT` when the filesystem allows it, past the page cache
//! ([`write_flushed`]): copying a chunk into the page cache cost more CPU than hashing it.
//!
//! Crash safety: a file is written under `tmp/`, flushed (`fdatasync`), renamed to its final
//! name and its directory flushed, all before the transaction that records it commits; so a
//! file under its final name is always complete (kill -9 or power loss at any point), and a
//! committed `files` row always has its file. What a crash can leave behind is harmless: files
//! under `tmp/` (removed when the writer opens the store) and complete files without a row
//! (written for a batch that never committed, or whose row was deleted just before the
//! crash): each GC call sweeps one of the 256 directories for those, leaving files younger
//! than the GC grace period alone (a batch on its way to the writer).
//!
//! Invariant: a `files` row exists only when its file exists, complete, under its final name;
//! the writer checks the file again when it records the row (and writes it itself if it is
//! gone and it has the bytes; a staged block handed over without them fails its batch).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use rusqlite::{params, Connection, OptionalExtension};

use crate::cid::{Cid, RAW};
use crate::error::{Error, Result};

/// Raw blocks of at least this many bytes are stored as files (iroh-blobs inlines up to
/// 16 KiB too: below that, a file's create, flush and rename cost more than writing the bytes
/// twice).
pub const FILE_MIN: usize = 16 << 10;
/// Directories block files are spread over (by the first byte of their digest).
pub const FILE_DIRS: usize = 256;
/// Suffix of the block directory beside the store file (`store.sqlite.blocks`).
const DIR_SUFFIX: &str = ".blocks";
/// Where files are written before they are moved into place.
const TMP: &str = "tmp";

/// Is a block of `len` bytes under `cid` stored as a file (when the store is a file)?
pub(crate) fn is_file_block(cid: &Cid, len: usize) -> bool {
    cid.codec() == RAW && len >= FILE_MIN
}

/// The block directory of one store.
#[derive(Debug, Clone)]
pub(crate) struct BlockFiles {
    dir: PathBuf,
}

impl BlockFiles {
    /// The directory beside the store file `store`.
    pub(crate) fn beside(store: &Path) -> BlockFiles {
        let mut dir = store.as_os_str().to_owned();
        dir.push(DIR_SUFFIX);
        BlockFiles { dir: dir.into() }
    }

    /// The directory of the database `conn` has open; `None` for an in-memory database (its
    /// blocks stay inline).
    pub(crate) fn of(conn: &Connection) -> Option<BlockFiles> {
        conn.path()
            .filter(|p| !p.is_empty())
            .map(|p| BlockFiles::beside(Path::new(p)))
    }

    /// Final path of `cid`'s file.
    pub(crate) fn path(&self, cid: &Cid) -> PathBuf {
        let shard = cid.hash().digest().first().copied().unwrap_or(0);
        self.dir.join(format!("{shard:02x}")).join(cid.to_string())
    }

    /// Stores `data` (which hashes to `cid`) as `cid`'s file unless a complete one is there:
    /// written under `tmp/`, flushed, renamed into place, directory flushed.
    pub(crate) fn write(&self, cid: &Cid, data: &[u8]) -> Result<()> {
        let path = self.path(cid);
        if file_len(&path)? == Some(data.len() as u64) {
            return Ok(());
        }
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::BlockFile { path, source }
        };
        let tmp_dir = self.dir.join(TMP);
        let shard_dir = path.parent().unwrap_or(&self.dir).to_path_buf();
        ensure_dir(&self.dir, &tmp_dir)?;
        ensure_dir(&self.dir, &shard_dir)?;
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let tmp = tmp_dir.join(format!(
            "{cid}.{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        if let Err(e) = write_flushed(&tmp, data) {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(&tmp)(e));
        }
        if let Err(e) = std::fs::rename(&tmp, &path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(&path)(e));
        }
        sync_dir(&shard_dir)
    }

    /// Checks that `cid`'s file is there under its final name with `len` bytes: a file
    /// [`crate::Store::stage_block`] wrote, about to be recorded.
    pub(crate) fn check(&self, cid: &Cid, len: u64) -> Result<()> {
        let path = self.path(cid);
        match file_len(&path)? {
            Some(n) if n == len => Ok(()),
            found => Err(Error::BlockFile {
                path,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("a staged block file of {len} bytes is gone (found {found:?} bytes)"),
                ),
            }),
        }
    }

    /// The bytes of `cid`'s file, which the database says holds `size` bytes. `None` when the
    /// file is gone (deleted since the row was read, or lost); [`Error::Corrupt`] when its
    /// length is wrong.
    pub(crate) fn read(&self, cid: &Cid, size: i64) -> Result<Option<Vec<u8>>> {
        let path = self.path(cid);
        let data = match std::fs::read(&path) {
            Ok(data) => data,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(Error::BlockFile { path, source }),
        };
        if data.len() as i64 != size {
            return Err(wrong_length(cid, &path, data.len() as u64, size));
        }
        Ok(Some(data))
    }

    /// The bytes of `cid`'s file like [`BlockFiles::read`], for streaming them out: read with
    /// `O_DIRECT` straight from the disk into the buffer ([`read_direct`]). Block files are
    /// written past the page cache, so a buffered read of a fresh blob went to the disk one
    /// kernel read-ahead at a time, and copied what it read once more.
    pub(crate) fn read_bytes(&self, cid: &Cid, size: i64) -> Result<Option<bytes::Bytes>> {
        let path = self.path(cid);
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(Error::BlockFile { path, source }),
        };
        let len = file
            .metadata()
            .map_err(|source| Error::BlockFile {
                path: path.clone(),
                source,
            })?
            .len();
        if i64::try_from(len).ok() != Some(size) {
            return Err(wrong_length(cid, &path, len, size));
        }
        match read_direct(&file, len as usize) {
            Ok(data) if data.len() as u64 == len => Ok(Some(data)),
            Ok(data) => Err(Error::Corrupt {
                cid: *cid,
                reason: format!(
                    "its file {} ended after {} of {len} bytes",
                    path.display(),
                    data.len()
                ),
            }),
            Err(source) => Err(Error::BlockFile { path, source }),
        }
    }

    /// Removes `cid`'s file (after the transaction that deleted its row committed). A file
    /// that cannot be removed is left for the sweep.
    pub(crate) fn remove(&self, cid: &Cid) {
        let path = self.path(cid);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a block file")
            }
        }
    }

    /// Removes what interrupted writes left under `tmp/`. Only while no write can run: the
    /// writer calls it when it opens the store (it holds the store's writer lock, and blocks
    /// are written only for the writer's process).
    pub(crate) fn clear_tmp(&self) {
        let Ok(entries) = std::fs::read_dir(self.dir.join(TMP)) else {
            return;
        };
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }

    /// Removes the files of directory `shard` that have no `files` row and were written more
    /// than `grace` ago (see the module doc). Runs on the writer's connection, between its
    /// transactions. Returns (files, bytes) removed.
    pub(crate) fn sweep(
        &self,
        conn: &Connection,
        shard: u8,
        grace: Duration,
    ) -> Result<(u64, u64)> {
        let dir = self.dir.join(format!("{shard:02x}"));
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
            Err(source) => return Err(Error::BlockFile { path: dir, source }),
        };
        let cutoff = SystemTime::now()
            .checked_sub(grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut removed = (0, 0);
        let mut recorded = conn.prepare_cached(
            "SELECT 1 FROM cids JOIN files ON files.id = cids.id WHERE cids.cid = ?1",
        )?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(cid) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<Cid>().ok())
            else {
                continue; // not ours: leave it
            };
            let Ok(meta) = entry.metadata() else { continue };
            if meta.modified().map_or(true, |m| m > cutoff) {
                continue;
            }
            if recorded
                .query_row(params![cid.to_bytes()], |_| Ok(()))
                .optional()?
                .is_some()
            {
                continue;
            }
            if std::fs::remove_file(&path).is_ok() {
                removed.0 += 1;
                removed.1 += meta.len();
            }
        }
        if removed.0 > 0 {
            tracing::debug!(
                dir = %dir.display(),
                files = removed.0,
                bytes = removed.1,
                "removed block files without a row"
            );
        }
        Ok(removed)
    }
}

/// Alignment of `O_DIRECT` buffers and lengths (the largest logical block size in use).
pub const DIRECT_ALIGN: usize = 4096;
/// Cleared once a filesystem refused `O_DIRECT`: later writes go through the page cache at once.
static DIRECT: AtomicBool = AtomicBool::new(true);

/// Writes `data` to a new file at `path` and flushes it (`fdatasync`).
///
/// With `O_DIRECT`: the bytes go from `data` to the disk without being copied into the page
/// cache. That copy (and the page cache's allocation behind it) cost more CPU than hashing the
/// chunk (BENCHMARKS.md, "Blobs"), and blob chunks are written once and read rarely soon after
/// (a read of them is direct too, [`BlockFiles::read_bytes`]). `O_DIRECT` needs an
/// aligned buffer and length: `data` is used as it is when it starts on a [`DIRECT_ALIGN`]
/// boundary and its length is a multiple of it (an upload's chunks are cut into such buffers),
/// else copied into one, zero-padded and the file cut back to `data.len()` before the flush.
/// A filesystem without `O_DIRECT` (tmpfs before Linux 6.6, some FUSE ones) gets a buffered
/// write. Either way the bytes and the length are on the disk when this returns.
fn write_flushed(path: &Path, data: &[u8]) -> std::io::Result<()> {
    if DIRECT.load(Ordering::Relaxed) {
        match write_direct(path, data) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::info!(path = %path.display(), "no O_DIRECT here: block files are written through the page cache");
                DIRECT.store(false, Ordering::Relaxed);
            }
            done => return done,
        }
    }
    let mut f = std::fs::File::create(path)?;
    f.write_all(data)?;
    f.sync_data()
}

fn write_direct(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let padded = data.len().next_multiple_of(DIRECT_ALIGN);
    let copy;
    let aligned = if data.as_ptr().align_offset(DIRECT_ALIGN) == 0 && padded == data.len() {
        data
    } else {
        let mut buf: Vec<u8> = Vec::with_capacity(padded + DIRECT_ALIGN);
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
        buf.resize(start, 0);
        buf.extend_from_slice(data);
        buf.resize(start + padded, 0);
        copy = buf;
        &copy[start..]
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    f.write_all(aligned)?;
    if padded != data.len() {
        f.set_len(data.len() as u64)?;
    }
    f.sync_data()
}

/// Reads the `len` bytes of `file` into an aligned buffer with `O_DIRECT` set on the
/// descriptor, so the disk writes into the buffer with no copy and nothing is left in the page
/// cache (as [`write_flushed`] leaves nothing). No probe of the page cache first: a buffered
/// probe (`preadv2` with `RWF_NOWAIT`) starts the kernel's read-ahead when it misses, and the
/// first read of a fresh blob then read the disk twice. A filesystem without `O_DIRECT` gets
/// a buffered read. Returns what was read: shorter than `len` if the file was cut meanwhile.
fn read_direct(file: &std::fs::File, len: usize) -> std::io::Result<bytes::Bytes> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let padded = len.next_multiple_of(DIRECT_ALIGN);
    let mut buf: Vec<u8> = Vec::with_capacity(padded + DIRECT_ALIGN);
    let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
    // SAFETY (every `unsafe` below): the reads write into `buf`'s spare capacity
    // `start .. start + padded` (reserved by `with_capacity`), `set_len` covers only bytes a
    // read filled, and the `fcntl`s only change the flags of a descriptor `file` owns.
    let base = unsafe { buf.as_mut_ptr().add(start) };
    let mut done = 0;
    let mut direct = DIRECT.load(Ordering::Relaxed) && set_direct(fd, true);
    while done < len {
        // With O_DIRECT whole aligned blocks (the last one comes back short at the end of the
        // file); without, exactly what is left.
        let want = if direct { padded - done } else { len - done };
        let n = unsafe { libc::pread(fd, base.add(done).cast(), want, done as libc::off_t) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EINVAL) if direct => {
                    tracing::info!(
                        "no O_DIRECT reads here: block files are read through the page cache"
                    );
                    DIRECT.store(false, Ordering::Relaxed);
                    direct = false;
                    set_direct(fd, false);
                    continue;
                }
                _ => return Err(e),
            }
        }
        if n == 0 {
            break;
        }
        done += n as usize;
    }
    let done = done.min(len);
    unsafe { buf.set_len(start + done) };
    Ok(bytes::Bytes::from(buf).slice(start..))
}

/// Sets or clears `O_DIRECT` on an open descriptor; `false` when the filesystem refuses it.
fn set_direct(fd: std::os::fd::RawFd, on: bool) -> bool {
    // SAFETY: plain syscalls on a descriptor the caller owns; no memory is passed.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        let want = if on {
            flags | libc::O_DIRECT
        } else {
            flags & !libc::O_DIRECT
        };
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, want) == 0
    }
}

/// A block file whose length is not the `size` its row records.
fn wrong_length(cid: &Cid, path: &Path, len: u64, size: i64) -> Error {
    Error::Corrupt {
        cid: *cid,
        reason: format!(
            "its file {} holds {len} bytes, the store recorded {size}",
            path.display()
        ),
    }
}

/// Length of the file at `path`, `None` if there is none.
fn file_len(path: &Path) -> Result<Option<u64>> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(m.len())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::BlockFile {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Creates `dir` (inside `root`, creating `root` too) if it does not exist; a new directory's
/// entry is flushed in its parent, so files renamed into it survive a power loss.
fn ensure_dir(root: &Path, dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let err = |source| Error::BlockFile {
        path: dir.to_path_buf(),
        source,
    };
    if !root.is_dir() {
        std::fs::create_dir_all(root).map_err(err)?;
        if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    match std::fs::create_dir(dir) {
        Ok(()) => sync_dir(root),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(err(e)),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| Error::BlockFile {
            path: dir.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use crate::blob::{self, BlobMeta, Builder};
    use crate::cid::{cid_of, RAW};
    use crate::inspect::ProblemKind;
    use crate::{Store, StoreConfig};

    use super::*;

    /// Puts `data` as a blob of 64 KiB chunks (files) through the writer, as the engine does:
    /// chunks staged off the writer first, then one batch and the commit.
    fn put_blob(store: &Store, w: &mut crate::Writer, data: &[u8], id: &str) -> Cid {
        let mut builder = Builder::new();
        let mut blocks = Vec::new();
        for chunk in data.chunks(64 << 10) {
            let cid = cid_of(RAW, chunk);
            store.stage_block(&cid, chunk).unwrap();
            blocks.extend(builder.push_chunk(cid, chunk.len() as u64).unwrap());
            blocks.push((cid, chunk.to_vec()));
        }
        let refs: Vec<(Cid, &[u8])> = blocks.iter().map(|(c, d)| (*c, d.as_slice())).collect();
        blob::put_hashed(w, &refs, Some((id, None))).unwrap();
        let (root, size, last) = builder.finish().unwrap();
        let meta = BlobMeta {
            cid: root,
            size,
            name: None,
            mime: None,
        };
        blob::commit_upload(w, id, &last, &meta).unwrap();
        root
    }

    /// Pseudo-random bytes (xorshift): no two chunks alike.
    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut x = 0x2545_F491_4F6C_DD1D ^ seed;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn count(store: &Store, table: &str) -> i64 {
        store
            .reader()
            .unwrap()
            .lock()
            .unwrap()
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    /// Large chunks are files, small ones and link blocks rows; reads, stats and verify see
    /// one store; delete removes the files.
    #[test]
    fn large_raw_blocks_are_files_and_one_store_reads_verifies_and_deletes_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let store = Store::open(&path, StoreConfig::debug()).unwrap();
        let mut w = store.writer().unwrap();
        blob::init(&mut w).unwrap();
        // Two full 64 KiB chunks (files) and a 100-byte tail (inline).
        let data = bytes((128 << 10) + 100, 7);
        let root = put_blob(&store, &mut w, &data, "a");
        assert_eq!(count(&store, "files"), 2);
        let files = BlockFiles::beside(&path);
        let first = cid_of(RAW, &data[..64 << 10]);
        assert!(files.path(&first).is_file());
        let r = store.reader().unwrap();
        assert_eq!(r.get_block(&first).unwrap().unwrap(), &data[..64 << 10]);
        assert!(r.has_block(&first).unwrap());
        assert!(blob::complete(&r, &root).unwrap());
        let stats = r.stats().unwrap();
        assert_eq!((stats.file_blocks, stats.file_bytes), (2, 128 << 10));
        assert!(stats.blocks >= 4, "two files, the tail, the root");
        let report = r.verify().unwrap();
        assert!(report.is_sound(), "{:?}", report.problems);

        let root_bytes = r.get_block(&root).unwrap().unwrap().len() as u64;
        let freed = blob::delete(&mut w, &root).unwrap().unwrap();
        assert_eq!(freed.bytes, data.len() as u64 + root_bytes);
        assert_eq!(count(&store, "files"), 0);
        assert!(!files.path(&first).exists(), "the file went with its row");
    }

    /// A damaged or lost block file is reported by verify (not a crash, not a pass); a re-put
    /// of the same bytes repairs a lost one.
    #[test]
    fn verify_reports_a_damaged_or_lost_file_and_a_re_put_repairs_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let store = Store::open(&path, StoreConfig::debug()).unwrap();
        let mut w = store.writer().unwrap();
        blob::init(&mut w).unwrap();
        let data = bytes(192 << 10, 9);
        put_blob(&store, &mut w, &data, "a");
        let files = BlockFiles::beside(&path);
        let c0 = cid_of(RAW, &data[..64 << 10]);
        let c1 = cid_of(RAW, &data[64 << 10..128 << 10]);
        let c2 = cid_of(RAW, &data[128 << 10..]);
        std::fs::write(files.path(&c0), vec![0u8; 64 << 10]).unwrap(); // same length
        std::fs::write(files.path(&c1), b"short").unwrap();
        std::fs::remove_file(files.path(&c2)).unwrap();
        let report = store.reader().unwrap().verify().unwrap();
        let kinds: std::collections::HashMap<Cid, ProblemKind> = report
            .problems
            .iter()
            .map(|p| (p.cid, p.kind.clone()))
            .collect();
        assert_eq!(kinds.get(&c0), Some(&ProblemKind::HashMismatch));
        assert!(matches!(kinds.get(&c1), Some(ProblemKind::Corrupt(_))));
        assert_eq!(kinds.get(&c2), Some(&ProblemKind::Missing));
        assert_eq!(report.problems.len(), 3);
        // The lost file comes back with a re-put of the same bytes (no staging: the writer
        // writes it itself).
        blob::put_hashed(&mut w, &[(c2, &data[128 << 10..])], None).unwrap();
        assert_eq!(
            store.reader().unwrap().get_block(&c2).unwrap().unwrap(),
            &data[128 << 10..]
        );
    }

    /// What a crash leaves (a half-written temp file, a staged file never recorded) goes: the
    /// temp file when the writer opens the store, the orphan with GC's sweep; a recorded
    /// file stays.
    #[test]
    fn temp_files_and_orphans_are_removed_and_recorded_files_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let data = bytes(64 << 10, 3);
        let orphan = bytes(64 << 10, 4);
        let files = BlockFiles::beside(&path);
        {
            let store = Store::open(&path, StoreConfig::debug()).unwrap();
            let mut w = store.writer().unwrap();
            blob::init(&mut w).unwrap();
            put_blob(&store, &mut w, &data, "a");
            store.stage_block(&cid_of(RAW, &orphan), &orphan).unwrap();
        }
        std::fs::write(files.dir.join(TMP).join("torn"), b"half").unwrap();
        let store = Store::open(&path, StoreConfig::debug()).unwrap();
        let mut w = store.writer().unwrap();
        assert!(
            !files.dir.join(TMP).join("torn").exists(),
            "tmp cleared on open"
        );
        let orphan_path = files.path(&cid_of(RAW, &orphan));
        assert!(orphan_path.exists());
        // Let the orphan age past the (zero) grace period, then sweep every directory.
        std::thread::sleep(Duration::from_millis(20));
        let mut swept = 0;
        for _ in 0..FILE_DIRS {
            swept += w.gc(1000).unwrap().files_swept;
        }
        assert_eq!(swept, 1);
        assert!(!orphan_path.exists());
        assert!(
            files.path(&cid_of(RAW, &data)).exists(),
            "recorded file kept"
        );
        assert!(store.reader().unwrap().verify().unwrap().is_sound());
    }

    /// Block files hold exactly the block's bytes whatever the buffer: aligned or not, a
    /// length that is a multiple of the `O_DIRECT` alignment or not (padded, then cut back).
    #[test]
    fn files_hold_exact_bytes_from_aligned_and_unaligned_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let files = BlockFiles::beside(&dir.path().join("s.sqlite"));
        let data = bytes((64 << 10) + 2 * DIRECT_ALIGN, 5);
        let start = data.as_ptr().align_offset(DIRECT_ALIGN);
        for (from, len) in [
            (start, 64 << 10),           // aligned start and length: no copy
            (start + 1, 64 << 10),       // unaligned start
            (start, (20 << 10) + 123),   // aligned start, odd length
            (start + 7, (16 << 10) + 1), // neither
        ] {
            let block = &data[from..from + len];
            let cid = cid_of(RAW, block);
            files.write(&cid, block).unwrap();
            assert_eq!(
                std::fs::read(files.path(&cid)).unwrap(),
                block,
                "{from} {len}"
            );
            files.check(&cid, len as u64).unwrap();
        }
    }

    /// A streamed read returns exactly the file's bytes whether they were written past the page
    /// cache (`O_DIRECT`) or through it, for lengths that are a multiple of
    /// the alignment or not; a gone file is absent, a file of the wrong length corrupt.
    #[test]
    fn streamed_reads_return_exact_bytes_however_written() {
        let dir = tempfile::tempdir().unwrap();
        let files = BlockFiles::beside(&dir.path().join("s.sqlite"));
        for (i, len) in [64 << 10, (20 << 10) + 123, 1 << 20]
            .into_iter()
            .enumerate()
        {
            let data = bytes(len, 20 + i as u64);
            let cid = cid_of(RAW, &data);
            files.write(&cid, &data).unwrap(); // past the page cache
            let got = files.read_bytes(&cid, len as i64).unwrap().unwrap();
            assert_eq!(&got[..], &data[..], "direct {len}");
            std::fs::write(files.path(&cid), &data).unwrap(); // through the page cache
            let got = files.read_bytes(&cid, len as i64).unwrap().unwrap();
            assert_eq!(&got[..], &data[..], "cached {len}");
            assert!(matches!(
                files.read_bytes(&cid, len as i64 + 1),
                Err(Error::Corrupt { .. })
            ));
            std::fs::remove_file(files.path(&cid)).unwrap();
            assert!(files.read_bytes(&cid, len as i64).unwrap().is_none());
        }
    }

    /// A staged block whose file is gone fails its batch, and nothing of it is stored.
    #[test]
    fn a_staged_block_without_its_file_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let store = Store::open(&path, StoreConfig::debug()).unwrap();
        let mut w = store.writer().unwrap();
        blob::init(&mut w).unwrap();
        let (a, b) = (bytes(64 << 10, 1), bytes(64 << 10, 2));
        let (ca, cb) = (cid_of(RAW, &a), cid_of(RAW, &b));
        assert!(store.stage_block(&ca, &a).unwrap());
        assert!(store.stage_block(&cb, &b).unwrap());
        assert!(!store.stage_block(&ca, &a[..100]).unwrap(), "small: inline");
        std::fs::remove_file(BlockFiles::beside(&path).path(&cb)).unwrap();
        let staged = [(ca, a.len() as u64), (cb, b.len() as u64)];
        assert!(blob::put_staged(&mut w, &staged, &[], Some(("u", None))).is_err());
        assert_eq!(count(&store, "files"), 0);
        assert_eq!(blocks_upload_pins(&store), 0);
        blob::put_staged(&mut w, &staged[..1], &[], Some(("u", None))).unwrap();
        assert_eq!(count(&store, "files"), 1);
        assert_eq!(store.reader().unwrap().get_block(&ca).unwrap().unwrap(), a);
    }

    fn blocks_upload_pins(store: &Store) -> i64 {
        store
            .reader()
            .unwrap()
            .lock()
            .unwrap()
            .query_row(
                "SELECT count(*) FROM aliases WHERE name LIKE 'blob-upload/%'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    }

    /// A store of schema 1 (no `files` table) opens read-only, e.g. for `shoal store verify`
    /// before a new node has written it.
    #[test]
    fn a_schema_1_store_reads_without_the_files_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        {
            let store = Store::open(&path, StoreConfig::debug()).unwrap();
            let _w = store.writer().unwrap();
        }
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch("DROP TABLE files; PRAGMA user_version = 1;")
                .unwrap();
        }
        let store = Store::open_read_only(&path).unwrap();
        let r = store.reader().unwrap();
        assert!(r.verify().unwrap().is_sound());
        assert_eq!(r.stats().unwrap().file_blocks, 0);
    }
}
