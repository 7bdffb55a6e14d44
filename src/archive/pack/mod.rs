//! `olboot pack DIR -o FILE.tar.zst`: archive a live legacy `/opt` for the archive store.
//!
//! The tar is what GNU tar's `--format=pax --acls --xattrs --sparse --numeric-owner` would
//! make, in a stable order: entries sorted by the bytes of their names, depth first, the
//! root as `./`; numeric owners only (no user or group names, which would be looked up
//! differently on the new VM); modes; nanosecond and negative mtimes, long names and link
//! targets, extended attributes, ACLs and file capabilities in PAX records ([`pax`]); files
//! with holes as PAX 1.0 sparse members; symlinks as they are and hard links as links to the
//! first name archived. The same tree gives the same bytes. The zstd stream is a sequence of
//! frames of 1 MiB of tar each, which the opt step decodes in place ([`super::frames`]).
//!
//! The tree is live, so every file is read whole before its header is written, and read
//! again when it changed meanwhile ([`read`]); a file that keeps changing fails the pack
//! naming it, or with `--allow-changing` is stored as its last read saw it (a well-formed
//! entry) and listed as a warning. A file, symlink or directory that vanishes before it is
//! read is skipped with a warning: on a live system that is a temporary file or a rotated
//! log, and failing the whole pack for it would help no one. Sockets, FIFOs and device
//! nodes are skipped with a reason (the opt step refuses FIFOs and devices, and a socket is
//! made anew by the server that listens on it); so is anything `--exclude` matches
//! ([`exclude`]).
//!
//! The archive is written under a temporary name beside FILE and renamed into place only
//! when complete, so a failed pack leaves no archive, no `.sha256` and prints no sha256.
//! Memory stays bounded: one file's data in memory up to 4 MiB, beyond that in an unlinked
//! temporary file beside FILE (so up to the size of the largest file of free space there).
//!
//! System calls are those of Linux 3.13 (the legacy hosts run 3.13 to 4.4): `SEEK_DATA`,
//! `*xattr`, `pread`; what the standard library calls beyond that (`statx`, `getrandom`)
//! falls back by itself on `ENOSYS`.

pub mod exclude;
mod pax;
mod read;
pub mod summary;

use super::frames::FrameWriter;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use summary::{Scanner, Summary};
use tar::EntryType;

/// zstd level: fast to make, and decompression speed hardly depends on it.
const LEVEL: i32 = 3;

/// What `olboot pack` is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// The tree to archive.
    pub dir: PathBuf,
    /// The archive to write.
    pub output: PathBuf,
    /// `--exclude` patterns (checked when the command line is parsed).
    pub excludes: Vec<String>,
    /// Store a file that keeps changing as last read, with a warning, instead of failing.
    pub allow_changing: bool,
    /// Print the summary as JSON on stdout instead of the sha256 alone.
    pub json: bool,
    /// age recipients to encrypt to (`--recipient`, `--recipients-file`); none: in the clear.
    pub recipients: super::crypt::Recipients,
}

/// A writer that hashes what goes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Archive `o.dir` into `o.output`, write `o.output.sha256`, print the summary on stderr and
/// the sha256 (or, with `json`, the summary) on stdout.
pub fn pack(o: &Options) -> Result<()> {
    let patterns = o
        .excludes
        .iter()
        .map(|p| exclude::Pattern::new(p).map_err(anyhow::Error::msg))
        .collect::<Result<Vec<_>>>()?;
    let meta = fs::metadata(&o.dir).with_context(|| format!("cannot read {}", o.dir.display()))?;
    anyhow::ensure!(meta.is_dir(), "{}: not a directory", o.dir.display());
    // `/opt` may be a symlink to `/1/opt`: the tree is read at its real path, whose root entry
    // carries the directory's own attributes, not the symlink's.
    let real =
        fs::canonicalize(&o.dir).with_context(|| format!("cannot resolve {}", o.dir.display()))?;
    let out = std::path::absolute(&o.output)
        .with_context(|| format!("{}: no absolute path", o.output.display()))?;
    let (parent, name) = match (out.parent(), out.file_name()) {
        (Some(p), Some(n)) => (p.to_path_buf(), n.to_string_lossy().into_owned()),
        _ => bail!("{}: not a file name", o.output.display()),
    };
    let tmp = parent.join(format!(".{name}.olboot-tmp"));
    let mut summary = match write_tmp(o, &real, &patterns, &meta, &tmp) {
        Ok(s) => s,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    fs::rename(&tmp, &out)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), out.display()))?;
    File::open(&parent)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", parent.display()))?;
    let mut sums = out.clone().into_os_string();
    sums.push(".sha256");
    let line = format!("{}  {name}\n", summary.sha256);
    crate::sys::fs::write_atomic(Path::new(&sums), line.as_bytes(), 0o644)?;
    summary.archive = out.display().to_string();
    summary.print(&o.dir.display().to_string());
    if o.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!("{}", summary.sha256);
    }
    Ok(())
}

