//! The packages step against real apt and dpkg: Debian bookworm (and, for the signed-source
//! tests, trixie) roots made with `mmdebstrap --variant=minbase`, and a flat repository of
//! `hello`, `tree` and two packages made here, signed with throwaway gpg keys made here (two
//! copies, one per key), served over HTTP on 127.0.0.1 by a server in this file that counts
//! requests and can fail the first ones.
//!
//! The roots, keys and repositories are built once and cached under
//! `target/test-cache/packages/`; each test unpacks its own root. Building needs mmdebstrap,
//! apt-utils (apt-ftparchive), gnupg, perl (for the lock holder) and Debian's mirror; without
//! them the tests fail, never skip.

mod common;
use common::{assert_apply_did_what_plan_said, code, olboot, report, stderr, step};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The cached root tarball and the two copies of the repository, each signed by its own key.
struct Cache {
    root_tar: PathBuf,
    /// Signed with key A.
    repo: PathBuf,
    /// The same packages, signed with key B.
    repo_b: PathBuf,
    /// Key A, ASCII-armored.
    key_a: String,
    /// Key B, ASCII-armored.
    key_b: String,
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

/// Build (once per cache directory) the Debian root tarball, the throwaway keys and the
/// signed flat repositories.
fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-cache/packages");
        std::fs::create_dir_all(&dir).unwrap();
        let root_tar = debian_root(&dir, "bookworm");
        let repos = dir.join("signed-2");
        if !repos.join("b/key.asc").exists() {
            let tmp = dir.join("signed.tmp");
            let _ = std::fs::remove_dir_all(&tmp);
            build_repos(&tmp);
            let _ = std::fs::remove_dir_all(&repos);
            std::fs::rename(&tmp, &repos).unwrap();
        }
        let read = |f: &str| std::fs::read_to_string(repos.join(f)).unwrap();
        Cache {
            root_tar,
            repo: repos.join("a"),
            repo_b: repos.join("b"),
            key_a: read("key-a.asc"),
            key_b: read("key-b.asc"),
        }
    })
}

/// A Debian `suite` root tarball in `dir`, made with mmdebstrap once.
fn debian_root(dir: &Path, suite: &str) -> PathBuf {
    let tar = dir.join(format!("{suite}-minbase.tar"));
    if !tar.exists() {
        let tmp = dir.join(format!("{suite}-minbase.tmp.tar"));
        must(
            Command::new("nice").args([
                "mmdebstrap",
                "--variant=minbase",
                "--format=tar",
                "--quiet",
                suite,
                tmp.to_str().unwrap(),
            ]),
            "building the Debian root with mmdebstrap (needs the mmdebstrap package and \
             Debian's mirror)",
        );
        std::fs::rename(&tmp, &tar).unwrap();
    }
    tar
}

/// The trixie root tarball (apt 3, which verifies signatures with sqv, not gpgv).
fn trixie_tar() -> &'static Path {
    static TAR: OnceLock<PathBuf> = OnceLock::new();
    TAR.get_or_init(|| {
        debian_root(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-cache/packages"),
            "trixie",
        )
    })
}

