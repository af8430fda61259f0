//! The swarm task: owns the `Swarm`, the block [`Fetcher`] and the tables of heads; selects
//! over finished local work (served `Want`s), commands, swarm events and timers, in that order
//! (finish local work before taking new peer work).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self as rr, InboundRequestId, OutboundRequestId, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{gossipsub, identify, mdns, ping, Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, watch, Semaphore};

use super::behaviour::{self, Behaviour, BehaviourEvent};
use super::budget::Budgets;
use super::forks::Forks;
use super::heads::{self, source_id, HeadBook};
use super::redial::{self, Added, Redials};
use super::statuses::{Offer, StatusBook};
use super::{dialable, gossip, Command, Config, Error, Event, NetworkState, PeerInfo};
use crate::exchange::bitswap::{self, Presence, Want, WantType};
use crate::exchange::wire::source_hash;
use crate::exchange::{self, BlockSource, DigestEntry, Fetcher, Request, Response};
use crate::head::SignedHead;

/// Blocking reads for peers' `Want`s running at once.
const SERVE_CONCURRENCY: usize = 4;
/// Heads per digest answer (the response must stay under its size cap).
const MAX_HEADS_PER_ANSWER: usize = 1000;
/// How long a request refused for its peer's budget waits for its empty answer. Answered at
/// once, a flooding peer simply asked again: its streams are limited, not its requests, so
/// the node decrypted and decoded every request of a flood (a peer's 512-CID Wants at
/// ~800/s, issue 12). Held, the peer's open streams fill and its flood slows to what they
/// allow. Well below the requesters' [`exchange::REQUEST_TIMEOUT`].
pub(super) const REFUSAL_DELAY: Duration = Duration::from_secs(1);
/// Refusals held at once (every inbound stream of the 256 connections allowed); past it a
/// refusal is answered at once.
const MAX_HELD_REFUSALS: usize = 256 * exchange::MAX_INBOUND_STREAMS;

/// Milliseconds since `timestamp` (µs since the epoch) for logs; 0 if in the future.
pub(crate) fn age_ms(timestamp: u64) -> f64 {
    let now = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    now.saturating_sub(timestamp) as f64 / 1000.0
}

/// Incoming handshake failures are warned of at most this often.
const INCOMING_WARN_PERIOD: Duration = Duration::from_secs(60);

/// Whether a dial failed in the transport upgrade (pnet, noise) rather than at TCP (refused,
/// unreachable): with swarm keys, what a key mismatch looks like (the bytes after pnet are
/// garbage to the other side, which resets the connection).
fn is_handshake_failure(error: &str) -> bool {
    error.to_ascii_lowercase().contains("handshake")
}

/// The same for an accepted connection: TCP is up already, so any failure to negotiate the
/// upgrade is a handshake failure.
fn is_incoming_handshake_failure(error: &str) -> bool {
    is_handshake_failure(error) || error.to_ascii_lowercase().contains("negotiate")
}

/// What to tell an operator about a failed connection.
fn failure_reason(error: &str, keyed: bool) -> String {
    if !is_handshake_failure(error) {
        return error.to_string();
    }
    if keyed {
        "handshake failed: different swarm key?".into()
    } else {
        "handshake failed: does the peer use a swarm key? (this node has none)".into()
    }
}

/// Microseconds since the Unix epoch (0 for times before it).
fn micros(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

/// A served `Want`: who asked, where the answer goes, the answer.
type Served = (
    PeerId,
    InboundRequestId,
    ResponseChannel<Response>,
    Response,
);

/// Bitswap wants of one peer read from the store: blocks, presences, wants left over for the
/// next batch (the size budget), and how many CIDs were not here.
struct BitswapServed {
    peer: PeerId,
    blocks: Vec<(cid::Cid, Vec<u8>)>,
    presences: Vec<(cid::Cid, Presence)>,
    unserved: Vec<Want>,
    misses: usize,
}

/// Bitswap wants taken from a peer's ledger per store read.
const BITSWAP_WANTS_PER_READ: usize = 64;
/// Store reads for one peer's Bitswap wants at once.
const BITSWAP_READS_PER_PEER: usize = 2;

/// A block request in flight, by protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum RequestKey {
    Shoal(OutboundRequestId),
    Bitswap(bitswap::RequestId),
}

/// Which block exchanges a peer's identify lists.
#[derive(Debug, Clone, Copy)]
struct Speaks {
    shoal: bool,
    bitswap: bool,
}

/// Which protocol fetches blocks from shoal peers (IPFS peers always get Bitswap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockExchange {
    Bitswap,
    Shoal,
}

