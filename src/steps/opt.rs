//! The opt step: bring `/opt` back from the archive store and expose it at `/opt`.
//!
//! A tree already at `opt.path` (a volume moved from the old VM, an earlier run) is kept and
//! nothing is fetched. Otherwise the archive is streamed, verified and unpacked into a staging
//! directory beside `path` and renamed into place (see [`crate::archive`]), so `path` is
//! either absent or complete; staging left by a killed run is removed by the next one.
//!
//! Exposing: `bind` mounts `path` at `/opt` and keeps one `/etc/fstab` line
//! (`<path> /opt none bind,nofail 0 0`) so it comes back at boot. Under `--root` the bind is
//! made below the root (`DIR/1/opt` at `DIR/opt`), as the volumes step mounts the volume at
//! `DIR/1`: the steps after it (links) then see the target as it will be after its next boot.
//! `symlink` makes `/opt` a symlink to `path`; an empty `/opt` directory is replaced, a
//! non-empty one is an error, never deleted.
//!
//! Paths from the config go through `--root`, `opt.archive.ca_file` included; a `file://`
//! mirror, like an `http://` one, names a place as the running system sees it.

use super::{Ctx, Describe, Done, Plan, Step, Tense, Verb};
use crate::archive::{self, fetch::mib};
use crate::config::{self, Expose};
use crate::sys::fs::{self as sysfs, look, Found};
use crate::sys::{fstab, mount};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

const OPT: &str = "/opt";
const FSTAB: &str = "/etc/fstab";

/// The opt step.
pub struct Opt<'a> {
    /// Its config.
    pub cfg: &'a config::Opt,
}

/// One change the opt step makes; each carries all `apply` needs.
#[derive(Debug, Clone)]
pub enum Change {
    /// Remove a staging directory left by an interrupted run.
    RemoveStaging(PathBuf),
    /// Fetch the archive and unpack it at `dest`.
    Fetch(Box<Fetch>),
    /// Create the directory `/opt` (its host path) to bind-mount on.
    CreateOpt(PathBuf),
    /// Bring the fstab at `file` to hold `entry` (`edit` says how it differs now).
    Fstab {
        file: PathBuf,
        entry: fstab::Entry,
        edit: fstab::Edit,
    },
    /// Bind-mount `from` at `to` now (host paths); `shown` is `opt.path` as configured.
    Bind {
        from: PathBuf,
        to: PathBuf,
        shown: String,
    },
    /// Make `at` (the host path of `/opt`) a symlink to `target`, replacing what `replacing`
    /// says (if anything).
    Symlink {
        at: PathBuf,
        target: String,
        replacing: Option<String>,
    },
}

/// What fetching and unpacking the archive takes.
#[derive(Debug, Clone)]
pub struct Fetch {
    /// The archive's mirrors and digest.
    pub archive: config::Archive,
    /// The host path of `archive.ca_file`.
    pub ca_file: Option<PathBuf>,
    /// The host path of `opt.path`.
    pub dest: PathBuf,
    /// `opt.path` as configured.
    pub shown: String,
}

impl Describe for Change {
    fn describe(&self, t: Tense) -> String {
        match self {
            Change::RemoveStaging(p) => format!(
                "{} leftover staging directory {}",
                t.of(Verb::Remove),
                p.display()
            ),
            Change::Fetch(f) => format!(
                "{} {} and {} it into {}",
                t.of(Verb::Fetch),
                // Which mirror answers is known only then: the line names them all, in the
                // plan as in the report, and the log says which one served.
                f.archive
                    .urls
                    .iter()
                    .map(|u| u.to_string())
                    .collect::<Vec<_>>()
                    .join(" or "),
                t.of(Verb::Unpack),
                f.shown
            ),
            Change::CreateOpt(_) => format!("{} directory {OPT}", t.of(Verb::Create)),
            Change::Fstab {
                edit: fstab::Edit::Replace(old),
                ..
            } => format!(
                "{} the {OPT} line of {FSTAB} (was: {})",
                t.of(Verb::Replace),
                old.join(" | ")
            ),
            Change::Fstab { .. } => {
                format!("{} {OPT} (bind, nofail) to {FSTAB}", t.of(Verb::Add))
            }
            Change::Bind { shown, .. } => format!("{} {shown} at {OPT}", t.of(Verb::Bind)),
            Change::Symlink {
                target, replacing, ..
            } => match replacing {
                None => format!("{} {OPT} -> {target}", t.of(Verb::Link)),
                Some(old) => format!("{} {OPT} -> {target} in place of {old}", t.of(Verb::Link)),
            },
        }
    }
}

