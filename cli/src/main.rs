//! `shoal`: runs a node (`shoal run`), talks to a running node over its HTTP API
//! (`events`, `node`, `logs`), manages swarm keys and inspects a data dir (`store`).
//!
//! `main` parses arguments, runs the chosen command and prints the error chain once; a broken
//! pipe (e.g. `shoal events query | head`) counts as success.

mod args;
mod client;
mod cmd;
mod output;
mod progress;

use args::Command;

fn main() -> std::process::ExitCode {
    // `RUST_BACKTRACE=1` (common on operators' machines) would also make every `anyhow` error
    // capture a backtrace, and banyan builds such errors on hot decode paths (6-12% of a
    // replicating node's writer). Panics keep their backtraces; library errors don't need one.
    // Set before any thread exists, so nothing reads the environment concurrently.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    let cli = args::parse();
    let result = match cli.command {
        Command::Run(args) => cmd::run::run(args),
        Command::Swarm(args) => cmd::swarm::run(args),
        Command::Events(args) => cmd::events::run(args),
        Command::Node(args) => cmd::node::run(args),
        Command::Logs(args) => cmd::logs::run(args),
        Command::Store(args) => cmd::store::run(args),
        Command::Blobs(args) => cmd::blobs::run(args),
        Command::Completions(args) => cmd::completions::run(args),
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
