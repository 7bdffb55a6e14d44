//! The tar stream, read header by header with every special header olboot understands folded
//! into the entry it describes: GNU long names and link names (`L`, `K`), PAX extended and
//! global headers (`x`, `g`: path, linkpath, size, uid, gid, mtime with nanoseconds, xattrs,
//! ACLs, the GNU sparse records of formats 0.0, 0.1 and 1.0) and old-GNU sparse members
//! (`S`, with extended sparse headers).
//!
//! Written here rather than taken from the `tar` crate because every special header must be
//! bounded ([`MAX_SPECIAL`]: a 1 GiB long name in a 33 KB archive must not become 1 GiB of
//! memory), and because PAX sparse members must be recognised instead of unpacked as their
//! packed bytes. Anything not understood is an error, never skipped.

use super::shown;
use anyhow::{bail, Context, Result};
use std::io::{self, BufRead, Read};

/// The largest special header (long name, PAX records, sparse map) accepted, as bsdtar and
/// Go's archive/tar do.
pub const MAX_SPECIAL: u64 = 1 << 20;

const BLOCK: usize = 512;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file (`0`, NUL, `7`; `S` with a sparse map).
    File,
    /// A directory (`5`, GNU `D`, or a V7 file entry whose name ends in `/`).
    Dir,
    /// A symlink (`2`).
    Symlink,
    /// A hard link to an earlier entry (`1`).
    HardLink,
    /// A device node or a FIFO (`3`, `4`, `6`).
    Special,
}

/// A time as seconds and nanoseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Time {
    /// Seconds, negative before 1970.
    pub sec: i64,
    /// Nanoseconds, always forward from `sec`.
    pub nsec: u32,
}

/// The data regions of a sparse file: `(offset, length)` in order, and its full size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sparse {
    /// `(offset, length)` of each data region.
    pub map: Vec<(u64, u64)>,
    /// The file's size, holes included.
    pub size: u64,
    /// Whether GNU tar ends the file where the map ends rather than at `size` (old GNU and
    /// 1.0 maps; 0.0 and 0.1 ones are extended to `size`).
    pub ends_with_map: bool,
}

/// One entry with its special headers applied.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The path as the archive has it (long name and PAX path applied).
    pub name: Vec<u8>,
    /// A link's target.
    pub link: Vec<u8>,
    /// What it is.
    pub kind: Kind,
    /// Numeric owner.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// Permission bits with setuid, setgid and sticky.
    pub mode: u32,
    /// Modification time (PAX `mtime` with its fraction, else the header's).
    pub mtime: Time,
    /// Bytes of data that follow in the archive (for a sparse file: its regions, packed).
    pub size: u64,
    pub sparse: Option<Sparse>,
    /// Extended attributes, in archive order (ACLs are in `acl_access`/`acl_default`).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// `SCHILY.acl.access`, as text.
    pub acl_access: Option<String>,
    /// `SCHILY.acl.default`, as text.
    pub acl_default: Option<String>,
}

/// Reads entries, and the data of the current one, from a tar stream.
pub struct Stream<R> {
    r: R,
    /// Data bytes of the current entry not read yet, then its padding.
    left: u64,
    pad: u64,
    /// PAX global records, applied to every later entry under its own records.
    global: Vec<(String, Vec<u8>)>,
}

impl<R: BufRead> Stream<R> {
    /// A stream over `r`.
    pub fn new(r: R) -> Stream<R> {
        Stream {
            r,
            left: 0,
            pad: 0,
            global: Vec::new(),
        }
    }

    /// The underlying reader (to drain what follows the end-of-archive blocks).
    pub fn into_inner(self) -> R {
        self.r
    }

