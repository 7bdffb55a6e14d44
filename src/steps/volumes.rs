//! The volumes step: find each data disk, format it only if it is provably blank, mount it and
//! persist the mount in `/etc/fstab`.
//!
//! A data volume carries `/opt` (and a database's data) from one VM to the next, so the rule
//! above all others is that a disk holding anything is never formatted. "Blank" is a proof in
//! three parts, all of which must hold:
//! - no signature: `blkid -p` finds no filesystem, partition table, RAID member, LVM physical
//!   volume, LUKS header, swap or other signature ([`crate::sys::blockdev`]);
//! - no user in the kernel: no partitions in sysfs, holders, loop devices over it, mounts in
//!   any mount namespace, swap, open file handles, and an `O_EXCL` open succeeds; a partition
//!   must not overlap another partition ([`crate::sys::inuse`]);
//! - only zeros where data would be: both ends, the secondary headers of the common formats,
//!   a sample across the disk ([`crate::sys::blank`]).
//!
//! `plan` makes the whole proof too, so it never promises a format that `apply` must refuse.
//! `apply` makes it again under the whole-disk lock ([`crate::sys::mkfs::DiskLock`]), reads
//! both ends once more, runs `mkfs` with a UUID chosen at plan time and, still under the lock,
//! checks that the device now carries exactly that filesystem, UUID and label. A disk holding
//! exactly the configured filesystem is used as it is, unless another device carries the same
//! UUID (a copied volume: the fstab line by UUID could mount either at boot); a disk holding
//! anything else, or in use, makes the volume fail with what was found, and nothing is written
//! to it.
//!
//! Each volume is handled on its own: one that fails does not stop the others; the step fails
//! at the end with the errors of all failed volumes. `plan` finds and probes the devices
//! (waiting for late disks as `apply` would) but formats, mounts and writes nothing.
//!
//! Under `--root DIR` the mountpoint and `/etc/fstab` are the target's, the device is the
//! running system's, and the device is mounted at `DIR/<mountpoint>`: the volume then sits
//! in the target tree where the target will see it after boot, so the steps that follow
//! (`opt` unpacking into `/1/opt`) write onto the volume, not into the target's root
//! filesystem below it. The fstab line names the mountpoint as the target sees it (`/1`).

use super::{Ctx, Describe, Done, Plan, Step, Tense, Verb};
use crate::config::{self, AbsPath, Filesystem, FormatPolicy};
use crate::sys::blockdev::{self, Device, Probe};
use crate::sys::{blank, cmd, fs, fstab, inuse, mkfs, mount};
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The volumes step.
pub struct Volumes<'a> {
    /// Its config.
    pub cfg: &'a [config::Volume],
}

/// One change to one volume; the volume is named by its mountpoint. Each carries everything
/// `apply` needs.
#[derive(Debug, Clone)]
pub enum Change {
    /// Put the configured filesystem on a device proven blank.
    Format {
        /// The volume.
        mountpoint: AbsPath,
        /// The blank device.
        dev: Device,
        /// Filesystem to create.
        fs: Filesystem,
        /// Its label.
        label: Option<String>,
        /// The UUID to give it, chosen by `plan`, so the fstab line can name it.
        uuid: String,
    },
    /// Mount the device at the mountpoint, creating the directory.
    Mount {
        /// Where, as the target sees it (and the volume's name).
        mountpoint: AbsPath,
        /// Where, on this machine.
        target: PathBuf,
        /// The device.
        dev: Device,
        /// Its filesystem.
        fs: Filesystem,
        /// The UUID the filesystem must have.
        uuid: String,
        /// fstab-style mount options.
        options: Vec<String>,
    },
    /// Add the fstab line, or replace the lines for the mountpoint that differ.
    Fstab {
        /// The volume.
        mountpoint: AbsPath,
        /// The fstab file on this machine.
        file: PathBuf,
        /// The line to hold.
        entry: fstab::Entry,
        /// What `plan` found it takes: [`fstab::Edit::Add`] or [`fstab::Edit::Replace`].
        edit: fstab::Edit,
    },
}

