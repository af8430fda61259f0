//! The WebSocket store API for Actyx Pond apps (issue 7), against real `shoal run` processes.
//!
//! - Rust-side tests speak the wire protocol directly (`pond/ws.rs`): every service, the
//!   framing errors, cancel, and a client that never reads.
//! - The Pond tests (`pond/npm.rs`) run the REAL `@actyx/pond` packages from npm (1.1.0, 2.7.0,
//!   3.x), installed by the test with `npm ci` from the lockfiles committed under `tests/pond/`
//!   into a scratch directory (never vendored). If npm cannot reach its registry they are skipped
//!   with a printed reason; any other failure fails.

#[path = "pond/npm.rs"]
mod npm;
#[path = "pond/ws.rs"]
mod ws;

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use shoal_tests::{Node, TIMEOUT};
use ws::{events_request, unstored, Client};

const PERSIST: &str = "/ax/events/persistEvents";
const PERSISTED: &str = "/ax/events/requestPersistedEvents";
const ALL: &str = "/ax/events/requestAllEvents";
const CONNECTIVITY: &str = "/ax/events/requestConnectivity";

fn tags_set(tags: &[&str]) -> Value {
    json!({"type":"tags","subscriptions":[{"tags": tags, "local": false}]})
}

#[tokio::test]
async fn source_id_persist_and_read_back() -> Result<()> {
    let node = Node::start()?;
    let mut c = Client::connect(node.store).await?;
    let src = c.call("/ax/events/getSourceId", Value::Null).await?;
    assert_eq!(src, node.source);

    // A live tag subscription first, then a publish: it sees stored and live events.
    let live = c
        .request(ALL, events_request(tags_set(&["robot"]), "eventKey"))
        .await?;
    let stored = c
        .call(
            PERSIST,
            json!({"events": [
                unstored("_t_", "_t_", &["robot", "robot:1"], json!({"n": 1})),
                unstored("_t_", "_t_", &["other"], json!({"n": 2})),
                unstored("_t_", "_t_", &["robot"], json!(null)),
            ]}),
        )
        .await?;
    let stored = stored["events"].as_array().context("events")?.clone();
    assert_eq!(stored.len(), 3);
    assert_eq!(stored[0]["psn"], 0);
    assert_eq!(stored[2]["psn"], 2);
    assert_eq!(
        stored[0]["timestamp"], 1_000_000,
        "the client's timestamp is kept"
    );
    assert_eq!(stored[0]["sourceId"], node.source);
    let got = c.events(live, 2).await?;
    assert_eq!(got[0]["payload"], json!({"n": 1}));
    assert_eq!(got[1]["payload"], Value::Null);
    assert_eq!(got[0]["tags"], json!(["robot", "robot:1"]));

    // Persisted: only stored events, then complete; reverse order works.
    let id = c
        .request(
            PERSISTED,
            events_request(json!({"type":"all"}), "reverseEventKey"),
        )
        .await?;
    let all: Vec<Value> = c
        .collect(id)
        .await?
        .into_iter()
        .flat_map(|p| p.as_array().cloned().unwrap_or_default())
        .collect();
    let psns: Vec<u64> = all.iter().filter_map(|e| e["psn"].as_u64()).collect();
    assert_eq!(psns, vec![2, 1, 0]);

    // The same events over v1, with their tags.
    let v1 = node.query_all().await?;
    assert_eq!(v1.len(), 3);
    assert_eq!(v1[0]["tags"], json!(["robot", "robot:1"]));

    // A v1 event without tags reaches a tag subscription through its implicit tags.
    let implicit = c
        .request(
            ALL,
            events_request(tags_set(&["semantics:machine", "fish_name:m1"]), "eventKey"),
        )
        .await?;
    node.publish(&[
        shoal_tests::event("machine", "m1", json!({"v": 1})),
        shoal_tests::event("machine", "m2", json!({"v": 2})),
    ])
    .await?;
    let got = c.events(implicit, 1).await?;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["name"], "m1");
    assert_eq!(got[0]["tags"], json!([]));

    // requestPresent pushes the new offsets.
    let present = c.request("/ax/events/requestPresent", Value::Null).await?;
    let p = c.next(present).await?;
    assert_eq!(p["psns"][&node.source], 4);
    assert_eq!(p["default"], "min");
    c.call(
        PERSIST,
        json!({"events": [unstored("a", "b", &[], json!(1))]}),
    )
    .await?;
    let p = c.next(present).await?;
    assert_eq!(p["psns"][&node.source], 5);
    Ok(())
}

