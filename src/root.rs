//! The system olboot works on: the running one (`/`) or one mounted at `--root DIR`.
//!
//! Config paths are written as the target system sees them (`/opt/openlibrary/olsystem/etc`).
//! Under `--root` they must be resolved *inside* DIR: an absolute symlink in the target such as
//! `/opt/openlibrary/olsystem -> /opt/openlibrary/deploys/olsystem/<sha>` points into DIR, never
//! at the rescue system's own `/opt`. This type is the one place that does that.

use anyhow::{bail, Result};
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

/// Symlink hops allowed while resolving one path, as the kernel's `MAXSYMLINKS`.
const MAX_HOPS: u32 = 40;

/// The root of the system being converged.
#[derive(Debug, Clone)]
pub struct Root {
    dir: PathBuf,
}

impl Root {
    /// The running system.
    pub fn live() -> Root {
        Root {
            dir: PathBuf::from("/"),
        }
    }

    /// A system mounted at `dir` (an absolute path).
    pub fn at(dir: impl Into<PathBuf>) -> Root {
        Root { dir: dir.into() }
    }

    /// Whether this is the running system (`/`), whose kernel state olboot may change.
    pub fn is_live(&self) -> bool {
        self.dir == Path::new("/")
    }

    /// The directory the target system is mounted at (`/` when live).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path on this machine of `target`, an absolute path as the target sees it.
    ///
    /// Every component but the last is resolved inside the root, following symlinks as the
    /// target system would; the last component is left as it is, so callers can `lstat` a
    /// symlink itself. Missing components are kept literally. A symlink loop is an error:
    /// kept literally, the kernel would follow the looping link from this machine's `/`.
    pub fn path(&self, target: &Path) -> Result<PathBuf> {
        if self.is_live() {
            return Ok(target.to_path_buf());
        }
        self.walk(target, false)
    }

    /// Like [`Root::path`], but a symlink in the last component is followed too: the path of
    /// the directory or file that `target` finally names. Missing components are kept
    /// literally after the existing ones are resolved, on the running system too (where
    /// `canonicalize` would give up on the whole path).
    pub fn resolve(&self, target: &Path) -> Result<PathBuf> {
        self.walk(target, true)
    }

    fn walk(&self, target: &Path, follow_last: bool) -> Result<PathBuf> {
        // `todo` holds the components still to walk, the next one on top.
        let mut todo: Vec<OsString> = Vec::new();
        push_components(&mut todo, target);
        let mut cur: Vec<OsString> = Vec::new();
        let mut hops = 0;
        while let Some(comp) = todo.pop() {
            if comp == ".." {
                cur.pop();
                continue;
            }
            let last = todo.is_empty();
            let mut host = self.dir.clone();
            host.extend(&cur);
            host.push(&comp);
            let link = if last && !follow_last {
                None
            } else {
                std::fs::read_link(&host).ok()
            };
            match link {
                Some(_) if hops == MAX_HOPS => bail!(
                    "{}: too many levels of symbolic links below {}",
                    target.display(),
                    self.dir.display()
                ),
                Some(link) => {
                    hops += 1;
                    if link.is_absolute() {
                        cur.clear();
                    }
                    push_components(&mut todo, &link);
                }
                None => cur.push(comp),
            }
        }
        let mut out = self.dir.clone();
        out.extend(&cur);
        Ok(out)
    }
}

/// Push the normal, `..` and `.` components of `p` onto the stack `todo` so that the first
/// component is popped first.
fn push_components(todo: &mut Vec<OsString>, p: &Path) {
    for c in p.components().rev() {
        match c {
            Component::Normal(n) => todo.push(n.to_os_string()),
            Component::ParentDir => todo.push(OsString::from("..")),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn live_root_is_identity() {
        let r = Root::live();
        assert_eq!(
            r.path(Path::new("/etc/fstab")).unwrap(),
            PathBuf::from("/etc/fstab")
        );
    }

    #[test]
    fn absolute_symlink_resolves_inside_root() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::create_dir_all(d.join("opt/openlibrary/deploys/olsystem/abc/etc")).unwrap();
        symlink(
            "/opt/openlibrary/deploys/olsystem/abc",
            d.join("opt/openlibrary/olsystem"),
        )
        .unwrap();
        let r = Root::at(d);
        assert_eq!(
            r.path(Path::new("/opt/openlibrary/olsystem/etc/x.conf"))
                .unwrap(),
            d.join("opt/openlibrary/deploys/olsystem/abc/etc/x.conf")
        );
        // The last component is not followed.
        assert_eq!(
            r.path(Path::new("/opt/openlibrary/olsystem")).unwrap(),
            d.join("opt/openlibrary/olsystem")
        );
    }

    #[test]
    fn relative_symlinks_and_dotdot_stay_inside_root() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::create_dir_all(d.join("opt/a/b")).unwrap();
        symlink("a/b", d.join("opt/cur")).unwrap();
        symlink("../../../../../../etc", d.join("opt/esc")).unwrap();
        let r = Root::at(d);
        assert_eq!(
            r.path(Path::new("/opt/cur/f")).unwrap(),
            d.join("opt/a/b/f")
        );
        assert_eq!(
            r.path(Path::new("/opt/esc/passwd")).unwrap(),
            d.join("etc/passwd")
        );
        assert_eq!(r.path(Path::new("/../../etc/x")).unwrap(), d.join("etc/x"));
    }

    #[test]
    fn resolve_follows_the_last_component() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::create_dir_all(d.join("opt/deploys/x/etc")).unwrap();
        symlink("/opt/deploys/x", d.join("opt/olsystem")).unwrap();
        let r = Root::at(d);
        assert_eq!(
            r.resolve(Path::new("/opt/olsystem")).unwrap(),
            d.join("opt/deploys/x")
        );
        assert_eq!(
            r.resolve(Path::new("/opt/olsystem/etc")).unwrap(),
            d.join("opt/deploys/x/etc")
        );
    }

    #[test]
    fn resolve_on_the_live_system_resolves_the_existing_part() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().canonicalize().unwrap();
        std::fs::create_dir_all(d.join("real")).unwrap();
        symlink(d.join("real"), d.join("link")).unwrap();
        let r = Root::live();
        assert_eq!(
            r.resolve(&d.join("link/missing/f")).unwrap(),
            d.join("real/missing/f")
        );
        assert_eq!(r.resolve(&d.join("link")).unwrap(), d.join("real"));
    }

    #[test]
    fn symlink_loop_does_not_hang() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        symlink("/b", d.join("a")).unwrap();
        symlink("/a", d.join("b")).unwrap();
        // One that loops onto itself: in the root it is ELOOP; kept literally, the kernel
        // would follow it from this machine's `/` and so out of the root.
        symlink("/c", d.join("c")).unwrap();
        let r = Root::at(d);
        for p in ["/a/x", "/c/x"] {
            let e = r.path(Path::new(p)).unwrap_err().to_string();
            assert!(e.contains("too many levels of symbolic links"), "{e}");
        }
        let e = r.resolve(Path::new("/a")).unwrap_err().to_string();
        assert!(e.contains("/a: too many levels"), "{e}");
        // The last component of `path` is not followed: no loop to walk.
        assert_eq!(r.path(Path::new("/a")).unwrap(), d.join("a"));
    }
}
