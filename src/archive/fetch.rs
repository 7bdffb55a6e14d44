//! The bytes of the archive: a resuming HTTP(S) body or a local file, and the small readers
//! stacked on it (sha256, progress).
//!
//! A cut transfer is resumed with `Range: bytes=N-` and `If-Range` from the byte where it
//! stopped, so the decompressor downstream never notices. A server that answers with `200`
//! (no Range support, or `If-Range` saw a new file) or with a different length or start
//! makes the whole stream start over: [`Restart`] tells the pipeline to wipe its staging.

use crate::sys::http::{explain, RETRY_STATUSES};
use crate::tuning::Tuning;
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::{self, Read};
use std::time::Instant;
use ureq::http::header;

/// The stream must start over from byte 0 (the server's file changed or it cannot resume).
#[derive(Debug)]
pub struct Restart(pub String);

impl fmt::Display for Restart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the download must start over: {}", self.0)
    }
}
impl std::error::Error for Restart {}

/// This mirror cannot serve the archive (a 4xx, an untrusted certificate, retries used up).
#[derive(Debug)]
pub struct MirrorFailed(pub String);

impl fmt::Display for MirrorFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for MirrorFailed {}

/// A `Read` over the body of `url` that resumes cut transfers.
pub struct Resuming {
    agent: ureq::Agent,
    url: String,
    tuning: Tuning,
    body: Option<ureq::BodyReader<'static>>,
    offset: u64,
    total: Option<u64>,
    /// `ETag` (or else `Last-Modified`) of the first response, sent back as `If-Range`.
    validator: Option<String>,
    /// Failures since the last byte that arrived.
    failures: u32,
}

impl Resuming {
    /// Request `url`, retrying transient failures; the first response decides the length.
    pub fn open(agent: ureq::Agent, url: &str, tuning: &Tuning) -> io::Result<Resuming> {
        let mut r = Resuming {
            agent,
            url: url.to_string(),
            tuning: tuning.clone(),
            body: None,
            offset: 0,
            total: None,
            validator: None,
            failures: 0,
        };
        r.connect()?;
        Ok(r)
    }

    /// The length the server announced, if it did.
    pub fn total(&self) -> Option<u64> {
        self.total
    }

    /// Count a failure; sleep before the next try, or give up when retries are used up.
    fn failed(&mut self, why: String) -> io::Result<()> {
        self.body = None;
        if self.failures >= self.tuning.retries {
            return Err(io::Error::other(MirrorFailed(format!(
                "{why} (gave up after {} tries)",
                self.failures + 1
            ))));
        }
        let wait = self.tuning.backoff_for(self.failures);
        self.failures += 1;
        log::warn!(
            "{}: {why}; retrying in {}",
            self.url,
            humantime::format_duration(wait)
        );
        std::thread::sleep(wait);
        Ok(())
    }

    /// (Re)connect at `self.offset`.
    fn connect(&mut self) -> io::Result<()> {
        loop {
            let mut req = self.agent.get(&self.url);
            if self.offset > 0 {
                req = req.header(header::RANGE, format!("bytes={}-", self.offset));
                if let Some(v) = &self.validator {
                    req = req.header(header::IF_RANGE, v);
                }
            }
            let resp = match req.call() {
                Ok(r) => r,
                Err(e) if transient(&e) => {
                    self.failed(format!("request failed: {}", explain(&e)))?;
                    continue;
                }
                Err(e) => return Err(io::Error::other(MirrorFailed(explain(&e)))),
            };
            let status = resp.status().as_u16();
            if RETRY_STATUSES.contains(&status) {
                self.failed(format!("HTTP status {status}"))?;
                continue;
            }
            let hv = |name: header::HeaderName| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let etag = hv(header::ETAG).or_else(|| hv(header::LAST_MODIFIED));
            if self.offset == 0 {
                if status != 200 {
                    return Err(io::Error::other(MirrorFailed(format!(
                        "HTTP status {status}"
                    ))));
                }
                self.total = hv(header::CONTENT_LENGTH).and_then(|v| v.parse().ok());
                self.validator = etag;
            } else {
                match status {
                    206 => {}
                    200 => {
                        return Err(io::Error::other(Restart(
                            "the server answered a Range request with the whole file".into(),
                        )))
                    }
                    s => return Err(io::Error::other(MirrorFailed(format!("HTTP status {s}")))),
                }
                let range = hv(header::CONTENT_RANGE).unwrap_or_default();
                let (start, total) = parse_content_range(&range).ok_or_else(|| {
                    io::Error::other(Restart(format!("bad Content-Range {range:?}")))
                })?;
                if start != self.offset {
                    return Err(io::Error::other(Restart(format!(
                        "asked for byte {} and got byte {start}",
                        self.offset
                    ))));
                }
                if total.is_some() && self.total.is_some() && total != self.total {
                    return Err(io::Error::other(Restart(
                        "the file's length changed".into(),
                    )));
                }
                if etag.is_some() && self.validator.is_some() && etag != self.validator {
                    return Err(io::Error::other(Restart("the file's ETag changed".into())));
                }
                log::info!("{}: resumed at byte {}", self.url, self.offset);
            }
            self.body = Some(resp.into_body().into_reader());
            return Ok(());
        }
    }
}

