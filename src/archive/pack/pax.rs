//! Tar headers as GNU tar's `--format=pax` writes them: a ustar header, preceded by a PAX
//! extended header (`x`) when the entry needs more than ustar holds: a long name or link
//! target, a nanosecond or negative mtime, extended attributes (`SCHILY.xattr.NAME`, with `%`
//! and `=` in NAME escaped as GNU tar escapes them), POSIX ACLs (`SCHILY.acl.access`/`.default`
//! in the text form `tar --acls` reads, with numeric ids, and the raw `system.posix_acl_*`
//! attributes as well, as GNU tar 1.34 does), and the records of a PAX 1.0 sparse file
//! (`GNU.sparse.*`).

use anyhow::{Context, Result};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use tar::{EntryType, Header};

/// PAX records of one entry, in the order they were added.
#[derive(Default)]
pub struct Records(Vec<u8>);

impl Records {
    /// Add `key=value`. A record is `"LEN KEY=VALUE\n"`, where LEN counts the whole record,
    /// its own digits included.
    pub fn push(&mut self, key: &[u8], value: &[u8]) {
        let body = key.len() + value.len() + 3;
        let mut len = body + 1;
        while body + digits(len) != len {
            len = body + digits(len);
        }
        self.0.extend_from_slice(len.to_string().as_bytes());
        self.0.push(b' ');
        self.0.extend_from_slice(key);
        self.0.push(b'=');
        self.0.extend_from_slice(value);
        self.0.push(b'\n');
    }

    /// Whether no record was added.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The header of the `x` entry carrying these records for the entry named `name`.
    pub fn header(&self, name: &[u8]) -> Header {
        let mut h = Header::new_ustar();
        let base = name.rsplit(|&b| b == b'/').find(|s| !s.is_empty());
        let mut x = b"PaxHeaders/".to_vec();
        x.extend(base.unwrap_or(b".").iter().take(80));
        set_name_bytes(&mut h, &x);
        h.set_entry_type(EntryType::XHeader);
        h.set_mode(0o644);
        h.set_size(self.0.len() as u64);
        h.set_cksum();
        h
    }

    /// The records, as the data of the `x` entry.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

fn digits(n: usize) -> usize {
    n.to_string().len()
}

/// A time as PAX writes it: seconds, and a fraction when there is one. Negative times count
/// down from the epoch, so (-101 s, 0.75 s) is `-100.25`.
pub fn time(secs: i64, nsec: u32) -> String {
    if nsec == 0 {
        return secs.to_string();
    }
    let (sign, s, ns) = if secs < 0 {
        ("-", -(secs + 1), 1_000_000_000 - nsec)
    } else {
        ("", secs, nsec)
    };
    let frac = format!("{ns:09}");
    format!("{sign}{s}.{}", frac.trim_end_matches('0'))
}

/// Owner, mode and mtime of an entry.
#[derive(Clone, Copy, Debug)]
pub struct Meta {
    /// Numeric owner.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// `st_mode`; the permission bits with setuid, setgid and sticky are stored.
    pub mode: u32,
    /// Seconds since the epoch, negative before it.
    pub mtime: i64,
    /// Nanoseconds past `mtime`.
    pub mtime_nsec: u32,
}

/// The largest id and size the ustar header's octal fields hold.
const MAX_ID: u32 = 0o7777777;
const MAX_SIZE: u64 = 0o77777777777;

/// The ustar header of an entry named `name`, adding to `rec` what it cannot hold.
pub fn header(name: &[u8], kind: EntryType, m: &Meta, size: u64, rec: &mut Records) -> Header {
    let mut h = Header::new_ustar();
    if h.set_path(Path::new(OsStr::from_bytes(name))).is_err() {
        rec.push(b"path", name);
        set_name_bytes(&mut h, name);
    }
    h.set_entry_type(kind);
    // Beyond the octal fields the header holds base-256 numbers (GNU tar reads them); the
    // PAX records are what POSIX readers look for.
    if m.uid > MAX_ID {
        rec.push(b"uid", m.uid.to_string().as_bytes());
    }
    if m.gid > MAX_ID {
        rec.push(b"gid", m.gid.to_string().as_bytes());
    }
    if size > MAX_SIZE {
        rec.push(b"size", size.to_string().as_bytes());
    }
    h.set_uid(m.uid.into());
    h.set_gid(m.gid.into());
    h.set_mode(m.mode & 0o7777);
    h.set_mtime(m.mtime.max(0) as u64);
    if m.mtime_nsec != 0 || m.mtime < 0 {
        rec.push(b"mtime", time(m.mtime, m.mtime_nsec).as_bytes());
    }
    h.set_size(size);
    h
}

/// Set a link target exactly as read (no normalisation), in PAX when it is too long.
pub fn set_link(h: &mut Header, target: &[u8], rec: &mut Records) {
    if h.set_link_name_literal(target).is_err() {
        rec.push(b"linkpath", target);
        let n = target.len().min(100);
        let _ = h.set_link_name_literal(&target[..n]);
    }
}

/// Put the first 100 bytes of `name` in the name field (the real name is in PAX).
fn set_name_bytes(h: &mut Header, name: &[u8]) {
    let field = &mut h.as_old_mut().name;
    field.fill(0);
    let n = name.len().min(field.len());
    field[..n].copy_from_slice(&name[..n]);
}

/// Add the extended attributes and ACLs of `path` (not following a symlink) to `rec`;
/// returns what could not be stored, as warnings.
pub fn xattrs(path: &Path, rec: &mut Records) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    let names = match list(path) {
        Err(e) if e == rustix::io::Errno::NOTSUP => return Ok(warnings),
        r => {
            r.with_context(|| format!("cannot list the extended attributes of {}", path.display()))?
        }
    };
    for name in names {
        let value = match get(path, &name) {
            // Removed between the listing and now.
            Err(rustix::io::Errno::NODATA) => continue,
            r => r.with_context(|| {
                format!(
                    "cannot read the extended attribute {} of {}",
                    String::from_utf8_lossy(&name),
                    path.display()
                )
            })?,
        };
        let acl_key: &[u8] = match name.as_slice() {
            b"system.posix_acl_access" => b"SCHILY.acl.access",
            b"system.posix_acl_default" => b"SCHILY.acl.default",
            _ => b"",
        };
        if !acl_key.is_empty() {
            match acl_text(&value) {
                Some(text) => rec.push(acl_key, text.as_bytes()),
                None => warnings.push(format!(
                    "{}: {} in an unknown format, stored as an attribute only",
                    path.display(),
                    String::from_utf8_lossy(&name)
                )),
            }
        }
        rec.push(&xattr_key(&name), &value);
    }
    Ok(warnings)
}

