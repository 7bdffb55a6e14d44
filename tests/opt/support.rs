//! Helpers of the opt tests: a misbehaving HTTP server on 127.0.0.1 that counts requests,
//! a realistic small tree, file-by-file tree comparison, and running the olboot binary on a
//! scratch root.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the server does with one request (taken in order; `Normal` once the script is used up).
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// Serve honestly: `Range` (when `If-Range` matches) gives 206.
    Normal,
    /// Serve honestly but close the connection once the byte at this offset is reached.
    CutAt(usize),
    /// Answer 200 with the whole file whatever the `Range`.
    IgnoreRange,
    /// Answer with this status and no body.
    Status(u16),
    /// Announce this many bytes more than there are, send them all and close.
    LieLength(usize),
    /// Send up to this offset, then hang (the client is expected to be killed).
    Hang(usize),
    /// Send up to this offset, then one byte every 50 ms.
    Trickle(usize),
    /// Answer `302 Found` with this `Location`.
    Redirect(&'static str),
    /// Serve honestly but close the connection after this many bytes of the body.
    Chunk(usize),
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub range: Option<String>,
    pub if_range: Option<String>,
}

/// A test HTTP server on 127.0.0.1 serving `data` at every path.
pub struct Server {
    pub port: u16,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

const ETAG: &str = "\"v1\"";

impl Server {
    pub fn start(data: Vec<u8>, script: Vec<Fault>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let data = Arc::new(data);
        let s2 = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (data, seen, script) = (data.clone(), s2.clone(), script.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &data, &seen, &script);
                });
            }
        });
        Server { port, seen }
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(
    conn: TcpStream,
    data: &[u8],
    seen: &Mutex<Vec<Seen>>,
    script: &Mutex<VecDeque<Fault>>,
) -> std::io::Result<()> {
    let mut r = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let (mut range, mut if_range) = (None, None);
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "range" => range = Some(v.trim().to_string()),
                "if-range" => if_range = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    seen.lock().unwrap().push(Seen {
        path,
        range: range.clone(),
        if_range: if_range.clone(),
    });
    let fault = script.lock().unwrap().pop_front().unwrap_or(Fault::Normal);
    let mut w = conn;
    let len = data.len();
    let head = |status: &str, extra: String| {
        format!("HTTP/1.1 {status}\r\nConnection: close\r\nETag: {ETAG}\r\n{extra}\r\n")
    };
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok());
    let honor = start.is_some() && if_range.as_deref().is_none_or(|v| v == ETAG);
    match fault {
        Fault::Status(s) => {
            w.write_all(head(&format!("{s} Oops"), "Content-Length: 0\r\n".into()).as_bytes())?;
        }
        Fault::Redirect(to) => {
            let extra = format!("Location: {to}\r\nContent-Length: 0\r\n");
            w.write_all(head("302 Found", extra).as_bytes())?;
        }
        Fault::IgnoreRange => {
            w.write_all(head("200 OK", format!("Content-Length: {len}\r\n")).as_bytes())?;
            w.write_all(data)?;
        }
        Fault::LieLength(extra) => {
            w.write_all(head("200 OK", format!("Content-Length: {}\r\n", len + extra)).as_bytes())?;
            w.write_all(data)?;
        }
        Fault::Normal | Fault::CutAt(_) | Fault::Hang(_) | Fault::Trickle(_) | Fault::Chunk(_) => {
            let from = if honor { start.unwrap_or(0) } else { 0 };
            if from >= len && honor {
                w.write_all(
                    head(
                        "416 Range Not Satisfiable",
                        format!("Content-Range: bytes */{len}\r\nContent-Length: 0\r\n"),
                    )
                    .as_bytes(),
                )?;
                return Ok(());
            }
            if honor {
                w.write_all(
                    head(
                        "206 Partial Content",
                        format!(
                            "Content-Range: bytes {from}-{}/{len}\r\nContent-Length: {}\r\n",
                            len - 1,
                            len - from
                        ),
                    )
                    .as_bytes(),
                )?;
            } else {
                w.write_all(head("200 OK", format!("Content-Length: {len}\r\n")).as_bytes())?;
            }
            match fault {
                Fault::CutAt(at) => w.write_all(&data[from..at.max(from).min(len)])?,
                Fault::Chunk(n) => w.write_all(&data[from..(from + n).min(len)])?,
                Fault::Hang(at) => {
                    w.write_all(&data[from..at.max(from).min(len)])?;
                    w.flush()?;
                    std::thread::sleep(Duration::from_secs(60));
                }
                Fault::Trickle(at) => {
                    w.write_all(&data[from..at.max(from).min(len)])?;
                    for b in &data[at.max(from).min(len)..] {
                        w.write_all(std::slice::from_ref(b))?;
                        w.flush()?;
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                _ => w.write_all(&data[from..])?,
            }
        }
    }
    w.flush()?;
    w.shutdown(std::net::Shutdown::Both)
}

/// Deterministic incompressible bytes.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn set_mtime(p: &Path, secs: i64) {
    let st = Command::new("touch")
        .args(["-h", "-d", &format!("@{secs}")])
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success());
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

