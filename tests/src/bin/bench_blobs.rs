//! End-to-end benchmark of the blob service (issues 5 and 16), as ratios to references measured
//! in the same run, medians of several runs, each on two fresh nodes A and B (B dials A over
//! loopback):
//! - put: `curl -T` streams a random file to A's `POST /api/v1/blobs`; reference: the disk's
//!   sequential write with fdatasync of the same size (`dd if=/dev/zero of=F bs=1M count=N
//!   conv=fdatasync`) in the directory the nodes' data dirs live in;
//! - local get: `curl` downloads it from A into `/dev/null`; reference: `curl` downloading the
//!   same file from a plain static HTTP server on 127.0.0.1 (below), read into the page cache
//!   first; also as a fraction of the disk's cold read (the same file dropped from the page
//!   cache, then read once), since A writes chunk files past the page cache and reads them
//!   from the disk;
//! - node-to-node get: `curl` downloads it from B, which fetches every chunk from A through the
//!   block exchange while streaming (it writes what it fetches, so its reference is dd too);
//! - publish latency: single-event publishes one after another, on A while nothing else runs
//!   (idle) and during the put, on B idle and during the node-to-node get; p50 and p99;
//! - peak RSS (`VmHWM`) of A and B over the whole run.
//!
//! The reference server is this process: one thread answers each GET with the file through
//! `std::io::copy` from the file to the socket, which Linux std turns into `sendfile(2)` (page
//! cache to socket in the kernel, no user-space copy), so curl, not the server, bounds it.
//! (`python3 -m http.server`, used before, copies through Python buffers and was itself a
//! bottleneck.)
//!
//! Run: `cargo run --release -p shoal-tests --bin bench_blobs [-- --runs 3 --mib 1024]`.
//! The nodes are the real `shoal run` binary of the same profile (built by the harness;
//! `SHOAL_BIN` picks another). MB = 10^6 bytes. Every file and data dir is deleted at the end.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use shoal_tests::curl::{curl, download};
use shoal_tests::stats::{median, percentile_ms, proc_status_kib};
use shoal_tests::{Node, NodeOptions};

/// How long publish latency is sampled on an idle node.
const IDLE: Duration = Duration::from_secs(3);

struct Run {
    dd: f64,
    reference: f64,
    cold: f64,
    put: f64,
    local: f64,
    remote: f64,
    rss_a: f64,
    rss_b: f64,
    /// Publish latency (p50, p99, count) on A idle, A during the put, B idle, B during the
    /// node-to-node get.
    pub_a_idle: Latency,
    pub_a_put: Latency,
    pub_b_idle: Latency,
    pub_b_fetch: Latency,
}

