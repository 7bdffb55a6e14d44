//! What GNU tar does later than the entry that asks for it, and olboot must do as late:
//!
//! - a directory's owner, mode and mtime wait until the archive leaves it (an entry comes
//!   whose name does not start with the directory's name and a `/`: names as the archive has
//!   them, not the paths they resolve to), deepest first, so that the entries put in it do
//!   not change its mtime afterwards (GNU tar's delayed set-stat list);
//! - a symlink that points out of the tree (absolute, or with a `..`) GNU tar makes only at
//!   the end of the archive, over a placeholder: the directory it is in, and every directory
//!   waiting before that one, then wait to the end too (`mark_after_links`); and a later entry
//!   of the same name would meet the placeholder, not the symlink, so it is refused.

use super::Meta;
use anyhow::{bail, Result};
use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

/// The memory the waiting directories may take (names, xattrs, ACLs, and what each
/// directory and each xattr costs beside them: `DIR_OVERHEAD`, `super::RECORD_OVERHEAD`).
/// Each PAX header may be up to 1 MiB, and a chain of nested directories must not add them up
/// past the process's bound of 32 MiB: unpacking a large archive takes 20 MiB without them
/// (the pipes' buffers fill), and the stream takes 8 MiB more while it reads a 1 MiB header of
/// 50,000 xattrs. About 11,000 directories held to the end (see the module doc), or one with
/// 36,000 xattrs, fit in it; real directories carry a few xattrs.
const MAX_WAITING_BYTES: usize = 3 << 20;
/// What a waiting directory costs beside its names and xattrs: the `Dir` (112 bytes, twice
/// that in the vector's spare capacity at worst) and the allocator's headers of the two
/// names' buffers.
const DIR_OVERHEAD: usize = 256;
/// Directories that may wait at once.
const MAX_WAITING: usize = 1 << 16;
/// Symlinks out of the tree remembered (as 8-byte hashes of their paths).
const MAX_LINKS: usize = 1 << 18;
/// Directories the archive listed remembered (as 8-byte hashes of their paths): past that,
/// a symlink out of the tree in a directory left already is refused (see `hold_for_link`).
const MAX_LISTED: usize = 1 << 17;

struct Dir {
    path: PathBuf,
    /// The archive's name for it, trailing slashes cut.
    name: Vec<u8>,
    meta: Meta,
    /// Held to the end of the archive (see the module doc).
    to_the_end: bool,
}

fn size(d: &Dir) -> usize {
    d.path.as_os_str().len() + d.name.len() + super::attrs_len(&d.meta) + DIR_OVERHEAD
}

/// `name` without its trailing slashes (a lone `/` kept), as GNU tar compares names.
pub fn trimmed(name: &[u8]) -> &[u8] {
    let end = name.iter().rposition(|&b| b != b'/').map_or(1, |i| i + 1);
    &name[..end.min(name.len())]
}

/// Whether the entry named `name` is inside the directory named `dir` (both trimmed).
fn inside(name: &[u8], dir: &[u8]) -> bool {
    name.len() > dir.len() && name.starts_with(dir) && name[dir.len()] == b'/'
}

/// The directories whose metadata waits, deepest (latest) last.
#[derive(Default)]
pub struct Waiting {
    dirs: Vec<Dir>,
    bytes: usize,
    /// How many are held to the end.
    held: usize,
    /// The directories the archive listed, waiting or not (up to [`MAX_LISTED`]).
    listed: HashSet<u64>,
}

