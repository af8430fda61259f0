//! `shoal node info`: what a running node says about itself (`GET /api/v1/node/info`).

use anyhow::{Context, Result};

use crate::client::{Client, DEFAULT_NODE};
use crate::output::{Format, Out};

/// Arguments of `shoal node`.
#[derive(clap::Args)]
pub struct Args {
    /// URL of the node's API.
    #[arg(long, global = true, default_value = DEFAULT_NODE, env = "SHOAL_NODE")]
    node: String,
    /// Machine-readable output (the node's JSON answer).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Source id, version, uptime, addresses, peers and store size.
    Info,
}

pub fn run(args: Args) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let client = Client::new(&args.node)?;
        match args.command {
            Command::Info => {
                let info = client.get_json("/api/v1/node/info").await?;
                let mut out = Out::new(Format::from_json_flag(args.json), false);
                out.node_info(&info)?;
                out.flush()
            }
        }
    })
}
