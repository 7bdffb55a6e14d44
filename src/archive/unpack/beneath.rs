//! Opening a directory beneath the staging root without ever going through a symlink or `..`.
//!
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` lets the kernel enforce it in one call.
//! Kernels before 5.6 lack it (ENOSYS), and some container seccomp profiles refuse it (EPERM):
//! then the path is walked one component at a time with `openat(O_NOFOLLOW | O_DIRECTORY)`,
//! each from the directory opened before, refusing `..` and symlinks with the same error.

use anyhow::Result;
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use std::path::{Component, Path};
use std::sync::atomic::{AtomicBool, Ordering};

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// Set once openat2 has answered ENOSYS or EPERM: the walk is used from then on.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Open the directory `rel` beneath `dir` with `flags`; errors name `shown`.
pub fn open_dir(
    dir: impl AsFd,
    rel: impl AsRef<Path>,
    flags: OFlags,
    shown: &Path,
) -> Result<OwnedFd> {
    let flags = flags | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let rel = rel.as_ref();
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        match rustix::fs::openat2(&dir, rel, flags, Mode::empty(), RESOLVE) {
            Err(Errno::NOSYS | Errno::PERM) => {
                log::info!("openat2 is not available: walking paths one component at a time");
                NO_OPENAT2.store(true, Ordering::Relaxed);
            }
            r => return r.map_err(|e| errno(e, &open_failed(shown))),
        }
    }
    walk(dir, rel, flags).map_err(|e| errno(e, &open_failed(shown)))
}

fn open_failed(shown: &Path) -> String {
    format!("cannot open directory {}", shown.display())
}

/// The fallback: one `openat(O_NOFOLLOW)` per component; `..`, a root and symlinks refused.
fn walk(dir: impl AsFd, rel: &Path, flags: OFlags) -> rustix::io::Result<OwnedFd> {
    let mut fd = rustix::io::dup(&dir)?;
    for c in rel.components() {
        let name = match c {
            Component::Normal(n) => n,
            Component::CurDir => continue,
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(Errno::XDEV)
            }
        };
        fd = match rustix::fs::openat(&fd, name, flags | OFlags::NOFOLLOW, Mode::empty()) {
            // O_PATH | O_NOFOLLOW | O_DIRECTORY on a symlink says ENOTDIR, not ELOOP.
            Err(Errno::NOTDIR) if is_symlink(&fd, name) => return Err(Errno::LOOP),
            r => r?,
        };
    }
    Ok(fd)
}

fn is_symlink(dir: &OwnedFd, name: &std::ffi::OsStr) -> bool {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink)
}

/// An error of an `*at` call with `what` for context; ELOOP and EXDEV (a symlink or `..` on
/// the way) become the refusal they mean.
pub fn errno(e: Errno, what: &str) -> anyhow::Error {
    match e {
        Errno::LOOP | Errno::XDEV => {
            anyhow::anyhow!("{what}: refusing to go through a symlink or leave the tree")
        }
        e => anyhow::Error::new(std::io::Error::from(e)).context(what.to_string()),
    }
}
