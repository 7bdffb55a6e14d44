//! The packages step: extra apt sources with their keys, packages that must go, and
//! packages to install, the way first boot needs it.
//!
//! - Sources (`packages.sources`, see [`sources`]): a deb822 file and its key, written
//!   atomically when they differ from what the config renders; `apt-get update` follows.
//!   When that update fails (bad key, 404) the files are put back as they were (or the new
//!   ones removed), so apt stays usable, and the step fails naming the source.
//! - `remove`: what `dpkg-query` lists as installed is removed (or purged) before installing.
//! - `install`: what is not installed yet. Package lists missing, a source's lists missing,
//!   or lists last written more than [`LISTS_MAX_AGE`] ago: `apt-get update` first.
//! - Nothing to do: nothing at all happens (no `apt-get update`, no network).
//! - cloud-init and unattended-upgrades hold the dpkg lock at first boot: apt waits for it
//!   (`DPkg::Lock::Timeout`, from [`Tuning::dpkg_lock_timeout`]) and its "Waiting for cache
//!   lock" lines are logged; lock errors apt does not wait for itself (the lists lock of
//!   `apt-get update`) are retried until the same bound.
//! - Transient failures (mirror timeouts and 5xx, DNS, "Hash Sum mismatch") are retried with
//!   the one [`Backoff`]; a package that does not exist fails at once with its name; an
//!   interrupted dpkg is repaired with `dpkg --configure -a` first.
//! - The report says what changed; the versions apt installed and the dependencies it pulled
//!   in or removed go to the log.
//! - Under `--root DIR` apt runs in DIR through chroot, inside a [`Session`] (bind mounts and
//!   `policy-rc.d`, always undone).
//!
//! [`Tuning::dpkg_lock_timeout`]: crate::tuning::Tuning::dpkg_lock_timeout

use super::{Ctx, Describe, Done, Plan, Step, Tense, Verb};
use crate::config;
use crate::retry::Backoff;
use crate::sys::apt::{self, Failure, Ran};
use crate::sys::chroot::Session;
use crate::sys::fs;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

pub mod sources;

/// Package lists older than this are refreshed before installing. A day keeps an image's
/// lists from its build (weeks old, naming superseded `.deb`s) from being used, and a run
/// shortly after another run or cloud-init's own `package_update` from fetching them again.
pub const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// What apt's warnings say of a source it could not fetch or verify.
const UNUSABLE: &[&str] = &[
    "GPG error",
    "OpenPGP signature verification failed",
    "Failed to fetch",
    "is not signed",
    "NO_PUBKEY",
];

/// The packages step.
pub struct Packages<'a> {
    /// Its config.
    pub cfg: &'a config::Packages,
}

/// Which file of an apt source a [`Change::Write`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The deb822 `.sources` file.
    Source,
    /// The armored signing key it names.
    Key,
}

/// An apt source written by this run, as `apt-get update` names it in its messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    /// Its name in `packages.sources`.
    pub name: String,
    /// Its URIs.
    pub uris: Vec<String>,
}

/// One change of the packages step, with everything `apply` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `dpkg --configure -a` after an interrupted dpkg.
    Repair,
    /// Write a file of apt source `source` at `path` (on the target).
    Write {
        /// The source file or its key.
        kind: Written,
        /// The source's name.
        source: String,
        /// Where, on the target.
        path: PathBuf,
        /// The new content.
        text: String,
        /// The content it replaces, put back if the update with it fails.
        old: Option<String>,
    },
    /// `apt-get update`; a failure that names one of `sources` (written just before) is
    /// theirs.
    Update {
        /// The sources written by this run.
        sources: Vec<Watched>,
    },
    /// `apt-get remove` (or `purge`) of these installed packages.
    Remove {
        /// Package names.
        names: Vec<String>,
        /// Purge their config files too.
        purge: bool,
    },
    /// `apt-get install` of these packages (as written in the config).
    Install {
        /// Package specs.
        names: Vec<String>,
        /// With recommended packages.
        recommends: bool,
        /// Packages that must not come back with them (`packages.remove`).
        absent: Vec<String>,
    },
}

impl Describe for Change {
    fn describe(&self, tense: Tense) -> String {
        match self {
            Change::Repair => format!(
                "{} the interrupted dpkg (dpkg --configure -a)",
                tense.of(Verb::Repair)
            ),
            Change::Write {
                kind,
                source,
                path,
                old,
                ..
            } => {
                let verb = tense.of(if old.is_some() {
                    Verb::Replace
                } else {
                    Verb::Add
                });
                let what = match kind {
                    Written::Key => "the key of apt source",
                    Written::Source => "apt source",
                };
                format!("{verb} {what} {source} at {}", path.display())
            }
            Change::Update { .. } => format!("{} package lists", tense.of(Verb::Update)),
            Change::Remove { names, purge } => {
                let verb = tense.of(if *purge { Verb::Purge } else { Verb::Remove });
                format!("{verb} {}", names.join(", "))
            }
            Change::Install {
                names, recommends, ..
            } => format!(
                "{} {}{}",
                tense.of(Verb::Install),
                names.join(", "),
                if *recommends {
                    " (and what they recommend)"
                } else {
                    ""
                }
            ),
        }
    }
}

