//! What `olboot pack` tells at the end: entries and bytes per top-level directory, what was
//! skipped and why, warnings, and the reference report: which files outside each top-level
//! directory mention it (`/opt/petabox`, and `DIR/petabox` when DIR is not `/opt`), found by
//! a streaming search over each file's bytes as they are read (text files only: a NUL byte
//! in the first 8 KiB marks a file as binary), so an operator can tell which roles need it.

use serde::Serialize;
use std::collections::BTreeMap;

/// Files listed per referenced directory; skipped entries and warnings keep five times as
/// many (each is also logged as it happens). The counts are always complete.
pub const LISTED: usize = 20;
const BINARY_PROBE: u64 = 8192;

/// What one top-level directory holds.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Top {
    /// Entries archived.
    pub entries: u64,
    /// Bytes of their content (apparent sizes).
    pub bytes: u64,
}

/// Who mentions one top-level directory.
#[derive(Debug, Clone, Serialize)]
pub struct References {
    /// The directory, relative to the tree (`petabox`).
    pub dir: String,
    /// The strings searched for.
    pub needles: Vec<String>,
    /// How many files (and symlinks) outside it mention it.
    pub files: u64,
    /// The first [`LISTED`] of them, in archive order.
    pub listed: Vec<String>,
}

/// A list that keeps its first `5 × LISTED` items and counts all.
#[derive(Debug, Clone, Serialize)]
pub struct Capped<T> {
    /// How many there were.
    pub count: u64,
    /// The first of them.
    pub listed: Vec<T>,
}

impl<T> Default for Capped<T> {
    fn default() -> Self {
        Capped {
            count: 0,
            listed: Vec::new(),
        }
    }
}

impl<T> Capped<T> {
    fn push(&mut self, t: T) {
        self.count += 1;
        if self.listed.len() < LISTED * 5 {
            self.listed.push(t);
        }
    }
}

/// An entry not archived.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    /// Its path below the tree.
    pub path: String,
    /// Why it was left out.
    pub reason: String,
}

/// The whole summary; `--json` prints it.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    /// The archive's path.
    pub archive: String,
    /// The archive's sha256, as the config wants it.
    pub sha256: String,
    /// Bytes of the archive file.
    pub archive_bytes: u64,
    /// Entries archived.
    pub entries: u64,
    /// Bytes of file content (apparent sizes).
    pub content_bytes: u64,
    /// Per top-level name; `.` is the root itself and the files directly in it.
    pub top: BTreeMap<String, Top>,
    /// Entries left out, and why.
    pub skipped: Capped<Skipped>,
    /// What was archived differently from the tree, or could not be.
    pub warnings: Capped<String>,
    /// Who mentions each top-level directory.
    pub references: Vec<References>,
}

impl Summary {
    /// A summary that will search for references to each of `tops` (top-level directory
    /// names) under each of `roots` (`/opt`, and the tree's own path).
    pub fn new(tops: &[String], roots: &[String]) -> (Summary, Needles) {
        let mut needles = Needles::default();
        let mut s = Summary::default();
        for (i, t) in tops.iter().enumerate() {
            let mine: Vec<String> = roots.iter().map(|r| format!("{r}/{t}")).collect();
            for n in &mine {
                needles.list.push((n.as_bytes().to_vec(), i));
                needles.longest = needles.longest.max(n.len());
            }
            s.references.push(References {
                dir: t.clone(),
                needles: mine,
                files: 0,
                listed: Vec::new(),
            });
        }
        (s, needles)
    }

    /// Count an archived entry of `bytes` under top-level `top`.
    pub fn entry(&mut self, top: &str, bytes: u64) {
        let t = self.top.entry(top.to_string()).or_default();
        t.entries += 1;
        t.bytes += bytes;
        self.entries += 1;
        self.content_bytes += bytes;
    }

    /// Record (and log) an entry left out.
    pub fn skip(&mut self, path: String, reason: String) {
        log::warn!("skipping {path}: {reason}");
        self.skipped.push(Skipped { path, reason });
    }

    /// Record (and log) a warning.
    pub fn warn(&mut self, w: String) {
        log::warn!("{w}");
        self.warnings.push(w);
    }

    /// Record what `scan` found in the file `rel`, which lies under top-level `top`.
    pub fn references(&mut self, rel: &str, top: &str, scan: &mut Scanner) {
        scan.finish();
        for (r, found) in self.references.iter_mut().zip(&scan.found) {
            if *found && r.dir != top {
                r.files += 1;
                if r.listed.len() < LISTED {
                    r.listed.push(rel.to_string());
                }
            }
        }
    }

