//! The supervisor of one process app: one task that owns the app's child process, restarts it
//! by [`RestartRule`], and publishes its [`Status`] on a `watch`.
//!
//! The owner task (`runtime.rs`) sends [`Control`]s and never waits for the app: a stop that
//! takes the full [`STOP_GRACE`], or an app that crash-loops, occupies this task only. The
//! child runs in its own process group (`process_group(0)`); every signal goes to the group
//! (`killpg`), and after the leader exits the group gets a SIGKILL too, so nothing the app
//! forked outlives it. The child also gets `PR_SET_PDEATHSIG = SIGKILL`, so a node that dies
//! without stopping its apps (SIGKILL, a crash) takes its children along.
//!
//! Each stdout/stderr line becomes a console entry (`producerName` = app id, severity
//! info/error), cut at [`MAX_LINE`] bytes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch, Notify};

use super::limits::{self, Prepared};
use super::manifest::Process;
use super::restart::{Decision, Exit, RestartRule};
use super::State;
use crate::console::{Console, Entry, Severity};
use crate::metrics::AppMetrics;

/// Time between SIGTERM and SIGKILL when stopping an app (API.md).
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// Longest console line from an app; the rest of a longer line is dropped.
pub const MAX_LINE: usize = 16 * 1024;

/// Everything needed to start one version of an app with one set of settings.
#[derive(Debug, Clone)]
pub struct Launch {
    pub id: String,
    pub version: String,
    /// The unpacked package.
    pub package_dir: PathBuf,
    /// The app's working directory (`<data-dir>/apps/<id>/data`).
    pub work_dir: PathBuf,
    pub process: Process,
    /// The full environment the app gets on top of the node's (API.md + the manifest's).
    pub env: BTreeMap<String, String>,
}

/// What the supervisor is told.
#[derive(Debug)]
pub enum Control {
    /// (Re)start with this launch: a running child is stopped first. Not a policy restart.
    Run(Box<Launch>),
    /// Stop the child; state `stopped`.
    Stop,
}

/// What the supervisor publishes.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub state: State,
    pub pid: Option<u32>,
    /// Restarts by the policy since the last operator action.
    pub restarts: u64,
    /// RFC 3339 start time of the running child.
    pub started_at: Option<String>,
}

