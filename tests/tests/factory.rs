//! The factory example of seed 003 (`examples/factory/`): its robot and workstation apps, run
//! as real python3 processes against a real node's API (as the app supervisor runs them:
//! `SHOAL_API`, `SHOAL_APP_SETTINGS`), move material from the raw-material store through the
//! three stations into the warehouse, recording only seed 003's events. Skips loudly without
//! python3. Every wait is bounded by the harness's `TIMEOUT`; nothing asserts on time.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shoal_tests::{Node, TIMEOUT};

/// Kills the app processes on every exit path.
struct Apps(Vec<Child>);

impl Drop for Apps {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn app(node: &Node, dir: &str, script: &str, settings: Value) -> Child {
    let dir = format!("{}/../examples/factory/{dir}", env!("CARGO_MANIFEST_DIR"));
    Command::new("python3")
        .arg(script)
        .current_dir(dir)
        .env("SHOAL_API", format!("http://{}", node.api))
        .env("SHOAL_APP_SETTINGS", settings.to_string())
        .env("SHOAL_NODE_ID", &node.source)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn python3")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn robot_and_workstations_bring_material_to_the_warehouse() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("SKIPPED: python3 is not installed; the factory apps need it");
        return;
    }
    let node = Node::start().unwrap();
    let _apps = Apps(vec![
        app(
            &node,
            "robot",
            "robot.py",
            json!({"name": "r1", "tickSecs": 0.2, "batch": 2, "supplyBelow": 2}),
        ),
        app(
            &node,
            "workstation",
            "workstation.py",
            json!({"stations": ["ws1", "ws2", "ws3"], "tickSecs": 0.1, "scrapEvery": 5}),
        ),
    ]);
    let deadline = Instant::now() + TIMEOUT;
    let events = loop {
        let events = node.query_all().await.unwrap();
        let warehouse = events.iter().any(|e| {
            e["payload"]["eventType"] == "delivered" && e["payload"]["toWhere"] == "warehouse"
        });
        if warehouse {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "nothing reached the warehouse; {} events",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let kinds = |semantics: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["stream"]["semantics"] == semantics)
            .filter_map(|e| e["payload"]["eventType"].as_str().map(String::from))
            .collect()
    };
    for (semantics, expected) in [
        (
            "material-movements",
            &["pickedUp", "delivered", "consumed", "produced"][..],
        ),
        (
            "robot-missions/r1",
            &["missionRecognized", "missionStarted", "missionCompleted"][..],
        ),
        ("workstation-status", &["workStarted"][..]),
        (
            "machine-status",
            &["machineReady", "workStarted", "outputProduced"][..],
        ),
    ] {
        let have = kinds(semantics);
        for kind in expected {
            assert!(
                have.iter().any(|k| k == kind),
                "no {kind} in {semantics}: {have:?}"
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
}
