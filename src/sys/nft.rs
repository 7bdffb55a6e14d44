//! The `nft` command: check and load rulesets, list a table. Rulesets go to `nft` on its
//! standard input, so no temporary file can be left behind or read by the boot-time loader.

use super::cmd;
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Check `ruleset` against the running kernel (`nft -c -f -`) without changing anything.
pub fn check(ruleset: &str) -> Result<()> {
    feed(&["-c", "-f", "-"], ruleset)
}

/// Load `ruleset` (`nft -f -`): one transaction, all of it or nothing.
pub fn load(ruleset: &str) -> Result<()> {
    feed(&["-f", "-"], ruleset)
}

/// Check the file at `path` (`nft -c -f PATH`), with what it includes, without changing
/// anything.
pub fn check_file(path: &Path) -> Result<()> {
    cmd::run(Command::new("nft").arg("-c").arg("-f").arg(path)).map(drop)
}

/// The stateless listing (`nft -s list table FAMILY NAME`: no counter values) of a table,
/// or `None` when the kernel has no such table.
pub fn list_table(family: &str, name: &str) -> Result<Option<String>> {
    let tables = cmd::run(Command::new("nft").args(["list", "tables", family]))?;
    let wanted = format!("table {family} {name}");
    if !tables.lines().any(|l| l.trim() == wanted) {
        return Ok(None);
    }
    cmd::run(Command::new("nft").args(["-s", "list", "table", family, name])).map(Some)
}

/// Run `nft ARGS` with `input` on its standard input; fail with nft's first error lines,
/// which name the offending line of the input.
fn feed(args: &[&str], input: &str) -> Result<()> {
    let mut command = Command::new("nft");
    command.args(args);
    let shown = cmd::display(&command);
    log::debug!("running {shown}");
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {shown}"))?;
    // A broken pipe here means nft stopped reading early; its exit status says why.
    let written = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(input.as_bytes()));
    let out = child
        .wait_with_output()
        .with_context(|| format!("cannot run {shown}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let head: Vec<&str> = stderr.trim().lines().take(3).collect();
        bail!("{shown} failed ({}): {}", out.status, head.join(" / "));
    }
    if let Some(Err(e)) = written {
        return Err(e).with_context(|| format!("cannot write the ruleset to {shown}"));
    }
    Ok(())
}
