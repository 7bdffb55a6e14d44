//! The config file: parsing, the fleet's host patterns and roles, merging, and validation.
//!
//! Every mistake is a [`Invalid`] error naming the source (file, `-` or URL) and the key;
//! syntax and type errors also carry the line and column that the YAML parser reports.
//! Values are checked while they are parsed (absolute paths, ports, CIDRs, durations: see
//! [`values`]), so a [`HostConfig`] that exists is one the steps can trust.

use anyhow::Result;
use indexmap::IndexMap;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::fmt;

mod check;
mod pattern;
mod steps;
pub mod values;

pub use pattern::HostPattern;
pub use steps::*;
pub use values::*;

/// A config error: the run stops with exit code 2 before anything is touched.
#[derive(Debug)]
pub struct Invalid(pub String);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Invalid {}

fn invalid(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Invalid(msg.into()))
}

/// A parsed config file and where it came from.
#[derive(Debug)]
pub struct Config {
    /// The file path, `-` or URL it was read from, for messages.
    pub source: String,
    /// sha256 of the file's bytes, for the report.
    pub sha256: String,
    file: File,
}

/// The steps of one host, after its roles were merged in order.
#[derive(Debug, Clone, Default)]
pub struct HostConfig {
    /// Firewall rules, if the firewall step is configured.
    pub firewall: Option<Firewall>,
    /// Data volumes, in order.
    pub volumes: Vec<Volume>,
    /// The `/opt` tree, if configured.
    pub opt: Option<Opt>,
    /// Packages, if configured.
    pub packages: Option<Packages>,
    /// olsystem links, in order.
    pub links: Vec<Link>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    #[serde(default, deserialize_with = "values::unique_keys")]
    hosts: Option<IndexMap<String, Vec<String>>>,
    #[serde(default, deserialize_with = "values::unique_keys")]
    roles: Option<IndexMap<String, Role>>,
    firewall: Option<Firewall>,
    volumes: Option<Vec<Volume>>,
    opt: Option<Opt>,
    packages: Option<Packages>,
    links: Option<Vec<Link>>,
}

/// The steps a role (or a single-host file) sets; what it leaves out, it does not change.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Role {
    firewall: Option<Firewall>,
    volumes: Option<Vec<Volume>>,
    opt: Option<Opt>,
    packages: Option<Packages>,
    links: Option<Vec<Link>>,
}

/// Flow collections (`[`, `{`) nested deeper than this are refused before parsing: the YAML
/// parser takes time quadratic in the depth (80,000 levels: 14 s), and a config may come
/// from a URL.
const MAX_DEPTH: usize = 256;

/// The line where `text`'s brackets first nest deeper than [`MAX_DEPTH`], if they do. A
/// rough count (quotes and comments are not told apart) that only ever over-counts by the
/// unmatched brackets of plain scalars such as `ol-web[1-3]`, which are matched.
fn too_deep(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, line) in text.lines().enumerate() {
        for b in line.bytes() {
            match b {
                b'[' | b'{' => depth += 1,
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
            if depth > MAX_DEPTH {
                return Some(i + 1);
            }
        }
    }
    None
}

impl Config {
    /// Parse config text read from `source` (a path, `-` or a URL, used in messages).
    pub fn parse(source: &str, text: &str) -> Result<Config> {
        if let Some(line) = too_deep(text) {
            return Err(invalid(format!(
                "{source}: line {line}: brackets nested deeper than {MAX_DEPTH} levels"
            )));
        }
        let file: File =
            serde_yaml::from_str(text).map_err(|e| invalid(format!("{source}: {e}")))?;
        let cfg = Config {
            source: source.to_string(),
            sha256: hex(&Sha256::digest(text.as_bytes())),
            file,
        };
        cfg.check_shape()?;
        Ok(cfg)
    }

    fn err(&self, key: &str, msg: impl fmt::Display) -> anyhow::Error {
        invalid(format!("{}: {key}: {msg}", self.source))
    }