/// Write the whole archive to `tmp` and sync it; the summary carries its sha256 and size.
fn write_tmp(
    o: &Options,
    real: &Path,
    patterns: &[exclude::Pattern],
    root: &fs::Metadata,
    tmp: &Path,
) -> Result<Summary> {
    let _ = fs::remove_file(tmp);
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    let own = file.metadata().map(|m| (m.dev(), m.ino()))?;
    let hashing = HashingWriter {
        inner: BufWriter::with_capacity(1024 * 1024, file),
        hasher: Sha256::new(),
    };
    // Encrypted (when there are recipients) before the hash: the sha256 is of the ciphertext.
    let output = super::crypt::Output::new(hashing, &o.recipients)?;
    // In frames of one pipe buffer each, which the opt step decodes in place (frames.rs).
    // At most 4 threads: already faster than a disk reads, and memory stays small on a big host.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let enc = FrameWriter::new(output, LEVEL, threads)?;
    let (tops, roots) = tops_and_roots(&o.dir, real)?;
    let (summary, needles) = Summary::new(&tops, &roots);
    let mut p = Packer {
        tar: tar::Builder::new(enc),
        patterns,
        allow_changing: o.allow_changing,
        own,
        links: HashMap::new(),
        spool: read::Spool::new(tmp),
        scan: Scanner::new(&needles, tops.len()),
        buf: vec![0; 256 * 1024],
        summary,
    };
    p.walk(real, b"", None, (root.dev(), root.ino()))?;
    // The top directory last: GNU tar leaves `./` (sets its mtime) when an entry comes whose
    // name does not start with `./`, and creating that entry would change the mtime again.
    p.add(real, b"./", root, ".")?;
    let mut summary = std::mem::take(&mut p.summary);
    let what = || format!("cannot write {}", tmp.display());
    let enc = p.tar.into_inner().with_context(what)?;
    let mut hashing = enc
        .finish()
        .with_context(what)?
        .finish()
        .with_context(what)?;
    hashing.flush().with_context(what)?;
    let file = hashing
        .inner
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(what)?;
    file.sync_all()
        .with_context(|| format!("cannot sync {}", tmp.display()))?;
    summary.archive_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    summary.sha256 = hashing
        .hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(summary)
}

/// The top-level directories of `dir`, and the prefixes a reference to them may start with:
/// `/opt`, `dir` made absolute and its real path `real`.
fn tops_and_roots(dir: &Path, real: &Path) -> Result<(Vec<String>, Vec<String>)> {
    let mut tops = Vec::new();
    for e in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let e = e.with_context(|| format!("cannot list {}", dir.display()))?;
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            tops.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    tops.sort();
    let mut roots = vec!["/opt".to_string()];
    let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    for r in [abs.as_path(), real] {
        let r = r.display().to_string();
        let r = r.trim_end_matches('/');
        if !r.is_empty() && !roots.iter().any(|x| x == r) {
            roots.push(r.to_string());
        }
    }
    Ok((tops, roots))
}

struct Packer<'a, W: Write> {
    tar: tar::Builder<W>,
    patterns: &'a [exclude::Pattern],
    allow_changing: bool,
    /// (device, inode) of the archive being written, in case it lies inside the tree.
    own: (u64, u64),
    /// (device, inode) of files with more than one link → the first name archived.
    links: HashMap<(u64, u64), Vec<u8>>,
    spool: read::Spool,
    scan: Scanner<'a>,
    buf: Vec<u8>,
    summary: Summary,
}

