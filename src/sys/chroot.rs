//! The setting apt needs to run inside a system mounted at `--root DIR`: the running
//! system's `/proc`, `/sys` and `/dev` bound into DIR, and a `policy-rc.d` that keeps
//! maintainer scripts from starting services inside DIR. [`Session`] sets both up and takes
//! them down again, on success, on error and on unwinding (its `Drop`).

use super::{fs, mount};
use crate::root::Root;
use anyhow::{Context, Result};
use rustix::mount::UnmountFlags;
use std::path::{Path, PathBuf};

/// What `invoke-rc.d` and `deb-systemd-invoke` read: exit 101 means "action forbidden".
const POLICY: &[u8] =
    b"#!/bin/sh\n# Written by olboot while it installs packages into this system.\nexit 101\n";

/// The bind mounts and the policy-rc.d of one apt session in a root; nothing for the running
/// system.
pub struct Session {
    /// Mounts this session made, in the order made.
    binds: Vec<PathBuf>,
    /// The policy-rc.d this session wrote, and where the one it replaced was put aside.
    policy: Option<(PathBuf, Option<PathBuf>)>,
}

impl Session {
    /// Prepare `root` for apt: [`Session::binds`] and the policy-rc.d.
    pub fn enter(root: &Root) -> Result<Session> {
        let mut s = Session::binds(root)?;
        if root.is_live() {
            return Ok(s);
        }
        let policy = root.path(Path::new("/usr/sbin/policy-rc.d"))?;
        let saved = policy.with_file_name("policy-rc.d.olboot-saved");
        // A saved one left by a run that died means the one in place is ours: keep the saved.
        // Without one, a policy-rc.d with exactly our content is also ours, left by a run that
        // died before it had anything to save: it goes away at the end, not back in place.
        let ours = std::fs::read(&policy).is_ok_and(|c| c == POLICY);
        let put_aside = if saved.exists() {
            Some(saved)
        } else if policy.symlink_metadata().is_ok() && !ours {
            std::fs::rename(&policy, &saved).with_context(|| {
                format!(
                    "cannot move {} aside to {}",
                    policy.display(),
                    saved.display()
                )
            })?;
            Some(saved)
        } else {
            None
        };
        s.policy = Some((policy.clone(), put_aside));
        fs::write_atomic(&policy, POLICY, 0o755)?;
        Ok(s)
    }

    /// Bind the running system's `/proc`, `/sys` and `/dev` into `root`, for programs run
    /// there with `chroot`. For the running system this does nothing. A directory that is
    /// already a mount point (a rescue shell that bound `/proc` itself) is left as it is.
    pub fn binds(root: &Root) -> Result<Session> {
        let mut s = Session {
            binds: Vec::new(),
            policy: None,
        };
        if root.is_live() {
            return Ok(s);
        }
        // On error `s` is dropped, which undoes what was done so far.
        for dir in ["/proc", "/sys", "/dev"] {
            let target = root.path(Path::new(dir))?;
            // A symlink there would be followed on this machine, not inside the root.
            if target
                .symlink_metadata()
                .is_ok_and(|m| m.file_type().is_symlink())
            {
                anyhow::bail!(
                    "{} is a symlink: refusing to bind {dir} over it",
                    target.display()
                );
            }
            std::fs::create_dir_all(&target)
                .with_context(|| format!("cannot create {}", target.display()))?;
            // mountinfo lists resolved paths.
            let target = std::fs::canonicalize(&target)
                .with_context(|| format!("cannot resolve {}", target.display()))?;
            if mount::at(&target)?.is_some() {
                continue;
            }
            mount::bind(Path::new(dir), &target)?;
            s.binds.push(target);
        }
        Ok(s)
    }

    /// Undo the session, reporting what could not be undone.
    pub fn close(mut self) -> Result<()> {
        self.undo()
    }

    fn undo(&mut self) -> Result<()> {
        let mut errors = Vec::new();
        if let Some((policy, saved)) = self.policy.take() {
            let r = match &saved {
                Some(saved) => std::fs::rename(saved, &policy).with_context(|| {
                    format!(
                        "cannot put {} back at {}",
                        saved.display(),
                        policy.display()
                    )
                }),
                None => std::fs::remove_file(&policy)
                    .with_context(|| format!("cannot remove {}", policy.display())),
            };
            if let Err(e) = r {
                errors.push(format!("{e:#}"));
            }
        }
        while let Some(target) = self.binds.pop() {
            if let Err(e) = mount::unmount(&target) {
                // Busy (a daemon a maintainer script started anyway): detach it now, the
                // kernel frees it when the last user goes.
                log::warn!("{e:#}; detaching it lazily");
                if let Err(e) = rustix::mount::unmount(&target, UnmountFlags::DETACH) {
                    errors.push(format!("cannot unmount {}: {e}", target.display()));
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("cleaning up after apt: {}", errors.join("; "))
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Err(e) = self.undo() {
            log::error!("{e:#}");
        }
    }
}

/// Run `cmd`, built for this system, and return its output. Under `--root`, when this system
/// lacks the program (a busybox rescue system has neither util-linux's `blkid -p` nor
/// `mkfs.ext4`), the target's own copy runs instead, through `chroot DIR` with `/proc`, `/sys`
/// and `/dev` bound in for the call; device paths mean the same devices there. `finish` is
/// applied to the command that runs.
pub fn output_here_or_in(
    root: &Root,
    cmd: &mut std::process::Command,
    finish: impl FnOnce(&mut std::process::Command),
) -> Result<std::process::Output> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    if root.is_live() || super::cmd::exists(&program) {
        finish(cmd);
        return super::cmd::output(cmd);
    }
    let mut inner = std::process::Command::new("chroot");
    inner.arg(root.dir()).arg(&program).args(cmd.get_args());
    inner.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    log::debug!("{program} is not on this system: running the target's copy");
    finish(&mut inner);
    let session = Session::binds(root)?;
    let out = super::cmd::output(&mut inner);
    session.close()?;
    out
}
