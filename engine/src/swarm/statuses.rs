//! The status book: the newest verified [`SignedStatus`] per source, as received by gossip,
//! with when it was last heard of. Owned by the swarm task; a pure structure (the caller
//! passes the clock), so its tests need no network.
//!
//! Invariants: at most [`MAX_NODES`] sources; an entry not refreshed for [`TTL`] is gone at
//! the next [`StatusBook::expire`]; a source's status only moves to a strictly newer `sentAt`
//! (a replay or a copy that came the long way round changes nothing and is not forwarded).
//! When full, a new source is refused rather than an old one evicted: invented nodes must not
//! be able to push real ones out (the heads book does the same).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;

use crate::status::{SignedStatus, MAX_FUTURE, MAX_NODES, TTL};

/// What happened to an offered status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Offer {
    /// Kept (a new source or a newer status): forward it.
    Kept,
    /// Not newer than what we hold, or dated too far ahead: neither kept nor forwarded.
    Stale,
    /// A new source while the book is full: dropped.
    Full,
}

/// A status as the book holds it.
#[derive(Debug, Clone)]
pub struct Received {
    pub status: SignedStatus,
    /// µs since the epoch when it was last received.
    pub last_seen: u64,
}

struct Entry {
    received: Received,
    at: Instant,
}

pub(super) struct StatusBook {
    entries: HashMap<PeerId, Entry>,
    max: usize,
    ttl: Duration,
}

impl Default for StatusBook {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            max: MAX_NODES,
            ttl: TTL,
        }
    }
}

impl StatusBook {
    #[cfg(test)]
    fn with_limits(max: usize, ttl: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            max,
            ttl,
        }
    }

    /// Offers a verified status received at `now` (wall clock `wall`, µs since the epoch).
    pub(super) fn offer(&mut self, status: SignedStatus, now: Instant, wall: u64) -> Offer {
        let future = u64::try_from(MAX_FUTURE.as_micros()).unwrap_or(u64::MAX);
        if status.sent_at > wall.saturating_add(future) {
            return Offer::Stale;
        }
        let entry = Entry {
            received: Received {
                status,
                last_seen: wall,
            },
            at: now,
        };
        let source = entry.received.status.source;
        match self.entries.get_mut(&source) {
            Some(old) if old.received.status.sent_at >= entry.received.status.sent_at => {
                Offer::Stale
            }
            Some(old) => {
                *old = entry;
                Offer::Kept
            }
            None => {
                if self.entries.len() >= self.max {
                    self.expire(now);
                }
                if self.entries.len() >= self.max {
                    return Offer::Full;
                }
                self.entries.insert(source, entry);
                Offer::Kept
            }
        }
    }

    /// Whether keeping `status` would change what the node list shows of its source beyond
    /// the counters that move all the time (events, uptime): a new source, other peers, apps,
    /// name or version.
    pub(super) fn changes_listing(&self, status: &SignedStatus) -> bool {
        let Some(old) = self.entries.get(&status.source) else {
            return true;
        };
        let (old, new) = (&old.received.status.status, &status.status);
        old.peers != new.peers
            || old.apps != new.apps
            || old.display_name != new.display_name
            || old.version != new.version
    }

    /// Forgets statuses not heard of for the TTL; whether any went.
    pub(super) fn expire(&mut self, now: Instant) -> bool {
        let ttl = self.ttl;
        let before = self.entries.len();
        self.entries
            .retain(|_, e| now.saturating_duration_since(e.at) < ttl);
        self.entries.len() != before
    }

    /// Every status held (not yet expired), in no particular order.
    pub(super) fn list(&self, now: Instant) -> Vec<Received> {
        self.entries
            .values()
            .filter(|e| now.saturating_duration_since(e.at) < self.ttl)
            .map(|e| e.received.clone())
            .collect()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::NodeStatus;
    use libp2p::identity::Keypair;

    fn signed(key: &Keypair, sent_at: u64) -> SignedStatus {
        let status = NodeStatus {
            display_name: None,
            version: "0".into(),
            uptime_secs: 0,
            events: sent_at,
            peers: vec![],
            apps_running: 0,
            apps_deployed: 0,
            apps: vec![],
            commands: vec![],
        };
        SignedStatus::sign(key, sent_at, status).unwrap()
    }

    #[test]
    fn only_newer_statuses_replace() {
        let mut book = StatusBook::default();
        let key = Keypair::generate_ed25519();
        let now = Instant::now();
        assert_eq!(book.offer(signed(&key, 10), now, 10), Offer::Kept);
        assert_eq!(book.offer(signed(&key, 10), now, 11), Offer::Stale);
        assert_eq!(book.offer(signed(&key, 9), now, 12), Offer::Stale);
        assert_eq!(book.offer(signed(&key, 11), now, 13), Offer::Kept);
        let list = book.list(now);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].status.status.events, 11);
        assert_eq!(list[0].last_seen, 13);
    }

    #[test]
    fn far_future_statuses_dropped() {
        let mut book = StatusBook::default();
        let key = Keypair::generate_ed25519();
        let wall = 1_000_000_000;
        let ahead = wall + MAX_FUTURE.as_micros() as u64 + 1;
        assert_eq!(
            book.offer(signed(&key, ahead), Instant::now(), wall),
            Offer::Stale
        );
        assert_eq!(book.len(), 0);
    }

    #[test]
    fn full_book_refuses_new_sources_until_old_ones_expire() {
        let ttl = Duration::from_secs(60);
        let mut book = StatusBook::with_limits(3, ttl);
        let t0 = Instant::now();
        let keys: Vec<Keypair> = (0..4).map(|_| Keypair::generate_ed25519()).collect();
        for k in &keys[..3] {
            assert_eq!(book.offer(signed(k, 1), t0, 1), Offer::Kept);
        }
        assert_eq!(book.offer(signed(&keys[3], 1), t0, 1), Offer::Full);
        // Known sources still update while full.
        assert_eq!(book.offer(signed(&keys[0], 2), t0, 2), Offer::Kept);
        let later = t0 + ttl + Duration::from_secs(1);
        assert_eq!(book.offer(signed(&keys[3], 1), later, 3), Offer::Kept);
        assert_eq!(book.len(), 1, "the expired entries made room");
        assert_eq!(book.list(later).len(), 1);
    }

    #[test]
    fn a_listing_changes_with_a_new_node_or_other_peers_not_with_counters() {
        let mut book = StatusBook::default();
        let key = Keypair::generate_ed25519();
        let now = Instant::now();
        let first = signed(&key, 1);
        assert!(book.changes_listing(&first), "a new node");
        book.offer(first, now, 1);
        // Another event count and date: the same listing.
        assert!(!book.changes_listing(&signed(&key, 2)));
        let mut status = signed(&key, 3).status;
        status.peers = vec![Keypair::generate_ed25519()
            .public()
            .to_peer_id()
            .to_string()];
        let with_peer = SignedStatus::sign(&key, 3, status).unwrap();
        assert!(book.changes_listing(&with_peer), "other peers");
        book.offer(with_peer, now, 3);
        assert!(!book.expire(now));
        assert!(book.expire(now + TTL + Duration::from_secs(1)), "it went");
    }
}
