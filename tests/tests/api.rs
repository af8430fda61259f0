//! The HTTP surface of the events and node API over real sockets: every endpoint, every
//! documented error (API.md "Common rules", event service, node), body handling (chunked, any
//! content type, 413 both ways), and the real ActyxOS v1 JS client from npm.

use futures::stream;
use serde_json::{json, Value};
use shoal_tests::{event, expect_error, expect_status, raw_http, within, Node, NodeOptions};

fn all() -> Value {
    json!([{}])
}

#[tokio::test]
async fn offsets_publish_and_stamps() {
    let node = Node::start().unwrap();
    assert_eq!(node.offsets().await.unwrap(), json!({}));

    let stamps = node
        .publish(&[
            event("a", "n1", json!({"x": 1})),
            event("a", "n2", json!(null)),
            event("b", "n1", json!([1, "two"])),
        ])
        .await
        .unwrap();
    assert_eq!(stamps.len(), 3);
    for (i, s) in stamps.iter().enumerate() {
        assert_eq!(s["source"], node.source);
        assert_eq!(s["offset"], i as u64);
        assert!(s["timestamp"].as_u64().unwrap() > 1_500_000_000_000_000);
    }
    let lamports: Vec<u64> = stamps
        .iter()
        .map(|s| s["lamport"].as_u64().unwrap())
        .collect();
    assert!(lamports.windows(2).all(|w| w[0] < w[1]), "{lamports:?}");
    assert_eq!(
        node.offsets().await.unwrap(),
        json!({ node.source.clone(): 2 })
    );

    // The stored envelope is exactly the v1 format; null payload kept.
    let events = node.query_all().await.unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(
        events[1],
        json!({"stream": {"semantics": "a", "name": "n2", "source": node.source},
               "timestamp": stamps[1]["timestamp"], "lamport": stamps[1]["lamport"],
               "offset": 1, "payload": null})
    );
}

