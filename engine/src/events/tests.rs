//! Event service tests: validation, group commit, the Lamport clock across restarts, the three
//! query orders and bounds against a model (a sorted `Vec`), and subscriptions (no gap, no
//! duplicate, with concurrent publishes, lagging and stalled subscribers).
//!
//! Every wait is bounded by [`WAIT`]; nothing asserts on time.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use rand::{Rng, SeedableRng};
use serde_json::value::RawValue;
use shoal_store::{Event, NewEvent, OffsetMap, SourceId, Store, StoreConfig};

use super::publish::compact_json;
use super::*;
use crate::config::Config;
use crate::node::Node;

/// The event service alone (writer, packer, reads) on a data dir: no swarm, no node.
struct Service {
    parts: testing::Parts,
    source: SourceId,
}

impl Service {
    fn events(&self) -> EventService {
        self.parts.events.clone()
    }

    fn source(&self) -> &SourceId {
        &self.source
    }

    async fn shutdown(self) {
        self.parts.writer.stop().await;
    }
}

const WAIT: Duration = Duration::from_secs(30);

fn ev(semantics: &str, name: &str, payload: &str) -> PublishEvent {
    PublishEvent {
        semantics: semantics.into(),
        name: name.into(),
        tags: vec![],
        payload: RawValue::from_string(payload.into()).unwrap(),
        timestamp: None,
    }
}

const SOURCE: &str = "events-test";

async fn start(dir: &std::path::Path, tune: impl FnOnce(&mut Config)) -> Service {
    let mut config = Config::for_tests(dir);
    tune(&mut config);
    Service {
        parts: testing::start_with(dir, SOURCE, config.events),
        source: SourceId::new(SOURCE),
    }
}

/// Collects `n` events from a stream, failing if they do not come within [`WAIT`].
async fn take(stream: &mut EventStream, n: usize) -> Vec<Event> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match tokio::time::timeout(WAIT, stream.next()).await {
            Ok(Some(Ok(e))) => out.push(e),
            Ok(Some(Err(e))) => panic!("stream failed: {e}"),
            Ok(None) => panic!("stream ended after {} of {n} events", out.len()),
            Err(_) => panic!("timed out after {} of {n} events", out.len()),
        }
    }
    out
}

async fn collect(stream: EventStream) -> Vec<Event> {
    tokio::time::timeout(WAIT, stream.map(|e| e.unwrap()).collect::<Vec<_>>())
        .await
        .unwrap()
}

