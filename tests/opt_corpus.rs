//! Fidelity of the unpacker: on Go's archive/tar test archives and on archives GNU tar and
//! bsdtar make here from a tree with every feature, the tree `olboot apply` unpacks equals
//! the one GNU tar extracts (`tar -xpf --numeric-owner --xattrs --xattrs-include='*' --acls`,
//! as root), entry by entry, or olboot refuses the archive cleanly, naming the entry, and
//! leaves nothing. Must run as root (owners, trusted.* and security.* xattrs).

mod common;
#[path = "opt/gnu.rs"]
mod gnu;
#[path = "opt/support.rs"]
mod support;

use gnu::{assert_root, gnu_tar, now_ns, olboot_unpack, pax_record, sh, sum_again, tar_file};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Archives of the corpus olboot refuses by design, and why.
const REFUSED: &[(&str, &str)] = &[
    (
        "hdr-only.tar",
        "device nodes and a FIFO: olboot never creates them in /opt",
    ),
    (
        "pax-bad-mtime-file.tar",
        "a malformed PAX mtime: GNU tar warns and keeps the header's; olboot refuses to guess",
    ),
    (
        "pax-nul-path.tar",
        "a NUL inside a PAX path: GNU tar cuts the name there; olboot refuses to guess",
    ),
    (
        "gnu-incremental.tar",
        "GNU incremental dumpdirs: after one, GNU tar holds every directory's metadata to the \
         end; olboot refuses rather than reproduce it",
    ),
    (
        "pax-path-hdr.tar",
        "a PAX header and then the end: a cut archive; GNU tar extracts nothing and exits 0",
    ),
];

/// Sectors (512 bytes) two trees' allocations of one file may differ by: GNU tar and olboot
/// write the same regions at the same offsets, but ext4 may round a region's end to its
/// 4 KiB block differently when the write is split differently.
const BLOCK_SLACK: u64 = 16;

fn corpus() -> PathBuf {
    if let Some(d) = std::env::var_os("OLBOOT_CORPUS") {
        return PathBuf::from(d).join("tar-go");
    }
    let beside = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus");
    let base = if beside.exists() {
        beside
    } else {
        PathBuf::from("/work/shared/corpus")
    };
    base.join("tar-go")
}

/// What went wrong with one archive (empty: olboot did what GNU tar did, or refused cleanly
/// an archive listed in [`REFUSED`]).
fn compare(archive: &Path, cmd: Command, refused: &[(&str, &str)]) -> Vec<String> {
    let name = archive.file_name().unwrap().to_string_lossy().into_owned();
    let started = now_ns() - 1_000_000_000;
    let reference = tempfile::tempdir().unwrap();
    let gnu = gnu_tar(archive, reference.path());
    let (s, out) = olboot_unpack(archive, cmd);
    let listed = refused.iter().any(|(n, _)| *n == name);
    let mut problems = Vec::new();
    if out.status.success() {
        if let Err(e) = &gnu {
            problems.push(format!(
                "{name}: GNU tar refuses it ({}) but olboot unpacked it",
                e.trim()
            ));
        }
        if listed {
            problems.push(format!("{name}: listed as refused, but olboot unpacked it"));
        }
        if gnu.is_ok() {
            let want = common::tree_manifest(reference.path());
            let got = common::tree_manifest(&s.opt());
            for d in common::manifest_diff(&got, &want, BLOCK_SLACK, started) {
                problems.push(format!("{name}: {d}"));
            }
        }
        return problems;
    }
    let step = support::opt_step(&s.root());
    let error = step["error"].as_str().unwrap_or_default().to_string();
    if common::code(&out) != 1 || step["result"] != "failed" {
        problems.push(format!(
            "{name}: olboot failed without a failed step: {out:?}"
        ));
    }
    if error.len() > 2000 {
        problems.push(format!("{name}: an error of {} bytes", error.len()));
    }
    if !error.contains("archive entry") && !error.contains("tar stream") {
        problems.push(format!("{name}: the error names no entry: {error}"));
    }
    if s.opt().exists() || std::fs::read_dir(s.root().join("1")).unwrap().count() > 0 {
        problems.push(format!("{name}: olboot left something after refusing"));
    }
    if gnu.is_ok() && !listed {
        problems.push(format!(
            "{name}: olboot refused what GNU tar unpacks: {error}"
        ));
    }
    problems
}

