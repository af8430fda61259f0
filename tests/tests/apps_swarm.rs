//! The swarm-wide view of nodes and apps, and app commands across the swarm (`--to`), with
//! real node processes: node status gossip lists a node that A reaches only through B (A–B–C
//! chain via `--peer`, no mDNS), with each node's connected peers, over HTTP (`GET
//! /api/v1/nodes`) and the CLI (`shoal nodes ls`, `shoal apps ls --all`);
//! `deploy`/`settings`/`stop`/`undeploy --to` given on A are carried out by B, also when B was
//! down while the command was given (the partition used here: B stopped, then started again; it
//! learns the command by replication once back), and exactly once across B's restarts. The test
//! app is `tests/apps/echo` (python3), which publishes one event echoing its settings each time
//! it starts. Every wait is bounded by the harness's `TIMEOUT`; nothing asserts on time.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shoal_tests::{cli, event, CliOutput, Node, NodeOptions, TIMEOUT};

const ECHO: &str = "com.example.echo";

fn echo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("apps/echo")
}

/// `shoal ARGS --node <node>`; panics unless it succeeds.
fn shoal(node: &Node, args: &[&str]) -> CliOutput {
    let url = node.url("");
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--node", &url]);
    let out = cli(&all, None).expect("run shoal");
    assert!(
        out.status.success(),
        "shoal {args:?} failed: {}{}",
        out.stdout,
        out.stderr
    );
    out
}

