//! The links step: the files of the olsystem checkout appear in `/etc` as symlinks.
//!
//! For every file below `from`, a symlink at the same relative path below `to` points at the
//! file *through `from` as written* (`/etc/nginx/nginx.conf ->
//! /opt/openlibrary/olsystem/etc/nginx/nginx.conf`), so that switching the `olsystem` symlink to
//! a new deploy needs no relinking. Directories are created, never linked; a directory symlink
//! left by a hand-migrated VM (`/etc/nginx/sites-available -> .../olsystem/...`) is in the way
//! like any other file: it is moved under `/var/lib/olboot/backup/` and replaced by a real
//! directory, so nothing is ever written through it. A link of ours whose source file is gone
//! is removed rather than left dangling.
//!
//! Two refusals keep a run from doing harm with exit 0, both made while planning, before
//! anything changes: an entry whose source and target resolve to the same directory, or one
//! inside the other (linking `/etc` into itself replaces every file by a link to itself), and
//! two entries that want different things at one target path (each run would undo the other).
//! Entries that share a target directory but not its files are merged, which is what several
//! sources for one `/etc` need.

use super::{Ctx, Describe, Done, Plan, Step, Tense};
use crate::config::Link;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs;
use std::ops::Bound;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where things in the way are moved, keeping their path below it.
const BACKUP_DIR: &str = "/var/lib/olboot/backup";

/// The links step.
pub struct Links<'a> {
    /// The `from` → `to` pairs, in order.
    pub cfg: &'a [Link],
}

/// What was found where a directory or link should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InTheWay {
    /// A regular file.
    File,
    /// A symlink (a wrong link, or a directory symlink of a migrated VM).
    Symlink,
    /// A directory.
    Directory,
    /// A device node, socket or FIFO.
    Special,
}

impl fmt::Display for InTheWay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InTheWay::File => "file",
            InTheWay::Symlink => "symlink",
            InTheWay::Directory => "directory",
            InTheWay::Special => "special file",
        })
    }
}

/// One change of the links step. Paths are as the target system sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Create the directory `dir`, backing up what is in its place first.
    Dir {
        /// The directory.
        dir: PathBuf,
        /// What stands there now.
        in_way: Option<InTheWay>,
    },
    /// Make `link` a symlink to `dest`, backing up what is in its place first.
    Link {
        /// The symlink to create.
        link: PathBuf,
        /// Its content: the source file through `from` as written.
        dest: PathBuf,
        /// What stands there now.
        in_way: Option<InTheWay>,
    },
    /// Remove `link`, a link into `from` whose source file no longer exists.
    RemoveStale {
        /// The dangling link.
        link: PathBuf,
        /// Where it points.
        dest: PathBuf,
    },
}

impl Describe for Change {
    fn describe(&self, tense: Tense) -> String {
        let done = tense == Tense::Done;
        let verb = |now: &str, past: &str| if done { past } else { now }.to_string();
        let back_up = |w: &InTheWay, at: &Path| {
            if done {
                format!(
                    "backed up the {w} at {} under {BACKUP_DIR} and",
                    at.display()
                )
            } else {
                format!("back up the {w} at {} and", at.display())
            }
        };
        match self {
            Change::Dir { dir, in_way: None } => {
                format!("{} directory {}", verb("create", "created"), dir.display())
            }
            Change::Dir {
                dir,
                in_way: Some(w),
            } => format!(
                "{} {} a directory there",
                back_up(w, dir),
                verb("create", "created")
            ),
            Change::Link { link, dest, in_way } => format!(
                "{}{} {} -> {}",
                in_way.map(|w| back_up(&w, link) + " ").unwrap_or_default(),
                verb("link", "linked"),
                if in_way.is_some() {
                    "it".to_string()
                } else {
                    link.display().to_string()
                },
                dest.display()
            ),
            Change::RemoveStale { link, dest } => format!(
                "{} {} -> {} (its source is gone)",
                verb("remove", "removed"),
                link.display(),
                dest.display()
            ),
        }
    }
}

impl Step for Links<'_> {
    const NAME: &'static str = "links";
    type Change = Change;

    fn plan(&self, ctx: &Ctx) -> Result<Plan<Change>> {
        let mut p = Planner::default();
        for (index, link) in self.cfg.iter().enumerate() {
            plan_one(ctx, index, link, &mut p).with_context(|| format!("links[{index}]"))?;
        }
        Ok(p.finish())
    }

    fn apply(ctx: &Ctx, changes: &[Change], done: &mut Done<Change>) -> Result<()> {
        for change in changes {
            apply_one(ctx, change)?;
            done.record(change);
        }
        Ok(())
    }
}

