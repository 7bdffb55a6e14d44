//! What brings the rules back after a reboot, and what keeps a reload of somebody else's
//! rules from removing them.
//!
//! - **olboot-firewall.service**, a unit of olboot's own (written to `/etc/systemd/system`,
//!   enabled by the `WantedBy=` symlink, as `systemctl enable` does; that works without a
//!   running systemd and below `--root`): it loads `/etc/nftables.d/olboot.nft` alone, before
//!   `network-pre.target` (so before any interface is up and before Docker adds its tables)
//!   and after nftables.service. It never flushes anything: no `ExecStop`.
//! - **/etc/nftables.conf** includes the same file, so `nft -f /etc/nftables.conf` and
//!   `systemctl reload nftables` reload olboot's table too; Debian's default file begins with
//!   `flush ruleset`, which removes every table (Docker's too, as in Open Library's issue
//!   #4706), so olboot comments that line out and puts in its place the replacement of the
//!   tables the file itself declares (`table inet filter {}` + `delete table inet filter`):
//!   a reload still replaces the file's own tables and leaves everybody else's alone.

use crate::root::Root;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// The file `nftables.service` loads.
pub const CONF: &str = "/etc/nftables.conf";
/// The include line olboot adds to [`CONF`].
pub const INCLUDE: &str = "include \"/etc/nftables.d/*.nft\"";
/// olboot's unit.
pub const UNIT: &str = "olboot-firewall.service";
/// Where olboot's unit is written, as the target sees it.
pub const UNIT_PATH: &str = "/etc/systemd/system/olboot-firewall.service";
/// The target that wants it.
const WANTED_BY: &str = "sysinit.target";
/// Where enablement symlinks go.
const ETC_UNITS: &str = "/etc/systemd/system";
/// Where Debian's nftables.service may be, as the target sees it.
const NFTABLES_UNITS: [&str; 2] = [
    "/lib/systemd/system/nftables.service",
    "/usr/lib/systemd/system/nftables.service",
];
/// What olboot writes in place of a `flush ruleset` line of [`CONF`].
const UNFLUSHED: &str =
    "# flush ruleset  # commented out by olboot: it removed every table, Docker's and olboot's too";

/// Include paths that load olboot's file.
const INCLUDES_OURS: [&str; 3] = [
    "/etc/nftables.d/*.nft",
    "/etc/nftables.d/*",
    "/etc/nftables.d/olboot.nft",
];

/// Whether `conf` (the text of nftables.conf) has an active include that loads olboot's file.
pub fn includes_ours(conf: &str) -> bool {
    conf.lines().any(|line| {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("include") else {
            return false;
        };
        let path = rest.trim().trim_end_matches(';').trim().trim_matches('"');
        INCLUDES_OURS.contains(&path)
    })
}

/// Whether `conf` runs `flush ruleset`, which removes every table (Docker's too) whenever the
/// file is loaded again (`systemctl reload` or `restart nftables`).
pub fn flushes_ruleset(conf: &str) -> bool {
    conf.lines().any(|line| words(line) == ["flush", "ruleset"])
}

/// The words of a line of nft text, without its comment.
fn words(line: &str) -> Vec<&str> {
    line.split('#')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect()
}

/// `conf` with the include line appended, or a new minimal file when there is none.
pub fn with_include(conf: Option<&str>) -> String {
    match conf {
        None => format!(
            "#!/usr/sbin/nft -f\n\
             # Loaded at boot by nftables.service. olboot's rules are in /etc/nftables.d/olboot.nft.\n\
             \n{INCLUDE}\n"
        ),
        Some(text) => {
            let mut s = text.to_string();
            if !s.is_empty() && !s.ends_with('\n') {
                s.push('\n');
            }
            s.push_str("\n# Added by olboot: the rules in /etc/nftables.d (olboot's table inet olboot).\n");
            s.push_str(INCLUDE);
            s.push('\n');
            s
        }
    }
}

/// The top-level tables `conf` declares, as `FAMILY NAME` (nft's default family is `ip`).
fn declared_tables(conf: &str) -> Vec<String> {
    const FAMILIES: [&str; 6] = ["ip", "ip6", "inet", "arp", "bridge", "netdev"];
    let mut out: Vec<String> = Vec::new();
    for line in conf.lines() {
        let table = match words(line).as_slice() {
            ["table", f, n, ..] if FAMILIES.contains(f) => {
                format!("{f} {}", n.trim_end_matches('{'))
            }
            ["table", n, ..] => format!("ip {}", n.trim_end_matches('{')),
            _ => continue,
        };
        if !table.ends_with(' ') && !out.contains(&table) {
            out.push(table);
        }
    }
    out
}

