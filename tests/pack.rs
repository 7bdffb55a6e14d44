//! `olboot pack` on real trees, as root: every feature of a legacy `/opt` (sparse files,
//! nanosecond and negative mtimes, xattrs, ACLs, capabilities, hard links, long names, large
//! ids) survives pack → GNU tar (`tar -xpf --numeric-owner --xattrs --acls`) and pack → the
//! opt step, compared entry by entry; files that shrink, grow, vanish or keep changing while
//! pack reads them, driven by a concurrent writer woken by inotify; `--exclude`; and the
//! reference report on a generated olsystem tree whose references the test knows.

mod common;
#[path = "opt/support.rs"]
mod support;

use common::EntryFacts;
use sha2::{Digest, Sha256};
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use support::{assert_same_tree, noise, olboot, packed, stderr, Scratch};

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
    // Past what the ustar size field holds (8 GiB), with its data at the end.
    write_at(
        &dir.join("data/huge.img"),
        (9 << 30) - 4096,
        &noise(4096, 5),
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
    let mut dirs: Vec<PathBuf> = common::tree_manifest(dir)
        .into_iter()
        .filter(|e| e.kind == "dir")
        .map(|e| dir.join(e.path))
        .collect();
    dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, d) in dirs.iter().enumerate() {
        set_times(d, 1_500_000_000 - 1_000_000 * i as i64, 7 * i as i64);
    }
    set_times(&l.join("rel"), -5, 5);
    set_times(dir, 1_650_000_000, 999_999_999);
    vec![sock]
}

/// Every entry of `dir`, `dir` itself first (as ""): what [`common::tree_manifest`] says.
fn manifest(dir: &Path) -> Vec<EntryFacts> {
    let name = dir.file_name().unwrap();
    let mut root = common::tree_manifest(dir.parent().unwrap())
        .into_iter()
        .find(|e| e.path == Path::new(name))
        .unwrap();
    root.path = PathBuf::new();
    let mut all = vec![root];
    all.extend(common::tree_manifest(dir));
    all
}

/// The entry `rel` of a manifest.
fn entry<'a>(m: &'a [EntryFacts], rel: &str) -> &'a EntryFacts {
    m.iter()
        .find(|e| e.path == Path::new(rel))
        .unwrap_or_else(|| panic!("no {rel}"))
}

/// The source's manifest without the entries pack skips.
fn expected(src: &Path) -> Vec<EntryFacts> {
    let mut want = manifest(src);
    for skipped in ["run.sock", "fifo"] {
        let before = want.len();
        want.retain(|e| e.path != Path::new(skipped));
        assert_eq!(want.len() + 1, before, "{skipped} missing from the source");
    }
    want
}

/// Trees the same entry by entry: kind, mode, owner, ns mtime, size, content, target, hard
/// links, xattrs (ACLs and capabilities included), and allocation within 16 blocks.
fn assert_same(want: &[EntryFacts], got: &[EntryFacts], who: &str) {
    let diff = common::manifest_diff(want, got, 16, i128::MAX);
    assert!(
        diff.is_empty(),
        "{who} made another tree:\n{}",
        diff.join("\n")
    );
}

#[test]
fn every_feature_survives_pack_and_gnu_tar() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("opt");
    let _sock = feature_tree(&src);
    let want = expected(&src);
    let sparse = entry(&want, "data/sparse.img");
    assert!(sparse.blocks < 64 && sparse.size == 1 << 30, "{sparse:?}");
    let has = |rel: &str, x: &str| entry(&want, rel).xattrs.iter().any(|(n, _)| n == x);
    assert!(has("attrs/cap", "security.capability"));
    assert!(has("attrs/acl", "system.posix_acl_access"));
    assert!(has("attrs/acldir", "system.posix_acl_default"));
    assert!(has("attrs/xattrs", "trusted.ol"));
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
    assert_same(&want, &manifest(&gnu), "GNU tar");
    // And the same tree gives the same bytes, even on one CPU (one zstd worker).
    let again = d.path().join("again.tar.zst");
    let one_cpu = Command::new("taskset")
        .args(["-c", "0", env!("CARGO_BIN_EXE_olboot"), "pack"])
        .arg(&src)
        .arg("-o")
        .arg(&again)
        .output()
        .unwrap();
    assert!(one_cpu.status.success(), "{}", stderr(&one_cpu));
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
    assert_same(&want, &manifest(&s.opt()), "olboot opt");
}
#[test]
fn pack_is_deterministic_and_gnu_tar_agrees_with_olboot() {
    let p = packed(200 * 1024);
    // The same tree gives the same bytes.
    let again = p.dir.path().join("again.tar.zst");
    let out = olboot()
        .arg("pack")
        .arg(&p.src)
        .arg("-o")
        .arg(&again)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        fs::read(&again).unwrap(),
        p.bytes,
        "pack is not deterministic"
    );
    // FILE.sha256 is in sha256sum format and checks.
    let sums = fs::read_to_string(format!("{}.sha256", p.archive.display())).unwrap();
    assert_eq!(sums, format!("{}  opt.tar.zst\n", p.sha256));
    let st = Command::new("sha256sum")
        .args(["-c", "opt.tar.zst.sha256"])
        .current_dir(p.dir.path())
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stdout)
    );
    // GNU tar unpacks it to an identical tree.
    let gnu = p.dir.path().join("gnu");
    fs::create_dir(&gnu).unwrap();
    let st = Command::new("tar")
        .args(["--zstd", "-xpf"])
        .arg(&p.archive)
        .arg("-C")
        .arg(&gnu)
        .status()
        .unwrap();
    assert!(st.success());
    assert_same_tree(&p.src, &gnu, false);
    // And so does olboot, symlink mtimes included.
    let s = Scratch::new();
    let cfg = s.config(&[file_url(&p.archive)], Some(&p.sha256), "", "symlink");
    let out = s.apply(&cfg);
    assert!(out.status.success());
    assert_same_tree(&p.src, &s.opt(), true);
    s.assert_nothing_beside();
}