#[tokio::test]
async fn publish_rejects_bad_input_and_stores_nothing() {
    let node = Node::start().unwrap();
    node.publish(&[event("s", "n", json!(0))]).await.unwrap();
    let long = "x".repeat(1025);
    let too_many_tags: Vec<String> = (0..65).map(|i| format!("t{i}")).collect();
    // Issue 12 item 6: a tag longer than 1024 bytes could grow a tree block past what peers
    // accept (4 MiB), so the source would never replicate.
    let long_tag = vec!["t".repeat(1025)];
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{not json".to_vec(), "JSON"),
        (b"[1,2]".to_vec(), ""),
        (b"{}".to_vec(), "data"),
        (br#"{"data": {"semantics": "s"}}"#.to_vec(), "data"),
        (br#"{"data": [5]}"#.to_vec(), "data[0]"),
        (br#"{"data": [{"name": "n", "payload": 1}]}"#.to_vec(), "semantics"),
        (br#"{"data": [{"semantics": 7, "name": "n", "payload": 1}]}"#.to_vec(), "semantics"),
        (br#"{"data": [{"semantics": "s", "name": "n"}]}"#.to_vec(), "payload"),
        (br#"{"data": [{"semantics": "s", "payload": 1}]}"#.to_vec(), "name"),
        // blank semantics / name (the v1 SDK's decoder would choke on them)
        (br#"{"data": [{"semantics": "  ", "name": "n", "payload": 1}]}"#.to_vec(), "semantics"),
        (br#"{"data": [{"semantics": "s", "name": "", "payload": 1}]}"#.to_vec(), "name"),
        (
            json!({"data": [{"semantics": long, "name": "n", "payload": 1}]}).to_string().into_bytes(),
            "semantics",
        ),
        (br#"{"data": [{"semantics": "s", "name": "n", "payload": 1, "tags": "t"}]}"#.to_vec(), "tags"),
        (br#"{"data": [{"semantics": "s", "name": "n", "payload": 1, "tags": [1]}]}"#.to_vec(), "tags"),
        (br#"{"data": [{"semantics": "s", "name": "n", "payload": 1, "tags": [""]}]}"#.to_vec(), "tags"),
        (
            json!({"data": [{"semantics": "s", "name": "n", "payload": 1, "tags": long_tag}]})
                .to_string()
                .into_bytes(),
            "tags",
        ),
        (
            json!({"data": [{"semantics": "s", "name": "n", "payload": 1, "tags": too_many_tags}]})
                .to_string()
                .into_bytes(),
            "tags",
        ),
        // A bad event later in the batch rejects the whole batch.
        (
            br#"{"data": [{"semantics": "s", "name": "n", "payload": 1}, {"semantics": "", "name": "n", "payload": 2}]}"#.to_vec(),
            "data[1]",
        ),
    ];
    for (body, mentions) in cases {
        let text = String::from_utf8_lossy(&body).to_string();
        let resp = node
            .post_bytes("/api/v1/events/publish", body)
            .await
            .unwrap();
        expect_error(resp, 400, "ERR_BAD_REQUEST", mentions)
            .await
            .unwrap_or_else(|e| panic!("body {text}: {e:#}"));
    }
    assert_eq!(
        node.offsets().await.unwrap(),
        json!({ node.source.clone(): 0 })
    );
    assert_eq!(node.query_all().await.unwrap().len(), 1);
}

#[tokio::test]
async fn query_and_subscribe_reject_bad_input() {
    let node = Node::start().unwrap();
    let s = node.source.clone();
    let query_cases = vec![
        (
            json!({"subscriptions": [{}], "order": "lamport"}),
            "upperBound",
        ),
        (
            json!({"upperBound": {}, "order": "lamport"}),
            "subscriptions",
        ),
        (json!({"upperBound": {}, "subscriptions": [{}]}), "order"),
        (
            json!({"upperBound": {}, "subscriptions": [{}], "order": "random"}),
            "order",
        ),
        (
            json!({"upperBound": {}, "subscriptions": [{}], "order": 1}),
            "order",
        ),
        (
            json!({"upperBound": {s.clone(): -2}, "subscriptions": [{}], "order": "lamport"}),
            "upperBound",
        ),
        (
            json!({"lowerBound": {s.clone(): -5}, "upperBound": {}, "subscriptions": [{}], "order": "lamport"}),
            "lowerBound",
        ),
        (
            json!({"upperBound": {s.clone(): "3"}, "subscriptions": [{}], "order": "lamport"}),
            "upperBound",
        ),
        (
            json!({"upperBound": [], "subscriptions": [{}], "order": "lamport"}),
            "upperBound",
        ),
        (
            json!({"upperBound": {}, "subscriptions": {}, "order": "lamport"}),
            "subscriptions",
        ),
        (
            json!({"upperBound": {}, "subscriptions": [{"semantics": 3}], "order": "lamport"}),
            "subscriptions[0]",
        ),
        (json!([1]), ""),
    ];
    for (body, mentions) in query_cases {
        let resp = node.post("/api/v1/events/query", &body).await.unwrap();
        expect_error(resp, 400, "ERR_BAD_REQUEST", mentions)
            .await
            .unwrap_or_else(|e| panic!("query {body}: {e:#}"));
    }
    let resp = node
        .post_bytes("/api/v1/events/query", b"{\"upperBound\":".to_vec())
        .await
        .unwrap();
    expect_error(resp, 400, "ERR_BAD_REQUEST", "JSON")
        .await
        .unwrap();

    let subscribe_cases = vec![
        (json!({}), "subscriptions"),
        (json!({"subscriptions": "all"}), "subscriptions"),
        (
            json!({"subscriptions": [{}], "lowerBound": {s.clone(): -2}}),
            "lowerBound",
        ),
        (
            json!({"subscriptions": [{}], "lowerBound": 5}),
            "lowerBound",
        ),
    ];
    for (body, mentions) in subscribe_cases {
        let resp = node.post("/api/v1/events/subscribe", &body).await.unwrap();
        expect_error(resp, 400, "ERR_BAD_REQUEST", mentions)
            .await
            .unwrap_or_else(|e| panic!("subscribe {body}: {e:#}"));
    }
}

#[tokio::test]
async fn unknown_paths_and_wrong_methods_answer_json_errors() {
    let node = Node::start().unwrap();
    // `/` is the dashboard (API.md, "Metrics and dashboard"; tests/tests/dashboard.rs).
    for path in [
        "/nothing",
        "/api/v1/nothing",
        "/api/v1/events/publishx",
        "/api/v2/events/offsets",
    ] {
        let resp = node.get(path).await.unwrap();
        expect_error(resp, 404, "ERR_NOT_FOUND", "").await.unwrap();
    }
    let resp = node.get("/api/v1/events/publish").await.unwrap();
    expect_error(resp, 405, "ERR_METHOD_NOT_ALLOWED", "")
        .await
        .unwrap();
    let resp = node
        .post("/api/v1/events/offsets", &json!({}))
        .await
        .unwrap();
    expect_error(resp, 405, "ERR_METHOD_NOT_ALLOWED", "")
        .await
        .unwrap();
    let resp = within(node.http.delete(node.url("/api/v1/events/query")).send())
        .await
        .unwrap();
    expect_error(resp, 405, "ERR_METHOD_NOT_ALLOWED", "")
        .await
        .unwrap();
}

#[tokio::test]
async fn any_content_type_and_chunked_bodies_are_accepted() {
    let node = Node::start().unwrap();
    let body = json!({"data": [event("s", "n", json!(1))]}).to_string();
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/json; charset=utf-8"),
    ] {
        let mut req = node
            .http
            .post(node.url("/api/v1/events/publish"))
            .body(body.clone());
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let resp = within(req.send()).await.unwrap();
        expect_status(&resp, 201).unwrap();
    }
    // Chunked, no Content-Length (what the v1 JS SDK sends), in several pieces.
    let bytes = body.into_bytes();
    let parts: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(7).map(|c| Ok(c.to_vec())).collect();
    let resp = within(
        node.http
            .post(node.url("/api/v1/events/publish"))
            .body(reqwest::Body::wrap_stream(stream::iter(parts)))
            .send(),
    )
    .await
    .unwrap();
    expect_status(&resp, 201).unwrap();
    // Same over raw HTTP, so there is certainly no Content-Length header.
    let chunk = br#"{"data":[{"semantics":"s","name":"n","payload":2}]}"#;
    let mut req = format!(
        "POST /api/v1/events/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n",
        chunk.len()
    )
    .into_bytes();
    req.extend_from_slice(chunk);
    req.extend_from_slice(b"\r\n0\r\n\r\n");
    let (status, _, body) = raw_http(node.api, &req).await.unwrap();
    assert_eq!(status, 201, "{body}");
    assert_eq!(node.offsets().await.unwrap()[&node.source], 5);
}

#[tokio::test]
async fn oversized_bodies_get_413_and_store_nothing() {
    let node =
        Node::start_with(NodeOptions::default().arg("--max-body-bytes").arg("4096")).unwrap();
    let big = json!({"data": [event("s", "n", json!("x".repeat(5000)))]}).to_string();

    // By Content-Length: refused without reading the body (none is sent). Raw HTTP: a client
    // still writing a body the server will not read may see the connection reset instead.
    for path in [
        "/api/v1/events/publish",
        "/api/v1/events/query",
        "/api/v1/events/subscribe",
    ] {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            big.len()
        );
        let (status, _, body) = raw_http(node.api, req.as_bytes()).await.unwrap();
        assert_eq!(status, 413, "{path}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["errorCode"], "ERR_PAYLOAD_TOO_LARGE");
    }

    // Chunked, no Content-Length: refused once what arrived passes the limit (the rest of the
    // body is never sent, so the answer cannot be lost to a reset).
    let mut req = format!(
        "POST /api/v1/events/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n",
        big.len()
    )
    .into_bytes();
    req.extend_from_slice(big.as_bytes());
    req.extend_from_slice(b"\r\n");
    let (status, _, body) = raw_http(node.api, &req).await.unwrap();
    assert_eq!(status, 413, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["errorCode"], "ERR_PAYLOAD_TOO_LARGE");

    assert_eq!(node.offsets().await.unwrap(), json!({}));
    // Just under the limit is fine.
    node.publish(&[event("s", "n", json!("x".repeat(3000)))])
        .await
        .unwrap();
}

#[tokio::test]
async fn an_event_payload_over_the_per_event_limit_is_400_and_stores_nothing() {
    let node = Node::start().unwrap();
    // One event must fit one tree leaf: 1,000,000 bytes of compact JSON (a string's quotes count).
    let fits = json!("x".repeat(1_000_000 - 2));
    let over = json!("x".repeat(1_000_000 - 1));
    let body = json!({"data": [event("s", "n", json!(1)), event("s", "n", over)]});
    let resp = within(
        node.http
            .post(node.url("/api/v1/events/publish"))
            .json(&body)
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["errorCode"], "ERR_BAD_REQUEST");
    let message = err["error"].as_str().unwrap();
    assert!(message.contains("[1].payload"), "{message}");
    assert_eq!(node.offsets().await.unwrap(), json!({}));
    node.publish(&[event("s", "n", fits.clone())])
        .await
        .unwrap();
    let stored = node.query_all().await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["payload"], fits);
}

#[tokio::test]
async fn node_id_and_info() {
    let node = Node::start().unwrap();
    node.publish(&[event("s", "n", json!(1)), event("s", "m", json!(2))])
        .await
        .unwrap();
    let resp = node.get("/api/v1/node/id").await.unwrap();
    expect_status(&resp, 200).unwrap();
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/plain"), "{ct}");
    assert_eq!(within(resp.text()).await.unwrap(), node.source);

    let resp = node.get("/api/v1/node/info").await.unwrap();
    expect_status(&resp, 200).unwrap();
    let info: Value = within(resp.json()).await.unwrap();
    assert_eq!(info["source"], node.source);
    assert!(info["version"].is_string());
    assert!(info["uptimeSecs"].is_u64());
    assert!(info["listenAddrs"].is_array());
    assert!(info["peers"].is_array());
    assert_eq!(info["events"], 2);
    assert!(info["streams"].as_u64().is_some());
    assert!(info["storeBytes"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn streams_send_headers_before_the_first_line() {
    let node = Node::start().unwrap();
    // Nothing matches: the query still answers 200 NDJSON and ends.
    let resp = node
        .post(
            "/api/v1/events/query",
            &json!({"upperBound": {}, "subscriptions": all(), "order": "lamport"}),
        )
        .await
        .unwrap();
    expect_status(&resp, 200).unwrap();
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/x-ndjson"));
    assert!(shoal_tests::Ndjson::new(resp)
        .collect()
        .await
        .unwrap()
        .is_empty());
    // An idle subscription gets its headers at once (reqwest returns only after them).
    let sub = node
        .subscribe(&json!({"subscriptions": all()}))
        .await
        .unwrap();
    assert!(sub.content_type.starts_with("application/x-ndjson"));
}

/// The real v1 JS client (`@actyx/os-sdk` 0.3.1 from npm), installed with `npm ci` from the
/// committed lock file (shared per lockfile). Skipped (with a message) only when the registry
/// cannot be reached.
#[tokio::test]
async fn v1_js_sdk_publish_query_subscribe() {
    let Some(dir) = install_sdk() else { return };
    let node = Node::start().unwrap();
    let script = dir.join("v1_sdk.js");
    let event_uri = format!("http://{}/api/", node.api);
    let console_uri = format!("http://{}/api/", node.console);
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(script)
            .env("AX_EVENT_SERVICE_URI", event_uri)
            .env("AX_CONSOLE_SERVICE_URI", console_uri)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("OK"),
        "SDK script failed:\n{stdout}\n{stderr}"
    );
    // What the SDK did is visible through the API.
    assert_eq!(node.offsets().await.unwrap()[&node.source], 3);
    let logs = shoal_tests::Ndjson::new(
        within(node.http.get(node.console_url("/api/v1/logs")).send())
            .await
            .unwrap(),
    )
    .collect()
    .await
    .unwrap();
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0]["severity"], "warn");
    assert_eq!(logs[0]["additionalData"], json!({"x": 1}));
}

/// tests/js with its packages installed (`shoal_tests::npm::install_from`, shared per lockfile).
fn install_sdk() -> Option<std::path::PathBuf> {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("js");
    shoal_tests::npm::install_from("js", &src).expect("npm ci of tests/js")
}
