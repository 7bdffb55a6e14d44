//! The config file: parsing, the fleet's host patterns and roles, merging, and validation.
//!
//! Every mistake is a [`Invalid`] error naming the source (file, `-` or URL) and the key;
//! syntax and type errors also carry the line and column that the YAML parser reports.
//! Values are checked while they are parsed (absolute paths, ports, CIDRs, durations), so a
//! [`HostConfig`] that exists is one the steps can trust.

use anyhow::{Context, Result};
use indexmap::IndexMap;
use serde::de::{self, Deserializer};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::fmt;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

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
    hosts: Option<IndexMap<String, Vec<String>>>,
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

/// `firewall:` — olboot's nftables table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Firewall {
    /// Named address sets (IPv4 and IPv6 networks), referenced by `allow[].from`.
    #[serde(default)]
    pub sets: IndexMap<String, Vec<Cidr>>,
    /// Inbound rules; everything else is dropped.
    #[serde(default)]
    pub allow: Vec<Allow>,
    /// `closed` allows a config with no rule for port 22.
    pub ssh: Option<Ssh>,
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
#[serde(deny_unknown_fields)]
pub struct Allow {
    /// Ports or port ranges.
    pub port: Ports,
    /// `tcp` (default) or `udp`.
    #[serde(default)]
    pub proto: Proto,
    /// Set names the traffic may come from; empty means anywhere.
    #[serde(default, deserialize_with = "one_or_many")]
    pub from: Vec<String>,
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
}

/// `packages:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Packages {
    /// Debian package names.
    #[serde(default)]
    pub install: Vec<PackageName>,
    /// Install recommended packages too (off by default).
    #[serde(default)]
    pub recommends: bool,
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

/// An absolute, normalized path with no `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AbsPath(PathBuf);

impl AbsPath {
    /// Check and normalize `s`.
    pub fn parse(s: &str) -> Result<AbsPath, String> {
        let p = Path::new(s);
        if !p.is_absolute() {
            return Err(format!("{s:?} is not an absolute path"));
        }
        let mut out = PathBuf::from("/");
        for c in p.components() {
            match c {
                Component::Normal(n) => out.push(n),
                Component::ParentDir => return Err(format!("{s:?} contains `..`")),
                _ => {}
            }
        }
        Ok(AbsPath(out))
    }
}

impl std::ops::Deref for AbsPath {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for AbsPath {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl fmt::Display for AbsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.display().fmt(f)
    }
}

impl<'de> Deserialize<'de> for AbsPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        AbsPath::parse(&s).map_err(de::Error::custom)
    }
}

/// A duration written with a unit: `120s`, `2m`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = StrOrNum::deserialize(d)?;
        match s {
            StrOrNum::Str(s) => humantime::parse_duration(&s).map(Dur).map_err(|e| {
                de::Error::custom(format!(
                    "invalid duration {s:?} ({e}); write e.g. 120s or 2m"
                ))
            }),
            StrOrNum::Num(n) => Err(de::Error::custom(format!(
                "duration {n} has no unit; write {n}s"
            ))),
        }
    }
}

/// A YAML scalar that may be a number or a string (`80` or `"8000-8100"`).
enum StrOrNum {
    Num(i64),
    Str(String),
}