    /// The next entry, or `None` at the end of the archive; unread data of the previous one
    /// is skipped.
    pub fn next_entry(&mut self) -> Result<Option<Entry>> {
        self.skip_rest()?;
        let mut long_name = None;
        let mut long_link = None;
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        loop {
            let Some(h) = self.header()? else {
                if long_name.is_some() || long_link.is_some() || !pax.is_empty() {
                    bail!("the archive ends after a special header, without its entry");
                }
                return Ok(None);
            };
            let size = number(&h[124..136]).with_context(|| {
                format!("archive entry {}: bad size field", shown(&header_name(&h)))
            })?;
            match h[156] {
                b'L' => long_name = Some(cstr(&self.special(size, "GNU long name")?).to_vec()),
                b'K' => long_link = Some(cstr(&self.special(size, "GNU long link")?).to_vec()),
                // Of several PAX headers in a row, GNU tar uses the last.
                b'x' => pax = records(&self.special(size, "PAX header")?)?,
                b'g' => {
                    for (k, v) in records(&self.special(size, "PAX global header")?)? {
                        // GNU tar would make every later entry sparse by them.
                        if k.starts_with("GNU.sparse.") {
                            bail!("a PAX global header with the sparse record {k} refused");
                        }
                        self.global.retain(|(g, _)| *g != k);
                        self.global.push((k, v));
                    }
                    if bytes(&self.global) > MAX_SPECIAL {
                        bail!("PAX global headers over {MAX_SPECIAL} bytes refused");
                    }
                }
                _ => {
                    // Errors name the entry (a long name is kept for that: they are rare).
                    let long = long_name.as_deref().map(shown);
                    let mut e = self
                        .entry(&h, size, long_name, long_link, &pax)
                        .with_context(|| {
                            let name = long.unwrap_or_else(|| shown(&header_name(&h)));
                            format!("archive entry {name}")
                        })?;
                    self.sparse_1_0(&mut e, &pax)
                        .with_context(|| format!("archive entry {}", shown(&e.name)))?;
                    return Ok(Some(e));
                }
            }
        }
    }

    /// Read one 512-byte header; `None` at the end (two zero blocks, one zero block then
    /// the end of the stream, or the end of the stream between entries).
    fn header(&mut self) -> Result<Option<[u8; BLOCK]>> {
        let mut h = [0u8; BLOCK];
        if !self.block(&mut h)? {
            return Ok(None);
        }
        if h.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        // GNU tar reads the checksum as octal only.
        let want = u64::try_from(from_header(&h[148..156], false).context("bad checksum field")?)
            .context("bad checksum field")?;
        // The checksum field itself counts as eight spaces; old tars summed signed bytes.
        let (all, all_signed) = byte_sums(&h);
        let field = &h[148..156];
        let unsigned = all - field.iter().map(|&b| u64::from(b)).sum::<u64>() + 8 * 32;
        let signed = all_signed - field.iter().map(|&b| i64::from(b as i8)).sum::<i64>() + 8 * 32;
        if want != unsigned && want as i64 != signed {
            bail!("a header with a bad checksum: this is not a tar archive, or it is damaged");
        }
        Ok(Some(h))
    }

