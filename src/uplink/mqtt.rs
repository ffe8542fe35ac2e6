//! MQTT uplink: outbox rows to the broker at QoS 1, deleted on PUBACK.
//!
//! # Design
//!
//! Each connection gets a fresh rumqttc client and event loop. rumqttc
//! drops unacknowledged publishes when a clean session reconnects, so we do
//! not rely on its replay: when a connection ends, everything it had in
//! flight is simply still in the outbox and is leased again, in seq order,
//! on the next connection. A fresh event loop per connection also keeps the
//! bookkeeping exact: within one connection rumqttc reports
//! `Outgoing::Publish(pkid)` in the order we submitted, so the n-th such
//! event names the n-th message we queued, and its `PubAck(pkid)` tells us
//! which outbox row to delete.
//!
//! The event loop runs in its own task and forwards events over a bounded
//! channel, so our select loop only awaits cancel-safe futures.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, LastWill, MqttOptions, Outgoing, Packet, QoS, Transport,
};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::buffer::{BufferClient, Kind, Row, Stats};
use crate::clock::Clock;
use crate::clocksync::ClockSync;
use crate::config::{Enterprise, MqttConfig};
use crate::loglimit::LogLimiter;
use crate::watchdog::{Progress, HEARTBEAT};

/// Outgoing packet limit for metrics messages: room for ~30,000 equipment.
const METRICS_PACKET_LIMIT: usize = 16 << 20;

/// The topics of one gateway: `{prefix}/{region_code}/{uscc}/{gateway_id}/{kind}`.
#[derive(Debug, Clone)]
pub struct Topics {
    base: String,
}

impl Topics {
    pub fn new(prefix: &str, enterprise: &Enterprise, gateway_id: &str) -> Topics {
        Topics {
            base: format!(
                "{prefix}/{}/{}/{gateway_id}",
                enterprise.region_code, enterprise.uscc
            ),
        }
    }
    pub fn of(&self, kind: &str) -> String {
        format!("{}/{kind}", self.base)
    }
}

/// Fields every message carries, pre-escaped once.
#[derive(Debug, Clone, Serialize)]
pub struct Identity {
    pub gateway_id: String,
    pub uscc: String,
    pub region_code: String,
}

/// Status message (retained); see docs/mqtt.md.
#[derive(Debug, Serialize)]
struct StatusMsg<'a> {
    schema: &'static str,
    state: &'static str,
    #[serde(flatten)]
    identity: &'a Identity,
    agent_version: &'static str,
    ts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    outbox: Option<&'a Stats>,
    /// Whether the gateway's clock is NTP-synchronised (online only).
    #[serde(skip_serializing_if = "Option::is_none")]
    clock_sync: Option<ClockSync>,
}

/// What the uplink has done, for the demo and tests.
#[derive(Debug, Clone, Default)]
pub struct UplinkState {
    pub connected: bool,
    pub acked_messages: u64,
    pub connects: u64,
    /// Why the last connection ended or failed, for `status` and tests.
    pub last_error: Option<String>,
}

pub struct MqttUplink {
    cfg: Arc<MqttConfig>,
    topics: Topics,
    identity: Identity,
    /// `"gateway_id":...,"uscc":...,"region_code":...` for the envelope.
    identity_json: String,
    buffer: BufferClient,
    appended: watch::Receiver<i64>,
    clock: Arc<dyn Clock>,
    state: watch::Sender<UplinkState>,
    log: LogLimiter,
    /// Heartbeat for the systemd watchdog: bumped on every loop iteration,
    /// including idle ticks and back-off waits.
    progress: Arc<Progress>,
    /// Reads the clock-sync state for each status message.
    clock_sync: fn() -> ClockSync,
    /// The last up/down recorded in the outbox, so only changes are stored.
    recorded_up: Option<bool>,
}

enum End {
    Shutdown,
    Lost(String),
}

/// An item we asked rumqttc to publish; `None` is a status message.
type Sent = Option<i64>;

impl MqttUplink {
    pub fn new(
        cfg: Arc<MqttConfig>,
        enterprise: &Enterprise,
        gateway_id: &str,
        buffer: BufferClient,
        appended: watch::Receiver<i64>,
        clock: Arc<dyn Clock>,
    ) -> (MqttUplink, watch::Receiver<UplinkState>) {
        let identity = Identity {
            gateway_id: gateway_id.to_string(),
            uscc: enterprise.uscc.clone(),
            region_code: enterprise.region_code.clone(),
        };
        let identity_json = serde_json::to_string(&identity).unwrap_or_default();
        let identity_json = identity_json
            .trim_start_matches('{')
            .trim_end_matches('}')
            .to_string();
        let (state, state_rx) = watch::channel(UplinkState::default());
        (
            MqttUplink {
                topics: Topics::new(&cfg.topic_prefix, enterprise, gateway_id),
                cfg,
                identity,
                identity_json,
                buffer,
                appended,
                clock,
                state,
                log: LogLimiter::new(Duration::from_secs(60)),
                progress: Progress::new(),
                clock_sync: crate::clocksync::check,
                recorded_up: None,
            },
            state_rx,
        )
    }

