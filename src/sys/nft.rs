//! The `nft` command: check and load rulesets, list a table. Rulesets go to `nft` on its
//! standard input, so no temporary file can be left behind or read by the boot-time loader.

use super::cmd;
use anyhow::Result;
use std::path::Path;
use std::process::Command;

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

/// Run `nft ARGS` with `input` on its standard input; a failure carries nft's last lines,
/// which name the offending line of the input.
fn feed(args: &[&str], input: &str) -> Result<()> {
    cmd::run_with_input(Command::new("nft").args(args), input.as_bytes()).map(drop)
}
