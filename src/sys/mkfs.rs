//! Making a filesystem, under the whole-disk lock.
//!
//! [`DiskLock`] is systemd's block-device locking convention: an exclusive `flock` on the
//! whole-disk device node. udev takes a shared lock before it probes a device and leaves a
//! locked device alone, and tools that follow the convention (systemd-repart, `udevadm lock`)
//! wait for it. `mkfs` itself is not blocked: it opens the device afresh (with `O_EXCL`,
//! which conflicts only with other exclusive opens, not with a `flock`).
//!
//! [`make`] runs `mkfs.ext4 -E nodiscard` or `mkfs.xfs -K` (a wrong format on a thin or
//! SSD-backed disk must not also throw every block away) with a UUID olboot chose, so that
//! the filesystem found afterwards can be told apart from one another program made, after two
//! last looks at the device from the child process ([`LastLook`], then mkfs's own probe on a
//! [`Terminal`]) that leave another writer as short a window as a check can.

use super::blockdev::Device;
use super::{chroot, cmd, inuse};
use crate::root::Root;
use anyhow::{bail, Context, Result};
use rustix::fs::FlockOperation;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// How long [`DiskLock::take`] waits for udev or another tool to release the disk.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// The exclusive `flock` on a whole disk, released when dropped.
pub struct DiskLock {
    _file: std::fs::File,
    /// The whole-disk device node that is locked.
    pub disk: PathBuf,
}

/// The whole disk `dev` is on (itself when it is not a partition), as a device node.
fn whole_disk(dev: &Device) -> Result<PathBuf> {
    let Some((dir, id)) = inuse::parent_disk(dev)? else {
        return Ok(dev.path.clone());
    };
    let name = dir
        .file_name()
        .with_context(|| format!("no disk name in {}", dir.display()))?;
    let node = PathBuf::from("/dev").join(name);
    let m = std::fs::metadata(&node).with_context(|| format!("cannot stat {}", node.display()))?;
    let found = format!(
        "{}:{}",
        rustix::fs::major(m.rdev()),
        rustix::fs::minor(m.rdev())
    );
    if !m.file_type().is_block_device() || found != id {
        bail!(
            "{} is not the disk {dev} is on ({id}); not locking it",
            node.display()
        );
    }
    Ok(node)
}

impl DiskLock {
    /// Lock the whole disk of `dev`, waiting up to 10 s for a holder of the lock.
    pub fn take(dev: &Device) -> Result<DiskLock> {
        let disk = whole_disk(dev)?;
        let file = std::fs::File::open(&disk)
            .with_context(|| format!("cannot open {} to lock it", disk.display()))?;
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(DiskLock { _file: file, disk }),
                Err(rustix::io::Errno::WOULDBLOCK) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "cannot lock {} (flock, as udev and systemd do)",
                            disk.display()
                        )
                    })
                }
            }
        }
    }
}

/// A fresh random UUID from the kernel.
pub fn new_uuid() -> Result<String> {
    let p = "/proc/sys/kernel/random/uuid";
    let u = std::fs::read_to_string(p).with_context(|| format!("cannot read {p}"))?;
    Ok(u.trim().to_string())
}

/// The `mkfs` command line for `fs` (`ext4` or `xfs`).
pub fn command(fs: &str, dev: &Device, label: Option<&str>, uuid: &str) -> Result<Command> {
    let mut c = Command::new(format!("mkfs.{fs}"));
    // No -F / -f: a blank device needs no force, and without it mkfs keeps its own refusals
    // (mkfs.xfs refuses a device with a signature, mkfs.ext4 a mounted one).
    match fs {
        "ext4" => c.args(["-q", "-E", "nodiscard", "-U", uuid]),
        "xfs" => c.args(["-q", "-K", "-m"]).arg(format!("uuid={uuid}")),
        other => bail!("olboot cannot make a {other} filesystem"),
    };
    if let Some(l) = label {
        c.arg("-L").arg(l);
    }
    c.arg(&dev.path);
    Ok(c)
}

/// How much of each end of the device the mkfs child reads right before it becomes mkfs.
const LAST_LOOK: u64 = 1 << 20;

/// The last look at a device, taken by the child process between fork and exec: an exclusive
/// open (which fails while a mount or another mkfs holds the device) and a read of its first
/// and last MiB. A writer that finishes after olboot's proof but before mkfs starts is seen
/// there, also one whose bytes carry no signature that mkfs's own probe (see [`Terminal`])
/// would know. Code between fork and exec must not allocate or lock, so the path and the
/// buffer are made beforehand and the check is `open`, `pread` and a comparison.
struct LastLook {
    path: std::ffi::CString,
    /// Where the two reads start.
    at: [u64; 2],
    buf: Vec<u8>,
}

