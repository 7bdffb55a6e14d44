//! Editing `/etc/fstab`: exactly one line per mountpoint olboot manages, every other line kept
//! byte for byte.
//!
//! An older line for the same mountpoint (a disk of a previous VM, a hand-made entry), or one
//! that mounts the same device elsewhere (it would be mounted twice at boot), is not deleted: it is commented out with a `# olboot replaced:` prefix right where it stood and the
//! new line takes its place, so an operator can still see what was there.

use super::mount::unescape;
use std::fmt;

/// Where a system keeps its mount table.
pub const PATH: &str = "/etc/fstab";

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

/// The spec and mountpoint fields of an active fstab line, unescaped.
fn spec_and_file(line: &str) -> Option<(String, String)> {
    let t = line.trim_start();
    if t.is_empty() || t.starts_with('#') {
        return None;
    }
    let mut f = t.split_whitespace().map(unescape);
    Some((f.next()?, f.next()?))
}

fn fields(line: &str) -> Vec<String> {
    let mut f: Vec<String> = line.split_whitespace().map(unescape).collect();
    // fs_freq and fs_passno default to 0 when omitted.
    while f.len() < 6 {
        f.push("0".into());
    }
    f
}

/// Whether two fstab mountpoints name the same directory as mount(8) reads them: `/1`, `/1/`
/// and `//1` are one.
fn same_mountpoint(a: &str, b: &str) -> bool {
    let parts = |p| str::split(p, '/').filter(|c: &&str| !c.is_empty());
    a.starts_with('/') == b.starts_with('/') && parts(a).eq(parts(b))
}

/// The lines that concern `entry`: those for its mountpoint, and those that mount its device
/// elsewhere (which would mount it twice at boot). Returns (index, line) pairs and the index
/// of the first one that is exactly `entry`, which is kept.
fn concerned<'a>(content: &'a str, entry: &Entry) -> (Vec<(usize, &'a str)>, Option<usize>) {
    let want = fields(&entry.to_string());
    let lines: Vec<(usize, &str)> = content
        .lines()
        .enumerate()
        .filter(|(_, l)| {
            spec_and_file(l).is_some_and(|(spec, file)| {
                same_mountpoint(&file, &entry.file) || spec == entry.spec
            })
        })
        .collect();
    let keep = lines
        .iter()
        .find(|(_, l)| fields(l) == want)
        .map(|(i, _)| *i);
    (lines, keep)
}

/// What it takes for `content` to hold exactly one line for `entry.file` and `entry.spec`,
/// equal to `entry`.
pub fn plan(content: &str, entry: &Entry) -> Edit {
    let (lines, keep) = concerned(content, entry);
    let old: Vec<String> = lines
        .iter()
        .filter(|(i, _)| Some(*i) != keep)
        .map(|(_, l)| l.to_string())
        .collect();
    match (old.is_empty(), keep) {
        (true, Some(_)) => Edit::Unchanged,
        (true, None) => Edit::Add,
        (false, _) => Edit::Replace(old),
    }
}

/// `content` edited as [`plan`] says: the lines it names are commented out in place; `entry`
/// takes the place of the first of them unless an identical line is kept; with no line
/// concerned, `entry` is appended.
pub fn apply(content: &str, entry: &Entry) -> String {
    let (lines, keep) = concerned(content, entry);
    let first = lines.first().map(|(i, _)| *i);
    let mut out = String::with_capacity(content.len() + 128);
    for (i, line) in content.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches('\n');
        if Some(i) == keep || !lines.iter().any(|(j, _)| *j == i) {
            out.push_str(line);
            if !line.ends_with('\n') && Some(i) == keep {
                out.push('\n');
            }
            continue;
        }
        out.push_str(REPLACED);
        out.push_str(bare);
        out.push('\n');
        if keep.is_none() && Some(i) == first {
            out.push_str(&entry.to_string());
            out.push('\n');
        }
    }
    if first.is_none() {
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
    fn the_same_device_mounted_elsewhere_is_commented_out() {
        let base = "UUID=1234 /data ext4 defaults 0 2\n";
        assert_eq!(
            plan(base, &e()),
            Edit::Replace(vec![base.trim_end().into()])
        );
        let out = apply(base, &e());
        assert_eq!(out, "# olboot replaced: UUID=1234 /data ext4 defaults 0 2\nUUID=1234 /1 ext4 defaults,nofail 0 2\n");
        assert_eq!(plan(&out, &e()), Edit::Unchanged);
    }

    #[test]
    fn duplicates_are_reduced_to_one() {
        let base = "UUID=1234 /1 ext4 defaults,nofail 0 2\nUUID=1234 /1 ext4 defaults,nofail 0 2\n";
        assert_eq!(
            plan(base, &e()),
            Edit::Replace(vec!["UUID=1234 /1 ext4 defaults,nofail 0 2".into()])
        );
        let out = apply(base, &e());
        assert_eq!(out.lines().filter(|l| l.starts_with("UUID")).count(), 1);
        assert_eq!(plan(&out, &e()), Edit::Unchanged);
    }

    #[test]
    fn other_spellings_of_the_mountpoint_are_the_same_mountpoint() {
        let base = "UUID=old /1/ ext4 defaults 0 2\nUUID=older //1 ext4 defaults 0 2\n\
                    UUID=other /10 ext4 defaults 0 2\n";
        assert_eq!(
            plan(base, &e()),
            Edit::Replace(vec![
                "UUID=old /1/ ext4 defaults 0 2".into(),
                "UUID=older //1 ext4 defaults 0 2".into()
            ])
        );
        let out = apply(base, &e());
        assert_eq!(
            out.lines().filter(|l| !l.starts_with('#')).count(),
            2,
            "{out}"
        );
        assert_eq!(plan(&out, &e()), Edit::Unchanged);
        assert!(same_mountpoint("/", "//") && !same_mountpoint("/1", "/1/2"));
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