impl Change {
    /// The mountpoint of the volume this change belongs to.
    fn volume(&self) -> &AbsPath {
        match self {
            Change::Format { mountpoint, .. }
            | Change::Mount { mountpoint, .. }
            | Change::Fstab { mountpoint, .. } => mountpoint,
        }
    }
}

/// " (label X)" or nothing.
fn label_note(label: &Option<String>) -> String {
    label
        .as_ref()
        .map(|l| format!(" (label {l})"))
        .unwrap_or_default()
}

impl Describe for Change {
    fn describe(&self, tense: Tense) -> String {
        let t = |v| tense.of(v);
        let table = fstab::PATH;
        match self {
            Change::Format { dev, fs, label, .. } => {
                format!(
                    "{} {dev} as {}{}",
                    t(Verb::Format),
                    fs.name(),
                    label_note(label)
                )
            }
            Change::Mount {
                dev, mountpoint, ..
            } => format!("{} {dev} at {mountpoint}", t(Verb::Mount)),
            Change::Fstab {
                mountpoint,
                edit: fstab::Edit::Replace(old),
                ..
            } => format!(
                "{} the {table} line for {mountpoint} and {} the old {}: {}",
                t(Verb::Replace),
                t(Verb::Comment),
                if old.len() == 1 { "line" } else { "lines" },
                old.join(" | ")
            ),
            Change::Fstab { mountpoint, .. } => {
                format!("{} {mountpoint} to {table}", t(Verb::Add))
            }
        }
    }
}

