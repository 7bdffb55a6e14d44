//! Block devices: finding one among candidate paths, probing what it holds with `blkid -p`,
//! and finding out whether anything uses it.
//!
//! `blkid -p` (libblkid's low-level probing, no cache) reports every signature libblkid knows:
//! filesystems, partition tables, RAID members, LVM physical volumes, LUKS headers, swap. Its
//! exit status is 2 both for "no signature" and for "no such device", so [`probe`] checks that
//! the device is there before and after probing: an empty answer about a device that vanished
//! must never read as "blank". Use is read from the kernel: mounts in
//! `/proc/self/mountinfo` (of the device or any of its partitions) and holders in
//! `/sys/dev/block/M:m/holders` (device-mapper, md); [`ensure_exclusive`] finally asks the
//! kernel itself with an `O_EXCL` open, which fails while anything has the device claimed.

use super::mount::{self, MountInfo};
use super::{chroot, cmd};
use crate::root::Root;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How often [`wait_for`] looks at the candidates again.
const POLL: Duration = Duration::from_millis(200);

/// A block device that is present (it has a size).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The device node, symlinks resolved (`/dev/vdb`).
    pub path: PathBuf,
    /// Its major number.
    pub major: u32,
    /// Its minor number.
    pub minor: u32,
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.path.display().fmt(f)
    }
}

impl Device {
    /// `major:minor`, as mountinfo and sysfs spell it.
    pub fn dev(&self) -> String {
        format!("{}:{}", self.major, self.minor)
    }

    /// Its size in bytes, from sysfs.
    pub fn size(&self) -> Result<u64> {
        let p = self.sysfs().join("size");
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        let sectors: u64 = text
            .trim()
            .parse()
            .with_context(|| format!("{} is not a number: {text:?}", p.display()))?;
        Ok(sectors * 512)
    }

    /// The device's directory in sysfs.
    fn sysfs(&self) -> PathBuf {
        PathBuf::from(format!("/sys/dev/block/{}", self.dev()))
    }

    /// The `major:minor` of each partition the kernel knows on this device, with its name.
    pub fn partitions(&self) -> Result<Vec<(String, String)>> {
        let dir = self.sysfs();
        let mut parts = Vec::new();
        let entries =
            std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?;
        for e in entries {
            let e = e.with_context(|| format!("cannot read {}", dir.display()))?;
            if !e.path().join("partition").exists() {
                continue;
            }
            let dev = std::fs::read_to_string(e.path().join("dev"))
                .with_context(|| format!("cannot read {}/dev", e.path().display()))?;
            parts.push((
                e.file_name().to_string_lossy().into_owned(),
                dev.trim().to_string(),
            ));
        }
        parts.sort();
        Ok(parts)
    }
}

/// Look at `path`: `Ok(None)` when it does not exist or is an empty block device (a
/// detached loop device, a drive without media), the device when it is there, an error when
/// it is something else.
pub fn present(path: &Path) -> Result<Option<Device>> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot stat {}", path.display())),
    };
    if !meta.file_type().is_block_device() {
        bail!("{} is not a block device", path.display());
    }
    let resolved = std::fs::canonicalize(path)
        .with_context(|| format!("cannot resolve {}", path.display()))?;
    let rdev = meta.rdev();
    let dev = Device {
        path: resolved,
        major: rustix::fs::major(rdev),
        minor: rustix::fs::minor(rdev),
    };
    let size_file = dev.sysfs().join("size");
    let size = std::fs::read_to_string(&size_file)
        .with_context(|| format!("cannot read {}", size_file.display()))?;
    if size.trim() == "0" {
        return Ok(None);
    }
    Ok(Some(dev))
}

