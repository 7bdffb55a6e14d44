//! Thin wrappers over the system: external commands, files, block devices, mounts,
//! `/etc/fstab`, `nft` and network interfaces.
//! Steps call these instead of the standard library or `rustix` directly, so that every
//! failure carries the command, path or device it was about.

pub mod apt;
pub mod blank;
pub mod blockdev;
pub mod chroot;
pub mod cmd;
pub mod fs;
pub mod fstab;
pub mod http;
pub mod inuse;
pub mod link;
pub mod mkfs;
pub mod mount;
pub mod nft;
pub mod signal;
