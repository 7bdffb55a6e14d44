//! The opt step on local archives (made by `olboot pack`, whose own tests are in
//! tests/pack.rs): gzip and xz are recognized by magic; an xz whose dictionary needs more
//! memory than the bound is refused; hostile
//! archives of every kind fail naming the entry and write nothing outside; an existing tree
//! is kept; the ways of exposing the tree at /opt (bind on the live system inside a private
//! mount namespace).

mod common;
#[path = "opt/support.rs"]
mod support;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use support::*;

fn file_url(p: &Path) -> String {
    format!("file://{}", p.display())
}

fn tar_of(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    build(&mut b);
    b.into_inner().unwrap()
}

/// A header with a raw name (the tar crate refuses to *write* `..` or absolute names).
fn raw(kind: tar::EntryType, name: &str, link: Option<&str>, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(size);
    h.set_mtime(1_600_000_000);
    h.set_uid(0);
    h.set_gid(0);
    let old = h.as_old_mut();
    old.name[..name.len()].copy_from_slice(name.as_bytes());
    if let Some(l) = link {
        old.linkname[..l.len()].copy_from_slice(l.as_bytes());
    }
    h.set_cksum();
    h
}

fn dir_entry(b: &mut tar::Builder<Vec<u8>>, name: &str) {
    b.append(&raw(tar::EntryType::Directory, name, None, 0), &[][..])
        .unwrap();
}

fn file_entry(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
    b.append(
        &raw(tar::EntryType::Regular, name, None, data.len() as u64),
        data,
    )
    .unwrap();
}

#[test]
fn hostile_archives_fail_naming_the_entry() {
    hostile_archives_refused(olboot, "");
}

/// Linux before 5.6: no openat2 (ENOSYS), the walk one component at a time refuses the same.
#[test]
fn hostile_archives_fail_naming_the_entry_without_openat2() {
    hostile_archives_refused(
        || common::olboot_denying(&[common::nr::OPENAT2], 38),
        "openat2 is not available",
    );
}

/// A container whose seccomp profile answers EPERM to openat2.
#[test]
fn hostile_archives_fail_naming_the_entry_when_openat2_is_refused() {
    hostile_archives_refused(
        || common::olboot_denying(&[common::nr::OPENAT2], 1),
        "openat2 is not available",
    );
}

