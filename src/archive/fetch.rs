//! The bytes of the archive: a resuming HTTP(S) body or a local file, and the small readers
//! stacked on it (sha256, progress).
//!
//! A cut transfer is resumed with `Range: bytes=N-` and `If-Range` from the byte where it
//! stopped, so the decompressor downstream never notices. A server that answers with `200`
//! (no Range support, or `If-Range` saw a new file) or with a different length or start
//! makes the whole stream start over: [`Restart`] tells the pipeline to wipe its staging.

use crate::retry::Backoff;
use crate::secret::ShownUrl;
use crate::sys::http::{self, Credentials, Failure, RETRY_STATUSES};
use crate::tuning::Tuning;
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::{self, Read};
use std::time::{Duration, Instant};
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

/// The bounds of one mirror's transfer (curl's `--speed-limit`/`--speed-time` and
/// `--max-time`, and the archive's size). Made once per mirror: every pass over the stream
/// (a restart included) shares its deadline.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Fewer bytes per second than this, averaged over `speed_time`, fails the mirror.
    pub speed_limit: u64,
    /// The window of the rate check.
    pub speed_time: Duration,
    /// The whole transfer from this mirror, retries and restarts included, ends within this.
    pub deadline: Duration,
    /// When: `deadline` after the mirror was first tried.
    pub ends: Instant,
    /// The archive's size when the config gives it: never more is passed on.
    pub size: Option<u64>,
}

impl Limits {
    /// The limits of `tuning` from now on, with the archive's `size` if known.
    pub fn new(tuning: &Tuning, size: Option<u64>) -> Limits {
        Limits {
            speed_limit: tuning.speed_limit,
            speed_time: tuning.speed_time,
            deadline: tuning.mirror_deadline,
            ends: Instant::now() + tuning.mirror_deadline,
            size,
        }
    }
}

/// A `Read` over the body of `url` that resumes cut transfers.
pub struct Resuming {
    agent: ureq::Agent,
    url: String,
    shown: ShownUrl,
    creds: Option<Credentials>,
    body: Option<ureq::BodyReader<'static>>,
    offset: u64,
    total: Option<u64>,
    /// `ETag` (or else `Last-Modified`) of the first response, sent back as `If-Range`.
    validator: Option<String>,
    /// Failures since the last byte that arrived.
    backoff: Backoff,
    limits: Limits,
    /// Start of the current rate window, and the bytes that came in it (reconnects included).
    window: (Instant, u64),
}

/// An I/O error carrying a [`MirrorFailed`].
fn mirror_failed(why: String) -> io::Error {
    io::Error::other(MirrorFailed(why))
}

impl Resuming {
    /// Request `url` (with `creds` where they may go), retrying transient failures; the
    /// first response decides the length.
    pub fn open(
        agent: ureq::Agent,
        url: &str,
        creds: Option<Credentials>,
        tuning: &Tuning,
        limits: Limits,
    ) -> io::Result<Resuming> {
        let now = Instant::now();
        let mut r = Resuming {
            agent,
            url: url.to_string(),
            shown: ShownUrl::new(url),
            creds,
            body: None,
            offset: 0,
            total: None,
            validator: None,
            backoff: Backoff::new(tuning),
            limits,
            window: (now, 0),
        };
        r.connect()?;
        // The rate is counted from the first response, not from the tries before it.
        r.window = (Instant::now(), 0);
        Ok(r)
    }

    /// The length the server announced (or the config's size), if known.
    pub fn total(&self) -> Option<u64> {
        self.total
    }

    /// Count a failure; sleep before the next try, or give up when retries are used up or
    /// the wait would pass the deadline.
    fn failed(&mut self, why: String) -> io::Result<()> {
        self.body = None;
        let Some(wait) = self.backoff.failed() else {
            return Err(mirror_failed(format!(
                "{why} (gave up after {} tries)",
                self.backoff.failures()
            )));
        };
        if Instant::now() + wait >= self.limits.ends {
            return Err(mirror_failed(format!(
                "{why} (no time left before the deadline of {})",
                humantime::format_duration(self.limits.deadline)
            )));
        }
        log::warn!(
            "{}: {why}; retrying in {}",
            self.shown,
            humantime::format_duration(wait)
        );
        // The rate window goes on across the wait and the new connection: a server that sends
        // a few bytes per connection and closes is measured over all of them.
        crate::sys::signal::sleep(wait)
    }