impl<'de> Deserialize<'de> for StrOrNum {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = StrOrNum;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number or a string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<StrOrNum, E> {
                Ok(StrOrNum::Num(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<StrOrNum, E> {
                Ok(StrOrNum::Num(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StrOrNum, E> {
                Ok(StrOrNum::Str(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// An inclusive TCP/UDP port range; a single port is `lo == hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub lo: u16,
    /// Last port.
    pub hi: u16,
}

impl PortRange {
    fn parse_num(n: i64) -> Result<u16, String> {
        if (1..=65535).contains(&n) {
            Ok(n as u16)
        } else {
            Err(format!("port {n} is out of range (1-65535)"))
        }
    }

    fn parse(v: &StrOrNum) -> Result<PortRange, String> {
        match v {
            StrOrNum::Num(n) => {
                let p = PortRange::parse_num(*n)?;
                Ok(PortRange { lo: p, hi: p })
            }
            StrOrNum::Str(s) => {
                let num = |t: &str| {
                    t.trim()
                        .parse::<i64>()
                        .map_err(|_| format!("{s:?} is not a port or a range like 8000-8100"))
                        .and_then(PortRange::parse_num)
                };
                let (lo, hi) = match s.split_once('-') {
                    Some((a, b)) => (num(a)?, num(b)?),
                    None => {
                        let p = num(s)?;
                        (p, p)
                    }
                };
                if lo > hi {
                    return Err(format!("port range {s:?} is backwards"));
                }
                Ok(PortRange { lo, hi })
            }
        }
    }

    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        self.lo <= port && port <= self.hi
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// `port:` — one port, a range, or a list of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ports(pub Vec<PortRange>);

impl<'de> Deserialize<'de> for Ports {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let items: Vec<StrOrNum> = one_or_many(d)?;
        if items.is_empty() {
            return Err(de::Error::custom("empty port list"));
        }
        items
            .iter()
            .map(PortRange::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(Ports)
            .map_err(de::Error::custom)
    }
}

/// An IPv4 or IPv6 network; a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// Network address (host bits zero).
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Parse `a.b.c.d[/n]` or `x::y[/n]`, refusing host bits set beyond the prefix.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| format!("{s:?} has an invalid prefix length"))?,
        };
        let bits: u128 = match addr {
            IpAddr::V4(v) => u32::from(v) as u128,
            IpAddr::V6(v) => u128::from(v),
        };
        let host_bits = max - prefix;
        // `::/0` has 128 host bits: a plain shift would overflow.
        let mask = 1u128
            .checked_shl(u32::from(host_bits))
            .map_or(u128::MAX, |b| b - 1);
        if bits & mask != 0 {
            return Err(format!("{s:?} has host bits set beyond /{prefix}"));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Cidr::parse(&String::deserialize(d)?).map_err(de::Error::custom)
    }
}

/// A mirror URL of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveUrl(pub String);

impl ArchiveUrl {
    /// Whether bytes come over the network (and so must be verified).
    pub fn is_remote(&self) -> bool {
        !self.0.starts_with("file://")
    }

    /// The local path of a `file://` URL.
    pub fn local_path(&self) -> Option<&Path> {
        self.0.strip_prefix("file://").map(Path::new)
    }
}

impl fmt::Display for ArchiveUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ArchiveUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let ok = if let Some(rest) = s
            .strip_prefix("http://")
            .or_else(|| s.strip_prefix("https://"))
        {
            !rest.is_empty() && !rest.starts_with('/') && !s.contains(char::is_whitespace)
        } else if let Some(p) = s.strip_prefix("file://") {
            AbsPath::parse(p).is_ok()
        } else {
            false
        };
        if ok {
            Ok(ArchiveUrl(s))
        } else {
            Err(de::Error::custom(format!(
                "{s:?} is not an http://, https:// or file:/// URL"
            )))
        }
    }
}

/// A sha256 digest as 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sha256Hex(pub String);

impl<'de> Deserialize<'de> for Sha256Hex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?.to_ascii_lowercase();
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Sha256Hex(s))
        } else {
            Err(de::Error::custom(format!(
                "{s:?} is not a sha256 (64 hex digits)"
            )))
        }
    }
}

/// A Debian package name (optionally `name=version` or `name/release`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PackageName(pub String);

impl<'de> Deserialize<'de> for PackageName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let name = s.split(['=', '/']).next().unwrap_or("");
        let ok = name.len() >= 2
            && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
            && !s.contains(char::is_whitespace);
        if ok {
            Ok(PackageName(s))
        } else {
            Err(de::Error::custom(format!(
                "{s:?} is not a Debian package name"
            )))
        }
    }
}

