//! The volumes step on real loop devices, driven through the binary with `--root` on a scratch
//! root (so `/etc/fstab` is the scratch one and the mounts land below it).
//!
//! Needs root, loop devices, `losetup`, `blkid`, `mkfs.ext4`, `mkfs.xfs`, `mkswap`, `sfdisk`,
//! `pvcreate` and `cryptsetup`; without them the tests fail, they never skip. Every loop
//! device, mount and LVM label a test makes is removed by [`Lab`]'s `Drop`, also on failure.

mod common;

use common::{code, report, run, stderr, step, write};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The scratch root's fstab before olboot touches it.
const FSTAB: &str = "# static table of the target\n/dev/vda / ext4 defaults 0 1\n";

/// A temporary directory with a scratch root, the loop devices and mounts made in it, and
/// the LVM labels to wipe; all undone on drop.
struct Lab {
    dir: tempfile::TempDir,
    loops: Vec<String>,
    pvs: Vec<String>,
}

/// A loop device over a sparse image file in the lab.
struct Disk {
    dev: String,
}

fn sh(prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog)
        .args(args)
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"));
    assert!(
        out.status.success(),
        "{prog} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An LVM config that sees only `dev`, so the host's own volumes are never scanned or touched.
fn lvm_config(dev: &str) -> String {
    format!(
        "devices {{ filter=[\"a|^{dev}$|\",\"r|.*|\"] use_devicesfile=0 obtain_device_list_from_udev=0 }} \
         activation {{ udev_sync=0 udev_rules=0 }}"
    )
}

impl Lab {
    fn new() -> Lab {
        let lab = Lab {
            dir: tempfile::tempdir().unwrap(),
            loops: Vec::new(),
            pvs: Vec::new(),
        };
        write(&lab.root().join("etc/fstab"), FSTAB);
        lab
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn root(&self) -> PathBuf {
        self.path().join("root")
    }

    fn fstab(&self) -> String {
        std::fs::read_to_string(self.root().join("etc/fstab")).unwrap()
    }

    /// A sparse image of `mib` MiB, prepared by `prepare` (which gets its path), then attached.
    fn disk_with(&mut self, name: &str, mib: u64, prepare: impl FnOnce(&Path)) -> Disk {
        let img = self.path().join(format!("{name}.img"));
        std::fs::File::create(&img)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        prepare(&img);
        Disk {
            dev: self.attach(&img),
        }
    }

    fn disk(&mut self, name: &str, mib: u64) -> Disk {
        self.disk_with(name, mib, |_| {})
    }

    fn attach(&mut self, img: &Path) -> String {
        let dev = sh("losetup", &["-f", "--show", img.to_str().unwrap()])
            .trim()
            .to_string();
        self.loops.push(dev.clone());
        dev
    }

    /// Write a single-host config with these volumes (YAML list items) and return its path.
    fn config(&self, volumes: &str) -> PathBuf {
        let p = self.path().join("olboot.yaml");
        write(&p, &format!("version: 1\nvolumes:\n{volumes}"));
        p
    }

    /// Run olboot `verb` (apply or plan) on the scratch root with `cfg`.
    fn olboot(&self, verb: &str, cfg: &Path) -> std::process::Output {
        let root = self.root();
        let mut args = vec![
            verb,
            "-c",
            cfg.to_str().unwrap(),
            "--root",
            root.to_str().unwrap(),
            "--host",
            "x",
        ];
        if verb == "apply" {
            args.push("--json");
        }
        run(&args, None)
    }

    /// The mounts below the lab directory, deepest first.
    fn mounts(&self) -> Vec<PathBuf> {
        let mut m: Vec<PathBuf> = olboot::sys::mount::mounts()
            .unwrap()
            .into_iter()
            .map(|m| m.target)
            .filter(|t| t.starts_with(self.path()))
            .collect();
        m.sort();
        m.reverse();
        m
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for _ in 0..3 {
            for t in self.mounts() {
                if olboot::sys::mount::unmount(&t).is_err() {
                    let _ = rustix::mount::unmount(&t, rustix::mount::UnmountFlags::DETACH);
                }
            }
        }
        for pv in &self.pvs {
            let _ = Command::new("pvremove")
                .args(["-ff", "-y", "-q", "--config", &lvm_config(pv), pv])
                .env("LVM_SUPPRESS_FD_WARNINGS", "1")
                .stdin(Stdio::null())
                .output();
        }
        for l in &self.loops {
            let _ = Command::new("losetup").args(["-d", l]).output();
        }
    }
}

/// sha256 of the whole device, read through the block device (so writes still in its page
/// cache count).
fn digest(dev: &str) -> String {
    let mut f = std::fs::File::open(dev).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    format!("{:x}", h.finalize())
}

/// `blkid -p` tag of a device.
fn tag(dev: &str, name: &str) -> Option<String> {
    let out = Command::new("blkid")
        .args(["-p", "-o", "value", "-s", name, dev])
        .output()
        .unwrap();
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!v.is_empty()).then_some(v)
}

/// The mount at `target`: (source device, mount options).
fn mounted_at(target: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    text.lines().rev().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let pre: Vec<&str> = pre.split(' ').collect();
        (Path::new(pre[4]) == target).then(|| {
            (
                post.split(' ').nth(1).unwrap().to_string(),
                pre[5].to_string(),
            )
        })
    })
}

