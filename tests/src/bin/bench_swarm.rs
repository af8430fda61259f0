//! Swarm benchmarks between real `shoal run` processes on 127.0.0.1 (see BENCHMARKS.md):
//!
//! 1. publish on A → subscriber on directly connected B, at 100 and 1,000 events/s: p50/p99;
//! 2. catch-up of a node joining a peer that holds N events (default 1,000,000): seconds, ev/s;
//! 3. 10 nodes each publishing 50 events/s: p99 delivery latency to every other node;
//! 4. idle bandwidth per node (3 connected idle nodes; bytes sent on their swarm sockets,
//!    from `ss -tin`);
//! 5. `shoal events dump` of A and `restore` into a fresh node, in events/s, beside the catch-up
//!    of a fresh peer measured in the same run (`BENCH_RUNS` runs, default 3; medians).
//!
//! Run: `cargo run --release -p shoal-tests --bin bench_swarm [-- latency|catchup|mesh|idle|dump]
//! [--hog [N]] [--runs N]` (`--hog`: N busy processes, default one per core, at normal priority
//! beside the nodes for the whole run; `--runs N`: the mesh N times, medians; the load average
//! is printed with each figure)
//! (`BENCH_CATCHUP_EVENTS=N` sizes the catch-up and the dump). Latency is measured from a timestamp in the
//! payload taken just before the publish request to the moment B's subscriber reads the line.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use shoal_tests::{event, Ndjson, Node, NodeOptions};

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn peer(of: &Node) -> NodeOptions {
    NodeOptions::default().arg("--peer").arg(of.swarm.clone())
}

async fn subscribe_all(node: &Node) -> Result<Ndjson> {
    node.subscribe(&json!({ "subscriptions": [{}] })).await
}

/// Publishes `n` single-event requests at `rate`/s from `node` (tasks bounded by `n`).
async fn publish_at(node: &Node, name: &str, rate: u64, n: usize) -> Result<()> {
    let period = Duration::from_micros(1_000_000 / rate);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        tick.tick().await;
        let http = node.http.clone();
        let url = node.url("/api/v1/events/publish");
        let body = json!({ "data": [event("bench", name, json!({ "t": now_us(), "i": i }))] });
        tasks.spawn(async move { http.post(url).json(&body).send().await });
        while tasks.len() > 256 {
            tasks.join_next().await;
        }
    }
    while let Some(r) = tasks.join_next().await {
        let resp = r.context("publish task")?.context("publish")?;
        if resp.status().as_u16() != 201 {
            bail!("publish answered {}", resp.status());
        }
    }
    Ok(())
}

/// Reads `n` events of `source` from `sub`, returning each one's latency in µs.
async fn latencies(sub: &mut Ndjson, source: Option<&str>, n: usize) -> Result<Vec<u64>> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let Some(e) = sub.next_within(Duration::from_secs(60)).await? else {
            bail!("subscription ended");
        };
        if source.is_some_and(|s| e["stream"]["source"] != s) {
            continue;
        }
        let t = e["payload"]["t"].as_u64().context("payload.t")?;
        out.push(now_us().saturating_sub(t));
    }
    Ok(out)
}

/// ` (load X)`: the 1-minute load average, for the figure it follows.
fn load() -> String {
    shoal_tests::load::load_average().map_or(String::new(), |l| format!(" (load {l:.1})"))
}

async fn direct_latency() -> Result<()> {
    let a = Node::start()?;
    let b = Node::start_with(peer(&a))?;
    // Warm up: the first event also establishes gossip meshes.
    let mut sub = subscribe_all(&b).await?;
    publish_at(&a, "warm", 10, 20).await?;
    latencies(&mut sub, Some(&a.source), 20).await?;
    for (rate, secs) in [(100u64, 10u64), (1000, 5)] {
        let n = (rate * secs) as usize;
        let (pubd, lat) = tokio::join!(
            publish_at(&a, "lat", rate, n),
            latencies(&mut sub, Some(&a.source), n)
        );
        pubd?;
        let mut lat = lat?;
        lat.sort_unstable();
        println!(
            "direct A→B at {rate} ev/s: n={n} p50={:.2} ms p99={:.2} ms max={:.2} ms{}",
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            pct(&lat, 1.0),
            load()
        );
    }
    Ok(())
}

