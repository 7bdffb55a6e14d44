//! The checks that can only be made on a host's merged config (a set defined in one role and
//! used in another, say), and those between values (two volumes, `opt.path` and the volumes).
//! Each returns the key path and the message; `Config` adds the file and the fleet entry.

use super::steps::{Filesystem, Firewall, Link, Opt, Proto, Ssh, Volume, CONTAINERS};
use super::values::ArchiveUrl;
use std::path::Path;

/// A failed check: the key path and what is wrong.
pub(crate) type Failed = (String, String);

fn bad(key: impl Into<String>, msg: impl Into<String>) -> Result<(), Failed> {
    Err((key.into(), msg.into()))
}

impl Firewall {
    /// Set names, container bridges, the sets each rule names (`allow_keys` says where each
    /// merged rule was written) and the SSH lockout.
    pub(crate) fn check(&self, allow_keys: &[String]) -> Result<(), Failed> {
        // Set names become nftables identifiers (`@admin_v4`): keep them to what nft parses.
        for name in self.sets.keys() {
            let ok = name.len() <= 64
                && name.starts_with(|c: char| c.is_ascii_alphabetic())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok {
                return bad(
                    format!("firewall.sets.{name}"),
                    "a set name is a letter followed by up to 63 letters, digits, `_` or `-`",
                );
            }
        }
        if self.sets.contains_key(CONTAINERS) {
            return bad(
                format!("firewall.sets.{CONTAINERS}"),
                "a reserved name: `from: containers` means the local container networks",
            );
        }
        for b in self.container_bridges.iter().flatten() {
            let name = b.strip_suffix('*').unwrap_or(b);
            let ok = (1..=15).contains(&b.len())
                && name
                    .bytes()
                    .all(|c| c.is_ascii_graphic() && !b"\"*/".contains(&c));
            if !ok {
                return bad(
                    "firewall.container_bridges",
                    format!(
                        "{b:?} is not an interface name (up to 15 characters, `*` only at the end)"
                    ),
                );
            }
        }
        for (a, key) in self.allow.iter().zip(allow_keys) {
            let unknown = |s: &&String| !self.sets.contains_key(*s) && *s != CONTAINERS;
            if let Some(s) = a.from.iter().find(unknown) {
                return bad(format!("{key}.from"), format!("unknown set {s:?}"));
            }
        }
        self.check_ssh()
    }

    /// A rule counts only if it lets somebody in: from anywhere, or from a set that holds at
    /// least one network.
    fn check_ssh(&self) -> Result<(), Failed> {
        let ssh_open = self.allow.iter().any(|a| {
            a.proto == Proto::Tcp
                && a.port.0.iter().any(|p| p.contains(22))
                && (a.from.is_empty()
                    || a.from
                        .iter()
                        .any(|s| self.sets.get(s).is_some_and(|n| !n.is_empty())))
        });
        if !ssh_open && self.ssh != Some(Ssh::Closed) {
            return bad(
                "firewall.allow",
                "no rule allows SSH (tcp port 22): this would lock everybody out; add one or say `ssh: closed`",
            );
        }
        Ok(())
    }
}

impl Volume {
    /// The label's length, mount options and candidate devices of volume number `i`.
    pub(crate) fn check(&self, i: usize) -> Result<(), Failed> {
        if let Some(l) = &self.label {
            let max = match self.filesystem {
                Filesystem::Ext4 => 16,
                Filesystem::Xfs => 12,
            };
            if l.is_empty() || l.len() > max || l.contains(char::is_whitespace) {
                let fs = self.filesystem.name();
                return bad(
                    format!("volumes[{i}].label"),
                    format!("{l:?}: a {fs} label has 1 to {max} characters and no blanks"),
                );
            }
        }
        if let Some(o) = self
            .options
            .iter()
            .find(|o| o.is_empty() || o.contains([',', ' ', '\t']))
        {
            return bad(
                format!("volumes[{i}].options"),
                format!("{o:?} is not one mount option"),
            );
        }
        if self.device.is_empty() {
            return bad(format!("volumes[{i}].device"), "no candidate device");
        }
        if let Some(why) = system_dir(&self.mountpoint) {
            return bad(
                format!("volumes[{i}].mountpoint"),
                format!(
                    "{} is {why}: a volume mounted there would hide or shadow the system's own files",
                    self.mountpoint
                ),
            );
        }
        Ok(())
    }
}

/// Directories of the system itself: never a volume's mountpoint, never `opt.path`.
const SYSTEM_DIRS: [&str; 14] = [
    "/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/opt", "/proc", "/run", "/sbin",
    "/sys", "/usr", "/var",
];

/// The kernel's filesystems, below which nothing of a disk or of a tree can live.
const KERNEL_DIRS: [&str; 3] = ["/dev", "/proc", "/sys"];