impl LastLook {
    fn new(dev: &Device) -> Result<LastLook> {
        let size = dev.size()?;
        let len = LAST_LOOK.min(size);
        let path = std::ffi::CString::new(dev.path.as_os_str().as_bytes())
            .with_context(|| format!("{dev}: a NUL in the device path"))?;
        Ok(LastLook {
            path,
            at: [0, size - len],
            buf: vec![0; len as usize],
        })
    }

    /// What was seen, as a [`Note`] and the errno to fail the exec with.
    fn check(&mut self) -> Result<(), (u8, rustix::io::Errno)> {
        use rustix::fs::{Mode, OFlags};
        use rustix::io::Errno;
        let flags = OFlags::RDONLY | OFlags::EXCL | OFlags::CLOEXEC;
        let fd = rustix::fs::open(self.path.as_c_str(), flags, Mode::empty()).map_err(|e| {
            let note = if e == Errno::BUSY { BUSY } else { FAILED };
            (note, e)
        })?;
        for at in self.at {
            let mut done = 0;
            while done < self.buf.len() {
                match rustix::io::pread(&fd, &mut self.buf[done..], at + done as u64) {
                    Ok(0) => return Err((FAILED, Errno::IO)),
                    Ok(n) => done += n,
                    Err(e) => return Err((FAILED, e)),
                }
            }
            if self.buf.iter().any(|b| *b != 0) {
                return Err((WRITTEN, Errno::NOTEMPTY));
            }
        }
        Ok(())
    }
}

/// What the mkfs child notes, one byte in a pipe, when it fails before the exec (the exec's
/// own failure leaves no note), so that the error says which.
type Note = u8;
const WRITTEN: Note = b'W';
const BUSY: Note = b'B';
const FAILED: Note = b'F';
const NO_TERMINAL: Note = b'T';

/// The error to give for `dev` when running mkfs failed with `e`, by the child's note.
fn noted(notes: &std::os::fd::OwnedFd, e: anyhow::Error, dev: &Device) -> anyhow::Error {
    let mut note = [0u8];
    if !matches!(rustix::io::read(notes, &mut note), Ok(1)) {
        return e;
    }
    let just = "just before mkfs started; refusing to format it";
    match note[0] {
        WRITTEN => {
            anyhow::anyhow!("{dev} was written to (its first or last MiB is no longer zero) {just}")
        }
        BUSY => anyhow::anyhow!(
            "{dev} was opened exclusively by another program (a mount, a mkfs) {just}"
        ),
        NO_TERMINAL => e.context("cannot give mkfs its terminal"),
        _ => e.context(format!(
            "cannot take the last look at {dev} before mkfs; not formatting it"
        )),
    }
}

/// A terminal for mkfs to run on, with an end-of-file already typed. mkfs.ext4 probes the
/// device for a filesystem or partition table only when its standard input and output are a
/// terminal, and then asks whether to go on; the end-of-file answers no. That probe is the
/// latest look there can be, mkfs's own just before it writes.
struct Terminal {
    slave: std::os::fd::OwnedFd,
    /// What mkfs printed, read by a thread so that mkfs never blocks on a full terminal.
    said: std::sync::mpsc::Receiver<Vec<u8>>,
}

impl Terminal {
    fn open() -> std::io::Result<Terminal> {
        use rustix::pty::OpenptFlags;
        let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
        let master = rustix::pty::openpt(flags)?;
        rustix::pty::grantpt(&master)?;
        rustix::pty::unlockpt(&master)?;
        let slave = rustix::pty::ioctl_tiocgptpeer(&master, flags)?;
        rustix::io::write(&master, b"\x04")?;
        let (tx, said) = std::sync::mpsc::channel();
        std::thread::Builder::new().spawn(move || {
            let (mut all, mut buf) = (Vec::new(), [0u8; 1024]);
            // Ends with EIO once the last copy of the slave is closed. A signal caught on this
            // thread must not end it early: mkfs would lose its terminal.
            loop {
                match rustix::io::read(&master, &mut buf) {
                    Ok(n @ 1..) => {
                        let keep = n.min(TERMINAL_KEPT.saturating_sub(all.len()));
                        all.extend_from_slice(&buf[..keep]);
                    }
                    Err(rustix::io::Errno::INTR) => {}
                    _ => break,
                }
            }
            let _ = tx.send(all);
        })?;
        Ok(Terminal { slave, said })
    }

    /// Close olboot's copy of the slave, and return what mkfs printed.
    fn finish(self) -> String {
        drop(self.slave);
        let said = self.said.recv_timeout(Duration::from_secs(1));
        if said.is_err() {
            log::debug!("mkfs's terminal is still open elsewhere; not waiting for its output");
        }
        String::from_utf8_lossy(&said.unwrap_or_default()).into_owned()
    }
}

