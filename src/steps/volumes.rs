//! The volumes step: find each data disk, format it only if it is blank, mount it and persist
//! the mount in `/etc/fstab`.
//!
//! A data volume carries `/opt` (and a database's data) from one VM to the next, so the rule
//! above all others is that a disk holding anything is never formatted. "Blank" is decided by
//! libblkid (`blkid -p`, see [`crate::sys::blockdev`]): any filesystem, partition table, RAID
//! member, LVM physical volume, LUKS header, swap or other known signature means "not blank".
//! A disk holding exactly the configured filesystem is used as it is; a disk holding anything
//! else, or in use (mounted elsewhere, held by device-mapper or md), makes the volume fail with
//! what was found, and nothing is written to it. A blank disk is probed again right before
//! `mkfs` runs, because `mkfs.ext4` overwrites a filesystem without asking when stdin is not a
//! terminal: that check is the only guard.
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

use super::{Ctx, Describe, Done, Plan, Step, Tense};
use crate::config::{self, AbsPath, Filesystem, FormatPolicy};
use crate::sys::blockdev::{self, Device};
use crate::sys::{chroot, cmd, fs, fstab, mount};
use anyhow::{anyhow, bail, Context, Result};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the target keeps its mount table.
const FSTAB: &str = "/etc/fstab";

/// The volumes step.
pub struct Volumes<'a> {
    /// Its config.
    pub cfg: &'a [config::Volume],
}

/// One change to one volume (`vol` is its index in the config).
#[derive(Debug, Clone)]
pub enum Change {
    /// Put the configured filesystem on a blank device.
    Format {
        /// The volume.
        vol: usize,
        /// The blank device.
        dev: Device,
        /// Filesystem to create.
        fs: Filesystem,
        /// Its label.
        label: Option<String>,
    },
    /// Mount the device at the mountpoint, creating the directory.
    Mount {
        /// The volume.
        vol: usize,
        /// The device.
        dev: Device,
        /// Where, as the target sees it.
        mountpoint: AbsPath,
    },
    /// Add the fstab line, or replace the lines for the mountpoint that differ.
    Fstab {
        /// The volume.
        vol: usize,
        /// The device, whose UUID the line names.
        dev: Device,
        /// The mountpoint.
        mountpoint: AbsPath,
        /// The old lines for the mountpoint that get commented out (none: the line is added).
        replaces: Vec<String>,
    },
}

impl Change {
    fn vol(&self) -> usize {
        match self {
            Change::Format { vol, .. } | Change::Mount { vol, .. } | Change::Fstab { vol, .. } => {
                *vol
            }
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

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Format { dev, fs, label, .. } => {
                write!(f, "format {dev} as {}{}", fs.name(), label_note(label))
            }
            Change::Mount {
                dev, mountpoint, ..
            } => write!(f, "mount {dev} at {mountpoint}"),
            Change::Fstab {
                mountpoint,
                replaces,
                ..
            } if replaces.is_empty() => write!(f, "add {mountpoint} to {FSTAB}"),
            Change::Fstab {
                mountpoint,
                replaces,
                ..
            } => write!(
                f,
                "replace the {FSTAB} line for {mountpoint} (commenting out: {})",
                replaces.join(" | ")
            ),
        }
    }
}

