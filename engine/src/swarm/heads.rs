//! The head book: per source, the newest verified head heard of (*known*) and the head whose
//! tree is stored here (*stored*, what digest answers carry). It is the one place these live:
//! the swarm task owns it; the replicator learns of heads through `Event::Head` and reports a
//! finished import with `Command::Stored`; node info reads the known offsets from the swarm's
//! published `NetworkState`.
//!
//! The store keeps each source's root but not the signature over it, so the book is saved to
//! `<data-dir>/swarm-heads` (written atomically, at most once per [`SAVE_PERIOD`]) and read back
//! at start: a stored head whose offset is still the store's is served again; a known head
//! beyond the store is handed to the replicator to resume its sync. File layout: a sequence of
//! `kind: u8` (0 stored, 1 known), `len: u16` BE, `len` bytes of an encoded `SignedHead`.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use shoal_store::{OffsetMap, SourceId};

use crate::head::SignedHead;

/// Sources the book keeps at most. Every source costs memory here, in the replicator, in the
/// node's network state, a line in the heads file and a digest entry; a peer holding the swarm
/// key could invent sources without end (issue 12 item 3). When the book is full, a new source
/// takes the place of the source known longest whose tree was never stored here (a claim
/// nobody could back with blocks, as invented sources are); when every source is stored, heads
/// of further sources are dropped (a real swarm of shop-floor devices is far smaller).
pub const MAX_SOURCES: usize = 10_000;

/// File name inside the data dir.
pub const FILE: &str = "swarm-heads";
/// The file is rewritten at most this often.
pub const SAVE_PERIOD: Duration = Duration::from_secs(1);

const STORED: u8 = 0;
const KNOWN: u8 = 1;

/// Known and stored heads per source (see the module doc).
#[derive(Default)]
pub(crate) struct HeadBook {
    known: HashMap<PeerId, SignedHead>,
    stored: HashMap<PeerId, SignedHead>,
    /// Sources in the order they became known: the front is given up first when the book is
    /// full (entries stored since are skipped and dropped on the way).
    arrivals: VecDeque<PeerId>,
    file: Option<PathBuf>,
    dirty: bool,
    saved: Option<Instant>,
}

/// What [`HeadBook::make_room_for`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Room {
    /// The source may be kept.
    Free,
    /// The source may be kept in the place of this one, forgotten now.
    Forgot(PeerId),
    /// Every place is held by a stored source.
    Full,
}

pub(crate) fn source_id(peer: &PeerId) -> SourceId {
    SourceId::new(peer.to_string())
}

impl HeadBook {
    /// Reads the book from `file` (missing or damaged: starts empty). `stored_offsets` is
    /// what the store holds now. Returns the book and the known heads beyond the store (syncs
    /// to resume). Heads of `own` are skipped: our own head comes from our store.
    pub(crate) fn load(
        file: Option<PathBuf>,
        own: PeerId,
        stored_offsets: &OffsetMap,
    ) -> (HeadBook, Vec<SignedHead>) {
        let bytes = match file.as_deref().map(std::fs::read) {
            Some(Ok(b)) => b,
            Some(Err(e)) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(error = %e, "cannot read the saved heads; starting without them");
                Vec::new()
            }
            _ => Vec::new(),
        };
        let mut book = HeadBook {
            file,
            ..HeadBook::default()
        };
        let mut resume = Vec::new();
        let mut r = crate::head::Reader::new(&bytes);
        while !r.is_empty() {
            let (Ok(kind), Ok(len)) = (r.u8(), r.u16()) else {
                break;
            };
            let Ok(head) = r.take(usize::from(len)).and_then(SignedHead::decode) else {
                break;
            };
            if head.verify().is_err() || head.head.source == own {
                continue;
            }
            let stored = stored_offsets.get(&source_id(&head.head.source));
            if kind == STORED && stored == Some(head.head.offset) {
                book.set_stored(head);
            } else if kind == KNOWN && stored.is_none_or(|o| o < head.head.offset) {
                tracing::info!(source = %head.head.source, offset = head.head.offset, "resuming an incomplete sync");
                book.remember_known(&head);
                resume.push(head);
            }
        }
        book.dirty = false;
        (book, resume)
    }

    /// Whether a head of `source` may be taken: it is known already, there is room for one
    /// more source, or a source never stored here gives up its place (see [`MAX_SOURCES`]).
    pub(crate) fn make_room_for(&mut self, source: &PeerId) -> Room {
        if self.known.contains_key(source) || self.known.len() < MAX_SOURCES {
            return Room::Free;
        }
        while let Some(old) = self.arrivals.pop_front() {
            if !self.stored.contains_key(&old) && self.known.remove(&old).is_some() {
                self.dirty = true;
                return Room::Forgot(old);
            }
        }
        Room::Full
    }

    /// Raises the known head of `head`'s source; true if it is news.
    pub(crate) fn remember_known(&mut self, head: &SignedHead) -> bool {
        let news = self
            .known
            .get(&head.head.source)
            .is_none_or(|k| k.head.position() < head.head.position());
        if news {
            if self.known.insert(head.head.source, head.clone()).is_none() {
                self.arrivals.push_back(head.head.source);
            }
            self.dirty = true;
        }
        news
    }

    /// `head`'s tree is stored here now (also raises the known head); true if it is newer
    /// than the stored head before.
    pub(crate) fn set_stored(&mut self, head: SignedHead) -> bool {
        self.remember_known(&head);
        let newer = self
            .stored
            .get(&head.head.source)
            .is_none_or(|s| s.head.position() < head.head.position());
        if newer {
            self.stored.insert(head.head.source, head);
            self.dirty = true;
        }
        newer
    }

    /// The known offset of every source.
    pub(crate) fn known_offsets(&self) -> impl Iterator<Item = (SourceId, u64)> + '_ {
        self.known
            .iter()
            .map(|(source, h)| (source_id(source), h.head.offset))
    }

    /// Every stored head.
    pub(crate) fn stored_heads(&self) -> impl Iterator<Item = &SignedHead> {
        self.stored.values()
    }

    /// A head the book holds for `head`'s source at the same position (offset and pruning
    /// generation) but over another tree: the source signed two trees at one position (a fork,
    /// `docs/format.md` "Forks"). The book's head is the one kept.
    pub(crate) fn conflicting(&self, head: &SignedHead) -> Option<&SignedHead> {
        let h = &head.head;
        [self.stored.get(&h.source), self.known.get(&h.source)]
            .into_iter()
            .flatten()
            .find(|o| o.head.position() == h.position() && o.head.root != h.root)
    }

    /// Whether `position` (offset, pruning generation) of `source` is beyond what is stored
    /// here.
    pub(crate) fn is_unstored(&self, source: &PeerId, position: (u64, u64)) -> bool {
        self.stored
            .get(source)
            .is_none_or(|s| s.head.position() < position)
    }

    /// Saves the book if it changed and the last save is [`SAVE_PERIOD`] ago (off the async
    /// threads; the file is replaced atomically).
    pub(crate) fn save_if_due(&mut self) {
        if !self.dirty || self.saved.is_some_and(|t| t.elapsed() < SAVE_PERIOD) {
            return;
        }
        let Some(path) = self.file.clone() else {
            return;
        };
        self.dirty = false;
        self.saved = Some(Instant::now());
        let bytes = self.encode();
        tokio::task::spawn_blocking(move || save(&path, &bytes));
    }

    /// Saves the book now if it changed (at shutdown; blocking).
    pub(crate) fn save_now(&mut self) {
        if let (true, Some(path)) = (self.dirty, self.file.as_deref()) {
            save(path, &self.encode());
            self.dirty = false;
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut put = |kind: u8, h: &SignedHead| {
            let b = h.encode();
            // A signed head is ~150 bytes; anything else is a bug, not worth a broken file.
            let Ok(len) = u16::try_from(b.len()) else {
                return;
            };
            out.push(kind);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&b);
        };
        for h in self.stored.values() {
            put(STORED, h);
        }
        for (source, h) in &self.known {
            if self.is_unstored(source, h.head.position()) {
                put(KNOWN, h);
            }
        }
        out
    }
}

