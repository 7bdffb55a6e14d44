//! Safe tar extraction into a staging directory.
//!
//! Every entry is created relative to a directory file descriptor that was opened with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so the kernel itself refuses a path that
//! leaves the staging directory or passes through a symlink (one an earlier entry made, say).
//! Where openat2 is missing, [`beneath`] walks the path one component at a time instead.
//! On top of that, names with `..` or a leading `/`, device nodes and FIFOs are refused with
//! an error naming the entry. Symlinks are created as they are and never followed. Owners are numeric; the mode
//! is set after the owner (chown clears setuid/setgid), then xattrs and ACLs, the mtime last
//! (see `Unpacker::set_meta_fd`). Directories get their metadata when the archive leaves them,
//! deepest first, and the top directory at the end, as GNU tar does, so a read-only directory
//! can still be filled and the times come out as GNU tar's whatever the order of the entries.
//! No entry keeps an ACL it inherited (see `Unpacker::inherits`). The tar stream is read by
//! [`stream`], which bounds every special header.
//!
//! Speed: a file without xattrs is created with its final mode when the umask leaves that mode
//! alone and no directory has a default ACL (the umask is never changed: it is the process's,
//! shared with the steps that run at the same time and their children), so it costs open, write,
//! futimens and close, and a chown if another user owns it (a chmod too only if it is setuid or
//! setgid, or the umask would clear some of its bits); the contents of small ones are written (and
//! the files finished and closed) by writer threads while this thread goes on with the tree
//! (writer.rs); large ones are written straight from the stream's buffer; and a background thread
//! starts the writeback every 64 MiB so the final sync is short.

mod beneath;
mod delayed;
mod stream;
mod xattr;

use super::writer::{Finish, WriterError, Writers};
use anyhow::{bail, Context, Result};
use beneath::{errno, open_dir};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, Gid, Mode, OFlags, Timespec, Timestamps, Uid, UTIME_OMIT};
use rustix::io::Errno;
use std::ffi::OsStr;
use std::io::{self, BufRead, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use stream::{Entry, Kind, Stream, Time};

/// What was unpacked.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Entries created (files, directories, links).
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// What could not be restored as the archive has it, each naming the entry (an xattr the
    /// filesystem does not support, say); at most [`MAX_WARNINGS`], then a count.
    pub warnings: Vec<String>,
}

/// Warnings kept in [`Stats::warnings`]; more are counted in a last line.
pub const MAX_WARNINGS: usize = 20;

/// Writer threads for small files' contents (see writer.rs).
const WRITERS: usize = 2;

/// What one xattr costs in memory beside its name and value: the pair of vectors (48 bytes)
/// and the allocator's header and rounding of the name's buffer (a 3-byte name takes 32
/// bytes). A 1 MiB PAX header holds 50,000 records of 3-byte names and empty values: 150 KB
/// of names, 4 MB of memory.
const RECORD_OVERHEAD: usize = 80;

/// The memory `m`'s xattrs take, as far as the waiting directories' bound is concerned.
fn attrs_len(m: &Meta) -> usize {
    m.attrs
        .iter()
        .map(|(k, v)| k.len() + v.len() + RECORD_OVERHEAD)
        .sum()
}

/// Names in error texts are cut to this many bytes.
const SHOWN: usize = 200;

/// `name` for an error text: lossy UTF-8, quoted, cut to [`SHOWN`] bytes with "…".
pub fn shown(name: &[u8]) -> String {
    let cut = &name[..name.len().min(SHOWN)];
    let mut s = String::from_utf8_lossy(cut).into_owned();
    if cut.len() < name.len() {
        s.push('…');
    }
    format!("{s:?}")
}

/// Owner, mode, mtime and extended attributes of an entry.
#[derive(Clone)]
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: Time,
    attrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Unpack the tar stream `r` into the existing, empty directory `dir`, then read `r` to its
