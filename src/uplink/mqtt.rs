//! One sink's MQTT session: the outbox rows it owes, to its broker at
//! QoS 1, each acknowledged to the outbox on its PUBACK.
//!
//! # Design
//!
//! Every sink runs its own session with its own cursor in the outbox, so a
//! sink that is down or slow holds back nothing but its own rows.
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
use crate::buffer::{cycle, BufferClient, Kind, Row, SinkBit, Stats};
use crate::clock::Clock;
use crate::clocksync::ClockSync;
use crate::config::{Enterprise, MqttConfig, SinkConfig, TopicLayout};
use crate::loglimit::LogLimiter;
use crate::watchdog::{Progress, HEARTBEAT};

/// Outgoing packet limit for metrics messages: room for ~30,000 equipment.
const METRICS_PACKET_LIMIT: usize = 16 << 20;

/// The topics of one gateway on one sink:
/// `{prefix}/{region_code}/{uscc}/{gateway_id}/{stream}` (platform layout)
/// or `{prefix}/{gateway_id}/{stream}` (gateway layout).
#[derive(Debug, Clone)]
pub struct Topics {
    base: String,
}

impl Topics {
    pub fn new(
        prefix: &str,
        layout: TopicLayout,
        enterprise: &Enterprise,
        gateway_id: &str,
    ) -> Topics {
        let base = match layout {
            TopicLayout::Platform => format!(
                "{prefix}/{}/{}/{gateway_id}",
                enterprise.region_code, enterprise.uscc
            ),
            TopicLayout::Gateway => format!("{prefix}/{gateway_id}"),
        };
        Topics { base }
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

/// What a sink has done, for the demo, `/metrics` and tests.
#[derive(Debug, Clone, Default)]
pub struct UplinkState {
    /// The sink's name.
    pub name: String,
    pub connected: bool,
    pub acked_messages: u64,
    /// Messages and payload bytes handed to the broker (status included),
    /// for the demo's bytes-per-day figure.
    pub published_messages: u64,
    pub published_bytes: u64,
    pub connects: u64,
    /// Why the last connection ended or failed, for `status` and tests.
    pub last_error: Option<String>,
}

/// Every sink's state, so that each status message can show them all.
pub type Board = Vec<watch::Receiver<UplinkState>>;

/// A sink whose TLS settings cannot be made into a client config, with
/// the key to fix (`sinks.platform.ca_file`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{key}: {source}")]
pub struct SinkTlsError {
    key: String,
    source: Arc<super::tls::TlsError>,
}

pub struct MqttUplink {
    sink: Arc<SinkConfig>,
    /// `sink.mqtt`, the connection settings.
    cfg: MqttConfig,
    /// The rustls client config built from `cfg.tls` (`None`: plaintext),
    /// or what to fix when it cannot be built.
    /// Built once per sink; `Err`: what to fix, reported at every attempt.
    tls: Result<Option<Arc<rustls::ClientConfig>>, SinkTlsError>,
    /// Every sink's state, this one's included.
    board: Board,
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
    /// The connection ended or failed: why, and what an operator must fix
    /// when it is not the network (a refused login, an untrusted certificate).
    Lost(String, Option<String>),
}

impl End {
    fn lost(why: impl Into<String>) -> End {
        End::Lost(why.into(), None)
    }
}

/// An item we asked rumqttc to publish; `None` is a status message.
type Sent = Option<i64>;

impl MqttUplink {
    /// A sink's session; `state` is its entry on the `board`.
    #[allow(
        clippy::too_many_arguments,
        reason = "each argument is a separate part of the agent a session talks to"
    )]
    pub fn new(
        sink: Arc<SinkConfig>,
        enterprise: &Enterprise,
        gateway_id: &str,
        buffer: BufferClient,
        appended: watch::Receiver<i64>,
        clock: Arc<dyn Clock>,
        state: watch::Sender<UplinkState>,
        board: Board,
    ) -> MqttUplink {
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
        state.send_modify(|s| s.name = sink.name.clone());
        let tls = match &sink.mqtt.tls {
            None => Ok(None),
            Some(t) => super::tls::client_config(t)
                .map(Some)
                .map_err(|e| SinkTlsError {
                    key: format!("{}.{}", sink.key, e.key()),
                    source: Arc::new(e),
                }),
        };
        MqttUplink {
            tls,
            topics: Topics::new(&sink.mqtt.topic_prefix, sink.layout, enterprise, gateway_id),
            cfg: sink.mqtt.clone(),
            sink,
            board,
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
        }
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

    pub fn status_payload(&self, state: &'static str, outbox: Option<&Stats>) -> Vec<u8> {
        // Each sink's share of the outbox, with whether it is connected.
        let outbox = outbox.map(|s| {
            let mut s = s.clone();
            // Each device's health (readings good and bad) goes with the
            // telemetry: a sink that does not carry it, such as the city's,
            // gets the outbox figures only.
            if self.sink.carries.telemetry.is_none() {
                s.devices.clear();
            }
            for share in &mut s.sinks {
                share.connected = self
                    .board
                    .iter()
                    .map(|b| b.borrow())
                    .find(|b| b.name == share.name)
                    .map(|b| b.connected);
            }
            s
        });
        let outbox = outbox.as_ref();
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

    /// The options of a new connection; `Err`: the TLS client config could
    /// not be built, and what to fix.
    fn options(&self) -> Result<MqttOptions, SinkTlsError> {
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
        if self.sink.carries.status {
            o.set_last_will(LastWill::new(
                self.topics.of("status"),
                self.status_payload("offline", None),
                QoS::AtLeastOnce,
                true,
            ));
        }
        if let (Some(u), Some(p)) = (&c.username, &c.password) {
            o.set_credentials(u.clone(), p.expose().to_string());
        } else if let Some(u) = &c.username {
            o.set_credentials(u.clone(), String::new());
        }
        if let Some(tls) = self.tls.clone()? {
            o.set_transport(Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls),
            ));
        }
        Ok(o)
    }