/// How much of what mkfs prints on its terminal olboot keeps.
const TERMINAL_KEPT: usize = 4096;

/// What mkfs.ext4 said its own probe found (its first line: "… contains a ext4 file system",
/// "Found a dos partition table in …"), when it then asked whether to go on.
fn found_by_mkfs(said: &str) -> Option<&str> {
    // "Proceed anyway? (y,N)", or "Proceed anyway (or wait N seconds to proceed) ? (y,N)"
    // with a proceed_delay in mke2fs.conf; in English, as LC_ALL=C makes it.
    let (before, _) = said.split_once("Proceed anyway")?;
    before.lines().map(str::trim).find(|l| !l.is_empty())
}

/// Run `mkfs` as [`command`] builds it (under `--root`, the target's when this system has
/// none), after a last look at both ends of `dev` in the child process, on a [`Terminal`] so
/// that mkfs looks once more itself.
pub fn make(root: &Root, fs: &str, dev: &Device, label: Option<&str>, uuid: &str) -> Result<()> {
    let mut c = command(fs, dev, label, uuid)?;
    let mut look = LastLook::new(dev)?;
    let tty = Terminal::open().context("cannot open a pseudo-terminal for mkfs")?;
    let (notes, note) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .context("cannot make a pipe for mkfs's last look")?;
    rustix::io::ioctl_fionbio(&notes, true).context("cannot make mkfs's note pipe non-blocking")?;
    let (slave, note_fd) = (tty.slave.as_raw_fd(), note.as_raw_fd());
    let guard = move |c: &mut Command| {
        // mkfs.ext4 asks libblkid's cache, which answers from a probe up to 200 s old and
        // so from the disk a reused device name (a loop device, a re-attached volume) had.
        c.env("BLKID_FILE", "/dev/null").env("LC_ALL", "C");
        // SAFETY: between fork and exec the closure only opens, reads into its own buffer,
        // compares bytes, writes one byte and duplicates descriptors that outlive the child.
        unsafe {
            c.pre_exec(move || {
                let tty = std::os::fd::BorrowedFd::borrow_raw(slave);
                let on_tty = || {
                    rustix::stdio::dup2_stdin(tty)?;
                    rustix::stdio::dup2_stdout(tty)
                };
                let r = look
                    .check()
                    .and_then(|()| on_tty().map_err(|e| (NO_TERMINAL, e)));
                r.map_err(|(what, e)| {
                    let note = std::os::fd::BorrowedFd::borrow_raw(note_fd);
                    let _ = rustix::io::write(note, &[what]);
                    e.into()
                })
            });
        }
    };
    let out = chroot::output_here_or_in(root, &mut c, guard);
    let said = tty.finish();
    drop(note);
    let out = out.map_err(|e| noted(&notes, e, dev))?;
    if out.status.success() {
        return Ok(());
    }
    if let Some(found) = found_by_mkfs(&said) {
        bail!("{dev} is no longer blank when mkfs probes it ({found}); refusing to format it");
    }
    let out = std::process::Output {
        stdout: said.into_bytes(),
        ..out
    };
    bail!("cannot format {dev} as {fs}: {}", cmd::failure(&c, &out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mkfs_never_discards_and_names_the_uuid() {
        let dev = Device {
            path: "/dev/vdb".into(),
            major: 254,
            minor: 16,
        };
        let c = command("ext4", &dev, Some("ol-data"), "u-1").unwrap();
        assert_eq!(
            cmd::display(&c),
            "mkfs.ext4 -q -E nodiscard -U u-1 -L ol-data /dev/vdb"
        );
        let c = command("xfs", &dev, None, "u-2").unwrap();
        assert_eq!(cmd::display(&c), "mkfs.xfs -q -K -m uuid=u-2 /dev/vdb");
        assert!(command("btrfs", &dev, None, "u").is_err());
    }

    #[test]
    fn mkfs_own_finding_is_its_contains_line_and_only_when_it_asked() {
        let asked = "/dev/loop7 contains a ext4 file system\n\tcreated on Thu Dec  3\nProceed anyway? (y,N) \n";
        assert_eq!(
            found_by_mkfs(asked),
            Some("/dev/loop7 contains a ext4 file system")
        );
        assert_eq!(
            found_by_mkfs("/dev/loop7 contains a ext4 file system\n"),
            None
        );
        let delayed = "Found a dos partition table in /dev/loop7\nProceed anyway (or wait 5 seconds to proceed) ? (y,N) ";
        assert_eq!(
            found_by_mkfs(delayed),
            Some("Found a dos partition table in /dev/loop7")
        );
        assert_eq!(found_by_mkfs("Proceed anyway? (y,N)"), None);
    }
}
