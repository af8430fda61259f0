//! The one harness of shoal's black-box tests: real `shoal run` processes on 127.0.0.1 (free
//! ports, temporary data dirs), talked to over real sockets.
//!
//! - [`shoal_bin`] finds the `shoal` binary. Cargo only builds a package's binary for that
//!   package's own integration tests (`CARGO_BIN_EXE_*`), and `tests/` is another package, so the
//!   harness uses `<target>/<profile>/shoal` next to the test executable when it is newer than
//!   every source it is built from, else runs `cargo build -p shoal --bin shoal` once per test
//!   process into the same target dir and profile (cargo has released its lock while tests
//!   run). `SHOAL_BIN=/path/to/shoal` skips both (e.g. to test an installed binary).
//! - [`Node`] starts one node, waits for its `shoal ready` line (bounded by [`TIMEOUT`]), keeps
//!   its stderr in `node.log` next to the data dir (printed when a test fails), and kills it
//!   (SIGKILL) on drop. [`Node::restart`] reuses the data dir.
//! - HTTP helpers over `reqwest` and [`Ndjson`] for streaming answers; every wait has a timeout.
//! - [`raw_http`] speaks HTTP/1.1 by hand over TCP, for requests reqwest will not send (a lying
//!   `Content-Length`).
//! - [`load`] runs CPU hogs beside the benchmarks' nodes; [`nats`] runs a NATS JetStream node
//!   as their reference.
//! - [`prometheus`] parses `/metrics` with the official Python client's parser.
//! - [`ipfs`] runs the IPFS reference tools from npm; [`ipfs::Helia`] is a real IPFS peer
//!   (Helia) for the interop tests.
//! - [`npm`] installs npm packages from committed lockfiles and drives Node.js scripts (Pond
//!   apps, the Helia IPFS peer).
//! - [`browser`] runs Debian's headless chromium on a page, or driven over the DevTools
//!   Protocol ([`browser::Devtools`], [`browser::Page`]) for the dashboard and web app tests.
//! - [`cli`] runs a `shoal` client command with a timeout (`cli.rs`); [`run_on_data_dir`] starts
//!   a second `shoal run` on a data dir that must refuse it.

pub mod browser;
mod cli;
pub mod curl;
pub mod hostile;
mod http;
pub mod ipfs;
pub mod load;
pub mod nats;
pub mod npm;
pub mod prometheus;
pub mod stats;

pub use cli::{cli, CliOutput, CliStream};
pub use http::{expect_error, expect_status, raw_http, within, Ndjson};

use std::io::BufRead;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

/// Upper bound of every wait in the tests (generous: a 2-core machine busy with builds).
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// The `shoal` binary (see the module doc).
pub fn shoal_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match find_or_build() {
        Ok(p) => p,
        Err(e) => panic!("cannot find or build the shoal binary: {e:#}"),
    })
}

fn find_or_build() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("SHOAL_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let exe = std::env::current_exe().context("current_exe")?;
    let mut dir = exe.parent().context("test executable has no directory")?;
    if dir.ends_with("deps") {
        dir = dir.parent().context("deps has no parent")?;
    }
    let profile = dir
        .file_name()
        .and_then(|n| n.to_str())
        .context("profile dir name")?
        .to_string();
    let target_dir = dir.parent().context("profile dir has no parent")?;
    let bin = dir.join("shoal");
    // Fresh already (e.g. CI ran `cargo build --workspace --all-targets` first): use it. A build
    // of `-p shoal` alone resolves features differently from a workspace build and would
    // rebuild many dependencies once, so it is only the fallback.
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("tests/ has no parent")?;
    if is_fresh(&bin, workspace) {
        return Ok(bin);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", "shoal", "--bin", "shoal"])
        .arg("--profile")
        .arg(if profile == "debug" { "dev" } else { &profile })
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) if bin.exists() => eprintln!("harness: cargo build failed ({s}); using {bin:?}"),
        Ok(s) => bail!("cargo build -p shoal failed ({s})"),
        Err(e) if bin.exists() => eprintln!("harness: cannot run cargo ({e}); using {bin:?}"),
        Err(e) => bail!("cannot run cargo to build shoal: {e}"),
    }
    if !bin.exists() {
        bail!("{bin:?} is missing after the build");
    }
    Ok(bin)
}

