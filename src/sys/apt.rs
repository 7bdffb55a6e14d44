//! apt, dpkg and dpkg-query, run on the target system: directly when it is the running one,
//! through `chroot DIR` under `--root DIR`, so the target's own tools read and write the
//! target's own package database and the host's is never touched.
//!
//! Commands run with a fixed environment (C locale, so that the messages this module
//! classifies are the English ones; noninteractive debconf) and their output is logged line
//! by line as it comes, so a long install or a wait for the dpkg lock shows in the first-boot
//! log while it happens.

use crate::root::Root;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::{Duration, SystemTime};

/// `PATH` for the target's tools; cloud-init's `runcmd` may have a shorter one, and dpkg's
/// maintainer scripts need the sbin directories.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `program` with `args`, run on the target system with the environment apt needs there.
pub fn command(root: &Root, program: &str) -> Command {
    let mut cmd = if root.is_live() {
        Command::new(program)
    } else {
        let mut c = Command::new("chroot");
        c.arg(root.dir()).arg(program);
        c
    };
    cmd.env("PATH", PATH)
        .env("LC_ALL", "C")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("DEBCONF_NONINTERACTIVE_SEEN", "true")
        .env("APT_LISTCHANGES_FRONTEND", "none")
        // Ubuntu's needrestart would otherwise restart services (sshd) in the middle of
        // first boot; list only.
        .env("NEEDRESTART_MODE", "l");
    cmd
}

/// `apt-get` with the options every olboot call shares: quiet, yes to everything, no pty
/// (a chroot has no `/dev/pts`), and waiting up to `lock_timeout` for the dpkg lock.
pub fn apt_get(root: &Root, lock_timeout: Duration) -> Command {
    let mut cmd = command(root, "apt-get");
    cmd.args(["-q", "-y", "-o", "Dpkg::Use-Pty=0", "-o"])
        .arg(format!(
            "DPkg::Lock::Timeout={}",
            lock_timeout.as_secs().max(1)
        ));
    cmd
}

/// `apt-get update`, failing (not just warning) when any index could not be fetched.
/// Older apt ignores the unknown option, which is why [`Ran::failure`] also reads the output.
pub fn update(root: &Root, lock_timeout: Duration) -> Command {
    let mut cmd = apt_get(root, lock_timeout);
    cmd.args(["-o", "APT::Update::Error-Mode=any", "update"]);
    cmd
}

/// `apt-get install` of exactly `names`, keeping existing config files, without recommended
/// packages unless `recommends`.
pub fn install(root: &Root, lock_timeout: Duration, names: &[String], recommends: bool) -> Command {
    let mut cmd = apt_get(root, lock_timeout);
    cmd.args([
        "-o",
        "Dpkg::Options::=--force-confdef",
        "-o",
        "Dpkg::Options::=--force-confold",
    ]);
    if !recommends {
        cmd.arg("--no-install-recommends");
    }
    cmd.arg("install").args(names);
    cmd
}

/// `apt-get remove` (or `purge`) of exactly `names`. Packages that depend on them go too, as
/// apt decides; the caller logs what went.
pub fn remove(root: &Root, lock_timeout: Duration, names: &[String], purge: bool) -> Command {
    let mut cmd = apt_get(root, lock_timeout);
    cmd.arg(if purge { "purge" } else { "remove" }).args(names);
    cmd
}

/// `dpkg --configure -a`: finish what an interrupted dpkg left half done.
pub fn configure_pending(root: &Root) -> Command {
    let mut cmd = command(root, "dpkg");
    cmd.args(["--force-confdef", "--force-confold", "--configure", "-a"]);
    cmd
}

/// The installed packages of the target: name → version. A package counts only when dpkg
/// has it fully installed and wanted (`install ok installed`, or `hold ok installed`, which is
/// the same package pinned at its version); half-configured or removed-but-configured ones
/// count as missing.
pub fn installed(root: &Root) -> Result<BTreeMap<String, String>> {
    let mut cmd = command(root, "dpkg-query");
    cmd.args(["-W", "-f=${Package}\\t${Status}\\t${Version}\\n"]);
    let out = super::cmd::run(&mut cmd).context("cannot list the installed packages")?;
    Ok(parse_installed(&out))
}

/// Parse `dpkg-query -W -f='${Package}\t${Status}\t${Version}\n'`.
pub fn parse_installed(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split('\t');
            let (name, status, version) = (f.next()?, f.next()?, f.next()?);
            matches!(status, "install ok installed" | "hold ok installed")
                .then(|| (name.to_string(), version.to_string()))
        })
        .collect()
}

