//! Wiring: sources → buffer → uplink, started and stopped as one.
//!
//! Shutdown order matters for "nothing lost": sources stop first and drop
//! their channel ends, the outbox thread commits whatever is still queued
//! and exits once nobody can send to it, and only then do we return.

pub mod daemon;

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::buffer::{self, Batch, BufferClient, BufferError, Outbox};
use crate::clock::Clock;
use crate::config::Config;
use crate::metrics::Scheduler;
use crate::plant::Tracker;
use crate::reading::Reading;
use crate::source::{self, Lane};
use crate::uplink::mqtt::{MqttUplink, UplinkState};
use crate::watchdog::Progress;

/// A running agent.
pub struct RunningAgent {
    shutdown: watch::Sender<bool>,
    /// One entry per polling lane (a TCP device, or an RTU bus with its
    /// units), each with its own stop switch, so a reload can restart one
    /// lane and leave the others connected.
    devices: Vec<LaneTask>,
    /// A sender for device tasks started by a reload; dropped at stop so
    /// the outbox sees its input close.
    cycles: Option<mpsc::Sender<Vec<Reading>>>,
    plant_task: JoinHandle<()>,
    /// The metrics scheduler has its own stop switch: a device reload
    /// restarts it with the new config hash.
    metrics: (watch::Sender<bool>, JoinHandle<()>),
    /// One task per sink.
    uplink_tasks: Vec<JoinHandle<()>>,
    /// The `[http]` endpoint, if configured.
    http_task: Option<JoinHandle<()>>,
    buffer_thread: std::thread::JoinHandle<()>,
    clock: Arc<dyn Clock>,
    /// Where `/metrics` and `/healthz` are served (the bound address, so
    /// tests can ask for port 0).
    pub http_addr: Option<std::net::SocketAddr>,
    /// For the demo and tests: outbox figures.
    pub buffer: BufferClient,
    /// For the demo and tests: the first sink's connection state and ack count.
    pub uplink: watch::Receiver<UplinkState>,
    /// Every sink's, in config order.
    pub sinks: Vec<watch::Receiver<UplinkState>>,
}

/// A lane's poll task and what it was started with.
struct LaneTask {
    lane: Lane,
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

fn spawn_lane(lane: Lane, clock: &Arc<dyn Clock>, cycles: &mpsc::Sender<Vec<Reading>>) -> LaneTask {
    let (stop, stop_rx) = watch::channel(false);
    let handle = source::spawn_lane(&lane, clock, cycles, stop_rx);
    LaneTask { lane, stop, handle }
}

fn spawn_metrics(
    config: &Config,
    buffer: &BufferClient,
    clock: &Arc<dyn Clock>,
) -> (watch::Sender<bool>, JoinHandle<()>) {
    let (stop, stop_rx) = watch::channel(false);
    let scheduler = Scheduler {
        model: config.plant.clone(),
        enterprise: config.enterprise.clone(),
        config_hash: config.hash(),
        offset: config.metrics.utc_offset,
        snapshot_interval: config.metrics.snapshot_interval,
        buffer: buffer.clone(),
        clock: clock.clone(),
    };
    (stop, tokio::spawn(scheduler.run(stop_rx)))
}

/// What a device reload did, by device id.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DeviceChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
}

/// Opens the outbox and starts every component. Errors here are the ones
/// an operator must fix before the agent can run (e.g. an unwritable
/// state directory).
/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Buffer(#[from] BufferError),
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
}

pub fn start(config: &Config, clock: Arc<dyn Clock>) -> Result<RunningAgent, StartError> {
    start_with(config, clock, Progress::new())
}

