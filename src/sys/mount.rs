//! Mounts: what is mounted where (from `/proc/self/mountinfo`) and the mount syscalls.

use anyhow::{Context, Result};
use rustix::mount::{MountFlags, UnmountFlags};
use std::path::{Path, PathBuf};

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// `major:minor` of the mounted device.
    pub dev: String,
    /// The directory inside the filesystem that is mounted (not `/` for bind mounts).
    pub fs_root: PathBuf,
    /// Where it is mounted.
    pub target: PathBuf,
    /// Filesystem type.
    pub fstype: String,
    /// The mount source (`/dev/vdb`, `tmpfs`, ...).
    pub source: String,
}

/// The mount table of this process's mount namespace.
pub fn mounts() -> Result<Vec<MountInfo>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .context("cannot read /proc/self/mountinfo")?;
    Ok(parse_mountinfo(&text))
}

/// Parse the text of a mountinfo file; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let mut post = post.split(' ');
            Some(MountInfo {
                dev: pre.get(2)?.to_string(),
                fs_root: PathBuf::from(unescape(pre.get(3)?)),
                target: PathBuf::from(unescape(pre.get(4)?)),
                fstype: post.next()?.to_string(),
                source: unescape(post.next()?),
            })
        })
        .collect()
}

/// The mount at exactly `target` that is on top (the last one listed), if any.
pub fn at(target: &Path) -> Result<Option<MountInfo>> {
    Ok(mounts()?.into_iter().rev().find(|m| m.target == target))
}

/// Mount the filesystem on `device` at `target` with fstab-style `options` (`noatime`,
/// `ro`, `discard`, ...): the generic ones become mount flags, the rest go to the filesystem
/// as its data string, as mount(8) does. Options that only mean something to mount(8) or
/// fstab (`defaults`, `nofail`, `auto`, `x-*`, ...) are left out.
pub fn mount_with(device: &Path, target: &Path, fstype: &str, options: &[String]) -> Result<()> {
    let (flags, data) = split_options(options);
    let data = std::ffi::CString::new(data.join(","))
        .with_context(|| format!("mount options {options:?} contain a NUL byte"))?;
    rustix::mount::mount(device, target, fstype, flags, Some(data.as_c_str())).with_context(|| {
        format!(
            "cannot mount {} ({fstype}, options {}) at {}",
            device.display(),
            if options.is_empty() {
                "defaults".to_string()
            } else {
                options.join(",")
            },
            target.display()
        )
    })
}

/// Split fstab-style options into mount flags and the filesystem's own options.
pub fn split_options(options: &[String]) -> (MountFlags, Vec<String>) {
    let mut flags = MountFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "defaults" | "rw" | "auto" | "noauto" | "nofail" | "user" | "nouser" | "users"
            | "owner" | "group" | "_netdev" | "async" | "suid" | "dev" | "exec" | "atime"
            | "diratime" | "nolazytime" | "nostrictatime" => {}
            "ro" => flags |= MountFlags::RDONLY,
            "nosuid" => flags |= MountFlags::NOSUID,
            "nodev" => flags |= MountFlags::NODEV,
            "noexec" => flags |= MountFlags::NOEXEC,
            "sync" => flags |= MountFlags::SYNCHRONOUS,
            "dirsync" => flags |= MountFlags::DIRSYNC,
            "noatime" => flags |= MountFlags::NOATIME,
            "nodiratime" => flags |= MountFlags::NODIRATIME,
            "relatime" => flags |= MountFlags::RELATIME,
            "strictatime" => flags |= MountFlags::STRICTATIME,
            "lazytime" => flags |= MountFlags::LAZYTIME,
            "nosymfollow" => flags |= MountFlags::NOSYMFOLLOW,
            o if o.starts_with("x-") || o.starts_with("comment=") => {}
            o => data.push(o.to_string()),
        }
    }
    (flags, data)
}

/// Bind-mount `source` at `target`.
pub fn bind(source: &Path, target: &Path) -> Result<()> {
    rustix::mount::mount_bind(source, target).with_context(|| {
        format!(
            "cannot bind-mount {} at {}",
            source.display(),
            target.display()
        )
    })
}

/// Unmount `target`.
pub fn unmount(target: &Path) -> Result<()> {
    rustix::mount::unmount(target, UnmountFlags::empty())
        .with_context(|| format!("cannot unmount {}", target.display()))
}

/// Undo the octal escapes (`\040`) that mountinfo and fstab use for blanks and backslashes.
pub(crate) fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut o = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let d = &b[i + 1..i + 4];
            if d.iter().all(|c| (b'0'..=b'7').contains(c)) {
                o.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
                continue;
            }
        }
        o.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&o).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_generic_options_from_filesystem_ones() {
        let o: Vec<String> = [
            "noatime",
            "nofail",
            "discard",
            "ro",
            "x-systemd.device-timeout=5",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (flags, data) = split_options(&o);
        assert_eq!(flags, MountFlags::NOATIME | MountFlags::RDONLY);
        assert_eq!(data, vec!["discard".to_string()]);
    }

    #[test]
    fn parses_mountinfo_lines() {
        let t = "36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                 22 1 254:16 / /1 rw,relatime shared:2 - ext4 /dev/vdb rw\n";
        let m = parse_mountinfo(t);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].target, PathBuf::from("/mnt/a b"));
        assert_eq!(m[0].fs_root, PathBuf::from("/mnt1"));
        assert_eq!(m[1].fstype, "ext4");
        assert_eq!(m[1].source, "/dev/vdb");
        assert_eq!(m[1].dev, "254:16");
    }
}
