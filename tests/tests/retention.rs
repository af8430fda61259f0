//! Retention (issue 17 item 2) on real nodes: the `node` settings scope's `retention` rules
//! make node A prune its own tree in the background (by count, by payload bytes, by age), the
//! offsets stay, a peer B follows the pruned tree and its GC frees what the tree no longer
//! links, new events replicate on top, and a v1 subscriber on B across a pruning gets every
//! event that still exists exactly once, in order.
//!
//! Payloads are 40 kB of pseudo-random text, so leaves seal at the default tree's 512 kB
//! (compressed) after about 17 events and a few hundred events make several sealed leaves.

use serde_json::{json, Value};
use shoal_tests::{cli, Node, NodeOptions, TIMEOUT};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Pruning happens within a minute; GC frees blocks after its 60 s grace, in 30 s rounds.
const GC_WAIT: Duration = Duration::from_secs(240);

/// 40 kB that zstd cannot shrink much (a xorshift over a 64-letter alphabet).
fn fill(seed: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..40_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x % 64) as usize] as char
        })
        .collect()
}

/// Publishes `n` big events on `node` in batches of 10.
async fn publish_big(node: &Node, semantics: &str, tags: &[&str], n: u64) {
    let mut i = 0;
    while i < n {
        let batch: Vec<Value> = (i..(i + 10).min(n))
            .map(|j| {
                json!({"semantics": semantics, "name": "n", "tags": tags,
                       "payload": {"i": j, "fill": fill(j + 1)}})
            })
            .collect();
        node.publish(&batch).await.unwrap();
        i += 10;
    }
}

/// `node`'s events of `source`: (offset, semantics, payload) in offset order.
async fn events_of(node: &Node, source: &str) -> Vec<(u64, String, Value)> {
    let upper = node.offsets().await.unwrap();
    if upper.get(source).is_none() {
        return Vec::new();
    }
    node.query(
        &json!({"upperBound": upper, "subscriptions": [{"source": source}], "order": "lamport"}),
    )
    .await
    .unwrap()
    .into_iter()
    .map(|e| {
        (
            e["offset"].as_u64().unwrap(),
            e["stream"]["semantics"].as_str().unwrap().to_string(),
            e["payload"].clone(),
        )
    })
    .collect()
}

