//! Ad-hoc publish load against a running node (the benchmark proper is `bench_node`):
//! `SHOAL_LOAD_URL=http://127.0.0.1:4454 SHOAL_LOAD=16x500x1 cargo test -p shoal-api --test load -- --ignored --nocapture`
//! (clients x requests x events per request).

use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
#[ignore = "needs a running node (SHOAL_LOAD_URL)"]
async fn publish_load() {
    let Ok(url) = std::env::var("SHOAL_LOAD_URL") else {
        return;
    };
    let spec = std::env::var("SHOAL_LOAD").unwrap_or_else(|_| "16x500x1".into());
    let parts: Vec<usize> = spec.split('x').map(|p| p.parse().unwrap()).collect();
    let (clients, requests, per) = (parts[0], parts[1], parts[2]);
    let events: Vec<serde_json::Value> = (0..per)
        .map(|i| serde_json::json!({"semantics":"com.example.robot","name":format!("robot{}", i % 10),"payload":{"locationChangedTo":format!("loading-bay-{i}"),"n":i}}))
        .collect();
    let body = serde_json::json!({ "data": events }).to_string();
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let url = format!("{url}/api/v1/events/publish");
            let body = body.clone();
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(60))
                    .build()
                    .unwrap();
                let mut latencies = Vec::with_capacity(requests);
                for _ in 0..requests {
                    let t = Instant::now();
                    let resp = http.post(&url).body(body.clone()).send().await.unwrap();
                    assert_eq!(resp.status().as_u16(), 201);
                    resp.bytes().await.unwrap();
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort();
    println!(
        "{clients} clients x {requests} requests x {per} events: {:.0} events/s, {:.0} requests/s, p50 {:?}, p99 {:?}",
        (clients * requests * per) as f64 / secs,
        (clients * requests) as f64 / secs,
        all[all.len() / 2],
        all[all.len() * 99 / 100]
    );
}
