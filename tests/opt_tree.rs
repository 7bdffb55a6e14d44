//! The shape of the tree the unpacker makes, against GNU tar 1.34's extraction of the same
//! archive (`tar --numeric-owner --xattrs --xattrs-include='*' --acls -xpf`, as root): the
//! parents an archive omits, names ending in `/.`, the top directory's own metadata, ACLs
//! inherited from a parent, xattrs of symlinks, and the memory the waiting directories take.
//! The archives are built here from raw headers, so each one holds exactly the corner it tests.
//! Must run as root (owners, trusted.* xattrs).

mod common;
#[path = "opt/gnu.rs"]
mod gnu;
#[path = "opt/support.rs"]
mod support;

use gnu::{assert_root, now_ns, pax_record as record, zstd_config as serve};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A ustar header (512 bytes) as GNU tar reads it: `kind` is the type flag.
fn header(name: &str, kind: u8, size: usize, mode: u32, mtime: u64, link: &str) -> Vec<u8> {
    assert!(
        name.len() <= 100 && link.len() <= 100,
        "names of at most 100 bytes"
    );
    let mut h = vec![0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |h: &mut [u8], at: usize, width: usize, v: u64| {
        let s = format!("{v:0w$o}\0", w = width - 1);
        h[at..at + width].copy_from_slice(s.as_bytes());
    };
    octal(&mut h, 100, 8, mode.into());
    octal(&mut h, 108, 8, 0);
    octal(&mut h, 116, 8, 0);
    octal(&mut h, 124, 12, size as u64);
    octal(&mut h, 136, 12, mtime);
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..265].copy_from_slice(b"ustar\x0000");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

fn padded(mut data: Vec<u8>) -> Vec<u8> {
    data.resize(data.len().div_ceil(512) * 512, 0);
    data
}

/// A regular file entry with its data.
fn file(name: &str, data: &[u8], mode: u32) -> Vec<u8> {
    let mut v = header(name, b'0', data.len(), mode, 1_000_000_000, "");
    v.extend(padded(data.to_vec()));
    v
}

fn dir(name: &str, mode: u32, mtime: u64) -> Vec<u8> {
    header(name, b'5', 0, mode, mtime, "")
}

fn link(name: &str, kind: u8, target: &str) -> Vec<u8> {
    header(name, kind, 0, 0o777, 1_000_000_000, target)
}

/// A PAX extended header holding `records`, for the entry after it.
fn pax(records: &[Vec<u8>]) -> Vec<u8> {
    let data = records.concat();
    let mut v = header("PaxHeaders/x", b'x', data.len(), 0o644, 0, "");
    v.extend(padded(data));
    v
}

/// The entries and the end-of-archive blocks, written to `dir/name`.
fn archive(dir: &Path, name: &str, entries: &[Vec<u8>]) -> PathBuf {
    let mut bytes = entries.concat();
    bytes.extend_from_slice(&[0u8; 1024]);
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// `c` run with the umask `umask` (set in the child only: the tests' threads share ours).
fn with_umask(mut c: Command, umask: u32) -> Command {
    // SAFETY: umask is async-signal-safe and touches nothing but the child's own state.
    unsafe {
        c.pre_exec(move || {
            libc::umask(umask as libc::mode_t);
            Ok(())
        });
    }
    c
}

/// GNU tar's extraction of `archive` into the new directory `dest` under `umask`: Ok, or its
/// stderr.
fn gnu_tar(archive: &Path, dest: &Path, umask: u32) -> Result<(), String> {
    // Made as olboot makes its staging directory: 0777 less the umask.
    std::fs::create_dir_all(dest).unwrap();
    let mode = std::fs::Permissions::from_mode(0o777 & !umask);
    std::fs::set_permissions(dest, mode).unwrap();
    gnu::run_gnu(with_umask(gnu::gnu_tar_command(archive, dest), umask))
}

/// `olboot apply` of `archive` (zstd-compressed, as the store holds it) under `umask`, into
/// the scratch root `s` (see [`support::Scratch`]).
fn olboot_unpack(s: &support::Scratch, archive: &Path, umask: u32) -> Output {
    let config = serve(s, archive);
    s.run_with(with_umask(support::olboot(), umask), "apply", &config, &[])
}

/// The top directory's mode and, when the archive lists it, its mtime (a top the archive
/// does not list has the time of the last entry made in it: not compared).
fn top(p: &Path, with_mtime: bool) -> (u32, Option<i64>) {
    let m = std::fs::metadata(p).unwrap();
    (m.mode() & 0o7777, with_mtime.then(|| m.mtime()))
}

/// Unpack the archive made of `entries` with GNU tar and with olboot under `umask`, and
/// assert both trees are the same, entry by entry and at the top (its mtime too if
/// `top_mtime`). Returns the scratch root, for more checks.
fn assert_as_gnu(entries: &[Vec<u8>], umask: u32, top_mtime: bool) -> support::Scratch {
    assert_root();
    let s = support::Scratch::new();
    let a = archive(s.dir.path(), "a.tar", entries);
    let started = now_ns() - 1_000_000_000;
    let gnu = s.dir.path().join("gnu");
    gnu_tar(&a, &gnu, umask).expect("GNU tar extracts it");
    let out = olboot_unpack(&s, &a, umask);
    assert!(
        out.status.success(),
        "olboot failed: {}",
        common::stderr(&out)
    );
    assert_same_entries(&s.opt(), &gnu, started);
    assert_eq!(
        top(&s.opt(), top_mtime),
        top(&gnu, top_mtime),
        "the top directory (olboot's, then GNU tar's)"
    );
    s
}

/// Assert olboot's tree `opt` and GNU tar's `gnu` hold the same entries (directories both
/// made after `started` are not compared by mtime).
fn assert_same_entries(opt: &Path, gnu: &Path, started: i128) {
    let want = common::tree_manifest(gnu);
    let got = common::tree_manifest(opt);
    let diff = common::manifest_diff(&got, &want, 16, started);
    assert!(
        diff.is_empty(),
        "olboot's tree, then GNU tar's:\n{}",
        diff.join("\n")
    );
}

/// Assert GNU tar fails on the archive made of `entries` and olboot refuses it with an error
/// naming the entry `name`, leaving nothing.
fn assert_refused(entries: &[Vec<u8>], name: &str) {
    assert_root();
    let s = support::Scratch::new();
    let a = archive(s.dir.path(), "a.tar", entries);
    let gnu = gnu_tar(&a, &s.dir.path().join("gnu"), 0o022);
    assert!(gnu.is_err(), "GNU tar extracts it: the test means nothing");
    assert_olboot_refuses(&s, &a, name);
}

/// Assert olboot refuses `archive` with an error naming the entry `name`, leaving nothing.
fn assert_olboot_refuses(s: &support::Scratch, archive: &Path, name: &str) {
    let out = olboot_unpack(s, archive, 0o022);
    assert_eq!(common::code(&out), 1, "olboot did not refuse it");
    let step = support::opt_step(&s.root());
    let error = step["error"].as_str().unwrap_or_default();
    assert_eq!(step["result"], "failed", "{step}");
    let named = format!("archive entry {name:?}");
    assert!(
        error.contains(&named),
        "the error names no {named}: {error}"
    );
    assert!(!s.opt().exists(), "opt.path made");
    s.assert_nothing_beside();
}

#[test]
fn omitted_parents_get_0777_less_the_umask() {
    for umask in [0o002, 0o022, 0o077] {
        assert_as_gnu(&[file("a/b/f", b"x", 0o644)], umask, false);
    }
}

#[test]
fn a_non_directory_named_with_a_trailing_dot_is_refused() {
    assert_refused(&[file("x/.", b"data", 0o644)], "x/.");
    assert_refused(&[link("s/.//", b'2', "t")], "s/.//");
    assert_refused(&[file("a", b"x", 0o644), link("b/.", b'1', "a")], "b/.");
}

#[test]
fn a_hard_link_to_a_name_ending_in_a_slash_or_dot_is_refused() {
    for target in ["a/", "a/.", "a//"] {
        assert_refused(&[file("a", b"data", 0o644), link("b", b'1', target)], "b");
    }
}

#[test]
fn a_symlink_keeps_a_target_ending_in_a_slash_or_dot() {
    // GNU tar makes these as they are: no refusal here.
    assert_as_gnu(
        &[
            file("a", b"data", 0o644),
            link("s", b'2', "a/"),
            link("t", b'2', "a/."),
            link("l/", b'1', "a"),
        ],
        0o022,
        false,
    );
}

/// 45 nested directories, each after a 1 MiB PAX header of 50,000 xattrs of 3-byte names
/// and empty values: 150 KB of names per directory, but 4 MB of memory while it waits.
#[test]
fn directories_with_many_small_xattrs_wait_in_bounded_memory() {
    assert_root();
    let chars: Vec<u8> = (b'a'..=b'z')
        .chain(b'A'..=b'Z')
        .chain(b'0'..=b'9')
        .collect();
    let mut records = Vec::new();
    let mut len = 0;
    'fill: for a in &chars {
        for b in &chars {
            for c in &chars {
                let name = String::from_utf8(vec![*a, *b, *c]).unwrap();
                let r = record(&format!("SCHILY.xattr.{name}"), b"");
                if len + r.len() > (1 << 20) - 64 {
                    break 'fill;
                }
                len += r.len();
                records.push(r);
            }
        }
    }
    let header = pax(&records);
    let mut entries = Vec::new();
    let mut name = String::new();
    for _ in 0..45 {
        name.push_str("d/");
        entries.push(header.clone());
        entries.push(dir(&name, 0o755, 5));
    }
    let s = support::Scratch::new();
    let config = serve(&s, &archive(s.dir.path(), "a.tar", &entries));
    // Through GNU time, not wait4 here: a child's peak RSS counts this process's memory as
    // it was at the fork (the archive built above, 45 MB).
    let mut c = Command::new("/usr/bin/time");
    c.arg("-v").arg(env!("CARGO_BIN_EXE_olboot"));
    let out = s.run_with(c, "apply", &config, &[]);
    let stderr = common::stderr(&out);
    let rss: u64 = stderr
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no RSS in: {stderr}"));
    eprintln!("peak RSS {rss} KiB");
    assert_eq!(common::code(&out), 1);
    let error = support::opt_step(&s.root())["error"].to_string();
    assert!(
        error.contains("directories waiting for their metadata"),
        "{error}"
    );
    assert!(rss <= 32 * 1024, "peak RSS {rss} KiB over 32 MiB");
}

/// A directory gets its default ACL when the archive leaves it; entries put in it after that
/// inherit nothing: GNU tar sets their modes and ACLs as the archive has them.
#[test]
fn entries_made_in_a_directory_with_a_default_acl_inherit_nothing() {
    let acl = record(
        "SCHILY.acl.default",
        b"user::rwx,user:1234:rwx,group::---,mask::rwx,other::---",
    );
    let s = assert_as_gnu(
        &[
            pax(&[acl]),
            dir("d/", 0o755, 5),
            dir("e/", 0o755, 6),
            file("d/f", b"x", 0o644),
            file("d/p", b"x", 0o600),
            file("d/x/g", b"y", 0o644),
            dir("d/y/", 0o751, 7),
            file("d/y/h", b"z", 0o640),
        ],
        0o002,
        false,
    );
    assert_eq!(top(&s.opt().join("d/f"), false).0, 0o644);
}

/// opt.path's parent has a default ACL: the staging directory inherits it, and must not pass
/// it on: GNU tar's entries come out with the archive's modes and no ACLs.
#[test]
fn a_default_acl_above_opt_path_is_not_inherited() {
    assert_root();
    let s = support::Scratch::new();
    let a = archive(
        s.dir.path(),
        "a.tar",
        &[
            dir("d/", 0o755, 5),
            file("d/f", b"x", 0o644),
            file("g", b"y", 0o664),
            file("i/h", b"z", 0o644),
        ],
    );
    let above = s.dir.path().join("above");
    std::fs::create_dir(&above).unwrap();
    for d in [&above, &s.root().join("1")] {
        let st = Command::new("setfacl")
            .args(["-d", "-m", "u::rwx,u:1234:rwx,g::---,o::---"])
            .arg(d)
            .status()
            .unwrap();
        assert!(st.success(), "setfacl");
    }
    // GNU tar into a directory made where opt.path is made, as the staging directory is.
    let gnu = above.join("gnu");
    std::fs::create_dir(&gnu).unwrap();
    let started = now_ns() - 1_000_000_000;
    gnu_tar(&a, &gnu, 0o022).expect("GNU tar extracts it");
    let out = olboot_unpack(&s, &a, 0o022);
    assert!(
        out.status.success(),
        "olboot failed: {}",
        common::stderr(&out)
    );
    assert_same_entries(&s.opt(), &gnu, started);
    let default = common::xattrs(&s.opt())
        .into_iter()
        .any(|(k, _)| k == "system.posix_acl_default");
    assert!(!default, "opt.path kept the default ACL it inherited");
}

/// GNU tar gives the top directory its metadata at the end of the archive however it is
/// spelled and whatever comes after it (entries without `./`, say): its mtime is the
/// archive's, not the time of the last entry made in it.
#[test]
fn the_top_directory_gets_its_metadata_at_the_end() {
    for top in ["./", ".", "./.", ".//"] {
        assert_as_gnu(
            &[
                dir(top, 0o750, 5),
                file("./a", b"x", 0o644),
                dir("c/", 0o700, 6),
                file("c/f", b"y", 0o644),
                file("b", b"x", 0o644),
            ],
            0o022,
            true,
        );
    }
    // Listed after other entries too.
    assert_as_gnu(
        &[
            dir("a/", 0o755, 3),
            dir("./", 0o751, 5),
            file("b", b"x", 0o644),
        ],
        0o022,
        true,
    );
}

/// `d/.` where there is no `d` yet is the directory `d` (its metadata waits while entries go
/// in it); `d/.` while `d` waits is a second entry GNU tar leaves at once; `d/.` for a `d`
/// made for a deeper entry mixes two entries' metadata in GNU tar: refused.
#[test]
fn directories_named_with_a_trailing_dot() {
    for name in ["d/.", "d/./.", "d/.//", "a/d/./"] {
        let inner = format!("{}/f", name.trim_end_matches(['/', '.']));
        assert_as_gnu(
            &[
                dir(name, 0o750, 5),
                file(&inner, b"x", 0o644),
                file("e", b"x", 0o644),
            ],
            0o022,
            false,
        );
    }
    assert_as_gnu(
        &[
            dir("d/", 0o755, 3),
            dir("d/.", 0o750, 5),
            file("d/f", b"x", 0o644),
        ],
        0o022,
        false,
    );
    let s = support::Scratch::new();
    let entries = [
        file("d/f", b"x", 0o644),
        dir("d/.", 0o750, 5),
        file("e", b"x", 0o644),
    ];
    let a = archive(s.dir.path(), "a.tar", &entries);
    assert_olboot_refuses(&s, &a, "d/.");
}

/// GNU tar sets a symlink's xattrs on the symlink (lsetxattr): trusted.* and security.* ones;
/// the kernel refuses user.* ones there (GNU tar warns), and the target is left alone.
#[test]
fn xattrs_of_a_symlink_are_set_on_the_symlink() {
    let xattrs = pax(&[
        record("SCHILY.xattr.trusted.sl", b"yes"),
        record("SCHILY.xattr.user.u", b"no"),
        record("SCHILY.xattr.security.s", b"\x00\x01"),
    ]);
    let s = assert_as_gnu(
        &[
            file("t", b"target", 0o644),
            xattrs.clone(),
            link("s", b'2', "t"),
            xattrs,
            link("out", b'2', "/etc/hostname"),
        ],
        0o022,
        false,
    );
    let on = |p: &str| common::xattrs(&s.opt().join(p));
    assert_eq!(on("s").len(), 2, "{:?}", on("s"));
    assert_eq!(on("out").len(), 2, "{:?}", on("out"));
    assert!(on("t").is_empty(), "the target got xattrs: {:?}", on("t"));
}

/// bsdtar lists a directory's subdirectories before their contents: `top/d/s` (a symlink out
/// of the tree) comes after `top/d/` was left. GNU tar then holds no directory to the end.
#[test]
fn a_symlink_out_of_the_tree_in_a_directory_left_already() {
    assert_as_gnu(
        &[
            dir("top/", 0o755, 5),
            dir("top/d/", 0o750, 6),
            dir("top/e/", 0o700, 7),
            link("top/d/s", b'2', "/usr/bin/python3"),
            file("top/e/f", b"x", 0o644),
            link("top/e/t", b'2', "../d"),
        ],
        0o022,
        false,
    );
}

/// bsdtar writes ACL qualifiers as names with the archiving machine's id as a fourth field;
/// GNU tar looks the names up on the extracting machine (even with --numeric-owner) and
/// ignores that field. A name unknown here: GNU tar sets no ACL and warns; olboot refuses.
#[test]
fn acl_names_are_looked_up_on_this_machine() {
    let acl = "user::rw-,group::r--,other::r--,user:daemon:r-x:4321,group:root:rw-:4321,mask::rwx";
    assert_as_gnu(
        &[
            pax(&[record("SCHILY.acl.access", acl.as_bytes())]),
            file("f", b"x", 0o644),
        ],
        0o022,
        false,
    );
    let s = support::Scratch::new();
    let unknown = "user::rw-,group::r--,other::r--,user:olboot-no-such-user:r-x:1,mask::rwx";
    let entries = [
        pax(&[record("SCHILY.acl.access", unknown.as_bytes())]),
        file("f", b"x", 0o644),
    ];
    let a = archive(s.dir.path(), "a.tar", &entries);
    assert_olboot_refuses(&s, &a, "f");
}

/// A hard link to itself (what `tar cf a.tar f f` writes when f has another link) or to the
/// file its name holds already: GNU tar leaves the file as it is; olboot used to unlink the
/// name first and then fail to link to it.
#[test]
fn a_hard_link_to_itself_or_to_its_own_file_is_left_as_it_is() {
    assert_as_gnu(
        &[file("f", b"data", 0o644), link("f", b'1', "f")],
        0o022,
        false,
    );
    assert_as_gnu(
        &[
            file("a", b"data", 0o644),
            link("b", b'1', "a"),
            link("b", b'1', "a"),
            link("a", b'1', "b"),
        ],
        0o022,
        false,
    );
}
