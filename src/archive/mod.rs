//! The `/opt` archive: fetching, verifying and unpacking it, and `olboot pack`.
//!
//! [`install`] runs a pipeline of three threads joined by bounded in-memory [`pipe`]s, so
//! that the network, the CPU and the disk work at the same time while memory stays small:
//!
//! ```text
//! fetch thread:       source (resuming HTTP body | file) → sha256 → progress ─┐ pipe
//! decompress thread:  [age decryption] → zstd | gzip | xz, by magic bytes   ←─┘ ─┐ pipe
//! calling thread:     tar entries → files in the staging directory            ←──┘
//! ```
//!
//! The sha256 is of the bytes served (the ciphertext of an encrypted archive), and the
//! decryption sits after the resuming reader, so a resumed transfer is one stream to it.
//! The staging directory sits beside the destination (same filesystem); only once the whole
//! stream was read, decrypted and authenticated, its sha256 matched and the filesystem was
//! synced is it renamed into place.

pub mod age;
pub mod crypt;
pub mod decompress;
pub mod fetch;
pub mod frames;
pub mod pack;
pub mod pipe;
pub mod unpack;
pub mod writer;

use crate::secret::{Auth, ShownUrl};
use crate::sys::http::Credentials;
use crate::tuning::Tuning;
use anyhow::{bail, Context, Result};
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Buffers per pipe and their size: 2 pipes × 8 × 1 MiB bounds the data in flight. 8 rather
/// than 4: the threads take turns on two cores, and deeper pipes let one run on while another
/// waits (0–5 % less wall time in three comparisons, +8 MiB of peak RSS; bench/README.md).
const PIPE_BUFFERS: usize = 8;
/// One frame of `pack`'s: a buffer holds a whole frame, decoded in place (frames.rs).
const PIPE_BUFFER_SIZE: usize = frames::FRAME;

/// Where the archive is and how to get it: the archive's own types, filled in by the opt step
/// from the config (paths already taken below `--root`). `Debug` shows no secret: URLs as
/// [`ShownUrl`], the key and the credential by their files.
#[derive(Default)]
pub struct Source {
    /// Mirrors, tried in order: `http://`, `https://` or `file:///` URLs.
    pub urls: Vec<String>,
    /// The sha256 of the served bytes, as 64 lowercase hex digits.
    pub sha256: Option<String>,
    /// An extra CA file (PEM).
    pub ca_file: Option<PathBuf>,
    /// The identities that decrypt an age-encrypted archive.
    pub identities: Option<crypt::Identities>,
    /// The credential for the mirrors' hosts.
    pub auth: Option<Auth>,
    /// Hosts a redirect may take `auth` to.
    pub trusted_hosts: Vec<String>,
    /// The archive's size, when known.
    pub size: Option<u64>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<ShownUrl> = self.urls.iter().map(|u| ShownUrl::new(u)).collect();
        f.debug_struct("Source")
            .field("urls", &urls)
            .field("sha256", &self.sha256)
            .field("ca_file", &self.ca_file)
            .field("identities", &self.identities)
            .field("auth", &self.auth)
            .field("trusted_hosts", &self.trusted_hosts)
            .field("size", &self.size)
            .finish()
    }
}

/// The local path of a `file://` URL.
fn local_path(url: &str) -> Option<&Path> {
    url.strip_prefix("file://").map(Path::new)
}

/// What [`install`] brought in.
#[derive(Debug, Clone)]
pub struct Installed {
    /// The mirror it came from, as it may be shown.
    pub url: ShownUrl,
    /// Bytes of the archive.
    pub bytes: u64,
    /// Its sha256.
    pub sha256: String,
    /// Compression.
    pub format: decompress::Format,
    /// What was unpacked.
    pub stats: unpack::Stats,
}

/// The staging directory for `dest`: beside it, so the final rename stays on one filesystem.
pub fn staging_for(dest: &Path) -> PathBuf {
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    dest.with_file_name(format!(".olboot-staging-{name}"))
}

/// Remove a staging directory (left by a killed run, or by a failed attempt).
pub fn remove_staging(staging: &Path) -> Result<()> {
    match fs::remove_dir_all(staging) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", staging.display()))
        }
        _ => Ok(()),
    }
}