#[test]
fn pack_skips_sockets_with_a_warning() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), "x").unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap();
    let out = olboot()
        .arg("pack")
        .arg(&src)
        .arg("-o")
        .arg(d.path().join("a.tar.zst"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("skipping") && err.contains("sock") && err.contains("socket"),
        "{err}"
    );
    let list = Command::new("tar")
        .args(["--zstd", "-tf"])
        .arg(d.path().join("a.tar.zst"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&list.stdout), "f\n./\n");
}

/// Names in the output directory other than the archive and its `.sha256`.
fn leftovers(dir: &Path, keep: &[&str]) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect()
}

/// A writer that changes `path` by `step` every millisecond (a log being written, or cut
/// back), from now until `stop` is set.
fn changing(path: &Path, step: i64, stop: &Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let (path, stop) = (path.to_path_buf(), stop.clone());
    std::thread::spawn(move || {
        use std::io::Write;
        let mut f = fs::File::options().append(true).open(&path).unwrap();
        let mut i = 0;
        while !stop.load(Ordering::SeqCst) {
            if step > 0 {
                f.write_all(&noise(step as usize, i)).unwrap();
            } else {
                let len = f.metadata().unwrap().len();
                f.set_len(len.saturating_sub(step.unsigned_abs())).unwrap();
            }
            i += 1;
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    })
}

#[test]
fn files_that_shrink_grow_or_vanish_while_read_are_archived_consistently() {
    use std::io::{BufRead, Read};
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("opt");
    fs::create_dir(&src).unwrap();
    for n in ["b-shrinks", "c-grows"] {
        fs::write(src.join(n), noise(32 << 20, 9)).unwrap();
    }
    fs::write(src.join("d-vanishes"), "soon gone").unwrap();
    // A log being cut back and one being written, changing until pack says it saw them
    // change and reads them again; and a temporary file removed before pack gets to it.
    let (stop_b, stop_c) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let shrinker = changing(&src.join("b-shrinks"), -4096, &stop_b);
    let grower = changing(&src.join("c-grows"), 4096, &stop_c);
    let archive = d.path().join("opt.tar.zst");
    let mut child = olboot()
        .arg("pack")
        .arg(&src)
        .arg("-o")
        .arg(&archive)
        .arg("--json")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = String::new();
    for line in std::io::BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.contains("b-shrinks changed while being read; reading it again (2 of 4)") {
            stop_b.store(true, Ordering::SeqCst);
            fs::remove_file(src.join("d-vanishes")).unwrap();
        }
        if line.contains("c-grows changed while being read; reading it again (2 of 4)") {
            stop_c.store(true, Ordering::SeqCst);
        }
        err += &line;
        err += "\n";
    }
    let mut stdout = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    let status = child.wait().unwrap();
    eprintln!("--- olboot pack: {status}\n{err}");
    let (b_stopped, c_stopped) = (
        stop_b.swap(true, Ordering::SeqCst),
        stop_c.swap(true, Ordering::SeqCst),
    );
    shrinker.join().unwrap();
    grower.join().unwrap();
    assert!(status.success());
    assert!(
        b_stopped && c_stopped,
        "pack never read a changing file again"
    );
    let s: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
    assert_eq!(s["warnings"]["count"], 1, "{s}");
    let w = s["warnings"]["listed"][0].as_str().unwrap();
    assert!(w.contains("d-vanishes") && w.contains("vanished"), "{w}");
    // The archive holds each file as it was once it stopped changing: the source now.
    let len = |p: &Path| fs::metadata(p).unwrap().len();
    assert!(len(&src.join("b-shrinks")) < 32 << 20 && len(&src.join("c-grows")) > 32 << 20);
    // The root's mtime is that of before d-vanishes was removed.
    let mut want = common::tree_manifest(&src);
    assert!(want.iter().all(|e| e.path != Path::new("d-vanishes")));
    let gnu = d.path().join("gnu");
    gnu_extract(&archive, &gnu);
    let got = common::tree_manifest(&gnu);
    // A truncation can show its new size before its new mtime (a filesystem's setattr sets
    // i_size, then copies the times): a read that falls between, on a loaded machine, finds
    // the final size and content with the previous mtime, before and after, as GNU tar would
    // (seen once in a full `cargo test` here). Only that is let through: the same size and
    // content, an mtime earlier than the source's.
    for w in want.iter_mut().filter(|w| w.path == Path::new("b-shrinks")) {
        let g = got
            .iter()
            .find(|g| g.path == w.path)
            .expect("b-shrinks archived");
        if (g.size, &g.content) == (w.size, &w.content) && g.mtime_ns < w.mtime_ns {
            eprintln!("b-shrinks: its last truncation's mtime came after pack's read");
            w.mtime_ns = g.mtime_ns;
        }
    }
    assert_same(&want, &got, "GNU tar");
    // The opt step takes the same archive.
    let sha = s["sha256"].as_str().unwrap();
    let sc = Scratch::new();
    let cfg = sc.config(&[file_url(&archive)], Some(sha), "", "symlink");
    assert!(sc.apply(&cfg).status.success());
    for n in ["b-shrinks", "c-grows"] {
        assert_eq!(
            fs::read(sc.opt().join(n)).unwrap(),
            fs::read(src.join(n)).unwrap()
        );
    }
    assert!(leftovers(
        d.path(),
        &["opt", "gnu", "opt.tar.zst", "opt.tar.zst.sha256"]
    )
    .is_empty());
}

