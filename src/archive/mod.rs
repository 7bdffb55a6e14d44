//! The `/opt` archive: fetching, verifying and unpacking it, and `olboot pack`.
//!
//! [`install`] runs a pipeline of three threads joined by bounded in-memory [`pipe`]s, so
//! that the network, the CPU and the disk work at the same time while memory stays small:
//!
//! ```text
//! fetch thread:       source (resuming HTTP body | file) → sha256 → progress ─┐ pipe
//! decompress thread:  zstd | gzip | xz, by magic bytes                      ←─┘ ─┐ pipe
//! calling thread:     tar entries → files in the staging directory            ←──┘
//! ```
//!
//! The staging directory sits beside the destination (same filesystem); only once the whole
//! stream was read, its sha256 matched and the filesystem was synced is it renamed into place.

pub mod decompress;
pub mod fetch;
pub mod pack;
pub mod pipe;
pub mod unpack;
pub mod writer;

use crate::config;
use crate::tuning::Tuning;
use anyhow::{bail, Context, Result};
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Buffers per pipe and their size: 2 pipes × 4 × 1 MiB bounds the data in flight.
const PIPE_BUFFERS: usize = 4;
const PIPE_BUFFER_SIZE: usize = 1024 * 1024;

/// What [`install`] brought in.
#[derive(Debug, Clone)]
pub struct Installed {
    /// The mirror it came from.
    pub url: String,
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
/// `dest` once complete and verified. `ca_file` is the host path of the extra CA. On error,
/// nothing is left at `dest` nor in the staging directory.
pub fn install(
    archive: &config::Archive,
    ca_file: Option<&Path>,
    dest: &Path,
    tuning: &Tuning,
) -> Result<Installed> {
    let staging = staging_for(dest);
    let parent = staging
        .parent()
        .with_context(|| format!("{}: no parent directory", dest.display()))?;
    fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let agent = if archive.urls.iter().any(config::ArchiveUrl::is_remote) {
        Some(crate::sys::http::agent(tuning, ca_file)?)
    } else {
        None
    };
    let want = archive.sha256.as_ref().map(|s| s.0.as_str());
    let mut errors = Vec::new();
    for url in &archive.urls {
        let r = from_mirror(url, agent.as_ref(), want, &staging, tuning)
            .and_then(|got| finish(&staging, dest).map(|()| got));
        match r {
            Ok(got) => return Ok(got),
            Err(e) => {
                remove_staging(&staging)?;
                if let Some(sig) = crate::sys::signal::received() {
                    return Err(crate::sys::signal::Interrupted(sig).into());
                }
                log::warn!("{url}: {e:#}");
                errors.push(format!("{url}: {e:#}"));
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

/// One mirror: run the pipeline, starting over (with a clean staging directory) when the
/// server says the stream cannot be resumed, and check the sha256.
fn from_mirror(
    url: &config::ArchiveUrl,
    agent: Option<&ureq::Agent>,
    want: Option<&str>,
    staging: &Path,
    tuning: &Tuning,
) -> Result<Installed> {
    let mut restarts = 0;
    loop {
        remove_staging(staging)?;
        fs::create_dir(staging).with_context(|| format!("cannot create {}", staging.display()))?;
        match pipeline(url, agent, staging, tuning) {
            Err(e) if restarts < tuning.retries && e.downcast_ref::<fetch::Restart>().is_some() => {
                restarts += 1;
                log::warn!("{url}: {e:#}");
            }
            Err(e) => return Err(e),
            Ok(got) => {
                match want {
                    Some(w) if w != got.sha256 => bail!(
                        "sha256 mismatch: the archive has {}, the config expects {w}",
                        got.sha256
                    ),
                    Some(_) => {}
                    None => log::warn!(
                        "{url}: no sha256 configured; the archive has {}",
                        got.sha256
                    ),
                }
                return Ok(got);
            }
        }
    }
}

/// Open the archive's bytes: a resuming HTTP body or a local file, with its length if known.
fn open(
    url: &config::ArchiveUrl,
    agent: Option<&ureq::Agent>,
    tuning: &Tuning,
) -> Result<(Box<dyn Read + Send>, Option<u64>)> {
    if let Some(path) = url.local_path() {
        let f = File::open(path)
            .map_err(|e| fetch::MirrorFailed(format!("cannot open {}: {e}", path.display())))?;
        let len = f.metadata().ok().map(|m| m.len());
        return Ok((Box::new(f), len));
    }
    let agent = agent.context("no HTTP agent")?.clone();
    let r = fetch::Resuming::open(agent, &url.0, tuning).map_err(unwrap_io)?;
    let total = r.total();
    Ok((Box::new(r), total))
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

/// One pass over the stream: fetch, decompress and unpack on three threads.
fn pipeline(
    url: &config::ArchiveUrl,
    agent: Option<&ureq::Agent>,
    staging: &Path,
    tuning: &Tuning,
) -> Result<Installed> {
    let (mut raw_w, raw_r) = pipe::pipe(PIPE_BUFFERS, PIPE_BUFFER_SIZE);
    let (mut tar_w, tar_r) = pipe::pipe(PIPE_BUFFERS, PIPE_BUFFER_SIZE);
    std::thread::scope(|s| {
        // The helper threads carry the step's name, for the log.
        let fetcher = crate::engine::same_step()
            .spawn_scoped(s, move || -> Result<(u64, String)> {
                let (src, total) = open(url, agent, tuning)?;
                let what = format!("fetching {url}");
                let mut src = fetch::Progress::new(
                    fetch::Hashing::new(src),
                    &what,
                    total,
                    tuning.progress_interval,
                );
                raw_w.copy_from(&mut src).map_err(unwrap_io)?;
                raw_w.finish()?;
                let bytes = src.done();
                Ok((bytes, src.into_inner().hex()))
            })
            .context("cannot start the fetch thread")?;
        let decompressor = crate::engine::same_step()
            .spawn_scoped(s, move || -> Result<decompress::Format> {
                let (format, mut r) = decompress::reader(raw_r)?;
                tar_w
                    .copy_from(&mut r)
                    .with_context(|| format!("cannot decompress the archive ({format:?})"))?;
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
            url: url.0.clone(),
            bytes,
            sha256,
            format,
            stats,
        })
    })
}
