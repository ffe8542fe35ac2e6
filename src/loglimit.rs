//! Rate limiting of repeated warnings.
//!
//! A device that flaps every second must not bury the journal; the first
//! occurrence is logged, repeats within the window are counted, and the
//! count is reported with the next line that gets through.

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct LogLimiter {
    /// How long identical messages are held back after one is logged.
    window: Duration,
    /// Per key: when it was last let through, and how many were held back since.
    seen: HashMap<String, (Instant, u64)>,
}

impl LogLimiter {
    pub fn new(window: Duration) -> Self {
        LogLimiter {
            window,
            seen: HashMap::new(),
        }
    }

    /// `Some(suppressed)` when a line with this key should be logged now,
    /// where `suppressed` counts the repeats held back since the last one.
    pub fn check(&mut self, key: &str) -> Option<u64> {
        let now = Instant::now();
        match self.seen.get_mut(key) {
            Some((last, held)) if now.duration_since(*last) < self.window => {
                *held += 1;
                None
            }
            Some((last, held)) => {
                let n = *held;
                *last = now;
                *held = 0;
                Some(n)
            }
            None => {
                self.seen.insert(key.to_string(), (now, 0));
                Some(0)
            }
        }
    }

    /// Forgets a key, so that the next occurrence after a recovery is logged.
    pub fn clear(&mut self, key: &str) {
        self.seen.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_held_back_and_counted() {
        let mut l = LogLimiter::new(Duration::from_secs(3600));
        assert_eq!(l.check("a"), Some(0));
        assert_eq!(l.check("a"), None);
        assert_eq!(l.check("a"), None);
        assert_eq!(l.check("b"), Some(0));
        l.clear("a");
        assert_eq!(l.check("a"), Some(0));
        let mut l = LogLimiter::new(Duration::ZERO);
        l.check("a");
        assert_eq!(l.check("a"), Some(0));
    }
}
