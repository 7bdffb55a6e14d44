//! The packages step against real apt and dpkg: a Debian bookworm root made with `mmdebstrap
//! --variant=minbase`, and a flat repository of `hello` and `tree` served over HTTP on
//! 127.0.0.1 by a server in this file that counts requests and can fail the first ones.
//!
//! The root and the `.deb`s are built once and cached under `target/test-cache/packages/`;
//! each test unpacks its own copy. Building needs mmdebstrap, apt-utils (apt-ftparchive),
//! perl (for the lock holder) and Debian's mirror; without them the tests fail, never skip.

mod common;
use common::{code, olboot, report, stderr, step};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The cached root tarball and repository.
struct Cache {
    root_tar: PathBuf,
    repo: PathBuf,
}

fn must(cmd: &mut Command, what: &str) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Build (once per cache directory) the Debian root tarball and the flat repository.
fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-cache/packages");
        std::fs::create_dir_all(&dir).unwrap();
        let root_tar = dir.join("bookworm-minbase.tar");
        if !root_tar.exists() {
            let tmp = dir.join("bookworm-minbase.tmp.tar");
            must(
                Command::new("nice").args([
                    "mmdebstrap",
                    "--variant=minbase",
                    "--format=tar",
                    "--quiet",
                    "bookworm",
                    tmp.to_str().unwrap(),
                ]),
                "building the Debian root with mmdebstrap (needs the mmdebstrap package and \
                 Debian's mirror)",
            );
            std::fs::rename(&tmp, &root_tar).unwrap();
        }
        let repo = dir.join("repo");
        if !repo.join("Release").exists() {
            let tmp = dir.join("repo.tmp");
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp).unwrap();
            must(
                Command::new("apt-get")
                    .args(["download", "hello", "tree"])
                    .current_dir(&tmp),
                "downloading hello and tree with the host's apt (apt-get update on the host?)",
            );
            let packages = must(
                Command::new("apt-ftparchive")
                    .args(["packages", "."])
                    .current_dir(&tmp),
                "indexing the repository (needs apt-utils)",
            );
            std::fs::write(tmp.join("Packages"), packages).unwrap();
            let release = must(
                Command::new("apt-ftparchive")
                    .args(["release", "."])
                    .current_dir(&tmp),
                "writing the repository's Release file",
            );
            std::fs::write(tmp.join("Release"), release).unwrap();
            let _ = std::fs::remove_dir_all(&repo);
            std::fs::rename(&tmp, &repo).unwrap();
        }
        Cache { root_tar, repo }
    })
}

/// The version of `name` in the test repository.
fn repo_version(name: &str) -> String {
    let text = std::fs::read_to_string(cache().repo.join("Packages")).unwrap();
    text.split("\n\n")
        .find(|s| s.lines().any(|l| l == format!("Package: {name}")))
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Version: ")))
        .unwrap_or_else(|| panic!("{name} is not in the test repository"))
        .to_string()
}

/// How the mirror misbehaves for its first requests.
#[derive(Clone, Copy)]
enum Fault {
    /// Answer 503 Service Unavailable.
    Unavailable,
    /// Close the connection without answering.
    Drop,
}

/// A flat apt repository over HTTP on 127.0.0.1 that counts the requests it gets and fails the
/// first ones for files it has.
struct Mirror {
    port: u16,
    requests: Arc<AtomicUsize>,
    failures_left: Arc<AtomicUsize>,
}

impl Mirror {
    /// A mirror whose first `fail_first` requests for files it has and whose names end in
    /// `which` fail with `fault`.
    fn start(fault: Fault, fail_first: usize, which: &'static str) -> Mirror {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let failures_left = Arc::new(AtomicUsize::new(fail_first));
        let repo = cache().repo.clone();
        let (req, fail) = (requests.clone(), failures_left.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (repo, req, fail) = (repo.clone(), req.clone(), fail.clone());
                std::thread::spawn(move || serve(conn, &repo, &req, &fail, (fault, which)));
            }
        });
        Mirror {
            port,
            requests,
            failures_left,
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn reset(&self) {
        self.requests.store(0, Ordering::SeqCst);
        self.failures_left.store(0, Ordering::SeqCst);
    }
}

