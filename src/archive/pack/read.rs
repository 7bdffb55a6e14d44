//! Reading a file of a live tree so that its tar entry is consistent: a member's size is
//! written in its header before its data, so the file is read whole into a [`Spool`] first
//! (memory up to [`MEM_LIMIT`], an unlinked temporary file beside the archive beyond), and
//! only a read during which the file's size, mtime and ctime stayed the same, and that found
//! its end where the size said, is a consistent one. Holes are found with `SEEK_DATA` /
//! `SEEK_HOLE` (Linux 3.1) and only the data is read.

use super::summary::Scanner;
use anyhow::{Context, Result};
use rustix::fs::SeekFrom;
use rustix::io::Errno;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Content kept in memory before the spool moves to a temporary file.
const MEM_LIMIT: usize = 4 << 20;
/// Reads of a file before it is declared changing.
pub const TRIES: u32 = 4;

/// Where a file's data waits until its header can be written.
pub struct Spool {
    mem: Vec<u8>,
    file: Option<File>,
    in_file: u64,
    /// Where the temporary file is made: `ARCHIVE.olboot-spool`, unlinked once open.
    path: PathBuf,
}

impl Spool {
    /// A spool whose temporary file, when needed, is made beside `archive`.
    pub fn new(archive: &Path) -> Spool {
        let mut path = archive.as_os_str().to_os_string();
        path.push(".olboot-spool");
        Spool {
            mem: Vec::new(),
            file: None,
            in_file: 0,
            path: PathBuf::from(path),
        }
    }

    fn clear(&mut self) -> Result<()> {
        self.mem.clear();
        if let Some(f) = &mut self.file {
            f.set_len(0)
                .and_then(|()| f.rewind())
                .context("cannot reset the spool")?;
        }
        self.in_file = 0;
        Ok(())
    }

    fn write(&mut self, buf: &[u8]) -> Result<()> {
        if self.in_file == 0 && self.mem.len() + buf.len() <= MEM_LIMIT {
            self.mem.extend_from_slice(buf);
            return Ok(());
        }
        let f = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(self.create()?),
        };
        let what = || format!("cannot write {}", self.path.display());
        if !self.mem.is_empty() {
            f.write_all(&self.mem).with_context(what)?;
            self.in_file += self.mem.len() as u64;
            self.mem.clear();
        }
        f.write_all(buf).with_context(what)?;
        self.in_file += buf.len() as u64;
        Ok(())
    }

    /// Created afresh and unlinked at once: nothing is left behind, whatever happens.
    fn create(&self) -> Result<File> {
        let path = &self.path;
        let _ = std::fs::remove_file(path);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        std::fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?;
        Ok(f)
    }

    /// The spooled bytes.
    pub fn reader(&mut self) -> Result<Box<dyn Read + '_>> {
        match &mut self.file {
            Some(f) if self.in_file > 0 => {
                f.rewind().context("cannot rewind the spool")?;
                Ok(Box::new(f.take(self.in_file)))
            }
            _ => Ok(Box::new(&self.mem[..])),
        }
    }
}

/// One read of a file: where its data is (offset, length), its size, and whether the read
/// is consistent. The spool holds the data of the segments, one after the other.
#[derive(Debug)]
pub struct Got {
    /// (offset, length) of each stretch of data read, in order.
    pub segments: Vec<(u64, u64)>,
    /// The file's size as this read saw it (where it ended, if it ended early).
    pub size: u64,
    /// Size, mtime and ctime were the same before and after, and the end was where expected.
    pub consistent: bool,
    /// The metadata taken before the read (owner, mode, mtime of the entry).
    pub meta: std::fs::Metadata,
    /// Reads made.
    pub tries: u32,
}

impl Got {
    /// Whether the file has holes worth keeping.
    pub fn is_sparse(&self) -> bool {
        self.segments.iter().map(|s| s.1).sum::<u64>() < self.size
    }
}

