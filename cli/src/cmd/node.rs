//! `shoal node` (being built).

/// Arguments of `shoal node`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`shoal node` is not built yet")
}