fn catchup_events() -> usize {
    std::env::var("BENCH_CATCHUP_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

/// Publishes `n` small events on `a` in batches of 10,000.
async fn fill(a: &Node, n: usize) -> Result<()> {
    const BATCH: usize = 10_000;
    let mut published = 0;
    while published < n {
        let k = BATCH.min(n - published);
        let events: Vec<Value> = (0..k)
            .map(|i| {
                event(
                    "bench",
                    "bulk",
                    json!({ "i": published + i, "v": "abcdefghij" }),
                )
            })
            .collect();
        a.publish(&events).await?;
        published += k;
    }
    Ok(())
}

/// Waits (at most 10 minutes) until `node` stores `source` up to `last`.
async fn wait_stored(node: &Node, source: &str, last: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let o = node.offsets().await?;
        if o[source].as_u64() == Some(last) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("never stored {source} up to {last}: {o}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `shoal <args>` to the end (no time limit: a big dump may take minutes).
fn shoal(args: &[&str]) -> Result<()> {
    let out = std::process::Command::new(shoal_tests::shoal_bin())
        .args(args)
        .output()
        .context("run shoal")?;
    if !out.status.success() {
        bail!(
            "shoal {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Per run: catch-up of a fresh peer of A (the reference), `events dump` of A to a file,
/// `events restore` of that file into a fresh node (until it stores every event).
async fn dump_restore() -> Result<()> {
    let n = catchup_events();
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let a = Node::start()?;
    fill(&a, n).await?;
    let last = n as u64 - 1;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("a.car");
    let file = file.to_str().context("temp path")?;
    let (mut catchups, mut dumps, mut restores) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        let started = Instant::now();
        let b = Node::start_with(peer(&a))?;
        wait_stored(&b, &a.source, last).await?;
        let catchup = n as f64 / started.elapsed().as_secs_f64();
        drop(b);
        let started = Instant::now();
        let a_url = a.url("");
        shoal(&[
            "events",
            "dump",
            "-o",
            file,
            "--node",
            a_url.trim_end_matches('/'),
        ])?;
        let dump = n as f64 / started.elapsed().as_secs_f64();
        let c = Node::start()?;
        let c_url = c.url("");
        let started = Instant::now();
        shoal(&[
            "events",
            "restore",
            file,
            "--node",
            c_url.trim_end_matches('/'),
        ])?;
        wait_stored(&c, &a.source, last).await?;
        let restore = n as f64 / started.elapsed().as_secs_f64();
        println!(
            "run {run}: catch-up {catchup:.0} events/s, dump {dump:.0} events/s ({:.2}x), \
             restore {restore:.0} events/s ({:.2}x); file {} bytes",
            dump / catchup,
            restore / catchup,
            std::fs::metadata(file)?.len()
        );
        catchups.push(catchup);
        dumps.push(dump);
        restores.push(restore);
    }
    let ratios = |v: &[f64]| -> Vec<f64> { v.iter().zip(&catchups).map(|(x, c)| x / c).collect() };
    println!(
        "medians of {runs} runs, {n} events: catch-up {:.0} events/s; dump {:.0} events/s ({:.2}x \
         catch-up); restore {:.0} events/s ({:.2}x catch-up)",
        median(catchups.clone()),
        median(dumps.clone()),
        median(ratios(&dumps)),
        median(restores.clone()),
        median(ratios(&restores)),
    );
    Ok(())
}

async fn catchup() -> Result<()> {
    let n = catchup_events();
    let a = Node::start()?;
    const BATCH: usize = 10_000;
    let started = Instant::now();
    let mut published = 0;
    while published < n {
        let k = BATCH.min(n - published);
        let events: Vec<Value> = (0..k)
            .map(|i| {
                event(
                    "bench",
                    "bulk",
                    json!({ "i": published + i, "v": "abcdefghij" }),
                )
            })
            .collect();
        a.publish(&events).await?;
        published += k;
    }
    println!(
        "catch-up: published {n} events on A in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let b = Node::start_with(peer(&a))?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let o = b.offsets().await?;
        if o[&a.source].as_u64() == Some(n as u64 - 1) {
            break;
        }
        if Instant::now() > deadline {
            bail!("B did not catch up: {o}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "catch-up of {n} events (B start → all stored): {secs:.2} s, {:.0} events/s",
        n as f64 / secs
    );
    Ok(())
}

/// The mesh `runs` times on fresh nodes; medians of p50 and p99.
async fn mesh_runs(runs: usize) -> Result<()> {
    let (mut p50, mut p99) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (a, b) = mesh().await?;
        p50.push(a);
        p99.push(b);
    }
    if runs > 1 {
        let each = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "mesh, {runs} runs: median p50={:.1} ms (runs: {}) p99={:.1} ms (runs: {})",
            median(p50.clone()),
            each(&p50),
            median(p99.clone()),
            each(&p99)
        );
    }
    Ok(())
}

/// One mesh run; returns (p50, p99) in ms.
async fn mesh() -> Result<(f64, f64)> {
    const N: usize = 10;
    const RATE: u64 = 50;
    const SECS: u64 = 10;
    let first = Node::start_with(base())?;
    let mut nodes = vec![first];
    for i in 1..N {
        // Each node dials up to three earlier ones: a connected, not complete, mesh.
        let mut opts = base();
        for j in [i - 1, i / 2, i.saturating_sub(3)] {
            opts = opts.arg("--peer").arg(nodes[j].swarm.clone());
        }
        nodes.push(Node::start_with(opts)?);
    }
    tokio::time::sleep(Duration::from_secs(3)).await; // meshes form
    let mut subs = Vec::new();
    for n in &nodes {
        subs.push(subscribe_all(n).await?);
    }
    let per_node = (RATE * SECS) as usize;
    let publishers = futures::future::try_join_all(nodes.iter().enumerate().map(|(i, n)| {
        publish_at(
            n,
            Box::leak(format!("n{i}").into_boxed_str()),
            RATE,
            per_node,
        )
    }));
    let readers = futures::future::try_join_all(subs.iter_mut().zip(&nodes).map(|(sub, n)| {
        let own = n.source.clone();
        async move {
            // Events from the 9 other nodes (own ones are local, skip them).
            let mut out = Vec::new();
            let want = per_node * (N - 1);
            while out.len() < want {
                let Some(e) = sub.next_within(Duration::from_secs(60)).await? else {
                    bail!("subscription ended");
                };
                if e["stream"]["source"] == own.as_str() {
                    continue;
                }
                let t = e["payload"]["t"].as_u64().context("payload.t")?;
                out.push(now_us().saturating_sub(t));
            }
            Ok::<_, anyhow::Error>(out)
        }
    }));
    let (p, r) = tokio::join!(publishers, readers);
    keep_logs(&nodes)?;
    p?;
    let mut all: Vec<u64> = r?.into_iter().flatten().collect();
    all.sort_unstable();
    println!(
        "{N} nodes × {RATE} ev/s for {SECS} s: deliveries={} p50={:.2} ms p99={:.2} ms max={:.2} ms{}",
        all.len(),
        pct(&all, 0.5),
        pct(&all, 0.99),
        pct(&all, 1.0),
        load()
    );
    Ok((pct(&all, 0.5), pct(&all, 0.99)))
}

/// With `BENCH_LOG_DIR=dir`, copies each node's log there (`node<i>.log`; set
/// `BENCH_NODE_LOG=debug` for the node's log level).
fn keep_logs(nodes: &[Node]) -> Result<()> {
    let Some(dir) = std::env::var_os("BENCH_LOG_DIR") else {
        return Ok(());
    };
    std::fs::create_dir_all(&dir)?;
    for (i, n) in nodes.iter().enumerate() {
        std::fs::write(
            std::path::Path::new(&dir).join(format!("node{i}.log")),
            n.log(),
        )?;
    }
    Ok(())
}

/// Extra node options from the environment (`BENCH_NODE_LOG`: the nodes' `RUST_LOG`).
fn base() -> NodeOptions {
    let mut o = NodeOptions::default();
    if let Ok(level) = std::env::var("BENCH_NODE_LOG") {
        o.env.push(("RUST_LOG".into(), level));
    }
    o
}

/// Bytes sent so far, by both ends, on the TCP connections touching `port` (`ss -tin`).
/// Dialled connections use ephemeral local ports, so a connection between two nodes touches
/// exactly one node's listen port: summing over the nodes' ports counts each once.
fn bytes_sent(port: u16) -> Result<u64> {
    let out = std::process::Command::new("ss")
        .args([
            "-tinH",
            "state",
            "established",
            &format!("( sport = :{port} or dport = :{port} )"),
        ])
        .output()
        .context("ss")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .filter_map(|kv| kv.strip_prefix("bytes_sent:"))
        .map(|v| v.parse::<u64>().unwrap_or(0))
        .sum())
}

/// The TCP port of a node's dialable swarm address (`/ip4/…/tcp/PORT/p2p/…`): the one its
/// peers dial, so every connection between the nodes touches one of these ports.
fn swarm_port(node: &Node) -> Result<u16> {
    let mut parts = node.swarm.split('/');
    while let Some(p) = parts.next() {
        if p == "tcp" {
            return parts.next().context("no port")?.parse().context("port");
        }
    }
    bail!("no tcp port in {}", node.swarm)
}

async fn idle() -> Result<()> {
    let a = Node::start()?;
    let b = Node::start_with(peer(&a))?;
    let c = Node::start_with(peer(&a).arg("--peer").arg(b.swarm.clone()))?;
    let ports = [swarm_port(&a)?, swarm_port(&b)?, swarm_port(&c)?];
    for n in [&a, &b, &c] {
        n.publish(&[event("bench", "idle", json!(1))]).await?;
    }
    tokio::time::sleep(Duration::from_secs(10)).await; // settle
    const SECS: u64 = 30;
    let total = |ports: &[u16]| -> Result<u64> { ports.iter().map(|&p| bytes_sent(p)).sum() };
    let before = total(&ports)?;
    if before == 0 {
        bail!("no bytes found on the swarm ports {ports:?} (`ss -tin`)");
    }
    tokio::time::sleep(Duration::from_secs(SECS)).await;
    let after = total(&ports)?;
    let per_node = (after - before) as f64 / 3.0 / SECS as f64;
    println!("idle: 3 connected nodes, ~{per_node:.0} bytes/s sent per node (over {SECS} s)");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut which: Vec<String> = Vec::new();
    let (mut hog, mut runs) = (0, 1);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter().peekable();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--hog" => {
                let n = it.next_if(|v| v.parse::<usize>().is_ok() || v.as_str() == "cores");
                hog = shoal_tests::load::hog_count(n.map(String::as_str))?;
            }
            "--runs" => {
                runs = it
                    .next()
                    .and_then(|v| v.parse::<usize>().ok())
                    .context("--runs needs a number")?
                    .max(1);
            }
            other if other.starts_with("--") => {
                bail!("unknown flag {other}; see the module doc of bench_swarm.rs")
            }
            _ => which.push(a.clone()),
        }
    }
    let _hog = shoal_tests::load::Hog::start(hog)?;
    if hog > 0 {
        println!("CPU hog: {hog} busy processes at normal priority beside the nodes");
    }
    let run = |name: &str| which.is_empty() || which.iter().any(|w| w == name);
    if run("latency") {
        direct_latency().await?;
    }
    if run("idle") {
        idle().await?;
    }
    if run("mesh") {
        mesh_runs(runs).await?;
    }
    if run("catchup") {
        catchup().await?;
    }
    if run("dump") {
        dump_restore().await?;
    }
    Ok(())
}
