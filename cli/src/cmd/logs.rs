//! `shoal logs tail [--since T] [--follow]`: a node's console log, read from its console API
//! (`GET /api/v1/logs`, default address http://127.0.0.1:4457 — not the events API's).

use anyhow::{bail, Result};

use crate::client::{block_on, Client, DEFAULT_CONSOLE};
use crate::output::{Format, Out};

/// Arguments of `shoal logs`.
#[derive(clap::Args)]
pub struct Args {
    /// URL of the node's console API.
    #[arg(long, global = true, default_value = DEFAULT_CONSOLE, env = "SHOAL_CONSOLE")]
    node: String,
    /// Machine-readable output: the entries as NDJSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Print stored entries, oldest first; with --follow keep printing new ones.
    Tail(TailArgs),
}

#[derive(clap::Args)]
struct TailArgs {
    /// Only entries with logTimestamp at or after this RFC 3339 time, e.g. 2026-11-23T15:00:00Z.
    #[arg(long)]
    since: Option<String>,
    /// Keep running and print new entries as they are logged.
    #[arg(long, short)]
    follow: bool,
}

pub fn run(args: Args) -> Result<()> {
    block_on(async {
        let client = Client::new(&args.node)?;
        let Command::Tail(tail) = args.command;
        let mut query = Vec::new();
        if let Some(since) = &tail.since {
            query.push(format!("since={}", encode(since)));
        }
        if tail.follow {
            query.push("follow=true".to_string());
        }
        let path = if query.is_empty() {
            "/api/v1/logs".to_string()
        } else {
            format!("/api/v1/logs?{}", query.join("&"))
        };
        let mut lines = client.get_lines(&path).await?;
        let mut out = Out::new(Format::from_json_flag(args.json), tail.follow);
        while let Some(line) = lines.next_line().await? {
            out.log_entry(&line)?;
        }
        out.flush()?;
        if tail.follow {
            bail!("the node closed the log stream (it may have shut down)");
        }
        Ok(())
    })
}

/// Percent-encodes a query value (RFC 3339 times contain `+` and `:`).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