#[test]
fn a_file_that_keeps_changing_fails_the_pack_unless_allowed() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("opt");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a-steady"), "steady\n").unwrap();
    let churn = src.join("churns.log");
    fs::write(&churn, noise(32 << 20, 11)).unwrap();
    // A writer that never stops: every read pack makes sees the size change.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, churn) = (stop.clone(), churn.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = fs::File::options().append(true).open(&churn).unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                f.write_all(&[b'x'; 4096]).unwrap();
                n += 1;
                if n % 4096 == 0 {
                    f.set_len(32 << 20).unwrap();
                }
            }
        })
    };
    let archive = d.path().join("opt.tar.zst");
    let refused = pack(&src, &archive, &[]);
    let allowed = pack(&src, &archive, &["--allow-changing", "--json"]);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    // Refused: exit 1, one error naming the file, no sha256, nothing written.
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        refused.stdout.is_empty(),
        "printed {:?}",
        String::from_utf8_lossy(&refused.stdout)
    );
    let err = stderr(&refused);
    let line = err
        .lines()
        .find(|l| l.contains("ERROR"))
        .unwrap_or_default();
    assert!(
        line.contains(&churn.display().to_string())
            && line.contains("changed while being read, 4 times"),
        "{err}"
    );
    // Allowed: the last read is stored as a well-formed entry, and said so.
    assert!(allowed.status.success());
    let s = summary(&allowed);
    let w = s["warnings"]["listed"][0].as_str().unwrap();
    assert!(
        w.contains("churns.log") && w.contains("kept changing"),
        "{w}"
    );
    let gnu = d.path().join("gnu");
    gnu_extract(&archive, &gnu);
    let size = fs::metadata(gnu.join("churns.log")).unwrap().len();
    assert!(size >= 32 << 20, "{size}");
    assert_eq!(fs::read(gnu.join("a-steady")).unwrap(), b"steady\n");
    assert!(leftovers(
        d.path(),
        &["opt", "gnu", "opt.tar.zst", "opt.tar.zst.sha256"]
    )
    .is_empty());
}