/// What `lstat` says is at `host`, if anything.
fn what_is(host: &Path) -> Result<Option<(InTheWay, fs::Metadata)>> {
    match fs::symlink_metadata(host) {
        Ok(m) => {
            let t = m.file_type();
            let kind = if t.is_symlink() {
                InTheWay::Symlink
            } else if t.is_dir() {
                InTheWay::Directory
            } else if t.is_file() {
                InTheWay::File
            } else {
                InTheWay::Special
            };
            Ok(Some((kind, m)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot inspect {}", host.display())),
    }
}

/// One entry of the config, with its directories resolved on this machine.
struct Entry<'a> {
    /// Its place in `links`, to name it.
    index: usize,
    link: &'a Link,
    /// The source directory `from` names, symlinks followed.
    src_host: PathBuf,
    /// The target directory `to` names, symlinks followed.
    to_host: PathBuf,
}

/// What an entry wants at a target path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Want {
    Dir,
    /// A symlink with this content.
    Link(PathBuf),
}

impl fmt::Display for Want {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Want::Dir => f.write_str("a directory"),
            Want::Link(dest) => write!(f, "a link -> {}", dest.display()),
        }
    }
}

/// The entry that first wanted something at a target path.
struct Claim {
    entry: usize,
    /// The path as that entry's `to` writes it.
    target: PathBuf,
    want: Want,
}

/// The plan of all entries so far, and what they want where, by host path.
#[derive(Default)]
struct Planner {
    plan: Plan<Change>,
    claims: BTreeMap<PathBuf, Claim>,
    /// Host path and place in `plan.changes` of each `RemoveStale`: another entry may claim the
    /// path later, or find the same link stale.
    stale: Vec<(PathBuf, usize)>,
}

impl Planner {
    /// Record that `entry` wants `want` at `target` (host path `host`). `false`: an earlier
    /// entry wants the same thing there, and the change, if one is needed, is planned already.
    /// Different wishes for one path, or a link above a path another entry needs, are refused.
    fn claim(&mut self, entry: usize, target: &Path, host: &Path, want: Want) -> Result<bool> {
        let new = Claim {
            entry,
            target: target.to_path_buf(),
            want,
        };
        if let Some(c) = self.claims.get(host) {
            if c.want == new.want {
                return Ok(false);
            }
            return Err(conflict(c, &new));
        }
        for up in host.ancestors().skip(1) {
            if let Some(
                c @ Claim {
                    want: Want::Link(_),
                    ..
                },
            ) = self.claims.get(up)
            {
                return Err(conflict(c, &new));
            }
        }
        if let Want::Link(_) = new.want {
            // Paths below `host` sort right after it (`Path` orders by components).
            let next = self
                .claims
                .range::<Path, _>((Bound::Excluded(host), Bound::Unbounded))
                .next();
            if let Some((below, c)) = next {
                if below.starts_with(host) {
                    return Err(conflict(&new, c));
                }
            }
        }
        self.claims.insert(host.to_path_buf(), new);
        Ok(true)
    }

    /// The plan, without the removal of a stale link at a path an entry claims (it makes
    /// that path what the entry wants) and without a second removal of the same link.
    fn finish(self) -> Plan<Change> {
        let mut seen = HashSet::new();
        let drop: HashSet<usize> = self
            .stale
            .iter()
            .filter(|(host, _)| self.claims.contains_key(host) || !seen.insert(host))
            .map(|(_, at)| *at)
            .collect();
        let mut plan = self.plan;
        plan.changes = std::mem::take(&mut plan.changes)
            .into_iter()
            .enumerate()
            .filter(|(at, _)| !drop.contains(at))
            .map(|(_, c)| c)
            .collect();
        plan
    }
}

/// The refusal of two claims, `upper` at or above `lower`'s path, one of them the entry being
/// planned (which the error's context names).
fn conflict(upper: &Claim, lower: &Claim) -> anyhow::Error {
    let earlier = upper.entry.min(lower.entry);
    let lower_at = if lower.target == upper.target {
        String::new()
    } else {
        format!(" at {}, below it", lower.target.display())
    };
    anyhow::anyhow!(
        "conflicts with links[{earlier}] at {}: links[{}] wants {} there, links[{}] {}{lower_at}; \
         refusing, as each run would undo the other",
        upper.target.display(),
        upper.entry,
        upper.want,
        lower.entry,
        lower.want,
    )
}

/// `host` as the target system sees it.
fn as_target(ctx: &Ctx, host: &Path) -> PathBuf {
    Path::new("/").join(host.strip_prefix(ctx.root.dir()).unwrap_or(host))
}

