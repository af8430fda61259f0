//! Event service semantics over real HTTP: the three orders, inclusive upper and exclusive lower
//! bounds, filters, tags; subscriptions deliver stored events then live ones with no gap and no
//! duplicate, also while publishes race with the catch-up, and resume exactly from an offset map.

use serde_json::{json, Value};
use shoal_tests::{event, expect_error, Node};

fn offsets_of(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["offset"].as_u64().unwrap())
        .collect()
}

/// 12 events over two semantics and three names, in 3 batches.
async fn seeded() -> Node {
    let node = Node::start().unwrap();
    for b in 0..3 {
        let batch: Vec<Value> = (0..4)
            .map(|i| {
                let n = b * 4 + i;
                event(
                    if n % 2 == 0 { "even" } else { "odd" },
                    &format!("name{}", n % 3),
                    json!({ "n": n }),
                )
            })
            .collect();
        node.publish(&batch).await.unwrap();
    }
    node
}

#[tokio::test]
async fn three_orders_and_bounds() {
    let node = seeded().await;
    let s = node.source.clone();
    let q = |lower: Option<Value>, upper: Value, subs: Value, order: &str| {
        let mut body = json!({"upperBound": upper, "subscriptions": subs, "order": order});
        if let Some(l) = lower {
            body["lowerBound"] = l;
        }
        body
    };
    let everything = json!([{}]);

    let asc = node
        .query(&q(
            None,
            json!({s.clone(): 11}),
            everything.clone(),
            "lamport",
        ))
        .await
        .unwrap();
    assert_eq!(offsets_of(&asc), (0..12).collect::<Vec<_>>());
    let lamports: Vec<u64> = asc.iter().map(|e| e["lamport"].as_u64().unwrap()).collect();
    assert!(lamports.windows(2).all(|w| w[0] < w[1]));

    let desc = node
        .query(&q(
            None,
            json!({s.clone(): 11}),
            everything.clone(),
            "lamport-reverse",
        ))
        .await
        .unwrap();
    assert_eq!(offsets_of(&desc), (0..12).rev().collect::<Vec<_>>());

    let by_source = node
        .query(&q(
            None,
            json!({s.clone(): 11}),
            everything.clone(),
            "source-ordered",
        ))
        .await
        .unwrap();
    assert_eq!(offsets_of(&by_source), (0..12).collect::<Vec<_>>());

    // Upper inclusive, lower exclusive; -1 as lower = from the start.
    let mid = node
        .query(&q(
            Some(json!({s.clone(): 3})),
            json!({s.clone(): 7}),
            everything.clone(),
            "lamport",
        ))
        .await
        .unwrap();
    assert_eq!(offsets_of(&mid), vec![4, 5, 6, 7]);
    let from_start = node
        .query(&q(
            Some(json!({s.clone(): -1})),
            json!({s.clone(): 2}),
            everything.clone(),
            "lamport",
        ))
        .await
        .unwrap();
    assert_eq!(offsets_of(&from_start), vec![0, 1, 2]);
    let mid_rev = node
        .query(&q(
            Some(json!({s.clone(): 3})),
            json!({s.clone(): 7}),
            everything.clone(),
            "lamport-reverse",
        ))
        .await
        .unwrap();
    assert_eq!(offsets_of(&mid_rev), vec![7, 6, 5, 4]);

    // Empty and inverted ranges, absent sources, bounds beyond what is stored.
    for (lower, upper) in [
        (None, json!({})),
        (None, json!({s.clone(): -1})),
        (Some(json!({s.clone(): 7})), json!({s.clone(): 7})),
        (Some(json!({s.clone(): 9})), json!({s.clone(): 3})),
        (None, json!({"someOtherSource": 5})),
    ] {
        let got = node
            .query(&q(
                lower.clone(),
                upper.clone(),
                everything.clone(),
                "lamport",
            ))
            .await
            .unwrap();
        assert!(got.is_empty(), "lower {lower:?} upper {upper}: {got:?}");
    }
    let beyond = node
        .query(&q(
            Some(json!({s.clone(): 9})),
            json!({s.clone(): 1000}),
            everything.clone(),
            "lamport",
        ))
        .await
        .unwrap();
    assert_eq!(offsets_of(&beyond), vec![10, 11]);
}

#[tokio::test]
async fn subscription_filters() {
    let node = seeded().await;
    let s = node.source.clone();
    let query = |subs: Value| {
        let node = &node;
        let s = s.clone();
        async move {
            offsets_of(
                &node
                    .query(
                        &json!({"upperBound": {s: 11}, "subscriptions": subs, "order": "lamport"}),
                    )
                    .await
                    .unwrap(),
            )
        }
    };
    assert_eq!(query(json!([])).await, Vec::<u64>::new());
    assert_eq!(
        query(json!([{"semantics": "even"}])).await,
        vec![0, 2, 4, 6, 8, 10]
    );
    assert_eq!(query(json!([{"name": "name0"}])).await, vec![0, 3, 6, 9]);
    assert_eq!(
        query(json!([{"semantics": "odd", "name": "name0"}])).await,
        vec![3, 9]
    );
    assert_eq!(
        query(json!([{"semantics": "odd", "name": "name0"}, {"name": "name1"}])).await,
        vec![1, 3, 4, 7, 9, 10]
    );
    assert_eq!(query(json!([{"source": s.clone()}])).await.len(), 12);
    assert_eq!(query(json!([{"source": "other"}])).await, Vec::<u64>::new());
    assert_eq!(
        query(json!([{"semantics": "none"}])).await,
        Vec::<u64>::new()
    );
    // A key a filter does not have is refused, naming it (issue 19: a typo such as `nmae`
    // used to be ignored, so the filter matched everything). Tags are a filter key.
    let resp = node
        .post(
            "/api/v1/events/query",
            &json!({"upperBound": {s.clone(): 11}, "order": "lamport",
                    "subscriptions": [{"semantics": "even", "colour": "red"}]}),
        )
        .await
        .unwrap();
    expect_error(resp, 400, "ERR_BAD_REQUEST", "`colour`")
        .await
        .unwrap();
    let resp = node
        .post(
            "/api/v1/events/subscribe",
            &json!({"subscriptions": [{"nmae": "name0"}]}),
        )
        .await
        .unwrap();
    expect_error(resp, 400, "ERR_BAD_REQUEST", "`nmae`")
        .await
        .unwrap();
    assert_eq!(
        query(json!([{"semantics": "even", "tags": []}]))
            .await
            .len(),
        6
    );
}

