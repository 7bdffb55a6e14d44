//! Secrets: the root-only files that hold them (the age identity, the store's credentials) and
//! the one way a URL is shown (without user-info and query, which may carry credentials).
//!
//! No type here prints its content: `Debug` names the file only. Whatever shows a URL in a
//! log line, an error or the report goes through [`ShownUrl`].

use anyhow::{bail, Context, Result};
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The most a secret file may hold: a key or a header line, not a document.
const MAX_SECRET: u64 = 64 * 1024;

/// A URL as it may be shown: `https://store/opt.tar.zst?…`, user-info dropped, query and
/// fragment replaced by `?…`.
#[derive(Clone, PartialEq, Eq)]
pub struct ShownUrl(String);

impl ShownUrl {
    /// The shown form of `url`. The query and fragment are cut off first: a `://` or `@`
    /// inside them (a return URL, say) must not be taken for the scheme or the user-info.
    pub fn new(url: &str) -> ShownUrl {
        let (head, hidden) = match url.find(['?', '#']) {
            Some(i) => (&url[..i], true),
            None => (url, false),
        };
        let (prefix, rest) = match split_scheme(head) {
            Some((scheme, rest)) => (&head[..scheme.len() + 3], rest),
            None => match head.strip_prefix("//") {
                Some(rest) => ("//", rest),
                None => ("", head),
            },
        };
        let end = rest.find('/').unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let mut s = String::from(prefix);
        s.push_str(host);
        s.push_str(path);
        if hidden {
            s.push_str("?…");
        }
        ShownUrl(s)
    }
}

/// `scheme://rest` → (scheme, rest), for a scheme as RFC 3986 spells it (a letter, then
/// letters, digits, `+`, `-`, `.`); `None` for a relative reference, even one whose query
/// carries a `://`.
pub fn split_scheme(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    let valid = first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some((scheme, rest))
}

impl fmt::Display for ShownUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ShownUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// The content of a root-only file. `Debug` shows its path, never its content.
pub struct SecretFile {
    path: PathBuf,
    text: String,
}

impl fmt::Debug for SecretFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretFile({})", self.path.display())
    }
}

impl SecretFile {
    /// Read `path`, which must be a regular file owned by root with no permission for group or
    /// others (0600 or stricter): anyone else who could read or replace it would hold the key.
    pub fn read(path: &Path) -> Result<SecretFile> {
        let meta = std::fs::symlink_metadata(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if !meta.is_file() {
            bail!("{}: not a regular file", path.display());
        }
        if meta.uid() != 0 {
            bail!(
                "{}: owned by uid {}, must be owned by root",
                path.display(),
                meta.uid()
            );
        }
        if meta.mode() & 0o077 != 0 {
            bail!(
                "{}: mode {:04o} lets group or others at it; make it 0600",
                path.display(),
                meta.mode() & 0o7777
            );
        }
        if meta.len() > MAX_SECRET {
            bail!(
                "{}: {} bytes, too large for a key",
                path.display(),
                meta.len()
            );
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Ok(SecretFile {
            path: path.to_path_buf(),
            text,
        })
    }

    /// A secret that did not come from a file (tests).
    #[cfg(test)]
    pub fn from_text(path: &str, text: &str) -> SecretFile {
        SecretFile {
            path: PathBuf::from(path),
            text: text.to_string(),
        }
    }

    /// Where it came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The content.
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// A credential for the store: one header, sent only where [`crate::sys::http`] allows.
#[derive(Clone)]
pub struct Auth {
    name: String,
    value: String,
    file: PathBuf,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Auth({}: <hidden>, from {})",
            self.name,
            self.file.display()
        )
    }
}

impl Auth {
    /// Parse an auth file: one line, `Bearer TOKEN`, `Basic BASE64` or `LOW key:secret` (all
    /// sent as `Authorization: <line>`), or `Name: value` for another header.
    pub fn parse(file: &SecretFile) -> Result<Auth> {
        let shown = file.path().display();
        let mut lines = file.text().lines().map(str::trim).filter(|l| !l.is_empty());
        let line = lines
            .next()
            .with_context(|| format!("{shown}: empty, expected one header line"))?;
        if lines.next().is_some() {
            bail!("{shown}: more than one line, expected one header line");
        }
        let (scheme, _) = line.split_once(' ').unwrap_or((line, ""));
        let (name, value) = match scheme.strip_suffix(':') {
            Some(name) => (name.to_string(), line[scheme.len()..].trim().to_string()),
            None => ("Authorization".to_string(), line.to_string()),
        };
        let name_ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let value_ok = !value.is_empty() && value.bytes().all(|b| (b' '..=b'~').contains(&b));
        if !name_ok || !value_ok || (name == "Authorization" && !value.contains(' ')) {
            bail!("{shown}: not `Bearer TOKEN`, `Basic BASE64`, `LOW key:secret` or `Name: value`");
        }
        Ok(Auth {
            name,
            value,
            file: file.path().to_path_buf(),
        })
    }

    /// The header name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The header value: the secret itself, for the request only.
    pub fn value(&self) -> &str {
        &self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_user_info_and_query() {
        let s = |u: &str| ShownUrl::new(u).to_string();
        assert_eq!(
            s("https://u:pw@store:8443/opt.tar.zst?X-Amz-Signature=abc"),
            "https://store:8443/opt.tar.zst?…"
        );
        assert_eq!(s("http://store/a/b"), "http://store/a/b");
        assert_eq!(s("https://store?tok"), "https://store?…");
        assert_eq!(s("https://store/x#frag"), "https://store/x?…");
        assert_eq!(s("file:///srv/opt.tar.zst"), "file:///srv/opt.tar.zst");
        // A `://` or `@` in the query is not a scheme or user-info.
        assert_eq!(
            s("/dl?X-Amz-Signature=abc&next=http://127.0.0.1/x"),
            "/dl?…"
        );
        assert_eq!(s("http://h/a?u=x@y://z"), "http://h/a?…");
        assert_eq!(s("//u:pw@h/a"), "//h/a");
    }

    fn auth(text: &str) -> Result<Auth> {
        Auth::parse(&SecretFile::from_text("/a", text))
    }

    #[test]
    fn auth_lines() {
        let a = auth("Bearer s3cr3t\n").unwrap();
        assert_eq!((a.name(), a.value()), ("Authorization", "Bearer s3cr3t"));
        let a = auth("LOW key:secret").unwrap();
        assert_eq!((a.name(), a.value()), ("Authorization", "LOW key:secret"));
        let a = auth("X-Api-Key: abc def").unwrap();
        assert_eq!((a.name(), a.value()), ("X-Api-Key", "abc def"));
        assert!(!format!("{a:?}").contains("abc"));
        for bad in [
            "",
            "tokenonly",
            "Bearer a\nBearer b",
            "X-K:",
            "X K: v\u{7f}",
        ] {
            let e = auth(bad).unwrap_err().to_string();
            assert!(e.starts_with("/a: "), "{e}");
            assert!(!e.contains("tokenonly"), "{e}");
        }
    }
}
