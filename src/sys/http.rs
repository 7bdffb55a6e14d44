//! HTTP(S) client settings shared by the config loader and the opt step.
//!
//! Certificates are always verified, against the Mozilla roots built into the binary (a rescue
//! system may have no CA bundle), the running system's bundle when it has one, and an extra
//! CA file for an internal mirror. Bodies are never decompressed on the fly (ureq's `gzip`
//! feature is off): the archive's sha256 and Range offsets are about the bytes on the wire.

use crate::tuning::Tuning;
use anyhow::{Context, Result};
use std::path::Path;
use ureq::tls::{Certificate, RootCerts, TlsConfig};

/// HTTP statuses that are worth retrying on the same mirror (curl's set).
pub const RETRY_STATUSES: [u16; 6] = [408, 429, 500, 502, 503, 504];

/// Where distributions keep their CA bundle; the first one present is used.
const SYSTEM_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// An agent with olboot's timeouts and trust roots, plus the certificates of `ca_file` (PEM).
/// Statuses are returned as responses, not errors, so callers can tell retryable ones apart.
pub fn agent(tuning: &Tuning, ca_file: Option<&Path>) -> Result<ureq::Agent> {
    let mut roots: Vec<Certificate<'static>> = webpki_root_certs::TLS_SERVER_ROOT_CERTS
        .iter()
        .map(|c| Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    if let Some(bundle) = SYSTEM_BUNDLES.iter().map(Path::new).find(|p| p.is_file()) {
        // A broken system bundle must not stop a fetch the built-in roots can verify.
        match read_pem(bundle) {
            Ok(certs) => roots.extend(certs),
            Err(e) => log::warn!("ignoring the system CA bundle: {e:#}"),
        }
    }
    if let Some(f) = ca_file {
        let certs = read_pem(f)?;
        anyhow::ensure!(
            !certs.is_empty(),
            "{}: no PEM certificate in the CA file",
            f.display()
        );
        roots.extend(certs);
    }
    let tls = TlsConfig::builder()
        .root_certs(RootCerts::new_with_certs(&roots))
        .unversioned_rustls_crypto_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .build();
    let config = ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .timeout_connect(Some(tuning.connect_timeout))
        .timeout_recv_response(Some(tuning.stall_timeout))
        .timeout_per_read(Some(tuning.stall_timeout))
        .user_agent(concat!("olboot/", env!("CARGO_PKG_VERSION")))
        .build();
    Ok(config.into())
}

/// The certificates in the PEM file at `path`.
fn read_pem(path: &Path) -> Result<Vec<Certificate<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        if let ureq::tls::PemItem::Certificate(c) =
            item.with_context(|| format!("{}: bad PEM", path.display()))?
        {
            out.push(c);
        }
    }
    Ok(out)
}

/// A one-line explanation of a failed request, with a hint when the cause is an untrusted
/// certificate (the usual mistake with an internal mirror).
pub fn explain(e: &ureq::Error) -> String {
    let s = e.to_string();
    if s.contains("UnknownIssuer") || s.contains("certificate") {
        format!(
            "{s}: the server's TLS certificate is not trusted \
             (an internal mirror's CA goes in opt.archive.ca_file)"
        )
    } else {
        s
    }
}

/// Fetch a small text document (a config file) from `url`.
pub fn get_text(url: &str) -> Result<String> {
    let agent = agent(&Tuning::from_env(), None)?;
    let mut resp = agent
        .get(url)
        .call()
        .map_err(|e| anyhow::anyhow!("{url}: cannot fetch: {}", explain(&e)))?;
    let status = resp.status().as_u16();
    anyhow::ensure!(status == 200, "{url}: HTTP status {status}");
    resp.body_mut()
        .read_to_string()
        .with_context(|| format!("{url}: cannot read the body"))
}
