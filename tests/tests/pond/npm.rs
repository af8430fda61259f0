//! The real `@actyx/pond` packages, from the lockfiles committed under `tests/pond/<dir>/`
//! (installing and driving them: `shoal_tests::npm`).

pub use shoal_tests::npm::*;

use std::path::{Path, PathBuf};

/// A scratch copy of `tests/pond/<dir>` with its packages installed by `npm ci`. `Ok(None)`:
/// skipped (printed) because npm cannot reach its registry.
pub fn install(dir: &'static str) -> anyhow::Result<Option<PathBuf>> {
    install_from(
        dir,
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("pond").join(dir),
    )
}