fn changes(out: &std::process::Output) -> Vec<String> {
    step(&report(out), "volumes")["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect()
}

fn result(out: &std::process::Output) -> String {
    step(&report(out), "volumes")["result"]
        .as_str()
        .unwrap()
        .to_string()
}

fn error(out: &std::process::Output) -> String {
    step(&report(out), "volumes")["error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn volume(dev: &str, mountpoint: &str, extra: &str) -> String {
    format!(
        "  - device: [{dev}]\n    wait: 1s\n    filesystem: ext4\n    label: ol-data\n    mountpoint: {mountpoint}\n{extra}"
    )
}

#[test]
fn blank_disk_is_formatted_mounted_and_persisted_once() {
    let mut lab = Lab::new();
    let d = lab.disk("blank", 64);
    let cfg = lab.config(&volume(&d.dev, "/1", "    options: [noatime]\n"));
    let before = digest(&d.dev);

    // plan changes nothing.
    let out = lab.olboot("plan", &cfg);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert_eq!(
        changes(&out),
        vec![
            format!("format {} as ext4 (label ol-data)", d.dev),
            format!("mount {} at /1", d.dev),
            "add /1 to /etc/fstab".to_string(),
        ]
    );
    assert_eq!(digest(&d.dev), before);
    assert!(!lab.root().join("1").exists());
    assert_eq!(lab.fstab(), FSTAB);

    let out = lab.olboot("apply", &cfg);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        changes(&out),
        vec![
            format!("formatted {} as ext4 (label ol-data)", d.dev),
            format!("mounted {} at /1", d.dev),
            "added /1 to /etc/fstab".to_string(),
        ]
    );
    assert_eq!(tag(&d.dev, "TYPE").as_deref(), Some("ext4"));
    assert_eq!(tag(&d.dev, "LABEL").as_deref(), Some("ol-data"));
    let uuid = tag(&d.dev, "UUID").unwrap();
    let (src, opts) = mounted_at(&lab.root().join("1")).expect("not mounted at root/1");
    assert_eq!(src, d.dev);
    assert!(opts.split(',').any(|o| o == "noatime"), "{opts}");
    let fstab = format!("{FSTAB}UUID={uuid} /1 ext4 noatime,nofail 0 2\n");
    assert_eq!(lab.fstab(), fstab);

    // A rerun changes nothing, and plan agrees.
    let after = digest(&d.dev);
    let out = lab.olboot("apply", &cfg);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(result(&out), "unchanged");
    assert!(changes(&out).is_empty());
    assert_eq!(lab.fstab(), fstab);
    assert_eq!(digest(&d.dev), after);
    let out = lab.olboot("plan", &cfg);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

#[test]
fn blank_disk_is_formatted_as_xfs_when_configured() {
    let mut lab = Lab::new();
    // mkfs.xfs wants at least 300 MiB.
    let d = lab.disk("xfs", 300);
    let cfg = lab.config(&format!(
        "  - device: {}\n    wait: 1s\n    filesystem: xfs\n    label: ol-db\n    mountpoint: /2\n",
        d.dev
    ));
    let out = lab.olboot("apply", &cfg);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        changes(&out)[0],
        format!("formatted {} as xfs (label ol-db)", d.dev)
    );
    assert_eq!(tag(&d.dev, "TYPE").as_deref(), Some("xfs"));
    assert_eq!(tag(&d.dev, "LABEL").as_deref(), Some("ol-db"));
    let uuid = tag(&d.dev, "UUID").unwrap();
    assert_eq!(
        lab.fstab(),
        format!("{FSTAB}UUID={uuid} /2 xfs defaults,nofail 0 2\n")
    );
    assert_eq!(
        mounted_at(&lab.root().join("2")).map(|m| m.0),
        Some(d.dev.clone())
    );
    let out = lab.olboot("apply", &cfg);
    assert_eq!(result(&out), "unchanged", "{}", stderr(&out));
}

#[test]
fn ext4_with_files_is_mounted_intact() {
    let mut lab = Lab::new();
    let src = lab.path().join("src");
    write(
        &src.join("opt/openlibrary/README"),
        "hello from the old VM\n",
    );
    let d = lab.disk_with("old", 64, |img| {
        sh(
            "mkfs.ext4",
            &[
                "-q",
                "-L",
                "old-data",
                "-d",
                src.to_str().unwrap(),
                img.to_str().unwrap(),
            ],
        );
    });
    let uuid = tag(&d.dev, "UUID").unwrap();
    let cfg = lab.config(&volume(&d.dev, "/1", ""));
    let out = lab.olboot("apply", &cfg);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        changes(&out),
        vec![
            format!("mounted {} at /1", d.dev),
            "added /1 to /etc/fstab".to_string()
        ]
    );
    assert_eq!(
        std::fs::read_to_string(lab.root().join("1/opt/openlibrary/README")).unwrap(),
        "hello from the old VM\n"
    );
    // Not reformatted: same filesystem, same label.
    assert_eq!(tag(&d.dev, "UUID").unwrap(), uuid);
    assert_eq!(tag(&d.dev, "LABEL").as_deref(), Some("old-data"));
    assert_eq!(
        lab.fstab(),
        format!("{FSTAB}UUID={uuid} /1 ext4 defaults,nofail 0 2\n")
    );
    // The opt step bind-mounts a directory of the volume at /opt: a second mount of the same
    // filesystem, which is expected and leaves the volume converged.
    let opt = lab.root().join("opt");
    std::fs::create_dir_all(&opt).unwrap();
    olboot::sys::mount::bind(&lab.root().join("1/opt"), &opt).unwrap();
    let out = lab.olboot("apply", &cfg);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(result(&out), "unchanged", "{}", stderr(&out));
}

