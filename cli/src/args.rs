//! The command line: subcommands and their arguments (each subcommand's flags live with it in
//! `cmd/<name>.rs`; this file only lists them), and [`command`], the one clap definition the
//! parser and `shoal completions` share.

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

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
    #[command(after_help = RUN_AFTER_HELP)]
    Run(cmd::run::Args),
    /// Swarm keys.
    Swarm(cmd::swarm::Args),
    /// Publish, query and subscribe to events on a running node.
    Events(cmd::events::Args),
    /// Information about a running node.
    Node(cmd::node::Args),
    /// Every node of the swarm, also those not directly connected.
    Nodes(cmd::nodes::Args),
    /// Read a node's console log.
    Logs(cmd::logs::Args),
    /// Put, get, list and delete blobs on a running node.
    Blobs(cmd::blobs::Args),
    /// Package, deploy, start, stop and watch apps on a running node.
    Apps(cmd::apps::Args),
    /// Settings of the node's apps and of the node itself (`node`).
    Settings(cmd::settings::Args),
    /// Inspect a data dir's store (read-only; works while a node uses it).
    Store(cmd::store::Args),
    /// Print a shell completion script: `shoal completions bash > /etc/bash_completion.d/shoal`.
    Completions(cmd::completions::Args),
}

/// The command line as clap sees it: the derived definition, with each `shoal run` flag's help
/// naming its environment variable (`shoal_engine::config` reads those itself, so clap must
/// only show them: an `env` attribute would make clap read them too, with its own parsing).
pub fn command() -> clap::Command {
    Cli::command().mut_subcommand("run", |run| {
        run.mut_args(|arg| {
            let Some(long) = arg.get_long().filter(|l| !NO_ENV.contains(l)) else {
                return arg;
            };
            let env = format!(
                "[env: SHOAL_{}]",
                long.to_ascii_uppercase().replace('-', "_")
            );
            let help = arg.get_help().map(|h| format!("{h} {env}"));
            let long_help = arg.get_long_help().map(|h| format!("{h}\n{env}"));
            let arg = match help {
                Some(h) => arg.help(h),
                None => arg.help(env),
            };
            match long_help {
                Some(h) => arg.long_help(h),
                None => arg,
            }
        })
    })
}

/// The end of `shoal run --help`.
const RUN_AFTER_HELP: &str = "\
Each flag can also be given as its environment variable or as a key of <data-dir>/shoal.toml
named like the flag (api-addr = \"127.0.0.1:4454\"; docs/shoal.example.toml lists them all);
a flag wins over the environment, which wins over the file.
Logs go to stderr; RUST_LOG works as usual, --log-level and -v win over it.";

/// `shoal run` flags without an environment variable.
const NO_ENV: &[&str] = &["help", "verbose"];

/// Parses the process arguments; on a usage error prints clap's message and exits 2.
pub fn parse() -> Cli {
    Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `shoal run` flag shows its `SHOAL_*` name, and that name is one the settings read:
    /// a flag added later is covered without anyone remembering to write it.
    #[test]
    fn run_help_names_every_env_variable() {
        let mut cmd = command();
        let run = cmd.find_subcommand_mut("run").expect("run");
        let help = run.render_long_help().to_string();
        for arg in run.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if NO_ENV.contains(&long) {
                continue;
            }
            let env = format!("SHOAL_{}", long.to_ascii_uppercase().replace('-', "_"));
            assert!(
                help.contains(&env),
                "`shoal run --help` does not name {env}"
            );
            let read = std::cell::Cell::new(false);
            let _ = shoal_engine::Settings::from_env(|k| {
                if k == env {
                    read.set(true);
                }
                None
            });
            assert!(read.get(), "{env} is shown but the settings never read it");
        }
    }
}
