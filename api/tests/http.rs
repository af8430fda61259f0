//! The events and node API over a real bound server: status codes, the error format of every
//! documented error (including warp's own rejections), body handling (chunked, any content
//! type, limits), NDJSON headers and keep-alives. Every wait is bounded by a timeout.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use shoal_api::origin::Guard;
use shoal_api::{routes, ApiConfig, HttpServer};
use shoal_engine::{Config, Node};

const WAIT: Duration = Duration::from_secs(30);
const LIMIT: u64 = 4096;

struct Fixture {
    _dir: tempfile::TempDir,
    node: Node,
    server: HttpServer,
    http: reqwest::Client,
}

impl Fixture {
    async fn start() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::start(Config::for_tests(dir.path())).await.unwrap();
        let config = ApiConfig {
            max_body_bytes: LIMIT,
            keepalive: Duration::from_millis(100),
        };
        let addr = "127.0.0.1:0".parse().unwrap();
        let server = HttpServer::bind(
            addr,
            Guard::default(),
            routes(node.handle(), config, Default::default()),
        )
        .await
        .unwrap();
        Fixture {
            _dir: dir,
            node,
            server,
            http: reqwest::Client::builder().timeout(WAIT).build().unwrap(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.local_addr())
    }

    async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .body(body)
            .send()
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.node.signal_shutdown();
        self.server.shutdown().await;
        self.node.shutdown().await;
    }
}

