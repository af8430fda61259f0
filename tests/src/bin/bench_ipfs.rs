//! Benchmark of the block exchange (issue 15): one blob moved between nodes, medians of several
//! runs, every figure in the same run:
//! - shoal → shoal over Bitswap (what shoal nodes use now): `curl` downloads the blob from B,
//!   which fetches every block from A;
//! - shoal → shoal over `/shoal/exchange/1` (the same binary, B run with
//!   `SHOAL_BLOCK_EXCHANGE=shoal`);
//! - the previous shoal → shoal (`--before BIN`: a `shoal` binary built before this change;
//!   A and B both run it, A puts the same bytes itself: an older build may chunk them into
//!   another DAG) — the reference the ratios are to;
//! - shoal → shoal over Bitswap with yamux's default stream windows (B run with
//!   `SHOAL_YAMUX_WINDOWS=uncapped`): what the 1 MiB window cap IPFS peers need costs;
//! - shoal → Helia: a Helia peer (`tests/ipfs/peer.mjs`, Node.js) `cat`s the blob (a UnixFS
//!   file) from A over Bitswap, every block of its DAG, and must get the same bytes;
//! - Helia → shoal: a fresh node C, connected only to that Helia, serves the blob (`curl`),
//!   fetching every block from Helia.
//!
//! Run: `cargo run --release -p shoal-tests --bin bench_ipfs -- [--runs 3] [--mib 1024]
//! [--before /path/to/old/shoal]`. Nodes use a swarm key (as IPFS peers must). MB = 10^6 bytes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use shoal_tests::curl::{curl, download};
use shoal_tests::ipfs::Helia;
use shoal_tests::stats::{median, proc_status_kib};
use shoal_tests::{Node, NodeOptions};

#[derive(Default)]
struct Run {
    bitswap: f64,
    shoal: f64,
    uncapped: f64,
    before: Option<f64>,
    to_helia: f64,
    from_helia: f64,
    /// Blocks node C dropped: late (their request had ended) and unrequested (never asked
    /// for: these fail C's other requests to Helia).
    late: u64,
    unrequested: u64,
}

fn main() -> Result<()> {
    let mut runs = 3usize;
    let mut mib = 1024usize;
    let mut before: Option<PathBuf> = None;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--runs" => runs = value.parse::<usize>().context("--runs N")?.max(1),
            "--mib" => mib = value.parse::<usize>().context("--mib N")?.max(1),
            "--before" => before = Some(PathBuf::from(value)),
            other => bail!("unknown flag {other} (known: --runs N, --mib N, --before BIN)"),
        }
    }
    let dir = tempfile::Builder::new().prefix("bench-ipfs-").tempdir()?;
    let file = dir.path().join("blob.bin");
    write_random(&file, mib << 20)?;
    let key = dir.path().join("swarm.key");
    std::fs::write(&key, shoal_engine::swarm::generate_swarm_key())?;
    let digest = sha256_hex(&file)?;
    let bytes = (mib << 20) as f64;
    println!("blob: {mib} MiB random, {runs} runs");
    let mut results = Vec::new();
    for i in 0..runs {
        let r = one_run(&file, &key, &digest, bytes, before.as_deref())?;
        println!(
            "run {}: shoal→shoal Bitswap {:.0} MB/s, /shoal/exchange/1 {:.0} MB/s, Bitswap with \
             uncapped yamux windows {:.0} MB/s, before {}, shoal→Helia {:.0} MB/s, \
             Helia→shoal {:.0} MB/s",
            i + 1,
            r.bitswap,
            r.shoal,
            r.uncapped,
            r.before.map_or("-".into(), |b| format!("{b:.0} MB/s")),
            r.to_helia,
            r.from_helia
        );
        results.push(r);
    }
    let m = |f: fn(&Run) -> f64| median(results.iter().map(f).collect());
    let reference = if before.is_some() {
        Some(m(|r| r.before.unwrap_or(0.0)))
    } else {
        None
    };
    let ratio = |x: f64| reference.map_or(String::new(), |r| format!(" ({:.2}×)", x / r));
    println!(
        "median: shoal→shoal Bitswap {:.0} MB/s{} | /shoal/exchange/1 {:.0} MB/s{} | Bitswap \
         uncapped {:.0} MB/s{} | before {} | shoal→Helia {:.0} MB/s{} | Helia→shoal {:.0} MB/s{}",
        m(|r| r.bitswap),
        ratio(m(|r| r.bitswap)),
        m(|r| r.shoal),
        ratio(m(|r| r.shoal)),
        m(|r| r.uncapped),
        ratio(m(|r| r.uncapped)),
        reference.map_or("-".into(), |r| format!("{r:.0} MB/s (1.00×)")),
        m(|r| r.to_helia),
        ratio(m(|r| r.to_helia)),
        m(|r| r.from_helia),
        ratio(m(|r| r.from_helia)),
    );
    Ok(())
}

fn keyed(key: &Path) -> NodeOptions {
    NodeOptions::default()
        .arg("--swarm-key")
        .arg(key.display().to_string())
}