/// Answer the requests of one (keep-alive, possibly pipelined) connection.
fn serve(
    conn: TcpStream,
    repo: &Path,
    req: &AtomicUsize,
    fail: &AtomicUsize,
    (fault, which): (Fault, &str),
) {
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h.trim().is_empty() {
                break;
            }
        }
        req.fetch_add(1, Ordering::SeqCst);
        let path = line.split(' ').nth(1).unwrap_or("");
        let name = path.trim_start_matches('/').trim_start_matches("./");
        let body = (!name.is_empty() && !name.contains('/') && !name.starts_with('.'))
            .then(|| std::fs::read(repo.join(name)).ok())
            .flatten();
        // Only requests for files the mirror has fail: apt takes a failed fetch of a file
        // it merely probes for (InRelease, Packages.xz) as "not there".
        let failing = body.is_some()
            && name.ends_with(which)
            && fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if failing {
            if let Fault::Unavailable = fault {
                let _ = w.write_all(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
            return;
        }
        let ok = match body {
            Some(b) => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n",
                    b.len()
                );
                w.write_all(head.as_bytes()).and_then(|_| w.write_all(&b))
            }
            None => w.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
        };
        if ok.is_err() {
            return;
        }
    }
}

/// A Debian root unpacked for one test, with its sources pointing at `mirror` only.
struct Scratch {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    config: PathBuf,
}

impl Scratch {
    fn new(mirror: &Mirror, packages: &[&str]) -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        must(
            Command::new("tar")
                .arg("-C")
                .arg(&root)
                .arg("--numeric-owner")
                .arg("-xf")
                .arg(&cache().root_tar),
            "unpacking the Debian root",
        );
        let apt = root.join("etc/apt");
        let _ = std::fs::remove_file(apt.join("sources.list"));
        let _ = std::fs::remove_dir_all(apt.join("sources.list.d"));
        std::fs::create_dir(apt.join("sources.list.d")).unwrap();
        std::fs::write(
            apt.join("sources.list"),
            format!("deb [trusted=yes] http://127.0.0.1:{}/ ./\n", mirror.port),
        )
        .unwrap();
        // apt ≥ 2.3 retries failed fetches itself; turn that off so that the retries these
        // tests see are olboot's.
        std::fs::write(
            apt.join("apt.conf.d/99olboot-test"),
            "Acquire::Retries \"0\";\n",
        )
        .unwrap();
        let config = dir.path().join("olboot.yaml");
        std::fs::write(
            &config,
            format!(
                "version: 1\npackages:\n  install: [{}]\n",
                packages.join(", ")
            ),
        )
        .unwrap();
        Scratch {
            dir: Some(dir),
            root,
            config,
        }
    }

    /// Run olboot `cmd` (`plan` or `apply`) on this root, checking on the way that the
    /// host's package database is left alone and that nothing of the apt session remains.
    fn olboot(&self, cmd: &str) -> Output {
        let status = std::fs::read("/var/lib/dpkg/status").unwrap();
        let mut c = olboot();
        c.arg(cmd)
            .arg("-c")
            .arg(&self.config)
            .arg("--root")
            .arg(&self.root)
            .args(["--host", "ol-test", "--only", "packages"])
            .env("OLBOOT_RETRIES", "4")
            .env("OLBOOT_BACKOFF_MS", "200")
            .env("OLBOOT_BACKOFF_MAX_MS", "1000")
            .env("OLBOOT_DPKG_LOCK_TIMEOUT_MS", "60000");
        if cmd == "apply" {
            c.arg("--json");
        }
        let out = c.output().expect("cannot run olboot");
        assert!(
            std::fs::read("/var/lib/dpkg/status").unwrap() == status,
            "the host's /var/lib/dpkg/status changed"
        );
        assert_eq!(
            self.mounts(),
            Vec::<String>::new(),
            "mounts left in the root"
        );
        assert!(
            !self.root.join("usr/sbin/policy-rc.d").exists(),
            "policy-rc.d left in the root"
        );
        out
    }

    /// Mount points at or below the root.
    fn mounts(&self) -> Vec<String> {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let prefix = self.root.to_str().unwrap();
        text.lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|t| *t == prefix || t.starts_with(&format!("{prefix}/")))
            .map(String::from)
            .collect()
    }

    /// Installed version of `name` in the root, per its own dpkg.
    fn installed(&self, name: &str) -> Option<String> {
        let out = Command::new("chroot")
            .arg(&self.root)
            .args(["dpkg-query", "-W", "-f=${Status}\\t${Version}", name])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.strip_prefix("install ok installed\t")
            .map(String::from)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Never delete a tree with the host's /dev, /proc or /sys still bound into it.
        for m in self.mounts().iter().rev() {
            let _ = rustix::mount::unmount(m.as_str(), rustix::mount::UnmountFlags::DETACH);
        }
        if !self.mounts().is_empty() {
            if let Some(d) = self.dir.take() {
                eprintln!("keeping {} (still mounted)", d.keep().display());
            }
        }
    }
}