pub(super) struct Task {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    /// What the rest of the node sees of the network; this task is its only writer.
    status: watch::Sender<NetworkState>,
    blocks: Arc<dyn BlockSource>,
    served_tx: mpsc::Sender<Served>,
    served_rx: mpsc::Receiver<Served>,
    serve_limit: Arc<Semaphore>,
    fetcher: Fetcher<RequestKey>,
    bitswap_tx: mpsc::Sender<BitswapServed>,
    /// Heads of digest answers, verified off the swarm task (`on_heads`).
    verified_tx: mpsc::Sender<(PeerId, Vec<SignedHead>)>,
    verified_rx: mpsc::Receiver<(PeerId, Vec<SignedHead>)>,
    bitswap_rx: mpsc::Receiver<BitswapServed>,
    /// Store reads running per peer for its Bitswap wants.
    bitswap_reads: HashMap<PeerId, usize>,
    /// The block exchanges each connected peer speaks (from identify).
    speaks: HashMap<PeerId, Speaks>,
    /// Which exchange fetches from peers that speak both.
    block_exchange: BlockExchange,
    /// Known and stored heads per source.
    heads: HeadBook,
    topic: gossipsub::IdentTopic,
    /// Node statuses (`crate::status`): their own topic, so heads never queue behind them.
    status_topic: gossipsub::IdentTopic,
    statuses: StatusBook,
    redial: Redials,
    digest_interval: Duration,
    /// Whether any listen address was requested.
    listening: bool,
    /// This node uses a swarm key (how to read a failed handshake).
    keyed: bool,
    /// Peers whose dials fail since they were last connected (each is warned of once).
    failing: HashSet<PeerId>,
    /// When an incoming handshake failure was last warned of (at most one a minute: anyone
    /// can connect and fail).
    incoming_warned: Option<Instant>,
    /// When a head was last dropped for the source limit (warned at most once a minute).
    limit_warned: Option<Instant>,
    /// The same for node statuses.
    status_limit_warned: Option<Instant>,
    /// Sources seen signing two trees at one offset.
    forks: Forks,
    /// What each connected peer may make us do (Wants in flight, digests per second).
    budgets: Budgets,
    /// Answers to requests refused for their peer's budget, with when each is due (in that
    /// order): see [`REFUSAL_DELAY`].
    refusals: VecDeque<(Instant, ResponseChannel<Response>, Response)>,
    /// Resuming the own source after a lost store (`crate::resume`).
    resume: crate::resume::Resume,
}

