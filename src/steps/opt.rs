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

use super::{Ctx, Describe, Done, Plan, Step, Tense};
use crate::archive::{self, fetch::mib};
use crate::config::{self, Expose};
use crate::sys::{fs as sysfs, fstab, mount};
use anyhow::{bail, Context, Result};
use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const OPT: &str = "/opt";
const FSTAB: &str = "/etc/fstab";

/// The opt step.
pub struct Opt<'a> {
    /// Its config.
    pub cfg: &'a config::Opt,
}

/// One change the opt step makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Remove a staging directory left by an interrupted run.
    RemoveStaging(PathBuf),
    /// Fetch the archive and unpack it at `path`.
    Fetch {
        /// The first mirror.
        url: String,
        /// `opt.path`.
        path: String,
    },
    /// Create the `/opt` directory to bind-mount on.
    CreateOpt,
    /// Add (or replace) the fstab line of the bind mount.
    Fstab(fstab::Edit),
    /// Bind-mount `path` at `/opt` now.
    Bind(String),
    /// Make `/opt` a symlink to the path, replacing what the string says (if anything).
    Symlink(String, Option<String>),
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::RemoveStaging(p) => {
                write!(f, "remove leftover staging directory {}", p.display())
            }
            Change::Fetch { url, path } => write!(f, "fetch {url} and unpack it into {path}"),
            Change::CreateOpt => write!(f, "create directory {OPT}"),
            Change::Fstab(fstab::Edit::Replace(old)) => write!(
                f,
                "replace the {OPT} line of {FSTAB} (was: {})",
                old.join(" | ")
            ),
            Change::Fstab(_) => write!(f, "add the bind mount of {OPT} to {FSTAB}"),
            Change::Bind(p) => write!(f, "bind-mount {p} at {OPT}"),
            Change::Symlink(p, None) => write!(f, "link {OPT} -> {p}"),
            Change::Symlink(p, Some(old)) => write!(f, "link {OPT} -> {p} (replacing {old})"),
        }
    }
}

/// What is at a path, seen without following a final symlink.
enum Found {
    Missing,
    EmptyDir,
    Tree,
    Symlink(PathBuf),
    Other,
}

fn look(p: &Path) -> Result<Found> {
    let m = match fs::symlink_metadata(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Missing),
        r => r.with_context(|| format!("cannot stat {}", p.display()))?,
    };
    if m.file_type().is_symlink() {
        let t = fs::read_link(p).with_context(|| format!("cannot read {}", p.display()))?;
        return Ok(Found::Symlink(t));
    }
    if !m.is_dir() {
        return Ok(Found::Other);
    }
    let mut entries = fs::read_dir(p).with_context(|| format!("cannot list {}", p.display()))?;
    Ok(if entries.next().is_some() {
        Found::Tree
    } else {
        Found::EmptyDir
    })
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
    fn holds_tree(&self, host: &Path) -> Result<bool> {
        match look(host)? {
            Found::Missing | Found::EmptyDir => Ok(false),
            Found::Tree => Ok(true),
            Found::Symlink(_) => match fs::metadata(host) {
                Ok(m) if m.is_dir() => Ok(fs::read_dir(host)?.next().is_some()),
                _ => bail!(
                    "{} is a symlink to something that is not a directory",
                    self.cfg.path
                ),
            },
            Found::Other => bail!("{} exists and is not a directory", self.cfg.path),
        }
    }

    fn plan_bind(&self, ctx: &Ctx, fetching: bool, plan: &mut Plan<Change>) -> Result<()> {
        let opt = ctx.root.path(Path::new(OPT));
        let host = ctx.root.path(&self.cfg.path);
        let bound = !fetching && same_inode(&opt, &host);
        match look(&opt)? {
            Found::Missing => plan.changes.push(Change::CreateOpt),
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
        let fstab_path = ctx.root.path(Path::new(FSTAB));
        let content = sysfs::read_optional(&fstab_path)?.unwrap_or_default();
        match fstab::plan(&content, &self.fstab_entry()) {
            fstab::Edit::Unchanged => {}
            e => plan.changes.push(Change::Fstab(e)),
        }
        if !bound {
            plan.changes.push(Change::Bind(self.cfg.path.to_string()));
        }
        Ok(())
    }

    fn plan_symlink(&self, ctx: &Ctx, plan: &mut Plan<Change>) -> Result<()> {
        let opt = ctx.root.path(Path::new(OPT));
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
        plan.changes.push(Change::Symlink(want, replacing));
        Ok(())
    }
}

