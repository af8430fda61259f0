//! A reproducible "busy device" for the benchmarks: busy processes beside the node.
//!
//! `Hog::start(n)` spawns `n` processes that spin in a shell loop at normal priority (pure user
//! CPU, no I/O) until the `Hog` is dropped, so a benchmark can report the same figures on a
//! device whose cores are also taken by other work (the apps of the app runtime, say).

use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};

/// Busy processes; killed when dropped.
pub struct Hog {
    children: Vec<Child>,
}

impl Hog {
    /// Starts `n` busy processes (none for 0).
    pub fn start(n: usize) -> Result<Hog> {
        let mut hog = Hog {
            children: Vec::new(),
        };
        for _ in 0..n {
            let child = Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("start a CPU hog (sh)")?;
            hog.children.push(child);
        }
        Ok(hog)
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Parses the value of `--hog`: a number, or absent/`cores` for one per core.
pub fn hog_count(value: Option<&str>) -> Result<usize> {
    match value {
        None | Some("cores") => Ok(cores()),
        Some(v) => v
            .parse()
            .with_context(|| format!("--hog takes a number of busy processes, got {v}")),
    }
}

/// The machine's cores (1 if unknown).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The 1-minute load average (`/proc/loadavg`), for the figures' context.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
