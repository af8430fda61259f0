//! App runtime benchmarks between real `shoal run` processes on 127.0.0.1 (see BENCHMARKS.md):
//!
//! 1. `deploy`: from the `POST /api/v1/apps?to=<B>` on A (what `shoal apps deploy --to B`
//!    sends) until B's `GET /api/v1/apps` shows the app running (polled every 5 ms): the
//!    command event replicates to B, B's applier fetches the package blob from A, unpacks and
//!    starts it. Reference in the same run: the same kind of package deployed on B directly
//!    (`POST /api/v1/apps` on B until running). Each round deploys a fresh app id (a new
//!    package, so B never has the blob already) and ends by undeploying both apps, so every
//!    round starts with no app on B. Medians of `BENCH_APP_ROUNDS` (default 7).
//! 2. `idle`: the node's own CPU (user + system time of the `shoal run` process, not its
//!    children) and RSS over a window of `BENCH_IDLE_SECS` (default 20 s) with 20 idle process
//!    apps supervised (the echo test app: python3, publishes once, then sleeps), against the
//!    same node with no app in the same run. Median of 3 windows each.
//!
//! The app is `tests/apps/echo` with its id rewritten per copy, packed by `shoal apps package`.
//! Run: `cargo run --release -p shoal-tests --bin bench_apps [-- deploy|idle]`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use shoal_tests::stats::{median, proc_status_kib};
use shoal_tests::{cli, Node, NodeOptions};

/// Apps supervised in the idle measurement.
const IDLE_APPS: usize = 20;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A package of the echo app under id `com.example.bench-<n>`.
fn package(scratch: &Path, n: usize) -> Result<Vec<u8>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("apps/echo");
    let dir = scratch.join(format!("app-{n}"));
    std::fs::create_dir_all(&dir)?;
    for entry in std::fs::read_dir(&src)? {
        let entry = entry?;
        std::fs::copy(entry.path(), dir.join(entry.file_name()))?;
    }
    let manifest = dir.join("shoal-app.toml");
    let text = std::fs::read_to_string(&manifest)?;
    std::fs::write(
        &manifest,
        text.replace("com.example.echo", &format!("com.example.bench-{n}")),
    )?;
    let file: PathBuf = scratch.join(format!("app-{n}.tar.gz"));
    let out = cli(
        &[
            "apps",
            "package",
            dir.to_str().context("path")?,
            "-o",
            file.to_str().context("path")?,
        ],
        None,
    )?;
    if !out.status.success() {
        bail!("shoal apps package: {}", out.stderr);
    }
    Ok(std::fs::read(&file)?)
}

