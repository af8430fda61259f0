//! One data dir, one node (issue 19).
//!
//! The story: two `shoal run` on one data dir both started and printed the same source id; of
//! six publishes answered 201, four events were stored and lamport 1 appeared twice, and
//! `shoal store verify` still said sound. Nothing locked the data dir, and `shoal store gc` ran
//! against a live node the same way. Now opening a store for writing takes an exclusive lock
//! on `store.sqlite.lock` in the data dir (`store/src/lock.rs`), held by the node's writer: a
//! second node exits at once naming the first one's pid, `store gc` is refused, read-only
//! inspector commands keep working, and the lock dies with the process (kill -9 included), so
//! a crashed node restarts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use shoal_tests::{cli, event, run_on_data_dir, within, CliOutput, Node, TIMEOUT};

/// The refused process's output names the live node's pid and exits non-zero, in one line.
fn assert_refused(out: &CliOutput, pid: u32, what: &str) {
    assert!(
        !out.status.success(),
        "{what} should be refused on a live data dir; stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("shoal: data dir ") && last.contains(&format!("(pid {pid})")),
        "{what}: the error line should name the data dir and pid {pid}: {}",
        out.stderr
    );
    assert!(
        !out.stdout.contains("shoal ready"),
        "{what} must not get ready: {}",
        out.stdout
    );
}

#[tokio::test]
async fn issue19_second_run_on_a_live_data_dir_is_refused_naming_the_pid() {
    let node = Node::start().unwrap();
    let pid = node.pid().unwrap();
    let out = run_on_data_dir(&node.data_dir()).unwrap();
    assert_refused(&out, pid, "a second `shoal run`");
    assert!(
        out.stderr.contains("another --data-dir"),
        "the message says what to do: {}",
        out.stderr
    );
    // The first node is untouched.
    node.publish(&[event("s", "n", json!(1))]).await.unwrap();
    assert_eq!(
        node.offsets().await.unwrap(),
        json!({ node.source.clone(): 0 })
    );
}

#[tokio::test]
async fn issue19_store_gc_is_refused_on_a_live_data_dir_and_reads_still_work() {
    let mut node = Node::start().unwrap();
    node.publish(&[event("s", "n", json!(1))]).await.unwrap();
    let pid = node.pid().unwrap();
    let data = node.data_dir();
    let data = data.to_str().unwrap();

    let gc = cli(&["store", "gc", "--data-dir", data], None).unwrap();
    assert_refused(&gc, pid, "`shoal store gc`");
    for read in [
        vec!["store", "streams", "--data-dir", data],
        vec!["store", "verify", "--data-dir", data],
        vec!["store", "stats", "--data-dir", data],
        vec!["store", "events", &node.source, "--data-dir", data],
    ] {
        let out = cli(&read, None).unwrap();
        assert!(
            out.status.success(),
            "`shoal {}` must work on a live node: {}",
            read.join(" "),
            out.stderr
        );
    }

    // Once the node is gone (however it went), gc runs.
    node.kill9();
    let gc = cli(&["store", "gc", "--data-dir", data], None).unwrap();
    assert!(
        gc.status.success(),
        "gc after the node stopped: {}",
        gc.stderr
    );
}

#[tokio::test]
async fn issue19_node_restarts_after_kill9() {
    let mut node = Node::start().unwrap();
    let source = node.source.clone();
    node.publish(&[event("s", "n", json!(1))]).await.unwrap();
    node.kill9();
    // The kernel released the lock with the process: the lock file left behind does not block.
    let node = node.respawn().unwrap();
    assert_eq!(node.source, source);
    assert_eq!(node.offsets().await.unwrap(), json!({ source: 0 }));
}

/// Four clients publish without pause while another `shoal run` is started on the same data dir
/// three times; every 201 must be there afterwards (live and after kill -9 and restart), with
/// its lamport, and no lamport twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue19_second_run_under_publish_load_loses_no_acknowledged_event() {
    let node = Node::start().unwrap();
    let source = node.source.clone();
    let pid = node.pid().unwrap();
    // offset -> lamport of every event whose batch got a 201.
    let acked: Arc<Mutex<BTreeMap<u64, u64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let url = node.url("/api/v1/events/publish");
    let mut publishers = Vec::new();
    for client in 0..4u64 {
        let (http, url, acked, stop) =
            (node.http.clone(), url.clone(), acked.clone(), stop.clone());
        publishers.push(tokio::spawn(async move {
            for round in 0u64.. {
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                let batch: Vec<Value> = (0..3)
                    .map(|i| event("load", &format!("c{client}"), json!([client, round, i])))
                    .collect();
                let resp = http
                    .post(&url)
                    .json(&json!({ "data": batch }))
                    .send()
                    .await?;
                anyhow::ensure!(
                    resp.status().as_u16() == 201,
                    "publish answered {}",
                    resp.status()
                );
                let body: Value = resp.json().await?;
                let mut acked = acked.lock().unwrap();
                for stamp in body["data"].as_array().unwrap() {
                    let offset = stamp["offset"].as_u64().unwrap();
                    let lamport = stamp["lamport"].as_u64().unwrap();
                    assert!(
                        acked.insert(offset, lamport).is_none(),
                        "offset {offset} acknowledged twice"
                    );
                }
            }
            Ok(())
        }));
    }
    let acked_at_least = |n: usize| {
        let acked = acked.clone();
        async move {
            let deadline = tokio::time::Instant::now() + TIMEOUT;
            while acked.lock().unwrap().len() < n {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "publishing made no progress"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    acked_at_least(50).await;
    for attempt in 0..3 {
        let before = acked.lock().unwrap().len();
        let data_dir = node.data_dir();
        // On a blocking thread: the publishers keep running meanwhile.
        let out = tokio::task::spawn_blocking(move || run_on_data_dir(&data_dir))
            .await
            .unwrap()
            .unwrap();
        assert_refused(&out, pid, &format!("`shoal run` attempt {attempt}"));
        // Publishing went on meanwhile and goes on after.
        acked_at_least(before + 30).await;
    }
    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        within(p).await.unwrap().unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());

    let check = |stored: Vec<Value>, when: &str| {
        let by_offset: BTreeMap<u64, u64> = stored
            .iter()
            .map(|e| {
                (
                    e["offset"].as_u64().unwrap(),
                    e["lamport"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            by_offset.len(),
            stored.len(),
            "{when}: an offset stored twice"
        );
        for (offset, lamport) in &acked {
            assert_eq!(
                by_offset.get(offset),
                Some(lamport),
                "{when}: acknowledged event at offset {offset} lost or changed"
            );
        }
        let lamports: BTreeSet<u64> = by_offset.values().copied().collect();
        assert_eq!(
            lamports.len(),
            by_offset.len(),
            "{when}: a lamport appears twice"
        );
    };
    check(node.query_all().await.unwrap(), "live");
    let mut node = node;
    node.kill9();
    let node = node.respawn().unwrap();
    assert_eq!(node.source, source);
    check(node.query_all().await.unwrap(), "after kill -9 and restart");
    let data = node.data_dir();
    let verify = cli(
        &["store", "verify", "--data-dir", data.to_str().unwrap()],
        None,
    )
    .unwrap();
    assert!(verify.status.success(), "store verify: {}", verify.stdout);
}
