//! The engine: runs the steps in the spec's order, honours `--only` and the dependencies
//! between steps, and turns their outcomes into the report.

use crate::config::HostConfig;
use crate::report::{Outcome, StepReport};
use crate::steps::{self, Ctx, Describe, Done, Step, Tense};
use std::sync::{Condvar, Mutex, MutexGuard};
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
///
/// Each step runs on its own thread, named after the step (log lines carry the name), and
/// starts once the steps it must come after ([`after`]) have finished; under `apply`,
/// independent steps (`opt` and `packages`, say) run at the same time. The reports are in the
/// spec's order whatever the order they finished in.
pub fn run(cfg: &HostConfig, ctx: &Ctx, mode: Mode, only: &[StepName]) -> Vec<StepReport> {
    let names: Vec<StepName> = StepName::ALL
        .into_iter()
        .filter(|n| only.is_empty() || only.contains(n))
        .collect();
    let board = Board::new(names.len());
    std::thread::scope(|s| {
        for (i, &name) in names.iter().enumerate() {
            let (board, names) = (&board, &names);
            let work = move || {
                let mut slot = Slot {
                    board,
                    i,
                    name,
                    report: None,
                };
                let before = board.wait_for(names, &after(cfg, name, mode));
                // A signal stops what has not started yet (a step not configured stays
                // "not configured": it had nothing to do).
                let interrupted = configured(cfg, name)
                    .then(crate::sys::signal::received)
                    .flatten()
                    .map(|s| format!("interrupted by {s}"));
                slot.report = Some(
                    match interrupted.or_else(|| blocker(cfg, name, &before, mode)) {
                        Some(why) => skipped(name, why),
                        None => run_named(cfg, ctx, mode, name),
                    },
                );
            };
            let spawned = std::thread::Builder::new()
                .name(name.as_str().into())
                .spawn_scoped(s, work);
            if spawned.is_err() {
                // No thread to be had: run it here. The steps it waits for come earlier in
                // the list, so they are running already.
                work();
            }
        }
    });
    board.into_reports()
}

/// The steps `name` starts after. Under `plan`, all earlier ones: plan stays sequential.
/// Under `apply`: the firewall comes first, so that nothing installed is ever reachable from
/// outside; a step then waits for the steps it needs ([`needs`]); and `links` also waits for
/// `packages`, because apt writes into `/etc` too and the links must have the last word.
fn after(cfg: &HostConfig, name: StepName, mode: Mode) -> Vec<StepName> {
    let earlier = StepName::ALL.into_iter().take_while(|&n| n != name);
    if mode == Mode::Plan {
        return earlier.collect();
    }
    earlier
        .filter(|&n| {
            n == StepName::Firewall
                || needs(cfg, name) == Some(n)
                || (name == StepName::Links && n == StepName::Packages)
        })
        .collect()
}

/// Where the threads of [`run`] leave their reports and wait for each other's.
struct Board {
    reports: Mutex<Vec<Option<StepReport>>>,
    changed: Condvar,
}

impl Board {
    fn new(n: usize) -> Board {
        Board {
            reports: Mutex::new(vec![None; n]),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Option<StepReport>>> {
        // A step thread that panicked cannot leave a report half-written: keep going.
        self.reports.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait until every step of `wanted` that is in `names` has its report; return those.
    fn wait_for(&self, names: &[StepName], wanted: &[StepName]) -> Vec<StepReport> {
        let idx: Vec<usize> = (0..names.len())
            .filter(|&i| wanted.contains(&names[i]))
            .collect();
        let mut reports = self.lock();
        while idx.iter().any(|&i| reports[i].is_none()) {
            reports = self
                .changed
                .wait(reports)
                .unwrap_or_else(|e| e.into_inner());
        }
        idx.iter().filter_map(|&i| reports[i].clone()).collect()
    }

    fn put(&self, i: usize, report: StepReport) {
        self.lock()[i] = Some(report);
        self.changed.notify_all();
    }

    fn into_reports(self) -> Vec<StepReport> {
        let reports = self.reports.into_inner().unwrap_or_else(|e| e.into_inner());
        reports.into_iter().flatten().collect()
    }
}

/// A step's place on the [`Board`]: filled when the step's thread ends, even by a panic, so
/// that the steps waiting for it are not left waiting for ever.
struct Slot<'a> {
    board: &'a Board,
    i: usize,
    name: StepName,
    report: Option<StepReport>,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let report = self.report.take().unwrap_or_else(|| StepReport {
            result: Outcome::Failed,
            ..skipped(self.name, "the step's thread panicked".into())
        });
        self.board.put(self.i, report);
    }
}

/// A thread builder whose thread carries the calling thread's name, so that the log lines of
/// a step's helper threads (fetching, decompressing) name the step too.
pub fn same_step() -> std::thread::Builder {
    match std::thread::current().name() {
        Some(n) => std::thread::Builder::new().name(n.into()),
        None => std::thread::Builder::new(),
    }
}

/// Whether the host's config has anything for step `name` to do.
fn configured(cfg: &HostConfig, name: StepName) -> bool {
    match name {
        StepName::Firewall => cfg.firewall.is_some(),
        StepName::Volumes => !cfg.volumes.is_empty(),
        StepName::Opt => cfg.opt.is_some(),
        StepName::Packages => cfg.packages.is_some(),
        StepName::Links => !cfg.links.is_empty(),
    }
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

/// The step that `name` needs: if it failed or was skipped, `name` is skipped. `opt` needs
/// `volumes` when its path is on a volume; `links` needs `opt`; `packages` needs `firewall`,
/// so that a machine whose firewall failed gets no new services listening (the firewall runs
/// first for that reason).
fn needs(cfg: &HostConfig, name: StepName) -> Option<StepName> {
    match name {
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
    }
}

/// Why `name` cannot run given the reports of the steps it came after, if it cannot. Under
/// `plan`, a step whose prerequisite has pending changes cannot be planned truthfully yet.
fn blocker(cfg: &HostConfig, name: StepName, before: &[StepReport], mode: Mode) -> Option<String> {
    let needs = needs(cfg, name)?;
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
        started: None,
        finished: None,
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
        started: Some(crate::report::now_ms()),
        finished: None,
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
                let r = S::apply(ctx, &plan.changes, &mut done);
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
    report.finished = Some(crate::report::now_ms());
    report
}