impl Step for Packages<'_> {
    const NAME: &'static str = "packages";
    type Change = Change;

    fn plan(&self, ctx: &Ctx) -> Result<Plan<Change>> {
        let cfg = self.cfg;
        let writes = sources::plan(ctx.root, &cfg.sources)?;
        let installed = apt::installed(ctx.root)?;
        let absent: Vec<String> = cfg.remove.iter().map(|p| p.name().to_string()).collect();
        let remove: Vec<String> = absent
            .iter()
            .filter(|n| installed.contains_key(*n))
            .cloned()
            .collect();
        let names: Vec<&str> = cfg.install.iter().map(|p| p.0.as_str()).collect();
        let missing = missing(&names, &installed);
        let update = !writes.is_empty()
            || (!missing.is_empty()
                && (lists_stale(ctx)? || !sources::lists_present(ctx.root, &cfg.sources)?));
        let watched = cfg
            .sources
            .iter()
            .filter(|(n, _)| {
                writes
                    .iter()
                    .any(|w| matches!(w, Change::Write { source, .. } if source == *n))
            })
            .map(|(n, s)| Watched {
                name: n.clone(),
                uris: s.uris.iter().map(|u| u.0.clone()).collect(),
            })
            .collect();
        let wanted = Wanted {
            writes,
            watched,
            update,
            remove,
            purge: cfg.purge.unwrap_or(false),
            install: missing,
            recommends: cfg.recommends.unwrap_or(false),
            absent,
        };
        Ok(Plan {
            changes: wanted.changes(ctx)?,
            ..Plan::default()
        })
    }

    fn apply(ctx: &Ctx, changes: &[Change], done: &mut Done<Change>) -> Result<()> {
        apply_changes(ctx, changes, done)
    }
}

/// The changes that get `names` installed on the target (nothing when they all are), for
/// another step that needs a package (the firewall's `nftables`); make them with
/// [`apply_changes`].
pub fn plan_install(ctx: &Ctx, names: &[&str]) -> Result<Vec<Change>> {
    let installed = apt::installed(ctx.root)?;
    let install = missing(names, &installed);
    let update = !install.is_empty() && lists_stale(ctx)?;
    Wanted {
        writes: Vec::new(),
        watched: Vec::new(),
        update,
        remove: Vec::new(),
        purge: false,
        install,
        recommends: false,
        absent: Vec::new(),
    }
    .changes(ctx)
}

fn lists_stale(ctx: &Ctx) -> Result<bool> {
    Ok(apt::stale(
        apt::lists_written(ctx.root)?,
        SystemTime::now(),
        LISTS_MAX_AGE,
    ))
}

/// What the machine lacks, as observed; [`Wanted::changes`] puts it in apply order.
struct Wanted {
    writes: Vec<Change>,
    /// The sources of `writes`.
    watched: Vec<Watched>,
    update: bool,
    remove: Vec<String>,
    purge: bool,
    install: Vec<String>,
    recommends: bool,
    /// Every name of `packages.remove`, installed or not.
    absent: Vec<String>,
}

impl Wanted {
    /// Repair, source files, update, removals, installs: each only when needed.
    fn changes(self, ctx: &Ctx) -> Result<Vec<Change>> {
        let dpkg = !self.remove.is_empty() || !self.install.is_empty();
        let mut out = Vec::new();
        if dpkg && apt::interrupted(ctx.root)? {
            out.push(Change::Repair);
        }
        let wrote = !self.writes.is_empty();
        out.extend(self.writes);
        if self.update || wrote {
            out.push(Change::Update {
                sources: self.watched,
            });
        }
        if !self.remove.is_empty() {
            out.push(Change::Remove {
                names: self.remove,
                purge: self.purge,
            });
        }
        if !self.install.is_empty() {
            out.push(Change::Install {
                names: self.install,
                recommends: self.recommends,
                absent: self.absent,
            });
        }
        Ok(out)
    }
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

/// Make `changes` (from [`Packages::plan`] or [`plan_install`]) on the target, in order,
/// inside one apt session, recording each in `done` once it holds. Source files written are
/// recorded after the update that proves them; if it (or anything before it) fails, they are
/// put back as they were.
pub fn apply_changes(ctx: &Ctx, changes: &[Change], done: &mut Done<Change>) -> Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let session = Session::enter(ctx.root)
        .with_context(|| format!("cannot prepare {} for apt", ctx.root.dir().display()))?;
    let mut run = Run {
        ctx,
        done,
        pending: Vec::new(),
        updated: false,
        repaired: false,
    };
    let mut made = changes.iter().try_for_each(|c| run.make(c));
    if made.is_ok() {
        run.confirm();
    } else if !run.pending.is_empty() {
        let restored = run.restore();
        made = made.map_err(|e| anyhow::anyhow!("{e:#}; {restored}"));
    }
    let closed = session.close();
    made?;
    closed
}