/// Refuse an entry whose source and target are one directory, or one inside the other: its
/// links would point at themselves, or the source would fill with links to itself.
fn refuse_overlap(ctx: &Ctx, e: &Entry) -> Result<()> {
    let (from, to) = (&e.link.from, &e.link.to);
    let src = as_target(ctx, &e.src_host);
    let dst = as_target(ctx, &e.to_host);
    if e.src_host == e.to_host {
        bail!(
            "source {from} resolves to {}, the target {to} itself: every file there would be \
             replaced by a link to itself; refusing",
            src.display()
        );
    }
    if e.src_host.starts_with(&e.to_host) {
        bail!(
            "source {from} resolves to {}, inside the target {to} ({}); refusing",
            src.display(),
            dst.display()
        );
    }
    if e.to_host.starts_with(&e.src_host) {
        bail!(
            "target {to} resolves to {}, inside the source {from} ({}); refusing",
            dst.display(),
            src.display()
        );
    }
    Ok(())
}

fn plan_one(ctx: &Ctx, index: usize, link: &Link, p: &mut Planner) -> Result<()> {
    let src_host = ctx.root.resolve(&link.from)?;
    if !src_host.is_dir() {
        bail!(
            "source {} is not a directory (is /opt in place?)",
            link.from
        );
    }
    // `to` itself must be a real directory (it is `/etc`); everything below it is checked
    // here, so host paths below it are built by joining, never by resolving through links.
    let to_host = ctx.root.resolve(&link.to)?;
    if !to_host.is_dir() && to_host.exists() {
        bail!("target {} is not a directory", link.to);
    }
    let e = Entry {
        index,
        link,
        src_host,
        to_host,
    };
    refuse_overlap(ctx, &e)?;
    if p.claim(index, &link.to, &e.to_host, Want::Dir)? && !e.to_host.exists() {
        p.plan.changes.push(Change::Dir {
            dir: link.to.to_path_buf(),
            in_way: None,
        });
    }
    walk(&e, Path::new(""), false, p)
}

/// Plan the directory `rel` (relative to `from` and `to`). `fresh` says that the target
/// directory will be created by an earlier change, so everything below it is missing.
fn walk(e: &Entry, rel: &Path, fresh: bool, p: &mut Planner) -> Result<()> {
    let link = e.link;
    let src_dir = e.src_host.join(rel);
    let mut entries: Vec<(std::ffi::OsString, fs::FileType)> = fs::read_dir(&src_dir)
        .with_context(|| format!("cannot read {}", link.from.join(rel).display()))?
        .map(|e| {
            let e = e?;
            Ok((e.file_name(), e.file_type()?))
        })
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("cannot read {}", link.from.join(rel).display()))?;
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, ftype) in &entries {
        let rel = rel.join(name);
        let target = link.to.join(&rel);
        let host = e.to_host.join(&rel);
        let found = if fresh { None } else { what_is(&host)? };
        if ftype.is_dir() {
            let first = p.claim(e.index, &target, &host, Want::Dir)?;
            let sub_fresh = match &found {
                Some((InTheWay::Directory, _)) => false,
                other => {
                    if first {
                        p.plan.changes.push(Change::Dir {
                            dir: target,
                            in_way: other.as_ref().map(|(kind, _)| *kind),
                        });
                    }
                    true
                }
            };
            walk(e, &rel, sub_fresh, p)?;
        } else {
            // Files and symlinks of the source alike: consumers follow the link.
            let dest = link.from.join(&rel);
            if !p.claim(e.index, &target, &host, Want::Link(dest.clone()))? {
                continue;
            }
            warn_ignored(&target, &e.src_host.join(&rel), &mut p.plan);
            let in_way = match &found {
                None => None,
                Some((InTheWay::Symlink, _)) => {
                    let cur = fs::read_link(&host)
                        .with_context(|| format!("cannot read link {}", target.display()))?;
                    if cur == dest {
                        continue;
                    }
                    Some(InTheWay::Symlink)
                }
                Some((kind, _)) => Some(*kind),
            };
            p.plan.changes.push(Change::Link {
                link: target,
                dest,
                in_way,
            });
        }
    }
    if !fresh {
        stale_links(e, rel, &entries, p)?;
    }
    Ok(())
}