impl Waiting {
    /// Let directory `path`, named `name` in the archive, wait for its metadata `meta`. One
    /// already waiting under that name (only one held to the end can be: any other was left
    /// when this entry came) takes the later metadata, as in GNU tar.
    pub fn push(&mut self, path: PathBuf, name: &[u8], meta: Meta) -> Result<()> {
        let name = trimmed(name);
        if self.held > 0 {
            if let Some(d) = self.dirs.iter_mut().find(|d| d.name == name) {
                self.bytes -= size(d);
                d.meta = meta;
                self.bytes += size(d);
                return self.check();
            }
        }
        if self.listed.len() < MAX_LISTED {
            self.listed.insert(key(&path));
        }
        let d = Dir {
            path,
            name: name.to_vec(),
            meta,
            to_the_end: false,
        };
        self.bytes += size(&d);
        self.dirs.push(d);
        self.check()
    }

    /// [`Waiting::push`] for the top directory, held to the end of the archive (GNU tar
    /// gives it its metadata last, whatever comes after it).
    pub fn push_top(&mut self, name: &[u8], meta: Meta) -> Result<()> {
        self.push(PathBuf::new(), name, meta)?;
        let top = self
            .dirs
            .iter_mut()
            .rev()
            .find(|d| d.path.as_os_str().is_empty());
        if let Some(d) = top.filter(|d| !d.to_the_end) {
            d.to_the_end = true;
            self.held += 1;
        }
        Ok(())
    }

    /// Whether the directory at `path` waits for its metadata.
    pub fn has(&self, path: &Path) -> bool {
        self.dirs.iter().any(|d| d.path == path)
    }

    fn check(&self) -> Result<()> {
        if self.bytes > MAX_WAITING_BYTES || self.dirs.len() > MAX_WAITING {
            bail!(
                "directories waiting for their metadata: over {MAX_WAITING} of them or over \
                 {MAX_WAITING_BYTES} bytes of memory for their names and xattrs, refused"
            );
        }
        Ok(())
    }

    /// The next directory to give its metadata now that an entry named `name` comes: the
    /// deepest waiting one, unless `name` is inside it or it is held to the end.
    pub fn left_by(&mut self, name: &[u8]) -> Option<(PathBuf, Meta)> {
        let last = self.dirs.last()?;
        if last.to_the_end || inside(trimmed(name), &last.name) {
            return None;
        }
        self.pop()
    }

    /// The deepest directory still waiting (at the end of the archive: all, in turn).
    pub fn pop(&mut self) -> Option<(PathBuf, Meta)> {
        let d = self.dirs.pop()?;
        self.bytes -= size(&d);
        self.held -= usize::from(d.to_the_end);
        Some((d.path, d.meta))
    }

    /// A symlink out of the tree was made as `name`: the directory it is directly in, if
    /// that one waits, and the ones waiting before it down to one already held, wait to the
    /// end of the archive (GNU tar's `find_direct_ancestor` and `mark_after_links`). GNU tar
    /// also counts a directory it made itself for a deeper entry, which olboot does not keep:
    /// such a symlink below a waiting directory is refused. A directory the archive listed
    /// and left already (`top/d/s` after `top/d/`, `top/e/`: bsdtar's order) GNU tar no
    /// longer keeps either: nothing is held. `path` is the symlink's.
    pub fn hold_for_link(&mut self, name: &[u8], path: &Path) -> Result<()> {
        let name = trimmed(name);
        let base = name.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
        let direct = self
            .dirs
            .iter()
            .rposition(|d| inside(name, &d.name) && d.name.len() + 1 == base);
        let Some(i) = direct else {
            let parent = path.parent().unwrap_or(Path::new(""));
            if self.listed.contains(&key(parent)) {
                return Ok(());
            }
            if self.dirs.iter().any(|d| inside(name, &d.name)) {
                bail!(
                    "a symlink out of the tree in a directory the archive does not list, below \
                     one that waits for its metadata: refused (GNU tar holds that one to the end)"
                );
            }
            return Ok(());
        };
        for d in self.dirs[..=i].iter_mut().rev() {
            if d.to_the_end {
                break;
            }
            d.to_the_end = true;
            self.held += 1;
        }
        Ok(())
    }
}