fn changes(r: &serde_json::Value) -> Vec<String> {
    step(r, "packages")["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn installs_then_rerun_changes_nothing() {
    let mirror = Mirror::start(Fault::Unavailable, 0, "");
    let s = Scratch::new(&mirror, &["hello", "tree"]);

    let o = s.olboot("plan");
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert_eq!(
        changes(&report(&o)),
        ["update package lists", "install hello, tree"]
    );
    assert_eq!(mirror.requests(), 0, "plan fetched something");

    let o = s.olboot("apply");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let r = report(&o);
    assert_eq!(step(&r, "packages")["result"], "changed");
    let (hello, tree) = (repo_version("hello"), repo_version("tree"));
    assert_eq!(
        changes(&r),
        [
            "updated package lists".to_string(),
            format!("installed hello {hello}"),
            format!("installed tree {tree}"),
        ]
    );
    assert_eq!(s.installed("hello"), Some(hello));
    assert_eq!(s.installed("tree"), Some(tree));
    let greeting = must(
        Command::new("chroot").arg(&s.root).arg("hello"),
        "running hello in the root",
    );
    assert_eq!(String::from_utf8_lossy(&greeting), "Hello, world!\n");
    assert!(mirror.requests() > 0);

    mirror.reset();
    let o = s.olboot("apply");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let r = report(&o);
    assert_eq!(step(&r, "packages")["result"], "unchanged");
    assert_eq!(
        mirror.requests(),
        0,
        "a converged rerun must not touch the mirror"
    );
    assert!(
        !stderr(&o).contains("apt-get"),
        "a converged rerun ran apt-get:\n{}",
        stderr(&o)
    );
    let o = s.olboot("plan");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

#[test]
fn unknown_package_fails_at_once_with_its_name() {
    let mirror = Mirror::start(Fault::Unavailable, 0, "");
    let s = Scratch::new(&mirror, &["hello", "no-such-package"]);
    let started = Instant::now();
    let o = s.olboot("apply");
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let r = report(&o);
    let p = step(&r, "packages");
    assert_eq!(p["result"], "failed");
    let error = p["error"].as_str().unwrap();
    assert!(error.contains("no-such-package"), "{error}");
    assert!(!error.contains("'hello'"), "{error}");
    assert_eq!(changes(&r), ["updated package lists"]);
    // Not retried: one install attempt, no backoff.
    let installs = stderr(&o)
        .lines()
        .filter(|l| l.contains("running chroot") && l.contains(" install "))
        .count();
    assert_eq!(installs, 1, "{}", stderr(&o));
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(s.installed("hello"), None);
}

/// A process (not olboot, not apt) holding the dpkg frontend lock the way apt and dpkg take
/// it: a POSIX record lock (`fcntl`), which `flock(1)` would not conflict with.
struct LockHolder(Child);

impl LockHolder {
    fn hold(path: &Path, secs: u32) -> LockHolder {
        let script = "use Fcntl; open(my $f, '>>', $ARGV[0]) or die \"open: $!\"; \
             my $l = pack('s s x4 q q i x4', F_WRLCK, 0, 0, 0, 0); \
             fcntl($f, F_SETLKW, $l) or die \"lock: $!\"; $| = 1; print \"locked\\n\"; \
             sleep $ARGV[1];";
        let mut child = Command::new("perl")
            .args(["-e", script])
            .arg(path)
            .arg(secs.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cannot run perl to hold the dpkg lock");
        let mut said = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut said)
            .unwrap();
        assert_eq!(said, "locked\n", "perl did not take the lock");
        LockHolder(child)
    }
}

impl Drop for LockHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn waits_for_the_dpkg_lock() {
    let mirror = Mirror::start(Fault::Unavailable, 0, "");
    let s = Scratch::new(&mirror, &["hello"]);
    let lock = s.root.join("var/lib/dpkg/lock-frontend");
    let held = Instant::now();
    let holder = LockHolder::hold(&lock, 4);
    let o = s.olboot("apply");
    let waited = held.elapsed();
    drop(holder);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(waited >= Duration::from_secs(3), "did not wait: {waited:?}");
    let err = stderr(&o);
    assert!(err.contains("Waiting for cache lock"), "{err}");
    assert!(err.contains("waits up to 1m"), "{err}");
    assert_eq!(s.installed("hello"), Some(repo_version("hello")));
}

#[test]
fn waits_for_the_apt_lists_lock() {
    let mirror = Mirror::start(Fault::Unavailable, 0, "");
    let s = Scratch::new(&mirror, &["tree"]);
    let lock = s.root.join("var/lib/apt/lists/lock");
    let held = Instant::now();
    let holder = LockHolder::hold(&lock, 3);
    let o = s.olboot("apply");
    let waited = held.elapsed();
    drop(holder);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(waited >= Duration::from_secs(3), "did not wait: {waited:?}");
    assert_eq!(s.installed("tree"), Some(repo_version("tree")));
    // apt-get update does not wait for the lists lock itself (DPkg::Lock::Timeout covers the
    // dpkg lock only): olboot does.
    assert!(
        stderr(&o).contains("another process holds the package lock"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn mirror_failing_the_first_two_requests_is_retried() {
    for (fault, which) in [
        (Fault::Unavailable, "Packages"),
        (Fault::Drop, "Packages"),
        (Fault::Unavailable, ".deb"),
        (Fault::Drop, ".deb"),
    ] {
        let mirror = Mirror::start(fault, 2, which);
        let s = Scratch::new(&mirror, &["hello", "tree"]);
        let o = s.olboot("apply");
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        assert!(stderr(&o).contains("retrying in"), "{}", stderr(&o));
        assert_eq!(s.installed("tree"), Some(repo_version("tree")));
        assert_eq!(mirror.failures_left.load(Ordering::SeqCst), 0);
    }
}

#[test]
fn mirror_that_never_answers_fails_after_bounded_retries() {
    let mirror = Mirror::start(Fault::Unavailable, usize::MAX, "");
    let s = Scratch::new(&mirror, &["hello"]);
    let o = s.olboot("apply");
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let r = report(&o);
    let error = step(&r, "packages")["error"].as_str().unwrap().to_string();
    assert!(error.contains("cannot update the package lists"), "{error}");
    assert!(error.contains("Failed to fetch"), "{error}");
    let updates = stderr(&o)
        .lines()
        .filter(|l| l.contains("running chroot") && l.ends_with(" update"))
        .count();
    assert_eq!(updates, 4, "OLBOOT_RETRIES=4 attempts:\n{}", stderr(&o));
}

#[test]
fn interrupted_dpkg_is_repaired_first() {
    let mirror = Mirror::start(Fault::Unavailable, 0, "");
    let s = Scratch::new(&mirror, &["hello"]);
    // What a dpkg killed mid-run leaves: a journal entry apt refuses to work past.
    std::fs::write(s.root.join("var/lib/dpkg/updates/0001"), "").unwrap();
    let o = s.olboot("plan");
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert_eq!(
        changes(&report(&o)),
        [
            "repair the interrupted dpkg (dpkg --configure -a)",
            "update package lists",
            "install hello"
        ]
    );
    let o = s.olboot("apply");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        changes(&report(&o))[0],
        "repaired the interrupted dpkg (dpkg --configure -a)"
    );
    assert_eq!(s.installed("hello"), Some(repo_version("hello")));
}

#[test]
fn ensure_installed_is_the_same_code() {
    use olboot::root::Root;
    use olboot::steps::{packages, Ctx, Done};
    let mirror = Mirror::start(Fault::Unavailable, 0, "");
    let s = Scratch::new(&mirror, &[]);
    let root = Root::at(&s.root);
    let tuning = olboot::tuning::Tuning {
        retries: 2,
        backoff: Duration::from_millis(100),
        ..Default::default()
    };
    let ctx = Ctx {
        root: &root,
        tuning: &tuning,
    };
    let mut done = Done::new("firewall");
    packages::apply_changes(
        &ctx,
        &packages::plan_install(&ctx, &["tree"]).unwrap(),
        &mut done,
    )
    .unwrap();
    assert_eq!(
        done.lines,
        [
            "updated package lists".to_string(),
            format!("installed tree {}", repo_version("tree"))
        ]
    );
    assert!(s.mounts().is_empty());
    mirror.reset();
    let mut done = Done::new("firewall");
    packages::apply_changes(
        &ctx,
        &packages::plan_install(&ctx, &["tree"]).unwrap(),
        &mut done,
    )
    .unwrap();
    assert!(done.lines.is_empty());
    assert_eq!(mirror.requests(), 0);
    // Lists written minutes ago are fresh: no update before installing from them.
    let mut done = Done::new("firewall");
    packages::apply_changes(
        &ctx,
        &packages::plan_install(&ctx, &["tree", "hello"]).unwrap(),
        &mut done,
    )
    .unwrap();
    assert_eq!(
        done.lines,
        [format!("installed hello {}", repo_version("hello"))]
    );
    assert!(s.mounts().is_empty());
}

#[test]
fn session_binds_and_policy_are_undone_and_a_policy_kept() {
    use olboot::root::Root;
    use olboot::sys::chroot::Session;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("usr/sbin")).unwrap();
    std::fs::write(root.join("usr/sbin/policy-rc.d"), "#!/bin/sh\nexit 0\n").unwrap();
    let s = Scratch {
        dir: Some(dir),
        root: root.clone(),
        config: PathBuf::new(),
    };
    let session = Session::enter(&Root::at(&root)).unwrap();
    let mut mounted = s.mounts();
    mounted.sort();
    let expect: Vec<String> = ["dev", "proc", "sys"]
        .iter()
        .map(|d| format!("{}/{d}", root.display()))
        .collect();
    assert_eq!(mounted, expect);
    assert!(root.join("proc/self/mountinfo").exists());
    let policy = std::fs::read_to_string(root.join("usr/sbin/policy-rc.d")).unwrap();
    assert!(policy.ends_with("exit 101\n"), "{policy}");
    let st = Command::new(root.join("usr/sbin/policy-rc.d"))
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(101));
    session.close().unwrap();
    assert!(s.mounts().is_empty());
    assert_eq!(
        std::fs::read_to_string(root.join("usr/sbin/policy-rc.d")).unwrap(),
        "#!/bin/sh\nexit 0\n"
    );
    assert!(!root.join("usr/sbin/policy-rc.d.olboot-saved").exists());
}