    fn single(&self) -> Role {
        let f = &self.file;
        Role {
            firewall: f.firewall.clone(),
            volumes: f.volumes.clone(),
            opt: f.opt.clone(),
            packages: f.packages.clone(),
            links: f.links.clone(),
        }
    }

    /// Whether this is a fleet file (hosts and roles) rather than a single-host one.
    pub fn is_fleet(&self) -> bool {
        self.file.hosts.is_some() || self.file.roles.is_some()
    }

    /// The fleet/single-host shape and the role references, checked once after parsing.
    fn check_shape(&self) -> Result<()> {
        let f = &self.file;
        if f.version != 1 {
            return Err(self.err(
                "version",
                format!("version {} is not supported (only 1)", f.version),
            ));
        }
        if !self.is_fleet() {
            return Ok(());
        }
        // Each role's own list: after the merge, a second volume of the same mountpoint in
        // one role would silently have replaced the first.
        for (name, role) in f.roles.iter().flatten() {
            let prefix = format!("roles.{name}.");
            check::check_volumes(role.volumes.as_deref().unwrap_or_default(), &prefix)
                .map_err(|(key, msg)| self.err(&key, msg))?;
        }
        let steps = [
            ("firewall", f.firewall.is_some()),
            ("volumes", f.volumes.is_some()),
            ("opt", f.opt.is_some()),
            ("packages", f.packages.is_some()),
            ("links", f.links.is_some()),
        ];
        if let Some((k, _)) = steps.iter().find(|(_, set)| *set) {
            return Err(self.err(
                k,
                "a fleet file (with hosts/roles) keeps steps inside roles",
            ));
        }
        let hosts = f
            .hosts
            .as_ref()
            .ok_or_else(|| self.err("hosts", "missing: a fleet file needs hosts"))?;
        let roles = f
            .roles
            .as_ref()
            .ok_or_else(|| self.err("roles", "missing: a fleet file needs roles"))?;
        for (pat, names) in hosts {
            HostPattern::parse(pat).map_err(|e| self.err(&format!("hosts.{pat}"), e))?;
            for (i, r) in names.iter().enumerate() {
                if !roles.contains_key(r) {
                    return Err(
                        self.err(&format!("hosts.{pat}[{i}]"), format!("unknown role {r:?}"))
                    );
                }
            }
        }
        Ok(())
    }