/// end (tar pads its end; the stream's producer must see it consumed).
pub fn unpack(r: impl BufRead, dir: &Path) -> Result<Stats> {
    let root = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .with_context(|| format!("cannot open {}", dir.display()))?;
    let setgid_root = rustix::fs::fstat(&root)
        .map(|st| st.st_mode & 0o2000 != 0)
        .with_context(|| format!("cannot stat {}", dir.display()))?;
    // The staging directory inherits the default ACL of the directory it is made in (that of
    // opt.path): entries made in it would inherit it in turn, and their modes would be masked
    // by it, not by the umask; GNU tar resets both. Without it nothing in the tree inherits
    // anything until the archive gives a directory a default ACL (see `Unpacker::inherits`).
    xattr::remove(&root, xattr::DEFAULT_ACL).with_context(|| dir.display().to_string())?;
    let mut u = Unpacker {
        root,
        parent: None,
        waiting: delayed::Waiting::default(),
        links: delayed::Links::default(),
        chown: rustix::process::geteuid().is_root(),
        umask: current_umask(),
        inherits: false,
        // New files get the process's ids unless the directory is setgid; the directories
        // made here are not setgid until their metadata is set (see `set_dir_meta`).
        ids: (!setgid_root).then(|| {
            (
                rustix::process::geteuid().as_raw(),
                rustix::process::getegid().as_raw(),
            )
        }),
        stats: Stats::default(),
        dropped_warnings: 0,
        flusher: Flusher::start(dir)?,
        writers: Writers::start(WRITERS)?,
    };
    let mut ar = Stream::new(r);
    while let Some(mut e) = ar.next_entry().context("cannot read the tar stream")? {
        let xattrs = std::mem::take(&mut e.xattrs);
        if let Err(err) = u.entry(&e, xattrs, &mut ar) {
            if err.is::<WriterError>() {
                return Err(err);
            }
            return Err(err.context(format!("archive entry {}", shown(&e.name))));
        }
    }
    u.writers.finish()?;
    u.finish_dirs()?;
    io::copy(&mut ar.into_inner(), &mut io::sink()).context("cannot read the tar stream")?;
    if u.dropped_warnings > 0 {
        let n = u.dropped_warnings;
        u.stats
            .warnings
            .push(format!("{n} more warnings like these"));
    }
    Ok(u.stats)
}

/// The process's umask, read without setting it (setting it, even for a moment, would change
/// it for the other steps' threads and children); every bit when the kernel does not say, so
/// that every file gets its chmod.
fn current_umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        .unwrap_or(0o7777)
}

struct Unpacker {
    root: OwnedFd,
    /// The owner new files get without a chown, when that is certain.
    ids: Option<(u32, u32)>,
    /// The last parent directory opened, reused while entries stay in it (the usual case).
    parent: Option<(PathBuf, OwnedFd)>,
    /// Directories whose metadata waits until the archive leaves them (see delayed.rs).
    waiting: delayed::Waiting,
    /// The symlinks out of the tree made so far (see delayed.rs).
    links: delayed::Links,
    /// Whether to set owners (only root can).
    chown: bool,
    /// The bits the umask clears from a new file's mode.
    umask: u32,
    /// Whether a directory of the tree has a default ACL (from the archive): then a new
    /// entry may inherit ACLs, and its mode is masked by them, not by the umask; so each one
    /// made from then on has its inherited ACLs removed and its mode set (as GNU tar does).
    inherits: bool,
    stats: Stats,
    dropped_warnings: u64,
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

/// Whether `name`, trailing slashes cut, ends in a `.` component. `relative` drops it, but
/// GNU tar keeps it: a file or link made at `x/.` fails ("File exists"), and a hard link to
/// `a/.` or `a/` fails ("Not a directory"); olboot refuses those rather than make `x` or `a`.
fn ends_in_dot(name: &[u8]) -> bool {
    let t = delayed::trimmed(name);
    t == b"." || t.ends_with(b"/.")
}

/// `name` without its trailing `/.` components and slashes: `d/././/` is `d`.
fn without_dots(name: &[u8]) -> &[u8] {
    let mut n = delayed::trimmed(name);
    while let Some(rest) = n.strip_suffix(b"/.") {
        n = delayed::trimmed(rest);
    }
    n
}

fn split(path: &Path) -> (&Path, &OsStr) {
    (
        path.parent().unwrap_or(Path::new("")),
        path.file_name().unwrap_or_default(),
    )
}

impl Unpacker {
    /// Unpack `e`, whose xattrs (taken out of it: see `xattr::collect`) are `xattrs`.
    fn entry<R: BufRead>(
        &mut self,
        e: &Entry,
        xattrs: Vec<(Vec<u8>, Vec<u8>)>,
        ar: &mut Stream<R>,
    ) -> Result<()> {
        crate::sys::signal::check()?;
        if e.kind != Kind::Dir && ends_in_dot(&e.name) {
            bail!("a name ending in '/.' for what is not a directory (GNU tar fails on it)");
        }
        let path = relative(&e.name)?;
        self.leave_dirs(&e.name)?;
        self.links.check(&path)?;
        let meta = Meta {
            uid: e.uid,
            gid: e.gid,
            mode: e.mode,
            mtime: e.mtime,
            attrs: xattr::collect(xattrs, e.acl_access.as_deref(), e.acl_default.as_deref())?,
        };
        match e.kind {
            Kind::Dir => self.dir(path, &e.name, meta)?,
            Kind::File => self.file(&path, e, meta, ar)?,
            Kind::Symlink => self.symlink(&path, e, meta)?,
            Kind::HardLink => self.hard_link(&path, &e.link)?,
            Kind::Special => bail!("device nodes and FIFOs are refused"),
        }
        self.stats.entries += 1;
        Ok(())
    }