/// The first present device among `candidates`, looking again every 200 ms for up to `wait`
/// (a disk attached late shows up during the wait). The error names every candidate.
pub fn wait_for(candidates: &[impl AsRef<Path>], wait: Duration) -> Result<(PathBuf, Device)> {
    let deadline = Instant::now() + wait;
    let mut told = false;
    loop {
        for c in candidates {
            // One odd candidate (not a block device, sysfs unreadable) must not hide the others.
            let found = present(c.as_ref()).unwrap_or_else(|e| {
                if !told {
                    log::warn!("{e:#}");
                }
                None
            });
            if let Some(d) = found {
                if told {
                    log::info!("{} appeared", c.as_ref().display());
                }
                return Ok((c.as_ref().to_path_buf(), d));
            }
        }
        let now = Instant::now();
        if now >= deadline {
            let names: Vec<String> = candidates
                .iter()
                .map(|c| c.as_ref().display().to_string())
                .collect();
            bail!(
                "no device found among {} after waiting {}",
                names.join(", "),
                humantime::format_duration(wait)
            );
        }
        if !told {
            log::info!(
                "waiting up to {} for a device among {}",
                humantime::format_duration(wait),
                candidates
                    .iter()
                    .map(|c| c.as_ref().display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            told = true;
        }
        crate::sys::signal::sleep(POLL.min(deadline - now))?;
    }
}

/// What `blkid -p` found on a device: its tags (`TYPE`, `PTTYPE`, `UUID`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probe {
    /// The tags, as blkid printed them (unescaped).
    pub tags: BTreeMap<String, String>,
    /// libblkid found more than one signature and would not choose (exit status 8).
    pub ambivalent: bool,
}

impl Probe {
    /// No signature at all. Only `DEVNAME` and the `PART_ENTRY_*` tags (which describe the
    /// partition table entry of a partition, not its content) may be present; any other tag,
    /// known or not, counts as a signature.
    pub fn is_blank(&self) -> bool {
        !self.ambivalent
            && self
                .tags
                .keys()
                .all(|k| k == "DEVNAME" || k.starts_with("PART_ENTRY_"))
    }

    /// The filesystem type, when the device holds exactly a filesystem and nothing else
    /// (no partition table, no second signature).
    pub fn filesystem(&self) -> Option<&str> {
        if self.ambivalent || self.tags.contains_key("PTTYPE") {
            return None;
        }
        match self.tags.get("USAGE").map(String::as_str) {
            Some("filesystem") => self.tags.get("TYPE").map(String::as_str),
            _ => None,
        }
    }

    /// The `UUID` tag.
    pub fn uuid(&self) -> Option<&str> {
        self.tags.get("UUID").map(String::as_str)
    }
}

impl fmt::Display for Probe {
    /// What the device holds, in words: "an xfs filesystem (UUID ...)", "a gpt partition table".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if let Some(t) = self.tags.get("TYPE") {
            let what = match (t.as_str(), self.tags.get("USAGE").map(String::as_str)) {
                ("LVM2_member", _) => "an LVM physical volume (LVM2_member)".to_string(),
                ("linux_raid_member", _) => "a Linux RAID member (linux_raid_member)".into(),
                ("crypto_LUKS", _) => "a LUKS header (crypto_LUKS)".into(),
                ("swap", _) => "swap space".into(),
                (t, Some("filesystem")) => format!("{} {t} filesystem", article(t)),
                (t, Some(u)) => format!("{} {t} signature ({u})", article(t)),
                (t, None) => format!("{} {t} signature", article(t)),
            };
            let mut ids = Vec::new();
            if let Some(l) = self.tags.get("LABEL") {
                ids.push(format!("label {l}"));
            }
            if let Some(u) = self.uuid() {
                ids.push(format!("UUID {u}"));
            }
            if ids.is_empty() {
                parts.push(what);
            } else {
                parts.push(format!("{what} ({})", ids.join(", ")));
            }
        }
        if let Some(pt) = self.tags.get("PTTYPE") {
            parts.push(format!("a {pt} partition table"));
        }
        if self.ambivalent {
            parts.push("several signatures (blkid cannot tell which one is valid)".into());
        }
        if parts.is_empty() {
            let other: Vec<String> = self
                .tags
                .iter()
                .filter(|(k, _)| *k != "DEVNAME" && !k.starts_with("PART_ENTRY_"))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            if other.is_empty() {
                return f.write_str("no signature");
            }
            parts.push(format!("signature tags {}", other.join(" ")));
        }
        f.write_str(&parts.join(" and "))
    }
}

/// "an" before names read with a leading vowel sound (ext4, xfs, iso9660), else "a".
fn article(name: &str) -> &'static str {
    match name.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u' | 'x') => "an",
        _ => "a",
    }
}

