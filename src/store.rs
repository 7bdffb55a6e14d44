//! The private store: from the config's `opt.archive` to the archive's own [`Source`], reading
//! the root-only files (age identity, credentials) below `--root`.
//!
//! The files are checked before any step runs ([`check`]), so a key readable by others, or
//! one that does not parse, makes the config invalid (exit 2) with nothing touched.

use crate::archive::{crypt::Identities, Source};
use crate::config::{Archive, HostConfig, Invalid};
use crate::root::Root;
use crate::secret::{Auth, SecretFile};
use anyhow::Result;
use std::path::{Path, PathBuf};

/// The archive `a` of the config, as the fetch takes it; `ca_file` is the host path of
/// `a.ca_file`.
pub fn source(a: &Archive, ca_file: Option<PathBuf>, root: &Root) -> Result<Source> {
    let read = |key: &str, p: &Path| {
        root.resolve(p)
            .and_then(|p| SecretFile::read(&p))
            .map_err(|e| Invalid(format!("opt.archive.{key}: {e:#}")))
    };
    let identities = match &a.identity_file {
        Some(p) => Some(
            Identities::parse(&read("identity_file", p)?)
                .map_err(|e| Invalid(format!("opt.archive.identity_file: {e:#}")))?,
        ),
        None => None,
    };
    let auth = match &a.auth_file {
        Some(p) => Some(
            Auth::parse(&read("auth_file", p)?)
                .map_err(|e| Invalid(format!("opt.archive.auth_file: {e:#}")))?,
        ),
        None => None,
    };
    Ok(Source {
        urls: a.urls.iter().map(|u| u.0.clone()).collect(),
        sha256: a.sha256.as_ref().map(|s| s.0.clone()),
        ca_file,
        identities,
        auth,
        trusted_hosts: a.trusted_hosts.clone(),
        size: a.size,
    })
}

/// Check the secret files of `cfg`'s archive: present, root-only, and parseable.
pub fn check(cfg: &HostConfig, root: &Root) -> Result<()> {
    if let Some(a) = cfg.opt.as_ref().and_then(|o| o.archive.as_ref()) {
        let ca_file = a.ca_file.as_ref().map(|c| root.resolve(c)).transpose()?;
        source(a, ca_file, root)?;
    }
    Ok(())
}

/// The credential of `--auth-file`, for a config fetched by URL.
pub fn auth_file(path: &Path) -> Result<Auth> {
    SecretFile::read(path)
        .and_then(|f| Auth::parse(&f))
        .map_err(|e| Invalid(format!("--auth-file: {e:#}")).into())
}
