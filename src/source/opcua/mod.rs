//! OPC UA devices: one session per device, subscriptions for `subscribe`
//! tags, a Read per cycle for `poll` tags.
//!
//! Whatever the mode, the device hands the buffer one cycle of readings
//! every `poll_interval`, as a Modbus device does, because the plant model
//! and the completeness figures count cycles. A subscribed tag contributes
//! every change the server reported since the last cycle (each with its
//! own timestamp; nothing coalesced away), or, when it did not change, its
//! value re-stated at the cycle time: the live subscription (kept alive by
//! the server's keep-alives) is the evidence that it still holds.
//!
//! A lost session (server restart, cut cable, keep-alive failures) ends
//! the connection: every tag is reported bad (`disconnected`) each cycle
//! until a new session stands, with fresh subscriptions and monitored
//! items (the old ones died with the old session, so none are doubled).
//! A node the server does not know, or a path that matches nothing, makes
//! only that tag bad, with the server's status as the reason.

pub mod browse;
pub mod config;
pub mod profile;
pub mod session;
pub mod value;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opcua::client::{MonitoredItem, SubscriptionCallbacks};
use opcua::types::{
    AttributeId, DataChangeFilter, DataChangeTrigger, DataValue, ExtensionObject,
    MonitoredItemCreateRequest, MonitoringMode, MonitoringParameters, NodeId, ReadValueId,
    StatusChangeNotification, StatusCode, TimestampsToReturn, Variant,
};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::backoff::Backoff;
use crate::clock::Clock;
use crate::config::DeviceConfig;
use crate::loglimit::LogLimiter;
use crate::reading::{BadReason, Quality, Reading, Value};
use crate::source::opcua::config::{Deadband, OpcUaDevice, OpcUaTag, TagMode};
use session::{ConnectError, Connection};

/// Changes held between two cycles per device; beyond this (a server
/// flooding us while the buffer is stuck) the oldest go, counted and logged.
const MAX_PENDING: usize = 100_000;

/// Nodes per CreateMonitoredItems or Read request. Servers cap operations
/// per call (MaxMonitoredItemsPerCall, MaxNodesPerRead; embedded servers
/// often at a few hundred), so a large device is sent in slices.
const PER_CALL: usize = 250;

/// A session that stood this long was healthy; the reconnect backoff
/// starts again from its shortest delay after it.
const STABLE_SESSION: Duration = Duration::from_secs(60);

/// One reported change of one tag.
struct Change {
    tag: usize,
    dv: DataValue,
    received_ms: i64,
}

/// Filled by the subscription callbacks, drained every cycle.
#[derive(Default)]
struct Pending {
    changes: VecDeque<Change>,
    dropped: u64,
    /// Set when the server reports a subscription's end (a
    /// StatusChangeNotification, e.g. BadTimeout).
    dead: Option<&'static str>,
}

/// Where a tag stands on the current session.
#[derive(Debug, Clone)]
enum Slot {
    /// Subscribed or polled under this node id.
    Live(NodeId),
    /// The server refused it (or the path matched nothing).
    Refused(StatusCode),
    /// An optional profile node this machine does not have.
    Absent,
}

/// Why a service call on a running session ended it; the session is
/// then rebuilt.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error("{what} failed: {error}")]
    Failed {
        what: &'static str,
        error: opcua::types::Error,
    },
}

/// How a session ended.
enum Ended {
    Shutdown,
    Lost(String),
}

pub struct UaDevice {
    cfg: Arc<DeviceConfig>,
    ua: Arc<OpcUaDevice>,
    clock: Arc<dyn Clock>,
    backoff: Backoff,
    log: LogLimiter,
    /// Latest value and quality per tag, re-stated when unchanged.
    last: Vec<Option<(Option<Value>, Quality)>>,
}

impl UaDevice {
    /// `None` unless `cfg` is an OPC UA device.
    pub fn new(cfg: Arc<DeviceConfig>, clock: Arc<dyn Clock>) -> Option<UaDevice> {
        let ua = cfg.opcua()?.clone();
        Some(UaDevice::with(cfg, ua, clock))
    }

