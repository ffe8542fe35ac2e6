//! Wall-clock time behind a trait, so that timestamp and window logic can be
//! tested (and the demo time-compressed) without sleeping.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + 'static {
    /// UTC milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;

    /// How long to really wait for `d` of this clock's time to pass. The
    /// system clock waits `d`; a time-compressed clock waits less.
    fn to_real(&self, d: Duration) -> Duration {
        d
    }
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            // A clock before 1970 is a broken gateway; 0 is obviously wrong
            // in every payload rather than plausibly wrong.
            .unwrap_or(0)
    }
}

/// The system clock plus an adjustable offset: lets fault tests step the
/// clock (e.g. an hour backwards) the way a misbehaving NTP would.
#[derive(Debug, Default)]
pub struct OffsetClock {
    offset_ms: std::sync::atomic::AtomicI64,
}

impl OffsetClock {
    pub fn step(&self, delta_ms: i64) {
        self.offset_ms
            .fetch_add(delta_ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for OffsetClock {
    fn now_ms(&self) -> i64 {
        SystemClock.now_ms() + self.offset_ms.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A time-compressed clock for the demo: starts at the system time and runs
/// `speed` times faster, so `--speed 720` passes a day in two minutes. Every
/// wait that is measured in clock time (poll intervals, metrics windows,
/// the simulator's schedule) goes through [`Clock::to_real`], so windows,
/// metrics and the digest chain follow the simulated time consistently.
#[derive(Debug)]
pub struct ScaledClock {
    /// Clock time at `real_start`.
    start_ms: i64,
    /// Monotonic, so a stepping system clock cannot make simulated time jump.
    real_start: Instant,
    speed: f64,
}

impl ScaledClock {
    /// A clock at the current system time running `speed` (≥ 1) times faster.
    pub fn new(speed: f64) -> ScaledClock {
        ScaledClock {
            start_ms: SystemClock.now_ms(),
            real_start: Instant::now(),
            speed: if speed.is_finite() {
                speed.max(1.0)
            } else {
                1.0
            },
        }
    }

    pub fn speed(&self) -> f64 {
        self.speed
    }
}

impl Clock for ScaledClock {
    fn now_ms(&self) -> i64 {
        let real = self.real_start.elapsed().as_secs_f64() * 1000.0;
        self.start_ms + (real * self.speed) as i64
    }

    fn to_real(&self, d: Duration) -> Duration {
        d.div_f64(self.speed)
    }
}

/// A clock that starts `behind` in the past, runs `speed` times faster
/// until it has caught up with the system time, and from then on is the
/// system time: the city demo's gateways produce a week of history in a
/// minute, then go on live, so that what they send and when the platform
/// receives it agree again.
#[derive(Debug)]
pub struct CatchUpClock {
    /// Clock time at `real_start`.
    start_ms: i64,
    /// System time at `real_start`.
    system_start_ms: i64,
    real_start: Instant,
    speed: f64,
}

impl CatchUpClock {
    /// `speed` ≥ 1; `behind`: how far in the past the clock starts.
    pub fn new(speed: f64, behind: Duration) -> CatchUpClock {
        let now = SystemClock.now_ms();
        CatchUpClock {
            start_ms: now - i64::try_from(behind.as_millis()).unwrap_or(i64::MAX / 2),
            system_start_ms: now,
            real_start: Instant::now(),
            speed: if speed.is_finite() {
                speed.max(1.0)
            } else {
                1.0
            },
        }
    }

    /// Whether the clock has caught up with the system time.
    pub fn caught_up(&self) -> bool {
        self.caught_up_after(self.real_elapsed_ms())
    }

    fn real_elapsed_ms(&self) -> f64 {
        self.real_start.elapsed().as_secs_f64() * 1000.0
    }

    /// [`CatchUpClock::caught_up`], `real_ms` after the start; apart so
    /// that tests fix the elapsed time instead of racing it.
    fn caught_up_after(&self, real_ms: f64) -> bool {
        self.start_ms as f64 + real_ms * self.speed >= self.system_start_ms as f64 + real_ms
    }

    /// The clock's time `real_ms` after the start. Monotonic elapsed time
    /// on both branches, so the clock never steps.
    fn now_after(&self, real_ms: f64) -> i64 {
        let fast = self.start_ms + (real_ms * self.speed) as i64;
        fast.min(self.system_start_ms + real_ms as i64)
    }
}

impl Clock for CatchUpClock {
    fn now_ms(&self) -> i64 {
        self.now_after(self.real_elapsed_ms())
    }

    fn to_real(&self, d: Duration) -> Duration {
        if self.caught_up() {
            d
        } else {
            d.div_f64(self.speed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_clock_compresses_waits_and_runs_fast() {
        let c = ScaledClock::new(720.0);
        assert_eq!(c.to_real(Duration::from_secs(3600)), Duration::from_secs(5));
        let a = c.now_ms();
        std::thread::sleep(Duration::from_millis(20));
        // 20 ms of real time is at least 14.4 s of clock time.
        assert!(c.now_ms() - a >= 14_400);
        assert_eq!(
            SystemClock.to_real(Duration::from_secs(1)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn a_catch_up_clock_runs_fast_until_it_meets_the_system_time() {
        // A minute behind at ×3,600: caught up after 60 s / 3,599 ≈ 16.7 ms.
        let c = CatchUpClock::new(3600.0, Duration::from_secs(60));
        let system = c.system_start_ms;
        assert_eq!(c.now_after(0.0), system - 60_000);
        assert_eq!(c.now_after(10.0), system - 60_000 + 36_000);
        assert!(!c.caught_up_after(10.0));
        assert!(!c.caught_up_after(16.0));
        assert!(c.caught_up_after(17.0));
        // From then on, the system time: never ahead of it, never a step.
        assert_eq!(c.now_after(17.0), system + 17);
        assert_eq!(c.now_after(20_000.0), system + 20_000);
        // On the real clock, too, it catches up.
        while !c.caught_up() {
            std::thread::yield_now();
        }
        assert_eq!(c.to_real(Duration::from_secs(1)), Duration::from_secs(1));
        assert!(c.now_ms() >= system);
    }

    #[test]
    fn a_catch_up_clock_compresses_waits_until_it_has_caught_up() {
        let c = CatchUpClock::new(3600.0, Duration::from_secs(3600 * 24 * 365));
        assert_eq!(c.to_real(Duration::from_secs(3600)), Duration::from_secs(1));
    }
}
