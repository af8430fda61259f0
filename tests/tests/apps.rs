//! The app runtime (API.md "Apps", issue 13) against real `shoal run` processes: the test app
//! `tests/apps/echo` (python3) publishes one event echoing its settings and environment, so
//! each test reads what the app saw from the node's own event log.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use shoal_tests::{cli, expect_error, expect_status, within, Node, TIMEOUT};

const ECHO: &str = "com.example.echo";

fn echo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("apps/echo")
}

/// A copy of the echo app to modify.
fn echo_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for entry in std::fs::read_dir(echo_dir()).expect("echo app") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).expect("copy");
    }
    dir
}

fn shoal(node: &Node, args: &[&str]) -> Result<shoal_tests::CliOutput> {
    let url = node.url("");
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--node", url.trim_end_matches('/')]);
    cli(&all, None)
}

fn deploy(node: &Node, dir: &Path) -> Result<Value> {
    let out = shoal(
        node,
        &["apps", "deploy", dir.to_str().context("path")?, "--json"],
    )?;
    if !out.status.success() {
        bail!("deploy failed: {}{}", out.stdout, out.stderr);
    }
    Ok(serde_json::from_str(out.stdout.trim())?)
}

async fn apps(node: &Node) -> Result<Vec<Value>> {
    let resp = node.get("/api/v1/apps").await?;
    expect_status(&resp, 200)?;
    within(resp.json::<Vec<Value>>()).await
}