/// Asserts an error answer: status, `errorCode`, and that the message mentions `needle`.
async fn assert_error(resp: reqwest::Response, status: u16, code: &str, needle: &str) {
    assert_eq!(resp.status().as_u16(), status);
    assert!(resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v == "application/json"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errorCode"], code, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(message.contains(needle), "`{message}` lacks `{needle}`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warp_rejections_use_the_error_format() {
    let f = Fixture::start().await;
    let resp = f.http.get(f.url("/nope")).send().await.unwrap();
    assert_error(resp, 404, "ERR_NOT_FOUND", "").await;
    let resp = f
        .http
        .get(f.url("/api/v1/events/publish"))
        .send()
        .await
        .unwrap();
    assert_error(resp, 405, "ERR_METHOD_NOT_ALLOWED", "").await;
    let resp = f.post("/api/v1/events/offsets", "{}").await;
    assert_error(resp, 405, "ERR_METHOD_NOT_ALLOWED", "").await;
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_validation_names_the_field_and_stores_nothing() {
    let f = Fixture::start().await;
    let cases: &[(&str, &str)] = &[
        ("{", "malformed JSON"),
        ("[]", "object"),
        ("{}", "data"),
        (r#"{"data":[]}"#, "data"),
        (
            r#"{"data":[{"name":"n","payload":1}]}"#,
            "data[0].semantics",
        ),
        (
            r#"{"data":[{"semantics":" \t","name":"n","payload":1}]}"#,
            "data[0].semantics",
        ),
        (
            r#"{"data":[{"semantics":"s","name":"","payload":1}]}"#,
            "data[0].name",
        ),
        (
            r#"{"data":[{"semantics":"s","name":"n"}]}"#,
            "data[0].payload",
        ),
        (
            r#"{"data":[{"semantics":"s","name":"n","payload":1},{"semantics":"s","name":"n","payload":1,"tags":[""]}]}"#,
            "data[1].tags",
        ),
        (
            r#"{"data":[{"semantics":"s","name":"n","payload":1,"tags":"x"}]}"#,
            "data[0].tags",
        ),
    ];
    for (body, needle) in cases {
        let resp = f.post("/api/v1/events/publish", *body).await;
        assert_error(resp, 400, "ERR_BAD_REQUEST", needle).await;
    }
    let long = "x".repeat(1025);
    let body = json!({"data":[{"semantics":"s","name":long,"payload":1}]}).to_string();
    // Still under the body limit, so the name rule (not the size rule) answers.
    assert!((body.len() as u64) < LIMIT);
    assert_error(
        f.post("/api/v1/events/publish", body).await,
        400,
        "ERR_BAD_REQUEST",
        "data[0].name",
    )
    .await;
    let offsets: Value = f
        .http
        .get(f.url("/api/v1/events/offsets"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(offsets, json!({}));
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_chunked_any_content_type_and_limits() {
    let f = Fixture::start().await;
    let event = json!({"data":[{"semantics":"s","name":"n","payload":{"k":[1,2]},"unknown":true}],"extra":1});
    // No content type at all, and a wrong one: still JSON.
    let resp = f.post("/api/v1/events/publish", event.to_string()).await;
    assert_eq!(resp.status().as_u16(), 201);
    let resp = f
        .http
        .post(f.url("/api/v1/events/publish"))
        .header("content-type", "text/plain")
        .body(event.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    // Chunked, no Content-Length: accepted (never 411).
    let chunks: Vec<Result<String, std::io::Error>> = vec![
        Ok(r#"{"data":[{"semantics":"s","#.into()),
        Ok(r#""name":"n","payload":3}]}"#.into()),
    ];
    let resp = f
        .post(
            "/api/v1/events/publish",
            reqwest::Body::wrap_stream(futures::stream::iter(chunks)),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 201);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["data"][0]["offset"], 2);
    assert_eq!(body["data"][0]["source"], f.node.source().to_string());
    assert!(body["data"][0]["lamport"].as_u64().unwrap() >= 3);
    assert!(body["data"][0]["timestamp"].as_u64().unwrap() > 0);
    // Over the limit with a Content-Length: 413.
    let big = "x".repeat(LIMIT as usize + 1);
    assert_error(
        f.post("/api/v1/events/publish", big.clone()).await,
        413,
        "ERR_PAYLOAD_TOO_LARGE",
        "",
    )
    .await;
    // Over the limit chunked: 413 as well.
    let chunks: Vec<Result<String, std::io::Error>> = big
        .as_bytes()
        .chunks(1000)
        .map(|c| Ok(String::from_utf8(c.to_vec()).unwrap()))
        .collect();
    let resp = f
        .post(
            "/api/v1/events/query",
            reqwest::Body::wrap_stream(futures::stream::iter(chunks)),
        )
        .await;
    assert_error(resp, 413, "ERR_PAYLOAD_TOO_LARGE", "").await;
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_validation_and_ndjson() {
    let f = Fixture::start().await;
    for (body, needle) in [
        (
            json!({"subscriptions":[{}],"order":"lamport"}),
            "upperBound",
        ),
        (json!({"upperBound":{},"order":"lamport"}), "subscriptions"),
        (json!({"upperBound":{},"subscriptions":[{}]}), "order"),
        (
            json!({"upperBound":{},"subscriptions":[{}],"order":"sideways"}),
            "order",
        ),
        (
            json!({"upperBound":{"a":-2},"subscriptions":[{}],"order":"lamport"}),
            "upperBound.a",
        ),
        (
            json!({"lowerBound":{"a":"x"},"upperBound":{},"subscriptions":[{}],"order":"lamport"}),
            "lowerBound.a",
        ),
        (
            json!({"upperBound":{},"subscriptions":[{"name":1}],"order":"lamport"}),
            "subscriptions[0].name",
        ),
    ] {
        let resp = f.post("/api/v1/events/query", body.to_string()).await;
        assert_error(resp, 400, "ERR_BAD_REQUEST", needle).await;
    }
    let resp = f
        .post(
            "/api/v1/events/subscribe",
            json!({"lowerBound":{"a":-5},"subscriptions":[]}).to_string(),
        )
        .await;
    assert_error(resp, 400, "ERR_BAD_REQUEST", "lowerBound.a").await;

    // Nothing matches: 200, NDJSON, empty body.
    let resp = f
        .post(
            "/api/v1/events/query",
            json!({"upperBound":{},"subscriptions":[{}],"order":"lamport"}).to_string(),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    assert_eq!(resp.text().await.unwrap(), "");

    let data: Vec<Value> = (0..5)
        .map(|i| json!({"semantics":"s","name": if i % 2 == 0 {"even"} else {"odd"},"payload":i,"tags":["t"]}))
        .collect();
    let resp = f
        .post("/api/v1/events/publish", json!({"data": data}).to_string())
        .await;
    assert_eq!(resp.status().as_u16(), 201);
    let source = f.node.source().to_string();
    let query = json!({
        "lowerBound": {source.clone(): 0},
        "upperBound": {source.clone(): 3},
        "subscriptions": [{"name":"even"}, {"name":"odd","source":source.clone()}],
        "order": "lamport-reverse"
    });
    let text = f
        .post("/api/v1/events/query", query.to_string())
        .await
        .text()
        .await
        .unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(text.ends_with('\n'));
    assert_eq!(
        lines
            .iter()
            .map(|l| l["offset"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![3, 2, 1]
    );
    assert_eq!(
        lines[0]["stream"],
        json!({"semantics":"s","name":"odd","source":source})
    );
    assert_eq!(lines[0]["payload"], 3);
    assert_eq!(lines[0]["tags"], json!(["t"]));
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_sends_headers_at_once_keepalives_and_live_events() {
    let f = Fixture::start().await;
    // Headers arrive before any event exists.
    let resp = f
        .post(
            "/api/v1/events/subscribe",
            json!({"subscriptions":[{"semantics":"live"}]}).to_string(),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let mut body = resp.bytes_stream();
    // An idle subscription sends bare newlines.
    let first = tokio::time::timeout(WAIT, body.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"\n");
    let resp = f
        .post(
            "/api/v1/events/publish",
            json!({"data":[{"semantics":"live","name":"n","payload":"hi"}]}).to_string(),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 201);
    let line = tokio::time::timeout(WAIT, async {
        loop {
            let chunk = body.next().await.unwrap().unwrap();
            let text = String::from_utf8(chunk.to_vec()).unwrap();
            if let Some(line) = text.lines().find(|l| !l.is_empty()) {
                return line.to_string();
            }
        }
    })
    .await
    .unwrap();
    let event: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["payload"], "hi");
    assert_eq!(event["offset"], 0);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_id_and_info() {
    let f = Fixture::start().await;
    let resp = f.http.get(f.url("/api/v1/node/id")).send().await.unwrap();
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert_eq!(resp.text().await.unwrap(), f.node.source().to_string());
    let info: Value = f
        .http
        .get(f.url("/api/v1/node/info"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for field in [
        "source",
        "version",
        "uptimeSecs",
        "listenAddrs",
        "peers",
        "streams",
        "events",
        "storeBytes",
    ] {
        assert!(info.get(field).is_some(), "info lacks {field}: {info}");
    }
    f.stop().await;
}
