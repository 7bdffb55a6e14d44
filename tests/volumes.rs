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
use std::os::unix::fs::MetadataExt;
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
    /// Processes a test started (a mount namespace kept alive), killed on drop.
    kids: Vec<std::process::Child>,
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
            kids: Vec::new(),
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

    /// A loop device over `len` bytes of `img` from byte `offset` (a partition, as
    /// `losetup -o` sees it).
    fn attach_at(&mut self, img: &Path, offset: u64, len: u64) -> String {
        let (o, l) = (offset.to_string(), len.to_string());
        let args = [
            "-f",
            "--show",
            "-o",
            &o,
            "--sizelimit",
            &l,
            img.to_str().unwrap(),
        ];
        let dev = sh("losetup", &args).trim().to_string();
        self.loops.push(dev.clone());
        dev
    }

    /// Detach a loop device made by this lab before the lab ends (its name is then free for
    /// others, so it must not be detached again on drop).
    fn detach(&mut self, dev: &str) {
        sh("losetup", &["-d", dev]);
        self.loops.retain(|l| l != dev);
    }

    /// Write a single-host config with these volumes (YAML list items) and return its path.
    fn config(&self, volumes: &str) -> PathBuf {
        let p = self.path().join("olboot.yaml");
        write(&p, &format!("version: 1\nvolumes:\n{volumes}"));
        p
    }

    /// Run olboot `verb` (apply or plan) on the scratch root with `cfg`.
    fn olboot(&self, verb: &str, cfg: &Path) -> std::process::Output {
        self.olboot_on(verb, cfg, &self.root())
    }

    /// [`Lab::olboot`] with `--root root`.
    fn olboot_on(&self, verb: &str, cfg: &Path, root: &Path) -> std::process::Output {
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

    /// `olboot apply --json` of `cfg` on the lab's root, to be given more before it runs.
    fn apply_command(&self, cfg: &Path) -> Command {
        let mut c = common::olboot();
        c.args(["apply", "--json", "-c", cfg.to_str().unwrap()])
            .args(["--root", self.root().to_str().unwrap(), "--host", "x"]);
        c
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
        for k in &mut self.kids {
            let _ = k.kill();
            let _ = k.wait();
        }
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
        // Loop devices made over other loop devices go first. Partitions added with
        // addpart outlive the loop device: delete them first.
        for l in self.loops.iter().rev() {
            let name = l.trim_start_matches("/dev/");
            let parts = std::fs::read_dir(format!("/sys/block/{name}"))
                .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
                .unwrap_or_default();
            for p in parts {
                let p = p.to_string_lossy();
                if let Some(n) = p.strip_prefix(&format!("{name}p")) {
                    let _ = Command::new("delpart").args([l.as_str(), n]).output();
                }
            }
            let _ = Command::new("losetup").args(["-d", l]).output();
        }
    }
}

/// sha256 of the whole device, read through the block device (so writes still in its page
/// cache count). All-zero MiBs are not hashed, the others are with their offsets, and the
/// size last: equal digests still mean equal bytes, and a sparse 4 GiB disk costs a `memcmp`
/// instead of 4 GiB of sha256.
fn digest(dev: &str) -> String {
    let mut f = std::fs::File::open(dev).unwrap();
    let mut h = Sha256::new();
    let (mut buf, zero) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut at = 0u64;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        if buf[..n] != zero[..n] {
            h.update(at.to_le_bytes());
            h.update(&buf[..n]);
        }
        at += n as u64;
    }
    h.update(at.to_le_bytes());
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
fn a_label_with_a_caret_is_formatted_and_reported() {
    let mut lab = Lab::new();
    let d = lab.disk("caret", 64);
    // blkid's export format prints a literal ^ unescaped, and "^D" also spells Ctrl-D.
    let cfg = lab.config(&format!(
        "  - device: [{}]\n    wait: 1s\n    filesystem: ext4\n    label: \"ol^Data\"\n    mountpoint: /1\n",
        d.dev
    ));
    let out = lab.olboot("apply", &cfg);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        changes(&out)[0],
        format!("formatted {} as ext4 (label ol^Data)", d.dev)
    );
    assert_eq!(tag(&d.dev, "LABEL").as_deref(), Some("ol^Data"));
    let out = lab.olboot("apply", &cfg);
    assert_eq!(result(&out), "unchanged", "{}", stderr(&out));
    // A literal "M-CM-^U" (blkid's export spelling of "Õ") is checked as stored, too.
    for t in lab.mounts() {
        olboot::sys::mount::unmount(&t).unwrap();
    }
    let d = lab.disk("meta", 64);
    write(&lab.root().join("etc/fstab"), FSTAB);
    let cfg = lab.config(&format!(
        "  - device: [{}]\n    wait: 1s\n    filesystem: ext4\n    label: \"M-CM-^U\"\n    mountpoint: /1\n",
        d.dev
    ));
    let out = lab.olboot("apply", &cfg);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        changes(&out)[0],
        format!("formatted {} as ext4 (label M-CM-^U)", d.dev)
    );
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