#[derive(Clone, Copy)]
struct Latency {
    p50: f64,
    p99: f64,
    n: usize,
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
    // The nodes' data dirs are temp dirs (the harness): the bench's files go beside them.
    let dir = tempfile::Builder::new().prefix("bench-blobs-").tempdir()?;
    let file = dir.path().join("blob.bin");
    write_random(&file, mib << 20)?;
    let bytes = (mib << 20) as f64;
    println!(
        "blob: {mib} MiB random, {runs} runs, files and data dirs under {}",
        std::env::temp_dir().display()
    );
    let server = ReferenceServer::start(file.clone())?;
    let mut results = Vec::new();
    for i in 0..runs {
        let r = one_run(dir.path(), &file, mib, bytes, &server)?;
        println!(
            "run {}: dd fdatasync {:.0} MB/s, curl reference {:.0} MB/s, cold read {:.0} MB/s | \
             put {:.0} MB/s ({:.2}x dd), local get {:.0} MB/s ({:.2}x curl, {:.2}x cold read), \
             node-to-node {:.0} MB/s ({:.2}x dd) | RSS A {:.0} MB, B {:.0} MB",
            i + 1,
            r.dd,
            r.reference,
            r.cold,
            r.put,
            r.put / r.dd,
            r.local,
            r.local / r.reference,
            r.local / r.cold,
            r.remote,
            r.remote / r.dd,
            r.rss_a,
            r.rss_b
        );
        println!(
            "       publish p50/p99 ms (n): A idle {} | A during put {} | B idle {} | \
             B during node-to-node {}",
            show(r.pub_a_idle),
            show(r.pub_a_put),
            show(r.pub_b_idle),
            show(r.pub_b_fetch)
        );
        results.push(r);
    }
    let m = |f: &dyn Fn(&Run) -> f64| median(results.iter().map(f).collect());
    println!(
        "median: put {:.2}x dd | local get {:.2}x curl, {:.2}x cold read | node-to-node \
         {:.2}x dd | (put {:.0}, local get {:.0}, node-to-node {:.0}, dd {:.0}, curl {:.0}, \
         cold read {:.0} MB/s) | peak RSS A {:.0} MB, B {:.0} MB",
        m(&|r| r.put / r.dd),
        m(&|r| r.local / r.reference),
        m(&|r| r.local / r.cold),
        m(&|r| r.remote / r.dd),
        m(&|r| r.put),
        m(&|r| r.local),
        m(&|r| r.remote),
        m(&|r| r.dd),
        m(&|r| r.reference),
        m(&|r| r.cold),
        m(&|r| r.rss_a),
        m(&|r| r.rss_b)
    );
    println!(
        "median publish p99: A idle {:.1} ms, during put {:.1} ms ({:.1}x) | B idle {:.1} ms, \
         during node-to-node {:.1} ms ({:.1}x); p50: {:.1} / {:.1} / {:.1} / {:.1} ms",
        m(&|r| r.pub_a_idle.p99),
        m(&|r| r.pub_a_put.p99),
        m(&|r| r.pub_a_put.p99 / r.pub_a_idle.p99),
        m(&|r| r.pub_b_idle.p99),
        m(&|r| r.pub_b_fetch.p99),
        m(&|r| r.pub_b_fetch.p99 / r.pub_b_idle.p99),
        m(&|r| r.pub_a_idle.p50),
        m(&|r| r.pub_a_put.p50),
        m(&|r| r.pub_b_idle.p50),
        m(&|r| r.pub_b_fetch.p50),
    );
    Ok(())
}

fn show(l: Latency) -> String {
    format!("{:.1}/{:.1} ({})", l.p50, l.p99, l.n)
}

fn one_run(
    dir: &Path,
    file: &Path,
    mib: usize,
    bytes: f64,
    server: &ReferenceServer,
) -> Result<Run> {
    let dd = dd_fdatasync(dir, mib, bytes)?;
    let a = Node::start()?;
    let b = Node::start_with(NodeOptions::default().arg("--peer").arg(a.swarm.clone()))?;
    std::thread::sleep(Duration::from_millis(500)); // let B connect
    let pub_a_idle = Publisher::start(&a).stop_after(IDLE)?;
    let pub_b_idle = Publisher::start(&b).stop_after(IDLE)?;

    let url_a = a.url("/api/v1/blobs");
    let publisher = Publisher::start(&a);
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
    ]);
    let put = bytes / t.elapsed().as_secs_f64() / 1e6;
    let pub_a_put = publisher.stop()?;
    let answer: serde_json::Value = serde_json::from_str(&out?).context("put answer")?;
    let cid = answer["cid"].as_str().context("no cid")?.to_string();

    let local = download(&a.url(&format!("/api/v1/blobs/{cid}")), bytes)?;
    let publisher = Publisher::start(&b);
    let remote = download(&b.url(&format!("/api/v1/blobs/{cid}")), bytes);
    let pub_b_fetch = publisher.stop()?;
    let remote = remote?;
    let cold = cold_read(file, bytes)?;
    // The file was written minutes ago and gigabytes since: read it into the page cache
    // first, as the nodes' chunks are, so the reference measures serving, not the disk.
    std::io::copy(&mut std::fs::File::open(file)?, &mut std::io::sink())?;
    let reference = download(&format!("http://127.0.0.1:{}/blob.bin", server.port), bytes)?;
    Ok(Run {
        dd,
        reference,
        cold,
        put,
        local,
        remote,
        rss_a: peak_rss_mb(&a)?,
        rss_b: peak_rss_mb(&b)?,
        pub_a_idle,
        pub_a_put,
        pub_b_idle,
        pub_b_fetch,
    })
}

