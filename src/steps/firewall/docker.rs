//! What the firewall step needs to know of Docker: whether it is installed (its rules are
//! what a `flush ruleset` elsewhere would remove), and which bridges of the running kernel the
//! `container_bridges` patterns take for container networks.

use crate::root::Root;
use crate::sys::fs;
use anyhow::Result;
use std::path::Path;

/// Packages that install a Docker daemon.
const PACKAGES: [&str; 2] = ["docker.io", "docker-ce"];
/// Where a `dockerd` may be, as the target sees it (Debian's docker.io: `/usr/sbin`).
const BIN_DIRS: [&str; 6] = [
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
    "/usr/local/sbin",
    "/usr/local/bin",
];

/// How Docker was found on the target (`package docker.io`, `/usr/sbin/dockerd`), if it was.
pub fn found(root: &Root) -> Result<Option<String>> {
    let status = fs::read_optional(&root.resolve(Path::new("/var/lib/dpkg/status"))?)?;
    if let Some(p) = status.as_deref().and_then(installed_package) {
        return Ok(Some(format!("package {p}")));
    }
    let on_path: Vec<String> = match (root.is_live(), std::env::var_os("PATH")) {
        (true, Some(p)) => std::env::split_paths(&p)
            .map(|d| d.display().to_string())
            .collect(),
        _ => Vec::new(),
    };
    let dirs = BIN_DIRS.iter().map(|d| d.to_string()).chain(on_path);
    for dir in dirs {
        let bin = Path::new(&dir).join("dockerd");
        if root.resolve(&bin)?.is_file() {
            return Ok(Some(bin.display().to_string()));
        }
    }
    Ok(None)
}

/// The first Docker package that dpkg's status file lists as installed.
fn installed_package(status: &str) -> Option<&'static str> {
    for stanza in status.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name).map(str::trim))
        };
        let installed = field("Status:").is_some_and(|s| s.ends_with(" installed"));
        if let (true, Some(p)) = (installed, field("Package:")) {
            if let Some(known) = PACKAGES.iter().find(|k| **k == p) {
                return Some(known);
            }
        }
    }
    None
}

/// Whether interface `name` matches `pattern` (a trailing `*` matches any rest), as nft's
/// `oifname` does.
pub fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    }
}

/// Whether `name` is what Docker calls its bridges: `docker0`, or `br-` and 12 hex digits.
fn docker_like(name: &str) -> bool {
    name == "docker0"
        || name
            .strip_prefix("br-")
            .is_some_and(|id| id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Of `bridges` (the running kernel's), those that a wildcard of `patterns` takes for
/// container networks although Docker would not name them so: likely the machine's own
/// bridges, whose forwarded traffic the firewall would then filter.
pub fn suspicious_bridges(bridges: &[String], patterns: &[String]) -> Vec<String> {
    let mut out: Vec<String> = bridges
        .iter()
        .filter(|n| !docker_like(n))
        .filter(|n| !patterns.iter().any(|p| p == *n))
        .filter(|n| patterns.iter().any(|p| matches(p, n)))
        .cloned()
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status_names_the_package() {
        let status = "Package: docker.io\nStatus: deinstall ok config-files\n\n\
                      Package: git\nStatus: install ok installed\n\n\
                      Package: docker-ce\nStatus: install ok installed\nVersion: 5:29.0.1\n";
        assert_eq!(installed_package(status), Some("docker-ce"));
        assert_eq!(
            installed_package("Package: git\nStatus: install ok installed\n"),
            None
        );
    }

    #[test]
    fn dockerd_in_sbin_is_found_below_a_root() {
        let t = tempfile::tempdir().expect("tempdir");
        let root = Root::at(t.path());
        assert_eq!(found(&root).expect("look"), None);
        fs::write_atomic(&t.path().join("usr/sbin/dockerd"), b"", 0o755).expect("write");
        assert_eq!(
            found(&root).expect("look").as_deref(),
            Some("/usr/sbin/dockerd")
        );
    }

    #[test]
    fn bridge_names_match_like_nft() {
        assert!(matches("br-*", "br-0123456789ab"));
        assert!(matches("docker0", "docker0"));
        assert!(!matches("docker0", "docker01"));
        assert!(!matches("br-*", "br0"));
        assert!(docker_like("br-0123456789ab"));
        assert!(!docker_like("br-lan"));
        assert!(!docker_like("br-0123456789abc"));
        let bridges =
            ["br-lan", "br-0123456789ab", "docker0", "lxcbr0", "br-own"].map(String::from);
        let patterns = ["docker0", "br-*", "br-own"].map(String::from);
        assert_eq!(suspicious_bridges(&bridges, &patterns), ["br-lan"]);
    }
}