/// `conf` with each `flush ruleset` line commented out and replaced by the replacement of
/// the tables the file declares; also those tables. `None` when it does not flush.
pub fn unflushed(conf: &str) -> Option<(String, Vec<String>)> {
    if !flushes_ruleset(conf) {
        return None;
    }
    let tables = declared_tables(conf);
    let mut out = String::new();
    for line in conf.lines() {
        if flushes_ruleset(line) {
            out.push_str(UNFLUSHED);
            out.push('\n');
            for t in &tables {
                out.push_str(&format!("table {t} {{}}\ndelete table {t}\n"));
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    Some((out, tables))
}

/// Whether the target boots with systemd.
pub fn has_systemd(root: &Root) -> Result<bool> {
    for p in ["/lib/systemd/systemd", "/usr/lib/systemd/systemd"] {
        if root.resolve(Path::new(p))?.exists() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// olboot's unit, loading `file` with the target's `nft`.
pub fn unit_text(nft: &Path, file: &str) -> String {
    format!(
        "# Written by olboot: loads olboot's firewall (table inet olboot) at boot.\n\
         [Unit]\n\
         Description=olboot firewall (table inet olboot)\n\
         DefaultDependencies=no\n\
         Wants=network-pre.target\n\
         Before=network-pre.target shutdown.target\n\
         After=nftables.service\n\
         Conflicts=shutdown.target\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         RemainAfterExit=yes\n\
         ExecStart={nft} -f {file}\n\
         ExecReload={nft} -f {file}\n\
         \n\
         [Install]\n\
         WantedBy={WANTED_BY}\n",
        nft = nft.display()
    )
}

/// The enablement symlink of olboot's unit, as the target sees it.
pub fn unit_link() -> PathBuf {
    Path::new(ETC_UNITS)
        .join(format!("{WANTED_BY}.wants"))
        .join(UNIT)
}

/// Whether olboot's unit is enabled: its symlink points at it.
pub fn enabled(root: &Root) -> Result<bool> {
    Ok(std::fs::read_link(root.path(&unit_link())?).is_ok_and(|t| t == Path::new(UNIT_PATH)))
}

/// Link `link` (as the target sees it) to `dest`, replacing a wrong link.
pub fn enable(root: &Root, link: &Path, dest: &Path) -> Result<()> {
    let host = root.path(link)?;
    if let Some(dir) = host.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if std::fs::symlink_metadata(&host).is_ok() {
        std::fs::remove_file(&host).with_context(|| format!("cannot remove {}", host.display()))?;
    }
    std::os::unix::fs::symlink(dest, &host)
        .with_context(|| format!("cannot link {} -> {}", host.display(), dest.display()))
}

/// Whether the target's nftables.service flushes the whole ruleset when stopped (Debian's
/// `ExecStop=/usr/sbin/nft flush ruleset`): `systemctl stop` or `restart nftables` then
/// removes every table.
pub fn service_stop_flushes(root: &Root) -> Result<bool> {
    for unit in NFTABLES_UNITS {
        if let Some(text) = crate::sys::fs::read_optional(&root.resolve(Path::new(unit))?)? {
            return Ok(text.lines().any(|l| {
                l.trim().strip_prefix("ExecStop=").is_some_and(|cmd| {
                    cmd.split_whitespace()
                        .rev()
                        .take(2)
                        .eq(["ruleset", "flush"])
                })
            }));
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN: &str = "#!/usr/sbin/nft -f\n\nflush ruleset\n\ntable inet filter {\n\tchain input {\n\t\ttype filter hook input priority filter;\n\t}\n}\n";

    #[test]
    fn include_is_found_only_when_active() {
        assert!(!includes_ours(DEBIAN));
        assert!(includes_ours(&with_include(Some(DEBIAN))));
        assert!(includes_ours("include \"/etc/nftables.d/*\""));
        assert!(!includes_ours("# include \"/etc/nftables.d/*.nft\""));
        assert!(!includes_ours("include \"/etc/other/*.nft\""));
        assert!(includes_ours(&with_include(None)));
    }

    #[test]
    fn appending_keeps_the_file() {
        let s = with_include(Some("flush ruleset"));
        assert!(s.starts_with("flush ruleset\n\n# Added by olboot"));
        assert!(s.ends_with("include \"/etc/nftables.d/*.nft\"\n"));
        let s = with_include(Some(DEBIAN));
        assert!(s.starts_with(DEBIAN));
        assert!(with_include(None).starts_with("#!/usr/sbin/nft -f\n"));
    }

    #[test]
    fn flush_ruleset_is_spotted() {
        assert!(flushes_ruleset(DEBIAN));
        assert!(!flushes_ruleset("# flush ruleset\ntable inet x {}"));
        assert!(!flushes_ruleset("flush table inet x"));
    }

    #[test]
    fn flush_is_replaced_by_the_files_own_tables() {
        let conf = format!("{DEBIAN}table ip6 extra {{\n}}\ntable bare {{\n}}\n");
        let (text, tables) = unflushed(&conf).expect("flushes");
        assert_eq!(tables, ["inet filter", "ip6 extra", "ip bare"]);
        assert!(!flushes_ruleset(&text), "{text}");
        assert!(text.starts_with(
            "#!/usr/sbin/nft -f\n\n# flush ruleset  # commented out by olboot: it removed every table, Docker's and olboot's too\ntable inet filter {}\ndelete table inet filter\ntable ip6 extra {}\ndelete table ip6 extra\n"
        ), "{text}");
        assert!(text.ends_with("table bare {\n}\n"));
        assert!(unflushed(&text).is_none());
    }

    #[test]
    fn unit_loads_the_file_and_is_enabled_below_the_root() {
        let t = tempfile::tempdir().expect("tempdir");
        let root = Root::at(t.path());
        let text = unit_text(Path::new("/usr/sbin/nft"), "/etc/nftables.d/olboot.nft");
        assert!(text.contains("\nExecStart=/usr/sbin/nft -f /etc/nftables.d/olboot.nft\n"));
        assert!(text.contains("\nBefore=network-pre.target shutdown.target\n"));
        assert!(!text.contains("ExecStop"), "never flushes");
        assert!(!enabled(&root).unwrap());
        enable(&root, &unit_link(), Path::new(UNIT_PATH)).expect("enable");
        assert!(enabled(&root).unwrap());
        enable(&root, &unit_link(), Path::new(UNIT_PATH)).expect("again");
        assert!(enabled(&root).unwrap());
        assert!(!service_stop_flushes(&root).expect("read"));
        crate::sys::fs::write_atomic(
            &t.path().join("lib/systemd/system/nftables.service"),
            b"[Service]\nExecStop=/usr/sbin/nft flush ruleset\n",
            0o644,
        )
        .expect("write");
        assert!(service_stop_flushes(&root).expect("read"));
    }
}
