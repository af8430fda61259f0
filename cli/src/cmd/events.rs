//! `shoal events` (being built).

/// Arguments of `shoal events`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`shoal events` is not built yet")
}