impl Task {
    pub(super) fn new(
        config: Config,
        blocks: Arc<dyn BlockSource>,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<Event>,
        status: watch::Sender<NetworkState>,
        heads: HeadBook,
    ) -> Result<Self, Error> {
        let key = config.keypair.clone();
        let transport = behaviour::transport(&key, config.swarm_key)?;
        let behaviour = Behaviour::new(&key, config.mdns)?;
        let swarm_cfg = libp2p::swarm::Config::with_tokio_executor()
            .with_idle_connection_timeout(Duration::from_secs(3600));
        let mut swarm = Swarm::new(transport, behaviour, key.public().to_peer_id(), swarm_cfg);
        let topic = gossipsub::IdentTopic::new(gossip::TOPIC);
        let status_topic = gossipsub::IdentTopic::new(crate::status::TOPIC);
        for t in [&topic, &status_topic] {
            swarm
                .behaviour_mut()
                .gossipsub
                .subscribe(t)
                .map_err(|e| Error::Build(super::BuildError::Gossipsub(e.to_string())))?;
        }
        for addr in &config.listen {
            swarm.listen_on(addr.clone()).map_err(|e| Error::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        }
        let redial = Redials::new(&config.peers, Instant::now());
        let (served_tx, served_rx) = mpsc::channel(64);
        let (bitswap_tx, bitswap_rx) = mpsc::channel(64);
        let (verified_tx, verified_rx) = mpsc::channel(64);
        Ok(Self {
            swarm,
            commands,
            events,
            status,
            blocks,
            served_tx,
            served_rx,
            serve_limit: Arc::new(Semaphore::new(SERVE_CONCURRENCY)),
            fetcher: Fetcher::default(),
            bitswap_tx,
            verified_tx,
            verified_rx,
            bitswap_rx,
            bitswap_reads: HashMap::new(),
            speaks: HashMap::new(),
            block_exchange: config.block_exchange,
            heads,
            topic,
            status_topic,
            statuses: StatusBook::default(),
            redial,
            digest_interval: config.digest_interval,
            listening: !config.listen.is_empty(),
            keyed: config.swarm_key.is_some(),
            failing: HashSet::new(),
            incoming_warned: None,
            limit_warned: None,
            status_limit_warned: None,
            forks: Forks::default(),
            budgets: Budgets::default(),
            refusals: VecDeque::new(),
            resume: config.resume,
        })
    }

    /// Changes the published network state; `f` says whether readers should be woken (a
    /// peer's `last_seen` moving is not worth waking anyone for: they read it when they look).
    fn status(&self, f: impl FnOnce(&mut NetworkState) -> bool) {
        self.status.send_if_modified(f);
    }

    /// Drives the swarm until it reports its first listen address (bounded wait).
    pub(super) async fn wait_listening(&mut self) -> Result<(), Error> {
        if !self.listening {
            return Ok(());
        }
        let deadline = tokio::time::sleep(Duration::from_secs(10));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                ev = self.swarm.select_next_some() => {
                    let listening = matches!(ev, SwarmEvent::NewListenAddr { .. });
                    self.on_swarm_event(ev);
                    if listening {
                        return Ok(());
                    }
                }
                _ = &mut deadline => {
                    return Err(Error::Listen {
                        addr: Multiaddr::empty(),
                        reason: "no listen address within 10 s".into(),
                    })
                }
            }
        }
    }

    pub(super) async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut digest = tokio::time::interval(self.digest_interval);
        digest.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut redial = tokio::time::interval(Duration::from_millis(500));
        redial.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                biased;
                Some((peer, id, channel, response)) = self.served_rx.recv() => {
                    let (misses, bytes) = match &response {
                        Response::Blocks { blocks, have_not } => {
                            (have_not.len(), blocks.iter().map(|(_, b)| b.len()).sum())
                        }
                        Response::Heads(_) => (0, 0),
                    };
                    self.budgets.end_want(&peer, misses);
                    // The requester may have gone away; nothing to do then.
                    if self.respond(channel, response) {
                        self.budgets.answer_queued(id, peer, bytes);
                    }
                }
                Some(served) = self.bitswap_rx.recv() => self.on_bitswap_served(served),
                Some((peer, heads)) = self.verified_rx.recv() => self.on_verified_heads(peer, heads),
                _ = crate::stopped(&mut shutdown) => break,
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev),
                _ = tick.tick(), if self.fetcher.sessions() > 0 => {}
                _ = digest.tick() => {
                    self.send_digests();
                    if self.statuses.expire(Instant::now()) {
                        self.node_list_changed();
                    }
                }
                _ = redial.tick() => {
                    self.redial();
                    self.answer_due_refusals(Instant::now());
                    // Peers whose wants waited for their miss budget to refill.
                    for peer in self.swarm.behaviour().bitswap.peers_with_wants() {
                        self.serve_bitswap(peer);
                    }
                    self.heads.save_if_due();
                    self.publish_scores();
                }
            }
            if self.fetcher.sessions() > 0 {
                self.pump_fetches();
            }
        }
        // Heads reported stored just before the shutdown are saved too.
        while let Ok(cmd) = self.commands.try_recv() {
            if let Command::Stored(head) = cmd {
                self.heads.set_stored(head);
            }
        }
        self.heads.save_now();
        tracing::debug!("swarm task stopped");
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Publish { head, blocks } => {
                let data = gossip::encode(&head, &blocks);
                self.remember_known(&head);
                self.heads.set_stored(head);
                let topic = self.topic.clone();
                if let Err(e) = self.swarm.behaviour_mut().gossipsub.publish(topic, data) {
                    // No subscribed peer yet is normal; digests catch them up later.
                    tracing::debug!(error = %e, "gossip publish failed");
                }
            }
            Command::Stored(head) => {
                self.remember_known(&head);
                self.heads.set_stored(head);
            }
            Command::StoredHeads(reply) => {
                let _ = reply.send(self.heads.stored_heads().cloned().collect());
            }
            Command::Fetch {
                cids,
                preferred,
                reply,
            } => {
                self.fetcher.add(cids, reply, preferred);
            }
            Command::Dial(addr) => {
                if let Err(e) = self.swarm.dial(addr.clone()) {
                    tracing::warn!(%addr, error = %e, "dial failed");
                }
            }
            Command::AnnounceStatus(status) => {
                let topic = self.status_topic.clone();
                let data = status.encode();
                if let Err(e) = self.swarm.behaviour_mut().gossipsub.publish(topic, data) {
                    // No subscribed peer yet is normal; the next announcement tries again.
                    tracing::debug!(error = %e, "status publish failed");
                }
            }
            Command::Statuses(reply) => {
                // The asker may have gone away; nothing to do then.
                let _ = reply.send(self.statuses.list(Instant::now()));
            }
        }
    }

    /// Copies each connected peer's gossipsub score into the network state (node info).
    fn publish_scores(&mut self) {
        let gossip = &self.swarm.behaviour().gossipsub;
        let scores: Vec<(PeerId, Option<i64>)> = self
            .swarm
            .connected_peers()
            .map(|p| (*p, gossip.peer_score(p).map(|s| s.round() as i64)))
            .collect();
        self.status(|s| {
            let mut changed = false;
            for (peer, score) in scores {
                if let Some(p) = s.peers.get_mut(&peer) {
                    changed |= p.gossip_score != score;
                    p.gossip_score = score;
                }
            }
            changed
        });
    }

    /// Raises the known offset of a head's source; true if it is news.
    fn remember_known(&mut self, head: &SignedHead) -> bool {
        let news = self.heads.remember_known(head);
        if news {
            let (source, offset) = (source_id(&head.head.source), head.head.offset);
            self.status(|s| {
                s.known.insert(source, offset);
                true
            });
        }
        news
    }

    /// Whether blocks are fetched from `peer` with Bitswap: the preferred exchange, unless its
    /// identify shows it speaks only the other (until identify arrives: the preferred one).
    fn fetch_with_bitswap(&self, peer: &PeerId) -> bool {
        match self.speaks.get(peer) {
            Some(Speaks { bitswap: false, .. }) => false,
            Some(Speaks { shoal: false, .. }) => true,
            _ => self.block_exchange == BlockExchange::Bitswap,
        }
    }

    /// Whether `peer` may speak `/shoal/exchange/1` (false once identify says it does not).
    fn speaks_shoal(&self, peer: &PeerId) -> bool {
        self.speaks.get(peer).is_none_or(|s| s.shoal)
    }

    fn pump_fetches(&mut self) {
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for planned in self.fetcher.plan(&peers) {
            let key = if self.fetch_with_bitswap(&planned.peer) {
                let cids = planned.cids.clone();
                RequestKey::Bitswap(self.swarm.behaviour_mut().bitswap.want(planned.peer, cids))
            } else {
                let req = Request::Want(planned.cids.clone());
                RequestKey::Shoal(
                    self.swarm
                        .behaviour_mut()
                        .exchange
                        .send_request(&planned.peer, req),
                )
            };
            self.fetcher.sent(key, planned);
        }
    }

    fn digest(&self) -> Vec<DigestEntry> {
        self.heads
            .stored_heads()
            .map(|h| DigestEntry {
                source_hash: source_hash(&h.head.source),
                offset: h.head.offset,
                pruned: h.head.pruned,
            })
            .collect()
    }

    fn send_digests(&mut self) {
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        let digest = self.digest();
        let peers: Vec<PeerId> = peers.into_iter().filter(|p| self.speaks_shoal(p)).collect();
        for peer in peers {
            self.swarm
                .behaviour_mut()
                .exchange
                .send_request(&peer, Request::Digest(digest.clone()));
        }
    }

    /// Remembers how far `peer` stores our own events (its digest lists its stored heads), and
    /// tells a resuming own source (`crate::resume`).
    fn note_digest(&mut self, peer: PeerId, entries: &[DigestEntry]) {
        let ours = source_hash(self.swarm.local_peer_id());
        let offset = entries
            .iter()
            .find(|e| e.source_hash == ours)
            .map(|e| e.offset);
        self.resume.heard(offset);
        let Some(offset) = offset else {
            return;
        };
        self.status(|s| match s.peers.get_mut(&peer) {
            Some(p) if p.our_offset_stored != Some(offset) => {
                p.our_offset_stored = Some(offset);
                true
            }
            _ => false,
        });
    }

    /// Heads we store that the digest's sender lacks or is behind on.
    fn answer_digest(&self, entries: &[DigestEntry]) -> Response {
        let theirs: HashMap<[u8; 8], (u64, u64)> = entries
            .iter()
            .map(|e| (e.source_hash, (e.offset, e.pruned)))
            .collect();
        let heads = self
            .heads
            .stored_heads()
            .filter(|h| {
                theirs
                    .get(&source_hash(&h.head.source))
                    .is_none_or(|&o| o < h.head.position())
            })
            .take(MAX_HEADS_PER_ANSWER)
            .cloned()
            .collect();
        Response::Heads(heads)
    }

    fn emit(
        &mut self,
        head: SignedHead,
        blocks: Vec<(cid::Cid, Vec<u8>)>,
        from: PeerId,
        held: bool,
    ) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.events.try_send(Event::Head {
            head,
            blocks,
            from,
            held,
        }) {
            tracing::warn!("replication is busy; dropped a head (the next digest brings it back)");
        }
    }

    fn redial(&mut self) {
        let swarm = &self.swarm;
        let due = self.redial.due(Instant::now(), |p| swarm.is_connected(p));
        for addr in due {
            tracing::debug!(%addr, "dialling");
            if let Err(e) = self.swarm.dial(addr.clone()) {
                tracing::debug!(%addr, error = %e, "dial failed");
            }
        }
    }

    /// A dial of `peer` failed: node info shows why; the log says it once per streak of
    /// failures (the redial goes on with backoff, at debug level).
    fn dial_failed(&mut self, peer: PeerId, reason: String, error: &str) {
        if self.failing.insert(peer) {
            tracing::warn!(%peer, %reason, %error, "cannot connect to peer; retrying with backoff up to 30 s");
        } else {
            tracing::debug!(%peer, %error, "dial failed again");
        }
        self.status(|s| {
            if !s.peers.contains_key(&peer) {
                s.make_room_for_peer();
            }
            let p = s.peers.entry(peer).or_insert_with(|| PeerInfo {
                peer_id: peer.to_string(),
                addrs: vec![],
                connected: false,
                last_seen: None,
                our_offset_stored: None,
                last_error: None,
                gossip_score: None,
            });
            let changed = p.last_error.as_deref() != Some(reason.as_str());
            p.last_error = Some(reason);
            changed
        });
    }

    fn touch_peer(&mut self, peer: PeerId, connected: Option<bool>, addr: Option<Multiaddr>) {
        let now = micros(SystemTime::now());
        self.status(|s| {
            let mut changed = false;
            if !s.peers.contains_key(&peer) {
                s.make_room_for_peer();
            }
            let p = s.peers.entry(peer).or_insert_with(|| {
                changed = true;
                PeerInfo {
                    peer_id: peer.to_string(),
                    addrs: vec![],
                    connected: false,
                    last_seen: Some(now),
                    our_offset_stored: None,
                    last_error: None,
                    gossip_score: None,
                }
            });
            p.last_seen = Some(now);
            if let Some(c) = connected {
                changed |= p.connected != c;
                p.connected = c;
            }
            if let Some(a) = addr.map(|a| a.to_string()) {
                if !p.addrs.contains(&a) && p.addrs.len() < 16 {
                    p.addrs.push(a);
                    changed = true;
                }
            }
            changed
        });
    }

    fn on_swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "swarm listening");
                self.status(|s| {
                    s.listen_addrs.push(address);
                    // Loopback first: it is what `shoal run` prints when listening on 0.0.0.0.
                    s.listen_addrs.sort_by_key(|a| !is_loopback(a));
                    true
                });
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.status(|s| {
                    s.listen_addrs.retain(|a| a != &address);
                    true
                });
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                let addr = endpoint.get_remote_address().clone();
                if endpoint.is_dialer() {
                    self.redial.learned(&addr, peer_id);
                }
                if num_established.get() == 1 {
                    tracing::info!(peer = %peer_id, %addr, "peer connected");
                    self.budgets.connected(peer_id);
                    self.failing.remove(&peer_id);
                    self.status(|s| match s.peers.get_mut(&peer_id) {
                        Some(p) if p.last_error.is_some() => {
                            p.last_error = None;
                            true
                        }
                        _ => false,
                    });
                    // Catch up at once instead of waiting for the next digest round.
                    let digest = self.digest();
                    self.swarm
                        .behaviour_mut()
                        .exchange
                        .send_request(&peer_id, Request::Digest(digest));
                }
                self.touch_peer(peer_id, Some(true), Some(addr));
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                cause,
                ..
            } => {
                let cause = cause.map(|c| c.to_string()).unwrap_or_default();
                tracing::info!(peer = %peer_id, %cause, "peer disconnected");
                self.budgets.disconnected(&peer_id);
                self.speaks.remove(&peer_id);
                self.touch_peer(peer_id, Some(false), None);
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                let error = error.to_string();
                let reason = failure_reason(&error, self.keyed);
                match peer_id {
                    Some(peer) => self.dial_failed(peer, reason, &error),
                    None => tracing::warn!(%reason, %error, "dial failed (retrying with backoff)"),
                }
            }
            SwarmEvent::IncomingConnectionError {
                error,
                send_back_addr,
                ..
            } => {
                let error = error.to_string();
                let handshake = is_incoming_handshake_failure(&error);
                let reason =
                    failure_reason(if handshake { "handshake" } else { &error }, self.keyed);
                let due = self
                    .incoming_warned
                    .is_none_or(|t| t.elapsed() >= INCOMING_WARN_PERIOD);
                if handshake && due {
                    self.incoming_warned = Some(Instant::now());
                    tracing::warn!(
                        from = %send_back_addr, %reason,
                        "a connecting peer failed the handshake (more are logged at debug level for a minute)"
                    );
                } else {
                    tracing::debug!(from = %send_back_addr, %error, "incoming connection failed");
                }
            }
            SwarmEvent::Behaviour(ev) => self.on_behaviour_event(ev),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, ev: BehaviourEvent) {
        match ev {
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) if message.topic == self.status_topic.hash() => {
                self.on_status(propagation_source, message_id, &message.data)
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => self.on_gossip(propagation_source, message_id, &message.data),
            BehaviourEvent::Gossipsub(_) => {}
            BehaviourEvent::Limits(never) => match never {},
            BehaviourEvent::Exchange(ev) => self.on_exchange(ev),
            BehaviourEvent::Bitswap(ev) => self.on_bitswap(ev),
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                let speaks = Speaks {
                    shoal: info
                        .protocols
                        .iter()
                        .any(|p| p.as_ref() == exchange::PROTOCOL),
                    bitswap: info
                        .protocols
                        .iter()
                        .any(|p| p.as_ref() == bitswap::PROTOCOL),
                };
                if !speaks.shoal {
                    tracing::info!(
                        peer = %peer_id, agent = %info.agent_version, bitswap = speaks.bitswap,
                        "peer is not a shoal node; blocks are exchanged with it over Bitswap only"
                    );
                }
                self.speaks.insert(peer_id, speaks);
                for a in info.listen_addrs {
                    self.touch_peer(peer_id, None, Some(a));
                }
            }
            BehaviourEvent::Identify(_) => {}
            BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result,
            }) => match result {
                Ok(_) => self.touch_peer(peer, None, None),
                // IPFS peers (Helia) run no ping: kept, TCP keep-alive tells when they are gone.
                Err(ping::Failure::Unsupported) => {
                    tracing::debug!(%peer, "peer runs no ping; kept (TCP keep-alive watches it)");
                }
                Err(e) => {
                    tracing::info!(%peer, error = %e, "ping failed; closing the connection");
                    self.swarm.close_connection(connection);
                }
            },
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                let now = Instant::now();
                for (peer, addr) in found {
                    if peer == *self.swarm.local_peer_id() {
                        continue;
                    }
                    let addr = dialable(&addr, peer);
                    match self.redial.add_mdns(addr.clone(), peer, now) {
                        Added::New => tracing::info!(%peer, %addr, "discovered by mDNS"),
                        Added::Known => {}
                        Added::Full => tracing::warn!(
                            %peer, %addr, limit = redial::MAX_MDNS,
                            "mDNS found more peers than are kept; ignored until some expire"
                        ),
                    }
                }
                // Dial at once, not at the next redial tick.
                self.redial();
            }
            BehaviourEvent::Mdns(mdns::Event::Expired(gone)) => {
                for (peer, addr) in gone {
                    let addr = dialable(&addr, peer);
                    self.redial.expire_mdns(&addr);
                    tracing::debug!(%peer, %addr, "mDNS record expired");
                }
            }
        }
    }

    fn on_gossip(&mut self, from: PeerId, id: gossipsub::MessageId, data: &[u8]) {
        // Over its head budget the message is dropped before its signature is checked.
        if self.budgets.take_heads(from, 1, Instant::now()) == 0 {
            self.swarm
                .behaviour_mut()
                .gossipsub
                .report_message_validation_result(&id, &from, gossipsub::MessageAcceptance::Ignore);
            return;
        }
        let acceptance = match gossip::decode(data) {
            Err(e) => {
                tracing::warn!(peer = %from, error = %e, "dropped invalid gossip");
                gossipsub::MessageAcceptance::Reject
            }
            Ok(m) if !self.make_room_for(&m.head.head.source, from) => {
                gossipsub::MessageAcceptance::Ignore
            }
            // Validly signed, so the relaying peer may be honest: not forwarded, not penalised.
            Ok(m) if self.refuse_fork(&m.head, from) => gossipsub::MessageAcceptance::Ignore,
            Ok(m) => {
                let source = m.head.head.source;
                let offset = m.head.head.offset;
                let position = m.head.head.position();
                let news = self.remember_known(&m.head);
                // Not stored here yet: forward it even when a newer head overtook it on
                // another path, so its inline blocks (which the newer head's tree needs, and
                // which the newer head does not carry) reach the peers behind us too.
                let unstored = self.heads.is_unstored(&source, position);
                if source == *self.swarm.local_peer_id() || !unstored {
                    // Ours, or stored already: don't forward it again.
                    gossipsub::MessageAcceptance::Ignore
                } else {
                    if news || !m.blocks.is_empty() {
                        tracing::debug!(
                            %source, offset, %from, news, blocks = m.blocks.len(),
                            age_ms = age_ms(m.head.head.timestamp), "gossip head"
                        );
                        self.touch_peer(from, None, None);
                        let held = from == source;
                        self.emit(m.head, m.blocks, from, held);
                    }
                    gossipsub::MessageAcceptance::Accept
                }
            }
        };
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&id, &from, acceptance);
    }

    /// A node status from gossip: verified, kept if newer, forwarded only then (an old copy or
    /// a replay goes no further), rejected (gossipsub penalises the sender) if invalid.
    fn on_status(&mut self, from: PeerId, id: gossipsub::MessageId, data: &[u8]) {
        let acceptance = match crate::status::SignedStatus::decode(data) {
            Err(e) => {
                tracing::warn!(peer = %from, error = %e, "dropped an invalid node status");
                gossipsub::MessageAcceptance::Reject
            }
            Ok(s) if s.source == *self.swarm.local_peer_id() => {
                gossipsub::MessageAcceptance::Ignore
            }
            Ok(s) => {
                let changes_listing = self.statuses.changes_listing(&s);
                match self
                    .statuses
                    .offer(s, Instant::now(), micros(SystemTime::now()))
                {
                    Offer::Kept => {
                        if changes_listing {
                            self.node_list_changed();
                        }
                        gossipsub::MessageAcceptance::Accept
                    }
                    Offer::Stale => gossipsub::MessageAcceptance::Ignore,
                    Offer::Full => {
                        let due = self
                            .status_limit_warned
                            .is_none_or(|t| t.elapsed() >= INCOMING_WARN_PERIOD);
                        if due {
                            self.status_limit_warned = Some(Instant::now());
                            tracing::warn!(
                                peer = %from, limit = crate::status::MAX_NODES,
                                "this node keeps as many node statuses as it may; statuses of new \
                                 nodes are dropped until old ones expire (not logged for a minute)"
                            );
                        }
                        gossipsub::MessageAcceptance::Ignore
                    }
                }
            }
        };
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&id, &from, acceptance);
    }

    /// Wakes the readers of the network state: the node list shows something new.
    fn node_list_changed(&self) {
        self.status(|n| {
            n.node_list_changes = n.node_list_changes.wrapping_add(1);
            true
        });
    }

    fn on_exchange(&mut self, ev: rr::Event<Request, Response>) {
        match ev {
            rr::Event::Message { peer, message, .. } => match message {
                rr::Message::Request {
                    request_id,
                    request,
                    channel,
                } => match request {
                    Request::Want(cids) if self.budgets.start_want(peer) => {
                        self.serve(peer, request_id, cids, channel)
                    }
                    Request::Want(_) => {
                        // Over budget: every CID deferred, at no cost (the requester asks
                        // again, here or elsewhere).
                        let nothing = Response::Blocks {
                            blocks: Vec::new(),
                            have_not: Vec::new(),
                        };
                        self.refuse(channel, nothing);
                    }
                    Request::Digest(entries) => {
                        self.note_digest(peer, &entries);
                        if self.budgets.take_digest(peer, Instant::now()) {
                            let answer = self.answer_digest(&entries);
                            self.respond(channel, answer);
                        } else {
                            self.refuse(channel, Response::Heads(Vec::new()));
                        }
                    }
                },
                rr::Message::Response {
                    request_id,
                    response,
                } => match response {
                    Response::Blocks { blocks, have_not } => {
                        let key = RequestKey::Shoal(request_id);
                        let report = self.fetcher.on_response(&key, blocks, have_not, false);
                        if !report.bad_blocks.is_empty() {
                            tracing::warn!(
                                %peer,
                                count = report.bad_blocks.len(),
                                first = %report.bad_blocks[0],
                                "peer sent blocks that do not match their CIDs (or were not asked for); dropped"
                            );
                        }
                    }
                    Response::Heads(heads) => {
                        self.fetcher.on_failure(&RequestKey::Shoal(request_id));
                        self.on_heads(peer, heads);
                    }
                },
            },
            rr::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                tracing::debug!(%peer, %error, "exchange request failed");
                self.fetcher.on_failure(&RequestKey::Shoal(request_id));
            }
            rr::Event::InboundFailure {
                peer,
                error,
                request_id,
                ..
            } => {
                self.budgets.answer_done(&request_id);
                tracing::debug!(%peer, %error, "inbound exchange request failed");
            }
            rr::Event::ResponseSent { request_id, .. } => self.budgets.answer_done(&request_id),
        }
    }

    /// A digest answer: heads this node may lack. Their signatures are checked on a blocking
    /// thread, not here: an answer holds up to a thousand heads (a hostile peer's, all of
    /// invented sources), and verifying them in one go held the swarm task, and the async
    /// thread under it, for tens of milliseconds.
    fn on_heads(&mut self, peer: PeerId, heads: Vec<SignedHead>) {
        let mut seen = HashSet::new();
        let own = *self.swarm.local_peer_id();
        let heads: Vec<SignedHead> = heads
            .into_iter()
            .filter(|h| seen.insert(h.head.source))
            // Cheap checks first: a head this node stores already needs no signature check.
            .filter(|h| {
                h.head.source == own || self.heads.is_unstored(&h.head.source, h.head.position())
            })
            .collect();
        let allowed = self.budgets.take_heads(peer, heads.len(), Instant::now());
        let mut heads = heads;
        heads.truncate(allowed); // over budget: dropped unchecked
        if heads.is_empty() {
            return;
        }
        let tx = self.verified_tx.clone();
        tokio::task::spawn_blocking(move || {
            let valid = heads
                .into_iter()
                .filter(|h| match h.verify() {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "peer sent an invalid head; dropped");
                        false
                    }
                })
                .collect();
            let _ = tx.blocking_send((peer, valid));
        });
    }

    fn on_verified_heads(&mut self, peer: PeerId, heads: Vec<SignedHead>) {
        for head in heads {
            let source = head.head.source;
            if source == *self.swarm.local_peer_id() {
                // Our own tree, from a peer: wanted only while resuming after a lost store.
                if self.resume.wants(head.head.offset) {
                    tracing::info!(%peer, offset = head.head.offset, "a peer holds more of this node's own events: importing them");
                    self.emit(head, vec![], peer, true);
                }
                continue;
            }
            if !self.make_room_for(&source, peer) {
                continue;
            }
            if self.refuse_fork(&head, peer) {
                continue;
            }
            if self.heads.is_unstored(&source, head.head.position()) {
                self.remember_known(&head);
                // A digest answer lists the heads its sender stores.
                self.emit(head, vec![], peer, true);
            }
        }
    }

    /// Whether `head` signs another tree at an offset the book holds a head of already (a
    /// fork): then it is refused, recorded and, the first time per source, logged.
    fn refuse_fork(&mut self, head: &SignedHead, from: PeerId) -> bool {
        let Some(kept) = self.heads.conflicting(head) else {
            return false;
        };
        if let Some(info) = self.forks.note(&kept.clone(), head, from) {
            self.status(|s| {
                s.forks.push(info);
                true
            });
        }
        true
    }

    /// Whether a head of `source` from `peer` may be taken (the head book's limit): when a
    /// source never stored here gives up its place, the network state and the replicator
    /// forget it too.
    fn make_room_for(&mut self, source: &PeerId, peer: PeerId) -> bool {
        match self.heads.make_room_for(source) {
            heads::Room::Free => true,
            heads::Room::Forgot(old) => {
                self.source_limit_reached(peer);
                let old_id = source_id(&old);
                self.status(|s| s.known.remove(&old_id).is_some());
                if let Err(mpsc::error::TrySendError::Full(_)) =
                    self.events.try_send(Event::Forgotten { source: old })
                {
                    tracing::debug!("replication is busy; it prunes the forgotten source itself");
                }
                true
            }
            heads::Room::Full => {
                self.source_limit_reached(peer);
                false
            }
        }
    }

    /// The head book is full: warned at most once a minute, naming the peer whose head
    /// brought a new source.
    fn source_limit_reached(&mut self, peer: PeerId) {
        if self
            .limit_warned
            .is_none_or(|t| t.elapsed() >= INCOMING_WARN_PERIOD)
        {
            self.limit_warned = Some(Instant::now());
            tracing::warn!(
                %peer, limit = heads::MAX_SOURCES,
                "this node knows as many sources as it keeps; new sources replace those never \
                 stored here, or are dropped when all are stored (not logged again for a minute)"
            );
        }
    }

    /// Sends an exchange answer; false if the requester is gone.
    fn respond(&mut self, channel: ResponseChannel<Response>, response: Response) -> bool {
        self.swarm
            .behaviour_mut()
            .exchange
            .send_response(channel, response)
            .is_ok()
    }

    /// Answers a request refused for its peer's budget with `nothing`, [`REFUSAL_DELAY`] from
    /// now (at once when too many are held).
    fn refuse(&mut self, channel: ResponseChannel<Response>, nothing: Response) {
        if self.refusals.len() < MAX_HELD_REFUSALS {
            self.refusals
                .push_back((Instant::now() + REFUSAL_DELAY, channel, nothing));
        } else {
            self.respond(channel, nothing);
        }
    }

    /// Sends the held refusals that are due (a requester gone by then is no matter).
    fn answer_due_refusals(&mut self, now: Instant) {
        while self.refusals.front().is_some_and(|(due, ..)| *due <= now) {
            if let Some((_, channel, nothing)) = self.refusals.pop_front() {
                self.respond(channel, nothing);
            }
        }
    }

    /// Answers a `Want` of `peer` off the swarm task (a slot of its budget is taken; the
    /// answer coming back through `served_rx` frees it).
    fn serve(
        &mut self,
        peer: PeerId,
        id: InboundRequestId,
        cids: Vec<cid::Cid>,
        channel: ResponseChannel<Response>,
    ) {
        let blocks = self.blocks.clone();
        let tx = self.served_tx.clone();
        let limit = self.serve_limit.clone();
        tokio::spawn(async move {
            let Ok(_permit) = limit.acquire_owned().await else {
                return;
            };
            let answer =
                tokio::task::spawn_blocking(move || exchange::serve_want(&*blocks, &cids)).await;
            let resp = answer.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "serving blocks panicked");
                // Still sent, so the budget slot is freed and the requester asks elsewhere.
                Response::Blocks {
                    blocks: Vec::new(),
                    have_not: Vec::new(),
                }
            });
            let _ = tx.send((peer, id, channel, resp)).await;
        });
    }

    fn on_bitswap(&mut self, ev: bitswap::Event) {
        match ev {
            bitswap::Event::Response {
                request,
                blocks,
                dont_have,
                ..
            } => {
                let key = RequestKey::Bitswap(request);
                // The CIDs were computed from the blocks' bytes: no second hash.
                self.fetcher.on_response(&key, blocks, dont_have, true);
            }
            bitswap::Event::Failed { peer, request } => {
                tracing::debug!(%peer, "Bitswap request failed");
                self.fetcher.on_failure(&RequestKey::Bitswap(request));
            }
            bitswap::Event::Wanted { peer } => self.serve_bitswap(peer),
            bitswap::Event::Unsupported { peer } => {
                tracing::debug!(%peer, "peer does not speak Bitswap");
                let shoal = self.speaks_shoal(&peer);
                self.speaks.insert(
                    peer,
                    Speaks {
                        shoal,
                        bitswap: false,
                    },
                );
            }
        }
    }

    /// Reads `peer`'s queued Bitswap wants from the store, a batch at a time, while it has
    /// budget (the Want and miss budgets of `budget.rs`) and its send queue has room.
    fn serve_bitswap(&mut self, peer: PeerId) {
        loop {
            let reads = self.bitswap_reads.get(&peer).copied().unwrap_or(0);
            let bitswap = &self.swarm.behaviour().bitswap;
            if reads >= BITSWAP_READS_PER_PEER
                || !bitswap.can_send(&peer)
                || !bitswap.has_wants(&peer)
            {
                return;
            }
            if !self.budgets.start_want(peer) {
                return; // retried on the redial tick
            }
            let wants = self
                .swarm
                .behaviour_mut()
                .bitswap
                .take_wants(&peer, BITSWAP_WANTS_PER_READ);
            *self.bitswap_reads.entry(peer).or_default() += 1;
            let blocks = self.blocks.clone();
            let tx = self.bitswap_tx.clone();
            let limit = self.serve_limit.clone();
            tokio::spawn(async move {
                let Ok(_permit) = limit.acquire_owned().await else {
                    return;
                };
                let read =
                    tokio::task::spawn_blocking(move || read_wants(&*blocks, peer, wants)).await;
                let served = read.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "serving Bitswap wants panicked");
                    BitswapServed {
                        peer,
                        blocks: Vec::new(),
                        presences: Vec::new(),
                        unserved: Vec::new(),
                        misses: 0,
                    }
                });
                let _ = tx.send(served).await;
            });
        }
    }

    fn on_bitswap_served(&mut self, served: BitswapServed) {
        let peer = served.peer;
        self.budgets.end_want(&peer, served.misses);
        if let Some(n) = self.bitswap_reads.get_mut(&peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.bitswap_reads.remove(&peer);
            }
        }
        let bitswap = &mut self.swarm.behaviour_mut().bitswap;
        bitswap.return_wants(&peer, served.unserved);
        bitswap.respond(&peer, served.blocks, served.presences);
        self.serve_bitswap(peer);
    }
}

