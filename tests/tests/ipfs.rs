//! IPFS interoperability (issue 15, API.md "IPFS interoperability"), against a real IPFS
//! implementation: Helia from npm (`tests/ipfs/`, driven by `shoal_tests::ipfs::Helia`), joining
//! shoal's private swarm with the same swarm key file. It speaks only Bitswap (and identify):
//! no ping service, no `/shoal/exchange/1`, no gossip. Helia fetches a stream's tree root and a
//! blob's blocks, `cat`s a blob and computes the same CID for the same file; shoal reads blobs
//! only Helia has; another key cannot connect; bad Bitswap is dropped.
//!
//! Skipped, saying so, only when npm cannot reach its registry.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cid::multihash::Multihash;
use cid::Cid;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use shoal_tests::ipfs::Helia;
use shoal_tests::{cli, within, Node, NodeOptions};

const CHUNK: usize = 1 << 20;

fn random(n: usize, seed: u64) -> Vec<u8> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen()).collect()
}

fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The CID of `data` as a raw block (how shoal and IPFS store a blob's chunks).
fn raw_cid(data: &[u8]) -> String {
    let mh = Multihash::<64>::wrap(0x12, &Sha256::digest(data)).unwrap();
    Cid::new_v1(0x55, mh).to_string()
}

/// The SHA-256 digest (hex) a CID names: the bytes of a block fetched under it must hash to it.
fn digest_of(cid: &str) -> String {
    let cid = Cid::try_from(cid).unwrap();
    assert_eq!(cid.hash().code(), 0x12, "{cid} is not SHA-256");
    hex(cid.hash().digest())
}

fn keygen(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let out = cli(&["swarm", "keygen", "-o", path.to_str().unwrap()], None).unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    path
}

fn keyed(key: &Path) -> NodeOptions {
    NodeOptions::default()
        .arg("--swarm-key")
        .arg(key.to_str().unwrap())
}

async fn get_blob(node: &Node, cid: &str) -> Result<Vec<u8>> {
    let resp = within(
        node.http
            .get(node.url(&format!("/api/v1/blobs/{cid}")))
            .send(),
    )
    .await?;
    anyhow::ensure!(resp.status() == 200, "get: {}", resp.status());
    Ok(within(resp.bytes()).await?.to_vec())
}

/// Node info's entry for `peer`, if listed.
async fn peer_info(node: &Node, peer: &str) -> Option<Value> {
    let info = node.wait_info(|_| true).await;
    info["peers"]
        .as_array()?
        .iter()
        .find(|p| p["peerId"] == peer)
        .cloned()
}

/// Starts Helia with `key`, or `None` (printed) when npm cannot reach its registry.
fn helia(key: &Path) -> Option<Helia> {
    Helia::start(key).unwrap()
}

/// A Helia node with the swarm key fetches a stream's tree root (dag-cbor) from shoal by CID,
/// over Bitswap, and gets the block that hashes to it; shoal keeps the connection although
/// Helia runs no ping.
#[tokio::test]
async fn helia_fetches_a_stream_tree_root_by_cid() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "swarm.key");
    let Some(mut helia) = helia(&key) else { return };
    let node = Node::start_with(keyed(&key)).unwrap();
    let events: Vec<Value> = (0..50)
        .map(|i| shoal_tests::event("ipfs", "tree", json!({ "i": i })))
        .collect();
    node.publish(&events).await.unwrap();
    let out = cli(
        &[
            "store",
            "streams",
            "--json",
            "--data-dir",
            node.data_dir().to_str().unwrap(),
        ],
        None,
    )
    .unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    let streams: Value = serde_json::from_str(&out.stdout).unwrap();
    let root = streams
        .as_array()
        .and_then(|s| s.iter().find(|s| s["source"] == node.source.as_str()))
        .and_then(|s| s["root"].as_str())
        .with_context(|| format!("no root in {streams}"))
        .unwrap()
        .to_string();
    assert!(root.starts_with("bafyrei"), "a dag-cbor CID: {root}");

    helia.dial(&node.swarm).unwrap();
    let got = helia.get(std::slice::from_ref(&root)).unwrap();
    assert_eq!(got.len(), 1);
    let (cid, size, sha) = &got[0];
    assert_eq!(cid, &root);
    assert!(*size > 0);
    assert_eq!(
        sha,
        &digest_of(&root),
        "Helia got other bytes than the block"
    );

    // Still connected: a peer without ping is not dropped for it.
    let p = peer_info(&node, &helia.peer).await.expect("Helia listed");
    assert_eq!(p["connected"], true, "{p}");
    let log = node.log();
    assert!(!log.contains("ping failed"), "{log}");
    assert!(log.contains("not a shoal node"), "{log}");
}