/// Whether `bin` exists and is newer than every source the node is built from (the crates'
/// `src/` trees and manifests, the workspace manifest and lock file, `vendor/`).
fn is_fresh(bin: &Path, workspace: &Path) -> bool {
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
        return false;
    };
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    let mut stack: Vec<PathBuf> = vec![workspace.join("Cargo.toml"), workspace.join("Cargo.lock")];
    for krate in ["store", "engine", "api", "cli"] {
        stack.push(workspace.join(krate).join("Cargo.toml"));
        stack.push(workspace.join(krate).join("src"));
    }
    // The dashboard's files are compiled in (`include_str!`), and so is the patched banyan.
    stack.push(workspace.join("api").join("ui"));
    stack.push(workspace.join("vendor"));
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        } else if let Ok(modified) = meta.modified() {
            newest = newest.max(modified);
        }
    }
    built >= newest
}

/// Waits for `child` to exit, at most `timeout`. Past it the child is killed and reaped and
/// the answer is `None`.
pub fn wait_within(child: &mut Child, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; the OS does not hand it out again soon).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// How to start a node.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// Extra `shoal run` arguments (e.g. `--max-body-bytes 1024`).
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Keep mDNS on and listen on all interfaces (libp2p's mDNS skips loopback interfaces and
    /// announces the sender's interface address, so a loopback-only node is never found).
    pub mdns: bool,
    /// Run this binary instead of [`shoal_bin`] (a benchmark's before/after).
    pub bin: Option<PathBuf>,
    /// Give `--data-dir data` relative to the node's working directory (the temp dir), as the
    /// README's `--data-dir a` does, instead of an absolute path.
    pub relative_data_dir: bool,
}

impl NodeOptions {
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    /// See [`NodeOptions::mdns`].
    pub fn mdns(mut self) -> Self {
        self.mdns = true;
        self
    }

    /// See [`NodeOptions::relative_data_dir`].
    pub fn relative_data_dir(mut self) -> Self {
        self.relative_data_dir = true;
        self
    }
}

/// A running `shoal run` process.
pub struct Node {
    child: Option<Child>,
    /// The node's source id, from its ready line.
    pub source: String,
    /// Events/node API address, from the ready line.
    pub api: SocketAddr,
    /// Console API address (chosen by the harness).
    pub console: SocketAddr,
    /// Dialable swarm address, from the ready line.
    pub swarm: String,
    /// WebSocket store API address (Pond apps), from the ready line's `store=`.
    pub store: SocketAddr,
    /// The temp dir holding `data/` and `node.log`; `None` only while being moved to a restart.
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    options: NodeOptions,
    /// A client for tests; requests have no overall timeout (streams), waits use [`TIMEOUT`].
    pub http: reqwest::Client,
}

impl Node {
    /// Starts a node with defaults for tests (loopback, port 0, no mDNS).
    pub fn start() -> Result<Node> {
        Node::start_with(NodeOptions::default())
    }

    pub fn start_with(options: NodeOptions) -> Result<Node> {
        let dir = tempfile::Builder::new()
            .prefix("shoal-test-")
            .tempdir()
            .context("temp dir")?;
        Node::spawn(dir, options)
    }

    /// Starts a node in `dir` (its data dir is `dir/data`, created if missing): for tests that
    /// prepare the data dir first, e.g. mount a small filesystem on it.
    pub fn start_in(dir: tempfile::TempDir, options: NodeOptions) -> Result<Node> {
        Node::spawn(dir, options)
    }

