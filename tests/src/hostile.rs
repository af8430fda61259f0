//! A hostile peer (issue 12): a real libp2p peer on 127.0.0.1 that is one of the swarm (as a
//! buggy or compromised device holding the swarm key would be), speaks the node's protocols —
//! heads gossip, the block exchange, ping — with the engine's own wire types, and misbehaves on
//! purpose, as hard as it can, for as long as it runs:
//!
//! - **forged heads**: heads claiming the honest sources it is given, signed with its own key;
//! - **extreme heads**: its own source at offsets and lamports near 2^64 and just past 2^53;
//! - **invented sources**: a fresh key per head, hundreds per second over gossip and a thousand
//!   in every digest answer, with roots nobody can serve;
//! - **malformed blocks**: roots whose bytes hash right but are not a tree (100,000-deep
//!   nesting, a 2^64-element array, a map, a 4 MiB byte string), and answers whose bytes do
//!   not hash to the CID asked for, or are over the block size;
//! - **endless deferrals**: Wants it answers with nothing (every CID deferred), or holds open
//!   until the requester times out;
//! - **floods**: Wants of 512 random CIDs and digests of 1,000 invented entries, as many as
//!   the connection takes, and junk on the heads topic.
//!
//! It redials the nodes it attacks whenever it is disconnected. [`Hostile::stop`] ends it and
//! returns a [`Tally`] of what it did, so a test can show the attack really ran.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cid::Cid;
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::request_response::{self, ResponseChannel};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{gossipsub, ping, Multiaddr, PeerId, Swarm};
use rand::{Rng, RngCore};
use sha2::Digest;
use shoal_engine::exchange::{self, DigestEntry, Request, Response};
use shoal_engine::head::{Head, SignedHead};
use shoal_engine::swarm::{self, gossip};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the hostile peer did while it ran.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Gossip messages published (forged, extreme, invented heads and junk).
    pub gossiped: u64,
    /// Sources invented (gossip and digest answers).
    pub invented: u64,
    /// Flooding requests sent (Wants and digests).
    pub requests: u64,
    /// Wants of the nodes answered with lies (wrong, oversized or malformed blocks).
    pub lies: u64,
    /// Wants of the nodes deferred or held open.
    pub deferred: u64,
    /// Connections established.
    pub connections: u64,
}

/// A running hostile peer.
pub struct Hostile {
    stop: watch::Sender<bool>,
    task: JoinHandle<Tally>,
    pub peer_id: PeerId,
}

impl Hostile {
    /// Starts attacking the nodes at `targets` (swarm addresses with `/p2p/` ids); `victims`
    /// are honest source ids whose heads it forges.
    pub async fn start(targets: &[String], victims: &[String]) -> Result<Hostile> {
        let key = Keypair::generate_ed25519();
        let peer_id = key.public().to_peer_id();
        let transport = swarm::transport(&key, None).context("hostile transport")?;
        let behaviour = Behaviour::new()?;
        let mut swarm = Swarm::new(
            transport,
            behaviour,
            peer_id,
            libp2p::swarm::Config::with_tokio_executor()
                .with_idle_connection_timeout(Duration::from_secs(3600)),
        );
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&gossipsub::IdentTopic::new(gossip::TOPIC))
            .context("subscribe")?;
        let targets = targets
            .iter()
            .map(|t| t.parse::<Multiaddr>().context("target address"))
            .collect::<Result<Vec<_>>>()?;
        let victims = victims
            .iter()
            .map(|v| v.parse::<PeerId>().context("victim source id"))
            .collect::<Result<Vec<_>>>()?;
        let (stop, stopped) = watch::channel(false);
        let attacker = Attacker {
            swarm,
            key,
            targets,
            victims,
            evil: evil_blocks(),
            connected: HashSet::new(),
            in_flight: 0,
            held: Vec::new(),
            tally: Tally::default(),
            round: 0,
        };
        let task = tokio::spawn(attacker.run(stopped));
        Ok(Hostile {
            stop,
            task,
            peer_id,
        })
    }

    /// Ends the attack; what it did.
    pub async fn stop(self) -> Tally {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    gossipsub: gossipsub::Behaviour,
    exchange: exchange::Behaviour,
    /// The node closes connections whose pings fail: answering them keeps the attack on.
    ping: ping::Behaviour,
}

impl Behaviour {
    fn new() -> Result<Self> {
        let cfg = gossipsub::ConfigBuilder::default()
            .validation_mode(gossipsub::ValidationMode::Anonymous)
            .max_transmit_size(gossip::MAX_MESSAGE)
            .heartbeat_interval(Duration::from_secs(1))
            .message_id_fn(|m: &gossipsub::Message| {
                gossipsub::MessageId::from(&sha2::Sha256::digest(&m.data)[..16])
            })
            .build()
            .map_err(|e| anyhow::anyhow!("gossipsub config: {e}"))?;
        let gossipsub = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, cfg)
            .map_err(|e| anyhow::anyhow!("gossipsub: {e}"))?;
        Ok(Behaviour {
            gossipsub,
            exchange: exchange::behaviour(),
            ping: ping::Behaviour::default(),
        })
    }
}

