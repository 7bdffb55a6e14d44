//! `olboot pack` on real trees, as root: every feature of a legacy `/opt` (sparse files,
//! nanosecond and negative mtimes, xattrs, ACLs, capabilities, hard links, long names, large
//! ids) survives pack → GNU tar (`tar -xpf --numeric-owner --xattrs --acls`) and pack → the
//! opt step, compared entry by entry; files that shrink, grow, vanish or keep changing while
//! pack reads them, driven by a concurrent writer woken by inotify; `--exclude`; and the
//! reference report on a generated olsystem tree whose references the test knows.

#[path = "opt/support.rs"]
mod support;

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use support::{noise, olboot, stderr, Scratch};

fn file_url(p: &Path) -> String {
    format!("file://{}", p.display())
}

/// `olboot pack SRC -o OUT ARGS...`.
fn pack(src: &Path, out: &Path, args: &[&str]) -> Output {
    let o = olboot()
        .arg("pack")
        .arg(src)
        .arg("-o")
        .arg(out)
        .args(args)
        .output()
        .unwrap();
    eprintln!("--- olboot pack: {}\n{}", o.status, stderr(&o));
    o
}

/// The summary `pack --json` printed.
fn summary(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

/// GNU tar's extraction of `archive` into a new directory `dest`, with every attribute.
fn gnu_extract(archive: &Path, dest: &Path) {
    fs::create_dir(dest).unwrap();
    let st = Command::new("tar")
        .args(["--zstd", "-xpf"])
        .arg(archive)
        .args([
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            "--acls",
            "-C",
        ])
        .arg(dest)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "GNU tar: {}",
        String::from_utf8_lossy(&st.stderr)
    );
}

fn set_times(p: &Path, secs: i64, nsec: i64) {
    let t = rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: nsec,
    };
    let ts = rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &ts,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