impl fmt::Display for PackageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Accept `x` as `[x]`, keeping the element's own error messages.
fn one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    use serde::de::value::{
        I64Deserializer, MapAccessDeserializer, SeqAccessDeserializer, StrDeserializer,
        U64Deserializer,
    };
    struct V<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> de::Visitor<'de> for V<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a value or a list of values")
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Vec<T>, A::Error> {
            Vec::deserialize(SeqAccessDeserializer::new(seq))
        }
        fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Vec<T>, A::Error> {
            T::deserialize(MapAccessDeserializer::new(map)).map(|x| vec![x])
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<T>, E> {
            T::deserialize(StrDeserializer::<E>::new(v)).map(|x| vec![x])
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Vec<T>, E> {
            T::deserialize(I64Deserializer::<E>::new(v)).map(|x| vec![x])
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Vec<T>, E> {
            T::deserialize(U64Deserializer::<E>::new(v)).map(|x| vec![x])
        }
    }
    d.deserialize_any(V(std::marker::PhantomData))
}

impl Config {
    /// Parse config text read from `source` (a path, `-` or a URL, used in messages).
    pub fn parse(source: &str, text: &str) -> Result<Config> {
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

    /// Read and parse the config at `source`: a path, `-` for standard input, or an
    /// `http(s)://` URL.
    pub fn load(source: &str) -> Result<Config> {
        let text = if source == "-" {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .map_err(|e| invalid(format!("-: cannot read standard input: {e}")))?;
            s
        } else if source.starts_with("http://") || source.starts_with("https://") {
            crate::sys::http::get_text(source).map_err(|e| invalid(format!("{e:#}")))?
        } else {
            std::fs::read_to_string(source).map_err(|e| invalid(format!("{source}: {e}")))?
        };
        Config::parse(source, &text)
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

    fn is_fleet(&self) -> bool {
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
            None => self.validate_merged(self.single(), "(top level)"),
            Some(entry) => self.for_entry(&entry),
        }
    }

    fn for_entry(&self, entry: &str) -> Result<HostConfig> {
        let (Some(hosts), Some(roles)) = (&self.file.hosts, &self.file.roles) else {
            return self.validate_merged(self.single(), "(top level)");
        };
        let mut merged = Role::default();
        for r in &hosts[entry] {
            merged.merge(roles[r].clone());
        }
        let names = hosts[entry].join(", ");
        self.validate_merged(merged, &format!("hosts.{entry} (roles {names})"))
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

    fn validate_merged(&self, r: Role, what: &str) -> Result<HostConfig> {
        let cfg = HostConfig {
            firewall: r.firewall,
            volumes: r.volumes.unwrap_or_default(),
            opt: r.opt,
            packages: r.packages,
            links: r.links.unwrap_or_default(),
        };
        let err = |key: &str, msg: String| self.err(key, format!("{msg} (in {what})"));
        if let Some(fw) = &cfg.firewall {
            // Set names become nftables identifiers (`@admin_v4`): keep them to what nft parses.
            for name in fw.sets.keys() {
                let ok = name.len() <= 64
                    && name.starts_with(|c: char| c.is_ascii_alphabetic())
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if !ok {
                    return Err(err(
                        &format!("firewall.sets.{name}"),
                        "a set name is a letter followed by up to 63 letters, digits, `_` or `-`"
                            .into(),
                    ));
                }
            }
            for (i, a) in fw.allow.iter().enumerate() {
                for s in &a.from {
                    if !fw.sets.contains_key(s) {
                        return Err(err(
                            &format!("firewall.allow[{i}].from"),
                            format!("unknown set {s:?}"),
                        ));
                    }
                }
            }
            let ssh_open = fw
                .allow
                .iter()
                .any(|a| a.proto == Proto::Tcp && a.port.0.iter().any(|p| p.contains(22)));
            if !ssh_open && fw.ssh != Some(Ssh::Closed) {
                return Err(err(
                    "firewall.allow",
                    "no rule allows SSH (tcp port 22): this would lock everybody out; add one or say `ssh: closed`".into(),
                ));
            }
        }
        for (i, v) in cfg.volumes.iter().enumerate() {
            if let Some(l) = &v.label {
                let max = match v.filesystem {
                    Filesystem::Ext4 => 16,
                    Filesystem::Xfs => 12,
                };
                if l.is_empty() || l.len() > max || l.contains(char::is_whitespace) {
                    return Err(err(
                        &format!("volumes[{i}].label"),
                        format!(
                            "{l:?}: a {} label has 1 to {max} characters and no blanks",
                            v.filesystem.name()
                        ),
                    ));
                }
            }
            for o in &v.options {
                if o.is_empty() || o.contains([',', ' ', '\t']) {
                    return Err(err(
                        &format!("volumes[{i}].options"),
                        format!("{o:?} is not one mount option"),
                    ));
                }
            }
            if v.device.is_empty() {
                return Err(err(
                    &format!("volumes[{i}].device"),
                    "no candidate device".into(),
                ));
            }
        }
        if let Some(opt) = &cfg.opt {
            if opt.path.as_os_str() == "/opt" {
                return Err(err(
                    "opt.path",
                    "must not be /opt itself: /opt is where it is exposed".into(),
                ));
            }
            if let Some(a) = &opt.archive {
                if a.urls.is_empty() {
                    return Err(err("opt.archive.urls", "no URL".into()));
                }
                if a.sha256.is_none() && a.urls.iter().any(ArchiveUrl::is_remote) {
                    return Err(err(
                        "opt.archive.sha256",
                        "missing: a remote archive must name its sha256".into(),
                    ));
                }
            }
        }
        for (i, l) in cfg.links.iter().enumerate() {
            if l.to.starts_with(&*l.from) || l.from.starts_with(&*l.to) {
                return Err(err(
                    &format!("links[{i}]"),
                    format!("{} and {} overlap", l.from, l.to),
                ));
            }
        }
        Ok(cfg)
    }
}

impl Role {
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
            cur.recommends = p.recommends;
        }
        if let Some(l) = later.links {
            self.links.get_or_insert_with(Vec::new).extend(l);
        }
    }
}

/// A host name pattern with numeric bracket ranges: `ol-mem[3-5]`, `ol-web[0-3,7]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern(Vec<Piece>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Lit(String),
    Nums(Vec<(u64, u64)>),
}