#[tokio::test]
async fn tags_are_stored_and_returned() {
    let node = Node::start().unwrap();
    node.publish(&[
        json!({"semantics": "s", "name": "n", "payload": 1, "tags": ["b", "a"]}),
        json!({"semantics": "s", "name": "n", "payload": 2}),
        json!({"semantics": "s", "name": "n", "payload": 3, "tags": []}),
    ])
    .await
    .unwrap();
    let events = node.query_all().await.unwrap();
    let mut tags: Vec<String> = events[0]["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    tags.sort();
    assert_eq!(tags, ["a", "b"]);
    assert!(events[1].get("tags").is_none(), "{}", events[1]);
    assert!(events[2].get("tags").is_none(), "{}", events[2]);
    // A v1 filter may name tags (API.md extension): events carrying every one of them.
    let upper = node.offsets().await.unwrap();
    for (tags, n) in [
        (json!(["a"]), 1),
        (json!(["a", "b"]), 1),
        (json!(["a", "c"]), 0),
        (json!([]), 3),
    ] {
        let body = json!({"upperBound": upper, "order": "lamport",
                          "subscriptions": [{"semantics": "s", "tags": tags}]});
        assert_eq!(node.query(&body).await.unwrap().len(), n, "tags {tags}");
    }
}

#[tokio::test]
async fn subscribe_catch_up_then_live_no_gap_no_duplicate() {
    let node = seeded().await;
    let s = node.source.clone();
    let mut sub = node
        .subscribe(&json!({"subscriptions": [{}], "lowerBound": {s.clone(): 4}}))
        .await
        .unwrap();
    let caught_up = sub.take(7).await.unwrap();
    assert_eq!(offsets_of(&caught_up), (5..12).collect::<Vec<_>>());

    // Live events, published one by one and as a batch, in order.
    node.publish(&[event("even", "live", json!(100))])
        .await
        .unwrap();
    node.publish(&[
        event("odd", "live", json!(101)),
        event("even", "live", json!(102)),
    ])
    .await
    .unwrap();
    let live = sub.take(3).await.unwrap();
    assert_eq!(offsets_of(&live), vec![12, 13, 14]);
    assert_eq!(live[2]["payload"], 102);

    // A filtered subscription sees only its events, still ascending.
    let mut evens = node
        .subscribe(&json!({"subscriptions": [{"semantics": "even"}]}))
        .await
        .unwrap();
    let got = evens.take(8).await.unwrap();
    assert_eq!(offsets_of(&got), vec![0, 2, 4, 6, 8, 10, 12, 14]);
    node.publish(&[event("odd", "x", json!(0)), event("even", "x", json!(0))])
        .await
        .unwrap();
    assert_eq!(offsets_of(&evens.take(1).await.unwrap()), vec![16]);
    // The unfiltered one got both.
    assert_eq!(offsets_of(&sub.take(2).await.unwrap()), vec![15, 16]);
}

#[tokio::test]
async fn subscribe_while_publishing_concurrently_sees_every_event_once() {
    let node = std::sync::Arc::new(Node::start().unwrap());
    node.publish(&[event("s", "n", json!(-1))]).await.unwrap();
    let total = 400usize;
    // Publishers race with the subscription's catch-up.
    let publisher = {
        let node = node.clone();
        tokio::spawn(async move {
            for i in 0..total / 4 {
                let batch: Vec<Value> = (0..4).map(|j| event("s", "n", json!(i * 4 + j))).collect();
                node.publish(&batch).await.unwrap();
            }
        })
    };
    let mut sub = node
        .subscribe(&json!({"subscriptions": [{}]}))
        .await
        .unwrap();
    let got = sub.take(total + 1).await.unwrap();
    publisher.await.unwrap();
    assert_eq!(offsets_of(&got), (0..=total as u64).collect::<Vec<_>>());
    // Nothing more arrives (no duplicate after the last one).
    sub.expect_nothing(std::time::Duration::from_millis(300))
        .await
        .unwrap();
}

#[tokio::test]
async fn resume_with_last_offset_map_continues_exactly() {
    let node = seeded().await;
    let s = node.source.clone();
    let mut sub = node
        .subscribe(&json!({"subscriptions": [{}]}))
        .await
        .unwrap();
    let first = sub.take(5).await.unwrap();
    let last = first.last().unwrap()["offset"].as_u64().unwrap();
    drop(sub);
    node.publish(&[event("odd", "after", json!(1))])
        .await
        .unwrap();

    let mut resumed = node
        .subscribe(&json!({"subscriptions": [{}], "lowerBound": {s.clone(): last}}))
        .await
        .unwrap();
    let rest = resumed.take(8).await.unwrap();
    assert_eq!(offsets_of(&rest), (5..13).collect::<Vec<_>>());
    let mut all = offsets_of(&first);
    all.extend(offsets_of(&rest));
    assert_eq!(all, (0..13).collect::<Vec<_>>());
}
