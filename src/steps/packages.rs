//! The packages step: install with apt what `dpkg-query` says is not installed yet, the way
//! first boot needs it.
//!
//! - Nothing missing: nothing at all happens (no `apt-get update`, no network).
//! - Package lists missing, or last written more than [`LISTS_MAX_AGE`] ago: `apt-get
//!   update` first. A package apt cannot find, or a fetch that keeps failing, with lists not
//!   refreshed by this run, gets one refresh and one more try: stale lists name `.deb`s the
//!   mirror has since dropped.
//! - Then `apt-get install` of exactly the missing packages, noninteractive, keeping existing
//!   config files. cloud-init and unattended-upgrades hold the dpkg lock at first boot: apt
//!   waits for it (`DPkg::Lock::Timeout`, from [`Tuning::dpkg_lock_timeout`]) and its
//!   "Waiting for cache lock" lines are logged; lock errors apt does not wait for itself (the
//!   lists lock of `apt-get update`) are retried until the same bound.
//! - Transient failures (mirror timeouts and 5xx, DNS, "Hash Sum mismatch") are retried with
//!   backoff, [`Tuning::retries`] attempts; a package that does not exist fails at once with
//!   its name; an interrupted dpkg is repaired with `dpkg --configure -a` first.
//! - Under `--root DIR` apt runs in DIR through chroot, inside a [`Session`] (bind mounts and
//!   `policy-rc.d`, always undone).
//!
//! [`Tuning::dpkg_lock_timeout`]: crate::tuning::Tuning::dpkg_lock_timeout
//! [`Tuning::retries`]: crate::tuning::Tuning::retries

use super::{Ctx, Describe, Done, Plan, Step, Tense};
use crate::config;
use crate::sys::apt::{self, Failure, Ran};
use crate::sys::chroot::Session;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::fmt;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

/// Package lists older than this are refreshed before installing. A day keeps an image's
/// lists from its build (weeks old, naming superseded `.deb`s) from being used, and a run
/// shortly after another run or cloud-init's own `package_update` from fetching them again.
pub const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// The packages step.
pub struct Packages<'a> {
    /// Its config.
    pub cfg: &'a config::Packages,
}

/// One change of the packages step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `dpkg --configure -a` after an interrupted dpkg.
    Repair,
    /// `apt-get update`.
    Update,
    /// `apt-get install` of these packages (as written in the config).
    Install(Vec<String>),
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Repair => f.write_str("repair the interrupted dpkg (dpkg --configure -a)"),
            Change::Update => f.write_str("update package lists"),
            Change::Install(names) => write!(f, "install {}", names.join(", ")),
        }
    }
}

impl Step for Packages<'_> {
    const NAME: &'static str = "packages";
    type Change = Change;

    fn plan(&self, ctx: &Ctx) -> Result<Plan<Change>> {
        let names: Vec<&str> = self.cfg.install.iter().map(|p| p.0.as_str()).collect();
        Ok(Plan {
            changes: changes(ctx, &names)?,
            ..Plan::default()
        })
    }

    fn apply(&self, ctx: &Ctx, changes: &[Change], done: &mut Done<Change>) -> Result<()> {
        make(
            ctx,
            changes.to_vec(),
            self.cfg.recommends.unwrap_or(false),
            done,
        )
    }
}

/// The changes that get `names` installed on the target (nothing when they all are), for
/// another step that needs a package (the firewall's `nftables`); make them with
/// [`apply_changes`].
pub fn plan_install(ctx: &Ctx, names: &[&str]) -> Result<Vec<Change>> {
    changes(ctx, names)
}

/// Make `changes` (from [`plan_install`]) on the target, in order, recording each in `done`.
pub fn apply_changes(ctx: &Ctx, changes: &[Change], done: &mut Done<Change>) -> Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    make(ctx, changes.to_vec(), false, done)
}

/// What it takes to get `names` installed: nothing when they all are.
fn changes(ctx: &Ctx, names: &[&str]) -> Result<Vec<Change>> {
    let installed = apt::installed(ctx.root)?;
    let missing = missing(names, &installed);
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let mut changes = Vec::new();
    if apt::interrupted(ctx.root)? {
        changes.push(Change::Repair);
    }
    if apt::stale(
        apt::lists_written(ctx.root)?,
        SystemTime::now(),
        LISTS_MAX_AGE,
    ) {
        changes.push(Change::Update);
    }
    changes.push(Change::Install(missing));
    Ok(changes)
}

/// A package as the config writes it (`hello`, `hello=2.10-3`, `hello/bookworm-backports`):
/// its name and the version it pins, if any.
fn split_spec(spec: &str) -> (&str, Option<&str>) {
    match spec.split_once('=') {
        Some((name, version)) => (name, Some(version)),
        None => (spec.split('/').next().unwrap_or(spec), None),
    }
}

/// The specs of `names` that are not installed (at the pinned version, if one is pinned).
fn missing(names: &[&str], installed: &BTreeMap<String, String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for spec in names {
        let (name, version) = split_spec(spec);
        let ok = match (installed.get(name), version) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(have), Some(want)) => have == want,
        };
        if !ok && !out.iter().any(|s| s == spec) {
            out.push(spec.to_string());
        }
    }
    out
}

/// Make `changes` inside an apt session on the target.
fn make(ctx: &Ctx, changes: Vec<Change>, recommends: bool, done: &mut Done<Change>) -> Result<()> {
    let session = Session::enter(ctx.root)
        .with_context(|| format!("cannot prepare {} for apt", ctx.root.dir().display()))?;
    let mut run = Run {
        ctx,
        done,
        updated: false,
        repaired: false,
    };
    let made = changes.into_iter().try_for_each(|c| match c {
        Change::Repair => run.repair(),
        Change::Update => run.update(),
        Change::Install(names) => run.install(&names, recommends),
    });
    let closed = session.close();
    made?;
    closed
}

