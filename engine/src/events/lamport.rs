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

use shoal_store::{EventFilter, Reader};

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

    /// Raises the clock to at least `seen`, so the next local event sorts after it.
    pub fn observe(&self, seen: u64) {
        self.current.fetch_max(seen, Ordering::SeqCst);
    }

    /// Takes `n` consecutive lamports (n ≥ 1) and returns the first. Concurrent observers can
    /// only raise the result; values are never handed out twice.
    pub fn reserve(&self, n: u64) -> u64 {
        let mut cur = self.current.load(Ordering::SeqCst);
        loop {
            // A fresh node's first event gets lamport 1 when nothing was seen: 0 stays "before
            // everything", like offset -1.
            let first = cur.saturating_add(1);
            let last = cur.saturating_add(n.max(1));
            match self
                .current
                .compare_exchange(cur, last, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return first,
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
        Ok(Self::new(max))
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
        assert_eq!(clock.reserve(3), 1);
        assert_eq!(clock.current(), 3);
        clock.observe(10);
        clock.observe(5);
        assert_eq!(clock.reserve(1), 11);
        assert_eq!(clock.reserve(2), 12);
        assert_eq!(clock.current(), 13);
    }

    #[test]
    fn unreserve_only_when_untouched() {
        let clock = LamportClock::new(4);
        let first = clock.reserve(3);
        clock.unreserve(first, 3);
        assert_eq!(clock.current(), 4);
        let first = clock.reserve(3);
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
                std::thread::spawn(move || (0..1000).map(|_| clock.reserve(2)).collect::<Vec<_>>())
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
