//! The engine: runs the steps in the spec's order, honours `--only` and the dependencies
//! between steps, and turns their outcomes into the report.

use crate::config::HostConfig;
use crate::report::{Outcome, StepReport};
use crate::steps::{self, Ctx, Describe, Done, Step, Tense};
use std::time::Instant;

/// The `error` of a step the config does not mention.
pub const NOT_CONFIGURED: &str = "not configured";

/// Whether to change the machine or only say what would change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Compute the changes; make none.
    Plan,
    /// Make the changes.
    Apply,
}

/// The steps, in the order they always run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepName {
    /// nftables rules.
    Firewall,
    /// Data volumes.
    Volumes,
    /// The /opt tree.
    Opt,
    /// Debian packages.
    Packages,
    /// olsystem links into /etc.
    Links,
}

impl StepName {
    /// All steps in order.
    pub const ALL: [StepName; 5] = [
        StepName::Firewall,
        StepName::Volumes,
        StepName::Opt,
        StepName::Packages,
        StepName::Links,
    ];

    /// The name used by `--only` and the report.
    pub fn as_str(self) -> &'static str {
        match self {
            StepName::Firewall => steps::firewall::Firewall::NAME,
            StepName::Volumes => steps::volumes::Volumes::NAME,
            StepName::Opt => steps::opt::Opt::NAME,
            StepName::Packages => steps::packages::Packages::NAME,
            StepName::Links => steps::links::Links::NAME,
        }
    }
}

impl std::str::FromStr for StepName {
    type Err = String;
    fn from_str(s: &str) -> Result<StepName, String> {
        StepName::ALL
            .into_iter()
            .find(|n| n.as_str() == s)
            .ok_or_else(|| {
                format!("unknown step {s:?} (steps: firewall, volumes, opt, packages, links)")
            })
    }
}

/// Run the steps of `cfg` (all, or those in `only`) and return their reports in order.
pub fn run(cfg: &HostConfig, ctx: &Ctx, mode: Mode, only: &[StepName]) -> Vec<StepReport> {
    let mut reports: Vec<StepReport> = Vec::new();
    for name in StepName::ALL {
        if !only.is_empty() && !only.contains(&name) {
            continue;
        }
        let interrupted = crate::sys::signal::received().map(|s| format!("interrupted by {s}"));
        let report = match interrupted.or_else(|| blocker(cfg, name, &reports, mode)) {
            Some(why) => skipped(name, why),
            None => run_named(cfg, ctx, mode, name),
        };
        reports.push(report);
    }
    reports
}

fn run_named(cfg: &HostConfig, ctx: &Ctx, mode: Mode, name: StepName) -> StepReport {
    match name {
        StepName::Firewall => match &cfg.firewall {
            Some(c) => run_step(&steps::firewall::Firewall { cfg: c }, ctx, mode),
            None => skipped(name, NOT_CONFIGURED.into()),
        },
        StepName::Volumes if cfg.volumes.is_empty() => skipped(name, NOT_CONFIGURED.into()),
        StepName::Volumes => run_step(&steps::volumes::Volumes { cfg: &cfg.volumes }, ctx, mode),
        StepName::Opt => match &cfg.opt {
            Some(c) => run_step(&steps::opt::Opt { cfg: c }, ctx, mode),
            None => skipped(name, NOT_CONFIGURED.into()),
        },
        StepName::Packages => match &cfg.packages {
            Some(c) => run_step(&steps::packages::Packages { cfg: c }, ctx, mode),
            None => skipped(name, NOT_CONFIGURED.into()),
        },
        StepName::Links if cfg.links.is_empty() => skipped(name, NOT_CONFIGURED.into()),
        StepName::Links => run_step(&steps::links::Links { cfg: &cfg.links }, ctx, mode),
    }
}

