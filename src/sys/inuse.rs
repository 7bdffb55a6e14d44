//! The kernel half of the blank proof: is anything using a block device? Everything here is
//! read from `/sys`, `/proc` and each loop device's `LOOP_GET_STATUS64`, and costs a few
//! milliseconds.
//!
//! A device is in use when the kernel marks it read-only, when it has partitions in sysfs
//! (even if its on-disk table was zeroed), when device-mapper or md holds it or a partition
//! of it, when a partition overlaps another partition of its table, when a loop device is
//! backed by it (at any offset; the device the kernel holds, whatever path `backing_file`
//! shows), when it or a partition of it is mounted in any mount namespace (found by
//! `major:minor` in every `/proc/PID/mountinfo`) or used as swap, when a process holds it
//! open (`/proc/PID/fd`), and when an `O_EXCL` open of it fails. For a partition, the loop
//! devices, mounts, swap and open files of its whole disk count too.

use super::blockdev::Device;
use super::{cmd, mount};
use anyhow::{Context, Result};
use rustix::fs::{Mode, OFlags};
use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// `major:minor` of a file's device, if it is a block device.
fn block_id(path: &Path) -> Option<String> {
    let m = std::fs::metadata(path).ok()?;
    m.file_type().is_block_device().then(|| {
        format!(
            "{}:{}",
            rustix::fs::major(m.rdev()),
            rustix::fs::minor(m.rdev())
        )
    })
}

/// A sysfs attribute, trimmed; `None` when it does not exist.
fn attr(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(name))
        .ok()
        .map(|s| s.trim().to_string())
}

/// The device's sysfs directory with links resolved (`/sys/devices/.../block/loop0/loop0p1`).
fn sysfs_dir(dev: &Device) -> Result<PathBuf> {
    let link = PathBuf::from(format!("/sys/dev/block/{}", dev.dev()));
    std::fs::canonicalize(&link).with_context(|| format!("cannot resolve {}", link.display()))
}

/// The whole disk a partition belongs to: its sysfs directory and `major:minor`.
pub fn parent_disk(dev: &Device) -> Result<Option<(PathBuf, String)>> {
    let dir = sysfs_dir(dev)?;
    if !dir.join("partition").exists() {
        return Ok(None);
    }
    let parent = dir
        .parent()
        .with_context(|| format!("{} has no parent in sysfs", dir.display()))?
        .to_path_buf();
    let id = attr(&parent, "dev").with_context(|| format!("no dev in {}", parent.display()))?;
    Ok(Some((parent, id)))
}

/// Everything that uses `dev`, one phrase each ("mounted at /x in mount namespace ..."); empty
/// when nothing does. This process is left out of the open-file scan (its own disk lock).
pub fn users(dev: &Device) -> Result<Vec<String>> {
    let dir = sysfs_dir(dev)?;
    let mut found = Vec::new();
    if attr(&dir, "ro").as_deref() == Some("1") {
        found.push("the kernel marks it read-only".to_string());
    }
    let parts = dev.partitions()?;
    if !parts.is_empty() {
        let names: Vec<&str> = parts.iter().map(|(n, _)| n.as_str()).collect();
        found.push(format!(
            "the kernel has partitions on it ({}), whatever its on-disk table says",
            names.join(", ")
        ));
    }
    let mut ids: BTreeSet<String> = parts.iter().map(|(_, d)| d.clone()).collect();
    ids.insert(dev.dev());
    // The whole disk a partition is on: whoever uses it (a loop device, a mount, swap, a
    // process writing to it) may write over the partition's sectors.
    let mut near = ids.clone();
    let mut disk = None;
    if let Some((pdir, pid)) = parent_disk(dev)? {
        found.extend(overlaps(&dir, &pdir)?);
        found.extend(table_overlaps(&dir, &pdir));
        near.insert(pid.clone());
        disk = Some(pid);
    }
    found.extend(holders(&dir, &parts)?);
    found.extend(loops_over(&near)?);
    found.extend(mounts_of(&near)?);
    found.extend(swaps_on(&near));
    found.extend(openers(&near, disk.as_deref()));
    if let Some(e) = exclusive_refused(dev)? {
        found.push(e);
    }
    Ok(found)
}

