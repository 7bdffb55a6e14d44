//! The content half of the blank proof: a device is blank only if every byte olboot reads of
//! it is zero, and it reads where data and metadata would be.
//!
//! What is read (see [`regions`]):
//! - the first and the last 16 MiB: every primary and end-of-device header of the common
//!   formats (partition tables and the GPT backup header, LVM label and metadata area, LUKS1/2
//!   headers with the LUKS2 secondary header, md 0.90/1.x, DRBD, BIOS RAID metadata, ZFS labels,
//!   swap, btrfs' primary superblock);
//! - the secondary headers further in: ext2/3/4 backup superblocks of the sparse-super groups
//!   (1, 3ⁿ, 5ⁿ, 7ⁿ) for 1, 2 and 4 KiB blocks, btrfs superblock mirrors at 64 MiB and
//!   256 GiB, XFS secondary superblocks at each quarter (mkfs.xfs' default of 4 allocation
//!   groups), each both from byte 0 and from the usual partition starts ([`STARTS`]: 63
//!   sectors, 1, 2 and 4 MiB), since a disk whose partition table was zeroed still holds its
//!   partition's filesystem there; and every power-of-two offset from 16 MiB up;
//! - a sparse sample: [`SAMPLES`] reads of 64 KiB spread evenly over the whole device.
//!
//! Reads are large and aligned (block devices have no `SEEK_DATA`); the zero test is a
//! `memcmp` against a zeroed buffer, fast even in a debug build. On a 100 GiB disk this is
//! ~32 MiB at the ends, ~11 MiB of secondary headers (mostly the XFS windows, five starts
//! over) and 128 MiB of sample.
//!
//! What it proves: no filesystem, table or volume manager that writes any of the headers
//! above is on the disk, neither at its start nor in a partition starting at one of
//! [`STARTS`] (even with the table and both ends zeroed), and no data extent larger than the
//! sample stride (size / 2048, 50 MiB on 100 GiB) is anywhere on it. What it cannot prove:
//! that raw data smaller than the stride, written without any header (a `dd` of a small blob
//! into the middle), is absent, nor that a filesystem in a partition starting elsewhere whose
//! table and first 16 MiB were zeroed is (its backups are found only when the sample hits
//! them).

use anyhow::{Context, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Bytes read at each end of the device.
pub const END: u64 = 16 << 20;
/// Reads of the sparse sample.
pub const SAMPLES: u64 = 2048;
/// Size of one sample read.
const SAMPLE: u64 = 64 << 10;
/// Why the first and the last bytes are read.
const HEAD: &str = "the start of the device";
const TAIL: &str = "the end of the device";
/// How far around a quarter of the filesystem an XFS secondary superblock is looked for.
const XFS_SLACK: u64 = 64 << 10;
/// How far before the device's end a filesystem in a partition may end.
const XFS_END_GAP: u64 = (1 << 20) + (64 << 10);
/// Size of one read.
const CHUNK: usize = 1 << 20;

/// A range of the device to read, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// What would be there on a used disk.
    pub why: &'static str,
}

/// The first non-zero byte found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its offset from the start of the device.
    pub offset: u64,
    /// The region it is in.
    pub why: &'static str,
}

/// Sparse-super group numbers (1, 3ⁿ, 5ⁿ, 7ⁿ) below `groups`, which hold ext4 backups.
fn backup_groups(groups: u64) -> Vec<u64> {
    let mut out = vec![1];
    for base in [3u64, 5, 7] {
        let mut g = base;
        while g < groups {
            out.push(g);
            g = g.saturating_mul(base);
        }
    }
    out.retain(|g| *g < groups);
    out
}