/// In `dir`: `a/` and `b/`, flat repositories of hello, tree and olboot-test-conf (a package
/// with a config file, made here), signed with the keys `key-a.asc` and `key-b.asc` made
/// here with gpg.
fn build_repos(dir: &Path) {
    let pool = dir.join("pool");
    std::fs::create_dir_all(&pool).unwrap();
    must(
        Command::new("apt-get")
            .args(["download", "hello", "tree"])
            .current_dir(&pool),
        "downloading hello and tree with the host's apt (apt-get update on the host?)",
    );
    build_package(
        dir,
        &pool,
        "olboot-test-conf",
        "",
        &[("etc/olboot-test.conf", "setting = 1\n")],
    );
    build_package(dir, &pool, "olboot-test-needs-tree", "Depends: tree\n", &[]);
    let gnupg = dir.join("gnupg");
    std::fs::create_dir_all(&gnupg).unwrap();
    std::fs::set_permissions(&gnupg, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let gpg = || {
        let mut c = Command::new("gpg");
        c.arg("--homedir").arg(&gnupg).args(["--batch", "--quiet"]);
        c
    };
    for which in ["a", "b"] {
        let uid = format!("olboot test key {which} <{which}@olboot.test>");
        must(
            gpg().args([
                "--passphrase",
                "",
                "--quick-gen-key",
                &uid,
                "ed25519",
                "sign",
                "never",
            ]),
            "making a throwaway signing key (needs gnupg)",
        );
        let key = must(
            gpg().args(["--armor", "--export", &uid]),
            "exporting the key",
        );
        std::fs::write(dir.join(format!("key-{which}.asc")), &key).unwrap();
        let repo = dir.join(which);
        std::fs::create_dir(&repo).unwrap();
        // The key served beside the repository, for key_url.
        std::fs::write(repo.join("key.asc"), &key).unwrap();
        for e in std::fs::read_dir(&pool).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), repo.join(e.file_name())).unwrap();
        }
        let ftp = |what: &str| {
            must(
                Command::new("apt-ftparchive")
                    .args([what, "."])
                    .current_dir(&repo),
                "indexing the repository (needs apt-utils)",
            )
        };
        let packages = ftp("packages");
        std::fs::write(repo.join("Packages"), packages).unwrap();
        let release = ftp("release");
        std::fs::write(repo.join("Release"), release).unwrap();
        let sign = |args: &[&str]| {
            must(
                gpg()
                    .args(["--yes", "--local-user", &uid])
                    .args(args)
                    .current_dir(&repo),
                "signing the repository",
            )
        };
        sign(&["--clearsign", "-o", "InRelease", "Release"]);
        sign(&["--armor", "--detach-sign", "-o", "Release.gpg", "Release"]);
    }
    // gpg started an agent for this home: stop it, the tests leave nothing running.
    must(
        Command::new("gpgconf")
            .arg("--homedir")
            .arg(&gnupg)
            .args(["--kill", "all"]),
        "stopping the test gpg-agent",
    );
}

/// `NAME_1.0_all.deb` in `pool`, with `fields` added to its control file and `files` (paths
/// below `/etc` become config files): `olboot-test-conf` has `/etc/olboot-test.conf`, so that
/// remove (keeps it) and purge (deletes it) can be told apart; `olboot-test-needs-tree`
/// depends on tree.
fn build_package(dir: &Path, pool: &Path, name: &str, fields: &str, files: &[(&str, &str)]) {
    let tree = dir.join(name);
    std::fs::create_dir_all(tree.join("DEBIAN")).unwrap();
    let mut conffiles = String::new();
    for (path, text) in files {
        common::write(&tree.join(path), text);
        if path.starts_with("etc/") {
            conffiles.push_str(&format!("/{path}\n"));
        }
    }
    std::fs::write(
        tree.join("DEBIAN/control"),
        format!(
            "Package: {name}\nVersion: 1.0\nArchitecture: all\n{fields}\
             Maintainer: olboot tests <tests@olboot.test>\n\
             Description: a package made for olboot's tests\n"
        ),
    )
    .unwrap();
    if !conffiles.is_empty() {
        std::fs::write(tree.join("DEBIAN/conffiles"), conffiles).unwrap();
    }
    must(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&tree)
            .arg(pool.join(format!("{name}_1.0_all.deb"))),
        "building a test package",
    );
    std::fs::remove_dir_all(&tree).unwrap();
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
    /// The directory it serves.
    repo: Arc<Mutex<PathBuf>>,
}