/// Rounds of gossip per second (each publishes several heads).
const ROUND: Duration = Duration::from_millis(5);
/// Sources invented per round on gossip (the node's gossip scoring soon drops the attacker's
/// gossip unread, for the junk and forged heads it sends too; digest answers go on).
const INVENTED_PER_ROUND: usize = 3;
/// Flooding requests kept in flight at once, over all targets (the nodes' budgets are lower).
const FLOOD_IN_FLIGHT: usize = 64;
/// Wants of the nodes held open at once (each until it times out at their end).
const MAX_HELD: usize = 256;
/// Invented heads in one digest answer.
const DIGEST_ANSWER: usize = 1000;

struct Attacker {
    swarm: Swarm<Behaviour>,
    key: Keypair,
    targets: Vec<Multiaddr>,
    victims: Vec<PeerId>,
    /// Blocks that hash right but are no tree: (CID, bytes).
    evil: Vec<(Cid, Vec<u8>)>,
    connected: HashSet<PeerId>,
    in_flight: usize,
    held: Vec<(Instant, ResponseChannel<Response>)>,
    tally: Tally,
    round: u64,
}

impl Attacker {
    async fn run(mut self, mut stopped: watch::Receiver<bool>) -> Tally {
        for t in self.targets.clone() {
            let _ = self.swarm.dial(t);
        }
        let mut rounds = tokio::time::interval(ROUND);
        let mut redial = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = stopped.changed() => break,
                _ = rounds.tick() => self.round(),
                _ = redial.tick() => self.redial(),
                ev = self.swarm.select_next_some() => self.on_event(ev),
            }
        }
        self.tally
    }

    fn redial(&mut self) {
        if self.connected.is_empty() {
            for t in self.targets.clone() {
                let _ = self.swarm.dial(t);
            }
        }
        // Held Wants are dropped once the requester has given up on them anyway.
        let timeout = exchange::REQUEST_TIMEOUT + Duration::from_secs(1);
        self.held.retain(|(since, _)| since.elapsed() < timeout);
    }

    /// One round: heads of every kind on gossip, and requests up to the flood window.
    fn round(&mut self) {
        self.round += 1;
        let n = self.round;
        let mut messages = Vec::new();
        for _ in 0..INVENTED_PER_ROUND {
            let root = self.root(n);
            if let Some(head) = invent(root, n) {
                messages.push(gossip::encode(&head, &[]));
                self.tally.invented += 1;
            }
        }
        let own = self.key.public().to_peer_id();
        let extreme = Head {
            source: own,
            root: self.root(n),
            offset: u64::MAX - n,
            lamport: if n.is_multiple_of(2) {
                u64::MAX - n
            } else {
                (1 << 53) + n
            },
            timestamp: u64::MAX,
            pruned: n,
        };
        if let Ok(head) = extreme.sign(&self.key) {
            messages.push(gossip::encode(&head, &[]));
        }
        if n.is_multiple_of(10) {
            for victim in self.victims.clone() {
                messages.push(gossip::encode(&self.forged(victim, n), &[]));
            }
            messages.push(junk(n));
        }
        let topic = gossipsub::IdentTopic::new(gossip::TOPIC);
        for m in messages {
            if self
                .swarm
                .behaviour_mut()
                .gossipsub
                .publish(topic.clone(), m)
                .is_ok()
            {
                self.tally.gossiped += 1;
            }
        }
        let peers: Vec<PeerId> = self.connected.iter().copied().collect();
        for peer in peers.iter().cycle().take(2 * peers.len()) {
            if self.in_flight >= FLOOD_IN_FLIGHT {
                break;
            }
            let request = if (n + self.in_flight as u64).is_multiple_of(2) {
                Request::Want((0..exchange::MAX_WANT).map(|_| random_cid()).collect())
            } else {
                Request::Digest(
                    (0..1000)
                        .map(|_| DigestEntry {
                            source_hash: rand::thread_rng().gen(),
                            offset: rand::thread_rng().gen(),
                            pruned: rand::thread_rng().gen(),
                        })
                        .collect(),
                )
            };
            self.swarm
                .behaviour_mut()
                .exchange
                .send_request(peer, request);
            self.in_flight += 1;
            self.tally.requests += 1;
        }
    }

    /// The root of the `n`th invented or extreme head: an evil block every other time, else
    /// a CID nobody has.
    fn root(&self, n: u64) -> Cid {
        if n.is_multiple_of(2) {
            let i = (n / 2) as usize % self.evil.len();
            self.evil[i].0
        } else {
            random_cid()
        }
    }

    /// A head claiming `victim`'s source far ahead, signed with our key (so it cannot verify).
    fn forged(&self, victim: PeerId, n: u64) -> SignedHead {
        let own = Head {
            source: self.key.public().to_peer_id(),
            root: random_cid(),
            offset: 1_000_000 + n,
            lamport: 1_000_000 + n,
            timestamp: 1,
            pruned: 0,
        };
        let signature = own
            .clone()
            .sign(&self.key)
            .map(|s| s.signature)
            .unwrap_or_default();
        SignedHead {
            head: Head {
                source: victim,
                ..own
            },
            signature,
        }
    }

    fn on_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                self.connected.insert(peer_id);
                self.tally.connections += 1;
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.connected.remove(&peer_id);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Exchange(ev)) => self.on_exchange(ev),
            _ => {}
        }
    }

    fn on_exchange(&mut self, ev: request_response::Event<Request, Response>) {
        match ev {
            request_response::Event::Message {
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => self.answer(request, channel),
            request_response::Event::Message {
                message: request_response::Message::Response { .. },
                ..
            }
            | request_response::Event::OutboundFailure { .. } => {
                self.in_flight = self.in_flight.saturating_sub(1);
            }
            _ => {}
        }
    }

    /// Answers a node's request with lies: every Want with wrong, oversized or evil blocks,
    /// nothing, or no answer at all; every digest with invented heads.
    fn answer(&mut self, request: Request, channel: ResponseChannel<Response>) {
        let response = match request {
            Request::Digest(_) => {
                let heads: Vec<SignedHead> = (0..DIGEST_ANSWER as u64)
                    .filter_map(|i| invent(random_cid(), self.round + i))
                    .collect();
                self.tally.invented += heads.len() as u64;
                Response::Heads(heads)
            }
            Request::Want(cids) => match self.round % 4 {
                0 => {
                    self.tally.lies += 1;
                    let blocks = cids
                        .iter()
                        .map(|c| {
                            let evil = self.evil.iter().find(|(e, _)| e == c);
                            let data = match evil {
                                Some((_, d)) => d.clone(),
                                None => b"not the block you asked for".to_vec(),
                            };
                            (*c, data)
                        })
                        .collect();
                    Response::Blocks {
                        blocks,
                        have_not: vec![],
                    }
                }
                1 => {
                    self.tally.lies += 1;
                    let first = cids.first().copied().unwrap_or_else(random_cid);
                    Response::Blocks {
                        blocks: vec![(first, vec![0x42; exchange::MAX_BLOCK_SIZE + 1])],
                        have_not: vec![],
                    }
                }
                2 => {
                    self.tally.deferred += 1;
                    Response::Blocks {
                        blocks: vec![],
                        have_not: vec![],
                    }
                }
                _ => {
                    self.tally.deferred += 1;
                    if self.held.len() < MAX_HELD {
                        self.held.push((Instant::now(), channel));
                    }
                    return;
                }
            },
        };
        let _ = self
            .swarm
            .behaviour_mut()
            .exchange
            .send_response(channel, response);
    }
}

