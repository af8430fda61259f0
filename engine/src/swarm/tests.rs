//! In-process swarms on 127.0.0.1: gossip with inline blocks, digest catch-up, pipelined
//! fetching, a lying peer, and swarm-key isolation.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use libp2p::gossipsub;
use sha2::Digest;

use super::*;
use crate::exchange::wire::SHA2_256;
use crate::head::Head;

struct Map(HashMap<Cid, Vec<u8>>);
impl BlockSource for Map {
    fn get_block(&self, cid: &Cid) -> Result<Option<Vec<u8>>, shoal_store::Error> {
        Ok(self.0.get(cid).cloned())
    }
}

/// Answers every want with garbage.
struct Liar;
impl BlockSource for Liar {
    fn get_block(&self, _: &Cid) -> Result<Option<Vec<u8>>, shoal_store::Error> {
        Ok(Some(b"not the block you wanted".to_vec()))
    }
}

fn block(i: u32, size: usize) -> (Cid, Vec<u8>) {
    let mut data = vec![7u8; size.max(4)];
    data[..4].copy_from_slice(&i.to_be_bytes());
    let mh = cid::multihash::Multihash::<64>::wrap(SHA2_256, &sha2::Sha256::digest(&data)).unwrap();
    (Cid::new_v1(0x55, mh), data)
}

fn config(key: Keypair, peers: Vec<Multiaddr>, psk: Option<PreSharedKey>) -> Config {
    Config {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        peers,
        swarm_key: psk,
        mdns: false,
        digest_interval: Duration::from_millis(500),
        ..Config::new(key)
    }
}

async fn node(
    peers: Vec<Multiaddr>,
    psk: Option<PreSharedKey>,
    blocks: Arc<dyn BlockSource>,
) -> (Keypair, Handle, mpsc::Receiver<Event>) {
    let key = Keypair::generate_ed25519();
    // Never signalled (a dropped sender would stop the swarm): the task, on its own threads,
    // ends with the test process.
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    std::mem::forget(stop);
    let spawned = spawn(
        config(key.clone(), peers, psk),
        blocks,
        shoal_store::OffsetMap::new(),
        shutdown,
    )
    .await
    .unwrap();
    (key, spawned.handle, spawned.events)
}

async fn wait_connected(h: &Handle, n: usize) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while h.peers().iter().filter(|p| p.connected).count() < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("peers connect within 20 s");
}

fn head(key: &Keypair, root: Cid, offset: u64) -> SignedHead {
    Head {
        source: key.public().to_peer_id(),
        root,
        offset,
        lamport: offset,
        timestamp: 1,
        pruned: 0,
    }
    .sign(key)
    .unwrap()
}

async fn fetch_all(h: &Handle, cids: Vec<Cid>) -> (Vec<(Cid, Vec<u8>)>, Vec<Cid>) {
    let (tx, mut rx) = mpsc::channel(16);
    let n = cids.len();
    h.send(Command::Fetch {
        cids,
        preferred: vec![],
        reply: tx,
    })
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut missing = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while got.len() + missing.len() < n {
            match rx.recv().await {
                Some(FetchEvent::Blocks(b)) => got.extend(b),
                Some(FetchEvent::NotFound(c)) => missing.extend(c),
                None => break,
            }
        }
    })
    .await
    .expect("fetch completes");
    (got, missing)
}