/// Probe `dev` with `blkid -p -o export`: superblocks and partition tables, read from the
/// device itself (no cache). The device must be there before and after, unchanged. Under
/// `--root`, a rescue system without util-linux's `blkid` uses the target's.
pub fn probe(dev: &Device, root: &Root) -> Result<Probe> {
    let still_there = || -> Result<()> {
        match present(&dev.path)? {
            Some(d) if d == *dev => Ok(()),
            Some(d) => bail!("{} changed while probing (now {})", dev, d.dev()),
            None => bail!("{} disappeared while probing", dev),
        }
    };
    still_there()?;
    let mut c = Command::new("blkid");
    c.args(["-p", "-o", "export"]).arg(&dev.path);
    let out = chroot::output_here_or_in(root, &mut c, |_| {})?;
    still_there()?;
    let text = String::from_utf8_lossy(&out.stdout);
    match out.status.code() {
        // Found something.
        Some(0) => Ok(Probe {
            tags: parse_export(&text).into_iter().next().unwrap_or_default(),
            ambivalent: false,
        }),
        // blkid also exits 2 when it cannot open or read the device: "blank" only when it
        // said nothing and olboot can read both ends of the device itself.
        Some(2) if out.stderr.is_empty() => {
            readable(dev)?;
            Ok(Probe::default())
        }
        // "Ambivalent low-level probing result": more than one signature.
        Some(8) => Ok(Probe {
            tags: parse_export(&text).into_iter().next().unwrap_or_default(),
            ambivalent: true,
        }),
        _ => bail!("cannot probe {}: {}", dev, cmd::failure(&c, &out)),
    }
}

/// The other devices carrying a filesystem with `uuid`, as a copied volume (a cloned disk, an
/// LVM snapshot) does: not `dev` itself, and not devices held by device-mapper or md (the
/// paths of a multipath disk, the members of a mirror), whose holder is the device. `blkid
/// -t` without a cache probes every block device.
pub fn others_with_uuid(dev: &Device, uuid: &str, root: &Root) -> Result<Vec<Device>> {
    let mut c = Command::new("blkid");
    c.args(["-c", "/dev/null", "-o", "device", "-t"])
        .arg(format!("UUID={uuid}"));
    let out = chroot::output_here_or_in(root, &mut c, |_| {})?;
    match out.status.code() {
        Some(0) => {}
        Some(2) if out.stderr.is_empty() => return Ok(Vec::new()),
        _ => bail!(
            "cannot look for other devices with UUID {uuid}: {}",
            cmd::failure(&c, &out)
        ),
    }
    let mut others = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // One that vanished since blkid saw it cannot be mounted by the UUID either.
        let Some(d) = present(Path::new(line.trim()))? else {
            continue;
        };
        if d.dev() != dev.dev() && holders(&d.sysfs(), &[])?.is_empty() {
            others.push(d);
        }
    }
    Ok(others)
}

/// The label of the filesystem on `dev` as stored, `None` when it has none: `blkid -o value`
/// prints it raw, where the export format prints a literal `^` or `M-` as if it were an
/// escape.
pub fn label(dev: &Device, root: &Root) -> Result<Option<Vec<u8>>> {
    let mut c = Command::new("blkid");
    c.args(["-p", "-o", "value", "-s", "LABEL"]).arg(&dev.path);
    let out = chroot::output_here_or_in(root, &mut c, |_| {})?;
    if !out.status.success() {
        bail!("cannot read the label of {dev}: {}", cmd::failure(&c, &out));
    }
    let mut v = out.stdout;
    if v.last() == Some(&b'\n') {
        v.pop();
    }
    Ok((!v.is_empty()).then_some(v))
}

/// Read the first and the last MiB of `dev`, where signatures live, so that an unreadable
/// device is an error and never taken for a blank one.
fn readable(dev: &Device) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(&dev.path).with_context(|| format!("cannot open {dev}"))?;
    let size = f
        .metadata()
        .ok()
        .filter(|m| m.len() > 0)
        .map(|m| m.len())
        .or_else(|| std::io::Seek::seek(&mut &f, std::io::SeekFrom::End(0)).ok())
        .with_context(|| format!("cannot find the size of {dev}"))?;
    let mut buf = vec![0u8; 1 << 20];
    for at in [0, size.saturating_sub(buf.len() as u64)] {
        let n = (size - at).min(buf.len() as u64) as usize;
        f.read_exact_at(&mut buf[..n], at)
            .with_context(|| format!("cannot read {dev} at byte {at}: not probing it"))?;
    }
    Ok(())
}

