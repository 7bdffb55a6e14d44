//! The packages step (not implemented yet).

use super::{Ctx, Done, Plan, Step};
use crate::config;
use anyhow::{bail, Result};

/// The packages step.
pub struct Packages<'a> {
    /// Its config.
    pub cfg: &'a config::Packages,
}

impl Step for Packages<'_> {
    const NAME: &'static str = "packages";
    type Change = String;

    fn plan(&self, _ctx: &Ctx) -> Result<Plan<String>> {
        let _ = self.cfg;
        bail!("not implemented")
    }

    fn apply(&self, _ctx: &Ctx, _changes: Vec<String>, _done: &mut Done) -> Result<()> {
        bail!("not implemented")
    }
}

/// Make sure `names` are installed on the target, through the same apt code as the step;
/// used by the firewall step when `nft` is missing. Records what it installed in `done`.
pub fn ensure_installed(ctx: &Ctx, names: &[&str], done: &mut Done) -> Result<()> {
    let _ = (ctx, done);
    bail!("installing {}: not implemented", names.join(", "))
}
