//! End-to-end benchmark of one running node over HTTP (issue 3), printing medians of several
//! runs:
//! - publish throughput, batches of 100 events from 4 concurrent clients;
//! - publish throughput, single-event requests from 16 concurrent clients (group commit);
//! - query streaming of 1,000,000 stored events, and the node's peak RSS during that query
//!   (`VmHWM` of `/proc/<pid>/status`, reset just before the query via `clear_refs`; the node is
//!   restarted after storing the events, so the figure is not the filling's leftovers);
//! - publish→subscriber latency at 1,000 events/s (p50, p99).
//!
//! `--durability process|power` starts the nodes with that setting (default: the node's,
//! `process`) and measures, in every run, a reference on the same filesystem: small SQLite
//! commits per second with the same `synchronous` setting (WAL mode, one 100-byte row per
//! transaction, one thread, for [`REFERENCE_TIME`]). The publish figures are also printed as
//! ratios to it, which carry over between machines better than events/s (an fsync costs what the
//! disk makes it cost). The query run prints the node's start-up check time on the stored set.
//!
//! The latency run also measures, in every run right after the node, NATS JetStream (Debian's
//! `nats-server`, installed with apt-get when missing; one node, file store): single messages
//! published at the same rate with an acknowledgement requested, read by one push consumer,
//! from just before the publish to the consumer's socket (`--no-nats` skips it).
//!
//! `--hog [N]` runs N busy processes (default: one per core) at normal priority beside
//! everything for the whole run, references included: a busy device, reproducibly.
//! `--compare PATH` also measures the batched and single-event publishes on another `shoal`
//! binary in every run (before/after in one session; ratios printed). Each run line carries
//! the 1-minute load average.
//!
//! Run: `cargo run --release -p shoal-tests --bin bench_node [-- --runs 3 --query-events 1000000]`.
//! The node is the real `shoal run` binary of the same profile (built by the harness). Request
//! bodies are encoded before the clock starts, so the client's JSON work is not measured; the
//! query client counts lines without parsing them. `BENCH_DUMP=1` prints `LAT <offset> <µs>`
//! per event of the latency run on stderr (to find periodic stalls).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use shoal_tests::stats::{median, proc_status_kib};
use shoal_tests::{Node, NodeOptions};

struct Settings {
    runs: usize,
    batched_events: usize,
    single_events: usize,
    query_events: usize,
    latency_events: usize,
    /// Run only these benchmarks (`batched`, `single`, `latency`, `query`); empty = all.
    only: Vec<String>,
    /// `--durability` of the nodes (`process` or `power`).
    durability: String,
    /// Busy processes beside the run (`--hog [N]`).
    hog: usize,
    /// Measure NATS JetStream beside the latency run.
    nats: bool,
    /// Another `shoal` binary measured in the same runs (`--compare PATH`).
    compare: Option<std::path::PathBuf>,
}

impl Settings {
    fn wants(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == name)
    }
}

