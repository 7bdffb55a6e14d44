//! The keys of each step, as the config file spells them.

use super::values::{
    one_or_many, unique_keys, AbsPath, AptWord, ArchiveUrl, ArmoredKey, Cidr, Dur, PackageName,
    Ports, Sha256Hex,
};
use indexmap::IndexMap;
use serde::Deserialize;
use std::fmt;
use std::time::Duration;

/// `firewall:` — olboot's nftables table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Firewall {
    /// Named address sets (IPv4 and IPv6 networks), referenced by `allow[].from`.
    #[serde(default, deserialize_with = "unique_keys")]
    pub sets: IndexMap<String, Vec<Cidr>>,
    /// Inbound rules; everything else is dropped.
    #[serde(default)]
    pub allow: Vec<Allow>,
    /// `closed` allows a config with no rule for port 22.
    pub ssh: Option<Ssh>,
    /// The bridges of the local container networks (a trailing `*` matches any rest of the
    /// name); [`DEFAULT_CONTAINER_BRIDGES`] when absent.
    pub container_bridges: Option<Vec<String>>,
}

/// Docker's bridge names: the default network, and user-defined ones (`br-` and 12 hex
/// digits of the network's id).
pub const DEFAULT_CONTAINER_BRIDGES: [&str; 2] = ["docker0", "br-*"];

/// The set name that stands for the local container networks in `allow[].from`.
pub const CONTAINERS: &str = "containers";

impl Firewall {
    /// The container bridge names in force: the config's, or [`DEFAULT_CONTAINER_BRIDGES`].
    pub fn bridges(&self) -> Vec<String> {
        match &self.container_bridges {
            Some(b) => b.clone(),
            None => DEFAULT_CONTAINER_BRIDGES.map(String::from).to_vec(),
        }
    }
}

/// `firewall.ssh`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ssh {
    /// Port 22 must be allowed from somewhere (the default).
    Required,
    /// The config may drop SSH from everywhere on purpose.
    Closed,
}

/// One `firewall.allow` rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "AllowKeys")]
pub struct Allow {
    /// Ports or port ranges.
    pub port: Ports,
    /// `tcp` (default) or `udp`.
    pub proto: Proto,
    /// Set names the traffic may come from; empty means anywhere.
    pub from: Vec<String>,
}

/// An allow rule as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowKeys {
    port: Ports,
    #[serde(default)]
    proto: Proto,
    #[serde(default, deserialize_with = "one_or_many")]
    from: Vec<String>,
}

impl TryFrom<AllowKeys> for Allow {
    type Error = String;
    fn try_from(k: AllowKeys) -> Result<Allow, String> {
        Ok(Allow {
            port: k.port,
            proto: k.proto,
            from: k.from,
        })
    }
}

/// Transport protocol of an allow rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// `volumes[]` — a data disk.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// Candidate device paths; the first present one is used.
    #[serde(deserialize_with = "one_or_many")]
    pub device: Vec<AbsPath>,
    /// How long to wait for a late-attached disk.
    #[serde(default = "default_wait")]
    pub wait: Dur,
    /// Filesystem to find or create.
    #[serde(default)]
    pub filesystem: Filesystem,
    /// Label given when formatting.
    pub label: Option<String>,
    /// Where to mount it, as the target sees it.
    pub mountpoint: AbsPath,
    /// Whether a blank disk may be formatted.
    #[serde(default)]
    pub format: FormatPolicy,
    /// Extra mount options (`noatime`, ...); `nofail` is always added in fstab.
    #[serde(default)]
    pub options: Vec<String>,
}

fn default_wait() -> Dur {
    Dur(Duration::from_secs(60))
}

/// Filesystems olboot can create.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filesystem {
    /// ext4.
    #[default]
    Ext4,
    /// XFS.
    Xfs,
}

impl Filesystem {
    /// The name `blkid` and `mount` use.
    pub fn name(self) -> &'static str {
        match self {
            Filesystem::Ext4 => "ext4",
            Filesystem::Xfs => "xfs",
        }
    }
}

/// `volumes[].format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FormatPolicy {
    /// Format the disk only if it carries no signature at all.
    #[default]
    IfBlank,
    /// Never format; a blank disk is an error.
    Never,
}

/// `opt:` — the `/opt` tree.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Opt {
    /// Where the tree lives (usually on a volume).
    pub path: AbsPath,
    /// How it appears at `/opt`.
    #[serde(default)]
    pub expose: Expose,
    /// Where to fetch it from when `path` holds no tree.
    pub archive: Option<Archive>,
}

/// `opt.expose`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expose {
    /// A bind mount of `path` at `/opt`, with its fstab line.
    #[default]
    Bind,
    /// `/opt` is a symlink to `path`.
    Symlink,
}

