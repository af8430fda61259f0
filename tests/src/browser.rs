//! A real browser for tests: Debian's `chromium`, headless ([`chromium`] finds or installs it,
//! [`Browser`] runs it on one URL in its own process group and kills that group on drop).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

/// Debian's chromium, installed with apt when missing (as `.ci/run` does); `None` only when it
/// truly cannot be installed here.
pub fn chromium() -> Option<PathBuf> {
    let find = || {
        ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    };
    if let Some(p) = std::env::var_os("SHOAL_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = find() {
        return Some(p);
    }
    eprintln!("browser test: chromium is missing; trying `apt-get install -y chromium`");
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    let _ = apt(&["update"]) && apt(&["install", "-y", "chromium"]);
    find()
}

/// Headless chromium on `url`, in its own process group so that dropping it kills the browser
/// and every helper process it started.
pub struct Browser(std::process::Child);

impl Browser {
    pub fn open(chromium: &Path, profile: &Path, url: &str) -> Result<Browser> {
        use std::os::unix::process::CommandExt;
        let child = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("cannot run chromium")?;
        Ok(Browser(child))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Ok(pgid) = libc::pid_t::try_from(self.0.id()) {
            // SAFETY: kill(2) on the process group of our own, not yet reaped, child.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        let _ = self.0.wait();
    }
}
