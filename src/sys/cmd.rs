//! Running external programs, always from an argument vector, never through a shell.

use anyhow::{bail, Context, Result};
use std::process::{Child, Command, ExitStatus, Output, Stdio};

/// A printable form of a command line for logs and errors.
pub fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Run `cmd` to completion with stdin closed and return its output, whatever its exit status.
pub fn output(cmd: &mut Command) -> Result<Output> {
    log::debug!("running {}", display(cmd));
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", display(cmd)))
}

/// Run `cmd`, fail unless it exits 0, and return its standard output.
/// The error names the command and carries its status and standard error.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = output(cmd)?;
    if !out.status.success() {
        bail!("{}", failure(cmd, &out));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One line describing a failed command: what ran, how it ended, and the tail of its output.
pub fn failure(cmd: &Command, out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let said = if stderr.trim().is_empty() {
        stdout
    } else {
        stderr
    };
    let lines: Vec<&str> = said.trim().lines().collect();
    failed(
        &display(cmd),
        out.status,
        &lines[lines.len().saturating_sub(3)..],
    )
}

/// The one format of a failed command: `shown` (from [`display`]), its status, and the lines
/// it said that explain it.
pub fn failed(shown: &str, status: ExitStatus, said: &[&str]) -> String {
    let said: Vec<&str> = said.iter().map(|l| l.trim()).collect();
    format!("{shown} failed ({status}): {}", said.join(" / "))
}

/// Start `cmd` with stdin closed and stdout and stderr piped, for a caller that reads its
/// output as it comes.
pub fn spawn_piped(cmd: &mut Command) -> Result<Child> {
    log::info!("running {}", display(cmd));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", display(cmd)))
}

/// Whether `program` can be found on `PATH`.
pub fn exists(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// Run `cmd` with `input` on its standard input; like [`run`] otherwise.
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> Result<String> {
    use std::io::Write;
    log::debug!("running {}", display(cmd));
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", display(cmd)))?;
    // A broken pipe means the program stopped reading early; its exit status says why.
    let written = child.stdin.take().map(|mut s| s.write_all(input));
    let out = child
        .wait_with_output()
        .with_context(|| format!("cannot run {}", display(cmd)))?;
    if !out.status.success() {
        bail!("{}", failure(cmd, &out));
    }
    if let Some(Err(e)) = written {
        return Err(e).with_context(|| format!("cannot write to {}", display(cmd)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
