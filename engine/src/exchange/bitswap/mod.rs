//! Bitswap 1.2.0 (`/ipfs/bitswap/1.2.0`): the IPFS block exchange, so any IPFS node holding the
//! swarm key can fetch shoal's blocks by CID and shoal can fetch from it.
//!
//! One protocol = behaviour (this file) + connection handler (`handler.rs`) + wire
//! (`wire.rs`), in the rust-libp2p style. The spec is `BITSWAP.md` in ipfs/specs; Helia's
//! `@helia/bitswap` is the implementation the tests talk to (`tests/tests/ipfs.rs`).
//!
//! # Messages
//!
//! A message carries any of: wantlist entries (want-block or want-have, with `sendDontHave`,
//! or a cancel; `full` replaces the sender's wantlist), blocks (with the CID prefix, never the
//! CID: the receiver computes it) and block presences (`Have` / `DontHave`). Messages travel
//! one way, length-prefixed, on streams the sender opens; answers come in later messages.
//!
//! # Serving (the peer wants)
//!
//! Each peer's wants go into its *ledger*, a queue of at most [`MAX_LEDGER`] CIDs (more are
//! dropped; cancels and `full` remove). The swarm task takes wants from it in small batches
//! ([`Behaviour::take_wants`]) while the peer has budget (`swarm::budget`, the same Want and
//! miss budgets as `/shoal/exchange/1`) and while less than [`MAX_QUEUED_BYTES`] wait to be
//! written to it, reads them from the store off the swarm task, and hands the answer back
//! ([`Behaviour::respond`]): want-block → the block (or `DontHave` if asked), want-have →
//! `Have` (or `DontHave`). A want of a block this node lacks is answered (when asked) and
//! forgotten: shoal keeps no standing wants for blocks it may receive later.
//!
//! # Fetching
//!
//! [`Behaviour::want`] sends want-block entries with `sendDontHave` for a batch of CIDs to one
//! peer and returns a [`RequestId`]; once every CID of it arrived or was answered `DontHave`,
//! [`Event::Response`] carries them (what `exchange::Fetcher` expects of a request). No
//! progress for [`REQUEST_TIMEOUT`] fails it ([`Event::Failed`], the CIDs are cancelled at the
//! peer) and the fetcher asks elsewhere. A request whose blocks pile up past
//! [`MAX_REQUEST_BYTES`] is answered with what arrived and the rest is cancelled (the fetcher
//! asks for it again), so a request never holds more than that.
//!
//! # Limits (each one is a bound a peer cannot push us past)
//!
//! | what | limit |
//! |---|---|
//! | message on the wire | [`MAX_MESSAGE_BYTES`] (read through the length prefix first) |
//! | wantlist entries, presences per message | [`MAX_ENTRIES_PER_MESSAGE`] |
//! | blocks per message | [`MAX_BLOCKS_PER_MESSAGE`]; each ≤ `exchange::MAX_BLOCK_SIZE` |
//! | wants queued per peer | [`MAX_LEDGER`] |
//! | bytes queued for sending per connection | [`MAX_QUEUED_BYTES`] (then serving pauses) |
//! | inbound streams per connection | [`MAX_INBOUND_STREAMS`], each idle ≤ [`STREAM_IDLE`] |
//! | our messages | ≤ [`MESSAGE_BUDGET`] of blocks (Helia reads at most 4 MiB) |
//!
//! # What a peer can lie about
//!
//! - A block's content: its CID is computed from its bytes, so a block can only ever be the
//!   block of its own CID; one nobody asked this peer for is dropped (counted, logged), and
//!   the peer's outstanding requests fail at once (a wrong block in answer to a want looks
//!   like that), so the fetcher asks another peer instead of waiting for the timeout. A block
//!   of a request to that peer that ended lately (answered, cancelled, failed) is a late or
//!   repeated answer (e.g. it crossed our cancel): dropped, counted, nothing failed.
//! - Having a block: `DontHave` or silence (the timeout) sends the CID to another peer.
//! - Junk: a message that does not decode, or breaks a cap, is dropped with its stream and
//!   logged with the peer id; the connection stays (other streams are fine).