/// Fetch `archive` from its first mirror that works, unpack it beside `dest` and rename it to
/// `dest` once complete and verified. On error, nothing is left at `dest` nor in the staging
/// directory.
pub fn install(archive: &Source, dest: &Path, tuning: &Tuning) -> Result<Installed> {
    let staging = staging_for(dest);
    let parent = staging
        .parent()
        .with_context(|| format!("{}: no parent directory", dest.display()))?;
    fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let agent = if archive.urls.iter().any(|u| local_path(u).is_none()) {
        Some(crate::sys::http::agent(tuning, archive.ca_file.as_deref())?)
    } else {
        None
    };
    let mut errors = Vec::new();
    for url in &archive.urls {
        let mirror = Mirror {
            url,
            agent: agent.as_ref(),
            archive,
            tuning,
            limits: fetch::Limits::new(tuning, archive.size),
        };
        let r = mirror
            .install(&staging)
            .and_then(|got| finish(&staging, dest).map(|()| got));
        match r {
            Ok(got) => return Ok(got),
            Err(e) => {
                remove_staging(&staging)?;
                if let Some(sig) = crate::sys::signal::received() {
                    return Err(crate::sys::signal::Interrupted(sig).into());
                }
                let shown = ShownUrl::new(url);
                log::warn!("{shown}: {e:#}");
                errors.push(format!("{shown}: {e:#}"));
            }
        }
    }
    bail!("no mirror could provide the archive: {}", errors.join("; "))
}

/// Sync the unpacked tree, rename it into place and sync the directory holding it.
fn finish(staging: &Path, dest: &Path) -> Result<()> {
    let dir = File::open(staging).with_context(|| format!("cannot open {}", staging.display()))?;
    let started = std::time::Instant::now();
    rustix::fs::syncfs(&dir).with_context(|| format!("cannot sync {}", staging.display()))?;
    log::info!(
        "synced {} in {:.1}s",
        staging.display(),
        started.elapsed().as_secs_f64()
    );
    fs::rename(staging, dest)
        .with_context(|| format!("cannot rename {} to {}", staging.display(), dest.display()))?;
    if let Some(parent) = dest.parent() {
        File::open(parent)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot sync {}", parent.display()))?;
    }
    Ok(())
}

/// One mirror of the archive, and what it takes to fetch from it.
#[derive(Clone, Copy)]
struct Mirror<'a> {
    url: &'a str,
    agent: Option<&'a ureq::Agent>,
    archive: &'a Source,
    tuning: &'a Tuning,
    /// Made when the mirror is first tried, so that its deadline holds across restarts.
    limits: fetch::Limits,
}

impl Mirror<'_> {
    /// Run the pipeline, starting over (with a clean staging directory) when the server says
    /// the stream cannot be resumed, and check the sha256.
    fn install(self, staging: &Path) -> Result<Installed> {
        let mut restarts = 0;
        loop {
            remove_staging(staging)?;
            fs::create_dir(staging)
                .with_context(|| format!("cannot create {}", staging.display()))?;
            match pipeline(self, staging) {
                Err(e)
                    if restarts < self.tuning.retries
                        && e.downcast_ref::<fetch::Restart>().is_some() =>
                {
                    restarts += 1;
                    log::warn!("{}: {e:#}", ShownUrl::new(self.url));
                }
                Err(e) => return Err(e),
                Ok(got) => {
                    match self.archive.sha256.as_deref() {
                        Some(w) if w != got.sha256 => bail!(
                            "sha256 mismatch: the archive has {}, the config expects {w}",
                            got.sha256
                        ),
                        Some(_) => {}
                        None => log::warn!(
                            "{}: no sha256 configured; the archive has {}",
                            got.url,
                            got.sha256
                        ),
                    }
                    return Ok(got);
                }
            }
        }
    }

    /// Open the archive's bytes: a resuming HTTP body or a local file, with its length if
    /// known.
    fn open(self) -> Result<(Box<dyn Read + Send>, Option<u64>)> {
        if let Some(path) = local_path(self.url) {
            let f = File::open(path)
                .map_err(|e| fetch::MirrorFailed(format!("cannot open {}: {e}", path.display())))?;
            let len = f.metadata().ok().map(|m| m.len());
            return Ok((Box::new(f), len));
        }
        let agent = self.agent.context("no HTTP agent")?.clone();
        let creds = self
            .archive
            .auth
            .as_ref()
            .map(|a| Credentials::new(a.clone(), self.url, &self.archive.trusted_hosts));
        let r = fetch::Resuming::open(agent, self.url, creds, self.tuning, self.limits)
            .map_err(unwrap_io)?;
        let total = r.total();
        Ok((Box::new(r), total))
    }
}

