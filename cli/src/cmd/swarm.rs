//! `shoal swarm keygen [-o FILE]`: makes a pre-shared swarm key in the standard
//! `/key/swarm/psk/1.0.0/` format. Nodes started with `--swarm-key FILE` only connect to nodes
//! holding the same key.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

/// Arguments of `shoal swarm`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: SwarmCommand,
}

#[derive(clap::Subcommand)]
enum SwarmCommand {
    /// Generate a new swarm key (to stdout, or to a new file with -o).
    Keygen {
        /// Write the key to this file (created; never overwritten) instead of stdout.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        SwarmCommand::Keygen { output } => keygen(output),
    }
}

fn keygen(output: Option<PathBuf>) -> anyhow::Result<()> {
    let key = shoal_engine::swarm::generate_swarm_key();
    match output {
        None => {
            std::io::stdout().write_all(key.as_bytes())?;
            Ok(())
        }
        Some(path) => {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut file = opts.open(&path).with_context(|| {
                format!(
                    "cannot create {} (an existing key is never overwritten; pick another path)",
                    path.display()
                )
            })?;
            file.write_all(key.as_bytes())
                .and_then(|_| file.sync_all())
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(())
        }
    }
}
