//! What brings the rules back after a reboot: `/etc/nftables.conf` including
//! `/etc/nftables.d/*.nft`, and `nftables.service` enabled, which runs
//! `nft -f /etc/nftables.conf` before `network-pre.target`, so before any interface is up and
//! before Docker adds its own tables.
//!
//! The service is enabled by creating the `WantedBy=` symlinks its unit asks for (Debian:
//! `sysinit.target.wants`), as `systemctl enable` does; that works without a running systemd
//! and below `--root`. It is not started: starting it would run the whole of
//! `/etc/nftables.conf`, whose Debian default begins with `flush ruleset`.

use crate::root::Root;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// The file `nftables.service` loads.
pub const CONF: &str = "/etc/nftables.conf";
/// The include line olboot adds to [`CONF`].
pub const INCLUDE: &str = "include \"/etc/nftables.d/*.nft\"";
/// The unit's name.
pub const SERVICE: &str = "nftables.service";
/// Where the packaged unit may be, as the target sees it (Debian ≤ 12, then merged /usr).
const UNIT_DIRS: [&str; 2] = ["/lib/systemd/system", "/usr/lib/systemd/system"];
/// Where enablement symlinks go.
const ETC_UNITS: &str = "/etc/systemd/system";

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
    conf.lines().any(|line| {
        let words: Vec<&str> = line
            .split('#')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        words == ["flush", "ruleset"]
    })
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

/// Whether the target boots with systemd.
pub fn has_systemd(root: &Root) -> bool {
    ["/lib/systemd/systemd", "/usr/lib/systemd/systemd"]
        .iter()
        .any(|p| root.path(Path::new(p)).exists())
}

/// The packaged `nftables.service`: its path as the target sees it and its `WantedBy=`.
pub struct Unit {
    /// Where the unit file is, as the target sees it (what the symlinks point at).
    pub path: PathBuf,
    /// Targets that want it, from `[Install] WantedBy=`.
    pub wanted_by: Vec<String>,
}

/// Find and read the packaged unit, if the target has one.
pub fn find_unit(root: &Root) -> Result<Option<Unit>> {
    for dir in UNIT_DIRS {
        let path = Path::new(dir).join(SERVICE);
        let host = root.path(&path);
        let Some(text) = crate::sys::fs::read_optional(&host)? else {
            continue;
        };
        let wanted_by = wanted_by(&text);
        if wanted_by.is_empty() {
            anyhow::bail!("{}: no WantedBy= in [Install]", host.display());
        }
        return Ok(Some(Unit { path, wanted_by }));
    }
    Ok(None)
}

/// The `WantedBy=` targets of a unit file's `[Install]` section.
fn wanted_by(unit: &str) -> Vec<String> {
    let mut section = "";
    let mut out = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[Install]" {
            if let Some(v) = line.strip_prefix("WantedBy=") {
                out.extend(v.split_whitespace().map(String::from));
            }
        }
    }
    out
}

/// The enablement symlink for `target`, as the target system sees it.
pub fn link_for(target: &str) -> PathBuf {
    Path::new(ETC_UNITS)
        .join(format!("{target}.wants"))
        .join(SERVICE)
}

/// The enablement symlinks of `unit` that do not exist yet.
pub fn missing_links(root: &Root, unit: &Unit) -> Vec<PathBuf> {
    unit.wanted_by
        .iter()
        .map(|t| link_for(t))
        .filter(|l| std::fs::symlink_metadata(root.path(l)).is_err())
        .collect()
}

/// Create the missing enablement symlinks of `unit`; returns the links made.
pub fn enable(root: &Root, unit: &Unit) -> Result<Vec<PathBuf>> {
    let missing = missing_links(root, unit);
    for link in &missing {
        let host = root.path(link);
        if let Some(dir) = host.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::os::unix::fs::symlink(&unit.path, &host).with_context(|| {
            format!("cannot link {} -> {}", host.display(), unit.path.display())
        })?;
    }
    Ok(missing)
}

/// Whether an administrator masked the service (`/etc/systemd/system/nftables.service ->
/// /dev/null`), so that it never runs whatever olboot enables.
pub fn masked(root: &Root) -> bool {
    std::fs::read_link(root.path(&Path::new(ETC_UNITS).join(SERVICE)))
        .is_ok_and(|t| t == Path::new("/dev/null"))
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
    fn unit_install_section_is_read() {
        let unit = "[Unit]\nWantedBy=nope.target\n[Service]\nExecStart=/usr/sbin/nft -f /etc/nftables.conf\n[Install]\nWantedBy=sysinit.target\nWantedBy=a.target b.target\n";
        assert_eq!(wanted_by(unit), ["sysinit.target", "a.target", "b.target"]);
        assert_eq!(
            link_for("sysinit.target"),
            Path::new("/etc/systemd/system/sysinit.target.wants/nftables.service")
        );
    }

    #[test]
    fn enable_links_below_the_root_once() {
        let t = tempfile::tempdir().expect("tempdir");
        let root = Root::at(t.path());
        std::fs::create_dir_all(t.path().join("lib/systemd/system")).expect("mkdir");
        std::fs::write(
            t.path().join("lib/systemd/system/nftables.service"),
            "[Install]\nWantedBy=sysinit.target\n",
        )
        .expect("write");
        assert!(!has_systemd(&root));
        let unit = find_unit(&root).expect("read").expect("unit");
        assert_eq!(unit.path, Path::new("/lib/systemd/system/nftables.service"));
        assert_eq!(missing_links(&root, &unit).len(), 1);
        let made = enable(&root, &unit).expect("enable");
        assert_eq!(made, [link_for("sysinit.target")]);
        let link = t
            .path()
            .join("etc/systemd/system/sysinit.target.wants/nftables.service");
        assert_eq!(
            std::fs::read_link(link).expect("link"),
            Path::new("/lib/systemd/system/nftables.service")
        );
        assert!(missing_links(&root, &unit).is_empty());
        assert!(enable(&root, &unit).expect("again").is_empty());
        assert!(!masked(&root));
    }
}
