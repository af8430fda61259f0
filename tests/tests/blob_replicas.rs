//! Blobs that survive their uploader (issue 16 item 1), on three real nodes: a blob put with
//! `replicas=2` is read in full from the other two after its uploader is killed with kill -9
//! right after the 201; with one peer away the put answers 202 and the missing replica appears
//! when that node comes back; a delete releases every replica and frees the blocks on every
//! node; a bad `replicas` is refused and stores nothing.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use shoal_tests::{within, Node, NodeOptions, TIMEOUT};

const CHUNK: usize = 1 << 20;

fn peers(of: &[&Node]) -> NodeOptions {
    of.iter().fold(NodeOptions::default(), |o, n| {
        o.arg("--peer").arg(n.swarm.clone())
    })
}

/// Three nodes, each connected to the other two; A waits for its replicas `timeout` seconds.
async fn three(timeout: u64) -> (Node, Node, Node) {
    let a = Node::start_with(
        NodeOptions::default()
            .arg("--blob-replica-timeout-secs")
            .arg(timeout.to_string()),
    )
    .unwrap();
    let b = Node::start_with(peers(&[&a])).unwrap();
    let c = Node::start_with(peers(&[&a, &b])).unwrap();
    for node in [&a, &b, &c] {
        node.wait_info(|i| connected(i) == 2).await;
    }
    (a, b, c)
}

fn connected(info: &Value) -> usize {
    info["peers"]
        .as_array()
        .map_or(0, |p| p.iter().filter(|p| p["connected"] == true).count())
}

/// `POST /api/v1/blobs?replicas=N`: status and body.
async fn put(node: &Node, data: &[u8], replicas: &str) -> (u16, Value) {
    let resp = within(
        node.http
            .post(node.url(&format!("/api/v1/blobs?replicas={replicas}")))
            .body(data.to_vec())
            .send(),
    )
    .await
    .unwrap();
    let status = resp.status().as_u16();
    (status, within(resp.json()).await.unwrap())
}

async fn read(node: &Node, cid: &str) -> Result<Vec<u8>> {
    let resp = within(
        node.http
            .get(node.url(&format!("/api/v1/blobs/{cid}")))
            .send(),
    )
    .await?;
    if resp.status() != 200 {
        bail!("get {cid}: {}", resp.status());
    }
    Ok(within(resp.bytes()).await?.to_vec())
}

/// This node's `GET /api/v1/blobs` entry for `cid`, if listed.
async fn listed(node: &Node, cid: &str) -> Option<Value> {
    let list: Value = within(node.http.get(node.url("/api/v1/blobs")).send())
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    list.as_array()?.iter().find(|b| b["cid"] == cid).cloned()
}