/// Polls the app list until app `id` matches `done`; returns it.
async fn wait_app(node: &Node, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let list = apps(node).await.expect("app list");
        let app = list
            .iter()
            .find(|a| a["id"] == id)
            .cloned()
            .unwrap_or(Value::Null);
        if done(&app) {
            return app;
        }
        assert!(
            Instant::now() < deadline,
            "app {id} never became {what}: {app}\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The echo events stored so far, oldest first.
async fn echoes(node: &Node) -> Vec<Value> {
    node.query_all()
        .await
        .expect("query")
        .into_iter()
        .filter(|e| e["stream"]["semantics"] == "test.apps")
        .collect()
}

/// Waits until there are at least `n` echo events.
async fn wait_echoes(node: &Node, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let got = echoes(node).await;
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} echo events\n{}",
            got.len(),
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn alive(pid: u64) -> bool {
    // A zombie is not alive: /proc/<pid>/stat's state field is `Z`.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

fn running(app: &Value) -> bool {
    app["state"] == "running" && app["pid"].is_u64()
}

#[test]
fn validate_and_package_name_the_field() {
    let good = shoal_tests::cli(&["apps", "validate", echo_dir().to_str().unwrap()], None).unwrap();
    assert!(good.status.success(), "{good:?}");
    assert!(good.stdout.contains("com.example.echo 1.0.0"), "{good:?}");
    let cases = [
        ("id = \"com.example.echo\"", "id = \"Echo\"", "`id`"),
        ("version = \"1.0.0\"", "version = \"one\"", "`version`"),
        ("kind = \"process\"", "kind = \"daemon\"", "`kind`"),
        (
            "restart = \"on-failure\"",
            "restart = \"sometimes\"",
            "`process.restart`",
        ),
        ("\"schema.json\"", "\"missing.json\"", "`settings-schema`"),
    ];
    for (from, to, field) in cases {
        let dir = echo_copy();
        let manifest = dir.path().join("shoal-app.toml");
        let text = std::fs::read_to_string(&manifest).unwrap();
        std::fs::write(&manifest, text.replace(from, to)).unwrap();
        for cmd in ["validate", "package"] {
            let out = cli(&["apps", cmd, dir.path().to_str().unwrap()], None).unwrap();
            assert!(!out.status.success(), "{cmd} accepted {to}");
            assert!(
                out.stderr.contains(field),
                "{cmd}: {} does not name {field}",
                out.stderr
            );
            assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
        }
    }
    // Defaults that do not validate: named, with the failing path.
    let dir = echo_copy();
    std::fs::write(dir.path().join("defaults.json"), r#"{"greeting": 5}"#).unwrap();
    let out = cli(&["apps", "validate", dir.path().to_str().unwrap()], None).unwrap();
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("`default-settings`") && out.stderr.contains("/greeting"),
        "{}",
        out.stderr
    );
    // Package: <id>-<version>.tar.gz, or -o.
    let out_dir = tempfile::tempdir().unwrap();
    let file = out_dir.path().join("x.tar.gz");
    let out = cli(
        &[
            "apps",
            "package",
            echo_dir().to_str().unwrap(),
            "-o",
            file.to_str().unwrap(),
        ],
        None,
    )
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(&bytes[..2], &[0x1f, 0x8b], "gzip magic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_runs_the_app_with_the_environment_and_restarts_it_after_kill() {
    let node = Node::start().unwrap();
    let d = deploy(&node, &echo_dir()).unwrap();
    assert_eq!(d["id"], ECHO);
    assert_eq!(d["version"], "1.0.0");
    let app = wait_app(&node, ECHO, "running", running).await;
    assert_eq!(app["restarts"], 0);
    assert_eq!(app["node"], node.source.as_str());
    assert_eq!(app["settingsValid"], true);
    assert!(app["startedAt"].is_string());
    let echo = &wait_echoes(&node, 1).await[0]["payload"];
    let env = &echo["env"];
    assert_eq!(echo["settings"], json!({"greeting": "hello"}));
    assert_eq!(env["SHOAL_APP_ID"], ECHO);
    assert_eq!(env["SHOAL_APP_VERSION"], "1.0.0");
    assert_eq!(env["SHOAL_NODE_ID"], node.source.as_str());
    assert_eq!(env["SHOAL_API"], format!("http://{}", node.api));
    assert_eq!(
        env["AX_STORE_URI"],
        format!("ws://{}/store_api", node.store)
    );
    assert_eq!(env["SHOAL_APP_SETTINGS"], env["AX_APP_SETTINGS"]);
    assert_eq!(
        serde_json::from_str::<Value>(env["SHOAL_APP_SETTINGS"].as_str().unwrap()).unwrap(),
        json!({"greeting": "hello"})
    );
    assert_eq!(env["ECHO_FROM_MANIFEST"], "yes");
    let data = node.data_dir().join("apps").join(ECHO).join("data");
    assert_eq!(
        Path::new(echo["cwd"].as_str().unwrap()),
        data.canonicalize().unwrap()
    );
    let app_dir = env["SHOAL_APP_DIR"].as_str().unwrap();
    assert!(Path::new(app_dir).join("shoal-app.toml").is_file());
    // `app.py` named a package file: passed as its absolute path.
    assert_eq!(echo["argv"][0], format!("{app_dir}/app.py"));
    assert_eq!(echo["pid"], app["pid"]);

    // Its output lines are console entries under its id.
    let out = shoal(&node, &["apps", "logs", ECHO, "--json"]).unwrap();
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines
            .iter()
            .any(|e| e["severity"] == "info"
                && e["message"].as_str().unwrap().starts_with("published")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|e| e["severity"] == "error" && e["message"] == "a line on stderr"),
        "{lines:?}"
    );
    assert!(lines
        .iter()
        .all(|e| e["producerName"] == ECHO && e["producerVersion"] == "1.0.0"));

    // kill -9: restarted by the policy, counted.
    let pid = app["pid"].as_u64().unwrap();
    // SAFETY: kill(2) on the app's pid, which the node has not reaped (it is running).
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    let again = wait_app(&node, ECHO, "restarted", |a| running(a) && a["pid"] != pid).await;
    assert_eq!(again["restarts"], 1);
    wait_echoes(&node, 2).await;

    // The CLI lists it.
    let out = shoal(&node, &["apps", "ls"]).unwrap();
    assert!(
        out.stdout.contains(ECHO) && out.stdout.contains("running"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_are_validated_and_new_ones_restart_the_app() {
    let node = Node::start().unwrap();
    deploy(&node, &echo_dir()).unwrap();
    let first = wait_app(&node, ECHO, "running", running).await;
    wait_echoes(&node, 1).await;
    let path = format!("/api/v1/settings/{ECHO}");

    // Invalid: 400 naming the path; nothing changes (same settings, same process).
    let resp = within(
        node.http
            .put(node.url(&path))
            .json(&json!({"greeting": "x", "limits": {"max": 0}}))
            .send(),
    )
    .await
    .unwrap();
    expect_error(resp, 400, "ERR_BAD_REQUEST", "/limits/max")
        .await
        .unwrap();
    let out = shoal(&node, &["settings", "set", ECHO, r#"{"greeting": 1}"#]).unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("/greeting"), "{}", out.stderr);
    let now: Value = node.get(&path).await.unwrap().json().await.unwrap();
    assert_eq!(now, json!({"greeting": "hello"}));
    let same = wait_app(&node, ECHO, "running", running).await;
    assert_eq!(same["pid"], first["pid"]);

    // Valid: stored, and the app restarts with them (not counted as a policy restart).
    let out = shoal(&node, &["settings", "set", ECHO, r#"{"greeting": "moin"}"#]).unwrap();
    assert!(out.status.success(), "{out:?}");
    let echoes = wait_echoes(&node, 2).await;
    assert_eq!(
        echoes[1]["payload"]["settings"],
        json!({"greeting": "moin"})
    );
    let app = wait_app(&node, ECHO, "restarted", |a| {
        running(a) && a["pid"] != first["pid"]
    })
    .await;
    assert_eq!(app["restarts"], 0);
    assert!(
        !alive(first["pid"].as_u64().unwrap()),
        "the old process is gone"
    );
    let out = shoal(&node, &["settings", "get", ECHO, "--json"]).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(out.stdout.trim()).unwrap(),
        json!({"greeting": "moin"})
    );

    // DELETE: back to the defaults, restarted again.
    let resp = within(node.http.delete(node.url(&path)).send())
        .await
        .unwrap();
    expect_status(&resp, 204).unwrap();
    let echoes = wait_echoes(&node, 3).await;
    assert_eq!(
        echoes[2]["payload"]["settings"],
        json!({"greeting": "hello"})
    );

    // Schemas: the app's and the node's.
    let schema: Value = node
        .get(&format!("{path}/schema"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(schema["required"], json!(["greeting"]));
    let node_schema: Value = node
        .get("/api/v1/settings/node/schema")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(node_schema["properties"]["retention"].is_object());
    let resp = within(
        node.http
            .put(node.url("/api/v1/settings/node"))
            .json(&json!({"retention": [{"maxEvents": -5}]}))
            .send(),
    )
    .await
    .unwrap();
    expect_error(resp, 400, "ERR_BAD_REQUEST", "/retention/0/maxEvents")
        .await
        .unwrap();
    let out = shoal(
        &node,
        &["settings", "set", "node", r#"{"displayName": "press 4"}"#],
    )
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: Value = node
        .get("/api/v1/settings/node")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({"displayName": "press 4"}));
    let resp = node.get("/api/v1/settings/com.example.nope").await.unwrap();
    expect_error(resp, 404, "ERR_NOT_FOUND", "com.example.nope")
        .await
        .unwrap();

    // An upgrade whose schema the stored settings fail: invalid-settings, start → 409.
    let v2 = echo_copy();
    let manifest = v2.path().join("shoal-app.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("1.0.0", "2.0.0")).unwrap();
    std::fs::write(
        v2.path().join("schema.json"),
        r#"{"type":"object","required":["greeting","color"]}"#,
    )
    .unwrap();
    std::fs::write(
        v2.path().join("defaults.json"),
        r#"{"greeting":"x","color":"red"}"#,
    )
    .unwrap();
    let out = shoal(&node, &["settings", "set", ECHO, r#"{"greeting": "kept"}"#]).unwrap();
    assert!(out.status.success(), "{out:?}");
    deploy(&node, v2.path()).unwrap();
    let app = wait_app(&node, ECHO, "invalid-settings", |a| {
        a["state"] == "invalid-settings"
    })
    .await;
    assert_eq!(app["version"], "2.0.0");
    assert_eq!(app["settingsValid"], false);
    let resp = within(
        node.http
            .post(node.url(&format!("/api/v1/apps/{ECHO}/start")))
            .send(),
    )
    .await
    .unwrap();
    expect_error(resp, 409, "ERR_CONFLICT", "settings")
        .await
        .unwrap();
    // Valid settings for the new schema start it.
    let out = shoal(
        &node,
        &[
            "settings",
            "set",
            ECHO,
            r#"{"greeting": "kept", "color": "blue"}"#,
        ],
    )
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = shoal(&node, &["apps", "start", ECHO]).unwrap();
    assert!(out.status.success(), "{out:?}");
    wait_app(&node, ECHO, "running v2", |a| {
        running(a) && a["version"] == "2.0.0"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_start_undeploy_and_purge() {
    let node = Node::start().unwrap();
    deploy(&node, &echo_dir()).unwrap();
    let app = wait_app(&node, ECHO, "running", running).await;
    wait_echoes(&node, 1).await;
    let pid = app["pid"].as_u64().unwrap();
    let out = shoal(&node, &["apps", "stop", ECHO]).unwrap();
    assert!(out.status.success(), "{out:?}");
    let app = wait_app(&node, ECHO, "stopped", |a| a["state"] == "stopped").await;
    assert!(app["pid"].is_null() && app["startedAt"].is_null());
    assert!(!alive(pid));
    let resp = within(
        node.http
            .post(node.url(&format!("/api/v1/apps/{ECHO}/start")))
            .send(),
    )
    .await
    .unwrap();
    expect_status(&resp, 202).unwrap();
    wait_app(&node, ECHO, "running", running).await;
    wait_echoes(&node, 2).await;
    let resp = within(
        node.http
            .post(node.url("/api/v1/apps/com.example.nope/start"))
            .send(),
    )
    .await
    .unwrap();
    expect_error(resp, 404, "ERR_NOT_FOUND", "com.example.nope")
        .await
        .unwrap();

    // Undeploy keeps data/, purge removes it.
    let data = node.data_dir().join("apps").join(ECHO).join("data");
    let resp = within(
        node.http
            .delete(node.url(&format!("/api/v1/apps/{ECHO}")))
            .send(),
    )
    .await
    .unwrap();
    expect_status(&resp, 204).unwrap();
    assert!(apps(&node).await.unwrap().is_empty());
    assert!(data.join("marker").is_file());
    deploy(&node, &echo_dir()).unwrap();
    let app = wait_app(&node, ECHO, "running", running).await;
    let out = shoal(&node, &["apps", "undeploy", ECHO, "--purge"]).unwrap();
    assert!(out.status.success(), "{out:?}");
    let deadline = Instant::now() + TIMEOUT;
    while data.exists() || alive(app["pid"].as_u64().unwrap()) {
        assert!(
            Instant::now() < deadline,
            "purge left {data:?} or the process"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A bad package: 400, nothing deployed.
    let resp = node
        .post_bytes("/api/v1/apps", b"not a package".to_vec())
        .await
        .unwrap();
    expect_error(resp, 400, "ERR_BAD_REQUEST", "package")
        .await
        .unwrap();
    assert!(apps(&node).await.unwrap().is_empty());
}

/// An app that ignores SIGTERM, with a child in its process group that ignores it too, blocks
/// nothing: after `stop` the node keeps answering, and once the grace period is over the
/// supervisor kills the whole group (SIGKILL) and says so; neither process is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_ignores_sigterm_is_killed_with_its_process_group() {
    let node = Node::start().unwrap();
    let dir = echo_copy();
    std::fs::write(
        dir.path().join("defaults.json"),
        json!({"greeting": "hello", "hang": true}).to_string(),
    )
    .unwrap();
    deploy(&node, dir.path()).unwrap();
    let app = wait_app(&node, ECHO, "running", running).await;
    let echo = wait_echoes(&node, 1).await.remove(0);
    let pid = app["pid"].as_u64().unwrap();
    assert_eq!(echo["payload"]["pid"], pid);
    let child = echo["payload"]["childPid"].as_u64().unwrap();
    assert!(alive(pid) && alive(child));

    let resp = within(
        node.http
            .post(node.url(&format!("/api/v1/apps/{ECHO}/stop")))
            .send(),
    )
    .await
    .unwrap();
    expect_status(&resp, 202).unwrap();
    // Until it is stopped, the node answers (each request bounded by the harness's timeout)
    // and takes events.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        expect_status(&node.get("/api/v1/node/info").await.unwrap(), 200).unwrap();
        node.publish(&[shoal_tests::event("test.alive", "n", json!(1))])
            .await
            .unwrap();
        let app = apps(&node).await.unwrap().pop().unwrap_or(Value::Null);
        if app["state"] == "stopped" {
            break;
        }
        assert!(Instant::now() < deadline, "never stopped: {app}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The leader was reaped; the child got the same SIGKILL (bounded wait for it to be gone).
    assert!(!alive(pid), "the app outlived its stop");
    let deadline = Instant::now() + TIMEOUT;
    while alive(child) {
        assert!(
            Instant::now() < deadline,
            "the app's child outlived its stop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        node.log()
            .contains("app did not stop within 10 s of SIGTERM; killing it"),
        "{}",
        node.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_deploy_leaves_the_old_version_running_and_a_node_restart_brings_it_back() {
    let node = Node::start().unwrap();
    deploy(&node, &echo_dir()).unwrap();
    let before = wait_app(&node, ECHO, "running", running).await;
    wait_echoes(&node, 1).await;
    // A package whose manifest is fine but whose defaults do not validate is refused whole.
    let bad = echo_copy();
    let manifest = bad.path().join("shoal-app.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("1.0.0", "1.1.0")).unwrap();
    // Bypass `apps package` (which validates): a hand-made tar.gz with broken defaults.
    std::fs::write(bad.path().join("defaults.json"), r#"{"nothing": true}"#).unwrap();
    let tarball = bad.path().join("../bad.tar.gz");
    let status = std::process::Command::new("tar")
        .args([
            "-czf",
            tarball.to_str().unwrap(),
            "-C",
            bad.path().to_str().unwrap(),
            ".",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let resp = node
        .post_bytes("/api/v1/apps", std::fs::read(&tarball).unwrap())
        .await
        .unwrap();
    expect_error(resp, 400, "ERR_BAD_REQUEST", "default-settings")
        .await
        .unwrap();
    let still = wait_app(&node, ECHO, "running", running).await;
    assert_eq!(still["pid"], before["pid"]);
    assert_eq!(still["version"], "1.0.0");

    // A clean node restart stops the app (its group) and starts it again.
    let node = node.restart().unwrap();
    assert!(
        !alive(before["pid"].as_u64().unwrap()),
        "the node left its app running"
    );
    let after = wait_app(&node, ECHO, "running", running).await;
    assert_eq!(after["restarts"], 0);
    wait_echoes(&node, 2).await;

    // A stopped app stays stopped across a restart.
    let out = shoal(&node, &["apps", "stop", ECHO]).unwrap();
    assert!(out.status.success());
    wait_app(&node, ECHO, "stopped", |a| a["state"] == "stopped").await;
    let node = node.restart().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let app = wait_app(&node, ECHO, "stopped", |a| !a.is_null()).await;
    assert_eq!(app["state"], "stopped");

    // A node killed with SIGKILL takes its app along (no orphan).
    shoal(&node, &["apps", "start", ECHO]).unwrap();
    let app = wait_app(&node, ECHO, "running", running).await;
    let mut node = node;
    node.kill9();
    let pid = app["pid"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "the app outlived its killed node"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_app_backs_off_and_the_node_stays_responsive() {
    let node = Node::start().unwrap();
    deploy(&node, &echo_dir()).unwrap();
    wait_app(&node, ECHO, "running", running).await;
    // Each start publishes, then exits 3: under on-failure, a crash loop.
    let out = shoal(
        &node,
        &["settings", "set", ECHO, r#"{"greeting": "x", "exit": 3}"#],
    )
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    // Starts at t, t+1, t+1+2, t+1+2+4 s: four crashing starts take >= 7 s.
    let deadline = Instant::now() + TIMEOUT;
    let crashing = loop {
        let crashing: Vec<Value> = echoes(&node)
            .await
            .into_iter()
            .filter(|e| e["payload"]["settings"]["exit"] == 3)
            .collect();
        if crashing.len() >= 4 {
            break crashing;
        }
        // The API answers meanwhile (each request bounded by the harness's timeout; no
        // figure asserted on a shared machine).
        expect_status(&node.get("/api/v1/node/info").await.unwrap(), 200).unwrap();
        apps(&node).await.unwrap();
        assert!(
            Instant::now() < deadline,
            "only {} crashing starts",
            crashing.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let times: Vec<i64> = crashing
        .iter()
        .map(|e| e["timestamp"].as_i64().unwrap())
        .collect();
    let gaps: Vec<i64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // Gaps of at least 1, 2 and 4 s (the python start adds to each, never subtracts).
    for (gap, min) in gaps.iter().zip([1_000_000, 2_000_000, 4_000_000]) {
        assert!(*gap >= min, "gaps {gaps:?} do not back off");
    }
    let app = wait_app(&node, ECHO, "counted", |a| {
        a["restarts"].as_u64() >= Some(3)
    })
    .await;
    assert!(
        app["state"] == "starting" || app["state"] == "running",
        "{app}"
    );
}

/// A copy of the echo app as app `id`, its manifest's `memory-max` replaced by `limits` (lines
/// of `[process]`), whose default settings allocate and touch `allocate_mib` MiB at start.
fn echo_with_limits(id: &str, limits: &str, allocate_mib: u64) -> tempfile::TempDir {
    let dir = echo_copy();
    let manifest = std::fs::read_to_string(dir.path().join("shoal-app.toml")).expect("manifest");
    let manifest = manifest
        .replace(&format!("id = \"{ECHO}\""), &format!("id = \"{id}\""))
        .replace("memory-max = \"512M\"\n", limits);
    assert!(
        manifest.contains(id) && !manifest.contains("512M"),
        "{manifest}"
    );
    std::fs::write(dir.path().join("shoal-app.toml"), manifest).expect("manifest");
    std::fs::write(
        dir.path().join("defaults.json"),
        json!({"greeting": "hello", "allocateMiB": allocate_mib}).to_string(),
    )
    .expect("defaults");
    dir
}

/// The first echo event app `id` published (its name is the app id).
async fn wait_echo_of(node: &Node, id: &str) -> Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(e) = echoes(node)
            .await
            .into_iter()
            .find(|e| e["stream"]["name"] == id)
        {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "app {id} published nothing\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `memory-max` is enforced: the same app allocating 256 MiB fails under `memory-max = "128M"`
/// and succeeds without a limit. What enforces it depends on the machine (limits.rs): under
/// rlimits the limited process has `RLIMIT_AS` = 128 MiB (`/proc/<pid>/limits`) and python's
/// allocation raises MemoryError, which the app reports; under cgroup v2 its cgroup has
/// `memory.max` and `cpu.max` and the app is killed (OOM) when it touches too much.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_limit_from_the_manifest_is_applied() {
    let node = Node::start().unwrap();
    let limited = echo_with_limits(
        "com.example.limited",
        "memory-max = \"128M\"\ncpu-max = 0.5\n",
        256,
    );
    let free = echo_with_limits("com.example.unlimited", "", 256);
    deploy(&node, limited.path()).unwrap();
    deploy(&node, free.path()).unwrap();

    let unlimited = wait_echo_of(&node, "com.example.unlimited").await;
    assert_eq!(
        unlimited["payload"]["allocated"], true,
        "without a limit the allocation works: {unlimited}"
    );
    let pid = unlimited["payload"]["pid"].as_u64().unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max address space") && l.contains("unlimited")),
        "{limits}"
    );

    // The node says which mechanism applies when it first starts an app with limits.
    let deadline = Instant::now() + TIMEOUT;
    let log = loop {
        let log = node.log();
        if log.contains("app limits use") {
            break log;
        }
        assert!(
            Instant::now() < deadline,
            "no limits mechanism logged\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if log.contains("app limits use rlimits") {
        eprintln!(
            "\n!!!!!!!! a_memory_limit_...: this machine offers no writable cgroup v2 with the \
             memory and cpu controllers, so the node used rlimits; the cgroup v2 path (memory.max, \
             cpu.max) was NOT exercised. !!!!!!!!\n"
        );
        let e = wait_echo_of(&node, "com.example.limited").await;
        assert_eq!(
            e["payload"]["allocated"], false,
            "256 MiB under memory-max = 128M: {e}"
        );
        let pid = e["payload"]["pid"].as_u64().unwrap();
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max address space"))
            .unwrap_or_else(|| panic!("{limits}"));
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            fields[3..5],
            ["134217728", "134217728"],
            "RLIMIT_AS soft and hard: {line}"
        );
        assert!(
            node.log().contains("cpu-max is not enforced"),
            "the operator is told cpu-max does nothing here"
        );
    } else {
        assert!(log.contains("app limits use cgroup v2"), "{log}");
        let dir = Path::new("/sys/fs/cgroup/shoal-apps/com.example.limited");
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        assert_eq!(read("memory.max").trim(), "134217728");
        assert_eq!(read("cpu.max").trim(), "50000 100000");
        // Touching 256 MiB in a 128 MiB cgroup: the kernel kills it (on-failure restarts it,
        // and it is killed again), or the allocation fails and the app says so.
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let app = apps(&node)
                .await
                .unwrap()
                .into_iter()
                .find(|a| a["id"] == "com.example.limited")
                .unwrap_or(Value::Null);
            let reported = echoes(&node)
                .await
                .into_iter()
                .find(|e| e["stream"]["name"] == "com.example.limited");
            if let Some(e) = reported {
                assert_eq!(e["payload"]["allocated"], false, "{e}");
                break;
            }
            if app["restarts"].as_u64() >= Some(1) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the limited app neither failed nor was killed: {app}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_app_loads_in_chromium_and_reads_events_through_the_api() {
    let node = Node::start().unwrap();
    node.publish(&[shoal_tests::event("test.web-input", "i", json!({"n": 7}))])
        .await
        .unwrap();
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("apps/web");
    let d = deploy(&node, &web).unwrap();
    assert_eq!(d["id"], "com.example.web");
    let app = wait_app(&node, "com.example.web", "running", |a| {
        a["state"] == "running"
    })
    .await;
    assert_eq!(app["kind"], "web");
    assert!(app["pid"].is_null());

    // Files: content types, the main page, no way out of dist/.
    let resp = node.get("/apps/com.example.web/").await.unwrap();
    expect_status(&resp, 200).unwrap();
    assert_eq!(resp.headers()["content-type"], "text/html; charset=utf-8");
    let resp = node.get("/apps/com.example.web/app.js").await.unwrap();
    assert_eq!(
        resp.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    for bad in [
        "/apps/com.example.web/..%2fshoal-app.toml",
        "/apps/com.example.web/%2e%2e/shoal-app.toml",
        "/apps/com.example.web/nope.js",
        "/apps/com.example.nope/",
    ] {
        let resp = node.get(bad).await.unwrap();
        expect_error(resp, 404, "ERR_NOT_FOUND", "")
            .await
            .unwrap_or_else(|e| panic!("{bad}: {e}"));
    }
    let (status, head, _) = shoal_tests::raw_http(
        node.api,
        b"GET /apps/com.example.web HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(status, 301);
    assert!(
        head.to_ascii_lowercase()
            .contains("location: /apps/com.example.web/"),
        "{head}"
    );

    let Some(chromium) = tokio::task::spawn_blocking(shoal_tests::browser::chromium)
        .await
        .unwrap()
    else {
        eprintln!(
            "\n!!!!!!!! SKIPPED the browser half of a_web_app_loads_in_chromium...: chromium is \
             not installed and `apt-get install -y chromium` failed. Install Debian's chromium \
             (or set SHOAL_CHROMIUM) to run it. !!!!!!!!\n"
        );
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{}/apps/com.example.web/", node.api);
    let browser = shoal_tests::browser::Browser::open(&chromium, profile.path(), &url).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let output = loop {
        let out: Vec<Value> = node
            .query_all()
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e["stream"]["semantics"] == "test.web-output")
            .collect();
        if let Some(o) = out.into_iter().next() {
            break o;
        }
        assert!(
            Instant::now() < deadline,
            "the page published nothing within {TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop(browser);
    assert_eq!(output["payload"]["seen"], json!([{"n": 7}]));
    assert_eq!(output["payload"]["location"], "/apps/com.example.web/");

    // Stopped: no longer served.
    let out = shoal(&node, &["apps", "stop", "com.example.web"]).unwrap();
    assert!(out.status.success());
    let resp = node.get("/apps/com.example.web/").await.unwrap();
    expect_error(resp, 404, "ERR_NOT_FOUND", "com.example.web")
        .await
        .unwrap();
}
