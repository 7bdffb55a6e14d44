//! Safe tar extraction into a staging directory.
//!
//! Every entry is created relative to a directory file descriptor that was opened with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so the kernel itself refuses a path that
//! leaves the staging directory or passes through a symlink (one an earlier entry made, say).
//! On top of that, names with `..` or a leading `/`, device nodes and FIFOs are refused with
//! an error naming the entry, instead of being skipped quietly as `tar::Entry::unpack_in`
//! does. Symlinks are created as they are and never followed. Owners are numeric; the mode
//! is set after the owner (chown clears setuid/setgid); directories get their mode, owner and
//! mtime at the end, deepest first, so a read-only directory can still be filled.
//!
//! Speed: a file owned by olboot's own user (most of a tree unpacked as root) is created with
//! its final mode under a zero umask, so it costs open, write, futimens and close only; and
//! a background thread starts the writeback every 64 MiB so the final sync is short.

use anyhow::{bail, Context, Result};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, Gid, Mode, OFlags, ResolveFlags, Timespec, Timestamps, Uid, UTIME_OMIT};
use rustix::io::Errno;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use tar::EntryType;

use super::writer::Writers;

/// Writer threads for small files' contents.
const WRITERS: usize = 2;

/// What was unpacked.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Entries created (files, directories, links).
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

/// Owner, mode and mtime of an entry.
#[derive(Clone, Copy)]
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: i64,
}

/// Unpack the tar stream `r` into the existing, empty directory `dir`, then read `r` to its
/// end (tar pads its end; the stream's producer must see it consumed).
pub fn unpack(r: impl Read, dir: &Path) -> Result<Stats> {
    let root = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .with_context(|| format!("cannot open {}", dir.display()))?;
    let setgid_root = rustix::fs::fstat(&root)
        .map(|st| st.st_mode & 0o2000 != 0)
        .with_context(|| format!("cannot stat {}", dir.display()))?;
    // Files are created with their final mode (see `Unpacker::entry`): no umask in the way.
    // Restored when `_umask` is dropped.
    let _umask = Umask(rustix::process::umask(Mode::empty()));
    let mut u = Unpacker {
        root,
        parent: None,
        dirs: Vec::new(),
        chown: rustix::process::geteuid().is_root(),
        // New files get the process's ids unless the directory is setgid; the directories
        // made here are setgid only if the staging root is (their modes come at the end).
        ids: (!setgid_root).then(|| {
            (
                rustix::process::geteuid().as_raw(),
                rustix::process::getegid().as_raw(),
            )
        }),
        buf: vec![0; 256 * 1024],
        stats: Stats::default(),
        flusher: Flusher::start(dir)?,
        writers: Writers::start(WRITERS)?,
    };
    let mut ar = tar::Archive::new(r);
    for entry in ar.entries().context("cannot read the tar stream")? {
        let mut entry = entry.context("cannot read the tar stream")?;
        let name = entry.path_bytes().into_owned();
        u.entry(&name, &mut entry)
            .with_context(|| format!("archive entry {:?}", String::from_utf8_lossy(&name)))?;
    }
    u.writers.finish()?;
    u.finish_dirs()?;
    io::copy(&mut ar.into_inner(), &mut io::sink()).context("cannot read the tar stream")?;
    Ok(u.stats)
}

struct Umask(Mode);

impl Drop for Umask {
    fn drop(&mut self) {
        rustix::process::umask(self.0);
    }
}

struct Unpacker {
    root: OwnedFd,
    /// The owner new files get without a chown, when that is certain.
    ids: Option<(u32, u32)>,
    /// The last parent directory opened, reused while entries stay in it (the usual case).
    parent: Option<(PathBuf, OwnedFd)>,
    /// Directories whose metadata is set at the end.
    dirs: Vec<(PathBuf, Meta)>,
    /// Whether to set owners (only root can).
    chown: bool,
    buf: Vec<u8>,
    stats: Stats,
    flusher: Flusher,
    writers: Writers,
}