impl Step for Volumes<'_> {
    const NAME: &'static str = "volumes";
    type Change = Change;

    fn plan(&self, ctx: &Ctx) -> Result<Plan<Change>> {
        let mut plan = Plan::default();
        for (i, v) in self.cfg.iter().enumerate() {
            match observe(ctx, i, v, &mut plan.warnings) {
                Ok(changes) => plan.changes.extend(changes),
                Err(e) => plan.failures.push(format!("{}: {e:#}", v.mountpoint)),
            }
        }
        Ok(plan)
    }

    fn apply(&self, ctx: &Ctx, changes: &[Change], done: &mut Done<Change>) -> Result<()> {
        let mut failed: Vec<(usize, AbsPath, String)> = Vec::new();
        for c in changes {
            let vol = c.vol();
            if failed.iter().any(|(i, _, _)| *i == vol) {
                continue;
            }
            let v = self
                .cfg
                .get(vol)
                .with_context(|| format!("no volume number {vol} in the config"))?;
            let r = match &c {
                Change::Format { dev, .. } => format(ctx, dev, v, done),
                Change::Mount { dev, .. } => mount_volume(ctx, dev, v, done),
                Change::Fstab { dev, .. } => persist(ctx, dev, v, done),
            };
            if let Err(e) = r {
                failed.push((vol, v.mountpoint.clone(), format!("{e:#}")));
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        failed.sort_by_key(|(i, _, _)| *i);
        Err(combined(
            failed.into_iter().map(|(_, m, e)| (m, e)).collect(),
        ))
    }
}

/// One error naming every failed volume.
fn combined(errors: Vec<(AbsPath, String)>) -> anyhow::Error {
    let lines: Vec<String> = errors.iter().map(|(m, e)| format!("{m}: {e}")).collect();
    if lines.len() == 1 {
        anyhow!("{}", lines[0])
    } else {
        anyhow!("{} volumes failed: {}", lines.len(), lines.join("; "))
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

/// Where the mountpoint is on this machine.
fn target_of(ctx: &Ctx, v: &config::Volume) -> PathBuf {
    ctx.root.path(&v.mountpoint)
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

/// The changes one volume needs; an error when it cannot be converged.
fn observe(
    ctx: &Ctx,
    vol: usize,
    v: &config::Volume,
    warnings: &mut Vec<String>,
) -> Result<Vec<Change>> {
    let target = target_of(ctx, v);
    let (candidate, dev) = blockdev::wait_for(&v.device, v.wait.0)?;
    if candidate != dev.path {
        log::info!("{}: {} is {dev}", v.mountpoint, candidate.display());
    }
    let probe = blockdev::probe(&dev, ctx.root)?;
    let mounted_here = mounted_at_target(&dev, &target, &probe.to_string())?;
    check_target_free(&dev, &target)?;
    let fs = v.filesystem.name();
    let mut changes = Vec::new();
    let uuid = if probe.is_blank() {
        if mounted_here {
            bail!(
                "{dev} is mounted at {} but carries no signature",
                target.display()
            );
        }
        if v.format == FormatPolicy::Never {
            bail!("{dev} is blank and the volume says `format: never`; not formatting it");
        }
        let mkfs = format!("mkfs.{fs}");
        if !cmd::exists(&mkfs) {
            bail!("{dev} is blank but {mkfs} is not installed, so it cannot be formatted");
        }
        changes.push(Change::Format {
            vol,
            dev: dev.clone(),
            fs: v.filesystem,
            label: v.label.clone(),
        });
        // Known only once formatted; an empty UUID matches no existing fstab line.
        String::new()
    } else {
        match probe.filesystem() {
            Some(t) if t == fs => probe
                .uuid()
                .with_context(|| format!("{dev} holds {probe} but blkid reports no UUID"))?
                .to_string(),
            _ => bail!(
                "{dev} is not blank: it holds {probe}, not an {fs} filesystem; \
                 refusing to format or mount it (nothing was written to it)"
            ),
        }
    };
    if !mounted_here {
        match std::fs::symlink_metadata(&target) {
            Ok(m) if !m.is_dir() => bail!(
                "the mountpoint {} exists and is not a directory",
                target.display()
            ),
            Ok(_) => {
                let mut entries = std::fs::read_dir(&target)
                    .with_context(|| format!("cannot read {}", target.display()))?;
                if entries.next().is_some() {
                    warnings.push(format!(
                        "{} is not empty: its files will be hidden under the mount of {dev}",
                        v.mountpoint
                    ));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot stat {}", target.display())),
        }
        changes.push(Change::Mount {
            vol,
            dev: dev.clone(),
            mountpoint: v.mountpoint.clone(),
        });
    }
    let fstab_path = ctx.root.path(Path::new(FSTAB));
    let content = fs::read_optional(&fstab_path)?.unwrap_or_default();
    let replaces = match fstab::plan(&content, &entry(v, &uuid)) {
        fstab::Edit::Unchanged => None,
        fstab::Edit::Add => Some(Vec::new()),
        fstab::Edit::Replace(old) => Some(old),
    };
    if let Some(replaces) = replaces {
        changes.push(Change::Fstab {
            vol,
            dev,
            mountpoint: v.mountpoint.clone(),
            replaces,
        });
    }
    Ok(changes)
}

/// Format `dev`, after checking once more, right before `mkfs`, that it is blank and unused.
fn format(ctx: &Ctx, dev: &Device, v: &config::Volume, done: &mut Done<Change>) -> Result<()> {
    match blockdev::present(&dev.path)? {
        Some(d) if d == *dev => {}
        _ => bail!("{dev} is gone or changed since it was probed; not formatting it"),
    }
    let probe = blockdev::probe(dev, ctx.root)?;
    if !probe.is_blank() {
        bail!("{dev} is no longer blank (it holds {probe}); not formatting it");
    }
    if !blockdev::usage(dev)?.is_unused() {
        bail!("{dev} is in use; not formatting it");
    }
    blockdev::ensure_exclusive(dev)?;
    let fs = v.filesystem.name();
    // No -F / -f: a blank device needs no force, and without it mkfs keeps its own refusals
    // (mkfs.xfs refuses a device with a signature, mkfs.ext4 a mounted one).
    let mut c = Command::new(format!("mkfs.{fs}"));
    c.arg("-q");
    if let Some(l) = &v.label {
        c.arg("-L").arg(l);
    }
    c.arg(&dev.path);
    let out = chroot::output_here_or_in(ctx.root, &mut c)?;
    if !out.status.success() {
        bail!("cannot format {dev} as {fs}: {}", cmd::failure(&c, &out));
    }
    done.record_line(format!("formatted {dev} as {fs}{}", label_note(&v.label)));
    Ok(())
}

/// Mount `dev` at the volume's mountpoint and check it is mounted there and nowhere else.
fn mount_volume(
    ctx: &Ctx,
    dev: &Device,
    v: &config::Volume,
    done: &mut Done<Change>,
) -> Result<()> {
    let target = target_of(ctx, v);
    let fs = v.filesystem.name();
    let probe = blockdev::probe(dev, ctx.root)?;
    if probe.filesystem() != Some(fs) {
        bail!("{dev} holds {probe}, not an {fs} filesystem; not mounting it");
    }
    if mounted_at_target(dev, &target, &probe.to_string())? {
        // Mounted since `plan` looked (by someone else): nothing left to do.
        return Ok(());
    }
    check_target_free(dev, &target)?;
    std::fs::create_dir_all(&target)
        .with_context(|| format!("cannot create the mountpoint {}", target.display()))?;
    mount::mount_with(&dev.path, &target, fs, &v.options)?;
    match mount::at(&target)? {
        Some(m) if m.dev == dev.dev() => {}
        other => bail!(
            "{dev} is not mounted at {} after mounting it (found {:?})",
            target.display(),
            other.map(|m| m.source)
        ),
    }
    done.record_line(format!("mounted {dev} at {}", v.mountpoint));
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

/// Write the volume's fstab line, by the UUID the device carries now.
fn persist(ctx: &Ctx, dev: &Device, v: &config::Volume, done: &mut Done<Change>) -> Result<()> {
    let probe = blockdev::probe(dev, ctx.root)?;
    let uuid = match (probe.filesystem(), probe.uuid()) {
        (Some(t), Some(u)) if t == v.filesystem.name() => u.to_string(),
        _ => bail!(
            "{dev} holds {probe}, not an {} filesystem with a UUID; not adding it to {FSTAB}",
            v.filesystem.name()
        ),
    };
    let path = ctx.root.path(Path::new(FSTAB));
    let content = fs::read_optional(&path)?.unwrap_or_default();
    let e = entry(v, &uuid);
    let line = match fstab::plan(&content, &e) {
        fstab::Edit::Unchanged => return Ok(()),
        fstab::Edit::Add => format!("added {} to {FSTAB}", v.mountpoint),
        fstab::Edit::Replace(old) => format!(
            "replaced the {FSTAB} line for {} (commented out: {})",
            v.mountpoint,
            old.join(" | ")
        ),
    };
    fs::write_atomic(&path, fstab::apply(&content, &e).as_bytes(), 0o644)?;
    done.record_line(line);
    Ok(())
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

    #[test]
    fn changes_read_as_the_spec_writes_them() {
        let dev = Device {
            path: "/dev/vdb".into(),
            major: 254,
            minor: 16,
        };
        let v = volume(&[]);
        let f = Change::Format {
            vol: 0,
            dev: dev.clone(),
            fs: Filesystem::Ext4,
            label: v.label.clone(),
        };
        assert_eq!(f.to_string(), "format /dev/vdb as ext4 (label ol-data)");
        let m = Change::Mount {
            vol: 0,
            dev: dev.clone(),
            mountpoint: v.mountpoint.clone(),
        };
        assert_eq!(m.to_string(), "mount /dev/vdb at /1");
        let a = Change::Fstab {
            vol: 0,
            dev,
            mountpoint: v.mountpoint.clone(),
            replaces: vec![],
        };
        assert_eq!(a.to_string(), "add /1 to /etc/fstab");
    }
}
