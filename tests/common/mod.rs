//! Helpers shared by the integration tests that drive the built binary on scratch roots.
#![allow(dead_code)] // each test crate uses a different subset

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The binary under test.
pub fn olboot() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_olboot"));
    c.env("RUST_LOG", "info").env("OLBOOT_BACKOFF_MS", "10");
    c
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
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
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
