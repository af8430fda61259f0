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
    b.wait_info(|info| {
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
    // And, from B's digests, that B holds all of A's events.
    a.wait_info(|info| {
        let peers = info["peers"].as_array().cloned().unwrap_or_default();
        peers
            .iter()
            .any(|p| p["peerId"] == b.source.as_str() && p["ourOffsetStored"] == 9)
    })
    .await;
}

/// Polls `GET /api/v1/node/info` until `done` holds.
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
    let info = c.wait_info(|_| true).await;
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
        fn get_block(&self, _: &cid::Cid) -> Result<Option<Vec<u8>>, shoal_store::Error> {
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
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        std::mem::forget(stop); // never stopped: it ends with the test's runtime
        let spawned = swarm::spawn(cfg, Arc::new(Garbage), Default::default(), shutdown)
            .await
            .unwrap();
        std::mem::forget(spawned.events); // keep the channel open; the liar ignores what it hears
        (spawned.handle, key)
    }

    /// A head claiming `victim`'s source, signed with the liar's key.
    pub fn forged(victim: &str, key: &libp2p::identity::Keypair, offset: u64) -> SignedHead {
        let head = Head {
            source: victim.parse().unwrap(),
            root: root(),
            offset,
            lamport: 1,
            timestamp: 1,
            pruned: 0,
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
            pruned: 0,
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

mod gate {
    //! An in-process relay between a real source node A and a real node B that is connected
    //! only to it: gossip flows A → relay → B (gossipsub forwards it), and B's block requests
    //! are answered by fetching the blocks from A, but only once the gate is open; until then
    //! each request waits, so a sync of B's that needs blocks stays running.

    use super::*;
    use shoal_engine::exchange::{BlockSource, FetchEvent};
    use shoal_engine::swarm::{self, Command};
    use std::sync::{Condvar, Mutex, OnceLock};

    #[derive(Default)]
    pub struct Gate {
        open: Mutex<bool>,
        changed: Condvar,
        swarm: OnceLock<swarm::Handle>,
    }

    impl Gate {
        pub fn open(&self) {
            self.set(true);
        }

        pub fn close(&self) {
            self.set(false);
        }

        fn set(&self, open: bool) {
            *self.open.lock().unwrap() = open;
            self.changed.notify_all();
        }
    }

    struct Blocks(Arc<Gate>);

    impl BlockSource for Blocks {
        // Runs on a blocking thread of the relay's runtime.
        fn get_block(&self, cid: &cid::Cid) -> Result<Option<Vec<u8>>, shoal_store::Error> {
            let failed = |e: &dyn std::fmt::Display| shoal_store::Error::Invalid(e.to_string());
            let open = self.0.open.lock().map_err(|e| failed(&e))?;
            let (open, _) = self
                .0
                .changed
                .wait_timeout_while(open, TIMEOUT, |open| !*open)
                .map_err(|e| failed(&e))?;
            if !*open {
                return Ok(None);
            }
            drop(open);
            let swarm = self
                .0
                .swarm
                .get()
                .ok_or_else(|| failed(&"relay not started"))?
                .clone();
            let cid = *cid;
            tokio::runtime::Handle::current().block_on(async move {
                let (tx, mut rx) = tokio::sync::mpsc::channel(4);
                let fetch = Command::Fetch {
                    cids: vec![cid],
                    preferred: vec![],
                    reply: tx,
                };
                swarm.send(fetch).await.map_err(|e| failed(&e))?;
                match tokio::time::timeout(TIMEOUT, rx.recv()).await {
                    Ok(Some(FetchEvent::Blocks(mut blocks))) => Ok(blocks.pop().map(|(_, d)| d)),
                    _ => Ok(None),
                }
            })
        }
    }

    pub struct Relay {
        pub gate: Arc<Gate>,
        /// Dialable address (`/ip4/127.0.0.1/tcp/…/p2p/…`).
        pub addr: String,
        _events: tokio::sync::mpsc::Receiver<swarm::Event>,
    }

    /// Starts a relay dialling `source`, gate open (close it once B is caught up: a head that
    /// B missed while gossip meshes formed makes B fetch older blocks, which must get through).
    pub async fn start(source: &Node) -> Relay {
        let key = libp2p::identity::Keypair::generate_ed25519();
        let mut cfg = swarm::Config::new(key);
        cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
        cfg.peers = vec![source.swarm.parse().unwrap()];
        cfg.mdns = false;
        let gate = Arc::new(Gate::default());
        gate.open();
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        std::mem::forget(stop); // never stopped: it ends with the test's runtime
        let spawned = swarm::spawn(
            cfg,
            Arc::new(Blocks(gate.clone())),
            Default::default(),
            shutdown,
        )
        .await
        .unwrap();
        let (handle, events) = (spawned.handle, spawned.events);
        let addr = handle.dialable_addr().unwrap().to_string();
        let _ = gate.swarm.set(handle);
        Relay {
            gate,
            addr,
            _events: events,
        }
    }
}

/// Events whose blocks are too large to travel inline with gossip (incompressible payloads
/// well over the 64 KiB inline limit), so a peer must fetch them.
async fn publish_large(node: &Node, seed: u64) -> u64 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let events: Vec<Value> = (0..400)
        .map(|i| {
            let noise: String = (0..75)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    format!("{:08x}", x as u32)
                })
                .collect();
            event("big", "a", json!({ "i": i, "noise": noise }))
        })
        .collect();
    let stamps = node.publish(&events).await.unwrap();
    stamps.last().unwrap()["offset"].as_u64().unwrap()
}