/// Links in the target directory `rel` that point into `from` at a file that is gone: names
/// the source directory no longer has, and everything below target directories whose source
/// directory is gone as a whole.
fn stale_links(
    e: &Entry,
    rel: &Path,
    src_entries: &[(std::ffi::OsString, fs::FileType)],
    p: &mut Planner,
) -> Result<()> {
    let link = e.link;
    let mut stale = Vec::new();
    let mut todo = vec![(rel.to_path_buf(), true)];
    while let Some((dir, top)) = todo.pop() {
        let Ok(rd) = fs::read_dir(e.to_host.join(&dir)) else {
            continue;
        };
        for de in rd {
            let de = de.with_context(|| format!("cannot read {}", link.to.join(&dir).display()))?;
            if top && src_entries.iter().any(|(n, _)| *n == de.file_name()) {
                continue;
            }
            let Ok(t) = de.file_type() else { continue };
            if t.is_dir() {
                todo.push((dir.join(de.file_name()), false));
            } else if t.is_symlink() {
                let Ok(dest) = fs::read_link(de.path()) else {
                    continue;
                };
                if dest.starts_with(&*link.from) {
                    let change = Change::RemoveStale {
                        link: link.to.join(&dir).join(de.file_name()),
                        dest,
                    };
                    stale.push((de.path(), change));
                }
            }
        }
    }
    stale.sort_by_key(|(_, c)| c.describe(Tense::Plan));
    for (host, change) in stale {
        p.stale.push((host, p.plan.changes.len()));
        p.plan.changes.push(change);
    }
    Ok(())
}

/// Warn about files that cron or logrotate will silently ignore once linked.
fn warn_ignored(target: &Path, src_host: &Path, plan: &mut Plan<Change>) {
    let Some(dir) = target.parent() else { return };
    let in_cron = dir == Path::new("/etc/cron.d");
    let in_logrotate = dir == Path::new("/etc/logrotate.d");
    if !in_cron && !in_logrotate {
        return;
    }
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    if in_cron
        && !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        plan.warnings.push(format!(
            "{}: cron ignores files in cron.d whose names are not run-parts-clean (letters, digits, _ and - only)",
            target.display()
        ));
    }
    if let Ok(m) = fs::metadata(src_host) {
        let consumer = if in_cron { "cron" } else { "logrotate" };
        if m.uid() != 0 {
            plan.warnings.push(format!(
                "{}: {consumer} ignores it: owned by uid {}, not root",
                target.display(),
                m.uid()
            ));
        }
        if m.permissions().mode() & 0o022 != 0 {
            plan.warnings.push(format!(
                "{}: {consumer} ignores it: group- or world-writable (mode {:o})",
                target.display(),
                m.permissions().mode() & 0o7777
            ));
        }
    }
}

/// Move what is at `target` (host path `host`) under the backup directory, keeping its path.
///
/// The backup tree holds earlier backups, symlinks among them (a migrated VM's directory
/// link), so its path is walked without following anything: a part that is not a real
/// directory, or a name already taken, gets the next free `name.N` instead.
fn back_up(ctx: &Ctx, target: &Path, host: &Path) -> Result<PathBuf> {
    let base = ctx.root.path(Path::new(BACKUP_DIR))?;
    fs::create_dir_all(&base).with_context(|| format!("cannot create {}", base.display()))?;
    let parts: Vec<_> = target.strip_prefix("/").unwrap_or(target).iter().collect();
    let mut dest = base;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let mut n = 0;
        dest = loop {
            let mut name = part.to_os_string();
            if n > 0 {
                name.push(format!(".{n}"));
            }
            let cand = dest.join(name);
            match fs::symlink_metadata(&cand) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if !last {
                        fs::create_dir(&cand)
                            .with_context(|| format!("cannot create {}", cand.display()))?;
                    }
                    break cand;
                }
                Ok(m) if !last && m.is_dir() => break cand,
                Ok(_) => n += 1,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot inspect {}", cand.display()))
                }
            }
        };
    }
    fs::rename(host, &dest)
        .with_context(|| format!("cannot move {} to {}", target.display(), dest.display()))?;
    Ok(dest)
}

fn apply_one(ctx: &Ctx, change: &Change) -> Result<()> {
    match change {
        Change::Dir { dir, in_way } => {
            let host = ctx.root.path(dir)?;
            if in_way.is_some() && what_is(&host)?.is_some() {
                back_up(ctx, dir, &host)?;
            }
            fs::create_dir(&host)
                .with_context(|| format!("cannot create directory {}", dir.display()))
        }
        Change::Link { link, dest, in_way } => {
            let host = ctx.root.path(link)?;
            if in_way.is_some() && what_is(&host)?.is_some() {
                back_up(ctx, link, &host)?;
            }
            std::os::unix::fs::symlink(dest, &host)
                .with_context(|| format!("cannot link {} -> {}", link.display(), dest.display()))
        }
        Change::RemoveStale { link, .. } => {
            let host = ctx.root.path(link)?;
            fs::remove_file(&host).with_context(|| format!("cannot remove {}", link.display()))
        }
    }
}
