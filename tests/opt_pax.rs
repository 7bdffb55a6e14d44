//! PAX extended and global headers and GNU sparse members read as GNU tar 1.34 reads them
//! (`tar --numeric-owner --xattrs --xattrs-include='*' --acls -xpf`, as root), or refused
//! naming the entry: each global header replaces the one before, xattr names are decoded as
//! GNU tar decodes them (and `olboot pack` escapes them as it does), bsdtar's
//! `LIBARCHIVE.xattr.*` records are ignored, sparse maps GNU tar would read otherwise are
//! refused, NULs ending a PAX header are accepted. Every archive is built here, byte by byte,
//! and GNU tar's extraction of it is the reference. Must run as root.

mod common;
#[path = "opt/gnu.rs"]
mod gnu;
#[path = "opt/support.rs"]
mod support;

use gnu::{
    assert_root, gnu_tar, now_ns, olboot_unpack, pax_record as record, sh, sum_again, tar_file,
    OLD_GNU, POSIX,
};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Sectors two trees' allocations of one file may differ by (ext4 rounds regions to blocks).
const BLOCK_SLACK: u64 = 16;

/// A ustar header: `name`, type `kind`, `size` bytes following, the magic `magic`.
fn header_with(name: &str, kind: u8, size: u64, magic: &[u8; 8]) -> [u8; 512] {
    gnu::ustar(name, kind, size, magic, 0o1670000000)
}

fn header(name: &str, kind: u8, size: u64) -> [u8; 512] {
    header_with(name, kind, size, POSIX)
}

/// Header `h` and `data`, padded to whole blocks.
fn member(h: [u8; 512], data: &[u8]) -> Vec<u8> {
    let mut v = h.to_vec();
    v.extend_from_slice(data);
    v.resize(v.len().div_ceil(512) * 512, 0);
    v
}

/// A regular file `name` holding `data`.
fn file(name: &str, data: &[u8]) -> Vec<u8> {
    member(header(name, b'0', data.len() as u64), data)
}

fn records(pairs: &[(&str, &[u8])]) -> Vec<u8> {
    pairs.iter().flat_map(|(k, v)| record(k, v)).collect()
}

/// A PAX header of type `kind` (`x` or `g`) whose data is `data`.
fn pax(kind: u8, data: &[u8]) -> Vec<u8> {
    member(header("PaxHeaders/x", kind, data.len() as u64), data)
}