/// Helia fetches a shoal blob's blocks (the dag-pb root and every raw chunk) by CID; then, with
/// the only shoal node that had it gone, a fresh shoal node fetches the whole blob from Helia.
#[tokio::test]
async fn blob_blocks_go_from_shoal_to_helia_and_back_to_shoal() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "swarm.key");
    let Some(mut helia) = helia(&key) else { return };
    let data = random(2 * CHUNK + 12_345, 15);
    let mut a = Node::start_with(keyed(&key)).unwrap();
    let root = a.put_blob(data.clone()).await.unwrap();
    let chunks: Vec<&[u8]> = data.chunks(CHUNK).collect();
    let mut cids = vec![root.clone()];
    cids.extend(chunks.iter().map(|c| raw_cid(c)));

    helia.dial(&a.swarm).unwrap();
    let got = helia.get(&cids).unwrap();
    assert_eq!(got.len(), cids.len());
    for (i, (cid, size, sha)) in got.iter().enumerate() {
        assert_eq!(cid, &cids[i]);
        assert_eq!(sha, &digest_of(cid));
        if i > 0 {
            assert_eq!(*size, chunks[i - 1].len() as u64);
            assert_eq!(sha, &sha256_hex(chunks[i - 1]));
        }
    }

    // Only Helia has the blob now.
    a.stop().unwrap();
    let b = Node::start_with(keyed(&key)).unwrap();
    helia.dial(&b.swarm).unwrap();
    let back = get_blob(&b, &root).await.unwrap();
    assert!(back == data, "B read other bytes from Helia");
    // Identify may finish after the blob (a loaded machine): wait, bounded, for its line.
    let deadline = std::time::Instant::now() + shoal_tests::TIMEOUT;
    while !b.log().contains("not a shoal node") {
        assert!(
            std::time::Instant::now() < deadline,
            "B never identified Helia: {}",
            b.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A Helia node with another swarm key cannot connect (pnet), and shoal lists no such peer.
#[tokio::test]
async fn helia_with_another_key_cannot_connect() {
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2) = (keygen(dir.path(), "k1"), keygen(dir.path(), "k2"));
    let Some(mut helia) = helia(&k2) else { return };
    let node = Node::start_with(keyed(&k1)).unwrap();
    let error = helia.try_dial(&node.swarm).unwrap();
    assert!(error.is_some(), "Helia with another key connected");
    let info = node.wait_info(|_| true).await;
    assert!(
        info["peers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["connected"] == false),
        "{info}"
    );
    // The same Helia, same key as the node: connects (the refusal above was the key).
    let Some(mut good) = Helia::start(&k1).unwrap() else {
        return;
    };
    assert_eq!(good.try_dial(&node.swarm).unwrap(), None);
}

/// Bad Bitswap from a peer holding the key (junk protobuf, a 100 MiB frame announced, more
/// entries than a message may hold, blocks nobody asked for, floods of wants for random CIDs)
/// is dropped and logged, never fatal: the node stays up and still serves the same peer.
#[tokio::test]
async fn bad_bitswap_is_dropped_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "swarm.key");
    let Some(mut helia) = helia(&key) else { return };
    let node = Node::start_with(keyed(&key)).unwrap();
    let data = random(CHUNK / 2, 17);
    let root = node.put_blob(data.clone()).await.unwrap();
    helia.dial(&node.swarm).unwrap();
    helia.hostile(&node.swarm).unwrap();
    // Still serving, the same peer too.
    let chunk = raw_cid(&data);
    let got = helia.get(&[root.clone(), chunk]).unwrap();
    assert_eq!(got[1].2, sha256_hex(&data));
    let log = node.log();
    assert!(log.contains("invalid Bitswap message"), "{log}");
    assert!(log.contains("do not match their CIDs"), "{log}");
    assert_eq!(get_blob(&node, &root).await.unwrap(), data);
}

/// Helia `cat`s a multi-chunk shoal blob (a UnixFS file, issue 15 item 2) over Bitswap and gets
/// the same bytes; the same file imported into Helia the way `ipfs add --cid-version=1
/// --raw-leaves --chunker=size-1048576` does has the same CID as in shoal.
#[tokio::test]
async fn helia_cats_a_shoal_blob_and_computes_the_same_cid() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "swarm.key");
    let Some(mut helia) = helia(&key) else { return };
    let node = Node::start_with(keyed(&key)).unwrap();
    let data = random(3 * CHUNK + 4_321, 18);
    let root = node.put_blob(data.clone()).await.unwrap();
    helia.dial(&node.swarm).unwrap();
    let (size, sha, _) = helia.cat(&root, shoal_tests::TIMEOUT).unwrap();
    assert_eq!(size, data.len() as u64);
    assert_eq!(sha, sha256_hex(&data), "Helia read other bytes");
    let file = dir.path().join("same.bin");
    std::fs::write(&file, &data).unwrap();
    assert_eq!(helia.add(&file, shoal_tests::TIMEOUT).unwrap(), root);
}

/// A file only Helia has (imported there, multi-chunk and single-chunk): a shoal node reads it
/// by CID, fetching every block over Bitswap.
#[tokio::test]
async fn shoal_reads_files_only_helia_has() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "swarm.key");
    let Some(mut helia) = helia(&key) else { return };
    let node = Node::start_with(keyed(&key)).unwrap();
    helia.dial(&node.swarm).unwrap();
    for (i, len) in [2 * CHUNK + 5, 300_000].into_iter().enumerate() {
        let data = random(len, 19 + i as u64);
        let file = dir.path().join(format!("only-helia-{i}.bin"));
        std::fs::write(&file, &data).unwrap();
        let cid = helia.add(&file, shoal_tests::TIMEOUT).unwrap();
        if len <= CHUNK {
            assert_eq!(cid, raw_cid(&data), "a one-chunk file is its raw leaf");
        }
        let back = get_blob(&node, &cid).await.unwrap();
        assert!(back == data, "shoal read other bytes from Helia");
    }
}