/// Whether dpkg was interrupted and needs `dpkg --configure -a` before apt will install:
/// journal entries left in `/var/lib/dpkg/updates` (what apt checks for its "dpkg was
/// interrupted" error) or packages `dpkg --audit` finds half installed.
pub fn interrupted(root: &Root) -> Result<bool> {
    let updates = root.resolve(Path::new("/var/lib/dpkg/updates"))?;
    if let Ok(dir) = std::fs::read_dir(&updates) {
        for e in dir {
            let e = e.with_context(|| format!("cannot read {}", updates.display()))?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
                return Ok(true);
            }
        }
    }
    let mut cmd = command(root, "dpkg");
    cmd.arg("--audit");
    let out = super::cmd::output(&mut cmd)?;
    let said = String::from_utf8_lossy(&out.stdout);
    if !said.trim().is_empty() {
        return Ok(true);
    }
    if !out.status.success() {
        anyhow::bail!("{}", super::cmd::failure(&cmd, &out));
    }
    Ok(false)
}

/// When apt last wrote a package index (`/var/lib/apt/lists/*_Packages*`), or `None` when
/// there is none. This is the change time, not the modification time: apt sets the latter
/// to the mirror's `Last-Modified`, which for a stable release can be months old right
/// after an update.
pub fn lists_written(root: &Root) -> Result<Option<SystemTime>> {
    let dir = root.resolve(Path::new("/var/lib/apt/lists"))?;
    let entries = match std::fs::read_dir(&dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    let mut newest = None;
    for e in entries {
        let e = e.with_context(|| format!("cannot read {}", dir.display()))?;
        if !e.file_name().to_string_lossy().contains("_Packages") {
            continue;
        }
        let path = e.path();
        let st =
            rustix::fs::stat(&path).with_context(|| format!("cannot stat {}", path.display()))?;
        let ctime = SystemTime::UNIX_EPOCH
            + Duration::new(
                u64::try_from(st.st_ctime).unwrap_or(0),
                u32::try_from(st.st_ctime_nsec).unwrap_or(0),
            );
        newest = newest.max(Some(ctime));
    }
    Ok(newest)
}

/// Whether package lists written at `written` are too old to install from at `now`.
pub fn stale(written: Option<SystemTime>, now: SystemTime, max_age: Duration) -> bool {
    match written {
        None => true,
        // A clock that went backwards (first boot before NTP) makes them look fresh.
        Some(t) => now.duration_since(t).is_ok_and(|age| age > max_age),
    }
}

/// What one apt or dpkg run did.
#[derive(Debug)]
pub struct Ran {
    /// The command line, for errors.
    pub cmd: String,
    /// How it ended.
    pub status: ExitStatus,
    /// Its standard output and standard error, line by line.
    pub lines: Vec<String>,
}

/// Why an apt or dpkg run failed, as far as its messages tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Packages (names as given) that the configured sources do not have.
    NotFound(Vec<String>),
    /// dpkg was interrupted: `dpkg --configure -a` is needed first.
    Interrupted,
    /// Another process holds the dpkg or apt lock.
    Locked,
    /// A fetch failed in a way that may pass (the message that says so).
    Transient(String),
    /// Anything else: retrying will not help.
    Other,
}

/// Message fragments of failures that may pass on their own: a mirror that times out or
/// answers 5xx, DNS not up yet, a mirror caught mid-sync.
const TRANSIENT: &[&str] = &[
    "Hash Sum mismatch",
    "Could not resolve",
    "Temporary failure",
    "Failed to fetch",
    "Unable to fetch some archives",
    "Some index files failed to download",
    "timed out",
    "Could not connect",
    "Unable to connect",
    "Connection failed",
    "Connection reset",
    "File has unexpected size",
    "Undetermined Error",
];

/// Message fragments of fetch failures that trying again will not mend: a repository whose
/// signature the configured key does not verify. (A 404 is not among them: when a mirror
/// fails InRelease and Release with 5xx, apt reports the 404 of an index name it probed.)
/// gpgv (bookworm) says NO_PUBKEY, sqv (trixie) "Missing key".
const PERMANENT: &[&str] = &[
    "is not signed",
    "NO_PUBKEY",
    "couldn't be verified",
    "Missing key",
];

/// Message fragments of apt's and dpkg's lock errors.
const LOCKED: &[&str] = &[
    "Could not get lock",
    "Unable to acquire the dpkg frontend lock",
    "Unable to lock",
    "locked by another process",
];

