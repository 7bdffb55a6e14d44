//! HTTP(S) client settings shared by the config loader and the opt step.
//!
//! Certificates are always verified, against the Mozilla roots built into the binary (a rescue
//! system may have no CA bundle), the running system's bundle when it has one, and an extra
//! CA file for an internal mirror. ureq takes extra roots only as certificates, while
//! webpki-roots carries the Mozilla roots as bare trust anchors (a third of the size of the
//! certificates, which matters for a 3 MiB binary): [`anchor_cert`] wraps each anchor in the
//! smallest certificate that rustls reads back into the very same anchor. Bodies are never decompressed on the fly (ureq's `gzip`
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
    let mut roots: Vec<Certificate<'static>> = webpki_roots::TLS_SERVER_ROOTS
        .iter()
        .map(|a| Certificate::from_der(&anchor_cert(a)).to_owned())
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

/// A DER TLV: `tag`, the length, `content`.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|&b| b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// A v3 certificate carrying exactly a trust anchor: its subject (also as issuer), its public
/// key and its name constraints. A root's own signature and validity are never checked (it is
/// trusted as an anchor), so those fields hold placeholders.
fn anchor_cert(a: &rustls::pki_types::TrustAnchor) -> Vec<u8> {
    const SEQ: u8 = 0x30;
    // AlgorithmIdentifier ecdsa-with-SHA256, for the (unchecked) signature.
    let alg = tlv(
        SEQ,
        &tlv(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]),
    );
    let name = tlv(SEQ, a.subject.as_ref());
    let mut tbs = tlv(0xa0, &[0x02, 0x01, 0x02]); // [0] version v3
    tbs.extend([0x02, 0x01, 0x01]); // serial 1
    tbs.extend(&alg);
    tbs.extend(&name);
    let mut validity = tlv(0x17, b"000101000000Z");
    validity.extend(tlv(0x17, b"491231235959Z"));
    tbs.extend(tlv(SEQ, &validity));
    tbs.extend(&name);
    tbs.extend(tlv(SEQ, a.subject_public_key_info.as_ref()));
    if let Some(nc) = &a.name_constraints {
        // Extension { id-ce-nameConstraints (2.5.29.30), OCTET STRING { NameConstraints } }
        let mut ext = tlv(0x06, &[0x55, 0x1d, 0x1e]);
        ext.extend(tlv(0x04, &tlv(SEQ, nc.as_ref())));
        tbs.extend(tlv(0xa3, &tlv(SEQ, &tlv(SEQ, &ext))));
    }
    let mut cert = tlv(SEQ, &tbs);
    cert.extend(&alg);
    cert.extend([0x03, 0x01, 0x00]); // empty signature BIT STRING
    tlv(SEQ, &cert)
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
    let tuning = Tuning::from_env();
    let agent = agent(&tuning, None)?;
    // At first boot the network may come up a little after olboot starts: connection errors
    // and the named statuses are retried with backoff, other answers are final.
    let mut attempt = 0;
    loop {
        let err = match agent.get(url).call() {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                if status == 200 {
                    return resp
                        .body_mut()
                        .read_to_string()
                        .with_context(|| format!("{url}: cannot read the body"));
                }
                if !RETRY_STATUSES.contains(&status) {
                    anyhow::bail!("{url}: HTTP status {status}");
                }
                format!("HTTP status {status}")
            }
            Err(e) => explain(&e),
        };
        attempt += 1;
        if attempt >= tuning.retries {
            anyhow::bail!("{url}: cannot fetch: {err} (after {attempt} attempts)");
        }
        let delay = tuning.backoff_for(attempt - 1);
        log::warn!("{url}: {err}; retrying in {delay:?}");
        std::thread::sleep(delay);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_anchor_survives_the_round_trip_through_a_certificate() {
        let certs: Vec<rustls::pki_types::CertificateDer> = webpki_roots::TLS_SERVER_ROOTS
            .iter()
            .map(|a| anchor_cert(a).into())
            .collect();
        let mut store = rustls::RootCertStore::empty();
        let (added, ignored) = store.add_parsable_certificates(certs);
        assert_eq!(ignored, 0);
        assert_eq!(added, webpki_roots::TLS_SERVER_ROOTS.len());
        assert_eq!(store.roots, webpki_roots::TLS_SERVER_ROOTS);
        assert!(webpki_roots::TLS_SERVER_ROOTS
            .iter()
            .any(|a| a.name_constraints.is_some()));
    }

    #[test]
    fn long_der_lengths() {
        assert_eq!(tlv(0x04, &[0; 3])[..2], [0x04, 3]);
        assert_eq!(tlv(0x04, &[0; 200])[..3], [0x04, 0x81, 200]);
        assert_eq!(tlv(0x04, &[0; 300])[..4], [0x04, 0x82, 0x01, 0x2c]);
    }
}
