//! The command line: subcommands and their arguments (each subcommand's flags live with it in
//! `cmd/<name>.rs`; this file only lists them).

use clap::{Parser, Subcommand};

use crate::cmd;

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "A local-first event-stream node for the shop floor"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a node in the foreground.
    Run(cmd::run::Args),
    /// Swarm keys.
    Swarm(cmd::swarm::Args),
    /// Publish, query and subscribe to events on a running node.
    Events(cmd::events::Args),
    /// Information about a running node.
    Node(cmd::node::Args),
    /// Read a node's console log.
    Logs(cmd::logs::Args),
    /// Put, get, list and delete blobs on a running node.
    Blobs(cmd::blobs::Args),
    /// Inspect a data dir's store (read-only; works while a node uses it).
    Store(cmd::store::Args),
}