    /// Fill `buf` with the next block; false at a clean end of the stream.
    fn block(&mut self, buf: &mut [u8; BLOCK]) -> Result<bool> {
        let mut got = 0;
        while got < BLOCK {
            match self.r.read(&mut buf[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => bail!("the archive ends in the middle of a header"),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("cannot read the tar stream"),
            }
        }
        Ok(true)
    }

    /// The content of a special header of `size` bytes, refused over [`MAX_SPECIAL`].
    fn special(&mut self, size: u64, what: &str) -> Result<Vec<u8>> {
        if size > MAX_SPECIAL {
            bail!("a {what} of {size} bytes refused (the limit is {MAX_SPECIAL})");
        }
        let mut v = vec![0; size as usize];
        self.r
            .read_exact(&mut v)
            .with_context(|| format!("the archive ends inside a {what}"))?;
        self.skip(padding(size))?;
        Ok(v)
    }

    fn skip_rest(&mut self) -> Result<()> {
        let n = self.left + self.pad;
        self.left = 0;
        self.pad = 0;
        self.skip(n)
    }

    fn skip(&mut self, n: u64) -> Result<()> {
        let got = io::copy(&mut (&mut self.r).take(n), &mut io::sink())
            .context("cannot read the tar stream")?;
        if got < n {
            bail!("the archive ends in the middle of an entry");
        }
        Ok(())
    }

    /// Build the entry of header `h` from its fields and the special headers before it.
    fn entry(
        &mut self,
        h: &[u8; BLOCK],
        size: u64,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
        pax: &[(String, Vec<u8>)],
    ) -> Result<Entry> {
        let mut e = Entry {
            name: long_name.unwrap_or_else(|| header_name(h)),
            link: long_link.unwrap_or_else(|| cstr(&h[157..257]).to_vec()),
            kind: kind(h[156], &h[..100])?,
            uid: id(&h[108..116]).context("bad uid field")?,
            gid: id(&h[116..124]).context("bad gid field")?,
            mode: (number(&h[100..108]).context("bad mode field")? & 0o7777) as u32,
            mtime: Time {
                sec: signed_number(&h[136..148]).context("bad mtime field")?,
                nsec: 0,
            },
            size: if matches!(h[156], b'1' | b'2' | b'5') {
                0
            } else {
                size
            },
            sparse: None,
            xattrs: Vec::new(),
            acl_access: None,
            acl_default: None,
        };
        if h[156] == b'S' {
            e.sparse = Some(self.old_gnu_sparse(h)?);
        }
        let all: Vec<&(String, Vec<u8>)> = self.global.iter().chain(pax).collect();
        for (k, v) in all {
            apply_record(&mut e, k, v).with_context(|| format!("PAX record {k}"))?;
        }
        sparse_0_x(&mut e, pax)?;
        let pax_sparse = pax.iter().any(|(k, _)| k.starts_with("GNU.sparse."));
        if pax_sparse || h[156] == b'S' {
            // GNU tar names a sparse file by GNU.sparse.name whatever comes after it, and
            // makes a file of it even if the name ends in '/'.
            if let Some((_, n)) = pax.iter().rev().find(|(k, _)| k == "GNU.sparse.name") {
                e.name = n.clone();
            }
            if e.name.last() == Some(&b'/') {
                bail!("a sparse file whose name ends in '/' refused");
            }
        } else if e.kind == Kind::File && e.name.last() == Some(&b'/') {
            e.kind = Kind::Dir; // a V7 directory: type 0, name ending in '/'
            e.size = 0;
        }
        self.left = e.size;
        self.pad = padding(e.size);
        Ok(e)
    }

    /// The sparse map of an old-GNU `S` header and its extension blocks.
    fn old_gnu_sparse(&mut self, h: &[u8; BLOCK]) -> Result<Sparse> {
        let mut map = Vec::new();
        sparse_slots(&h[386..482], &mut map)?;
        let mut extended = h[482] != 0;
        let mut blocks = 0u64;
        while extended {
            blocks += 1;
            if blocks * BLOCK as u64 > MAX_SPECIAL {
                bail!("an old-GNU sparse map over {MAX_SPECIAL} bytes refused");
            }
            let mut b = [0u8; BLOCK];
            if !self.block(&mut b)? {
                bail!("the archive ends inside an old-GNU sparse map");
            }
            sparse_slots(&b[..504], &mut map)?;
            extended = b[504] != 0;
        }
        let size = number(&h[483..495]).context("bad real size of a sparse file")?;
        Ok(Sparse {
            map,
            size,
            ends_with_map: true,
        })
    }

    /// GNU sparse 1.0: the map is at the start of the data, decimal lines, padded to a block.
    fn sparse_1_0(&mut self, e: &mut Entry, pax: &[(String, Vec<u8>)]) -> Result<()> {
        let major = pax.iter().rev().find(|(k, _)| k == "GNU.sparse.major");
        let Some((_, major)) = major else {
            return Ok(());
        };
        let minor = pax.iter().rev().find(|(k, _)| k == "GNU.sparse.minor");
        if major.as_slice() != b"1" || minor.map(|(_, v)| v.as_slice()) != Some(b"0") {
            bail!("GNU sparse format {} refused", shown(major));
        }
        let real = pax
            .iter()
            .rev()
            .find(|(k, _)| k == "GNU.sparse.realsize")
            .context("GNU sparse 1.0 without GNU.sparse.realsize")?;
        let size = decimal(&real.1).context("bad GNU.sparse.realsize")?;
        let mut nums: Vec<u64> = Vec::new();
        let mut line = Vec::new();
        let mut read = 0u64;
        // The count, then an offset and a length per region.
        while nums
            .first()
            .is_none_or(|&n| (nums.len() as u64) < 1 + 2 * n)
        {
            if self.left < BLOCK as u64 || read >= MAX_SPECIAL {
                bail!("a GNU sparse 1.0 map that is cut short or over {MAX_SPECIAL} bytes");
            }
            let mut b = [0u8; BLOCK];
            self.r
                .read_exact(&mut b)
                .context("the archive ends inside a GNU sparse 1.0 map")?;
            self.left -= BLOCK as u64;
            read += BLOCK as u64;
            for &c in &b {
                if c != b'\n' {
                    line.push(c);
                    continue;
                }
                nums.push(decimal(&line).context("bad GNU sparse 1.0 map")?);
                line.clear();
                if nums
                    .first()
                    .is_some_and(|&n| nums.len() as u64 == 1 + 2 * n)
                {
                    break;
                }
            }
        }
        let map = nums[1..].chunks(2).map(|p| (p[0], p[1])).collect();
        e.size = self.left;
        e.sparse = Some(Sparse {
            map,
            size,
            ends_with_map: true,
        });
        Ok(())
    }

    /// Read data of the current entry (0 at its end); the archive ending early is an error.
    pub fn read_data(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends in the middle of a file",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }

    /// The next bytes of the current entry's data, straight from the reader's buffer (none
    /// at its end; the archive ending early is an error); [`Stream::consume_data`] then says
    /// how many were used.
    pub fn data_buf(&mut self) -> io::Result<&[u8]> {
        if self.left == 0 {
            return Ok(&[]);
        }
        let buf = self.r.fill_buf()?;
        if buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends in the middle of a file",
            ));
        }
        Ok(&buf[..buf.len().min(self.left.min(usize::MAX as u64) as usize)])
    }

    /// Mark `n` bytes of what [`Stream::data_buf`] gave as used.
    pub fn consume_data(&mut self, n: usize) {
        self.r.consume(n);
        self.left -= n as u64;
    }
}

