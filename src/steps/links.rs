//! The links step (being written).

use super::{Ctx, Done, Plan, Step};
use crate::config;
use anyhow::{bail, Result};

/// The links step.
pub struct Links<'a> {
    /// Its config.
    pub cfg: &'a [config::Link],
}

impl Step for Links<'_> {
    const NAME: &'static str = "links";
    type Change = String;

    fn plan(&self, _ctx: &Ctx) -> Result<Plan<String>> {
        let _ = self.cfg;
        bail!("not implemented")
    }

    fn apply(&self, _ctx: &Ctx, _changes: Vec<String>, _done: &mut Done) -> Result<()> {
        bail!("not implemented")
    }
}