#[test]
fn compact_keeps_strings() {
    assert_eq!(compact_json(r#"{"a":1}"#), None);
    assert_eq!(
        compact_json("{ \"a b\" : [1, \"x \\\" y\" ]\n}").as_deref(),
        Some(r#"{"a b":[1,"x \" y"]}"#)
    );
}

#[test]
fn validation_names_fields() {
    let mut e = ev(" ", "n", "null");
    let err = e.validate(2).unwrap_err();
    assert_eq!(
        err.to_string(),
        "[2].semantics: must contain at least one non-whitespace character"
    );
    e.semantics = "s".into();
    e.tags = vec!["b".into(), "a".into(), "b".into()];
    e.validate(0).unwrap();
    assert_eq!(e.tags, vec!["a", "b"]);
    e.tags = (0..65).map(|i| i.to_string()).collect();
    assert!(e.validate(0).unwrap_err().to_string().contains("tags"));
    e.tags = vec![String::new()];
    assert!(e.validate(0).is_err());
    e.tags = vec!["t".repeat(MAX_TAG_BYTES)];
    e.validate(0).unwrap();
    e.tags = vec!["t".repeat(MAX_TAG_BYTES + 1)];
    let err = e.validate(0).unwrap_err().to_string();
    assert!(
        err.starts_with("[0].tags: a tag has at most 1024 bytes"),
        "{err}"
    );
    e.tags = vec![];
    e.name = "x".repeat(1025);
    assert!(e.validate(0).unwrap_err().to_string().contains("name"));
}

#[test]
fn plan_bounds() {
    let a = SourceId::new("a");
    let b = SourceId::new("b");
    let present: OffsetMap = [(a.clone(), 10), (b.clone(), 5)].into_iter().collect();
    let lower: OffsetMap = [(a.clone(), 3)].into_iter().collect();
    let upper: OffsetMap = [(a.clone(), 20)].into_iter().collect();
    let p = plan(&present, &lower, Some(&upper), &Filter::all());
    assert_eq!(p.len(), 1);
    assert_eq!((p[&a].0, p[&a].1), (4, 10));
    let p = plan(&present, &lower, None, &Filter::all());
    assert_eq!((p[&b].0, p[&b].1), (0, 5));
    assert!(plan(&present, &lower, None, &Filter(vec![])).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_batch_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), |_| {}).await;
    let events = node.events();
    let err = events
        .publish(vec![ev("s", "n", "1"), ev("s", "", "2")])
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("[1].name"), "{err}");
    assert!(events.publish(vec![]).await.is_err());
    assert!(events.offsets().is_empty());
    let ok = events
        .publish(vec![ev("s", "n", "{ \"a\" : 1 }")])
        .await
        .unwrap();
    assert_eq!(ok.stamps[0].offset.get(), 0);
    let stored = collect(events.query(Query {
        lower: OffsetMap::new(),
        upper: None,
        filter: Filter::all(),
        order: Order::Lamport,
    }))
    .await;
    assert_eq!(stored[0].payload.get(), r#"{"a":1}"#);
    node.shutdown().await;
}

/// Publishes queued while the writer is busy become ONE commit (up to the cap), and every
/// waiter gets its own offsets and strictly increasing lamports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_publishes_share_one_commit() {
    for (cap, expected_commits) in [(10_000, vec![50]), (20, vec![20, 20, 10])] {
        let dir = tempfile::tempdir().unwrap();
        let node = start(dir.path(), |c| c.events.max_commit_events = cap).await;
        let events = node.events();
        let mut updates = events.updates();
        // Hold the writer until all 50 publishes are queued behind it.
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let (holding, held) = tokio::sync::oneshot::channel::<()>();
        let blocker = tokio::spawn({
            let events = events.clone();
            async move {
                events
                    .hold_writer(move || {
                        let _ = holding.send(());
                        let _ = hold.recv_timeout(WAIT);
                    })
                    .await
            }
        });
        // The writer must be inside the job before anything else is queued: a publish taken
        // first would drain the job into its batch and hold some publishes outside the queue.
        tokio::time::timeout(WAIT, held).await.unwrap().unwrap();
        let publishers: Vec<_> = (0..50)
            .map(|i| {
                let events = events.clone();
                tokio::spawn(async move {
                    events
                        .publish(vec![ev("s", "n", &i.to_string())])
                        .await
                        .unwrap()
                })
            })
            .collect();
        tokio::time::timeout(WAIT, async {
            while events.queued() < 50 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .unwrap();
        release.send(()).unwrap();
        blocker.await.unwrap();
        let mut stamps = Vec::new();
        for p in publishers {
            stamps.extend(p.await.unwrap().stamps);
        }
        stamps.sort_by_key(|s| s.offset);
        assert_eq!(
            stamps.iter().map(|s| s.offset.get()).collect::<Vec<_>>(),
            (0..50).collect::<Vec<_>>()
        );
        assert!(stamps
            .windows(2)
            .all(|w| w[1].lamport.get() == w[0].lamport.get() + 1));
        let mut commits = Vec::new();
        while commits.iter().sum::<u64>() < 50 {
            let u = tokio::time::timeout(WAIT, updates.recv())
                .await
                .unwrap()
                .unwrap();
            commits.push(u.last - u.first + 1);
            assert_eq!(
                u.events.as_ref().map(|e| e.len() as u64),
                Some(u.last - u.first + 1)
            );
        }
        assert_eq!(commits, expected_commits, "cap {cap}");
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lamport_survives_restart_and_observation() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), |_| {}).await;
    let source = node.source().clone();
    let p = node
        .events()
        .publish(vec![
            ev("s", "n", "1"),
            ev("s", "n", "2"),
            ev("s", "n", "3"),
        ])
        .await
        .unwrap();
    assert_eq!(
        p.stamps.iter().map(|s| s.lamport.get()).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    node.shutdown().await;

    // Restart: same source, clock above the stored events.
    let node = start(dir.path(), |_| {}).await;
    assert_eq!(node.source(), &source);
    let p = node
        .events()
        .publish(vec![ev("s", "n", "4")])
        .await
        .unwrap();
    assert_eq!(p.stamps[0].lamport.get(), 4);
    assert_eq!(p.stamps[0].offset.get(), 3);
    // A lamport seen from a peer raises the clock, and that survives a restart too.
    node.events().observe_lamport(100);
    node.shutdown().await;

    let node = start(dir.path(), |_| {}).await;
    let p = node
        .events()
        .publish(vec![ev("s", "n", "5")])
        .await
        .unwrap();
    assert_eq!(p.stamps[0].lamport.get(), 101);
    node.shutdown().await;
}

/// A store holding several sources (as if replicated), written before the node starts.
fn populate(dir: &std::path::Path, seed: u64) -> Vec<Event> {
    std::fs::create_dir_all(dir).unwrap();
    let store = Store::open(&dir.join(crate::config::STORE_FILE), StoreConfig::debug()).unwrap();
    let mut writer = store.writer().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut all = Vec::new();
    for s in ["src-a", "src-b", "src-c"] {
        let source = SourceId::new(s);
        let mut lamport = 0u64;
        let n = rng.gen_range(20..60);
        let mut batch = Vec::new();
        for offset in 0..n {
            // Small steps so lamports of different sources collide (tie-break by source).
            lamport += rng.gen_range(1..4);
            let name = ["x", "y"][rng.gen_range(0..2)];
            let e = NewEvent {
                semantics: "sem".into(),
                name: name.into(),
                tags: vec![],
                lamport,
                timestamp: 1000 + offset,
                payload: RawValue::from_string(offset.to_string()).unwrap(),
            };
            all.push(Event {
                source: source.clone(),
                offset,
                lamport,
                timestamp: e.timestamp,
                semantics: e.semantics.clone(),
                name: e.name.clone(),
                tags: vec![],
                payload: e.payload.clone(),
            });
            batch.push(e);
            if batch.len() >= 7 {
                writer.append(&source, std::mem::take(&mut batch)).unwrap();
            }
        }
        if !batch.is_empty() {
            writer.append(&source, batch).unwrap();
        }
    }
    all
}

fn key(e: &Event) -> (String, u64) {
    (e.source.to_string(), e.offset)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_orders_and_bounds_match_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let model = populate(dir.path(), 7);
    let node = start(dir.path(), |c| c.events.read_chunk = 5).await;
    let events = node.events();
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let sources = ["src-a", "src-b", "src-c", "src-missing"];
    for round in 0..60 {
        let mut lower = OffsetMap::new();
        let mut upper = OffsetMap::new();
        for s in sources {
            if rng.gen_bool(0.6) {
                lower.update(SourceId::new(s), rng.gen_range(0..40));
            }
            if rng.gen_bool(0.8) {
                upper.update(SourceId::new(s), rng.gen_range(0..80));
            }
        }
        let filter = match round % 4 {
            0 => Filter::all(),
            1 => Filter(vec![StreamSelector {
                name: Some("x".into()),
                ..Default::default()
            }]),
            2 => Filter(vec![
                StreamSelector {
                    source: Some(SourceId::new("src-b")),
                    ..Default::default()
                },
                StreamSelector {
                    name: Some("y".into()),
                    source: Some(SourceId::new("src-a")),
                    ..Default::default()
                },
            ]),
            _ => Filter(vec![]),
        };
        for order in [Order::Lamport, Order::LamportReverse, Order::SourceOrdered] {
            let mut expected: Vec<&Event> = model
                .iter()
                .filter(|e| upper.get(&e.source).is_some_and(|u| e.offset <= u))
                .filter(|e| lower.get(&e.source).is_none_or(|l| e.offset > l))
                .filter(|e| filter.matches(e))
                .collect();
            match order {
                Order::Lamport => expected.sort_by_key(|e| (e.lamport, key(e))),
                Order::LamportReverse => {
                    expected.sort_by_key(|e| std::cmp::Reverse((e.lamport, key(e))))
                }
                Order::SourceOrdered => expected.sort_by_key(|e| key(e)),
            }
            let got = collect(events.query(Query {
                lower: lower.clone(),
                upper: Some(upper.clone()),
                filter: filter.clone(),
                order,
            }))
            .await;
            assert_eq!(
                got.iter().map(key).collect::<Vec<_>>(),
                expected.iter().map(|e| key(e)).collect::<Vec<_>>(),
                "round {round} {order:?} lower {lower:?} upper {upper:?}"
            );
            if let (Some(g), Some(e)) = (got.first(), expected.first()) {
                assert_eq!(g.payload.get(), e.payload.get());
                assert_eq!(g.lamport, e.lamport);
            }
        }
    }
    node.shutdown().await;
}

/// Checks one subscription's output: per source strictly ascending, gapless from `from`.
fn check_exact(got: &[Event], from: &BTreeMap<String, u64>, to: &BTreeMap<String, u64>) {
    let mut next: BTreeMap<String, u64> = from.clone();
    for e in got {
        let n = next.entry(e.source.to_string()).or_insert(0);
        assert_eq!(
            e.offset, *n,
            "gap or duplicate at {}:{}",
            e.source, e.offset
        );
        *n += 1;
    }
    for (s, last) in to {
        assert_eq!(
            next.get(s).copied().unwrap_or(0),
            last + 1,
            "source {s} incomplete"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_catches_up_then_goes_live_without_gap_or_duplicate() {
    for update_channel in [256, 1] {
        let dir = tempfile::tempdir().unwrap();
        let model = populate(dir.path(), 3);
        let node = start(dir.path(), |c| {
            c.events.update_channel = update_channel;
            c.events.read_chunk = 3;
        })
        .await;
        let events = node.events();
        let local = node.source().to_string();
        // Lower bound in the middle of src-a; src-b from the start.
        let lower: OffsetMap = [(SourceId::new("src-a"), 9)].into_iter().collect();
        let mut sub = events.subscribe(Subscription {
            lower,
            filter: Filter::all(),
        });
        // Publish concurrently while the subscription catches up.
        let publishers: Vec<_> = (0..4)
            .map(|p| {
                let events = events.clone();
                tokio::spawn(async move {
                    for i in 0..25 {
                        let n = 1 + (i % 3);
                        let batch = (0..n)
                            .map(|j| ev("s", "n", &format!("\"{p}-{i}-{j}\"")))
                            .collect();
                        events.publish(batch).await.unwrap();
                    }
                })
            })
            .collect();
        for p in publishers {
            p.await.unwrap();
        }
        let present = events.offsets();
        let total_local = present.get(&SourceId::new(local.clone())).unwrap() + 1;
        let stored: u64 = model
            .iter()
            .filter(|e| e.source.as_str() != "src-a" || e.offset > 9)
            .count() as u64;
        let got = take(&mut sub, (stored + total_local) as usize).await;
        let from: BTreeMap<String, u64> = [("src-a".to_string(), 10)].into_iter().collect();
        let to: BTreeMap<String, u64> = present.iter().map(|(s, o)| (s.to_string(), o)).collect();
        check_exact(&got, &from, &to);
        // Nothing more is pending: a new event is the very next one delivered.
        events
            .publish(vec![ev("s", "n", "\"last\"")])
            .await
            .unwrap();
        let next = take(&mut sub, 1).await;
        assert_eq!(next[0].offset, total_local);
        assert_eq!(next[0].payload.get(), "\"last\"");
        node.shutdown().await;
        // Shutdown ends the subscription.
        assert!(tokio::time::timeout(WAIT, sub.next())
            .await
            .unwrap()
            .is_none());
    }
}

/// A subscription is sent only the commits that may match its filter, each saying from where
/// on the skipped offsets held nothing for it; it delivers exactly the matching events, live,
/// and a matching event large enough to go uncarried is still delivered (from the store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_is_woken_only_by_commits_that_may_match() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), |c| c.events.inline_update_bytes = 1_000).await;
    let events = node.events();
    let only_a = Filter(vec![StreamSelector {
        semantics: Some("a".into()),
        ..StreamSelector::default()
    }]);
    let mut notices = events.inner.updates.matching(only_a.clone());
    let mut sub = events.subscribe(Subscription {
        lower: OffsetMap::new(),
        filter: only_a,
    });
    let big = format!("\"{}\"", "x".repeat(2_000));
    // One commit each (each publish is awaited): offsets 0..=7.
    for (semantics, payload) in [
        ("b", "1"),
        ("b", "2"),
        ("a", "3"),
        ("b", "4"),
        ("b", "5"),
        ("a", "6"),
        ("b", big.as_str()),
        ("a", big.as_str()),
    ] {
        events
            .publish(vec![ev(semantics, "n", payload)])
            .await
            .unwrap();
    }
    let got = take(&mut sub, 3).await;
    assert_eq!(
        got.iter().map(|e| e.offset).collect::<Vec<_>>(),
        vec![2, 5, 7]
    );
    assert_eq!(got[2].payload.get(), big);
    // Sent: the two small matching commits, then the two big ones (not carried: they may match).
    let mut sent = Vec::new();
    while let Ok(n) = notices.try_recv() {
        sent.push((n.update.first, n.clean_from));
    }
    assert_eq!(sent, vec![(2, 0), (5, 3), (6, 6), (7, 7)]);
    // Nothing more is pending: a new matching event is the very next one delivered.
    events.publish(vec![ev("b", "n", "9")]).await.unwrap();
    events.publish(vec![ev("a", "n", "10")]).await.unwrap();
    assert_eq!(take(&mut sub, 1).await[0].offset, 9);
    node.shutdown().await;
}

/// A subscriber that never reads must neither block publishing nor lose events: once it reads
/// again it gets everything, from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_subscriber_does_not_block_publishing() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), |c| {
        c.events.update_channel = 4;
        c.events.read_chunk = 8;
        c.events.read_chunks_buffered = 1;
    })
    .await;
    let events = node.events();
    let mut stalled = events.subscribe(Subscription {
        lower: OffsetMap::new(),
        filter: Filter(vec![StreamSelector {
            name: Some("even".into()),
            ..Default::default()
        }]),
    });
    tokio::time::timeout(WAIT, async {
        for i in 0..200u64 {
            let batch = (0..10)
                .map(|j| {
                    ev(
                        "s",
                        if j % 2 == 0 { "even" } else { "odd" },
                        &(i * 10 + j).to_string(),
                    )
                })
                .collect();
            events.publish(batch).await.unwrap();
        }
    })
    .await
    .expect("publishing stalled behind a subscriber that does not read");
    let got = take(&mut stalled, 1000).await;
    let offsets: Vec<u64> = got.iter().map(|e| e.offset).collect();
    assert_eq!(offsets, (0..2000).step_by(2).collect::<Vec<_>>());
    node.shutdown().await;
}

/// Node info's `streams` counts (semantics, name, source), not sources (API.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_info_counts_streams_not_sources() {
    let dir = tempfile::tempdir().unwrap();
    let stored = populate(dir.path(), 7); // three sources, names x and y of semantics "sem"
    let node = tokio::time::timeout(WAIT, Node::start(Config::for_tests(dir.path())))
        .await
        .unwrap()
        .unwrap();
    node.events()
        .publish(vec![
            ev("a", "1", "1"),
            ev("a", "2", "2"),
            ev("a", "1", "3"),
        ])
        .await
        .unwrap();
    node.events()
        .publish(vec![ev("b", "1", "4")])
        .await
        .unwrap();
    let streams: std::collections::BTreeSet<(String, String, String)> = stored
        .iter()
        .map(|e| (e.source.to_string(), e.semantics.clone(), e.name.clone()))
        .collect();
    let want = streams.len() as u64 + 3; // this node's own: a/1, a/2, b/1
    let info = tokio::time::timeout(WAIT, node.info()).await.unwrap();
    assert_eq!(info.streams, want);
    assert_eq!(info.sources.len(), 4);
    node.shutdown().await;
}

/// A publish queued behind the writer's shutdown may or may not be stored: it is `Interrupted`
/// (HTTP: "may have been stored"), never a plain "retry"; one sent after the writer is gone was
/// not taken at all (`ShuttingDown`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_cut_off_by_shutdown_says_it_may_be_stored() {
    let dir = tempfile::tempdir().unwrap();
    let service = start(dir.path(), |_| {}).await;
    let events = service.events();
    let (release, hold) = std::sync::mpsc::channel::<()>();
    let (holding, held) = tokio::sync::oneshot::channel::<()>();
    events
        .hold_writer(move || {
            let _ = holding.send(());
            let _ = hold.recv_timeout(WAIT);
        })
        .await;
    tokio::time::timeout(WAIT, held).await.unwrap().unwrap();
    // Shutdown is queued first, then the publish behind it.
    let stop = tokio::spawn(service.parts.writer.stop());
    tokio::time::timeout(WAIT, async {
        while events.queued() < 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap();
    let publish = tokio::spawn({
        let events = events.clone();
        async move { events.publish(vec![ev("s", "n", "1")]).await }
    });
    tokio::time::timeout(WAIT, async {
        while events.queued() < 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap();
    release.send(()).unwrap();
    let err = publish.await.unwrap().unwrap_err();
    assert!(matches!(err, EventsError::Interrupted), "{err:?}");
    assert!(err.may_have_acted());
    stop.await.unwrap();
    let err = events.publish(vec![ev("s", "n", "2")]).await.unwrap_err();
    assert!(matches!(err, EventsError::ShuttingDown), "{err:?}");
    assert!(!err.may_have_acted());
}
