//! Network partitions with real namespaces.
//!
//! `partition_then_heal_converges`: 5 nodes, each in its own `ip netns`, on two
//! networks — a *data* network (the swarm; two bridges) and a *management* network (the HTTP
//! API, reached from the test). All nodes start on one data bridge; the partition moves the
//! veths of nodes 3 and 4 to the second bridge, so {0,1,2} and {3,4} cannot reach each other
//! while both groups keep publishing; healing moves them back. Then every node must hold
//! identical offsets, and each node's subscriber (opened before anything was published) must
//! have seen every event exactly once.
//!
//! `mdns_peers_reconnect_after_a_partition`: 2 nodes that know each other only by mDNS (no
//! `--peer`) lose their connection in a partition and must find each other again after it
//! heals, long before their mDNS records expire (minutes).
//!
//! `an_app_deployed_to_a_partitioned_node_runs_there_after_the_heal`: `deploy --to B` given on A
//! while B is cut off runs on B once the partition heals (issue 13 item 5).
//!
//! Needs root and `ip netns`; skips with a message (does not fail) when namespaces cannot be
//! created. Namespaces, bridges and processes are removed on every exit path (a guard's `Drop`).
//! Every wait is bounded; nothing asserts on time.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shoal_tests::{event, shoal_bin, Ndjson, TIMEOUT};

const NODES: usize = 5;
/// Nodes on the far side of the partition.
const GROUP_B: [usize; 2] = [3, 4];