fn one_run(
    file: &Path,
    key: &Path,
    digest: &str,
    bytes: f64,
    before: Option<&Path>,
) -> Result<Run> {
    let mut run = Run::default();
    let a = Node::start_with(keyed(key))?;
    let cid = put(&a, file)?;
    let url = |n: &Node| n.url(&format!("/api/v1/blobs/{cid}"));
    {
        let b = Node::start_with(keyed(key).arg("--peer").arg(a.swarm.clone()))?;
        wait_connected(&b)?;
        run.bitswap = download(&url(&b), bytes)?;
    }
    {
        let mut options = keyed(key).arg("--peer").arg(a.swarm.clone());
        options
            .env
            .push(("SHOAL_BLOCK_EXCHANGE".into(), "shoal".into()));
        let b = Node::start_with(options)?;
        wait_connected(&b)?;
        run.shoal = download(&url(&b), bytes)?;
    }
    {
        let mut options = keyed(key).arg("--peer").arg(a.swarm.clone());
        options
            .env
            .push(("SHOAL_YAMUX_WINDOWS".into(), "uncapped".into()));
        let b = Node::start_with(options)?;
        wait_connected(&b)?;
        run.uncapped = download(&url(&b), bytes)?;
    }
    let mut helia = Helia::start(key)?.context("npm cannot reach its registry")?;
    helia.dial(&a.swarm)?;
    // `cat` walks the whole DAG: the root, the interior nodes (a blob of more than 174 chunks
    // has some) and the chunks, so Helia then holds every block C needs below.
    let t = Instant::now();
    let (size, sha, _) = helia.cat(&cid, Duration::from_secs(1800))?;
    run.to_helia = bytes / t.elapsed().as_secs_f64() / 1e6;
    if size as f64 != bytes || sha != digest {
        bail!("Helia's cat gave {size} bytes with SHA-256 {sha}, expected {bytes} and {digest}");
    }
    drop(a);
    {
        // Bitswap at debug: every block Helia sent that C dropped is counted in a line.
        let mut options = keyed(key);
        options.env.push((
            "RUST_LOG".into(),
            "info,shoal_engine::exchange::bitswap=debug".into(),
        ));
        let c = Node::start_with(options)?;
        helia.dial(&c.swarm)?;
        run.from_helia = download(&url(&c), bytes).with_context(|| {
            let log = c.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let helia_err = helia.stderr();
            let helia_tail: Vec<&str> = helia_err.lines().rev().take(30).collect();
            format!(
                "Helia → shoal failed; node C peak RSS {} KiB, Helia peak RSS {} KiB\n\
                 ---- node C's log ----\n{}\n---- Helia's stderr ----\n{}",
                c.pid()
                    .and_then(|p| proc_status_kib(p, "VmHWM:"))
                    .unwrap_or(0),
                proc_status_kib(helia.pid(), "VmHWM:").unwrap_or(0),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
                helia_tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            )
        })?;
        let log = c.log();
        run.late = dropped_blocks(&log, &["dropped late"]);
        run.unrequested = dropped_blocks(&log, &["do not match their CIDs", "dropped unrequested"]);
    }
    println!(
        "  Helia peak RSS {} MiB; C dropped {} late and {} unrequested block(s) from Helia",
        proc_status_kib(helia.pid(), "VmHWM:").unwrap_or(0) >> 10,
        run.late,
        run.unrequested
    );
    drop(helia);
    if let Some(bin) = before {
        let mut options = keyed(key);
        options.bin = Some(bin.to_path_buf());
        let a = Node::start_with(options.clone())?;
        let cid = put(&a, file)?;
        let b = Node::start_with(options.arg("--peer").arg(a.swarm.clone()))?;
        wait_connected(&b)?;
        run.before = Some(download(&b.url(&format!("/api/v1/blobs/{cid}")), bytes)?);
    }
    Ok(run)
}

fn put(node: &Node, file: &Path) -> Result<String> {
    let out = curl(&[
        "-sS",
        "--fail-with-body",
        "-X",
        "POST",
        "-H",
        "content-type: application/octet-stream",
        "-T",
        &file.display().to_string(),
        &node.url("/api/v1/blobs"),
    ])?;
    let answer: serde_json::Value = serde_json::from_str(&out).context("put answer")?;
    Ok(answer["cid"].as_str().context("no cid")?.to_string())
}

/// Waits (bounded) until node info lists a connected peer.
fn wait_connected(node: &Node) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = curl(&["-sS", "--fail", &node.url("/api/v1/node/info")])?;
        let info: serde_json::Value = serde_json::from_str(&info)?;
        let up = info["peers"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["connected"] == true));
        if up {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no peer connected within 30 s: {info}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The blocks a node's Bitswap dropped, summed from its log lines (`count=N`) that contain
/// one of `kinds`.
fn dropped_blocks(log: &str, kinds: &[&str]) -> u64 {
    log.lines()
        .filter(|l| kinds.iter().any(|k| l.contains(k)))
        .filter_map(|l| l.split("count=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// The SHA-256 of the file, hex.
fn sha256_hex(file: &Path) -> Result<String> {
    let mut f = std::fs::File::open(file)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut f, &mut hasher)?;
    Ok(format!("{:x}", hasher.finalize()))
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
