//! `shoal node info`: what a running node says about itself (`GET /api/v1/node/info`);
//! `shoal node health`: whether it can do its job (`GET /api/v1/node/health`), as an exit
//! status for supervisors and container health checks.

use std::io::Write;

use anyhow::Result;

use crate::client::{block_on, Client, NodeArgs};
use crate::output::{Format, Out};

/// Arguments of `shoal node`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    remote: NodeArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Source id, version, uptime, addresses, peers and store size.
    Info,
    /// Prints `ok` and exits 0 when the node's store answers and its swarm runs; otherwise
    /// prints the reason and exits 1 (also when no node answers).
    Health,
}

pub fn run(args: Args) -> Result<()> {
    block_on(async {
        let client = Client::new(&args.remote.node)?;
        match args.command {
            Command::Info => {
                let info = client.get_json("/api/v1/node/info").await?;
                let mut out = Out::new(Format::from_json_flag(args.remote.json), false);
                out.node_info(&info)?;
                out.flush()
            }
            Command::Health => {
                // An unhealthy node answers 503 with the reason: the client's error says it.
                let health = client.get_json("/api/v1/node/health").await?;
                let line = if args.remote.json {
                    health.to_string()
                } else {
                    health["status"].as_str().unwrap_or("ok").to_string()
                };
                let mut out = std::io::stdout().lock();
                writeln!(out, "{line}")?;
                out.flush()?;
                Ok(())
            }
        }
    })
}
