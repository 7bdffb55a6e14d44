//! Checked values of the config: each one refuses a bad value while it is parsed, so the
//! YAML parser reports it with its line and column.

use indexmap::IndexMap;
use serde::de::{self, DeserializeSeed, Deserializer};
use serde::Deserialize;
use std::fmt;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// An absolute, normalized path with no `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AbsPath(PathBuf);

impl AbsPath {
    /// Check and normalize `s`.
    pub fn parse(s: &str) -> Result<AbsPath, String> {
        // The kernel ends a path at its first NUL: `/1\0x` would be `/1` to every syscall.
        if s.contains('\0') {
            return Err(format!("{s:?} contains a NUL byte"));
        }
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
        parse_str(d, AbsPath::parse)
    }
}

/// Deserialize a string with `parse`, refusing it from inside the string's own visit: the
/// YAML parser then gives the error the key and line of the value (`opt.path: ... at line
/// 3 column 9`), not those of the map around it.
pub(crate) fn parse_str<'de, D, T, F>(d: D, parse: F) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    F: FnOnce(&str) -> Result<T, String>,
{
    struct V<F>(F);
    impl<T, F: FnOnce(&str) -> Result<T, String>> de::Visitor<'_> for V<F> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            (self.0)(v).map_err(E::custom)
        }
    }
    d.deserialize_str(V(parse))
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
        parse_str(d, Cidr::parse)
    }
}

/// A mirror URL of the archive. It may carry credentials (a presigned query, user-info), so
/// `Debug` and `Display` show it without them; `.0` is the URL itself, for the request.
#[derive(Clone, PartialEq, Eq)]
pub struct ArchiveUrl(pub String);

impl fmt::Debug for ArchiveUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ArchiveUrl({:?})", crate::secret::ShownUrl::new(&self.0))
    }
}

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
        crate::secret::ShownUrl::new(&self.0).fmt(f)
    }
}

impl ArchiveUrl {
    /// Check `s`: `http(s)://` with a host and no user-info, or `file://` and an absolute path.
    /// Errors show the URL only as [`crate::secret::ShownUrl`] does.
    pub fn parse(s: &str) -> Result<ArchiveUrl, String> {
        let shown = crate::secret::ShownUrl::new(s);
        if let Some(rest) = s
            .strip_prefix("http://")
            .or_else(|| s.strip_prefix("https://"))
        {
            let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
            // ureq takes no credential from a URL: it would fetch without it, and fail as
            // if the store had refused olboot.
            if authority.contains('@') {
                return Err(format!(
                    "\"{shown}\" has user-info (`user:password@` before the host): olboot sends \
                     no credential from a URL (an archive store's goes in opt.archive.auth_file)"
                ));
            }
            if !authority.is_empty() && !s.contains(|c: char| c.is_whitespace() || c.is_control()) {
                return Ok(ArchiveUrl(s.to_string()));
            }
        } else if let Some(p) = s.strip_prefix("file://") {
            return match AbsPath::parse(p) {
                Ok(_) => Ok(ArchiveUrl(s.to_string())),
                Err(e) => Err(format!("a file:/// URL names an absolute path: {e}")),
            };
        }
        Err(format!(
            "\"{shown}\" is not an http://, https:// or file:/// URL"
        ))
    }
}

impl<'de> Deserialize<'de> for ArchiveUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(d, ArchiveUrl::parse)
    }
}

/// A sha256 digest as 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sha256Hex(pub String);

impl<'de> Deserialize<'de> for Sha256Hex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(d, |s| {
            let s = s.to_ascii_lowercase();
            if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(Sha256Hex(s))
            } else {
                Err(format!("{s:?} is not a sha256 (64 hex digits)"))
            }
        })
    }
}

/// A Debian package name (optionally `name=version` or `name/release`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PackageName(pub String);

impl<'de> Deserialize<'de> for PackageName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(d, PackageName::parse)
    }
}

impl PackageName {
    fn parse(s: &str) -> Result<PackageName, String> {
        let name = s.split(['=', '/']).next().unwrap_or("");
        let ok = name.len() >= 2
            && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
            && !s.contains(char::is_whitespace);
        if ok {
            Ok(PackageName(s.to_string()))
        } else {
            Err(format!("{s:?} is not a Debian package name"))
        }
    }
}