#[tokio::test]
async fn gossip_carries_head_and_inline_blocks() {
    let (ka, a, _) = node(vec![], None, Arc::new(Map(HashMap::new()))).await;
    let (_, b, mut b_events) = node(
        vec![a.dialable_addr().unwrap()],
        None,
        Arc::new(Map(HashMap::new())),
    )
    .await;
    wait_connected(&b, 1).await;
    let blk = block(1, 100);
    // Gossip needs the subscription exchange to finish; publish until it arrives.
    let got = tokio::time::timeout(Duration::from_secs(20), async {
        let mut offset = 0;
        loop {
            a.send(Command::Publish {
                head: head(&ka, blk.0, offset),
                blocks: vec![blk.clone()],
            })
            .await
            .unwrap();
            offset += 1;
            if let Ok(Some(ev)) =
                tokio::time::timeout(Duration::from_millis(300), b_events.recv()).await
            {
                return ev;
            }
        }
    })
    .await
    .expect("head arrives");
    let Event::Head {
        head, blocks, from, ..
    } = got
    else {
        panic!("expected a head, got {got:?}");
    };
    assert_eq!(head.head.source, ka.public().to_peer_id());
    assert_eq!(from, a.local_peer_id());
    // Either via gossip (with the block inline) or via the digest answer (without).
    assert!(blocks.is_empty() || blocks == vec![blk]);
    assert!(b
        .known_offsets()
        .contains_key(&SourceId::new(ka.public().to_peer_id().to_string())));
}

#[tokio::test]
async fn digest_catches_up_a_late_joiner() {
    let (ka, a, _) = node(vec![], None, Arc::new(Map(HashMap::new()))).await;
    let h = head(&ka, block(1, 10).0, 41);
    a.send(Command::Stored(h.clone())).await.unwrap();
    let (_, _b, mut b_events) = node(
        vec![a.dialable_addr().unwrap()],
        None,
        Arc::new(Map(HashMap::new())),
    )
    .await;
    let ev = tokio::time::timeout(Duration::from_secs(20), b_events.recv())
        .await
        .expect("digest answer arrives")
        .unwrap();
    let Event::Head { head, .. } = ev else {
        panic!("expected a head, got {ev:?}");
    };
    assert_eq!(head, h);
}

#[tokio::test]
async fn fetch_many_blocks_pipelined() {
    let blocks: Vec<_> = (0..3000).map(|i| block(i, 1000)).collect();
    let (_, a, _) = node(
        vec![],
        None,
        Arc::new(Map(blocks.iter().cloned().collect())),
    )
    .await;
    let (_, b, _) = node(
        vec![a.dialable_addr().unwrap()],
        None,
        Arc::new(Map(HashMap::new())),
    )
    .await;
    wait_connected(&b, 1).await;
    let mut want: Vec<Cid> = blocks.iter().map(|b| b.0).collect();
    let absent = block(999_999, 10).0;
    want.push(absent);
    let (got, missing) = fetch_all(&b, want).await;
    assert_eq!(got.len(), 3000);
    assert_eq!(missing, vec![absent]);
    let expected: HashMap<Cid, Vec<u8>> = blocks.into_iter().collect();
    for (c, d) in got {
        assert_eq!(expected.get(&c), Some(&d));
    }
}

#[tokio::test]
async fn lying_peer_is_ignored_and_blocks_come_from_elsewhere() {
    let blocks: Vec<_> = (0..200).map(|i| block(i, 50)).collect();
    let (_, liar, _) = node(vec![], None, Arc::new(Liar)).await;
    let (_, honest, _) = node(
        vec![],
        None,
        Arc::new(Map(blocks.iter().cloned().collect())),
    )
    .await;
    let (_, b, _) = node(
        vec![
            liar.dialable_addr().unwrap(),
            honest.dialable_addr().unwrap(),
        ],
        None,
        Arc::new(Map(HashMap::new())),
    )
    .await;
    wait_connected(&b, 2).await;
    let (got, missing) = fetch_all(&b, blocks.iter().map(|b| b.0).collect()).await;
    assert!(missing.is_empty());
    assert_eq!(got.len(), 200);
    for (c, d) in got {
        assert!(crate::exchange::wire::verify_block(&c, &d));
    }
}

