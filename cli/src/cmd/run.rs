//! `shoal run` (being built).

/// Arguments of `shoal run`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`shoal run` is not built yet")
}