/// Waits (5 ms polls, at most 120 s) until app `id` runs on `node`.
async fn until_running(node: &Node, id: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list: Vec<Value> = node.get("/api/v1/apps").await?.json().await?;
        if list
            .iter()
            .any(|a| a["id"] == id && a["state"] == "running" && a["pid"].is_u64())
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("app {id} did not run within 120 s:\n{}", node.log());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn post_package(node: &Node, path: &str, bytes: Vec<u8>) -> Result<()> {
    let resp = node.post_bytes(path, bytes).await?;
    if resp.status().as_u16() != 201 {
        bail!("{path} answered {}: {}", resp.status(), resp.text().await?);
    }
    Ok(())
}

async fn deploy_bench() -> Result<()> {
    let rounds = env_usize("BENCH_APP_ROUNDS", 7);
    let scratch = tempfile::tempdir()?;
    let a = Node::start()?;
    let b = Node::start_with(NodeOptions::default().arg("--peer").arg(a.swarm.clone()))?;
    // Connected, and A's status seen by B: the swarm is up before the first round.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let nodes: Vec<Value> = b.get("/api/v1/nodes").await?.json().await?;
        if nodes
            .iter()
            .any(|n| n["source"] == a.source.as_str() && n["connected"] == true)
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("B never connected to A");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut remote = Vec::new();
    let mut local = Vec::new();
    for round in 0..rounds {
        let (r, l) = (2 * round, 2 * round + 1);
        let (pr, pl) = (package(scratch.path(), r)?, package(scratch.path(), l)?);
        let t = Instant::now();
        post_package(&b, "/api/v1/apps", pl).await?;
        until_running(&b, &format!("com.example.bench-{l}")).await?;
        local.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        post_package(&a, &format!("/api/v1/apps?to={}", b.source), pr).await?;
        until_running(&b, &format!("com.example.bench-{r}")).await?;
        remote.push(t.elapsed().as_secs_f64() * 1000.0);
        println!(
            "round {round}: deploy --to B {:.0} ms, local deploy on B {:.0} ms",
            remote[round], local[round]
        );
        // Each round starts from the same state: no app on B.
        for n in [r, l] {
            let path = format!("/api/v1/apps/com.example.bench-{n}");
            let resp = b.http.delete(b.url(&path)).send().await?;
            if resp.status().as_u16() != 204 {
                bail!("undeploy answered {}", resp.status());
            }
        }
    }
    let (mr, ml) = (median(remote.clone()), median(local.clone()));
    println!(
        "deploy --to B until running on B: median {mr:.0} ms (runs: {})",
        runs(&remote)
    );
    println!(
        "reference, local deploy on B until running: median {ml:.0} ms (runs: {})",
        runs(&local)
    );
    println!("ratio remote / local: {:.2}", mr / ml);
    Ok(())
}

async fn idle_bench() -> Result<()> {
    let window = Duration::from_secs(env_usize("BENCH_IDLE_SECS", 20) as u64);
    let scratch = tempfile::tempdir()?;
    let node = Node::start()?;
    let pid = node.pid().context("node pid")?;
    // Let start-up settle before the reference.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let bare = measure(pid, window).await?;
    for n in 0..IDLE_APPS {
        post_package(&node, "/api/v1/apps", package(scratch.path(), n)?).await?;
    }
    for n in 0..IDLE_APPS {
        until_running(&node, &format!("com.example.bench-{n}")).await?;
    }
    // Each app publishes its one event at start; let that pass.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let busy = measure(pid, window).await?;
    let (cpu0, rss0) = (
        median(bare.iter().map(|m| m.0).collect()),
        median(bare.iter().map(|m| m.1).collect()),
    );
    let (cpu20, rss20) = (
        median(busy.iter().map(|m| m.0).collect()),
        median(busy.iter().map(|m| m.1).collect()),
    );
    println!(
        "node alone: CPU {cpu0:.2}% of a core (runs: {}), RSS {:.1} MiB",
        runs(&bare.iter().map(|m| m.0).collect::<Vec<_>>()),
        rss0 / 1024.0
    );
    println!(
        "node with {IDLE_APPS} idle apps: CPU {cpu20:.2}% of a core (runs: {}), RSS {:.1} MiB",
        runs(&busy.iter().map(|m| m.0).collect::<Vec<_>>()),
        rss20 / 1024.0
    );
    println!(
        "ratio with / without apps: CPU {:.2}, RSS {:.2}",
        cpu20 / cpu0,
        rss20 / rss0
    );
    Ok(())
}

/// Three windows: (CPU % of one core, RSS KiB at the window's end) each.
async fn measure(pid: u32, window: Duration) -> Result<Vec<(f64, f64)>> {
    let mut out = Vec::new();
    for _ in 0..3 {
        let c0 = cpu_seconds(pid).context("cpu")?;
        let t = Instant::now();
        tokio::time::sleep(window).await;
        let c1 = cpu_seconds(pid).context("cpu")?;
        let rss = proc_status_kib(pid, "VmRSS:").context("rss")? as f64;
        out.push(((c1 - c0) / t.elapsed().as_secs_f64() * 100.0, rss));
    }
    Ok(out)
}

/// CPU time (user + system) the process has used so far, in seconds (children excluded).
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

fn runs(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::main]
async fn main() -> Result<()> {
    let which = std::env::args().nth(1);
    if which.as_deref().is_none_or(|w| w == "deploy") {
        deploy_bench().await?;
    }
    if which.as_deref().is_none_or(|w| w == "idle") {
        idle_bench().await?;
    }
    Ok(())
}
