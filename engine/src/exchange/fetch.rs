//! The requester side of the block exchange: which CIDs to ask which peer for, and when.
//!
//! A pure state machine (no I/O, no clock) owned by the swarm task. A *session* is one caller's
//! set of wanted CIDs plus a bounded channel the results go to. [`Fetcher::plan`] turns queued
//! CIDs into batched `Want` requests, at most [`PEER_WINDOW`] in flight per peer and
//! [`SESSION_WINDOW`] per session, so many requests are pipelined on each connection while
//! staying far below yamux's ~100 concurrent sub-streams. Each planned request holds a reserved
//! slot of the session's channel, so delivering its result can never block the swarm task or
//! buffer without bound: a session whose consumer is slow simply gets no new requests.
//!
//! A request asks for about [`BATCH_BYTES`] of blocks: a session learns the size of its blocks
//! from the answers (until then it asks for [`FIRST_BATCH`] CIDs at a time), so a request for
//! 1 MiB blob chunks names two of them and one for small tree blocks up to [`WANT_BATCH`].
//! The responder of `/shoal/exchange/1` cuts its answer at the same size anyway; a Bitswap
//! peer sends everything asked for, so this is what bounds the bytes a request gathers.
//!
//! A CID a peer does not have (or answers wrongly, or times out on) is retried with another
//! peer; once every connected peer was tried it is reported `NotFound` and the caller decides
//! when to try again.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::Hash;

use cid::Cid;
use libp2p::PeerId;
use tokio::sync::mpsc;

use super::wire::verify_block;

/// Requests in flight to one peer (all sessions together).
pub const PEER_WINDOW: usize = 8;
/// Requests in flight for one session (all peers together).
pub const SESSION_WINDOW: usize = 24;
/// Most CIDs per `Want` request.
pub const WANT_BATCH: usize = 64;
/// CIDs per request while a session does not know its block size yet.
pub const FIRST_BATCH: usize = 4;
/// Bytes of blocks a request asks for (the shoal responder's budget).
pub const BATCH_BYTES: usize = super::RESPONSE_BUDGET;
/// How far into a session's queue `plan` looks for CIDs a given peer was not yet asked for.
const SCAN_LIMIT: usize = 4096;

/// What a session's consumer receives.
#[derive(Debug)]
pub enum FetchEvent {
    /// Verified blocks (each hashes to its CID).
    Blocks(Vec<(Cid, Vec<u8>)>),
    /// CIDs no connected peer could deliver.
    NotFound(Vec<Cid>),
}

pub type SessionId = u64;

/// A request `plan` wants sent; hand it back with [`Fetcher::sent`] under its request id.
#[derive(Debug)]
pub struct Planned {
    pub session: SessionId,
    pub peer: PeerId,
    pub cids: Vec<Cid>,
    permit: mpsc::OwnedPermit<FetchEvent>,
}

/// Outcome of a response for the caller to log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ResponseReport {
    /// Blocks that did not hash to their CID or were not asked for (peer misbehaved).
    pub bad_blocks: Vec<Cid>,
    pub delivered: usize,
}

struct Session {
    tx: mpsc::Sender<FetchEvent>,
    queue: VecDeque<Cid>,
    tried: HashMap<Cid, Vec<PeerId>>,
    inflight: usize,
    preferred: Vec<PeerId>,
    /// Blocks and bytes delivered so far (the average block size sets the batch size).
    delivered: (usize, usize),
}

impl Session {
    fn batch(&self) -> usize {
        match self.delivered {
            (0, _) => FIRST_BATCH,
            (n, bytes) => (BATCH_BYTES / (bytes / n).max(1)).clamp(1, WANT_BATCH),
        }
    }
}

struct Inflight {
    session: SessionId,
    peer: PeerId,
    cids: Vec<Cid>,
    permit: mpsc::OwnedPermit<FetchEvent>,
}

/// See the module doc. `K` is the request id type (`OutboundRequestId` in the swarm).
pub struct Fetcher<K> {
    sessions: BTreeMap<SessionId, Session>,
    inflight: HashMap<K, Inflight>,
    per_peer: HashMap<PeerId, usize>,
    next_session: SessionId,
}

impl<K: Hash + Eq> Default for Fetcher<K> {
    fn default() -> Self {
        Self {
            sessions: BTreeMap::new(),
            inflight: HashMap::new(),
            per_peer: HashMap::new(),
            next_session: 1,
        }
    }
}

impl<K: Hash + Eq> Fetcher<K> {
    /// Starts a session; results go to `tx`. `preferred` peers are asked first (e.g. the peer
    /// that sent us the head). Dropping the receiver cancels the session.
    pub fn add(
        &mut self,
        cids: Vec<Cid>,
        tx: mpsc::Sender<FetchEvent>,
        preferred: Vec<PeerId>,
    ) -> SessionId {
        let id = self.next_session;
        self.next_session += 1;
        let mut seen = std::collections::HashSet::new();
        let queue = cids.into_iter().filter(|c| seen.insert(*c)).collect();
        self.sessions.insert(
            id,
            Session {
                tx,
                queue,
                tried: HashMap::new(),
                inflight: 0,
                preferred,
                delivered: (0, 0),
            },
        );
        id
    }

    /// Number of live sessions.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// True when nothing is queued (in-flight requests may remain).
    pub fn nothing_queued(&self) -> bool {
        self.sessions.values().all(|s| s.queue.is_empty())
    }

