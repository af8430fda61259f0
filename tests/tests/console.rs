//! The console service on its own address: POST validation and 201, reading back with `since`,
//! following live entries, durability across restarts, bounded retention, JSON 404/405.

use serde_json::{json, Value};
use shoal_tests::{expect_error, expect_status, within, Ndjson, Node, NodeOptions};

fn entry(message: &str) -> Value {
    json!({"severity": "info", "logName": "app.log", "message": message,
           "producerName": "com.example.app", "producerVersion": "1.2.3"})
}

async fn post(node: &Node, body: &Value) -> reqwest::Response {
    within(
        node.http
            .post(node.console_url("/api/v1/logs"))
            .json(body)
            .send(),
    )
    .await
    .unwrap()
}

async fn read(node: &Node, query: &str) -> Vec<Value> {
    let resp = within(
        node.http
            .get(node.console_url(&format!("/api/v1/logs{query}")))
            .send(),
    )
    .await
    .unwrap();
    expect_status(&resp, 200).unwrap();
    Ndjson::new(resp).collect().await.unwrap()
}

#[tokio::test]
async fn post_then_read_back() {
    let node = Node::start().unwrap();
    let resp = post(&node, &entry("first")).await;
    expect_status(&resp, 201).unwrap();
    assert!(
        within(resp.bytes()).await.unwrap().is_empty(),
        "201 body must be empty"
    );

    let mut full = entry("second");
    full["severity"] = json!("error");
    full["labels"] = json!({"zone": "a", "line": "3"});
    full["logTimestamp"] = json!("2020-05-01T10:00:00.5+02:00");
    full["additionalData"] = json!({"deep": [1, {"x": null}]});
    full["unknownField"] = json!(true);
    expect_status(&post(&node, &full).await, 201).unwrap();
    // Any content type, chunked or not.
    let resp = within(
        node.http
            .post(node.console_url("/api/v1/logs"))
            .header("content-type", "text/plain")
            .body(entry("third").to_string())
            .send(),
    )
    .await
    .unwrap();
    expect_status(&resp, 201).unwrap();

    let entries = read(&node, "").await;
    let messages: Vec<&str> = entries
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages, ["first", "second", "third"]);
    // logTimestamp filled in where absent, kept where given.
    assert!(entries[0]["logTimestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(entries[1]["logTimestamp"], "2020-05-01T10:00:00.5+02:00");
    assert_eq!(entries[1]["labels"], json!({"zone": "a", "line": "3"}));
    assert_eq!(
        entries[1]["additionalData"],
        json!({"deep": [1, {"x": null}]})
    );
    assert_eq!(entries[1]["severity"], "error");
    assert_eq!(entries[0]["producerVersion"], "1.2.3");

    // since compares with logTimestamp (inclusive).
    let since = read(&node, "?since=2021-01-01T00:00:00Z").await;
    assert_eq!(since.len(), 2);
    let exact = read(&node, "?since=2020-05-01T08:00:00.5Z").await;
    assert_eq!(exact.len(), 3);
    let future = read(&node, "?since=2999-01-01T00:00:00Z").await;
    assert!(future.is_empty());
}

#[tokio::test]
async fn post_rejects_bad_entries() {
    let node = Node::start().unwrap();
    let mut cases: Vec<(Value, &str)> = Vec::new();
    for field in [
        "severity",
        "logName",
        "message",
        "producerName",
        "producerVersion",
    ] {
        let mut e = entry("m");
        e.as_object_mut().unwrap().remove(field);
        cases.push((e, field));
        let mut e = entry("m");
        e[field] = json!(42);
        cases.push((e, field));
    }
    let mut e = entry("m");
    e["severity"] = json!("fatal");
    cases.push((e, "severity"));
    let mut e = entry("m");
    e["labels"] = json!({"k": 1});
    cases.push((e, "labels.k"));
    let mut e = entry("m");
    e["labels"] = json!(["a"]);
    cases.push((e, "labels"));
    let mut e = entry("m");
    e["logTimestamp"] = json!("yesterday");
    cases.push((e, "logTimestamp"));
    let mut e = entry("m");
    e["logTimestamp"] = json!(12345);
    cases.push((e, "logTimestamp"));
    cases.push((json!([entry("m")]), "object"));
    for (body, mentions) in cases {
        let resp = post(&node, &body).await;
        expect_error(resp, 400, "ERR_BAD_REQUEST", mentions)
            .await
            .unwrap_or_else(|e| panic!("{body}: {e:#}"));
    }
    let resp = within(
        node.http
            .post(node.console_url("/api/v1/logs"))
            .body("{\"severity\":")
            .send(),
    )
    .await
    .unwrap();
    expect_error(resp, 400, "ERR_BAD_REQUEST", "JSON")
        .await
        .unwrap();
    let resp = within(
        node.http
            .get(node.console_url("/api/v1/logs?since=notatime"))
            .send(),
    )
    .await
    .unwrap();
    expect_error(resp, 400, "ERR_BAD_REQUEST", "since")
        .await
        .unwrap();
    assert!(
        read(&node, "").await.is_empty(),
        "rejected entries must not be stored"
    );
}

#[tokio::test]
async fn console_address_answers_json_404_and_405() {
    let node = Node::start().unwrap();
    let resp = within(
        node.http
            .get(node.console_url("/api/v1/events/offsets"))
            .send(),
    )
    .await
    .unwrap();
    expect_error(resp, 404, "ERR_NOT_FOUND", "").await.unwrap();
    let resp = within(node.http.delete(node.console_url("/api/v1/logs")).send())
        .await
        .unwrap();
    expect_error(resp, 405, "ERR_METHOD_NOT_ALLOWED", "")
        .await
        .unwrap();
    // The API address serves the log read-only, for the dashboard's same-origin page
    // (docs/api.md); writing stays on the console address.
    let resp = node.get("/api/v1/logs").await.unwrap();
    expect_status(&resp, 200).unwrap();
}

#[tokio::test]
async fn follow_streams_new_entries() {
    let node = Node::start().unwrap();
    expect_status(&post(&node, &entry("before")).await, 201).unwrap();
    let resp = within(
        node.http
            .get(node.console_url("/api/v1/logs?follow=true"))
            .send(),
    )
    .await
    .unwrap();
    expect_status(&resp, 200).unwrap();
    let mut follow = Ndjson::new(resp);
    assert_eq!(follow.take(1).await.unwrap()[0]["message"], "before");
    for i in 0..5 {
        expect_status(&post(&node, &entry(&format!("live{i}"))).await, 201).unwrap();
    }
    let live = follow.take(5).await.unwrap();
    let messages: Vec<&str> = live
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages, ["live0", "live1", "live2", "live3", "live4"]);

    // follow with since: old entries are filtered, live ones too.
    let resp = within(
        node.http
            .get(node.console_url("/api/v1/logs?since=2030-01-01T00:00:00Z&follow=true"))
            .send(),
    )
    .await
    .unwrap();
    let mut future_only = Ndjson::new(resp);
    let mut late = entry("late");
    late["logTimestamp"] = json!("2031-01-01T00:00:00Z");
    expect_status(&post(&node, &entry("now")).await, 201).unwrap();
    expect_status(&post(&node, &late).await, 201).unwrap();
    assert_eq!(future_only.take(1).await.unwrap()[0]["message"], "late");
}

#[tokio::test]
async fn entries_survive_restart_and_retention_is_bounded() {
    let node =
        Node::start_with(NodeOptions::default().arg("--console-retention").arg("3")).unwrap();
    for i in 0..5 {
        expect_status(&post(&node, &entry(&format!("m{i}"))).await, 201).unwrap();
    }
    let messages = |entries: Vec<Value>| -> Vec<String> {
        entries
            .iter()
            .map(|e| e["message"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(messages(read(&node, "").await), ["m2", "m3", "m4"]);
    let node = node.restart().unwrap();
    assert_eq!(messages(read(&node, "").await), ["m2", "m3", "m4"]);
    expect_status(&post(&node, &entry("m5")).await, 201).unwrap();
    assert_eq!(messages(read(&node, "").await), ["m3", "m4", "m5"]);
}