/// Run olboot on a disk that must be refused: it fails naming the device and what it holds,
/// and the disk, the fstab and the scratch root's mountpoint are left as they were.
fn assert_refused(lab: &Lab, dev: &str, holds: &str) {
    let before = digest(dev);
    let cfg = lab.config(&volume(dev, "/1", ""));
    for verb in ["plan", "apply"] {
        let out = lab.olboot(verb, &cfg);
        assert_eq!(code(&out), 1, "{verb}: {}", stderr(&out));
        assert_eq!(result(&out), "failed");
        let e = error(&out);
        assert!(e.contains(dev) && e.contains(holds), "{verb}: {e}");
        assert!(e.contains("refusing"), "{e}");
        assert_eq!(digest(dev), before, "{verb} changed {dev}");
        assert_eq!(lab.fstab(), FSTAB);
        assert!(!lab.root().join("1").exists());
        assert!(lab.mounts().is_empty());
    }
}

/// A loop disk with a partition table of `label` (gpt or dos) written by sfdisk.
fn partitioned_disk(lab: &mut Lab, label: &str) -> Disk {
    let d = lab.disk(label, 64);
    let mut c = Command::new("sfdisk")
        .args(["-q", "--no-reread", &d.dev])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    c.stdin
        .take()
        .unwrap()
        .write_all(format!("label: {label}\n,32M\n,\n").as_bytes())
        .unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d
}

#[test]
fn gpt_disk_is_refused_unchanged() {
    let mut lab = Lab::new();
    let d = partitioned_disk(&mut lab, "gpt");
    assert_refused(&lab, &d.dev, "a gpt partition table");
}

#[test]
fn mbr_disk_is_refused_unchanged() {
    let mut lab = Lab::new();
    let d = partitioned_disk(&mut lab, "dos");
    assert_refused(&lab, &d.dev, "a dos partition table");
}