    fn warn(&mut self, w: String) {
        log::warn!("{w}");
        if self.stats.warnings.len() < MAX_WARNINGS {
            self.stats.warnings.push(w);
        } else {
            self.dropped_warnings += 1;
        }
    }

    fn dir(&mut self, path: PathBuf, name: &[u8], meta: Meta) -> Result<()> {
        if path.as_os_str().is_empty() {
            // The top directory (`./`, `.`, `./.`): GNU tar gives it its metadata at the end
            // of the archive, whatever comes after it.
            return self.waiting.push_top(name, meta);
        }
        let made = self.make_dir(&path)?;
        let mut name = name;
        if ends_in_dot(name) {
            if made {
                // `d/.` where there was no `d`: GNU tar makes `d` and gives it this entry's
                // metadata when the archive leaves `d`, as for an entry named `d/`.
                name = without_dots(name);
            } else if !self.waiting.has(&path) {
                // Made for a deeper entry (or listed and left already): GNU tar gives it this
                // entry's mtime, then the mode of a directory it made itself.
                bail!(
                    "a directory named with a trailing '/.' that exists already and is not \
                     waiting for its metadata (GNU tar would mix two entries' metadata)"
                );
            }
            // Else `d/.` while `d` waits: a second one, left by the next entry not inside
            // `d/./`, as in GNU tar (then `d`'s own metadata comes last).
        }
        // A directory listed again was left just before (see `leave_dirs`), or is held to
        // the end: either way its later metadata wins, as with GNU tar.
        self.waiting.push(path, name, meta)
    }

    /// Make the directory `path` (private until its metadata is set); whether it was made
    /// (or was a directory already).
    fn make_dir(&mut self, path: &Path) -> Result<bool> {
        let (parent, base) = split(path);
        let inherits = self.inherits;
        let pfd = self.parent_fd(parent)?;
        match rustix::fs::mkdirat(pfd, base, Mode::from_raw_mode(0o700)) {
            Ok(()) => {
                if inherits {
                    // Before anything is made in it (its mode is set when it is left).
                    let fd = open_dir(pfd, base, OFlags::RDONLY, path)?;
                    xattr::drop_inherited(&fd, true)?;
                }
                Ok(true)
            }
            Err(Errno::EXIST) => {
                let st = rustix::fs::statat(pfd, base, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| errno(e, "cannot stat it"))?;
                if !rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir() {
                    bail!("something that is not a directory is in the way");
                }
                Ok(false)
            }
            Err(e) => Err(errno(e, "cannot create the directory")),
        }
    }

    /// Set the metadata of the waiting directories the entry `name` is not inside of,
    /// deepest first, as GNU tar does when an entry outside them comes: an entry put in such
    /// a directory later changes its mtime again, in both.
    fn leave_dirs(&mut self, name: &[u8]) -> Result<()> {
        while let Some((dir, meta)) = self.waiting.left_by(name) {
            self.set_dir_meta(&dir, &meta)?;
        }
        Ok(())
    }