/// The PAX key of the xattr `name` as GNU tar 1.34 writes it (`xattr_encode_keyword`): `%` as
/// `%25` and `=` as `%3D`, since the first `=` of a record ends its key; GNU tar (and the
/// unpacker) decode exactly these two.
fn xattr_key(name: &[u8]) -> Vec<u8> {
    let mut key = b"SCHILY.xattr.".to_vec();
    for &b in name {
        match b {
            b'%' => key.extend_from_slice(b"%25"),
            b'=' => key.extend_from_slice(b"%3D"),
            _ => key.push(b),
        }
    }
    key
}

/// The names of the extended attributes of `path`, sorted.
fn list(path: &Path) -> rustix::io::Result<Vec<Vec<u8>>> {
    let mut buf = Vec::new();
    loop {
        let n = rustix::fs::llistxattr_query(path)?;
        buf.resize(n, 0);
        match rustix::fs::llistxattr(path, &mut buf[..]) {
            // Grew in between.
            Err(rustix::io::Errno::RANGE) => continue,
            Err(e) => return Err(e),
            Ok(n) => buf.truncate(n),
        }
        break;
    }
    let mut names: Vec<Vec<u8>> = buf
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    names.sort();
    Ok(names)
}

fn get(path: &Path, name: &[u8]) -> rustix::io::Result<Vec<u8>> {
    let name = OsStr::from_bytes(name);
    loop {
        let n = rustix::fs::lgetxattr_query(path, name)?;
        let mut v = vec![0; n];
        match rustix::fs::lgetxattr(path, name, &mut v[..]) {
            Err(rustix::io::Errno::RANGE) => continue,
            Err(e) => return Err(e),
            Ok(n) => {
                v.truncate(n);
                return Ok(v);
            }
        }
    }
}

/// The text form of a `system.posix_acl_*` value (version 2: 8-byte entries of tag, permissions
/// and id), one entry a line as `tar --acls` writes it, ids numeric: `user:1000:r-x`.
pub fn acl_text(v: &[u8]) -> Option<String> {
    let (head, entries) = v.split_at_checked(4)?;
    if head != 2u32.to_le_bytes() || entries.len() % 8 != 0 {
        return None;
    }
    let mut s = String::new();
    for e in entries.chunks_exact(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let perm = u16::from_le_bytes([e[2], e[3]]);
        let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        let who = match tag {
            0x01 => "user::".to_string(),
            0x02 => format!("user:{id}:"),
            0x04 => "group::".to_string(),
            0x08 => format!("group:{id}:"),
            0x10 => "mask::".to_string(),
            0x20 => "other::".to_string(),
            _ => return None,
        };
        let bit = |b: u16, c: char| if perm & b != 0 { c } else { '-' };
        s += &format!("{who}{}{}{}\n", bit(4, 'r'), bit(2, 'w'), bit(1, 'x'));
    }
    Some(s)
}

