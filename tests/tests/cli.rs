//! The `shoal` client commands against a real node: events publish (arguments, NDJSON from a file
//! and stdin), query, subscribe, offsets, node info, logs tail — `--json` and human output — and
//! the one-line message plus non-zero exit when no node answers.

use serde_json::{json, Value};
use shoal_tests::{cli, expect_status, free_port, within, CliStream, Node};

fn ok(args: &[&str], stdin: Option<&[u8]>) -> String {
    let out = cli(args, stdin).unwrap();
    assert!(
        out.status.success(),
        "shoal {} failed ({}):\n{}\n{}",
        args.join(" "),
        out.status,
        out.stdout,
        out.stderr
    );
    // Piped: nothing extra on stderr (no progress, no chatter).
    assert!(out.stderr.is_empty(), "stderr: {}", out.stderr);
    out.stdout
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("`{l}`: {e}")))
        .collect()
}

#[tokio::test]
async fn publish_query_offsets_human_and_json() {
    let node = Node::start().unwrap();
    let url = format!("http://{}", node.api);
    let url = url.as_str();

    let human = ok(
        &[
            "events",
            "publish",
            "com.example",
            "robot1",
            r#"{"at":"bay-1"}"#,
            "--tag",
            "t1",
            "--tag",
            "t2",
            "--node",
            url,
        ],
        None,
    );
    assert!(human.contains("offset 0"), "{human}");
    let stamps = json_lines(&ok(
        &[
            "events",
            "publish",
            "com.example",
            "robot2",
            "null",
            "--json",
            "--node",
            url,
        ],
        None,
    ));
    assert_eq!(stamps.len(), 1);
    assert_eq!(stamps[0]["offset"], 1);
    assert_eq!(stamps[0]["source"], node.source);

    // NDJSON from stdin (blank lines ignored), and from a file in batches.
    let input = b"{\"semantics\":\"s\",\"name\":\"a\",\"payload\":1}\n\n{\"semantics\":\"s\",\"name\":\"b\",\"payload\":2,\"tags\":[\"x\"]}\n";
    let stamps = json_lines(&ok(
        &["events", "publish", "--json", "--node", url],
        Some(input),
    ));
    assert_eq!(
        stamps
            .iter()
            .map(|s| s["offset"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [2, 3]
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.ndjson");
    let lines: String = (0..25)
        .map(|i| {
            format!(
                "{}\n",
                json!({"semantics": "f", "name": "file", "payload": i})
            )
        })
        .collect();
    std::fs::write(&file, lines).unwrap();
    let human = ok(
        &[
            "events",
            "publish",
            "--file",
            file.to_str().unwrap(),
            "--batch",
            "10",
            "--node",
            url,
        ],
        None,
    );
    assert_eq!(human.lines().count(), 3, "one line per batch: {human}");

    let offsets: Value =
        serde_json::from_str(&ok(&["events", "offsets", "--json", "--node", url], None)).unwrap();
    assert_eq!(offsets, json!({ node.source.clone(): 28 }));
    let human = ok(&["events", "offsets", "--node", url], None);
    assert!(
        human.contains(&node.source) && human.contains("28"),
        "{human}"
    );

    let events = json_lines(&ok(&["events", "query", "--json", "--node", url], None));
    assert_eq!(events.len(), 29);
    assert_eq!(events[0]["payload"], json!({"at": "bay-1"}));
    assert_eq!(events[0]["stream"]["name"], "robot1");
    let reverse = json_lines(&ok(
        &[
            "events",
            "query",
            "--json",
            "--order",
            "lamport-reverse",
            "--semantics",
            "s",
            "--node",
            url,
        ],
        None,
    ));
    assert_eq!(
        reverse
            .iter()
            .map(|e| e["offset"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [3, 2]
    );
    let bounded = json_lines(&ok(
        &[
            "events",
            "query",
            "--json",
            "--node",
            url,
            "--after",
            &json!({node.source.clone(): 1}).to_string(),
            "--to",
            &json!({node.source.clone(): 3}).to_string(),
        ],
        None,
    ));
    let offsets = |events: &[Value]| {
        events
            .iter()
            .map(|e| e["offset"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(offsets(&bounded), [2, 3]);
    // `--from`, the old name of `--after`, keeps its exclusive meaning and warns.
    let after = json!({node.source.clone(): 1}).to_string();
    let to = json!({node.source.clone(): 3}).to_string();
    let old = cli(
        &[
            "events", "query", "--json", "--node", url, "--from", &after, "--to", &to,
        ],
        None,
    )
    .unwrap();
    assert!(old.status.success(), "{}", old.stderr);
    assert!(old.stderr.contains("use --after"), "{}", old.stderr);
    assert_eq!(offsets(&json_lines(&old.stdout)), [2, 3]);
    let human = ok(
        &["events", "query", "--name", "robot1", "--node", url],
        None,
    );
    assert_eq!(human.lines().count(), 1);
    assert!(
        human.contains("com.example/robot1") && human.contains("bay-1") && human.contains("t1"),
        "{human}"
    );

    // Errors from the node come back as one line and a non-zero exit.
    let out = cli(&["events", "publish", "s", " ", "1", "--node", url], None).unwrap();
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("ERR_BAD_REQUEST") && out.stderr.contains("name"),
        "{}",
        out.stderr
    );
    let out = cli(
        &["events", "publish", "s", "n", "{bad", "--node", url],
        None,
    )
    .unwrap();
    assert!(!out.status.success());
    assert!(out.stderr.contains("PAYLOAD"), "{}", out.stderr);
    let out = cli(
        &["events", "publish", "--node", url],
        Some(b"{\"semantics\":\"s\"\n"),
    )
    .unwrap();
    assert!(!out.status.success());
    assert!(out.stderr.contains("line 1"), "{}", out.stderr);
    assert_eq!(node.offsets().await.unwrap()[&node.source], 28);
}

#[tokio::test]
async fn subscribe_streams_until_interrupted() {
    let node = Node::start().unwrap();
    let url = format!("http://{}", node.api);
    node.publish(&[shoal_tests::event("s", "n", json!(1))])
        .await
        .unwrap();
    let sub = CliStream::spawn(&[
        "events",
        "subscribe",
        "--json",
        "--semantics",
        "s",
        "--node",
        &url,
    ])
    .unwrap();
    let first: Value = serde_json::from_str(&sub.next_line().unwrap()).unwrap();
    assert_eq!(first["offset"], 0);
    node.publish(&[
        shoal_tests::event("other", "n", json!(2)),
        shoal_tests::event("s", "n", json!(3)),
    ])
    .await
    .unwrap();
    let live: Value = serde_json::from_str(&sub.next_line().unwrap()).unwrap();
    assert_eq!(live["offset"], 2);
    assert_eq!(live["payload"], 3);

    let human = CliStream::spawn(&["events", "subscribe", "--node", &url]).unwrap();
    let line = human.next_line().unwrap();
    assert!(line.contains(&format!("{}/0", node.source)), "{line}");
}

#[tokio::test]
async fn node_info_and_logs_tail() {
    let node = Node::start().unwrap();
    let url = format!("http://{}", node.api);
    let info: Value =
        serde_json::from_str(&ok(&["node", "info", "--json", "--node", &url], None)).unwrap();
    assert_eq!(info["source"], node.source);
    let human = ok(&["node", "info", "--node", &url], None);
    assert!(
        human.contains(&node.source) && human.contains("uptime"),
        "{human}"
    );
    // Sizes for people in text, bytes in JSON.
    let store_line = human.lines().find(|l| l.starts_with("store:")).unwrap();
    assert!(
        store_line.ends_with("B") && !store_line.contains("bytes"),
        "{store_line}"
    );
    assert!(info["storeBytes"].is_u64());
    assert_eq!(info["consoleAddr"], node.console.to_string());
    // The facts of the dashboard's node pane are in the text too.
    assert!(
        human.contains(&format!("console:    {}", node.console))
            && human.contains(&format!("store api:  {}", node.store)),
        "{human}"
    );

    let console = format!("http://{}", node.console);
    let entry = json!({"severity": "warn", "logName": "app", "message": "disk almost full",
                       "producerName": "p", "producerVersion": "1", "labels": {"disk": "sda"}});
    let resp = within(
        node.http
            .post(node.console_url("/api/v1/logs"))
            .json(&entry)
            .send(),
    )
    .await
    .unwrap();
    expect_status(&resp, 201).unwrap();
    // `--node` is the API URL as everywhere; the node says where its console is.
    let human = ok(&["logs", "tail", "--node", &url], None);
    assert!(
        human.contains("WARN") && human.contains("disk almost full") && human.contains("disk=sda"),
        "{human}"
    );
    let lines = json_lines(&ok(&["logs", "tail", "--json", "--node", &url], None));
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["message"], "disk almost full");
    // The console's own URL: with --console, or (as before) with --node and a hint.
    let direct = json_lines(&ok(
        &["logs", "tail", "--json", "--console", &console],
        None,
    ));
    assert_eq!(direct, lines);
    let old = cli(&["logs", "tail", "--json", "--node", &console], None).unwrap();
    assert!(old.status.success(), "{}", old.stderr);
    assert!(
        old.stderr.contains("hint") && old.stderr.contains("--console"),
        "{}",
        old.stderr
    );
    assert_eq!(json_lines(&old.stdout), lines);
    let none = ok(
        &[
            "logs",
            "tail",
            "--since",
            "2999-01-01T00:00:00+01:00",
            "--node",
            &url,
        ],
        None,
    );
    assert!(none.is_empty(), "{none}");

    let follow = CliStream::spawn(&["logs", "tail", "--follow", "--json", "--node", &url]).unwrap();
    assert!(follow.next_line().unwrap().contains("disk almost full"));
    let mut next = entry.clone();
    next["message"] = json!("followed");
    let resp = within(
        node.http
            .post(node.console_url("/api/v1/logs"))
            .json(&next)
            .send(),
    )
    .await
    .unwrap();
    expect_status(&resp, 201).unwrap();
    assert!(follow.next_line().unwrap().contains("followed"));
}

#[test]
fn connection_refused_says_which_url_and_exits_non_zero() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    for args in [
        vec!["events", "offsets", "--node", url.as_str()],
        vec!["events", "query", "--node", url.as_str()],
        vec!["events", "publish", "s", "n", "1", "--node", url.as_str()],
        vec!["node", "info", "--node", url.as_str()],
        vec!["logs", "tail", "--node", url.as_str()],
    ] {
        let out = cli(&args, None).unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(out.stdout.is_empty(), "{}", out.stdout);
        let msg = out.stderr.trim();
        assert_eq!(msg.lines().count(), 1, "one line: {msg}");
        assert!(msg.contains(&url), "names the URL: {msg}");
        assert!(msg.contains("--node"), "says what to do: {msg}");
    }
}

/// `events publish` with nothing to publish and a terminal on stdin says what to type instead
/// of waiting silently for NDJSON.
#[test]
fn publish_without_arguments_on_a_terminal_says_what_to_type() {
    use std::os::fd::FromRawFd;
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty fills two fresh descriptors, which we own from here on.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty failed");
    // SAFETY: both descriptors are open and owned by nobody else.
    let (master, slave) = unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(master),
            std::os::fd::OwnedFd::from_raw_fd(slave),
        )
    };
    let mut child = std::process::Command::new(shoal_tests::shoal_bin())
        .args(["events", "publish", "--node", "http://127.0.0.1:9"])
        .stdin(std::process::Stdio::from(slave))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = shoal_tests::wait_within(&mut child, shoal_tests::TIMEOUT)
        .unwrap()
        .unwrap_or_else(|| panic!("`shoal events publish` on a terminal waited for input"));
    drop(master);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("SEMANTICS NAME PAYLOAD") && stderr.contains("--file"),
        "{stderr}"
    );
}

/// shoal's own events (`shoal.*`, here a blob name) are not shown by query and subscribe unless
/// asked for with `--internal` or a filter naming their semantics.
#[tokio::test]
async fn internal_events_are_hidden_unless_asked() {
    let node = Node::start().unwrap();
    let url = format!("http://{}", node.api);
    let url = url.as_str();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), b"manual").unwrap();
    let path = file.path().to_str().unwrap();
    ok(
        &["blobs", "put", path, "--name", "manual", "--node", url],
        None,
    );
    ok(&["events", "publish", "s", "n", "1", "--node", url], None);

    let semantics = |out: &str| {
        json_lines(out)
            .iter()
            .map(|e| e["stream"]["semantics"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let plain = ok(&["events", "query", "--json", "--node", url], None);
    assert_eq!(semantics(&plain), ["s"]);
    let all = ok(
        &["events", "query", "--json", "--internal", "--node", url],
        None,
    );
    assert_eq!(semantics(&all), ["shoal.blob-name", "s"]);
    let named = ok(
        &[
            "events",
            "query",
            "--json",
            "--semantics",
            "shoal.blob-name",
            "--node",
            url,
        ],
        None,
    );
    assert_eq!(semantics(&named), ["shoal.blob-name"]);

    let sub = CliStream::spawn(&["events", "subscribe", "--json", "--node", url]).unwrap();
    let first: Value = serde_json::from_str(&sub.next_line().unwrap()).unwrap();
    assert_eq!(first["stream"]["semantics"], "s");
}