/// Each hostile archive, unpacked by the olboot `cmd` makes, fails naming the entry and
/// changes nothing outside; the log says `log` when that is not empty.
fn hostile_archives_refused(cmd: fn() -> Command, log: &str) {
    type Build = fn(&mut tar::Builder<Vec<u8>>);
    let cases: Vec<(&str, &str, Build)> = vec![
        ("dotdot", "../escaped", |b| {
            dir_entry(b, "./");
            file_entry(b, "../escaped", b"evil");
        }),
        ("nested dotdot", "a/../../escaped", |b| {
            dir_entry(b, "a/");
            file_entry(b, "a/../../escaped", b"evil");
        }),
        ("absolute", "/tmp/olboot-test-escaped", |b| {
            file_entry(b, "/tmp/olboot-test-escaped", b"evil");
        }),
        ("through a symlink", "link/escaped", |b| {
            b.append(
                &raw(tar::EntryType::Symlink, "link", Some("../.."), 0),
                &[][..],
            )
            .unwrap();
            file_entry(b, "link/escaped", b"evil");
        }),
        ("through an absolute symlink", "etc/escaped", |b| {
            b.append(
                &raw(tar::EntryType::Symlink, "etc", Some("/tmp"), 0),
                &[][..],
            )
            .unwrap();
            file_entry(b, "etc/escaped", b"evil");
        }),
        ("hard link outside", "hl", |b| {
            b.append(
                &raw(tar::EntryType::Link, "hl", Some("../../outside"), 0),
                &[][..],
            )
            .unwrap();
        }),
        ("absolute hard link", "passwd", |b| {
            b.append(
                &raw(tar::EntryType::Link, "passwd", Some("/etc/passwd"), 0),
                &[][..],
            )
            .unwrap();
        }),
        ("hard link through a symlink", "hl", |b| {
            b.append(&raw(tar::EntryType::Symlink, "up", Some(".."), 0), &[][..])
                .unwrap();
            b.append(
                &raw(tar::EntryType::Link, "hl", Some("up/outside"), 0),
                &[][..],
            )
            .unwrap();
        }),
        ("char device", "null", |b| {
            b.append(&raw(tar::EntryType::Char, "null", None, 0), &[][..])
                .unwrap();
        }),
        ("block device", "sda", |b| {
            b.append(&raw(tar::EntryType::Block, "sda", None, 0), &[][..])
                .unwrap();
        }),
        ("fifo", "pipe", |b| {
            b.append(&raw(tar::EntryType::Fifo, "pipe", None, 0), &[][..])
                .unwrap();
        }),
    ];
    for (what, entry, build) in cases {
        let s = Scratch::new();
        fs::write(s.root().join("1/outside"), "untouched").unwrap();
        let tar = tar_of(build);
        let archive = s.dir.path().join("hostile.tar.zst");
        fs::write(&archive, zstd::encode_all(&tar[..], 3).unwrap()).unwrap();
        let cfg = s.config(&[file_url(&archive)], None, "", "symlink");
        let out = s.run_with(cmd(), "apply", &cfg, &[]);
        assert_eq!(out.status.code(), Some(1), "{what}: not refused");
        // These open a directory beneath the root; the others are refused by name first.
        let opens_a_dir = what.contains("through");
        if !log.is_empty() && opens_a_dir {
            assert!(
                stderr(&out).contains(log),
                "{what}: the fallback was not used"
            );
        }
        let err = opt_step(&s.root())["error"].as_str().unwrap().to_string();
        assert!(
            err.contains(&format!("archive entry \"{entry}\"")),
            "{what}: the error does not name {entry}: {err}"
        );
        if opens_a_dir {
            assert!(
                err.contains("refusing to go through a symlink"),
                "{what}: {err}"
            );
        }
        assert!(!s.opt().exists(), "{what}");
        assert!(!s.root().join("opt").exists(), "{what}");
        assert!(!s.root().join("escaped").exists(), "{what}");
        assert!(!s.dir.path().join("escaped").exists(), "{what}");
        assert!(!Path::new("/tmp/escaped").exists(), "{what}");
        assert!(!Path::new("/tmp/olboot-test-escaped").exists(), "{what}");
        assert_eq!(
            fs::read_to_string(s.root().join("1/outside")).unwrap(),
            "untouched",
            "{what}"
        );
        fs::remove_file(s.root().join("1/outside")).unwrap();
        s.assert_nothing_beside();
    }
}

#[test]
fn gzip_and_xz_are_recognized_by_their_magic() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir(&src).unwrap();
    make_tree(&src, 100 * 1024);
    let tar = d.path().join("plain.tar");
    let st = Command::new("tar")
        .args(["--numeric-owner", "-cf"])
        .arg(&tar)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let data = fs::read(&tar).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&data).unwrap();
    let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
    xz.write_all(&data).unwrap();
    for (name, bytes) in [
        ("archive.gz.bin", gz.finish().unwrap()),
        ("archive.xz.bin", xz.finish().unwrap()),
        ("archive.tar.zst", data.clone()),
    ] {
        let s = Scratch::new();
        let a = s.dir.path().join(name);
        fs::write(&a, bytes).unwrap();
        let cfg = s.config(&[file_url(&a)], None, "", "symlink");
        let out = s.apply(&cfg);
        assert!(out.status.success(), "{name}");
        assert_same_tree(&src, &s.opt(), false);
    }
}