    /// (Re)connect at `self.offset`.
    fn connect(&mut self) -> io::Result<()> {
        loop {
            crate::sys::signal::check()?;
            let mut headers = Vec::new();
            if self.offset > 0 {
                headers.push((header::RANGE, format!("bytes={}-", self.offset)));
                if let Some(v) = &self.validator {
                    headers.push((header::IF_RANGE, v.clone()));
                }
            }
            let resp = match http::get(
                &self.agent,
                &self.url,
                self.creds.as_ref(),
                &headers,
                Some(self.limits.ends),
            ) {
                Ok(r) => r,
                Err(Failure::Transient(e)) => {
                    self.failed(format!("request failed: {e}"))?;
                    continue;
                }
                Err(Failure::Final(e)) => return Err(mirror_failed(e)),
            };
            let status = resp.status().as_u16();
            if RETRY_STATUSES.contains(&status) {
                self.failed(format!("HTTP status {status}"))?;
                continue;
            }
            self.accept(&resp, status)?;
            self.body = Some(resp.into_body().into_reader());
            return Ok(());
        }
    }

    /// Check a response: the first one sets length and validator, a resumed one must
    /// continue exactly where the stream stopped.
    fn accept(&mut self, resp: &ureq::http::Response<ureq::Body>, status: u16) -> io::Result<()> {
        let hv = |name: header::HeaderName| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let etag = hv(header::ETAG).or_else(|| hv(header::LAST_MODIFIED));
        if self.offset == 0 {
            if status != 200 {
                return Err(mirror_failed(format!("HTTP status {status}")));
            }
            let length = hv(header::CONTENT_LENGTH).and_then(|v| v.parse().ok());
            self.total = match (length, self.limits.size) {
                (Some(l), Some(s)) if l != s => {
                    return Err(mirror_failed(format!(
                        "the server says the archive has {l} bytes, opt.archive.size says {s}"
                    )))
                }
                (l, s) => l.or(s),
            };
            self.validator = etag;
            return Ok(());
        }
        match status {
            206 => {}
            200 => {
                return Err(io::Error::other(Restart(
                    "the server answered a Range request with the whole file".into(),
                )))
            }
            s => return Err(mirror_failed(format!("HTTP status {s}"))),
        }
        let range = hv(header::CONTENT_RANGE).unwrap_or_default();
        let (start, total) = parse_content_range(&range)
            .ok_or_else(|| io::Error::other(Restart(format!("bad Content-Range {range:?}"))))?;
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
        log::info!("{}: resumed at byte {}", self.shown, self.offset);
        Ok(())
    }

    /// Fail when the average rate over the last window is below the limit.
    fn check_rate(&mut self, n: usize) -> io::Result<()> {
        self.window.1 += n as u64;
        let elapsed = self.window.0.elapsed();
        if elapsed < self.limits.speed_time {
            return Ok(());
        }
        let rate = self.window.1 as f64 / elapsed.as_secs_f64();
        if rate < self.limits.speed_limit as f64 {
            return Err(mirror_failed(format!(
                "too slow: {rate:.0} bytes/s over {}, below the minimum of {} bytes/s",
                humantime::format_duration(Duration::from_millis(elapsed.as_millis() as u64)),
                self.limits.speed_limit
            )));
        }
        self.window = (Instant::now(), 0);
        Ok(())
    }

    /// The end of the body: complete, cut short (resume) or too long.
    fn at_end(&mut self) -> io::Result<bool> {
        match self.total {
            Some(t) if self.offset < t => {
                let why = format!("the connection closed at byte {} of {t}", self.offset);
                self.failed(why)?;
                Ok(false)
            }
            _ => Ok(true),
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

impl Read for Resuming {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if Instant::now() >= self.limits.ends {
                return Err(mirror_failed(format!(
                    "not done at byte {} after the deadline of {}",
                    self.offset,
                    humantime::format_duration(self.limits.deadline)
                )));
            }
            let Some(body) = self.body.as_mut() else {
                self.connect()?;
                continue;
            };
            // Never pass on more than the known length; one more byte is asked for at the
            // end only to tell a body that goes on from one that ends.
            let room = match self.total {
                Some(t) => (t.saturating_sub(self.offset)).clamp(1, buf.len() as u64) as usize,
                None => buf.len(),
            };
            match body.read(&mut buf[..room]) {
                Ok(0) if self.at_end()? => return Ok(0),
                Ok(0) => {}
                Ok(_) if self.total.is_some_and(|t| self.offset >= t) => {
                    return Err(mirror_failed(format!(
                        "the body goes on past the {} bytes it should have",
                        self.offset
                    )));
                }
                Ok(n) => {
                    self.offset += n as u64;
                    self.backoff.reset();
                    self.check_rate(n)?;
                    return Ok(n);
                }
                // EINTR: a signal came (no SA_RESTART); stop if it asks olboot to.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => crate::sys::signal::check()?,
                Err(_) if Instant::now() >= self.limits.ends => {}
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