/// Turn an `io::Error` that carries one of the fetch errors back into that error, so that
/// [`fetch::Restart`] can be recognized; other errors are kept as they are.
fn unwrap_io(e: std::io::Error) -> anyhow::Error {
    let typed = e
        .get_ref()
        .is_some_and(|i| i.is::<fetch::Restart>() || i.is::<fetch::MirrorFailed>());
    if !typed {
        return anyhow::Error::new(e);
    }
    match e.into_inner().map(|i| i.downcast::<fetch::Restart>()) {
        Some(Ok(r)) => anyhow::Error::new(*r),
        Some(Err(inner)) => anyhow::anyhow!(inner),
        None => anyhow::anyhow!("I/O error"),
    }
}

/// Whether `e` only echoes the failure of another thread of the pipeline.
fn is_echo(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.to_string() == pipe::CLOSED)
}

/// One pass over the stream: fetch, decrypt and decompress, and unpack on three threads.
fn pipeline(mirror: Mirror, staging: &Path) -> Result<Installed> {
    let (mut raw_w, raw_r) = pipe::pipe(PIPE_BUFFERS, PIPE_BUFFER_SIZE);
    let (mut tar_w, tar_r) = pipe::pipe(PIPE_BUFFERS, PIPE_BUFFER_SIZE);
    let shown = ShownUrl::new(mirror.url);
    let identities = mirror.archive.identities.as_ref();
    let verified = mirror.archive.sha256.is_some();
    std::thread::scope(|s| {
        // The helper threads carry the step's name, for the log.
        let fetcher = crate::engine::same_step()
            .spawn_scoped(s, move || -> Result<(u64, String)> {
                let (src, total) = mirror.open()?;
                let what = format!("fetching {}", ShownUrl::new(mirror.url));
                let mut src = fetch::Progress::new(
                    fetch::Hashing::new(src),
                    &what,
                    total,
                    mirror.tuning.progress_interval,
                );
                raw_w.copy_from(&mut src).map_err(unwrap_io)?;
                raw_w.finish()?;
                let bytes = src.done();
                Ok((bytes, src.into_inner().hex()))
            })
            .context("cannot start the fetch thread")?;
        let decompressor = crate::engine::same_step()
            .spawn_scoped(s, move || -> Result<decompress::Format> {
                // One reader type for both cases: the decompressors are built once, not twice.
                let mut src: Box<dyn std::io::BufRead + Send> = match identities {
                    Some(ids) => Box::new(ids.decrypt(raw_r)?),
                    None => Box::new(raw_r),
                };
                let format = decompress::detect(src.fill_buf()?)?;
                decompress::copy(format, src, &mut tar_w, verified).with_context(|| {
                    match identities {
                        Some(_) => {
                            format!("cannot decrypt and decompress the archive ({format:?})")
                        }
                        None => format!("cannot decompress the archive ({format:?})"),
                    }
                })?;
                tar_w.finish()?;
                Ok(format)
            })
            .context("cannot start the decompress thread")?;
        let started = std::time::Instant::now();
        let unpacked = unpack::unpack(tar_r, staging);
        log::info!(
            "unpacked into {} in {:.1}s",
            staging.display(),
            started.elapsed().as_secs_f64()
        );
        let fetched = fetcher.join().expect("the fetch thread panicked");
        let format = decompressor.join().expect("the decompress thread panicked");
        // Report the cause: the first failure that is not an echo of another one.
        let mut errors = Vec::new();
        let fetched = fetched.map_err(|e| errors.push(e)).ok();
        let format = format.map_err(|e| errors.push(e)).ok();
        let unpacked = unpacked.map_err(|e| errors.push(e)).ok();
        if !errors.is_empty() {
            let cause = errors.iter().position(|e| !is_echo(e)).unwrap_or(0);
            return Err(errors.swap_remove(cause));
        }
        let ((bytes, sha256), format, stats) = match (fetched, format, unpacked) {
            (Some(f), Some(d), Some(u)) => (f, d, u),
            _ => bail!("the pipeline ended without a result"),
        };
        Ok(Installed {
            url: shown,
            bytes,
            sha256,
            format,
            stats,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_secret() {
        let auth = Auth::parse(&crate::secret::SecretFile::from_text("/a", "Bearer t0k")).unwrap();
        let s = Source {
            urls: vec!["https://u:pw@store/opt.tar.zst.age?sig=s1g".into()],
            auth: Some(auth),
            ..Source::default()
        };
        let shown = format!("{s:?}");
        assert!(shown.contains("https://store/opt.tar.zst.age?…"), "{shown}");
        for secret in ["t0k", "s1g", "pw"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }
}
