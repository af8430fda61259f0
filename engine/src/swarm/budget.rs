//! Per-peer budgets: what one connected peer may make this node do at once or per second
//! (`docs/format.md`, "Per-peer budgets").
//!
//! A peer holding the swarm key can send requests as fast as it likes; the libp2p limits
//! (connections, sub-streams per connection) bound how many are open, these bound the work:
//!
//! - `Want`s being served for one peer at once ([`MAX_WANTS_IN_FLIGHT`]): more are answered
//!   with nothing (every CID deferred), which costs no read. An honest requester keeps at
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
//!   empty its Wants are answered with nothing (every CID deferred), costing no read.
//!
//! - Bytes of answers to a peer's `Want`s handed to its connection and not yet written
//!   ([`MAX_BYTES_OUT_PER_PEER`], and [`MAX_BYTES_OUT`] for all peers together): a `Want`'s
//!   slot frees when its answer is handed over, so a peer that asks and never reads would
//!   otherwise pile answers of up to 6 MiB each into memory, one per sub-stream it opens.
//!   Over budget its Wants are answered with nothing until the bytes are written.
//! - Heads a peer brings, by gossip or in digest answers, per second (a token bucket,
//!   [`HEAD_BURST`] and [`HEADS_PER_SEC`]): each costs a signature check. Over budget they are
//!   dropped before the check (not forwarded, not penalised: the next digest catches up what
//!   an honest peer's burst lost).
//!
//! A refused request's empty answer is held for `task::REFUSAL_DELAY` (1 s) before it is sent,
//! so a flooding peer's open streams fill instead of being freed for its next request.
//!
//! When a budget is exceeded the log says so naming the peer, at most once a minute per
//! budget (an attacker must not be able to flood the log either).
//!
//! Invariant: entries exist only for peers with a connection or work in flight (dropped on
//! disconnect once idle), so the map is bounded by the connection limits.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::request_response::InboundRequestId;
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
/// Bytes of `Want` answers handed to one peer's connections and not yet written (an honest
/// requester's window of 8 answers of ~2 MiB each fits twice).
pub const MAX_BYTES_OUT_PER_PEER: usize = 32 << 20;
/// The same, all peers together.
pub const MAX_BYTES_OUT: usize = 128 << 20;
/// Heads a peer may bring in a burst (a digest answer after a reconnect holds one per source
/// the peer knows of, up to 1,000 of them).
pub const HEAD_BURST: f64 = 4096.0;
/// Heads per second a peer may bring on average (an honest peer relays one per commit of each
/// source, and coalesces commits under load).
pub const HEADS_PER_SEC: f64 = 2048.0;
/// A budget exceeded is logged at most this often (per budget, all peers together).
const WARN_PERIOD: Duration = Duration::from_secs(60);

/// A token bucket: tokens come back at a rate, up to a burst.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Bucket {
            tokens: burst,
            refilled: now,
        }
    }

    /// Adds what `rate` earned since the last refill, up to `burst`; the tokens there are now.
    fn refill(&mut self, now: Instant, rate: f64, burst: f64) -> f64 {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.refilled = now;
        self.tokens
    }
}

#[derive(Debug)]
struct PeerBudget {
    wants: usize,
    digests: Bucket,
    /// Misses the peer may still cause; below zero after a Want that missed more than was
    /// left, then refilled over time before its next Want is served.
    misses: Bucket,
    /// Bytes of answers handed to its connections, not yet written.
    bytes_out: usize,
    heads: Bucket,
    connected: bool,
}

impl PeerBudget {
    fn idle(&self) -> bool {
        self.wants == 0 && self.bytes_out == 0
    }
}

/// Which budget a peer ran out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Budget {
    Wants,
    Digests,
    Misses,
    BytesOut,
    Heads,
}

impl Budget {
    fn what(self) -> &'static str {
        match self {
            Budget::Wants => "Wants served at once; further Wants are deferred",
            Budget::Digests => "digests per second; further digests get an empty answer",
            Budget::Misses => {
                "look-ups of blocks this node does not hold per second; further Wants are deferred"
            }
            Budget::BytesOut => {
                "bytes of answers not yet written to it (or all peers' together); further Wants \
                 are deferred"
            }
            Budget::Heads => "heads per second; further heads are dropped unchecked",
        }
    }
}

