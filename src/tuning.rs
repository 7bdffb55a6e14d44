//! Time bounds and retry counts. Production values are the defaults; tests shrink them
//! through `OLBOOT_*` environment variables so that fault tests stay fast.

use std::time::Duration;

/// Retry, timeout and progress settings shared by the steps.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Attempts per operation that can fail transiently (HTTP fetch, apt).
    pub retries: u32,
    /// First backoff delay; doubled after every failure.
    pub backoff: Duration,
    /// Upper bound for one backoff delay.
    pub backoff_max: Duration,
    /// TCP/TLS connect timeout.
    pub connect_timeout: Duration,
    /// A transfer that moves no byte for this long is treated as a dropped connection.
    pub stall_timeout: Duration,
    /// How long apt waits for the dpkg lock held by unattended-upgrades or cloud-init.
    pub dpkg_lock_timeout: Duration,
    /// Interval between progress lines of a long transfer.
    pub progress_interval: Duration,
    /// An archive transfer slower than this many bytes per second over `speed_time` fails.
    pub speed_limit: u64,
    /// The window over which `speed_limit` is averaged.
    pub speed_time: Duration,
    /// The most one mirror may take to deliver the whole archive, retries included.
    pub mirror_deadline: Duration,
    /// The most fetching a small document by URL (the config) may take, retries and body
    /// included.
    pub text_deadline: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            retries: 5,
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(15),
            stall_timeout: Duration::from_secs(60),
            dpkg_lock_timeout: Duration::from_secs(600),
            progress_interval: Duration::from_secs(5),
            speed_limit: 1024,
            speed_time: Duration::from_secs(60),
            mirror_deadline: Duration::from_secs(6 * 3600),
            text_deadline: Duration::from_secs(120),
        }
    }
}

impl Tuning {
    /// The defaults, overridden by `OLBOOT_RETRIES`, `OLBOOT_BACKOFF_MS`,
    /// `OLBOOT_BACKOFF_MAX_MS`, `OLBOOT_CONNECT_TIMEOUT_MS`, `OLBOOT_STALL_TIMEOUT_MS`,
    /// `OLBOOT_DPKG_LOCK_TIMEOUT_MS`, `OLBOOT_PROGRESS_MS`, `OLBOOT_SPEED_LIMIT` (bytes/s),
    /// `OLBOOT_SPEED_TIME_MS`, `OLBOOT_MIRROR_DEADLINE_MS` and `OLBOOT_CONFIG_DEADLINE_MS`
    /// where set to a number.
    pub fn from_env() -> Tuning {
        let mut t = Tuning::default();
        let ms = |name: &str, slot: &mut Duration| {
            if let Some(v) = std::env::var(name).ok().and_then(|v| v.parse().ok()) {
                *slot = Duration::from_millis(v);
            }
        };
        if let Some(v) = std::env::var("OLBOOT_RETRIES")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            t.retries = v;
        }
        if let Some(v) = std::env::var("OLBOOT_SPEED_LIMIT")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            t.speed_limit = v;
        }
        ms("OLBOOT_BACKOFF_MS", &mut t.backoff);
        ms("OLBOOT_BACKOFF_MAX_MS", &mut t.backoff_max);
        ms("OLBOOT_CONNECT_TIMEOUT_MS", &mut t.connect_timeout);
        ms("OLBOOT_STALL_TIMEOUT_MS", &mut t.stall_timeout);
        ms("OLBOOT_DPKG_LOCK_TIMEOUT_MS", &mut t.dpkg_lock_timeout);
        ms("OLBOOT_PROGRESS_MS", &mut t.progress_interval);
        ms("OLBOOT_SPEED_TIME_MS", &mut t.speed_time);
        ms("OLBOOT_MIRROR_DEADLINE_MS", &mut t.mirror_deadline);
        ms("OLBOOT_CONFIG_DEADLINE_MS", &mut t.text_deadline);
        t
    }

    /// The delay before retry number `attempt` (0-based): exponential, capped.
    pub fn backoff_for(&self, attempt: u32) -> Duration {
        self.backoff
            .saturating_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX))
            .min(self.backoff_max)
    }
}