impl Opt<'_> {
    fn fstab_entry(&self) -> fstab::Entry {
        fstab::Entry {
            spec: self.cfg.path.to_string(),
            file: OPT.into(),
            vfstype: "none".into(),
            options: "bind,nofail".into(),
            passno: 0,
        }
    }

    /// Whether the tree at `path` holds a tree (a symlink to a tree counts).
    fn holds_tree(&self, ctx: &Ctx, host: &Path) -> Result<bool> {
        match look(host)? {
            Found::Missing | Found::EmptyDir => Ok(false),
            Found::Tree => Ok(true),
            // Followed inside the root. A tree there is kept; nothing can be unpacked into
            // place through it: the staging directory is renamed over the path itself.
            Found::Symlink(t) => match sysfs::look_through(&ctx.root.resolve(&self.cfg.path)?)? {
                Found::Tree => Ok(true),
                _ => bail!(
                    "{} is a symlink to {}, which holds no tree: olboot unpacks into a \
                     directory it renames into place; set opt.path to a directory",
                    self.cfg.path,
                    t.display()
                ),
            },
            Found::Other => bail!("{} exists and is not a directory", self.cfg.path),
        }
    }

    fn plan_bind(&self, ctx: &Ctx, fetching: bool, plan: &mut Plan<Change>) -> Result<()> {
        let opt = ctx.root.path(Path::new(OPT))?;
        let host = ctx.root.path(&self.cfg.path)?;
        let bound = !fetching && sysfs::same_inode(&opt, &host);
        match look(&opt)? {
            Found::Missing => plan.changes.push(Change::CreateOpt(opt.clone())),
            Found::EmptyDir => {}
            Found::Tree if bound => {}
            Found::Tree => bail!(
                "{OPT} is a directory that is not empty: a bind mount would hide it \
                 (move it away first)"
            ),
            Found::Symlink(t) => bail!(
                "{OPT} is a symlink to {}; expose: bind needs a directory there",
                t.display()
            ),
            Found::Other => bail!("{OPT} exists and is not a directory"),
        }
        let fstab_path = ctx.root.path(Path::new(FSTAB))?;
        let content = sysfs::read_optional(&fstab_path)?.unwrap_or_default();
        let entry = self.fstab_entry();
        match fstab::plan(&content, &entry) {
            fstab::Edit::Unchanged => {}
            edit => plan.changes.push(Change::Fstab {
                file: fstab_path,
                entry,
                edit,
            }),
        }
        if !bound {
            plan.changes.push(Change::Bind {
                from: host,
                to: opt,
                shown: self.cfg.path.to_string(),
            });
        }
        Ok(())
    }

    fn plan_symlink(&self, ctx: &Ctx, plan: &mut Plan<Change>) -> Result<()> {
        let opt = ctx.root.path(Path::new(OPT))?;
        let want = self.cfg.path.to_string();
        let replacing = match look(&opt)? {
            Found::Missing => None,
            Found::Symlink(t) if t == Path::new(&want) => return Ok(()),
            Found::Symlink(t) => Some(format!("the symlink to {}", t.display())),
            Found::EmptyDir => Some("an empty directory".into()),
            Found::Tree => bail!(
                "{OPT} is a directory that is not empty; expose: symlink will not replace it \
                 (move it away first)"
            ),
            Found::Other => bail!("{OPT} exists and is neither a directory nor a symlink"),
        };
        if ctx.root.is_live() && mount::at(Path::new(OPT))?.is_some() {
            bail!("{OPT} is a mountpoint; expose: symlink cannot replace it (unmount it first)");
        }
        plan.changes.push(Change::Symlink {
            at: opt,
            target: want,
            replacing,
        });
        Ok(())
    }
}

