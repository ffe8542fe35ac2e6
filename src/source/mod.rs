//! Southbound: devices that produce [`Reading`]s.
//!
//! Every Modbus TCP device runs in its own task, so a dead or slow device
//! never delays another. Units on one RTU bus share one task, a lane
//! ([`modbus::rtu::Bus`]), because requests must never interleave on the
//! wire. A task polls on its interval (staggered so that forty devices do
//! not all fire at t=0) and hands each cycle's readings, one `Vec` per
//! device, to the buffer through a bounded channel: if the disk cannot keep
//! up, polling slows down instead of memory growing.

pub mod modbus;
pub mod opcua;
pub mod s7;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::clock::Clock;
use crate::config::{DeviceConfig, DeviceProtocol};
use crate::reading::Reading;

/// One polling task's worth of devices: a Modbus TCP, OPC UA or S7 device
/// on its own, or every unit of one RTU bus (a serial port or a serial
/// device server), which must share a task so that requests never
/// interleave on the wire. A lane has at least one device by construction.
#[derive(Debug, Clone, PartialEq)]
pub struct Lane {
    /// `tcp:<device id>` or `bus:<port or address>`; stable across reloads.
    key: String,
    /// The first device; its protocol decides the lane's task.
    head: Arc<DeviceConfig>,
    /// The other units of a bus, in config order; empty for other lanes.
    rest: Vec<Arc<DeviceConfig>>,
}

impl Lane {
    /// `tcp:<device id>` or `bus:<port or address>`; stable across reloads.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The lane's devices, in config order.
    pub fn devices(&self) -> impl Iterator<Item = &Arc<DeviceConfig>> {
        std::iter::once(&self.head).chain(&self.rest)
    }
}

/// Groups devices into lanes, in config order.
pub fn lanes(devices: &[Arc<DeviceConfig>]) -> Vec<Lane> {
    let mut out: Vec<Lane> = Vec::new();
    for d in devices {
        let key = match d.bus_key() {
            Some(bus) => format!("bus:{bus}"),
            None => format!("tcp:{}", d.id),
        };
        match out.iter_mut().find(|l| l.key == key) {
            Some(lane) => lane.rest.push(d.clone()),
            None => out.push(Lane {
                key,
                head: d.clone(),
                rest: Vec::new(),
            }),
        }
    }
    out
}

/// Starts one lane's task; it stops when `shutdown` turns true.
///
/// One arm per protocol, each given its protocol's settings, so a new
/// protocol cannot compile without a lane and no lane starts without its
/// settings.
pub fn spawn_lane(
    lane: &Lane,
    clock: &Arc<dyn Clock>,
    tx: &mpsc::Sender<Vec<Reading>>,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let (d, tx) = (&lane.head, tx.clone());
    match &d.protocol {
        DeviceProtocol::ModbusTcp(_) => {
            let dev = modbus::ModbusDevice::new(d.clone(), clock.clone());
            tokio::spawn(run(dev, tx, shutdown))
        }
        DeviceProtocol::Rtu { .. } | DeviceProtocol::RtuOverTcp(_) => {
            let bus = modbus::rtu::Bus::new(d, &lane.rest, clock);
            tokio::spawn(bus.run(tx, shutdown))
        }
        DeviceProtocol::OpcUa(ua) => {
            let dev = opcua::UaDevice::with(d.clone(), ua.clone(), clock.clone());
            tokio::spawn(dev.run(tx, shutdown))
        }
        DeviceProtocol::S7(s7) => {
            let dev = s7::S7Source::with(d.clone(), s7.clone(), clock.clone());
            tokio::spawn(run(dev, tx, shutdown))
        }
    }
}

/// Starts every lane, all stopping when `shutdown` turns true (for
/// commands, tests and examples; the agent keeps a switch per lane).
pub fn spawn_all(
    devices: &[Arc<DeviceConfig>],
    clock: &Arc<dyn Clock>,
    tx: &mpsc::Sender<Vec<Reading>>,
    shutdown: &watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    lanes(devices)
        .iter()
        .map(|lane| spawn_lane(lane, clock, tx, shutdown.clone()))
        .collect()
}

/// Start slots per poll interval, at most; see [`first_poll`].
const SLOTS: u32 = 5;

/// Shortest time between two slots. The cycles of one slot share a
/// commit (the default commit window is shorter than a slot), and every
/// commit is an fsync with `synchronous = "full"` plus a round of
/// wake-ups; at plant load that is most of the agent's CPU. At a 1 s
/// interval this makes two slots, so two commits a second instead of
/// five; below 1 s every device of that interval shares one slot.
const MIN_SLOT: Duration = Duration::from_millis(500);

/// The slot length for devices polled every `interval`.
fn slot_length(interval: Duration) -> Duration {
    let slots = (interval.as_nanos() / MIN_SLOT.as_nanos()).clamp(1, u128::from(SLOTS));
    // `slots` is 1 to SLOTS, so the conversion cannot fail.
    (interval / u32::try_from(slots).unwrap_or(SLOTS)).max(Duration::from_millis(1))
}