/// Set the LZMA2 dictionary size byte of the first block of the .xz `bytes` to `dict`
/// (39: 3 GiB) and fix the block header's CRC32.
fn set_xz_dictionary(bytes: &mut [u8], dict: u8) {
    const BLOCK: usize = 12; // after the stream header
    let size = (usize::from(bytes[BLOCK]) + 1) * 4;
    let flags = bytes[BLOCK + 1];
    let mut at = BLOCK + 2;
    for present in [flags & 0x40 != 0, flags & 0x80 != 0] {
        if present {
            while bytes[at] & 0x80 != 0 {
                at += 1;
            }
            at += 1;
        }
    }
    assert_eq!(bytes[at..at + 2], [0x21, 1], "not one LZMA2 filter");
    bytes[at + 2] = dict;
    let mut crc = flate2::Crc::new();
    crc.update(&bytes[BLOCK..BLOCK + size - 4]);
    bytes[BLOCK + size - 4..BLOCK + size].copy_from_slice(&crc.sum().to_le_bytes());
}

#[test]
fn an_xz_archive_that_needs_a_huge_dictionary_is_refused() {
    let data = tar_of(|b| file_entry(b, "a", b"hello"));
    let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
    xz.write_all(&data).unwrap();
    let mut bytes = xz.finish().unwrap();
    set_xz_dictionary(&mut bytes, 39);
    let s = Scratch::new();
    let a = s.dir.path().join("bomb.tar.xz");
    fs::write(&a, bytes).unwrap();
    let cfg = s.config(&[file_url(&a)], None, "", "symlink");
    let out = s.apply(&cfg);
    assert_eq!(out.status.code(), Some(1));
    let err = opt_step(&s.root())["error"].as_str().unwrap().to_string();
    assert!(err.contains("128 MiB"), "{err}");
    assert!(err.contains(&file_url(&a)), "{err}");
    assert!(!s.opt().exists());
    s.assert_nothing_beside();
}

#[test]
fn an_existing_tree_is_kept_and_nothing_fetched() {
    let s = Scratch::new();
    fs::create_dir_all(s.opt().join("openlibrary")).unwrap();
    fs::write(s.opt().join("openlibrary/mine"), "keep me").unwrap();
    // Stale staging of a killed run beside an existing tree is removed too.
    fs::create_dir_all(s.staging().join("half")).unwrap();
    let cfg = s.config(
        &["http://127.0.0.1:9/never-fetched.tar.zst".to_string()],
        Some(&"a".repeat(64)),
        "",
        "symlink",
    );
    let plan = s.run("plan", &cfg, &[]);
    assert_eq!(plan.status.code(), Some(3));
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(text.contains("remove leftover staging"), "{text}");
    assert!(!text.contains("fetch"), "{text}");
    assert!(s.staging().exists(), "plan changed something");
    let out = s.apply(&cfg);
    assert!(out.status.success());
    assert_eq!(
        fs::read_to_string(s.opt().join("openlibrary/mine")).unwrap(),
        "keep me"
    );
    s.assert_nothing_beside();
    assert_eq!(
        fs::read_link(s.root().join("opt")).unwrap(),
        Path::new("/1/opt")
    );
    let again = s.apply(&cfg);
    assert!(again.status.success());
    assert_eq!(opt_step(&s.root())["result"], "unchanged");
}

#[test]
fn symlink_expose_replaces_an_empty_opt_but_never_a_full_one() {
    let p = packed(1024);
    let s = Scratch::new();
    fs::create_dir(s.root().join("opt")).unwrap();
    let cfg = s.config(&[file_url(&p.archive)], Some(&p.sha256), "", "symlink");
    let out = s.apply(&cfg);
    assert!(out.status.success());
    assert_eq!(
        fs::read_link(s.root().join("opt")).unwrap(),
        Path::new("/1/opt")
    );

    let s = Scratch::new();
    fs::create_dir(s.root().join("opt")).unwrap();
    fs::write(s.root().join("opt/precious"), "x").unwrap();
    let out = s.apply(&cfg);
    assert_eq!(out.status.code(), Some(1));
    let err = opt_step(&s.root())["error"].as_str().unwrap().to_string();
    assert!(err.contains("not empty"), "{err}");
    assert!(s.root().join("opt/precious").exists());
    assert!(!s.opt().exists(), "fetched although exposing cannot work");
}