/// One apt session's state: what has been done to the package system so far.
struct Run<'a, 'd, 'c> {
    ctx: &'a Ctx<'a>,
    done: &'d mut Done<Change>,
    /// Source files written but not yet proven by an update.
    pending: Vec<&'c Change>,
    /// The lists were refreshed by this run: a package apt cannot find does not exist.
    updated: bool,
    /// `dpkg --configure -a` ran: a second "dpkg was interrupted" is not repaired again.
    repaired: bool,
}

impl<'c> Run<'_, '_, 'c> {
    fn make(&mut self, change: &'c Change) -> Result<()> {
        match change {
            Change::Repair => self.repair()?,
            Change::Write { path, text, .. } => {
                fs::write_atomic(&self.ctx.root.path(path)?, text.as_bytes(), 0o644)?;
                self.pending.push(change);
                return Ok(());
            }
            Change::Update { sources } => {
                self.update(sources)?;
                self.confirm();
            }
            Change::Remove { names, purge } => self.remove(names, *purge)?,
            Change::Install {
                names,
                recommends,
                absent,
            } => {
                self.install(names, *recommends)?;
                self.check_absent(names, absent)?;
            }
        }
        self.done.record(change);
        Ok(())
    }

    /// Record the pending source files: they hold.
    fn confirm(&mut self) {
        for c in self.pending.drain(..) {
            self.done.record(c);
        }
    }

    /// Put the pending source files back as they were; says what it did, for the error.
    fn restore(&mut self) -> String {
        let mut said = Vec::new();
        for c in self.pending.drain(..).rev() {
            let Change::Write { path, old, .. } = c else {
                continue;
            };
            let at = match self.ctx.root.path(path) {
                Ok(at) => at,
                Err(e) => {
                    said.push(format!("{e:#}"));
                    continue;
                }
            };
            let r = match old {
                Some(text) => fs::write_atomic(&at, text.as_bytes(), 0o644)
                    .map(|()| format!("restored the previous {}", path.display())),
                None => std::fs::remove_file(&at)
                    .with_context(|| format!("cannot remove {}", at.display()))
                    .map(|()| format!("removed the new {}", path.display())),
            };
            said.push(r.unwrap_or_else(|e| format!("{e:#}")));
        }
        said.reverse();
        said.join(", ")
    }

    fn repair(&mut self) -> Result<()> {
        let ran = retrying(self.ctx, "dpkg", || apt::configure_pending(self.ctx.root))?;
        if ran.failure().is_some() {
            bail!("cannot repair the interrupted dpkg: {}", ran.describe());
        }
        self.repaired = true;
        Ok(())
    }

    /// `apt-get update`; a failure that names a source written by this run fails as that
    /// source's.
    fn update(&mut self, written: &[Watched]) -> Result<()> {
        let lock = self.ctx.tuning.dpkg_lock_timeout;
        let ran = retrying(self.ctx, "apt-get", || apt::update(self.ctx.root, lock))?;
        let failed = ran.failure().is_some();
        for s in written {
            let mut about: Vec<&str> = s.uris.iter().flat_map(|u| ran.about(u)).collect();
            // An apt that only warns about a source it could not fetch or verify (one that
            // ignores Error-Mode) still exits 0: those warnings fail the source too.
            if !failed {
                about.retain(|l| UNUSABLE.iter().any(|p| l.contains(p)));
            }
            if !about.is_empty() {
                bail!(
                    "apt source {} (packages.sources.{}) does not update: {}",
                    s.name,
                    s.name,
                    about.join(" / ")
                );
            }
        }
        if failed {
            bail!("cannot update the package lists: {}", ran.describe());
        }
        self.updated = true;
        Ok(())
    }

    fn remove(&mut self, names: &[String], purge: bool) -> Result<()> {
        let root = self.ctx.root;
        let lock = self.ctx.tuning.dpkg_lock_timeout;
        let before = apt::installed(root)?;
        let ran = retrying(self.ctx, "apt-get", || {
            apt::remove(root, lock, names, purge)
        })?;
        if ran.failure().is_some() {
            bail!("cannot remove {}: {}", names.join(", "), ran.describe());
        }
        let after = apt::installed(root)?;
        if let Some(left) = names.iter().find(|n| after.contains_key(*n)) {
            bail!("apt-get removed {left} but dpkg still lists it as installed");
        }
        for (name, version) in before.iter().filter(|(n, _)| !after.contains_key(*n)) {
            log::info!("packages: {name} {version} is gone");
        }
        Ok(())
    }

