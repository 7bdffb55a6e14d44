//! The steps. Each one has the same shape: observe the machine, compute the list of changes
//! that would bring it to the config ([`Step::plan`]), and make those changes
//! ([`Step::apply`]). `plan` and `apply` share that list, so what `olboot plan` prints is
//! what `olboot apply` does.

use crate::root::Root;
use crate::tuning::Tuning;
use anyhow::Result;
use std::fmt;

pub mod firewall;
pub mod links;
pub mod opt;
pub mod packages;
pub mod volumes;

/// Everything a step may look at besides its own config.
pub struct Ctx<'a> {
    /// The system being converged.
    pub root: &'a Root,
    /// Timeouts and retries.
    pub tuning: &'a Tuning,
}

/// What a step found: the changes to make, things that are not wrong enough to change but that
/// an operator should know (a config file its consumer will ignore, say), and parts that cannot
/// be converged (one volume of two holds a foreign filesystem). The engine makes the changes
/// of the other parts and then fails the step with `failures`.
pub struct Plan<C> {
    /// The changes, in the order `apply` makes them.
    pub changes: Vec<C>,
    /// Warnings for the log and the report.
    pub warnings: Vec<String>,
    /// Parts of the step that fail, each a one-line reason naming the part.
    pub failures: Vec<String>,
}

impl<C> Default for Plan<C> {
    fn default() -> Self {
        Plan {
            changes: Vec::new(),
            warnings: Vec::new(),
            failures: Vec::new(),
        }
    }
}

/// The changes a step has made so far; each one is logged as it is recorded.
pub struct Done {
    step: &'static str,
    /// Report lines, one per change made.
    pub lines: Vec<String>,
}

impl Done {
    /// An empty record for `step`.
    pub fn new(step: &'static str) -> Done {
        Done {
            step,
            lines: Vec::new(),
        }
    }

    /// Record (and log) one change that was made.
    pub fn record(&mut self, line: impl fmt::Display) {
        let line = line.to_string();
        log::info!("{}: {line}", self.step);
        self.lines.push(line);
    }
}

/// One step of the provisioning, in the shape every step shares.
pub trait Step {
    /// The step's name, as `--only` and the report spell it.
    const NAME: &'static str;
    /// One change; its `Display` is the line `plan` prints.
    type Change: fmt::Display;

    /// Observe the machine and compute the changes. Must not change anything.
    fn plan(&self, ctx: &Ctx) -> Result<Plan<Self::Change>>;

    /// Make `changes` (computed by `plan` just before), recording each in `done`.
    /// On error, `done` holds what was made before the failure.
    fn apply(&self, ctx: &Ctx, changes: Vec<Self::Change>, done: &mut Done) -> Result<()>;
}