#[test]
fn go_corpus_unpacks_as_gnu_tar_does_or_is_refused() {
    go_corpus(support::olboot);
}

/// The same on a kernel without openat2 (forced by a seccomp filter answering ENOSYS).
#[test]
fn go_corpus_unpacks_the_same_without_openat2() {
    go_corpus(|| common::olboot_denying(&[common::nr::OPENAT2], 38));
}

fn go_corpus(cmd: fn() -> Command) {
    assert_root();
    let dir = corpus();
    let mut archives: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the corpus {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "tar"))
        .collect();
    archives.sort();
    assert!(
        archives.len() > 30,
        "the corpus at {} looks incomplete",
        dir.display()
    );
    let mut problems = Vec::new();
    for a in &archives {
        problems.extend(compare(a, cmd(), REFUSED));
    }
    for (n, _) in REFUSED {
        assert!(
            dir.join(n).exists(),
            "{n} is listed as refused but not in the corpus"
        );
    }
    assert_no_problems(&problems);
}

fn assert_no_problems(problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// `zstd` compressing what is written to the returned writer into `path`.
fn zstd_to(
    path: &Path,
) -> (
    std::process::Child,
    std::io::BufWriter<std::process::ChildStdin>,
) {
    let mut z = Command::new("zstd")
        .args(["-q", "-1", "-f", "-o"])
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let w = std::io::BufWriter::new(z.stdin.take().unwrap());
    (z, w)
}

/// A tree with every feature the unpacker must restore: owners, setuid, nanosecond, negative
/// and far-future mtimes, a sparse file with a hole at the end, xattrs in the user, trusted
/// and security namespaces, access and default ACLs, a file capability, hard links, symlinks,
/// long names, a read-only directory; files of another owner with and without setuid, setgid
/// and sticky bits, small (the writer threads finish them) and over 1 MiB (the unpacking
/// thread does).
fn feature_tree(src: &Path) {
    let long = "n".repeat(150);
    sh(&format!(
        "cd '{src}'
        mkdir -p d/sub ro '{long}/{long}'
        printf 'hello\\n' > d/f
        ln d/f d/f-hard
        ln -s f d/link
        ln -s ../d dlink
        printf x > '{long}/{long}/{long}'
        printf 'set' > setuid && chown 1234:5678 setuid && chmod 4755 setuid
        chown -R 1234:5678 d && chmod 750 d
        printf o > other && chown 1234:5678 other && chmod 640 other
        printf s > sticky && chown 1234:5678 sticky && chmod 1755 sticky
        printf g > sgid && chown 1234:5678 sgid && chmod 2711 sgid
        head -c 3000000 /dev/urandom > big-suid && chown 1234:5678 big-suid && chmod 4750 big-suid
        head -c 2000000 /dev/urandom > big-other && chown 1234:5678 big-other && chmod 604 big-other
        head -c 2000000 /dev/urandom > big && chmod 600 big
        printf data > ro/file && chmod 555 ro
        dd if=/dev/urandom of=sparse bs=4096 count=2 status=none
        dd if=/dev/urandom of=sparse bs=4096 count=1 seek=256 conv=notrunc status=none
        truncate -s 5M sparse
        printf a > old && touch -h -d '1960-05-01 10:00:00.25 UTC' old
        printf b > future && touch -d '2200-01-01 00:00:00.5 UTC' future
        touch -d '2021-03-04 05:06:07.123456789 UTC' d/f
        setfattr -n user.comment -v 'hi there' d/f
        setfattr -n trusted.t -v 0x00ff01 d/f
        setfattr -n security.olboot -v yes d/f
        setfacl -m u:4321:r-x,g:8765:rw- d/f
        setfacl -d -m u:4321:rwx d/sub
        printf '#!/bin/sh\\n' > cap && chmod 755 cap && setcap cap_net_bind_service+ep cap
        touch -h -d '2020-01-01 00:00:00.75 UTC' d/link
        touch -d '2019-06-07 08:09:10.111111111 UTC' d/sub d '{long}'",
        src = src.display()
    ));
}

#[test]
fn gnu_tar_and_bsdtar_archives_unpack_as_gnu_tar_does() {
    assert_root();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    feature_tree(&src);
    let makers = [
        ("gnu", "tar --format=gnu -cf"),
        ("gnu-sparse", "tar --format=gnu --sparse -cf"),
        (
            "pax-xattrs-acls",
            "tar --format=pax --xattrs --xattrs-include=* --acls -cf",
        ),
        (
            "pax-sparse-0.0",
            "tar --format=pax --xattrs --xattrs-include=* --acls --sparse --sparse-version=0.0 -cf",
        ),
        (
            "pax-sparse-0.1",
            "tar --format=pax --sparse --sparse-version=0.1 -cf",
        ),
        (
            "pax-sparse-1.0",
            "tar --format=pax --sparse --sparse-version=1.0 -cf",
        ),
        ("bsdtar-pax", "bsdtar --format=pax -cf"),
        ("bsdtar-gnutar", "bsdtar --format=gnutar -cf"),
    ];
    let mut problems = Vec::new();
    for (name, make) in makers {
        let archive = work.path().join(format!("{name}.tar"));
        sh(&format!(
            "cd '{}' && {make} '{}' .",
            src.display(),
            archive.display()
        ));
        problems.extend(compare(&archive, support::olboot(), &[]));
        if name == "pax-xattrs-acls" {
            assert_features_kept(&archive);
        }
    }
    assert_no_problems(&problems);
}

/// The reference extraction of `archive` has the xattrs, ACLs and capability of the feature
/// tree, so that comparing with it cannot pass by both sides losing them.
fn assert_features_kept(archive: &Path) {
    let d = tempfile::tempdir().unwrap();
    gnu_tar(archive, d.path()).unwrap();
    let names = |p: &str| -> Vec<String> {
        common::xattrs(&d.path().join(p))
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    };
    let f = names("d/f");
    for want in [
        "user.comment",
        "trusted.t",
        "security.olboot",
        "system.posix_acl_access",
    ] {
        assert!(f.contains(&want.to_string()), "d/f lacks {want}: {f:?}");
    }
    assert!(names("cap").contains(&"security.capability".to_string()));
    assert!(names("d/sub").contains(&"system.posix_acl_default".to_string()));
}

/// A GNU-format header: `name`, type `kind`, `size` bytes of content following.
fn header(name: &str, kind: u8, size: u64) -> [u8; 512] {
    gnu::ustar(name, kind, size, gnu::OLD_GNU, 0)
}

/// A zstd archive of one special header of type `kind` holding `size` bytes of 'a', then a
/// small file: what bsdtar and Go refuse over 1 MiB.
fn bomb(path: &Path, kind: u8, size: u64) {
    use std::io::Write;
    let (mut z, mut w) = zstd_to(path);
    w.write_all(&header("././@LongLink", kind, size)).unwrap();
    let chunk = if kind == b'x' {
        // One PAX record as long as the whole header.
        let mut c = format!("{size} path=").into_bytes();
        c.resize(1 << 20, b'a');
        c
    } else {
        vec![b'a'; 1 << 20]
    };
    let mut left = size;
    let mut first = true;
    while left > 0 {
        let part = if first {
            &chunk[..]
        } else {
            &[b'a'; 1 << 20][..]
        };
        first = false;
        let n = left.min(part.len() as u64) as usize;
        w.write_all(&part[..n]).unwrap();
        left -= n as u64;
    }
    w.write_all(&vec![0u8; (512 - size % 512) as usize % 512])
        .unwrap();
    w.write_all(&header("file", b'0', 0)).unwrap();
    w.write_all(&[0u8; 1024]).unwrap();
    drop(w);
    assert!(z.wait().unwrap().success());
}

/// Peak RSS in KiB of a run, from GNU time's `-v` output on stderr.
fn peak_rss_kib(stderr: &str) -> u64 {
    stderr
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no RSS in: {stderr}"))
}

#[test]
fn memory_bombs_are_refused_in_bounded_memory_with_short_errors() {
    assert_root();
    let work = tempfile::tempdir().unwrap();
    for (name, kind, size, refusal) in [
        (
            "long-name-1g",
            b'L',
            1u64 << 30,
            "GNU long name of 1073741824 bytes refused",
        ),
        (
            "pax-1g",
            b'x',
            1 << 30,
            "PAX header of 1073741824 bytes refused",
        ),
        ("long-name-900k", b'L', 900 << 10, "archive entry \"aaaa"),
    ] {
        let archive = work.path().join(format!("{name}.tar.zst"));
        bomb(&archive, kind, size);
        let s = support::Scratch::new();
        let url = format!("file://{}", archive.display());
        let config = s.config(&[url], None, "", "symlink");
        let mut c = Command::new("/usr/bin/time");
        c.arg("-v").arg(env!("CARGO_BIN_EXE_olboot"));
        let out = s.run_with(c, "apply", &config, &[]);
        assert_eq!(out.status.code(), Some(1), "{name}");
        let rss = peak_rss_kib(&String::from_utf8_lossy(&out.stderr));
        eprintln!("{name}: peak RSS {rss} KiB");
        assert!(rss <= 32 * 1024, "{name}: peak RSS {rss} KiB over 32 MiB");
        let report = std::fs::read(s.root().join("var/lib/olboot/report.json")).unwrap();
        assert!(
            report.len() < 4096,
            "{name}: a report of {} bytes",
            report.len()
        );
        let error = support::opt_step(&s.root())["error"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(error.contains(refusal), "{name}: {error}");
        assert!(
            error.len() < 1000,
            "{name}: an error of {} bytes",
            error.len()
        );
        assert!(
            out.stderr.len() < 16 * 1024,
            "{name}: {} bytes of log",
            out.stderr.len()
        );
        assert!(
            !s.opt().exists() && !s.staging().exists(),
            "{name}: left a tree"
        );
    }
}

/// A tar.zst of one file of `size` zero bytes: quick to make, slow enough to unpack.
fn big_zero_file(path: &Path, size: u64) {
    use std::io::Write;
    let (mut z, mut w) = zstd_to(path);
    w.write_all(&header("big", b'0', size)).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..size >> 20 {
        w.write_all(&zeros).unwrap();
    }
    w.write_all(&[0u8; 1024]).unwrap();
    drop(w);
    assert!(z.wait().unwrap().success());
}

#[test]
fn sigterm_mid_unpack_removes_staging_and_reports() {
    let s = support::Scratch::new();
    let archive = s.dir.path().join("big.tar.zst");
    big_zero_file(&archive, 1 << 30);
    let config = s.config(
        &[format!("file://{}", archive.display())],
        None,
        "",
        "symlink",
    );
    let big = s.staging().join("big");
    let ready = || std::fs::metadata(&big).is_ok_and(|m| m.len() > 16 << 20);
    support::sigterm_when(&s, &config, &[], ready, Duration::from_secs(10));
}

#[test]
fn sigterm_mid_fetch_removes_staging_and_reports() {
    let data = std::fs::read(corpus().join("gnu.tar")).unwrap();
    let data = zstd::encode_all(&data[..], 3).unwrap();
    let sha: String = Sha256::digest(&data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let server = support::Server::start(data, vec![support::Fault::Trickle(40)]);
    let s = support::Scratch::new();
    let config = s.config(&[server.url("opt.tar.zst")], Some(&sha), "", "symlink");
    let ready = || !server.requests().is_empty();
    support::sigterm_when(&s, &config, &[], ready, Duration::from_secs(10));
}

/// Unmounts on drop, even when the test fails.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn xattrs_a_filesystem_refuses_are_warnings_naming_the_entry() {
    assert_root();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    sh(&format!(
        "cd '{}' && printf x > f && setfattr -n user.comment -v hi f && \
         setfacl -m u:4321:r-x f && printf y > plain",
        src.display()
    ));
    let archive = work.path().join("a.tar");
    sh(&format!(
        "cd '{}' && tar --format=pax --xattrs --xattrs-include=* --acls -cf '{}' .",
        src.display(),
        archive.display()
    ));
    let s = support::Scratch::new();
    // ramfs has no xattrs at all: every setxattr answers EOPNOTSUPP.
    sh(&format!(
        "mount -t ramfs ramfs '{}'",
        s.root().join("1").display()
    ));
    let _m = Mounted(s.root().join("1"));
    let zst = s.dir.path().join("a.tar.zst");
    sh(&format!(
        "zstd -q -f -o '{}' '{}'",
        zst.display(),
        archive.display()
    ));
    let config = s.config(&[format!("file://{}", zst.display())], None, "", "symlink");
    let out = s.apply(&config);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let warnings: Vec<String> = support::opt_step(&s.root())["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect();
    for want in ["user.comment", "system.posix_acl_access"] {
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("archive entry \"f\"") && w.contains(want)),
            "no warning for {want} of f: {warnings:?}"
        );
    }
    assert!(
        !warnings.iter().any(|w| w.contains("plain")),
        "{warnings:?}"
    );
    assert_eq!(std::fs::read(s.opt().join("f")).unwrap(), b"x");
}

#[test]
fn a_directory_listed_twice_keeps_its_last_metadata_as_with_gnu_tar() {
    assert_root();
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("twice.tar");
    sh(&format!(
        "cd '{w}' && mkdir -p src/d/e && printf x > src/d/e/f && cd src
        touch -d '2001-01-01 00:00:00.5 UTC' d d/e && chmod 755 d
        tar --format=pax -cf '{a}' d
        chmod 700 d && chown 42:43 d && touch -d '1999-09-09 09:09:09.123456789 UTC' d
        tar --format=pax -rf '{a}' --no-recursion d",
        w = work.path().display(),
        a = archive.display()
    ));
    let problems = compare(&archive, support::olboot(), &[]);
    assert_no_problems(&problems);
    let s_ref = tempfile::tempdir().unwrap();
    gnu_tar(&archive, s_ref.path()).unwrap();
    let d = common::tree_manifest(s_ref.path());
    assert!(
        d.iter()
            .any(|e| e.path == Path::new("d") && e.mode == 0o700 && e.uid == 42),
        "GNU tar did not keep the last entry's metadata: {d:?}"
    );
}

#[test]
fn a_v7_directory_is_a_directory_as_with_gnu_tar() {
    assert_root();
    use std::io::Write;
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("v7dir.tar");
    let mut f = std::fs::File::create(&archive).unwrap();
    let mut dir = header("v7dir/", b'0', 0);
    // V7: no magic; the checksum again without it.
    dir[257..265].fill(0);
    dir[148..156].fill(b' ');
    let sum: u32 = dir.iter().map(|&b| u32::from(b)).sum();
    dir[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    f.write_all(&dir).unwrap();
    f.write_all(&header("v7dir/file", b'0', 0)).unwrap();
    f.write_all(&[0u8; 1024]).unwrap();
    drop(f);
    assert_no_problems(&compare(&archive, support::olboot(), &[]));
    let reference = tempfile::tempdir().unwrap();
    gnu_tar(&archive, reference.path()).unwrap();
    assert!(reference.path().join("v7dir").is_dir());
}

#[test]
fn a_file_put_in_a_setgid_directory_after_it_was_left_keeps_its_group() {
    assert_root();
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("setgid.tar");
    // The directory comes, is left (GNU tar sets its mode then), and a file is put in it
    // later: the file would take the directory's group if olboot did not chown it.
    sh(&format!(
        "cd '{w}' && mkdir -p src/shared src/other && cd src
        chown 0:1000 shared && chmod 2775 shared && printf x > f && chown 0:0 f
        tar --format=pax -cf '{a}' --no-recursion shared other
        mv f shared/f && tar --format=pax -rf '{a}' shared/f",
        w = work.path().display(),
        a = archive.display()
    ));
    assert_no_problems(&compare(&archive, support::olboot(), &[]));
    let reference = tempfile::tempdir().unwrap();
    gnu_tar(&archive, reference.path()).unwrap();
    let m = std::fs::metadata(reference.path().join("shared/f")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::gid(&m),
        0,
        "GNU tar keeps the file's group"
    );
}

#[test]
fn nested_directories_with_big_xattrs_are_refused_in_bounded_memory() {
    use std::io::Write;
    assert_root();
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("deep-xattrs.tar.zst");
    let (mut z, mut w) = zstd_to(&archive);
    let mut name = String::new();
    for _ in 0..24 {
        name.push_str("d/");
        let rec = pax_record("SCHILY.xattr.user.big", &vec![b'v'; 900 << 10]);
        w.write_all(&header("PaxHeader", b'x', rec.len() as u64))
            .unwrap();
        w.write_all(&rec).unwrap();
        w.write_all(&vec![0u8; (512 - rec.len() % 512) % 512])
            .unwrap();
        w.write_all(&header(&name, b'5', 0)).unwrap();
    }
    w.write_all(&[0u8; 1024]).unwrap();
    drop(w);
    assert!(z.wait().unwrap().success());
    let s = support::Scratch::new();
    let config = s.config(
        &[format!("file://{}", archive.display())],
        None,
        "",
        "symlink",
    );
    let mut c = Command::new("/usr/bin/time");
    c.arg("-v").arg(env!("CARGO_BIN_EXE_olboot"));
    let out = s.run_with(c, "apply", &config, &[]);
    assert_eq!(out.status.code(), Some(1));
    let rss = peak_rss_kib(&String::from_utf8_lossy(&out.stderr));
    eprintln!("deep xattrs: peak RSS {rss} KiB");
    assert!(rss <= 32 * 1024, "peak RSS {rss} KiB over 32 MiB");
    let error = support::opt_step(&s.root())["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        error.contains("directories waiting for their metadata"),
        "{error}"
    );
    assert!(!s.opt().exists() && !s.staging().exists());
}

/// A file entry `name` holding `data`, its header changed by `edit`.
fn entry_with(name: &str, data: &[u8], edit: impl Fn(&mut [u8; 512])) -> Vec<u8> {
    let mut h = header(name, b'0', data.len() as u64);
    edit(&mut h);
    let mut v = h.to_vec();
    v.extend_from_slice(data);
    v.resize(v.len().div_ceil(512) * 512, 0);
    v
}

#[test]
fn numeric_fields_and_pax_records_are_read_as_gnu_tar_reads_them_or_refused() {
    assert_root();
    let work = tempfile::tempdir().unwrap();
    let field = |at: usize, v: &'static [u8]| {
        move |h: &mut [u8; 512]| {
            h[at..at + v.len()].copy_from_slice(v);
            sum_again(h);
        }
    };
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        // A leading NUL is skipped: `f` holds 1024 bytes, which hide `evil` from both.
        (
            "nul-size",
            [
                entry_with("f", &[b'x'; 1024], |h| {
                    h[124..136].copy_from_slice(b"\x000000002000\0");
                    sum_again(h)
                }),
                entry_with("evil", b"pwned", |_| {}),
            ]
            .concat(),
            true,
        ),
        (
            "nul-mode-uid-mtime",
            entry_with("f", b"x", |h| {
                h[100..108].copy_from_slice(b"\x000000755");
                h[108..116].copy_from_slice(b"\x000001750");
                h[136..148].copy_from_slice(b"\x0014524764000");
                sum_again(h)
            }),
            true,
        ),
        // Blanks after a PAX record's length are skipped: the file is `ab`.
        (
            "pax-blanks",
            [pax_entry(b"12  path=ab\n"), entry_with("f", b"x", |_| {})].concat(),
            true,
        ),
        // GNU tar refuses these (exit 2); olboot must too.
        (
            "blank-uid",
            entry_with("f", b"x", field(108, b"        ")),
            false,
        ),
        (
            "pax-plus",
            [pax_entry(b"+11 path=ab\n"), entry_with("f", b"x", |_| {})].concat(),
            false,
        ),
        (
            "mode-0x81",
            entry_with("f", b"x", field(100, b"\x81\0\0\0\0\0\x01\xa4")),
            false,
        ),
    ];
    let mut problems = Vec::new();
    for (name, body, gnu_unpacks) in cases {
        let archive = work.path().join(format!("{name}.tar"));
        std::fs::write(&archive, [body, vec![0; 1024]].concat()).unwrap();
        let reference = tempfile::tempdir().unwrap();
        let gnu = gnu_tar(&archive, reference.path());
        assert_eq!(gnu.is_ok(), gnu_unpacks, "{name}: GNU tar: {gnu:?}");
        problems.extend(compare(&archive, support::olboot(), &[]));
    }
    assert_no_problems(&problems);
}