fn settings() -> Result<Settings> {
    let mut s = Settings {
        runs: 3,
        batched_events: 400_000,
        single_events: 64_000,
        query_events: 1_000_000,
        latency_events: 5_000,
        only: Vec::new(),
        durability: "process".into(),
        hog: 0,
        nats: true,
        compare: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter().peekable();
    while let Some(flag) = it.next() {
        let mut value = || -> Result<usize> {
            it.next()
                .with_context(|| format!("{flag} needs a value"))?
                .parse()
                .with_context(|| format!("{flag} needs a number"))
        };
        match flag.as_str() {
            "--runs" => s.runs = value()?.max(1),
            "--batched-events" => s.batched_events = value()?,
            "--single-events" => s.single_events = value()?,
            "--query-events" => s.query_events = value()?,
            "--latency-events" => s.latency_events = value()?,
            "--only" => s.only.push(
                it.next()
                    .context("--only needs batched, single, latency or query")?
                    .clone(),
            ),
            "--durability" => {
                s.durability = it
                    .next()
                    .context("--durability needs process or power")?
                    .clone();
                if !matches!(s.durability.as_str(), "process" | "power") {
                    bail!("--durability must be process or power");
                }
            }
            "--hog" => {
                let n = it.next_if(|v| !v.starts_with("--")).map(String::as_str);
                s.hog = shoal_tests::load::hog_count(n)?;
            }
            "--no-nats" => s.nats = false,
            "--compare" => {
                s.compare = Some(it.next().context("--compare needs a shoal binary")?.into());
            }
            "--quick" => {
                s.runs = 1;
                s.batched_events = 40_000;
                s.single_events = 8_000;
                s.query_events = 100_000;
                s.latency_events = 1_000;
            }
            other => bail!("unknown flag {other}; see the module doc of bench_node.rs"),
        }
    }
    Ok(s)
}

fn start_node(s: &Settings) -> Result<Node> {
    start_node_bin(s, None)
}

/// A node of `bin` (`None` = the harness's binary).
fn start_node_bin(s: &Settings, bin: Option<&std::path::Path>) -> Result<Node> {
    let mut opts = NodeOptions::default()
        .arg("--durability")
        .arg(s.durability.clone());
    opts.bin = bin.map(Into::into);
    // The start-up check's report (info) is read back by the query run.
    opts.env
        .push(("RUST_LOG".into(), "warn,shoal_store::check=info".into()));
    Node::start_with(opts)
}

/// How long each reference measurement runs.
const REFERENCE_TIME: Duration = Duration::from_secs(3);

/// The reference: one-row SQLite commits per second in WAL mode with the `synchronous` setting
/// `durability` stands for, in a fresh temp dir (the filesystem the harness's nodes use).
fn reference_commits(durability: &str) -> Result<f64> {
    let dir = tempfile::Builder::new()
        .prefix("shoal-bench-ref-")
        .tempdir()?;
    let conn = rusqlite::Connection::open(dir.path().join("ref.sqlite"))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let sync = if durability == "power" {
        "FULL"
    } else {
        "NORMAL"
    };
    conn.pragma_update(None, "synchronous", sync)?;
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")?;
    let row = vec![0x5au8; 100];
    let start = Instant::now();
    let mut commits = 0u64;
    while start.elapsed() < REFERENCE_TIME {
        conn.execute("INSERT INTO t (data) VALUES (?1)", [&row])?;
        commits += 1;
    }
    Ok(commits as f64 / start.elapsed().as_secs_f64())
}

fn payload(i: usize) -> Value {
    json!({"machine": format!("m{}", i % 16), "temperature": 20.5 + (i % 10) as f64, "seq": i})
}

/// Publish `total` events from `clients` concurrent clients, `per_request` events per request.
async fn publish_throughput(
    node: &Node,
    clients: usize,
    per_request: usize,
    total: usize,
) -> Result<(f64, Option<f64>)> {
    let requests = total / per_request / clients;
    let url = node.url("/api/v1/events/publish");
    // Bodies encoded up front: the clock measures the node, not serde on the client.
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
    let events = requests * clients * per_request;
    let mut cpu = None;
    if let (Some(pid), Some(before)) = (node.pid(), cpu_before) {
        if let Some(after) = cpu_seconds(pid) {
            let per_event = (after - before) * 1e6 / events as f64;
            println!(
                "  ({clients} clients x {per_request} events/request: node CPU {per_event:.1} µs/event, {:.0}% of one core)",
                (after - before) * 100.0 / secs
            );
            cpu = Some(per_event);
        }
    }
    Ok((events as f64 / secs, cpu))
}

/// Streams every stored event; returns (events/s, events, peak RSS in KiB during the query).
async fn query_throughput(node: &Node) -> Result<(f64, u64, Option<u64>)> {
    let upper = node.offsets().await?;
    let pid = node.pid().context("node not running")?;
    // Reset the peak so VmHWM covers only the query (needs Linux ≥ 4.0; else it is since start).
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    let start = Instant::now();
    let mut resp = node
        .http
        .post(node.url("/api/v1/events/query"))
        .json(&json!({"upperBound": upper, "subscriptions": [{}], "order": "lamport"}))
        .send()
        .await?;
    if resp.status().as_u16() != 200 {
        bail!("query answered {}", resp.status());
    }
    let mut lines = 0u64;
    while let Some(chunk) = resp.chunk().await? {
        lines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    let hwm = vm_hwm(pid);
    Ok((lines as f64 / secs, lines, hwm))
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

fn vm_hwm(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmHWM:")
}

/// Publishes single events at `rate`/s while one subscriber reads them; latency per event from
/// just before its publish request to the subscriber seeing it. Returns (p50, p99).
async fn latency(node: &Node, events: usize, rate: u32) -> Result<(Duration, Duration)> {
    let epoch = Instant::now();
    let mut sub = node
        .http
        .post(node.url("/api/v1/events/subscribe"))
        .json(&json!({"subscriptions": [{"semantics": "latency"}]}))
        .send()
        .await?;
    let reader = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(events);
        let mut buf = Vec::new();
        while latencies.len() < events {
            let Some(chunk) = sub.chunk().await? else {
                bail!("subscription ended");
            };
            let now = epoch.elapsed().as_nanos() as u64;
            buf.extend_from_slice(&chunk);
            while let Some(i) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                if line.len() <= 1 {
                    continue;
                }
                let v: Value = serde_json::from_slice(&line)?;
                let sent = v["payload"]["t"].as_u64().context("no t")?;
                latencies.push(Duration::from_nanos(now.saturating_sub(sent)));
                if std::env::var_os("BENCH_DUMP").is_some() {
                    eprintln!("LAT {} {}", v["offset"], now.saturating_sub(sent) / 1000);
                }
            }
        }
        Ok(latencies)
    });
    let url = node.url("/api/v1/events/publish");
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Requests go out on their own tasks so a slow answer does not delay the next send.
    let mut inflight = tokio::task::JoinSet::new();
    for i in 0..events {
        tick.tick().await;
        let t = epoch.elapsed().as_nanos() as u64;
        let body = serde_json::to_vec(
            &json!({"data": [{"semantics": "latency", "name": "l", "payload": {"t": t, "i": i}}]}),
        )?;
        let (http, url) = (node.http.clone(), url.clone());
        inflight.spawn(async move {
            let resp = http.post(&url).body(body).send().await?;
            anyhow::ensure!(
                resp.status().as_u16() == 201,
                "publish answered {}",
                resp.status()
            );
            Ok::<_, anyhow::Error>(())
        });
        while let Some(done) = inflight.try_join_next() {
            done??;
        }
    }
    while let Some(done) = inflight.join_next().await {
        done??;
    }
    let mut latencies = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .context("subscriber did not get every event within 60 s")???;
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    Ok((pct(0.50), pct(0.99)))
}