    /// The fleet entry (pattern) that selects `host`, or `None` for a single-host file.
    pub fn entry_for(&self, host: &str) -> Result<Option<String>> {
        let Some(hosts) = &self.file.hosts else {
            return Ok(None);
        };
        if hosts.contains_key(host) {
            return Ok(Some(host.to_string()));
        }
        let hits: Vec<&String> = hosts
            .keys()
            .filter(|p| {
                HostPattern::parse(p)
                    .map(|p| p.matches(host))
                    .unwrap_or(false)
            })
            .collect();
        match hits.as_slice() {
            [one] => Ok(Some(one.to_string())),
            [] => Err(self.err("hosts", format!("no entry matches host {host:?}"))),
            many => Err(self.err(
                "hosts",
                format!(
                    "host {host:?} matches several entries: {}",
                    many.iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    /// The merged, validated steps for `host`.
    pub fn for_host(&self, host: &str) -> Result<HostConfig> {
        match self.entry_for(host)? {
            None => self.validate_single(),
            Some(entry) => self.for_entry(&entry),
        }
    }

    fn for_entry(&self, entry: &str) -> Result<HostConfig> {
        let (Some(hosts), Some(roles)) = (&self.file.hosts, &self.file.roles) else {
            return self.validate_single();
        };
        let mut merged = Role::default();
        let mut allow_keys = Vec::new();
        for r in &hosts[entry] {
            allow_keys.extend(roles[r].allow_keys(&format!("roles.{r}.")));
            merged.merge(roles[r].clone());
        }
        let names = hosts[entry].join(", ");
        let what = format!("hosts.{entry} (roles {names})");
        self.validate_merged(merged, &what, &allow_keys)
    }

    fn validate_single(&self) -> Result<HostConfig> {
        let single = self.single();
        let allow_keys = single.allow_keys("");
        self.validate_merged(single, "", &allow_keys)
    }

    /// Check every fleet entry (or the single-host file). Returns the entries checked.
    pub fn validate_all(&self) -> Result<Vec<String>> {
        match &self.file.hosts {
            None => {
                self.for_host("")?;
                Ok(vec!["(single host)".into()])
            }
            Some(hosts) => {
                for entry in hosts.keys() {
                    self.for_entry(entry)?;
                }
                if let Some(roles) = &self.file.roles {
                    for name in roles.keys() {
                        if !hosts.values().any(|rs| rs.contains(name)) {
                            log::warn!("{}: roles.{name}: not used by any host", self.source);
                        }
                    }
                }
                Ok(hosts.keys().cloned().collect())
            }
        }
    }

    /// Check what is only known once a host's roles are merged. `allow_keys` names where each
    /// merged allow rule was written (`roles.web.firewall.allow[1]`), for messages.
    fn validate_merged(&self, r: Role, what: &str, allow_keys: &[String]) -> Result<HostConfig> {
        let cfg = HostConfig {
            firewall: r.firewall,
            volumes: r.volumes.unwrap_or_default(),
            opt: r.opt,
            packages: r.packages,
            links: r.links.unwrap_or_default(),
        };
        // Which fleet entry the merged config is of, for messages.
        let within = if what.is_empty() {
            String::new()
        } else {
            format!(" (in {what})")
        };
        let err = |(key, msg): (String, String)| self.err(&key, format!("{msg}{within}"));
        if let Some(fw) = &cfg.firewall {
            fw.check(allow_keys).map_err(err)?;
        }
        for (i, v) in cfg.volumes.iter().enumerate() {
            v.check(i).map_err(err)?;
        }
        check::check_volumes(&cfg.volumes, "").map_err(err)?;
        if let Some(opt) = &cfg.opt {
            opt.check().map_err(err)?;
            check::check_opt_volumes(opt, &cfg.volumes).map_err(err)?;
        }
        if let Some(p) = &cfg.packages {
            p.check().map_err(err)?;
        }
        check::check_links(&cfg.links).map_err(err)?;
        Ok(cfg)
    }
}

impl Role {
    /// Where each of this role's allow rules is written, below `prefix`.
    fn allow_keys(&self, prefix: &str) -> Vec<String> {
        let n = self.firewall.as_ref().map_or(0, |f| f.allow.len());
        (0..n)
            .map(|i| format!("{prefix}firewall.allow[{i}]"))
            .collect()
    }

    /// Apply a later role on top of this one, by the spec's merge rule.
    fn merge(&mut self, later: Role) {
        if let Some(fw) = later.firewall {
            let cur = self.firewall.get_or_insert_with(Firewall::default);
            for (k, v) in fw.sets {
                cur.sets.insert(k, v);
            }
            cur.allow.extend(fw.allow);
            if fw.ssh.is_some() {
                cur.ssh = fw.ssh;
            }
            if fw.container_bridges.is_some() {
                cur.container_bridges = fw.container_bridges;
            }
        }
        if let Some(vols) = later.volumes {
            let cur = self.volumes.get_or_insert_with(Vec::new);
            for v in vols {
                match cur.iter_mut().find(|c| c.mountpoint == v.mountpoint) {
                    Some(slot) => *slot = v,
                    None => cur.push(v),
                }
            }
        }
        if later.opt.is_some() {
            self.opt = later.opt;
        }
        if let Some(p) = later.packages {
            let cur = self.packages.get_or_insert_with(Packages::default);
            for name in p.install {
                if !cur.install.contains(&name) {
                    cur.install.push(name);
                }
            }
            cur.sources.extend(p.sources);
            for name in p.remove {
                if !cur.remove.contains(&name) {
                    cur.remove.push(name);
                }
            }
            if p.purge.is_some() {
                cur.purge = p.purge;
            }
            if p.recommends.is_some() {
                cur.recommends = p.recommends;
            }
        }
        if let Some(l) = later.links {
            self.links.get_or_insert_with(Vec::new).extend(l);
        }
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
