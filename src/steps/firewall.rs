//! The firewall step (not implemented yet).

use super::{Ctx, Done, Plan, Step};
use crate::config;
use anyhow::{bail, Result};

/// The firewall step.
pub struct Firewall<'a> {
    /// Its config.
    pub cfg: &'a config::Firewall,
}

impl Step for Firewall<'_> {
    const NAME: &'static str = "firewall";
    type Change = String;

    fn plan(&self, _ctx: &Ctx) -> Result<Plan<String>> {
        let _ = self.cfg;
        bail!("not implemented")
    }

    fn apply(&self, _ctx: &Ctx, _changes: Vec<String>, _done: &mut Done) -> Result<()> {
        bail!("not implemented")
    }
}