/// The size of some PAX records.
fn bytes(records: &[(String, Vec<u8>)]) -> u64 {
    records
        .iter()
        .map(|(k, v)| (k.len() + v.len()) as u64)
        .sum()
}

/// The entry type of type flag `t`; types olboot does not know are refused.
fn kind(t: u8, name: &[u8]) -> Result<Kind> {
    Ok(match t {
        b'0' | 0 | b'7' | b'S' => Kind::File,
        b'1' => Kind::HardLink,
        b'2' => Kind::Symlink,
        b'3' | b'4' | b'6' => Kind::Special,
        b'5' => Kind::Dir,
        // A GNU incremental dumpdir: after one, GNU tar holds back every directory's
        // metadata to the end of the archive; refused rather than unpacked otherwise.
        b'D' => bail!(
            "entry {}: a GNU incremental dumpdir (type D) is not supported",
            shown(name)
        ),
        t => bail!(
            "entry {}: unsupported entry type {:?}",
            shown(name),
            char::from(t)
        ),
    })
}

/// Apply one PAX record to `e`.
fn apply_record(e: &mut Entry, k: &str, v: &[u8]) -> Result<()> {
    match k {
        "path" => e.name = v.to_vec(),
        "linkpath" => e.link = v.to_vec(),
        "size" if !matches!(e.kind, Kind::Dir | Kind::Symlink | Kind::HardLink) => {
            e.size = decimal(v)?
        }
        "uid" => e.uid = u32::try_from(decimal(v)?).context("uid out of range")?,
        "gid" => e.gid = u32::try_from(decimal(v)?).context("gid out of range")?,
        "mtime" => e.mtime = pax_time(v)?,
        "SCHILY.acl.access" => e.acl_access = Some(text(v)?),
        "SCHILY.acl.default" => e.acl_default = Some(text(v)?),
        "GNU.dumpdir" => bail!("a GNU incremental dumpdir is not supported"),
        _ => {
            if let Some(name) = k.strip_prefix("SCHILY.xattr.") {
                e.xattrs.push((name.as_bytes().to_vec(), v.to_vec()));
            } else if let Some(name) = k.strip_prefix("LIBARCHIVE.xattr.") {
                let name = percent_decode(name)?;
                let value = base64(v)?;
                e.xattrs.push((name, value));
            }
            // Other records (atime, ctime, uname, gname, charset, comment, vendor records)
            // change nothing GNU tar -xp --numeric-owner restores.
        }
    }
    Ok(())
}