#[tokio::test]
async fn bounded_requests_complete() -> Result<()> {
    let node = Node::start()?;
    let mut c = Client::connect(node.store).await?;
    let events: Vec<Value> = (0..10).map(|i| unstored("s", "n", &[], json!(i))).collect();
    c.call(PERSIST, json!({"events": events})).await?;
    let src = node.source.clone();
    // (2, 6] of this source.
    let mut req = events_request(
        json!({"type":"or","subscriptions":[{"semantics":"s","name":"","sourceId":""}]}),
        "eventKey",
    );
    req["fromPsnsExcluding"] = json!({"psns": {&src: 2}, "default": "min"});
    req["toPsnsIncluding"] = json!({"psns": {&src: 6}, "default": "min"});
    let id = c.request(PERSISTED, req.clone()).await?;
    let got: Vec<u64> = c
        .collect(id)
        .await?
        .iter()
        .flat_map(|p| p.as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["psn"].as_u64())
        .collect();
    assert_eq!(got, vec![3, 4, 5, 6]);
    // requestAllEvents with a finite bound completes once it is reached: bound 12 needs two
    // more events.
    req["toPsnsIncluding"] = json!({"psns": {&src: 11}, "default": "min"});
    let id = c.request(ALL, req).await?;
    let first = c.events(id, 7).await?;
    assert_eq!(first.len(), 7);
    c.call(PERSIST, json!({"events": [unstored("s", "n", &[], json!(10)), unstored("s", "n", &[], json!(11)), unstored("s", "n", &[], json!(12))]}))
        .await?;
    let rest: Vec<u64> = c
        .collect(id)
        .await?
        .iter()
        .flat_map(|p| p.as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["psn"].as_u64())
        .collect();
    assert_eq!(rest, vec![10, 11]);
    // count limits.
    let mut req = events_request(json!({"type":"all"}), "eventKey");
    req["count"] = json!(3);
    let id = c.request(PERSISTED, req).await?;
    let n: usize = c
        .collect(id)
        .await?
        .iter()
        .map(|p| p.as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(n, 3);
    Ok(())
}

#[tokio::test]
async fn bad_frames_unknown_services_and_cancels() -> Result<()> {
    let node = Node::start()?;
    let mut c = Client::connect(node.store).await?;
    c.send_text("this is not json").await?;
    let e = c.frame_for(-1).await?;
    assert_eq!(e["type"], "error");
    assert_eq!(e["kind"]["type"], "badRequest");
    c.send_text(r#"{"type":"request","serviceId":"x"}"#).await?;
    let e = c.frame_for(-1).await?;
    assert!(
        e["kind"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("requestId"),
        "{e}"
    );
    c.ws_binary().await?;
    let e = c.frame_for(-1).await?;
    assert_eq!(e["kind"]["type"], "badRequest");

    let id = c.request("/ax/no/such", Value::Null).await?;
    let e = c.frame_for(id as i64).await?;
    assert_eq!(e["kind"]["type"], "unknownEndpoint");
    assert_eq!(e["kind"]["endpoint"], "/ax/no/such");

    let id = c
        .request(
            PERSIST,
            json!({"events": [{"semantics": "s", "name": 5, "payload": 1}]}),
        )
        .await?;
    let e = c.frame_for(id as i64).await?;
    assert_eq!(e["kind"]["type"], "badRequest");
    let msg = e["kind"]["message"].as_str().unwrap_or("");
    assert!(msg.contains("payload.events[0].name"), "{msg}");

    let mut bad = events_request(json!({"type":"tags"}), "eventKey");
    bad["toPsnsIncluding"] = json!({"psns": {}, "default": "most"});
    let id = c.request(PERSISTED, bad).await?;
    let e = c.frame_for(id as i64).await?;
    let msg = e["kind"]["message"].as_str().unwrap_or("");
    assert!(msg.contains("payload.toPsnsIncluding.default"), "{msg}");

    // Cancels of unknown and finished ids are ignored; a cancelled live request goes quiet.
    c.cancel(999).await?;
    let live = c
        .request(ALL, events_request(json!({"type":"all"}), "eventKey"))
        .await?;
    c.cancel(live).await?;
    // Still usable after all of this.
    let src = c.call("/ax/events/getSourceId", Value::Null).await?;
    assert_eq!(src, node.source);
    c.call(
        PERSIST,
        json!({"events": [unstored("s", "n", &[], json!(1))]}),
    )
    .await?;
    assert!(c
        .frame_within(live as i64, Duration::from_millis(500))
        .await
        .is_err());

    // Every other path on the store address: a 404 JSON error (Pond 3's probe).
    let resp = reqwest::get(format!("http://{}/api/v2/node/id", node.store)).await?;
    shoal_tests::expect_error(resp, 404, "ERR_NOT_FOUND", "").await?;
    Ok(())
}

#[tokio::test]
async fn snapshots_store_retrieve_invalidate() -> Result<()> {
    let node = Node::start()?;
    let mut c = Client::connect(node.store).await?;
    let key = |l: u64| json!({"lamport": l, "psn": l, "sourceId": "src"});
    let snap = |v: u64, l: u64, state: &str| {
        json!({"semantics":"s","name":"n","key":key(l),"psnMap":{"src": l},"horizon":null,
            "cycle":1,"version":v,"tag":"t","blob":state})
    };
    let get = |v: u64| json!({"semantics":"s","name":"n","version":v});
    assert_eq!(
        c.call("/ax/snapshots/retrieveSnapshot", get(1)).await?,
        Value::Null
    );
    assert_eq!(
        c.call("/ax/snapshots/storeSnapshot", snap(1, 10, "a"))
            .await?,
        true
    );
    assert_eq!(
        c.call("/ax/snapshots/storeSnapshot", snap(1, 20, "b"))
            .await?,
        true
    );
    let got = c.call("/ax/snapshots/retrieveSnapshot", get(1)).await?;
    assert_eq!(got["state"], "b");
    assert_eq!(got["eventKey"], key(20));
    assert_eq!(got["psnMap"], json!({"src": 20}));
    c.call(
        "/ax/snapshots/invalidateSnapshots",
        json!({"semantics":"s","name":"n","key":key(15)}),
    )
    .await?;
    let got = c.call("/ax/snapshots/retrieveSnapshot", get(1)).await?;
    assert_eq!(got["state"], "a");
    // Durable across a restart.
    drop(c);
    let node = node.restart()?;
    let mut c = Client::connect(node.store).await?;
    let got = c.call("/ax/snapshots/retrieveSnapshot", get(1)).await?;
    assert_eq!(got["state"], "a");
    // A newer version drops the older one.
    assert_eq!(
        c.call("/ax/snapshots/storeSnapshot", snap(2, 5, "v2"))
            .await?,
        true
    );
    assert_eq!(
        c.call("/ax/snapshots/retrieveSnapshot", get(1)).await?,
        Value::Null
    );
    Ok(())
}

#[tokio::test]
async fn logging_and_commands_reach_the_console_log() -> Result<()> {
    let node = Node::start()?;
    let mut c = Client::connect(node.store).await?;
    c.call(
        "/ax/misc/logging",
        json!({"level":"ERROR","tag":"pond","message":"hello from a fish"}),
    )
    .await?;
    c.call(
        "/ax/misc/commands",
        json!({"type":"alert","message":"heat","time":1}),
    )
    .await?;
    let sub = c
        .request("/ax/misc/commands", json!({"type":"subscribe"}))
        .await?;
    assert!(c
        .frame_within(sub as i64, Duration::from_millis(300))
        .await
        .is_err());
    let resp = node
        .http
        .get(node.console_url("/api/v1/logs"))
        .send()
        .await?;
    let text = resp.text().await?;
    assert!(text.contains("hello from a fish"), "{text}");
    assert!(text.contains("alert: heat"), "{text}");
    Ok(())
}

/// Resident memory of a process in KiB (Linux).
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .context("no VmRSS")
}

/// Publishes batches through `writer` and reads them back on `reader`'s live request.
struct Load<'a> {
    writer: &'a mut Client,
    reader: &'a mut Client,
    live: u64,
    payload: &'a str,
    seen: &'a mut usize,
    batch: &'a mut usize,
}

impl Load<'_> {
    async fn run(&mut self, batches: usize, per: usize) -> Result<()> {
        for _ in 0..batches {
            let b = *self.batch;
            *self.batch += 1;
            let events: Vec<Value> = (0..per)
                .map(|i| {
                    unstored(
                        "load",
                        "l",
                        &[],
                        json!({"i": b * per + i, "pad": self.payload}),
                    )
                })
                .collect();
            self.writer.call(PERSIST, json!({"events": events})).await?;
            // The healthy reader keeps up.
            while *self.seen < (b + 1) * per {
                *self.seen += self
                    .reader
                    .next(self.live)
                    .await?
                    .as_array()
                    .map_or(0, Vec::len);
            }
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_client_that_never_reads_is_dropped_and_slows_nobody() -> Result<()> {
    let node = Node::start()?;
    let pid = node.pid().context("pid")?;
    // The stuck client: subscribes to everything, then never reads again.
    let mut stuck = Client::connect(node.store).await?;
    if std::env::var_os("POND_NO_STUCK").is_none() {
        stuck
            .request(ALL, events_request(json!({"type":"all"}), "eventKey"))
            .await?;
    }
    let mut reader = Client::connect(node.store).await?;
    let live = reader
        .request(ALL, events_request(json!({"type":"all"}), "eventKey"))
        .await?;
    let mut writer = Client::connect(node.store).await?;
    let payload = "x".repeat(5000);
    let per = 100;
    let mut seen = 0usize;
    let mut batch = 0;
    // Warm-up (caches, allocator arenas), then the measured phase.
    let mut load = Load {
        writer: &mut writer,
        reader: &mut reader,
        live,
        payload: &payload,
        seen: &mut seen,
        batch: &mut batch,
    };
    load.run(200, per).await?;
    let before = rss_kib(pid)?;
    load.run(200, per).await?;
    let after = rss_kib(pid)?;
    assert_eq!(seen, 400 * per);
    // 100 MB of payload went through the measured phase; a node buffering it for the stuck
    // client would grow by that much. Bounded: well under it.
    assert!(
        after < before + 50 * 1024,
        "node RSS grew from {before} KiB to {after} KiB"
    );
    // The stuck client is eventually disconnected (after the node's stall limit).
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !node.log().contains("accepted no data") {
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("the stuck client was not disconnected within {TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(stuck);
    // The node still serves.
    let src = writer.call("/ax/events/getSourceId", Value::Null).await?;
    assert_eq!(src, node.source);
    Ok(())
}

// ---- the real Pond packages ----

fn store_url(node: &Node) -> String {
    format!("ws://{}/store_api", node.store)
}

/// Pond 1.1.0: a `FishType` counter fed with commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pond1_counter_fed_with_commands() -> Result<()> {
    let Some(dir) = npm::install("pond1")? else {
        return Ok(());
    };
    let node = Node::start()?;
    let mut js = npm::Js::spawn(
        &dir,
        "counter.js",
        &["c1", "20", "20"],
        &[("AX_STORE_URI", store_url(&node))],
    )?;
    let done = js.until("done", TIMEOUT, |_| Ok(()))?;
    assert_eq!(done["done"], 20);
    // The events went through the store API into the node's log.
    let events = node.query_all().await?;
    assert_eq!(events.len(), 20);
    assert_eq!(events[0]["stream"]["semantics"], "shoal.test.counter");
    Ok(())
}

/// Pond 2.7.0 and v1 HTTP on one node: a v1 event reaches a tag-based fish, and a Pond event
/// shows up in a v1 query with its tags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pond2_and_v1_http_see_each_other() -> Result<()> {
    let Some(dir) = npm::install("pond2")? else {
        return Ok(());
    };
    let node = Node::start()?;
    let env = [("STORE_URL", store_url(&node))];
    let mut fish = npm::Js::spawn(&dir, "driver.js", &["observe", "interop", "2"], &env)?;
    fish.until("ready", TIMEOUT, |_| Ok(()))?;
    node.publish(&[
        json!({"semantics": "machine", "name": "m1", "tags": ["interop"],
        "payload": {"i": 100}}),
    ])
    .await?;
    let mut emit = npm::Js::spawn(&dir, "driver.js", &["emit", "interop", "1"], &env)?;
    emit.until("emitted", TIMEOUT, |_| Ok(()))?;
    let state = fish.until("state", TIMEOUT, |v| {
        anyhow::ensure!(v.get("outOfOrder").is_none(), "state out of order: {v}");
        Ok(())
    })?;
    let payloads: Vec<i64> = state["state"]
        .as_array()
        .context("state")?
        .iter()
        .filter_map(|e| e[3].as_i64())
        .collect();
    assert_eq!(payloads, vec![100, 0]);
    let v1 = node.query_all().await?;
    let pond_event = v1
        .iter()
        .find(|e| e["payload"] == json!({"i": 0}))
        .context("the Pond event is not in the v1 query")?;
    assert_eq!(pond_event["tags"], json!(["interop"]));
    Ok(())
}

/// Pond 3.x: `actyxPort` = the store address; its probe of `/api/v2/node/id` gets a 404 and
/// it falls back to the store API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pond3_falls_back_to_the_store_api() -> Result<()> {
    let Some(dir) = npm::install("pond3")? else {
        return Ok(());
    };
    let node = Node::start()?;
    let port = node.store.port().to_string();
    let mut js = npm::Js::spawn(&dir, "driver.js", &["127.0.0.1", &port, "v3", "5"], &[])?;
    let id = js.until("nodeId", TIMEOUT, |_| Ok(()))?;
    assert_eq!(id["nodeId"], node.source);
    let done = js.until("state", TIMEOUT, |_| Ok(()))?;
    assert_eq!(done["state"], 5);
    assert_eq!(node.query_all().await?.len(), 5);
    Ok(())
}

/// Events for the snapshot test: tagged, all but the newest 1,000 from 2-3 hours ago (Pond
/// snapshots only states an hour older than its latest event).
async fn persist_history(c: &mut Client, tag: &str, n: u64) -> Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_micros() as u64;
    let span = 3 * 3600 * 1_000_000u64;
    let mut i = 0;
    while i < n {
        let batch: Vec<Value> = (i..(i + 1000).min(n))
            .map(|k| {
                // All but the last 1,000 events are 2-3 hours old.
                let ts = if k + 1000 < n {
                    now - span + span / 3 * k / n
                } else {
                    now
                };
                json!({"semantics": "_t_", "name": "_t_", "tags": [tag],
                    "timestamp": ts, "payload": {"i": k}})
            })
            .collect();
        i += batch.len() as u64;
        c.call(PERSIST, json!({"events": batch})).await?;
    }
    Ok(())
}

/// A fish over 100,000 events stores a snapshot and restarts from it, reading few events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pond2_fish_restarts_from_its_snapshot() -> Result<()> {
    let Some(dir) = npm::install("pond2")? else {
        return Ok(());
    };
    let node = Node::start()?;
    let mut c = Client::connect(node.store).await?;
    let n: u64 = 100_000;
    persist_history(&mut c, "history", n).await?;
    let expect_sum = n * (n - 1) / 2;
    let env = [("STORE_URL", store_url(&node))];
    let args = ["count", "history", "100000", "30000"];
    let mut fresh = npm::Js::spawn(&dir, "driver.js", &args, &env)?;
    let first = fresh.until("n", 2 * TIMEOUT, |_| Ok(()))?;
    assert_eq!(first["sum"], expect_sum);
    assert!(first["eventsRead"].as_u64() >= Some(n), "{first}");
    assert!(
        first["snapshotsStored"].as_u64() >= Some(1),
        "no snapshot stored: {first}"
    );
    drop(fresh);
    let mut again = npm::Js::spawn(&dir, "driver.js", &args, &env)?;
    let second = again.until("n", TIMEOUT, |_| Ok(()))?;
    assert_eq!(second["sum"], expect_sum, "{second}");
    assert!(second["snapshotsRetrieved"].as_u64() >= Some(1), "{second}");
    let read = second["eventsRead"].as_u64().context("eventsRead")?;
    assert!(
        read < n / 2,
        "a restart from the snapshot read {read} events"
    );
    eprintln!("fresh: {first}\nfrom snapshot: {second}");
    Ok(())
}