    /// The task of `cfg`, whose OPC UA settings are `ua`.
    pub fn with(cfg: Arc<DeviceConfig>, ua: Arc<OpcUaDevice>, clock: Arc<dyn Clock>) -> UaDevice {
        let n = ua.tags.len();
        UaDevice {
            cfg,
            ua,
            clock,
            backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
            log: LogLimiter::new(Duration::from_secs(60)),
            last: vec![None; n],
        }
    }

    fn reading(&self, tag: &OpcUaTag, value: Option<Value>, quality: Quality, ts: i64) -> Reading {
        Reading {
            device: self.cfg.id.clone(),
            tag: tag.name.clone(),
            value,
            quality,
            ts,
        }
    }

    /// The real time between cycles: `poll_interval` is clock time, which
    /// runs faster under the demo's time compression.
    fn cycle(&self) -> Duration {
        self.clock.to_real(self.cfg.poll_interval)
    }

    /// Every tag bad for `why`, at the current time; optional ones too, so
    /// that no rule keeps using a value from before the loss.
    fn bad_cycle(&self, why: BadReason) -> Vec<Reading> {
        let now = self.clock.now_ms();
        self.ua
            .tags
            .iter()
            .map(|t| self.reading(t, None, Quality::Bad(why.clone()), now))
            .collect()
    }

