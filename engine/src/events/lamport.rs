//! The node's Lamport clock.
//!
//! Owns the counter that stamps every local event. Invariants:
//! - each event gets its own lamport, strictly above every lamport this node handed out or saw
//!   before (a batch of n events takes n consecutive values);
//! - the clock never goes backwards across restarts: on start it resumes above both the last
//!   persisted value (meta key [`META_KEY`]) and the lamport of the newest stored event of every
//!   source. The events themselves are the durable record (they are in the same transaction as
//!   their append), so the meta value only has to cover lamports *seen* from peers without being
//!   stored; the writer persists it when it idles and on shutdown.
//!
//! The counter is an atomic so that `observe` (swarm, on every head) never waits for the writer.

use std::sync::atomic::{AtomicU64, Ordering};

use shoal_store::{EventFilter, Reader, MAX_LAMPORT};

/// Meta key of the persisted clock (8 bytes, big-endian).
pub const META_KEY: &str = "lamport";

/// Highest lamport used or seen by this node.
#[derive(Debug, Default)]
pub struct LamportClock {
    current: AtomicU64,
}

impl LamportClock {
    /// A clock whose next lamport is `current + 1` (0 for a fresh node).
    pub fn new(current: u64) -> Self {
        Self {
            current: AtomicU64::new(current),
        }
    }

    /// Highest lamport used or seen.
    pub fn current(&self) -> u64 {
        self.current.load(Ordering::SeqCst)
    }

    /// Raises the clock to at least `seen` (at most [`MAX_LAMPORT`]), so the next local event
    /// sorts after it. Callers pass lamports of imported, checked events, never a peer's claim.
    pub fn observe(&self, seen: u64) {
        self.current
            .fetch_max(seen.min(MAX_LAMPORT), Ordering::SeqCst);
    }

    /// Takes `n` consecutive lamports (n ≥ 1) and returns the first, or `None` when that would
    /// pass [`MAX_LAMPORT`] (nothing is taken then). Concurrent observers can only raise the
    /// result; values are never handed out twice.
    pub fn reserve(&self, n: u64) -> Option<u64> {
        let mut cur = self.current.load(Ordering::SeqCst);
        loop {
            // A fresh node's first event gets lamport 1 when nothing was seen: 0 stays "before
            // everything", like offset -1.
            let first = cur.checked_add(1)?;
            let last = cur.checked_add(n.max(1)).filter(|l| *l <= MAX_LAMPORT)?;
            match self
                .current
                .compare_exchange(cur, last, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return Some(first),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Gives back a reservation that was not used (its append failed), if nothing was reserved
    /// or observed since. Purely cosmetic (gaps in lamports are allowed), keeps numbers dense.
    pub fn unreserve(&self, first: u64, n: u64) {
        let last = first.saturating_add(n.max(1)) - 1;
        let _ = self.current.compare_exchange(
            last,
            first.saturating_sub(1),
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }

    /// The clock a node resumes with: above the persisted value and every stored event.
    pub fn recover(reader: &Reader) -> Result<Self, shoal_store::Error> {
        let persisted = reader
            .meta_get(META_KEY)?
            .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_slice()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        let mut max = persisted;
        let all = EventFilter::default();
        for info in reader.sources()? {
            // Per source lamports strictly increase with the offset, so the last event holds the
            // source's highest lamport.
            let last = info.last_offset;
            if let Some(event) = reader
                .events(&info.source, last..=last, &all, false)?
                .next()
            {
                max = max.max(event?.lamport);
            }
        }
        Ok(Self::new(max.min(MAX_LAMPORT)))
    }

    /// The value to persist under [`META_KEY`].
    pub fn encode(value: u64) -> [u8; 8] {
        value.to_be_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_consecutive_and_above_observed() {
        let clock = LamportClock::new(0);
        assert_eq!(clock.reserve(3), Some(1));
        assert_eq!(clock.current(), 3);
        clock.observe(10);
        clock.observe(5);
        assert_eq!(clock.reserve(1), Some(11));
        assert_eq!(clock.reserve(2), Some(12));
        assert_eq!(clock.current(), 13);
    }

    /// A lamport seen near 2^64 used to make every later local lamport huge (JS clients lose
    /// precision above 2^53) or wrap; now the clock stops at MAX_LAMPORT and refuses to go on.
    #[test]
    fn the_clock_never_passes_max_lamport() {
        let clock = LamportClock::new(0);
        clock.observe(u64::MAX - 1);
        assert_eq!(clock.current(), MAX_LAMPORT);
        assert_eq!(clock.reserve(1), None);
        assert_eq!(
            clock.current(),
            MAX_LAMPORT,
            "a refused reservation takes nothing"
        );
        let clock = LamportClock::new(MAX_LAMPORT - 2);
        assert_eq!(clock.reserve(3), None);
        assert_eq!(clock.reserve(2), Some(MAX_LAMPORT - 1));
    }

    #[test]
    fn unreserve_only_when_untouched() {
        let clock = LamportClock::new(4);
        let first = clock.reserve(3).unwrap();
        clock.unreserve(first, 3);
        assert_eq!(clock.current(), 4);
        let first = clock.reserve(3).unwrap();
        clock.observe(100);
        clock.unreserve(first, 3);
        assert_eq!(clock.current(), 100);
    }

    #[test]
    fn concurrent_reservations_never_overlap() {
        let clock = std::sync::Arc::new(LamportClock::new(0));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let clock = clock.clone();
                std::thread::spawn(move || {
                    (0..1000)
                        .map(|_| clock.reserve(2).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort_unstable();
        for pair in all.windows(2) {
            assert!(pair[1] >= pair[0] + 2);
        }
    }
}