/// Holders (device-mapper, md, bcache) of the device and of its partitions.
fn holders(dir: &Path, parts: &[(String, String)]) -> Result<Vec<String>> {
    let names = super::blockdev::holders(dir, parts)?;
    Ok(names.into_iter().map(|n| format!("held by {n}")).collect())
}

/// Sectors `[start, start + size)` of a partition's sysfs directory.
fn extent(dir: &Path) -> Option<(u64, u64)> {
    let start: u64 = attr(dir, "start")?.parse().ok()?;
    let size: u64 = attr(dir, "size")?.parse().ok()?;
    Some((start, start + size))
}

/// The other partitions of the same disk that share sectors with the partition at `dir`.
fn overlaps(dir: &Path, parent: &Path) -> Result<Vec<String>> {
    let Some((a, b)) = extent(dir) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let entries =
        std::fs::read_dir(parent).with_context(|| format!("cannot read {}", parent.display()))?;
    for e in entries.flatten() {
        let p = e.path();
        if p == dir || !p.join("partition").exists() {
            continue;
        }
        if let Some((c, d)) = extent(&p) {
            if a < d && c < b {
                out.push(format!(
                    "it overlaps partition {} (sectors {c}..{d}, this one {a}..{b})",
                    e.file_name().to_string_lossy()
                ));
            }
        }
    }
    Ok(out)
}

/// The entries of the on-disk partition table of the disk at `parent` (sysfs) that share
/// sectors with the partition at `dir`, as `partx` reads the table: the kernel may know fewer
/// partitions than the table lists (it refuses to add overlapping ones, or has no parser for
/// the table's type). No table, or no `partx`, means nothing found.
fn table_overlaps(dir: &Path, parent: &Path) -> Vec<String> {
    let (Some((a, b)), Some(name)) = (extent(dir), parent.file_name()) else {
        return Vec::new();
    };
    let disk = Path::new("/dev").join(name);
    let mut c = std::process::Command::new("partx");
    c.args(["-g", "-r", "-o", "NR,START,SECTORS"]).arg(&disk);
    let text = match cmd::output(&mut c) {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        Ok(_) => return Vec::new(),
        Err(e) => {
            log::warn!(
                "{e:#}: the partition table of {} is not checked for overlaps",
                disk.display()
            );
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<u64> = line
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        let [nr, start, len] = f[..] else { continue };
        let (c, d) = (start, start + len);
        if (c, d) != (a, b) && a < d && c < b {
            out.push(format!(
                "it overlaps partition {nr} of the table on {} (sectors {c}..{d}, this one {a}..{b})",
                disk.display()
            ));
        }
    }
    out
}

/// Loop devices backed by one of `ids`, with their offset. The backing device is the one the
/// kernel holds ([`loop_backing`]); the path in `backing_file` may name another file by now,
/// or nothing (a node removed: "… (deleted)", or a path in another mount namespace). A loop
/// device whose backing can be read neither way counts as a user.
fn loops_over(ids: &BTreeSet<String>) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Ok(out);
    };
    for e in entries.flatten() {
        let ldir = e.path().join("loop");
        let Some(backing) = attr(&ldir, "backing_file") else {
            continue;
        };
        let name = e.file_name().to_string_lossy().into_owned();
        let over = match loop_backing(&e.path(), &name) {
            Ok(id) => id.is_some_and(|id| ids.contains(&id)),
            Err(err) => match std::fs::metadata(&backing) {
                Ok(m) if !m.file_type().is_block_device() => false,
                Ok(_) => block_id(Path::new(&backing)).is_some_and(|id| ids.contains(&id)),
                Err(_) => {
                    out.push(format!(
                        "loop device /dev/{name} is backed by {backing}, which cannot be \
                         checked ({err:#}), so it may be this disk"
                    ));
                    continue;
                }
            },
        };
        if over {
            let offset = attr(&ldir, "offset").unwrap_or_else(|| "?".into());
            out.push(format!(
                "loop device /dev/{name} is backed by it (offset {offset})"
            ));
        }
    }
    Ok(out)
}

/// `struct loop_info64` of `<linux/loop.h>`, as `LOOP_GET_STATUS64` fills it.
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    /// `st_rdev` of the backing file: the device, for a loop device over a device node.
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `LOOP_GET_STATUS64`.
const LOOP_GET_STATUS64: rustix::ioctl::Opcode = 0x4C05;

