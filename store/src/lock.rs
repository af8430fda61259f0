//! [`WriterLock`]: at most one process writes a store file.
//!
//! Why (issue 19): two `shoal run` on one data dir both started, both printed the same source
//! id, and acknowledged events were lost. SQLite serialises the two processes' transactions,
//! but not what each writer keeps in memory across them (the next offset, the Lamport clock,
//! the cached tree of each source): each appended on top of its own idea of the tree, so one
//! process's commit replaced the other's acknowledged events, and both handed out lamport 1.
//! `shoal store gc` run against a live node raced the node's writer the same way.
//!
//! How: [`Store::open`](crate::Store::open) takes an exclusive advisory lock (`flock(2)`, through
//! std's `File::try_lock`) on `<store file>.lock` before its first write, and the store's one
//! [`Writer`](crate::Writer) holds it until it is dropped. Taking it never waits: a second
//! process is refused at once with [`Error::Locked`], naming the holder's pid, which the holder
//! writes into the file after taking the lock. The kernel releases the lock when the holder's
//! file is closed, however the process ends (`kill -9` included), so a crash never leaves a
//! data dir locked: the file stays behind, and only the lock on it counts. Read-only opens take
//! no lock (WAL readers never disturb the writer), so the inspector's read commands work on a
//! live node.
//!
//! Limits: the lock is advisory (only shoal's own writers take it), and `flock` over network
//! file systems may not be shared between machines: a data dir is local to one device.

use std::{
    fs::{File, OpenOptions, TryLockError},
    io::{Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
};

use crate::error::{Error, Result};

/// Suffix of the lock file beside the store file (`store.sqlite` → `store.sqlite.lock`).
pub const LOCK_SUFFIX: &str = ".lock";

/// How often, and how long apart, a lock held under this process's own pid is tried again
/// (see `acquire`): a fork-to-exec window lasts microseconds to milliseconds.
const OWN_PID_TRIES: u32 = 50;
const OWN_PID_RETRY: std::time::Duration = std::time::Duration::from_millis(20);

/// The held lock; released when dropped (the file is closed) or when the process ends.
#[derive(Debug)]
pub(crate) struct WriterLock {
    /// Kept open: closing it releases the lock.
    _file: File,
}

impl WriterLock {
    /// Takes the lock of the store at `store_path`, or fails at once with [`Error::Locked`]
    /// when another open file holds it (another process, or another open of the same store in
    /// this process).
    pub(crate) fn acquire(store_path: &Path) -> Result<WriterLock> {
        let path = lock_path(store_path);
        // Not truncated on open: the holder's pid must stay readable for the refused process.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let mut tries = 0;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {
                    let pid = holder_pid(&mut file);
                    // Held under our own pid: this process let go of it, but a child that
                    // another thread is spawning may still hold a copy of the descriptor
                    // between its fork and exec (close-on-exec drops it then). Wait for that.
                    if pid == Some(std::process::id()) && tries < OWN_PID_TRIES {
                        tries += 1;
                        std::thread::sleep(OWN_PID_RETRY);
                        continue;
                    }
                    return Err(Error::Locked { pid, path });
                }
                Err(TryLockError::Error(e)) => return Err(Error::Io(e)),
            }
        }
        // Ours now: replace the previous holder's pid with ours. A process refused between the
        // truncate and the write reads no pid and says so; it is never shown a wrong one.
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        writeln!(file, "{}", std::process::id())?;
        Ok(WriterLock { _file: file })
    }
}

/// `<store file>.lock`.
pub(crate) fn lock_path(store_path: &Path) -> PathBuf {
    let mut name = store_path.as_os_str().to_os_string();
    name.push(LOCK_SUFFIX);
    PathBuf::from(name)
}

/// The pid the holder wrote, if it is readable yet.
fn holder_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    // A pid is a few digits; never read more than a line's worth from a file anyone can write.
    file.take(64).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Store, StoreConfig};

    #[test]
    fn a_second_writer_is_refused_and_told_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let first = Store::open(&path, StoreConfig::debug()).unwrap();
        let writer = first.writer().unwrap();
        match Store::open(&path, StoreConfig::debug()) {
            Err(Error::Locked { pid, path: locked }) => {
                assert_eq!(pid, Some(std::process::id()));
                assert_eq!(locked, dir.path().join("s.sqlite.lock"));
            }
            other => panic!("second open should be refused, got {other:?}"),
        }
        // Readers are never refused.
        let ro = Store::open_read_only(&path).unwrap();
        assert!(ro.reader().unwrap().sources().unwrap().is_empty());
        // The writer holds the lock even after its store is gone; dropping it releases it.
        drop(first);
        assert!(matches!(
            Store::open(&path, StoreConfig::debug()),
            Err(Error::Locked { .. })
        ));
        drop(writer);
        let again = Store::open(&path, StoreConfig::debug()).unwrap();
        again.writer().unwrap();
    }

    #[test]
    fn an_untaken_writer_keeps_the_lock_with_its_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let first = Store::open(&path, StoreConfig::debug()).unwrap();
        assert!(matches!(
            Store::open(&path, StoreConfig::debug()),
            Err(Error::Locked { .. })
        ));
        drop(first);
        Store::open(&path, StoreConfig::debug()).unwrap();
    }

    #[test]
    fn a_stale_lock_file_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        // Left behind by a killed process: a pid, but nobody holds the lock.
        std::fs::write(lock_path(&path), "4194303\n").unwrap();
        let store = Store::open(&path, StoreConfig::debug()).unwrap();
        let text = std::fs::read_to_string(lock_path(&path)).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        drop(store);
    }
}