/// Parse `blkid -o export` output: `KEY=value` lines, one block per device, blocks separated
/// by a blank line. Values are unescaped (blkid puts a backslash before blanks, quotes, `$`
/// and other characters a shell would read). Lines without `=` are ignored.
pub fn parse_export(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut out = Vec::new();
    let mut cur = BTreeMap::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            cur.insert(k.trim().to_string(), unescape(v));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Undo blkid's export escaping: a backslash makes the next character literal, `M-x` is a
/// byte with the high bit set, `M-^x` one with the high bit set from a control character
/// (blkid's `safe_print`). A literal `M-` or `^` in a label is printed unescaped: `^x` alone
/// is read literally, since a `^` in a label ("ol^Data") is far likelier than a control
/// character; when undoing `M-` does not give UTF-8 text, the value is kept as printed.
fn unescape(v: &str) -> String {
    let b = v.as_bytes();
    let mut o = Vec::with_capacity(b.len());
    let mut meta = false;
    let mut i = 0;
    while i < b.len() {
        let (c, step) = match (b[i], b.get(i + 1), b.get(i + 2)) {
            (b'\\', Some(n), _) => (*n, 2),
            (b'M', Some(b'-'), Some(_)) => {
                meta = true;
                // The escaped character may itself be `^x` or `\x`.
                match (b[i + 2], b.get(i + 3)) {
                    (b'^', Some(n)) => ((n ^ 0x40) | 0x80, 4),
                    (b'\\', Some(n)) => (n | 0x80, 4),
                    (n, _) => (n | 0x80, 3),
                }
            }
            (c, _, _) => (c, 1),
        };
        o.push(c);
        i += step;
    }
    match String::from_utf8(o) {
        Ok(s) => s,
        Err(_) if meta => unescape_backslashes(v),
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// Only the backslash escapes undone.
fn unescape_backslashes(v: &str) -> String {
    let mut o = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                o.push(n);
                continue;
            }
        }
        o.push(c);
    }
    o
}

/// Who uses a device, as the kernel sees it.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    /// Mounts of the device itself (whole-filesystem mounts and bind mounts of parts of it).
    pub mounts: Vec<MountInfo>,
    /// Mounts of its partitions.
    pub partition_mounts: Vec<MountInfo>,
    /// Holders (device-mapper targets, md arrays) of the device or its partitions, by name.
    pub holders: Vec<String>,
}

impl Usage {
    /// Nothing mounts or holds the device or its partitions.
    pub fn is_unused(&self) -> bool {
        self.mounts.is_empty() && self.partition_mounts.is_empty() && self.holders.is_empty()
    }
}

/// The mounts and holders of `dev` and of its partitions. A mount counts as the device's when
/// mountinfo names its `major:minor` or its source is the device's path.
pub fn usage(dev: &Device) -> Result<Usage> {
    let parts = dev.partitions()?;
    let mut usage = Usage::default();
    for m in mount::mounts()? {
        if m.dev == dev.dev() || Path::new(&m.source) == dev.path {
            usage.mounts.push(m);
        } else if parts.iter().any(|(_, d)| *d == m.dev) {
            usage.partition_mounts.push(m);
        }
    }
    usage.holders = holders(&dev.sysfs(), &parts)?;
    Ok(usage)
}