    /// Runs until `shutdown` turns true or the buffer goes away.
    pub async fn run(
        mut self,
        tx: mpsc::Sender<Vec<Reading>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let timeout = self.cfg.timeout;
        let longest_publish = self
            .ua
            .tags
            .iter()
            .map(|t| t.publishing_interval)
            .max()
            .unwrap_or_default();
        let mut client = match session::client(
            &self.ua.pki_dir,
            &self.ua.gateway_id,
            self.ua.trust_unknown_server_certs,
            timeout,
            longest_publish,
        ) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(device = %self.cfg.id, "OPC UA client cannot start: {e}");
                None
            }
        };
        loop {
            if *shutdown.borrow() {
                break;
            }
            if let Some(client) = client.as_mut() {
                if self.ua.trust_unknown_server_certs {
                    tracing::warn!(device = %self.cfg.id, endpoint = %self.ua.endpoint, "Accepting any server certificate (trust_unknown_server_certs = true); a man in the middle would go unnoticed");
                }
                let attempt = tokio::select! {
                    r = session::connect(client, &self.ua, &self.ua.pki_dir, timeout) => r,
                    _ = shutdown.changed() => break,
                };
                match attempt {
                    Ok(conn) => {
                        if self.backoff.failures() > 0 {
                            tracing::info!(device = %self.cfg.id, endpoint = %self.ua.endpoint, "OPC UA session re-established");
                        } else {
                            tracing::info!(device = %self.cfg.id, endpoint = %self.ua.endpoint, policy = self.ua.policy.name(), mode = ?self.ua.mode, "OPC UA session established");
                        }
                        self.log.clear("connect");
                        let served = Instant::now();
                        let ended = self.serve(&conn, &tx, &mut shutdown).await;
                        conn.close(timeout).await;
                        // Only a session that lasted counts as recovery:
                        // one that fails the same way right after every
                        // connect must back off, not hammer the server.
                        if served.elapsed() >= STABLE_SESSION {
                            self.backoff.reset();
                        }
                        match ended {
                            Ended::Shutdown => break,
                            Ended::Lost(why) => {
                                tracing::warn!(device = %self.cfg.id, endpoint = %self.ua.endpoint, reason = %why, "OPC UA session lost; reconnecting");
                                if tx
                                    .send(self.bad_cycle(BadReason::Disconnected))
                                    .await
                                    .is_err()
                                {
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => self.connect_failed(&e),
                }
            }
            // Back off, still reporting every cycle so the gap is visible.
            let until = Instant::now() + self.backoff.next_delay();
            let mut tick = tokio::time::interval(self.cycle());
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = tokio::time::sleep_until(until) => break,
                    _ = shutdown.changed() => return,
                }
                if tx
                    .send(self.bad_cycle(BadReason::Disconnected))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        tracing::debug!(device = %self.cfg.id, "OPC UA source stopped");
    }

    fn connect_failed(&mut self, e: &ConnectError) {
        if let Some(suppressed) = self.log.check("connect") {
            if e.needs_operator() {
                tracing::error!(device = %self.cfg.id, suppressed, "OPC UA connect failed: {e}");
            } else {
                tracing::warn!(device = %self.cfg.id, suppressed, "OPC UA connect failed: {e}");
            }
        }
    }

    /// Resolves the tags, subscribes, and reports cycles until the session
    /// is lost or the agent stops.
    async fn serve(
        &mut self,
        conn: &Connection,
        tx: &mpsc::Sender<Vec<Reading>>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Ended {
        let timeout = self.cfg.timeout;
        let s = &conn.session;
        // Values seen on an earlier session prove nothing about this one.
        self.last.fill(None);
        let resolved = resolve_tags(s, &self.ua, timeout).await;
        let mut slots: Vec<Slot> = Vec::with_capacity(self.ua.tags.len());
        for (tag, found) in self.ua.tags.iter().zip(resolved) {
            let slot = match found {
                Ok(id) => Slot::Live(id),
                Err(StatusCode::BadNoMatch) if tag.optional => Slot::Absent,
                Err(StatusCode::BadTimeout) => return Ended::Lost("browse timed out".into()),
                Err(code) => Slot::Refused(code),
            };
            match &slot {
                Slot::Refused(code) => {
                    tracing::warn!(device = %self.cfg.id, tag = %tag.name, node = %tag.node, status = code.sub_code().name(), "Tag node not available; it is reported bad")
                }
                Slot::Absent => {
                    tracing::info!(device = %self.cfg.id, tag = %tag.name, node = %tag.node, "Optional node absent on this machine; tag left out")
                }
                Slot::Live(_) => {}
            }
            slots.push(slot);
        }

        let pending = Arc::new(Mutex::new(Pending::default()));
        if let Err(why) = self.subscribe(conn, &mut slots, &pending).await {
            return Ended::Lost(why.to_string());
        }
        conn.publish_expected();
        let polled: Vec<(usize, NodeId)> = self
            .ua
            .tags
            .iter()
            .enumerate()
            .filter(|(_, t)| t.mode == TagMode::Poll)
            .filter_map(|(i, _)| match &slots[i] {
                Slot::Live(id) => Some((i, id.clone())),
                _ => None,
            })
            .collect();

        let mut tick = tokio::time::interval(self.cycle());
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut lost = conn.lost.clone();
        // A live subscription answers a Publish at least every keep-alive
        // period; silence beyond that (with slack) means it died while the
        // session stood, and its values must not be re-stated any more.
        let subscribed = slots
            .iter()
            .zip(&self.ua.tags)
            .any(|(s, t)| t.mode == TagMode::Subscribe && matches!(s, Slot::Live(_)));
        let silence_limit = self
            .ua
            .tags
            .iter()
            .map(|t| keep_alive_period(t.publishing_interval))
            .max()
            .unwrap_or_default()
            .mul_f64(1.5)
            + timeout;
        let started = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = lost.changed() => {}
                _ = shutdown.changed() => return Ended::Shutdown,
            }
            if let Some(why) = conn.lost.borrow().clone() {
                return Ended::Lost(why);
            }
            if subscribed && conn.publish_silence() > silence_limit {
                return Ended::Lost(format!(
                    "no Publish response for {:?}: the subscription is dead",
                    conn.publish_silence()
                ));
            }
            let dead = std::mem::take(&mut pending.lock().unwrap_or_else(|e| e.into_inner()).dead);
            if let Some(status) = dead {
                return Ended::Lost(format!("the server ended a subscription ({status})"));
            }
            let mut cycle = match self.read_polled(conn, &polled).await {
                Ok(r) => r,
                Err(why) => return Ended::Lost(why.to_string()),
            };
            self.drain(&pending, &slots, started, &mut cycle);
            if cycle.is_empty() {
                continue;
            }
            tokio::select! {
                sent = tx.send(cycle) => if sent.is_err() { return Ended::Shutdown },
                _ = shutdown.changed() => return Ended::Shutdown,
            }
        }
    }

    /// One subscription per publishing interval, one monitored item per
    /// subscribed tag. Items the server refuses mark their tag refused.
    async fn subscribe(
        &mut self,
        conn: &Connection,
        slots: &mut [Slot],
        pending: &Arc<Mutex<Pending>>,
    ) -> Result<(), CallError> {
        let timeout = self.cfg.timeout;
        let mut groups: BTreeMap<Duration, Vec<usize>> = BTreeMap::new();
        for (i, t) in self.ua.tags.iter().enumerate() {
            if t.mode == TagMode::Subscribe && matches!(slots[i], Slot::Live(_)) {
                groups.entry(t.publishing_interval).or_default().push(i);
            }
        }
        for (interval, members) in groups {
            let sink = pending.clone();
            let status_sink = pending.clone();
            let clock = self.clock.clone();
            let on_status = move |n: StatusChangeNotification| {
                if !n.status.is_good() {
                    status_sink.lock().unwrap_or_else(|e| e.into_inner()).dead =
                        Some(n.status.sub_code().name());
                }
            };
            let on_data = move |dv: DataValue, item: &MonitoredItem| {
                let Some(tag) = (item.client_handle() as usize).checked_sub(1) else {
                    return;
                };
                let mut p = sink.lock().unwrap_or_else(|e| e.into_inner());
                if p.changes.len() >= MAX_PENDING {
                    p.changes.pop_front();
                    p.dropped += 1;
                }
                p.changes.push_back(Change {
                    tag,
                    dv,
                    received_ms: clock.now_ms(),
                });
            };
            let callback = SubscriptionCallbacks::new(on_status, on_data, |_, _| {});
            // Keep-alive every ~10 s of silence; the server drops the
            // subscription after 3 missed keep-alives' worth of lifetime.
            let keep_alive = keep_alive_count(interval);
            let id = match tokio::time::timeout(
                timeout,
                conn.session.create_subscription(
                    interval,
                    keep_alive * 3,
                    keep_alive,
                    0,
                    0,
                    true,
                    callback,
                ),
            )
            .await
            {
                Err(_) => return Err(CallError::Timeout("creating a subscription")),
                Ok(Err(error)) => {
                    return Err(CallError::Failed {
                        what: "creating a subscription",
                        error,
                    })
                }
                Ok(Ok(id)) => id,
            };
            for slice in members.chunks(PER_CALL) {
                let requests: Vec<MonitoredItemCreateRequest> = slice
                    .iter()
                    .filter_map(|&i| match &slots[i] {
                        Slot::Live(node) => Some(item_request(i, node, &self.ua.tags[i])),
                        _ => None,
                    })
                    .collect();
                let results = match tokio::time::timeout(
                    timeout,
                    conn.session
                        .create_monitored_items(id, TimestampsToReturn::Both, requests),
                )
                .await
                {
                    Err(_) => return Err(CallError::Timeout("creating monitored items")),
                    Ok(Err(error)) => {
                        return Err(CallError::Failed {
                            what: "creating monitored items",
                            error,
                        })
                    }
                    Ok(Ok(r)) => r,
                };
                for (n, &i) in slice.iter().enumerate() {
                    // No result at all breaks the protocol: the tag would
                    // never hear a thing, so it is reported bad instead.
                    let status = results
                        .get(n)
                        .map_or(StatusCode::BadUnexpectedError, |r| r.result.status_code);
                    if !status.is_good() {
                        tracing::warn!(device = %self.cfg.id, tag = %self.ua.tags[i].name, status = status.sub_code().name(), "Server refused to monitor the tag; it is reported bad");
                        slots[i] = Slot::Refused(status);
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads the polled tags; a timeout or broken channel ends the session.
    async fn read_polled(
        &mut self,
        conn: &Connection,
        polled: &[(usize, NodeId)],
    ) -> Result<Vec<Reading>, CallError> {
        let mut values = Vec::with_capacity(polled.len());
        for slice in polled.chunks(PER_CALL) {
            let ids: Vec<ReadValueId> = slice
                .iter()
                .map(|(_, id)| ReadValueId {
                    node_id: id.clone(),
                    attribute_id: AttributeId::Value as u32,
                    ..Default::default()
                })
                .collect();
            match tokio::time::timeout(
                self.cfg.timeout,
                conn.session.read(&ids, TimestampsToReturn::Both, 0.0),
            )
            .await
            {
                Err(_) => return Err(CallError::Timeout("read")),
                Ok(Err(error)) => {
                    return Err(CallError::Failed {
                        what: "read",
                        error,
                    })
                }
                // A server answering fewer results than asked breaks the
                // protocol; pad so every tag still gets a (bad) reading.
                Ok(Ok(mut v)) => {
                    v.resize_with(slice.len(), || {
                        DataValue::new_now_status(Variant::Empty, StatusCode::BadUnexpectedError)
                    });
                    values.extend(v);
                }
            }
        }
        let now = self.clock.now_ms();
        let max_age = self.cfg.poll_interval.as_millis() as i64;
        let mut out = Vec::with_capacity(polled.len());
        for (&(i, _), dv) in polled.iter().zip(values.iter()) {
            let tag = &self.ua.tags[i];
            let (v, q) = value::to_quality(dv);
            let ts = value::timestamp(dv, now, max_age);
            self.last[i] = Some((v.clone(), q.clone()));
            out.push(self.reading(tag, v, q, ts));
        }
        Ok(out)
    }

    /// Adds the reported changes, re-stated values and refused tags.
    fn drain(
        &mut self,
        pending: &Mutex<Pending>,
        slots: &[Slot],
        started: Instant,
        out: &mut Vec<Reading>,
    ) {
        let (changes, dropped) = {
            let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
            (
                std::mem::take(&mut p.changes),
                std::mem::take(&mut p.dropped),
            )
        };
        if dropped > 0 {
            tracing::error!(device = %self.cfg.id, dropped, "OPC UA changes dropped: the buffer did not keep up");
        }
        let now = self.clock.now_ms();
        let mut changed = vec![false; self.ua.tags.len()];
        for c in changes {
            let Some(tag) = self.ua.tags.get(c.tag) else {
                continue;
            };
            let max_age =
                (tag.publishing_interval + self.cfg.poll_interval).as_millis() as i64 + 1_000;
            let (v, q) = value::to_quality(&c.dv);
            let ts = value::timestamp(&c.dv, c.received_ms, max_age);
            changed[c.tag] = true;
            self.last[c.tag] = Some((v.clone(), q.clone()));
            out.push(self.reading(tag, v, q, ts));
        }
        for (i, tag) in self.ua.tags.iter().enumerate() {
            match &slots[i] {
                Slot::Refused(code) => out.push(self.reading(
                    tag,
                    None,
                    Quality::Bad(value::status_reason(*code)),
                    now,
                )),
                Slot::Live(_) if tag.mode == TagMode::Subscribe && !changed[i] => {
                    match &self.last[i] {
                        Some((v, q)) => out.push(self.reading(tag, v.clone(), q.clone(), now)),
                        // The first value is due one publishing interval
                        // after the item was created; never silently absent.
                        None if started.elapsed() > tag.publishing_interval + self.cfg.timeout => {
                            out.push(self.reading(
                                tag,
                                None,
                                Quality::Bad(BadReason::Status("BadWaitingForInitialData")),
                                now,
                            ))
                        }
                        None => {}
                    }
                }
                _ => {}
            }
        }
    }
}

/// Publishing intervals between keep-alives: about 10 s of silence.
fn keep_alive_count(interval: Duration) -> u32 {
    (10_000 / interval.as_millis().max(1)).clamp(1, 1000) as u32
}

/// The longest a live subscription stays silent.
fn keep_alive_period(interval: Duration) -> Duration {
    interval * keep_alive_count(interval)
}

/// Each tag's node id on this session: node ids as they are, paths from
/// the root (a root that cannot be found fails every path tag with its
/// status).
async fn resolve_tags(
    session: &opcua::client::Session,
    ua: &OpcUaDevice,
    timeout: Duration,
) -> Vec<Result<NodeId, StatusCode>> {
    let root = match &ua.root {
        None => Ok(None),
        Some(r) => browse::resolve(session, None, r, timeout).await.map(Some),
    };
    if let Err(code) = &root {
        tracing::warn!(root = %ua.root.as_ref().map(|r| r.to_string()).unwrap_or_default(), status = code.sub_code().name(), "OPC UA root node not found; its path tags are reported bad");
    }
    let mut out = Vec::with_capacity(ua.tags.len());
    for tag in &ua.tags {
        out.push(match (&root, &tag.node) {
            (Err(code), crate::source::opcua::config::NodeRef::Path(_)) => Err(*code),
            (root, node) => {
                let r = root.as_ref().ok().and_then(|r| r.as_ref());
                browse::resolve(session, r, node, timeout).await
            }
        });
    }
    out
}

fn item_request(i: usize, node: &NodeId, tag: &OpcUaTag) -> MonitoredItemCreateRequest {
    let filter = match tag.deadband {
        None => ExtensionObject::null(),
        Some(d) => {
            let (deadband_type, deadband_value) = match d {
                Deadband::Absolute(v) => (1, v),
                Deadband::Percent(v) => (2, v),
            };
            ExtensionObject::from_message(DataChangeFilter {
                trigger: DataChangeTrigger::StatusValue,
                deadband_type,
                deadband_value,
            })
        }
    };
    MonitoredItemCreateRequest::new(
        node.clone().into(),
        MonitoringMode::Reporting,
        MonitoringParameters {
            client_handle: (i + 1) as u32,
            sampling_interval: tag.sampling_interval.as_secs_f64() * 1000.0,
            filter,
            queue_size: tag.queue_size,
            discard_oldest: true,
        },
    )
}

/// One tag as `read --device` shows it.
pub struct ReadOut {
    pub tag: Arc<str>,
    /// The configured node or path, and the node id it resolved to.
    pub node: String,
    pub reading: Reading,
}

/// Connects once, resolves every tag and reads it (whatever its mode):
/// the commissioning check behind `read --device`.
pub async fn read_once(
    cfg: &DeviceConfig,
    clock: Arc<dyn Clock>,
) -> Result<Vec<ReadOut>, ConnectError> {
    let Some(ua) = cfg.opcua().cloned() else {
        return Err(ConnectError::Setup(format!(
            "{} is not an OPC UA device",
            cfg.id
        )));
    };
    let timeout = cfg.timeout;
    let mut client = session::client(
        &ua.pki_dir,
        &ua.gateway_id,
        ua.trust_unknown_server_certs,
        timeout,
        Duration::ZERO,
    )?;
    let conn = session::connect(&mut client, &ua, &ua.pki_dir, timeout).await?;
    let all = resolve_tags(&conn.session, &ua, timeout).await;
    let mut out = Vec::new();
    for (tag, resolved) in ua.tags.iter().zip(all) {
        if tag.optional && resolved == Err(StatusCode::BadNoMatch) {
            // An optional node this machine does not have: left out, as
            // the running agent does.
            continue;
        }
        let now = clock.now_ms();
        let (node, value, quality, ts) = match resolved {
            Err(code) => (
                tag.node.to_string(),
                None,
                Quality::Bad(value::status_reason(code)),
                now,
            ),
            Ok(id) => {
                let shown = match &tag.node {
                    crate::source::opcua::config::NodeRef::Id(_) => id.to_string(),
                    path => format!("{path} = {id}"),
                };
                let rv = ReadValueId {
                    node_id: id,
                    attribute_id: AttributeId::Value as u32,
                    ..Default::default()
                };
                match tokio::time::timeout(
                    timeout,
                    conn.session.read(&[rv], TimestampsToReturn::Both, 0.0),
                )
                .await
                {
                    Ok(Ok(v)) => match v.first() {
                        Some(dv) => {
                            let (val, q) = value::to_quality(dv);
                            let max_age = cfg.poll_interval.as_millis() as i64;
                            (shown, val, q, value::timestamp(dv, now, max_age))
                        }
                        None => (shown, None, Quality::Bad(BadReason::Decode), now),
                    },
                    Ok(Err(e)) => (
                        shown,
                        None,
                        Quality::Bad(value::status_reason(e.status())),
                        now,
                    ),
                    Err(_) => (shown, None, Quality::Bad(BadReason::Timeout), now),
                }
            }
        };
        out.push(ReadOut {
            tag: tag.name.clone(),
            node,
            reading: Reading {
                device: cfg.id.clone(),
                tag: tag.name.clone(),
                value,
                quality,
                ts,
            },
        });
    }
    conn.close(timeout).await;
    Ok(out)
}