impl Step for Opt<'_> {
    const NAME: &'static str = "opt";
    type Change = Change;

    fn plan(&self, ctx: &Ctx) -> Result<Plan<Change>> {
        let mut plan = Plan::default();
        let host = ctx.root.path(&self.cfg.path)?;
        let staging = archive::staging_for(&host);
        if !matches!(look(&staging)?, Found::Missing) {
            plan.changes.push(Change::RemoveStaging(staging));
        }
        let fetching = !self.holds_tree(ctx, &host)?;
        if fetching {
            let a = self.cfg.archive.as_ref().with_context(|| {
                format!(
                    "{} holds no tree and opt.archive is not set to fetch one",
                    self.cfg.path
                )
            })?;
            plan.changes.push(Change::Fetch(Box::new(Fetch {
                archive: a.clone(),
                ca_file: a
                    .ca_file
                    .as_ref()
                    .map(|c| ctx.root.resolve(c))
                    .transpose()?,
                dest: host.clone(),
                shown: self.cfg.path.to_string(),
            })));
        }
        match self.cfg.expose {
            Expose::Bind => self.plan_bind(ctx, fetching, &mut plan)?,
            Expose::Symlink => self.plan_symlink(ctx, &mut plan)?,
        }
        Ok(plan)
    }

    fn apply(ctx: &Ctx, changes: &[Change], done: &mut Done<Change>) -> Result<()> {
        for change in changes {
            match change {
                Change::RemoveStaging(p) => archive::remove_staging(p)?,
                Change::Fetch(f) => {
                    let source = crate::store::source(&f.archive, f.ca_file.clone(), ctx.root)?;
                    let got = archive::install(&source, &f.dest, ctx.tuning)?;
                    log::info!(
                        "opt: fetched {} ({}, {:?}, sha256 {}): {} entries, {}",
                        got.url,
                        mib(got.bytes),
                        got.format,
                        got.sha256,
                        got.stats.entries,
                        mib(got.stats.bytes),
                    );
                    for w in &got.stats.warnings {
                        done.warn(w);
                    }
                }
                Change::CreateOpt(opt) => sysfs::create_dir_all(opt)?,
                Change::Fstab { file, entry, .. } => {
                    let content = sysfs::read_optional(file)?.unwrap_or_default();
                    let new = fstab::apply(&content, entry);
                    sysfs::write_atomic(file, new.as_bytes(), 0o644)?;
                }
                Change::Bind { from, to, .. } => mount::bind(from, to)?,
                Change::Symlink { at, target, .. } => replace_with_symlink(at, target)?,
            }
            done.record(change);
        }
        Ok(())
    }
}

/// Make `at` a symlink to `target`: made beside it, then renamed over it (an empty directory
/// there is removed first), then the directory synced.
fn replace_with_symlink(at: &Path, target: &str) -> Result<()> {
    let tmp = at.with_file_name(".opt.olboot-tmp");
    sysfs::remove_file_if_present(&tmp)?;
    sysfs::symlink(target, &tmp)?;
    if let Ok(Found::EmptyDir) = look(at) {
        sysfs::remove_dir(at)?;
    }
    if let Err(e) = sysfs::rename(&tmp, at) {
        let _ = sysfs::remove_file_if_present(&tmp);
        return Err(e);
    }
    match at.parent() {
        Some(dir) => sysfs::sync_dir(dir),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::in_done_tense;

    #[test]
    fn report_lines_are_plan_lines_in_the_done_tense() {
        let archive: config::Archive =
            serde_yaml::from_str("urls: [file:///srv/opt.tar.zst]").unwrap();
        let entry = fstab::Entry {
            spec: "/1/opt".into(),
            file: OPT.into(),
            vfstype: "none".into(),
            options: "bind,nofail".into(),
            passno: 0,
        };
        let changes = [
            Change::RemoveStaging("/1/.olboot-staging-opt".into()),
            Change::Fetch(Box::new(Fetch {
                archive,
                ca_file: None,
                dest: "/r/1/opt".into(),
                shown: "/1/opt".into(),
            })),
            Change::CreateOpt("/r/opt".into()),
            Change::Fstab {
                file: "/r/etc/fstab".into(),
                entry: entry.clone(),
                edit: fstab::Edit::Add,
            },
            Change::Fstab {
                file: "/r/etc/fstab".into(),
                entry,
                edit: fstab::Edit::Replace(vec!["/x /opt none bind 0 0".into()]),
            },
            Change::Bind {
                from: "/r/1/opt".into(),
                to: "/r/opt".into(),
                shown: "/1/opt".into(),
            },
            Change::Symlink {
                at: "/r/opt".into(),
                target: "/1/opt".into(),
                replacing: Some("an empty directory".into()),
            },
        ];
        for c in &changes {
            let (plan, done) = (c.describe(Tense::Plan), c.describe(Tense::Done));
            assert_ne!(plan, done, "{c:?}");
            assert_eq!(in_done_tense(&plan), done, "{c:?}");
        }
    }
}