    fn file<R: BufRead>(
        &mut self,
        path: &Path,
        e: &Entry,
        meta: Meta,
        ar: &mut Stream<R>,
    ) -> Result<()> {
        let (parent, base) = split(path);
        if base.is_empty() {
            bail!("a file entry without a name");
        }
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        // A file without xattrs is created with its final mode, and needs no chmod, unless the
        // umask clears some of its bits, or it is setuid or setgid and needs a chown, which
        // would clear those bits: then it is private until chown then chmod have run. A file
        // with xattrs gets everything after.
        let plain = meta.attrs.is_empty();
        let owner = (self.chown && self.ids != Some((meta.uid, meta.gid)))
            .then(|| (Uid::from_raw(meta.uid), Gid::from_raw(meta.gid)));
        let final_mode = plain
            && !self.inherits
            && meta.mode & self.umask == 0
            && (owner.is_none() || meta.mode & 0o6000 == 0);
        let mode = if final_mode { meta.mode } else { 0o600 };
        let fd = self.create(parent, base, |pfd| {
            rustix::fs::openat(pfd, base, flags, Mode::from_raw_mode(mode))
        })?;
        let mut file = std::fs::File::from(fd);
        if self.inherits {
            xattr::drop_inherited(&file, false)?;
        }
        if !plain {
            self.contents(ar, &mut file, e)?;
            return self.set_meta_fd(&file, &meta, path);
        }
        let finish = Finish {
            owner,
            mode: (!final_mode).then(|| Mode::from_raw_mode(meta.mode)),
            mtime: times(meta.mtime),
        };
        if e.sparse.is_none() && e.size <= Writers::SMALL {
            return self.hand_over(ar, file, e.size, finish, path);
        }
        self.contents(ar, &mut file, e)?;
        finish.apply(&file)
    }

    /// Write the entry's data, sparse or not, into `file`.
    fn contents<R: BufRead>(
        &mut self,
        ar: &mut Stream<R>,
        file: &mut std::fs::File,
        e: &Entry,
    ) -> Result<()> {
        match &e.sparse {
            None => self.copy(ar, file, e.size),
            Some(sp) => self.sparse(ar, file, e.size, sp),
        }
    }

    /// Read the `n` bytes of a small file's data and hand them, with the file just created,
    /// to the writer threads, which write them, finish the file and close it (writer.rs).
    fn hand_over<R: BufRead>(
        &mut self,
        ar: &mut Stream<R>,
        file: std::fs::File,
        n: u64,
        finish: Finish,
        path: &Path,
    ) -> Result<()> {
        crate::sys::signal::check()?;
        let mut data = self.writers.buffer(n as usize);
        let buf = data.content();
        let mut filled = 0;
        while filled < buf.len() {
            match ar.read_data(&mut buf[filled..]) {
                Ok(0) => bail!("the archive ends in the middle of the file"),
                Ok(got) => filled += got,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err).context("cannot read its content"),
            }
        }
        self.stats.bytes += n;
        self.flusher.wrote(filled);
        self.writers.submit(file, data, finish, path.to_path_buf())
    }