#[test]
fn xfs_disk_is_refused_when_ext4_is_configured() {
    let mut lab = Lab::new();
    // mkfs.xfs wants at least 300 MiB.
    let d = lab.disk_with("xfs", 300, |img| {
        sh("mkfs.xfs", &["-q", img.to_str().unwrap()]);
    });
    assert_refused(&lab, &d.dev, "an xfs filesystem");
}

#[test]
fn swap_disk_is_refused_unchanged() {
    let mut lab = Lab::new();
    let d = lab.disk_with("swap", 64, |img| {
        sh("mkswap", &[img.to_str().unwrap()]);
    });
    assert_refused(&lab, &d.dev, "swap space");
}

#[test]
fn lvm_physical_volume_is_refused_unchanged() {
    let mut lab = Lab::new();
    let d = lab.disk("pv", 64);
    lab.pvs.push(d.dev.clone());
    sh("pvcreate", &["-q", "--config", &lvm_config(&d.dev), &d.dev]);
    assert_refused(&lab, &d.dev, "an LVM physical volume");
}

#[test]
fn luks_disk_is_refused_unchanged() {
    let mut lab = Lab::new();
    let d = lab.disk("luks", 64);
    let key = lab.path().join("key");
    std::fs::write(&key, b"not a real secret, only a test key").unwrap();
    sh(
        "cryptsetup",
        &[
            "luksFormat",
            "--batch-mode",
            "--key-file",
            key.to_str().unwrap(),
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            &d.dev,
        ],
    );
    assert_refused(&lab, &d.dev, "a LUKS header");
}

#[test]
fn blank_disk_with_format_never_is_an_error() {
    let mut lab = Lab::new();
    let d = lab.disk("never", 64);
    let before = digest(&d.dev);
    let cfg = lab.config(&volume(&d.dev, "/1", "    format: never\n"));
    let out = lab.olboot("apply", &cfg);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(error(&out).contains("format: never"), "{}", error(&out));
    assert_eq!(digest(&d.dev), before);
    assert_eq!(lab.fstab(), FSTAB);
}

#[test]
fn absent_device_fails_after_the_wait_naming_every_candidate() {
    let lab = Lab::new();
    let a = lab.path().join("by-id/virtio-missing");
    let cfg = lab.config(&format!(
        "  - device: [{}, /dev/olboot-test-absent]\n    wait: 1s\n    mountpoint: /1\n",
        a.display()
    ));
    let t = Instant::now();
    let out = lab.olboot("apply", &cfg);
    let took = t.elapsed();
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(took >= Duration::from_secs(1), "gave up after {took:?}");
    let e = error(&out);
    assert!(
        e.contains(&a.display().to_string()) && e.contains("/dev/olboot-test-absent"),
        "{e}"
    );
    assert_eq!(lab.fstab(), FSTAB);
}