    /// Fail when installing `names` brought back a package that must not be installed: the
    /// next run would remove it again, and so on forever.
    fn check_absent(&self, names: &[String], absent: &[String]) -> Result<()> {
        let installed = apt::installed(self.ctx.root)?;
        let back: Vec<&str> = absent
            .iter()
            .filter(|n| installed.contains_key(*n))
            .map(|n| n.as_str())
            .collect();
        if !back.is_empty() {
            bail!(
                "installing {} brought back {}, which packages.remove says must not be installed",
                names.join(", "),
                back.join(", ")
            );
        }
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
                    self.update(&[])?;
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
        log_installed(names, &before, &apt::installed(root)?)
    }
}

/// Log the versions apt installed and the dependencies it pulled in; fail if dpkg does not
/// list a requested package (a virtual name apt resolved to another package).
fn log_installed(
    names: &[String],
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) -> Result<()> {
    for spec in names {
        let (name, _) = split_spec(spec);
        let Some(version) = after.get(name) else {
            bail!(
                "apt-get installed {spec} but dpkg does not list {name} as installed \
                 (a virtual package? name a package that provides it)"
            );
        };
        log::info!("packages: {name} {version} is installed");
    }
    for (name, version) in after {
        let requested = names.iter().any(|s| split_spec(s).0 == name);
        if !requested && !before.contains_key(name) {
            log::info!("packages: {name} {version} is installed (a dependency)");
        }
    }
    Ok(())
}

/// Run the command `make` builds until it succeeds or fails in a way waiting cannot fix:
/// transient failures are retried by the one [`Backoff`], lock failures until
/// [`Tuning::dpkg_lock_timeout`] has passed. Returns the last run.
///
/// [`Tuning::dpkg_lock_timeout`]: crate::tuning::Tuning::dpkg_lock_timeout
fn retrying(ctx: &Ctx, what: &str, make: impl Fn() -> Command) -> Result<Ran> {
    let t = ctx.tuning;
    let lock_deadline = Instant::now() + t.dpkg_lock_timeout;
    let mut backoff = Backoff::new(t);
    let mut lock_waits = 0u32;
    loop {
        let ran = apt::run(&mut make(), what)?;
        let delay = match ran.failure() {
            Some(Failure::Locked) if Instant::now() < lock_deadline => {
                let d = backoff
                    .delay(lock_waits)
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
            Some(Failure::Transient(why)) => match backoff.failed() {
                Some(d) => {
                    log::warn!(
                        "packages: {why}; retrying in {} (attempt {} of {})",
                        humantime::format_duration(d),
                        backoff.failures() + 1,
                        backoff.tries()
                    );
                    d
                }
                None => return Ok(ran),
            },
            _ => return Ok(ran),
        };
        // A shutdown during a wait of minutes stops it at once, not after it.
        crate::sys::signal::sleep(delay)?;
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
    fn report_lines_are_plan_lines_in_the_done_tense() {
        let changes = [
            Change::Repair,
            Change::Write {
                kind: Written::Key,
                source: "docker".into(),
                path: sources::key_path("docker"),
                text: "k".into(),
                old: None,
            },
            Change::Write {
                kind: Written::Source,
                source: "docker".into(),
                path: sources::source_path("docker"),
                text: "s".into(),
                old: Some("t".into()),
            },
            Change::Update { sources: vec![] },
            Change::Remove {
                names: vec!["docker.io".into(), "runc".into()],
                purge: false,
            },
            Change::Remove {
                names: vec!["runc".into()],
                purge: true,
            },
            Change::Install {
                names: vec!["hello".into(), "tree".into()],
                recommends: true,
                absent: vec!["runc".into()],
            },
        ];
        let plan: Vec<String> = changes.iter().map(|c| c.describe(Tense::Plan)).collect();
        assert_eq!(
            plan,
            [
                "repair the interrupted dpkg (dpkg --configure -a)",
                "add the key of apt source docker at /etc/apt/keyrings/docker.asc",
                "replace apt source docker at /etc/apt/sources.list.d/docker.sources",
                "update package lists",
                "remove docker.io, runc",
                "purge runc",
                "install hello, tree (and what they recommend)",
            ]
        );
        for c in &changes {
            assert_eq!(
                super::super::in_done_tense(&c.describe(Tense::Plan)),
                c.describe(Tense::Done)
            );
        }
    }
}
