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
        Command::Nodes(args) => cmd::nodes::run(args),
        Command::Logs(args) => cmd::logs::run(args),
        Command::Store(args) => cmd::store::run(args),
        Command::Blobs(args) => cmd::blobs::run(args),
        Command::Apps(args) => cmd::apps::run(args),
        Command::Settings(args) => cmd::settings::run(args),
        Command::Completions(args) => cmd::completions::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) if is_broken_pipe(&err) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("shoal: {}", chain_message(&err));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, `: `-separated, each said once: many library errors
/// put their cause into their own message *and* report it as their source (so an API answer,
/// which shows one message, is complete), which `{:#}` would print twice.
fn chain_message(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Output piped into `head` and closed early is not a failure.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Like the library errors: the cause in the message and as the source.
    #[derive(Debug)]
    struct Read {
        path: &'static str,
        source: std::io::Error,
    }

    impl std::fmt::Display for Read {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot read {}: {}", self.path, self.source)
        }
    }

    impl std::error::Error for Read {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let err = anyhow::Error::new(Read {
            path: "x",
            source: io,
        })
        .context("cannot start");
        assert_eq!(
            chain_message(&err),
            "cannot start: cannot read x: No such file"
        );
    }
}
