//! `shoal logs` (being built).

/// Arguments of `shoal logs`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`shoal logs` is not built yet")
}