    /// The summary for a person, on stderr.
    pub fn print(&self, dir: &str) {
        let mut s = format!(
            "packed {dir}: {} entries, {} of content, into {} ({})\n",
            self.entries,
            mib(self.content_bytes),
            self.archive,
            mib(self.archive_bytes)
        );
        for (name, t) in &self.top {
            s += &format!(
                "  {name:<24} {:>9} entries {:>12}\n",
                t.entries,
                mib(t.bytes)
            );
        }
        s += &list("skipped", &self.skipped, |k| {
            format!("{}: {}", k.path, k.reason)
        });
        s += &list("warnings", &self.warnings, String::clone);
        s += "references (files outside a top-level directory that mention it):\n";
        for r in &self.references {
            s += &format!("  {}: {} files\n", r.needles.join(" or "), r.files);
            for f in &r.listed {
                s += &format!("    {f}\n");
            }
            if r.files > r.listed.len() as u64 {
                s += &format!("    … and {} more\n", r.files - r.listed.len() as u64);
            }
        }
        eprint!("{s}");
    }
}

fn list<T>(what: &str, c: &Capped<T>, show: impl Fn(&T) -> String) -> String {
    let mut s = format!("{what}: {}\n", c.count);
    for t in &c.listed {
        s += &format!("  {}\n", show(t));
    }
    if c.count > c.listed.len() as u64 {
        s += &format!(
            "  … and {} more (all of them in the log above)\n",
            c.count - c.listed.len() as u64
        );
    }
    s
}

fn mib(n: u64) -> String {
    crate::archive::fetch::mib(n)
}

/// The strings searched for, each with the index of the directory it names.
#[derive(Debug, Default)]
pub struct Needles {
    list: Vec<(Vec<u8>, usize)>,
    longest: usize,
}

/// A streaming search of one file's bytes for the [`Needles`]: a match counts when the
/// directory's name ends there (the next byte is not a name character), so `/opt/petabox`
/// is found in `/opt/petabox/www` and `"/opt/petabox"` but not in `/opt/petabox2`. The bytes
/// of a match split between two reads are kept from one read to the next.
pub struct Scanner<'a> {
    needles: &'a Needles,
    carry: Vec<u8>,
    found: Vec<bool>,
    seen: u64,
    binary: bool,
}

impl<'a> Scanner<'a> {
    /// A scanner for `needles`, which name `dirs` directories.
    pub fn new(needles: &'a Needles, dirs: usize) -> Scanner<'a> {
        Scanner {
            needles,
            carry: Vec::new(),
            found: vec![false; dirs],
            seen: 0,
            binary: false,
        }
    }

    /// Forget the file read so far (a new file, or a new read of it).
    pub fn reset(&mut self) {
        self.carry.clear();
        self.found.fill(false);
        self.seen = 0;
        self.binary = false;
    }

    /// The file is binary: nothing in it counts.
    pub fn binary(&mut self) {
        self.binary = true;
        self.found.fill(false);
    }

    /// The next bytes of the file.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.binary || self.needles.list.is_empty() {
            return;
        }
        if self.seen < BINARY_PROBE {
            let probe = chunk.len().min((BINARY_PROBE - self.seen) as usize);
            if chunk[..probe].contains(&0) {
                return self.binary();
            }
        }
        self.seen += chunk.len() as u64;
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(chunk);
        self.search(&buf, false);
        let keep = buf.len().saturating_sub(self.needles.longest);
        buf.drain(..keep);
        self.carry = buf;
    }

    /// The file ended: a match at its very end counts.
    fn finish(&mut self) {
        if !self.binary {
            let carry = std::mem::take(&mut self.carry);
            self.search(&carry, true);
        }
    }

    fn search(&mut self, buf: &[u8], last: bool) {
        for (p, _) in buf.iter().enumerate().filter(|(_, &b)| b == b'/') {
            for (needle, dir) in &self.needles.list {
                if !buf[p..].starts_with(needle) {
                    continue;
                }
                match buf.get(p + needle.len()) {
                    Some(&c) if !is_name_char(c) => self.found[*dir] = true,
                    None if last => self.found[*dir] = true,
                    _ => {}
                }
            }
        }
    }
}

fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(text: &[&[u8]]) -> Vec<bool> {
        let tops = ["petabox".to_string(), "openlibrary".to_string()];
        let (_, needles) = Summary::new(&tops, &["/opt".to_string()]);
        let mut s = Scanner::new(&needles, 2);
        for t in text {
            s.feed(t);
        }
        s.finish();
        s.found.clone()
    }

    #[test]
    fn finds_whole_names_across_reads() {
        assert_eq!(found(&[b"cd /opt/petabox/www && x"]), [true, false]);
        assert_eq!(found(&[b"x=/opt/peta", b"box\n"]), [true, false]);
        assert_eq!(found(&[b"x=/opt/petabox"]), [true, false]);
        assert_eq!(found(&[b"x=/opt/petabox2 /opt/.petabox"]), [false, false]);
        assert_eq!(found(&[b"/opt/petabo", b"x2"]), [false, false]);
        assert_eq!(
            found(&[b"\"/opt/openlibrary\" /opt/petabox;"]),
            [true, true]
        );
        assert_eq!(found(&[b"ELF\0/opt/petabox/"]), [false, false]);
    }
}
