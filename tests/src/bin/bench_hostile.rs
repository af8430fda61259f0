//! Publish latency on a node under attack (issue 12, "Done means"): an honest three-node swarm
//! (A–B–C, real `shoal run` processes on 127.0.0.1) where A takes single-event publishes at a
//! steady rate while B and C publish in the background, first with no attacker, then with the
//! hostile peer of `shoal_tests::hostile` attacking A and B for the same time. Each run uses a
//! fresh swarm; the figure is the attacked p99 as a ratio to the unattacked p99 of the same run
//! (goal: ≤ 2), with medians over the runs. It also prints, per run, how long the honest swarm
//! took to converge after the attack, A's resident memory and its `swarm-heads` size.
//!
//! Run: `cargo run --release -p shoal-tests --bin bench_hostile [-- --runs 3 --secs 60 --rate 200]`.
//! To see where a slow publish went: `--dump DIR` writes, per run, A's attacked-phase publishes
//! (`run<N>-latency.tsv`: send time in Unix seconds, then the round trip in ms) and A's
//! log (`run<N>-a.log`); `--log FILTER` sets A's `RUST_LOG` (e.g. `shoal_engine=debug`).
//! Latency is one publish request's round trip (sent → 201) from a client on the same machine;
//! requests go out on their own tasks at the rate, so a slow answer does not delay the next.
//!
//! In a swarm every node and the attacker are separate devices; here they share two cores, and
//! a publish on A then waits whenever B serving the attacker and the attacker itself hold both
//! (seen with `perf sched`: A's writer runnable but not running for 2–5 ms while B and the
//! attacker ran). So by default A runs on core 0 and B, C and the attacker on core 1, in both
//! phases, and the ratio measures what handling the attack costs A itself. The publishing
//! client is A's app and is not pinned. `--shared-cores` runs everything on both cores.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use shoal_tests::hostile::Hostile;
use shoal_tests::stats::{median, percentile_ms, proc_status_kib};
use shoal_tests::{event, Node, NodeOptions};

struct Settings {
    runs: usize,
    secs: u64,
    rate: u64,
    dump: Option<std::path::PathBuf>,
    log: Option<String>,
    /// A on core 0, B, C and the attacker on core 1 (see [`Placement`]).
    pinned: bool,
}

fn settings() -> Result<Settings> {
    let mut s = Settings {
        runs: 3,
        secs: 60,
        rate: 200,
        dump: None,
        log: None,
        pinned: true,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--shared-cores" {
            s.pinned = false;
            continue;
        }
        let text = it.next().with_context(|| format!("{flag} needs a value"))?;
        let number = || -> Result<u64> {
            text.parse()
                .with_context(|| format!("{flag} needs a number"))
        };
        match flag.as_str() {
            "--runs" => s.runs = (number()? as usize).max(1),
            "--secs" => s.secs = number()?.max(1),
            "--rate" => s.rate = number()?.clamp(1, 10_000),
            "--dump" => s.dump = Some(text.into()),
            "--log" => s.log = Some(text.clone()),
            other => bail!(
                "unknown flag {other}; use --runs, --secs, --rate, --dump, --log or --shared-cores"
            ),
        }
    }
    Ok(s)
}

/// Where the processes run: a node started while the bench's current thread is pinned to a
/// core inherits that core for all its threads.
#[derive(Clone, Copy)]
enum Placement {
    /// A's core.
    Victim,
    /// The other nodes' and the attacker's core.
    Others,
    /// Every core (and the bench's threads after each start).
    Anywhere,
}

