//! End-to-end benchmark of the Pond store API against a real `shoal run` (release):
//!
//! 1. `persistEvents` over one WebSocket connection in batches of 100 (16 requests in flight);
//! 2. `requestPersistedEvents` streaming 1,000,000 stored events (eventKey order);
//! 3. a Pond 2.7.0 fish (the real npm package, `npm ci` from `tests/pond/pond2`) over 100,000
//!    stored events: time to its first state on a fresh start and from its snapshot.
//!
//! Prints each run and the median of `--runs` (default 3) runs.
//! `cargo run --release -p shoal-tests --bin bench_pond [-- --runs N]`

use std::collections::VecDeque;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use shoal_tests::stats::median;
use shoal_tests::Node;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(node: &Node) -> Result<Ws> {
    let (ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/store_api", node.store)).await?;
    Ok(ws)
}

/// The next text frame as JSON (bounded wait).
async fn frame(ws: &mut Ws) -> Result<Value> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(120), ws.next())
            .await
            .context("no frame within 120 s")?
            .context("connection closed")??;
        if let Message::Text(t) = msg {
            return Ok(serde_json::from_str(t.as_str())?);
        }
    }
}

/// Persists `n` events tagged `tag` in batches of `batch`, `window` requests in flight;
/// timestamps from `ts(i)`. Returns the elapsed time.
async fn persist(
    ws: &mut Ws,
    tag: &str,
    n: u64,
    batch: u64,
    window: usize,
    ts: impl Fn(u64) -> u64,
) -> Result<Duration> {
    let started = Instant::now();
    let mut next_id = 0u64;
    let mut in_flight: VecDeque<u64> = VecDeque::new();
    let mut sent = 0u64;
    let mut done = 0u64;
    while done < n || !in_flight.is_empty() {
        while sent < n && in_flight.len() < window {
            let events: Vec<Value> = (sent..(sent + batch).min(n))
                .map(|i| json!({"semantics":"_t_","name":"_t_","tags":[tag],"timestamp":ts(i),"payload":{"i":i}}))
                .collect();
            sent += events.len() as u64;
            let f = json!({"type":"request","serviceId":"/ax/events/persistEvents","requestId":next_id,"payload":{"events":events}});
            ws.send(Message::text(f.to_string())).await?;
            in_flight.push_back(next_id);
            next_id += 1;
        }
        let f = frame(ws).await?;
        match f["type"].as_str() {
            Some("next") => {
                done += f["payload"]["events"]
                    .as_array()
                    .map_or(0, |a| a.len() as u64)
            }
            Some("complete") => {
                let id = f["requestId"].as_u64();
                in_flight.retain(|x| Some(*x) != id);
            }
            _ => bail!("persist failed: {f}"),
        }
    }
    Ok(started.elapsed())
}

/// Streams every stored event; returns (events, elapsed).
async fn read_all(ws: &mut Ws, id: u64) -> Result<(u64, Duration)> {
    let started = Instant::now();
    let req = json!({"type":"request","serviceId":"/ax/events/requestPersistedEvents","requestId":id,
        "payload":{"fromPsnsExcluding":{"psns":{},"default":"min"},"toPsnsIncluding":{"psns":{},"default":"max"},
        "subscriptionSet":{"type":"all"},"sortOrder":"eventKey","minEventKey":null,"count":"max"}});
    ws.send(Message::text(req.to_string())).await?;
    let mut n = 0u64;
    loop {
        // Count without building a JSON tree of every frame: events are `{"sourceId"...}`.
        let msg = tokio::time::timeout(Duration::from_secs(120), ws.next())
            .await
            .context("no frame within 120 s")?
            .context("connection closed")??;
        let Message::Text(t) = msg else { continue };
        let t = t.as_str();
        let mine = format!("\"requestId\":{id},");
        let mine_end = format!("\"requestId\":{id}}}");
        if !t.contains(&mine) && !t.contains(&mine_end) {
            continue;
        }
        if t.starts_with("{\"type\":\"complete\"") {
            return Ok((n, started.elapsed()));
        }
        if !t.starts_with("{\"type\":\"next\"") {
            bail!("read failed: {t}");
        }
        n += t.matches("{\"sourceId\"").count() as u64;
    }
}

