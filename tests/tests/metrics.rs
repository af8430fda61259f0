//! `GET /metrics` (issue 14 item 1; API.md "Metrics and dashboard") against real `shoal run`
//! processes, every scrape parsed by the official Python client's parsers (the 0.0.4 text
//! format by default, OpenMetrics when asked for): the families API.md lists are there with
//! help texts, values move as events are published on one node and replicated to another,
//! counters never decrease from one scrape to the next, and a scrape in the middle of a
//! 100,000-event publish is answered (within a generous bound; no timing is asserted). The app
//! metrics move with a real process app (`tests/apps/echo`): running apps, and restarts by the
//! supervisor of a crash-looping one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::json;
use shoal_tests::prometheus::{parse, Exposition};
use shoal_tests::{cli, event, within, Node, NodeOptions, TIMEOUT};

/// Every family API.md promises, by the parser's name (counters without `_total`), and type.
const REQUIRED: [(&str, &str); 11] = [
    ("shoal_events_published", "counter"),
    ("shoal_events_imported", "counter"),
    ("shoal_peers_connected", "gauge"),
    ("shoal_sources_known", "gauge"),
    ("shoal_sync_lag_events", "gauge"),
    ("shoal_blob_bytes_stored", "gauge"),
    ("shoal_store_bytes", "gauge"),
    ("shoal_apps_running", "gauge"),
    ("shoal_app_restarts", "counter"),
    ("shoal_http_requests", "counter"),
    ("shoal_publish_duration_seconds", "histogram"),
];

/// Scrapes `node` in the 0.0.4 format and parses it.
async fn scrape(node: &Node) -> Result<Exposition> {
    let resp = node.get("/metrics").await?;
    ensure!(
        resp.status().as_u16() == 200,
        "/metrics answered {}",
        resp.status()
    );
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    ensure!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "content type {content_type}"
    );
    let text = within(resp.text()).await?;
    tokio::task::spawn_blocking(move || parse(&text, "prometheus")).await?
}

/// A counter or gauge sample's value, 0 when absent.
fn value(m: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    m.value(name, labels).unwrap_or(0.0)
}

