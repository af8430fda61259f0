//! Replication between real `shoal run` processes on 127.0.0.1 (no mDNS; explicit `--peer`):
//! both ways, a line of three (multi-hop), restart catch-up, swarm-key isolation, a late joiner
//! pulling 100,000 events, and a misbehaving peer (forged heads, wrong blocks) that is ignored.
//! Every wait is bounded by the harness's `TIMEOUT`; nothing asserts on time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shoal_tests::{cli, event, Node, NodeOptions, TIMEOUT};

fn peer(of: &Node) -> NodeOptions {
    NodeOptions::default().arg("--peer").arg(of.swarm.clone())
}

/// Polls `node`'s offsets until `done` holds for them.
async fn wait_offsets(node: &Node, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let offsets = node.offsets().await.unwrap();
        if done(&offsets) {
            return offsets;
        }
        if Instant::now() > deadline {
            panic!("{what}: offsets still {offsets} after {TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `node` stores exactly `expected`.
async fn converge(node: &Node, expected: &Value) {
    wait_offsets(node, "converge", |o| o == expected).await;
}

async fn publish_n(node: &Node, name: &str, n: usize) {
    for i in 0..n {
        node.publish(&[event("test", name, json!({ "i": i }))])
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn two_nodes_replicate_both_ways() {
    let a = Node::start().unwrap();
    let b = Node::start_with(peer(&a)).unwrap();
    publish_n(&a, "a", 10).await;
    publish_n(&b, "b", 7).await;
    let expected = json!({ a.source.clone(): 9, b.source.clone(): 6 });
    converge(&a, &expected).await;
    converge(&b, &expected).await;
    // Same events, same order, on both nodes.
    assert_eq!(a.query_all().await.unwrap(), b.query_all().await.unwrap());
    // Node info shows A as a connected peer and A's stream as stored and known (it is
    // refreshed a few times a second, so poll).
    wait_info(&b, |info| {
        let peers = info["peers"].as_array().cloned().unwrap_or_default();
        let sources = info["sources"].as_array().cloned().unwrap_or_default();
        peers
            .iter()
            .any(|p| p["peerId"] == a.source.as_str() && p["connected"] == true)
            && sources.iter().any(|s| {
                s["source"] == a.source.as_str() && s["storedOffset"] == 9 && s["knownOffset"] == 9
            })
    })
    .await;
}

/// Polls `GET /api/v1/node/info` until `done` holds.
async fn wait_info(node: &Node, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let info: Value = node
            .get("/api/v1/node/info")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if done(&info) {
            return info;
        }
        assert!(Instant::now() < deadline, "node info never matched: {info}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn line_of_three_converges() {
    // A – B – C: A and C are never connected; events hop through B.
    let a = Node::start().unwrap();
    let b = Node::start_with(peer(&a)).unwrap();
    let c = Node::start_with(peer(&b)).unwrap();
    publish_n(&a, "a", 5).await;
    publish_n(&c, "c", 4).await;
    publish_n(&b, "b", 3).await;
    let expected = json!({ a.source.clone(): 4, b.source.clone(): 2, c.source.clone(): 3 });
    for n in [&a, &b, &c] {
        converge(n, &expected).await;
    }
    let info: Value = a
        .get("/api/v1/node/info")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        !info["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["peerId"] == c.source.as_str() && p["connected"] == true),
        "A and C must not be connected: {info}"
    );
}

#[tokio::test]
async fn stopped_node_catches_up_after_restart() {
    let a = Node::start().unwrap();
    let mut b = Node::start_with(peer(&a)).unwrap();
    publish_n(&a, "a", 3).await;
    converge(&b, &json!({ a.source.clone(): 2 })).await;
    assert!(b.stop().unwrap());
    publish_n(&a, "a", 20).await;
    let b = b.respawn().unwrap();
    converge(&b, &json!({ a.source.clone(): 22 })).await;
    assert_eq!(a.query_all().await.unwrap(), b.query_all().await.unwrap());
}

#[tokio::test]
async fn other_swarm_key_gets_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2) = (dir.path().join("k1"), dir.path().join("k2"));
    for k in [&k1, &k2] {
        let out = cli(&["swarm", "keygen", "-o", k.to_str().unwrap()], None).unwrap();
        assert!(out.status.success(), "{}", out.stderr);
    }
    let key = |k: &std::path::Path| {
        NodeOptions::default()
            .arg("--swarm-key")
            .arg(k.to_str().unwrap())
    };
    let a = Node::start_with(key(&k1)).unwrap();
    let b = Node::start_with(key(&k1).arg("--peer").arg(a.swarm.clone())).unwrap();
    let c = Node::start_with(key(&k2).arg("--peer").arg(a.swarm.clone())).unwrap();
    publish_n(&a, "a", 5).await;
    converge(&b, &json!({ a.source.clone(): 4 })).await;
    // B (same key) has everything; C (other key) has nothing and is connected to no one.
    assert_eq!(c.offsets().await.unwrap(), json!({}));
    let info = wait_info(&c, |_| true).await;
    assert!(
        info["peers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["connected"] == false),
        "{info}"
    );
}

#[tokio::test]
async fn late_joiner_pulls_100k_events() {
    let a = Node::start().unwrap();
    const N: usize = 100_000;
    const BATCH: usize = 1000;
    for b in 0..N / BATCH {
        let events: Vec<Value> = (0..BATCH)
            .map(|i| {
                event(
                    "bulk",
                    "a",
                    json!({ "i": b * BATCH + i, "pad": "x".repeat(40) }),
                )
            })
            .collect();
        a.publish(&events).await.unwrap();
    }
    let b = Node::start_with(peer(&a)).unwrap();
    converge(&b, &json!({ a.source.clone(): N - 1 })).await;
    let count = b
        .query(&json!({"upperBound": {a.source.clone(): N - 1}, "subscriptions": [{}], "order": "source-ordered"}))
        .await
        .unwrap()
        .len();
    assert_eq!(count, N);
}

mod liar {
    //! A misbehaving peer built from the engine's own swarm: it gossips a head forged for
    //! another source, and answers every block request with bytes that do not match the CID.

    use super::*;
    use shoal_engine::exchange::BlockSource;
    use shoal_engine::head::{Head, SignedHead};
    use shoal_engine::swarm::{self, Command};

    pub struct Garbage;
    impl BlockSource for Garbage {
        fn get_block(&self, _: &cid::Cid) -> Result<Option<Vec<u8>>, String> {
            Ok(Some(b"definitely not the block you asked for".to_vec()))
        }
    }

    pub fn root() -> cid::Cid {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(b"a tree the liar does not have");
        let mh = cid::multihash::Multihash::<64>::wrap(0x12, &digest).unwrap();
        cid::Cid::new_v1(0x71, mh)
    }

    /// Starts the liar dialling `target`; returns its swarm handle and key.
    pub async fn start(target: &Node) -> (swarm::Handle, libp2p::identity::Keypair) {
        let key = libp2p::identity::Keypair::generate_ed25519();
        let mut cfg = swarm::Config::new(key.clone());
        cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
        cfg.peers = vec![target.swarm.parse().unwrap()];
        cfg.mdns = false;
        let (handle, _events, _task) = swarm::spawn(cfg, Arc::new(Garbage)).await.unwrap();
        std::mem::forget(_events); // keep the channel open; the liar ignores what it hears
        (handle, key)
    }

    /// A head claiming `victim`'s source, signed with the liar's key.
    pub fn forged(victim: &str, key: &libp2p::identity::Keypair, offset: u64) -> SignedHead {
        let head = Head {
            source: victim.parse().unwrap(),
            root: root(),
            offset,
            lamport: 1,
            timestamp: 1,
        };
        let signed = Head {
            source: key.public().to_peer_id(),
            ..head.clone()
        }
        .sign(key)
        .unwrap();
        SignedHead {
            head,
            signature: signed.signature,
        }
    }

    /// A valid head of the liar's own source whose blocks it will serve wrongly.
    pub fn own(key: &libp2p::identity::Keypair, offset: u64) -> SignedHead {
        Head {
            source: key.public().to_peer_id(),
            root: root(),
            offset,
            lamport: 1,
            timestamp: 1,
        }
        .sign(key)
        .unwrap()
    }

    pub async fn publish(h: &swarm::Handle, head: SignedHead) {
        h.send(Command::Publish {
            head,
            blocks: vec![],
        })
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn forged_heads_and_wrong_blocks_are_ignored() {
    let a = Node::start().unwrap();
    let b = Node::start_with(peer(&a)).unwrap();
    publish_n(&a, "a", 2).await;
    converge(&b, &json!({ a.source.clone(): 1 })).await;

    let (liar, key) = liar::start(&b).await;
    let liar_source = key.public().to_peer_id().to_string();
    // Gossip needs the subscription exchange: repeat (higher offsets each time) until B logs
    // both kinds of misbehaviour.
    let deadline = Instant::now() + TIMEOUT;
    let mut offset = 100;
    loop {
        liar::publish(&liar, liar::forged(&a.source, &key, offset)).await;
        liar::publish(&liar, liar::own(&key, offset)).await;
        offset += 1;
        let log = b.log();
        let forged_seen = log.contains("dropped invalid gossip") || log.contains("invalid head");
        let bad_blocks_seen = log.contains("do not match their CIDs");
        if forged_seen && bad_blocks_seen {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B never reported the liar; log:\n{}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nothing of the liar's made it in, and A's stream is untouched.
    let offsets = b.offsets().await.unwrap();
    assert!(offsets.get(&liar_source).is_none(), "{offsets}");
    assert_eq!(offsets[&a.source], 1);
    // B keeps working: it publishes, and still replicates from A.
    publish_n(&b, "b", 2).await;
    publish_n(&a, "a", 3).await;
    let expected = json!({ a.source.clone(): 4, b.source.clone(): 1 });
    converge(&b, &expected).await;
    converge(&a, &expected).await;
    assert!(!b.log().contains("panicked"));
}
