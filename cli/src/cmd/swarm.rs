//! `shoal swarm` (being built).

/// Arguments of `shoal swarm`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`shoal swarm` is not built yet")
}