/// Read `path` into `spool` until a read is consistent, at most [`TRIES`] times, feeding the
/// bytes to `scan`. `None`: the file is gone, or something else (a symlink, a FIFO, a
/// directory) took its name since it was listed. Opened with `O_NONBLOCK`, so that a FIFO
/// there cannot hang the pack.
pub fn read(
    path: &Path,
    spool: &mut Spool,
    scan: &mut Scanner,
    buf: &mut [u8],
) -> Result<Option<Got>> {
    let mut tries = 0;
    loop {
        tries += 1;
        let f = match OpenOptions::new()
            .read(true)
            .custom_flags(
                (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32,
            )
            .open(path)
        {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            // ELOOP: a symlink took its name.
            Err(e) if e.raw_os_error() == Some(Errno::LOOP.raw_os_error()) => return Ok(None),
            r => r.with_context(|| format!("cannot open {}", path.display()))?,
        };
        if !f.metadata().is_ok_and(|m| m.is_file()) {
            return Ok(None);
        }
        spool.clear()?;
        scan.reset();
        let got = read_once(&f, spool, scan, buf, tries)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if got.consistent || tries >= TRIES {
            return Ok(Some(got));
        }
        log::info!(
            "{} changed while being read; reading it again ({} of {TRIES})",
            path.display(),
            tries + 1
        );
        std::thread::sleep(Duration::from_millis(20 << tries));
    }
}

fn read_once(
    f: &File,
    spool: &mut Spool,
    scan: &mut Scanner,
    buf: &mut [u8],
    tries: u32,
) -> Result<Got> {
    let before = f.metadata()?;
    let size = before.len();
    let map = data_map(f, size, before.blocks())?;
    if map.len() != 1 || map.first().is_some_and(|s| s.0 != 0) {
        scan.binary();
    }
    let mut segments = Vec::with_capacity(map.len());
    let mut short = false;
    for (off, len) in map {
        let got = read_segment(f, off, len, spool, scan, buf)?;
        segments.push((off, got));
        if got < len {
            short = true;
            break;
        }
    }
    // Grown past the size it had when the read began?
    let grew = !short && f.read_at(&mut [0], size)? > 0;
    let after = f.metadata()?;
    let same = before.len() == after.len()
        && (before.mtime(), before.mtime_nsec()) == (after.mtime(), after.mtime_nsec())
        && (before.ctime(), before.ctime_nsec()) == (after.ctime(), after.ctime_nsec());
    let size = match segments.last() {
        Some(&(off, len)) if short => off + len,
        _ => size,
    };
    Ok(Got {
        segments,
        size,
        consistent: same && !short && !grew,
        meta: before,
        tries,
    })
}

/// Read `len` bytes at `off` into the spool; fewer when the file ends first.
fn read_segment(
    f: &File,
    off: u64,
    len: u64,
    spool: &mut Spool,
    scan: &mut Scanner,
    buf: &mut [u8],
) -> Result<u64> {
    let mut done = 0;
    while done < len {
        let want = buf.len().min((len - done) as usize);
        let n = match f.read_at(&mut buf[..want], off + done) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => r?,
        };
        if n == 0 {
            break;
        }
        spool.write(&buf[..n])?;
        scan.feed(&buf[..n]);
        done += n as u64;
    }
    Ok(done)
}

/// The data segments of a file of `size` bytes with `blocks` 512-byte blocks allocated: the
/// whole file unless fewer blocks are allocated than its size needs, then what `SEEK_DATA`
/// and `SEEK_HOLE` say (a filesystem without them reports one segment).
fn data_map(f: &File, size: u64, blocks: u64) -> Result<Vec<(u64, u64)>> {
    if size == 0 {
        return Ok(Vec::new());
    }
    if blocks.saturating_mul(512) >= size {
        return Ok(vec![(0, size)]);
    }
    let mut map = Vec::new();
    let mut pos = 0;
    while pos < size {
        let data = match rustix::fs::seek(f, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(Errno::NXIO) => break,
            Err(Errno::INVAL | Errno::NOTSUP) if map.is_empty() => return Ok(vec![(0, size)]),
            Err(e) => return Err(e).context("SEEK_DATA"),
        };
        if data >= size {
            break;
        }
        let hole = match rustix::fs::seek(f, SeekFrom::Hole(data)) {
            Ok(h) => h.min(size),
            Err(Errno::NXIO) => size,
            Err(e) => return Err(e).context("SEEK_HOLE"),
        };
        map.push((data, hole - data));
        pos = hole;
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::pack::summary::Needles;

    #[test]
    fn a_fifo_or_symlink_at_a_files_name_is_not_read() {
        let d = tempfile::tempdir().unwrap();
        let (needles, mut buf) = (Needles::default(), vec![0; 4096]);
        let mut scan = Scanner::new(&needles, 0);
        let mut spool = Spool::new(&d.path().join("a.tar.zst"));
        let fifo = d.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        // Would block forever without O_NONBLOCK: no writer.
        assert!(read(&fifo, &mut spool, &mut scan, &mut buf)
            .unwrap()
            .is_none());
        let link = d.path().join("link");
        std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();
        assert!(read(&link, &mut spool, &mut scan, &mut buf)
            .unwrap()
            .is_none());
        assert!(
            read(&d.path().join("gone"), &mut spool, &mut scan, &mut buf)
                .unwrap()
                .is_none()
        );
        // A file big enough to go to the spool file, read back whole.
        let big = d.path().join("big");
        let data: Vec<u8> = (0..(MEM_LIMIT + 5000)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&big, &data).unwrap();
        let got = read(&big, &mut spool, &mut scan, &mut buf)
            .unwrap()
            .unwrap();
        assert!(got.consistent && !got.is_sparse() && got.size == data.len() as u64);
        let mut back = Vec::new();
        spool.reader().unwrap().read_to_end(&mut back).unwrap();
        assert!(back == data);
        // Nothing left beside the archive: the spool file was unlinked at once.
        let mut names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["big", "fifo", "link"]);
    }
}
