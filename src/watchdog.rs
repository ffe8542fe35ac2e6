//! systemd integration: readiness, the watchdog and progress heartbeats.
//!
//! # Design
//!
//! systemd restarts a wedged agent if we stop pinging `WATCHDOG=1` within
//! `WatchdogSec`. A ping from a timer alone would prove only that the
//! runtime is alive, so the ping is earned: the outbox thread (which every
//! poll cycle passes through) and the uplink loop each bump a counter in
//! [`Progress`] on every iteration, and both also iterate on an idle tick of
//! [`HEARTBEAT`], so an agent with nothing to poll or nothing to send still
//! shows progress. The watchdog task pings only when *both* counters moved
//! since its last look. A broker outage is progress too: the uplink's
//! back-off wait ticks like any other wait. What does not tick is a loop
//! stuck in an await that never returns (a wedged SQLite call, a dead
//! channel), and that is exactly what the watchdog is for.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every notification is a no-op.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;

/// Idle tick of the heartbeat loops. Watchdog periods below 4x this are
/// too short to be earned and are raised to it.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// Progress counters bumped by the loops the watchdog vouches for.
#[derive(Debug, Default)]
pub struct Progress {
    /// Outbox thread iterations (commits, queries, idle ticks).
    outbox: AtomicU64,
    /// Uplink loop iterations (publishes, acks, waits, idle ticks).
    uplink: AtomicU64,
}

impl Progress {
    pub fn new() -> Arc<Progress> {
        Arc::new(Progress::default())
    }
    pub fn outbox_beat(&self) {
        self.outbox.fetch_add(1, Ordering::Relaxed);
    }
    pub fn uplink_beat(&self) {
        self.uplink.fetch_add(1, Ordering::Relaxed);
    }
    /// `(outbox, uplink)` counters.
    pub fn snapshot(&self) -> (u64, u64) {
        (
            self.outbox.load(Ordering::Relaxed),
            self.uplink.load(Ordering::Relaxed),
        )
    }
}

/// Which loops moved between two snapshots; the watchdog pings only if
/// both did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    pub outbox: bool,
    pub uplink: bool,
}

impl Moved {
    pub fn between(before: (u64, u64), after: (u64, u64)) -> Moved {
        Moved {
            outbox: after.0 != before.0,
            uplink: after.1 != before.1,
        }
    }
    pub fn all(self) -> bool {
        self.outbox && self.uplink
    }
}

/// Tells systemd we are ready (config loaded, outbox open, sources started).
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd a reload began; [`ready`] ends it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

/// Tells systemd we are stopping.
pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "Cannot notify systemd");
    }
}

/// The watchdog period systemd asked for, if any (`WATCHDOG_USEC`).
pub fn period() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// Pings `WATCHDOG=1` every half period while both loops make progress;
/// returns when `shutdown` turns true.
pub async fn run(progress: Arc<Progress>, period: Duration, shutdown: watch::Receiver<bool>) {
    run_with(progress, period, shutdown, || {
        notify(&[NotifyState::Watchdog])
    })
    .await
}

/// [`run`] with the ping as a callback (tests).
pub async fn run_with(
    progress: Arc<Progress>,
    period: Duration,
    mut shutdown: watch::Receiver<bool>,
    mut ping: impl FnMut(),
) {
    let every = (period / 2).max(HEARTBEAT * 2);
    tracing::info!(
        period_ms = period.as_millis() as u64,
        "systemd watchdog enabled"
    );
    let mut last = progress.snapshot();
    let mut stalled = false;
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now = progress.snapshot();
        let moved = Moved::between(last, now);
        last = now;
        if moved.all() {
            if stalled {
                tracing::info!("Outbox and uplink loops progress again; watchdog pings resumed");
                stalled = false;
            }
            ping();
        } else if !stalled {
            stalled = true;
            tracing::error!(
                outbox_moved = moved.outbox,
                uplink_moved = moved.uplink,
                "A loop made no progress; withholding the watchdog ping, systemd will restart the agent if this lasts"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// A wedged uplink (only the outbox beats) earns no ping; once both
    /// loops beat again, pings resume.
    #[tokio::test(start_paused = true)]
    async fn withholds_pings_while_a_loop_is_stalled() {
        let progress = Progress::new();
        let pings = Arc::new(AtomicU64::new(0));
        let uplink_alive = Arc::new(AtomicBool::new(false));
        let (stop, stop_rx) = watch::channel(false);
        let beater = {
            let (progress, uplink_alive) = (progress.clone(), uplink_alive.clone());
            tokio::spawn(async move {
                loop {
                    progress.outbox_beat();
                    if uplink_alive.load(Ordering::SeqCst) {
                        progress.uplink_beat();
                    }
                    tokio::time::sleep(HEARTBEAT).await;
                }
            })
        };
        let p = pings.clone();
        let dog = tokio::spawn(run_with(
            progress,
            Duration::from_secs(30),
            stop_rx,
            move || {
                p.fetch_add(1, Ordering::SeqCst);
            },
        ));
        tokio::time::sleep(Duration::from_secs(90)).await;
        assert_eq!(pings.load(Ordering::SeqCst), 0, "stalled uplink, no ping");
        uplink_alive.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(46)).await;
        assert!(pings.load(Ordering::SeqCst) >= 2, "both loops beat: pinged");
        let _ = stop.send(true);
        dog.await.unwrap();
        beater.abort();
    }

    #[test]
    fn pings_only_when_both_loops_moved() {
        let p = Progress::default();
        let a = p.snapshot();
        p.outbox_beat();
        let b = p.snapshot();
        assert_eq!(
            Moved::between(a, b),
            Moved {
                outbox: true,
                uplink: false
            }
        );
        assert!(!Moved::between(a, b).all());
        p.uplink_beat();
        let c = p.snapshot();
        assert!(!Moved::between(b, c).all());
        assert!(Moved::between(a, c).all());
        assert!(!Moved::between(c, c).all());
    }
}