fn run(cmd: &mut Command) {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn write_at(p: &Path, off: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(p)
        .unwrap();
    f.write_all_at(data, off).unwrap();
}

/// A tree with every feature pack must keep, plus a socket and a FIFO it must skip.
fn feature_tree(dir: &Path) -> Vec<std::os::unix::net::UnixListener> {
    fs::create_dir_all(dir.join("data")).unwrap();
    // 1 GiB with 12 KiB of data; one that ends in data; one that is all hole.
    let sparse = dir.join("data/sparse.img");
    write_at(&sparse, 0, &noise(4096, 1));
    write_at(&sparse, 512 << 20, &noise(8192, 2));
    fs::File::options()
        .write(true)
        .open(&sparse)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    write_at(
        &dir.join("data/tail.img"),
        (64 << 20) - 4096,
        &noise(4096, 3),
    );
    fs::File::create(dir.join("data/hole.img"))
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    fs::write(dir.join("data/dense.bin"), noise(300_000, 4)).unwrap();
    let t = dir.join("times");
    fs::create_dir(&t).unwrap();
    for (name, s, ns) in [
        ("ns", 1_700_000_000, 123_456_789),
        ("old", -101, 750_000_000),
        ("older", -946_684_800, 1),
        ("whole", 1_600_000_000, 0),
    ] {
        fs::write(t.join(name), name).unwrap();
        set_times(&t.join(name), s, ns);
    }
    let x = dir.join("attrs");
    fs::create_dir(&x).unwrap();
    fs::write(x.join("xattrs"), "x").unwrap();
    rustix::fs::setxattr(
        x.join("xattrs"),
        "user.comment",
        b"hello",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::setxattr(
        x.join("xattrs"),
        "user.empty",
        b"",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::setxattr(
        x.join("xattrs"),
        "trusted.ol",
        b"a\0b\n=c",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    fs::write(x.join("acl"), "acl").unwrap();
    run(Command::new("setfacl")
        .args(["-m", "u:1234:rwx,g:55:r"])
        .arg(x.join("acl")));
    fs::create_dir(x.join("acldir")).unwrap();
    run(Command::new("setfacl")
        .args(["-d", "-m", "u:1234:rx,g:55:rwx"])
        .arg(x.join("acldir")));
    fs::write(x.join("acldir/inherits"), "i").unwrap();
    fs::write(x.join("cap"), "#!/bin/true\n").unwrap();
    std::os::unix::fs::chown(x.join("cap"), Some(1234), Some(55)).unwrap();
    fs::set_permissions(x.join("cap"), fs::Permissions::from_mode(0o750)).unwrap();
    run(Command::new("setcap")
        .arg("cap_net_bind_service,cap_net_raw=+ep")
        .arg(x.join("cap")));
    let l = dir.join("links");
    fs::create_dir_all(l.join("a")).unwrap();
    fs::write(l.join("a/first"), "shared content\n").unwrap();
    fs::hard_link(l.join("a/first"), l.join("second")).unwrap();
    fs::hard_link(l.join("a/first"), l.join("third")).unwrap();
    symlink("../links/a/first", l.join("rel")).unwrap();
    symlink("/opt/nowhere", l.join("dangling")).unwrap();
    symlink(format!("/{}", "t".repeat(300)), l.join("long-target")).unwrap();
    let long = l
        .join("d".repeat(150))
        .join(format!("{}.txt", "n".repeat(120)));
    fs::create_dir_all(long.parent().unwrap()).unwrap();
    fs::write(&long, "a path over 255 bytes\n").unwrap();
    let o = dir.join("owners");
    fs::create_dir(&o).unwrap();
    fs::write(o.join("big-ids"), "ids").unwrap();
    std::os::unix::fs::lchown(o.join("big-ids"), Some(4_000_000), Some(4_000_001)).unwrap();
    fs::write(o.join("suid"), "s").unwrap();
    fs::set_permissions(o.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::create_dir(o.join("ro")).unwrap();
    fs::write(o.join("ro/f"), "ro").unwrap();
    fs::set_permissions(o.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
    fs::create_dir(o.join("empty")).unwrap();
    let sock = std::os::unix::net::UnixListener::bind(dir.join("run.sock")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        dir.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    // Directory mtimes last, deepest first, some before 1970 or with nanoseconds.
    let mut dirs: Vec<PathBuf> = walk(dir)
        .into_iter()
        .filter(|p| p.is_dir() && !p.is_symlink())
        .collect();
    dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, d) in dirs.iter().enumerate() {
        set_times(d, 1_500_000_000 - 1_000_000 * i as i64, 7 * i as i64);
    }
    set_times(&l.join("rel"), -5, 5);
    set_times(dir, 1_650_000_000, 999_999_999);
    vec![sock]
}

/// Every path below `dir`, sorted.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Everything about each entry below `dir` (and `dir` itself, as ""): kind, mode, owner,
/// mtime to the nanosecond, size, where the data is (SEEK_DATA/SEEK_HOLE) and its digest,
/// allocated blocks of a sparse file, link target, every extended attribute (ACLs and
/// capabilities included), and which earlier name a hard link shares its inode with.
fn describe(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    let mut all = vec![dir.to_path_buf()];
    all.extend(walk(dir));
    for p in all {
        let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
        let m = fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let mut d = format!(
            "mode={:o} owner={}:{} mtime={}.{:09}",
            m.mode(),
            m.uid(),
            m.gid(),
            m.mtime(),
            m.mtime_nsec()
        );
        if ft.is_symlink() {
            d += &format!(" -> {}", fs::read_link(&p).unwrap().display());
        } else if ft.is_file() {
            d += &format!(" size={} {}", m.len(), data(&p, &m));
            if m.nlink() > 1 {
                match inodes.get(&m.ino()) {
                    Some(first) => d += &format!(" hardlink-of={first}"),
                    None => {
                        inodes.insert(m.ino(), rel.clone());
                    }
                }
            }
        }
        d += &xattrs(&p);
        out.insert(rel, d);
    }
    out
}

/// The data segments of a file with their digests, and its allocation when sparse.
fn data(p: &Path, m: &fs::Metadata) -> String {
    use rustix::fs::SeekFrom;
    use std::os::unix::fs::FileExt;
    let f = fs::File::open(p).unwrap();
    let mut s = String::new();
    let mut pos = 0;
    while pos < m.len() {
        let Ok(start) = rustix::fs::seek(&f, SeekFrom::Data(pos)) else {
            break;
        };
        let end = rustix::fs::seek(&f, SeekFrom::Hole(start))
            .unwrap()
            .min(m.len());
        let mut buf = vec![0; (end - start) as usize];
        f.read_exact_at(&mut buf, start).unwrap();
        s += &format!("[{start}+{} {:x}]", end - start, Sha256::digest(&buf));
        pos = end;
    }
    if m.blocks() * 512 < m.len() {
        s += &format!(" blocks={}", m.blocks());
    }
    s
}

fn xattrs(p: &Path) -> String {
    let mut names = vec![0u8; 4096];
    let n = rustix::fs::llistxattr(p, &mut names[..]).unwrap();
    let mut list: Vec<&[u8]> = names[..n]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .collect();
    list.sort();
    let mut s = String::new();
    for name in list {
        let name = std::ffi::OsStr::from_bytes(name);
        let mut v = vec![0u8; 4096];
        let n = rustix::fs::lgetxattr(p, name, &mut v[..]).unwrap();
        let hex: String = v[..n].iter().map(|b| format!("{b:02x}")).collect();
        s += &format!(" {}={hex}", name.to_string_lossy());
    }
    s
}

/// The source's description without the entries pack skips.
fn expected(src: &Path) -> BTreeMap<String, String> {
    let mut want = describe(src);
    for skipped in ["run.sock", "fifo"] {
        assert!(
            want.remove(skipped).is_some(),
            "{skipped} missing from the source"
        );
    }
    want
}

fn assert_same(want: &BTreeMap<String, String>, got: &BTreeMap<String, String>, who: &str) {
    let keys = |m: &BTreeMap<String, String>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(want), keys(got), "{who}: different entries");
    for (k, v) in want {
        assert_eq!(Some(v), got.get(k), "{who}: {k:?} differs");
    }
}

#[test]
fn every_feature_survives_pack_and_gnu_tar() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("opt");
    let _sock = feature_tree(&src);
    let want = expected(&src);
    assert!(
        want["data/sparse.img"].contains(" blocks="),
        "{}",
        want["data/sparse.img"]
    );
    assert!(want["attrs/cap"].contains("security.capability="));
    assert!(want["attrs/acl"].contains("system.posix_acl_access="));
    assert!(want["attrs/acldir"].contains("system.posix_acl_default="));
    let archive = d.path().join("opt.tar.zst");
    let out = pack(&src, &archive, &["--json"]);
    assert!(out.status.success());
    let s = summary(&out);
    let skipped: Vec<(&str, &str)> = s["skipped"]["listed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["path"].as_str().unwrap(), k["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(
        skipped[0].0 == "fifo" && skipped[0].1.contains("FIFO"),
        "{skipped:?}"
    );
    assert!(
        skipped[1].0 == "run.sock" && skipped[1].1.contains("socket"),
        "{skipped:?}"
    );
    assert_eq!(s["entries"], want.len() as u64);
    assert_eq!(s["warnings"]["count"], 0);
    let sha = format!("{:x}", Sha256::digest(fs::read(&archive).unwrap()));
    assert_eq!(s["sha256"], sha);
    // Small: the holes are not stored.
    assert!(fs::metadata(&archive).unwrap().len() < 1 << 20);
    let gnu = d.path().join("gnu");
    gnu_extract(&archive, &gnu);
    assert_same(&want, &describe(&gnu), "GNU tar");
    // And the same tree gives the same bytes.
    let again = d.path().join("again.tar.zst");
    assert!(pack(&src, &again, &[]).status.success());
    assert_eq!(
        fs::read(&again).unwrap(),
        fs::read(&archive).unwrap(),
        "not deterministic"
    );
}

#[test]
fn every_feature_survives_pack_and_the_opt_step() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("opt");
    let _sock = feature_tree(&src);
    let want = expected(&src);
    let archive = d.path().join("opt.tar.zst");
    let out = pack(&src, &archive, &[]);
    assert!(out.status.success());
    let sha = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let s = Scratch::new();
    let cfg = s.config(&[file_url(&archive)], Some(&sha), "", "symlink");
    assert!(s.apply(&cfg).status.success());
    assert_same(&want, &describe(&s.opt()), "olboot opt");
}
