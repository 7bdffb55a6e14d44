//! `--exclude PATTERN`, anchored as rsync anchors it:
//! - a leading `/` anchors the pattern at the root of the tree (`/openlibrary/venv`);
//! - a trailing `/` matches directories only (`cache/`);
//! - a pattern with a `/` inside (or a `**`) is matched against the end of the path, at a
//!   component boundary (`deploys/*/node_modules`); one without, against the last component
//!   (`*.pyc`);
//! - `*` matches within one component, `**` across components, `?` one character other than
//!   `/`, and `\` makes the next character literal. Character classes are not supported.
//!
//! An excluded directory is not descended into.

/// One compiled pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    text: String,
    glob: Vec<u8>,
    anchored: bool,
    dirs_only: bool,
    whole_path: bool,
}

impl Pattern {
    /// Compile `text`; the error says why it is not a pattern.
    pub fn new(text: &str) -> Result<Pattern, String> {
        let anchored = text.starts_with('/');
        let dirs_only = text.ends_with('/');
        let glob = text.trim_start_matches('/').trim_end_matches('/');
        if glob.is_empty() {
            return Err(format!("--exclude {text:?}: the pattern matches nothing"));
        }
        if glob.contains('[') {
            return Err(format!(
                "--exclude {text:?}: character classes ([...]) are not supported; use ? or \\["
            ));
        }
        Ok(Pattern {
            text: text.to_string(),
            glob: glob.as_bytes().to_vec(),
            anchored,
            dirs_only,
            whole_path: glob.contains('/') || glob.contains("**"),
        })
    }

    /// The pattern as given.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether `rel` (a path below the root, without `./`) is excluded.
    pub fn matches(&self, rel: &[u8], is_dir: bool) -> bool {
        if self.dirs_only && !is_dir {
            return false;
        }
        if self.anchored {
            return glob(&self.glob, rel);
        }
        if !self.whole_path {
            let last = rel.rsplit(|&b| b == b'/').next().unwrap_or(rel);
            return glob(&self.glob, last);
        }
        // Any tail of the path that starts at a component.
        glob(&self.glob, rel)
            || rel
                .iter()
                .enumerate()
                .any(|(i, &b)| b == b'/' && glob(&self.glob, &rel[i + 1..]))
    }
}

/// Whether glob `p` matches all of `s`.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p {
        [] => s.is_empty(),
        [b'*', b'*', rest @ ..] => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        [b'*', rest @ ..] => {
            for i in 0..=s.len() {
                if glob(rest, &s[i..]) {
                    return true;
                }
                if s.get(i) == Some(&b'/') {
                    break;
                }
            }
            false
        }
        [b'?', rest @ ..] => matches!(s.first(), Some(&c) if c != b'/') && glob(rest, &s[1..]),
        [b'\\', c, rest @ ..] | [c, rest @ ..] => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

/// The first of `patterns` that excludes `rel`.
pub fn excluded<'a>(patterns: &'a [Pattern], rel: &[u8], is_dir: bool) -> Option<&'a Pattern> {
    patterns.iter().find(|p| p.matches(rel, is_dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, rel: &str, dir: bool) -> bool {
        Pattern::new(p).unwrap().matches(rel.as_bytes(), dir)
    }

    #[test]
    fn anchoring_as_rsync() {
        assert!(m("/petabox", "petabox", true));
        assert!(!m("/petabox", "openlibrary/petabox", true));
        assert!(m("petabox", "openlibrary/petabox", false));
        assert!(m("cache/", "a/b/cache", true));
        assert!(!m("cache/", "a/b/cache", false));
        assert!(m("*.pyc", "openlibrary/venv/lib/x.pyc", false));
        assert!(!m("*.pyc", "openlibrary/venv/lib/x.pyc.txt", false));
        assert!(m(
            "deploys/*/node_modules",
            "openlibrary/deploys/abc/node_modules",
            true
        ));
        assert!(!m(
            "deploys/*/node_modules",
            "openlibrary/deploys/a/b/node_modules",
            true
        ));
        assert!(!m(
            "ploys/*/node_modules",
            "openlibrary/deploys/a/node_modules",
            true
        ));
        assert!(m("/openlibrary/**/*.log", "openlibrary/a/b/c.log", false));
        assert!(m("/openlibrary/**", "openlibrary/a/b", false));
        assert!(m("/openlibrary/*", "openlibrary/a", false));
        assert!(!m("/openlibrary/*", "openlibrary/a/b", false));
        assert!(m("f?o", "x/foo", false));
        assert!(!m("f?o", "x/fo", false));
        assert!(m("a\\*", "a*", false));
        assert!(!m("a\\*", "ab", false));
    }

    #[test]
    fn bad_patterns_say_why() {
        assert!(Pattern::new("/").unwrap_err().contains("matches nothing"));
        assert!(Pattern::new("").is_err());
        assert!(Pattern::new("[ab]")
            .unwrap_err()
            .contains("character classes"));
    }
}