    /// Copy `n` bytes of the entry's data to `file` at its current offset, written straight
    /// from the stream's buffer.
    fn copy<R: BufRead>(
        &mut self,
        ar: &mut Stream<R>,
        file: &mut std::fs::File,
        n: u64,
    ) -> Result<()> {
        let mut left = n;
        while left > 0 {
            crate::sys::signal::check()?;
            let chunk = match ar.data_buf() {
                Ok([]) => bail!("the archive ends in the middle of the file"),
                Ok(chunk) => chunk,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err).context("cannot read its content"),
            };
            let got = chunk.len().min(left.min(usize::MAX as u64) as usize);
            file.write_all(&chunk[..got])
                .context("cannot write the file")?;
            ar.consume_data(got);
            left -= got as u64;
            self.stats.bytes += got as u64;
            self.flusher.wrote(got);
        }
        Ok(())
    }

    /// Write a sparse file: each data region at its offset, the holes seeked over, the size
    /// set at the end, so the holes stay unallocated as with GNU tar.
    fn sparse<R: BufRead>(
        &mut self,
        ar: &mut Stream<R>,
        file: &mut std::fs::File,
        packed: u64,
        sp: &stream::Sparse,
    ) -> Result<()> {
        let mut end = 0u64;
        let mut total = 0u64;
        // GNU tar starts each region's data at a block boundary of the archive: a map whose
        // regions before the last are not whole blocks reads differently there (Go's
        // archive/tar packs them); refused rather than unpacked into another tree.
        let inner = sp.map.len().saturating_sub(1);
        if sp.map[..inner].iter().any(|&(_, len)| len % 512 != 0) {
            bail!("a sparse map whose regions are not whole 512-byte blocks (GNU tar reads it otherwise)");
        }
        for &(off, len) in &sp.map {
            let stop = off.checked_add(len).filter(|&s| off >= end && s <= sp.size);
            let Some(stop) = stop else {
                bail!("a sparse map with overlapping or out-of-range regions");
            };
            total += len;
            if total > packed {
                bail!("a sparse map larger than the data stored");
            }
            file.seek(SeekFrom::Start(off))
                .context("cannot seek in the file")?;
            self.copy(ar, file, len)?;
            end = stop;
        }
        if total != packed {
            bail!("a sparse map smaller than the data stored");
        }
        // GNU tar ends such a file where the map ends (a last empty region marks a final
        // hole), and extends the others to their size.
        if sp.ends_with_map && end != sp.size {
            bail!(
                "a sparse map that ends before the file's size (GNU tar would cut the file there)"
            );
        }
        file.set_len(sp.size)
            .context("cannot set the size of the file")
    }

    fn symlink(&mut self, path: &Path, e: &Entry, meta: Meta) -> Result<()> {
        let target = &e.link[..];
        if target.is_empty() {
            bail!("a symlink without a target");
        }
        let (parent, base) = split(path);
        if base.is_empty() {
            bail!("a symlink entry without a name");
        }
        self.create(parent, base, |pfd| {
            rustix::fs::symlinkat(OsStr::from_bytes(target), pfd, base)
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
        // After the owner, as for files (chown clears `security.capability`); GNU tar sets
        // them with lsetxattr (trusted.* and security.* ones; the kernel refuses user.* ones
        // on a symlink, which GNU tar warns about).
        let refused = xattr::set_on_symlink(pfd, base, &meta.attrs)?;
        rustix::fs::utimensat(pfd, base, &times(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| errno(e, "cannot set the symlink's mtime"))?;
        for name in refused {
            self.warn(format!(
                "archive entry {}: the xattr {name} cannot be set on a symlink here",
                shown(path.as_os_str().as_bytes())
            ));
        }
        if delayed::out_of_tree(target) {
            self.links.add(path)?;
            self.waiting.hold_for_link(&e.name, path)?;
        }
        Ok(())
    }

    fn hard_link(&mut self, path: &Path, target: &[u8]) -> Result<()> {
        if target.last() == Some(&b'/') || ends_in_dot(target) {
            bail!(
                "a hard link to {} (ending in '/' or '/.': GNU tar fails on it)",
                shown(target)
            );
        }
        let target = relative(target).context("hard link target")?;
        let (tparent, tbase) = split(&target);
        if tbase.is_empty() {
            bail!("hard link to the top directory refused");
        }
        let tfd = self.open_beneath(tparent)?;
        let (parent, base) = split(path);
        // A link to itself (`tar cf a.tar f f` with f linked elsewhere), or to the file the
        // name holds already, is done: GNU tar leaves it so. Replacing it would unlink the
        // only name of its target first.
        if target == path || self.same_file(&tfd, tbase, parent, base) {
            return Ok(());
        }
        self.create(parent, base, |pfd| {
            rustix::fs::linkat(&tfd, tbase, pfd, base, AtFlags::empty())
        })
        .with_context(|| format!("hard link to {}", shown(target.as_os_str().as_bytes())))?;
        Ok(())
    }

    /// Whether `tbase` in the directory `tfd` and `base` in `parent` are one inode.
    fn same_file(&mut self, tfd: &OwnedFd, tbase: &OsStr, parent: &Path, base: &OsStr) -> bool {
        let Ok(a) = rustix::fs::statat(tfd, tbase, AtFlags::SYMLINK_NOFOLLOW) else {
            return false;
        };
        let Ok(pfd) = self.parent_fd(parent) else {
            return false;
        };
        rustix::fs::statat(pfd, base, AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|b| (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino))
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
    /// GNU tar gives the parents an archive omits 0777 less the umask (it creates them
    /// private and sets that mode when it leaves them; they get no owner or mtime of the
    /// archive): mkdir with 0777 leaves the kernel to apply the same umask.
    fn make_dirs(&mut self, rel: &Path) -> Result<OwnedFd> {
        let mut fd = rustix::io::dup(&self.root).context("cannot dup the staging directory")?;
        for c in rel.iter() {
            match rustix::fs::mkdirat(&fd, c, Mode::from_raw_mode(0o777)) {
                Ok(()) if self.inherits => {
                    // The default ACL it inherited masked its mode instead of the umask.
                    let made = open_dir(&fd, c, OFlags::RDONLY, rel)?;
                    xattr::drop_inherited(&made, true)?;
                    rustix::fs::fchmod(&made, Mode::from_raw_mode(0o777 & !self.umask)).map_err(
                        |e| errno(e, &format!("cannot set the mode of {}", rel.display())),
                    )?;
                }
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(errno(e, &format!("cannot create {}", rel.display()))),
            }
            fd = open_dir(&fd, c, OFlags::PATH, rel)?;
        }
        Ok(fd)
    }

    /// Owner, then mode (chown clears setuid/setgid), then xattrs and ACLs (chown clears
    /// `security.capability`; an ACL sets the group bits), then the mtime.
    fn set_meta_fd(&mut self, fd: impl AsFd, m: &Meta, rel: &Path) -> Result<()> {
        let finish = Finish {
            owner: self
                .chown
                .then(|| (Uid::from_raw(m.uid), Gid::from_raw(m.gid))),
            mode: Some(Mode::from_raw_mode(m.mode)),
            mtime: times(m.mtime),
        };
        finish.set_owner_and_mode(&fd)?;
        for name in xattr::set(&fd, &m.attrs)? {
            self.warn(format!(
                "archive entry {}: the target filesystem does not support the xattr {name}",
                shown(rel.as_os_str().as_bytes())
            ));
        }
        finish.set_mtime(&fd)
    }

    /// Give the directories still waiting their metadata, deepest first.
    fn finish_dirs(&mut self) -> Result<()> {
        while let Some((dir, meta)) = self.waiting.pop() {
            self.set_dir_meta(&dir, &meta)?;
        }
        Ok(())
    }

    fn set_dir_meta(&mut self, rel: &Path, meta: &Meta) -> Result<()> {
        if meta.mode & 0o2000 != 0 {
            // Files made in a setgid directory take its group: from now on the owner of a
            // new file is no longer known without a chown.
            self.ids = None;
        }
        let fd = if rel.as_os_str().is_empty() {
            rustix::io::dup(&self.root).context("cannot dup the staging directory")?
        } else {
            open_dir(&self.root, rel, OFlags::RDONLY, rel)?
        };
        self.set_meta_fd(&fd, meta, rel)
            .with_context(|| format!("directory {}", shown(rel.as_os_str().as_bytes())))?;
        if meta.attrs.iter().any(|(k, _)| k == xattr::DEFAULT_ACL) {
            self.inherits = true;
        }
        Ok(())
    }
}

fn times(mtime: Time) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: mtime.sec,
            tv_nsec: mtime.nsec.into(),
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
        assert!(ends_in_dot(b"x/."));
        assert!(ends_in_dot(b"x/.//"));
        assert!(ends_in_dot(b"."));
        assert!(!ends_in_dot(b"x/.a"));
        assert!(!ends_in_dot(b"x/./y"));
        assert_eq!(without_dots(b"d/././/"), b"d");
        assert_eq!(without_dots(b"./d/."), b"./d");
        assert_eq!(without_dots(b"d/"), b"d");
    }
}
