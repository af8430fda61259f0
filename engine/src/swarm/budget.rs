//! Per-peer budgets: what one connected peer may make this node do at once or per second
//! (`docs/format.md`, "Per-peer budgets").
//!
//! A peer holding the swarm key can send requests as fast as it likes; the libp2p limits
//! (connections, sub-streams per connection) bound how many are open, these bound the work:
//!
//! - `Want`s being served for one peer at once ([`MAX_WANTS_IN_FLIGHT`]): more are answered at
//!   once with nothing (every CID deferred), which costs no read. An honest requester keeps at
//!   most `exchange::fetch::PEER_WINDOW` in flight per peer, so it never meets the limit.
//! - `Digest`s answered per peer per second (a token bucket, [`DIGEST_BURST`] and
//!   [`DIGESTS_PER_SEC`]): an answer scans every stored head, so a flood of digests would keep
//!   the swarm task busy. Over budget the answer is empty (the peer's next digest, or gossip,
//!   catches it up). Honest peers send one per digest interval and one per new connection.
//!
//! - Look-ups of blocks this node does not hold, per peer per second (a token bucket of
//!   misses, [`MISS_BURST`] and [`MISSES_PER_SEC`]): a Want costs one store look-up per CID,
//!   and a peer asking for CIDs nobody has (random ones) makes the node search its store for
//!   nothing as fast as it can ask. An honest requester asks for blocks it learned of from the
//!   peer's own heads and trees, so nearly all its look-ups hit. While a peer's bucket is
//!   empty its Wants are answered at once with nothing (every CID deferred), costing no read.
//!
//! When a budget is exceeded the log says so naming the peer, at most once a minute per
//! budget (an attacker must not be able to flood the log either).
//!
//! Invariant: entries exist only for peers with a connection or work in flight (dropped on
//! disconnect once idle), so the map is bounded by the connection limits.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// `Want`s served for one peer at once (twice an honest requester's window).
pub const MAX_WANTS_IN_FLIGHT: usize = 2 * crate::exchange::fetch::PEER_WINDOW;
/// `Digest`s a peer may send in a burst.
pub const DIGEST_BURST: f64 = 8.0;
/// `Digest`s per second a peer may send on average.
pub const DIGESTS_PER_SEC: f64 = 4.0;
/// Look-ups of blocks not held that a peer may cause in a burst (a Want holds at most 512).
pub const MISS_BURST: f64 = 8192.0;
/// Look-ups of blocks not held per second a peer may cause on average.
pub const MISSES_PER_SEC: f64 = 2048.0;
/// A budget exceeded is logged at most this often (per budget, all peers together).
const WARN_PERIOD: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct PeerBudget {
    wants: usize,
    digest_tokens: f64,
    refilled: Instant,
    /// Misses the peer may still cause; below zero after a Want that missed more than was
    /// left, then refilled over time before its next Want is served.
    miss_tokens: f64,
    misses_refilled: Instant,
    connected: bool,
}

/// Which budget a peer ran out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Budget {
    Wants,
    Digests,
    Misses,
}

impl Budget {
    fn what(self) -> &'static str {
        match self {
            Budget::Wants => "Wants served at once; further Wants are deferred",
            Budget::Digests => "digests per second; further digests get an empty answer",
            Budget::Misses => {
                "look-ups of blocks this node does not hold per second; further Wants are deferred"
            }
        }
    }
}

/// The budgets of every connected peer.
#[derive(Debug, Default)]
pub(crate) struct Budgets {
    peers: HashMap<PeerId, PeerBudget>,
    warned: HashMap<Budget, Instant>,
    /// Requests refused for a budget since start (node info could show it).
    pub(crate) refused: u64,
}

impl Budgets {
    fn entry(&mut self, peer: PeerId, now: Instant) -> &mut PeerBudget {
        self.peers.entry(peer).or_insert_with(|| PeerBudget {
            wants: 0,
            digest_tokens: DIGEST_BURST,
            refilled: now,
            miss_tokens: MISS_BURST,
            misses_refilled: now,
            connected: true,
        })
    }

    pub(crate) fn connected(&mut self, peer: PeerId) {
        self.entry(peer, Instant::now()).connected = true;
    }

    /// The last connection to `peer` closed: its entry goes once no work is in flight.
    pub(crate) fn disconnected(&mut self, peer: &PeerId) {
        if let Some(b) = self.peers.get_mut(peer) {
            b.connected = false;
            if b.wants == 0 {
                self.peers.remove(peer);
            }
        }
    }

    /// Takes a `Want` slot for `peer`; false (and logged) if it has too many being served,
    /// or its misses used up its look-ups for now.
    pub(crate) fn start_want(&mut self, peer: PeerId) -> bool {
        self.start_want_at(peer, Instant::now())
    }

    fn start_want_at(&mut self, peer: PeerId, now: Instant) -> bool {
        let b = self.entry(peer, now);
        if b.wants >= MAX_WANTS_IN_FLIGHT {
            self.exceeded(peer, Budget::Wants, MAX_WANTS_IN_FLIGHT as f64);
            return false;
        }
        let elapsed = now
            .saturating_duration_since(b.misses_refilled)
            .as_secs_f64();
        b.miss_tokens = (b.miss_tokens + elapsed * MISSES_PER_SEC).min(MISS_BURST);
        b.misses_refilled = now;
        if b.miss_tokens <= 0.0 {
            self.exceeded(peer, Budget::Misses, MISSES_PER_SEC);
            return false;
        }
        b.wants += 1;
        true
    }