/// GNU sparse 0.0 (repeated offset/numbytes records) and 0.1 (`GNU.sparse.map`).
fn sparse_0_x(e: &mut Entry, pax: &[(String, Vec<u8>)]) -> Result<()> {
    let Some(size) = pax.iter().rev().find(|(k, _)| k == "GNU.sparse.size") else {
        // GNU tar takes a map without its size as sparse too (and gives it another size).
        let map = [
            "GNU.sparse.map",
            "GNU.sparse.offset",
            "GNU.sparse.numblocks",
        ];
        if pax.iter().any(|(k, _)| map.contains(&k.as_str())) {
            bail!("a GNU sparse map without GNU.sparse.size refused");
        }
        return Ok(());
    };
    if pax.iter().any(|(k, _)| k == "GNU.sparse.major") {
        return Ok(());
    }
    let size = decimal(&size.1).context("bad GNU.sparse.size")?;
    let mut map = Vec::new();
    if let Some((_, m)) = pax.iter().rev().find(|(k, _)| k == "GNU.sparse.map") {
        let nums: Vec<u64> = if m.is_empty() {
            Vec::new()
        } else {
            m.split(|&c| c == b',')
                .map(decimal)
                .collect::<Result<_>>()?
        };
        if nums.len() % 2 != 0 {
            bail!("GNU.sparse.map with an odd number of values");
        }
        map = nums.chunks(2).map(|p| (p[0], p[1])).collect();
    } else {
        let mut off = None;
        for (k, v) in pax {
            match (k.as_str(), off) {
                ("GNU.sparse.offset", None) => off = Some(decimal(v)?),
                ("GNU.sparse.numbytes", Some(o)) => {
                    map.push((o, decimal(v)?));
                    off = None;
                }
                ("GNU.sparse.offset" | "GNU.sparse.numbytes", _) => {
                    bail!("GNU sparse 0.0 records out of order")
                }
                _ => {}
            }
        }
    }
    if let Some((_, n)) = pax.iter().rev().find(|(k, _)| k == "GNU.sparse.numblocks") {
        if decimal(n)? != map.len() as u64 {
            bail!("GNU.sparse.numblocks does not match the map");
        }
    }
    e.sparse = Some(Sparse {
        map,
        size,
        ends_with_map: false,
    });
    Ok(())
}

/// The sparse slots of an old-GNU header area: 24-byte (offset, length) pairs, the first
/// empty one ending the list.
fn sparse_slots(area: &[u8], map: &mut Vec<(u64, u64)>) -> Result<()> {
    for slot in area.chunks_exact(24) {
        if slot[0] == 0 {
            break;
        }
        let off = number(&slot[..12]).context("bad sparse offset")?;
        let len = number(&slot[12..]).context("bad sparse length")?;
        map.push((off, len));
    }
    Ok(())
}

