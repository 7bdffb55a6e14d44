//! Network interfaces of the running kernel, from `ip` (sysfs would show the interfaces of
//! the network namespace it was mounted in, not necessarily this process's).

use super::cmd;
use anyhow::{Context, Result};
use std::process::Command;

/// The names of the bridges in this process's network namespace.
pub fn bridges() -> Result<Vec<String>> {
    let out = cmd::run(Command::new("ip").args(["-o", "link", "show", "type", "bridge"]))
        .context("cannot list the bridges")?;
    Ok(parse_names(&out))
}

/// Interface names from `ip -o link` lines (`2: br-lan: <...> ...`, `5: veth1@if4: ...`).
fn parse_names(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_read_from_ip_lines() {
        let out = "2: br-lan: <BROADCAST,MULTICAST> mtu 1500 qdisc noop state DOWN\\    link/ether 7a:a3\n\
                   7: docker0: <NO-CARRIER,BROADCAST,MULTICAST,UP> mtu 1500\n";
        assert_eq!(super::parse_names(out), ["br-lan", "docker0"]);
    }
}
