//! The tar stream, read header by header with every special header olboot understands folded
//! into the entry it describes: GNU long names and link names (`L`, `K`), PAX extended and
//! global headers (`x`, `g`: path, linkpath, size, uid, gid, mtime with nanoseconds, xattrs,
//! ACLs, the GNU sparse records of formats 0.0, 0.1 and 1.0; each global header replacing the
//! one before, as with GNU tar) and old-GNU sparse members (`S`, with extended sparse headers).
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
    /// Whether GNU tar ends the file where the map ends rather than at `size`: it does for
    /// every format (its last region is written, or an empty one truncates the file there).
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
    /// The records of the last PAX global header that olboot applies (see [`globals`]), applied
    /// to every later entry under its own records.
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
        // A malformed PAX header fails with the entry it describes, named once it comes.
        let mut pax: Result<Vec<(String, Vec<u8>)>> = Ok(Vec::new());
        loop {
            let Some(h) = self.header()? else {
                let pending = pax.as_ref().map_or(true, |p| !p.is_empty());
                if long_name.is_some() || long_link.is_some() || pending {
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
                b'x' => pax = records(&self.special(size, "PAX header")?),
                b'g' => {
                    let data = self.special(size, "PAX global header")?;
                    // Each global header replaces the records of the one before.
                    self.global = globals(&data).with_context(|| {
                        format!(
                            "archive entry {}: a PAX global header",
                            shown(&header_name(&h))
                        )
                    })?;
                }
                _ => {
                    // Errors name the entry (a long name is kept for that: they are rare).
                    let long = long_name.as_deref().map(shown);
                    let name = || {
                        let name = long.clone().unwrap_or_else(|| shown(&header_name(&h)));
                        format!("archive entry {name}")
                    };
                    let pax = pax.with_context(name)?;
                    let mut e = self
                        .entry(&h, size, long_name, long_link, &pax)
                        .with_context(name)?;
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
        let pax_sparse = pax.iter().any(|(k, _)| k.starts_with("GNU.sparse."));
        sparse_where_gnu_tar_reads_it(h, e.kind, pax_sparse)?;
        if h[156] == b'S' {
            e.sparse = Some(self.old_gnu_sparse(h)?);
        }
        let all: Vec<&(String, Vec<u8>)> = self.global.iter().chain(pax).collect();
        for (k, v) in all {
            apply_record(&mut e, k, v).with_context(|| format!("PAX record {k}"))?;
        }
        sparse_0_x(&mut e, pax)?;
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
        let mut open = sparse_slots(&h[386..482], &mut map)?;
        let mut extended = h[482] != 0;
        let mut blocks = 0u64;
        while extended {
            // GNU tar reads no extension block once a slot has ended the map: it reads them
            // as the file's data.
            if !open {
                bail!("an old-GNU sparse map that ends before its extension blocks refused");
            }
            blocks += 1;
            if blocks * BLOCK as u64 > MAX_SPECIAL {
                bail!("an old-GNU sparse map over {MAX_SPECIAL} bytes refused");
            }
            let mut b = [0u8; BLOCK];
            if !self.block(&mut b)? {
                bail!("the archive ends inside an old-GNU sparse map");
            }
            open = sparse_slots(&b[..504], &mut map)?;
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
            // Without a map GNU tar reads that many bytes of data, whatever the header says.
            if pax.iter().any(|(k, _)| k == "GNU.sparse.realsize") {
                bail!("GNU.sparse.realsize without GNU.sparse.major refused");
            }
            return Ok(());
        };
        let minor = pax.iter().rev().find(|(k, _)| k == "GNU.sparse.minor");
        if major.as_slice() != b"1" || minor.map(|(_, v)| v.as_slice()) != Some(b"0") {
            bail!("GNU sparse format {} refused", shown(major));
        }
        let size = real_size(pax)?.context("GNU sparse 1.0 without GNU.sparse.realsize")?;
        let mut nums: Vec<u64> = Vec::new();
        // The count, then an offset and a length per region: 1 + 2 × count numbers.
        let mut want = None;
        let mut line = Vec::new();
        let mut read = 0u64;
        while want.is_none_or(|w| (nums.len() as u64) < w) {
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
                if nums.len() == 1 {
                    let count = nums[0].checked_mul(2).and_then(|n| n.checked_add(1));
                    want = Some(count.context("a GNU sparse 1.0 map of too many regions")?);
                }
                if want == Some(nums.len() as u64) {
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

/// The PAX keys [`apply_record`] acts on (`SCHILY.xattr.*` aside): any other record changes
/// nothing.
const APPLIED: &[&str] = &[
    "path",
    "linkpath",
    "size",
    "uid",
    "gid",
    "mtime",
    "SCHILY.acl.access",
    "SCHILY.acl.default",
    "GNU.dumpdir",
];

/// The records of a PAX global header as GNU tar 1.34 applies them to every later entry, until
/// the next global header replaces them all (`xheader_decode_global`). It keeps each value as
/// a C string (cut at a NUL) and applies them last to first, so of a key given twice the first
/// wins. Only the keys olboot acts on are kept, each once: applying them to an entry costs
/// the same whatever the header's size.
fn globals(data: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for (k, v) in records(data)? {
        // GNU tar would make every later entry sparse by them.
        if k.starts_with("GNU.sparse.") {
            bail!("the sparse record {k} refused");
        }
        // GNU tar 1.34 reads the name of a global xattr from past the end of its keyword
        // (here it tried to set ''): what it sets cannot be known.
        if k.starts_with("SCHILY.xattr.") {
            bail!("the xattr record {k} refused (GNU tar reads no name from it)");
        }
        if APPLIED.contains(&k.as_str()) && !out.iter().any(|(g, _)| *g == k) {
            let v = cstr(&v).to_vec();
            out.push((k, v));
        }
    }
    Ok(out)
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
                if name.is_empty() {
                    bail!("an xattr record without a name");
                }
                e.xattrs.push((xattr_name(name), v.to_vec()));
            }
            // Other records (atime, ctime, uname, gname, charset, comment, vendor records,
            // bsdtar's LIBARCHIVE.xattr.* too: GNU tar ignores them as unknown keywords)
            // change nothing GNU tar -xp --numeric-owner restores.
        }
    }
    Ok(())
}

/// GNU sparse 0.0 (repeated offset/numbytes records) and 0.1 (`GNU.sparse.map`).
fn sparse_0_x(e: &mut Entry, pax: &[(String, Vec<u8>)]) -> Result<()> {
    let has = |key: &str| pax.iter().any(|(k, _)| k == key);
    if !has("GNU.sparse.size") {
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
    }
    if has("GNU.sparse.major") {
        return Ok(());
    }
    let size = real_size(pax)?.context("GNU sparse 0.x without its size")?;
    let map = sparse_0_x_map(pax)?;
    if !map.is_empty() || has("GNU.sparse.numblocks") {
        // GNU tar keeps no region beyond GNU.sparse.numblocks ("excess"), none without it.
        let n = pax.iter().rev().find(|(k, _)| k == "GNU.sparse.numblocks");
        let n = n.context("a GNU sparse map without GNU.sparse.numblocks refused")?;
        if decimal(&n.1)? != map.len() as u64 {
            bail!("GNU.sparse.numblocks does not match the map");
        }
    }
    e.sparse = Some(Sparse {
        map,
        size,
        // GNU tar ends the file at its last region, not at GNU.sparse.size: a map that ends
        // before it is refused (unpack checks), as a map GNU tar writes never does.
        ends_with_map: true,
    });
    Ok(())
}

/// The regions of a GNU sparse 0.1 `GNU.sparse.map` record, or of 0.0's `GNU.sparse.offset`
/// and `GNU.sparse.numbytes` pairs.
fn sparse_0_x_map(pax: &[(String, Vec<u8>)]) -> Result<Vec<(u64, u64)>> {
    let pairs = ["GNU.sparse.offset", "GNU.sparse.numbytes"];
    let has_pairs = pax.iter().any(|(k, _)| pairs.contains(&k.as_str()));
    if let Some((_, m)) = pax.iter().rev().find(|(k, _)| k == "GNU.sparse.map") {
        // GNU tar adds the pairs to the map it has read when they follow it.
        if has_pairs {
            bail!("GNU.sparse.map with GNU.sparse.offset records refused");
        }
        // GNU tar refuses an empty map ("invalid GNU.sparse.map").
        let nums: Vec<u64> = m
            .split(|&c| c == b',')
            .map(decimal)
            .collect::<Result<_>>()
            .context("bad GNU.sparse.map")?;
        if nums.len() % 2 != 0 {
            bail!("GNU.sparse.map with an odd number of values");
        }
        return Ok(nums.chunks(2).map(|p| (p[0], p[1])).collect());
    }
    let mut map = Vec::new();
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
    if off.is_some() {
        bail!("GNU.sparse.offset without its GNU.sparse.numbytes");
    }
    Ok(map)
}

/// The sparse file's size: the last of `GNU.sparse.size` and `GNU.sparse.realsize`, which GNU
/// tar reads alike.
fn real_size(pax: &[(String, Vec<u8>)]) -> Result<Option<u64>> {
    let keys = ["GNU.sparse.size", "GNU.sparse.realsize"];
    let Some((k, v)) = pax.iter().rev().find(|(k, _)| keys.contains(&k.as_str())) else {
        return Ok(None);
    };
    decimal(v).with_context(|| format!("bad {k}")).map(Some)
}

/// The sparse slots of an old-GNU header area, 24-byte (offset, length) pairs, added to `map`;
/// false once one ends the map. As GNU tar's `oldgnu_add_sparse`: a slot whose length field
/// starts with NUL ends it, whatever its offset field holds.
fn sparse_slots(area: &[u8], map: &mut Vec<(u64, u64)>) -> Result<bool> {
    for slot in area.chunks_exact(24) {
        if slot[12] == 0 {
            return Ok(false);
        }
        // GNU tar reads such an offset past its NUL, and refuses the member when that
        // lands outside the file: not a map any tar writes.
        if slot[0] == 0 {
            bail!("an old-GNU sparse slot whose offset field starts with NUL refused");
        }
        let off = number(&slot[..12]).context("bad sparse offset")?;
        let len = number(&slot[12..]).context("bad sparse length")?;
        map.push((off, len));
    }
    Ok(true)
}

/// Refuse sparse records where GNU tar does not read them as a sparse file: an old-GNU map
/// (type `S`) under another magic than the old-GNU one (GNU tar then reads the map's blocks as
/// data); PAX sparse records (`pax_sparse`) on a header that is not POSIX, where GNU tar reads
/// the data as a plain file of the sparse size, the headers after it included; PAX sparse
/// records on an entry of `kind` other than a file (GNU tar makes an empty file of it).
fn sparse_where_gnu_tar_reads_it(h: &[u8; BLOCK], kind: Kind, pax_sparse: bool) -> Result<()> {
    if h[156] == b'S' && &h[257..265] != b"ustar  \0" {
        bail!("an old-GNU sparse header (type S) without the old-GNU magic refused");
    }
    if pax_sparse && !posix_header(h) {
        bail!("PAX sparse records on a header that is not POSIX ustar refused (GNU tar would read its data otherwise)");
    }
    if pax_sparse && kind != Kind::File {
        bail!("PAX sparse records on an entry that is not a regular file refused (GNU tar would make a file of it)");
    }
    Ok(())
}

/// Whether GNU tar reads header `h` as POSIX (`decode_header`): the magic `ustar\0`, and not
/// star's layout (a NUL at the prefix's end and octal atime and ctime ending in a blank).
fn posix_header(h: &[u8; BLOCK]) -> bool {
    let octal = |b: u8| (b'0'..=b'7').contains(&b);
    let star = h[475] == 0 && octal(h[476]) && h[487] == b' ' && octal(h[488]) && h[499] == b' ';
    &h[257..263] == b"ustar\0" && !star
}

/// The PAX records of `data`: `LEN KEY=VALUE\n`, in order.
fn records(data: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut rest = data;
    loop {
        // "LEN KEY=VALUE\n" as GNU tar's decode_record reads it: blanks, LEN decimal digits
        // counting the whole record (those blanks included), then one or more spaces or tabs;
        // the key ends at the first '='. Where a record would start, the end of the data or a
        // NUL ends the records, whatever follows the NUL (GNU tar reads them as a C string).
        let lead = rest
            .iter()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
        match rest.get(lead) {
            None | Some(0) => return Ok(out),
            Some(b) if !b.is_ascii_digit() => bail!("a PAX record without a length"),
            Some(_) => {}
        }
        let digits = lead
            + rest[lead..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
        let len: usize = std::str::from_utf8(&rest[lead..digits])
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
}

/// A PAX time: `[-]SECONDS[.FRACTION]`.
fn pax_time(v: &[u8]) -> Result<Time> {
    let written = std::str::from_utf8(v).context("not a number")?;
    let (neg, s) = match written.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, written),
    };
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        bail!("bad time {written:?}");
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        bail!("bad time {written:?}");
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

/// The xattr name of a `SCHILY.xattr.NAME` key as GNU tar decodes it (`xattr_decode_keyword`,
/// the reverse of how it writes `=` and `%`): `%3D` is `=`, `%25` is `%`, read left to right;
/// any other `%` stays as it is.
fn xattr_name(key: &str) -> Vec<u8> {
    let b = key.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b.get(i..i + 3) {
            Some(b"%3D") => out.push(b'='),
            Some(b"%25") => out.push(b'%'),
            _ => {
                out.push(b[i]);
                i += 1;
                continue;
            }
        }
        i += 3;
    }
    out
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
    fn xattr_names_are_decoded_as_gnu_tar_decodes_them() {
        assert_eq!(xattr_name("user.a%3Db"), b"user.a=b");
        assert_eq!(xattr_name("user.pct%2541"), b"user.pct%41");
        // Only those two, upper case, in one pass.
        assert_eq!(xattr_name("user.a%3d%41%253D%3D"), b"user.a%3d%41%3D=");
        assert_eq!(xattr_name("user.%"), b"user.%");
        assert_eq!(xattr_name("user.%3"), b"user.%3");
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
        // As GNU tar: blanks before a length are part of the record, a NUL where a record
        // would start ends them, anything else there is refused.
        assert_eq!(records(b" 12 path=ab\n").unwrap()[0].1, b"ab");
        assert_eq!(records(b"11 path=ab\n\0\0").unwrap().len(), 1);
        assert_eq!(records(b"11 path=ab\n  \0junk").unwrap().len(), 1);
        assert!(records(b"11 path=ab\njunk").is_err());
    }

    #[test]
    fn a_global_header_keeps_what_gnu_tar_applies() {
        let g = globals(b"8 uid=1\n8 uid=2\n11 kabcd=x\n12 gid=12\0x\n").unwrap();
        // The first of a key wins, a value ends at a NUL, unknown keys are dropped.
        assert_eq!(
            g,
            vec![
                ("uid".into(), b"1".to_vec()),
                ("gid".into(), b"12".to_vec())
            ]
        );
        let err = |d: &[u8]| globals(d).unwrap_err().to_string();
        assert!(err(b"25 SCHILY.xattr.user.g=v\n").contains("xattr record"));
        assert!(err(b"23 GNU.sparse.size=512\n").contains("sparse record"));
    }
}