/// A base-256 checksum: GNU tar reads the checksum as octal only, and refuses the header.
#[test]
fn a_base_256_checksum_is_refused_as_gnu_tar_does() {
    assert_root();
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("b256sum.tar");
    let mut h = header("f", b'0', 1);
    sum_again(&mut h);
    // The sum counts the field as eight spaces whatever it holds: the same sum, in base-256.
    let sum = u32::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap(), 8).unwrap();
    h[148] = 0x80;
    h[149..154].fill(0);
    h[154] = (sum >> 8) as u8;
    h[155] = sum as u8;
    let body = [h.to_vec(), b"x".to_vec(), vec![0; 511 + 1024]].concat();
    std::fs::write(&archive, body).unwrap();
    let reference = tempfile::tempdir().unwrap();
    assert!(gnu_tar(&archive, reference.path()).is_err());
    assert_no_problems(&compare(&archive, support::olboot(), &[]));
}

/// A PAX extended header holding `records`, as whole blocks.
fn pax_entry(records: &[u8]) -> Vec<u8> {
    let mut h = header("PaxHeaders/x", b'x', records.len() as u64);
    sum_again(&mut h);
    let mut v = h.to_vec();
    v.extend_from_slice(records);
    v.resize(v.len().div_ceil(512) * 512, 0);
    v
}

