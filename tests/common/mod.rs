//! Helpers shared by the integration tests that drive the built binary on scratch roots.
#![allow(dead_code)] // each test crate uses a different subset

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The binary under test.
pub fn olboot() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_olboot"));
    c.env("RUST_LOG", "info").env("OLBOOT_BACKOFF_MS", "10");
    c
}

/// Send SIGTERM to `child` and wait up to `within` for it to end: its status, or `None` (and
/// the child killed) when it was still running.
pub fn sigterm_and_wait(
    child: &mut std::process::Child,
    within: std::time::Duration,
) -> Option<std::process::ExitStatus> {
    let pid = rustix::process::Pid::from_child(child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let sent = std::time::Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            eprintln!("stopped {:?} after SIGTERM", sent.elapsed());
            return Some(st);
        }
        if sent.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Run olboot with `args`, feeding `stdin`.
pub fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut c = olboot();
    c.args(args).stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("cannot start olboot");
    if let Some(s) = stdin {
        use std::io::Write;
        // olboot may exit (a usage error) before reading its input: a broken pipe is its
        // answer, not the test's failure.
        match child.stdin.take().unwrap().write_all(s.as_bytes()) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => panic!("stdin: {e}"),
            _ => {}
        }
    }
    child.wait_with_output().unwrap()
}

/// Exit code of an output.
pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The JSON report printed on stdout.
pub fn report(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not a report ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            stderr(o)
        )
    })
}

/// The step entry `name` of a report.
pub fn step<'a>(r: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {r}"))
}

/// Everything below `dir`: path → (kind, mode, size/target, content digest), to prove that
/// nothing changed.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let desc = if m.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                todo.push(p.clone());
                format!("dir {:o}", m.mode())
            } else {
                format!("file {:o} {:?}", m.mode(), std::fs::read(&p).unwrap())
            };
            out.insert(p.strip_prefix(dir).unwrap().to_path_buf(), desc);
        }
    }
    out
}

/// Write `text` to `path`, creating parents.
pub fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Syscall numbers (x86_64) for [`olboot_denying`].
pub mod nr {
    /// `openat2(2)`, Linux 5.6.
    pub const OPENAT2: u32 = 437;
}

/// `tests/tools/seccomp-deny`, compiled once per build (gcc): `seccomp-deny ERRNO NR,... --
/// PROGRAM ARGS...` runs PROGRAM with the listed syscalls failing with ERRNO.
pub fn seccomp_wrapper() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/seccomp-deny.c");
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("seccomp-deny");
            // Built under a private name then renamed: test binaries may race to build it.
            let tmp = out.with_extension(format!("tmp{}", std::process::id()));
            let st = Command::new("gcc")
                .args(["-O2", "-Wall", "-Werror", "-o"])
                .arg(&tmp)
                .arg(&src)
                .status()
                .expect("cannot run gcc (needed to build tests/tools/seccomp-deny.c)");
            assert!(st.success(), "gcc failed on {}", src.display());
            std::fs::rename(&tmp, &out).unwrap();
            out
        })
        .clone()
}

/// The olboot binary (with [`olboot`]'s environment) under a seccomp filter that makes each
/// syscall of `nrs` fail with `errno` (`libc` numbers: 38 ENOSYS, 1 EPERM).
pub fn olboot_denying(nrs: &[u32], errno: i32) -> Command {
    let list: Vec<String> = nrs.iter().map(|n| n.to_string()).collect();
    let mut c = Command::new(seccomp_wrapper());
    c.arg(errno.to_string())
        .arg(list.join(","))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_olboot"));
    c.env("RUST_LOG", "info").env("OLBOOT_BACKOFF_MS", "10");
    c
}

/// What a comparison of two trees looks at for one entry (see [`tree_manifest`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryFacts {
    /// Path relative to the tree's top.
    pub path: PathBuf,
    /// `dir`, `file`, `symlink` or `other`.
    pub kind: &'static str,
    /// Permission bits with setuid/setgid/sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// mtime in nanoseconds since the epoch.
    pub mtime_ns: i128,
    pub size: u64,
    /// A digest of the content that does not depend on how it is allocated (see
    /// [`content_digest`]); empty for non-files.
    pub content: String,
    /// The symlink's target.
    pub target: Option<PathBuf>,
    /// The first path (in sorted order) of the same inode, for hard links.
    pub same_as: Option<PathBuf>,
    /// Extended attributes, sorted by name, values in hex.
    pub xattrs: Vec<(String, String)>,
    /// Allocated 512-byte blocks (compared with a tolerance, not by `==` of the facts).
    pub blocks: u64,
}

/// Every entry below `dir` (not `dir` itself), sorted by path.
pub fn tree_manifest(dir: &Path) -> Vec<EntryFacts> {
    let mut paths = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                todo.push(p.clone());
            }
            paths.push(p);
        }
    }
    paths.sort();
    let mut inodes: BTreeMap<(u64, u64), PathBuf> = BTreeMap::new();
    paths
        .iter()
        .map(|p| {
            let m = std::fs::symlink_metadata(p).unwrap();
            let rel = p.strip_prefix(dir).unwrap().to_path_buf();
            let ft = m.file_type();
            let kind = if ft.is_dir() {
                "dir"
            } else if ft.is_symlink() {
                "symlink"
            } else if ft.is_file() {
                "file"
            } else {
                "other"
            };
            let same_as = (kind == "file" && m.nlink() > 1).then(|| {
                inodes
                    .entry((m.dev(), m.ino()))
                    .or_insert_with(|| rel.clone())
                    .clone()
            });
            EntryFacts {
                kind,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
                size: if kind == "dir" { 0 } else { m.size() },
                content: if kind == "file" {
                    content_digest(p)
                } else {
                    String::new()
                },
                target: ft.is_symlink().then(|| std::fs::read_link(p).unwrap()),
                same_as,
                xattrs: xattrs(p),
                blocks: m.blocks(),
                path: rel,
            }
        })
        .collect()
}