// ---- several nodes ----

/// `--peer <of>`.
fn peer_of(of: &Node) -> shoal_tests::NodeOptions {
    shoal_tests::NodeOptions::default()
        .arg("--peer")
        .arg(of.swarm.clone())
}

/// Stops `node` (kept apart until now) and starts it again with `of` as its bootstrap peer
/// (through `shoal.toml`, so its data dir and flags stay the same).
fn join(node: Node, of: &Node) -> Result<Node> {
    let mut node = node;
    node.stop()?;
    std::fs::write(
        node.data_dir().join("shoal.toml"),
        format!("peer = [\"{}\"]\n", of.swarm),
    )?;
    node.respawn()
}

/// The next `requestConnectivity` report of request `id` that `ok` accepts.
async fn connectivity_until(
    c: &mut Client,
    id: u64,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let report = c.next(id).await?;
        if ok(&report) {
            return Ok(report);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no report with {what} within {TIMEOUT:?}; last: {report}"
        );
    }
}

fn connectivity_request(special: &[&str]) -> Value {
    json!({"special": special, "hbHistDelay": 1000, "reportEveryMs": 100, "currentPsnHistoryDelay": 5})
}

/// `requestConnectivity` follows the node's real peers: alone it is `NotConnected` with all its
/// events still to send; with its peer up `FullyConnected` (`PartiallyConnected` while a special
/// source is missing) and nothing to send once the peer reported storing them; after the peer
/// stopped `NotConnected`, counting only the events published since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connectivity_reports_follow_the_peers() -> Result<()> {
    let a = Node::start()?;
    let mut c = Client::connect(a.store).await?;
    let publish = |n: u64| json!({"events": (0..n).map(|i| unstored("s", "n", &[], json!(i))).collect::<Vec<_>>()});
    c.call(PERSIST, publish(5)).await?;
    let plain = c.request(CONNECTIVITY, connectivity_request(&[])).await?;
    let alone = connectivity_until(&mut c, plain, "NotConnected", |r| {
        r["status"] == "NotConnected"
    })
    .await?;
    assert_eq!(alone["eventsToRead"], 0, "{alone}");
    assert_eq!(alone["eventsToSend"], 5, "{alone}");
    assert!(alone["inCurrentStatusForMs"].is_u64(), "{alone}");

    let mut b = Node::start_with(peer_of(&a))?;
    connectivity_until(&mut c, plain, "FullyConnected", |r| {
        r["status"] == "FullyConnected"
    })
    .await?;
    let special = c
        .request(CONNECTIVITY, connectivity_request(&["not-a-peer"]))
        .await?;
    let partial = connectivity_until(&mut c, special, "B storing A's events", |r| {
        r["status"] == "PartiallyConnected" && r["eventsToSend"] == 0
    })
    .await?;
    assert_eq!(
        partial["specialsDisconnected"],
        json!(["not-a-peer"]),
        "{partial}"
    );
    assert_eq!(partial["swarmConnectivityLevel"], 100, "{partial}");

    b.stop()?;
    c.call(PERSIST, publish(3)).await?;
    let apart = connectivity_until(&mut c, plain, "NotConnected, 3 to send", |r| {
        r["status"] == "NotConnected" && r["eventsToSend"] == 3
    })
    .await?;
    assert_eq!(apart["eventsToRead"], 0, "{apart}");
    Ok(())
}