/// The `major:minor` of the block device the loop device `name` (sysfs directory `dir`) is
/// backed by, from the kernel's own handle on it; `None` when it is backed by a regular file
/// or by nothing (detached meanwhile).
fn loop_backing(dir: &Path, name: &str) -> Result<Option<String>> {
    let node = Path::new("/dev").join(name);
    let want = attr(dir, "dev").with_context(|| format!("no dev in {}", dir.display()))?;
    if block_id(&node).as_deref() != Some(want.as_str()) {
        anyhow::bail!("{} is not the loop device {want}", node.display());
    }
    let fd = rustix::fs::open(&node, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .with_context(|| format!("cannot open {}", node.display()))?;
    // SAFETY: LOOP_GET_STATUS64 writes exactly one `struct loop_info64`, which `LoopInfo64`
    // lays out field for field.
    let got = unsafe {
        rustix::ioctl::ioctl(
            &fd,
            rustix::ioctl::Getter::<LOOP_GET_STATUS64, LoopInfo64>::new(),
        )
    };
    match got {
        Ok(info) if info.rdevice == 0 => Ok(None),
        Ok(info) => Ok(Some(format!(
            "{}:{}",
            rustix::fs::major(info.rdevice),
            rustix::fs::minor(info.rdevice)
        ))),
        Err(rustix::io::Errno::NXIO) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("LOOP_GET_STATUS64 on {}", node.display())),
    }
}

/// The process ids in `/proc`.
fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A process's command name.
fn comm(pid: u32) -> String {
    attr(Path::new(&format!("/proc/{pid}")), "comm").unwrap_or_else(|| "?".into())
}

/// Mounts of `ids` in every mount namespace (each namespace read once, through one of its
/// processes).
fn mounts_of(ids: &BTreeSet<String>) -> Result<Vec<String>> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for pid in pids() {
        let Ok(ns) = std::fs::read_link(format!("/proc/{pid}/ns/mnt")) else {
            continue;
        };
        if !seen.insert(ns.clone()) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")) else {
            continue;
        };
        for m in mount::parse_mountinfo(&text) {
            if ids.contains(&m.dev) {
                out.push(format!(
                    "{} is mounted at {} in mount namespace {} (pid {pid}, {})",
                    m.source,
                    m.target.display(),
                    ns.display(),
                    comm(pid)
                ));
            }
        }
    }
    Ok(out)
}

/// Swap areas on `ids`, from `/proc/swaps`.
fn swaps_on(ids: &BTreeSet<String>) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .filter(|p| block_id(Path::new(&mount::unescape(p))).is_some_and(|id| ids.contains(&id)))
        .map(|p| format!("{p} is in use as swap"))
        .collect()
}

/// Processes other than this one with `ids` open; `disk`, one of them, is the whole disk the
/// device is on.
fn openers(ids: &BTreeSet<String>, disk: Option<&str>) -> Vec<String> {
    let me = std::process::id();
    let mut out = Vec::new();
    for pid in pids().into_iter().filter(|p| *p != me) {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let mut held = BTreeSet::new();
        for fd in fds.flatten() {
            if let Some(id) = block_id(&fd.path()).filter(|id| ids.contains(id)) {
                held.insert(if disk == Some(id.as_str()) {
                    format!("{id}, the whole disk it is on")
                } else {
                    id
                });
            }
        }
        if !held.is_empty() {
            let held: Vec<String> = held.into_iter().collect();
            out.push(format!(
                "process {pid} ({}) has it open ({})",
                comm(pid),
                held.join(", ")
            ));
        }
    }
    out
}

/// Why an `O_EXCL` open of `dev` fails (`EBUSY`: the kernel or a program has claimed it), or
/// `None` when it succeeds; the device is closed again at once.
pub fn exclusive_refused(dev: &Device) -> Result<Option<String>> {
    match rustix::fs::open(
        &dev.path,
        OFlags::RDONLY | OFlags::EXCL | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(_fd) => Ok(None),
        Err(rustix::io::Errno::BUSY) => Ok(Some(
            "an exclusive (O_EXCL) open fails: it is claimed by a mount, swap, device-mapper, \
             md or a program such as a running mkfs"
                .into(),
        )),
        Err(e) => Err(e).with_context(|| format!("cannot open {dev}")),
    }
}