#[test]
fn disk_attached_while_olboot_waits_is_found() {
    let mut lab = Lab::new();
    let by_id = lab.path().join("by-id");
    std::fs::create_dir_all(&by_id).unwrap();
    let link = by_id.join("virtio-ol-data");
    let cfg = lab.config(&format!(
        "  - device: [{}]\n    wait: 30s\n    label: ol-data\n    mountpoint: /1\n",
        link.display()
    ));
    let root = lab.root();
    let child = common::olboot()
        .args(["apply", "--json", "-c", cfg.to_str().unwrap()])
        .args(["--root", root.to_str().unwrap(), "--host", "x"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let img = lab.path().join("late.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let dev = lab.attach(&img);
    std::os::unix::fs::symlink(&dev, &link).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        changes(&out)[0],
        format!("formatted {dev} as ext4 (label ol-data)")
    );
    assert_eq!(
        mounted_at(&lab.root().join("1")).map(|m| m.0),
        Some(dev.clone())
    );
}

#[test]
fn old_fstab_line_for_the_mountpoint_is_commented_out_never_duplicated() {
    let mut lab = Lab::new();
    let d = lab.disk("fstab", 64);
    let before = "# static table of the target\n\
                  /dev/vda / ext4 defaults 0 1\n\
                  UUID=0ld-d15k /1 ext4 defaults 0 2\n\
                  \t/dev/sdz1\t/2  xfs defaults 0 0   \n\
                  /dev/sdy1 /1 ext4 noatime 0 2\n";
    write(&lab.root().join("etc/fstab"), before);
    let cfg = lab.config(&volume(&d.dev, "/1", ""));
    let out = lab.olboot("plan", &cfg);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(
        changes(&out)[2].starts_with("replace the /etc/fstab line for /1"),
        "{:?}",
        changes(&out)
    );
    let out = lab.olboot("apply", &cfg);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let uuid = tag(&d.dev, "UUID").unwrap();
    let want = format!(
        "# static table of the target\n\
         /dev/vda / ext4 defaults 0 1\n\
         # olboot replaced: UUID=0ld-d15k /1 ext4 defaults 0 2\n\
         UUID={uuid} /1 ext4 defaults,nofail 0 2\n\
         \t/dev/sdz1\t/2  xfs defaults 0 0   \n\
         # olboot replaced: /dev/sdy1 /1 ext4 noatime 0 2\n"
    );
    assert_eq!(lab.fstab(), want);
    for _ in 0..2 {
        let out = lab.olboot("apply", &cfg);
        assert_eq!(result(&out), "unchanged", "{}", stderr(&out));
        assert_eq!(lab.fstab(), want);
    }
    let active = lab
        .fstab()
        .lines()
        .filter(|l| !l.starts_with('#') && l.split_whitespace().nth(1) == Some("/1"))
        .count();
    assert_eq!(active, 1);
}

#[test]
fn one_failing_volume_does_not_stop_the_others() {
    let mut lab = Lab::new();
    let bad = lab.disk_with("swap", 64, |img| {
        sh("mkswap", &[img.to_str().unwrap()]);
    });
    let good = lab.disk("good", 64);
    let bad_before = digest(&bad.dev);
    let cfg = lab.config(&format!(
        "{}{}",
        volume(&bad.dev, "/2", ""),
        volume(&good.dev, "/1", "")
    ));
    // plan lists the good volume's changes and fails with the bad one, as apply will.
    let out = lab.olboot("plan", &cfg);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let planned = changes(&out);
    assert_eq!(
        planned[0],
        format!("format {} as ext4 (label ol-data)", good.dev)
    );
    let planned_error = error(&out);
    assert!(planned_error.starts_with("/2: "), "{planned_error}");
    let out = lab.olboot("apply", &cfg);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert_eq!(
        changes(&out),
        vec![
            format!("formatted {} as ext4 (label ol-data)", good.dev),
            format!("mounted {} at /1", good.dev),
            "added /1 to /etc/fstab".to_string(),
        ]
    );
    let e = error(&out);
    assert!(e.starts_with("/2: ") && e.contains(&bad.dev), "{e}");
    assert_eq!(digest(&bad.dev), bad_before);
    assert!(mounted_at(&lab.root().join("1")).is_some());
    assert!(!lab.root().join("2").exists());
    // Rerun: /1 is converged, /2 still fails, and plan says so too.
    let out = lab.olboot("apply", &cfg);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(changes(&out).is_empty());
    let out = lab.olboot("plan", &cfg);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
}

#[test]
fn something_else_mounted_at_the_mountpoint_is_an_error() {
    let mut lab = Lab::new();
    let d = lab.disk("covered", 64);
    let before = digest(&d.dev);
    let mp = lab.root().join("1");
    std::fs::create_dir_all(&mp).unwrap();
    rustix::mount::mount(
        "tmpfs",
        &mp,
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        None,
    )
    .unwrap();
    let cfg = lab.config(&volume(&d.dev, "/1", ""));
    let out = lab.olboot("apply", &cfg);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        error(&out).contains("already mounted at"),
        "{}",
        error(&out)
    );
    assert_eq!(digest(&d.dev), before);
    assert_eq!(lab.fstab(), FSTAB);
}

#[test]
fn disk_mounted_elsewhere_is_not_mounted_again() {
    let mut lab = Lab::new();
    let d = lab.disk_with("busy", 64, |img| {
        sh("mkfs.ext4", &["-q", img.to_str().unwrap()]);
    });
    let elsewhere = lab.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    olboot::sys::mount::mount_with(Path::new(&d.dev), &elsewhere, "ext4", &[]).unwrap();
    let cfg = lab.config(&volume(&d.dev, "/1", ""));
    let out = lab.olboot("apply", &cfg);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        error(&out).contains("already mounted elsewhere"),
        "{}",
        error(&out)
    );
    assert!(mounted_at(&lab.root().join("1")).is_none());
    assert_eq!(lab.fstab(), FSTAB);
}