    /// Builds the message for a row: envelope fields, then the row's body.
    /// `None`: the row holds nothing this sink takes (its device or tag
    /// selection), so there is nothing to publish.
    pub fn message(&self, row: &Row, instance: &str, historical: bool) -> Option<Vec<u8>> {
        let all = cycle::Selection::default();
        let sel = self.sink.carries.telemetry.as_ref().unwrap_or(&all);
        let schema = match row.kind {
            Kind::LegacyTelemetry => "zgsz.telemetry/1",
            Kind::Telemetry => sel.keys.schema(),
            Kind::Metrics => "zgsz.metrics/1",
            Kind::States => "zgsz.states/1",
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
        if row.kind == Kind::Telemetry {
            match cycle::write_json(&row.body, &row.names, sel, &mut out) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(sink = %self.sink.name, seq = row.seq, error = %e, "Skipping a telemetry row that cannot be read");
                    return None;
                }
            }
        } else {
            out.extend_from_slice(&row.body);
        }
        out.push(b'}');
        Some(out)
    }

    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let bit = match self.buffer.sink_bit(&self.sink.name).await {
            Ok(Some(bit)) => bit,
            Ok(None) | Err(_) => {
                tracing::error!(sink = %self.sink.name, "The outbox does not know this sink; nothing will be sent to it");
                return;
            }
        };
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
        loop {
            let end = match self.options() {
                Ok(options) => {
                    self.session(options, bit, &mut shutdown, &mut backoff)
                        .await
                }
                Err(fix) => End::Lost("TLS setup failed".to_string(), Some(fix.to_string())),
            };
            match end {
                End::Shutdown => return,
                End::Lost(why, fix) => {
                    self.record(false, Some(why.clone())).await;
                    self.state.send_modify(|s| {
                        s.connected = false;
                        s.last_error = Some(match &fix {
                            Some(fix) => format!("{why}; {fix}"),
                            None => why.clone(),
                        });
                    });
                    let delay = backoff.next_delay();
                    let broker = format!("{}:{}", self.cfg.host, self.cfg.port);
                    let retry_ms = delay.as_millis() as u64;
                    let sink = &self.sink.name;
                    match fix {
                        // An operator must act: nothing will get through
                        // until the config or the broker is fixed.
                        Some(fix) => {
                            if let Some(suppressed) = self.log.check("refused") {
                                tracing::error!(
                                    %sink, %broker, retry_ms, suppressed,
                                    "MQTT sink cannot connect: {why}; {fix}"
                                );
                            }
                        }
                        None => {
                            if let Some(suppressed) = self.log.check("lost") {
                                tracing::warn!(
                                    %sink, %broker, retry_ms, suppressed,
                                    "MQTT connection lost: {why}"
                                );
                            }
                        }
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

    /// What to fix when the broker refused us.
    fn refused(&self, code: ConnectReturnCode) -> End {
        let k = &self.sink.key;
        let why = format!("broker refused the connection: {code:?}");
        let fix = match code {
            ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized => format!(
                "check {k}.username and {k}.password_file (or {k}.password_env) against the broker's account for this gateway"
            ),
            ConnectReturnCode::BadClientId => format!(
                "the broker does not accept client id {:?}; set {k}.client_id to one it allows",
                self.cfg.client_id
            ),
            ConnectReturnCode::RefusedProtocolVersion => {
                "the broker does not speak MQTT 3.1.1; enable it on the broker".to_string()
            }
            _ => return End::lost(why),
        };
        End::Lost(why, Some(fix))
    }

    /// Sorts a connection error into the network (retry, WARN) and what
    /// an operator must fix (TLS trust, certificates).
    fn diagnose(&self, e: &rumqttc::ConnectionError) -> End {
        // rumqttc reports a refusing CONNACK as an error of the event loop.
        if let rumqttc::ConnectionError::ConnectionRefused(code) = e {
            return self.refused(*code);
        }
        let k = &self.sink.key;
        let why = e.to_string();
        let fix = if matches!(e, rumqttc::ConnectionError::Tls(_)) {
            if why.contains("UnknownIssuer") || why.contains("BadSignature") {
                Some(format!("the broker's certificate is not signed by a CA this gateway trusts; set {k}.ca_file to the CA that issued it (PEM)"))
            } else if why.contains("NotValidForName") || why.contains("InvalidDnsName") {
                Some(format!("the broker's certificate is not issued for {:?}; set {k}.host to a name the certificate lists", self.cfg.host))
            } else if why.contains("Expired") || why.contains("NotValidYet") {
                Some("the broker's certificate is expired or not yet valid; renew it on the broker, or check this gateway's clock (NTP)".to_string())
            } else if why.contains("CertificateRequired")
                || why.contains("BadCertificate")
                || why.contains("UnknownCA")
            {
                Some(format!("the broker rejected this gateway's client certificate; check {k}.client_cert_file and {k}.client_key_file"))
            } else {
                Some(format!("TLS handshake failed; check {k}.ca_file, {k}.host and the broker's TLS settings"))
            }
        } else {
            None
        };
        End::Lost(why, fix)
    }

    #[allow(
        clippy::too_many_lines,
        reason = "one MQTT session's event loop: connect, then one select over publishes, acks, status and shutdown; not split yet"
    )]
    async fn session(
        &mut self,
        options: MqttOptions,
        bit: SinkBit,
        shutdown: &mut watch::Receiver<bool>,
        backoff: &mut Backoff,
    ) -> End {
        let window = usize::from(self.cfg.max_inflight);
        let (client, mut eventloop) = AsyncClient::new(options, window * 2 + 8);
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
                        return self.refused(ack.code);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return self.diagnose(&e),
                    None => return End::lost("event loop ended"),
                },
                _ = tokio::time::sleep_until(deadline) => return End::lost("no CONNACK within 15s"),
                _ = shutdown.changed() => return End::Shutdown,
            }
        }
        let connected_at = self.clock.now_ms();
        backoff.reset();
        self.log.clear("lost");
        self.log.clear("refused");
        self.state.send_modify(|s| {
            s.connected = true;
            s.connects += 1;
        });
        tracing::info!(sink = %self.sink.name, broker = %format!("{}:{}", self.cfg.host, self.cfg.port), "MQTT connected");
        self.record(true, None).await;

        let mut queued: VecDeque<Sent> = VecDeque::new();
        let instance = match self.buffer.stats().await {
            Ok(s) => {
                if self.sink.carries.status {
                    if let Err(e) = self.publish_status(&client, "online", Some(&s)).await {
                        return e;
                    }
                    queued.push_back(None);
                }
                s.instance
            }
            Err(e) => return End::lost(e.to_string()),
        };
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
                let rows = match self.buffer.lease(bit, cursor, want).await {
                    Ok(r) => r,
                    Err(e) => return End::lost(e.to_string()),
                };
                drained = rows.len() < want;
                for row in rows {
                    cursor = row.seq;
                    let historical = row.created_ms < connected_at;
                    let Some(payload) = self.message(&row, &instance, historical) else {
                        // Nothing in it for this sink: done with it.
                        acks.push(row.seq);
                        continue;
                    };
                    let len = payload.len() as u64;
                    if client
                        .publish(
                            self.topics.of(row.kind.stream().name()),
                            QoS::AtLeastOnce,
                            false,
                            payload,
                        )
                        .await
                        .is_err()
                    {
                        return End::lost("client closed");
                    }
                    self.state.send_modify(|s| {
                        s.published_messages += 1;
                        s.published_bytes += len;
                    });
                    queued.push_back(Some(row.seq));
                }
                self.flush_acks(bit, &mut acks).await;
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
                                self.flush_acks(bit, &mut acks).await;
                                return self.diagnose(&e);
                            }
                            None => {
                                self.flush_acks(bit, &mut acks).await;
                                return End::lost("event loop ended");
                            }
                        }
                        match events.try_recv() {
                            Ok(ev) => next = Some(ev),
                            Err(_) => break,
                        }
                    }
                    self.flush_acks(bit, &mut acks).await;
                }
                changed = self.appended.changed() => {
                    if changed.is_err() {
                        // The outbox is gone: the agent is stopping.
                        return self.goodbye(&client, &mut events).await;
                    }
                    drained = false;
                }
                _ = status_tick.tick(), if self.sink.carries.status => {
                    if let Ok(s) = self.buffer.stats().await {
                        if let Err(e) = self.publish_status(&client, "online", Some(&s)).await {
                            return e;
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

    /// Publishes the retained status.
    async fn publish_status(
        &self,
        client: &AsyncClient,
        state: &'static str,
        outbox: Option<&Stats>,
    ) -> Result<(), End> {
        let payload = self.status_payload(state, outbox);
        let len = payload.len() as u64;
        client
            .publish(self.topics.of("status"), QoS::AtLeastOnce, true, payload)
            .await
            .map_err(|_| End::lost("client closed"))?;
        self.state.send_modify(|s| {
            s.published_messages += 1;
            s.published_bytes += len;
        });
        Ok(())
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

    async fn flush_acks(&mut self, bit: SinkBit, acks: &mut Vec<i64>) {
        if acks.is_empty() {
            return;
        }
        let n = acks.len() as u64;
        self.buffer.ack(bit, std::mem::take(acks)).await;
        self.state.send_modify(|s| s.acked_messages += n);
    }

    /// Publishes the retained "offline" status and disconnects, waiting a
    /// moment for acks that are already on their way.
    async fn goodbye(
        &mut self,
        client: &AsyncClient,
        events: &mut mpsc::Receiver<Result<Event, rumqttc::ConnectionError>>,
    ) -> End {
        if self.sink.carries.status {
            let _ = self.publish_status(client, "offline", None).await;
        }
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
