//! Publish throughput of one node while it is observed (issue 14), printing medians of several
//! runs. Each run measures, on a fresh node each, in this order:
//! - `plain`: nobody watching — the run's reference;
//! - `scraper`: a Prometheus-style scraper reading `GET /metrics` every second;
//! - `dashboard`: the scraper plus a dashboard tab open (Debian's headless `chromium` on the
//!   node's `/`: its live view over `/api/v1/node/events` and its live event tail, which receives
//!   every published event);
//! - one config per `--compare NAME=PATH`: nobody watching, another `shoal` binary — e.g. one
//!   built from the commit before the metrics instrumentation, for a before/after.
//!
//! Each config is reported as events/s and as the median of its per-run ratios to the same
//! run's `plain`, and with the node's CPU time per event (utime + stime of the node process):
//! the browser runs on the same machine, so throughput also drops by what the browser takes
//! from the node's cores, while the node's µs/event is its own extra work only. Workloads as bench_node's: batches of 100 events from 4 concurrent clients,
//! and single-event requests from 16 concurrent clients (group commit). Request bodies are
//! encoded before the clock starts. The dashboard config waits until the page has opened its
//! event stream (the node's own `shoal_http_requests_total{route="/api/v1/node/events"}`)
//! before publishing.
//!
//! Run: `cargo run --release -p shoal-tests --bin bench_observed [-- --runs 5 --batched-events
//! 200000 --single-events 32000 --compare before=PATH]`. The node is the `shoal` binary of the same
//! profile (built by the harness; `SHOAL_BIN` overrides it).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use shoal_tests::browser::{chromium, Browser};
use shoal_tests::{Node, NodeOptions};

struct Settings {
    runs: usize,
    batched_events: usize,
    single_events: usize,
    /// `--compare NAME=PATH`, in order.
    compare: Vec<(String, PathBuf)>,
}

fn settings() -> Result<Settings> {
    let mut s = Settings {
        runs: 5,
        batched_events: 200_000,
        single_events: 32_000,
        compare: Vec::new(),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--runs" => s.runs = value()?.parse::<usize>()?.max(1),
            "--batched-events" => s.batched_events = value()?.parse()?,
            "--single-events" => s.single_events = value()?.parse()?,
            "--compare" => {
                let v = value()?;
                let (name, path) = v.split_once('=').context("--compare needs NAME=PATH")?;
                s.compare.push((name.to_string(), PathBuf::from(path)));
            }
            "--quick" => {
                s.runs = 1;
                s.batched_events = 20_000;
                s.single_events = 4_000;
            }
            other => bail!("unknown flag {other}; see the module doc of bench_observed.rs"),
        }
    }
    Ok(s)
}

#[derive(Clone, PartialEq, Eq)]
enum Config {
    Plain,
    Scraper,
    Dashboard,
    /// Plain, on another binary (`--compare NAME=PATH`).
    Other(String, PathBuf),
}

impl Config {
    fn name(&self) -> String {
        match self {
            Config::Plain => "plain".into(),
            Config::Scraper => "scraper 1 s".into(),
            Config::Dashboard => "scraper 1 s + dashboard tab".into(),
            Config::Other(name, _) => format!("{name} (plain)"),
        }
    }
}

/// What watches the node during one measurement; dropping it stops them.
struct Observers {
    scraper: Option<tokio::task::JoinHandle<Result<u64>>>,
    _browser: Option<(Browser, tempfile::TempDir)>,
}

impl Observers {
    /// Stops the scraper; how many scrapes it made.
    async fn finish(mut self) -> Result<u64> {
        match self.scraper.take() {
            Some(task) => {
                task.abort();
                match task.await {
                    Ok(r) => r,
                    // Aborted while waiting for its next tick: the count is in the log line.
                    Err(_) => Ok(0),
                }
            }
            None => Ok(0),
        }
    }
}

/// Scrapes `/metrics` every second until aborted; fails on a non-200 answer.
fn scraper(
    node: &Node,
    count: Arc<std::sync::atomic::AtomicU64>,
) -> tokio::task::JoinHandle<Result<u64>> {
    let (http, url) = (node.http.clone(), node.url("/metrics"));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let resp = http.get(&url).send().await?;
            if resp.status().as_u16() != 200 {
                bail!("/metrics answered {}", resp.status());
            }
            resp.bytes().await?;
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    })
}