mod handler;
pub mod wire;

use std::collections::{HashMap, HashSet, VecDeque};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cid::Cid;
use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, NotifyHandler, THandler,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId, StreamProtocol};

pub use wire::{Entry, Message, Presence, WantType, PROTOCOL};

/// Largest message read (Helia writes at most 4 MiB).
pub const MAX_MESSAGE_BYTES: usize = (4 << 20) + (64 << 10);
/// Blocks we put in one message, in bytes (one larger block still goes alone).
pub const MESSAGE_BUDGET: usize = 2 << 20;
/// Wantlist entries (or presences) in one message.
pub const MAX_ENTRIES_PER_MESSAGE: usize = 4096;
/// Blocks in one message.
pub const MAX_BLOCKS_PER_MESSAGE: usize = 1024;
/// Wants queued per peer.
pub const MAX_LEDGER: usize = 4096;
/// Bytes handed to a connection and not yet written: serving that peer pauses above it.
pub const MAX_QUEUED_BYTES: usize = 8 << 20;
/// Streams a peer may have open to us at once, per connection.
pub const MAX_INBOUND_STREAMS: usize = 32;
/// An inbound stream without a message for this long is dropped.
pub const STREAM_IDLE: Duration = Duration::from_secs(60);
/// Writing one message may take this long.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// A request without progress for this long fails (then the CIDs are asked elsewhere).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Bytes a request may gather before it is answered with what it has.
pub const MAX_REQUEST_BYTES: usize = 8 << 20;
/// Unrequested blocks are warned of at most this often.
const WARN_PERIOD: Duration = Duration::from_secs(60);
/// CIDs remembered per peer after their request to it ended (see [`Ended`]).
const MAX_ENDED: usize = 4096;

/// Names one [`Behaviour::want`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId(u64);

/// A want of a peer, as queued in its ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    pub cid: Cid,
    pub want_type: WantType,
    pub send_dont_have: bool,
}

/// What the behaviour tells the swarm task.
#[derive(Debug)]
pub enum Event {
    /// Every CID of a request was answered: `blocks` (each under the CID its bytes hash to)
    /// and `dont_have`. CIDs in neither were given up for the byte cap: ask again.
    Response {
        peer: PeerId,
        request: RequestId,
        blocks: Vec<(Cid, Vec<u8>)>,
        dont_have: Vec<Cid>,
    },
    /// The request failed (timeout, disconnect, no Bitswap): ask elsewhere.
    Failed { peer: PeerId, request: RequestId },
    /// `peer` has wants queued and room to be sent answers: take them ([`Behaviour::take_wants`]).
    Wanted { peer: PeerId },
    /// `peer` speaks no Bitswap.
    Unsupported { peer: PeerId },
}

struct Pending {
    peer: PeerId,
    remaining: HashSet<Cid>,
    blocks: Vec<(Cid, Vec<u8>)>,
    dont_have: Vec<Cid>,
    bytes: usize,
    deadline: Instant,
}

/// A peer's wants: a queue of CIDs, and the want per CID (a CID cancelled or answered is
/// gone from `wants` and skipped when the queue reaches it).
#[derive(Default)]
struct Ledger {
    queue: VecDeque<Cid>,
    wants: HashMap<Cid, Want>,
}

/// The latest CIDs whose request to a peer ended (answered, given up for the byte cap, timed
/// out, failed): a block under one of them arriving later is a late or repeated answer (it
/// crossed our cancel, or the peer sent it twice), not a wrong block, and is dropped without
/// failing the peer's other requests. At most [`MAX_ENDED`], oldest forgotten first.
#[derive(Default)]
struct Ended {
    order: VecDeque<Cid>,
    set: HashSet<Cid>,
}