/// Handle on a supervisor task: dropping `control` ends the task (after stopping the child).
pub struct Supervisor {
    pub control: mpsc::Sender<Control>,
    pub status: watch::Receiver<Status>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Who learns of a supervisor's changes besides its status watch: `changed` wakes the owner
/// task (which republishes the app list and the running-apps gauge), `metrics` counts restarts.
#[derive(Clone)]
pub struct Observers {
    pub changed: Arc<Notify>,
    pub metrics: AppMetrics,
}

/// The supervisor's side of its status: every change also wakes the owner.
struct StatusTx {
    tx: watch::Sender<Status>,
    changed: Arc<Notify>,
}

impl StatusTx {
    fn send_modify(&self, modify: impl FnOnce(&mut Status)) {
        self.tx.send_modify(modify);
        self.changed.notify_one();
    }
}

/// Spawns the supervisor of one app, idle (`stopped`) until it gets `Run`.
pub fn spawn(console: Console, initial: State, observers: Observers) -> Supervisor {
    let (control, rx) = mpsc::channel(16);
    let (tx, status_rx) = watch::channel(Status {
        state: initial,
        pid: None,
        restarts: 0,
        started_at: None,
    });
    let status = StatusTx {
        tx,
        changed: observers.changed,
    };
    let task = tokio::spawn(run(rx, status, console, observers.metrics));
    Supervisor {
        control,
        status: status_rx,
        task,
    }
}

async fn run(
    mut rx: mpsc::Receiver<Control>,
    status: StatusTx,
    console: Console,
    metrics: AppMetrics,
) {
    let mut launch: Option<Box<Launch>> = None;
    let mut rule = RestartRule::new(Default::default());
    let mut next_start: Option<Instant> = None;
    let mut restarts: u64 = 0;
    loop {
        // Idle, or backing off until `next_start`: wait for a control or the restart time.
        let waited = match next_start {
            Some(at) => tokio::select! {
                c = rx.recv() => Some(c),
                _ = tokio::time::sleep_until(at.into()) => None,
            },
            None => Some(rx.recv().await),
        };
        match waited {
            // The backoff is over: a policy restart.
            None => {
                restarts = restarts.saturating_add(1);
                if let Some(l) = &launch {
                    metrics.restarted(&l.id);
                }
            }
            Some(None) => return,
            Some(Some(Control::Stop)) => {
                next_start = None;
                stopped(&status);
                continue;
            }
            Some(Some(Control::Run(l))) => {
                rule = RestartRule::new(l.process.restart);
                restarts = 0;
                launch = Some(l);
            }
        }
        next_start = None;
        let Some(current) = launch.clone() else {
            continue;
        };
        let mut current = current;
        // Run until the child exits by itself or an operator stops it; a new launch that
        // arrives meanwhile replaces the running child at once.
        loop {
            match supervise(&current, &mut rule, &mut rx, &status, &console, restarts).await {
                Outcome::Exited(d) => {
                    next_start = after(d, &status, restarts);
                    break;
                }
                Outcome::Control(Control::Run(newer)) => {
                    rule = RestartRule::new(newer.process.restart);
                    restarts = 0;
                    launch = Some(newer.clone());
                    current = newer;
                }
                Outcome::Control(Control::Stop) => {
                    stopped(&status);
                    break;
                }
                Outcome::Closed => return,
            }
        }
    }
}

fn stopped(status: &StatusTx) {
    status.send_modify(|s| {
        s.state = State::Stopped;
        s.pid = None;
        s.started_at = None;
    });
}

/// Publishes the state after an exit; returns when to start again, if at all.
fn after(decision: Decision, status: &StatusTx, restarts: u64) -> Option<Instant> {
    let (state, at) = match decision {
        // While waiting out the backoff the app counts as `starting`: it will run again.
        Decision::RestartAfter(d) => (State::Starting, Some(Instant::now() + d)),
        Decision::Stopped => (State::Stopped, None),
        Decision::Failed => (State::Failed, None),
    };
    status.send_modify(|s| {
        s.state = state;
        s.pid = None;
        s.started_at = None;
        s.restarts = restarts;
    });
    at
}

enum Outcome {
    /// The child exited by itself; what the rule decided.
    Exited(Decision),
    /// An operator control arrived; the child has been stopped.
    Control(Control),
    /// The owner is gone (node shutdown); the child has been stopped.
    Closed,
}

/// Runs the child once, until it exits or a control arrives.
async fn supervise(
    launch: &Launch,
    rule: &mut RestartRule,
    rx: &mut mpsc::Receiver<Control>,
    status: &StatusTx,
    console: &Console,
    restarts: u64,
) -> Outcome {
    status.send_modify(|s| {
        s.state = State::Starting;
        s.restarts = restarts;
    });
    let began = Instant::now();
    let mut child = match start(launch, console) {
        Ok(child) => child,
        Err(e) => {
            tracing::warn!(app = %launch.id, error = %e, "cannot start the app");
            log(
                console,
                launch,
                Severity::Error,
                format!("cannot start: {e}"),
            )
            .await;
            return Outcome::Exited(rule.on_exit(Exit::Failure, began.elapsed()));
        }
    };
    let pid = child.id();
    status.send_modify(|s| {
        s.state = State::Running;
        s.pid = pid;
        s.started_at = Some(rfc3339_now());
    });
    tracing::info!(app = %launch.id, version = %launch.version, pid, "app started");
    let outcome = tokio::select! {
        exit = child.wait() => {
            let exit = match exit {
                Ok(s) if s.success() => Exit::Success,
                Ok(s) => {
                    log(console, launch, Severity::Warn, format!("exited: {s}")).await;
                    Exit::Failure
                }
                Err(e) => {
                    tracing::warn!(app = %launch.id, error = %e, "cannot wait for the app");
                    Exit::Failure
                }
            };
            Outcome::Exited(rule.on_exit(exit, began.elapsed()))
        }
        control = rx.recv() => {
            stop(&mut child, &launch.id).await;
            match control {
                Some(c) => Outcome::Control(c),
                None => Outcome::Closed,
            }
        }
    };
    // Whatever the leader left in its group goes with it.
    if let Some(pid) = pid {
        signal_group(pid, libc::SIGKILL);
    }
    limits::cleanup(&launch.id);
    outcome
}

fn start(launch: &Launch, console: &Console) -> std::io::Result<Child> {
    std::fs::create_dir_all(&launch.work_dir)?;
    let p = &launch.process;
    let mut cmd = Command::new(resolve(&launch.package_dir, &p.command));
    cmd.args(p.args.iter().map(|a| resolve(&launch.package_dir, a)))
        .envs(&launch.env)
        .current_dir(&launch.work_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let prepared = Prepared::new(&launch.id, &p.limits);
    // SAFETY: the closure makes only async-signal-safe calls (prctl, setrlimit, open/write).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            prepared.apply_in_child()
        });
    }
    let mut child = cmd.spawn()?;
    if let Some(out) = child.stdout.take() {
        tokio::spawn(forward(
            out,
            console.clone(),
            launch.clone(),
            Severity::Info,
        ));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(forward(
            err,
            console.clone(),
            launch.clone(),
            Severity::Error,
        ));
    }
    Ok(child)
}