/// What GNU tar does late (directory metadata, symlinks out of the tree) or reads its own way
/// (names as written, finer-than-nanosecond times): olboot does the same, or refuses.
#[test]
fn what_gnu_tar_does_late_is_done_as_late_or_refused() {
    assert_root();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    // A symlink out of the tree holds its directory to the end: an entry put in `a` after
    // `b` came must not leave `a` with a new mtime.
    let held = w.join("held.tar");
    sh(&format!(
        "cd '{w}' && mkdir -p src/a src/b && cd src && ln -s /usr/x a/s && printf x > a/f
        touch -h -d '2001-01-01 UTC' a a/s b a/f
        tar --format=pax -cf '{a}' --no-recursion a a/s b a/f",
        w = w.display(),
        a = held.display()
    ));
    // The same name again after a symlink out of the tree: GNU tar keeps the first.
    let twice = w.join("twice.tar");
    sh(&format!(
        "cd '{w}' && mkdir t && cd t && ln -s /usr/a s && tar -cf '{a}' s
        ln -sfn /usr/b s && tar -rf '{a}' s",
        w = w.display(),
        a = twice.display()
    ));
    let f = |name: &str, data: &[u8]| entry_with(name, data, |_| {});
    let dot = tar_file(
        w,
        "dot",
        &[
            entry_with("./a/", b"", |h| {
                h[156] = b'5';
                sum_again(h)
            }),
            f("a/f", b"x"),
        ],
    );
    let time = tar_file(
        w,
        "time",
        &[
            pax_entry(&pax_record("mtime", b"-1.0000000001")),
            f("f", b"x"),
        ],
    );
    // A PAX sparse 1.0 file of 1 MiB, data only at its start, its map cut to that region:
    // GNU tar ends the file where the map ends.
    let sparse = w.join("short-sparse.tar");
    sh(&format!(
        "cd '{w}' && mkdir sp && cd sp && truncate -s 1M sp && printf y | dd of=sp conv=notrunc
        tar --format=pax --sparse --sparse-version=1.0 -cf '{a}' sp",
        w = w.display(),
        a = sparse.display()
    ));
    let mut bytes = std::fs::read(&sparse).unwrap();
    let map = (0..bytes.len())
        .step_by(512)
        .find(|&i| bytes[i..].starts_with(b"2\n0\n"))
        .expect("GNU tar's sparse map of two regions");
    bytes[map] = b'1';
    std::fs::write(&sparse, bytes).unwrap();
    let refused = [
        ("twice.tar", "the name of a symlink out of the tree again"),
        (
            "short-sparse.tar",
            "a sparse map that ends before the file's size",
        ),
    ];
    let mut problems = Vec::new();
    for archive in [&held, &twice, &dot, &time, &sparse] {
        let reference = tempfile::tempdir().unwrap();
        assert!(
            gnu_tar(archive, reference.path()).is_ok(),
            "GNU tar fails on {archive:?}"
        );
        problems.extend(compare(archive, support::olboot(), &refused));
    }
    assert_no_problems(&problems);
    // What GNU tar did, so that the cases above cannot pass for want of a difference.
    let reference = tempfile::tempdir().unwrap();
    gnu_tar(&held, reference.path()).unwrap();
    let a = std::fs::symlink_metadata(reference.path().join("a")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::mtime(&a), 978_307_200);
    let reference = tempfile::tempdir().unwrap();
    gnu_tar(&sparse, reference.path()).unwrap();
    let len = std::fs::metadata(reference.path().join("sp"))
        .unwrap()
        .len();
    assert!(len > 0 && len < 1 << 20, "GNU tar made it {len} bytes");
}

