//! Real npm packages for the tests and benchmarks (`@actyx/pond` under `tests/pond/<dir>/`,
//! Helia under `tests/ipfs/`): `npm ci` from a committed lockfile into a shared directory (once
//! per lockfile, see [`install_from`]), and Node.js driver processes whose JSON stdout lines are read with
//! timeouts (and that may be sent JSON lines on stdin).
//!
//! Skipping: only when npm cannot reach its registry (`npm ping` fails, or `npm ci` fails with a
//! network error), and then with a printed reason. Any other failure is a test failure.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// How long `npm ci` may take (a cold cache downloads a few MB).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);

/// Why the npm tests cannot run here (npm cannot reach its registry), if so.
pub fn skip_reason() -> Option<String> {
    static REASON: OnceLock<Option<String>> = OnceLock::new();
    REASON
        .get_or_init(|| {
            let out = run_with_timeout(
                Command::new("npm").args(["ping", "--no-audit"]),
                Duration::from_secs(60),
            );
            match out {
                Ok((true, _)) => None,
                Ok((false, text)) => Some(format!(
                    "`npm ping` failed: {}",
                    text.lines().last().unwrap_or("")
                )),
                Err(e) => Some(format!("cannot run `npm ping`: {e:#}")),
            }
        })
        .clone()
}

/// Prints why an npm test is skipped; true if it must be.
pub fn skipped(test: &str) -> bool {
    match skip_reason() {
        Some(reason) => {
            eprintln!("SKIPPED {test}: npm cannot reach its registry ({reason})");
            println!("SKIPPED {test}: npm cannot reach its registry ({reason})");
            true
        }
        None => false,
    }
}

fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Result<(bool, String)> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn")?;
    let id = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => {
            let out = out?;
            let mut text = String::from_utf8_lossy(&out.stdout).to_string();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            Ok((out.status.success(), text))
        }
        Err(_) => {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(id as libc::pid_t, libc::SIGKILL);
            }
            bail!("did not finish within {limit:?}")
        }
    }
}