/// The reference for [`latency`]: NATS JetStream, one node, file store. Single messages
/// published at `rate`/s, each asking for the stream's acknowledgement (not awaited before the
/// next, as each shoal publish runs on its own task), one push consumer reading them. Latency
/// from just before the publish to the consumer's connection reading the message. Returns
/// (p50, p99).
async fn nats_latency(events: usize, rate: u32) -> Result<(Duration, Duration)> {
    let server = shoal_tests::nats::NatsServer::start()?;
    let mut publisher = server.connect().await?;
    let mut consumer = server.connect().await?;
    consumer.subscribe("deliver.lat", 1).await?;
    publisher
        .request(
            "$JS.API.STREAM.CREATE.LAT",
            &json!({"name": "LAT", "subjects": ["lat"], "storage": "file"}),
        )
        .await?;
    publisher
        .request(
            "$JS.API.CONSUMER.CREATE.LAT",
            &json!({"stream_name": "LAT", "config": {
                "deliver_subject": "deliver.lat", "ack_policy": "none", "deliver_policy": "all"}}),
        )
        .await?;
    publisher.subscribe("acks", 2).await?;
    let epoch = Instant::now();
    let reader = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(events);
        while latencies.len() < events {
            let Some(m) = consumer.msgs.recv().await else {
                bail!("nats consumer connection closed");
            };
            let v: Value = serde_json::from_slice(&m.payload)?;
            let sent = v["t"].as_u64().context("no t")?;
            let at = m.received.saturating_duration_since(epoch).as_nanos() as u64;
            latencies.push(Duration::from_nanos(at.saturating_sub(sent)));
        }
        Ok(latencies)
    });
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for i in 0..events {
        tick.tick().await;
        let t = epoch.elapsed().as_nanos() as u64;
        let body = serde_json::to_vec(&json!({"t": t, "i": i}))?;
        publisher.publish("lat", Some("acks"), &body).await?;
    }
    // Every publish must be acknowledged (stored), not only delivered.
    let mut acks = 0;
    tokio::time::timeout(Duration::from_secs(60), async {
        while acks < events {
            let m = publisher
                .msgs
                .recv()
                .await
                .context("nats connection closed")?;
            if m.subject == "acks" {
                let v: Value = serde_json::from_slice(&m.payload)?;
                if !v["error"].is_null() {
                    bail!("nats refused a publish: {v}");
                }
                acks += 1;
            }
        }
        Ok(())
    })
    .await
    .context("nats did not acknowledge every publish within 60 s")??;
    let mut latencies = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .context("nats consumer did not get every message within 60 s")???;
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    Ok((pct(0.50), pct(0.99)))
}

fn fmt_runs(v: &[f64], unit: &str, scale: f64) -> String {
    let each: Vec<String> = v.iter().map(|x| format!("{:.0}", x / scale)).collect();
    format!(
        "median {:.0} {unit} (runs: {})",
        median(v.to_vec()) / scale,
        each.join(", ")
    )
}