/// A bad PAX record or header field fails naming the entry it belongs to.
#[test]
fn a_bad_field_fails_naming_its_entry() {
    assert_root();
    let work = tempfile::tempdir().unwrap();
    let bad_time = [
        pax_entry(&pax_record("mtime", b"12x")),
        entry_with("victim/name", b"x", |_| {}),
    ];
    let bad_mode = [entry_with("victim/mode", b"x", |h| {
        h[100..108].copy_from_slice(b"07x5\0\0\0\0");
        sum_again(h)
    })];
    for (name, entries, victim) in [
        ("bad-time", &bad_time[..], "victim/name"),
        ("bad-mode", &bad_mode[..], "victim/mode"),
    ] {
        let archive = tar_file(work.path(), name, entries);
        let (s, out) = olboot_unpack(&archive, support::olboot());
        assert_eq!(common::code(&out), 1, "{name}");
        let error = support::opt_step(&s.root())["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(error.contains(victim), "{name}: {error}");
    }
}

/// PAX sparse records where GNU tar reads them its own way: the same result, or refused.
#[test]
fn pax_sparse_records_are_read_as_gnu_tar_reads_them_or_refused() {
    assert_root();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let data = entry_with("GNUSparseFile.0/x", &[b'y'; 512], |_| {});
    let map = |extra: &[Vec<u8>]| {
        [
            pax_record("GNU.sparse.numblocks", b"1"),
            pax_record("GNU.sparse.map", b"0,512"),
        ]
        .iter()
        .chain(extra)
        .cloned()
        .collect::<Vec<_>>()
        .concat()
    };
    // GNU.sparse.name wins over a later path. The data header is POSIX ustar: under the
    // old-GNU magic GNU tar does not read PAX sparse records at all (olboot refuses that), and
    // the map ends with an empty region at the file's end, as GNU tar writes one.
    let named = [
        pax_record("GNU.sparse.numblocks", b"2"),
        pax_record("GNU.sparse.map", b"0,512,1024,0"),
        pax_record("GNU.sparse.size", b"1024"),
        pax_record("GNU.sparse.name", b"f"),
        pax_record("path", b"g"),
    ]
    .concat();
    let posix = entry_with("GNUSparseFile.0/x", &[b'y'; 512], |h| {
        h[257..265].copy_from_slice(b"ustar\x0000");
        sum_again(h)
    });
    let named = tar_file(w, "named", &[pax_entry(&named), posix]);
    // A map without GNU.sparse.size, and sparse records in a global header: GNU tar makes
    // sparse files of them by rules olboot does not follow.
    let sizeless = tar_file(w, "sizeless", &[pax_entry(&map(&[])), data.clone()]);
    let mut global = header("GlobalHead", b'g', 0);
    let records = pax_record("GNU.sparse.size", b"1024");
    global[124..136].copy_from_slice(format!("{:011o}\0", records.len()).as_bytes());
    sum_again(&mut global);
    let mut g = global.to_vec();
    g.extend_from_slice(&records);
    g.resize(g.len().div_ceil(512) * 512, 0);
    let global = tar_file(w, "global", &[g, pax_entry(&map(&[])), data]);
    let refused = [
        ("sizeless.tar", "a sparse map without its size"),
        ("global.tar", "sparse records in a global header"),
    ];
    let mut problems = Vec::new();
    for archive in [&named, &sizeless, &global] {
        let reference = tempfile::tempdir().unwrap();
        assert!(
            gnu_tar(archive, reference.path()).is_ok(),
            "GNU tar fails on {archive:?}"
        );
        problems.extend(compare(archive, support::olboot(), &refused));
    }
    assert_no_problems(&problems);
    let reference = tempfile::tempdir().unwrap();
    gnu_tar(&named, reference.path()).unwrap();
    assert_eq!(
        std::fs::metadata(reference.path().join("f")).unwrap().len(),
        1024
    );
}