#[test]
fn bind_expose_under_a_root_binds_below_it() {
    /// Unmounts the bind below the scratch root, also when an assertion fails.
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
        }
    }
    let p = packed(1024);
    let s = Scratch::new();
    fs::create_dir_all(s.root().join("etc")).unwrap();
    fs::write(
        s.root().join("etc/fstab"),
        "UUID=abc / ext4 defaults 0 1\nUUID=def /1 ext4 defaults,nofail 0 2\n",
    )
    .unwrap();
    let cfg = s.config(&[file_url(&p.archive)], Some(&p.sha256), "", "bind");
    let _guard = Unmount(s.root().join("opt"));
    let out = s.apply(&cfg);
    assert!(out.status.success());
    assert_same_tree(&p.src, &s.opt(), true);
    assert_eq!(
        fs::read_to_string(s.root().join("etc/fstab")).unwrap(),
        "UUID=abc / ext4 defaults 0 1\nUUID=def /1 ext4 defaults,nofail 0 2\n\
         /1/opt /opt none bind,nofail 0 0\n"
    );
    // The target's /opt shows the tree, as it will after its next boot.
    assert_same_tree(&p.src, &s.root().join("opt"), true);
    let again = s.apply(&cfg);
    assert!(again.status.success());
    assert_eq!(opt_step(&s.root())["result"], "unchanged");
}

#[test]
fn bind_expose_on_the_live_system_mounts_it() {
    // The live system, inside a private mount namespace whose /etc, /opt, /var/lib and /run
    // are scratch directories: the machine's own files and mounts are never touched.
    let p = packed(1024);
    let d = tempfile::tempdir().unwrap();
    let dir = |n: &str| {
        let x = d.path().join(n);
        fs::create_dir_all(&x).unwrap();
        x
    };
    let (etc, opt, varlib, run) = (dir("etc"), dir("opt"), dir("varlib"), dir("run"));
    fs::write(etc.join("fstab"), "UUID=abc / ext4 defaults 0 1\n").unwrap();
    let path = d.path().join("data/opt");
    let cfg = d.path().join("olboot.yaml");
    fs::write(
        &cfg,
        format!(
            "version: 1\nopt:\n  path: {}\n  archive:\n    urls: [{}]\n    sha256: {}\n",
            path.display(),
            file_url(&p.archive),
            p.sha256
        ),
    )
    .unwrap();
    let script = r#"set -e
mount --bind "$1" /etc; mount --bind "$2" /opt; mount --bind "$3" /var/lib; mount --bind "$4" /run
"$5" apply -c "$6" --host ol-web1 --only opt
test -f /opt/openlibrary/deploys/olsystem/def456/README
"$5" apply -c "$6" --host ol-web1 --only opt"#;
    let st = Command::new("unshare")
        .args([
            "-m",
            "--propagation",
            "private",
            "--",
            "bash",
            "-c",
            script,
            "bash",
        ])
        .args([&etc, &opt, &varlib, &run])
        .arg(env!("CARGO_BIN_EXE_olboot"))
        .arg(&cfg)
        .envs(olboot().get_envs().filter_map(|(k, v)| v.map(|v| (k, v))))
        .output()
        .unwrap();
    eprintln!(
        "{}{}",
        String::from_utf8_lossy(&st.stdout),
        String::from_utf8_lossy(&st.stderr)
    );
    assert!(st.status.success(), "apply in the namespace failed");
    assert_same_tree(&p.src, &path, true);
    assert_eq!(
        fs::read_to_string(etc.join("fstab")).unwrap(),
        format!(
            "UUID=abc / ext4 defaults 0 1\n{} /opt none bind,nofail 0 0\n",
            path.display()
        )
    );
    let report: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(varlib.join("olboot/report.json")).unwrap())
            .unwrap();
    let step = &report["steps"][0];
    assert_eq!(step["result"], "unchanged", "second apply: {step}");
    let first = String::from_utf8_lossy(&st.stderr);
    assert!(first.contains("bind-mounted"), "{first}");
    // The mount lived in the namespace only.
    assert_eq!(fs::read_dir(&opt).unwrap().count(), 0);
}

