//! `shoal store` (being built).

/// Arguments of `shoal store`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`shoal store` is not built yet")
}