#[test]
fn a_failed_pack_leaves_nothing_and_bad_patterns_are_usage_errors() {
    let d = tempfile::tempdir().unwrap();
    let archive = d.path().join("o.tar.zst");
    let out = pack(&d.path().join("missing"), &archive, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(stderr(&out).contains("missing"), "{}", stderr(&out));
    assert!(leftovers(d.path(), &[]).is_empty());
    let out = pack(d.path(), &archive, &["--exclude", "[ab]"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--exclude \"[ab]\""), "{err}");
}

#[test]
fn the_reference_report_says_who_mentions_each_top_level_directory() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("opt");
    let w = |rel: &str, text: &[u8]| {
        let p = src.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    };
    let etc = "openlibrary/deploys/olsystem/0a1b2c/etc";
    w(
        "petabox/www/index.php",
        b"<?php include '/opt/openlibrary/olsystem/etc/ia.ini';",
    );
    w("petabox/sbin/self.sh", b"exec /opt/petabox/sbin/other\n");
    w("petabox/x.pyc", b"/opt/openlibrary\n");
    w("petabox/cache/c", b"/opt/openlibrary\n");
    w("petabox/www/cache", b"a file named cache\n");
    w(
        &format!("{etc}/supervisor/a.conf"),
        b"[program:a]\ncommand=/opt/petabox/sw/bin/a\n",
    );
    w(
        &format!("{etc}/supervisor/b.conf"),
        b"directory=/opt/petabox",
    );
    let c = format!("cd {}/petabox/www\n", src.display());
    w(&format!("{etc}/supervisor/c.conf"), c.as_bytes());
    w(
        &format!("{etc}/cron.d/ol-cron"),
        b"0 * * * * root /opt/petabox/sbin/cron\n",
    );
    w(
        &format!("{etc}/not-it.conf"),
        b"/opt/petabox2/x petabox /opt/.petabox/seed\n",
    );
    w(
        &format!("{etc}/lib/module.so"),
        b"\x7fELF\0\0\0/opt/petabox/\n",
    );
    let mut big = vec![b' '; 300 * 1024];
    big[256 * 1024 - 5..256 * 1024 + 7].copy_from_slice(b"/opt/petabox");
    w(&format!("{etc}/big.txt"), &big);
    w("openlibrary/venv/lib/site.py", b"/opt/petabox\n");
    w("openlibrary/venv2/lib/site.py", b"nothing\n");
    w(".petabox/seed", b"secret\n");
    symlink("/opt/petabox/www", src.join("openlibrary/petabox-link")).unwrap();
    let archive = d.path().join("opt.tar.zst");
    let out = pack(
        &src,
        &archive,
        &[
            "--json",
            "--exclude",
            "*.pyc",
            "--exclude",
            "/openlibrary/venv/",
            "--exclude",
            "cache/",
        ],
    );
    assert!(out.status.success());
    let s = summary(&out);
    let refs = |dir: &str| -> (u64, Vec<String>) {
        let r = s["references"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["dir"] == dir)
            .unwrap();
        let listed = r["listed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap().to_string());
        (r["files"].as_u64().unwrap(), listed.collect())
    };
    let petabox: Vec<String> = [
        format!("{etc}/big.txt"),
        format!("{etc}/cron.d/ol-cron"),
        format!("{etc}/supervisor/a.conf"),
        format!("{etc}/supervisor/b.conf"),
        format!("{etc}/supervisor/c.conf"),
        "openlibrary/petabox-link".to_string(),
    ]
    .into();
    assert_eq!(refs("petabox"), (6, petabox));
    assert_eq!(
        refs("openlibrary"),
        (1, vec!["petabox/www/index.php".to_string()])
    );
    assert_eq!(refs(".petabox"), (1, vec![format!("{etc}/not-it.conf")]));
    // Excluded: not archived, not scanned, and said why.
    let skipped: Vec<(String, String)> = s["skipped"]["listed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["path"].as_str().unwrap().into(),
                k["reason"].as_str().unwrap().into(),
            )
        })
        .collect();
    let ex = |p: &str, why: &str| (p.to_string(), format!("excluded by {why}"));
    assert_eq!(
        skipped,
        [
            ex("openlibrary/venv", "/openlibrary/venv/"),
            ex("petabox/cache", "cache/"),
            ex("petabox/x.pyc", "*.pyc"),
        ]
    );
    let list = Command::new("tar")
        .args(["--zstd", "-tf"])
        .arg(&archive)
        .output()
        .unwrap();
    let list = String::from_utf8(list.stdout).unwrap();
    assert!(
        list.contains("openlibrary/venv2/lib/site.py\n") && list.contains("petabox/www/cache\n")
    );
    assert!(
        !list.contains("openlibrary/venv/") && !list.contains("x.pyc") && !list.contains("cache/c")
    );
    // Entries and bytes per top-level directory.
    let entries = list.lines().filter(|l| l.starts_with("petabox")).count() as u64;
    assert_eq!(s["top"]["petabox"]["entries"], entries);
    let bytes = [
        "petabox/www/index.php",
        "petabox/sbin/self.sh",
        "petabox/www/cache",
    ]
    .iter()
    .map(|f| fs::metadata(src.join(f)).unwrap().len())
    .sum::<u64>();
    assert_eq!(s["top"]["petabox"]["bytes"], bytes);
    // The same on stderr for a person.
    let err = stderr(&out);
    assert!(
        err.contains("/opt/petabox or ") && err.contains(": 6 files\n"),
        "{err}"
    );
}

