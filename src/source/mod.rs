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

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::clock::Clock;
use crate::config::{DeviceConfig, Protocol};
use crate::reading::Reading;

/// One polling task's worth of devices: a Modbus TCP device on its own, or
/// every unit of one RTU bus (a serial port or a serial device server),
/// which must share a task so that requests never interleave on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Lane {
    /// `tcp:<device id>` or `bus:<port or address>`; stable across reloads.
    pub key: String,
    pub devices: Vec<Arc<DeviceConfig>>,
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
            Some(lane) => lane.devices.push(d.clone()),
            None => out.push(Lane {
                key,
                devices: vec![d.clone()],
            }),
        }
    }
    out
}

/// Starts one lane's task; it stops when `shutdown` turns true.
pub fn spawn_lane(
    lane: &Lane,
    clock: &Arc<dyn Clock>,
    tx: &mpsc::Sender<Vec<Reading>>,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    match lane.devices.first() {
        Some(d) if d.protocol == Protocol::ModbusTcp => {
            let dev = modbus::ModbusDevice::new(d.clone(), clock.clone());
            tokio::spawn(run(dev, tx.clone(), shutdown))
        }
        Some(d) if d.protocol == Protocol::Opcua => {
            match opcua::UaDevice::new(d.clone(), clock.clone()) {
                Some(dev) => tokio::spawn(dev.run(tx.clone(), shutdown)),
                None => tokio::spawn(async {}),
            }
        }
        _ => match modbus::rtu::Bus::group(&lane.devices, clock)
            .into_iter()
            .next()
        {
            Some(bus) => tokio::spawn(bus.run(tx.clone(), shutdown)),
            None => tokio::spawn(async {}),
        },
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
    let stagger = interval.mul_f64(fastrand::f64());
    let mut ticker = tokio::time::interval_at(Instant::now() + stagger, interval);
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
