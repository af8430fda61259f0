//! The IPFS reference tools from npm (`tests/ipfs`: Helia, the UnixFS importer, `@ipld/car`),
//! installed with `npm ci` from the committed lockfile, and `tests/ipfs/unixfs.mjs` run with them
//! (the reference importer's CIDs, CAR files written and read by `@ipld/car`).
//!
//! The install (~400 MB) is shared: `<tmp>/shoal-tests-ipfs/<hash of package.json and
//! package-lock.json>`, made once (in a scratch dir renamed into place, so test processes
//! running at once never see half an install) and reused by every later test process until the
//! lockfile changes. The scripts are copied in at each use.
//!
//! [`tools`] is `None`, after saying so loudly on stderr, only when node/npm are not installed
//! or the npm registry is unreachable; any other failure of `npm ci` is a test failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// `npm ci` gives up after this.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);
/// One script run gives up after this (the reference importer hashes ~100 MB/s).
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

static TOOLS: OnceLock<Option<PathBuf>> = OnceLock::new();

/// The dir holding `node_modules` and the scripts of `tests/ipfs`, installed on first use.
pub fn tools() -> Option<&'static Path> {
    TOOLS
        .get_or_init(|| match install() {
            Ok(dir) => dir,
            Err(e) => panic!("installing tests/ipfs with npm ci failed: {e:#}"),
        })
        .as_deref()
}

fn install() -> Result<Option<PathBuf>> {
    let have = |cmd: &str| {
        Command::new(cmd)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !have("node") || !have("npm") {
        eprintln!("SKIPPED: node/npm not installed: the IPFS reference checks did not run");
        return Ok(None);
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("ipfs");
    let mut hash = Sha256::new();
    for f in ["package.json", "package-lock.json"] {
        hash.update(std::fs::read(src.join(f)).with_context(|| format!("tests/ipfs/{f}"))?);
    }
    let key: String = hash.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let base = std::env::temp_dir().join("shoal-tests-ipfs");
    let dir = base.join(&key);
    if !dir.join("node_modules").is_dir() {
        std::fs::create_dir_all(&base)?;
        let scratch = tempfile::Builder::new()
            .prefix(&format!("{key}.installing."))
            .tempdir_in(&base)?;
        for f in ["package.json", "package-lock.json"] {
            std::fs::copy(src.join(f), scratch.path().join(f))?;
        }
        if !npm_ci(scratch.path())? {
            return Ok(None);
        }
        // Another test process may have finished first: then its install is used, ours goes.
        let scratch = scratch.keep();
        if std::fs::rename(&scratch, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&scratch);
        }
        if !dir.join("node_modules").is_dir() {
            bail!("no install in {} after npm ci", dir.display());
        }
    }
    // The scripts, fresh at each use (renamed into place: other processes may be running them).
    for entry in std::fs::read_dir(&src)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.ends_with(".mjs") {
            let tmp = dir.join(format!("{name}.{}", std::process::id()));
            std::fs::copy(&path, &tmp)?;
            std::fs::rename(&tmp, dir.join(name))?;
        }
    }
    Ok(Some(dir))
}

/// Runs `npm ci` in `dir`; `false` (after saying so) when the registry is unreachable.
fn npm_ci(dir: &Path) -> Result<bool> {
    let mut child = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + INSTALL_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            if status.success() {
                return Ok(true);
            }
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            if ["ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED"]
                .iter()
                .any(|code| err.contains(code))
            {
                eprintln!("SKIPPED: npm registry unreachable, the IPFS reference checks did not run: {err}");
                return Ok(false);
            }
            bail!("npm ci failed ({status}): {err}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("npm ci did not finish within {INSTALL_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
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