/// Scrapes until `done` holds (bounded by [`TIMEOUT`]); returns that scrape.
async fn scrape_until(
    node: &Node,
    what: &str,
    done: impl Fn(&Exposition) -> bool,
) -> Result<Exposition> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let m = scrape(node).await?;
        if done(&m) {
            return Ok(m);
        }
        if Instant::now() > deadline {
            bail!("{what}: never reached within {TIMEOUT:?}; last scrape: {m:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fails if any counter or histogram sample of `now` is below its value in `before`.
fn never_decrease(before: &BTreeMap<String, f64>, now: &Exposition) -> Result<()> {
    let now = now.growing();
    for (key, was) in before {
        if let Some(is) = now.get(key) {
            ensure!(is >= was, "{key} went down: {was} -> {is}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn metrics_parse_and_move_as_events_are_published_and_replicated() -> Result<()> {
    let a = Node::start()?;
    let b = Node::start_with(NodeOptions::default().arg("--peer").arg(a.swarm.clone()))?;

    let first = scrape(&a).await?;
    for (name, kind) in REQUIRED {
        let family = first.family(name)?;
        ensure!(
            family.kind == kind,
            "{name} is a {}, not a {kind}",
            family.kind
        );
        ensure!(!family.help.is_empty(), "{name} has no help text");
    }
    // OpenMetrics too, for scrapers that ask for it.
    let resp = within(
        a.http
            .get(a.url("/metrics"))
            .header("accept", "application/openmetrics-text; version=1.0.0")
            .send(),
    )
    .await?;
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    ensure!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = within(resp.text()).await?;
    let open = tokio::task::spawn_blocking(move || parse(&text, "openmetrics")).await??;
    for (name, _) in REQUIRED {
        open.family(name)?;
    }
    ensure!(value(&first, "shoal_events_published_total", &[]) == 0.0);
    ensure!(
        value(&first, "shoal_apps_running", &[]) == 0.0,
        "no app runs"
    );
    ensure!(
        value(&first, "shoal_store_bytes", &[]) > 0.0,
        "the store has files"
    );

    // Both see each other.
    let connected = |m: &Exposition| value(m, "shoal_peers_connected", &[]) >= 1.0;
    scrape_until(&a, "A connected to B", connected).await?;
    scrape_until(&b, "B connected to A", connected).await?;

    let mut history = vec![scrape(&a).await?.growing()];
    for i in 0..5 {
        let batch: Vec<_> = (0..2)
            .map(|j| event("metrics", "counts", json!({"i": i, "j": j})))
            .collect();
        a.publish(&batch).await?;
        let now = scrape(&a).await?;
        for before in &history {
            never_decrease(before, &now)?;
        }
        history.push(now.growing());
    }
    let after = scrape(&a).await?;
    ensure!(value(&after, "shoal_events_published_total", &[]) == 10.0);
    ensure!(value(&after, "shoal_publish_duration_seconds_count", &[]) == 5.0);
    let in_first_buckets = value(
        &after,
        "shoal_publish_duration_seconds_bucket",
        &[("le", "10.0")],
    );
    ensure!(
        in_first_buckets == 5.0,
        "publishes slower than 10 s: {after:?}"
    );
    ensure!(value(&after, "shoal_publish_duration_seconds_sum", &[]) > 0.0);
    let publishes = value(
        &after,
        "shoal_http_requests_total",
        &[("route", "/api/v1/events/publish"), ("code", "201")],
    );
    ensure!(publishes == 5.0, "publish requests counted: {publishes}");
    let scrapes = value(
        &after,
        "shoal_http_requests_total",
        &[("route", "/metrics"), ("code", "200")],
    );
    ensure!(scrapes >= 7.0, "scrapes counted: {scrapes}");

    // A raw path is counted under its pattern, an unknown one under "other".
    within(a.http.get(a.url("/api/v1/blobs/not-a-cid")).send()).await?;
    within(a.http.get(a.url("/no/such/path/at/all")).send()).await?;
    let m = scrape(&a).await?;
    ensure!(
        value(
            &m,
            "shoal_http_requests_total",
            &[("route", "/api/v1/blobs/{cid}")]
        ) >= 1.0
    );
    ensure!(
        value(
            &m,
            "shoal_http_requests_total",
            &[("route", "other"), ("code", "404")]
        ) == 1.0
    );
    let routes: Vec<String> = m
        .family("shoal_http_requests")?
        .samples
        .iter()
        .filter_map(|s| s.labels.get("route").cloned())
        .collect();
    ensure!(
        routes
            .iter()
            .all(|r| !r.contains("not-a-cid") && !r.contains("no/such")),
        "{routes:?}"
    );

    // Replicated to B: imported there, not published; A's source known and stored, no lag.
    let b_m = scrape_until(&b, "B imported A's 10 events", |m| {
        value(m, "shoal_events_imported_total", &[]) >= 10.0
    })
    .await?;
    ensure!(
        value(&b_m, "shoal_events_imported_total", &[]) == 10.0,
        "{b_m:?}"
    );
    ensure!(value(&b_m, "shoal_events_published_total", &[]) == 0.0);
    ensure!(value(&b_m, "shoal_sources_known", &[]) >= 1.0);
    let b_settled = scrape_until(&b, "B has no lag", |m| {
        m.family("shoal_sync_lag_events")
            .map(|f| f.samples.is_empty())
            .unwrap_or(false)
    })
    .await?;
    ensure!(value(&b_settled, "shoal_sources_lagging", &[]) == 0.0);

    // A blob uploaded on A counts its bytes there.
    let resp = within(
        a.http
            .post(a.url("/api/v1/blobs"))
            .header("content-type", "application/octet-stream")
            .body(vec![7u8; 300_000])
            .send(),
    )
    .await?;
    ensure!(
        resp.status().as_u16() == 201,
        "blob upload: {}",
        resp.status()
    );
    let m = scrape(&a).await?;
    ensure!(
        value(&m, "shoal_blob_bytes_stored", &[]) == 300_000.0,
        "{:?}",
        m.family("shoal_blob_bytes_stored")
    );
    for before in &history {
        never_decrease(before, &m)?;
    }
    Ok(())
}

#[tokio::test]
async fn a_scrape_during_a_100k_event_publish_is_answered() -> Result<()> {
    const CLIENTS: usize = 4;
    const BATCHES: usize = 25;
    const BATCH: usize = 1000;
    let node = Node::start()?;
    // Each client stops half-way until a scrape has landed mid-publish: on a quiet machine the
    // whole publish can end before the first scrape does (CI failed so), and the test must not
    // depend on the machine's speed. Scrapes before that point run under the full load.
    let (scraped, scraped_rx) = tokio::sync::watch::channel(false);
    let publishers: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let http = node.http.clone();
            let url = node.url("/api/v1/events/publish");
            let mut scraped = scraped_rx.clone();
            tokio::spawn(async move {
                for b in 0..BATCHES {
                    if b == BATCHES / 2 {
                        scraped.wait_for(|s| *s).await?;
                    }
                    let data: Vec<_> = (0..BATCH)
                        .map(|i| event("load", "bulk", json!({"c": c, "b": b, "i": i})))
                        .collect();
                    let resp =
                        within(http.post(&url).json(&json!({ "data": data })).send()).await?;
                    ensure!(resp.status().as_u16() == 201, "publish: {}", resp.status());
                }
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    let mut scrapes_during = 0;
    let mut last: Option<BTreeMap<String, f64>> = None;
    while !publishers.iter().all(|p| p.is_finished()) {
        // Generous: only a hung or starved scrape fails this.
        let m = tokio::time::timeout(Duration::from_secs(20), scrape(&node))
            .await
            .context("a scrape during the publish took longer than 20 s")??;
        let published = value(&m, "shoal_events_published_total", &[]);
        if published > 0.0 && published < (CLIENTS * BATCHES * BATCH) as f64 {
            scrapes_during += 1;
            scraped.send_replace(true);
        }
        if let Some(before) = &last {
            never_decrease(before, &m)?;
        }
        last = Some(m.growing());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for p in publishers {
        p.await??;
    }
    ensure!(
        scrapes_during >= 1,
        "no scrape landed while the publish ran"
    );
    let m = scrape(&node).await?;
    ensure!(value(&m, "shoal_events_published_total", &[]) == 100_000.0);
    ensure!(value(&m, "shoal_publish_duration_seconds_count", &[]) == (CLIENTS * BATCHES) as f64);
    Ok(())
}

/// `shoal <args> --node <node>`; fails with its output unless it succeeds.
fn shoal(node: &Node, args: &[&str]) -> Result<String> {
    let url = node.url("");
    let mut all = args.to_vec();
    all.extend(["--node", url.trim_end_matches('/')]);
    let out = cli(&all, None)?;
    ensure!(
        out.status.success(),
        "shoal {args:?}: {}{}",
        out.stdout,
        out.stderr
    );
    Ok(out.stdout)
}

#[tokio::test]
async fn app_metrics_count_running_apps_and_supervisor_restarts() -> Result<()> {
    const ECHO: &str = "com.example.echo";
    let restarts = |m: &Exposition| value(m, "shoal_app_restarts_total", &[("app", ECHO)]);
    let running = |m: &Exposition| value(m, "shoal_apps_running", &[]);
    let node = Node::start()?;
    let echo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("apps/echo");
    shoal(&node, &["apps", "deploy", echo.to_str().context("path")?])?;
    let up = scrape_until(&node, "one app running", |m| running(m) == 1.0).await?;
    ensure!(restarts(&up) == 0.0, "no restart yet: {up:?}");

    // Each start exits 3: under `on-failure` the supervisor restarts it (1 s, 2 s, ... backoff).
    // The settings change itself restarts it too, but that is not counted (API.md).
    shoal(
        &node,
        &["settings", "set", ECHO, r#"{"greeting": "x", "exit": 3}"#],
    )?;
    let mut before = up.growing();
    let looping = scrape_until(&node, "two supervisor restarts", |m| restarts(m) >= 2.0).await?;
    never_decrease(&before, &looping)?;
    before = looping.growing();
    let listed: Vec<serde_json::Value> = within(node.get("/api/v1/apps").await?.json()).await?;
    let listed = listed[0]["restarts"].as_u64().context("restarts")? as f64;
    let now = scrape(&node).await?;
    ensure!(
        restarts(&now) >= listed,
        "the counter ({}) is behind the app list ({listed})",
        restarts(&now)
    );

    // Valid settings again: it runs; the counter keeps what it counted (the list's `restarts`
    // starts again at 0 after an operator action, a counter never goes down).
    shoal(&node, &["settings", "set", ECHO, r#"{"greeting": "y"}"#])?;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let list: Vec<serde_json::Value> = within(node.get("/api/v1/apps").await?.json()).await?;
        if list[0]["state"] == "running" && list[0]["restarts"] == 0 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "never ran with valid settings: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let steady = scrape_until(&node, "running again", |m| running(m) == 1.0).await?;
    never_decrease(&before, &steady)?;
    ensure!(restarts(&steady) >= 2.0);
    shoal(&node, &["apps", "stop", ECHO])?;
    let stopped = scrape_until(&node, "no app running", |m| running(m) == 0.0).await?;
    never_decrease(&steady.growing(), &stopped)?;
    Ok(())
}