/// The budgets of every connected peer. `Id` identifies an answer being written (generic so
/// that tests can make ids: libp2p's have no constructor).
#[derive(Debug)]
pub(crate) struct Budgets<Id = InboundRequestId> {
    peers: HashMap<PeerId, PeerBudget>,
    /// Answers handed to connections and not yet written: their peer and size.
    sending: HashMap<Id, (PeerId, usize)>,
    /// Sum of the sizes in `sending`.
    bytes_out: usize,
    warned: HashMap<Budget, Instant>,
    /// Requests refused for a budget since start (node info could show it).
    pub(crate) refused: u64,
}

impl<Id> Default for Budgets<Id> {
    fn default() -> Self {
        Budgets {
            peers: HashMap::new(),
            sending: HashMap::new(),
            bytes_out: 0,
            warned: HashMap::new(),
            refused: 0,
        }
    }
}

impl<Id: Eq + std::hash::Hash> Budgets<Id> {
    fn entry(&mut self, peer: PeerId, now: Instant) -> &mut PeerBudget {
        self.peers.entry(peer).or_insert_with(|| PeerBudget {
            wants: 0,
            digests: Bucket::full(DIGEST_BURST, now),
            misses: Bucket::full(MISS_BURST, now),
            bytes_out: 0,
            heads: Bucket::full(HEAD_BURST, now),
            connected: true,
        })
    }

    pub(crate) fn connected(&mut self, peer: PeerId) {
        self.entry(peer, Instant::now()).connected = true;
    }