impl Ran {
    /// The lines in which apt and dpkg report errors and warnings.
    fn diagnostics(&self) -> impl Iterator<Item = &str> {
        self.lines
            .iter()
            .map(|l| l.trim())
            .filter(|l| l.starts_with("E:") || l.starts_with("W:") || l.starts_with("dpkg: error"))
    }

    /// `None` on success, otherwise what went wrong. A run that exits 0 but could not fetch
    /// an index (apt before 2.1 only warns) failed too.
    pub fn failure(&self) -> Option<Failure> {
        let diag: Vec<&str> = self.diagnostics().collect();
        let fetch_failed = diag
            .iter()
            .find(|l| l.contains("Failed to fetch") || l.contains("index files failed"));
        if self.status.success() {
            return fetch_failed.map(|l| Failure::Transient(l.to_string()));
        }
        let errors: Vec<&str> = diag
            .iter()
            .copied()
            .filter(|l| !l.starts_with("W:"))
            .collect();
        let not_found: Vec<String> = errors.iter().filter_map(|l| not_found(l)).collect();
        if !not_found.is_empty() {
            return Some(Failure::NotFound(not_found));
        }
        if errors.iter().any(|l| l.contains("dpkg was interrupted")) {
            return Some(Failure::Interrupted);
        }
        if errors.iter().any(|l| LOCKED.iter().any(|p| l.contains(p))) {
            return Some(Failure::Locked);
        }
        // Errors only: for a `[trusted=yes]` source apt warns about the key and goes on.
        if errors
            .iter()
            .any(|l| PERMANENT.iter().any(|p| l.contains(p)))
        {
            return Some(Failure::Other);
        }
        if let Some(l) = diag
            .iter()
            .find(|l| TRANSIENT.iter().any(|p| l.contains(p)))
        {
            return Some(Failure::Transient(l.to_string()));
        }
        Some(Failure::Other)
    }

    /// One line for an error: the command, its status and its error messages (or the tail of
    /// its output when it printed none).
    pub fn describe(&self) -> String {
        let mut said: Vec<&str> = self.diagnostics().collect();
        if said.is_empty() {
            let n = self.lines.len();
            said = self.lines[n.saturating_sub(3)..]
                .iter()
                .map(|l| l.trim())
                .collect();
        }
        super::cmd::failed(&self.cmd, self.status, &said)
    }

    /// The error and warning lines that name `uri` (apt names a source by its URI, without
    /// a trailing `/`).
    pub fn about(&self, uri: &str) -> Vec<&str> {
        let uri = uri.trim_end_matches('/');
        self.diagnostics().filter(|l| l.contains(uri)).collect()
    }
}

/// The package named by one "not found" error line of apt, if it is one.
fn not_found(line: &str) -> Option<String> {
    if let Some(name) = line.strip_prefix("E: Unable to locate package ") {
        return Some(name.trim().to_string());
    }
    let quoted: Vec<&str> = line.split('\'').skip(1).step_by(2).collect();
    if line.contains("has no installation candidate") {
        return quoted.first().map(|s| s.to_string());
    }
    if line.contains("' was not found")
        && (line.starts_with("E: Version") || line.starts_with("E: Release"))
    {
        // "E: Version '9.9' for 'hello' was not found"
        return quoted.get(1).map(|s| s.to_string());
    }
    None
}

/// Run `cmd`, logging its output line by line as it comes (`what` prefixes each line), and
/// return how it ended. Only failing to start it is an error here; the caller judges the
/// exit status through [`Ran::failure`].
pub fn run(cmd: &mut Command, what: &str) -> Result<Ran> {
    let shown = super::cmd::display(cmd);
    let mut child = super::cmd::spawn_piped(cmd)?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let (mut lines, err_lines) = std::thread::scope(|s| {
        // A thread named after the step, so that the log lines of apt's stderr name it too.
        // Should none be had, the pipe is closed and apt's writes to it fail.
        let err = crate::engine::same_step().spawn_scoped(s, || read_lines(stderr, what));
        let out = read_lines(stdout, what);
        let err_lines = err.map(|t| t.join().unwrap_or_default());
        (out, err_lines.unwrap_or_default())
    });
    lines.extend(err_lines);
    let status = child
        .wait()
        .with_context(|| format!("cannot wait for {shown}"))?;
    Ok(Ran {
        cmd: shown,
        status,
        lines,
    })
}