impl HostPattern {
    /// Parse a pattern; plain host names are patterns without brackets.
    pub fn parse(s: &str) -> Result<HostPattern, String> {
        let mut pieces = Vec::new();
        let mut rest = s;
        while !rest.is_empty() {
            match rest.find('[') {
                None => {
                    pieces.push(Piece::Lit(rest.to_string()));
                    rest = "";
                }
                Some(i) => {
                    if i > 0 {
                        pieces.push(Piece::Lit(rest[..i].to_string()));
                    }
                    let end = rest[i..]
                        .find(']')
                        .ok_or_else(|| format!("{s:?}: unclosed `[`"))?
                        + i;
                    let mut ranges = Vec::new();
                    for part in rest[i + 1..end].split(',') {
                        let (a, b) = part.split_once('-').unwrap_or((part, part));
                        let num = |t: &str| {
                            t.trim().parse::<u64>().map_err(|_| {
                                format!("{s:?}: {part:?} is not a number or a range like 3-5")
                            })
                        };
                        let (a, b) = (num(a)?, num(b)?);
                        if a > b {
                            return Err(format!("{s:?}: range {part:?} is backwards"));
                        }
                        ranges.push((a, b));
                    }
                    pieces.push(Piece::Nums(ranges));
                    rest = &rest[end + 1..];
                }
            }
        }
        let bad = |c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
        for p in &pieces {
            if let Piece::Lit(l) = p {
                if l.contains(bad) {
                    return Err(format!(
                        "{s:?}: only letters, digits, `-`, `.`, `_` and [a-b] ranges"
                    ));
                }
            }
        }
        if pieces.is_empty() {
            return Err("empty host pattern".into());
        }
        Ok(HostPattern(pieces))
    }

    /// Whether `host` matches (a number matches without leading zeros).
    pub fn matches(&self, host: &str) -> bool {
        let mut rest = host;
        for p in &self.0 {
            match p {
                Piece::Lit(l) => match rest.strip_prefix(l.as_str()) {
                    Some(r) => rest = r,
                    None => return false,
                },
                Piece::Nums(ranges) => {
                    let n = rest.bytes().take_while(u8::is_ascii_digit).count();
                    let digits = &rest[..n];
                    if n == 0 || (n > 1 && digits.starts_with('0')) {
                        return false;
                    }
                    let Ok(v) = digits.parse::<u64>() else {
                        return false;
                    };
                    if !ranges.iter().any(|(a, b)| (*a..=*b).contains(&v)) {
                        return false;
                    }
                    rest = &rest[n..];
                }
            }
        }
        rest.is_empty()
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

/// The host name of the running machine.
pub fn machine_hostname() -> Result<String> {
    let uts = rustix::system::uname();
    let name = uts.nodename().to_str().context("host name is not UTF-8")?;
    // cloud-init may set an FQDN: the fleet names hosts by their short name.
    Ok(name.split('.').next().unwrap_or(name).to_string())
}