    /// A `Want` of `peer` was answered; `misses` of its CIDs were not held here.
    pub(crate) fn end_want(&mut self, peer: &PeerId, misses: usize) {
        if let Some(b) = self.peers.get_mut(peer) {
            b.miss_tokens -= misses as f64;
            b.wants = b.wants.saturating_sub(1);
            if b.wants == 0 && !b.connected {
                self.peers.remove(peer);
            }
        }
    }

    /// Takes a digest token for `peer`; false (and logged) if it has none left.
    pub(crate) fn take_digest(&mut self, peer: PeerId, now: Instant) -> bool {
        let b = self.entry(peer, now);
        let elapsed = now.saturating_duration_since(b.refilled).as_secs_f64();
        b.digest_tokens = (b.digest_tokens + elapsed * DIGESTS_PER_SEC).min(DIGEST_BURST);
        b.refilled = now;
        if b.digest_tokens < 1.0 {
            self.exceeded(peer, Budget::Digests, DIGESTS_PER_SEC);
            return false;
        }
        b.digest_tokens -= 1.0;
        true
    }

    fn exceeded(&mut self, peer: PeerId, budget: Budget, limit: f64) {
        self.refused = self.refused.saturating_add(1);
        let now = Instant::now();
        let due = self
            .warned
            .get(&budget)
            .is_none_or(|t| now.saturating_duration_since(*t) >= WARN_PERIOD);
        if due {
            self.warned.insert(budget, now);
            tracing::warn!(
                %peer, limit, "peer exceeded its budget of {} (more are not logged for a minute)",
                budget.what()
            );
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.peers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12 item 6: one peer cannot have more than `MAX_WANTS_IN_FLIGHT` Wants served at
    /// once; others are not affected, and answered Wants free their slots.
    #[test]
    fn wants_in_flight_are_capped_per_peer() {
        let mut b = Budgets::default();
        let (flood, honest) = (PeerId::random(), PeerId::random());
        for _ in 0..MAX_WANTS_IN_FLIGHT {
            assert!(b.start_want(flood));
        }
        assert!(!b.start_want(flood));
        assert!(b.start_want(honest));
        b.end_want(&flood, 0);
        assert!(b.start_want(flood));
        assert_eq!(b.refused, 1);
    }

    /// Issue 12 item 6: a peer asking for blocks nobody has (a flood of random CIDs) gets its
    /// Wants deferred unread once its misses exceed the burst, until the refill rate lets
    /// more through; a peer whose look-ups hit is never limited by it.
    #[test]
    fn wants_that_miss_are_rate_limited_per_peer() {
        let mut b = Budgets::default();
        let (flood, honest) = (PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        let mut served = 0;
        while b.start_want_at(flood, t0) {
            b.end_want(&flood, crate::exchange::MAX_WANT);
            served += 1;
            assert!(served <= 100, "the misses were never counted");
        }
        assert_eq!(
            served,
            (MISS_BURST as usize).div_ceil(crate::exchange::MAX_WANT)
        );
        // A second later the refill lets about MISSES_PER_SEC more look-ups through.
        let later = t0 + Duration::from_secs(1);
        let mut again = 0;
        while b.start_want_at(flood, later) {
            b.end_want(&flood, crate::exchange::MAX_WANT);
            again += 1;
        }
        assert!((1..=MISSES_PER_SEC as usize / crate::exchange::MAX_WANT + 1).contains(&again));
        // Wants that find their blocks cost no miss tokens.
        for _ in 0..10_000 {
            assert!(b.start_want_at(honest, t0));
            b.end_want(&honest, 0);
        }
    }

    /// Issue 12 item 6: digests are a token bucket per peer: a burst, then the refill rate.
    #[test]
    fn digests_are_rate_limited_per_peer() {
        let mut b = Budgets::default();
        let peer = PeerId::random();
        let t0 = Instant::now();
        let taken = (0..100).filter(|_| b.take_digest(peer, t0)).count();
        assert_eq!(taken, DIGEST_BURST as usize);
        let later = t0 + Duration::from_secs(1);
        let taken = (0..100).filter(|_| b.take_digest(peer, later)).count();
        assert_eq!(taken, DIGESTS_PER_SEC as usize);
        assert!(
            b.take_digest(PeerId::random(), later),
            "other peers have their own"
        );
    }

    /// Entries of disconnected peers go once their work is done: the map stays bounded by the
    /// connections.
    #[test]
    fn disconnected_peers_are_forgotten_once_idle() {
        let mut b = Budgets::default();
        let peer = PeerId::random();
        b.connected(peer);
        assert!(b.start_want(peer));
        b.disconnected(&peer);
        assert_eq!(b.tracked(), 1, "a Want still being served");
        b.end_want(&peer, 0);
        assert_eq!(b.tracked(), 0);
    }
}