/// How nodes find each other.
#[derive(Clone, Copy)]
enum Discovery {
    /// Every other node as a `--peer` (mDNS off).
    Peers,
    /// mDNS only.
    Mdns,
}
/// Convergence after healing may wait for a dead connection to be noticed (ping) and a
/// bootstrap redial (backoff up to 30 s).
const HEAL_TIMEOUT: Duration = Duration::from_secs(150);

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether a setup error means this machine cannot make namespaces (no root, no `ip`, no
/// netns support): then the tests skip. Any other error (a name clash, say) fails them.
fn unavailable(e: &str) -> bool {
    e.contains("cannot run ip")
        || e.contains("Operation not permitted")
        || e.contains("Permission denied")
        || e.contains("not supported")
}

/// Networks set up so far by this process (names them apart).
static NETS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Namespaces, links and processes of this test; all removed on drop.
struct Net {
    tag: String,
    /// This process's count of networks: keeps the management subnets apart (they are routed
    /// in the test's own namespace).
    index: usize,
    namespaces: Vec<String>,
    bridges: Vec<String>,
    children: Vec<Child>,
    dirs: Vec<tempfile::TempDir>,
}

impl Net {
    fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }
    fn data_bridge(&self, which: usize) -> String {
        format!("{}d{which}", self.tag)
    }
    fn data_veth(&self, i: usize) -> String {
        format!("{}v{i}", self.tag)
    }
    fn data_ip(i: usize) -> String {
        format!("10.213.0.{}", i + 1)
    }
    fn mgmt_ip(&self, i: usize) -> String {
        format!("10.214.{}.{}", self.index, i + 1)
    }

    /// `nodes` namespaces on the data and management networks.
    fn setup(nodes: usize) -> Result<Net, String> {
        let index = NETS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 10;
        let mut net = Net {
            // Unique per test as well as per process: the tests of this file run in parallel.
            // (Interface names stay within Linux's 15 bytes: "spt" + 5 + 1 + "v4i".)
            tag: format!("spt{}{index}", std::process::id() % 100_000),
            index,
            namespaces: vec![],
            bridges: vec![],
            children: vec![],
            dirs: vec![],
        };
        for b in [
            net.data_bridge(1),
            net.data_bridge(2),
            format!("{}m", net.tag),
        ] {
            ip(&["link", "add", &b, "type", "bridge"])?;
            net.bridges.push(b.clone());
            ip(&["link", "set", &b, "up"])?;
        }
        let mgmt = format!("{}m", net.tag);
        ip(&[
            "addr",
            "add",
            &format!("10.214.{index}.254/24"),
            "dev",
            &mgmt,
        ])?;
        for i in 0..nodes {
            let ns = net.ns(i);
            ip(&["netns", "add", &ns])?;
            net.namespaces.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            for (kind, bridge, addr) in [
                ("v", net.data_bridge(1), Net::data_ip(i)),
                ("m", mgmt.clone(), net.mgmt_ip(i)),
            ] {
                let host = format!("{}{kind}{i}", net.tag);
                let inner = format!("{}{kind}{i}i", net.tag);
                ip(&["link", "add", &host, "type", "veth", "peer", "name", &inner])?;
                ip(&["link", "set", &inner, "netns", &ns])?;
                ip(&["link", "set", &host, "master", &bridge])?;
                ip(&["link", "set", &host, "up"])?;
                ip(&[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{addr}/24"),
                    "dev",
                    &inner,
                ])?;
                ip(&["-n", &ns, "link", "set", &inner, "up"])?;
            }
        }
        Ok(net)
    }

    /// Moves the data links of `group` to bridge 2 (partition) or back to bridge 1 (heal).
    fn partition(&self, group: &[usize], split: bool) {
        let bridge = self.data_bridge(if split { 2 } else { 1 });
        for &i in group {
            ip(&["link", "set", &self.data_veth(i), "master", &bridge]).unwrap();
        }
    }

    /// Starts node `i` of `nodes` in its namespace; returns (source, api base URL).
    fn start_node(&mut self, i: usize, nodes: usize, discovery: Discovery) -> (String, String) {
        let dir = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            self.ns(i),
            shoal_bin().display().to_string(),
            "run".into(),
            "--data-dir".into(),
            dir.path().join("data").display().to_string(),
            "--api-addr".into(),
            format!("{}:4454", self.mgmt_ip(i)),
            "--console-addr".into(),
            "127.0.0.1:4457".into(),
            "--store-addr".into(),
            "127.0.0.1:4243".into(),
            "--swarm-addr".into(),
            format!("/ip4/{}/tcp/4001", Net::data_ip(i)),
        ];
        if let Discovery::Peers = discovery {
            args.push("--no-mdns".into());
            for j in (0..nodes).filter(|&j| j != i) {
                args.push("--peer".into());
                args.push(format!("/ip4/{}/tcp/4001", Net::data_ip(j)));
            }
        }
        let log = std::fs::File::create(dir.path().join("node.log")).unwrap();
        let mut child = Command::new("ip")
            .args(&args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        self.children.push(child);
        self.dirs.push(dir);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("shoal ready") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = rx
            .recv_timeout(TIMEOUT)
            .unwrap_or_else(|_| panic!("node {i} not ready; log:\n{}", self.log(i)));
        let source = line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("source="))
            .unwrap()
            .to_string();
        (source, format!("http://{}:4454", self.mgmt_ip(i)))
    }

    fn log(&self, i: usize) -> String {
        self.dirs
            .get(i)
            .and_then(|d| std::fs::read_to_string(d.path().join("node.log")).ok())
            .unwrap_or_default()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for i in 0..self.dirs.len() {
                let log = self.log(i);
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                eprintln!("---- node {i} log tail ----");
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
        for b in &self.bridges {
            let _ = ip(&["link", "del", b]);
        }
    }
}

async fn publish(http: &reqwest::Client, api: &str, name: &str, i: usize) {
    let body = json!({ "data": [event("partition", name, json!({ "i": i }))] });
    let resp = tokio::time::timeout(
        TIMEOUT,
        http.post(format!("{api}/api/v1/events/publish"))
            .json(&body)
            .send(),
    )
    .await
    .expect("publish answered in time")
    .expect("publish sent");
    assert_eq!(resp.status().as_u16(), 201);
}