/// What olboot must do with an archive.
enum Want {
    /// Unpack it as GNU tar does (which must succeed).
    Same,
    /// Refuse it, naming this entry.
    Refused(&'static str),
}

/// What went wrong with `archive` against `want` (empty: nothing); the GNU tar tree is kept
/// in `reference`.
fn check(archive: &Path, want: &Want, reference: &Path) -> Vec<String> {
    let name = archive.file_name().unwrap().to_string_lossy().into_owned();
    let started = now_ns() - 1_000_000_000;
    let gnu = gnu_tar(archive, reference);
    let (s, out) = olboot_unpack(archive, support::olboot());
    let mut problems = Vec::new();
    match want {
        Want::Same => {
            if let Err(e) = &gnu {
                problems.push(format!("{name}: GNU tar fails: {}", e.trim()));
            } else if !out.status.success() {
                let error = support::opt_step(&s.root())["error"].to_string();
                problems.push(format!("{name}: olboot refused it: {error}"));
            } else {
                let want = common::tree_manifest(reference);
                let got = common::tree_manifest(&s.opt());
                for d in common::manifest_diff(&got, &want, BLOCK_SLACK, started) {
                    problems.push(format!("{name}: {d}"));
                }
            }
        }
        Want::Refused(victim) => {
            if out.status.success() {
                problems.push(format!("{name}: olboot unpacked it (GNU tar: {gnu:?})"));
                return problems;
            }
            let step = support::opt_step(&s.root());
            let error = step["error"].as_str().unwrap_or_default().to_string();
            if common::code(&out) != 1 || step["result"] != "failed" {
                problems.push(format!("{name}: failed without a failed step: {out:?}"));
            }
            if !error.contains(&format!("archive entry \"{victim}\"")) {
                problems.push(format!("{name}: the error does not name {victim}: {error}"));
            }
            if error.lines().count() != 1 || error.len() > 2000 {
                problems.push(format!("{name}: not a short one-line error: {error}"));
            }
            if s.opt().exists() || fs::read_dir(s.root().join("1")).unwrap().count() > 0 {
                problems.push(format!("{name}: olboot left something after refusing"));
            }
        }
    }
    problems
}

/// [`check`] each `(archive, want)` and fail listing every problem.
fn check_all(cases: &[(PathBuf, Want)]) {
    let mut problems = Vec::new();
    for (archive, want) in cases {
        let reference = tempfile::tempdir().unwrap();
        problems.extend(check(archive, want, reference.path()));
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// GNU tar's extraction of `archive`, which must succeed, for facts the cases rely on.
fn gnu_tree(archive: &Path) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    gnu_tar(archive, d.path()).unwrap();
    d
}

fn meta(p: &Path) -> fs::Metadata {
    fs::symlink_metadata(p).unwrap()
}

#[test]
fn each_global_header_replaces_the_one_before() {
    use std::os::unix::fs::MetadataExt;
    assert_root();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let g = |pairs: &[(&str, &[u8])]| pax(b'g', &records(pairs));
    // The uid of the first global header is gone at the second.
    let two = tar_file(
        w,
        "two-globals",
        &[
            g(&[("uid", b"1234")]),
            file("a", b"a"),
            g(&[("gid", b"777")]),
            file("b", b"b"),
        ],
    );
    // A global size read the data of `a`; after the next global header `b` has its own.
    let size = tar_file(
        w,
        "global-size",
        &[
            g(&[("size", b"5")]),
            file("a", b"AAAAA"),
            g(&[("comment", b"c")]),
            file("b", b"B"),
        ],
    );
    // Of one key twice in a global header the first wins (GNU tar applies them last to
    // first), and a value ends at a NUL (it keeps them as C strings).
    let first = tar_file(
        w,
        "global-first-wins",
        &[
            g(&[("uid", b"1"), ("uid", b"2"), ("gid", b"12\0x")]),
            file("a", b"a"),
        ],
    );
    // An xattr in a global header: GNU tar 1.34 takes its name from past its keyword.
    let xattr = tar_file(
        w,
        "global-xattr",
        &[g(&[("SCHILY.xattr.user.g", b"gv")]), file("a", b"a")],
    );
    check_all(&[
        (two.clone(), Want::Same),
        (size.clone(), Want::Same),
        (first.clone(), Want::Same),
        (xattr, Want::Refused("PaxHeaders/x")),
    ]);
    // What GNU tar did, so that the cases above cannot pass for want of a difference.
    let t = gnu_tree(&two);
    assert_eq!(
        (
            meta(&t.path().join("b")).uid(),
            meta(&t.path().join("b")).gid()
        ),
        (0, 777)
    );
    let t = gnu_tree(&size);
    assert_eq!(fs::read(t.path().join("b")).unwrap(), b"B");
    let t = gnu_tree(&first);
    assert_eq!(
        (
            meta(&t.path().join("a")).uid(),
            meta(&t.path().join("a")).gid()
        ),
        (1, 12)
    );
}

/// `olboot` run under `timeout`, so that a quadratic parse fails the test instead of hanging it.
fn olboot_within(secs: u32) -> Command {
    let o = support::olboot();
    let mut c = Command::new("timeout");
    c.arg(secs.to_string()).arg(o.get_program());
    for (k, v) in o.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    c
}

#[test]
fn a_global_header_of_many_records_costs_time_linear_in_its_size() {
    assert_root();
    let work = tempfile::tempdir().unwrap();
    // 1 MiB of tiny distinct records (95,000 of them), then 2,000 files: the reviewer's
    // release build took 37 s on the header alone when each record was looked up in all the
    // ones before.
    let mut data = Vec::new();
    let letters = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    'fill: for a in letters {
        for b in letters {
            for c in letters {
                for d in letters {
                    let key = format!("k{}", String::from_utf8_lossy(&[*a, *b, *c, *d]));
                    let r = record(&key, b"");
                    if data.len() + r.len() > (1 << 20) - 16 {
                        break 'fill;
                    }
                    data.extend(r);
                }
            }
        }
    }
    let mut parts = vec![pax(b'g', &data)];
    parts.extend((0..2000).map(|i| file(&format!("f{i:05}"), b"")));
    let archive = tar_file(work.path(), "global-1mib", &parts);
    let started = Instant::now();
    let (s, out) = olboot_unpack(&archive, olboot_within(120));
    let took = started.elapsed();
    assert!(out.status.success(), "{}", support::stderr(&out));
    assert_eq!(fs::read_dir(s.opt()).unwrap().count(), 2000);
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

#[test]
fn xattr_names_are_decoded_as_gnu_tar_decodes_them() {
    assert_root();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    // GNU tar itself writes `=` as %3D and `%` as %25.
    let made = w.join("gnu-escaped.tar");
    sh(&format!(
        "cd '{w}' && mkdir src && cd src && echo x > f
        setfattr -n 'user.a=b' -v v1 f && setfattr -n 'user.pct%41' -v v2 f
        tar --format=pax --xattrs --xattrs-include='*' -cf '{a}' f",
        w = w.display(),
        a = made.display()
    ));
    // Only %3D and %25 are decoded, upper case only, in one pass from the left.
    let raw = tar_file(
        w,
        "raw-escapes",
        &[
            pax(
                b'x',
                &records(&[("SCHILY.xattr.user.a%3d%41%253D%3D", b"v")]),
            ),
            file("f", b"x"),
        ],
    );
    check_all(&[(made.clone(), Want::Same), (raw.clone(), Want::Same)]);
    let names = |t: &tempfile::TempDir| -> Vec<String> {
        common::xattrs(&t.path().join("f"))
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    };
    assert_eq!(names(&gnu_tree(&made)), ["user.a=b", "user.pct%41"]);
    assert_eq!(names(&gnu_tree(&raw)), ["user.a%3d%41%3D="]);
}

#[test]
fn pack_escapes_xattr_names_as_gnu_tar_does() {
    assert_root();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir(&src).unwrap();
    let f = src.join("f");
    fs::write(&f, "x").unwrap();
    // A name holding '=', one holding '%' before hex digits, one holding a literal "%3D".
    let names = ["user.a=b", "user.pct%41", "user.lit%3Dx"];
    for n in names {
        rustix::fs::setxattr(&f, n, b"v", rustix::fs::XattrFlags::empty()).unwrap();
    }
    let archive = work.path().join("opt.tar.zst");
    support::pack(&src, &archive);
    let gnu = work.path().join("gnu");
    fs::create_dir(&gnu).unwrap();
    let o = Command::new("tar")
        .args([
            "--zstd",
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            "-xpf",
        ])
        .arg(&archive)
        .arg("-C")
        .arg(&gnu)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got: Vec<String> = common::xattrs(&gnu.join("f"))
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let mut want: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    want.sort();
    assert_eq!(got, want, "GNU tar's names from olboot pack");
    // And the unpacker reads them back the same.
    let raw = work.path().join("opt.tar");
    sh(&format!(
        "zstd -q -d -o '{}' '{}'",
        raw.display(),
        archive.display()
    ));
    check_all(&[(raw, Want::Same)]);
}

#[test]
fn libarchive_xattr_records_are_ignored_as_gnu_tar_ignores_them() {
    assert_root();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let only = tar_file(
        w,
        "libarchive-only",
        &[
            pax(b'x', &records(&[("LIBARCHIVE.xattr.user.la", b"dmFs")])),
            file("a", b"a"),
        ],
    );
    // Both for one name, in either order: GNU tar keeps the SCHILY value.
    let both = |name: &str, first_libarchive: bool| {
        let mut r = vec![
            ("SCHILY.xattr.user.x", &b"schily"[..]),
            ("LIBARCHIVE.xattr.user.x", &b"b3RoZXI"[..]),
        ];
        if first_libarchive {
            r.reverse();
        }
        tar_file(w, name, &[pax(b'x', &records(&r)), file("a", b"a")])
    };
    let after = both("libarchive-after", false);
    let before = both("libarchive-before", true);
    check_all(&[
        (only.clone(), Want::Same),
        (after.clone(), Want::Same),
        (before, Want::Same),
    ]);
    assert!(common::xattrs(&gnu_tree(&only).path().join("a")).is_empty());
    assert_eq!(
        common::xattrs(&gnu_tree(&after).path().join("a")),
        [("user.x".to_string(), "736368696c79".to_string())]
    );
}

/// A GNU tar PAX sparse archive (`--sparse-version=VERSION`) of a 1 MiB file with data at
/// 0 and at 600,000.
fn gnu_sparse(dir: &Path, version: &str) -> PathBuf {
    let archive = dir.join(format!("gnu-sparse-{version}.tar"));
    let src = dir.join(format!("src-{version}"));
    sh(&format!(
        "mkdir '{s}' && cd '{s}' && truncate -s 1M sp && printf y | dd of=sp conv=notrunc status=none
        printf z | dd of=sp bs=1 seek=600000 conv=notrunc status=none
        tar --format=pax --sparse --sparse-version={version} -cf '{a}' sp",
        s = src.display(),
        a = archive.display()
    ));
    archive
}

#[test]
fn a_sparse_1_0_region_count_that_overflows_is_refused() {
    assert_root();
    let work = tempfile::tempdir().unwrap();
    let archive = gnu_sparse(work.path(), "1.0");
    let mut bytes = fs::read(&archive).unwrap();
    let map = (0..bytes.len())
        .step_by(512)
        .find(|&i| bytes[i..].starts_with(b"3\n0\n"))
        .expect("GNU tar's sparse map of three regions");
    // 1 + 2 × count wraps to 7 in 64 bits: the same 7 numbers would read as three regions.
    let count = b"9223372036854775811\n";
    let rest: Vec<u8> = bytes[map + 2..map + 512]
        .iter()
        .copied()
        .take_while(|&b| b != 0)
        .collect();
    let block = [&count[..], &rest].concat();
    bytes[map..map + 512].fill(0);
    bytes[map..map + block.len()].copy_from_slice(&block);
    let overflow = work.path().join("count-overflow.tar");
    fs::write(&overflow, bytes).unwrap();
    assert!(gnu_tar(&overflow, tempfile::tempdir().unwrap().path()).is_err());
    check_all(&[(archive, Want::Same), (overflow, Want::Refused("sp"))]);
}

/// An old-GNU sparse header `name` of `size` bytes stored, real size `real`, with these raw
/// 12-byte (offset, length) slot fields and the extension flag.
fn old_gnu_sparse(
    name: &str,
    size: u64,
    real: u64,
    slots: &[(&[u8], &[u8])],
    ext: bool,
) -> [u8; 512] {
    let mut h = header_with(name, b'S', size, OLD_GNU);
    for (i, (off, len)) in slots.iter().enumerate() {
        h[386 + 24 * i..386 + 24 * i + off.len()].copy_from_slice(off);
        h[398 + 24 * i..398 + 24 * i + len.len()].copy_from_slice(len);
    }
    h[482] = u8::from(ext);
    h[483..495].copy_from_slice(format!("{real:011o}\0").as_bytes());
    sum_again(&mut h);
    h
}

fn octal(n: u64) -> Vec<u8> {
    format!("{n:011o}\0").into_bytes()
}

#[test]
fn old_gnu_sparse_slots_end_where_gnu_tar_ends_them() {
    assert_root();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (o0, o512, o1024) = (octal(0), octal(512), octal(1024));
    // A length field starting with NUL ends the map, whatever the offset field holds: the
    // file ends at 512 for GNU tar, not at 1024.
    let nul_len = [b"\0".as_slice(), &octal(0)[1..]].concat();
    let len_ends = tar_file(
        w,
        "slot-nul-length",
        &[member(
            old_gnu_sparse("sp", 512, 1024, &[(&o0, &o512), (&o1024, &nul_len)], false),
            &[b'A'; 512],
        )],
    );
    // An offset field starting with NUL: GNU tar reads past the NUL and refuses the member.
    let nul_off = [b"\0".as_slice(), &octal(1024)[1..]].concat();
    let off_nul = tar_file(
        w,
        "slot-nul-offset",
        &[
            member(
                old_gnu_sparse("sp", 512, 512, &[(&o0, &o512), (&nul_off, &o512)], false),
                &[b'A'; 512],
            ),
            file("evil", b"pwned"),
        ],
    );
    // A map ended in the header that still says extension blocks follow: GNU tar reads them
    // as the file's data.
    let mut ext = vec![0u8; 512];
    ext[..12].copy_from_slice(&o512);
    ext[12..24].copy_from_slice(&o512);
    let ended_ext = tar_file(
        w,
        "ended-then-extended",
        &[[
            old_gnu_sparse("sp", 512, 1024, &[(&o0, &o512)], true).to_vec(),
            ext,
            vec![b'A'; 512],
        ]
        .concat()],
    );
    // Type S under the POSIX magic: GNU tar reads no old-GNU map there.
    let mut posix = old_gnu_sparse("sp", 512, 1024, &[(&o0, &o512), (&o1024, &o0)], false);
    posix[257..265].copy_from_slice(POSIX);
    sum_again(&mut posix);
    let s_posix = tar_file(w, "type-s-posix", &[member(posix, &[b'A'; 512])]);
    // A well-formed one, to show the rule keeps what GNU tar writes.
    let good = tar_file(
        w,
        "good",
        &[member(
            old_gnu_sparse("sp", 512, 1024, &[(&o0, &o512), (&o1024, &o0)], false),
            &[b'A'; 512],
        )],
    );
    assert!(gnu_tar(&off_nul, tempfile::tempdir().unwrap().path()).is_err());
    let len = |a: &Path| meta(&gnu_tree(a).path().join("sp")).len();
    assert_eq!(len(&len_ends), 512);
    assert_eq!(len(&good), 1024);
    check_all(&[
        (len_ends, Want::Refused("sp")),
        (off_nul, Want::Refused("sp")),
        (ended_ext, Want::Refused("sp")),
        (s_posix, Want::Refused("sp")),
        (good, Want::Same),
    ]);
}

#[test]
fn pax_sparse_0_x_is_read_as_gnu_tar_reads_it_or_refused() {
    assert_root();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    // GNU tar's 0.1 records, but for the key `without`.
    let sparse = |map: &[u8], size: &[u8], without: &str| {
        let mut r: Vec<(&str, &[u8])> = vec![
            ("GNU.sparse.numblocks", b"2"),
            ("GNU.sparse.map", map),
            ("GNU.sparse.name", b"sp"),
            ("GNU.sparse.size", size),
        ];
        r.retain(|(k, _)| *k != without);
        pax(b'x', &records(&r))
    };
    let data = |magic| {
        member(
            header_with("GNUSparseFile.0/x", b'0', 512, magic),
            &[b'y'; 512],
        )
    };
    // The map ends at 2048, GNU.sparse.size says 4096: GNU tar ends the file at 2048.
    let short = tar_file(
        w,
        "ends-at-map",
        &[sparse(b"0,512,2048,0", b"4096", ""), data(POSIX)],
    );
    // The same records on an old-GNU header: GNU tar reads 1024 bytes of plain data, the
    // next header included, and `evil` is gone.
    let smuggle = tar_file(
        w,
        "oldgnu-magic",
        &[
            sparse(b"0,512,1024,0", b"1024", ""),
            data(OLD_GNU),
            member(header("evil", b'0', 0), b""),
            file("after", b"x"),
        ],
    );
    // A map without GNU.sparse.numblocks: GNU tar keeps none of it ("excess").
    let countless = tar_file(
        w,
        "no-numblocks",
        &[
            sparse(b"0,512,1024,0", b"1024", "GNU.sparse.numblocks"),
            data(POSIX),
        ],
    );
    // GNU.sparse.realsize without a map or a major: GNU tar reads that many bytes of data.
    let realsize = tar_file(
        w,
        "realsize-only",
        &[
            pax(b'x', &records(&[("GNU.sparse.realsize", b"1024")])),
            data(POSIX),
            member(header("evil", b'0', 0), b""),
        ],
    );
    let fits = tar_file(
        w,
        "fits",
        &[sparse(b"0,512,1024,0", b"1024", ""), data(POSIX)],
    );
    assert_eq!(meta(&gnu_tree(&short).path().join("sp")).len(), 2048);
    assert!(!gnu_tree(&smuggle).path().join("evil").exists());
    check_all(&[
        (short, Want::Refused("sp")),
        (smuggle, Want::Refused("GNUSparseFile.0/x")),
        (countless, Want::Refused("GNUSparseFile.0/x")),
        (realsize, Want::Refused("GNUSparseFile.0/x")),
        (fits, Want::Same),
        (gnu_sparse(w, "0.0"), Want::Same),
        (gnu_sparse(w, "0.1"), Want::Same),
        (gnu_sparse(w, "1.0"), Want::Same),
    ]);
}

#[test]
fn pax_sparse_records_on_a_directory_or_link_are_refused() {
    assert_root();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let sp = pax(
        b'x',
        &records(&[
            ("GNU.sparse.numblocks", b"1"),
            ("GNU.sparse.map", b"0,0"),
            ("GNU.sparse.size", b"0"),
        ]),
    );
    let link = |kind: u8, name: &str| {
        let mut h = header(name, kind, 0);
        h[157] = b't';
        sum_again(&mut h);
        member(h, b"")
    };
    let dir = tar_file(
        w,
        "on-dir",
        &[sp.clone(), member(header("d", b'5', 0), b"")],
    );
    let symlink = tar_file(w, "on-symlink", &[sp.clone(), link(b'2', "s")]);
    let hard = tar_file(w, "on-hardlink", &[file("t", b"x"), sp, link(b'1', "h")]);
    // GNU tar makes regular files of them.
    assert!(meta(&gnu_tree(&dir).path().join("d")).is_file());
    assert!(meta(&gnu_tree(&symlink).path().join("s")).is_file());
    check_all(&[
        (dir, Want::Refused("d")),
        (symlink, Want::Refused("s")),
        (hard, Want::Refused("h")),
    ]);
}

#[test]
fn nuls_ending_a_pax_header_are_read_as_gnu_tar_reads_them() {
    assert_root();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let x = |data: &[u8], name: &str| tar_file(w, name, &[pax(b'x', data), file("victim", b"v")]);
    let uid = record("uid", b"7");
    let nuls = x(&[&uid[..], b"\0\0\0"].concat(), "trailing-nuls");
    // After a NUL where a record would start, GNU tar reads nothing more.
    let junk = x(&[&uid[..], b"\0junk"].concat(), "nul-then-junk");
    let blank = x(&[&uid[..], b"  \0"].concat(), "blanks-then-nul");
    // Anything else there is an error: refused, naming the entry it belongs to.
    let bad = x(&[&uid[..], b"junk"].concat(), "junk");
    check_all(&[
        (nuls.clone(), Want::Same),
        (junk, Want::Same),
        (blank, Want::Same),
        (bad.clone(), Want::Refused("victim")),
    ]);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta(&gnu_tree(&nuls).path().join("victim")).uid(), 7);
    assert!(gnu_tar(&bad, tempfile::tempdir().unwrap().path()).is_err());
}

#[test]
fn a_bad_pax_time_is_shown_as_written() {
    assert_root();
    let work = tempfile::tempdir().unwrap();
    let archive = tar_file(
        work.path(),
        "bad-time",
        &[pax(b'x', &record("mtime", b"-.5")), file("victim", b"v")],
    );
    assert!(gnu_tar(&archive, tempfile::tempdir().unwrap().path()).is_err());
    check_all(&[(archive.clone(), Want::Refused("victim"))]);
    let (s, _) = olboot_unpack(&archive, support::olboot());
    let step = support::opt_step(&s.root());
    let error = step["error"].as_str().unwrap_or_default();
    assert!(error.contains(r#"bad time "-.5""#), "{error}");
}