async fn wait_for<F: std::future::Future<Output = bool>>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "waited {limit:?} for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `shoal store stats --json` of a running node's data dir (a read-only view).
fn stats(node: &Node) -> Value {
    let dir = node.data_dir();
    let out = cli(
        &[
            "store",
            "stats",
            "--json",
            "--data-dir",
            dir.to_str().unwrap(),
        ],
        None,
    )
    .unwrap();
    assert!(out.status.success(), "store stats: {}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap()
}

fn set_retention(node: &Node, rules: Value) {
    let url = node.url("");
    let settings = json!({ "retention": rules }).to_string();
    let out = cli(
        &[
            "settings",
            "set",
            "node",
            &settings,
            "--node",
            url.trim_end_matches('/'),
        ],
        None,
    )
    .unwrap();
    assert!(out.status.success(), "settings set: {}", out.stderr);
}

fn peer_of(a: &Node) -> Node {
    Node::start_with(NodeOptions::default().arg("--peer").arg(a.swarm.clone())).unwrap()
}

async fn wait_same(a: &Node, b: &Node, want: &[(u64, String, Value)]) {
    let source = a.source.clone();
    wait_for(TIMEOUT, "B to hold A's events as A does", || async {
        events_of(b, &source).await == want
    })
    .await;
    let forks = &b.wait_info(|_| true).await["forks"];
    assert!(
        forks.as_array().is_none_or(|f| f.is_empty()),
        "B saw a fork: {forks}"
    );
}

/// A suffix of offsets ending at `last`, gapless.
fn is_suffix(events: &[(u64, String, Value)], last: u64) -> bool {
    events.last().is_some_and(|e| e.0 == last) && events.windows(2).all(|w| w[1].0 == w[0].0 + 1)
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_by_count_prunes_the_own_tree_and_a_peer_follows_and_frees() {
    let a = Node::start().unwrap();
    let b = peer_of(&a);
    let source = a.source.clone();
    publish_big(&a, "big", &[], 100).await;
    let all = events_of(&a, &source).await;
    assert_eq!(all.len(), 100);
    wait_same(&a, &b, &all).await;
    let bytes_before = stats(&b)["bytes"].as_u64().unwrap();

    set_retention(&a, json!([{"maxEvents": 20}]));
    wait_for(Duration::from_secs(60), "A to prune", || async {
        events_of(&a, &source).await.len() < 100
    })
    .await;
    let kept = events_of(&a, &source).await;
    // The newest 20 and at most the rest of their oldest leaf; offsets unchanged.
    assert!(
        kept.len() >= 20 && kept.len() <= 60,
        "{} events kept",
        kept.len()
    );
    assert!(is_suffix(&kept, 99));
    assert_eq!(&all[100 - kept.len()..], &kept[..]);
    assert_eq!(a.offsets().await.unwrap()[&source], 99);

    // B follows the pruned tree (no fork), then GC frees the dropped leaves on both.
    wait_same(&a, &b, &kept).await;
    assert_eq!(b.offsets().await.unwrap()[&source], 99);
    wait_for(GC_WAIT, "B's GC to free the pruned leaves", || async {
        stats(&b)["bytes"].as_u64().unwrap() < bytes_before / 2
    })
    .await;
    wait_for(GC_WAIT, "A's GC to free the pruned leaves", || async {
        stats(&a)["bytes"].as_u64().unwrap() < bytes_before / 2
    })
    .await;

    // The stream goes on after the pruning: new events replicate on top, offsets continue.
    publish_big(&a, "big", &[], 10).await;
    let now = events_of(&a, &source).await;
    assert!(is_suffix(&now, 109));
    wait_same(&a, &b, &now).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_by_size_and_age_holds_only_the_events_its_rules_match() {
    let a = Node::start().unwrap();
    let b = peer_of(&a);
    let source = a.source.clone();
    // 60 events tagged `tmp` (kept for 1 s), 60 of semantics `big` (kept up to 400 kB of
    // payload), then 3 small ones that no rule matches.
    publish_big(&a, "t", &["tmp"], 60).await;
    publish_big(&a, "big", &[], 60).await;
    let small: Vec<Value> = (0..3)
        .map(|i| json!({"semantics": "keep", "name": "n", "payload": {"i": i}}))
        .collect();
    a.publish(&small).await.unwrap();
    let all = events_of(&a, &source).await;
    assert_eq!(all.len(), 123);
    wait_same(&a, &b, &all).await;

    set_retention(
        &a,
        json!([{"tags": ["tmp"], "maxAgeSecs": 1}, {"semantics": "big", "maxBytes": 400_000}]),
    );
    let count =
        |events: &[(u64, String, Value)], s: &str| events.iter().filter(|e| e.1 == s).count();
    wait_for(
        Duration::from_secs(60),
        "A to prune by age and size",
        || async {
            let now = events_of(&a, &source).await;
            count(&now, "t") < 20 && count(&now, "big") < 60
        },
    )
    .await;
    let kept = events_of(&a, &source).await;
    // Payloads are ~40,020 bytes: 400 kB keeps the newest 9, plus at most the rest of a leaf.
    let big = count(&kept, "big");
    assert!((9..=45).contains(&big), "{big} big events kept");
    assert_eq!(count(&kept, "keep"), 3, "events under no rule stay");
    assert!(
        kept.iter().all(|e| all.contains(e)),
        "offsets and payloads unchanged"
    );
    assert_eq!(a.offsets().await.unwrap()[&source], 122);
    wait_same(&a, &b, &kept).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_v1_subscriber_across_a_pruning_gets_each_remaining_event_once() {
    let a = Node::start().unwrap();
    let b = peer_of(&a);
    let source = a.source.clone();
    publish_big(&a, "big", &[], 100).await;
    let all = events_of(&a, &source).await;
    wait_same(&a, &b, &all).await;

    // A v1 subscription on B (no lower bound: from the start), read part-way.
    let mut sub = b
        .subscribe(&json!({"subscriptions": [{"source": source.clone()}]}))
        .await
        .unwrap();
    let mut seen: Vec<u64> = Vec::new();
    for e in sub.take(30).await.unwrap() {
        seen.push(e["offset"].as_u64().unwrap());
    }

    set_retention(&a, json!([{"maxEvents": 20}]));
    wait_for(
        Duration::from_secs(60),
        "B to follow A's pruning",
        || async { events_of(&b, &source).await.len() < 100 },
    )
    .await;
    let kept: BTreeSet<u64> = events_of(&b, &source).await.iter().map(|e| e.0).collect();
    publish_big(&a, "big", &[], 10).await;

    while seen.last() != Some(&109) {
        let e = sub
            .next_within(TIMEOUT)
            .await
            .unwrap()
            .expect("the subscription delivers up to offset 109");
        seen.push(e["offset"].as_u64().unwrap());
    }
    // Exactly once, in order; nothing that still exists is missed.
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    let seen: BTreeSet<u64> = seen.into_iter().collect();
    assert!(kept.is_subset(&seen), "kept {kept:?}, seen {seen:?}");
    assert!((100..110).all(|o| seen.contains(&o)));
    assert!((0..30).all(|o| seen.contains(&o)));
}

async fn put_blob(node: &Node, bytes: &[u8]) -> String {
    let resp = node
        .post_bytes("/api/v1/blobs", bytes.to_vec())
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    body["cid"].as_str().unwrap().to_string()
}

async fn name_blob(node: &Node, name: &str, cid: &str) {
    let resp = node
        .http
        .put(node.url(&format!("/api/v1/blobs/names/{name}")))
        .json(&json!({ "cid": cid }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
}

async fn status_of(node: &Node, path: &str) -> u16 {
    node.get(path).await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blob_follows_its_name_event_when_retention_prunes_it() {
    let a = Node::start().unwrap();
    let old = put_blob(&a, b"named by a pruned event").await;
    name_blob(&a, "old", &old).await;
    let unnamed = put_blob(&a, b"never named").await;
    publish_big(&a, "big", &[], 100).await;
    let kept = put_blob(&a, b"named by a kept event").await;
    name_blob(&a, "new", &kept).await;
    assert_eq!(status_of(&a, &format!("/api/v1/blobs/{old}")).await, 200);

    set_retention(&a, json!([{"maxEvents": 20}]));
    let old_path = format!("/api/v1/blobs/{old}");
    wait_for(
        Duration::from_secs(60),
        "the blob of the pruned name to go",
        || async { status_of(&a, &old_path).await == 404 },
    )
    .await;
    assert_eq!(status_of(&a, "/api/v1/blobs/names/old").await, 404);
    let resp = a.get("/api/v1/blobs/names/new").await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(&resp.bytes().await.unwrap()[..], b"named by a kept event");
    assert_eq!(
        status_of(&a, &format!("/api/v1/blobs/{unnamed}")).await,
        200
    );
}