/// Answers Bitswap wants from local blocks (blocking): up to [`exchange::RESPONSE_BUDGET`] of
/// blocks; the wants past it are returned unserved. A local read error counts as not here.
fn read_wants(source: &dyn BlockSource, peer: PeerId, wants: Vec<Want>) -> BitswapServed {
    let mut out = BitswapServed {
        peer,
        blocks: Vec::new(),
        presences: Vec::new(),
        unserved: Vec::new(),
        misses: 0,
    };
    let mut size = 0usize;
    let mut wants = wants.into_iter();
    for want in wants.by_ref() {
        if size >= exchange::RESPONSE_BUDGET {
            out.unserved.push(want);
            break;
        }
        let block = match source.get_block(&want.cid) {
            Ok(Some(data)) if data.len() <= exchange::MAX_BLOCK_SIZE => Some(data),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(cid = %want.cid, error = %e, "reading a block for a peer failed");
                None
            }
        };
        match (block, want.want_type) {
            (Some(data), WantType::Block) => {
                size += data.len();
                out.blocks.push((want.cid, data));
            }
            (Some(_), WantType::Have) => out.presences.push((want.cid, Presence::Have)),
            (None, _) => {
                out.misses += 1;
                if want.send_dont_have {
                    out.presences.push((want.cid, Presence::DontHave));
                }
            }
        }
    }
    out.unserved.extend(wants);
    out
}