    /// Bumps `progress` for the systemd watchdog (see `watchdog.rs`).
    pub fn with_progress(mut self, progress: Arc<Progress>) -> MqttUplink {
        self.progress = progress;
        self
    }

    /// Replaces the clock-sync probe (tests).
    pub fn with_clock_sync(mut self, probe: fn() -> ClockSync) -> MqttUplink {
        self.clock_sync = probe;
        self
    }

    fn status_payload(&self, state: &'static str, outbox: Option<&Stats>) -> Vec<u8> {
        let msg = StatusMsg {
            schema: "zgsz.status/1",
            state,
            identity: &self.identity,
            agent_version: env!("CARGO_PKG_VERSION"),
            ts: self.clock.now_ms(),
            outbox,
            clock_sync: outbox.map(|_| (self.clock_sync)()),
        };
        serde_json::to_vec(&msg).unwrap_or_default()
    }

    fn options(&self) -> MqttOptions {
        let c = &self.cfg;
        let mut o = MqttOptions::new(c.client_id.clone(), c.host.clone(), c.port);
        o.set_keep_alive(c.keepalive);
        o.set_clean_session(true);
        o.set_inflight(c.max_inflight);
        // Telemetry rows are cut to max_message_bytes; a metrics message
        // grows with the plant (about 0.5 KiB per equipment) and must never
        // be too large to send, or it would block the outbox behind it.
        o.set_max_packet_size(
            64 * 1024,
            (c.max_message_bytes + 4096).max(METRICS_PACKET_LIMIT),
        );
        o.set_last_will(LastWill::new(
            self.topics.of("status"),
            self.status_payload("offline", None),
            QoS::AtLeastOnce,
            true,
        ));
        if let (Some(u), Some(p)) = (&c.username, &c.password) {
            o.set_credentials(u.clone(), p.expose().to_string());
        } else if let Some(u) = &c.username {
            o.set_credentials(u.clone(), String::new());
        }
        if let Some(tls) = &c.tls {
            o.set_transport(Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls.clone()),
            ));
        }
        o
    }

    /// Builds the message for a row: envelope fields, then the row's body.
    pub fn message(&self, row: &Row, instance: &str, historical: bool) -> Vec<u8> {
        let schema = match row.kind {
            Kind::Telemetry => "zgsz.telemetry/1",
            Kind::Metrics => "zgsz.metrics/1",
        };
        let mut out = Vec::with_capacity(row.body.len() + 256);
        out.extend_from_slice(
            format!(
                "{{\"schema\":\"{schema}\",\"msg_id\":\"{instance}:{seq}\",\"seq\":{seq},\"created_ts\":{created},\"historical\":{historical},{id},",
                seq = row.seq,
                created = row.created_ms,
                id = self.identity_json
            )
            .as_bytes(),
        );
        out.extend_from_slice(&row.body);
        out.push(b'}');
        out
    }

    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
        loop {
            match self.session(&mut shutdown, &mut backoff).await {
                End::Shutdown => return,
                End::Lost(why) => {
                    self.record(false, Some(why.clone())).await;
                    self.state.send_modify(|s| {
                        s.connected = false;
                        s.last_error = Some(why.clone());
                    });
                    let delay = backoff.next_delay();
                    if let Some(suppressed) = self.log.check("lost") {
                        tracing::warn!(
                            broker = %format!("{}:{}", self.cfg.host, self.cfg.port), retry_ms = delay.as_millis() as u64,
                            suppressed, "MQTT connection lost: {why}"
                        );
                    }
                    // Waiting out a broker outage is progress, not a wedge.
                    let until = Instant::now() + delay;
                    let mut beat = tokio::time::interval(HEARTBEAT);
                    loop {
                        self.progress.uplink_beat();
                        tokio::select! {
                            _ = tokio::time::sleep_until(until) => break,
                            _ = beat.tick() => {}
                            _ = shutdown.changed() => return,
                        }
                    }
                }
            }
        }
    }

    async fn session(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
        backoff: &mut Backoff,
    ) -> End {
        let window = usize::from(self.cfg.max_inflight);
        let (client, mut eventloop) = AsyncClient::new(self.options(), window * 2 + 8);
        let (ev_tx, mut events) = mpsc::channel(window * 2 + 16);
        let pump = tokio::spawn(async move {
            loop {
                let ev = eventloop.poll().await;
                let failed = ev.is_err();
                if ev_tx.send(ev).await.is_err() || failed {
                    break;
                }
            }
        });
        let _pump = AbortOnDrop(pump);

        // Wait for CONNACK.
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut beat = tokio::time::interval(HEARTBEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.progress.uplink_beat();
            tokio::select! {
                _ = beat.tick() => {}
                ev = events.recv() => match ev {
                    Some(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                        if ack.code == ConnectReturnCode::Success { break; }
                        return End::Lost(format!("broker refused the connection: {:?}", ack.code));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return End::Lost(e.to_string()),
                    None => return End::Lost("event loop ended".into()),
                },
                _ = tokio::time::sleep_until(deadline) => return End::Lost("no CONNACK within 15s".into()),
                _ = shutdown.changed() => return End::Shutdown,
            }
        }
        let connected_at = self.clock.now_ms();
        backoff.reset();
        self.log.clear("lost");
        self.state.send_modify(|s| {
            s.connected = true;
            s.connects += 1;
        });
        tracing::info!(broker = %format!("{}:{}", self.cfg.host, self.cfg.port), "MQTT connected");
        self.record(true, None).await;

        let instance = match self.buffer.stats().await {
            Ok(s) => {
                let payload = self.status_payload("online", Some(&s));
                if client
                    .publish(self.topics.of("status"), QoS::AtLeastOnce, true, payload)
                    .await
                    .is_err()
                {
                    return End::Lost("client closed".into());
                }
                s.instance
            }
            Err(e) => return End::Lost(e),
        };
        let mut queued: VecDeque<Sent> = VecDeque::from([None]);
        let mut inflight: HashMap<u16, Sent> = HashMap::new();
        let mut cursor = 0i64;
        let mut drained = false;
        let mut status_tick = tokio::time::interval(self.cfg.status_interval);
        status_tick.tick().await;
        let mut acks: Vec<i64> = Vec::new();

        loop {
            self.progress.uplink_beat();
            // Fill the window from the outbox.
            while !drained && queued.len() + inflight.len() < window {
                let want = window - queued.len() - inflight.len();
                let rows = match self.buffer.lease(cursor, want).await {
                    Ok(r) => r,
                    Err(e) => return End::Lost(e),
                };
                drained = rows.len() < want;
                for row in rows {
                    cursor = row.seq;
                    let historical = row.created_ms < connected_at;
                    let payload = self.message(&row, &instance, historical);
                    if client
                        .publish(
                            self.topics.of(row.kind.topic()),
                            QoS::AtLeastOnce,
                            false,
                            payload,
                        )
                        .await
                        .is_err()
                    {
                        return End::Lost("client closed".into());
                    }
                    queued.push_back(Some(row.seq));
                }
            }
            tokio::select! {
                ev = events.recv() => {
                    let mut next = ev;
                    // Handle everything already waiting before touching SQLite.
                    loop {
                        match next {
                            Some(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                                if let Some(sent) = queued.pop_front() {
                                    inflight.insert(pkid, sent);
                                }
                            }
                            Some(Ok(Event::Incoming(Packet::PubAck(ack)))) => {
                                if let Some(Some(seq)) = inflight.remove(&ack.pkid) {
                                    acks.push(seq);
                                }
                            }
                            Some(Ok(_)) => {}
                            Some(Err(e)) => {
                                self.flush_acks(&mut acks).await;
                                return End::Lost(e.to_string());
                            }
                            None => {
                                self.flush_acks(&mut acks).await;
                                return End::Lost("event loop ended".into());
                            }
                        }
                        match events.try_recv() {
                            Ok(ev) => next = Some(ev),
                            Err(_) => break,
                        }
                    }
                    self.flush_acks(&mut acks).await;
                }
                changed = self.appended.changed() => {
                    if changed.is_err() {
                        // The outbox is gone: the agent is stopping.
                        return self.goodbye(&client, &mut events).await;
                    }
                    drained = false;
                }
                _ = status_tick.tick() => {
                    if let Ok(s) = self.buffer.stats().await {
                        let payload = self.status_payload("online", Some(&s));
                        if client.publish(self.topics.of("status"), QoS::AtLeastOnce, true, payload).await.is_err() {
                            return End::Lost("client closed".into());
                        }
                        queued.push_back(None);
                    }
                }
                _ = shutdown.changed() => {
                    return self.goodbye(&client, &mut events).await;
                }
                // Idle tick: nothing to send is still progress.
                _ = beat.tick() => {}
            }
        }
    }

    /// Stores a change of the uplink's state (not every failed retry).
    async fn record(&mut self, up: bool, reason: Option<String>) {
        if self.recorded_up != Some(up) {
            self.recorded_up = Some(up);
            self.buffer
                .uplink_event(self.clock.now_ms(), up, reason)
                .await;
        }
    }

    async fn flush_acks(&mut self, acks: &mut Vec<i64>) {
        if acks.is_empty() {
            return;
        }
        let n = acks.len() as u64;
        self.buffer.ack(std::mem::take(acks)).await;
        self.state.send_modify(|s| s.acked_messages += n);
    }

    /// Publishes the retained "offline" status and disconnects, waiting a
    /// moment for acks that are already on their way.
    async fn goodbye(
        &mut self,
        client: &AsyncClient,
        events: &mut mpsc::Receiver<Result<Event, rumqttc::ConnectionError>>,
    ) -> End {
        let payload = self.status_payload("offline", None);
        let _ = client
            .publish(self.topics.of("status"), QoS::AtLeastOnce, true, payload)
            .await;
        let _ = client.disconnect().await;
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(Ok(Event::Outgoing(Outgoing::Disconnect))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        End::Shutdown
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