/// The Pond 2 app `examples/pond-counter`, unchanged, deployed as a process app by its
/// `shoal-app.toml` (with `--to` from A onto B: B fetches the package blob from A): it runs on
/// B with `AX_STORE_URI` from the node, its increment is an event of B that A replicates, and
/// its output lines are B's console entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pond_counter_runs_unchanged_as_a_deployed_app() -> Result<()> {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/pond-counter");
    let Some(dir) = npm::install_from("pond-counter", &example)? else {
        return Ok(());
    };
    // npm's `.bin` holds symlinks, which a package may not (files only); the app needs none.
    let bin = dir.join("node_modules/.bin");
    if bin.exists() {
        std::fs::remove_dir_all(&bin)?;
    }
    let a = Node::start()?;
    let b = Node::start_with(peer_of(&a))?;
    let url = a.url("");
    let out = shoal_tests::cli(
        &[
            "apps",
            "deploy",
            dir.to_str().context("path")?,
            "--to",
            &b.source,
            "--node",
            &url,
        ],
        None,
    )?;
    anyhow::ensure!(out.status.success(), "deploy: {}{}", out.stdout, out.stderr);
    let deadline = tokio::time::Instant::now() + 2 * TIMEOUT;
    let counted = loop {
        let events = a.query_all().await?;
        let found = events.into_iter().find(|e| {
            e["stream"]["source"] == b.source.as_str()
                && e["tags"]
                    .as_array()
                    .is_some_and(|t| t.contains(&json!("counter")))
        });
        if let Some(e) = found {
            break e;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the counter app on B published nothing A has; B's log:\n{}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(counted["payload"]["by"], 1, "{counted}");
    let apps: Vec<Value> = b.get("/api/v1/apps").await?.json().await?;
    let app = apps
        .iter()
        .find(|x| x["id"] == "com.example.pond-counter")
        .context("the app on B")?;
    assert_eq!(app["state"], "running", "{app}");
    // Its stdout line `counter = 1 ...` is a console entry of the app.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let logs = b.get("/api/v1/logs").await?.text().await?;
        if logs.lines().any(|l| {
            l.contains("\"producerName\":\"com.example.pond-counter\"") && l.contains("counter = 1")
        }) {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no `counter = 1` console entry of the app on B:\n{logs}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Pond 1.1.0: the same counter fed with commands on two connected nodes at once converges to
/// the sum on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pond1_counter_on_two_nodes_converges() -> Result<()> {
    let Some(dir) = npm::install("pond1")? else {
        return Ok(());
    };
    let a = Node::start()?;
    let b = Node::start_with(peer_of(&a))?;
    let args = ["shared", "25", "50"];
    let mut on_a = npm::Js::spawn(
        &dir,
        "counter.js",
        &args,
        &[("AX_STORE_URI", store_url(&a))],
    )?;
    let mut on_b = npm::Js::spawn(
        &dir,
        "counter.js",
        &args,
        &[("AX_STORE_URI", store_url(&b))],
    )?;
    assert_eq!(on_a.until("done", 2 * TIMEOUT, |_| Ok(()))?["done"], 50);
    assert_eq!(on_b.until("done", 2 * TIMEOUT, |_| Ok(()))?["done"], 50);
    Ok(())
}

/// Pond 2.7.0: a tag fish runs on A while B, apart, emits; when B joins, A's fish re-applies
/// everything in (lamport, source, offset) order — no state it shows is out of order — and ends
/// identical to the same fish on B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pond2_fish_time_travels_when_a_node_joins() -> Result<()> {
    let Some(dir) = npm::install("pond2")? else {
        return Ok(());
    };
    let a = Node::start()?;
    let b = Node::start()?;
    let per = 20;
    let total = (2 * per).to_string();
    let on = |n: &Node| [("STORE_URL", store_url(n))];
    let mut fish_a = npm::Js::spawn(&dir, "driver.js", &["observe", "order", &total], &on(&a))?;
    fish_a.until("ready", TIMEOUT, |_| Ok(()))?;
    let count = per.to_string();
    npm::Js::spawn(&dir, "driver.js", &["emit", "order", &count], &on(&a))?.until(
        "emitted",
        TIMEOUT,
        |_| Ok(()),
    )?;
    npm::Js::spawn(&dir, "driver.js", &["emit", "order", &count], &on(&b))?.until(
        "emitted",
        TIMEOUT,
        |_| Ok(()),
    )?;
    // B's events carry low lamports: they sort between A's once B joins.
    let b = join(b, &a)?;
    let in_order = |v: &Value| {
        anyhow::ensure!(v.get("outOfOrder").is_none(), "a state out of order: {v}");
        Ok(())
    };
    let state_a = fish_a.until("state", 2 * TIMEOUT, in_order)?;
    let mut fish_b = npm::Js::spawn(&dir, "driver.js", &["observe", "order", &total], &on(&b))?;
    let state_b = fish_b.until("state", 2 * TIMEOUT, in_order)?;
    assert_eq!(state_a["state"], state_b["state"]);
    let sources: std::collections::BTreeSet<&str> = state_a["state"]
        .as_array()
        .context("state")?
        .iter()
        .filter_map(|e| e[1].as_str())
        .collect();
    assert_eq!(sources.len(), 2, "events of both nodes: {sources:?}");
    Ok(())
}

/// A late event older than a fish's snapshot (from a node that joins later) invalidates the
/// snapshot, and the state is still right, live and after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pond2_late_event_invalidates_the_snapshot() -> Result<()> {
    let Some(dir) = npm::install("pond2")? else {
        return Ok(());
    };
    let a = Node::start()?;
    let b = Node::start()?;
    let n: u64 = 20_000;
    let mut c = Client::connect(a.store).await?;
    persist_history(&mut c, "late", n).await?;
    let env = [("STORE_URL", store_url(&a))];
    let first = npm::Js::spawn(
        &dir,
        "driver.js",
        &["count", "late", "20000", "30000"],
        &env,
    )?
    .until("n", 2 * TIMEOUT, |_| Ok(()))?;
    assert!(first["snapshotsStored"].as_u64() >= Some(1), "{first}");
    // B, apart, stores one event with a low lamport (its clock is fresh).
    let mut cb = Client::connect(b.store).await?;
    cb.call(
        PERSIST,
        json!({"events": [{"semantics": "_t_", "name": "_t_", "tags": ["late"],
            "timestamp": 1_000_000u64, "payload": {"i": 7}}]}),
    )
    .await?;
    drop(cb);
    let expect = (n + 1).to_string();
    let mut live = npm::Js::spawn(&dir, "driver.js", &["count", "late", &expect, "0"], &env)?;
    // Let the fish start from its snapshot before B joins.
    std::thread::sleep(Duration::from_secs(2));
    let _b = join(b, &a)?;
    let sum = n * (n - 1) / 2 + 7;
    let got = live.until("n", 2 * TIMEOUT, |_| Ok(()))?;
    assert_eq!(got["sum"], sum, "{got}");
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !a.log().contains("snapshots invalidated") {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the node never invalidated a snapshot"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let again = npm::Js::spawn(&dir, "driver.js", &["count", "late", &expect, "0"], &env)?.until(
        "n",
        TIMEOUT,
        |_| Ok(()),
    )?;
    assert_eq!(again["sum"], sum, "{again}");
    Ok(())
}