/// Starts the writeback of what was unpacked while unpacking goes on: after every
/// [`FLUSH_EVERY`] bytes, a background thread syncs the filesystem. Without it, all the data
/// would wait in the page cache for the final sync; with it, the disk works while the CPU
/// decompresses, and the final sync before the rename has little left to do.
struct Flusher {
    tx: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    since: usize,
}

/// Bytes written between two background syncs.
const FLUSH_EVERY: usize = 64 << 20;

impl Flusher {
    fn start(dir: &Path) -> Result<Flusher> {
        let fd = rustix::fs::open(
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("cannot open {}", dir.display()))?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::spawn(move || {
            while rx.recv().is_ok() {
                // Errors surface in the final sync, which is checked.
                let _ = rustix::fs::syncfs(&fd);
            }
        });
        Ok(Flusher {
            tx: Some(tx),
            thread: Some(thread),
            since: 0,
        })
    }

    fn wrote(&mut self, n: usize) {
        self.since += n;
        if self.since >= FLUSH_EVERY {
            self.since = 0;
            if let Some(tx) = &self.tx {
                // Busy with the previous sync: this one is folded into the next.
                let _ = tx.try_send(());
            }
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `name` as a relative path of normal components; `..`, absolute names and NUL are refused.
fn relative(name: &[u8]) -> Result<PathBuf> {
    if name.first() == Some(&b'/') {
        bail!("absolute path refused");
    }
    let mut out = PathBuf::new();
    for c in name.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => bail!("'..' in the path refused"),
            c if c.contains(&0) => bail!("NUL in the path refused"),
            c => out.push(OsStr::from_bytes(c)),
        }
    }
    Ok(out)
}

/// Open the directory `rel` beneath `dir` with `flags`, never through a symlink or `..`
/// ([`RESOLVE`]); errors name `shown`, the path as the archive has it.
fn open_dir(dir: impl AsFd, rel: impl AsRef<Path>, flags: OFlags, shown: &Path) -> Result<OwnedFd> {
    rustix::fs::openat2(
        dir,
        rel.as_ref(),
        flags | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        RESOLVE,
    )
    .map_err(|e| errno(e, &format!("cannot open directory {}", shown.display())))
}

fn errno(e: Errno, what: &str) -> anyhow::Error {
    match e {
        Errno::LOOP | Errno::XDEV => {
            anyhow::anyhow!("{what}: refusing to go through a symlink or leave the tree")
        }
        e => anyhow::Error::new(io::Error::from(e)).context(what.to_string()),
    }
}

fn split(path: &Path) -> (&Path, &OsStr) {
    (
        path.parent().unwrap_or(Path::new("")),
        path.file_name().unwrap_or_default(),
    )
}

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

impl Unpacker {
    fn entry<R: Read>(&mut self, name: &[u8], e: &mut tar::Entry<R>) -> Result<()> {
        let path = relative(name)?;
        let h = e.header();
        let meta = Meta {
            uid: h.uid().context("bad uid")? as u32,
            gid: h.gid().context("bad gid")? as u32,
            mode: h.mode().context("bad mode")? & 0o7777,
            mtime: h.mtime().context("bad mtime")? as i64,
        };
        let kind = h.entry_type();
        match kind {
            EntryType::Directory => {
                if !path.as_os_str().is_empty() {
                    let (parent, base) = split(&path);
                    let pfd = self.parent_fd(parent)?;
                    match rustix::fs::mkdirat(pfd, base, Mode::from_raw_mode(0o700)) {
                        Ok(()) => {}
                        Err(Errno::EXIST) => {
                            let st = rustix::fs::statat(pfd, base, AtFlags::SYMLINK_NOFOLLOW)
                                .map_err(|e| errno(e, "cannot stat it"))?;
                            if !rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir() {
                                bail!("something that is not a directory is in the way");
                            }
                        }
                        Err(e) => return Err(errno(e, "cannot create the directory")),
                    }
                }
                self.dirs.push((path, meta));
            }
            EntryType::Regular | EntryType::Continuous => {
                let (parent, base) = split(&path);
                if base.is_empty() {
                    bail!("a file entry without a name");
                }
                let flags = OFlags::WRONLY
                    | OFlags::CREATE
                    | OFlags::EXCL
                    | OFlags::NOFOLLOW
                    | OFlags::CLOEXEC;
                // The common case, a file of olboot's own user, is created with its final mode
                // and needs neither chown nor chmod. Otherwise it is private until chown then
                // chmod (chown clears setuid/setgid) have run.
                let owned = !self.chown || self.ids == Some((meta.uid, meta.gid));
                let mode = if owned { meta.mode } else { 0o600 };
                let fd = self.create(parent, base, |pfd| {
                    rustix::fs::openat(pfd, base, flags, Mode::from_raw_mode(mode))
                })?;
                let mut file = std::fs::File::from(fd);
                let size = e.size();
                if owned && size <= Writers::SMALL {
                    // Small files go to the writer threads (see writer.rs), whole.
                    let mut data = Vec::with_capacity(size as usize);
                    e.read_to_end(&mut data)
                        .context("cannot read its content")?;
                    self.stats.bytes += data.len() as u64;
                    self.flusher.wrote(data.len());
                    self.writers.submit(file, data, times(meta.mtime), path)?;
                    self.stats.entries += 1;
                    return Ok(());
                }
                loop {
                    let n = match e.read(&mut self.buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                        Err(err) => return Err(err).context("cannot read its content"),
                    };
                    file.write_all(&self.buf[..n])
                        .context("cannot write the file")?;
                    self.stats.bytes += n as u64;
                    self.flusher.wrote(n);
                }
                if owned {
                    rustix::fs::futimens(&file, &times(meta.mtime))
                        .map_err(|e| errno(e, "cannot set the mtime"))?;
                } else {
                    self.set_meta_fd(&file, meta)?;
                }
            }
            EntryType::Symlink => {
                let target = e
                    .link_name_bytes()
                    .context("a symlink without a target")?
                    .into_owned();
                let (parent, base) = split(&path);
                if base.is_empty() {
                    bail!("a symlink entry without a name");
                }
                self.create(parent, base, |pfd| {
                    rustix::fs::symlinkat(OsStr::from_bytes(&target), pfd, base)
                })?;
                let chown = self.chown;
                let pfd = self.parent_fd(parent)?;
                if chown {
                    rustix::fs::chownat(
                        pfd,
                        base,
                        Some(Uid::from_raw(meta.uid)),
                        Some(Gid::from_raw(meta.gid)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(|e| errno(e, "cannot set the symlink's owner"))?;
                }
                rustix::fs::utimensat(pfd, base, &times(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| errno(e, "cannot set the symlink's mtime"))?;
            }
            EntryType::Link => {
                let target = e
                    .link_name_bytes()
                    .context("a hard link without a target")?
                    .into_owned();
                let target = relative(&target).context("hard link target")?;
                let (tparent, tbase) = split(&target);
                if tbase.is_empty() {
                    bail!("hard link to the top directory refused");
                }
                let tfd = self.open_beneath(tparent)?;
                let (parent, base) = split(&path);
                self.create(parent, base, |pfd| {
                    rustix::fs::linkat(&tfd, tbase, pfd, base, AtFlags::empty())
                })
                .with_context(|| format!("hard link to {}", target.display()))?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                bail!("device nodes and FIFOs are refused")
            }
            EntryType::XGlobalHeader => return Ok(()),
            other => bail!("unsupported entry type {other:?}"),
        }
        self.stats.entries += 1;
        Ok(())
    }

    /// Run `make` (which creates `base` in the parent directory it is given); if `base`
    /// exists already and is not a directory, remove it and try once more (a later entry of
    /// the same name replaces the earlier one, as with GNU tar).
    fn create<T>(
        &mut self,
        parent: &Path,
        base: &OsStr,
        make: impl Fn(&OwnedFd) -> rustix::io::Result<T>,
    ) -> Result<T> {
        let pfd = self.parent_fd(parent)?;
        match make(pfd) {
            Err(Errno::EXIST) => {
                let st = rustix::fs::statat(pfd, base, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| errno(e, "cannot stat it"))?;
                if rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir() {
                    bail!("a directory of that name is in the way");
                }
                rustix::fs::unlinkat(pfd, base, AtFlags::empty())
                    .map_err(|e| errno(e, "cannot replace it"))?;
                make(pfd).map_err(|e| errno(e, "cannot create it"))
            }
            r => r.map_err(|e| errno(e, "cannot create it")),
        }
    }

    /// The directory `rel` (relative to the staging root), opened beneath it without following
    /// any symlink; missing directories are created (archives may omit parents).
    fn parent_fd(&mut self, rel: &Path) -> Result<&OwnedFd> {
        if rel.as_os_str().is_empty() {
            return Ok(&self.root);
        }
        let cached = matches!(&self.parent, Some((p, _)) if p == rel);
        if !cached {
            let fd = match self.open_beneath(rel) {
                Ok(fd) => fd,
                Err(_) if !self.exists(rel) => self.make_dirs(rel)?,
                Err(e) => return Err(e),
            };
            self.parent = Some((rel.to_path_buf(), fd));
        }
        Ok(&self.parent.as_ref().expect("set just above").1)
    }

    fn exists(&self, rel: &Path) -> bool {
        rustix::fs::statat(&self.root, rel, AtFlags::SYMLINK_NOFOLLOW).is_ok()
    }

    fn open_beneath(&self, rel: &Path) -> Result<OwnedFd> {
        if rel.as_os_str().is_empty() {
            return rustix::io::dup(&self.root).context("cannot dup the staging directory");
        }
        open_dir(&self.root, rel, OFlags::PATH, rel)
    }

    /// Create the missing directories of `rel` one by one, each beneath the previous one.
    fn make_dirs(&mut self, rel: &Path) -> Result<OwnedFd> {
        let mut fd = rustix::io::dup(&self.root).context("cannot dup the staging directory")?;
        for c in rel.iter() {
            match rustix::fs::mkdirat(&fd, c, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(errno(e, &format!("cannot create {}", rel.display()))),
            }
            fd = open_dir(&fd, c, OFlags::PATH, rel)?;
        }
        Ok(fd)
    }

    fn set_meta_fd(&self, fd: impl AsFd, m: Meta) -> Result<()> {
        if self.chown {
            rustix::fs::fchown(&fd, Some(Uid::from_raw(m.uid)), Some(Gid::from_raw(m.gid)))
                .map_err(|e| errno(e, "cannot set the owner"))?;
        }
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(m.mode))
            .map_err(|e| errno(e, "cannot set the mode"))?;
        rustix::fs::futimens(&fd, &times(m.mtime)).map_err(|e| errno(e, "cannot set the mtime"))
    }

    /// Give the directories their metadata, deepest and latest first, so that setting a
    /// parent's mtime comes after everything inside it changed.
    fn finish_dirs(&mut self) -> Result<()> {
        self.parent = None;
        let dirs = std::mem::take(&mut self.dirs);
        for (rel, meta) in dirs.iter().rev() {
            let fd = if rel.as_os_str().is_empty() {
                rustix::io::dup(&self.root).context("cannot dup the staging directory")?
            } else {
                open_dir(&self.root, rel, OFlags::RDONLY, rel)?
            };
            self.set_meta_fd(&fd, *meta)
                .with_context(|| format!("directory {}", rel.display()))?;
        }
        Ok(())
    }
}

fn times(mtime: i64) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: mtime,
            tv_nsec: 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_names() {
        assert_eq!(relative(b"./a/b/").unwrap(), PathBuf::from("a/b"));
        assert_eq!(relative(b"./").unwrap(), PathBuf::new());
        assert!(relative(b"/etc/passwd").is_err());
        assert!(relative(b"a/../../x").is_err());
    }
}