/// The PAX records of `data`: `LEN KEY=VALUE\n`, in order.
fn records(data: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        // "LEN KEY=VALUE\n" as GNU tar's decode_record reads it: LEN decimal digits counting
        // the whole record, then one or more spaces or tabs; the key ends at the first '='.
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let len: usize = std::str::from_utf8(&rest[..digits])
            .ok()
            .and_then(|s| s.parse().ok())
            .context("a PAX record without a length")?;
        let Some(record) = rest.get(..len).filter(|r| r.last() == Some(&b'\n')) else {
            bail!("a malformed PAX record");
        };
        let blanks = record[digits..]
            .iter()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
        if blanks == 0 {
            bail!("a PAX record without a blank after its length");
        }
        let kv = record
            .get(digits + blanks..len - 1)
            .context("a malformed PAX record")?;
        let eq = kv
            .iter()
            .position(|&b| b == b'=')
            .context("a PAX record without '='")?;
        let key = std::str::from_utf8(&kv[..eq]).context("a PAX key that is not UTF-8")?;
        // GNU tar reads the key as a C string: a NUL in it is not a key it knows.
        if key.is_empty() || key.contains('\0') {
            bail!("a PAX record with an empty key or a NUL in it");
        }
        out.push((key.to_string(), kv[eq + 1..].to_vec()));
        rest = &rest[len..];
    }
    Ok(out)
}

/// A PAX time: `[-]SECONDS[.FRACTION]`.
fn pax_time(v: &[u8]) -> Result<Time> {
    let s = std::str::from_utf8(v).context("not a number")?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        bail!("bad time {s:?}");
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        bail!("bad time {s:?}");
    }
    let sec: i64 = whole.parse().context("time out of range")?;
    let mut nsec = 0u32;
    for (i, d) in frac.bytes().take(9).enumerate() {
        nsec += u32::from(d - b'0') * 10u32.pow(8 - i as u32);
    }
    // GNU tar rounds a finer time down, toward the past: for a negative one that is away
    // from zero.
    let finer = frac.bytes().skip(9).any(|d| d != b'0');
    let (sec, nsec) = match (neg && finer, nsec + 1) {
        (true, 1_000_000_000) => (sec.checked_add(1).context("time out of range")?, 0),
        (true, up) => (sec, up),
        (false, _) => (sec, nsec),
    };
    Ok(if !neg {
        Time { sec, nsec }
    } else if nsec == 0 {
        Time { sec: -sec, nsec: 0 }
    } else {
        Time {
            sec: -sec - 1,
            nsec: 1_000_000_000 - nsec,
        }
    })
}

/// The name in header `h`: its name field, under its ustar prefix.
fn header_name(h: &[u8; BLOCK]) -> Vec<u8> {
    let name = cstr(&h[..100]);
    if &h[257..263] != b"ustar\0" || h[345] == 0 {
        return name.to_vec();
    }
    [cstr(&h[345..500]), b"/", name].concat()
}

/// The sum of a block's bytes, unsigned and as signed chars, eight bytes at a time: at the
/// binary's opt-level "z" a loop over bytes stays one add per byte, and every header is summed.
fn byte_sums(b: &[u8; BLOCK]) -> (u64, i64) {
    const LOW: u64 = 0x00ff_00ff_00ff_00ff;
    // Four 16-bit lanes of byte pairs: 64 words of at most 2 × 255 each fit in a lane.
    let (mut lanes, mut high) = (0u64, 0i64);
    for w in b.chunks_exact(8) {
        let w = u64::from_le_bytes(w.try_into().expect("chunks of 8"));
        lanes += (w & LOW) + ((w >> 8) & LOW);
        high += i64::from((w & 0x8080_8080_8080_8080).count_ones());
    }
    let unsigned = (0..4).map(|i| (lanes >> (16 * i)) & 0xffff).sum::<u64>();
    // A byte of 0x80 or more is 256 less as a signed char.
    (unsigned, unsigned as i64 - 256 * high)
}