    /// Plans the requests to send now, given the connected peers.
    pub fn plan(&mut self, peers: &[PeerId]) -> Vec<Planned> {
        let mut out = Vec::new();
        let mut finished = Vec::new();
        for (&id, s) in self.sessions.iter_mut() {
            if s.tx.is_closed() {
                finished.push(id);
                continue;
            }
            // CIDs every connected peer was asked for: report them.
            let mut not_found = Vec::new();
            s.queue.retain(|c| {
                let exhausted = s
                    .tried
                    .get(c)
                    .is_some_and(|t| peers.iter().all(|p| t.contains(p)));
                if exhausted || peers.is_empty() {
                    not_found.push(*c);
                }
                !(exhausted || peers.is_empty())
            });
            if !not_found.is_empty() {
                for c in &not_found {
                    s.tried.remove(c);
                }
                if let Err(mpsc::error::TrySendError::Full(FetchEvent::NotFound(back))) =
                    s.tx.try_send(FetchEvent::NotFound(not_found))
                {
                    // Consumer busy: report later (asking the same peers again meanwhile).
                    s.queue.extend(back);
                }
            }
            // Candidate order: preferred peers first, then the rest.
            let mut candidates: Vec<PeerId> = s
                .preferred
                .iter()
                .filter(|p| peers.contains(p))
                .copied()
                .collect();
            candidates.extend(peers.iter().filter(|p| !s.preferred.contains(p)));
            let batch = s.batch();
            'peers: for peer in candidates {
                while !s.queue.is_empty() && s.inflight < SESSION_WINDOW {
                    let load = self.per_peer.get(&peer).copied().unwrap_or(0);
                    if load >= PEER_WINDOW {
                        continue 'peers;
                    }
                    let permit = match s.tx.clone().try_reserve_owned() {
                        Ok(p) => p,
                        Err(_) => break 'peers,
                    };
                    let mut cids = Vec::new();
                    let mut kept = VecDeque::new();
                    let mut scanned = 0;
                    while let Some(c) = s.queue.pop_front() {
                        scanned += 1;
                        if s.tried.get(&c).is_some_and(|t| t.contains(&peer)) {
                            kept.push_back(c);
                        } else {
                            cids.push(c);
                        }
                        if cids.len() >= batch || scanned >= SCAN_LIMIT {
                            break;
                        }
                    }
                    while let Some(c) = kept.pop_back() {
                        s.queue.push_front(c);
                    }
                    if cids.is_empty() {
                        continue 'peers;
                    }
                    s.inflight += 1;
                    *self.per_peer.entry(peer).or_default() += 1;
                    out.push(Planned {
                        session: id,
                        peer,
                        cids,
                        permit,
                    });
                }
            }
            if s.queue.is_empty() && s.inflight == 0 {
                finished.push(id);
            }
        }
        for id in finished {
            self.sessions.remove(&id);
        }
        out
    }

    /// Records a planned request as sent under `key`.
    pub fn sent(&mut self, key: K, p: Planned) {
        self.inflight.insert(
            key,
            Inflight {
                session: p.session,
                peer: p.peer,
                cids: p.cids,
                permit: p.permit,
            },
        );
    }

    fn finish(&mut self, key: &K) -> Option<Inflight> {
        let f = self.inflight.remove(key)?;
        if let Some(n) = self.per_peer.get_mut(&f.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_peer.remove(&f.peer);
            }
        }
        if let Some(s) = self.sessions.get_mut(&f.session) {
            s.inflight = s.inflight.saturating_sub(1);
        }
        Some(f)
    }

    /// A response arrived. Verifies every block against its CID (unless `hashed`: the CIDs
    /// were computed from the bytes, as Bitswap does); good ones are delivered, the rest are
    /// retried elsewhere.
    pub fn on_response(
        &mut self,
        key: &K,
        blocks: Vec<(Cid, Vec<u8>)>,
        have_not: Vec<Cid>,
        hashed: bool,
    ) -> ResponseReport {
        let mut report = ResponseReport::default();
        let Some(f) = self.finish(key) else {
            return report;
        };
        let mut outstanding: std::collections::HashSet<Cid> = f.cids.iter().copied().collect();
        let mut good = Vec::with_capacity(blocks.len());
        for (cid, data) in blocks {
            if outstanding.contains(&cid) && (hashed || verify_block(&cid, &data)) {
                outstanding.remove(&cid);
                good.push((cid, data));
            } else {
                report.bad_blocks.push(cid);
            }
        }
        report.delivered = good.len();
        let Some(s) = self.sessions.get_mut(&f.session) else {
            return report;
        };
        let bytes: usize = good.iter().map(|(_, d)| d.len()).sum();
        s.delivered = (
            s.delivered.0.saturating_add(good.len()),
            s.delivered.1.saturating_add(bytes),
        );
        let bad: std::collections::HashSet<Cid> = report.bad_blocks.iter().copied().collect();
        // A responder defers CIDs only once its answer is full, and always sends at least one
        // block it has: an answer without a good block that leaves CIDs unanswered withholds
        // them. Asked again, such a peer would stall the fetch for ever.
        let withheld = good.is_empty();
        for c in &f.cids {
            if outstanding.contains(c) {
                // Missing, wrong, withheld or deferred: ask again; don't ask this peer again
                // for a CID it said it lacks, answered wrongly or withheld.
                if have_not.contains(c) || bad.contains(c) || withheld {
                    s.tried.entry(*c).or_default().push(f.peer);
                }
                s.queue.push_back(*c);
            } else {
                s.tried.remove(c);
            }
        }
        if !good.is_empty() {
            f.permit.send(FetchEvent::Blocks(good));
        }
        report
    }

    /// The request failed (timeout, connection closed, protocol error): retry elsewhere.
    pub fn on_failure(&mut self, key: &K) {
        let Some(f) = self.finish(key) else {
            return;
        };
        if let Some(s) = self.sessions.get_mut(&f.session) {
            for c in f.cids {
                s.tried.entry(c).or_default().push(f.peer);
                s.queue.push_back(c);
            }
        }
    }
}

#[cfg(test)]
mod tests;