impl Step for Volumes<'_> {
    const NAME: &'static str = "volumes";
    type Change = Change;

    fn plan(&self, ctx: &Ctx) -> Result<Plan<Change>> {
        let mut plan = Plan::default();
        for v in self.cfg {
            match observe(ctx, v, &mut plan.warnings) {
                Ok(changes) => plan.changes.extend(changes),
                Err(e) => plan.failures.push(format!("{}: {e:#}", v.mountpoint)),
            }
        }
        Ok(plan)
    }

    fn apply(ctx: &Ctx, changes: &[Change], done: &mut Done<Change>) -> Result<()> {
        let mut failed: Vec<(AbsPath, String)> = Vec::new();
        // The mounts made in this run: a volume that fails after its mount is unmounted again.
        let mut mounted: Vec<&Change> = Vec::new();
        for c in changes {
            if failed.iter().any(|(m, _)| m == c.volume()) {
                continue;
            }
            let (made, ended) = make(ctx, c);
            if made {
                done.record(c);
                if matches!(c, Change::Mount { .. }) {
                    mounted.push(c);
                }
            }
            if let Err(e) = ended {
                let undone = mounted
                    .iter()
                    .find(|m| m.volume() == c.volume())
                    .map(|m| undo_mount(m, done))
                    .unwrap_or_default();
                failed.push((c.volume().clone(), format!("{e:#}{undone}")));
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        let lines: Vec<String> = failed.iter().map(|(m, e)| format!("{m}: {e}")).collect();
        if lines.len() == 1 {
            Err(anyhow!("{}", lines[0]))
        } else {
            Err(anyhow!(
                "{} volumes failed: {}",
                lines.len(),
                lines.join("; ")
            ))
        }
    }
}

/// Make one change: whether it was made (not when it turns out to be made already; a format
/// is made once mkfs succeeded, whatever follows), and how it ended.
fn make(ctx: &Ctx, c: &Change) -> (bool, Result<()>) {
    let split = |r: Result<bool>| match r {
        Ok(made) => (made, Ok(())),
        Err(e) => (false, Err(e)),
    };
    match c {
        Change::Format {
            dev,
            fs,
            label,
            uuid,
            ..
        } => match format(ctx, dev, *fs, label.as_deref(), uuid) {
            // Checked still under the lock, which is released after.
            Ok(_lock) => (true, check_format(ctx, dev, *fs, label.as_deref(), uuid)),
            Err(e) => (false, Err(e)),
        },
        Change::Mount {
            target,
            dev,
            fs,
            uuid,
            options,
            ..
        } => split(mount_volume(ctx, dev, *fs, uuid, target, options)),
        Change::Fstab {
            file, entry, edit, ..
        } => split(persist(file, entry, edit)),
    }
}

/// Unmount what `mount` (a [`Change::Mount`] made in this run) mounted, since a later change
/// of its volume failed, and take it out of the report; what to add to the error.
fn undo_mount(mount: &Change, done: &mut Done<Change>) -> String {
    let Change::Mount { target, dev, .. } = mount else {
        return String::new();
    };
    match mount::unmount(target) {
        Ok(()) => {
            let line = mount.describe(Tense::Done);
            done.lines.retain(|l| *l != line);
            format!(" (unmounted {dev} from {} again)", target.display())
        }
        Err(e) => format!(" ({dev} stays mounted at {}: {e:#})", target.display()),
    }
}
/// The fstab line for a volume whose filesystem has `uuid`.
fn entry(v: &config::Volume, uuid: &str) -> fstab::Entry {
    let mut options: Vec<&str> = v
        .options
        .iter()
        .map(String::as_str)
        .filter(|o| *o != "nofail")
        .collect();
    if options.is_empty() {
        options.push("defaults");
    }
    // A missing disk must never stop the boot.
    options.push("nofail");
    fstab::Entry {
        spec: format!("UUID={uuid}"),
        file: v.mountpoint.to_string(),
        vfstype: v.filesystem.name().into(),
        options: options.join(","),
        passno: 2,
    }
}

/// Whether `dev` is mounted at `target`. An error when it is held (device-mapper, md), when a
/// partition of it is mounted, or when it is mounted elsewhere but not at `target`. Once it is
/// mounted at `target`, other mounts of it are bind mounts made from the volume (the opt
/// step's `/opt`) and are expected.
fn mounted_at_target(dev: &Device, target: &Path, holds: &str) -> Result<bool> {
    let usage = blockdev::usage(dev)?;
    if !usage.holders.is_empty() {
        bail!(
            "{dev} is in use by {} (it holds {holds}); leaving it alone",
            usage.holders.join(", ")
        );
    }
    let list = |ms: &[mount::MountInfo]| {
        ms.iter()
            .map(|m| format!("{} at {}", m.source, m.target.display()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !usage.partition_mounts.is_empty() {
        bail!(
            "partitions of {dev} are mounted ({}); leaving it alone",
            list(&usage.partition_mounts)
        );
    }
    if let Some(m) = usage
        .mounts
        .iter()
        .find(|m| m.target == target && m.fs_root != Path::new("/"))
    {
        // The fstab line mounts the whole filesystem: what is written below the target now
        // would not be there after a reboot.
        bail!(
            "{dev} is mounted at {} from its directory {}, not as a whole; unmount it first",
            target.display(),
            m.fs_root.display()
        );
    }
    let here = usage.mounts.iter().any(|m| m.target == target);
    if !here && !usage.mounts.is_empty() {
        bail!(
            "{dev} is already mounted elsewhere ({}); unmount it first, olboot mounts it only at {}",
            list(&usage.mounts),
            target.display()
        );
    }
    Ok(here)
}

/// Fail if something other than `dev` is mounted at `target`.
fn check_target_free(dev: &Device, target: &Path) -> Result<()> {
    if let Some(m) = mount::at(target)? {
        if m.dev != dev.dev() {
            bail!(
                "{} is already mounted at {} ({}); refusing to mount {dev} over it",
                m.source,
                target.display(),
                m.fstype
            );
        }
    }
    Ok(())
}

/// How long a device must stay in use before olboot calls it busy: udev, `blkid` or
/// `losetup` run by someone else open a new disk for a moment.
const BUSY_FOR: Duration = Duration::from_secs(1);

/// Fail when anything in the kernel uses `dev` for longer than [`BUSY_FOR`], naming every
/// user; `doing` is what olboot refuses ("format", "mount"). `then` runs after each look that
/// found nothing, and is itself retried: it re-reads what a user that just left may have
/// written.
fn check_unused(dev: &Device, doing: &str, mut then: impl FnMut() -> Result<()>) -> Result<()> {
    let deadline = Instant::now() + BUSY_FOR;
    loop {
        let users = inuse::users(dev)?;
        if users.is_empty() {
            return then();
        }
        if Instant::now() >= deadline {
            bail!(
                "{dev} is in use: {}; refusing to {doing} it",
                users.join("; ")
            );
        }
        crate::sys::signal::sleep(Duration::from_millis(50))?;
    }
}

/// Fail unless every byte of `regions` of `dev` is zero; the error says where data was found
/// and how an operator who does not need it clears the disk.
fn check_zeros(dev: &Device, regions: &[blank::Region]) -> Result<()> {
    let f = std::fs::File::open(&dev.path).with_context(|| format!("cannot open {dev}"))?;
    if let Some(found) = blank::first_nonzero_in(&f, regions, &dev.to_string())? {
        bail!(
            "{dev} carries no signature blkid knows, but it is not blank: non-zero bytes at \
             byte {} ({}); refusing to format it. If nothing on it is needed, zero it \
             (`blkdiscard -z {dev}`, or `dd if=/dev/zero of={dev} bs=1M oflag=direct`; \
             `wipefs -a` removes signatures only) and run olboot again",
            found.offset,
            found.why
        );
    }
    Ok(())
}

/// The rest of the blank proof of a device `blkid` found no signature on: the kernel (cheap),
/// then the content.
fn prove_blank(dev: &Device) -> Result<()> {
    let size = dev.size()?;
    check_unused(dev, "format", || {
        let t = Instant::now();
        check_zeros(dev, &blank::regions(size))?;
        log::debug!("{dev}: {size} bytes, zero where read, in {:?}", t.elapsed());
        Ok(())
    })
}

/// The changes one volume needs; an error when it cannot be converged.
fn observe(ctx: &Ctx, v: &config::Volume, warnings: &mut Vec<String>) -> Result<Vec<Change>> {
    let target = mount_target(&ctx.root.path(&v.mountpoint)?);
    let (candidate, dev) = blockdev::wait_for(&v.device, v.wait.0)?;
    if candidate != dev.path {
        log::info!("{}: {} is {dev}", v.mountpoint, candidate.display());
    }
    let probe = blockdev::probe(&dev, ctx.root)?;
    let mounted_here = mounted_at_target(&dev, &target, &probe.to_string())?;
    check_target_free(&dev, &target)?;
    let mut changes = Vec::new();
    let uuid = if probe.is_blank() {
        let format = blank_volume(v, &dev, &target, mounted_here)?;
        let uuid = format.1.clone();
        changes.push(format.0);
        uuid
    } else {
        existing_volume(v, &dev, &probe, mounted_here)?
    };
    let file = ctx.root.path(Path::new(fstab::PATH))?;
    let content = fs::read_optional(&file)?.unwrap_or_default();
    let entry = entry(v, &uuid);
    let edit = fstab::plan(&content, &entry);
    if !probe.is_blank() {
        let converged = mounted_here && edit == fstab::Edit::Unchanged;
        check_one_uuid(ctx, &dev, &uuid, converged, warnings)?;
    }
    if edit != fstab::Edit::Unchanged {
        // Checked now, not when writing: a disk formatted and mounted whose line cannot be
        // written is a half-done volume.
        fs::check_writable(&file).with_context(|| {
            format!(
                "{dev} would be mounted without its line in {}; refusing to format or mount it",
                fstab::PATH
            )
        })?;
    }
    if !mounted_here {
        check_mountpoint(&target, v, &dev, warnings)?;
        changes.push(Change::Mount {
            mountpoint: v.mountpoint.clone(),
            target,
            dev,
            fs: v.filesystem,
            uuid: uuid.clone(),
            options: v.options.clone(),
        });
    }
    if edit != fstab::Edit::Unchanged {
        changes.push(Change::Fstab {
            mountpoint: v.mountpoint.clone(),
            file,
            entry,
            edit,
        });
    }
    Ok(changes)
}

/// `path` as mountinfo will name it once mounted: the directories above it with symlinks
/// resolved (live, [`crate::root::Root::path`] resolves nothing), the part of them that does
/// not exist yet kept as it is (it is created so), the last component left alone (a symlink
/// there is refused by [`check_mountpoint`]).
fn mount_target(path: &Path) -> PathBuf {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return path.to_path_buf();
    };
    for above in dir.ancestors() {
        if let Ok(real) = std::fs::canonicalize(above) {
            let rest = dir.strip_prefix(above).unwrap_or(Path::new(""));
            return real.join(rest).join(name);
        }
    }
    path.to_path_buf()
}

/// The format of a device without signature, once it is proven blank, and its new UUID.
fn blank_volume(
    v: &config::Volume,
    dev: &Device,
    target: &Path,
    mounted_here: bool,
) -> Result<(Change, String)> {
    if mounted_here {
        bail!(
            "{dev} is mounted at {} but carries no signature",
            target.display()
        );
    }
    prove_blank(dev)?;
    if v.format == FormatPolicy::Never {
        bail!("{dev} is blank and the volume says `format: never`; not formatting it");
    }
    let mkfs = format!("mkfs.{}", v.filesystem.name());
    if !cmd::exists(&mkfs) {
        bail!("{dev} is blank but {mkfs} is not installed, so it cannot be formatted");
    }
    let uuid = mkfs::new_uuid()?;
    let change = Change::Format {
        mountpoint: v.mountpoint.clone(),
        dev: dev.clone(),
        fs: v.filesystem,
        label: v.label.clone(),
        uuid: uuid.clone(),
    };
    Ok((change, uuid))
}

/// The UUID of a device that already holds the configured filesystem, unused by anyone else;
/// an error for anything else.
fn existing_volume(
    v: &config::Volume,
    dev: &Device,
    probe: &Probe,
    mounted_here: bool,
) -> Result<String> {
    let fs = v.filesystem.name();
    if probe.filesystem() != Some(fs) {
        bail!(
            "{dev} is not blank: it holds {probe}, not an {fs} filesystem; \
             refusing to format or mount it (nothing was written to it)"
        );
    }
    if !mounted_here {
        // Mounted in another mount namespace, under a loop device, open: not ours to mount.
        check_unused(dev, "mount", || Ok(()))?;
    }
    Ok(probe
        .uuid()
        .with_context(|| format!("{dev} holds {probe} but blkid reports no UUID"))?
        .to_string())
}

/// Fail when another device carries `uuid` too (a copy of the volume): the fstab line by UUID
/// could mount either at boot. A volume already mounted and persisted (`converged`) only gets
/// a warning: olboot would change nothing, and failing would stop the steps after it.
fn check_one_uuid(
    ctx: &Ctx,
    dev: &Device,
    uuid: &str,
    converged: bool,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let others = blockdev::others_with_uuid(dev, uuid, ctx.root)?;
    if others.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = others.iter().map(|d| d.to_string()).collect();
    let why = format!(
        "{dev} and {} carry the same UUID (a copy of the volume?): the line UUID={uuid} in {} \
         could mount either at boot (give the copy a new UUID: tune2fs -U random, xfs_admin -U \
         generate)",
        names.join(", "),
        fstab::PATH
    );
    if !converged {
        bail!("{why}; refusing to mount or persist {dev}");
    }
    warnings.push(why);
    Ok(())
}

/// Fail when the mountpoint exists and is not a directory; warn when it is not empty.
fn check_mountpoint(
    target: &Path,
    v: &config::Volume,
    dev: &Device,
    warnings: &mut Vec<String>,
) -> Result<()> {
    match std::fs::symlink_metadata(target) {
        Ok(m) if !m.is_dir() => bail!(
            "the mountpoint {} exists and is not a directory",
            target.display()
        ),
        Ok(_) => {
            let mut entries = std::fs::read_dir(target)
                .with_context(|| format!("cannot read {}", target.display()))?;
            if entries.next().is_some() {
                warnings.push(format!(
                    "{} is not empty: its files will be hidden under the mount of {dev}",
                    v.mountpoint
                ));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot stat {}", target.display())),
    }
}

/// Format `dev` under the whole-disk lock, after proving once more that it is blank; the lock
/// is returned, for [`check_format`] to run under it.
fn format(
    ctx: &Ctx,
    dev: &Device,
    fs: Filesystem,
    label: Option<&str>,
    uuid: &str,
) -> Result<mkfs::DiskLock> {
    match blockdev::present(&dev.path)? {
        Some(d) if d == *dev => {}
        _ => bail!("{dev} is gone or changed since it was probed; not formatting it"),
    }
    let lock = mkfs::DiskLock::take(dev)?;
    let probe = blockdev::probe(dev, ctx.root)?;
    if !probe.is_blank() {
        bail!("{dev} is no longer blank (it holds {probe}); refusing to format it");
    }
    prove_blank(dev)?;
    // A writer usually starts at one end: read both ends again, ask the kernel for users,
    // and read the first and last MiB a last time, right before mkfs opens the device.
    let size = dev.size()?;
    check_zeros(dev, &blank::ends(size, blank::END))?;
    let edges = blank::ends(size, 1 << 20);
    check_unused(dev, "format", || check_zeros(dev, &edges))?;
    mkfs::make(ctx.root, fs.name(), dev, label, uuid)?;
    Ok(lock)
}

/// Fail unless `dev`, just formatted, holds the filesystem with `uuid` and `label`.
fn check_format(
    ctx: &Ctx,
    dev: &Device,
    fs: Filesystem,
    label: Option<&str>,
    uuid: &str,
) -> Result<()> {
    let after = blockdev::probe(dev, ctx.root)?;
    let ok = after.filesystem() == Some(fs.name())
        && after.uuid() == Some(uuid)
        && blockdev::label(dev, ctx.root)?.as_deref() == label.map(str::as_bytes);
    if !ok {
        bail!(
            "after mkfs, {dev} holds {after}, not the {} filesystem with UUID {uuid}{} that \
             olboot made; not mounting it",
            fs.name(),
            label_note(&label.map(str::to_string))
        );
    }
    Ok(())
}

/// Mount `dev` at `target` and check it is mounted there and nowhere else, unmounting it
/// again when not; whether it was mounted (not when it is mounted there already).
fn mount_volume(
    ctx: &Ctx,
    dev: &Device,
    fs: Filesystem,
    uuid: &str,
    target: &Path,
    options: &[String],
) -> Result<bool> {
    let fs = fs.name();
    let probe = blockdev::probe(dev, ctx.root)?;
    if probe.filesystem() != Some(fs) || probe.uuid() != Some(uuid) {
        bail!("{dev} holds {probe}, not the {fs} filesystem with UUID {uuid}; not mounting it");
    }
    if mounted_at_target(dev, target, &probe.to_string())? {
        // Mounted since `plan` looked (by someone else): nothing left to do.
        return Ok(false);
    }
    check_target_free(dev, target)?;
    std::fs::create_dir_all(target)
        .with_context(|| format!("cannot create the mountpoint {}", target.display()))?;
    mount::mount_with(&dev.path, target, fs, options)?;
    check_mounted(dev, target).map_err(|e| match mount::unmount(target) {
        Ok(()) => anyhow!("{e:#} (unmounted {dev} from {} again)", target.display()),
        Err(u) => anyhow!("{e:#} ({dev} stays mounted at {}: {u:#})", target.display()),
    })?;
    Ok(true)
}

/// Fail unless `dev`, just mounted at `target`, is on top there and mounted nowhere else.
fn check_mounted(dev: &Device, target: &Path) -> Result<()> {
    match mount::at(target)? {
        Some(m) if m.dev == dev.dev() => {}
        other => bail!(
            "{dev} is not mounted at {} after mounting it (found {:?})",
            target.display(),
            other.map(|m| m.source)
        ),
    }
    // It was mounted nowhere before; any other mount now is a copy made by mount propagation
    // (a shared subtree), which would leave the volume reachable where nobody expects it.
    let others: Vec<String> = blockdev::usage(dev)?
        .mounts
        .iter()
        .filter(|m| m.target != target)
        .map(|m| m.target.display().to_string())
        .collect();
    if !others.is_empty() {
        bail!(
            "{dev} was mounted at {} but also appeared at {} (mount propagation)",
            target.display(),
            others.join(", ")
        );
    }
    Ok(())
}

/// Bring `file` to hold `entry` as `plan` found it takes (`edit`); whether it was written.
/// A file that changed since `plan` read it in a way that asks for another edit is an error.
fn persist(file: &Path, entry: &fstab::Entry, edit: &fstab::Edit) -> Result<bool> {
    let content = fs::read_optional(file)?.unwrap_or_default();
    let now = fstab::plan(&content, entry);
    if now == fstab::Edit::Unchanged {
        return Ok(false);
    }
    if now != *edit {
        bail!(
            "{} changed since it was read (it now needs {now:?}, not {edit:?}); not editing it",
            file.display()
        );
    }
    fs::write_atomic(file, fstab::apply(&content, entry).as_bytes(), 0o644)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::in_done_tense;

    fn volume(options: &[&str]) -> config::Volume {
        config::Volume {
            device: vec![AbsPath::parse("/dev/vdb").unwrap()],
            wait: config::Dur(std::time::Duration::from_secs(1)),
            filesystem: Filesystem::Ext4,
            label: Some("ol-data".into()),
            mountpoint: AbsPath::parse("/1").unwrap(),
            format: FormatPolicy::IfBlank,
            options: options.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn mount_targets_are_spelt_as_mountinfo_spells_them() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, d.path().join("link")).unwrap();
        let link = d.path().join("link");
        assert_eq!(mount_target(&link.join("1")), real.join("1"));
        assert_eq!(mount_target(&link.join("a/b/1")), real.join("a/b/1"));
        // The last component is not followed.
        assert_eq!(mount_target(&link), link);
        assert_eq!(mount_target(Path::new("/")), Path::new("/"));
    }

    #[test]
    fn fstab_line_always_has_nofail_once() {
        assert_eq!(
            entry(&volume(&[]), "abc").to_string(),
            "UUID=abc /1 ext4 defaults,nofail 0 2"
        );
        assert_eq!(
            entry(&volume(&["noatime", "nofail"]), "abc").to_string(),
            "UUID=abc /1 ext4 noatime,nofail 0 2"
        );
    }

    fn all_changes() -> Vec<Change> {
        let dev = Device {
            path: "/dev/vdb".into(),
            major: 254,
            minor: 16,
        };
        let v = volume(&[]);
        let fstab = |edit| Change::Fstab {
            mountpoint: v.mountpoint.clone(),
            file: "/etc/fstab".into(),
            entry: entry(&v, "u-1"),
            edit,
        };
        vec![
            Change::Format {
                mountpoint: v.mountpoint.clone(),
                dev: dev.clone(),
                fs: Filesystem::Ext4,
                label: v.label.clone(),
                uuid: "u-1".into(),
            },
            Change::Mount {
                mountpoint: v.mountpoint.clone(),
                target: "/1".into(),
                dev,
                fs: Filesystem::Ext4,
                uuid: "u-1".into(),
                options: vec![],
            },
            fstab(fstab::Edit::Add),
            fstab(fstab::Edit::Replace(vec![
                "/dev/sdb1 /1 ext4 defaults 0 2".into()
            ])),
        ]
    }

    #[test]
    fn changes_read_as_the_spec_writes_them() {
        let lines: Vec<String> = all_changes()
            .iter()
            .map(|c| c.describe(Tense::Plan))
            .collect();
        assert_eq!(
            lines,
            [
                "format /dev/vdb as ext4 (label ol-data)",
                "mount /dev/vdb at /1",
                "add /1 to /etc/fstab",
                "replace the /etc/fstab line for /1 and comment out the old line: \
                 /dev/sdb1 /1 ext4 defaults 0 2",
            ]
        );
    }

    #[test]
    fn report_lines_are_plan_lines_in_the_done_tense() {
        for c in all_changes() {
            let done = c.describe(Tense::Done);
            assert_eq!(in_done_tense(&c.describe(Tense::Plan)), done);
            assert_ne!(c.describe(Tense::Plan), done);
        }
        let mut d = Done::new("volumes");
        for c in &all_changes() {
            d.record(c);
        }
        assert_eq!(d.lines[0], "formatted /dev/vdb as ext4 (label ol-data)");
        assert_eq!(d.lines[2], "added /1 to /etc/fstab");
    }
}