/// A numeric header field: octal (space or NUL padded) or GNU base-256.
fn number(f: &[u8]) -> Result<u64> {
    let n = signed_number(f)?;
    u64::try_from(n).context("a negative number")
}

fn signed_number(f: &[u8]) -> Result<i64> {
    from_header(f, true)
}

/// A header field read as GNU tar's `from_header` reads it: one leading NUL skipped (old tars
/// wrote one when the field before overflowed), then blanks (an all-blank field is an error),
/// then octal digits or, if `base256`, GNU base-256 (a first byte of 0x80 or 0xff); after them
/// only a NUL or a blank may come. GNU tar's base-64 of 1999's test versions is refused.
fn from_header(f: &[u8], base256: bool) -> Result<i64> {
    let is_blank = |b: u8| b == b' ' || (b'\t'..=b'\r').contains(&b);
    let mut i = usize::from(f.first() == Some(&0));
    while f.get(i).is_some_and(|&b| is_blank(b)) {
        i += 1;
    }
    let Some(&first) = f.get(i) else {
        bail!("blanks where a number is expected");
    };
    let mut n: i64 = 0;
    if first.is_ascii_digit() && first <= b'7' {
        while let Some(&b) = f.get(i).filter(|&&b| (b'0'..=b'7').contains(&b)) {
            n = n
                .checked_mul(8)
                .and_then(|n| n.checked_add(i64::from(b - b'0')))
                .context("an octal number out of range")?;
            i += 1;
        }
    } else if base256 && (first == 0x80 || first == 0xff) && f.len() - i >= 2 {
        n = base_256(&f[i..])?;
        i = f.len();
    }
    if f.get(i).is_some_and(|&b| b != 0 && !is_blank(b)) {
        bail!("not a number: {}", shown(f));
    }
    Ok(n)
}

/// GNU base-256: big-endian two's complement of the field, its first byte's top bit only a
/// marker (0x80: positive, 0xff: negative).
fn base_256(f: &[u8]) -> Result<i64> {
    let neg = f[0] & 0x40 != 0;
    let mut n: i128 = if neg { -1 } else { 0 };
    n = (n << 6) | i128::from(f[0] & 0x3f) | if neg { !0x3f } else { 0 };
    for &b in &f[1..] {
        n = (n << 8) | i128::from(b);
        if n.abs() > i128::from(i64::MAX) {
            bail!("a base-256 number out of range");
        }
    }
    i64::try_from(n).context("a base-256 number out of range")
}

fn id(f: &[u8]) -> Result<u32> {
    u32::try_from(number(f)?).context("out of range")
}

fn decimal(v: &[u8]) -> Result<u64> {
    let s = std::str::from_utf8(v)
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
    s.and_then(|s| s.parse().ok())
        .with_context(|| format!("not a number: {}", shown(v)))
}

fn text(v: &[u8]) -> Result<String> {
    String::from_utf8(v.to_vec()).context("not UTF-8")
}