#[tokio::test]
async fn other_swarm_key_cannot_connect() {
    let k1 = PreSharedKey::new([1; 32]);
    let k2 = PreSharedKey::new([2; 32]);
    let (ka, a, _) = node(vec![], Some(k1), Arc::new(Map(HashMap::new()))).await;
    a.send(Command::Stored(head(&ka, block(1, 10).0, 5)))
        .await
        .unwrap();
    let (_, same, mut same_events) = node(
        vec![a.dialable_addr().unwrap()],
        Some(k1),
        Arc::new(Map(HashMap::new())),
    )
    .await;
    let (_, other, mut other_events) = node(
        vec![a.dialable_addr().unwrap()],
        Some(k2),
        Arc::new(Map(HashMap::new())),
    )
    .await;
    wait_connected(&same, 1).await;
    tokio::time::timeout(Duration::from_secs(20), same_events.recv())
        .await
        .expect("same key gets the head")
        .unwrap();
    // The other node keeps redialling and never connects or hears anything.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(other.peers().iter().all(|p| !p.connected));
    assert!(other_events.try_recv().is_err());
}

#[test]
fn swarm_key_file_roundtrip() {
    let text = generate_swarm_key();
    assert!(text.starts_with("/key/swarm/psk/1.0.0/\n/base16/\n"));
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("swarm.key");
    std::fs::write(&p, &text).unwrap();
    let k = read_swarm_key(&p).unwrap();
    assert_eq!(k.to_key_file(), text);
    std::fs::write(&p, "junk").unwrap();
    assert!(read_swarm_key(&p).is_err());
}

/// Issue 12 item 7: a source signs two trees at one offset; a node holding the first head
/// refuses the second one when a peer gossips it, records the fork (node info `forks`) and
/// hands nothing to replication.
#[tokio::test]
async fn a_second_tree_signed_at_one_offset_is_refused_and_recorded_as_a_fork() {
    let source = Keypair::generate_ed25519();
    let (r1, r2) = (block(1, 10).0, block(2, 10).0);
    let (_, a, mut a_events) = node(vec![], None, Arc::new(Map(HashMap::new()))).await;
    let kept = head(&source, r1, 3);
    a.send(Command::Stored(kept.clone())).await.unwrap();
    let (_, b, _) = node(
        vec![a.dialable_addr().unwrap()],
        None,
        Arc::new(Map(HashMap::new())),
    )
    .await;
    wait_connected(&b, 1).await;
    let refused = head(&source, r2, 3);
    let mut status = a.status();
    // Gossip needs the subscription exchange to finish; publish until the fork is seen.
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            b.send(Command::Publish {
                head: refused.clone(),
                blocks: vec![],
            })
            .await
            .unwrap();
            if !status.borrow_and_update().forks.is_empty() {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(300), status.changed()).await;
        }
    })
    .await
    .expect("the fork is recorded within 20 s");
    let forks = a.status().borrow().forks.clone();
    assert_eq!(forks.len(), 1);
    assert_eq!(forks[0].source, source.public().to_peer_id().to_string());
    assert_eq!(forks[0].offset, 3);
    assert_eq!(forks[0].kept_root, r1.to_string());
    assert_eq!(forks[0].refused_root, r2.to_string());
    assert_eq!(forks[0].from, b.local_peer_id().to_string());
    while let Ok(Event::Head { head, .. }) = a_events.try_recv() {
        assert_ne!(head, refused, "the refused head went to replication");
    }
}

/// A raw libp2p peer on 127.0.0.1 speaking the node's transport and gossip topic, without any
/// of the node's checks: it publishes whatever bytes it is given and dials as often as told.
mod raw {
    use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
    use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
    use libp2p::{gossipsub, Multiaddr, PeerId, Swarm};

    #[derive(NetworkBehaviour)]
    pub struct RawBehaviour {
        pub gossipsub: gossipsub::Behaviour,
        pub exchange: crate::exchange::Behaviour,
        /// The node closes connections whose pings fail.
        pub ping: libp2p::ping::Behaviour,
    }

