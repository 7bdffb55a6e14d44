//! The one retry driver: how many tries an operation that can fail transiently gets, and how
//! long to wait between them (exponential backoff, capped). The HTTP client, the archive fetch
//! and apt all count their failures here; which errors are transient is theirs to say.

use crate::tuning::Tuning;
use std::time::Duration;

/// The failures of one operation so far, and what the next one means.
#[derive(Debug, Clone)]
pub struct Backoff {
    tries: u32,
    first: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// A fresh count with the tries and delays of `tuning`.
    pub fn new(tuning: &Tuning) -> Backoff {
        Backoff {
            tries: tuning.retries.max(1),
            first: tuning.backoff,
            max: tuning.backoff_max,
            failures: 0,
        }
    }

    /// Count one transient failure: the delay to wait before trying again, or `None` when the
    /// tries are used up.
    pub fn failed(&mut self) -> Option<Duration> {
        self.failures += 1;
        (self.failures < self.tries).then(|| self.delay(self.failures - 1))
    }

    /// The delay before retry number `n` (0-based): the first delay doubled `n` times, capped.
    pub fn delay(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.min(16)).unwrap_or(u32::MAX);
        self.first.saturating_mul(factor).min(self.max)
    }

    /// Failures counted so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Tries in all, the first one included.
    pub fn tries(&self) -> u32 {
        self.tries
    }

    /// Forget the failures (a transfer that made progress starts its count again).
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_and_gives_up_after_the_last_try() {
        let t = Tuning {
            retries: 4,
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_millis(250),
            ..Tuning::default()
        };
        let mut b = Backoff::new(&t);
        assert_eq!(b.failed(), Some(Duration::from_millis(100)));
        assert_eq!(b.failed(), Some(Duration::from_millis(200)));
        assert_eq!(b.failed(), Some(Duration::from_millis(250)));
        assert_eq!(b.failed(), None);
        assert_eq!(b.failures(), 4);
        b.reset();
        assert_eq!(b.failed(), Some(Duration::from_millis(100)));
    }
}