/// Why `name` cannot run given the reports of the steps before it, if it cannot.
/// `opt` needs `volumes` when its path is on a volume; `links` needs `opt`; `packages` needs
/// `firewall`, so that a machine whose firewall failed gets no new services listening (the
/// firewall runs first for that reason). Under `plan`, a step whose prerequisite has pending
/// changes cannot be planned truthfully yet.
fn blocker(cfg: &HostConfig, name: StepName, before: &[StepReport], mode: Mode) -> Option<String> {
    let needs = match name {
        StepName::Opt => {
            let on_volume = cfg.opt.as_ref().is_some_and(|o| {
                cfg.volumes
                    .iter()
                    .any(|v| o.path.starts_with(&*v.mountpoint))
            });
            on_volume.then_some(StepName::Volumes)
        }
        StepName::Links => cfg.opt.as_ref().map(|_| StepName::Opt),
        StepName::Packages => cfg.firewall.as_ref().map(|_| StepName::Firewall),
        _ => None,
    }?;
    // opt looks at what volumes mounted, links at what opt unpacked; packages only waits.
    let observes = needs != StepName::Firewall;
    let dep = before.iter().find(|r| r.name == needs.as_str())?;
    match dep.result {
        Outcome::Failed => Some(format!("needs {}, which failed", dep.name)),
        Outcome::Skipped if dep.error.as_deref() != Some(NOT_CONFIGURED) => {
            Some(format!("needs {}, which was skipped", dep.name))
        }
        Outcome::Pending if mode == Mode::Plan && observes => Some(format!(
            "needs {}, which has pending changes: planned once they are made",
            dep.name
        )),
        _ => None,
    }
}

fn skipped(name: StepName, why: String) -> StepReport {
    if why != NOT_CONFIGURED {
        log::warn!("{}: skipped: {why}", name.as_str());
    }
    StepReport {
        name: name.as_str().into(),
        result: Outcome::Skipped,
        duration_ms: 0,
        changes: Vec::new(),
        warnings: Vec::new(),
        error: Some(why),
    }
}

/// Observe, plan and (under `apply`) make the changes of one step.
pub fn run_step<S: Step>(step: &S, ctx: &Ctx, mode: Mode) -> StepReport {
    let started = Instant::now();
    let mut report = StepReport {
        name: S::NAME.into(),
        result: Outcome::Unchanged,
        duration_ms: 0,
        changes: Vec::new(),
        warnings: Vec::new(),
        error: None,
    };
    match step.plan(ctx) {
        Err(e) => {
            report.result = Outcome::Failed;
            report.error = Some(format!("{e:#}"));
        }
        Ok(plan) => {
            for w in &plan.warnings {
                log::warn!("{}: {w}", S::NAME);
            }
            report.warnings = plan.warnings;
            let failures = plan.failures;
            if plan.changes.is_empty() {
                if failures.is_empty() {
                    log::info!("{}: unchanged", S::NAME);
                }
            } else if mode == Mode::Plan {
                report.result = Outcome::Pending;
                report.changes = plan
                    .changes
                    .iter()
                    .map(|c| c.describe(Tense::Plan))
                    .collect();
                for c in &report.changes {
                    log::info!("{}: would {c}", S::NAME);
                }
            } else {
                let mut done = Done::new(S::NAME);
                let r = step.apply(ctx, &plan.changes, &mut done);
                report.changes = done.lines;
                report.warnings.extend(done.warnings);
                report.result = Outcome::Changed;
                if let Err(e) = r {
                    report.result = Outcome::Failed;
                    // A signal is the cause, whatever the step was doing when it came.
                    report.error = Some(match crate::sys::signal::received() {
                        Some(s) => crate::sys::signal::Interrupted(s).to_string(),
                        None => format!("{e:#}"),
                    });
                }
            }
            if !failures.is_empty() {
                report.result = Outcome::Failed;
                let mut all: Vec<String> = report.error.take().into_iter().collect();
                all.extend(failures);
                report.error = Some(all.join("; "));
            }
        }
    }
    if let Some(e) = &report.error {
        log::error!("{}: {e}", S::NAME);
    }
    report.duration_ms = started.elapsed().as_millis() as u64;
    report
}