/// The secondary headers of a filesystem that starts at byte `start` of a device of `size`
/// bytes (and ends at its end).
fn secondaries(r: &mut Vec<Region>, start: u64, size: u64) {
    let fs_size = size.saturating_sub(start);
    // ext4: group g starts at block g * blocks_per_group (+1 for 1 KiB blocks), with
    // blocks_per_group = 8 * block size.
    for (block, first, why) in [
        (1024u64, 1024u64, "an ext4 backup superblock (1 KiB blocks)"),
        (2048, 0, "an ext4 backup superblock (2 KiB blocks)"),
        (4096, 0, "an ext4 backup superblock (4 KiB blocks)"),
    ] {
        let group = 8 * block * block;
        for g in backup_groups(fs_size / group + 1) {
            r.push(Region {
                offset: start + first + g * group,
                len: 4096,
                why,
            });
        }
    }
    for (at, why) in [
        (64u64 << 20, "a btrfs superblock mirror (64 MiB)"),
        (256 << 30, "a btrfs superblock mirror (256 GiB)"),
    ] {
        r.push(Region {
            offset: start + at,
            len: 4096,
            why,
        });
    }
    // XFS: allocation group q starts at q * agsize, agsize a quarter of the filesystem rounded
    // down to its blocks; a filesystem that ends before the device does (a partition aligned
    // below the GPT backup) has its quarters lower still.
    for q in 1..4 {
        let below = q * (XFS_END_GAP / 4) + XFS_SLACK;
        r.push(Region {
            offset: (start + fs_size / 4 * q).saturating_sub(below) & !0xfff,
            len: below + XFS_SLACK,
            why: "an XFS secondary superblock",
        });
    }
}

/// Where the partitions that hold a filesystem usually start, in bytes; a zeroed or lost
/// partition table leaves the filesystem's secondary headers shifted by this much: 0 (no
/// table), 63 sectors (DOS-era fdisk, parted without alignment), 1 MiB (fdisk, sfdisk, sgdisk
/// and parted align the first partition to 2048 sectors), 2 and 4 MiB (a partition behind a
/// small BIOS-boot or EFI partition, as in cloud images).
pub const STARTS: [u64; 5] = [0, 63 * 512, 1 << 20, 2 << 20, 4 << 20];

/// The regions to read on a device of `size` bytes, sorted by offset (they may overlap).
pub fn regions(size: u64) -> Vec<Region> {
    let mut r = vec![
        Region {
            offset: 0,
            len: END.min(size),
            why: HEAD,
        },
        Region {
            offset: size.saturating_sub(END),
            len: END.min(size),
            why: TAIL,
        },
    ];
    for start in STARTS {
        secondaries(&mut r, start, size);
    }
    let mut p = END;
    while p < size {
        r.push(Region {
            offset: p,
            len: SAMPLE,
            why: "a power-of-two offset",
        });
        p *= 2;
    }
    let stride = (size / SAMPLES).max(SAMPLE);
    let mut at = 0;
    while at < size {
        r.push(Region {
            offset: at & !(SAMPLE - 1),
            len: SAMPLE,
            why: "the sample across the device",
        });
        at += stride;
    }
    for x in &mut r {
        x.len = x.len.min(size.saturating_sub(x.offset));
    }
    r.retain(|x| x.len > 0);
    r.sort_by_key(|x| (x.offset, x.len));
    r
}

/// Only the first and the last `len` bytes (16 MiB, or the one MiB a signature sits in): read
/// again right before `mkfs`, after the whole proof, since a writer usually starts at one end.
pub fn ends(size: u64, len: u64) -> Vec<Region> {
    let len = len.min(size);
    let mut r = vec![
        Region {
            offset: 0,
            len,
            why: HEAD,
        },
        Region {
            offset: size - len,
            len,
            why: TAIL,
        },
    ];
    r.dedup();
    r
}

/// The first non-zero byte of `dev` (`size` bytes, `name` for errors) in [`regions`], or
/// `None` when every byte read is zero. A read that fails or comes back short is an error,
/// never "blank".
pub fn first_nonzero(dev: &File, size: u64, name: &str) -> Result<Option<Found>> {
    first_nonzero_in(dev, &regions(size), name)
}