    /// The last connection to `peer` closed: answers not yet written to it never will be, and
    /// its entry goes once no work is in flight.
    pub(crate) fn disconnected(&mut self, peer: &PeerId) {
        let mut dropped = 0usize;
        self.sending.retain(|_, (p, bytes)| {
            let keep = p != peer;
            if !keep {
                dropped = dropped.saturating_add(*bytes);
            }
            keep
        });
        self.bytes_out = self.bytes_out.saturating_sub(dropped);
        if let Some(b) = self.peers.get_mut(peer) {
            b.bytes_out = 0;
            b.connected = false;
            if b.idle() {
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
        let total_out = self.bytes_out;
        let b = self.entry(peer, now);
        if b.wants >= MAX_WANTS_IN_FLIGHT {
            self.exceeded(peer, Budget::Wants, MAX_WANTS_IN_FLIGHT as f64);
            return false;
        }
        if b.bytes_out >= MAX_BYTES_OUT_PER_PEER || total_out >= MAX_BYTES_OUT {
            self.exceeded(peer, Budget::BytesOut, MAX_BYTES_OUT_PER_PEER as f64);
            return false;
        }
        if b.misses.refill(now, MISSES_PER_SEC, MISS_BURST) <= 0.0 {
            self.exceeded(peer, Budget::Misses, MISSES_PER_SEC);
            return false;
        }
        b.wants += 1;
        true
    }

    /// A `Want` of `peer` was answered; `misses` of its CIDs were not held here.
    pub(crate) fn end_want(&mut self, peer: &PeerId, misses: usize) {
        if let Some(b) = self.peers.get_mut(peer) {
            b.misses.tokens -= misses as f64;
            b.wants = b.wants.saturating_sub(1);
            if b.idle() && !b.connected {
                self.peers.remove(peer);
            }
        }
    }

    /// An answer of `bytes` to `peer`'s request `id` was handed to its connection.
    pub(crate) fn answer_queued(&mut self, id: Id, peer: PeerId, bytes: usize) {
        let b = self.entry(peer, Instant::now());
        b.bytes_out = b.bytes_out.saturating_add(bytes);
        self.bytes_out = self.bytes_out.saturating_add(bytes);
        self.sending.insert(id, (peer, bytes));
    }

    /// The answer to request `id` was written, or will never be (its stream failed).
    pub(crate) fn answer_done(&mut self, id: &Id) {
        let Some((peer, bytes)) = self.sending.remove(id) else {
            return;
        };
        self.bytes_out = self.bytes_out.saturating_sub(bytes);
        if let Some(b) = self.peers.get_mut(&peer) {
            b.bytes_out = b.bytes_out.saturating_sub(bytes);
            if b.idle() && !b.connected {
                self.peers.remove(&peer);
            }
        }
    }

    /// Takes up to `n` head tokens for `peer`: how many of its `n` heads may be checked (the
    /// rest are dropped, and that is logged).
    pub(crate) fn take_heads(&mut self, peer: PeerId, n: usize, now: Instant) -> usize {
        let b = self.entry(peer, now);
        let tokens = b.heads.refill(now, HEADS_PER_SEC, HEAD_BURST);
        let allowed = (tokens.max(0.0) as usize).min(n);
        b.heads.tokens -= allowed as f64;
        if allowed < n {
            self.exceeded(peer, Budget::Heads, HEADS_PER_SEC);
        }
        allowed
    }

    /// Takes a digest token for `peer`; false (and logged) if it has none left.
    pub(crate) fn take_digest(&mut self, peer: PeerId, now: Instant) -> bool {
        let b = self.entry(peer, now);
        if b.digests.refill(now, DIGESTS_PER_SEC, DIGEST_BURST) < 1.0 {
            self.exceeded(peer, Budget::Digests, DIGESTS_PER_SEC);
            return false;
        }
        b.digests.tokens -= 1.0;
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
        let mut b = Budgets::<u64>::default();
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
        let mut b = Budgets::<u64>::default();
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
        let mut b = Budgets::<u64>::default();
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

    /// Issue 12 (bytes in flight): a peer whose answers are not being written (it asks and
    /// never reads) gets its further Wants deferred once they pile up past its byte budget;
    /// written answers free the budget, and other peers are not affected.
    #[test]
    fn answers_not_yet_written_are_capped_per_peer() {
        let mut b = Budgets::<u64>::default();
        let (slow, honest) = (PeerId::random(), PeerId::random());
        let answer = 6 << 20; // a full Want answer: the response budget plus one large block
        let mut ids = Vec::new();
        let mut served = 0;
        while b.start_want(slow) {
            b.end_want(&slow, 0);
            let id = served;
            b.answer_queued(id, slow, answer);
            ids.push(id);
            served += 1;
            assert!(served <= 100, "never limited");
        }
        assert_eq!(served as usize, MAX_BYTES_OUT_PER_PEER.div_ceil(answer));
        assert!(b.start_want(honest), "another peer has its own budget");
        b.end_want(&honest, 0);
        b.answer_done(&ids[0]);
        assert!(b.start_want(slow), "a written answer frees its bytes");
    }

    /// Issue 12 (heads): a peer's heads are a token bucket: a burst, then the refill rate;
    /// other peers have their own.
    #[test]
    fn heads_are_rate_limited_per_peer() {
        let mut b = Budgets::<u64>::default();
        let peer = PeerId::random();
        let t0 = Instant::now();
        assert_eq!(b.take_heads(peer, 1_000, t0), 1_000);
        assert_eq!(b.take_heads(peer, 10_000, t0), HEAD_BURST as usize - 1_000);
        assert_eq!(b.take_heads(peer, 1, t0), 0);
        let later = t0 + Duration::from_secs(1);
        assert_eq!(b.take_heads(peer, 10_000, later), HEADS_PER_SEC as usize);
        assert_eq!(b.take_heads(PeerId::random(), 10, later), 10);
        assert_eq!(b.refused, 3);
    }

    /// Entries of disconnected peers go once their work is done: the map stays bounded by the
    /// connections.
    #[test]
    fn disconnected_peers_are_forgotten_once_idle() {
        let mut b = Budgets::<u64>::default();
        let peer = PeerId::random();
        b.connected(peer);
        assert!(b.start_want(peer));
        b.disconnected(&peer);
        assert_eq!(b.tracked(), 1, "a Want still being served");
        b.end_want(&peer, 0);
        assert_eq!(b.tracked(), 0);
    }
}