/// [`start`], with the outbox and uplink loops bumping `progress` for the
/// systemd watchdog.
pub fn start_with(
    config: &Config,
    clock: Arc<dyn Clock>,
    progress: Arc<Progress>,
) -> Result<RunningAgent, StartError> {
    // Bound first: a busy port must fail the start before anything runs.
    let http_listener = match &config.http {
        Some(h) => Some(crate::http::bind(h.listen)?),
        None => None,
    };
    let mut outbox = Outbox::open(&config.agent.state_dir, &config.buffer, &config.routes())?;
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
    let handles =
        buffer::spawn_with_progress(outbox, &config.buffer, clock.clone(), progress.clone());
    let (shutdown, shutdown_rx) = watch::channel(false);

    // One session per sink; every status message shows every sink.
    let states: Vec<_> = config
        .sinks
        .iter()
        .map(|_| watch::channel(UplinkState::default()))
        .collect();
    let board: Vec<_> = states.iter().map(|(_, rx)| rx.clone()).collect();
    let mut uplink_tasks = Vec::new();
    for (sink, (state, _)) in config.sinks.iter().zip(states) {
        let uplink = MqttUplink::new(
            sink.clone(),
            &config.enterprise,
            &config.agent.gateway_id,
            handles.client.clone(),
            handles.appended.clone(),
            clock.clone(),
            state,
            board.clone(),
        );
        uplink_tasks.push(tokio::spawn(
            uplink
                .with_progress(progress.clone())
                .run(shutdown_rx.clone()),
        ));
    }
    let uplink_state = board
        .first()
        .cloned()
        .unwrap_or_else(|| watch::channel(UplinkState::default()).1);

    let metrics = spawn_metrics(config, &handles.client, &clock);

    let http_addr = http_listener.as_ref().and_then(|l| l.local_addr().ok());
    let http_task = http_listener.map(|l| {
        let state = Arc::new(crate::http::HttpState {
            buffer: handles.client.clone(),
            uplink: board.clone(),
            clock: clock.clone(),
            clock_sync: crate::clocksync::check,
        });
        tokio::spawn(crate::http::serve(l, state, shutdown_rx.clone()))
    });

    // Sources → plant stage → outbox.
    let (cycles_tx, cycles_rx) = mpsc::channel(1024);
    let publish = crate::telemetry::Exceptions::new(config);
    let plant_task = tokio::spawn(crate::plant::run(
        tracker,
        publish,
        cycles_rx,
        handles.readings,
    ));
    let devices = source::lanes(&config.devices)
        .into_iter()
        .map(|lane| spawn_lane(lane, &clock, &cycles_tx))
        .collect();
    Ok(RunningAgent {
        shutdown,
        devices,
        cycles: Some(cycles_tx),
        plant_task,
        metrics,
        uplink_tasks,
        http_task,
        buffer_thread: handles.thread,
        clock,
        http_addr,
        buffer: handles.client,
        uplink: uplink_state,
        sinks: board,
    })
}

impl RunningAgent {
    /// Stops polling, commits what is queued, says goodbye to the broker.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        let _ = self.metrics.0.send(true);
        for d in &self.devices {
            let _ = d.stop.send(true);
        }
        for d in self.devices {
            let _ = d.handle.await;
        }
        // Our own copy of the readings sender goes last, so the outbox sees
        // its input close once every source has stopped.
        self.cycles.take();
        let _ = self.plant_task.await;
        let _ = self.metrics.1.await;
        for t in self.uplink_tasks {
            let _ = t.await;
        }
        if let Some(t) = self.http_task.take() {
            let _ = t.await;
        }
        self.buffer.close().await;
        let thread = self.buffer_thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        tracing::info!("Agent stopped; outbox flushed");
    }

    /// The ids of the devices being polled, in start order.
    pub fn device_ids(&self) -> Vec<String> {
        self.devices
            .iter()
            .flat_map(|t| t.lane.devices().map(|d| d.id.to_string()))
            .collect()
    }

    /// Applies a new, already validated config's `[[devices]]`: devices
    /// whose config is unchanged keep their task and connection; changed
    /// ones are restarted, removed ones stopped, added ones started. The
    /// metrics scheduler restarts with the new config hash. Everything
    /// else in `new` is ignored; the caller decides whether other sections
    /// changed (see `reload.rs`).
    pub async fn reload_devices(&mut self, new: &Config) -> DeviceChanges {
        let mut changes = DeviceChanges::default();
        let Some(cycles) = self.cycles.clone() else {
            return changes;
        };
        let ids = |lane: &Lane| lane.devices().map(|d| d.id.to_string()).collect::<Vec<_>>();
        let mut old: Vec<LaneTask> = std::mem::take(&mut self.devices);
        let mut next = Vec::new();
        for lane in source::lanes(&new.devices) {
            match old.iter().position(|t| t.lane.key() == lane.key()) {
                Some(i) if old[i].lane == lane => {
                    changes.unchanged.extend(ids(&lane));
                    next.push(old.swap_remove(i));
                }
                Some(i) => {
                    let t = old.swap_remove(i);
                    let _ = t.stop.send(true);
                    let _ = t.handle.await;
                    let (before, now) = (ids(&t.lane), ids(&lane));
                    changes
                        .removed
                        .extend(before.iter().filter(|id| !now.contains(id)).cloned());
                    changes
                        .added
                        .extend(now.iter().filter(|id| !before.contains(id)).cloned());
                    changes
                        .changed
                        .extend(now.iter().filter(|id| before.contains(id)).cloned());
                    next.push(spawn_lane(lane, &self.clock, &cycles));
                }
                None => {
                    changes.added.extend(ids(&lane));
                    next.push(spawn_lane(lane, &self.clock, &cycles));
                }
            }
        }
        for t in old {
            let _ = t.stop.send(true);
            let _ = t.handle.await;
            changes.removed.extend(ids(&t.lane));
        }
        self.devices = next;
        if !(changes.added.is_empty() && changes.removed.is_empty() && changes.changed.is_empty()) {
            let _ = self.metrics.0.send(true);
            let _ = (&mut self.metrics.1).await;
            self.metrics = spawn_metrics(new, &self.buffer, &self.clock);
        }
        changes
    }
}