/// Pins the calling thread per `placement` (the bench's cores are 0 and 1); a no-op when
/// `pinned` is off. Fails on a machine with fewer than two cores.
fn place(placement: Placement, pinned: bool) -> Result<()> {
    if !pinned {
        return Ok(());
    }
    // Online cores, not `available_parallelism` (that one shrinks with this thread's pinning).
    // SAFETY: sysconf only reads a system value.
    let cores = usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).unwrap_or(1);
    if cores < 2 {
        bail!("pinning needs two cores, this machine has {cores}: run with --shared-cores");
    }
    let chosen: Vec<usize> = match placement {
        Placement::Victim => vec![0],
        Placement::Others => vec![1],
        Placement::Anywhere => (0..cores).collect(),
    };
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes within it for cores below
    // CPU_SETSIZE; sched_setaffinity(0) applies to the calling thread only.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for core in chosen {
            libc::CPU_SET(core, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        bail!("cannot pin to cores: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Starts a node with the calling thread placed per `placement`, then unpins the thread.
fn start_placed(options: NodeOptions, placement: Placement, pinned: bool) -> Result<Node> {
    place(placement, pinned)?;
    let node = Node::start_with(options);
    place(Placement::Anywhere, pinned)?;
    node
}

/// The attacker's own runtime. Its threads stand for another device: they run where the other
/// nodes do and never delay the client that times A's publishes (the attacker signs a thousand
/// heads per digest answer, and on the client's runtime that held the client's tasks).
fn attacker_runtime(pinned: bool) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("attacker")
        .enable_all()
        .on_thread_start(move || {
            if let Err(e) = place(Placement::Others, pinned) {
                eprintln!("attacker thread not pinned: {e:#}");
            }
        })
        .build()
        .context("attacker runtime")
}

fn peer(of: &Node) -> NodeOptions {
    NodeOptions::default().arg("--peer").arg(of.swarm.clone())
}

/// Publishes single events on `node` at `rate`/s for `secs`; each request's send time (since
/// the start) and round trip, in send order.
async fn publish_for(
    node: &Node,
    name: &str,
    rate: u64,
    secs: u64,
) -> Result<Vec<(Duration, Duration)>> {
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let until = Instant::now() + Duration::from_secs(secs);
    let mut tasks = tokio::task::JoinSet::new();
    let mut latencies = Vec::new();
    let mut i = 0u64;
    while Instant::now() < until {
        tick.tick().await;
        let http = node.http.clone();
        let url = node.url("/api/v1/events/publish");
        let body = json!({ "data": [event("bench", name, json!({ "i": i }))] });
        i += 1;
        tasks.spawn(async move {
            let sent = Instant::now();
            let resp = http.post(url).json(&body).send().await?;
            if resp.status().as_u16() != 201 {
                bail!("publish answered {}", resp.status());
            }
            Ok((sent - start, sent.elapsed()))
        });
        while let Some(done) = tasks.try_join_next() {
            latencies.push(done.context("publish task")??);
        }
    }
    while let Some(done) = tasks.join_next().await {
        latencies.push(done.context("publish task")??);
    }
    latencies.sort();
    Ok(latencies)
}

/// The round trips of `timed`, sorted.
fn sorted(timed: &[(Duration, Duration)]) -> Vec<Duration> {
    let mut out: Vec<Duration> = timed.iter().map(|(_, l)| *l).collect();
    out.sort();
    out
}

/// One phase: A at the rate, B and C at a tenth of it; A's publishes.
async fn phase(nodes: &[Node; 3], name: &str, s: &Settings) -> Result<Vec<(Duration, Duration)>> {
    let background = (s.rate / 10).max(1);
    let (a, b, c) = tokio::join!(
        publish_for(&nodes[0], name, s.rate, s.secs),
        publish_for(&nodes[1], name, background, s.secs),
        publish_for(&nodes[2], name, background, s.secs),
    );
    b?;
    c?;
    a
}

/// Waits until every node stores every other node's offsets as they are now; the time taken.
async fn converge(nodes: &[Node; 3]) -> Result<Duration> {
    let start = Instant::now();
    let mut want = Vec::new();
    for n in nodes {
        // A node that published nothing yet has no offset to wait for.
        if let Some(own) = n.offsets().await?[&n.source].as_u64() {
            want.push((n.source.clone(), own));
        }
    }
    loop {
        let mut done = true;
        for n in nodes {
            let offsets = n.offsets().await?;
            done &= want
                .iter()
                .all(|(s, o)| offsets[s].as_u64().is_some_and(|have| have >= *o));
        }
        if done {
            return Ok(start.elapsed());
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!("the honest swarm did not converge within 120 s after the attack");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GC rounds on `node` that freed blocks so far (its log's lines; GC runs every 30 s and frees
/// blocks at least 60 s old, so a phase of 60 s or more sees one when GC keeps running).
fn gc_rounds(node: &Node) -> usize {
    node.log().matches("gc freed unreachable blocks").count()
}

#[tokio::main]
async fn main() -> Result<()> {
    let s = settings()?;
    println!(
        "bench_hostile: {} runs, {} s per phase, A at {}/s (B, C at {}/s)",
        s.runs,
        s.secs,
        s.rate,
        (s.rate / 10).max(1)
    );
    let (mut idle99, mut attacked99, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let attacker = attacker_runtime(s.pinned)?;
    for run in 1..=s.runs {
        let mut a_options = NodeOptions::default();
        if let Some(filter) = &s.log {
            a_options.env.push(("RUST_LOG".into(), filter.clone()));
        }
        let a = start_placed(a_options, Placement::Victim, s.pinned)?;
        let b = start_placed(peer(&a), Placement::Others, s.pinned)?;
        let c = start_placed(peer(&b), Placement::Others, s.pinned)?;
        let nodes = [a, b, c];
        converge(&nodes).await?;

        let idle = sorted(&phase(&nodes, "idle", &s).await?);
        let victims: Vec<String> = nodes.iter().map(|n| n.source.clone()).collect();
        let targets = [nodes[0].swarm.clone(), nodes[1].swarm.clone()];
        let hostile = attacker
            .spawn(async move { Hostile::start(&targets, &victims).await })
            .await
            .context("attacker start")??;
        let gc_before = gc_rounds(&nodes[0]);
        let attacked_at = std::time::SystemTime::now();
        let timed = phase(&nodes, "attacked", &s).await?;
        let attacked = sorted(&timed);
        let gc_during = gc_rounds(&nodes[0]) - gc_before;
        let rss = nodes[0]
            .pid()
            .and_then(|p| proc_status_kib(p, "VmRSS:"))
            .map_or(0, |kib| kib >> 10);
        let tally = hostile.stop().await;
        let converged = converge(&nodes).await?;
        let heads = std::fs::metadata(nodes[0].data_dir().join(shoal_engine::swarm::HEADS_FILE))
            .map_or(0, |m| m.len());

        let (i50, i99) = (percentile_ms(&idle, 0.5), percentile_ms(&idle, 0.99));
        let (a50, a99) = (
            percentile_ms(&attacked, 0.5),
            percentile_ms(&attacked, 0.99),
        );
        println!(
            "run {run}: unattacked p50 {i50:.2} ms p99 {i99:.2} ms | attacked p50 {a50:.2} ms \
             p99 {a99:.2} ms | ratio p99 {:.2} | converged {:.1} s after | A RSS {rss} MiB, \
             swarm-heads {} KiB, \
             {gc_during} GC rounds freed blocks on A during the attack",
            a99 / i99,
            converged.as_secs_f64(),
            heads >> 10
        );
        println!("  attacker: {tally:?}");
        if let Some(dir) = &s.dump {
            std::fs::create_dir_all(dir)?;
            let tsv: String = timed
                .iter()
                .map(|(at, l)| {
                    let wall = (attacked_at + *at)
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default();
                    format!("{:.3}\t{:.3}\n", wall.as_secs_f64(), l.as_secs_f64() * 1e3)
                })
                .collect();
            std::fs::write(dir.join(format!("run{run}-latency.tsv")), tsv)?;
            std::fs::write(dir.join(format!("run{run}-a.log")), nodes[0].log())?;
        }
        idle99.push(i99);
        attacked99.push(a99);
        ratios.push(a99 / i99);
    }
    println!(
        "median: unattacked p99 {:.2} ms, attacked p99 {:.2} ms, ratio {:.2} (goal ≤ 2)",
        median(idle99),
        median(attacked99),
        median(ratios)
    );
    attacker.shutdown_background();
    Ok(())
}