/// Publishes single events on `a` until `b` stores one (gossip A → relay → B works once the
/// gossipsub meshes have formed); returns the offset `b` stores.
async fn warm_up(a: &Node, b: &Node) -> u64 {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let stamp = a.publish(&[event("warm", "a", json!(1))]).await.unwrap();
        let offset = stamp[0]["offset"].as_u64().unwrap();
        let poll_until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < poll_until {
            if b.offsets().await.unwrap()[&a.source].as_u64() == Some(offset) {
                return offset;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            Instant::now() < deadline,
            "B never got A's events via the relay; B's log:\n{}",
            b.log()
        );
    }
}

/// The source entry of `source` in `node`'s info: (knownOffset, storedOffset).
async fn known_and_stored(node: &Node, source: &str) -> (Option<u64>, Option<u64>) {
    let info: Value = node
        .get("/api/v1/node/info")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entry = info["sources"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["source"] == source).cloned())
        .unwrap_or_default();
    (
        entry["knownOffset"].as_u64(),
        entry["storedOffset"].as_u64(),
    )
}

/// Polls until `node`'s info shows `source` known at `known` and stored at `stored`.
async fn wait_known_stored(node: &Node, source: &str, known: u64, stored: u64) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let got = known_and_stored(node, source).await;
        if got == (Some(known), Some(stored)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "expected known {known} / stored {stored}, have {got:?}; log:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `node`'s log until it contains `needle`.
async fn wait_log(node: &Node, needle: &str) {
    let deadline = Instant::now() + TIMEOUT;
    while !node.log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "log never said {needle:?}:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_head_mid_sync_supersedes_the_older_one() {
    let a = Node::start().unwrap();
    let relay = gate::start(&a).await;
    let b = Node::start_with(NodeOptions::default().arg("--peer").arg(&relay.addr)).unwrap();
    let mut sub = b
        .subscribe(&json!({ "subscriptions": [{}] }))
        .await
        .unwrap();
    let base = warm_up(&a, &b).await;
    relay.gate.close();

    // Head 1 needs a fetch; the relay holds the fetch at the gate: B's sync is running.
    let h1 = publish_large(&a, 1).await;
    wait_known_stored(&b, &a.source, h1, base).await;
    wait_log(
        &b,
        &format!("sync started: fetching source={} offset={h1}", a.source),
    )
    .await;
    // Head 2 arrives while that sync runs.
    let h2 = publish_large(&a, 2).await;
    wait_known_stored(&b, &a.source, h2, base).await;

    relay.gate.open();
    converge(&b, &json!({ a.source.clone(): h2 })).await;
    // The subscriber (opened before anything) saw each of A's events exactly once, in order.
    let mut seen = Vec::new();
    while seen.last() != Some(&h2) {
        let e = sub
            .next_within(TIMEOUT)
            .await
            .unwrap()
            .expect("stream ended");
        if e["stream"]["source"] == a.source.as_str() {
            seen.push(e["offset"].as_u64().unwrap());
        }
    }
    assert_eq!(seen, (0..=h2).collect::<Vec<_>>());
    assert_eq!(a.query_all().await.unwrap(), b.query_all().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_resumes_an_incomplete_sync() {
    let a = Node::start().unwrap();
    let relay = gate::start(&a).await;
    let b = Node::start_with(NodeOptions::default().arg("--peer").arg(&relay.addr)).unwrap();
    let base = warm_up(&a, &b).await;
    relay.gate.close();
    let h1 = publish_large(&a, 3).await;
    wait_known_stored(&b, &a.source, h1, base).await;

    // Wait until B has saved the head as its sync target (kind 1) in <data>/swarm-heads.
    let heads = b.data_dir().join("swarm-heads");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let bytes = std::fs::read(&heads).unwrap_or_default();
        let mut saved = false;
        let mut rest = &bytes[..];
        while rest.len() >= 3 {
            let (kind, len) = (rest[0], u16::from_be_bytes([rest[1], rest[2]]) as usize);
            let Some(head) = rest.get(3..3 + len) else {
                break;
            };
            let head = shoal_engine::head::SignedHead::decode(head).unwrap();
            saved |= kind == 1 && head.head.offset == h1;
            rest = &rest[3 + len..];
        }
        if saved {
            break;
        }
        assert!(Instant::now() < deadline, "B never saved its sync target");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Restarted, B hears nothing of head 1 again (the relay stores nothing, so its digest
    // answers are empty, and the gossip is over): only the saved target can resume the sync.
    let b = b.restart().unwrap();
    relay.gate.open();
    converge(&b, &json!({ a.source.clone(): h1 })).await;
    assert!(
        b.log().contains("resuming an incomplete sync"),
        "{}",
        b.log()
    );
    assert_eq!(a.query_all().await.unwrap(), b.query_all().await.unwrap());
}

/// Not in the default run: it depends on the host's multicast. It passes alone every time here
/// (0.3 s), but once in a full `cargo test --workspace` on this VM the two nodes did not find
/// each other within 60 s (cause not proven; a failed first dial was then never retried, fixed
/// since). Run it with `cargo test -p shoal-tests --test replication -- --ignored`. Discovery
/// and reconnection by mDNS run by default in `partition.rs`, on their own network namespaces.
#[tokio::test]
#[ignore = "needs working multicast on a non-loopback interface; flaked once under the full test run"]
async fn mdns_discovery_without_peer_addresses() {
    // A fresh swarm key keeps any other node on this host's network out of the test.
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    let out = cli(&["swarm", "keygen", "-o", key.to_str().unwrap()], None).unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    let opts = || {
        NodeOptions::default()
            .mdns()
            .arg("--swarm-key")
            .arg(key.to_str().unwrap())
    };
    let a = Node::start_with(opts()).unwrap();
    let b = Node::start_with(opts()).unwrap();
    publish_n(&a, "a", 3).await;
    publish_n(&b, "b", 2).await;
    let expected = json!({ a.source.clone(): 2, b.source.clone(): 1 });
    converge(&a, &expected).await;
    converge(&b, &expected).await;
    b.wait_info(|info| {
        info["peers"].as_array().is_some_and(|peers| {
            peers
                .iter()
                .any(|p| p["peerId"] == a.source.as_str() && p["connected"] == true)
        })
    })
    .await;
    assert!(b.log().contains("discovered by mDNS") || a.log().contains("discovered by mDNS"));
}
