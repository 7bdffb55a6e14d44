//! What the tests that hold the unpacker against GNU tar share: GNU tar's extraction of an
//! archive, olboot's of the same archive (zstd-compressed behind a `file://` URL, by its
//! sha256), and the raw pieces archives are built from here.
#![allow(dead_code)]

use crate::support::{self, Scratch};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn assert_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests compare with GNU tar as root: run them as root"
    );
}

pub fn now_ns() -> i128 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    d.as_nanos() as i128
}

/// Run `cmd` with `sh -e`; fail the test with its output if it fails.
pub fn sh(cmd: &str) {
    let o = Command::new("sh").arg("-ec").arg(cmd).output().unwrap();
    assert!(
        o.status.success(),
        "{cmd}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// GNU tar extracting `archive` into `dest` as the reference does (as root).
pub fn gnu_tar_command(archive: &Path, dest: &Path) -> Command {
    let mut c = Command::new("tar");
    c.args([
        "--numeric-owner",
        "--xattrs",
        "--xattrs-include=*",
        "--acls",
        "-xpf",
    ])
    .arg(archive)
    .arg("-C")
    .arg(dest);
    c
}

/// Run `c` (a GNU tar): Ok, or its stderr.
pub fn run_gnu(mut c: Command) -> Result<(), String> {
    let o = c.output().unwrap();
    if o.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

/// GNU tar's extraction of `archive` into `dest`: Ok, or its stderr.
pub fn gnu_tar(archive: &Path, dest: &Path) -> Result<(), String> {
    run_gnu(gnu_tar_command(archive, dest))
}

/// A config of `s` whose archive is `archive`, zstd-compressed as the store holds it, by its
/// sha256.
pub fn zstd_config(s: &Scratch, archive: &Path) -> PathBuf {
    let zst = s.dir.path().join("a.tar.zst");
    let st = Command::new("zstd")
        .args(["-q", "-f", "-o"])
        .arg(&zst)
        .arg(archive)
        .status()
        .unwrap();
    assert!(st.success(), "zstd failed on {}", archive.display());
    let sha: String = Sha256::digest(std::fs::read(&zst).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let url = format!("file://{}", zst.display());
    s.config(&[url], Some(&sha), "", "symlink")
}

/// `olboot apply` of `archive` through `cmd` on a new scratch root: the root and the output.
pub fn olboot_unpack(archive: &Path, cmd: Command) -> (Scratch, Output) {
    let s = support::Scratch::new();
    let config = zstd_config(&s, archive);
    let out = s.run_with(cmd, "apply", &config, &[]);
    (s, out)
}

/// One PAX record `LEN KEY=VALUE\n`.
pub fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// Header `h`'s checksum computed again after a field was changed.
pub fn sum_again(h: &mut [u8]) {
    h[148..156].fill(b' ');
    let sum: u32 = h[..512].iter().map(|&b| u32::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
}

/// A tar of `entries` (each already whole blocks) and the end blocks, in `dir/name.tar`.
pub fn tar_file(dir: &Path, name: &str, entries: &[Vec<u8>]) -> PathBuf {
    let archive = dir.join(format!("{name}.tar"));
    std::fs::write(&archive, [entries.concat(), vec![0; 1024]].concat()).unwrap();
    archive
}

/// The ustar magic of POSIX (`ustar\0` `00`) and of old GNU (`ustar  \0`).
pub const POSIX: &[u8; 8] = b"ustar\x0000";
pub const OLD_GNU: &[u8; 8] = b"ustar  \0";

/// A header: `name`, type `kind`, `size` bytes following, mode 0644, owner 0:0, `mtime`, the
/// magic `magic`.
pub fn ustar(name: &str, kind: u8, size: u64, magic: &[u8; 8], mtime: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    h[136..147].copy_from_slice(format!("{mtime:011o}").as_bytes());
    h[156] = kind;
    h[257..265].copy_from_slice(magic);
    sum_again(&mut h);
    h
}
