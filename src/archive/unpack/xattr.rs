//! Extended attributes and POSIX ACLs of an entry, set on the file once it has its owner and
//! mode (chown clears `security.capability`, and a chmod after an ACL would rewrite its mask).
//!
//! ACLs come as text (`SCHILY.acl.access`: `user::rw-,user:1234:r-x,...`, entries separated
//! by commas or newlines); the kernel takes them as the `system.posix_acl_access` and
//! `system.posix_acl_default` xattrs in their binary form, built here. A named qualifier is
//! looked up in this machine's users and groups, as GNU tar's libacl does even with
//! `--numeric-owner` (bsdtar's fourth field, the archiving machine's id, is ignored, as GNU
//! tar ignores it); a name unknown here is refused (GNU tar would set no ACL). When the entry
//! also carries the binary xattr (GNU tar writes both), the binary one is kept, as GNU tar
//! sets it last. A filesystem that does not support an attribute (EOPNOTSUPP) gives a warning
//! naming the entry; any other failure is an error.

use super::shown;
use anyhow::{bail, Context, Result};
use rustix::fd::AsFd;
use rustix::fs::XattrFlags;
use rustix::io::Errno;
use std::os::unix::ffi::OsStrExt;

const ACL_VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
const UNDEFINED_ID: u32 = u32::MAX;

/// Everything to set on one entry, as xattr name → value (later entries of a name win).
/// `xattrs` is taken, not copied: one PAX header may hold 50,000 of them, and every copy of
/// such a list costs megabytes (see `RECORD_OVERHEAD`).
pub fn collect(
    mut all: Vec<(Vec<u8>, Vec<u8>)>,
    access: Option<&str>,
    default: Option<&str>,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    for (text, name, record) in [
        (access, "system.posix_acl_access", "SCHILY.acl.access"),
        (default, "system.posix_acl_default", "SCHILY.acl.default"),
    ] {
        let Some(text) = text else { continue };
        // GNU tar stores an ACL twice: as text (with names where the archiving system had
        // them) and as the binary xattr (numeric ids); it sets the xattrs after the ACLs, so
        // the binary one is what it leaves.
        if all.iter().any(|(k, _)| k == name.as_bytes()) {
            continue;
        }
        let v = acl(text).context(record)?;
        all.push((name.as_bytes().to_vec(), v));
    }
    // Of a name given twice the last wins, where it comes: what setting them in turn leaves.
    // Through a set of borrowed names, not a search per record nor copies of the names.
    let mut keep: Vec<bool> = {
        let mut seen = std::collections::HashSet::new();
        all.iter().rev().map(|(k, _)| seen.insert(&k[..])).collect()
    };
    keep.reverse();
    let mut kept = keep.into_iter();
    all.retain(|_| kept.next().unwrap_or(true));
    // These wait with their directory: no spare capacity kept (see `RECORD_OVERHEAD`).
    all.shrink_to_fit();
    Ok(all)
}

/// Set `attrs` on `fd`; names the filesystem does not support are returned for a warning.
pub fn set(fd: impl AsFd, attrs: &[(Vec<u8>, Vec<u8>)]) -> Result<Vec<String>> {
    let mut unsupported = Vec::new();
    for (name, value) in attrs {
        let n = std::ffi::OsStr::from_bytes(name);
        match rustix::fs::fsetxattr(&fd, n, value, XattrFlags::empty()) {
            Ok(()) => {}
            Err(Errno::OPNOTSUPP) => unsupported.push(shown(name)),
            Err(e) => {
                return Err(std::io::Error::from(e))
                    .with_context(|| format!("cannot set the xattr {}", shown(name)))
            }
        }
    }
    Ok(unsupported)
}

/// The xattr a directory's default ACL is kept in: what new entries in it inherit.
pub const DEFAULT_ACL: &[u8] = b"system.posix_acl_default";

