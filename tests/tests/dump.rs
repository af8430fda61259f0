//! `shoal events dump` / `restore` between real nodes: a dump of node A (its own source and one
//! it replicated from C) restored on a fresh node B gives the same offsets and the same answer
//! to every query; a damaged dump is refused with a 400 naming the problem and changes nothing.

use serde_json::{json, Value};
use shoal_tests::{cli, Node, NodeOptions};
use std::time::{Duration, Instant};

async fn wait_offsets(node: &Node, want: &Value) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = node.offsets().await.unwrap();
        if &now == want {
            return;
        }
        assert!(Instant::now() < deadline, "offsets {now}, want {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn publish_some(node: &Node, tag: &str, batches: usize) {
    for b in 0..batches {
        let events: Vec<Value> = (0..50)
            .map(|i| {
                json!({"semantics": format!("s{}", i % 3), "name": format!("n{b}"),
                       "payload": {"b": b, "i": i}, "tags": [tag, format!("t{}", i % 4)]})
            })
            .collect();
        node.publish(&events).await.unwrap();
    }
}

#[tokio::test]
async fn dump_on_a_restore_on_a_fresh_node_gives_the_same_offsets_and_queries() {
    let c = Node::start().unwrap();
    publish_some(&c, "from-c", 4).await;
    let a = Node::start_with(NodeOptions::default().arg("--peer").arg(c.swarm.clone())).unwrap();
    publish_some(&a, "from-a", 6).await;
    let want = json!({a.source.clone(): 299, c.source.clone(): 199});
    wait_offsets(&a, &want).await;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.car");
    let file_s = file.to_str().unwrap();
    let a_url = format!("http://{}", a.api);
    let out = cli(&["events", "dump", "-o", file_s, "--node", &a_url], None).unwrap();
    assert!(out.status.success(), "dump: {}", out.stderr);
    let bytes = std::fs::read(&file).unwrap();
    assert!(
        bytes.len() > 1000,
        "a dump of 500 events is {} bytes",
        bytes.len()
    );

    // A fresh node, not connected to either.
    let b = Node::start().unwrap();
    let b_url = format!("http://{}", b.api);
    let out = cli(
        &["events", "restore", file_s, "--json", "--node", &b_url],
        None,
    )
    .unwrap();
    assert!(out.status.success(), "restore: {}", out.stderr);
    let summary: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    let outcomes: Vec<&str> = summary["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["imported", "imported"], "{summary}");
    // Queryable when restore returns: no waiting.
    assert_eq!(b.offsets().await.unwrap(), want);
    for order in ["lamport", "lamport-reverse", "source-ordered"] {
        for filter in [
            json!({}),
            json!({"tags": ["from-c", "t1"]}),
            json!({"semantics": "s2", "tags": ["from-a"]}),
            json!({"source": c.source.clone()}),
        ] {
            let q = json!({"upperBound": want, "subscriptions": [filter], "order": order});
            let from_a = a.query(&q).await.unwrap();
            let from_b = b.query(&q).await.unwrap();
            assert!(!from_a.is_empty(), "{q}");
            assert_eq!(from_a, from_b, "{q}");
        }
    }
    // Restoring again changes nothing: every source is current.
    let resp = b
        .post_bytes("/api/v1/events/restore", bytes.clone())
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let again: Value = resp.json().await.unwrap();
    assert!(
        again["sources"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["outcome"] == "current"),
        "{again}"
    );

    // A damaged dump (one byte of the last block flipped) is refused; nothing is imported on a
    // fresh node.
    let d = Node::start().unwrap();
    let mut bad = bytes.clone();
    let last = bad.len() - 10;
    bad[last] ^= 0x55;
    let resp = d.post_bytes("/api/v1/events/restore", bad).await.unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errorCode"], "ERR_BAD_REQUEST");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("does not hash to its CID"),
        "{body}"
    );
    let d_offsets = d.offsets().await.unwrap();
    // The source whose blocks all came before the damage may be imported; the damaged one not.
    assert!(
        d_offsets.get(c.source.as_str()).is_none() || d_offsets.get(a.source.as_str()).is_none(),
        "{d_offsets}"
    );
    let out = cli(
        &["events", "restore", "/nonexistent.car", "--node", &b_url],
        None,
    )
    .unwrap();
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("cannot open /nonexistent.car"),
        "{}",
        out.stderr
    );
}
