//! The IPFS reference tools from npm (`tests/ipfs`: Helia, the UnixFS importer, `@ipld/car`),
//! installed with `npm ci` from the committed lockfile once per lockfile (`crate::npm::install_from`),
//! and `tests/ipfs/unixfs.mjs` run with them (the reference importer's CIDs, CAR files written
//! and read by `@ipld/car`), and [`Helia`], a real IPFS peer (`tests/ipfs/peer.mjs`) that joins
//! the swarm with a swarm key file.
//!
//! [`tools`] is `None`, after saying so loudly on stderr, only when the npm registry is
//! unreachable (or npm is not installed); any other failure of `npm ci` is a test failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::npm::{install_from, Js};

/// One script run gives up after this (the reference importer hashes ~100 MB/s).
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

static TOOLS: OnceLock<Option<PathBuf>> = OnceLock::new();

/// The dir holding `node_modules` and the scripts of `tests/ipfs`, installed on first use
/// (`crate::npm::install_from`).
pub fn tools() -> Option<&'static Path> {
    TOOLS
        .get_or_init(|| {
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("ipfs");
            match install_from("ipfs", &src) {
                Ok(dir) => dir,
                Err(e) => panic!("installing tests/ipfs with npm ci failed: {e:#}"),
            }
        })
        .as_deref()
}

/// Runs `node unixfs.mjs ARGS...` in the tools dir; returns its stdout.
pub fn unixfs(tools: &Path, args: &[&str]) -> Result<String> {
    let mut child = Command::new("node")
        .arg(tools.join("unixfs.mjs"))
        .args(args)
        .current_dir(tools)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run node")?;
    let deadline = Instant::now() + RUN_TIMEOUT;
    // Reading stdout while waiting: a large answer must not fill the pipe and stall node.
    let mut stdout = child.stdout.take().context("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        use std::io::Read;
        stdout.read_to_string(&mut out).map(|_| out)
    });
    loop {
        if let Some(status) = child.try_wait()? {
            let out = reader
                .join()
                .map_err(|_| anyhow::anyhow!("stdout reader panicked"))??;
            if !status.success() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                bail!("node unixfs.mjs {args:?} failed ({status}): {err}");
            }
            return Ok(out);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("node unixfs.mjs {args:?} did not finish within {RUN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The reference importer's CID of each file (`ipfs add --cid-version=1 --raw-leaves
/// --chunker=size-1048576`).
pub fn reference_cids(tools: &Path, files: &[PathBuf]) -> Result<Vec<String>> {
    let args: Vec<&str> = std::iter::once("cid")
        .chain(files.iter().filter_map(|f| f.to_str()))
        .collect();
    Ok(unixfs(tools, &args)?.lines().map(str::to_string).collect())
}

/// How long one Helia command may take (a large `cat` is given more by its caller).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// A running Helia peer; killed on drop.
pub struct Helia {
    js: Js,
    /// Its peer id.
    pub peer: String,
    /// Its listen addresses, each ending in `/p2p/<id>`.
    pub addrs: Vec<String>,
}

impl Helia {
    /// Installs the packages (once per process, [`tools`]) and starts a peer using the swarm
    /// key file `key`. `Ok(None)`: skipped (printed) because npm cannot reach its registry.
    pub fn start(key: &Path) -> Result<Option<Helia>> {
        let Some(dir) = tools() else {
            return Ok(None);
        };
        let key = key.to_str().context("key path is not UTF-8")?;
        let mut js = Js::spawn(dir, "peer.mjs", &[key], &[])?;
        let hello = js.next_within(COMMAND_TIMEOUT)?;
        let peer = hello["peer"].as_str().context("peer")?.to_string();
        let addrs = hello["addrs"]
            .as_array()
            .context("addrs")?
            .iter()
            .filter_map(|a| a.as_str().map(String::from))
            .collect();
        Ok(Some(Helia { js, peer, addrs }))
    }

    /// The process id of its `node` process.
    pub fn pid(&self) -> u32 {
        self.js.pid()
    }

    /// What it printed on stderr so far (the last ~64 KiB).
    pub fn stderr(&self) -> String {
        self.js.stderr()
    }

    fn ask(&mut self, cmd: Value, limit: Duration) -> Result<Value> {
        self.js.ask(&cmd, limit)
    }

    /// Connects to `addr` and waits until its identify lists Bitswap.
    pub fn dial(&mut self, addr: &str) -> Result<()> {
        self.ask(json!({ "dial": addr }), COMMAND_TIMEOUT)?;
        Ok(())
    }

    /// Tries to connect to `addr`: `Ok(None)` if it worked, else the error.
    pub fn try_dial(&mut self, addr: &str) -> Result<Option<String>> {
        let v = self.ask(json!({ "tryDial": addr }), COMMAND_TIMEOUT)?;
        match v["connected"].as_bool() {
            Some(true) => Ok(None),
            Some(false) => Ok(Some(v["reason"].as_str().unwrap_or("").to_string())),
            None => bail!("unexpected answer {v}"),
        }
    }

    /// Fetches blocks over Bitswap: `(cid, size, sha256 hex)` each.
    pub fn get(&mut self, cids: &[String]) -> Result<Vec<(String, u64, String)>> {
        let v = self.ask(json!({ "get": cids }), COMMAND_TIMEOUT)?;
        v["blocks"]
            .as_array()
            .context("blocks")?
            .iter()
            .map(|b| {
                Ok((
                    b["cid"].as_str().context("cid")?.to_string(),
                    b["size"].as_u64().context("size")?,
                    b["sha256"].as_str().context("sha256")?.to_string(),
                ))
            })
            .collect()
    }

    /// Stores the bytes of `file` as one raw block; its CID.
    pub fn put(&mut self, file: &Path) -> Result<String> {
        let v = self.ask(json!({ "put": file }), COMMAND_TIMEOUT)?;
        Ok(v["cid"].as_str().context("cid")?.to_string())
    }

    /// Imports `file` as a UnixFS file the way `ipfs add --cid-version=1 --raw-leaves
    /// --chunker=size-1048576` does; its CID.
    pub fn add(&mut self, file: &Path, limit: Duration) -> Result<String> {
        let v = self.ask(json!({ "add": file }), limit)?;
        Ok(v["cid"].as_str().context("cid")?.to_string())
    }

    /// Reads a UnixFS file over Bitswap: its size, SHA-256 (hex) and the milliseconds it took.
    pub fn cat(&mut self, cid: &str, limit: Duration) -> Result<(u64, String, u64)> {
        let v = self.ask(json!({ "cat": cid }), limit)?;
        Ok((
            v["size"].as_u64().context("size")?,
            v["sha256"].as_str().context("sha256")?.to_string(),
            v["ms"].as_u64().context("ms")?,
        ))
    }

    /// Misbehaves on Bitswap towards `addr` (see the script): junk, an oversized frame, too
    /// many entries, blocks nobody asked for, floods of wants for random CIDs.
    pub fn hostile(&mut self, addr: &str) -> Result<()> {
        self.ask(json!({ "hostile": addr }), COMMAND_TIMEOUT)?;
        Ok(())
    }

    /// Deletes blocks from its blockstore.
    pub fn drop_blocks(&mut self, cids: &[String]) -> Result<()> {
        self.ask(json!({ "drop": cids }), COMMAND_TIMEOUT)?;
        Ok(())
    }
}