impl PackageName {
    /// The package's name without a pinned version or release.
    pub fn name(&self) -> &str {
        self.0.split(['=', '/']).next().unwrap_or(&self.0)
    }
}

/// One word of a deb822 apt source (a suite, component or architecture): printable, no
/// blanks, no `#`, so it cannot change the meaning of the file it is written into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptWord(pub String);

impl<'de> Deserialize<'de> for AptWord {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(d, |s| {
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && b != b'#') {
                Ok(AptWord(s.to_string()))
            } else {
                Err(format!(
                    "{s:?} is not one word of an apt source (printable, no blanks or #)"
                ))
            }
        })
    }
}

/// An ASCII-armored OpenPGP public key block, as `gpg --armor --export` writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArmoredKey(pub String);

impl<'de> Deserialize<'de> for ArmoredKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(d, |s| armored(s).map(|()| ArmoredKey(s.to_string())))
    }
}

/// Whether `text` is one ASCII-armored public key block (and nothing else but blank lines).
pub fn armored(text: &str) -> Result<(), String> {
    let t = text.trim();
    if t.starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----")
        && t.ends_with("-----END PGP PUBLIC KEY BLOCK-----")
    {
        Ok(())
    } else {
        Err(
            "not an ASCII-armored public key (-----BEGIN PGP PUBLIC KEY BLOCK----- ... \
             -----END PGP PUBLIC KEY BLOCK-----)"
                .into(),
        )
    }
}

impl fmt::Display for PackageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Accept `x` as `[x]`, keeping the element's own error messages.
pub(crate) fn one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
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

/// `deserialize_with` for every map of the config (`firewall.sets`, `hosts`, `roles`,
/// `packages.sources`, as `IndexMap<String, _>` or an `Option` of one): a key written twice
/// is refused, naming it. serde's maps keep the last value silently, and
/// `sets: {admin: [10.0.0.0/8], admin: [0.0.0.0/0]}` would open SSH to the world. (serde's
/// derived structs refuse a duplicate field already; yaml_serde has no option for maps.)
pub(crate) fn unique_keys<'de, D, M>(d: D) -> Result<M, D::Error>
where
    D: Deserializer<'de>,
    M: UniqueKeys<'de>,
{
    M::deserialize_unique(d)
}

/// A map type [`unique_keys`] can fill.
pub(crate) trait UniqueKeys<'de>: Sized {
    fn deserialize_unique<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error>;
}

impl<'de, V: Deserialize<'de>> UniqueKeys<'de> for IndexMap<String, V> {
    fn deserialize_unique<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Map<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> de::Visitor<'de> for Map<V> {
            type Value = IndexMap<String, V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut out = IndexMap::new();
                while let Some(k) = m.next_key_seed(NewKey(&out))? {
                    let v = m.next_value()?;
                    out.insert(k, v);
                }
                Ok(out)
            }
        }
        d.deserialize_map(Map(PhantomData))
    }
}

impl<'de, V: Deserialize<'de>> UniqueKeys<'de> for Option<IndexMap<String, V>> {
    fn deserialize_unique<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Through `Option`'s own impl, so that `null` stays `None`.
        struct Present<V>(IndexMap<String, V>);
        impl<'de, V: Deserialize<'de>> Deserialize<'de> for Present<V> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                IndexMap::deserialize_unique(d).map(Present)
            }
        }
        Ok(Option::<Present<V>>::deserialize(d)?.map(|p| p.0))
    }
}

/// A map key not in the map yet. Refused inside the key's own visit, so the error carries
/// the line of the second one.
struct NewKey<'a, V>(&'a IndexMap<String, V>);

impl<'de, V> DeserializeSeed<'de> for NewKey<'_, V> {
    type Value = String;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        parse_str(d, |k| {
            if self.0.contains_key(k) {
                Err(format!("{k:?} is written twice; each key may appear once"))
            } else {
                Ok(k.to_string())
            }
        })
    }
}
