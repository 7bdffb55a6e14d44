//! SIGTERM and SIGINT (what systemd, a shutdown and Ctrl-C send): the handler only records
//! the signal in an atomic (async-signal-safe); the long loops of the opt step (fetching and
//! its retry waits, decompressing, unpacking) poll [`check`] and stop with [`Interrupted`], so
//! the step's own cleanup runs (staging removed), the report is written with the step failed,
//! the lock is released, and olboot exits non-zero. SIGKILL cannot be caught: the next run
//! cleans up.

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// How soon a wait in [`sleep`] notices a signal.
const SLICE: Duration = Duration::from_millis(100);

static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    RECEIVED.store(sig, Ordering::SeqCst);
}

/// Catch SIGTERM and SIGINT from now on.
pub fn install() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a zeroed sigaction is valid; the handler only stores to an atomic. No
        // SA_RESTART: a blocking read returns EINTR, and the loops look at the flag.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                log::warn!(
                    "cannot catch signal {sig}: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

/// The signal that asked olboot to stop, if one did.
pub fn received() -> Option<&'static str> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        libc::SIGINT => Some("SIGINT"),
        _ => Some("SIGTERM"),
    }
}

/// The error of a run stopped by a signal: `interrupted by SIGTERM`.
#[derive(Debug)]
pub struct Interrupted(pub &'static str);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted by {}", self.0)
    }
}

impl std::error::Error for Interrupted {}

/// Err([`Interrupted`]) once a signal asked olboot to stop, for loops to poll.
pub fn check() -> std::io::Result<()> {
    match received() {
        None => Ok(()),
        Some(s) => Err(std::io::Error::other(Interrupted(s))),
    }
}

/// Sleep for `d` (a retry's backoff), in slices of [`SLICE`] that poll [`check`]: a signal
/// ends the wait with Err([`Interrupted`]) at once rather than after it (up to minutes).
pub fn sleep(d: Duration) -> std::io::Result<()> {
    let end = Instant::now() + d;
    loop {
        check()?;
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(SLICE));
    }
}
