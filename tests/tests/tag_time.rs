//! Tag and time filters (API.md's filter extensions `tags`, `fromTime`, `toTime`) over real HTTP
//! and the real CLI, against a brute-force model: proptest generates event sets (random
//! semantics, names, tag sets, published in random batches so timestamps differ) and filters
//! (random tags, semantics and time bounds drawn from the events' own timestamps); every query,
//! subscription and `shoal events query --tag/--since/--until` must return exactly the events a
//! filtered `Vec` holds, in order.

use proptest::prelude::*;
use serde_json::{json, Value};
use shoal_tests::{cli, Node};
use std::time::Duration;

const SEMANTICS: [&str; 2] = ["machine", "robot"];
const TAGS: [&str; 4] = ["line-1", "line-2", "alarm", "shift-a"];

/// One event as the model keeps it.
#[derive(Debug, Clone)]
struct Model {
    offset: u64,
    timestamp: u64,
    semantics: &'static str,
    tags: Vec<&'static str>,
}

/// A filter as generated: semantics, tag bits, indices of the events whose timestamps bound it.
#[derive(Debug, Clone)]
struct Spec {
    semantics: Option<usize>,
    tags: u8,
    from: Option<usize>,
    to: Option<usize>,
    /// Shift the bound by one µs (exercises inclusiveness on both sides of an event).
    nudge: i8,
}

fn tag_list(bits: u8) -> Vec<&'static str> {
    TAGS.iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, t)| *t)
        .collect()
}

fn bound(model: &[Model], i: Option<usize>, nudge: i8) -> Option<u64> {
    let t = model[i? % model.len()].timestamp;
    Some(t.saturating_add_signed(nudge as i64))
}

impl Spec {
    /// The time bounds, ordered (an inverted range is a 400, tested on its own below).
    fn bounds(&self, model: &[Model]) -> (Option<u64>, Option<u64>) {
        let from = bound(model, self.from, self.nudge);
        let to = bound(model, self.to, -self.nudge);
        match (from, to) {
            (Some(f), Some(t)) if f > t => (Some(t), Some(f)),
            other => other,
        }
    }

    /// The API filter, and the model's answer over `model` followed by `extra` (bounds are
    /// drawn from `model` only).
    fn apply(&self, model: &[Model], extra: &[Model]) -> (Value, Vec<u64>) {
        let (from, to) = self.bounds(model);
        let tags = tag_list(self.tags);
        let semantics = self.semantics.map(|s| SEMANTICS[s]);
        let mut filter = serde_json::Map::new();
        if let Some(s) = semantics {
            filter.insert("semantics".into(), json!(s));
        }
        if !tags.is_empty() {
            filter.insert("tags".into(), json!(tags));
        }
        if let Some(f) = from {
            filter.insert("fromTime".into(), json!(f));
        }
        if let Some(t) = to {
            filter.insert("toTime".into(), json!(t));
        }
        let want = model
            .iter()
            .chain(extra)
            .filter(|m| semantics.is_none_or(|s| s == m.semantics))
            .filter(|m| tags.iter().all(|t| m.tags.contains(t)))
            .filter(|m| from.is_none_or(|f| m.timestamp >= f))
            .filter(|m| to.is_none_or(|t| m.timestamp <= t))
            .map(|m| m.offset)
            .collect();
        (Value::Object(filter), want)
    }
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        proptest::option::of(0..2usize),
        0u8..16,
        proptest::option::of(any::<usize>()),
        proptest::option::of(any::<usize>()),
        -1i8..=1,
    )
        .prop_map(|(semantics, tags, from, to, nudge)| Spec {
            semantics,
            tags,
            from,
            to,
            nudge,
        })
}

/// Batches of (semantics, tag bits) events.
fn batches() -> impl Strategy<Value = Vec<Vec<(usize, u8)>>> {
    proptest::collection::vec(proptest::collection::vec((0..2usize, 0u8..16), 1..8), 3..12)
}

fn offsets(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["offset"].as_u64().expect("offset"))
        .collect()
}

async fn publish_all(node: &Node, batches: &[Vec<(usize, u8)>]) -> Vec<Model> {
    let mut model = Vec::new();
    for batch in batches {
        let events: Vec<Value> = batch
            .iter()
            .map(|(s, bits)| {
                json!({"semantics": SEMANTICS[*s], "name": "n", "payload": {"s": s},
                       "tags": tag_list(*bits)})
            })
            .collect();
        let stamps = node.publish(&events).await.expect("publish");
        for ((s, bits), stamp) in batch.iter().zip(stamps) {
            model.push(Model {
                offset: stamp["offset"].as_u64().expect("offset"),
                timestamp: stamp["timestamp"].as_u64().expect("timestamp"),
                semantics: SEMANTICS[*s],
                tags: tag_list(*bits),
            });
        }
    }
    model
}