    pub fn swarm() -> Swarm<RawBehaviour> {
        let key = libp2p::identity::Keypair::generate_ed25519();
        let transport = super::super::behaviour::transport(&key, None).unwrap();
        let cfg = gossipsub::ConfigBuilder::default()
            .validation_mode(gossipsub::ValidationMode::Anonymous)
            .message_id_fn(|m: &gossipsub::Message| {
                use sha2::Digest;
                gossipsub::MessageId::from(&sha2::Sha256::digest(&m.data)[..16])
            })
            .build()
            .unwrap();
        let mut gossipsub =
            gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, cfg).unwrap();
        gossipsub
            .subscribe(&gossipsub::IdentTopic::new(super::super::gossip::TOPIC))
            .unwrap();
        Swarm::new(
            transport,
            RawBehaviour {
                gossipsub,
                exchange: crate::exchange::behaviour(),
                ping: libp2p::ping::Behaviour::default(),
            },
            key.public().to_peer_id(),
            libp2p::swarm::Config::with_tokio_executor()
                .with_idle_connection_timeout(std::time::Duration::from_secs(3600)),
        )
    }

    /// Dials `peer` at `addr` even when connected already.
    pub fn dial_again(swarm: &mut Swarm<RawBehaviour>, peer: PeerId, addr: Multiaddr) {
        let opts = DialOpts::peer_id(peer)
            .condition(PeerCondition::Always)
            .addresses(vec![addr])
            .build();
        swarm.dial(opts).unwrap();
    }

    /// Open connections as the swarm reports them.
    #[derive(Default)]
    pub struct Count {
        pub open: usize,
        pub resolved: usize,
    }

    impl Count {
        pub fn on(&mut self, ev: &SwarmEvent<RawBehaviourEvent>) {
            match ev {
                SwarmEvent::ConnectionEstablished { .. } => {
                    self.open += 1;
                    self.resolved += 1;
                }
                SwarmEvent::ConnectionClosed { .. } => self.open -= 1,
                SwarmEvent::OutgoingConnectionError { .. } => self.resolved += 1,
                _ => {}
            }
        }
    }
}

/// Issue 12 item 6: one peer dialling a node over and over keeps at most
/// `MAX_CONNECTIONS_PER_PEER` connections (before the fix every dial stayed open: each
/// costs yamux buffers and 32 inbound sub-streams).
#[tokio::test]
async fn one_peer_gets_at_most_max_connections_per_peer() {
    let (_, a, _) = node(vec![], None, Arc::new(Map(HashMap::new()))).await;
    let mut hostile = raw::swarm();
    let dials = 3 * behaviour::MAX_CONNECTIONS_PER_PEER as usize;
    for _ in 0..dials {
        raw::dial_again(&mut hostile, a.local_peer_id(), a.dialable_addr().unwrap());
    }
    let mut count = raw::Count::default();
    let limit = behaviour::MAX_CONNECTIONS_PER_PEER as usize;
    tokio::time::timeout(Duration::from_secs(30), async {
        while !(count.resolved == dials && count.open == limit) {
            let ev = hostile.select_next_some().await;
            count.on(&ev);
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "expected {limit} connections to stay open of {dials} dials; {} open, {} resolved",
            count.open, count.resolved
        )
    });
}

