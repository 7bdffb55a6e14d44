//! `olboot pack DIR -o FILE.tar.zst`: archive a legacy `/opt` for the archive store.
//!
//! The tar has entries in byte order of their names, numeric owners only (no user or group
//! names, which would be looked up differently on the new VM), modes, whole-second mtimes,
//! symlinks as they are and hard links as links to the first name seen; the root directory
//! is the entry `./`. The same tree therefore gives the same bytes, and zstd's multi-threaded
//! mode is deterministic whatever the number of workers. Sockets, FIFOs and device nodes
//! are skipped with a warning (nothing in `/opt` needs them, and the opt step refuses them).

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use tar::{EntryType, Header};

/// zstd level: fast to make, and decompression speed hardly depends on it.
const LEVEL: i32 = 3;

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

/// Archive `dir` into `out`, age-encrypted to `to` unless it is empty, print its sha256 (of
/// the bytes written: the ciphertext when encrypted) on stdout and write `out.sha256`.
pub fn pack(dir: &Path, out: &Path, to: &super::crypt::Recipients) -> Result<()> {
    let meta = fs::metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    anyhow::ensure!(meta.is_dir(), "{}: not a directory", dir.display());
    let file = File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let hashing = HashingWriter {
        inner: BufWriter::with_capacity(1024 * 1024, file),
        hasher: Sha256::new(),
    };
    let mut enc = zstd::stream::write::Encoder::new(Output::new(hashing, to)?, LEVEL)?;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    enc.multithread(workers.max(1))
        .context("zstd multi-threading")?;
    enc.include_checksum(true)?;
    let mut p = Packer {
        tar: tar::Builder::new(enc),
        links: HashMap::new(),
        entries: 0,
        bytes: 0,
    };
    p.tar.follow_symlinks(false);
    p.add(dir, Path::new("./"), &meta)?;
    p.walk(dir, Path::new(""))?;
    let (entries, bytes) = (p.entries, p.bytes);
    let enc = p.tar.into_inner().context("cannot finish the tar")?;
    let mut hashing = enc
        .finish()
        .context("cannot finish the zstd stream")?
        .finish()
        .with_context(|| format!("cannot write {}", out.display()))?;
    hashing.flush()?;
    let file = hashing
        .inner
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("cannot write {}", out.display()))?;
    file.sync_all()
        .with_context(|| format!("cannot sync {}", out.display()))?;
    let hex: String = hashing
        .hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let name = out.file_name().unwrap_or_default().to_string_lossy();
    let mut sums = std::path::absolute(out)
        .with_context(|| format!("{}: no absolute path", out.display()))?
        .into_os_string();
    sums.push(".sha256");
    let sums = PathBuf::from(sums);
    crate::sys::fs::write_atomic(&sums, format!("{hex}  {name}\n").as_bytes(), 0o644)?;
    let size = fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    log::info!(
        "packed {} ({entries} entries, {} of content) into {} ({}); sha256 in {}",
        dir.display(),
        super::fetch::mib(bytes),
        out.display(),
        super::fetch::mib(size),
        sums.display()
    );
    println!("{hex}");
    Ok(())
}

/// Where the zstd stream goes: the file, or an age encryption in front of it.
enum Output<W: Write> {
    Plain(W),
    Age(super::crypt::Encrypting<W>),
}

impl<W: Write> Output<W> {
    fn new(inner: W, to: &super::crypt::Recipients) -> Result<Output<W>> {
        Ok(if to.is_empty() {
            Output::Plain(inner)
        } else {
            Output::Age(to.encrypt(inner)?)
        })
    }

    /// End the stream (age's last chunk) and give back the writer inside.
    fn finish(self) -> io::Result<W> {
        match self {
            Output::Plain(w) => Ok(w),
            Output::Age(w) => w.finish(),
        }
    }
}

impl<W: Write> Write for Output<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Output::Plain(w) => w.write(buf),
            Output::Age(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Output::Plain(w) => w.flush(),
            Output::Age(w) => w.flush(),
        }
    }
}

struct Packer<W: Write> {
    tar: tar::Builder<W>,
    /// (device, inode) of files with more than one link → the first name archived.
    links: HashMap<(u64, u64), PathBuf>,
    entries: u64,
    bytes: u64,
}

impl<W: Write> Packer<W> {
    /// Archive the children of `dir` (archive name `rel`), sorted by name, depth first.
    fn walk(&mut self, dir: &Path, rel: &Path) -> Result<()> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()
            .with_context(|| format!("cannot list {}", dir.display()))?;
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let rel = rel.join(&name);
            let meta = fs::symlink_metadata(&path)
                .with_context(|| format!("cannot stat {}", path.display()))?;
            self.add(&path, &rel, &meta)?;
            if meta.is_dir() {
                self.walk(&path, &rel)?;
            }
        }
        Ok(())
    }

    fn add(&mut self, path: &Path, rel: &Path, meta: &fs::Metadata) -> Result<()> {
        let ft = meta.file_type();
        let mut h = Header::new_gnu();
        h.set_uid(meta.uid().into());
        h.set_gid(meta.gid().into());
        h.set_mode(meta.mode() & 0o7777);
        h.set_mtime(meta.mtime().max(0) as u64);
        h.set_size(0);
        let what = || format!("cannot archive {}", path.display());
        if ft.is_dir() {
            h.set_entry_type(EntryType::Directory);
            self.tar
                .append_data(&mut h, rel, io::empty())
                .with_context(what)?;
        } else if ft.is_symlink() {
            let target =
                fs::read_link(path).with_context(|| format!("cannot read {}", path.display()))?;
            h.set_entry_type(EntryType::Symlink);
            self.tar
                .append_link(&mut h, rel, &target)
                .with_context(what)?;
        } else if ft.is_file() {
            if meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = self.links.get(&key) {
                    h.set_entry_type(EntryType::Link);
                    self.tar
                        .append_link(&mut h, rel, first)
                        .with_context(what)?;
                    self.entries += 1;
                    return Ok(());
                }
                self.links.insert(key, rel.to_path_buf());
            }
            let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            h.set_entry_type(EntryType::Regular);
            h.set_size(meta.len());
            // A file that changes size while being read would corrupt the archive: the tar
            // crate fails on a short read, and reading stops at the recorded size.
            self.tar
                .append_data(&mut h, rel, io::Read::take(f, meta.len()))
                .with_context(what)?;
            self.bytes += meta.len();
        } else {
            let kind = if ft.is_socket() {
                "socket"
            } else if ft.is_fifo() {
                "FIFO"
            } else {
                "device node"
            };
            log::warn!("skipping {} (a {kind})", path.display());
            return Ok(());
        }
        self.entries += 1;
        Ok(())
    }
}
