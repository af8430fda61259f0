//! End-to-end benchmark of the blob service (issue 5), printing medians of several runs, each on
//! two fresh nodes A and B (B dials A over loopback):
//! - put: `curl -T` streams a random file to A's `POST /api/v1/blobs`;
//! - local get: `curl` downloads it from A into `/dev/null`;
//! - node-to-node get: `curl` downloads it from B, which fetches every chunk from A through the
//!   block exchange while streaming;
//! - reference: `curl` downloads the same file from `python3 -m http.server` on 127.0.0.1;
//! - peak RSS (`VmHWM`) of A and B over the whole run.
//!
//! Run: `cargo run --release -p shoal-tests --bin bench_blobs [-- --runs 3 --mib 1024]`.
//! The nodes are the real `shoal run` binary of the same profile (built by the harness). curl
//! does the HTTP on both sides of the comparison, so client costs are the same. MB = 10^6 bytes.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shoal_tests::stats::{median, proc_status_kib};
use shoal_tests::{free_port, Node, NodeOptions};

struct Run {
    put: f64,
    local: f64,
    remote: f64,
    reference: f64,
    rss_a: f64,
    rss_b: f64,
}

fn main() -> Result<()> {
    let mut runs = 3usize;
    let mut mib = 1024usize;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value: usize = it
            .next()
            .with_context(|| format!("{flag} needs a value"))?
            .parse()
            .with_context(|| format!("{flag} needs a number"))?;
        match flag.as_str() {
            "--runs" => runs = value.max(1),
            "--mib" => mib = value.max(1),
            other => bail!("unknown flag {other} (known: --runs N, --mib N)"),
        }
    }
    let dir = tempfile::Builder::new().prefix("bench-blobs-").tempdir()?;
    let file = dir.path().join("blob.bin");
    write_random(&file, mib << 20)?;
    let bytes = (mib << 20) as f64;
    println!("blob: {mib} MiB random, {runs} runs");
    let server = ReferenceServer::start(dir.path())?;
    let mut results = Vec::new();
    for i in 0..runs {
        let r = one_run(&file, bytes, &server)?;
        println!(
            "run {}: put {:.0} MB/s, local get {:.0} MB/s, node-to-node {:.0} MB/s, \
             reference curl {:.0} MB/s, RSS A {:.0} MB, RSS B {:.0} MB",
            i + 1,
            r.put,
            r.local,
            r.remote,
            r.reference,
            r.rss_a,
            r.rss_b
        );
        results.push(r);
    }
    let m = |f: fn(&Run) -> f64| median(results.iter().map(f).collect());
    println!(
        "median: put {:.0} MB/s | local get {:.0} MB/s | node-to-node get {:.0} MB/s | \
         reference (python http.server + curl) {:.0} MB/s | peak RSS A {:.0} MB, B {:.0} MB",
        m(|r| r.put),
        m(|r| r.local),
        m(|r| r.remote),
        m(|r| r.reference),
        m(|r| r.rss_a),
        m(|r| r.rss_b)
    );
    Ok(())
}

fn one_run(file: &Path, bytes: f64, server: &ReferenceServer) -> Result<Run> {
    let a = Node::start()?;
    let b = Node::start_with(NodeOptions::default().arg("--peer").arg(a.swarm.clone()))?;
    std::thread::sleep(Duration::from_millis(500)); // let B connect
    let url_a = a.url("/api/v1/blobs");
    let t = Instant::now();
    let out = curl(&[
        "-sS",
        "--fail-with-body",
        "-X",
        "POST",
        "-H",
        "content-type: application/octet-stream",
        "-T",
        &file.display().to_string(),
        &url_a,
    ])?;
    let put = bytes / t.elapsed().as_secs_f64() / 1e6;
    let answer: serde_json::Value = serde_json::from_str(&out).context("put answer")?;
    let cid = answer["cid"].as_str().context("no cid")?.to_string();
    let local = download(&a.url(&format!("/api/v1/blobs/{cid}")), bytes)?;
    let remote = download(&b.url(&format!("/api/v1/blobs/{cid}")), bytes)?;
    let reference = download(&format!("http://127.0.0.1:{}/blob.bin", server.port), bytes)?;
    Ok(Run {
        put,
        local,
        remote,
        reference,
        rss_a: peak_rss_mb(&a)?,
        rss_b: peak_rss_mb(&b)?,
    })
}

/// MB/s of a curl download into /dev/null (checks the size).
fn download(url: &str, bytes: f64) -> Result<f64> {
    let t = Instant::now();
    let size = curl(&[
        "-sS",
        "--fail",
        "-o",
        "/dev/null",
        "-w",
        "%{size_download}",
        url,
    ])?;
    let secs = t.elapsed().as_secs_f64();
    let got: f64 = size.trim().parse().context("curl size")?;
    if got != bytes {
        bail!("{url}: downloaded {got} bytes, expected {bytes}");
    }
    Ok(bytes / secs / 1e6)
}

fn curl(args: &[&str]) -> Result<String> {
    let out = Command::new("curl")
        .args(args)
        .output()
        .context("cannot run curl")?;
    if !out.status.success() {
        bail!(
            "curl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn peak_rss_mb(node: &Node) -> Result<f64> {
    let pid = node.pid().context("node not running")?;
    let kb = proc_status_kib(pid, "VmHWM:").context("no VmHWM")?;
    Ok(kb as f64 * 1024.0 / 1e6)
}

/// Pseudo-random bytes (xorshift; incompressible enough, fast to make).
fn write_random(path: &Path, n: usize) -> Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = n;
    while left > 0 {
        for w in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes()[..w.len()]);
        }
        let take = left.min(buf.len());
        f.write_all(&buf[..take])?;
        left -= take;
    }
    f.flush()?;
    Ok(())
}

struct ReferenceServer {
    child: Child,
    port: u16,
}

impl ReferenceServer {
    fn start(dir: &Path) -> Result<ReferenceServer> {
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start python3 -m http.server")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("python3 -m http.server did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(ReferenceServer { child, port })
    }
}

impl Drop for ReferenceServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
