//! `shoal logs tail [--since T] [--follow]`: a node's console log, read from its console API
//! (`GET /api/v1/logs`), which the node serves on its own address (`--console-addr`).
//!
//! `--node` is the node's API URL, as for every other command: the console's address is taken
//! from the node's info (`consoleAddr`). `--console URL` (or `SHOAL_CONSOLE`) names the console
//! directly and skips that question. A console URL given as `--node` (what this command took
//! before) still works, with a hint: the console answers 404 where the API has node info.

use anyhow::{bail, Context, Result};

use crate::client::{block_on, Client, NodeArgs, DEFAULT_NODE};
use crate::output::{Format, Out};

/// Arguments of `shoal logs`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    remote: NodeArgs,
    /// URL of the node's console API, e.g. http://127.0.0.1:4457 [default: asked from --node]
    #[arg(long, global = true, env = "SHOAL_CONSOLE", value_name = "URL")]
    console: Option<String>,
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
        let client = Client::new(&console_url(&args).await?)?;
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
        let mut out = Out::new(Format::from_json_flag(args.remote.json), tail.follow);
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

/// The console's URL: `--console`, else where the node at `--node` says its console is.
async fn console_url(args: &Args) -> Result<String> {
    if let Some(console) = &args.console {
        return Ok(console.clone());
    }
    let node = Client::new(&args.remote.node)?;
    let Some(info) = node.get_json_if_found("/api/v1/node/info").await? else {
        // No node info here: most likely the console itself, as this command used to take.
        eprintln!(
            "shoal: hint: {} looks like the console's address; --node takes the node's API URL \
             (default {DEFAULT_NODE}), --console the console's",
            node.base()
        );
        return Ok(node.base().to_string());
    };
    let addr = info["consoleAddr"].as_str().with_context(|| {
        format!(
            "node at {} does not say where its console is (an older shoal?): give --console URL",
            node.base()
        )
    })?;
    console_from(node.base(), addr)
}

/// The console URL from the API URL the user gave and the console's bound address: a
/// wildcard IP (0.0.0.0) is reached through the host the API was reached by.
fn console_from(api_url: &str, console: &str) -> Result<String> {
    let addr: std::net::SocketAddr = console
        .parse()
        .with_context(|| format!("the node gave `{console}` as its console address"))?;
    let url =
        reqwest::Url::parse(api_url).with_context(|| format!("invalid --node `{api_url}`"))?;
    if addr.ip().is_unspecified() {
        let host = url.host_str().unwrap_or("127.0.0.1");
        Ok(format!("{}://{host}:{}", url.scheme(), addr.port()))
    } else {
        Ok(format!("{}://{addr}", url.scheme()))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_url_from_api_url_and_console_addr() {
        let f = |api, console| console_from(api, console).unwrap();
        assert_eq!(
            f("http://127.0.0.1:4454", "127.0.0.1:4457"),
            "http://127.0.0.1:4457"
        );
        assert_eq!(
            f("http://device.local:4454", "0.0.0.0:5457"),
            "http://device.local:5457"
        );
        assert_eq!(f("http://[::1]:4454", "[::]:4457"), "http://[::1]:4457");
        assert_eq!(
            f("http://localhost:4454", "[::1]:4457"),
            "http://[::1]:4457"
        );
        assert!(console_from("http://127.0.0.1:4454", "nonsense").is_err());
    }
}