/// When a device's first poll cycle starts: staggered across its interval,
/// so that forty devices do not all fire at once, but on a grid of
/// slots ([`slot_length`]) shared by the whole process. Devices in one slot then
/// wake the runtime once between them instead of once each, and their
/// answers tend to arrive in one go too; at plant load such wake-ups are
/// most of the agent's CPU. `at` in [0, 1) picks the slot.
fn first_poll(interval: Duration, at: f64) -> Instant {
    static GRID: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let origin = *GRID.get_or_init(Instant::now);
    first_poll_on(origin, Instant::now(), interval, at)
}

/// [`first_poll`] on the grid that starts at `origin`, seen at `now`; kept
/// apart so that tests fix the clock instead of racing it.
fn first_poll_on(origin: Instant, now: Instant, interval: Duration, at: f64) -> Instant {
    let slot = slot_length(interval);
    let slot_ns = slot.as_nanos();
    let offset = now.saturating_duration_since(origin) + interval.mul_f64(at.clamp(0.0, 1.0));
    // Round up to the next slot boundary.
    let slots = offset.as_nanos().div_ceil(slot_ns);
    let due = u64::try_from(slots.saturating_mul(slot_ns)).unwrap_or(u64::MAX);
    origin + Duration::from_nanos(due)
}

/// A device the agent polls.
pub trait Source: Send + 'static {
    /// The device id from the config.
    fn id(&self) -> &str;
    /// Time between poll cycles.
    fn interval(&self) -> Duration;
    /// One poll cycle: a reading for every tag, good or bad. Never fails:
    /// failures are qualities on the readings.
    fn poll_once(&mut self) -> impl std::future::Future<Output = Vec<Reading>> + Send;
}

/// Runs a source until `shutdown` turns true or the buffer goes away.
pub async fn run<S: Source>(
    mut source: S,
    tx: mpsc::Sender<Vec<Reading>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let interval = source.interval();
    let mut ticker = tokio::time::interval_at(first_poll(interval, fastrand::f64()), interval);
    // After a slow cycle, start the next one a full interval later rather
    // than bursting to catch up: a burst would only hammer a struggling PLC.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => break,
        }
        let readings = tokio::select! {
            r = source.poll_once() => r,
            _ = shutdown.changed() => break,
        };
        if readings.is_empty() {
            continue;
        }
        // A full channel means the outbox is stuck (e.g. a full disk);
        // waiting here is the backpressure, but shutdown must still win.
        tokio::select! {
            sent = tx.send(readings) => if sent.is_err() { break },
            _ = shutdown.changed() => break,
        }
    }
    tracing::debug!(device = source.id(), "Source stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_polls_share_slots_and_spread_over_the_interval() {
        let interval = Duration::from_secs(5);
        let slot = slot_length(interval);
        assert_eq!(slot, interval / SLOTS);
        let origin = Instant::now();
        // "Now" is off the grid, as it is when a device starts late.
        let now = origin + Duration::from_millis(2_345);
        let starts: Vec<Instant> = (0..100)
            .map(|i| first_poll_on(origin, now, interval, f64::from(i) / 100.0))
            .collect();
        let earliest = starts.iter().min().copied().expect("starts");
        assert!(earliest >= now);
        let mut offsets: Vec<Duration> = starts.iter().map(|s| *s - earliest).collect();
        offsets.sort();
        offsets.dedup();
        // One start per slot of the interval, plus the slot that rounding
        // "now" up to the grid adds; each on the grid.
        assert_eq!(offsets.len(), SLOTS as usize + 1, "{offsets:?}");
        for s in &starts {
            let since = (*s - origin).as_nanos();
            assert_eq!(since % slot.as_nanos(), 0, "{s:?} is off the grid");
        }
        assert!(*offsets.last().expect("offsets") <= interval);
    }

    #[test]
    fn slots_are_never_closer_than_the_minimum() {
        // Two commits a second at 1 s, not five.
        assert_eq!(slot_length(Duration::from_secs(1)), MIN_SLOT);
        assert_eq!(slot_length(Duration::from_millis(1500)), MIN_SLOT);
        assert_eq!(
            slot_length(Duration::from_secs(60)),
            Duration::from_secs(12)
        );
        // Faster polling: one slot, the whole interval.
        assert_eq!(
            slot_length(Duration::from_millis(60)),
            Duration::from_millis(60)
        );
        assert_eq!(slot_length(Duration::ZERO), Duration::from_millis(1));
    }

    #[test]
    fn a_short_interval_still_has_a_grid() {
        let interval = Duration::from_millis(5);
        let origin = Instant::now();
        let now = origin + Duration::from_micros(12_345);
        let a = first_poll_on(origin, now, interval, 0.0);
        let b = first_poll_on(origin, now, interval, 0.99);
        assert!(a >= now);
        assert!(b >= a);
        assert!(b - a <= interval);
        assert_eq!((a - origin).as_nanos() % interval.as_nanos(), 0);
    }

    #[test]
    fn first_poll_reads_the_process_grid() {
        let interval = Duration::from_secs(1);
        let before = Instant::now();
        let due = first_poll(interval, 0.5);
        assert!(due >= before + interval / 2);
    }
}
