//! HTTP(S) client settings shared by the config loader and the opt step.
//!
//! Certificates are always verified, against the Mozilla roots built into the binary (a rescue
//! system may have no CA bundle), the running system's bundle when it has one, and an extra
//! CA file for an internal mirror. ureq takes extra roots only as certificates, while
//! webpki-roots carries the Mozilla roots as bare trust anchors (a third of the size of the
//! certificates, which matters for a 3 MiB binary): [`anchor_cert`] wraps each anchor in the
//! smallest certificate that rustls reads back into the very same anchor. Bodies are never decompressed on the fly (ureq's `gzip`
//! feature is off): the archive's sha256 and Range offsets are about the bytes on the wire.

use crate::retry::Backoff;
use crate::secret::{split_scheme, Auth, ShownUrl};
use crate::tuning::Tuning;
use anyhow::{Context, Result};
use std::path::Path;
use std::time::Instant;
use ureq::http::Uri;
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
        // Redirects are followed by [`get`], which decides where the credentials may go.
        .max_redirects(0)
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

/// A one-line explanation of a failed request to `url`, with a hint when the cause is an
/// untrusted certificate (the usual mistake with an internal mirror). The URL never appears
/// in full: ureq's errors can quote it.
pub fn explain(e: &ureq::Error, url: &str) -> String {
    let s = e.to_string().replace(url, &ShownUrl::new(url).to_string());
    if s.contains("UnknownIssuer") || s.contains("certificate") {
        format!(
            "{s}: the server's TLS certificate is not trusted \
             (an internal mirror's CA goes in opt.archive.ca_file)"
        )
    } else {
        s
    }
}

/// Redirects followed per request; more is a loop or a misconfigured store.
pub const MAX_REDIRECTS: usize = 5;

/// A credential and where it may be sent: the host and port of the URL it was configured
/// with, and on a redirect the `trusted` hosts (curl's `--location-trusted` problem).
#[derive(Debug, Clone)]
pub struct Credentials {
    auth: Auth,
    origin: Option<(String, u16)>,
    trusted: Vec<String>,
}

impl Credentials {
    /// `auth` for requests to `url`'s host, and `trusted` hosts a redirect may lead to.
    pub fn new(auth: Auth, url: &str, trusted: &[String]) -> Credentials {
        let origin = url.parse::<Uri>().ok().as_ref().and_then(host_port);
        Credentials {
            auth,
            origin,
            trusted: trusted.iter().map(|h| h.to_ascii_lowercase()).collect(),
        }
    }

    /// Whether the credential may go to `uri`.
    fn allows(&self, uri: &Uri) -> bool {
        let Some((host, port)) = host_port(uri) else {
            return false;
        };
        self.origin.as_ref() == Some(&(host.clone(), port)) || self.trusted.contains(&host)
    }
}

/// The lowercase host and the effective port of `uri`.
fn host_port(uri: &Uri) -> Option<(String, u16)> {
    let host = uri.host()?.to_ascii_lowercase();
    let port = uri.port_u16().or(match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    })?;
    Some((host, port))
}

/// Why a request got no usable response.
#[derive(Debug)]
pub enum Failure {
    /// Worth another try on the same server (connection refused, reset, timed out).
    Transient(String),
    /// Trying again will not help (a bad redirect, a refused certificate, the deadline).
    Final(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Transient(s) | Failure::Final(s) => f.write_str(s),
        }
    }
}

/// One GET of `url` with `headers`, following redirects by hand so that the credential goes
/// only where [`Credentials`] allows and no https URL leads to plain http. The whole call,
/// body included, must end by `deadline`. The final response is returned whatever its status.
pub fn get(
    agent: &ureq::Agent,
    url: &str,
    creds: Option<&Credentials>,
    headers: &[(ureq::http::HeaderName, String)],
    deadline: Option<Instant>,
) -> Result<ureq::http::Response<ureq::Body>, Failure> {
    let mut current = url.to_string();
    for _hop in 0..=MAX_REDIRECTS {
        let shown = ShownUrl::new(&current);
        let uri: Uri = current
            .parse()
            .map_err(|_| Failure::Final(format!("{shown}: not a valid URL")))?;
        let mut req = agent.get(&current);
        match creds {
            Some(c) if c.allows(&uri) => req = req.header(c.auth.name(), c.auth.value()),
            Some(_) => log::info!("{shown}: another host; the credentials are not sent there"),
            None => {}
        }
        for (name, value) in headers {
            req = req.header(name, value);
        }
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Failure::Final("the deadline for this mirror passed".into()));
            }
            req = req.config().timeout_global(Some(left)).build();
        }
        let resp = req.call().map_err(|e| match e {
            ureq::Error::Timeout(_) if deadline.is_some_and(|d| Instant::now() >= d) => {
                Failure::Final("the deadline for this mirror passed".into())
            }
            e if transient(&e) => Failure::Transient(explain(&e, &current)),
            e => Failure::Final(explain(&e, &current)),
        })?;
        if !matches!(resp.status().as_u16(), 301 | 302 | 303 | 307 | 308) {
            return Ok(resp);
        }
        let location = resp
            .headers()
            .get(ureq::http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Failure::Final(format!("{shown}: a redirect without Location")))?;
        let next = resolve(&current, location);
        if current.starts_with("https://") && !next.starts_with("https://") {
            return Err(Failure::Final(format!(
                "{shown}: refused a redirect from https to {}",
                ShownUrl::new(&next)
            )));
        }
        log::info!("{shown}: redirected to {}", ShownUrl::new(&next));
        current = next;
    }
    Err(Failure::Final(format!(
        "{}: more than {MAX_REDIRECTS} redirects",
        ShownUrl::new(url)
    )))
}

