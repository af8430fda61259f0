//! `shoal nodes ls`: every node of the swarm as the node asked knows it from the status
//! gossip (`GET /api/v1/nodes`), also nodes it reaches only through others.

use anyhow::Result;

use crate::client::{block_on, Client, NodeArgs};
use crate::output::{Format, Out};

/// Arguments of `shoal nodes`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    remote: NodeArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Every node of the swarm: source, display name, version, whether connected directly,
    /// when last heard of, apps running/deployed, events stored. This node is listed first.
    Ls,
}

pub fn run(args: Args) -> Result<()> {
    block_on(async {
        let client = Client::new(&args.remote.node)?;
        match args.command {
            Command::Ls => {
                let nodes = client.get_json("/api/v1/nodes").await?;
                let mut out = Out::new(Format::from_json_flag(args.remote.json), false);
                out.nodes(&nodes)?;
                out.flush()
            }
        }
    })
}
