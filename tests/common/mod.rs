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