/// The absolute URL of `location` as found in a response to `base`.
fn resolve(base: &str, location: &str) -> String {
    // Only a scheme makes it absolute: a relative one's query may carry a `://` (a return URL).
    if split_scheme(location).is_some() {
        return location.to_string();
    }
    let (scheme, rest) = split_scheme(base).unwrap_or(("http", base));
    if let Some(net) = location.strip_prefix("//") {
        return format!("{scheme}://{net}");
    }
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    if location.starts_with('/') {
        return format!("{scheme}://{authority}{location}");
    }
    let path = rest[authority.len()..]
        .split(['?', '#'])
        .next()
        .unwrap_or("");
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    let dir = if dir.is_empty() { "/" } else { dir };
    format!("{scheme}://{authority}{dir}{location}")
}

/// Whether a request error is worth retrying on the same server.
pub fn transient(e: &ureq::Error) -> bool {
    matches!(
        e,
        ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::HostNotFound
            | ureq::Error::ConnectionFailed
            | ureq::Error::BodyStalled
            | ureq::Error::Protocol(_)
    )
}

/// Fetch a small text document (a config file) from `url`, with `auth` for its host, within
/// [`Tuning::text_deadline`].
pub fn get_text(url: &str, auth: Option<&Auth>) -> Result<String> {
    let tuning = Tuning::from_env();
    let agent = agent(&tuning, None)?;
    let shown = ShownUrl::new(url);
    let creds = auth.map(|a| Credentials::new(a.clone(), url, &[]));
    // One deadline for the tries, their waits and the body: the stall timeout alone lets a
    // server that trickles a byte now and then hold olboot for ever.
    let deadline = Instant::now() + tuning.text_deadline;
    let late = || {
        anyhow::anyhow!(
            "{shown}: not fetched within the deadline of {}",
            humantime::format_duration(tuning.text_deadline)
        )
    };
    // At first boot the network may come up a little after olboot starts: connection errors
    // and the named statuses are retried with backoff, other answers are final.
    let mut backoff = Backoff::new(&tuning);
    loop {
        let err = match get(&agent, url, creds.as_ref(), &[], Some(deadline)) {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                if status == 200 {
                    // ureq reads at most 10 MB this way: a config, not an endless body.
                    return resp.body_mut().read_to_string().map_err(|e| {
                        if Instant::now() >= deadline {
                            late()
                        } else {
                            anyhow::anyhow!("{shown}: cannot read the body: {}", explain(&e, url))
                        }
                    });
                }
                if !RETRY_STATUSES.contains(&status) {
                    anyhow::bail!("{shown}: HTTP status {status}");
                }
                format!("HTTP status {status}")
            }
            Err(_) if Instant::now() >= deadline => return Err(late()),
            Err(Failure::Final(e)) => anyhow::bail!("{shown}: cannot fetch: {e}"),
            Err(Failure::Transient(e)) => e,
        };
        let Some(delay) = backoff.failed() else {
            anyhow::bail!(
                "{shown}: cannot fetch: {err} (after {} attempts)",
                backoff.failures()
            );
        };
        if Instant::now() + delay >= deadline {
            anyhow::bail!(
                "{shown}: cannot fetch: {err} (no time left before the deadline of {})",
                humantime::format_duration(tuning.text_deadline)
            );
        }
        log::warn!("{shown}: {err}; retrying in {delay:?}");
        crate::sys::signal::sleep(delay)?;
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
    fn redirect_targets() {
        assert_eq!(resolve("https://a/x/y?q", "z"), "https://a/x/z");
        assert_eq!(resolve("https://a/x/y", "/z?k"), "https://a/z?k");
        assert_eq!(resolve("https://a:8/x", "//b/z"), "https://b/z");
        assert_eq!(resolve("https://a", "z"), "https://a/z");
        assert_eq!(resolve("http://a/x", "https://c/d"), "https://c/d");
        assert_eq!(
            resolve("http://a:1/start", "/dl?sig=s&next=http://b/x"),
            "http://a:1/dl?sig=s&next=http://b/x"
        );
        assert_eq!(
            resolve("http://a/x/y", "z?r=ftp://b"),
            "http://a/x/z?r=ftp://b"
        );
    }

    #[test]
    fn credentials_stay_with_their_host() {
        let auth = Auth::parse(&crate::secret::SecretFile::from_text("/a", "Bearer t")).unwrap();
        let c = Credentials::new(auth, "http://127.0.0.1:8080/a", &["mirror.example".into()]);
        let ok = |u: &str| c.allows(&u.parse().unwrap());
        assert!(ok("http://127.0.0.1:8080/b"));
        assert!(!ok("http://127.0.0.1:8081/b"));
        assert!(!ok("http://127.0.0.2:8080/b"));
        assert!(ok("https://MIRROR.example/b"));
    }

    #[test]
    fn long_der_lengths() {
        assert_eq!(tlv(0x04, &[0; 3])[..2], [0x04, 3]);
        assert_eq!(tlv(0x04, &[0; 200])[..3], [0x04, 0x81, 200]);
        assert_eq!(tlv(0x04, &[0; 300])[..4], [0x04, 0x82, 0x01, 0x2c]);
    }
}