/// Holders (device-mapper, md, bcache), by name, of the device whose sysfs directory is `dir`
/// and of its partitions `parts`.
pub fn holders(dir: &Path, parts: &[(String, String)]) -> Result<Vec<String>> {
    let mut dirs = vec![dir.join("holders")];
    dirs.extend(parts.iter().map(|(n, _)| dir.join(n).join("holders")));
    let mut out = Vec::new();
    for d in dirs {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", d.display())),
        };
        for e in entries {
            let e = e.with_context(|| format!("cannot read {}", d.display()))?;
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe_of(text: &str) -> Probe {
        Probe {
            tags: parse_export(text).into_iter().next().unwrap_or_default(),
            ambivalent: false,
        }
    }

    #[test]
    fn parses_export_blocks_and_escapes() {
        let t = "DEVNAME=/dev/loop0\nLABEL=ol\\ data\nUUID=97f1\nTYPE=ext4\nUSAGE=filesystem\n\n\
                 DEVNAME=/dev/loop1\nPTUUID=7b12\nPTTYPE=gpt\n";
        let b = parse_export(t);
        assert_eq!(b.len(), 2);
        assert_eq!(b[0]["LABEL"], "ol data");
        assert_eq!(b[0]["TYPE"], "ext4");
        assert_eq!(b[1]["PTTYPE"], "gpt");
        assert_eq!(parse_export(""), Vec::<BTreeMap<String, String>>::new());
        assert_eq!(parse_export("A=x\\\\y\\$z")[0]["A"], "x\\y$z");
    }

    #[test]
    fn labels_with_non_ascii_characters_read_as_written() {
        // blkid -o export prints "Õ-data" (C3 95) as M-CM-^U-data.
        assert_eq!(parse_export("LABEL=M-CM-^U-data")[0]["LABEL"], "Õ-data");
        // A lone ^x is literal: blkid prints a label's ^ unescaped.
        assert_eq!(parse_export("LABEL=ol^Data")[0]["LABEL"], "ol^Data");
        assert_eq!(parse_export("LABEL=caf^?")[0]["LABEL"], "caf^?");
        // A literal "M-" that does not decode to text is kept as printed.
        assert_eq!(parse_export("LABEL=M-DATA")[0]["LABEL"], "M-DATA");
        assert_eq!(parse_export("LABEL=ol\\ data")[0]["LABEL"], "ol data");
    }

    #[test]
    fn ext4_alone_is_a_filesystem() {
        let p = probe_of("DEVNAME=/dev/loop0\nUUID=97f1\nVERSION=1.0\nBLOCK_SIZE=1024\nTYPE=ext4\nUSAGE=filesystem\n");
        assert!(!p.is_blank());
        assert_eq!(p.filesystem(), Some("ext4"));
        assert_eq!(p.uuid(), Some("97f1"));
        assert_eq!(p.to_string(), "an ext4 filesystem (UUID 97f1)");
    }

    #[test]
    fn signatures_that_are_not_filesystems() {
        let cases = [
            (
                "DEVNAME=/dev/loop0\nPTUUID=7b12\nPTTYPE=gpt\n",
                "a gpt partition table",
            ),
            ("PTTYPE=dos\n", "a dos partition table"),
            (
                "UUID=nVRA\nVERSION=LVM2\\ 001\nTYPE=LVM2_member\nUSAGE=raid\n",
                "an LVM physical volume (LVM2_member) (UUID nVRA)",
            ),
            (
                "VERSION=2\nUUID=a7da\nTYPE=crypto_LUKS\nUSAGE=crypto\n",
                "a LUKS header (crypto_LUKS) (UUID a7da)",
            ),
            (
                "UUID=d9c6\nVERSION=1\nTYPE=swap\nUSAGE=other\n",
                "swap space (UUID d9c6)",
            ),
            (
                "TYPE=linux_raid_member\nUSAGE=raid\n",
                "a Linux RAID member (linux_raid_member)",
            ),
            ("SBMAGIC=abc\n", "signature tags SBMAGIC=abc"),
            (
                "TYPE=btrfs\nUSAGE=filesystem\nPTTYPE=dos\n",
                "a btrfs filesystem and a dos partition table",
            ),
        ];
        for (text, said) in cases {
            let p = probe_of(text);
            assert!(!p.is_blank(), "{text}");
            assert_eq!(p.filesystem(), None, "{text}");
            assert_eq!(p.to_string(), said);
        }
    }

    #[test]
    fn filesystem_over_a_partition_table_is_not_used_as_is() {
        let p = probe_of("UUID=d9c6\nTYPE=ext4\nUSAGE=filesystem\nPTUUID=7b12\nPTTYPE=gpt\n");
        assert!(!p.is_blank());
        assert_eq!(p.filesystem(), None);
        assert_eq!(
            p.to_string(),
            "an ext4 filesystem (UUID d9c6) and a gpt partition table"
        );
    }

    #[test]
    fn blank_and_partition_entries() {
        assert!(Probe::default().is_blank());
        assert_eq!(Probe::default().to_string(), "no signature");
        let p = probe_of("DEVNAME=/dev/vdb1\nPART_ENTRY_SCHEME=gpt\nPART_ENTRY_NUMBER=1\n");
        assert!(p.is_blank());
        let mut amb = probe_of("DEVNAME=/dev/vdb\n");
        amb.ambivalent = true;
        assert!(!amb.is_blank());
        assert_eq!(amb.filesystem(), None);
    }
}