/// `opt.archive`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Archive {
    /// Mirrors, tried in order: `http://`, `https://` or `file:///`.
    #[serde(deserialize_with = "one_or_many")]
    pub urls: Vec<ArchiveUrl>,
    /// Expected sha256 of the archive's bytes; required for remote URLs.
    pub sha256: Option<Sha256Hex>,
    /// An extra CA certificate (PEM) for an internal mirror.
    pub ca_file: Option<AbsPath>,
    /// An age identity (root-only file): the archive is age-encrypted.
    pub identity_file: Option<AbsPath>,
    /// One header line for a store that wants credentials (root-only file).
    pub auth_file: Option<AbsPath>,
    /// Hosts a redirect may take the credentials of `auth_file` to.
    #[serde(default)]
    pub trusted_hosts: Vec<String>,
    /// The archive's size in bytes: no more is ever read, and a mirror that says otherwise fails.
    pub size: Option<u64>,
}

/// `packages:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Packages {
    /// Extra apt sources by name: `/etc/apt/sources.list.d/NAME.sources`.
    #[serde(default, deserialize_with = "unique_keys")]
    pub sources: IndexMap<String, AptSource>,
    /// Packages that must not be installed (removed before installing).
    #[serde(default)]
    pub remove: Vec<PackageName>,
    /// Remove with purge (off by default).
    pub purge: Option<bool>,
    /// Debian package names.
    #[serde(default)]
    pub install: Vec<PackageName>,
    /// Install recommended packages too (off by default).
    pub recommends: Option<bool>,
}

/// One `packages.sources.NAME`: a deb822 source and its signing key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AptSource {
    /// Repository URIs (`http://`, `https://`, `file:///`).
    #[serde(deserialize_with = "one_or_many")]
    pub uris: Vec<ArchiveUrl>,
    /// Suites; a flat repository has `./` and no components.
    #[serde(deserialize_with = "one_or_many")]
    pub suites: Vec<AptWord>,
    /// Components (none for a flat repository).
    #[serde(default, deserialize_with = "one_or_many")]
    pub components: Vec<AptWord>,
    /// Architectures, if not all of apt's.
    #[serde(default, deserialize_with = "one_or_many")]
    pub architectures: Vec<AptWord>,
    /// The signing key, ASCII-armored, inline.
    pub key: Option<ArmoredKey>,
    /// The signing key in a root-owned file.
    pub key_file: Option<AbsPath>,
    /// The signing key at a URL, checked against `key_sha256`.
    pub key_url: Option<ArchiveUrl>,
    /// sha256 of the key served at `key_url`.
    pub key_sha256: Option<Sha256Hex>,
}

impl Packages {
    /// What can only be checked on the merged config: the key of each source, source names,
    /// suites against components, and no package both installed and removed. The error is
    /// the key path (below `packages.`) and the message.
    pub(crate) fn check(&self) -> Result<(), (String, String)> {
        for (name, s) in &self.sources {
            let key = |k: &str| format!("packages.sources.{name}.{k}");
            let ok_name = name.len() <= 64
                && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
            if !ok_name {
                return Err((
                    format!("packages.sources.{name}"),
                    "a source name is up to 64 lowercase letters, digits, `.`, `_` or `-` \
                     (it names /etc/apt/sources.list.d/NAME.sources)"
                        .into(),
                ));
            }
            s.check().map_err(|(k, m)| (key(k), m))?;
        }
        for p in &self.install {
            if self.remove.iter().any(|r| r.name() == p.name()) {
                return Err((
                    "packages.remove".into(),
                    format!("{} is also in packages.install", p.name()),
                ));
            }
        }
        Ok(())
    }
}

impl AptSource {
    /// The checks of one source: the key (below the source) and the message.
    fn check(&self) -> Result<(), (&'static str, String)> {
        let given = [
            self.key.is_some(),
            self.key_file.is_some(),
            self.key_url.is_some(),
        ];
        match given.iter().filter(|g| **g).count() {
            0 => {
                return Err((
                    "key",
                    "missing: give one of key, key_file or key_url".into(),
                ))
            }
            1 => {}
            _ => return Err(("key", "give only one of key, key_file or key_url".into())),
        }
        match (&self.key_url, &self.key_sha256) {
            (Some(_), None) => return Err(("key_sha256", "missing: required with key_url".into())),
            (None, Some(_)) => return Err(("key_sha256", "only goes with key_url".into())),
            _ => {}
        }
        if self.uris.is_empty() {
            return Err(("uris", "no URI".into()));
        }
        if self.suites.is_empty() {
            return Err(("suites", "no suite".into()));
        }
        let flat = self.suites.iter().any(|s| s.0.ends_with('/'));
        if flat && !self.components.is_empty() {
            return Err((
                "components",
                "a flat repository (suite ending in /) has no components".into(),
            ));
        }
        if !flat && self.components.is_empty() {
            return Err((
                "components",
                "missing: a suite not ending in / needs components".into(),
            ));
        }
        Ok(())
    }
}

/// `links[]` — mirror the files below `from` as symlinks below `to`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// Source directory, as written (links point through it).
    pub from: AbsPath,
    /// Target directory.
    pub to: AbsPath,
}