/// The CLI's flags for `spec`; both time forms are used: bounds drawn from even indices as µs,
/// odd ones as RFC 3339 with microsecond precision.
fn cli_args(spec: &Spec, model: &[Model]) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(s) = spec.semantics {
        args.extend(["--semantics".to_string(), SEMANTICS[s].to_string()]);
    }
    for t in tag_list(spec.tags) {
        args.extend(["--tag".to_string(), t.to_string()]);
    }
    let as_text = |us: u64, rfc: bool| {
        if rfc {
            rfc3339(us / 1_000_000, us % 1_000_000)
        } else {
            us.to_string()
        }
    };
    let (from, to) = spec.bounds(model);
    if let Some(f) = from {
        args.extend([
            "--since".to_string(),
            as_text(f, spec.from.unwrap_or(0) % 2 == 1),
        ]);
    }
    if let Some(t) = to {
        args.extend([
            "--until".to_string(),
            as_text(t, spec.to.unwrap_or(0) % 2 == 1),
        ]);
    }
    args
}

/// `secs` since the epoch plus `micros` as RFC 3339 UTC (civil-from-days, Howard Hinnant's
/// algorithm), so the test does not trust the code under test to format it.
fn rfc3339(secs: u64, micros: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

async fn check_case(batches: Vec<Vec<(usize, u8)>>, specs: Vec<Spec>) {
    let node = Node::start().expect("node");
    let model = publish_all(&node, &batches).await;
    let upper = node.offsets().await.expect("offsets");
    let url = format!("http://{}", node.api);
    // Markers published by earlier subscription checks: later subscriptions see them too.
    let mut markers: Vec<Model> = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let (filter, want) = spec.apply(&model, &[]);
        let (_, want_live) = spec.apply(&model, &markers);
        for order in ["lamport", "lamport-reverse", "source-ordered"] {
            let got = node
                .query(&json!({"upperBound": upper, "subscriptions": [filter], "order": order}))
                .await
                .expect("query");
            let mut want = want.clone();
            if order == "lamport-reverse" {
                want.reverse();
            }
            assert_eq!(offsets(&got), want, "query {order} {filter}");
        }
        // Subscribe: the stored matches, then nothing else before a live marker event that
        // only a second filter admits (so no extra event can hide behind a quiet period).
        let marker = format!("marker-{i}");
        let mut sub = node
            .subscribe(&json!({"subscriptions": [filter, {"name": marker}]}))
            .await
            .expect("subscribe");
        let stored = sub.take(want_live.len()).await.expect("stored matches");
        assert_eq!(offsets(&stored), want_live, "subscribe {filter}");
        let stamp = node
            .publish(&[json!({"semantics": "x", "name": marker, "payload": null})])
            .await
            .expect("marker");
        markers.push(Model {
            offset: stamp[0]["offset"].as_u64().expect("offset"),
            timestamp: stamp[0]["timestamp"].as_u64().expect("timestamp"),
            semantics: "x",
            tags: Vec::new(),
        });
        let next = sub
            .next_within(Duration::from_secs(20))
            .await
            .expect("marker event")
            .expect("the subscription ended");
        assert_eq!(next["stream"]["name"], json!(marker), "{filter}");
        // The CLI, for every other filter (a process each).
        if i % 2 == 0 {
            let mut args: Vec<String> = ["events", "query", "--json", "--node", &url]
                .iter()
                .map(|s| s.to_string())
                .collect();
            args.extend(["--to".to_string(), upper.to_string()]);
            args.extend(cli_args(spec, &model));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = cli(&args, None).expect("cli");
            assert!(out.status.success(), "{args:?}: {}", out.stderr);
            let lines: Vec<Value> = out
                .stdout
                .lines()
                .map(|l| serde_json::from_str(l).expect("NDJSON"))
                .collect();
            assert_eq!(offsets(&lines), want, "cli {args:?}");
        }
    }
}

proptest! {
    // Each case starts a node process and runs ~20 requests and a few CLI processes.
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn tag_and_time_filters_agree_with_a_filtered_vec(
        batches in batches(),
        specs in proptest::collection::vec(spec(), 4..8),
    ) {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(check_case(batches, specs));
    }
}

#[tokio::test]
async fn bad_time_bounds_are_refused_with_the_path_and_cli_says_what_to_do() {
    let node = Node::start().unwrap();
    let resp = node
        .post(
            "/api/v1/events/query",
            &json!({"upperBound": {}, "subscriptions": [{}, {"fromTime": 9, "toTime": 3}],
                    "order": "lamport"}),
        )
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errorCode"], "ERR_BAD_REQUEST");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("subscriptions[1]: fromTime 9 is after toTime 3"),
        "{body}"
    );
    let url = format!("http://{}", node.api);
    let out = cli(
        &["events", "query", "--node", &url, "--since", "yesterday"],
        None,
    )
    .unwrap();
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("--since `yesterday`") && out.stderr.contains("RFC 3339"),
        "{}",
        out.stderr
    );
    let out = cli(
        &[
            "events",
            "subscribe",
            "--node",
            &url,
            "--since",
            "10",
            "--until",
            "5",
        ],
        None,
    )
    .unwrap();
    assert!(!out.status.success());
    assert!(out.stderr.contains("is after --until"), "{}", out.stderr);
}

#[test]
fn rfc3339_helper_is_right() {
    assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000Z");
    assert_eq!(rfc3339(1_700_000_000, 5), "2023-11-14T22:13:20.000005Z");
}