async fn offsets(http: &reqwest::Client, api: &str) -> Value {
    let resp = tokio::time::timeout(
        TIMEOUT,
        http.get(format!("{api}/api/v1/events/offsets")).send(),
    )
    .await
    .expect("offsets answered in time")
    .expect("offsets sent");
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_then_heal_converges() {
    let _ = shoal_bin(); // build before creating anything that needs cleaning up
    let mut net = match Net::setup(NODES) {
        Ok(net) => net,
        Err(e) if unavailable(&e) => {
            eprintln!("skipping the partition test: network namespaces are unavailable ({e})");
            return;
        }
        Err(e) => panic!("setting up the network failed: {e}"),
    };
    let http = reqwest::Client::new();
    let mut nodes = Vec::new();
    for i in 0..NODES {
        nodes.push(net.start_node(i, NODES, Discovery::Peers));
    }
    // One subscriber per node, from the start.
    let mut subs = Vec::new();
    for (_, api) in &nodes {
        let resp = http
            .post(format!("{api}/api/v1/events/subscribe"))
            .json(&json!({ "subscriptions": [{}] }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        subs.push(Ndjson::new(resp));
    }
    const BEFORE: usize = 3;
    const DURING: usize = 15;
    for (i, (_, api)) in nodes.iter().enumerate() {
        for k in 0..BEFORE {
            publish(&http, api, &format!("n{i}"), k).await;
        }
    }
    net.partition(&GROUP_B, true);
    for k in 0..DURING {
        for (i, (_, api)) in nodes.iter().enumerate() {
            publish(&http, api, &format!("n{i}"), BEFORE + k).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // While split, group B does not get group A's newest events (and vice versa).
    let b_view = offsets(&http, &nodes[GROUP_B[0]].1).await;
    assert!(
        b_view.get(&nodes[0].0).and_then(Value::as_u64) < Some((BEFORE + DURING - 1) as u64),
        "partition leaked: {b_view}"
    );
    net.partition(&GROUP_B, false);

    let last = (BEFORE + DURING - 1) as u64;
    let expected: Value = nodes
        .iter()
        .map(|(s, _)| (s.clone(), json!(last)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    let deadline = Instant::now() + HEAL_TIMEOUT;
    for (i, (_, api)) in nodes.iter().enumerate() {
        wait_offsets(&http, api, &expected, deadline, &format!("node {i}")).await;
    }
    // Every subscriber saw every event exactly once.
    let total = NODES * (BEFORE + DURING);
    for (i, sub) in subs.iter_mut().enumerate() {
        let mut seen: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
        let mut count = 0;
        while count < total {
            let e = sub
                .next_within(TIMEOUT)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("subscriber {i} ended after {count} events"));
            let source = e["stream"]["source"].as_str().unwrap().to_string();
            let offset = e["offset"].as_u64().unwrap();
            assert!(
                seen.entry(source.clone()).or_default().insert(offset),
                "subscriber {i} saw {source}/{offset} twice"
            );
            count += 1;
        }
        for (source, _) in &nodes {
            assert_eq!(
                seen[source],
                (0..=last).collect::<BTreeSet<_>>(),
                "subscriber {i}"
            );
        }
    }
}

/// Polls `api`'s offsets until they equal `expected`, failing at `deadline`.
async fn wait_offsets(
    http: &reqwest::Client,
    api: &str,
    expected: &Value,
    deadline: Instant,
    what: &str,
) {
    loop {
        let o = offsets(http, api).await;
        if o == *expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: stuck at {o}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mdns_peers_reconnect_after_a_partition() {
    let _ = shoal_bin();
    let mut net = match Net::setup(2) {
        Ok(net) => net,
        Err(e) if unavailable(&e) => {
            eprintln!("skipping the mDNS partition test: network namespaces are unavailable ({e})");
            return;
        }
        Err(e) => panic!("setting up the network failed: {e}"),
    };
    let http = reqwest::Client::new();
    let a = net.start_node(0, 2, Discovery::Mdns);
    let b = net.start_node(1, 2, Discovery::Mdns);
    publish(&http, &a.1, "a", 0).await;
    publish(&http, &b.1, "b", 0).await;
    let both = |n: u64| json!({ a.0.clone(): n, b.0.clone(): n });
    let deadline = Instant::now() + HEAL_TIMEOUT;
    for (api, what) in [(&a.1, "a before"), (&b.1, "b before")] {
        wait_offsets(&http, api, &both(0), deadline, what).await;
    }
    net.partition(&[1], true);
    // Publish on both sides until each has seen the connection die (ping), so the heal
    // must dial again rather than find the old connection still open.
    let deadline = Instant::now() + HEAL_TIMEOUT;
    let mut k = 0;
    loop {
        k += 1;
        publish(&http, &a.1, "a", k).await;
        publish(&http, &b.1, "b", k).await;
        if net.log(0).contains("peer disconnected") && net.log(1).contains("peer disconnected") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the partition never cut the connection"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    net.partition(&[1], false);
    let k = k as u64;
    let deadline = Instant::now() + HEAL_TIMEOUT;
    for (api, what) in [(&a.1, "a after healing"), (&b.1, "b after healing")] {
        wait_offsets(&http, api, &both(k), deadline, what).await;
    }
    assert!(net.log(1).contains("discovered by mDNS"), "{}", net.log(1));
}

/// Issue 13 item 5: `deploy --to B` given on A while B is partitioned away is carried out by
/// B once the partition heals (the command is an event of A's; B fetches the package blob
/// from A after the heal). Two nodes with `--peer`; B's data link is cut until both sides have
/// seen the connection die, then A records the deploy, B provably has no app, and the heal
/// follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_deployed_to_a_partitioned_node_runs_there_after_the_heal() {
    const ECHO: &str = "com.example.echo";
    let _ = shoal_bin();
    let mut net = match Net::setup(2) {
        Ok(net) => net,
        Err(e) if unavailable(&e) => {
            eprintln!(
                "\n!!!!!!!! SKIPPED the app partition test: network namespaces are unavailable ({e})\n"
            );
            return;
        }
        Err(e) => panic!("setting up the network failed: {e}"),
    };
    let http = reqwest::Client::new();
    let a = net.start_node(0, 2, Discovery::Peers);
    let b = net.start_node(1, 2, Discovery::Peers);
    publish(&http, &a.1, "a", 0).await;
    publish(&http, &b.1, "b", 0).await;
    let both = |n: u64| json!({ a.0.clone(): n, b.0.clone(): n });
    let deadline = Instant::now() + HEAL_TIMEOUT;
    for (api, what) in [(&a.1, "a before"), (&b.1, "b before")] {
        wait_offsets(&http, api, &both(0), deadline, what).await;
    }

    net.partition(&[1], true);
    let deadline = Instant::now() + HEAL_TIMEOUT;
    while !(net.log(0).contains("peer disconnected") && net.log(1).contains("peer disconnected")) {
        assert!(
            Instant::now() < deadline,
            "the partition never cut the connection"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let echo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("apps/echo");
    let echo = echo.to_str().unwrap();
    let out = shoal_tests::cli(
        &["apps", "deploy", echo, "--to", &b.0, "--node", &a.1],
        None,
    )
    .unwrap();
    assert!(
        out.status.success(),
        "deploy --to B failed: {}{}",
        out.stdout,
        out.stderr
    );
    let apps_of = |api: String| {
        let http = http.clone();
        async move {
            let resp = http.get(format!("{api}/api/v1/apps")).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.json::<Vec<Value>>().await.unwrap()
        }
    };
    assert!(
        apps_of(b.1.clone()).await.is_empty(),
        "B got the deploy through the partition"
    );

    net.partition(&[1], false);
    let deadline = Instant::now() + HEAL_TIMEOUT;
    loop {
        let apps = apps_of(b.1.clone()).await;
        let running = apps
            .iter()
            .any(|x| x["id"] == ECHO && x["state"] == "running" && x["pid"].is_u64());
        if running {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B never ran the app after the heal: {apps:?}\n{}",
            net.log(1)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        apps_of(a.1.clone()).await.is_empty(),
        "the deploy --to B ran on A too"
    );
}
