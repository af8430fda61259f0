//! The swarm-wide view of nodes and apps, with real node processes: node status gossip lists a
//! node that A reaches only through B (A–B–C chain via `--peer`, no mDNS), over HTTP
//! (`GET /api/v1/nodes`) and the CLI (`shoal nodes ls`, human and `--json`). Every wait is
//! bounded by the harness's `TIMEOUT`; nothing asserts on time.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shoal_tests::{cli, event, Node, NodeOptions, TIMEOUT};

fn peer(of: &Node) -> NodeOptions {
    NodeOptions::default().arg("--peer").arg(of.swarm.clone())
}

/// Polls `GET /api/v1/nodes` on `node` until `done` holds; returns that list.
async fn wait_nodes(node: &Node, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let resp = node.get("/api/v1/nodes").await.expect("GET /api/v1/nodes");
        assert_eq!(resp.status(), 200);
        let list: Vec<Value> = resp.json().await.expect("nodes list is JSON");
        if done(&list) {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: nodes never matched: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn find<'a>(list: &'a [Value], source: &str) -> Option<&'a Value> {
    list.iter().find(|n| n["source"] == source)
}

/// A–B–C: A lists C (not connected directly, events counted) and B (connected), itself first;
/// the CLI prints the same, with API.md's exact `--json` shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_ls_lists_a_node_reached_only_through_another() {
    let a = Node::start().unwrap();
    let b = Node::start_with(peer(&a)).unwrap();
    let c = Node::start_with(peer(&b)).unwrap();
    c.publish(&[event("test", "c", json!(1)), event("test", "c", json!(2))])
        .await
        .unwrap();
    let list = wait_nodes(&a, "A sees C with its 2 events", |l| {
        find(l, &c.source).is_some_and(|n| n["events"].as_u64() >= Some(2))
            && find(l, &b.source).is_some()
    })
    .await;
    assert_eq!(list[0]["source"], a.source, "this node comes first");
    assert_eq!(list[0]["connected"], true);
    let cn = find(&list, &c.source).unwrap();
    assert_eq!(cn["connected"], false, "A has no connection to C: {cn}");
    assert_eq!(find(&list, &b.source).unwrap()["connected"], true);
    // A is never connected to C directly: the listing came by gossip through B.
    let info = a.wait_info(|_| true).await;
    let peers = info["peers"].as_array().unwrap();
    assert!(
        !peers
            .iter()
            .any(|p| p["peerId"] == c.source && p["connected"] == true),
        "A connected to C directly: {info}"
    );

    let url = format!("http://{}", a.api);
    let out = cli(&["nodes", "ls", "--json", "--node", &url], None).unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    let json: Vec<Value> = serde_json::from_str(&out.stdout).unwrap();
    let cj = find(&json, &c.source).expect("C in `nodes ls --json`");
    let mut keys: Vec<&str> = cj.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "apps",
            "connected",
            "displayName",
            "events",
            "lastSeen",
            "source",
            "version"
        ]
    );
    assert!(cj["apps"]["running"].is_u64() && cj["apps"]["deployed"].is_u64());
    assert!(cj["lastSeen"].is_u64() && cj["version"].is_string());

    let out = cli(&["nodes", "ls", "--node", &url], None).unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with(&c.source))
        .unwrap_or_else(|| panic!("C not in `nodes ls`:\n{}", out.stdout));
    assert!(line.contains("via peers"), "{line}");
}

/// A node that stops is still listed (with its last-seen time) until its status expires; a
/// node that comes back announces again and its newer status replaces the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_reannounces() {
    let a = Node::start().unwrap();
    let b = Node::start_with(peer(&a)).unwrap();
    let first = wait_nodes(&a, "A sees B", |l| find(l, &b.source).is_some()).await;
    let seen = find(&first, &b.source).unwrap()["lastSeen"]
        .as_u64()
        .unwrap();
    let b = b.restart().unwrap();
    b.publish(&[event("test", "b", json!(1))]).await.unwrap();
    wait_nodes(&a, "A sees B's newer status", |l| {
        find(l, &b.source)
            .is_some_and(|n| n["lastSeen"].as_u64() > Some(seen) && n["events"].as_u64() >= Some(1))
    })
    .await;
}