#[test]
fn plan_changes_in_the_done_tense_are_the_apply_changes() {
    let p = packed(64 * 1024);
    let s = Scratch::new();
    fs::create_dir_all(s.root().join("opt")).unwrap(); // replaced: one more kind of change
    let cfg = s.config(&[file_url(&p.archive)], Some(&p.sha256), "", "symlink");
    let plan = s.run("plan", &cfg, &[]);
    assert_eq!(plan.status.code(), Some(3), "plan: {}", stderr(&plan));
    let apply = s.run("apply --json", &cfg, &[]);
    assert!(apply.status.success(), "apply: {}", stderr(&apply));
    let (plan, apply) = (common::report(&plan), common::report(&apply));
    assert_eq!(common::change_lines(&plan, "opt").len(), 2, "{plan}");
    common::assert_apply_did_what_plan_said(&plan, &apply, "opt");
}

/// A tmpfs of `size` mounted at a scratch directory for one test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "olboot-test"])
            .arg(at)
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot mount a tmpfs at {} (needs root)", at.display());
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The volume fills up in the middle of the unpack, in the writer threads (thousands of small
/// files) or in the unpacking thread (a large one): the step fails naming an entry and the
/// cause, the staging directory is gone and nothing is at opt.path; with room, the next run
/// unpacks the whole tree.
#[test]
fn a_full_volume_fails_naming_the_entry_and_leaves_nothing() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("opt");
    for d in 0..8 {
        let dir = src.join(format!("d{d}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..250 {
            fs::write(
                dir.join(format!("f{f}")),
                noise(4096, (d * 1000 + f) as u64),
            )
            .unwrap();
        }
    }
    fs::write(src.join("big.dat"), noise(6 << 20, 7)).unwrap();
    let archive = work.path().join("opt.tar.zst");
    let sha = pack(&src, &archive);
    let s = Scratch::new();
    let cfg = s.config(&[file_url(&archive)], Some(&sha), "", "symlink");
    for size in ["3m", "10m"] {
        let _volume = Tmpfs::mount(&s.root().join("1"), size);
        let out = s.apply(&cfg);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("No space left on device"), "{err}");
        assert_eq!(
            err.matches("archive entry \"").count(),
            2,
            "names the entry: {err}"
        );
        assert!(!s.staging().exists(), "staging left behind");
        assert!(!s.opt().exists() && !s.root().join("opt").exists());
        assert!(fs::read_dir(s.root().join("1")).unwrap().next().is_none());
    }
    let _volume = Tmpfs::mount(&s.root().join("1"), "64m");
    let out = s.apply(&cfg);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_tree(&src, &s.opt(), true);
}

/// The umask is the process's, shared with the steps that run beside opt (packages' apt and
/// dpkg) and their children: unpacking must never change it, not even while it runs.
#[test]
fn the_umask_is_left_alone_while_unpacking() {
    use std::time::{Duration, Instant};
    let umask_of = |pid: &str| {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .map(|v| v.trim().to_string())
            .unwrap()
    };
    let own = umask_of("self");
    assert_ne!(
        own, "0000",
        "run the tests under a umask that clears some bits"
    );
    let p = packed(3 << 20);
    // Half the archive, then one byte every 50 ms: the unpacking has begun and goes on.
    let srv = Server::start(p.bytes.clone(), vec![Fault::Trickle(p.bytes.len() / 2)]);
    let s = Scratch::new();
    let cfg = s.config(&[srv.url("opt.tar.zst")], Some(&p.sha256), "", "symlink");
    let mut child = olboot()
        .args(["apply", "-c"])
        .arg(&cfg)
        .arg("--root")
        .arg(s.root())
        .args(["--host", "ol-web1", "--only", "opt"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !s.staging().exists() && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    let seen = umask_of(&child.id().to_string());
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(s.staging().exists(), "the unpacking never began");
    assert_eq!(seen, own, "olboot's umask while it unpacked");
}