/// A PAX 1.0 sparse member as GNU tar writes it: the name `GNUSparseFile.0/BASE`, the
/// real name and size in `GNU.sparse.*` records, and at the start of the data a map (the
/// number of segments, then each one's offset and length, one decimal a line, padded to a
/// 512-byte block) before the segments' data. A file that ends in a hole gets a last, empty
/// segment at its end so its size is restored. Returns the member's name, size and the map.
pub fn sparse(
    rel: &[u8],
    segments: &[(u64, u64)],
    size: u64,
    rec: &mut Records,
) -> (Vec<u8>, u64, Vec<u8>) {
    let mut segs = segments.to_vec();
    if segs.last().is_none_or(|&(o, l)| o + l < size) {
        segs.push((size, 0));
    }
    let mut map = format!("{}\n", segs.len());
    for (o, l) in &segs {
        map += &format!("{o}\n{l}\n");
    }
    let mut map = map.into_bytes();
    map.resize(map.len().div_ceil(512) * 512, 0);
    rec.push(b"GNU.sparse.major", b"1");
    rec.push(b"GNU.sparse.minor", b"0");
    rec.push(b"GNU.sparse.name", rel);
    rec.push(b"GNU.sparse.realsize", size.to_string().as_bytes());
    // The member's own name only matters to readers without sparse support: keep it short
    // enough for the header, so that no `path` record competes with `GNU.sparse.name`.
    let base = rel.rsplit(|&b| b == b'/').next().unwrap_or(rel);
    let mut name = b"GNUSparseFile.0/".to_vec();
    name.extend(base.iter().take(80));
    let data: u64 = segments.iter().map(|s| s.1).sum();
    (name, map.len() as u64 + data, map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_lengths_count_themselves() {
        let mut r = Records::default();
        r.push(b"mtime", b"-100.25");
        r.push(b"path", &[b'a'; 90]);
        let text = String::from_utf8(r.bytes().to_vec()).unwrap();
        let mut rest = text.as_str();
        while !rest.is_empty() {
            let (len, _) = rest.split_once(' ').unwrap();
            let len: usize = len.parse().unwrap();
            assert!(rest[..len].ends_with('\n'), "{text:?}");
            rest = &rest[len..];
        }
        assert!(text.starts_with("17 mtime=-100.25\n"), "{text:?}");
    }

    #[test]
    fn xattr_keys_escape_what_gnu_tar_escapes() {
        assert_eq!(xattr_key(b"user.a=b"), b"SCHILY.xattr.user.a%3Db");
        assert_eq!(xattr_key(b"user.pct%41"), b"SCHILY.xattr.user.pct%2541");
        assert_eq!(xattr_key(b"user.%3D"), b"SCHILY.xattr.user.%253D");
        assert_eq!(xattr_key(b"trusted.t"), b"SCHILY.xattr.trusted.t");
    }

    #[test]
    fn times_as_gnu_tar_writes_them() {
        assert_eq!(time(1_700_000_000, 0), "1700000000");
        assert_eq!(time(1_700_000_000, 174_017_559), "1700000000.174017559");
        assert_eq!(time(-101, 750_000_000), "-100.25");
        assert_eq!(time(-1, 500_000_000), "-0.5");
        assert_eq!(time(-5, 0), "-5");
    }

    #[test]
    fn acl_text_is_what_tar_acls_writes() {
        // setfacl -m u:1234:rwx,g:55:r on a 0644 file, as getfattr shows it.
        let mut v = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [
            (1u16, 6u16, u32::MAX),
            (2, 7, 1234),
            (4, 4, u32::MAX),
            (8, 4, 55),
            (0x10, 7, u32::MAX),
            (0x20, 4, u32::MAX),
        ] {
            v.extend(tag.to_le_bytes());
            v.extend(perm.to_le_bytes());
            v.extend(id.to_le_bytes());
        }
        assert_eq!(
            acl_text(&v).unwrap(),
            "user::rw-\nuser:1234:rwx\ngroup::r--\ngroup:55:r--\nmask::rwx\nother::r--\n"
        );
        assert_eq!(acl_text(&v[..7]), None);
    }

    #[test]
    fn a_sparse_member_ending_in_a_hole_gets_an_empty_last_segment() {
        let mut r = Records::default();
        let (name, size, map) = sparse(b"a/b/disk.img", &[(0, 4096), (8192, 10)], 1 << 30, &mut r);
        assert_eq!(name, b"GNUSparseFile.0/disk.img");
        assert_eq!(map.len(), 512);
        assert!(map.starts_with(b"3\n0\n4096\n8192\n10\n1073741824\n0\n\0"));
        assert_eq!(size, 512 + 4096 + 10);
        let text = String::from_utf8_lossy(r.bytes()).into_owned();
        assert!(text.contains("GNU.sparse.name=a/b/disk.img\n"), "{text}");
        assert!(text.contains("GNU.sparse.realsize=1073741824\n"), "{text}");
    }
}