impl Ended {
    fn add(&mut self, cids: impl IntoIterator<Item = Cid>) {
        for cid in cids {
            if !self.set.insert(cid) {
                continue;
            }
            self.order.push_back(cid);
            if self.order.len() > MAX_ENDED {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

/// See the module doc.
pub struct Behaviour {
    protocol: StreamProtocol,
    connections: HashMap<PeerId, Vec<ConnectionId>>,
    /// Bytes handed to each connection's handler and not yet written.
    queued: HashMap<ConnectionId, usize>,
    ledgers: HashMap<PeerId, Ledger>,
    requests: HashMap<RequestId, Pending>,
    by_peer: HashMap<PeerId, Vec<RequestId>>,
    ended: HashMap<PeerId, Ended>,
    next_request: u64,
    events: VecDeque<ToSwarm<Event, (Message, usize)>>,
    check: Option<tokio::time::Interval>,
    warned: Option<Instant>,
    /// When an invalid message was last warned of.
    bad_warned: Option<Instant>,
    /// Blocks dropped since start: unrequested, or under a hash shoal does not accept.
    pub dropped_blocks: u64,
    /// Blocks dropped since start as late answers to requests that had ended ([`Ended`]).
    pub late_blocks: u64,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self::new()
    }
}

impl Behaviour {
    pub fn new() -> Self {
        Self {
            protocol: StreamProtocol::new(PROTOCOL),
            connections: HashMap::new(),
            queued: HashMap::new(),
            ledgers: HashMap::new(),
            requests: HashMap::new(),
            by_peer: HashMap::new(),
            ended: HashMap::new(),
            next_request: 0,
            events: VecDeque::new(),
            check: None,
            warned: None,
            bad_warned: None,
            dropped_blocks: 0,
            late_blocks: 0,
        }
    }

    fn send(&mut self, peer: &PeerId, message: Message) -> bool {
        let Some(&conn) = self.connections.get(peer).and_then(|c| c.first()) else {
            return false;
        };
        let bytes = message.encoded_len_estimate();
        *self.queued.entry(conn).or_default() += bytes;
        self.events.push_back(ToSwarm::NotifyHandler {
            peer_id: *peer,
            handler: NotifyHandler::One(conn),
            event: (message, bytes),
        });
        true
    }

    /// Asks `peer` for the blocks of `cids` (want-block, send-dont-have).
    pub fn want(&mut self, peer: PeerId, cids: Vec<Cid>) -> RequestId {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        let message = Message {
            wantlist: cids
                .iter()
                .map(|&cid| Entry {
                    cid,
                    priority: 1,
                    cancel: false,
                    want_type: WantType::Block,
                    send_dont_have: true,
                })
                .collect(),
            ..Message::default()
        };
        if !self.send(&peer, message) {
            self.events
                .push_back(ToSwarm::GenerateEvent(Event::Failed { peer, request: id }));
            return id;
        }
        self.requests.insert(
            id,
            Pending {
                peer,
                remaining: cids.into_iter().collect(),
                blocks: Vec::new(),
                dont_have: Vec::new(),
                bytes: 0,
                deadline: Instant::now() + REQUEST_TIMEOUT,
            },
        );
        self.by_peer.entry(peer).or_default().push(id);
        id
    }

    fn cancel(&mut self, peer: &PeerId, cids: impl IntoIterator<Item = Cid>) {
        let wantlist: Vec<Entry> = cids
            .into_iter()
            .map(|cid| Entry {
                cid,
                priority: 0,
                cancel: true,
                want_type: WantType::Block,
                send_dont_have: false,
            })
            .collect();
        if !wantlist.is_empty() {
            self.send(
                peer,
                Message {
                    wantlist,
                    ..Message::default()
                },
            );
        }
    }

    /// Forgets request `id` of `peer`, remembering its CIDs as ended while the peer is
    /// connected.
    fn unlink(&mut self, peer: &PeerId, id: RequestId, cids: impl IntoIterator<Item = Cid>) {
        if self.connections.contains_key(peer) {
            self.ended.entry(*peer).or_default().add(cids);
        }
        if let Some(ids) = self.by_peer.get_mut(peer) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                self.by_peer.remove(peer);
            }
        }
    }

    /// Answers request `id` with what it gathered (the rest is cancelled at the peer).
    fn complete(&mut self, id: RequestId) {
        let Some(p) = self.requests.remove(&id) else {
            return;
        };
        let cids = p.remaining.iter().chain(p.blocks.iter().map(|(c, _)| c));
        self.unlink(&p.peer, id, cids.copied().collect::<Vec<_>>());
        self.cancel(&p.peer, p.remaining.iter().copied());
        self.events
            .push_back(ToSwarm::GenerateEvent(Event::Response {
                peer: p.peer,
                request: id,
                blocks: p.blocks,
                dont_have: p.dont_have,
            }));
    }

    fn fail(&mut self, id: RequestId, cancel: bool) {
        let Some(p) = self.requests.remove(&id) else {
            return;
        };
        let cids = p.remaining.iter().chain(p.blocks.iter().map(|(c, _)| c));
        self.unlink(&p.peer, id, cids.copied().collect::<Vec<_>>());
        if cancel {
            self.cancel(&p.peer, p.remaining.iter().copied());
        }
        self.events.push_back(ToSwarm::GenerateEvent(Event::Failed {
            peer: p.peer,
            request: id,
        }));
    }

    /// Up to `max` of `peer`'s queued wants, oldest first (taken out of its ledger).
    pub fn take_wants(&mut self, peer: &PeerId, max: usize) -> Vec<Want> {
        let Some(l) = self.ledgers.get_mut(peer) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while out.len() < max {
            let Some(cid) = l.queue.pop_front() else {
                break;
            };
            if let Some(w) = l.wants.remove(&cid) {
                out.push(w);
            }
        }
        out
    }

    /// Puts wants taken but not answered back at the front of `peer`'s ledger.
    pub fn return_wants(&mut self, peer: &PeerId, wants: Vec<Want>) {
        if !self.connections.contains_key(peer) {
            return;
        }
        let l = self.ledgers.entry(*peer).or_default();
        for w in wants.into_iter().rev() {
            if l.wants.len() < MAX_LEDGER && !l.wants.contains_key(&w.cid) {
                l.queue.push_front(w.cid);
                l.wants.insert(w.cid, w);
            }
        }
    }

    /// Whether `peer` has wants queued.
    pub fn has_wants(&self, peer: &PeerId) -> bool {
        self.ledgers.get(peer).is_some_and(|l| !l.wants.is_empty())
    }

    /// Peers with wants queued.
    pub fn peers_with_wants(&self) -> Vec<PeerId> {
        self.ledgers
            .iter()
            .filter(|(_, l)| !l.wants.is_empty())
            .map(|(p, _)| *p)
            .collect()
    }

    /// Whether answers to `peer` may be read now: its connection's send queue is short.
    pub fn can_send(&self, peer: &PeerId) -> bool {
        match self.connections.get(peer).and_then(|c| c.first()) {
            Some(conn) => self.queued.get(conn).copied().unwrap_or(0) < MAX_QUEUED_BYTES,
            None => false,
        }
    }

    /// Sends the answers to `peer`'s wants, split into messages of at most [`MESSAGE_BUDGET`]
    /// bytes of blocks.
    pub fn respond(
        &mut self,
        peer: &PeerId,
        blocks: Vec<(Cid, Vec<u8>)>,
        presences: Vec<(Cid, Presence)>,
    ) {
        let mut message = Message {
            presences,
            ..Message::default()
        };
        let mut size = 0;
        for (cid, data) in blocks {
            if size + data.len() > MESSAGE_BUDGET && !message.blocks.is_empty() {
                self.send(peer, std::mem::take(&mut message));
                size = 0;
            }
            size += data.len();
            message.blocks.push((cid, Bytes::from(data)));
        }
        if !message.is_empty() {
            self.send(peer, message);
        }
    }

    fn on_message(&mut self, peer: PeerId, message: Message, skipped: usize) {
        let (mut unrequested, mut late) = (0, 0u64);
        // Answers to our requests.
        let ids = self.by_peer.get(&peer).cloned().unwrap_or_default();
        // Completed after the whole message is read: a request past its byte cap still takes
        // the rest of this message (it is in memory already).
        let mut done = Vec::new();
        for (cid, data) in message.blocks {
            let owner = ids.iter().copied().find(|id| {
                self.requests
                    .get(id)
                    .is_some_and(|p| p.remaining.contains(&cid))
            });
            match owner.and_then(|id| Some((id, self.requests.get_mut(&id)?))) {
                Some((id, p)) => {
                    p.remaining.remove(&cid);
                    p.bytes = p.bytes.saturating_add(data.len());
                    p.blocks.push((cid, Vec::from(data)));
                    p.deadline = Instant::now() + REQUEST_TIMEOUT;
                    if (p.remaining.is_empty() || p.bytes >= MAX_REQUEST_BYTES)
                        && !done.contains(&id)
                    {
                        done.push(id);
                    }
                }
                None if self.ended.get(&peer).is_some_and(|e| e.set.contains(&cid)) => late += 1,
                None => unrequested += 1,
            }
        }
        for (cid, presence) in message.presences {
            if presence != Presence::DontHave {
                continue;
            }
            for id in &ids {
                if let Some(p) = self.requests.get_mut(id) {
                    if p.remaining.remove(&cid) {
                        p.dont_have.push(cid);
                        p.deadline = Instant::now() + REQUEST_TIMEOUT;
                        if p.remaining.is_empty() && !done.contains(id) {
                            done.push(*id);
                        }
                        break;
                    }
                }
            }
        }
        for id in done {
            self.complete(id);
        }
        // A block under no CID we asked this peer for is, in answer to a want, a block that
        // does not hash to its CID: the peer's other answers are not to be waited for (the
        // fetcher asks elsewhere at once, not after the timeout).
        if unrequested > 0 {
            for id in self.by_peer.get(&peer).cloned().unwrap_or_default() {
                self.fail(id, true);
            }
        }
        if late > 0 {
            self.late_blocks = self.late_blocks.saturating_add(late);
            tracing::debug!(%peer, count = late, "dropped late Bitswap blocks (their request had ended)");
        }
        let dropped = skipped + unrequested;
        if dropped > 0 {
            self.dropped_blocks = self.dropped_blocks.saturating_add(dropped as u64);
            if self.warned.is_none_or(|t| t.elapsed() >= WARN_PERIOD) {
                self.warned = Some(Instant::now());
                tracing::warn!(
                    %peer, count = dropped,
                    "peer sent Bitswap blocks that do not match their CIDs (blocks nobody asked \
                     it for, or under a hash shoal does not accept); dropped (not logged again \
                     for a minute)"
                );
            } else {
                tracing::debug!(%peer, count = dropped, "dropped unrequested Bitswap blocks");
            }
        }
        // The peer's wants.
        if message.wantlist.is_empty() && !message.full {
            return;
        }
        let l = self.ledgers.entry(peer).or_default();
        if message.full {
            l.wants.clear();
            l.queue.clear();
        }
        let mut refused = 0;
        for e in message.wantlist {
            if e.cancel {
                l.wants.remove(&e.cid);
                continue;
            }
            let want = Want {
                cid: e.cid,
                want_type: e.want_type,
                send_dont_have: e.send_dont_have,
            };
            let room = l.wants.len() < MAX_LEDGER;
            match l.wants.get_mut(&e.cid) {
                // An upgrade from want-have to want-block, or a repeat.
                Some(w) => {
                    if w.want_type == WantType::Have {
                        *w = want;
                    }
                }
                None if room => {
                    l.queue.push_back(e.cid);
                    l.wants.insert(e.cid, want);
                }
                None => refused += 1,
            }
        }
        // Cancelled CIDs linger in the queue until reached: keep it bounded too.
        if l.queue.len() > 2 * MAX_LEDGER {
            let wants = &l.wants;
            l.queue.retain(|c| wants.contains_key(c));
        }
        if refused > 0 {
            tracing::debug!(%peer, refused, limit = MAX_LEDGER, "peer wants more blocks than are queued for it; dropped the rest");
        }
        if !l.wants.is_empty() {
            self.events
                .push_back(ToSwarm::GenerateEvent(Event::Wanted { peer }));
        }
    }

    fn check_timeouts(&mut self) {
        let now = Instant::now();
        let late: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            self.fail(id, true);
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = handler::Handler;
    type ToSwarm = Event;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(handler::Handler::new(self.protocol.clone()))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(handler::Handler::new(self.protocol.clone()))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(c) => {
                self.connections
                    .entry(c.peer_id)
                    .or_default()
                    .push(c.connection_id);
            }
            FromSwarm::ConnectionClosed(c) => {
                self.queued.remove(&c.connection_id);
                if let Some(conns) = self.connections.get_mut(&c.peer_id) {
                    conns.retain(|id| *id != c.connection_id);
                    if conns.is_empty() {
                        self.connections.remove(&c.peer_id);
                    }
                }
                if c.remaining_established == 0 {
                    self.ledgers.remove(&c.peer_id);
                    self.ended.remove(&c.peer_id);
                    for id in self.by_peer.get(&c.peer_id).cloned().unwrap_or_default() {
                        self.fail(id, false);
                    }
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {
            handler::ToBehaviour::Received { message, skipped } => {
                self.on_message(peer, message, skipped)
            }
            handler::ToBehaviour::Done { bytes } => {
                let was_full = !self.can_send(&peer);
                if let Some(q) = self.queued.get_mut(&connection) {
                    *q = q.saturating_sub(bytes);
                }
                if was_full && self.can_send(&peer) && self.has_wants(&peer) {
                    self.events
                        .push_back(ToSwarm::GenerateEvent(Event::Wanted { peer }));
                }
            }
            handler::ToBehaviour::Unsupported => {
                for id in self.by_peer.get(&peer).cloned().unwrap_or_default() {
                    self.fail(id, false);
                }
                self.events
                    .push_back(ToSwarm::GenerateEvent(Event::Unsupported { peer }));
            }
            handler::ToBehaviour::Bad(error) => {
                if self.bad_warned.is_none_or(|t| t.elapsed() >= WARN_PERIOD) {
                    self.bad_warned = Some(Instant::now());
                    tracing::warn!(
                        %peer, %error,
                        "peer sent an invalid Bitswap message; dropped it and its stream (not \
                         logged again for a minute)"
                    );
                } else {
                    tracing::debug!(%peer, %error, "dropped an invalid Bitswap message");
                }
            }
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Event, (Message, usize)>> {
        if let Some(ev) = self.events.pop_front() {
            return Poll::Ready(ev);
        }
        if !self.requests.is_empty() {
            let mut check = self.check.take().unwrap_or_else(|| {
                let mut i = tokio::time::interval(Duration::from_secs(1));
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                i
            });
            // Polled until pending, so the timer wakes this behaviour for the next check.
            while check.poll_tick(cx).is_ready() {
                self.check_timeouts();
            }
            self.check = Some(check);
            if let Some(ev) = self.events.pop_front() {
                return Poll::Ready(ev);
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests;
