//! The `curl` command line for the benches: the reference HTTP client their ratios are taken
//! against, and the client they measure shoal's own downloads with.

use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// Runs `curl ARGS`; its stdout, or an error with its stderr.
pub fn curl(args: &[&str]) -> Result<String> {
    let out = Command::new("curl")
        .args(args)
        .output()
        .context("cannot run curl")?;
    if !out.status.success() {
        bail!(
            "curl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// MB/s (10^6 bytes) of a curl download of `url` into /dev/null; an error unless exactly
/// `bytes` arrived.
pub fn download(url: &str, bytes: f64) -> Result<f64> {
    let t = Instant::now();
    let size = curl(&[
        "-sS",
        "--fail",
        "-o",
        "/dev/null",
        "-w",
        "%{size_download}",
        url,
    ])?;
    let secs = t.elapsed().as_secs_f64();
    let got: f64 = size.trim().parse().context("curl size")?;
    if got != bytes {
        bail!("{url}: downloaded {got} bytes, expected {bytes}");
    }
    Ok(bytes / secs / 1e6)
}