/// Why `p` is a system directory or below a kernel filesystem, if it is. Below the others
/// (`/var/lib/docker`, `/srv`, `/usr/local`) is the operator's choice.
fn system_dir(p: &Path) -> Option<String> {
    if SYSTEM_DIRS.iter().any(|d| p == Path::new(d)) {
        return Some("a system directory".into());
    }
    KERNEL_DIRS
        .iter()
        .find(|d| p.starts_with(d))
        .map(|d| format!("below {d}, a system directory the kernel fills"))
}

/// The volumes of one list (`prefix` says where it is written: `roles.db.` or nothing for
/// a host's merged list): no two share a mountpoint (`/1` and `/1/` are one) or a candidate
/// device, and none is mounted inside another's mountpoint. The spec mounts volumes side by
/// side (`/1`, `/2`), in order; a volume inside another would be mounted before it or after
/// it depending on the order of roles, and hidden or empty when the outer one comes later.
pub(crate) fn check_volumes(vols: &[Volume], prefix: &str) -> Result<(), Failed> {
    for (i, v) in vols.iter().enumerate() {
        let key = |k: &str| format!("{prefix}volumes[{i}].{k}");
        for (j, w) in vols[..i].iter().enumerate() {
            let (mp, other) = (&v.mountpoint, &w.mountpoint);
            if mp == other {
                return bad(
                    key("mountpoint"),
                    format!("{mp} is also the mountpoint of {prefix}volumes[{j}]"),
                );
            }
            if mp.starts_with(&**other) {
                return bad(
                    key("mountpoint"),
                    format!("{mp} is inside {other}, the mountpoint of {prefix}volumes[{j}]: mount volumes side by side"),
                );
            }
            if other.starts_with(&**mp) {
                return bad(
                    key("mountpoint"),
                    format!("{mp} holds {other}, the mountpoint of {prefix}volumes[{j}]: mount volumes side by side"),
                );
            }
            if let Some(d) = v.device.iter().find(|d| w.device.contains(d)) {
                return bad(
                    key("device"),
                    format!("{d} is also a device of {prefix}volumes[{j}]"),
                );
            }
        }
    }
    Ok(())
}

/// `opt.path` and the volumes: the path is on a volume only strictly below its mountpoint
/// (the mountpoint itself holds `lost+found`, which would be taken for an unpacked tree and
/// the archive never fetched), no volume is mounted inside the tree, and none below `/opt`,
/// where the tree is exposed over whatever is there.
pub(crate) fn check_opt_volumes(opt: &Opt, vols: &[Volume]) -> Result<(), Failed> {
    let path = &opt.path;
    for (i, v) in vols.iter().enumerate() {
        let mp = &v.mountpoint;
        if mp == path {
            return bad(
                "opt.path",
                format!(
                    "{path} is the mountpoint of volumes[{i}]: put the tree in a directory below it ({})",
                    mp.join("opt").display()
                ),
            );
        }
        if mp.starts_with(&**path) {
            return bad(
                format!("volumes[{i}].mountpoint"),
                format!("{mp} is inside opt.path ({path}): it would be taken for part of the tree"),
            );
        }
        if mp.starts_with("/opt") {
            return bad(
                format!("volumes[{i}].mountpoint"),
                format!("{mp} is inside /opt, where opt.path is exposed over it"),
            );
        }
    }
    Ok(())
}

impl Opt {
    /// The path, and the archive's mirrors, digest and trusted hosts.
    pub(crate) fn check(&self) -> Result<(), Failed> {
        let path = &self.path;
        if path.as_os_str() == "/" {
            return bad(
                "opt.path",
                "must not be /: the tree is exposed at /opt, inside it",
            );
        }
        if path.as_os_str() == "/opt" {
            return bad(
                "opt.path",
                "must not be /opt itself: /opt is where it is exposed",
            );
        }
        if path.starts_with("/opt") {
            return bad(
                "opt.path",
                format!("{path} is inside /opt, where it is exposed: /opt would be mounted on a part of itself"),
            );
        }
        if let Some(why) = system_dir(path) {
            return bad(
                "opt.path",
                format!("{path} is {why}, not a place for /opt's tree"),
            );
        }
        let Some(a) = &self.archive else {
            return Ok(());
        };
        if a.urls.is_empty() {
            return bad("opt.archive.urls", "no URL");
        }
        if a.sha256.is_none() && a.urls.iter().any(ArchiveUrl::is_remote) {
            return bad(
                "opt.archive.sha256",
                "missing: a remote archive must name its sha256",
            );
        }
        for (i, h) in a.trusted_hosts.iter().enumerate() {
            if h.is_empty() || h.contains(['/', ':', '@', '?', ' ']) {
                return bad(
                    format!("opt.archive.trusted_hosts[{i}]"),
                    format!("{h:?} is not a host name"),
                );
            }
        }
        Ok(())
    }
}

/// No link's source and target overlap.
pub(crate) fn check_links(links: &[Link]) -> Result<(), Failed> {
    for (i, l) in links.iter().enumerate() {
        if l.to.starts_with(&*l.from) || l.from.starts_with(&*l.to) {
            return bad(
                format!("links[{i}]"),
                format!("{} and {} overlap", l.from, l.to),
            );
        }
    }
    Ok(())
}