/// Remove the ACLs `fd` inherited when it was made in a directory with a default ACL: the
/// access ACL, and for a directory its default ACL. GNU tar with `--acls` sets every entry's
/// access ACL to the archive's (or to the one its mode says) and drops a default ACL the
/// archive does not give. None there, or none on this filesystem: nothing to do.
pub fn drop_inherited(fd: impl AsFd, dir: bool) -> Result<()> {
    remove(&fd, b"system.posix_acl_access")?;
    if dir {
        remove(&fd, DEFAULT_ACL)?;
    }
    Ok(())
}

/// Remove the xattr `name` of `fd`; none there, or none on this filesystem: nothing to do.
pub fn remove(fd: impl AsFd, name: &[u8]) -> Result<()> {
    match rustix::fs::fremovexattr(&fd, std::ffi::OsStr::from_bytes(name)) {
        Ok(()) | Err(Errno::NODATA | Errno::OPNOTSUPP) => Ok(()),
        Err(e) => Err(std::io::Error::from(e))
            .with_context(|| format!("cannot remove the inherited {}", shown(name))),
    }
}

/// Set `attrs` on the symlink `base` in the directory `dir`, not following it; the names
/// the kernel refuses on a symlink (EPERM: user.*) or the filesystem does not support are
/// returned for a warning. There is no fsetxattr for a symlink (an `O_PATH` descriptor
/// refuses it) nor an lsetxattr relative to a directory descriptor: the path goes through
/// `/proc/self/fd`, whose link to `dir` is followed, and then `base`, which is not.
pub fn set_on_symlink(
    dir: impl AsFd,
    base: &std::ffi::OsStr,
    attrs: &[(Vec<u8>, Vec<u8>)],
) -> Result<Vec<String>> {
    use std::os::fd::AsRawFd;
    let mut refused = Vec::new();
    if attrs.is_empty() {
        return Ok(refused);
    }
    let dir = dir.as_fd();
    let mut path = std::path::PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    path.push(base);
    for (name, value) in attrs {
        let n = std::ffi::OsStr::from_bytes(name);
        match rustix::fs::lsetxattr(&path, n, value, XattrFlags::empty()) {
            Ok(()) => {}
            Err(Errno::OPNOTSUPP | Errno::PERM) => refused.push(shown(name)),
            Err(e) => {
                return Err(std::io::Error::from(e)).with_context(|| {
                    format!(
                        "cannot set the xattr {} (through /proc/self/fd)",
                        shown(name)
                    )
                })
            }
        }
    }
    Ok(refused)
}

/// A text ACL in the kernel's xattr form.
fn acl(text: &str) -> Result<Vec<u8>> {
    let mut entries = Vec::new();
    for e in text
        .split([',', '\n'])
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        entries.push(entry(e).with_context(|| format!("ACL entry {e:?}"))?);
    }
    entries.sort();
    let mut out = ACL_VERSION.to_le_bytes().to_vec();
    for (tag, id, perm) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    Ok(out)
}

/// One entry `TAG:QUALIFIER:PERMS[:ID]` as (tag, id, perm), sortable as the kernel wants.
fn entry(e: &str) -> Result<(u16, u32, u16)> {
    let f: Vec<&str> = e.split(':').collect();
    if f.len() < 3 || f.len() > 4 {
        bail!("not TAG:QUALIFIER:PERMS");
    }
    let named = !f[1].is_empty();
    let tag = match (f[0], named) {
        ("user" | "u", false) => USER_OBJ,
        ("user" | "u", true) => USER,
        ("group" | "g", false) => GROUP_OBJ,
        ("group" | "g", true) => GROUP,
        ("mask" | "m", false) => MASK,
        ("other" | "o", false) => OTHER,
        _ => bail!("unknown tag"),
    };
    // A qualifier is a number, or a name GNU tar (libacl's acl_from_text) looks up in this
    // machine's users or groups, even with --numeric-owner, dropping any fourth field (the id
    // bsdtar adds); a name unknown here makes it set no ACL at all: refused.
    let id = if !named {
        UNDEFINED_ID
    } else if let Ok(n) = f[1].parse::<u32>() {
        n
    } else if let Some(n) = lookup(f[1], tag == GROUP) {
        n
    } else {
        let what = if tag == GROUP { "group" } else { "user" };
        bail!(
            "no {what} of that name on this machine: GNU tar would set no ACL (and warn); \
             refused"
        );
    };
    let mut perm = 0u16;
    for (i, c) in f[2].chars().enumerate() {
        perm |= match (i, c) {
            (0, 'r') => 4,
            (1, 'w') => 2,
            (2, 'x') => 1,
            (0..=2, '-') => 0,
            _ => bail!("bad permissions"),
        };
    }
    Ok((tag, id, perm))
}