/// `source` (a directory with `package.json` and its lockfile; `dir` names it) with its packages
/// installed by `npm ci`. `Ok(None)`: skipped (printed) because npm cannot reach its registry.
///
/// The install is shared: `<tmp>/shoal-tests-npm/<dir>-<hash of package.json and
/// package-lock.json>`, made once (in a scratch dir renamed into place, so test processes running
/// at once never see half an install) and reused by every later test process until the lockfile
/// changes. A scratch install per process left ~400 MB in `/tmp` per run. The other files of
/// `source` (the driver scripts) are copied in at each first use in a process.
pub fn install_from(dir: &'static str, source: &Path) -> Result<Option<PathBuf>> {
    static DONE: Mutex<Vec<(&'static str, PathBuf)>> = Mutex::new(Vec::new());
    if skipped(dir) {
        return Ok(None);
    }
    // One install at a time per process; later callers reuse it.
    let mut done = DONE.lock().map_err(|_| anyhow!("install lock poisoned"))?;
    if let Some((_, p)) = done.iter().find(|(d, _)| *d == dir) {
        return Ok(Some(p.clone()));
    }
    const PACKAGE: [&str; 2] = ["package.json", "package-lock.json"];
    let mut hash = Sha256::new();
    for f in PACKAGE {
        hash.update(std::fs::read(source.join(f)).with_context(|| format!("{dir}/{f}"))?);
    }
    let key: String = hash.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let base = std::env::temp_dir().join("shoal-tests-npm");
    let target = base.join(format!("{dir}-{key}"));
    if !target.join("node_modules").is_dir() {
        std::fs::create_dir_all(&base)?;
        let scratch = tempfile::Builder::new()
            .prefix(&format!("{dir}-{key}.installing."))
            .tempdir_in(&base)?;
        for f in PACKAGE {
            std::fs::copy(source.join(f), scratch.path().join(f))?;
        }
        let started = Instant::now();
        let (ok, text) = run_with_timeout(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(scratch.path()),
            INSTALL_TIMEOUT,
        )?;
        if !ok {
            let network = [
                "ENOTFOUND",
                "ETIMEDOUT",
                "EAI_AGAIN",
                "ECONNREFUSED",
                "ECONNRESET",
            ]
            .iter()
            .any(|m| text.contains(m));
            if network {
                println!("SKIPPED {dir}: npm ci cannot reach the registry: {text}");
                eprintln!("SKIPPED {dir}: npm ci cannot reach the registry: {text}");
                return Ok(None);
            }
            bail!("npm ci for {dir} failed:\n{text}");
        }
        eprintln!("npm ci for {dir} took {:?}", started.elapsed());
        // Another test process may have finished first: then its install is used, ours goes.
        let scratch = scratch.keep();
        if std::fs::rename(&scratch, &target).is_err() {
            let _ = std::fs::remove_dir_all(&scratch);
        }
        if !target.join("node_modules").is_dir() {
            bail!("no install in {} after npm ci", target.display());
        }
    }
    // The scripts, fresh (renamed into place: other processes may be running them).
    for entry in std::fs::read_dir(source)? {
        let entry = entry?;
        let name = entry.file_name();
        if entry.file_type()?.is_file() && !PACKAGE.iter().any(|p| name == *p) {
            let tmp = target.join(format!("{}.{}", name.to_string_lossy(), std::process::id()));
            std::fs::copy(entry.path(), &tmp)?;
            std::fs::rename(&tmp, target.join(&name))?;
        }
    }
    done.push((dir, target.clone()));
    Ok(Some(target))
}

/// A running Node.js driver; killed on drop. Its stderr is kept for failure messages.
pub struct Js {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: std::sync::Arc<Mutex<String>>,
    pub name: String,
}

impl Js {
    pub fn spawn(dir: &Path, script: &str, args: &[&str], env: &[(&str, String)]) -> Result<Js> {
        let mut cmd = Command::new("node");
        cmd.arg(script)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().context("cannot run node")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("stdout")?;
        let stderr = child.stderr.take().context("stderr")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let kept = std::sync::Arc::new(Mutex::new(String::new()));
        let sink = kept.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut s) = sink.lock() {
                    // Bounded: keep the last ~64 KiB.
                    if s.len() > 64 * 1024 {
                        let cut = s.len() - 32 * 1024;
                        let cut = (cut..s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(0);
                        s.drain(..cut);
                    }
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
        Ok(Js {
            child,
            stdin,
            lines: rx,
            stderr: kept,
            name: format!("{script} {}", args.join(" ")),
        })
    }

    /// The process id of `node`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one JSON line to the driver's stdin.
    pub fn send(&mut self, v: &Value) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        writeln!(stdin, "{v}").with_context(|| format!("writing to `node {}`", self.name))?;
        stdin.flush()?;
        Ok(())
    }

    /// Sends `v` and returns the driver's answer (the next JSON line) within `limit`.
    pub fn ask(&mut self, v: &Value, limit: Duration) -> Result<Value> {
        self.send(v)?;
        self.next_within(limit)
    }

    /// What the driver printed on stderr so far (the last ~64 KiB).
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The next JSON line within `limit`; an `{"error"}` line fails.
    pub fn next_within(&mut self, limit: Duration) -> Result<Value> {
        let line = self.lines.recv_timeout(limit).map_err(|_| {
            anyhow!(
                "`node {}` printed nothing within {limit:?}; stderr:\n{}",
                self.name,
                self.stderr()
            )
        })?;
        let v: Value = serde_json::from_str(&line)
            .with_context(|| format!("`node {}` printed a non-JSON line: {line}", self.name))?;
        if v.get("error").is_some() {
            bail!(
                "`node {}` failed: {v}\nstderr:\n{}",
                self.name,
                self.stderr()
            );
        }
        Ok(v)
    }

    /// Lines until one has `key`; every line goes to `each` first. Bounded by `limit` overall.
    pub fn until(
        &mut self,
        key: &str,
        limit: Duration,
        mut each: impl FnMut(&Value) -> Result<()>,
    ) -> Result<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("`node {}` printed no `{key}` within {limit:?}", self.name);
            }
            let v = self.next_within(left)?;
            each(&v)?;
            if v.get(key).is_some() {
                return Ok(v);
            }
        }
    }
}

impl Drop for Js {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