/// `bytes START-END/TOTAL` → (START, TOTAL); `*` as TOTAL gives `None`.
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let start = range.split_once('-')?.0.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start, total))
}

/// Whether a request error is worth retrying on the same mirror.
fn transient(e: &ureq::Error) -> bool {
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

impl Read for Resuming {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(body) = self.body.as_mut() else {
                self.connect()?;
                continue;
            };
            match body.read(buf) {
                Ok(0) => match self.total {
                    Some(t) if self.offset < t => {
                        let why = format!("the connection closed at byte {} of {t}", self.offset);
                        self.failed(why)?;
                    }
                    _ => return Ok(0),
                },
                Ok(n) => {
                    self.offset += n as u64;
                    self.failures = 0;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let why = format!("the transfer broke at byte {}: {e}", self.offset);
                    self.failed(why)?;
                }
            }
        }
    }
}

/// Computes the sha256 of everything read through it.
pub struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Hashing<R> {
    /// Hash what is read from `inner`.
    pub fn new(inner: R) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// The digest, as lowercase hex.
    pub fn hex(self) -> String {
        self.hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Logs a line with bytes, rate and ETA every `interval` while it is read.
pub struct Progress<R> {
    inner: R,
    what: String,
    total: Option<u64>,
    done: u64,
    started: Instant,
    next: Instant,
    interval: std::time::Duration,
}

impl<R: Read> Progress<R> {
    /// Report progress of reading `inner` (`total` bytes, if known) as `what`.
    pub fn new(inner: R, what: &str, total: Option<u64>, interval: std::time::Duration) -> Self {
        let now = Instant::now();
        Progress {
            inner,
            what: what.to_string(),
            total,
            done: 0,
            started: now,
            next: now + interval,
            interval,
        }
    }

    /// Bytes read so far.
    pub fn done(&self) -> u64 {
        self.done
    }

    /// The reader inside.
    pub fn into_inner(self) -> R {
        self.inner
    }

    fn report(&self) {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = self.done as f64 / secs;
        let line = match self.total {
            Some(t) if t > 0 => {
                let eta = t.saturating_sub(self.done) as f64 / rate.max(1.0);
                format!(
                    "{} of {} ({:.0}%), {}/s, ETA {}s",
                    mib(self.done),
                    mib(t),
                    self.done as f64 * 100.0 / t as f64,
                    mib(rate as u64),
                    eta.ceil() as u64
                )
            }
            _ => format!("{}, {}/s", mib(self.done), mib(rate as u64)),
        };
        log::info!("{}: {line}", self.what);
    }
}

/// `n` bytes in MiB, for logs.
pub fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        if Instant::now() >= self.next {
            self.report();
            self.next = Instant::now() + self.interval;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((100, Some(200)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }

    #[test]
    fn hashing_reader() {
        let mut h = Hashing::new(&b"abc"[..]);
        io::copy(&mut h, &mut io::sink()).unwrap();
        assert_eq!(
            h.hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