/// The extended attributes of `p` (not following a symlink), sorted, values in hex.
pub fn xattrs(p: &Path) -> Vec<(String, String)> {
    let mut names = vec![0u8; 64 * 1024];
    let n = rustix::fs::llistxattr(p, &mut names[..]).unwrap_or(0);
    let mut out = Vec::new();
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = std::ffi::OsStr::from_bytes(name);
        let mut v = vec![0u8; 64 * 1024];
        let len = rustix::fs::lgetxattr(p, name, &mut v[..]).unwrap();
        let hex: String = v[..len].iter().map(|b| format!("{b:02x}")).collect();
        out.push((name.to_string_lossy().into_owned(), hex));
    }
    out.sort();
    out
}

/// A digest of a file's content that ignores how it is laid out: the data regions are read
/// (`SEEK_DATA`/`SEEK_HOLE`, so a 60 GB sparse file costs what its data costs) in 4 KiB blocks
/// at their offsets, and all-zero blocks are left out, as holes read as zeros.
pub fn content_digest(p: &Path) -> String {
    use sha2::{Digest, Sha256};
    use std::io::{Read, Seek, SeekFrom};
    use std::os::fd::AsFd;
    let mut f = std::fs::File::open(p).unwrap();
    let size = f.metadata().unwrap().len();
    let mut h = Sha256::new();
    let mut pos = 0u64;
    let mut block = vec![0u8; 4096];
    while pos < size {
        let Ok(data) = rustix::fs::seek(f.as_fd(), rustix::fs::SeekFrom::Data(pos)) else {
            break; // ENXIO: only a hole is left
        };
        let hole = rustix::fs::seek(f.as_fd(), rustix::fs::SeekFrom::Hole(data)).unwrap();
        let mut off = data - data % 4096;
        f.seek(SeekFrom::Start(off)).unwrap();
        while off < hole {
            let want = (4096).min(size - off) as usize;
            f.read_exact(&mut block[..want]).unwrap();
            if block[..want].iter().any(|&b| b != 0) {
                h.update(off.to_le_bytes());
                h.update(&block[..want]);
            }
            off += want as u64;
        }
        pos = hole;
    }
    h.update(size.to_le_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Differences between two manifests, one line each; blocks may differ by `block_slack`
/// 512-byte blocks per file.
/// Directories both trees made after `made_after` (ns since the epoch: parents the archive
/// does not list, made "now") are not compared by mtime.
pub fn manifest_diff(
    a: &[EntryFacts],
    b: &[EntryFacts],
    block_slack: u64,
    made_after: i128,
) -> Vec<String> {
    let mut out = Vec::new();
    let bm: BTreeMap<&Path, &EntryFacts> = b.iter().map(|e| (e.path.as_path(), e)).collect();
    let am: BTreeMap<&Path, &EntryFacts> = a.iter().map(|e| (e.path.as_path(), e)).collect();
    for e in a {
        match bm.get(e.path.as_path()) {
            None => out.push(format!("{}: only in the first tree", e.path.display())),
            Some(o) => {
                let now = e.kind == "dir" && e.mtime_ns > made_after && o.mtime_ns > made_after;
                let (mut x, mut y) = (
                    EntryFacts {
                        blocks: 0,
                        ..e.clone()
                    },
                    EntryFacts {
                        blocks: 0,
                        ..(*o).clone()
                    },
                );
                if now {
                    (x.mtime_ns, y.mtime_ns) = (0, 0);
                }
                if x != y {
                    out.push(format!("{}:\n  {x:?}\n  {y:?}", e.path.display()));
                }
                if e.kind == "file" && e.blocks.abs_diff(o.blocks) > block_slack {
                    out.push(format!(
                        "{}: {} blocks allocated against {}",
                        e.path.display(),
                        e.blocks,
                        o.blocks
                    ));
                }
            }
        }
    }
    for e in b {
        if !am.contains_key(e.path.as_path()) {
            out.push(format!("{}: only in the second tree", e.path.display()));
        }
    }
    out
}

/// The change lines of step `name` in a report.
pub fn change_lines(r: &serde_json::Value, name: &str) -> Vec<String> {
    step(r, name)["changes"]
        .as_array()
        .unwrap_or_else(|| panic!("step {name} has no changes array: {r}"))
        .iter()
        .map(|c| c.as_str().expect("a change line is a string").to_string())
        .collect()
}

/// `apply` reported exactly what `plan` printed for step `name`: the same changes, in the
/// same order, word for word but for the tense of their verbs.
pub fn assert_apply_did_what_plan_said(
    plan: &serde_json::Value,
    apply: &serde_json::Value,
    name: &str,
) {
    let planned: Vec<String> = change_lines(plan, name)
        .iter()
        .map(|l| olboot::steps::in_done_tense(l))
        .collect();
    assert!(
        !planned.is_empty(),
        "plan had no changes for {name}: {plan}"
    );
    assert_eq!(
        planned,
        change_lines(apply, name),
        "plan and apply of {name} differ"
    );
}
