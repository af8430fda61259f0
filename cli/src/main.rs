//! `shoal`: runs a node (`shoal run`), talks to a running node over its HTTP API
//! (`events`, `node`, `logs`), manages swarm keys and inspects a data dir (`store`).
//!
//! `main` parses arguments, runs the chosen command and prints the error chain once; a broken
//! pipe (e.g. `shoal events query | head`) counts as success.

mod client;
mod cmd;
mod output;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "A local-first event-stream node for the shop floor"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
    /// Inspect a data dir's store (read-only; works while a node uses it).
    Store(cmd::store::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => cmd::run::run(args),
        Command::Swarm(args) => cmd::swarm::run(args),
        Command::Events(args) => cmd::events::run(args),
        Command::Node(args) => cmd::node::run(args),
        Command::Logs(args) => cmd::logs::run(args),
        Command::Store(args) => cmd::store::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) if is_broken_pipe(&err) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("shoal: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Output piped into `head` and closed early is not a failure.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
