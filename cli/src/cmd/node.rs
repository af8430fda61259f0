//! `shoal node info`: what a running node says about itself (`GET /api/v1/node/info`).

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
        }
    })
}
