//! Editing `/etc/fstab`: exactly one line per mountpoint olboot manages, every other line kept
//! byte for byte.
//!
//! An older line for the same mountpoint (a disk of a previous VM, a hand-made entry) is not
//! deleted: it is commented out with a `# olboot replaced:` prefix right where it stood and the
//! new line takes its place, so an operator can still see what was there.

use super::mount::unescape;
use std::fmt;

/// One fstab entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// What to mount: `UUID=...` or a path.
    pub spec: String,
    /// The mountpoint as the target system sees it.
    pub file: String,
    /// Filesystem type (`ext4`, `xfs`, `none` for a bind mount).
    pub vfstype: String,
    /// Mount options, comma-separated.
    pub options: String,
    /// `fs_passno`: 2 for data filesystems, 0 for bind mounts.
    pub passno: u32,
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} 0 {}",
            escape(&self.spec),
            escape(&self.file),
            self.vfstype,
            self.options,
            self.passno
        )
    }
}

/// The prefix of a line olboot commented out.
pub const REPLACED: &str = "# olboot replaced: ";

/// What bringing a file to hold `entry` takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Exactly one line for the mountpoint, and it is `entry`.
    Unchanged,
    /// No line for the mountpoint yet.
    Add,
    /// These lines for the mountpoint differ or are too many; they will be commented out.
    Replace(Vec<String>),
}

/// The mountpoint field of an active fstab line, unescaped.
fn mountpoint(line: &str) -> Option<String> {
    let t = line.trim_start();
    if t.is_empty() || t.starts_with('#') {
        return None;
    }
    t.split_whitespace().nth(1).map(unescape)
}

fn fields(line: &str) -> Vec<String> {
    let mut f: Vec<String> = line.split_whitespace().map(unescape).collect();
    // fs_freq and fs_passno default to 0 when omitted.
    while f.len() < 6 {
        f.push("0".into());
    }
    f
}

/// What it takes for `content` to hold exactly one line for `entry.file`, equal to `entry`.
pub fn plan(content: &str, entry: &Entry) -> Edit {
    let want = fields(&entry.to_string());
    let same: Vec<&str> = content
        .lines()
        .filter(|l| mountpoint(l).as_deref() == Some(entry.file.as_str()))
        .collect();
    match same.as_slice() {
        [] => Edit::Add,
        [one] if fields(one) == want => Edit::Unchanged,
        _ => Edit::Replace(
            same.iter()
                .filter(|l| fields(l) != want)
                .map(|l| l.to_string())
                .collect(),
        ),
    }
}

/// `content` edited to hold exactly one line for `entry.file`: the first line for that
/// mountpoint becomes `entry`, the old ones are commented out in place; with none, `entry`
/// is appended.
pub fn apply(content: &str, entry: &Entry) -> String {
    let mut out = String::with_capacity(content.len() + 128);
    let mut placed = false;
    for line in content.split_inclusive('\n') {
        let bare = line.trim_end_matches('\n');
        if mountpoint(bare).as_deref() != Some(entry.file.as_str()) {
            out.push_str(line);
            continue;
        }
        if fields(bare) == fields(&entry.to_string()) && !placed {
            out.push_str(line);
        } else {
            out.push_str(REPLACED);
            out.push_str(bare);
            out.push('\n');
            if !placed {
                out.push_str(&entry.to_string());
                out.push('\n');
            }
        }
        placed = true;
    }
    if !placed {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&entry.to_string());
        out.push('\n');
    }
    out
}

/// fstab escapes blanks and backslashes as octal (`\040`).
fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            ' ' => o.push_str("\\040"),
            '\t' => o.push_str("\\011"),
            '\n' => o.push_str("\\012"),
            '\\' => o.push_str("\\134"),
            c => o.push(c),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e() -> Entry {
        Entry {
            spec: "UUID=1234".into(),
            file: "/1".into(),
            vfstype: "ext4".into(),
            options: "defaults,nofail".into(),
            passno: 2,
        }
    }

    #[test]
    fn adds_once_and_then_is_unchanged() {
        let base = "# static\nUUID=root / ext4 defaults 0 1";
        assert_eq!(plan(base, &e()), Edit::Add);
        let once = apply(base, &e());
        assert_eq!(
            once,
            "# static\nUUID=root / ext4 defaults 0 1\nUUID=1234 /1 ext4 defaults,nofail 0 2\n"
        );
        assert_eq!(plan(&once, &e()), Edit::Unchanged);
        assert_eq!(apply(&once, &e()), once);
    }

    #[test]
    fn old_line_for_same_mountpoint_is_commented_in_place() {
        let base = "a / ext4 defaults 0 1\n/dev/sdb1\t/1\text4\tdefaults 0 2\n\ttail line kept  \n";
        assert_eq!(
            plan(base, &e()),
            Edit::Replace(vec!["/dev/sdb1\t/1\text4\tdefaults 0 2".into()])
        );
        let out = apply(base, &e());
        assert_eq!(
            out,
            "a / ext4 defaults 0 1\n# olboot replaced: /dev/sdb1\t/1\text4\tdefaults 0 2\nUUID=1234 /1 ext4 defaults,nofail 0 2\n\ttail line kept  \n"
        );
        assert_eq!(plan(&out, &e()), Edit::Unchanged);
    }

    #[test]
    fn duplicates_are_reduced_to_one() {
        let base = "UUID=1234 /1 ext4 defaults,nofail 0 2\nUUID=1234 /1 ext4 defaults,nofail 0 2\n";
        assert!(matches!(plan(base, &e()), Edit::Replace(_)));
        let out = apply(base, &e());
        assert_eq!(out.lines().filter(|l| l.starts_with("UUID")).count(), 1);
        assert_eq!(plan(&out, &e()), Edit::Unchanged);
    }

    #[test]
    fn escaped_mountpoints_match() {
        let mut en = e();
        en.file = "/mnt/a b".into();
        let out = apply("", &en);
        assert_eq!(out, "UUID=1234 /mnt/a\\040b ext4 defaults,nofail 0 2\n");
        assert_eq!(plan(&out, &en), Edit::Unchanged);
    }
}
