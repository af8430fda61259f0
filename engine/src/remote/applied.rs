//! What the applier has carried out, persisted in `<data-dir>/apps-applied.json` so that a
//! restart or a re-delivery does not repeat a command: the highest command-event offset
//! handled per commanding source (the applier resubscribes above it) and, per subject (an app
//! or a settings scope), the `(lamport, source)` of the last command applied to it (an older
//! command, e.g. one that arrives late from the other side of a partition, is skipped: the
//! last command per app wins). Pure but for [`Applied::load`] and [`Applied::save`].
//!
//! Bounds: one offset per commanding source (at most the sources the node stores) and at most
//! [`MAX_SUBJECTS`] subjects (beyond, the one commanded longest ago is forgotten).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shoal_store::{OffsetMap, SourceId};

/// File name in the data dir.
pub const FILE: &str = "apps-applied.json";
/// Most subjects remembered.
pub const MAX_SUBJECTS: usize = 4096;

/// A command's place in the total event order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Stamp {
    pub lamport: u64,
    pub source: String,
}

/// What to do with a command event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Not handled yet and not older than the subject's last command: carry it out.
    Apply,
    /// At or below the offset handled for its source: handled already.
    Handled,
    /// Older than the last command applied to its subject: skip (record it handled).
    Superseded,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    offsets: BTreeMap<String, u64>,
    last: BTreeMap<String, Stamp>,
}

/// The file could not be written (the command was carried out; it may repeat after a restart).
#[derive(Debug, thiserror::Error)]
#[error("cannot save {path}")]
pub struct SaveError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

impl Applied {
    /// Reads the file; a missing one is a fresh start. A damaged one is logged and treated as
    /// a fresh start too: the commands are then carried out again in lamport order, which
    /// ends in the same state (every action is idempotent, the last per app wins).
    pub fn load(path: &Path) -> Applied {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e,
                    "the record of applied app commands is damaged; carrying them out again");
                Applied::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Applied::default(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e,
                    "cannot read the record of applied app commands; carrying them out again");
                Applied::default()
            }
        }
    }

    /// Writes the file atomically (temp file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<(), SaveError> {
        let fail = |source| SaveError {
            path: path.to_path_buf(),
            source,
        };
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(self).map_err(|e| fail(std::io::Error::other(e)))?;
        let mut f = std::fs::File::create(&tmp).map_err(fail)?;
        f.write_all(&bytes).map_err(fail)?;
        f.sync_all().map_err(fail)?;
        std::fs::rename(&tmp, path).map_err(fail)
    }

    /// Where the applier's subscription starts (exclusive).
    pub fn lower(&self) -> OffsetMap {
        self.offsets
            .iter()
            .map(|(s, &o)| (SourceId::new(s.clone()), o))
            .collect()
    }

    pub fn admit(&self, source: &str, offset: u64, stamp: &Stamp, subject: &str) -> Admit {
        if self.offsets.get(source).is_some_and(|&o| o >= offset) {
            return Admit::Handled;
        }
        match self.last.get(subject) {
            Some(last) if last >= stamp => Admit::Superseded,
            _ => Admit::Apply,
        }
    }

    /// The event `source/offset` was handled (applied, skipped or refused).
    pub fn handled(&mut self, source: &str, offset: u64) {
        let o = self.offsets.entry(source.to_string()).or_insert(offset);
        *o = (*o).max(offset);
    }

    /// A command was carried out on `subject`.
    pub fn applied(&mut self, subject: &str, stamp: Stamp) {
        self.last.insert(subject.to_string(), stamp);
        while self.last.len() > MAX_SUBJECTS {
            let oldest = self
                .last
                .iter()
                .min_by(|a, b| a.1.cmp(b.1))
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => self.last.remove(&k),
                None => break,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(lamport: u64, source: &str) -> Stamp {
        Stamp {
            lamport,
            source: source.into(),
        }
    }

    #[test]
    fn handled_offsets_are_not_applied_again() {
        let mut a = Applied::default();
        assert_eq!(a.admit("A", 0, &stamp(5, "A"), "app:x"), Admit::Apply);
        a.handled("A", 0);
        a.applied("app:x", stamp(5, "A"));
        assert_eq!(a.admit("A", 0, &stamp(5, "A"), "app:x"), Admit::Handled);
        assert_eq!(a.lower().get(&SourceId::new("A")), Some(0));
    }

    #[test]
    fn the_last_command_per_subject_wins() {
        let mut a = Applied::default();
        a.handled("B", 3);
        a.applied("app:x", stamp(10, "B"));
        // A command of A with a lower lamport, arriving later (after a partition healed).
        assert_eq!(a.admit("A", 0, &stamp(9, "A"), "app:x"), Admit::Superseded);
        // Same lamport: the source breaks the tie, as in the event order.
        assert_eq!(a.admit("C", 0, &stamp(10, "C"), "app:x"), Admit::Apply);
        // Another subject is not affected.
        assert_eq!(a.admit("A", 0, &stamp(9, "A"), "app:y"), Admit::Apply);
    }

    #[test]
    fn saved_and_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        assert_eq!(Applied::load(&path), Applied::default());
        let mut a = Applied::default();
        a.handled("A", 7);
        a.applied("app:x", stamp(3, "A"));
        a.save(&path).unwrap();
        assert_eq!(Applied::load(&path), a);
        std::fs::write(&path, b"{garbage").unwrap();
        assert_eq!(Applied::load(&path), Applied::default());
    }

    #[test]
    fn subjects_are_bounded() {
        let mut a = Applied::default();
        for i in 0..(MAX_SUBJECTS as u64 + 10) {
            a.applied(&format!("app:{i}"), stamp(i, "A"));
        }
        assert_eq!(a.last.len(), MAX_SUBJECTS);
        assert!(!a.last.contains_key("app:0"), "the oldest went first");
    }
}