/// Polls `GET /api/v1/apps[?all=true]` on `node` until app `id` (of node `on`) matches `done`.
async fn wait_app(
    node: &Node,
    on: &str,
    id: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let resp = node
            .get("/api/v1/apps?all=true")
            .await
            .expect("GET /api/v1/apps");
        assert_eq!(resp.status(), 200);
        let list: Vec<Value> = resp.json().await.expect("app list is JSON");
        let app = list
            .iter()
            .find(|a| a["id"] == id && a["node"] == on)
            .cloned()
            .unwrap_or(Value::Null);
        if done(&app) {
            return app;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: app {id} of {on} is {app}\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn running(app: &Value) -> bool {
    app["state"] == "running" && app["pid"].is_u64()
}

/// The echo events of `source` stored on `node`, oldest first.
async fn echoes(node: &Node, source: &str) -> Vec<Value> {
    node.query_all()
        .await
        .expect("query")
        .into_iter()
        .filter(|e| e["stream"]["semantics"] == "test.apps" && e["stream"]["source"] == source)
        .collect()
}

/// Waits until `node` stores an echo event of `source` whose payload matches `done`.
async fn wait_echo(node: &Node, source: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(e) = echoes(node, source)
            .await
            .into_iter()
            .find(|e| done(&e["payload"]))
        {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: no such echo event of {source}\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

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
    let names = |n: &Value, peer: &Node| {
        n["peers"]
            .as_array()
            .is_some_and(|p| p.iter().any(|x| x == peer.source.as_str()))
    };
    let list = wait_nodes(
        &a,
        "A sees C with its 2 events, and B's peers A and C",
        |l| {
            find(l, &c.source).is_some_and(|n| n["events"].as_u64() >= Some(2))
                && find(l, &b.source).is_some_and(|n| names(n, &a) && names(n, &c))
        },
    )
    .await;
    assert!(names(&list[0], &b), "A's own entry names B: {}", list[0]);
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
            "peers",
            "source",
            "version"
        ]
    );
    assert!(cj["apps"]["running"].is_u64() && cj["apps"]["deployed"].is_u64());
    // `peers` (shoal's extension of API.md's shape): whom each node says it is connected to.
    assert_eq!(cj["peers"], json!([b.source]), "C is connected to B only");
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

/// `deploy --to B` on A runs the app on B (not on A) with its defaults; `settings set --to B`
/// restarts it there with the new settings; invalid settings sent the same way are refused by
/// B and change nothing; `apps ls --all` on A shows B's app; `stop --to` and `undeploy --to`
/// act on B. A's own apps API stays empty throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_settings_stop_and_undeploy_with_to() {
    let a = Node::start().unwrap();
    let b = Node::start_with(peer(&a)).unwrap();
    let dir = echo_dir();
    let out = shoal(
        &a,
        &[
            "apps",
            "deploy",
            dir.to_str().unwrap(),
            "--to",
            &b.source,
            "--json",
        ],
    );
    let given: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(given["id"], ECHO);
    assert_eq!(given["to"], b.source.as_str());
    let command = given["command"].as_str().unwrap().to_string();
    assert!(command.starts_with(&format!("{}/", a.source)), "{given}");
    assert!(
        given["package"].as_str().unwrap().starts_with("baf"),
        "{given}"
    );

    let app = wait_app(&b, &b.source, ECHO, "running on B", running).await;
    assert_eq!(app["restarts"], 0);
    let first = wait_echo(&b, &b.source, "B's app published", |p| {
        p["settings"]["greeting"] == "hello"
    })
    .await;
    assert_eq!(first["payload"]["env"]["SHOAL_NODE_ID"], b.source.as_str());
    // A was not a target: it runs nothing, and its view of B comes from B's status.
    let local: Vec<Value> = a.get("/api/v1/apps").await.unwrap().json().await.unwrap();
    assert!(local.is_empty(), "A runs no app: {local:?}");
    wait_app(&a, &b.source, ECHO, "A lists B's app", running).await;
    let ls = shoal(&a, &["apps", "ls", "--all"]);
    let line = ls
        .stdout
        .lines()
        .find(|l| l.starts_with(&b.source))
        .unwrap_or_else(|| panic!("B's app not in `apps ls --all`:\n{}", ls.stdout));
    assert!(line.contains(ECHO) && line.contains("running"), "{line}");

    // Settings with --to: B validates them against the app's schema and restarts the app.
    let out = shoal(
        &a,
        &[
            "settings",
            "set",
            ECHO,
            r#"{"greeting":"from A"}"#,
            "--to",
            &b.source,
        ],
    );
    assert!(out.stdout.contains("recorded for"), "{}", out.stdout);
    wait_echo(&b, &b.source, "B's app restarted with A's settings", |p| {
        p["settings"]["greeting"] == "from A"
    })
    .await;
    // Invalid for the schema (greeting is a string): recorded by A, refused by B.
    shoal(
        &a,
        &[
            "settings",
            "set",
            ECHO,
            r#"{"greeting":7}"#,
            "--to",
            &b.source,
        ],
    );
    shoal(&a, &["apps", "restart", ECHO, "--to", &b.source]);
    // The restart came after the invalid settings (same source, higher offset): once B ran
    // it, it had handled the settings too; its app still has the valid ones.
    let deadline = Instant::now() + TIMEOUT;
    while echoes(&b, &b.source).await.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "B never restarted the app\n{}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let settings: Value = b
        .get(&format!("/api/v1/settings/{ECHO}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(settings, json!({"greeting": "from A"}));
    let last = echoes(&b, &b.source).await.pop().unwrap();
    assert_eq!(last["payload"]["settings"]["greeting"], "from A");
    assert!(
        b.log().contains("settings do not validate"),
        "B logs the refusal"
    );

    shoal(&a, &["apps", "stop", ECHO, "--to", &b.source]);
    wait_app(&b, &b.source, ECHO, "stopped on B", |app| {
        app["state"] == "stopped"
    })
    .await;
    shoal(&a, &["apps", "undeploy", ECHO, "--to", &b.source]);
    wait_app(&b, &b.source, ECHO, "gone from B", Value::is_null).await;
    let local: Vec<Value> = a.get("/api/v1/apps").await.unwrap().json().await.unwrap();
    assert!(local.is_empty(), "A runs no app: {local:?}");
}

/// Bad `--to` and bad packages are refused by the commanding node and record nothing; bad
/// command events published by hand are skipped by the applier, which carries out the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commands_are_refused_and_record_nothing() {
    let a = Node::start().unwrap();
    let url = a.url("");
    let dir = echo_dir();
    let out = cli(
        &[
            "apps",
            "deploy",
            dir.to_str().unwrap(),
            "--to",
            "nobody",
            "--node",
            &url,
        ],
        None,
    )
    .unwrap();
    assert!(!out.status.success());
    assert!(out.stderr.contains("not a source id"), "{}", out.stderr);
    let resp = a
        .post_bytes("/api/v1/apps?to=all", b"not a package".to_vec())
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let out = cli(
        &["settings", "unset", ECHO, "--to", "", "--node", &url],
        None,
    )
    .unwrap();
    assert!(!out.status.success());
    assert!(
        a.query_all().await.unwrap().is_empty(),
        "nothing was recorded"
    );

    // Bad command events (anyone may publish them) are skipped; the applier goes on.
    let tags = json!(["shoal.apps.command", "shoal.apps.to:all"]);
    a.publish(&[
        json!({"semantics": "shoal.apps", "name": "command", "tags": tags,
               "payload": {"to": "all", "action": "explode", "app": ECHO}}),
        json!({"semantics": "shoal.apps", "name": "command", "tags": tags,
               "payload": [1, 2, 3]}),
    ])
    .await
    .unwrap();
    // Then a deploy to A itself, recorded like any other.
    shoal(
        &a,
        &["apps", "deploy", dir.to_str().unwrap(), "--to", &a.source],
    );
    wait_app(
        &a,
        &a.source,
        ECHO,
        "running on A after the bad commands",
        running,
    )
    .await;
    assert_eq!(
        a.log().matches("skipping a bad app command").count(),
        2,
        "{}",
        a.log()
    );
}

/// B is down while A records `deploy --to B` (the partition of this test); B carries it out
/// once it is back and has replicated A's log. Across a further restart of B, the command is
/// not carried out again: B's log says it was carried out once, after a later command of A
/// (which B handles after the deploy, the commands of one source being in order) was done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_was_down_carries_out_the_command_once_back() {
    let a = Node::start().unwrap();
    let mut b = Node::start_with(peer(&a)).unwrap();
    let b_source = b.source.clone();
    wait_nodes(&a, "A sees B", |l| find(l, &b_source).is_some()).await;
    assert!(b.stop().unwrap(), "B stopped cleanly");
    let dir = echo_dir();
    shoal(
        &a,
        &["apps", "deploy", dir.to_str().unwrap(), "--to", &b_source],
    );
    shoal(
        &a,
        &[
            "settings",
            "set",
            ECHO,
            r#"{"greeting":"while you were away"}"#,
            "--to",
            "all",
        ],
    );
    let b = b.respawn().unwrap();
    wait_app(
        &b,
        &b.source,
        ECHO,
        "running on B after it came back",
        running,
    )
    .await;
    wait_echo(
        &b,
        &b.source,
        "B's app has the settings given while B was down",
        |p| p["settings"]["greeting"] == "while you were away",
    )
    .await;
    // `to=all` included A, which has no such app: refused there, nothing runs on A.
    let local: Vec<Value> = a.get("/api/v1/apps").await.unwrap().json().await.unwrap();
    assert!(local.is_empty(), "{local:?}");

    let b = b.restart().unwrap();
    wait_app(
        &b,
        &b.source,
        ECHO,
        "running again after B's restart",
        running,
    )
    .await;
    shoal(&a, &["apps", "stop", ECHO, "--to", &b.source]);
    wait_app(&b, &b.source, ECHO, "stopped by the later command", |app| {
        app["state"] == "stopped"
    })
    .await;
    let log = b.log();
    let carried = log
        .lines()
        .filter(|l| l.contains("app command carried out") && l.contains("action=\"deploy\""))
        .count();
    assert_eq!(carried, 1, "the deploy ran once across B's restart:\n{log}");
}

/// A–B–C: an app deployed on C is listed by `apps ls --all` on A (which reaches C only
/// through B), and `nodes ls` on A counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_ls_all_lists_the_apps_of_a_node_reached_only_through_another() {
    let a = Node::start().unwrap();
    let b = Node::start_with(peer(&a)).unwrap();
    let c = Node::start_with(peer(&b)).unwrap();
    let dir = echo_dir();
    shoal(&c, &["apps", "deploy", dir.to_str().unwrap()]);
    let app = wait_app(&a, &c.source, ECHO, "A lists C's app", running).await;
    let mut keys: Vec<&str> = app
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "id",
            "kind",
            "node",
            "pid",
            "restarts",
            "settingsValid",
            "startedAt",
            "state",
            "version"
        ]
    );
    let out = shoal(&a, &["apps", "ls", "--all", "--json"]);
    let list: Vec<Value> = serde_json::from_str(&out.stdout).unwrap();
    assert!(
        list.iter()
            .any(|x| x["id"] == ECHO && x["node"] == c.source.as_str()),
        "{list:?}"
    );
    let nodes = wait_nodes(&a, "A counts C's app", |l| {
        find(l, &c.source).is_some_and(|n| n["apps"]["running"] == 1)
    })
    .await;
    let cn = find(&nodes, &c.source).unwrap();
    assert_eq!(cn["apps"]["deployed"], 1);
    assert_eq!(cn["connected"], false, "A reaches C only through B: {cn}");
    let out = shoal(&a, &["nodes", "ls", "--json"]);
    let json: Vec<Value> = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(find(&json, &c.source).unwrap()["apps"]["running"], 1);
}
