//! Safe resume of a node's own source (issue 17 item 3) with real nodes: node A publishes, is
//! dumped, publishes more that peer B replicates, loses its data dir (only its key is kept),
//! is restored from the older dump and rejoins. Until it has learned from B how far B holds
//! A's events, A refuses publishes (503 naming the reason, across a restart too); then it
//! continues its stream after the newest event B held: no fork on either node, and B ends with
//! one gapless stream of A's events, the old ones unchanged.

use serde_json::{json, Value};
use shoal_tests::{cli, expect_error, Node, NodeOptions, TIMEOUT};
use std::time::{Duration, Instant};

async fn publish_n(node: &Node, from: u64, n: u64) {
    let events: Vec<Value> = (from..from + n)
        .map(|i| json!({"semantics": "s", "name": "n", "payload": {"i": i}}))
        .collect();
    node.publish(&events).await.unwrap();
}

/// B's events of `source`: (offset, payload), offset order.
async fn events_of(node: &Node, source: &str) -> Vec<(u64, Value)> {
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
    .map(|e| (e["offset"].as_u64().unwrap(), e["payload"].clone()))
    .collect()
}

async fn wait_offset(node: &Node, source: &str, want: u64) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let now = node.offsets().await.unwrap();
        if now.get(source).and_then(Value::as_u64) == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "offsets {now}, want {source} at {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn assert_no_forks(node: &Node) {
    let info = node.wait_info(|_| true).await;
    assert!(
        info["forks"].as_array().is_none_or(|f| f.is_empty()),
        "forks: {}",
        info["forks"]
    );
}

async fn publish_is_refused_while_resuming(node: &Node) {
    let resp = node
        .post(
            "/api/v1/events/publish",
            &json!({"data": [{"semantics": "s", "name": "n", "payload": {"too": "early"}}]}),
        )
        .await
        .unwrap();
    expect_error(resp, 503, "ERR_SERVICE_OVERLOADED", "resuming")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_restored_from_an_old_dump_rejoins_without_forking_its_stream() {
    let a = Node::start().unwrap();
    let source = a.source.clone();
    publish_n(&a, 0, 50).await;
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("a.car");
    let dump_s = dump.to_str().unwrap().to_string();
    let a_url = a.url("");
    let out = cli(
        &[
            "events",
            "dump",
            "-o",
            &dump_s,
            "--node",
            a_url.trim_end_matches('/'),
        ],
        None,
    )
    .unwrap();
    assert!(out.status.success(), "dump: {}", out.stderr);

    // After the dump: 50 more that B replicates.
    let b = Node::start_with(NodeOptions::default().arg("--peer").arg(a.swarm.clone())).unwrap();
    publish_n(&a, 50, 50).await;
    wait_offset(&b, &source, 99).await;
    let before = events_of(&b, &source).await;
    assert_eq!(before.len(), 100);

    // A's disk is lost; its key was kept (restored from a backup of identity.key).
    let mut a = a;
    assert!(a.stop().unwrap());
    let data = a.data_dir();
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name() != Some(std::ffi::OsStr::new("identity.key")) {
            if path.is_dir() {
                std::fs::remove_dir_all(&path).unwrap();
            } else {
                std::fs::remove_file(&path).unwrap();
            }
        }
    }
    // Back without peers (B cannot reach it either: new port): it must not publish.
    let a = a
        .respawn_with(
            NodeOptions::default()
                .arg("--resume-timeout-secs")
                .arg("600"),
        )
        .unwrap();
    assert_eq!(a.source, source);
    publish_is_refused_while_resuming(&a).await;
    let a_url = a.url("");
    let out = cli(
        &[
            "events",
            "restore",
            &dump_s,
            "--node",
            a_url.trim_end_matches('/'),
        ],
        None,
    )
    .unwrap();
    assert!(
        out.status.success(),
        "restore: {} {}",
        out.stdout,
        out.stderr
    );
    wait_offset(&a, &source, 49).await;
    publish_is_refused_while_resuming(&a).await;

    // Restarted with B as a peer: still resuming (the marker survives the restart) until it
    // has B's events 50..99 of its own source; then it publishes after them.
    let a = a
        .respawn_with(
            NodeOptions::default()
                .arg("--peer")
                .arg(b.swarm.clone())
                .arg("--resume-timeout-secs")
                .arg("600"),
        )
        .unwrap();
    wait_offset(&a, &source, 99).await;
    let deadline = Instant::now() + TIMEOUT;
    let stamps = loop {
        let resp = a
            .post(
                "/api/v1/events/publish",
                &json!({"data": [{"semantics": "s", "name": "n", "payload": {"i": 100}}]}),
            )
            .await
            .unwrap();
        if resp.status().as_u16() == 201 {
            break resp.json::<Value>().await.unwrap();
        }
        assert_eq!(
            resp.status().as_u16(),
            503,
            "{}",
            resp.text().await.unwrap()
        );
        assert!(Instant::now() < deadline, "A never resumed publishing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(stamps["data"][0]["offset"], 100);

    wait_offset(&b, &source, 100).await;
    let after = events_of(&b, &source).await;
    assert_eq!(after.len(), 101);
    assert_eq!(&after[..100], &before[..], "the old events are unchanged");
    assert_eq!(after[100], (100, json!({"i": 100})));
    assert_eq!(events_of(&a, &source).await, after);
    assert_no_forks(&a).await;
    assert_no_forks(&b).await;
}