/// x86_64 system calls newer than Linux 3.13 (whose last was `finit_module`, 313): all of
/// 3.14 to 4.18 (`sched_setattr` 314 to `rseq` 334), and the later ones a Rust program or
/// its libc may try (`pidfd_*`, `io_uring_setup`, `clone3`, `close_range`, `openat2`,
/// `faccessat2`, `epoll_pwait2`, `futex_waitv`, `cachestat`, `mseal`).
const NEWER_THAN_3_13: [u32; 32] = [
    314, 315, 316, 317, 318, 319, 320, 321, 322, 323, 324, 325, 326, 327, 328, 329, 330, 331, 332,
    333, 334, 424, 425, 434, 435, 436, 437, 439, 441, 449, 451, 462,
];

#[test]
fn pack_runs_on_a_kernel_without_the_system_calls_newer_than_3_13() {
    // The filter bites: getrandom (318) fails with ENOSYS under it.
    let probe = Command::new(common::seccomp_wrapper())
        .args([
            "38",
            "318",
            "--",
            "python3",
            "-c",
            "import os; os.getrandom(1)",
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&probe.stderr);
    assert!(
        !probe.status.success() && said.contains("Function not implemented"),
        "{said}"
    );
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("opt");
    let _sock = feature_tree(&src);
    let modern = d.path().join("modern.tar.zst");
    assert!(pack(&src, &modern, &[]).status.success());
    let legacy = d.path().join("legacy.tar.zst");
    let out = common::olboot_denying(&NEWER_THAN_3_13, 38)
        .arg("pack")
        .arg(&src)
        .arg("-o")
        .arg(&legacy)
        .output()
        .unwrap();
    eprintln!(
        "--- olboot pack under seccomp: {}\n{}",
        out.status,
        stderr(&out)
    );
    assert!(out.status.success());
    // Every fallback gives the same archive.
    assert_eq!(fs::read(&legacy).unwrap(), fs::read(&modern).unwrap());
    let sha = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        sha.trim(),
        format!("{:x}", Sha256::digest(fs::read(&legacy).unwrap()))
    );
}

#[test]
fn an_archive_written_inside_the_tree_is_not_archived_into_itself() {
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("f"), "f").unwrap();
    let archive = d.path().join("self.tar.zst");
    let out = pack(d.path(), &archive, &["--json"]);
    assert!(out.status.success());
    let s = summary(&out);
    assert_eq!(
        s["skipped"]["listed"][0]["path"],
        ".self.tar.zst.olboot-tmp"
    );
    assert_eq!(
        s["skipped"]["listed"][0]["reason"],
        "the archive being written"
    );
    let list = Command::new("tar")
        .args(["--zstd", "-tf"])
        .arg(&archive)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&list.stdout), "f\n./\n");
}

#[test]
fn a_tree_reached_through_a_symlink_is_packed_at_its_real_path() {
    // `/opt -> /1/opt`, as the opt step's `expose: symlink` leaves it.
    let d = tempfile::tempdir().unwrap();
    let real = d.path().join("1/opt");
    fs::create_dir_all(real.join("petabox")).unwrap();
    fs::write(real.join("cron"), "/1/opt/petabox/sbin/x\n").unwrap();
    let flags = rustix::fs::XattrFlags::empty();
    rustix::fs::setxattr(&real, "user.root", b"1", flags).unwrap();
    let link = d.path().join("opt");
    symlink(&real, &link).unwrap();
    let archive = d.path().join("opt.tar.zst");
    let out = pack(&link, &archive, &["--json"]);
    assert!(out.status.success());
    let s = summary(&out);
    assert_eq!(s["references"][0]["dir"], "petabox");
    assert_eq!(s["references"][0]["files"], 1, "{s}");
    let gnu = d.path().join("gnu");
    gnu_extract(&archive, &gnu);
    assert_same(&manifest(&real), &manifest(&gnu), "GNU tar");
}