/// A name for messages.
fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl<W: Write> Packer<'_, W> {
    /// Archive the children of `dir` (archive name `rel`, `top` its top-level name), sorted
    /// by name, depth first.
    fn walk(&mut self, dir: &Path, rel: &[u8], top: Option<&str>, id: (u64, u64)) -> Result<()> {
        let names = list(dir, id, top.is_none())
            .with_context(|| format!("cannot list {}", dir.display()))?;
        let Some(names) = names else {
            self.summary.warn(format!(
                "{}: vanished or replaced while being packed; its contents are not archived",
                dir.display()
            ));
            return Ok(());
        };
        for name in names {
            let path = dir.join(&name);
            let mut child = rel.to_vec();
            if !child.is_empty() {
                child.push(b'/');
            }
            child.extend_from_slice(name.as_bytes());
            let meta = match fs::symlink_metadata(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.vanished(&path);
                    continue;
                }
                r => r.with_context(|| format!("cannot stat {}", path.display()))?,
            };
            let child_top = top.map_or_else(|| name.to_string_lossy().into_owned(), str::to_string);
            let top_key = if top.is_none() && !meta.is_dir() {
                "."
            } else {
                &child_top
            };
            if let Some(p) = exclude::excluded(self.patterns, &child, meta.is_dir()) {
                let why = format!("excluded by {}", p.text());
                self.summary.skip(show(&child), why);
                continue;
            }
            if self.add(&path, &child, &meta, top_key)? && meta.is_dir() {
                self.walk(&path, &child, Some(&child_top), (meta.dev(), meta.ino()))?;
            }
        }
        Ok(())
    }

    fn vanished(&mut self, path: &Path) {
        self.summary.warn(format!(
            "{}: vanished (or was replaced) while being packed; not archived",
            path.display()
        ));
    }

    /// Archive one entry; `false` when it was skipped.
    fn add(&mut self, path: &Path, rel: &[u8], meta: &fs::Metadata, top: &str) -> Result<bool> {
        let ft = meta.file_type();
        if (meta.dev(), meta.ino()) == self.own {
            let why = "the archive being written".to_string();
            self.summary.skip(show(rel), why);
            return Ok(false);
        }
        let reason = if ft.is_socket() {
            "a socket (made anew by the server that listens on it)"
        } else if ft.is_fifo() {
            "a FIFO (the opt step does not create FIFOs)"
        } else if ft.is_block_device() || ft.is_char_device() {
            "a device node (the opt step does not create device nodes)"
        } else {
            ""
        };
        if !reason.is_empty() {
            self.summary.skip(show(rel), reason.to_string());
            return Ok(false);
        }
        let mut rec = pax::Records::default();
        let warnings = match pax::xattrs(path, &mut rec) {
            Err(e) if is_not_found(&e) => {
                self.vanished(path);
                return Ok(false);
            }
            r => r?,
        };
        for w in warnings {
            self.summary.warn(w);
        }
        let done = if ft.is_dir() {
            self.no_data(path, rel, EntryType::Directory, meta, rec, None)?;
            true
        } else if ft.is_symlink() {
            self.symlink(path, rel, meta, rec, top)?
        } else {
            self.file(path, rel, meta, rec, top)?
        };
        if done && !ft.is_file() {
            self.summary.entry(top, 0);
        }
        Ok(done)
    }

    fn symlink(
        &mut self,
        path: &Path,
        rel: &[u8],
        meta: &fs::Metadata,
        rec: pax::Records,
        top: &str,
    ) -> Result<bool> {
        let target = match fs::read_link(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.vanished(path);
                return Ok(false);
            }
            r => r.with_context(|| format!("cannot read {}", path.display()))?,
        };
        let target = target.as_os_str().as_bytes();
        self.scan.reset();
        self.scan.feed(target);
        self.summary.references(&show(rel), top, &mut self.scan);
        self.no_data(path, rel, EntryType::Symlink, meta, rec, Some(target))?;
        Ok(true)
    }

    /// A regular file: a hard link to a name already archived, or its content, read until
    /// consistent.
    fn file(
        &mut self,
        path: &Path,
        rel: &[u8],
        meta: &fs::Metadata,
        mut rec: pax::Records,
        top: &str,
    ) -> Result<bool> {
        let key = (meta.dev(), meta.ino());
        if meta.nlink() > 1 {
            if let Some(first) = self.links.get(&key).cloned() {
                self.no_data(path, rel, EntryType::Link, meta, rec, Some(&first))?;
                self.summary.entry(top, 0);
                return Ok(true);
            }
        }
        let Some(got) = read::read(path, &mut self.spool, &mut self.scan, &mut self.buf)? else {
            self.vanished(path);
            return Ok(false);
        };
        if !got.consistent {
            if !self.allow_changing {
                bail!(
                    "{}: changed while being read, {} times in a row (size, mtime or ctime); \
                     stop what writes it, --exclude it, or pass --allow-changing to store \
                     the last read",
                    path.display(),
                    got.tries
                );
            }
            self.summary.warn(format!(
                "{}: kept changing while being read; stored as the last of {} reads saw it \
                 ({} bytes)",
                path.display(),
                got.tries,
                got.size
            ));
        }
        self.summary.references(&show(rel), top, &mut self.scan);
        let (name, size, map) = if got.is_sparse() {
            pax::sparse(rel, &got.segments, got.size, &mut rec)
        } else {
            (rel.to_vec(), got.size, Vec::new())
        };
        // The metadata of the consistent read, not the listing's: the file may have changed.
        let h = pax::header(
            &name,
            EntryType::Regular,
            &meta_of(&got.meta),
            size,
            &mut rec,
        );
        let data = io::Read::chain(&map[..], self.spool.reader()?);
        put(&mut self.tar, path, &name, h, &rec, data)?;
        if got.meta.nlink() > 1 {
            self.links.insert(key, rel.to_vec());
        }
        self.summary.entry(top, got.size);
        Ok(true)
    }

    /// An entry without data: a directory, symlink or hard link.
    fn no_data(
        &mut self,
        path: &Path,
        rel: &[u8],
        kind: EntryType,
        meta: &fs::Metadata,
        mut rec: pax::Records,
        link: Option<&[u8]>,
    ) -> Result<()> {
        let mut h = pax::header(rel, kind, &meta_of(meta), 0, &mut rec);
        if let Some(l) = link {
            pax::set_link(&mut h, l, &mut rec);
        }
        put(&mut self.tar, path, rel, h, &rec, io::empty())
    }
}