    fn spawn(dir: tempfile::TempDir, options: NodeOptions) -> Result<Node> {
        let data = dir.path().join("data");
        let log_path = dir.path().join("node.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .context("node.log")?;
        let console: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut cmd = Command::new(options.bin.as_deref().unwrap_or_else(|| shoal_bin()));
        cmd.arg("run").arg("--data-dir");
        if options.relative_data_dir {
            cmd.arg("data").current_dir(dir.path());
        } else {
            cmd.arg(&data);
        }
        cmd.args(["--api-addr", "127.0.0.1:0"])
            .args(["--console-addr", &console.to_string()])
            .args(["--store-addr", "127.0.0.1:0"]);
        if options.mdns {
            cmd.args(["--swarm-addr", "/ip4/0.0.0.0/tcp/0"]);
        } else {
            cmd.args(["--swarm-addr", "/ip4/127.0.0.1/tcp/0", "--no-mdns"]);
        }
        cmd.args(&options.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        for (k, v) in &options.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().context("cannot spawn shoal run")?;
        let stdout = child.stdout.take().context("no stdout")?;
        // A thread reads stdout for the whole life of the process, so the pipe never fills.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("shoal ready") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = match rx.recv_timeout(TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                bail!("node did not print `shoal ready` within {TIMEOUT:?}; its log:\n{log}");
            }
        };
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")).map(String::from))
                .ok_or_else(|| anyhow!("ready line `{line}` has no {name}="))
        };
        let source = field("source")?;
        let api = field("api")?.parse().context("api= is not IP:PORT")?;
        let swarm = field("swarm")?;
        let store = field("store")?.parse().context("store= is not IP:PORT")?;
        Ok(Node {
            child: Some(child),
            source,
            api,
            console,
            swarm,
            store,
            root: dir.path().to_path_buf(),
            dir: Some(dir),
            options,
            http: reqwest::Client::builder()
                .tcp_nodelay(true)
                .build()
                .context("http client")?,
        })
    }

    /// The data dir (stays until the `Node` is dropped, across restarts).
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The node's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("node.log")).unwrap_or_default()
    }

    /// The OS process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `http://<api>` + path.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.api, path)
    }

    /// `http://<console>` + path.
    pub fn console_url(&self, path: &str) -> String {
        format!("http://{}{}", self.console, path)
    }

    /// SIGKILL: the process dies at once, flushing nothing.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait (bounded) for a clean exit; returns whether it exited successfully.
    pub fn stop(&mut self) -> Result<bool> {
        let Some(mut child) = self.child.take() else {
            return Ok(true);
        };
        let pid = libc::pid_t::try_from(child.id()).context("pid")?;
        // SAFETY: plain kill(2) on our own child's pid, which has not been reaped yet.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        match wait_within(&mut child, TIMEOUT)? {
            Some(status) => Ok(status.success()),
            None => bail!("node did not exit within {TIMEOUT:?} of SIGTERM"),
        }
    }

    /// Stops the node cleanly (SIGTERM) and starts it again on the same data dir.
    pub fn restart(mut self) -> Result<Node> {
        let clean = self.stop()?;
        if !clean {
            bail!(
                "node exited unsuccessfully on SIGTERM; log:\n{}",
                self.log()
            );
        }
        self.respawn()
    }

    /// Starts a new process on the same data dir (after [`Node::kill9`] or [`Node::stop`]).
    pub fn respawn(self) -> Result<Node> {
        let options = self.options.clone();
        self.respawn_with(options)
    }

    /// [`Node::respawn`] with other options (e.g. a `--peer` the first process did not have).
    pub fn respawn_with(mut self, options: NodeOptions) -> Result<Node> {
        self.kill9();
        let dir = self.dir.take().context("node has no data dir")?;
        drop(self);
        Node::spawn(dir, options)
    }

    // ---- HTTP ----

    /// `GET` an API path.
    pub async fn get(&self, path: &str) -> Result<reqwest::Response> {
        within(self.http.get(self.url(path)).send()).await
    }

    /// `POST` JSON to an API path.
    pub async fn post(&self, path: &str, body: &Value) -> Result<reqwest::Response> {
        within(self.http.post(self.url(path)).json(body).send()).await
    }

    /// `POST` raw bytes (no content type) to an API path.
    pub async fn post_bytes(&self, path: &str, body: Vec<u8>) -> Result<reqwest::Response> {
        within(self.http.post(self.url(path)).body(body).send()).await
    }

    /// Publishes `events` (`{"semantics","name","payload","tags"?}` each); expects 201 and
    /// returns the stamps (`{"source","offset","lamport","timestamp"}` each).
    pub async fn publish(&self, events: &[Value]) -> Result<Vec<Value>> {
        let resp = self
            .post("/api/v1/events/publish", &json!({ "data": events }))
            .await?;
        let status = resp.status();
        let body: Value = within(resp.json()).await?;
        if status.as_u16() != 201 {
            bail!("publish answered {status}: {body}");
        }
        Ok(body["data"].as_array().cloned().unwrap_or_default())
    }

    /// `POST /api/v1/blobs` of `data`; the blob's CID (an error unless the answer is 201).
    pub async fn put_blob(&self, data: Vec<u8>) -> Result<String> {
        let resp = within(self.http.post(self.url("/api/v1/blobs")).body(data).send()).await?;
        let status = resp.status();
        let body: Value = within(resp.json()).await?;
        if status.as_u16() != 201 {
            bail!("blob put answered {status}: {body}");
        }
        Ok(body["cid"]
            .as_str()
            .context("no cid in the answer")?
            .to_string())
    }

    /// Polls `GET /api/v1/node/info` until `done` holds (panics after [`TIMEOUT`], showing the
    /// last answer); returns that answer.
    pub async fn wait_info(&self, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let info: Value = self
                .get("/api/v1/node/info")
                .await
                .expect("node info")
                .json()
                .await
                .expect("node info is JSON");
            if done(&info) {
                return info;
            }
            assert!(Instant::now() < deadline, "node info never matched: {info}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET /api/v1/events/offsets`.
    pub async fn offsets(&self) -> Result<Value> {
        let resp = self.get("/api/v1/events/offsets").await?;
        expect_status(&resp, 200)?;
        within(resp.json()).await
    }

    /// Runs a query and collects every event (the stream must end within [`TIMEOUT`]).
    pub async fn query(&self, body: &Value) -> Result<Vec<Value>> {
        let resp = self.post("/api/v1/events/query", body).await?;
        if resp.status().as_u16() != 200 {
            let status = resp.status();
            let text = within(resp.text()).await?;
            bail!("query answered {status}: {text}");
        }
        Ndjson::new(resp).collect().await
    }

    /// Every stored event, in lamport order.
    pub async fn query_all(&self) -> Result<Vec<Value>> {
        let upper = self.offsets().await?;
        self.query(&json!({"upperBound": upper, "subscriptions": [{}], "order": "lamport"}))
            .await
    }

    /// Opens a subscription; expects 200.
    pub async fn subscribe(&self, body: &Value) -> Result<Ndjson> {
        let resp = self.post("/api/v1/events/subscribe", body).await?;
        expect_status(&resp, 200)?;
        Ok(Ndjson::new(resp))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("---- last lines of the node's log ({}) ----", self.source);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        self.kill9();
    }
}

/// Runs `shoal run` on `data_dir` (free ports, no mDNS) and returns its output once it exits,
/// bounded by [`TIMEOUT`] (one that keeps running fails the call): for a data dir a live node
/// holds, which must be refused at once.
pub fn run_on_data_dir(data_dir: &Path) -> Result<CliOutput> {
    let data = data_dir.to_str().context("data dir is not UTF-8")?;
    cli(
        &[
            "run",
            "--data-dir",
            data,
            "--api-addr",
            "127.0.0.1:0",
            "--console-addr",
            "127.0.0.1:0",
            "--store-addr",
            "127.0.0.1:0",
            "--swarm-addr",
            "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
        ],
        None,
    )
}

/// A test event.
pub fn event(semantics: &str, name: &str, payload: Value) -> Value {
    json!({"semantics": semantics, "name": name, "payload": payload})
}