/// A small tree shaped like a legacy `/opt`: a venv with many small files, an incompressible
/// data file of `big` bytes, deploys with active-deploy symlinks (relative and absolute),
/// hard links, setuid/setgid modes, several owners, a read-only directory and fixed mtimes.
pub fn make_tree(dir: &Path, big: usize) {
    let ol = dir.join("openlibrary");
    let venv = ol.join("venv/lib/python3.11/site-packages");
    for p in 0..6 {
        let pkg = venv.join(format!("pkg{p}"));
        fs::create_dir_all(&pkg).unwrap();
        for f in 0..12 {
            fs::write(
                pkg.join(format!("mod{f}.py")),
                format!("# module {p}.{f}\nprint({f})\n").repeat(f + 1),
            )
            .unwrap();
        }
    }
    fs::create_dir_all(ol.join("venv/bin")).unwrap();
    fs::write(ol.join("venv/bin/python3.11"), noise(4096, 7)).unwrap();
    fs::set_permissions(
        ol.join("venv/bin/python3.11"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    symlink("python3.11", ol.join("venv/bin/python")).unwrap();
    fs::create_dir_all(ol.join("maxmind-geoip")).unwrap();
    fs::write(ol.join("maxmind-geoip/GeoIP.dat"), noise(big, 42)).unwrap();
    for (repo, sha) in [("openlibrary", "abc123"), ("olsystem", "def456")] {
        let d = ol.join(format!("deploys/{repo}/{sha}"));
        fs::create_dir_all(d.join("etc/nginx")).unwrap();
        fs::write(d.join("etc/nginx/nginx.conf"), "worker_processes 4;\n").unwrap();
        fs::write(d.join("README"), format!("{repo} at {sha}\n")).unwrap();
    }
    symlink("deploys/openlibrary/abc123", ol.join("openlibrary")).unwrap();
    symlink(
        "/opt/openlibrary/deploys/olsystem/def456",
        ol.join("olsystem"),
    )
    .unwrap();
    symlink("/nonexistent/dangling", ol.join("dangling")).unwrap();
    fs::hard_link(
        ol.join("deploys/openlibrary/abc123/README"),
        ol.join("README.hardlink"),
    )
    .unwrap();
    let pb = dir.join("petabox");
    fs::create_dir_all(pb.join("sw/bin")).unwrap();
    fs::write(pb.join("sw/bin/suid-helper"), "#!/bin/sh\n").unwrap();
    chown(&pb.join("sw/bin/suid-helper"), 0, 33);
    fs::set_permissions(
        pb.join("sw/bin/suid-helper"),
        fs::Permissions::from_mode(0o4750),
    )
    .unwrap();
    fs::create_dir_all(pb.join("shared")).unwrap();
    chown(&pb.join("shared"), 1000, 1000);
    fs::set_permissions(pb.join("shared"), fs::Permissions::from_mode(0o2775)).unwrap();
    fs::write(pb.join("shared/data.txt"), "x\n").unwrap();
    chown(&pb.join("shared/data.txt"), 1000, 1000);
    fs::write(pb.join("empty"), "").unwrap();
    fs::create_dir_all(pb.join("ro")).unwrap();
    fs::write(pb.join("ro/frozen"), "frozen\n").unwrap();
    fs::set_permissions(pb.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
    chown(&ol.join("olsystem"), 999, 999);
    // Fixed mtimes, children before parents so that setting them does not move the parent's.
    let mut all: Vec<PathBuf> = crate::common::tree_manifest(dir)
        .into_iter()
        .map(|e| e.path)
        .collect();
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, rel) in all.iter().enumerate() {
        set_mtime(&dir.join(rel), 1_600_000_000 + i as i64 * 37);
    }
    set_mtime(dir, 1_700_000_000);
}

/// Assert that trees `a` and `b` are the same file by file ([`crate::common::tree_manifest`]:
/// type, mode, owner, mtime to the second, size, content, link target, hard links, xattrs;
/// the top directories' own metadata included).
pub fn assert_same_tree(a: &Path, b: &Path, with_symlink_mtime: bool) {
    let top = |p: &Path| {
        let m = fs::metadata(p).unwrap();
        (m.mode() & 0o7777, m.uid(), m.gid(), m.mtime())
    };
    assert_eq!(top(a), top(b), "the top directories differ");
    let facts = |p: &Path| {
        let mut v = crate::common::tree_manifest(p);
        for e in &mut v {
            // pack keeps whole seconds (ustar), and only symlinks that were given one.
            e.mtime_ns = e.mtime_ns.div_euclid(1_000_000_000);
            if e.kind == "symlink" && !with_symlink_mtime {
                e.mtime_ns = 0;
            }
        }
        v
    };
    let diff = crate::common::manifest_diff(&facts(a), &facts(b), u64::MAX, i128::MAX);
    assert!(diff.is_empty(), "the trees differ:\n{}", diff.join("\n"));
}

/// The olboot binary ([`crate::common::olboot`]) with the fetch tuned for tests.
pub fn olboot() -> Command {
    let mut c = crate::common::olboot();
    c.env("OLBOOT_BACKOFF_MS", "10")
        .env("OLBOOT_BACKOFF_MAX_MS", "50")
        .env("OLBOOT_RETRIES", "3")
        .env("OLBOOT_CONNECT_TIMEOUT_MS", "2000")
        .env("OLBOOT_STALL_TIMEOUT_MS", "5000");
    c
}

/// A scratch root with a config file; the opt path is `/1/opt`.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("root/1")).unwrap();
        Scratch { dir }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// `opt.path` on this machine.
    pub fn opt(&self) -> PathBuf {
        self.root().join("1/opt")
    }

    pub fn staging(&self) -> PathBuf {
        self.root().join("1/.olboot-staging-opt")
    }

    /// Write a config with these mirrors, sha256 and extra `archive` lines.
    pub fn config(&self, urls: &[String], sha: Option<&str>, extra: &str, expose: &str) -> PathBuf {
        let mut s = format!(
            "version: 1\nopt:\n  path: /1/opt\n  expose: {expose}\n  archive:\n    urls:\n"
        );
        for u in urls {
            s.push_str(&format!("      - {u}\n"));
        }
        if let Some(h) = sha {
            s.push_str(&format!("    sha256: {h}\n"));
        }
        s.push_str(extra);
        let p = self.dir.path().join("olboot.yaml");
        fs::write(&p, s).unwrap();
        p
    }

    pub fn apply(&self, config: &Path) -> Output {
        self.run("apply", config, &[])
    }

    pub fn run(&self, verb: &str, config: &Path, env: &[(&str, &str)]) -> Output {
        self.run_with(olboot(), verb, config, env)
    }

    /// [`Scratch::run`] with the command `c` (olboot under a wrapper, say).
    pub fn run_with(&self, c: Command, verb: &str, config: &Path, env: &[(&str, &str)]) -> Output {
        let out = self.command(c, verb, config, env).output().unwrap();
        eprintln!(
            "--- olboot {verb}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The command `c` set up as [`Scratch::run_with`] runs it.
    pub fn command(
        &self,
        mut c: Command,
        verb: &str,
        config: &Path,
        env: &[(&str, &str)],
    ) -> Command {
        c.env("OLBOOT_BACKOFF_MS", "10")
            .env("OLBOOT_BACKOFF_MAX_MS", "50")
            .env("OLBOOT_RETRIES", "3");
        // `verb` may carry options: "apply --json".
        c.args(verb.split(' '))
            .arg("-c")
            .arg(config)
            .arg("--root")
            .arg(self.root())
            .args(["--host", "ol-web1", "--only", "opt"]);
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }

    /// Nothing of olboot's beside opt.path but the tree itself.
    pub fn assert_nothing_beside(&self) {
        let names: Vec<String> = fs::read_dir(self.root().join("1"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "opt")
            .collect();
        assert!(names.is_empty(), "left beside the tree: {names:?}");
    }
}

/// A packed test tree: (source dir holder, source dir, archive bytes, sha256).
pub struct Packed {
    pub dir: tempfile::TempDir,
    pub src: PathBuf,
    pub archive: PathBuf,
    pub bytes: Vec<u8>,
    pub sha256: String,
}

/// Make a tree with a data file of `big` bytes and pack it with `olboot pack`.
pub fn packed(big: usize) -> Packed {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("opt");
    fs::create_dir(&src).unwrap();
    make_tree(&src, big);
    let archive = dir.path().join("opt.tar.zst");
    let sha256 = pack(&src, &archive);
    let bytes = fs::read(&archive).unwrap();
    Packed {
        dir,
        src,
        archive,
        bytes,
        sha256,
    }
}

/// `olboot pack SRC -o ARCHIVE`; the sha256 it prints.
pub fn pack(src: &Path, archive: &Path) -> String {
    let out = olboot()
        .arg("pack")
        .arg(src)
        .arg("-o")
        .arg(archive)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pack failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The report of the last apply under `root`.
pub fn report(root: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(root.join("var/lib/olboot/report.json")).unwrap())
        .unwrap()
}

/// The opt step's entry of a report.
pub fn opt_step(root: &Path) -> serde_json::Value {
    report(root)["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "opt")
        .unwrap()
        .clone()
}

pub use crate::common::stderr;

/// Run `c` to its end as `Command::output` does, and its peak RSS in KiB (from `wait4`).
pub fn output_and_peak_rss(mut c: Command) -> (Output, u64) {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    c.stdin(Stdio::null())
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap());
    // Reaped by wait4 below, which also gives the peak RSS that Child::wait does not.
    #[allow(clippy::zombie_processes)]
    let child = c.spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: a zeroed rusage is valid; wait4 fills it and reaps the child (which is not
    // waited for again: dropping a Child does not wait).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::wait4(pid, &mut status, 0, &mut usage) }, pid);
    let output = Output {
        status: std::process::ExitStatus::from_raw(status),
        stdout: fs::read(&out).unwrap(),
        stderr: fs::read(&err).unwrap(),
    };
    eprintln!("--- olboot: {}\n{}", output.status, stderr(&output));
    (output, usage.ru_maxrss as u64)
}

/// Start `olboot apply` of `config` on `s` with `env`, send it SIGTERM once `ready` holds,
/// and check it stops `within`: exit 1, the opt step failed with `interrupted by SIGTERM`,
/// nothing beside `opt.path`, the lock free again.
pub fn sigterm_when(
    s: &Scratch,
    config: &Path,
    env: &[(&str, &str)],
    ready: impl Fn() -> bool,
    within: Duration,
) {
    let log = s.dir.path().join("olboot.log");
    let mut c = s.command(olboot(), "apply", config, env);
    c.stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap());
    let mut child = c.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(Instant::now() < deadline, "never got going");
        assert!(child.try_wait().unwrap().is_none(), "ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    let Some(status) = crate::common::sigterm_and_wait(&mut child, within) else {
        panic!(
            "still running {within:?} after SIGTERM:\n{}",
            fs::read_to_string(&log).unwrap()
        );
    };
    let log = fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{log}");
    let step = opt_step(&s.root());
    assert_eq!(step["result"], "failed", "{step}");
    assert_eq!(step["error"], "interrupted by SIGTERM", "{step}");
    assert!(!s.staging().exists(), "staging left");
    s.assert_nothing_beside();
    assert!(!s.opt().exists());
    // The lock is free: a plan (which takes no lock) and a second apply's lock both work.
    let again = s.run("plan", config, &[]);
    assert_eq!(again.status.code(), Some(3));
}