/// The bytes before the first NUL.
fn cstr(f: &[u8]) -> &[u8] {
    f.iter().position(|&b| b == 0).map_or(f, |n| &f[..n])
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// `%XX` escapes decoded (libarchive escapes xattr names that way).
fn percent_decode(s: &str) -> Result<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .context("a bad %-escape in an xattr name")?;
            let hex = std::str::from_utf8(hex).context("a bad %-escape in an xattr name")?;
            out.push(u8::from_str_radix(hex, 16).context("a bad %-escape in an xattr name")?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Standard base64, padding optional (libarchive writes xattr values without it).
fn base64(v: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(v.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for &c in v.iter().take_while(|&&c| c != b'=') {
        let d = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => bail!("an xattr value that is not base64"),
        };
        acc = (acc << 6) | u32::from(d);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_keep_nanoseconds_and_sign() {
        assert_eq!(
            pax_time(b"1.5").unwrap(),
            Time {
                sec: 1,
                nsec: 500_000_000
            }
        );
        assert_eq!(
            pax_time(b"-1.25").unwrap(),
            Time {
                sec: -2,
                nsec: 750_000_000
            }
        );
        assert_eq!(pax_time(b"-7").unwrap(), Time { sec: -7, nsec: 0 });
        assert_eq!(
            pax_time(b"1350244992.0236139939").unwrap(),
            Time {
                sec: 1350244992,
                nsec: 23_613_993
            }
        );
        assert!(pax_time(b"1e5").is_err());
        // Finer than a nanosecond: rounded toward the past, as GNU tar does.
        assert_eq!(
            pax_time(b"-1.0000000001").unwrap(),
            Time {
                sec: -2,
                nsec: 999_999_999
            }
        );
        assert_eq!(
            pax_time(b"-1.9999999999").unwrap(),
            Time { sec: -2, nsec: 0 }
        );
    }

    #[test]
    fn block_sums_as_bytes_add_up() {
        let mut b = [0u8; BLOCK];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for fill in [None, Some(0xff), Some(0x80), Some(0x7f)] {
            for v in b.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *v = fill.unwrap_or(x as u8);
            }
            let unsigned: u64 = b.iter().map(|&v| u64::from(v)).sum();
            let signed: i64 = b.iter().map(|&v| i64::from(v as i8)).sum();
            assert_eq!(byte_sums(&b), (unsigned, signed));
        }
    }

    #[test]
    fn numbers_in_octal_and_base_256() {
        assert_eq!(number(b"0000644 \0").unwrap(), 0o644);
        assert_eq!(number(b"\x80\0\0\0\0\0\0\0\0\0\x01\0").unwrap(), 256);
        assert_eq!(
            signed_number(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xfe").unwrap(),
            -2
        );
        assert!(number(b"12x").is_err());
        assert_eq!(number(b"  17 junk").unwrap(), 0o17);
        assert_eq!(number(b"\0\0\0").unwrap(), 0);
        assert_eq!(number(b"777777777777777777777").unwrap(), i64::MAX as u64);
        assert!(number(b"1000000000000000000000").is_err());
        assert!(number(b"+17").is_err());
        // As GNU tar: one leading NUL skipped, blanks only refused, base-256 only from
        // 0x80 or 0xff, and never for the checksum.
        assert_eq!(number(b"\x000000002000").unwrap(), 0o2000);
        assert_eq!(number(b"\0 \t755\0").unwrap(), 0o755);
        assert!(number(b"        ").is_err());
        assert_eq!(number(b"\0\0\x80\x01").unwrap(), 0);
        assert!(number(b"\x81\0\0\0\0\0\0\x01").is_err());
        assert_eq!(from_header(b"0000644\0", false).unwrap(), 0o644);
        assert!(from_header(b"\x80\0\0\0\0\0\x01\0", false).is_err());
    }

    #[test]
    fn base64_and_percent_escapes() {
        assert_eq!(base64(b"aGVsbG8").unwrap(), b"hello");
        assert_eq!(base64(b"aGVsbG8=").unwrap(), b"hello");
        assert_eq!(percent_decode("user.a%3Db").unwrap(), b"user.a=b");
    }

    #[test]
    fn pax_records_in_order() {
        let r = records(b"11 path=ab\n17 GNU.sparse.x=\n").unwrap();
        assert_eq!(r[0], ("path".into(), b"ab".to_vec()));
        assert_eq!(r[1], ("GNU.sparse.x".into(), Vec::new()));
        assert!(records(b"99 path=ab\n").is_err());
        // Blanks after the length are all skipped, as GNU tar does; a sign or no blank refused.
        assert_eq!(records(b"12 \tpath=ab\n").unwrap()[0].0, "path");
        assert!(records(b"+11 path=ab\n").is_err());
        assert!(records(b"10path=ab\n").is_err());
        assert!(records(b"15 pa\0th=ab\n").is_err());
        assert!(records(b"0 ").is_err());
    }
}
