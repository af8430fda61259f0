//! Failures an operator must see at the default log level and in node info (issue 19 item 2),
//! each with real node processes: a peer with another swarm key, a `--peer` nobody answers, a
//! second node on a swarm port in use, an unreadable key file. Before, the first two logged
//! nothing above debug and node info showed `peers: []`; the third started and shared the port.

use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_tests::{cli, free_port, Node, NodeOptions, TIMEOUT};

/// Waits until one of `node`'s peers satisfies `done`; returns that peer.
async fn wait_peer(node: &Node, done: impl Fn(&Value) -> bool) -> Value {
    let peer_of = |info: &Value| {
        info["peers"]
            .as_array()
            .and_then(|peers| peers.iter().find(|p| done(p)).cloned())
    };
    let info = node.wait_info(|info| peer_of(info).is_some()).await;
    peer_of(&info).unwrap_or_default()
}

fn keygen(dir: &std::path::Path, name: &str) -> String {
    let path = dir.join(name);
    let out = cli(&["swarm", "keygen", "-o", path.to_str().unwrap()], None).unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    path.to_str().unwrap().to_string()
}

fn with_key(key: &str) -> NodeOptions {
    NodeOptions::default().arg("--swarm-key").arg(key)
}

/// `addr` without its `/p2p/…` part.
fn without_peer_id(addr: &str) -> String {
    addr.split("/p2p/").next().unwrap().to_string()
}

#[tokio::test]
async fn another_swarm_key_is_named_in_the_log_and_in_node_info() {
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2) = (keygen(dir.path(), "k1"), keygen(dir.path(), "k2"));
    let a = Node::start_with(with_key(&k1)).unwrap();
    let b = Node::start_with(with_key(&k2).arg("--peer").arg(&a.swarm)).unwrap();
    let peer = wait_peer(&b, |p| p["peerId"] == a.source.as_str()).await;
    assert_eq!(peer["connected"], false);
    assert_eq!(
        peer["lastError"], "handshake failed: different swarm key?",
        "{peer}"
    );
    let deadline = Instant::now() + TIMEOUT;
    while !b.log().contains("WARN") || !b.log().contains("different swarm key?") {
        assert!(Instant::now() < deadline, "B's log: {}", b.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The dialled side warns too: someone failed its handshake.
    while !a.log().contains("a connecting peer failed the handshake") {
        assert!(Instant::now() < deadline, "A's log: {}", a.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_unreachable_peer_is_named_and_retried() {
    // A real peer id at an address where nothing listens (that node is gone).
    let mut gone = Node::start().unwrap();
    let addr = gone.swarm.clone();
    gone.stop().unwrap();
    let b = Node::start_with(NodeOptions::default().arg("--peer").arg(&addr)).unwrap();
    let peer = wait_peer(&b, |p| p["peerId"] == gone.source.as_str()).await;
    assert_eq!(peer["connected"], false);
    let error = peer["lastError"].as_str().unwrap_or_default().to_string();
    assert!(error.to_lowercase().contains("refused"), "{peer}");
    assert!(b.log().contains("cannot connect to peer"), "{}", b.log());
    assert!(b.log().contains("retrying with backoff"), "{}", b.log());
    // Warned once for the streak, not at every redial.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        b.log().matches("cannot connect to peer").count(),
        1,
        "{}",
        b.log()
    );
}

#[tokio::test]
async fn a_second_node_on_a_swarm_port_in_use_exits() {
    let a = Node::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = cli(
        &[
            "run",
            "--data-dir",
            data.to_str().unwrap(),
            "--swarm-addr",
            &without_peer_id(&a.swarm),
            "--no-mdns",
            "--api-addr",
            &format!("127.0.0.1:{}", free_port()),
            "--console-addr",
            &format!("127.0.0.1:{}", free_port()),
            "--store-addr",
            &format!("127.0.0.1:{}", free_port()),
        ],
        None,
    )
    .unwrap();
    assert!(!out.status.success());
    assert!(!out.stdout.contains("shoal ready"), "{}", out.stdout);
    assert!(
        out.stderr.contains("is in use by another process") && out.stderr.contains("--swarm-addr"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_bad_key_file_says_how_to_make_one() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.key");
    std::fs::write(&bad, "not a key\n").unwrap();
    let data = dir.path().join("data");
    for key in [bad.to_str().unwrap(), "/nonexistent/swarm.key"] {
        let out = cli(
            &[
                "run",
                "--data-dir",
                data.to_str().unwrap(),
                "--swarm-key",
                key,
                "--swarm-addr",
                "/ip4/127.0.0.1/tcp/0",
                "--no-mdns",
                "--api-addr",
                "127.0.0.1:0",
            ],
            None,
        )
        .unwrap();
        assert!(!out.status.success());
        let last = out.stderr.lines().last().unwrap_or_default();
        assert!(last.contains("shoal swarm keygen"), "{}", out.stderr);
        // The cause is said once (the message used to repeat itself through the chain).
        let causes = last.matches("No such file").count() + last.matches("InvalidKeyFile").count();
        assert_eq!(causes, 1, "{last}");
    }
}