/// `npm ci` of the Pond 2 driver into a scratch dir.
fn install_pond2(scratch: &Path) -> Result<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("pond/pond2");
    let dir = scratch.join("pond2");
    std::fs::create_dir_all(&dir)?;
    for e in std::fs::read_dir(&src)? {
        let e = e?;
        if e.file_type()?.is_file() {
            std::fs::copy(e.path(), dir.join(e.file_name()))?;
        }
    }
    let ok = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir)
        .status()?
        .success();
    if !ok {
        bail!("npm ci failed in {dir:?}");
    }
    Ok(dir)
}

/// Runs the driver's `count` mode; returns its result line.
fn count(dir: &Path, node: &Node, tag: &str, n: u64, wait_snapshot_ms: u64) -> Result<Value> {
    let mut child = Command::new("node")
        .args([
            "driver.js",
            "count",
            tag,
            &n.to_string(),
            &wait_snapshot_ms.to_string(),
        ])
        .env("STORE_URL", format!("ws://{}/store_api", node.store))
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let out = child.stdout.take().context("stdout")?;
    let line = std::io::BufReader::new(out)
        .lines()
        .next()
        .context("no output")??;
    let _ = child.kill();
    let _ = child.wait();
    let v: Value = serde_json::from_str(&line)?;
    if v.get("error").is_some() {
        bail!("driver failed: {v}");
    }
    Ok(v)
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);

    // 1. persistEvents, batches of 100, one connection.
    let mut rates = Vec::new();
    for r in 0..runs {
        let node = Node::start()?;
        let mut ws = connect(&node).await?;
        let n = 100_000;
        let t = persist(&mut ws, "bench", n, 100, 16, |_| now_micros()).await?;
        let rate = n as f64 / t.as_secs_f64();
        println!("persistEvents run {r}: {n} events in {t:?} = {rate:.0} events/s");
        rates.push(rate);
    }
    println!(
        "persistEvents (batches of 100, one connection): median {:.0} events/s",
        median(rates)
    );

    // 2. requestPersistedEvents over 1,000,000 events.
    let node = Node::start()?;
    let mut ws = connect(&node).await?;
    let n = 1_000_000;
    let t = persist(&mut ws, "bench", n, 1000, 8, |_| now_micros()).await?;
    println!("(stored {n} events in {t:?})");
    let mut rates = Vec::new();
    for r in 0..runs {
        let (got, t) = read_all(&mut ws, 1_000_000 + r as u64).await?;
        if got != n {
            bail!("read {got} of {n} events");
        }
        let rate = got as f64 / t.as_secs_f64();
        println!("requestPersistedEvents run {r}: {got} events in {t:?} = {rate:.0} events/s");
        rates.push(rate);
    }
    println!(
        "requestPersistedEvents (1,000,000 events): median {:.0} events/s",
        median(rates)
    );
    drop(ws);
    drop(node);

    // 3. A Pond 2 fish over 100,000 stored events: first state fresh vs from its snapshot.
    let scratch = tempfile::tempdir()?;
    let dir = match install_pond2(scratch.path()) {
        Ok(d) => d,
        Err(e) => {
            println!("Pond fish benchmark SKIPPED: {e:#}");
            return Ok(());
        }
    };
    let node = Node::start()?;
    let mut ws = connect(&node).await?;
    let (mut fresh, mut snap) = (Vec::new(), Vec::new());
    let n = 100_000u64;
    let span = 3 * 3600 * 1_000_000u64;
    for r in 0..runs {
        let tag = format!("fish{r}");
        let now = now_micros();
        persist(&mut ws, &tag, n, 1000, 8, |i| {
            if i + 1000 < n {
                now - span + span / 3 * i / n
            } else {
                now
            }
        })
        .await?;
        let a = count(&dir, &node, &tag, n, 30_000)?;
        let b = count(&dir, &node, &tag, n, 0)?;
        println!("fish run {r}: fresh {a}\n            from snapshot {b}");
        fresh.push(a["firstStateMs"].as_f64().unwrap_or(f64::NAN));
        snap.push(b["firstStateMs"].as_f64().unwrap_or(f64::NAN));
    }
    println!(
        "Pond 2 fish over 100,000 events, time to first state: fresh median {:.0} ms, from snapshot median {:.0} ms",
        median(fresh),
        median(snap)
    );
    Ok(())
}
