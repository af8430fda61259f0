//! The factory example of seed 003 (`examples/factory/`) as the README deploys it: three real
//! nodes in a line A–B–C (each started with `--peer` of the one before), one `shoal apps
//! deploy` each — the robot (python3 process app) on A (with a relative `--data-dir`, as the
//! README's), the workstations (python3 process app) on B, the dashboard (web app) on C — run
//! by the nodes' supervisors. Material moves from the raw-material store through the three
//! stations into the warehouse, the robot and the machines learning each other's buffers only
//! from replicated events, recording only seed 003's events; C stores them all, and its
//! dashboard page, served at `/apps/<id>/`, shows the movements and the warehouse's stock in
//! headless Chromium. Skips loudly without python3 (and the browser half without chromium).
//! Every wait is bounded by the harness's `TIMEOUT`; nothing asserts on time.
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_tests::browser::{chromium, Devtools, Page};
use shoal_tests::{cli, expect_status, Node, NodeOptions, TIMEOUT};

const ROBOT: &str = "com.example.factory.robot";
const STATIONS: &str = "com.example.factory.workstation";
const DASHBOARD: &str = "com.example.factory.dashboard";

/// `shoal ARGS --node <node>`; panics unless it succeeds.
fn shoal(node: &Node, args: &[&str]) {
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
}

/// `shoal apps deploy examples/factory/<dir>` on `node`, as the README does.
fn deploy(node: &Node, dir: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../examples/factory/{dir}"));
    shoal(node, &["apps", "deploy", dir.to_str().expect("path")]);
}

