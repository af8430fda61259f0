//! In-process swarms on 127.0.0.1: gossip with inline blocks, digest catch-up, pipelined
//! fetching, a lying peer, and swarm-key isolation.

use std::collections::HashMap;
use std::time::Duration;

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
    // Never signalled (a dropped sender would stop the swarm): the task ends with the runtime.
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
    let Event::Head { head, blocks, from } = got;
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
    let Event::Head { head, .. } = ev;
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