/// Issue 12 item 6: a peer gossiping invalid heads is scored down until gossipsub drops its
/// messages unread (graylisted), as node info's `gossipScore` shows; before the fix there was
/// no scoring, so an invalid message cost a full decode and signature check each, for ever.
#[tokio::test]
async fn a_peer_gossiping_invalid_heads_is_graylisted() {
    let (_, a, _) = node(vec![], None, Arc::new(Map(HashMap::new()))).await;
    let mut hostile = raw::swarm();
    let hostile_id = *hostile.local_peer_id();
    hostile.dial(a.dialable_addr().unwrap()).unwrap();
    let topic = gossipsub::IdentTopic::new(gossip::TOPIC);
    let mut n: u32 = 0;
    let graylisted = |a: &Handle| {
        a.peers().iter().any(|p| {
            p.peer_id == hostile_id.to_string()
                && p.gossip_score
                    .is_some_and(|s| (s as f64) < behaviour::GRAYLIST_THRESHOLD)
        })
    };
    tokio::time::timeout(Duration::from_secs(30), async {
        let mut publish = tokio::time::interval(Duration::from_millis(50));
        while !graylisted(&a) {
            tokio::select! {
                _ = hostile.select_next_some() => {}
                _ = publish.tick() => {
                    n += 1;
                    // A head tag with junk behind it: fails decoding, so the node rejects it.
                    let mut junk = vec![0x01, 0x00, 0x08];
                    junk.extend_from_slice(&n.to_be_bytes());
                    // "no peers subscribed" until the subscription exchange is done.
                    let _ = hostile.behaviour_mut().gossipsub.publish(topic.clone(), junk);
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not graylisted after {n} invalid messages: {:?}", a.peers()));
}

/// Issue 12 item 6: requests over a peer's budget get their empty answer only after
/// `REFUSAL_DELAY`, so a flooding peer's streams stay open and its flood slows to what they
/// allow. Before, each was answered at once and the peer simply asked again: the node
/// decrypted and decoded every request of a flood (bench_hostile: ~800 a second).
#[tokio::test]
async fn requests_over_a_peers_budget_are_answered_late() {
    use libp2p::request_response as rr;
    use libp2p::swarm::SwarmEvent;
    let (_, a, _) = node(vec![], None, Arc::new(Map(HashMap::new()))).await;
    let mut flooder = raw::swarm();
    flooder.dial(a.dialable_addr().unwrap()).unwrap();
    let sent = 3 * super::budget::DIGEST_BURST as usize;
    let mut sent_at = HashMap::new();
    let mut answered_soon = 0;
    let mut answered = 0;
    tokio::time::timeout(Duration::from_secs(30), async {
        while answered < sent {
            match flooder.select_next_some().await {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if sent_at.is_empty() => {
                    for _ in 0..sent {
                        let id = flooder
                            .behaviour_mut()
                            .exchange
                            .send_request(&peer_id, crate::exchange::Request::Digest(Vec::new()));
                        sent_at.insert(id, std::time::Instant::now());
                    }
                }
                SwarmEvent::Behaviour(raw::RawBehaviourEvent::Exchange(rr::Event::Message {
                    message: rr::Message::Response { request_id, .. },
                    ..
                })) => {
                    answered += 1;
                    if sent_at[&request_id].elapsed() < task::REFUSAL_DELAY {
                        answered_soon += 1;
                    }
                }
                SwarmEvent::Behaviour(raw::RawBehaviourEvent::Exchange(
                    rr::Event::OutboundFailure { error, .. },
                )) => panic!("a digest failed instead of being answered: {error}"),
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{answered} of {sent} digests answered within 30 s"));
    // The burst, plus what the bucket refills while the answers are held.
    let within_budget = super::budget::DIGEST_BURST as usize
        + (super::budget::DIGESTS_PER_SEC * task::REFUSAL_DELAY.as_secs_f64()) as usize;
    assert!(
        answered_soon <= within_budget,
        "{answered_soon} of {sent} digests were answered within {:?} (at most {within_budget} \
         are within the peer's budget)",
        task::REFUSAL_DELAY
    );
}

/// Issue 12 item 3: peers connecting under ever new identities do not grow node info's peer
/// list without end: the disconnected peer heard of longest ago makes room; connected ones
/// stay.
#[test]
fn the_peer_list_keeps_at_most_max_peers_listed() {
    let mut s = NetworkState::default();
    let info = |connected: bool, seen: u64| PeerInfo {
        peer_id: String::new(),
        addrs: vec![],
        connected,
        last_seen: Some(seen),
        our_offset_stored: None,
        last_error: None,
        gossip_score: None,
    };
    let connected = PeerId::random();
    s.peers.insert(connected, info(true, 0));
    for i in 0..3 * MAX_PEERS_LISTED as u64 {
        s.make_room_for_peer();
        s.peers.insert(PeerId::random(), info(false, i + 1));
    }
    assert_eq!(s.peers.len(), MAX_PEERS_LISTED);
    assert!(s.peers.contains_key(&connected));
    let oldest = s
        .peers
        .values()
        .filter_map(|p| p.last_seen)
        .filter(|&t| t > 0)
        .min();
    assert_eq!(
        oldest,
        Some(2 * MAX_PEERS_LISTED as u64 + 2),
        "the newest are kept"
    );
}
