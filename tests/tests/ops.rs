//! What an operator meets (issue 19 item 5): the example `shoal.toml` sets every key and a node
//! starts with it, `--log-level`/`-v` decide what the node logs (over `RUST_LOG`), the health
//! endpoint tells a working node from one whose store does not answer, and `shoal completions`
//! prints a script for each shell.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use shoal_engine::Settings;
use shoal_tests::{cli, expect_error, within, Node, NodeOptions};

fn example_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/shoal.example.toml")
}

#[test]
fn the_example_config_sets_every_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(example_config(), dir.path().join("shoal.toml")).unwrap();
    let settings = Settings::from_file(dir.path()).expect("the example parses");
    // Every key the file may hold is set: a setting added later without its line here shows up
    // as `None` in the Debug output. `data_dir` is the one key a file cannot hold.
    let shown = format!("{settings:?}").replace("data_dir: None", "");
    assert!(
        !shown.contains("None"),
        "docs/shoal.example.toml misses a key: {shown}"
    );
    settings
        .resolve()
        .expect("every value in the example is valid");
}

#[tokio::test]
async fn a_node_starts_with_the_example_config() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(example_config(), data.join("shoal.toml")).unwrap();
    // The example's swarm key is /etc/shoal/swarm.key: a flag points at a real one (flags win
    // over the file; so do the harness's free ports and --no-mdns).
    let key = dir.path().join("swarm.key");
    let keygen = cli(&["swarm", "keygen", "-o", key.to_str().unwrap()], None).unwrap();
    assert!(keygen.status.success(), "{}", keygen.stderr);
    let node = Node::start_in(
        dir,
        NodeOptions::default()
            .arg("--swarm-key")
            .arg(key.to_str().unwrap()),
    )
    .unwrap();
    let resp = node.get("/api/v1/node/health").await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    // The file was read, not ignored: its allow-host admits mydevice.local and no other name.
    let host = |name: &'static str| {
        within(
            node.http
                .get(node.url("/api/v1/node/id"))
                .header("host", name)
                .send(),
        )
    };
    assert_eq!(host("mydevice.local").await.unwrap().status().as_u16(), 200);
    assert_eq!(host("other.local").await.unwrap().status().as_u16(), 403);
}

#[test]
fn a_typo_in_shoal_toml_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = std::fs::read_to_string(example_config()).unwrap();
    text.push_str("\napi-adr = \"127.0.0.1:1\"\n");
    std::fs::write(dir.path().join("shoal.toml"), text).unwrap();
    let out = shoal_tests::run_on_data_dir(dir.path()).unwrap();
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("shoal.toml") && out.stderr.contains("api-adr"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn log_level_flag_wins_over_rust_log() {
    // The harness sets RUST_LOG=info; `--log-level warn` must silence the info lines.
    let quiet = Node::start_with(NodeOptions::default().arg("--log-level").arg("warn")).unwrap();
    quiet
        .publish(&[shoal_tests::event("s", "n", json!(1))])
        .await
        .unwrap();
    let log = quiet.log();
    assert!(
        !log.contains(" INFO "),
        "--log-level warn still logs info:\n{log}"
    );

    let loud = Node::start_with(NodeOptions::default().arg("-v")).unwrap();
    loud.publish(&[shoal_tests::event("s", "n", json!(1))])
        .await
        .unwrap();
    let log = loud.log();
    assert!(log.contains(" DEBUG "), "-v logs no debug lines:\n{log}");

    // A level that is not one is an error, not a silent filter that logs nothing.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let out = cli(&["run", "--data-dir", data, "--log-level", "inf"], None).unwrap();
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("invalid log level `inf`"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn health_is_ok_and_503_naming_the_store_when_it_cannot_be_read() {
    let node = Node::start().unwrap();
    let resp = node.get("/api/v1/node/health").await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = within(resp.json()).await.unwrap();
    assert_eq!(body, json!({"status": "ok"}));

    // Move the store file away: the running writer keeps its open file, but a new read
    // connection finds nothing, as with a vanished or unreadable disk.
    let store = node.data_dir().join("store.sqlite");
    let moved = node.data_dir().join("store.sqlite.moved");
    std::fs::rename(&store, &moved).unwrap();
    let resp = node.get("/api/v1/node/health").await.unwrap();
    let answer = expect_error(resp, 503, "ERR_UNHEALTHY", "store").await;
    let url = format!("http://{}", node.api);
    let cli_answer = cli(&["node", "health", "--node", &url], None);
    std::fs::rename(&moved, &store).unwrap();
    answer.unwrap();
    let cli_answer = cli_answer.unwrap();
    assert!(!cli_answer.status.success());
    assert!(
        cli_answer.stderr.contains("ERR_UNHEALTHY") && cli_answer.stderr.contains("store"),
        "{}",
        cli_answer.stderr
    );

    let resp = node.get("/api/v1/node/health").await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let ok = cli(&["node", "health", "--node", &url], None).unwrap();
    assert!(ok.status.success(), "{}", ok.stderr);
    assert_eq!(ok.stdout, "ok\n");
}

#[test]
fn completions_for_each_shell() {
    for (shell, marker) in [
        ("bash", "_shoal()"),
        ("zsh", "#compdef shoal"),
        ("fish", "complete -c shoal"),
    ] {
        let out = cli(&["completions", shell], None).unwrap();
        assert!(out.status.success(), "{shell}: {}", out.stderr);
        assert!(out.stdout.contains(marker), "{shell} script lacks {marker}");
        // The subcommands and `run`'s flags are in it.
        assert!(out.stdout.contains("--log-level"), "{shell}");
        assert!(out.stdout.contains("completions"), "{shell}");
    }
    let out = cli(&["completions", "powershell"], None).unwrap();
    assert!(!out.status.success());
}
