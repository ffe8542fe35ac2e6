//! Wiring: sources → buffer → uplink, started and stopped as one.
//!
//! Shutdown order matters for "nothing lost": sources stop first and drop
//! their channel ends, the outbox thread commits whatever is still queued
//! and exits once nobody can send to it, and only then do we return.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::buffer::{self, BufferClient, BufferError, Outbox};
use crate::clock::Clock;
use crate::config::{Config, Protocol};
use crate::source::{self, modbus::ModbusDevice};
use crate::uplink::mqtt::{MqttUplink, UplinkState};

/// A running agent.
pub struct RunningAgent {
    shutdown: watch::Sender<bool>,
    sources: Vec<JoinHandle<()>>,
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
    let outbox = Outbox::open(&config.agent.state_dir, &config.buffer)?;
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

    let mut sources = Vec::new();
    for dev in &config.devices {
        match dev.protocol {
            Protocol::ModbusTcp => {
                let d = ModbusDevice::new(dev.clone(), clock.clone());
                sources.push(tokio::spawn(source::run(
                    d,
                    handles.readings.clone(),
                    shutdown_rx.clone(),
                )));
            }
        }
    }
    // Our own copy of the readings sender is dropped here, so the outbox
    // sees its input close once every source has stopped.
    drop(handles.readings);
    Ok(RunningAgent {
        shutdown,
        sources,
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
        let _ = self.uplink_task.await;
        self.buffer.close().await;
        let thread = self.buffer_thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        tracing::info!("Agent stopped; outbox flushed");
    }
}