/// MB/s of `dd if=/dev/zero of=<dir>/dd.bin bs=1M count=<mib> conv=fdatasync` (the file is
/// deleted again).
fn dd_fdatasync(dir: &Path, mib: usize, bytes: f64) -> Result<f64> {
    let target = dir.join("dd.bin");
    let t = Instant::now();
    let out = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", target.display()))
        .arg("bs=1M")
        .arg(format!("count={mib}"))
        .arg("conv=fdatasync")
        .output()
        .context("cannot run dd");
    let secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&target);
    let out = out?;
    if !out.status.success() {
        bail!("dd failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(bytes / secs / 1e6)
}

/// MB/s of reading `file` once after dropping it from the page cache (`POSIX_FADV_DONTNEED`;
/// it is clean, so nothing is written first): the disk's cold sequential read, kernel
/// read-ahead included.
fn cold_read(file: &Path, bytes: f64) -> Result<f64> {
    use std::os::fd::AsRawFd;
    let mut f = std::fs::File::open(file)?;
    // SAFETY: plain syscall on a descriptor `f` owns; no memory is passed.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        bail!("posix_fadvise(DONTNEED) failed: {rc}");
    }
    let t = Instant::now();
    std::io::copy(&mut f, &mut std::io::sink())?;
    Ok(bytes / t.elapsed().as_secs_f64() / 1e6)
}

/// Publishes one event at a time to a node from its own thread, recording each latency.
struct Publisher {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<Vec<Duration>>>,
}

impl Publisher {
    fn start(node: &Node) -> Publisher {
        let stop = Arc::new(AtomicBool::new(false));
        let url = node.url("/api/v1/events/publish");
        let flag = stop.clone();
        let thread = std::thread::spawn(move || -> Result<Vec<Duration>> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let http = reqwest::Client::new();
                let mut samples = Vec::new();
                let mut i = 0u64;
                while !flag.load(Ordering::Relaxed) {
                    let body = json!({"data": [{"semantics": "bench", "name": "latency",
                        "payload": {"i": i}}]});
                    let t = Instant::now();
                    let resp = tokio::time::timeout(
                        Duration::from_secs(60),
                        http.post(&url).json(&body).send(),
                    )
                    .await
                    .context("publish took over 60 s")??;
                    let status = resp.status();
                    resp.bytes().await?;
                    if status.as_u16() != 201 {
                        bail!("publish answered {status}");
                    }
                    samples.push(t.elapsed());
                    i += 1;
                }
                Ok(samples)
            })
        });
        Publisher { stop, thread }
    }

    fn stop_after(self, d: Duration) -> Result<Latency> {
        std::thread::sleep(d);
        self.stop()
    }

    fn stop(self) -> Result<Latency> {
        self.stop.store(true, Ordering::Relaxed);
        let mut samples = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("publisher thread panicked"))??;
        samples.sort();
        Ok(Latency {
            p50: percentile_ms(&samples, 0.5),
            p99: percentile_ms(&samples, 0.99),
            n: samples.len(),
        })
    }
}

fn peak_rss_mb(node: &Node) -> Result<f64> {
    let pid = node.pid().context("node not running")?;
    let kb = proc_status_kib(pid, "VmHWM:").context("no VmHWM")?;
    Ok(kb as f64 * 1024.0 / 1e6)
}

/// Pseudo-random bytes (xorshift; incompressible enough, fast to make).
fn write_random(path: &Path, n: usize) -> Result<()> {
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

/// The reference HTTP server: serves one file to every GET, with `sendfile(2)` (see the module
/// doc). Runs until the process ends.
struct ReferenceServer {
    port: u16,
}

impl ReferenceServer {
    fn start(file: PathBuf) -> Result<ReferenceServer> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let port = listener.local_addr()?.port();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                if let Err(e) = serve(conn, &file) {
                    eprintln!("reference server: {e:#}");
                }
            }
        });
        Ok(ReferenceServer { port })
    }
}

fn serve(conn: TcpStream, file: &Path) -> Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    // The request head: read (and ignore) until the blank line.
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let mut f = std::fs::File::open(file)?;
    let len = f.metadata()?.len();
    let mut out = conn;
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {len}\r\nConnection: close\r\n\r\n"
    )?;
    std::io::copy(&mut f, &mut out)?; // sendfile(2) on Linux
    Ok(())
}