/// One apt session's state: what has been done to the package system so far.
struct Run<'a, 'd> {
    ctx: &'a Ctx<'a>,
    done: &'d mut Done<Change>,
    /// The lists were refreshed by this run: a package apt cannot find does not exist.
    updated: bool,
    /// `dpkg --configure -a` ran: a second "dpkg was interrupted" is not repaired again.
    repaired: bool,
}

impl Run<'_, '_> {
    fn repair(&mut self) -> Result<()> {
        let ran = retrying(self.ctx, "dpkg", || apt::configure_pending(self.ctx.root))?;
        if ran.failure().is_some() {
            bail!("cannot repair the interrupted dpkg: {}", ran.describe());
        }
        self.repaired = true;
        self.done
            .record_line("repaired the interrupted dpkg (dpkg --configure -a)");
        Ok(())
    }

    fn update(&mut self) -> Result<()> {
        let lock = self.ctx.tuning.dpkg_lock_timeout;
        let ran = retrying(self.ctx, "apt-get", || apt::update(self.ctx.root, lock))?;
        if ran.failure().is_some() {
            bail!("cannot update the package lists: {}", ran.describe());
        }
        self.updated = true;
        self.done.record_line("updated package lists");
        Ok(())
    }

    fn install(&mut self, names: &[String], recommends: bool) -> Result<()> {
        let root = self.ctx.root;
        let lock = self.ctx.tuning.dpkg_lock_timeout;
        let before = apt::installed(root)?;
        log::info!(
            "installing {}; apt waits up to {} for the dpkg lock if another process \
             (unattended-upgrades, cloud-init) holds it",
            names.join(", "),
            humantime::format_duration(lock)
        );
        loop {
            let ran = retrying(self.ctx, "apt-get", || {
                apt::install(root, lock, names, recommends)
            })?;
            match ran.failure() {
                None => break,
                Some(Failure::NotFound(_) | Failure::Transient(_)) if !self.updated => {
                    log::warn!(
                        "packages: {}; updating the package lists and trying again",
                        ran.describe()
                    );
                    self.update()?;
                }
                Some(Failure::Interrupted) if !self.repaired => self.repair()?,
                Some(Failure::NotFound(which)) => bail!(
                    "not available from the configured apt sources: {} ({})",
                    which.join(", "),
                    ran.describe()
                ),
                Some(_) => bail!("cannot install {}: {}", names.join(", "), ran.describe()),
            }
        }
        let after = apt::installed(root)?;
        for spec in names {
            let (name, _) = split_spec(spec);
            let Some(version) = after.get(name) else {
                bail!(
                    "apt-get installed {spec} but dpkg does not list {name} as installed \
                     (a virtual package? name a package that provides it)"
                );
            };
            self.done.record_line(format!("installed {name} {version}"));
        }
        for (name, version) in &after {
            let requested = names.iter().any(|s| split_spec(s).0 == name);
            if !requested && !before.contains_key(name) {
                self.done
                    .record_line(format!("installed {name} {version} (dependency)"));
            }
        }
        Ok(())
    }
}

/// Run the command `make` builds until it succeeds or fails in a way waiting cannot fix:
/// transient failures are retried with backoff ([`Tuning::retries`] attempts in all), lock
/// failures until [`Tuning::dpkg_lock_timeout`] has passed. Returns the last run.
///
/// [`Tuning::retries`]: crate::tuning::Tuning::retries
/// [`Tuning::dpkg_lock_timeout`]: crate::tuning::Tuning::dpkg_lock_timeout
fn retrying(ctx: &Ctx, what: &str, make: impl Fn() -> Command) -> Result<Ran> {
    let t = ctx.tuning;
    let lock_deadline = Instant::now() + t.dpkg_lock_timeout;
    let (mut failures, mut lock_waits) = (0u32, 0u32);
    loop {
        let ran = apt::run(&mut make(), what)?;
        let delay = match ran.failure() {
            Some(Failure::Locked) if Instant::now() < lock_deadline => {
                let d = t
                    .backoff_for(lock_waits)
                    .min(lock_deadline.saturating_duration_since(Instant::now()));
                lock_waits += 1;
                log::info!(
                    "packages: another process holds the package lock; trying again in {} \
                     (waiting up to {} in all)",
                    humantime::format_duration(d),
                    humantime::format_duration(t.dpkg_lock_timeout)
                );
                d
            }
            Some(Failure::Transient(why)) if failures + 1 < t.retries => {
                let d = t.backoff_for(failures);
                failures += 1;
                log::warn!(
                    "packages: {why}; retrying in {} (attempt {} of {})",
                    humantime::format_duration(d),
                    failures + 1,
                    t.retries
                );
                d
            }
            _ => return Ok(ran),
        };
        std::thread::sleep(delay);
    }
}

// Transitional: both tenses from the plan text until this step describes its changes itself.
impl Describe for Change {
    fn describe(&self, _tense: Tense) -> String {
        self.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_honours_pins_and_duplicates() {
        let installed: BTreeMap<String, String> = [("hello", "2.10-3"), ("tree", "2.1.0-1")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let m = missing(
            &[
                "hello",
                "tree=2.0",
                "git",
                "git",
                "hello/bookworm",
                "hello=2.10-3",
            ],
            &installed,
        );
        assert_eq!(m, vec!["tree=2.0".to_string(), "git".to_string()]);
    }

    #[test]
    fn changes_read_as_plan_lines() {
        let c = Change::Install(vec!["hello".into(), "tree".into()]);
        assert_eq!(c.to_string(), "install hello, tree");
        assert_eq!(Change::Update.to_string(), "update package lists");
    }
}
