//! Resource limits of process apps (`[process] memory-max`, `cpu-max`), with what the OS offers.
//!
//! - **cgroup v2** when `/sys/fs/cgroup` is a writable cgroup v2 hierarchy whose root offers
//!   the `memory` and `cpu` controllers: each app gets the sub-cgroup
//!   `/sys/fs/cgroup/shoal-apps/<id>` with `memory.max` and `cpu.max` (period 100 ms), and the
//!   child moves itself into it before `exec` (so nothing it forks escapes the limit).
//! - else **rlimits**, set in the child before `exec`: `memory-max` becomes `RLIMIT_AS` (address
//!   space, which counts mappings that use no memory: give it headroom); `cpu-max` has no rlimit
//!   equivalent (`RLIMIT_CPU` caps total CPU seconds, which would kill a long-running app) and is
//!   not enforced — a warning says so once per start.
//!
//! Only async-signal-safe calls run in the child ([`Prepared::apply_in_child`]): every path and
//! value is formatted by the parent beforehand.

use std::ffi::CString;
use std::path::PathBuf;
use std::sync::OnceLock;

use super::manifest::Limits;

/// Where the apps' cgroups live under a cgroup v2 root.
const CGROUP_PARENT: &str = "shoal-apps";
/// `cpu.max` period, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;

/// What enforces limits on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mechanism {
    /// The directory holding one sub-cgroup per app.
    CgroupV2(PathBuf),
    Rlimit,
}

/// Finds out once which mechanism applies.
pub fn mechanism() -> &'static Mechanism {
    static M: OnceLock<Mechanism> = OnceLock::new();
    M.get_or_init(|| {
        let root = PathBuf::from("/sys/fs/cgroup");
        let controllers =
            std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
        if !(has("memory") && has("cpu")) {
            tracing::info!(
                "no writable cgroup v2 with memory and cpu controllers: app limits use rlimits"
            );
            return Mechanism::Rlimit;
        }
        let parent = root.join(CGROUP_PARENT);
        let ready = std::fs::create_dir_all(&parent)
            .and_then(|_| std::fs::write(root.join("cgroup.subtree_control"), "+memory +cpu"))
            .and_then(|_| std::fs::write(parent.join("cgroup.subtree_control"), "+memory +cpu"));
        match ready {
            Ok(()) => {
                tracing::info!(dir = %parent.display(), "app limits use cgroup v2");
                Mechanism::CgroupV2(parent)
            }
            Err(e) => {
                tracing::info!(error = %e, "cgroup v2 not writable: app limits use rlimits");
                Mechanism::Rlimit
            }
        }
    })
}

/// Limits made ready for one start of one app.
#[derive(Debug, Default)]
pub struct Prepared {
    /// `<cgroup>/cgroup.procs`, to write the child's own pid into.
    cgroup_procs: Option<CString>,
    rlimit_as: Option<u64>,
}

impl Prepared {
    /// Sets up the limits of app `id` (creating its cgroup if that is the mechanism). Errors are
    /// logged and leave that limit off: an app must not fail to start because a limit could
    /// not be set, but the operator must learn of it.
    pub fn new(id: &str, limits: &Limits) -> Prepared {
        if limits.memory_max.is_none() && limits.cpu_max.is_none() {
            return Prepared::default();
        }
        match mechanism() {
            Mechanism::CgroupV2(parent) => {
                let dir = parent.join(id);
                let set = std::fs::create_dir_all(&dir)
                    .and_then(|_| match limits.memory_max {
                        Some(m) => std::fs::write(dir.join("memory.max"), m.to_string()),
                        None => std::fs::write(dir.join("memory.max"), "max"),
                    })
                    .and_then(|_| match limits.cpu_max {
                        Some(c) => {
                            let quota = ((c * CPU_PERIOD_US as f64) as u64).max(1000);
                            std::fs::write(dir.join("cpu.max"), format!("{quota} {CPU_PERIOD_US}"))
                        }
                        None => std::fs::write(dir.join("cpu.max"), format!("max {CPU_PERIOD_US}")),
                    });
                if let Err(e) = set {
                    tracing::warn!(app = id, error = %e, "cannot set the app's cgroup limits");
                    return Prepared::default();
                }
                let procs = dir.join("cgroup.procs");
                Prepared {
                    cgroup_procs: CString::new(procs.as_os_str().as_encoded_bytes()).ok(),
                    rlimit_as: None,
                }
            }
            Mechanism::Rlimit => {
                if limits.cpu_max.is_some() {
                    tracing::warn!(
                        app = id,
                        "cpu-max is not enforced: this machine has no writable cgroup v2"
                    );
                }
                Prepared {
                    cgroup_procs: None,
                    rlimit_as: limits.memory_max,
                }
            }
        }
    }

    /// Runs in the forked child before `exec`: async-signal-safe system calls only.
    pub fn apply_in_child(&self) -> std::io::Result<()> {
        if let Some(procs) = &self.cgroup_procs {
            // SAFETY: `procs` is a valid NUL-terminated path; open/write/close are
            // async-signal-safe. "0" moves the calling process.
            let fd = unsafe { libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
            unsafe { libc::close(fd) };
            if n != 1 {
                return Err(std::io::Error::last_os_error());
            }
        }
        if let Some(bytes) = self.rlimit_as {
            let limit = libc::rlimit {
                rlim_cur: bytes as libc::rlim_t,
                rlim_max: bytes as libc::rlim_t,
            };
            // SAFETY: setrlimit is async-signal-safe; `limit` lives across the call.
            if unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// Kills whatever is left in app `id`'s cgroup (a process that left the process group) and
/// removes the cgroup. No-op under rlimits.
pub fn cleanup(id: &str) {
    if let Mechanism::CgroupV2(parent) = mechanism() {
        let dir = parent.join(id);
        if dir.is_dir() {
            let _ = std::fs::write(dir.join("cgroup.kill"), "1");
            let _ = std::fs::remove_dir(&dir);
        }
    }
}