/// A head of a source invented for it (fresh key), `n` far ahead.
fn invent(root: Cid, n: u64) -> Option<SignedHead> {
    let key = Keypair::generate_ed25519();
    let head = Head {
        source: key.public().to_peer_id(),
        root,
        offset: 1_000_000 + n,
        lamport: 1 + n,
        timestamp: 1,
        pruned: 0,
    };
    head.sign(&key).ok()
}

/// Bytes on the heads topic that are no gossip message.
fn junk(n: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; 64 + (n % 512) as usize];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes
}

fn dag_cbor(bytes: &[u8]) -> Cid {
    let mh = cid::multihash::Multihash::<64>::wrap(0x12, &sha2::Sha256::digest(bytes))
        .unwrap_or_default();
    Cid::new_v1(0x71, mh)
}

fn random_cid() -> Cid {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    dag_cbor(&bytes)
}

/// Blocks that hash to their CID but are no tree block.
fn evil_blocks() -> Vec<(Cid, Vec<u8>)> {
    let mut deep = vec![0x81u8; 100_000];
    deep.push(0x00);
    let huge_array = vec![0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
    let map = vec![0xa1, 0x61, b'a', 0x01];
    let len = exchange::MAX_BLOCK_SIZE - 16;
    let mut big = vec![0x5a];
    big.extend_from_slice(&(len as u32).to_be_bytes());
    big.resize(5 + len, 0x42);
    [deep, huge_array, map, big]
        .into_iter()
        .map(|b| (dag_cbor(&b), b))
        .collect()
}