/// How many `/api/v1/node/events` streams the node has answered (the dashboard's live view).
async fn event_streams(node: &Node) -> Result<u64> {
    let text = node.get("/metrics").await?.text().await?;
    Ok(text
        .lines()
        .filter(|l| {
            l.starts_with("shoal_http_requests_total{")
                && l.contains("route=\"/api/v1/node/events\"")
                && l.contains("code=\"200\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

async fn observe(
    node: &Node,
    config: &Config,
    chromium: Option<&PathBuf>,
    scrapes: Arc<std::sync::atomic::AtomicU64>,
) -> Result<Observers> {
    let mut o = Observers {
        scraper: None,
        _browser: None,
    };
    if matches!(config, Config::Scraper | Config::Dashboard) {
        o.scraper = Some(scraper(node, scrapes));
    }
    if *config == Config::Dashboard {
        let chromium = chromium.context("the dashboard config needs chromium")?;
        let profile = tempfile::tempdir()?;
        let browser = Browser::open(chromium, profile.path(), &node.url("/"))?;
        let deadline = Instant::now() + shoal_tests::TIMEOUT;
        while event_streams(node).await? == 0 {
            if Instant::now() > deadline {
                bail!("the dashboard tab never opened its event stream");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The page's first query and live tail start right after; let them settle.
        tokio::time::sleep(Duration::from_millis(500)).await;
        o._browser = Some((browser, profile));
    }
    Ok(o)
}

fn payload(i: usize) -> Value {
    json!({"machine": format!("m{}", i % 16), "temperature": 20.5 + (i % 10) as f64, "seq": i})
}

/// CPU time (user + system) the process has used so far, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks / if hz > 0 { hz as f64 } else { 100.0 })
}

/// Publish `total` events from `clients` concurrent clients, `per_request` events per request;
/// events/s and the node's CPU µs per event (0 when /proc cannot tell).
async fn publish(
    node: &Node,
    clients: usize,
    per_request: usize,
    total: usize,
) -> Result<(f64, f64)> {
    let requests = total / per_request / clients;
    let url = node.url("/api/v1/events/publish");
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..requests.min(64))
            .map(|r| {
                let data: Vec<Value> = (0..per_request)
                    .map(|i| {
                        json!({"semantics": "bench", "name": format!("client{}", r % clients),
                                   "payload": payload(r * per_request + i)})
                    })
                    .collect();
                serde_json::to_vec(&json!({ "data": data })).unwrap_or_default()
            })
            .collect(),
    );
    let cpu_before = node.pid().and_then(cpu_seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, url, bodies) = (node.http.clone(), url.clone(), bodies.clone());
        tasks.push(tokio::spawn(async move {
            for r in 0..requests {
                let body = bodies[(r + c) % bodies.len()].clone();
                let resp = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await?;
                if resp.status().as_u16() != 201 {
                    bail!("publish answered {}", resp.status());
                }
                resp.bytes().await?;
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    let events = (requests * clients * per_request) as f64;
    let cpu = match (node.pid().and_then(cpu_seconds), cpu_before) {
        (Some(after), Some(before)) => (after - before) * 1e6 / events,
        _ => 0.0,
    };
    Ok((events / secs, cpu))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<()> {
    let s = settings()?;
    let bin = shoal_tests::shoal_bin();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!(
        "bench_observed: {} runs on {cores} cores; node binary {}",
        s.runs,
        bin.display()
    );
    let chromium = tokio::task::spawn_blocking(chromium).await?;
    let mut configs = vec![Config::Plain, Config::Scraper];
    match &chromium {
        Some(c) => {
            println!("dashboard tab: {}", c.display());
            configs.push(Config::Dashboard);
        }
        None => println!(
            "!!!!!!!! chromium is missing and cannot be installed: the dashboard config is SKIPPED !!!!!!!!"
        ),
    }
    for (name, path) in &s.compare {
        println!("{name}: {}", path.display());
        configs.push(Config::Other(name.clone(), path.clone()));
    }
    let workloads = [
        ("batched 4x100", 4, 100, s.batched_events),
        ("single 16x1", 16, 1, s.single_events),
    ];
    // figures[workload][config] = events/s of each run; cpu the same for node µs/event.
    let mut figures = vec![vec![Vec::new(); configs.len()]; workloads.len()];
    let mut cpu = figures.clone();
    for run in 0..s.runs {
        let mut line = format!("run {}:", run + 1);
        for (w, &(wname, clients, per_request, total)) in workloads.iter().enumerate() {
            for (c, config) in configs.iter().enumerate() {
                let mut options = NodeOptions::default();
                if let Config::Other(_, path) = config {
                    options.bin = Some(path.clone());
                }
                options.env.push(("RUST_LOG".into(), "warn".into()));
                let node = Node::start_with(options)?;
                let scrapes = Arc::new(std::sync::atomic::AtomicU64::new(0));
                let observers = observe(&node, config, chromium.as_ref(), scrapes.clone()).await?;
                let (rate, us) = publish(&node, clients, per_request, total).await?;
                observers.finish().await?;
                figures[w][c].push(rate);
                cpu[w][c].push(us);
                line += &format!(" | {wname} {} {rate:.0}/s {us:.1} µs", config.name());
                if matches!(config, Config::Scraper | Config::Dashboard) {
                    line += &format!(
                        " ({} scrapes)",
                        scrapes.load(std::sync::atomic::Ordering::Relaxed)
                    );
                }
            }
        }
        println!("{line}");
    }
    println!();
    for (w, &(wname, ..)) in workloads.iter().enumerate() {
        let plain = &figures[w][0];
        for (c, config) in configs.iter().enumerate() {
            let runs = &figures[w][c];
            let each: Vec<String> = runs.iter().map(|x| format!("{x:.0}")).collect();
            let ratios: Vec<f64> = runs.iter().zip(plain).map(|(x, p)| x / p).collect();
            println!(
                "{:<14} {:<28} median {:>8.0} events/s  ÷ plain median {:.3}  node CPU median {:.1} µs/event (runs: {})",
                wname,
                config.name(),
                median(runs.clone()),
                median(ratios),
                median(cpu[w][c].clone()),
                each.join(", ")
            );
        }
    }
    Ok(())
}
