//! Making a filesystem, under the whole-disk lock.
//!
//! [`DiskLock`] is systemd's block-device locking convention: an exclusive `flock` on the
//! whole-disk device node. udev takes a shared lock before it probes a device and leaves a
//! locked device alone, and tools that follow the convention (systemd-repart, `udevadm lock`)
//! wait for it. `mkfs` itself is not blocked: it opens the device afresh (with `O_EXCL`,
//! which conflicts only with other exclusive opens, not with a `flock`).
//!
//! [`make`] runs `mkfs.ext4 -E nodiscard` or `mkfs.xfs -K` (a wrong format on a thin or
//! SSD-backed disk must not also throw every block away) with a UUID olboot chose, so that
//! the filesystem found afterwards can be told apart from one another program made.

use super::blockdev::Device;
use super::{chroot, cmd, inuse};
use crate::root::Root;
use anyhow::{bail, Context, Result};
use rustix::fs::FlockOperation;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// How long [`DiskLock::take`] waits for udev or another tool to release the disk.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// The exclusive `flock` on a whole disk, released when dropped.
pub struct DiskLock {
    _file: std::fs::File,
    /// The whole-disk device node that is locked.
    pub disk: PathBuf,
}

/// The whole disk `dev` is on (itself when it is not a partition), as a device node.
fn whole_disk(dev: &Device) -> Result<PathBuf> {
    let Some((dir, id)) = inuse::parent_disk(dev)? else {
        return Ok(dev.path.clone());
    };
    let name = dir
        .file_name()
        .with_context(|| format!("no disk name in {}", dir.display()))?;
    let node = PathBuf::from("/dev").join(name);
    let m = std::fs::metadata(&node).with_context(|| format!("cannot stat {}", node.display()))?;
    let found = format!(
        "{}:{}",
        rustix::fs::major(m.rdev()),
        rustix::fs::minor(m.rdev())
    );
    if !m.file_type().is_block_device() || found != id {
        bail!(
            "{} is not the disk {dev} is on ({id}); not locking it",
            node.display()
        );
    }
    Ok(node)
}

impl DiskLock {
    /// Lock the whole disk of `dev`, waiting up to 10 s for a holder of the lock.
    pub fn take(dev: &Device) -> Result<DiskLock> {
        let disk = whole_disk(dev)?;
        let file = std::fs::File::open(&disk)
            .with_context(|| format!("cannot open {} to lock it", disk.display()))?;
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(DiskLock { _file: file, disk }),
                Err(rustix::io::Errno::WOULDBLOCK) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "cannot lock {} (flock, as udev and systemd do)",
                            disk.display()
                        )
                    })
                }
            }
        }
    }
}

/// A fresh random UUID from the kernel.
pub fn new_uuid() -> Result<String> {
    let p = "/proc/sys/kernel/random/uuid";
    let u = std::fs::read_to_string(p).with_context(|| format!("cannot read {p}"))?;
    Ok(u.trim().to_string())
}

/// The `mkfs` command line for `fs` (`ext4` or `xfs`).
pub fn command(fs: &str, dev: &Device, label: Option<&str>, uuid: &str) -> Result<Command> {
    let mut c = Command::new(format!("mkfs.{fs}"));
    // No -F / -f: a blank device needs no force, and without it mkfs keeps its own refusals
    // (mkfs.xfs refuses a device with a signature, mkfs.ext4 a mounted one).
    match fs {
        "ext4" => c.args(["-q", "-E", "nodiscard", "-U", uuid]),
        "xfs" => c.args(["-q", "-K", "-m"]).arg(format!("uuid={uuid}")),
        other => bail!("olboot cannot make a {other} filesystem"),
    };
    if let Some(l) = label {
        c.arg("-L").arg(l);
    }
    c.arg(&dev.path);
    Ok(c)
}

/// Run `mkfs` as [`command`] builds it (under `--root`, the target's when this system has
/// none).
pub fn make(root: &Root, fs: &str, dev: &Device, label: Option<&str>, uuid: &str) -> Result<()> {
    let mut c = command(fs, dev, label, uuid)?;
    let out = chroot::output_here_or_in(root, &mut c)?;
    if !out.status.success() {
        bail!("cannot format {dev} as {fs}: {}", cmd::failure(&c, &out));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mkfs_never_discards_and_names_the_uuid() {
        let dev = Device {
            path: "/dev/vdb".into(),
            major: 254,
            minor: 16,
        };
        let c = command("ext4", &dev, Some("ol-data"), "u-1").unwrap();
        assert_eq!(
            cmd::display(&c),
            "mkfs.ext4 -q -E nodiscard -U u-1 -L ol-data /dev/vdb"
        );
        let c = command("xfs", &dev, None, "u-2").unwrap();
        assert_eq!(cmd::display(&c), "mkfs.xfs -q -K -m uuid=u-2 /dev/vdb");
        assert!(command("btrfs", &dev, None, "u").is_err());
    }
}
