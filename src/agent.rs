//! Wiring: sources → buffer → uplink, started and stopped as one.
//!
//! Shutdown order matters for "nothing lost": sources stop first and drop
//! their channel ends, the outbox thread commits whatever is still queued
//! and exits once nobody can send to it, and only then do we return.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::buffer::{self, Batch, BufferClient, BufferError, Outbox};
use crate::clock::Clock;
use crate::config::{Config, Protocol};
use crate::metrics::Scheduler;
use crate::plant::Tracker;
use crate::source::{self, modbus::ModbusDevice};
use crate::uplink::mqtt::{MqttUplink, UplinkState};

/// A running agent.
pub struct RunningAgent {
    shutdown: watch::Sender<bool>,
    sources: Vec<JoinHandle<()>>,
    plant_task: JoinHandle<()>,
    metrics_task: JoinHandle<()>,
    uplink_task: JoinHandle<()>,
    buffer_thread: std::thread::JoinHandle<()>,
    /// For the demo and tests: outbox figures.
    pub buffer: BufferClient,
    /// For the demo and tests: connection state and ack count.
    pub uplink: watch::Receiver<UplinkState>,
}

/// Opens the outbox and starts every component. Errors here are the ones
/// an operator must fix before the agent can run (e.g. an unwritable
/// state directory).
pub fn start(config: &Config, clock: Arc<dyn Clock>) -> Result<RunningAgent, BufferError> {
    let mut outbox = Outbox::open(&config.agent.state_dir, &config.buffer)?;
    // Resume the equipment states; whatever was running when the agent was
    // last alive is offline from then on, committed before anything else.
    let (restored, last_alive) = outbox.plant_restore()?;
    let (tracker, closing) = Tracker::new(config.plant.clone(), &restored, last_alive);
    if !closing.is_empty() {
        let batch = Batch {
            transitions: closing,
            ..Default::default()
        };
        outbox.commit(&[], &batch, &[], &[], clock.now_ms())?;
    }
    // The key that signs evidence reports, created on first run.
    match crate::signing::GatewayKey::load_or_create(&config.agent.state_dir) {
        Ok((key, _)) => tracing::debug!(fingerprint = %key.fingerprint(), "Gateway key loaded"),
        Err(e) => {
            tracing::error!(error = %e, "Cannot load or create the gateway key; reports cannot be signed")
        }
    }
    let pending = outbox.stats().map(|s| s.rows).unwrap_or(0);
    tracing::info!(
        state_dir = %config.agent.state_dir.display(), instance = outbox.instance(), pending,
        "Outbox open"
    );
    let handles = buffer::spawn(outbox, config.buffer.max_message_bytes, clock.clone());
    let (shutdown, shutdown_rx) = watch::channel(false);

    let (uplink, uplink_state) = MqttUplink::new(
        config.mqtt.clone(),
        &config.enterprise,
        &config.agent.gateway_id,
        handles.client.clone(),
        handles.appended.clone(),
        clock.clone(),
    );
    let uplink_task = tokio::spawn(uplink.run(shutdown_rx.clone()));

    let scheduler = Scheduler {
        model: config.plant.clone(),
        enterprise: config.enterprise.clone(),
        config_hash: config.hash(),
        offset: config.metrics.utc_offset,
        snapshot_interval: config.metrics.snapshot_interval,
        buffer: handles.client.clone(),
        clock: clock.clone(),
    };
    let metrics_task = tokio::spawn(scheduler.run(shutdown_rx.clone()));

    // Sources → plant stage → outbox.
    let (cycles_tx, cycles_rx) = tokio::sync::mpsc::channel(1024);
    let plant_task = tokio::spawn(crate::plant::run(tracker, cycles_rx, handles.readings));
    let mut sources = Vec::new();
    for dev in &config.devices {
        match dev.protocol {
            Protocol::ModbusTcp => {
                let d = ModbusDevice::new(dev.clone(), clock.clone());
                sources.push(tokio::spawn(source::run(
                    d,
                    cycles_tx.clone(),
                    shutdown_rx.clone(),
                )));
            }
        }
    }
    // Our own copy of the readings sender is dropped here, so the outbox
    // sees its input close once every source has stopped.
    drop(cycles_tx);
    Ok(RunningAgent {
        shutdown,
        sources,
        plant_task,
        metrics_task,
        uplink_task,
        buffer_thread: handles.thread,
        buffer: handles.client,
        uplink: uplink_state,
    })
}

impl RunningAgent {
    /// Stops polling, commits what is queued, says goodbye to the broker.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for s in self.sources {
            let _ = s.await;
        }
        let _ = self.plant_task.await;
        let _ = self.metrics_task.await;
        let _ = self.uplink_task.await;
        self.buffer.close().await;
        let thread = self.buffer_thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        tracing::info!("Agent stopped; outbox flushed");
    }
}