/// Waits until `node` runs app `id` (a process app with its pid).
async fn wait_running(node: &Node, id: &str) -> Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let list: Vec<Value> = node
            .get("/api/v1/apps")
            .await
            .expect("GET /api/v1/apps")
            .json()
            .await
            .expect("app list is JSON");
        let app = list.into_iter().find(|a| a["id"] == id);
        if let Some(app) = app.filter(|a| a["state"] == "running") {
            return app;
        }
        assert!(Instant::now() < deadline, "{id} never ran\n{}", node.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn peer(of: &Node) -> NodeOptions {
    NodeOptions::default().arg("--peer").arg(of.swarm.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_factory_apps_deployed_on_three_nodes_fill_the_warehouse() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!(
            "\n!!!!!!!! SKIPPED the_factory_apps_...: python3 is not installed; the factory apps \
             need it !!!!!!!!\n"
        );
        return;
    }
    // A's data dir is relative to its working directory, as the README's `--data-dir a`.
    let a = Node::start_with(NodeOptions::default().relative_data_dir()).unwrap();
    let b = Node::start_with(peer(&a)).unwrap();
    let c = Node::start_with(peer(&b)).unwrap();
    deploy(&a, "robot");
    deploy(&b, "workstation");
    deploy(&c, "dashboard");
    // Quicker than the defaults, so that the test does not wait on the floor's pace; new
    // settings restart each app with them.
    shoal(
        &a,
        &[
            "settings",
            "set",
            ROBOT,
            r#"{"name": "r1", "tickSecs": 0.2, "batch": 2, "supplyBelow": 2}"#,
        ],
    );
    shoal(
        &b,
        &[
            "settings",
            "set",
            STATIONS,
            r#"{"stations": ["ws1", "ws2", "ws3"], "operator": "anna", "tickSecs": 0.1, "scrapEvery": 5}"#,
        ],
    );
    for (node, id) in [(&a, ROBOT), (&b, STATIONS)] {
        let app = wait_running(node, id).await;
        assert!(app["pid"].is_u64(), "a supervised process: {app}");
    }
    let web = wait_running(&c, DASHBOARD).await;
    assert_eq!(web["kind"], "web");

    // C, which runs neither, stores what the robot on A and the machines on B recorded.
    let deadline = Instant::now() + TIMEOUT;
    let events = loop {
        let events = c.query_all().await.unwrap();
        let warehouse = events.iter().any(|e| {
            e["payload"]["eventType"] == "delivered" && e["payload"]["toWhere"] == "warehouse"
        });
        if warehouse {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "nothing reached the warehouse; C holds {} events\nA:\n{}\nB:\n{}",
            events.len(),
            a.log(),
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let kinds = |semantics: &str, source: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| {
                e["stream"]["semantics"]
                    .as_str()
                    .is_some_and(|s| s.starts_with(semantics))
                    && e["stream"]["source"] == source
            })
            .filter_map(|e| e["payload"]["eventType"].as_str().map(String::from))
            .collect()
    };
    for (semantics, source, expected) in [
        (
            "material-movements",
            &a.source,
            &["pickedUp", "delivered"][..],
        ),
        (
            "material-movements",
            &b.source,
            &["consumed", "produced"][..],
        ),
        (
            "robot-missions/r1",
            &a.source,
            &["missionRecognized", "missionStarted", "missionCompleted"][..],
        ),
        ("workstation-status", &b.source, &["workStarted"][..]),
        (
            "machine-status",
            &b.source,
            &["machineReady", "workStarted", "outputProduced"][..],
        ),
    ] {
        let have = kinds(semantics, source);
        for kind in expected {
            assert!(
                have.iter().any(|k| k == kind),
                "no {kind} in {semantics} of {source}: {have:?}"
            );
        }
    }
    // Material is conserved along the line: nothing is consumed from a buffer that did not
    // receive it first (per location, in lamport order, the level never goes below zero).
    let mut levels = std::collections::BTreeMap::<String, i64>::new();
    for e in events
        .iter()
        .filter(|e| e["stream"]["semantics"] == "material-movements")
    {
        let p = &e["payload"];
        let n = p["howMuch"].as_i64().unwrap_or(0);
        let at = |k: &str| p[k].as_str().unwrap_or("").to_string();
        match p["eventType"].as_str() {
            Some("consumed") | Some("pickedUp") if at("fromWhere") != "raw-material-store" => {
                let l = levels.entry(at("fromWhere")).or_default();
                *l -= n;
                assert!(*l >= 0, "{} went below zero at {e}", at("fromWhere"));
            }
            Some("produced") => *levels.entry(at("where")).or_default() += n,
            Some("delivered") => *levels.entry(at("toWhere")).or_default() += n,
            _ => {}
        }
    }

    // The dashboard, served by C at /apps/<id>/, same-origin with C's API.
    let path = format!("/apps/{DASHBOARD}/");
    expect_status(&c.get(&path).await.unwrap(), 200).unwrap();
    let Some(chromium) = tokio::task::spawn_blocking(chromium).await.unwrap() else {
        eprintln!(
            "\n!!!!!!!! SKIPPED the browser half of the_factory_apps_...: chromium is not \
             installed and `apt-get install -y chromium` failed. Install Debian's chromium (or \
             set SHOAL_CHROMIUM) to run it. !!!!!!!!\n"
        );
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let browser = Devtools::launch(&chromium, profile.path()).unwrap();
    let mut page = Page::open(&browser, &c.url(&path)).await.unwrap();
    page.wait_for(
        "the live subscription",
        "document.getElementById('status')?.textContent === 'live'",
    )
    .await
    .unwrap();
    page.wait_for(
        "material in the warehouse",
        "[...document.querySelectorAll('#levels tbody tr')].some(r => \
         r.cells[0].textContent === 'warehouse' && Number(r.cells[1].textContent) > 0)",
    )
    .await
    .unwrap();
    // Live: the count of movements shown grows while the floor works, without a reload.
    let shown = page
        .eval("Number(document.getElementById('count').textContent)")
        .await
        .unwrap();
    let shown = shown.as_u64().unwrap_or(0);
    assert!(shown > 0, "no movement shown");
    page.wait_for(
        "more movements, live",
        &format!("Number(document.getElementById('count').textContent) > {shown}"),
    )
    .await
    .unwrap();
    let rows = page
        .eval("document.querySelectorAll('#moves tbody tr').length")
        .await
        .unwrap();
    assert!(rows.as_u64() > Some(0), "{rows}");
    drop(page);
    drop(browser);
}