/// Figures of one binary over the runs (one entry per run).
#[derive(Default)]
struct Publishes {
    batched: Vec<f64>,
    single: Vec<f64>,
    /// Node CPU per event, single-event publishes.
    single_cpu: Vec<f64>,
}

impl Publishes {
    /// Measures the publish benchmarks `s` asks for on fresh nodes of `bin`; appends to `line`.
    async fn measure(
        &mut self,
        s: &Settings,
        bin: Option<&std::path::Path>,
        line: &mut String,
    ) -> Result<()> {
        if s.wants("batched") {
            let node = start_node_bin(s, bin)?;
            let (rate, _) = publish_throughput(&node, 4, 100, s.batched_events).await?;
            self.batched.push(rate);
            *line += &format!(" batched {rate:.0}/s");
        }
        if s.wants("single") {
            let node = start_node_bin(s, bin)?;
            let (rate, cpu) = publish_throughput(&node, 16, 1, s.single_events).await?;
            self.single.push(rate);
            if let Some(cpu) = cpu {
                self.single_cpu.push(cpu);
            }
            *line += &format!(" single {rate:.0}/s");
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let s = settings()?;
    let bin = shoal_tests::shoal_bin();
    println!("bench_node: {} runs; node binary {}", s.runs, bin.display());
    let cores = shoal_tests::load::cores();
    println!("machine: {cores} cores");
    let _hog = shoal_tests::load::Hog::start(s.hog)?;
    if s.hog > 0 {
        println!(
            "CPU hog: {} busy processes at normal priority beside everything",
            s.hog
        );
    }

    println!(
        "durability: {} (reference: one-row SQLite commits, WAL, synchronous={})",
        s.durability,
        if s.durability == "power" {
            "FULL"
        } else {
            "NORMAL"
        }
    );
    let mut this = Publishes::default();
    let mut other = Publishes::default();
    let (mut query, mut rss, mut p50, mut p99) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut nats50, mut nats99, mut loads) = (Vec::new(), Vec::new(), Vec::new());
    let mut reference = Vec::new();
    for run in 0..s.runs {
        let load = shoal_tests::load::load_average().unwrap_or(f64::NAN);
        loads.push(load);
        let mut line = format!("run {} (load {load:.1}):", run + 1);
        if s.wants("batched") || s.wants("single") {
            reference.push(reference_commits(&s.durability)?);
            line += &format!(" reference {:.0} commits/s", reference[run]);
        }
        this.measure(&s, None, &mut line).await?;
        if let Some(path) = &s.compare {
            line += " | compare:";
            other.measure(&s, Some(path), &mut line).await?;
        }
        if s.wants("latency") {
            let node = start_node(&s)?;
            let (a, b) = latency(&node, s.latency_events, 1000).await?;
            drop(node);
            p50.push(a.as_secs_f64() * 1e6);
            p99.push(b.as_secs_f64() * 1e6);
            line += &format!(" latency p50 {:.0} µs p99 {:.0} µs", p50[run], p99[run]);
            if s.nats {
                let (a, b) = nats_latency(s.latency_events, 1000).await?;
                nats50.push(a.as_secs_f64() * 1e6);
                nats99.push(b.as_secs_f64() * 1e6);
                line += &format!(
                    " | NATS p50 {:.0} µs p99 {:.0} µs",
                    nats50[run], nats99[run]
                );
            }
        }
        println!("{line}");
    }
    if s.wants("query") {
        query_runs(&s, &mut query, &mut rss).await?;
    }
    report(&s, &this.batched, &this.single, &query, &p50, &p99, &rss);
    if !this.single_cpu.is_empty() {
        println!(
            "{:<36} {}",
            "node CPU per single-event publish",
            fmt_runs(&this.single_cpu, "µs", 1.0)
        );
    }
    report_ratios("", &reference, &this.batched, &this.single);
    let ratio_row = |name: &str, num: &[f64], den: &[f64]| {
        if num.len() != den.len() || num.is_empty() {
            return;
        }
        let ratios: Vec<f64> = num.iter().zip(den).map(|(a, b)| a / b).collect();
        let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "{name:<36} median {:.2}x (runs: {})",
            median(ratios.clone()),
            each.join(", ")
        );
    };
    if !nats99.is_empty() {
        println!(
            "{:<36} {}",
            "NATS JetStream latency p50",
            fmt_runs(&nats50, "µs", 1.0)
        );
        println!(
            "{:<36} {}",
            "NATS JetStream latency p99",
            fmt_runs(&nats99, "µs", 1.0)
        );
        ratio_row("latency p50 ÷ NATS p50", &p50, &nats50);
        ratio_row("latency p99 ÷ NATS p99", &p99, &nats99);
    }
    if let Some(path) = &s.compare {
        println!("compare: {}", path.display());
        ratio_row("batched ÷ compare", &this.batched, &other.batched);
        ratio_row("single ÷ compare", &this.single, &other.single);
        ratio_row(
            "single CPU/event ÷ compare",
            &this.single_cpu,
            &other.single_cpu,
        );
        if !other.single_cpu.is_empty() {
            println!(
                "{:<36} {}",
                "compare: node CPU per single event",
                fmt_runs(&other.single_cpu, "µs", 1.0)
            );
        }
        report_ratios("compare: ", &reference, &other.batched, &other.single);
    }
    let each: Vec<String> = loads.iter().map(|l| format!("{l:.1}")).collect();
    println!(
        "load average (1 min) at each run's start: {}",
        each.join(", ")
    );
    Ok(())
}