/// [`first_nonzero`] over `regions` (sorted by offset).
pub fn first_nonzero_in(dev: &File, regions: &[Region], name: &str) -> Result<Option<Found>> {
    let mut buf = vec![0u8; CHUNK];
    // What every chunk is compared with; allocated, not a static, which would put 1 MiB of
    // zeros into the binary.
    let zero = vec![0u8; CHUNK];
    // Bytes below `done` were already read (regions overlap).
    let mut done = 0u64;
    for reg in regions {
        let mut at = reg.offset.max(done);
        let end = reg.offset + reg.len;
        while at < end {
            let n = ((end - at) as usize).min(CHUNK);
            dev.read_exact_at(&mut buf[..n], at)
                .with_context(|| format!("cannot read {name} at byte {at}"))?;
            if buf[..n] != zero[..n] {
                let i = buf[..n].iter().position(|b| *b != 0).unwrap_or(0);
                return Ok(Some(Found {
                    offset: at + i as u64,
                    why: reg.why,
                }));
            }
            at += n as u64;
        }
        done = done.max(end);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ext4_backup_groups_are_the_sparse_super_ones() {
        assert_eq!(backup_groups(2), vec![1]);
        let mut g = backup_groups(130);
        g.sort();
        assert_eq!(g, vec![1, 3, 5, 7, 9, 25, 27, 49, 81, 125]);
    }

    #[test]
    fn regions_cover_both_ends_and_known_secondaries() {
        let size = 100u64 << 30;
        let r = regions(size);
        let covers = |at: u64| r.iter().any(|x| x.offset <= at && at < x.offset + x.len);
        assert!(covers(0) && covers(END - 1) && covers(size - 1) && covers(size - END));
        // 4 KiB-block ext4: group 1 at 128 MiB, group 3 at 384 MiB; 1 KiB: 8 MiB + 1 KiB.
        assert!(covers(128 << 20) && covers(384 << 20) && covers((8 << 20) + 1024));
        assert!(covers(64 << 20));
        // The same in a partition at 63 sectors, 1 MiB, 4 MiB.
        assert!(covers((129 << 20) + 1) && covers((4 << 20) + (384 << 20) + 4095));
        assert!(covers(32256 + (8 << 20) + 1024) && covers(32256 + (64 << 20)));
        // XFS in a partition at 1 MiB: AG 3 at 1 MiB + 3 x (a quarter, rounded down).
        let ag = (size - (2 << 20)) / 4 / 4096 * 4096;
        assert!(covers((1 << 20) + 3 * ag));
        let secondary: u64 = r
            .iter()
            .filter(|x| x.why.contains("ext4") || x.why.contains("XFS") || x.why.contains("btrfs"))
            .map(|x| x.len)
            .sum();
        assert!(secondary < 12 << 20, "secondary headers: {secondary} bytes");
        let read: u64 = r.iter().map(|x| x.len).sum();
        assert!(read < 200 << 20, "reads {read} bytes");
        assert!(r.iter().all(|x| x.offset + x.len <= size));
    }

    #[test]
    fn a_tiny_device_is_read_whole() {
        let r = regions(4096);
        assert!(r.iter().all(|x| x.offset + x.len <= 4096));
        assert_eq!(
            r[0],
            Region {
                offset: 0,
                len: 4096,
                why: HEAD
            }
        );
    }

    #[test]
    fn finds_the_first_nonzero_byte_and_its_region() {
        let f = tempfile::tempfile().unwrap();
        let size = 600u64 << 20;
        f.set_len(size).unwrap();
        assert_eq!(first_nonzero(&f, size, "t").unwrap(), None);
        f.write_all_at(b"x", (128 << 20) + 1080).unwrap();
        let got = first_nonzero(&f, size, "t").unwrap().unwrap();
        assert_eq!(got.offset, (128 << 20) + 1080);
        f.write_all_at(b"y", size - 3).unwrap();
        let got = first_nonzero(&f, size, "t").unwrap().unwrap();
        assert_eq!(got.offset, (128 << 20) + 1080);
    }
}