/// Polls until `done` holds for `node`'s entry of `cid` (panics after [`TIMEOUT`]).
async fn wait_listed(node: &Node, cid: &str, what: &str, done: impl Fn(Option<&Value>) -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let entry = listed(node, cid).await;
        if done(entry.as_ref()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: blob entry still {entry:?} after {TIMEOUT:?}; log:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Raw blocks (blob chunks) in a node's store, read with the sqlite3 CLI (WAL: safe while it
/// runs).
fn chunks(node: &Node) -> Result<u64> {
    let out = Command::new("sqlite3")
        .arg(node.data_dir().join("store.sqlite"))
        .arg(
            "SELECT count(*) FROM (SELECT id FROM blocks UNION ALL SELECT id FROM files) b \
             JOIN cids c ON c.id = b.id WHERE substr(c.cid, 2, 1) = x'55';",
        )
        .output()
        .context("sqlite3 (the tests use the sqlite3 CLI to look into a store)")?;
    if !out.status.success() {
        bail!("sqlite3: {}", String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("sqlite3 count")
}

#[tokio::test]
async fn a_blob_with_two_replicas_is_read_in_full_after_its_uploader_is_killed() {
    let (mut a, b, c) = three(60).await;
    let data = shoal_fixtures::blob(1, 3 * CHUNK + 5);
    let (status, body) = put(&a, &data, "2").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["replicas"], 2, "{body}");
    assert_eq!(body["size"], data.len() as u64);
    let cid = body["cid"].as_str().unwrap().to_string();
    // Right after the 201: the uploader is gone, and flushes nothing.
    a.kill9();
    for node in [&b, &c] {
        assert!(
            read(node, &cid).await.unwrap() == data,
            "bytes differ on {}",
            node.source
        );
    }
    // One of them held it pinned before the 201; the other fetched it from that one.
    let pinned = [listed(&b, &cid).await, listed(&c, &cid).await]
        .iter()
        .flatten()
        .filter(|e| e["pinned"] == true)
        .count();
    assert!(pinned >= 1, "no surviving node holds the replica pinned");
}

#[tokio::test]
async fn with_one_peer_away_the_put_is_202_and_the_missing_replica_follows() {
    let (a, b, mut c) = three(3).await;
    c.stop().unwrap();
    a.wait_info(|i| connected(i) == 1).await;
    let data = shoal_fixtures::blob(2, 2 * CHUNK + 1);
    let (status, body) = put(&a, &data, "3").await;
    assert_eq!(status, 202, "C is away: {body}");
    assert_eq!(body["replicas"], 2, "A and B: {body}");
    let cid = body["cid"].as_str().unwrap().to_string();
    wait_listed(&b, &cid, "B holds it", |e| {
        e.is_some_and(|e| e["pinned"] == true && e["complete"] == true)
    })
    .await;
    // C comes back (same data dir, same source id): it learns of the request from the swarm.
    let c = c.respawn().unwrap();
    wait_listed(&c, &cid, "C holds it", |e| {
        e.is_some_and(|e| e["pinned"] == true && e["complete"] == true)
    })
    .await;
    wait_listed(&a, &cid, "A counts three", |e| {
        e.is_some_and(|e| e["replicas"] == 3)
    })
    .await;
    assert!(read(&c, &cid).await.unwrap() == data);
    drop(b);
}

#[tokio::test]
async fn a_delete_releases_every_replica_and_frees_it_on_every_node() {
    let (a, b, c) = three(60).await;
    let before: Vec<u64> = [&a, &b, &c].iter().map(|n| chunks(n).unwrap()).collect();
    let data = shoal_fixtures::blob(3, 2 * CHUNK + 7);
    let (status, body) = put(&a, &data, "3").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["replicas"], 3, "{body}");
    let cid = body["cid"].as_str().unwrap().to_string();
    for (node, before) in [(&b, before[1]), (&c, before[2])] {
        // A holder learns of the other holders' `held` events a moment after A's 201.
        wait_listed(node, &cid, "a holder counts three", |e| {
            e.is_some_and(|e| e["pinned"] == true && e["replicas"] == 3)
        })
        .await;
        assert_eq!(chunks(node).unwrap(), before + 3, "three chunks held");
    }
    let resp = within(a.http.delete(a.url(&format!("/api/v1/blobs/{cid}"))).send())
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    for node in [&a, &b, &c] {
        wait_listed(node, &cid, "released", |e| e.is_none()).await;
    }
    let after: Vec<u64> = [&a, &b, &c].iter().map(|n| chunks(n).unwrap()).collect();
    assert_eq!(after, before, "every chunk freed on every node");
    // The release is recorded swarm-wide: a node restarted later does not hold it again.
    let b = b.restart().unwrap();
    let expected = a.offsets().await.unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while b.offsets().await.unwrap() != expected {
        assert!(Instant::now() < deadline, "B never caught up with A");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(listed(&b, &cid).await.is_none());
}

#[tokio::test]
async fn a_bad_replica_count_is_refused_and_stores_nothing() {
    let node = Node::start().unwrap();
    for bad in ["0", "65", "two", "-1"] {
        let (status, body) = put(&node, b"hello", bad).await;
        assert_eq!(status, 400, "replicas={bad}: {body}");
        assert_eq!(body["errorCode"], "ERR_BAD_REQUEST");
        assert!(
            body["error"].as_str().unwrap().contains("replicas"),
            "the message names the parameter: {body}"
        );
    }
    let list: Value = node
        .get("/api/v1/blobs")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list, serde_json::json!([]));
    // A lone node asked for one replica (itself) answers 201 at once.
    let (status, body) = put(&node, b"hello", "1").await;
    assert_eq!(
        (status, body["replicas"].clone()),
        (201, 1.into()),
        "{body}"
    );
}