fn same_inode(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

impl Step for Opt<'_> {
    const NAME: &'static str = "opt";
    type Change = Change;

    fn plan(&self, ctx: &Ctx) -> Result<Plan<Change>> {
        let mut plan = Plan::default();
        let host = ctx.root.path(&self.cfg.path);
        let staging = archive::staging_for(&host);
        if fs::symlink_metadata(&staging).is_ok() {
            plan.changes.push(Change::RemoveStaging(staging));
        }
        let fetching = !self.holds_tree(&host)?;
        if fetching {
            let a = self.cfg.archive.as_ref().with_context(|| {
                format!(
                    "{} holds no tree and opt.archive is not set to fetch one",
                    self.cfg.path
                )
            })?;
            plan.changes.push(Change::Fetch {
                url: a
                    .urls
                    .first()
                    .map(|u| crate::secret::ShownUrl::new(&u.0).to_string())
                    .unwrap_or_default(),
                path: self.cfg.path.to_string(),
            });
        }
        match self.cfg.expose {
            Expose::Bind => self.plan_bind(ctx, fetching, &mut plan)?,
            Expose::Symlink => self.plan_symlink(ctx, &mut plan)?,
        }
        Ok(plan)
    }

    fn apply(&self, ctx: &Ctx, changes: &[Change], done: &mut Done<Change>) -> Result<()> {
        let host = ctx.root.path(&self.cfg.path);
        let opt = ctx.root.path(Path::new(OPT));
        for change in changes {
            match &change {
                Change::RemoveStaging(p) => {
                    archive::remove_staging(p)?;
                    done.record_line(format!(
                        "removed leftover staging directory {}",
                        p.display()
                    ));
                }
                Change::Fetch { path, .. } => {
                    let a = self
                        .cfg
                        .archive
                        .as_ref()
                        .context("opt.archive is not set")?;
                    let source = crate::store::source(a, ctx.root)?;
                    let got = archive::install(&source, &host, ctx.tuning)?;
                    done.record_line(format!(
                        "fetched {} ({}, {:?}, sha256 {}) and unpacked {} entries ({}) into {path}",
                        got.url,
                        mib(got.bytes),
                        got.format,
                        got.sha256,
                        got.stats.entries,
                        mib(got.stats.bytes),
                    ));
                }
                Change::CreateOpt => {
                    fs::create_dir_all(&opt)
                        .with_context(|| format!("cannot create {}", opt.display()))?;
                    done.record_line(format!("created directory {OPT}"));
                }
                Change::Fstab(_) => {
                    let p = ctx.root.path(Path::new(FSTAB));
                    let content = sysfs::read_optional(&p)?.unwrap_or_default();
                    let new = fstab::apply(&content, &self.fstab_entry());
                    sysfs::write_atomic(&p, new.as_bytes(), 0o644)?;
                    done.record_line(format!("added the bind mount of {OPT} to {FSTAB}"));
                }
                Change::Bind(p) => {
                    mount::bind(&host, &opt)?;
                    done.record_line(format!("bind-mounted {p} at {OPT}"));
                }
                Change::Symlink(target, replacing) => {
                    let tmp = opt.with_file_name(".opt.olboot-tmp");
                    let _ = fs::remove_file(&tmp);
                    std::os::unix::fs::symlink(target, &tmp)
                        .with_context(|| format!("cannot create {}", tmp.display()))?;
                    if let Ok(Found::EmptyDir) = look(&opt) {
                        fs::remove_dir(&opt)
                            .with_context(|| format!("cannot remove {}", opt.display()))?;
                    }
                    fs::rename(&tmp, &opt)
                        .inspect_err(|_| {
                            let _ = fs::remove_file(&tmp);
                        })
                        .with_context(|| format!("cannot replace {}", opt.display()))?;
                    if let Some(dir) = opt.parent() {
                        fs::File::open(dir)
                            .and_then(|d| d.sync_all())
                            .with_context(|| format!("cannot sync {}", dir.display()))?;
                    }
                    done.record_line(match replacing {
                        None => format!("linked {OPT} -> {target}"),
                        Some(old) => format!("linked {OPT} -> {target} (replaced {old})"),
                    });
                }
            }
        }
        Ok(())
    }
}

// Transitional: both tenses from the plan text until this step describes its changes itself.
impl Describe for Change {
    fn describe(&self, _tense: Tense) -> String {
        self.to_string()
    }
}