/// Write the `x` entry of `rec` (when it has records), then `h` and its `data` (exactly the
/// size `h` says: the spool holds a consistent read).
fn put<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &Path,
    name: &[u8],
    mut h: tar::Header,
    rec: &pax::Records,
    data: impl io::Read,
) -> Result<()> {
    let what = || format!("cannot archive {}", path.display());
    h.set_cksum();
    if !rec.is_empty() {
        tar.append(&rec.header(name), rec.bytes())
            .with_context(what)?;
    }
    tar.append(&h, data).with_context(what)
}

/// The names in directory `dir`, sorted; `None` when it is gone or no longer the directory
/// whose entry was archived (`id`: device and inode), e.g. swapped for a symlink, whose target
/// must not be archived in its place. Only the root (`follow`) may be reached through one.
fn list(dir: &Path, id: (u64, u64), follow: bool) -> io::Result<Option<Vec<OsString>>> {
    use rustix::fs::{Mode, OFlags};
    use rustix::io::Errno;
    let mut flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    if !follow {
        flags |= OFlags::NOFOLLOW;
    }
    let fd = match rustix::fs::open(dir, flags, Mode::empty()) {
        Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => return Ok(None),
        r => r?,
    };
    let st = rustix::fs::fstat(&fd)?;
    if (st.st_dev, st.st_ino) != id {
        return Ok(None);
    }
    let mut names = Vec::new();
    for e in rustix::fs::Dir::new(fd)? {
        let e = e?;
        let name = e.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    names.sort();
    Ok(Some(names))
}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<rustix::io::Errno>() == Some(&rustix::io::Errno::NOENT)
            || c.downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::NotFound)
    })
}

fn meta_of(m: &fs::Metadata) -> pax::Meta {
    pax::Meta {
        uid: m.uid(),
        gid: m.gid(),
        mode: m.mode(),
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec() as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_swapped_for_a_symlink_is_not_listed() {
        let d = tempfile::tempdir().unwrap();
        let (dir, elsewhere) = (d.path().join("dir"), d.path().join("elsewhere"));
        fs::create_dir(&dir).unwrap();
        fs::create_dir(&elsewhere).unwrap();
        fs::write(dir.join("b"), "").unwrap();
        fs::write(dir.join("a"), "").unwrap();
        fs::write(elsewhere.join("secret"), "").unwrap();
        let id = |p: &Path| fs::metadata(p).map(|m| (m.dev(), m.ino())).unwrap();
        let names = list(&dir, id(&dir), false).unwrap().unwrap();
        assert_eq!(names, ["a", "b"]);
        let was = id(&dir);
        fs::rename(&dir, d.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &dir).unwrap();
        assert_eq!(list(&dir, was, false).unwrap(), None);
        // Another directory at the same name is not the one archived either.
        fs::remove_file(&dir).unwrap();
        fs::create_dir(&dir).unwrap();
        assert_eq!(list(&dir, was, false).unwrap(), None);
        fs::remove_dir(&dir).unwrap();
        assert_eq!(list(&dir, was, false).unwrap(), None);
    }
}