impl Mirror {
    /// A mirror whose first `fail_first` requests for files it has and whose names end in
    /// `which` fail with `fault`.
    fn start(fault: Fault, fail_first: usize, which: &'static str) -> Mirror {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let failures_left = Arc::new(AtomicUsize::new(fail_first));
        let repo = Arc::new(Mutex::new(cache().repo.clone()));
        let (req, fail, served) = (requests.clone(), failures_left.clone(), repo.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (repo, req, fail) = (served.clone(), req.clone(), fail.clone());
                std::thread::spawn(move || serve(conn, &repo, &req, &fail, (fault, which)));
            }
        });
        Mirror {
            port,
            requests,
            failures_left,
            repo,
        }
    }

    /// A mirror that always answers.
    fn good() -> Mirror {
        Mirror::start(Fault::Unavailable, 0, "")
    }

    /// Serve `dir` from now on.
    fn serve_dir(&self, dir: &Path) {
        *self.repo.lock().unwrap() = dir.to_path_buf();
    }

    /// Its URI, as a source names it.
    fn uri(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
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
    repo: &Mutex<PathBuf>,
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
        let repo = repo.lock().unwrap().clone();
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
    /// A root whose only source is `mirror`, trusted without a key (`[trusted=yes]`), and a
    /// config that installs `packages`.
    fn new(mirror: &Mirror, packages: &[&str]) -> Scratch {
        let s = Scratch::bare();
        std::fs::write(
            s.root.join("etc/apt/sources.list"),
            format!("deb [trusted=yes] {} ./\n", mirror.uri()),
        )
        .unwrap();
        s.configure(&format!("  install: [{}]\n", packages.join(", ")));
        s
    }

    /// Write the config: `packages` is the body of its `packages:` key.
    fn configure(&self, packages: &str) {
        std::fs::write(&self.config, format!("version: 1\npackages:\n{packages}")).unwrap();
    }

    /// A root with no apt source at all.
    fn bare() -> Scratch {
        Scratch::bare_from(&cache().root_tar)
    }

    /// A root unpacked from `tar`, with no apt source at all.
    fn bare_from(tar: &Path) -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        must(
            Command::new("tar")
                .arg("-C")
                .arg(&root)
                .arg("--numeric-owner")
                .arg("-xf")
                .arg(tar),
            "unpacking the Debian root",
        );
        let apt = root.join("etc/apt");
        let _ = std::fs::remove_file(apt.join("sources.list"));
        let _ = std::fs::remove_dir_all(apt.join("sources.list.d"));
        std::fs::create_dir(apt.join("sources.list.d")).unwrap();
        // apt ≥ 2.3 retries failed fetches itself; turn that off so that the retries these
        // tests see are olboot's.
        std::fs::write(
            apt.join("apt.conf.d/99olboot-test"),
            "Acquire::Retries \"0\";\n",
        )
        .unwrap();
        let config = dir.path().join("olboot.yaml");
        Scratch {
            dir: Some(dir),
            root,
            config,
        }
    }

    /// Run olboot `cmd` (`plan` or `apply`) on this root, checking on the way that the
    /// host's package database is left alone and that nothing of the apt session remains.
    /// `olboot CMD` of the packages step on this root, with quick retries.
    fn command(&self, cmd: &str) -> Command {
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
        c
    }

    fn olboot(&self, cmd: &str) -> Output {
        let status = std::fs::read("/var/lib/dpkg/status").unwrap();
        let host_apt = host_apt_sources();
        let out = self.command(cmd).output().expect("cannot run olboot");
        assert!(
            std::fs::read("/var/lib/dpkg/status").unwrap() == status,
            "the host's /var/lib/dpkg/status changed"
        );
        assert!(
            host_apt_sources() == host_apt,
            "the host's apt sources or keyrings changed"
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

/// The host's own apt sources and keys, to prove a test leaves them alone.
fn host_apt_sources() -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for dir in ["/etc/apt/sources.list.d", "/etc/apt/keyrings"] {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            out.push((e.path(), std::fs::read(e.path()).unwrap_or_default()));
        }
    }
    out.sort();
    out
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

    let planned = report(&o);
    let o = s.olboot("apply");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let r = report(&o);
    assert_eq!(step(&r, "packages")["result"], "changed");
    let (hello, tree) = (repo_version("hello"), repo_version("tree"));
    assert_eq!(
        changes(&r),
        ["updated package lists", "installed hello, tree"]
    );
    assert_apply_did_what_plan_said(&planned, &r, "packages");
    // The versions go to the log.
    assert!(
        stderr(&o).contains(&format!("packages: hello {hello} is installed")),
        "{}",
        stderr(&o)
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
    let holder = LockHolder::hold(&lock, 8);
    let o = s.olboot("apply");
    let waited = held.elapsed();
    drop(holder);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // Unlocked, this apply takes about a second: installing at all while the lock is held
    // (apt cannot take it) and finishing after its release is the wait. apt's own "Waiting
    // for cache lock" line is not asserted: it did not always come (seen once in a full run).
    assert!(waited >= Duration::from_secs(7), "did not wait: {waited:?}");
    let err = stderr(&o);
    assert!(err.contains("waits up to 1m"), "{err}");
    // apt's stderr (its GPG warning for this unsigned test mirror, debconf's notes) is
    // logged from a thread of its own: its lines name the step too.
    let apt_lines: Vec<&str> = err.lines().filter(|l| l.contains("apt-get: ")).collect();
    assert!(apt_lines.iter().any(|l| l.contains("W: ")), "{err}");
    for l in apt_lines {
        assert!(
            l.contains("packages: apt-get: "),
            "a line without its step: {l}"
        );
    }
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
fn sigterm_during_a_retry_wait_stops_at_once() {
    let mirror = Mirror::start(Fault::Unavailable, usize::MAX, "");
    let s = Scratch::new(&mirror, &["hello"]);
    let log = s.root.parent().unwrap().join("olboot.log");
    let mut child = s
        .command("apply")
        .env("OLBOOT_BACKOFF_MS", "30000")
        .env("OLBOOT_BACKOFF_MAX_MS", "30000")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("retrying in 30s")
    {
        assert!(Instant::now() < deadline, "never retried");
        assert!(child.try_wait().unwrap().is_none(), "ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    let asked = mirror.requests();
    let status = common::sigterm_and_wait(&mut child, Duration::from_secs(5))
        .expect("still waiting 5 s after SIGTERM");
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("interrupted by SIGTERM"), "{log}");
    assert_eq!(mirror.requests(), asked, "retried after SIGTERM: {log}");
    assert_eq!(s.mounts(), Vec::<String>::new(), "mounts left in the root");
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
fn plan_install_and_apply_changes_are_the_same_code() {
    use olboot::root::Root;
    use olboot::steps::{packages, Ctx, Done};
    let mirror = Mirror::good();
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
    let install = |names: &[&str]| {
        let changes = packages::plan_install(&ctx, names).unwrap();
        let mut done = Done::new("firewall");
        packages::apply_changes(&ctx, &changes, &mut done).unwrap();
        done.lines
    };
    assert_eq!(
        install(&["tree"]),
        ["updated package lists", "installed tree"]
    );
    assert_eq!(s.installed("tree"), Some(repo_version("tree")));
    assert!(s.mounts().is_empty());
    mirror.reset();
    assert!(install(&["tree"]).is_empty());
    assert_eq!(mirror.requests(), 0);
    // Lists written minutes ago are fresh: no update before installing from them.
    assert_eq!(install(&["tree", "hello"]), ["installed hello"]);
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

/// The config body of one source `olboot-test` on `mirror`, its key given as `key` (a YAML
/// mapping entry such as `key: |` + the text, or `key_file: /path`).
fn source_config(mirror: &Mirror, key: &str, rest: &str) -> String {
    format!(
        "  sources:\n    olboot-test:\n      uris: [{}]\n      suites: [./]\n{key}{rest}",
        mirror.uri()
    )
}

/// `key: |` with `text` indented below it.
fn inline_key(text: &str) -> String {
    let body: String = text.lines().map(|l| format!("        {l}\n")).collect();
    format!("      key: |\n{body}")
}

const SOURCE_FILE: &str = "etc/apt/sources.list.d/olboot-test.sources";
const KEY_FILE: &str = "etc/apt/keyrings/olboot-test.asc";

impl Scratch {
    fn read(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(self.root.join(path)).ok()
    }

    /// The modification times of apt's list files: `apt-get update` rewrites them.
    fn lists_mtimes(&self) -> Vec<(PathBuf, std::time::SystemTime)> {
        let mut out: Vec<_> = std::fs::read_dir(self.root.join("var/lib/apt/lists"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("Packages"))
            .map(|e| (e.path(), e.metadata().unwrap().modified().unwrap()))
            .collect();
        out.sort();
        out
    }

    /// `plan` (pending) then `apply`: apply must report what plan printed. Returns apply's
    /// output.
    fn plan_then_apply(&self, expect: &[&str]) -> Output {
        let o = self.olboot("plan");
        assert_eq!(code(&o), 3, "{}", stderr(&o));
        let planned = report(&o);
        assert_eq!(changes(&planned), expect);
        let o = self.olboot("apply");
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        assert_apply_did_what_plan_said(&planned, &report(&o), "packages");
        o
    }
}

#[test]
fn signed_source_with_an_inline_key_then_a_rerun_without_update() {
    signed_source_then_a_rerun(Scratch::bare());
}

#[test]
fn trixie_signed_source_and_a_wrong_key() {
    signed_source_then_a_rerun(Scratch::bare_from(trixie_tar()));
    wrong_key_restores(Scratch::bare_from(trixie_tar()));
}

fn signed_source_then_a_rerun(s: Scratch) {
    let mirror = Mirror::good();
    s.configure(&source_config(
        &mirror,
        &inline_key(&cache().key_a),
        "  install: [hello]\n",
    ));
    s.plan_then_apply(&[
        "add the key of apt source olboot-test at /etc/apt/keyrings/olboot-test.asc",
        "add apt source olboot-test at /etc/apt/sources.list.d/olboot-test.sources",
        "update package lists",
        "install hello",
    ]);
    assert_eq!(s.installed("hello"), Some(repo_version("hello")));
    assert_eq!(s.read(KEY_FILE).as_deref(), Some(cache().key_a.as_str()));
    assert_eq!(
        s.read(SOURCE_FILE).unwrap(),
        format!(
            "# Written by olboot from packages.sources.olboot-test; changes here are undone.\n\
             Types: deb\nURIs: {}\nSuites: ./\nSigned-By: /etc/apt/keyrings/olboot-test.asc\n",
            mirror.uri()
        )
    );
    // No `trusted=yes` anywhere: apt took the repository because the key verified its
    // InRelease, which it keeps.
    let inrelease = s.root.join(format!(
        "var/lib/apt/lists/127.0.0.1:{}_._InRelease",
        mirror.port
    ));
    assert!(inrelease.exists(), "{} missing", inrelease.display());

    let lists = s.lists_mtimes();
    assert!(!lists.is_empty());
    mirror.reset();
    let o = s.olboot("apply");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(step(&report(&o), "packages")["result"], "unchanged");
    assert_eq!(mirror.requests(), 0, "the rerun fetched from the mirror");
    assert_eq!(s.lists_mtimes(), lists, "the rerun rewrote apt's lists");
    let o = s.olboot("plan");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

#[test]
fn key_by_file_then_a_key_change_runs_the_update() {
    use std::os::unix::fs::PermissionsExt;
    let mirror = Mirror::good();
    let s = Scratch::bare();
    let key = s.root.join("etc/olboot/test.asc");
    common::write(&key, &cache().key_a);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o664)).unwrap();
    s.configure(&source_config(
        &mirror,
        "      key_file: /etc/olboot/test.asc\n",
        "  install: [tree]\n",
    ));
    // Whoever can write the key decides what gets installed: refused.
    let o = s.olboot("plan");
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let error = step(&report(&o), "packages")["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        error.contains("packages.sources.olboot-test.key_file")
            && error.contains("not writable by group or others"),
        "{error}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    s.plan_then_apply(&[
        "add the key of apt source olboot-test at /etc/apt/keyrings/olboot-test.asc",
        "add apt source olboot-test at /etc/apt/sources.list.d/olboot-test.sources",
        "update package lists",
        "install tree",
    ]);
    assert_eq!(s.installed("tree"), Some(repo_version("tree")));

    // The repository is re-signed with key B, and the key file follows.
    mirror.serve_dir(&cache().repo_b);
    common::write(&key, &cache().key_b);
    mirror.reset();
    s.plan_then_apply(&[
        "replace the key of apt source olboot-test at /etc/apt/keyrings/olboot-test.asc",
        "update package lists",
    ]);
    assert!(
        mirror.requests() > 0,
        "no apt-get update ran for the new key"
    );
    assert_eq!(s.read(KEY_FILE).as_deref(), Some(cache().key_b.as_str()));
}

#[test]
fn a_wrong_key_fails_naming_the_source_and_restores_the_previous_files() {
    wrong_key_restores(Scratch::bare());
}

fn wrong_key_restores(s: Scratch) {
    let mirror = Mirror::good();
    let good = source_config(&mirror, &inline_key(&cache().key_a), "  install: [hello]\n");
    s.configure(&good);
    let o = s.olboot("apply");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let (source, key) = (s.read(SOURCE_FILE), s.read(KEY_FILE));

    // Key B does not verify the repository signed with key A.
    s.configure(&source_config(
        &mirror,
        &inline_key(&cache().key_b),
        "  install: [hello, tree]\n",
    ));
    let o = s.olboot("apply");
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let r = report(&o);
    let error = step(&r, "packages")["error"].as_str().unwrap().to_string();
    assert!(
        error.starts_with("apt source olboot-test (packages.sources.olboot-test) does not update")
            && ["NO_PUBKEY", "not signed", "Missing key"]
                .iter()
                .any(|w| error.contains(w)),
        "{error}"
    );
    assert!(
        error.contains("restored the previous /etc/apt/keyrings/olboot-test.asc"),
        "{error}"
    );
    assert_eq!(changes(&r), Vec::<String>::new(), "nothing of it held");
    assert_eq!(s.read(KEY_FILE), key);
    assert_eq!(s.read(SOURCE_FILE), source);
    assert_eq!(s.installed("tree"), None);

    // A new source with a wrong key is removed again.
    let other = Mirror::good();
    s.configure(&format!(
        "{}    other:\n      uris: [{}]\n      suites: [./]\n{}  install: [hello]\n",
        source_config(&mirror, &inline_key(&cache().key_a), ""),
        other.uri(),
        inline_key(&cache().key_b)
    ));
    let o = s.olboot("apply");
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let error = step(&report(&o), "packages")["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(error.starts_with("apt source other "), "{error}");
    assert!(
        error.contains("removed the new /etc/apt/sources.list.d/other.sources"),
        "{error}"
    );
    assert!(s.read("etc/apt/sources.list.d/other.sources").is_none());
    assert!(s.read("etc/apt/keyrings/other.asc").is_none());

    // apt is as usable as before: back on the good config, it is converged, and installs.
    s.configure(&good);
    let o = s.olboot("plan");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    s.configure(&good.replace("install: [hello]", "install: [hello, tree]"));
    let o = s.olboot("apply");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(s.installed("tree"), Some(repo_version("tree")));
}

#[test]
fn remove_keeps_config_files_and_purge_deletes_them() {
    let mirror = Mirror::good();
    let s = Scratch::new(&mirror, &["hello", "olboot-test-conf"]);
    let o = s.olboot("apply");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let conf = s.root.join("etc/olboot-test.conf");
    assert!(conf.exists());

    s.configure("  install: [hello]\n  remove: [olboot-test-conf, tree]\n");
    s.plan_then_apply(&["remove olboot-test-conf"]);
    assert_eq!(s.installed("olboot-test-conf"), None);
    assert_eq!(s.status("olboot-test-conf"), "deinstall ok config-files");
    assert!(conf.exists(), "remove deleted the config file");
    let o = s.olboot("plan");
    assert_eq!(
        code(&o),
        0,
        "not installed: nothing to remove\n{}",
        stderr(&o)
    );

    s.configure("  install: [olboot-test-conf]\n");
    s.plan_then_apply(&["install olboot-test-conf"]);
    s.configure("  remove: [olboot-test-conf]\n  purge: true\n");
    s.plan_then_apply(&["purge olboot-test-conf"]);
    assert!(!conf.exists(), "purge kept the config file");
    assert_eq!(s.status("olboot-test-conf"), "");
    assert_eq!(s.installed("hello"), Some(repo_version("hello")));
}

impl Scratch {
    /// dpkg's status of `name` in the root, empty when it knows nothing of it.
    fn status(&self, name: &str) -> String {
        let out = Command::new("chroot")
            .arg(&self.root)
            .args(["dpkg-query", "-W", "-f=${Status}", name])
            .output()
            .unwrap();
        let status = String::from_utf8_lossy(&out.stdout).into_owned();
        if status == "unknown ok not-installed" {
            String::new()
        } else {
            status
        }
    }
}

#[test]
fn bad_package_configs_are_refused_naming_the_key() {
    let key = "      key: |\n        -----BEGIN PGP PUBLIC KEY BLOCK-----\n        x\n        -----END PGP PUBLIC KEY BLOCK-----\n";
    let source = |extra: &str| {
        format!(
            "version: 1\npackages:\n  sources:\n    docker:\n      uris: [https://m/docker/debian]\n      suites: [trixie]\n      components: [stable]\n{extra}"
        )
    };
    let cases: [(String, &str); 7] = [
        (
            source(&format!("{key}      key_file: /etc/k.asc\n")),
            "packages.sources.docker.key: give only one of key, key_file or key_url",
        ),
        (source(""), "packages.sources.docker.key: missing"),
        (
            source("      key_url: https://m/k.asc\n"),
            "packages.sources.docker.key_sha256: missing: required with key_url",
        ),
        (
            source("      key: not a key\n"),
            "not an ASCII-armored public key",
        ),
        (
            source(key).replace("suites: [trixie]", "suites: [./]"),
            "packages.sources.docker.components: a flat repository",
        ),
        (
            source(key).replace("docker:", "Docker:"),
            "packages.sources.Docker: a source name",
        ),
        (
            format!(
                "{}  install: [docker-ce, runc]\n  remove: [runc=1.0]\n",
                source(key)
            ),
            "packages.remove: runc is also in packages.install",
        ),
    ];
    for (text, want) in &cases {
        let o = common::run(&["validate", "-c", "-"], Some(text));
        assert_eq!(code(&o), 2, "{text}\n{}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains(want), "want {want:?} in:\n{e}");
    }
    let o = common::run(&["validate", "-c", "-"], Some(&source(key)));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

#[test]
fn roles_merge_sources_by_name_and_remove_as_a_union() {
    let fleet = "version: 1\nhosts:\n  ol-web1: [base, web]\nroles:\n  base:\n    packages:\n      sources:\n        a: { uris: [http://a/], suites: [./], key_file: /a.asc }\n        b: { uris: [http://b/], suites: [./], key_file: /b.asc }\n      remove: [runc]\n  web:\n    packages:\n      sources:\n        a: { uris: [http://a2/], suites: [./], key_file: /a.asc }\n      remove: [containerd, runc]\n      install: [runc]\n";
    let c = olboot::config::Config::parse("fleet.yaml", fleet).unwrap();
    let e = format!("{:#}", c.for_host("ol-web1").unwrap_err());
    assert!(
        e.contains("packages.remove: runc is also in packages.install"),
        "{e}"
    );
    let fixed = fleet.replace("      install: [runc]\n", "");
    let c = olboot::config::Config::parse("fleet.yaml", &fixed).unwrap();
    let p = c.for_host("ol-web1").unwrap().packages.unwrap();
    let names: Vec<&str> = p.sources.keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(p.sources["a"].uris[0].0, "http://a2/");
    let remove: Vec<&str> = p.remove.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(remove, ["runc", "containerd"]);
}

#[test]
fn key_by_url_is_checked_against_its_sha256() {
    use sha2::Digest;
    let mirror = Mirror::good();
    let s = Scratch::bare();
    let sha = olboot::config::hex(&sha2::Sha256::digest(cache().key_a.as_bytes()));
    let url = format!("{}key.asc", mirror.uri());
    let wrong = "0".repeat(64);
    s.configure(&source_config(
        &mirror,
        &format!("      key_url: {url}\n      key_sha256: {wrong}\n"),
        "  install: [hello]\n",
    ));
    let o = s.olboot("plan");
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let error = step(&report(&o), "packages")["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        error.contains(&format!(
            "packages.sources.olboot-test.key_url: {url} has sha256 {sha}, not the key_sha256 {wrong}"
        )),
        "{error}"
    );
    s.configure(&source_config(
        &mirror,
        &format!("      key_url: {url}\n      key_sha256: {sha}\n"),
        "  install: [hello]\n",
    ));
    s.plan_then_apply(&[
        "add the key of apt source olboot-test at /etc/apt/keyrings/olboot-test.asc",
        "add apt source olboot-test at /etc/apt/sources.list.d/olboot-test.sources",
        "update package lists",
        "install hello",
    ]);
    assert_eq!(s.read(KEY_FILE).as_deref(), Some(cache().key_a.as_str()));
    assert_eq!(s.installed("hello"), Some(repo_version("hello")));
    // The key in place has the digest: a converged rerun fetches nothing, not even the key.
    mirror.reset();
    let o = s.olboot("apply");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(step(&report(&o), "packages")["result"], "unchanged");
    assert_eq!(mirror.requests(), 0);
}

#[test]
fn an_install_that_brings_back_a_removed_package_fails() {
    let mirror = Mirror::good();
    let s = Scratch::new(&mirror, &["tree"]);
    let o = s.olboot("apply");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // tree must go, but olboot-test-needs-tree needs it: apt would put it back on every run.
    s.configure("  remove: [tree]\n  install: [olboot-test-needs-tree]\n");
    let o = s.olboot("apply");
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let error = step(&report(&o), "packages")["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        error,
        "installing olboot-test-needs-tree brought back tree, which packages.remove says must \
         not be installed"
    );
}