/// A relative `command`/`args` entry naming a file of the package becomes that file's absolute
/// path (API.md); anything else passes unchanged (a program on PATH, a flag).
fn resolve(package_dir: &std::path::Path, arg: &str) -> std::ffi::OsString {
    let path = std::path::Path::new(arg);
    if path.is_relative() && !arg.starts_with('-') {
        let full = package_dir.join(path);
        if full.is_file() {
            return full.into_os_string();
        }
    }
    arg.into()
}

/// SIGTERM to the group, SIGKILL after [`STOP_GRACE`]; returns once the leader is reaped.
async fn stop(child: &mut Child, id: &str) {
    let Some(pid) = child.id() else { return };
    signal_group(pid, libc::SIGTERM);
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            app = id,
            pid,
            "app did not stop within 10 s of SIGTERM; killing it"
        );
        signal_group(pid, libc::SIGKILL);
        let _ = child.wait().await;
    }
    tracing::info!(app = id, pid, "app stopped");
}

fn signal_group(pid: u32, signal: libc::c_int) {
    let Ok(pgid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: plain system call; ESRCH (group already gone) is expected and ignored.
    unsafe {
        libc::killpg(pgid, signal);
    }
}

/// Forwards each line of `pipe` to the console, cut at [`MAX_LINE`].
async fn forward<R: AsyncRead + Unpin>(
    pipe: R,
    console: Console,
    launch: Launch,
    severity: Severity,
) {
    let mut reader = BufReader::with_capacity(MAX_LINE, pipe);
    let mut line = Vec::new();
    loop {
        line.clear();
        // Read at most MAX_LINE bytes of a line; skip the rest of an overlong one.
        let mut overlong = false;
        loop {
            let buf = match reader.fill_buf().await {
                Ok(b) => b,
                Err(_) => return,
            };
            if buf.is_empty() {
                if line.is_empty() {
                    return;
                }
                break;
            }
            let (take, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            let room = MAX_LINE.saturating_sub(line.len());
            line.extend_from_slice(&buf[..take.min(room)]);
            overlong |= take > room;
            reader.consume(take);
            if done {
                break;
            }
        }
        let mut text = String::from_utf8_lossy(&line)
            .trim_end_matches(['\n', '\r'])
            .to_string();
        if overlong {
            text.push_str(" […]");
        }
        log(&console, &launch, severity, text).await;
    }
}

async fn log(console: &Console, launch: &Launch, severity: Severity, message: String) {
    let entry = Entry {
        severity,
        log_name: match severity {
            Severity::Info => "stdout".into(),
            Severity::Error => "stderr".into(),
            _ => "supervisor".into(),
        },
        message,
        labels: Default::default(),
        producer_name: launch.id.clone(),
        producer_version: launch.version.clone(),
        log_timestamp: None,
        additional_data: None,
    };
    if let Err(e) = console.append(entry).await {
        tracing::debug!(app = %launch.id, error = %e, "cannot store an app's log line");
    }
}

fn rfc3339_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