/// The publish figures as ratios to the same run's reference (medians of the per-run ratios).
fn report_ratios(prefix: &str, reference: &[f64], batched: &[f64], single: &[f64]) {
    if reference.is_empty() {
        return;
    }
    println!(
        "{:<36} {}",
        "reference: one-row SQLite commits",
        fmt_runs(reference, "commits/s", 1.0)
    );
    for (name, values) in [("batched", batched), ("single", single)] {
        if values.len() != reference.len() {
            continue;
        }
        let ratios: Vec<f64> = values.iter().zip(reference).map(|(v, r)| v / r).collect();
        let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "{:<36} median {:.2}x (runs: {})",
            format!("{prefix}{name} events/s ÷ reference"),
            median(ratios.clone()),
            each.join(", ")
        );
    }
}

/// One node holds the query set; the query is run `runs` times over it.
async fn query_runs(s: &Settings, query: &mut Vec<f64>, rss: &mut Vec<f64>) -> Result<()> {
    let node = start_node(s)?;
    let fill_start = Instant::now();
    let (fill, _) = publish_throughput(&node, 4, 1000, s.query_events).await?;
    println!(
        "stored {} events for the query in {:.1} s ({fill:.0}/s with batches of 1000)",
        s.query_events,
        fill_start.elapsed().as_secs_f64()
    );
    // A fresh process for the queries: the peak RSS then belongs to serving the query, not to
    // allocator pages left over from storing a million events a moment ago.
    let node = node.restart()?;
    // The start-up check on this store (the last report in the log is this start's).
    let log = node.log();
    if let Some(line) = log
        .lines()
        .rev()
        .find(|l| l.contains("store start-up check passed"))
    {
        println!("start-up check on the stored set: {}", line.trim());
    }
    if let Some(pid) = node.pid() {
        println!(
            "node restarted; RSS before the queries {} MiB",
            proc_status_kib(pid, "VmRSS:")
                .map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0))
        );
    }
    for run in 0..s.runs {
        let (rate, n, hwm) = query_throughput(&node).await?;
        if n != s.query_events as u64 {
            bail!("query returned {n} events, expected {}", s.query_events);
        }
        query.push(rate);
        if let Some(kib) = hwm {
            rss.push(kib as f64);
        }
        println!(
            "query run {}: {n} events at {rate:.0}/s, node peak RSS {} MiB",
            run + 1,
            hwm.map(|k| format!("{:.1}", k as f64 / 1024.0))
                .unwrap_or("?".into())
        );
    }
    Ok(())
}

fn report(
    s: &Settings,
    batched: &[f64],
    single: &[f64],
    query: &[f64],
    p50: &[f64],
    p99: &[f64],
    rss: &[f64],
) {
    println!();
    let rows = [
        (
            "publish, batches of 100, 4 clients",
            batched,
            "events/s",
            1.0,
        ),
        (
            "publish, single events, 16 clients",
            single,
            "events/s",
            1.0,
        ),
        ("query streaming", query, "events/s", 1.0),
        ("latency p50 at 1000 events/s", p50, "µs", 1.0),
        ("latency p99 at 1000 events/s", p99, "µs", 1.0),
        ("node peak RSS during the query", rss, "MiB", 1024.0),
    ];
    for (name, values, unit, scale) in rows {
        if !values.is_empty() {
            println!("{name:<36} {}", fmt_runs(values, unit, scale));
        }
    }
    if !query.is_empty() {
        println!("(query over {} stored events)", s.query_events);
    }
}