fn read_lines(r: impl Read, what: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in BufReader::new(r).split(b'\n') {
        let Ok(line) = line else { break };
        let line = String::from_utf8_lossy(&line).trim_end().to_string();
        if !line.is_empty() {
            log::info!("{what}: {line}");
            out.push(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn ran(code: i32, text: &str) -> Ran {
        Ran {
            cmd: "apt-get install".into(),
            status: ExitStatus::from_raw(code << 8),
            lines: text.lines().map(String::from).collect(),
        }
    }

    #[test]
    fn installed_means_install_ok_installed() {
        let m = parse_installed(
            "hello\tinstall ok installed\t2.10-3\n\
             tree\tdeinstall ok config-files\t2.1.0-1\n\
             vim\tinstall ok half-configured\t9.0\n\
             git\thold ok installed\t1:2.39\n\
             junk line\n",
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m["hello"], "2.10-3");
        assert_eq!(m["git"], "1:2.39");
    }

    #[test]
    fn classifies_apt_failures() {
        assert_eq!(ran(0, "Reading package lists...").failure(), None);
        let f = ran(100, "Reading...\nE: Unable to locate package nosuch\n").failure();
        assert_eq!(f, Some(Failure::NotFound(vec!["nosuch".into()])));
        let f = ran(
            100,
            "E: Package 'foo' has no installation candidate\nE: Version '9.9' for 'hello' was not found",
        )
        .failure();
        assert_eq!(
            f,
            Some(Failure::NotFound(vec!["foo".into(), "hello".into()]))
        );
        let f = ran(100, "E: dpkg was interrupted, you must manually run 'dpkg --configure -a' to correct the problem.").failure();
        assert_eq!(f, Some(Failure::Interrupted));
        let f = ran(
            100,
            "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 12 (apt-get)",
        )
        .failure();
        assert_eq!(f, Some(Failure::Locked));
        let f = ran(
            100,
            "dpkg: error: dpkg frontend lock was locked by another process with pid 7",
        )
        .failure();
        assert_eq!(f, Some(Failure::Locked));
        let f = ran(100, "Err:1 http://x ./ Packages\nE: Failed to fetch http://x/./Packages  503  Service Unavailable").failure();
        assert!(matches!(f, Some(Failure::Transient(m)) if m.contains("503")));
        let f = ran(
            100,
            "E: Failed to fetch http://deb/x.deb  Hash Sum mismatch",
        )
        .failure();
        assert!(matches!(f, Some(Failure::Transient(_))));
        // A lock wait that ended before an unrelated failure is not a lock failure.
        let f = ran(100, "Waiting for cache lock: Could not get lock /var/lib/dpkg/lock-frontend\nE: Sub-process /usr/bin/dpkg returned an error code (1)").failure();
        assert_eq!(f, Some(Failure::Other));
        // A key that does not verify the repository: final, and about its URI.
        let r = ran(100, "Err:1 http://127.0.0.1:5 ./ InRelease\n  The following signatures couldn't be verified because the public key is not available: NO_PUBKEY 0123\nW: GPG error: http://127.0.0.1:5 ./ InRelease: The following signatures couldn't be verified because the public key is not available: NO_PUBKEY 0123\nE: The repository 'http://127.0.0.1:5 ./ InRelease' is not signed.");
        assert_eq!(r.failure(), Some(Failure::Other));
        assert_eq!(r.about("http://127.0.0.1:5/").len(), 2);
        assert!(r.about("http://127.0.0.1:6/").is_empty());
        let r = ran(100, "E: Failed to fetch http://127.0.0.1:5/./InRelease  Sub-process /usr/bin/sqv returned an error code (1), error message is: Missing key 3E1F, which is needed to verify signature.");
        assert_eq!(r.failure(), Some(Failure::Other));
        // apt before 2.1 exits 0 when an index could not be fetched.
        let f = ran(0, "W: Failed to fetch http://x/InRelease  Could not resolve 'x'\nW: Some index files failed to download.").failure();
        assert!(matches!(f, Some(Failure::Transient(_))));
    }

    #[test]
    fn describe_names_command_and_errors() {
        let d = ran(100, "Reading...\nE: Unable to locate package nosuch").describe();
        assert!(
            d.starts_with(
                "apt-get install failed (exit status: 100): E: Unable to locate package nosuch"
            ),
            "{d}"
        );
    }

    #[test]
    fn lists_are_stale_when_missing_or_old() {
        let now = SystemTime::now();
        let day = Duration::from_secs(86400);
        assert!(stale(None, now, day));
        assert!(!stale(Some(now - Duration::from_secs(60)), now, day));
        assert!(stale(Some(now - 2 * day), now, day));
        assert!(!stale(Some(now + day), now, day));
    }
}