/// The id of the user (or group) `name` in this machine's databases (getpwnam_r, getgrnam_r:
/// libacl's lookup for GNU tar); None when there is none.
fn lookup(name: &str, group: bool) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    let mut len = 16 << 10;
    // Groups with many members need a larger buffer (ERANGE); 1 MiB at most.
    while len <= 1 << 20 {
        let mut buf = vec![0 as libc::c_char; len];
        // SAFETY: every pointer is valid for the call: the name is NUL-terminated, the
        // buffer is `len` bytes long, the record and result are written by the call; the
        // record's strings point into `buf`, which is not read after it is dropped.
        let (rc, id) = unsafe {
            if group {
                let mut g: libc::group = std::mem::zeroed();
                let mut out = std::ptr::null_mut();
                let rc = libc::getgrnam_r(c.as_ptr(), &mut g, buf.as_mut_ptr(), len, &mut out);
                (rc, (!out.is_null()).then_some(g.gr_gid))
            } else {
                let mut p: libc::passwd = std::mem::zeroed();
                let mut out = std::ptr::null_mut();
                let rc = libc::getpwnam_r(c.as_ptr(), &mut p, buf.as_mut_ptr(), len, &mut out);
                (rc, (!out.is_null()).then_some(p.pw_uid))
            }
        };
        if rc != libc::ERANGE {
            return if rc == 0 { id } else { None };
        }
        len *= 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_acl_to_xattr_form() {
        let b = acl("user::rw-,user:1234:r-x,group::r--,mask::r-x,other::---").unwrap();
        let mut want = 2u32.to_le_bytes().to_vec();
        for (t, p, id) in [
            (1u16, 6u16, u32::MAX),
            (2, 5, 1234),
            (4, 4, u32::MAX),
            (0x10, 5, u32::MAX),
            (0x20, 0, u32::MAX),
        ] {
            want.extend_from_slice(&t.to_le_bytes());
            want.extend_from_slice(&p.to_le_bytes());
            want.extend_from_slice(&id.to_le_bytes());
        }
        assert_eq!(b, want);
        assert_eq!(
            acl("user::rw-\nother::r--\ngroup::r--\n").unwrap().len(),
            4 + 3 * 8
        );
        assert!(acl("user:olboot-no-such-user:r--").is_err());
        assert!(acl("user:olboot-no-such-user:r--:77").is_err());
        // A name is looked up here, its fourth field ignored (as GNU tar does).
        assert_eq!(acl("user:root:r--:77").unwrap()[8..12], 0u32.to_le_bytes());
        assert_eq!(acl("group:root:r--").unwrap()[8..12], 0u32.to_le_bytes());
        assert!(acl("bogus::r--").is_err());
        let named = "user::rw-,user:olboot-no-such-user:r--,group::r--,mask::r--,other::r--";
        assert!(collect(Vec::new(), Some(named), None).is_err());
        let binary = (b"system.posix_acl_access".to_vec(), b"\x02\0\0\0".to_vec());
        let kept = collect(vec![binary.clone()], Some(named), None).unwrap();
        assert_eq!(kept, vec![binary]);
        let twice = vec![
            (b"user.a".to_vec(), b"1".to_vec()),
            (b"user.b".to_vec(), b"2".to_vec()),
            (b"user.a".to_vec(), b"3".to_vec()),
        ];
        let kept = collect(twice, None, None).unwrap();
        let want = [(&b"user.b"[..], &b"2"[..]), (b"user.a", b"3")];
        let want: Vec<_> = want.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        assert_eq!(kept, want);
    }
}
