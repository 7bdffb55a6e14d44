//! `olboot pack` (not implemented yet).

use anyhow::{bail, Result};
use std::path::Path;

/// Archive `dir` into `out` (not implemented yet).
pub fn pack(dir: &Path, out: &Path) -> Result<()> {
    bail!(
        "pack {} -o {}: not implemented",
        dir.display(),
        out.display()
    )
}
