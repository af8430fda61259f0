//! Running the `shoal` client commands from tests: [`cli`] for one-shot commands (bounded by
//! [`TIMEOUT`]), [`CliStream`] for long-running ones (`events subscribe`, `logs tail --follow`),
//! killed on drop.

use std::io::{BufRead, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use anyhow::{anyhow, bail, Context, Result};

use crate::{shoal_bin, TIMEOUT};

/// Output of a CLI run.
#[derive(Debug)]
pub struct CliOutput {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `shoal <args>` with `stdin` as input; killed after [`TIMEOUT`].
pub fn cli(args: &[&str], stdin: Option<&[u8]>) -> Result<CliOutput> {
    let mut child = Command::new(shoal_bin())
        .args(args)
        .env_remove("SHOAL_NODE")
        .env_remove("SHOAL_CONSOLE")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn shoal")?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let mut out = child.stdout.take().context("stdout")?;
    let mut err = child.stderr.take().context("stderr")?;
    let out_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let Some(status) = crate::wait_within(&mut child, TIMEOUT)? else {
        bail!(
            "`shoal {}` did not finish within {TIMEOUT:?}",
            args.join(" ")
        );
    };
    Ok(CliOutput {
        status,
        stdout: out_thread.join().unwrap_or_default(),
        stderr: err_thread.join().unwrap_or_default(),
    })
}

/// A long-running CLI command (e.g. `events subscribe`), read line by line; killed on drop.
pub struct CliStream {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl CliStream {
    pub fn spawn(args: &[&str]) -> Result<CliStream> {
        let mut child = Command::new(shoal_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn shoal")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(CliStream { child, lines: rx })
    }

    /// The next stdout line within [`TIMEOUT`].
    pub fn next_line(&self) -> Result<String> {
        self.lines
            .recv_timeout(TIMEOUT)
            .map_err(|e| anyhow!("no line from the CLI within {TIMEOUT:?}: {e}"))
    }
}

impl Drop for CliStream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
