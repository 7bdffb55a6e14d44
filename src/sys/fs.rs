//! File writes that survive a crash: a file is either its old or its new content.

use anyhow::{Context, Result};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Replace `path` with `data`: write a temporary file beside it, fsync it, rename it over
/// `path` and fsync the directory. Parent directories are created. The mode of an existing
/// file is kept; a new file gets `mode`. A symlink at `path` is refused rather than replaced
/// by a file, and the temporary file is created afresh, never opened through something left
/// at its name.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{}: no parent directory", path.display()))?;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mode = match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            anyhow::bail!("{} is a symlink: not replacing it", path.display())
        }
        Ok(m) => m.permissions().mode() & 0o7777,
        Err(_) => mode,
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.olboot-tmp"));
    let write = || -> std::io::Result<()> {
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    };
    write()
        .inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Fail unless [`write_atomic`] can replace `path`: it is not a symlink, and it (when it
/// exists) and the nearest existing directory above it are writable; for a caller that must
/// know before it starts something the write completes.
pub fn check_writable(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            anyhow::bail!("{} is a symlink: not replacing it", path.display())
        }
        Ok(_) => writable(path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot stat {}", path.display())),
    }
    let dir = path
        .ancestors()
        .skip(1)
        .find(|d| d.is_dir())
        .with_context(|| format!("{}: no parent directory", path.display()))?;
    writable(dir)
}

/// `access(W_OK)`: it fails on a read-only filesystem or an immutable file even for root.
fn writable(path: &Path) -> Result<()> {
    rustix::fs::access(path, rustix::fs::Access::WRITE_OK)
        .with_context(|| format!("{} is not writable", path.display()))
}

/// The content of `path`, or `None` when it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Holds the run lock until dropped.
pub struct Lock(#[allow(dead_code)] File);

/// Take `/run/olboot.lock` (below the root) so that two runs (cloud-init's and a person's)
/// never converge the same system at once; waits if another run holds it.
pub fn lock(root: &crate::root::Root) -> Result<Lock> {
    let path = root.path(Path::new("/run/olboot.lock"))?;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    if rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        log::info!(
            "waiting for another olboot run ({} is locked)",
            path.display()
        );
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .with_context(|| format!("cannot lock {}", path.display()))?;
    }
    Ok(Lock(f))
}

/// `mkdir -p path`.
pub fn create_dir_all(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))
}

/// Remove the file (or symlink) at `path`; nothing there is fine.
pub fn remove_file_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Make `link` a symlink to `target`.
pub fn symlink(target: &str, link: &Path) -> Result<()> {
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("cannot create {}", link.display()))
}

/// Remove the empty directory `path`.
pub fn remove_dir(path: &Path) -> Result<()> {
    std::fs::remove_dir(path).with_context(|| format!("cannot remove {}", path.display()))
}

/// Rename `from` to `to`.
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to)
        .with_context(|| format!("cannot rename {} to {}", from.display(), to.display()))
}

/// fsync the directory `dir` (after a rename in it).
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}

/// What is at a path.
#[derive(Debug)]
pub enum Found {
    /// Nothing.
    Missing,
    /// A directory with nothing in it.
    EmptyDir,
    /// A directory with something in it.
    Tree,
    /// A symlink (not followed), and its target.
    Symlink(std::path::PathBuf),
    /// Anything else.
    Other,
}

/// What is at `p`, a final symlink not followed.
pub fn look(p: &Path) -> Result<Found> {
    found(p, fs::symlink_metadata(p))
}

/// What is at `p`, symlinks followed (a dangling one is [`Found::Missing`]).
pub fn look_through(p: &Path) -> Result<Found> {
    found(p, fs::metadata(p))
}

fn found(p: &Path, m: std::io::Result<fs::Metadata>) -> Result<Found> {
    let m = match m {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Missing),
        r => r.with_context(|| format!("cannot stat {}", p.display()))?,
    };
    if m.file_type().is_symlink() {
        let t = fs::read_link(p).with_context(|| format!("cannot read {}", p.display()))?;
        return Ok(Found::Symlink(t));
    }
    if !m.is_dir() {
        return Ok(Found::Other);
    }
    let mut entries = fs::read_dir(p).with_context(|| format!("cannot list {}", p.display()))?;
    Ok(if entries.next().is_some() {
        Found::Tree
    } else {
        Found::EmptyDir
    })
}

/// Whether `a` and `b` (symlinks followed) are the same inode: a bind mount of one on the other.
pub fn same_inode(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}