/// Write the partition table `script` (sfdisk's input) on `target`, a device or an image.
fn sfdisk(target: &str, script: &str) {
    let mut c = Command::new("sfdisk")
        .args(["-q", "--no-reread", target])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    c.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A loop disk with a partition table of `label` (gpt or dos) written by sfdisk.
fn partitioned_disk(lab: &mut Lab, label: &str) -> Disk {
    let d = lab.disk(label, 64);
    sfdisk(&d.dev, &format!("label: {label}\n,32M\n,\n"));
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
    let child = lab
        .apply_command(&cfg)
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

// ---------------------------------------------------------------------------------------------
// The blank proof (issue 11): disks that carry data without a signature this blkid knows, disks
// the kernel still uses, writers racing olboot, and blank disks that must still be formatted.

/// The peers' corpus: `OLBOOT_CORPUS`, else `../shared/corpus` beside the repository, else
/// `/work/shared/corpus`.
fn corpus() -> PathBuf {
    if let Some(p) = std::env::var_os("OLBOOT_CORPUS") {
        return PathBuf::from(p);
    }
    let beside = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus");
    if beside.is_dir() {
        return beside;
    }
    PathBuf::from("/work/shared/corpus")
}

/// Decompress the xz file `src` into each of `dsts` (path, length to pad to with zeros),
/// leaving all-zero 64 KiB blocks as holes. Returns the image's length and sha256.
fn unxz(src: &Path, dsts: &[(&Path, Option<u64>)]) -> (u64, String) {
    use std::io::{Seek, SeekFrom, Write};
    let mut r = liblzma::read::XzDecoder::new(std::fs::File::open(src).unwrap());
    let mut ws: Vec<std::fs::File> = dsts
        .iter()
        .map(|(p, _)| std::fs::File::create(p).unwrap())
        .collect();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    let zeros = vec![0u8; 64 << 10];
    let mut len = 0u64;
    loop {
        let mut n = 0;
        while n < buf.len() {
            let got = r.read(&mut buf[n..]).unwrap();
            if got == 0 {
                break;
            }
            n += got;
        }
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        for w in &mut ws {
            // A slice comparison is a memcmp, fast in a debug build too.
            if buf[..n] == zeros[..n] {
                w.seek(SeekFrom::Current(n as i64)).unwrap();
            } else {
                w.write_all(&buf[..n]).unwrap();
            }
        }
        len += n as u64;
    }
    for (w, (_, size)) in ws.iter().zip(dsts) {
        w.set_len(size.unwrap_or(len).max(len)).unwrap();
    }
    (len, format!("{:x}", h.finalize()))
}

/// sha256 of the first `len` bytes of the file `img`.
fn digest_prefix(img: &Path, len: u64) -> String {
    let f = std::fs::File::open(img).unwrap();
    let mut r = f.take(len);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    format!("{:x}", h.finalize())
}

/// Flush what was written through `dev` to its backing file.
fn flush(dev: &str) {
    std::fs::File::open(dev).unwrap().sync_all().unwrap();
}

/// Whether the file `img` holds no data at or after byte `from` (only holes: nothing was
/// written there, not even zeros).
fn holes_after(img: &Path, from: u64) -> bool {
    let f = std::fs::File::open(img).unwrap();
    matches!(
        rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(from)),
        Err(rustix::io::Errno::NXIO)
    )
}

/// A volume of filesystem `fs` on `dev` at `mountpoint`, found at once or never.
fn volume_fs(dev: &str, mountpoint: &str, fs: &str) -> String {
    format!(
        "  - device: [{dev}]\n    wait: 0s\n    filesystem: {fs}\n    label: ol-data\n    mountpoint: {mountpoint}\n"
    )
}

#[test]
fn no_corpus_image_is_formatted_as_is_or_padded_to_256_mib() {
    let started = Instant::now();
    let mut lab = Lab::new();
    let mut images: Vec<PathBuf> = std::fs::read_dir(corpus().join("blkid"))
        .unwrap_or_else(|e| panic!("no corpus at {}: {e}", corpus().display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".img.xz"))
        .collect();
    images.sort();
    assert!(images.len() >= 100, "only {} images", images.len());
    // (device, image file, image length, sha256)
    let mut disks = Vec::new();
    let mut vols = String::new();
    for (i, src) in images.iter().enumerate() {
        let name = src.file_name().unwrap().to_string_lossy().into_owned();
        // The configured filesystem is never the image's, so olboot never mounts one either.
        let fs = if name.contains("ext") || name.contains("jbd") {
            "xfs"
        } else {
            "ext4"
        };
        let as_is = lab.path().join(format!("{i}-as-is.img"));
        let padded = lab.path().join(format!("{i}-padded.img"));
        let (len, sha) = unxz(src, &[(&as_is, None), (&padded, Some(256 << 20))]);
        for (kind, img) in [("as-is", as_is), ("padded", padded)] {
            let dev = lab.attach(&img);
            vols.push_str(&volume_fs(&dev, &format!("/v{i}-{kind}"), fs));
            disks.push((dev, img, len, sha.clone(), name.clone()));
        }
    }
    let cfg = lab.config(&vols);
    let prepared = started.elapsed();
    for verb in ["plan", "apply"] {
        let out = lab.olboot(verb, &cfg);
        assert_eq!(code(&out), 1, "{verb}: {}", stderr(&out));
        assert!(changes(&out).is_empty(), "{verb}: {:?}", changes(&out));
        let e = error(&out);
        for (dev, _, _, _, name) in &disks {
            assert!(
                e.contains(&format!("{dev} ")),
                "{verb}: {name} on {dev}: {e}"
            );
        }
    }
    for (dev, img, len, sha, name) in &disks {
        flush(dev);
        // The image file, not the device: a loop device ends at a multiple of 512 bytes.
        assert_eq!(&digest_prefix(img, *len), sha, "{name} on {dev} changed");
        // From the file system block after the image's last byte on.
        assert!(
            holes_after(img, (len + 4095) & !4095),
            "{name}: written after its end"
        );
    }
    assert_eq!(lab.fstab(), FSTAB);
    assert!(lab.mounts().is_empty());
    eprintln!(
        "{} images, {} loop devices: prepared in {prepared:?}, all in {:?}",
        images.len(),
        disks.len(),
        started.elapsed()
    );
}

/// Write `data` at `offset` of the file `img`.
fn put(img: &Path, offset: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    f.write_all_at(data, offset).unwrap();
}

/// Zero `len` bytes at `offset` of the file `img`.
fn zero(img: &Path, offset: u64, len: u64) {
    put(img, offset, &vec![0u8; len as usize]);
}

/// `blkid -p` finds nothing on `dev` (exit 2 with nothing said), so only the rest of the proof
/// can refuse it.
fn assert_no_signature(dev: &str) {
    let out = Command::new("blkid").args(["-p", dev]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "blkid still sees {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// olboot (plan, then apply) refuses `dev` with an error containing every one of `says`; the
/// device, the fstab and the mountpoint are unchanged.
fn assert_refused_saying(lab: &Lab, dev: &str, says: &[&str]) -> String {
    let before = digest(dev);
    let cfg = lab.config(&volume(dev, "/1", ""));
    let mut last = String::new();
    for verb in ["plan", "apply"] {
        let out = lab.olboot(verb, &cfg);
        assert_eq!(code(&out), 1, "{verb}: {}", stderr(&out));
        assert!(changes(&out).is_empty(), "{verb}: {:?}", changes(&out));
        last = error(&out);
        assert!(last.contains(dev) && last.contains("refusing"), "{last}");
        for s in says {
            assert!(last.contains(s), "{verb}: no {s:?} in: {last}");
        }
        flush(dev);
        assert_eq!(digest(dev), before, "{verb} changed {dev}");
        assert_eq!(lab.fstab(), FSTAB);
        assert!(!lab.root().join("1").exists());
    }
    last
}

/// The refusal of data without signature names the offset and the command that clears it.
const DATA: &[&str] = &["not blank: non-zero bytes at byte", "blkdiscard -z"];

#[test]
fn ext4_after_wipefs_is_refused_by_its_backup_superblocks() {
    let mut lab = Lab::new();
    let d = lab.disk_with("wiped-ext4", 512, |img| {
        sh("mkfs.ext4", &["-q", "-b", "4096", img.to_str().unwrap()]);
        sh("wipefs", &["-a", "-q", img.to_str().unwrap()]);
    });
    assert_no_signature(&d.dev);
    assert_refused_saying(&lab, &d.dev, DATA);
}

#[test]
fn ext4_with_both_ends_zeroed_is_refused_by_what_lies_between() {
    let mut lab = Lab::new();
    let d = lab.disk_with("ends-zeroed", 512, |img| {
        sh("mkfs.ext4", &["-q", "-b", "4096", img.to_str().unwrap()]);
        zero(img, 0, 16 << 20);
        zero(img, 496 << 20, 16 << 20);
    });
    assert_no_signature(&d.dev);
    assert_refused_saying(&lab, &d.dev, DATA);
}

#[test]
fn gpt_with_its_primary_header_zeroed_is_refused_by_the_backup_header() {
    let mut lab = Lab::new();
    let d = partitioned_disk(&mut lab, "gpt");
    zero_through(&d.dev, 0, 1 << 20);
    assert_no_signature(&d.dev);
    let e = assert_refused_saying(&lab, &d.dev, DATA);
    assert!(e.contains("the end of the device"), "{e}");
}

/// Zero `len` bytes at `offset` through the block device `dev`.
fn zero_through(dev: &str, offset: u64, len: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(dev).unwrap();
    f.write_all_at(&vec![0u8; len as usize], offset).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn lvm_label_zeroed_with_metadata_left_is_refused() {
    let mut lab = Lab::new();
    let d = lab.disk("pv-nolabel", 64);
    lab.pvs.push(d.dev.clone());
    sh("pvcreate", &["-q", "--config", &lvm_config(&d.dev), &d.dev]);
    // The label sits in sector 1; the metadata area from 4 KiB on stays.
    zero_through(&d.dev, 0, 4096);
    assert_no_signature(&d.dev);
    assert_refused_saying(&lab, &d.dev, DATA);
}

#[test]
fn btrfs_without_its_primary_superblock_is_refused() {
    let mut lab = Lab::new();
    let d = lab.disk_with("btrfs", 256, |img| {
        sh("mkfs.btrfs", &["-q", img.to_str().unwrap()]);
        zero(img, 64 << 10, 4096);
    });
    assert_no_signature(&d.dev);
    assert_refused_saying(&lab, &d.dev, DATA);
}

#[test]
fn gpt_wiped_over_an_ext4_at_1_mib_is_refused() {
    let mut lab = Lab::new();
    let d = partitioned_disk(&mut lab, "gpt");
    sh("mkfs.ext4", &["-q", "-E", "offset=1048576", &d.dev, "16M"]);
    sh("wipefs", &["-a", "-q", &d.dev]);
    assert_no_signature(&d.dev);
    assert_refused_saying(&lab, &d.dev, DATA);
}

#[test]
fn ext4_partition_at_1_mib_with_both_disk_ends_zeroed_is_refused() {
    // On tmpfs: reading 4 GiB of holes through a loop device takes ~18 s on this disk.
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let mut lab = Lab::new();
    // 4 GiB: the sample's stride is 2 MiB, so it never lands on the partition's ext4
    // backups at 1 MiB + g x 128 MiB; only reading them where a partition puts them finds them.
    let (size, start, len) = (4u64 << 30, 1u64 << 20, (4u64 << 30) - (2 << 20));
    let img = shm.path().join("part-ext4.img");
    std::fs::File::create(&img).unwrap().set_len(size).unwrap();
    let img_s = img.to_str().unwrap();
    sfdisk(
        img_s,
        &format!("label: gpt\nstart={}, size={}\n", start / 512, len / 512),
    );
    let part = lab.attach_at(&img, start, len);
    sh("mkfs.ext4", &["-q", "-b", "4096", &part]);
    lab.detach(&part);
    zero(&img, 0, 16 << 20);
    zero(&img, size - (16 << 20), 16 << 20);
    let d = lab.attach(&img);
    assert_no_signature(&d);
    let e = assert_refused_saying(&lab, &d, DATA);
    assert!(e.contains("ext4 backup superblock"), "{e}");
}

#[test]
fn random_data_at_100_mib_behind_a_zeroed_start_is_refused() {
    let mut lab = Lab::new();
    let d = lab.disk_with("random", 2048, |img| {
        let mut data = vec![0u8; 4 << 20];
        std::fs::File::open("/dev/urandom")
            .unwrap()
            .read_exact(&mut data)
            .unwrap();
        put(img, 100 << 20, &data);
    });
    assert_no_signature(&d.dev);
    let e = assert_refused_saying(&lab, &d.dev, DATA);
    assert!(e.contains(&format!("byte {}", 100u64 << 20)), "{e}");
}

#[test]
fn disk_under_a_loop_device_at_an_offset_is_refused() {
    let mut lab = Lab::new();
    let d = lab.disk("under-loop", 64);
    let over = sh("losetup", &["-f", "--show", "-o", "1048576", &d.dev])
        .trim()
        .to_string();
    lab.loops.push(over.clone());
    // The disk is all zeros: only the kernel knows it is used.
    assert_refused_saying(
        &lab,
        &d.dev,
        &[&format!(
            "loop device {over} is backed by it (offset 1048576)"
        )],
    );
}

#[test]
fn disk_under_a_loop_device_whose_backing_node_was_removed_is_refused() {
    let mut lab = Lab::new();
    let d = lab.disk("node-gone", 64);
    let numbers = std::fs::metadata(&d.dev).unwrap().rdev();
    let node = lab.path().join("disk-node");
    let (major, minor) = (rustix::fs::major(numbers), rustix::fs::minor(numbers));
    sh(
        "mknod",
        &[
            node.to_str().unwrap(),
            "b",
            &major.to_string(),
            &minor.to_string(),
        ],
    );
    let over = sh("losetup", &["-f", "--show", node.to_str().unwrap()])
        .trim()
        .to_string();
    lab.loops.push(over.clone());
    // backing_file now reads "…/disk-node (deleted)": nothing there to stat.
    std::fs::remove_file(&node).unwrap();
    assert_refused_saying(
        &lab,
        &d.dev,
        &[&format!("loop device {over} is backed by it (offset 0)")],
    );
}

#[test]
fn filesystem_mounted_in_another_mount_namespace_is_not_mounted_again() {
    let mut lab = Lab::new();
    let d = lab.disk_with("other-ns", 64, |img| {
        sh("mkfs.ext4", &["-q", img.to_str().unwrap()]);
    });
    let there = lab.path().join("there");
    std::fs::create_dir_all(&there).unwrap();
    let kid = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sleep", "600"])
        .spawn()
        .unwrap();
    let pid = kid.id().to_string();
    lab.kids.push(kid);
    // Wait for the child to be in its own namespace before mounting there.
    let mine = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
        .ok()
        .as_ref()
        == Some(&mine)
    {
        assert!(Instant::now() < deadline, "unshare did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    sh(
        "nsenter",
        // Read-only: a read-write ext4 writes to its disk by itself (lazy inode table init).
        &[
            "-t",
            &pid,
            "-m",
            "mount",
            "-o",
            "ro",
            &d.dev,
            there.to_str().unwrap(),
        ],
    );
    assert!(mounted_at(&there).is_none(), "the mount leaked here");
    let e = assert_refused_saying(&lab, &d.dev, &["in mount namespace", &format!("pid {pid}")]);
    assert!(e.contains("refusing to mount it"), "{e}");
}

/// A sparse image of `mib` MiB with an MBR of `(start, sectors)` entries written by hand
/// (sfdisk refuses overlapping ones), attached; the kernel gets the partitions numbered in
/// `kernel` (this kernel has no partition table parser: `addpart`, as partx does).
fn disk_with_mbr(
    lab: &mut Lab,
    name: &str,
    mib: u64,
    parts: &[(u32, u32)],
    kernel: &[usize],
) -> Disk {
    let img = lab.path().join(format!("{name}.img"));
    std::fs::File::create(&img)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
    let mut mbr = vec![0u8; 512];
    for (i, (start, len)) in parts.iter().enumerate() {
        let e = &mut mbr[446 + 16 * i..446 + 16 * (i + 1)];
        e[4] = 0x83;
        e[8..12].copy_from_slice(&start.to_le_bytes());
        e[12..16].copy_from_slice(&len.to_le_bytes());
    }
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    put(&img, 0, &mbr);
    let dev = lab.attach(&img);
    for n in kernel {
        let (start, len) = parts[n - 1];
        sh(
            "addpart",
            &[&dev, &n.to_string(), &start.to_string(), &len.to_string()],
        );
    }
    Disk { dev }
}

/// A device node in the lab for partition `n` of the loop device `disk` (no udev here makes
/// `/dev/loopNpM`), from the kernel's numbers in sysfs.
fn partition_node(lab: &Lab, disk: &Disk, n: u32) -> String {
    let name = format!("{}p{n}", disk.dev.trim_start_matches("/dev/"));
    let sys = format!("/sys/class/block/{name}/dev");
    let numbers = std::fs::read_to_string(&sys).unwrap_or_else(|e| panic!("{sys}: {e}"));
    let (major, minor) = numbers.trim().split_once(':').unwrap();
    let node = lab.path().join(&name);
    sh("mknod", &[node.to_str().unwrap(), "b", major, minor]);
    node.to_str().unwrap().to_string()
}

#[test]
fn disk_the_kernel_has_partitions_on_is_refused_even_with_its_table_zeroed() {
    let mut lab = Lab::new();
    let d = disk_with_mbr(&mut lab, "stale-parts", 64, &[(2048, 32768)], &[1]);
    partition_node(&lab, &d, 1);
    zero_through(&d.dev, 0, 512);
    assert_no_signature(&d.dev);
    assert_refused_saying(&lab, &d.dev, &["the kernel has partitions on it"]);
}

#[test]
fn partition_overlapping_a_partition_with_data_is_refused() {
    let mut lab = Lab::new();
    // p1: 1 MiB + 32 MiB, p2 from 17 MiB on: its first 16 MiB are p1's last.
    // The kernel refuses overlapping partitions: it knows only p2, the table lists both.
    let d = disk_with_mbr(
        &mut lab,
        "overlap",
        64,
        &[(2048, 65536), (34816, 40960)],
        &[2],
    );
    let p2 = partition_node(&lab, &d, 2);
    sh("mkfs.ext4", &["-q", "-E", "offset=1048576", &d.dev, "32M"]);
    assert_refused_saying(
        &lab,
        &p2,
        &[&format!("overlaps partition 1 of the table on {}", d.dev)],
    );
}

#[test]
fn blank_partition_beside_one_with_data_is_formatted_and_nothing_else_changes() {
    let mut lab = Lab::new();
    let d = disk_with_mbr(
        &mut lab,
        "beside",
        96,
        &[(2048, 32768), (36864, 32768)],
        &[1, 2],
    );
    let p1 = partition_node(&lab, &d, 1);
    let p2 = partition_node(&lab, &d, 2);
    let src = lab.path().join("src");
    write(&src.join("keep/me"), "data beside the target\n");
    sh("mkfs.ext4", &["-q", "-d", src.to_str().unwrap(), &p1]);
    let (start, end) = (36864u64 * 512, (36864u64 + 32768) * 512);
    let size = 96u64 << 20;
    let outside = |dev: &str| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(dev).unwrap();
        let mut h = Sha256::new();
        for (a, b) in [(0, start), (end, size)] {
            let mut buf = vec![0u8; (b - a) as usize];
            f.read_exact_at(&mut buf, a).unwrap();
            h.update(&buf);
        }
        format!("{:x}", h.finalize())
    };
    let before = outside(&d.dev);
    let cfg = lab.config(&volume(&p2, "/1", ""));
    let out = lab.olboot("apply", &cfg);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        changes(&out)[0],
        format!("formatted {p2} as ext4 (label ol-data)")
    );
    assert_eq!(tag(&p2, "TYPE").as_deref(), Some("ext4"));
    for t in lab.mounts() {
        olboot::sys::mount::unmount(&t).unwrap();
    }
    flush(&d.dev);
    flush(&p2);
    assert_eq!(outside(&d.dev), before, "bytes outside {p2} changed");
    assert_eq!(tag(&p1, "TYPE").as_deref(), Some("ext4"));
}

/// Start `sleep 300` holding `dev` open read-write (as `3<>dev`), kept in the lab until it
/// ends; returns its pid once the file is open.
fn hold_open(lab: &mut Lab, dev: &str) -> String {
    let kid = Command::new("sh")
        .args(["-c", "exec sleep 300 3<>\"$0\"", dev])
        .spawn()
        .unwrap();
    let pid = kid.id().to_string();
    lab.kids.push(kid);
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_link(format!("/proc/{pid}/exe")).map_or(true, |e| !e.ends_with("sleep"))
        || !Path::new(&format!("/proc/{pid}/fd/3")).exists()
    {
        assert!(Instant::now() < deadline, "sleep did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    pid
}

#[test]
fn blank_partition_of_a_disk_a_process_holds_open_is_refused() {
    let mut lab = Lab::new();
    let d = disk_with_mbr(
        &mut lab,
        "disk-open",
        96,
        &[(2048, 32768), (36864, 32768)],
        &[1, 2],
    );
    let p2 = partition_node(&lab, &d, 2);
    let pid = hold_open(&mut lab, &d.dev);
    let e = assert_refused_saying(&lab, &p2, &[&format!("process {pid} (sleep)")]);
    assert!(
        !e.contains('\n') && e.contains("the whole disk it is on"),
        "{e}"
    );
}

#[test]
fn symlinked_fstab_is_refused_before_the_disk_is_formatted() {
    let mut lab = Lab::new();
    let d = lab.disk("fstab-link", 64);
    let etc = lab.root().join("etc");
    std::fs::rename(etc.join("fstab"), etc.join("fstab.real")).unwrap();
    std::os::unix::fs::symlink("fstab.real", etc.join("fstab")).unwrap();
    let e = assert_refused_saying(&lab, &d.dev, &["is a symlink"]);
    assert!(e.contains("refusing to format or mount it"), "{e}");
    assert!(lab.mounts().is_empty());
    assert_eq!(tag(&d.dev, "TYPE"), None);
}

#[test]
fn a_volume_whose_fstab_write_fails_is_unmounted_again() {
    let mut lab = Lab::new();
    let d = lab.disk("fstab-fails", 64);
    // Passes every check, but the write of its temporary file fails.
    std::fs::create_dir(lab.root().join("etc/.fstab.olboot-tmp")).unwrap();
    let cfg = lab.config(&volume(&d.dev, "/1", ""));
    let out = lab.olboot("apply", &cfg);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let e = error(&out);
    assert!(e.contains(&format!("(unmounted {} from", d.dev)), "{e}");
    assert!(lab.mounts().is_empty(), "{:?}", lab.mounts());
    assert_eq!(lab.fstab(), FSTAB);
    // What was done and stays done is reported; the mount that was undone is not.
    assert_eq!(
        changes(&out),
        vec![format!("formatted {} as ext4 (label ol-data)", d.dev)]
    );
}

/// Run olboot live (no `--root`) in a private mount namespace over a copy of `/etc` and
/// empty `/run` and `/var/lib`, so the machine's own files are never touched: `apply` with
/// `cfg` twice. Returns both outputs (stdout, exit code) and the fstab afterwards; the mounts
/// vanish with the namespace.
fn olboot_live_twice(lab: &Lab, cfg: &Path) -> (Vec<(String, i32)>, String) {
    let script = r#"set -e
cp -a /etc "$0/etc-copy"
mount --bind "$0/etc-copy" /etc
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /var/lib
printf '# live test\n' > /etc/fstab
for n in 1 2; do
    rc=0; "$1" apply -c "$2" --host x --json > "$0/out$n" 2> "$0/err$n" || rc=$?
    echo $rc > "$0/rc$n"
done
cp /etc/fstab "$0/fstab-after""#;
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script])
        .arg(lab.path())
        .arg(env!("CARGO_BIN_EXE_olboot"))
        .arg(cfg)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |n: &str| std::fs::read_to_string(lab.path().join(n)).unwrap();
    let runs = ["1", "2"]
        .iter()
        .map(|n| {
            let rc = read(&format!("rc{n}")).trim().parse().unwrap();
            (read(&format!("out{n}")), rc)
        })
        .collect();
    (runs, read("fstab-after"))
}

#[test]
fn live_mountpoint_below_a_symlink_is_mounted_and_then_unchanged() {
    let mut lab = Lab::new();
    let d = lab.disk("via-link", 64);
    std::fs::create_dir(lab.path().join("real")).unwrap();
    let link = lab.path().join("link");
    std::os::unix::fs::symlink(lab.path().join("real"), &link).unwrap();
    let mountpoint = link.join("1");
    let cfg = lab.config(&volume(&d.dev, mountpoint.to_str().unwrap(), ""));
    let (runs, fstab) = olboot_live_twice(&lab, &cfg);
    let volumes = |out: &str| step(&serde_json::from_str(out).unwrap(), "volumes").clone();
    let first = volumes(&runs[0].0);
    assert_eq!(runs[0].1, 0, "{first}");
    assert_eq!(first["changes"].as_array().unwrap().len(), 3, "{first}");
    let second = volumes(&runs[1].0);
    assert_eq!(
        (runs[1].1, second["result"].as_str()),
        (0, Some("unchanged")),
        "{second}"
    );
    let uuid = tag(&d.dev, "UUID").unwrap();
    assert_eq!(
        fstab,
        format!(
            "# live test\nUUID={uuid} {} ext4 defaults,nofail 0 2\n",
            mountpoint.display()
        )
    );
}

#[test]
fn a_read_only_disk_is_never_promised_a_format() {
    let mut lab = Lab::new();
    let img = lab.path().join("ro.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let dev = sh("losetup", &["-f", "--show", "-r", img.to_str().unwrap()])
        .trim()
        .to_string();
    lab.loops.push(dev.clone());
    assert_refused_saying(&lab, &dev, &["read-only"]);
}

#[test]
fn plan_and_apply_say_the_same_changes_in_two_tenses() {
    let mut lab = Lab::new();
    let d = lab.disk("tenses", 64);
    write(
        &lab.root().join("etc/fstab"),
        &format!("{FSTAB}/dev/sdz9 /1 ext4 defaults 0 2\n"),
    );
    let cfg = lab.config(&volume(&d.dev, "/1", ""));
    let plan = lab.olboot("plan", &cfg);
    assert_eq!(changes(&plan).len(), 3, "{:?}", changes(&plan));
    let out = lab.olboot("apply", &cfg);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    common::assert_apply_did_what_plan_said(&report(&plan), &report(&out), "volumes");
}

/// Nanoseconds since the epoch, as `date +%s%N` prints them.
fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// One race trial: olboot applies `cfg` while, `delay` after it starts, `writer` puts an ext4
/// on `dev`. Returns (olboot's mkfs made a filesystem over a signature that was there before
/// it began, olboot's mkfs ran, olboot exited 0).
fn race_trial(
    lab: &Lab,
    cfg: &Path,
    bin: &Path,
    writer: Option<Command>,
    delay: Duration,
) -> (bool, bool, bool) {
    let stamp = lab.path().join("mkfs-started");
    let _ = std::fs::remove_file(&stamp);
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let child = lab
        .apply_command(cfg)
        .env("PATH", path)
        .env("OLBOOT_TEST_MKFS_STAMP", &stamp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let wrote = writer.map(|mut w| {
        std::thread::sleep(delay);
        let ok = w
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        (ok, now_ns())
    });
    let out = child.wait_with_output().unwrap();
    let stamped = std::fs::read_to_string(&stamp).unwrap_or_default();
    let mut lines = stamped.lines().map(str::trim);
    let started: Option<u128> = lines.next().and_then(|l| l.parse().ok());
    let made = lines.next() == Some("0");
    let over = match (wrote, started) {
        (Some((true, end)), Some(start)) => end < start && made,
        _ => false,
    };
    (over, started.is_some(), code(&out) == 0)
}

/// A 32 MiB image file at `path` holding an ext4 filesystem.
fn ext4_image(path: &Path) -> PathBuf {
    std::fs::File::create(path)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    sh("mkfs.ext4", &["-q", path.to_str().unwrap()]);
    path.to_path_buf()
}

/// A directory to put first on olboot's PATH, whose `mkfs.ext4` runs the shell line `first`,
/// then the real one, then `after` (with its exit status in `$rc`), and exits as it did.
fn mkfs_around(lab: &Lab, first: &str, after: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = lab.path().join("bin");
    let mkfs = bin.join("mkfs.ext4");
    write(
        &mkfs,
        &format!("#!/bin/sh\n{first}\n/usr/sbin/mkfs.ext4 \"$@\"\nrc=$?\n{after}\nexit $rc\n"),
    );
    std::fs::set_permissions(&mkfs, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// Back to a blank 32 MiB disk, nothing mounted, the original fstab.
fn race_reset(lab: &Lab, dev: &str) {
    for t in lab.mounts() {
        olboot::sys::mount::unmount(&t).unwrap();
    }
    let _ = std::fs::remove_dir(lab.root().join("1"));
    write(&lab.root().join("etc/fstab"), FSTAB);
    zero_through(dev, 0, 32 << 20);
}

#[test]
fn a_writer_racing_olboot_is_never_formatted_over() {
    let mut lab = Lab::new();
    // On tmpfs: 100 trials must not write gigabytes to this machine's disk.
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let img = shm.path().join("race.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let dev = lab.attach(&img);
    let theirs = ext4_image(&shm.path().join("theirs.img"));
    // olboot's mkfs.ext4 notes when it starts, then is the real one.
    let stamp = "\"$OLBOOT_TEST_MKFS_STAMP\"";
    let bin = mkfs_around(
        &lab,
        &format!("date +%s%N >> {stamp}"),
        &format!("echo $rc >> {stamp}"),
    );
    let cfg = lab.config(&volume(&dev, "/1", ""));
    let t = Instant::now();
    let (_, ran, ok) = race_trial(&lab, &cfg, &bin, None, Duration::ZERO);
    let whole = t.elapsed();
    assert!(ran && ok, "olboot does not format the blank disk alone");
    let (mut over, mut caught, mut formatted, mut refused) = (0, 0, 0, 0);
    for i in 0..100u32 {
        race_reset(&lab, &dev);
        let mut w = if i % 2 == 0 {
            let mut c = Command::new("dd");
            c.arg(format!("if={}", theirs.display()))
                .arg(format!("of={dev}"))
                .args(["bs=1M", "conv=fsync,notrunc", "status=none"]);
            c
        } else {
            let mut c = Command::new("/usr/sbin/mkfs.ext4");
            c.args(["-q", &dev]);
            c
        };
        w.env_remove("OLBOOT_TEST_MKFS_STAMP");
        // From olboot's start to twice its run alone: before its probe, during, after mkfs.
        let delay = whole * 2 * i / 100;
        let (o, ran, ok) = race_trial(&lab, &cfg, &bin, Some(w), delay);
        over += o as u32;
        caught += (ran && !ok) as u32;
        formatted += (ran && ok) as u32;
        refused += (!ran) as u32;
    }
    race_reset(&lab, &dev);
    eprintln!(
        "100 trials over {whole:?}: {over} formats over a signature, {caught} refused after mkfs started, {formatted} formatted, {refused} refused before mkfs"
    );
    assert_eq!(over, 0, "olboot formatted over another writer's signature");
    assert!(
        formatted > 0 && refused > 0,
        "the trials never raced: {formatted} formatted, {refused} refused"
    );
}

#[test]
fn mkfs_itself_looks_at_both_ends_once_more() {
    use std::os::unix::fs::FileExt;
    // What a writer finishing between olboot's proof and mkfs's start leaves: bytes with no
    // signature in the first or the last MiB, which mkfs.ext4 run without a terminal ignores.
    let mut lab = Lab::new();
    let root = olboot::root::Root::live();
    for at in [4096u64, (32 << 20) - 512] {
        let d = lab.disk(&format!("late-{at}"), 32);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&d.dev)
            .unwrap();
        f.write_all_at(b"a writer came late", at).unwrap();
        f.sync_all().unwrap();
        let before = digest(&d.dev);
        let dev = olboot::sys::blockdev::present(Path::new(&d.dev))
            .unwrap()
            .unwrap();
        let e = olboot::sys::mkfs::make(
            &root,
            "ext4",
            &dev,
            None,
            "0b0b0b0b-0000-4000-8000-000000000000",
        )
        .expect_err("mkfs ran over data");
        let e = format!("{e:#}");
        assert!(
            e.contains(&format!("{} was written to", d.dev))
                && e.contains("just before mkfs started; refusing to format it"),
            "{e}"
        );
        assert_eq!(digest(&d.dev), before, "{} was changed", d.dev);
    }
}

#[test]
fn a_writer_after_mkfs_was_exec_d_is_caught_by_mkfs_own_probe() {
    // The writer finishes after olboot's last look and after the exec, but before mkfs.ext4
    // probes: only mkfs's own probe, which it makes on a terminal, is left to see it.
    let mut lab = Lab::new();
    let d = lab.disk("after-exec", 32);
    let theirs = ext4_image(&lab.path().join("theirs.img"));
    let bin = mkfs_around(
        &lab,
        &format!(
            "dd if={} of={} bs=1M conv=fsync,notrunc status=none",
            theirs.display(),
            d.dev
        ),
        "",
    );
    let cfg = lab.config(&volume(&d.dev, "/1", ""));
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let out = lab.apply_command(&cfg).env("PATH", path).output().unwrap();
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let e = error(&out);
    assert!(
        e.contains(&format!("{} contains a ext4 file system", d.dev))
            && e.contains("refusing to format it"),
        "{e}"
    );
    flush(&d.dev);
    assert_eq!(digest(&d.dev), digest(theirs.to_str().unwrap()));
    assert_eq!(lab.fstab(), FSTAB);
}

#[test]
fn a_stale_blkid_cache_does_not_refuse_a_blank_disk() {
    // libblkid's cache, which mkfs.ext4 asks, still says ext4 for a device just zeroed (as
    // it does for a reused loop device name): mkfs must probe the disk itself. libblkid
    // trusts an entry for 2 s without probing again, so a slower try tests nothing: 3 tries.
    let mut lab = Lab::new();
    for n in 0..3 {
        let d = lab.disk(&format!("was-ext4-{n}"), 32);
        let image = lab.path().join(format!("was-ext4-{n}.img"));
        sh("mkfs.ext4", &["-q", &d.dev]);
        let cache = lab.path().join(format!("blkid-{n}.tab"));
        let primed = Instant::now();
        sh("blkid", &["-c", cache.to_str().unwrap(), &d.dev]);
        // Zeroed through the image, not the device node: a write through the node would
        // date the node after the cache entry, and libblkid would probe again.
        let img = std::fs::OpenOptions::new().write(true).open(image).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&img, &vec![0; 32 << 20], 0).unwrap();
        img.sync_all().unwrap();
        sh("blockdev", &["--flushbufs", &d.dev]);
        let cfg = lab.config(&volume(&d.dev, &format!("/{n}"), ""));
        let out = lab
            .apply_command(&cfg)
            .env("BLKID_FILE", &cache)
            .output()
            .unwrap();
        if primed.elapsed() >= Duration::from_secs(2) {
            eprintln!("try {n} took {:?}: the cache had expired", primed.elapsed());
            continue;
        }
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert_eq!(tag(&d.dev, "LABEL").as_deref(), Some("ol-data"));
        let cached = std::fs::read_to_string(&cache).unwrap();
        assert!(cached.contains("TYPE=\"ext4\""), "{cached}");
        return;
    }
    panic!("every try took over 2 s: the cache was never tested");
}

#[test]
fn a_device_held_exclusively_when_mkfs_starts_is_not_formatted() {
    use rustix::fs::{Mode, OFlags};
    let mut lab = Lab::new();
    let d = lab.disk("held", 32);
    let before = digest(&d.dev);
    let dev = olboot::sys::blockdev::present(Path::new(&d.dev))
        .unwrap()
        .unwrap();
    // What a mount or another mkfs does: claim the device with O_EXCL.
    let held = rustix::fs::open(&d.dev, OFlags::RDONLY | OFlags::EXCL, Mode::empty()).unwrap();
    let root = olboot::root::Root::live();
    let uuid = "0c0c0c0c-0000-4000-8000-000000000000";
    let e = olboot::sys::mkfs::make(&root, "ext4", &dev, None, uuid).expect_err("mkfs ran");
    drop(held);
    let e = format!("{e:#}");
    assert!(
        e.contains(&format!(
            "{} was opened exclusively by another program",
            d.dev
        )),
        "{e}"
    );
    assert_eq!(digest(&d.dev), before);
}

#[test]
fn a_volume_whose_uuid_a_copy_also_carries_is_not_mounted_by_that_uuid() {
    let mut lab = Lab::new();
    let d = lab.disk("original", 32);
    sh("mkfs.ext4", &["-q", "-L", "ol-data", &d.dev]);
    flush(&d.dev);
    let copy = lab.path().join("copy.img");
    std::fs::copy(lab.path().join("original.img"), &copy).unwrap();
    let copied = lab.attach(&copy);
    let same = format!("{} and {copied} carry the same UUID", d.dev);
    assert_refused_saying(&lab, &d.dev, &[&same, "tune2fs -U random"]);
    // Once the copy has a UUID of its own, the original is mounted.
    sh("tune2fs", &["-U", "random", &copied]);
    let cfg = lab.config(&volume(&d.dev, "/1", ""));
    let out = lab.olboot("apply", &cfg);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(lab.mounts().len(), 1);
    // A copy made after that: the converged volume is left as it is, with a warning.
    std::fs::copy(lab.path().join("original.img"), &copy).unwrap();
    sh("blockdev", &["--flushbufs", &copied]);
    let out = lab.olboot("apply", &cfg);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let volumes = step(&report(&out), "volumes").clone();
    assert_eq!(volumes["result"], "unchanged", "{volumes}");
    assert!(
        volumes["warnings"][0].as_str().unwrap().contains(&same),
        "{volumes}"
    );
}

#[test]
fn a_subdirectory_of_the_volume_mounted_at_its_mountpoint_is_refused() {
    let mut lab = Lab::new();
    let d = lab.disk("bound", 32);
    sh("mkfs.ext4", &["-q", "-L", "ol-data", &d.dev]);
    let whole = lab.path().join("whole");
    let target = lab.root().join("1");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::create_dir(&whole).unwrap();
    sh("mount", &[&d.dev, whole.to_str().unwrap()]);
    std::fs::create_dir(whole.join("sub")).unwrap();
    sh(
        "mount",
        &[
            "--bind",
            whole.join("sub").to_str().unwrap(),
            target.to_str().unwrap(),
        ],
    );
    sh("umount", &[whole.to_str().unwrap()]);
    let out = lab.olboot("apply", &lab.config(&volume(&d.dev, "/1", "")));
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let e = error(&out);
    assert!(e.contains("from its directory /sub, not as a whole"), "{e}");
    assert_eq!(lab.fstab(), FSTAB);
}

/// The blank proof (kernel users, then the content read) of `dev`, timed.
fn time_proof(dev: &str) -> Duration {
    let d = olboot::sys::blockdev::present(Path::new(dev))
        .unwrap()
        .unwrap();
    let t = Instant::now();
    assert_eq!(olboot::sys::inuse::users(&d).unwrap(), Vec::<String>::new());
    let f = std::fs::File::open(dev).unwrap();
    let found = olboot::sys::blank::first_nonzero(&f, d.size().unwrap(), dev).unwrap();
    assert_eq!(found, None, "{dev}");
    t.elapsed()
}

#[test]
fn blank_proof_of_a_100_gib_disk_takes_under_2_s() {
    use std::io::Write;
    let mut lab = Lab::new();
    let sparse = lab.disk("sparse-100g", 100 << 10);
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let img = shm.path().join("zeroed-2g.img");
    let mut f = std::fs::File::create(&img).unwrap();
    let buf = vec![0u8; 1 << 20];
    for _ in 0..2048 {
        f.write_all(&buf).unwrap();
    }
    f.sync_all().unwrap();
    let zeroed = lab.attach(&img);
    let big = time_proof(&sparse.dev);
    let small = time_proof(&zeroed);
    eprintln!("blank proof: 100 GiB sparse {big:?}, 2 GiB zeroed {small:?}");
    assert!(big < Duration::from_secs(2), "100 GiB took {big:?}");
    assert!(small < Duration::from_secs(2), "2 GiB took {small:?}");
}