/// Whether a symlink target points out of the tree: GNU tar makes those at the end.
pub fn out_of_tree(target: &[u8]) -> bool {
    target.first() == Some(&b'/') || target.split(|&b| b == b'/').any(|c| c == b"..")
}

/// The paths of the symlinks out of the tree made so far, as hashes: a collision only
/// refuses an archive.
#[derive(Default)]
pub struct Links(HashSet<u64>);

fn key(path: &Path) -> u64 {
    let mut h = DefaultHasher::new();
    path.hash(&mut h);
    h.finish()
}

impl Links {
    /// Remember the symlink out of the tree at `path`.
    pub fn add(&mut self, path: &Path) -> Result<()> {
        if self.0.len() >= MAX_LINKS {
            bail!("over {MAX_LINKS} symlinks out of the tree: refused");
        }
        self.0.insert(key(path));
        Ok(())
    }

    /// Refuse an entry at `path` where a symlink out of the tree was made before.
    pub fn check(&self, path: &Path) -> Result<()> {
        if !self.0.is_empty() && self.0.contains(&key(path)) {
            bail!(
                "an entry of the name of an earlier symlink out of the tree: GNU tar makes \
                 those at the end over a placeholder, and would not get this entry's result"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            uid: 0,
            gid: 0,
            mode: 0o755,
            mtime: Default::default(),
            attrs: Vec::new(),
        }
    }

    #[test]
    fn the_overheads_counted_cover_the_structures() {
        // Twice a `Dir` (the vector's spare capacity) and two allocator headers.
        assert!(2 * std::mem::size_of::<Dir>() + 32 <= DIR_OVERHEAD);
        // The pair of vectors and the smallest allocation of a name (32 bytes).
        let pair = std::mem::size_of::<(Vec<u8>, Vec<u8>)>();
        assert!(pair + 32 <= super::super::RECORD_OVERHEAD);
    }

    #[test]
    fn names_compare_as_the_archive_has_them() {
        assert_eq!(trimmed(b"a//"), b"a");
        assert_eq!(trimmed(b"/"), b"/");
        assert!(inside(b"a/f", b"a"));
        assert!(!inside(b"ab", b"a"));
        assert!(!inside(b"a/f", b"./a"));
        assert!(inside(b"./a", b"."));
    }

    #[test]
    fn a_link_out_of_the_tree_holds_its_directory_and_those_before_it() {
        let mut w = Waiting::default();
        w.push("a".into(), b"a/", meta()).unwrap();
        w.push("a/b".into(), b"a/b/", meta()).unwrap();
        w.hold_for_link(b"a/b/s", Path::new("a/b/s")).unwrap();
        // Below a/b, in a directory the archive does not list: refused.
        assert!(w.hold_for_link(b"a/b/x/s", Path::new("a/b/x/s")).is_err());
        w.push("c".into(), b"c/", meta()).unwrap();
        // c is left when d comes; a/b and a stay to the end.
        assert_eq!(w.left_by(b"d").map(|d| d.0), Some(PathBuf::from("c")));
        assert!(w.left_by(b"d").is_none());
        // Listed again: the later metadata, no second entry.
        let mut m = meta();
        m.mode = 0o700;
        w.push("a".into(), b"a", m).unwrap();
        assert_eq!(w.pop().map(|d| d.0), Some(PathBuf::from("a/b")));
        assert_eq!(w.pop().map(|d| d.1.mode), Some(0o700));
        assert!(w.pop().is_none());
    }

    #[test]
    fn links_out_of_the_tree() {
        assert!(out_of_tree(b"/usr/bin/python3"));
        assert!(out_of_tree(b"../x"));
        assert!(out_of_tree(b"a/../../x"));
        assert!(!out_of_tree(b"deploys/2024..1"));
        let mut l = Links::default();
        l.add(Path::new("v/bin/python")).unwrap();
        assert!(l.check(Path::new("v/bin/python")).is_err());
        assert!(l.check(Path::new("v/bin/pip")).is_ok());
    }
}