fn save(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    let res = std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = res {
        tracing::warn!(path = %path.display(), error = %e, "cannot save known heads");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::Head;

    fn head(source: PeerId, offset: u64) -> SignedHead {
        // The book does not verify (the swarm did, before): a dummy signature will do.
        SignedHead {
            head: Head {
                source,
                root: cid::Cid::default(),
                offset,
                lamport: offset,
                timestamp: 0,
                pruned: 0,
            },
            signature: vec![0; 64],
        }
    }

    /// Issue 12 item 7: a second signed head of one source at one offset over another root
    /// is reported against the head kept (stored or known); the same head, or one at another
    /// offset, is no fork.
    #[test]
    fn two_roots_at_one_offset_are_a_fork() {
        let mut book = HeadBook::default();
        let source = PeerId::random();
        let kept = head(source, 5);
        book.set_stored(kept.clone());
        let mut other = head(source, 5);
        other.head.root = cid::Cid::new_v1(0x71, *kept.head.root.hash());
        assert_eq!(book.conflicting(&other), Some(&kept));
        assert_eq!(book.conflicting(&kept), None);
        assert_eq!(book.conflicting(&head(source, 6)), None);
        // Only known (its sync still running): also the one kept.
        let known = head(PeerId::random(), 2);
        book.remember_known(&known);
        let mut fork = known.clone();
        fork.head.root = other.head.root;
        assert_eq!(book.conflicting(&fork), Some(&known));
    }

    /// Issue 12 item 3: a peer inventing sources cannot grow the book (and with it the node's
    /// memory, heads file and digests) without end, nor keep a new honest source out of it
    /// for good: invented sources are never stored, so the longest known of them gives way;
    /// stored sources never do.
    #[test]
    fn the_book_keeps_at_most_max_sources_and_gives_up_unstored_ones_first() {
        let mut book = HeadBook::default();
        let stored = PeerId::random();
        book.set_stored(head(stored, 0));
        let mut invented = Vec::new();
        for _ in 1..MAX_SOURCES {
            let source = PeerId::random();
            assert_eq!(book.make_room_for(&source), Room::Free);
            book.remember_known(&head(source, 0));
            invented.push(source);
        }
        assert_eq!(
            book.make_room_for(&stored),
            Room::Free,
            "known sources still move on"
        );
        assert!(book.remember_known(&head(stored, 1)));
        assert_eq!(book.make_room_for(&invented[0]), Room::Free);

        // Full: a new source takes the place of the first invented one, then the next.
        let honest = PeerId::random();
        assert_eq!(book.make_room_for(&honest), Room::Forgot(invented[0]));
        book.remember_known(&head(honest, 0));
        assert_eq!(book.known.len(), MAX_SOURCES);
        assert_eq!(
            book.make_room_for(&PeerId::random()),
            Room::Forgot(invented[1])
        );

        // Once every place is a stored source, new sources are dropped.
        let mut full = HeadBook::default();
        for _ in 0..MAX_SOURCES {
            full.set_stored(head(PeerId::random(), 0));
        }
        assert_eq!(full.make_room_for(&PeerId::random()), Room::Full);
        assert!(
            full.arrivals.is_empty(),
            "the stored sources were skipped and dropped"
        );
    }
}
