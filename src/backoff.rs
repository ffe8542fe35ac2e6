//! Exponential backoff with jitter, shared by every reconnecting component.
//!
//! Jitter matters on a shop floor: after a switch reboots, forty gateways
//! (or forty devices of one gateway) must not reconnect in lockstep.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    /// First delay after a failure.
    base: Duration,
    /// Ceiling, so a device that returns is noticed within this time.
    max: Duration,
    /// Consecutive failures so far.
    failures: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            failures: 0,
        }
    }

    /// The delay before the next attempt: a random value in [d/2, d], with
    /// d doubling each failure up to `max` ("equal jitter").
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.failures.min(16);
        self.failures = self.failures.saturating_add(1);
        let d = self.base.saturating_mul(1u32 << exp).min(self.max);
        let half = d / 2;
        half + half.mul_f64(fastrand::f64())
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_ceiling_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..10 {
            assert!(b.next_delay() <= Duration::from_secs(1));
        }
        let late = b.next_delay();
        assert!(late >= Duration::from_millis(500));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
