//! Ingest: one message in, one database transaction, then the ack.
//!
//! [`handle`] decides what a message is (stored, a duplicate, rejected with
//! a reason) and commits it; [`run`] subscribes through a shared
//! subscription with a persistent session and manual acks, and acks a
//! message only after `handle` has committed it, so a receiver that dies
//! loses nothing: the broker sends the unacknowledged message again.
//!
//! When the database is away (PostgreSQL restarting, a broken connection,
//! SQLite busy past its timeout), [`handle_retrying`] tries the same
//! message again with a growing pause, reconnecting, until it commits; the
//! message is not acknowledged before, and nothing after it is read in the
//! meantime.
//!
//! Several instances may write to one database at once. Everything a
//! message's decision reads and writes belongs to its gateway (registry
//! entry, status, messages, transitions, windows), so the transaction
//! first takes its gateway's lock ([`Tx::lock`]): the transactions of one
//! gateway run one after the other, whichever instance runs them, and the
//! chain verification, which reads a window's neighbours and the states
//! messages, always sees every message of that gateway committed before
//! it. Without the lock, two instances storing neighbouring windows at
//! once would each miss the other's uncommitted one and both leave their
//! window pending. Different gateways do not wait for each other.

use std::collections::VecDeque;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ClientError, ConnectionError, Event, EventLoop, MqttOptions, Packet, Publish, QoS,
};
use serde_json::Value;
use zgsz_contract::payload::{Envelope, MetricsMessage, StatesMessage, StatusMessage};

use crate::config::Config;
use crate::store::db::{args, Tx};
use crate::store::{gateway, now_ms, Store, StoreError};
use crate::topic::{self, Stream};

/// The first pause before a database retry; it doubles up to
/// [`MAX_RETRY_PAUSE`].
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(100);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(5);

/// What became of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// Stored (for metrics and states: a msg_id seen for the first time).
    Stored,
    /// A msg_id already stored: dropped.
    Duplicate,
    /// Stored in `rejected` with this reason, never counted.
    Rejected(String),
}

/// Decides and commits one message.
pub async fn handle(
    store: &mut Store,
    cfg: &Config,
    topic_name: &str,
    payload: &[u8],
) -> Result<Handled, StoreError> {
    let mut tx = store.begin(true).await?;
    let received = now_ms();
    let outcome = match decide(&mut tx, cfg, topic_name, payload, received).await {
        Ok(h) => h,
        Err(Stop::Store(e)) => return Err(e),
        Err(Stop::Reject(why)) => {
            let reason = why.to_string();
            let text = String::from_utf8_lossy(payload);
            tx.execute(
                "INSERT INTO rejected (received_ts, topic, reason, payload) VALUES (?1, ?2, ?3, ?4)",
                args![received, topic_name, &reason, text.as_ref()],
            )
            .await?;
            Handled::Rejected(reason)
        }
    };
    tx.commit().await?;
    Ok(outcome)
}

/// [`handle`], trying again after a transient database error (see
/// [`StoreError::is_transient`]) with a pause that doubles from 100 ms to
/// 5 s, until the message is committed or the error is one that would
/// repeat. Each try is a new transaction, on a new connection if the old
/// one broke; a try that failed committed nothing.
pub async fn handle_retrying(
    store: &mut Store,
    cfg: &Config,
    topic_name: &str,
    payload: &[u8],
) -> Result<Handled, StoreError> {
    let mut pause = FIRST_RETRY_PAUSE;
    let mut failures = 0u32;
    loop {
        match handle(store, cfg, topic_name, payload).await {
            Err(e) if e.is_transient() => {
                failures += 1;
                // The first failure and then every tenth: an outage of
                // minutes must not flood the log.
                if failures == 1 || failures.is_multiple_of(10) {
                    tracing::warn!(
                        error = %e,
                        failures,
                        pause_ms = pause.as_millis() as u64,
                        "Database unavailable; the message stays unacknowledged, retrying"
                    );
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_RETRY_PAUSE);
            }
            outcome => {
                if failures > 0 && outcome.is_ok() {
                    tracing::info!(failures, "Database back; the message is committed");
                }
                return outcome;
            }
        }
    }
}

/// Why a message is rejected; its text is stored in `rejected`.
#[derive(Debug, thiserror::Error)]
enum Reject {
    #[error("not a gateway topic of metrics, states or status")]
    Topic,
    #[error("unknown gateway {0}: not enrolled")]
    NotEnrolled(String),
    #[error("topic names USCC {uscc} and region {region}, but gateway {gateway} is enrolled with {enrolled_uscc} and {enrolled_region}")]
    Enrolment {
        uscc: String,
        region: String,
        gateway: String,
        enrolled_uscc: String,
        enrolled_region: String,
    },
    #[error("malformed payload: not UTF-8")]
    NotUtf8,
    #[error("malformed {stream} payload: {why}")]
    Malformed { stream: &'static str, why: String },
    #[error("payload names gateway {gateway} ({uscc}, {region}), but it came on {topic}'s topic")]
    Identity {
        gateway: String,
        uscc: String,
        region: String,
        topic: String,
    },
    #[error("schema is {found:?}, expected {expected:?}")]
    Schema {
        found: String,
        expected: &'static str,
    },
    #[error("msg_id {msg_id:?} is not <instance>:<seq> with seq {seq}")]
    MsgId { msg_id: String, seq: i64 },
    #[error("chain index {index} of instance {instance} is already held by {other}")]
    IndexHeld {
        index: i64,
        instance: String,
        other: String,
    },
}

/// What ends the handling of a message before it is stored.
enum Stop {
    /// The message is rejected (and stored in `rejected`).
    Reject(Reject),
    /// The database failed: nothing is committed, the message is not acked.
    Store(StoreError),
}

impl From<Reject> for Stop {
    fn from(r: Reject) -> Stop {
        Stop::Reject(r)
    }
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Stop {
        Stop::Store(e)
    }
}

/// A payload that does not parse as the stream's message.
fn malformed(stream: &'static str, e: impl std::fmt::Display) -> Reject {
    Reject::Malformed {
        stream,
        why: e.to_string(),
    }
}

/// The checks run in the order a forger would have to get past them:
/// topic, registry, payload, identity, chain.
async fn decide(
    tx: &mut Tx<'_>,
    cfg: &Config,
    topic_name: &str,
    payload: &[u8],
    received: i64,
) -> Result<Handled, Stop> {
    let t = topic::parse(&cfg.mqtt.topic_prefix, topic_name).ok_or(Reject::Topic)?;
    // Serialises the transactions of this gateway (see the module note).
    tx.lock(t.gateway_id).await?;
    let g = gateway(tx, t.gateway_id)
        .await?
        .ok_or_else(|| Reject::NotEnrolled(t.gateway_id.to_string()))?;
    if (t.uscc, t.region_code) != (g.uscc.as_str(), g.region_code.as_str()) {
        return Err(Reject::Enrolment {
            uscc: t.uscc.to_string(),
            region: t.region_code.to_string(),
            gateway: g.gateway_id,
            enrolled_uscc: g.uscc,
            enrolled_region: g.region_code,
        }
        .into());
    }
    let text = std::str::from_utf8(payload).map_err(|_| Reject::NotUtf8)?;
    let at = Arrival {
        topic: &t,
        text,
        received,
        received_by: &cfg.mqtt.client_id,
    };
    match t.stream {
        Stream::Status => status(tx, &at).await,
        Stream::States => states(tx, &at).await,
        Stream::Metrics => metrics(tx, cfg, &at).await,
    }
}

/// A message that passed the topic and registry checks.
struct Arrival<'a> {
    /// The topic it came on, whose gateway is enrolled as the topic names it.
    topic: &'a topic::Topic<'a>,
    /// The payload, stored as received.
    text: &'a str,
    /// When this receiver took it, in ms since the epoch.
    received: i64,
    /// This receiver's client id, stored with each message.
    received_by: &'a str,
}

impl Arrival<'_> {
    /// The payload must name the gateway whose topic it came on.
    fn same_identity(&self, gateway_id: &str, uscc: &str, region: &str) -> Result<(), Reject> {
        let t = self.topic;
        if (gateway_id, uscc, region) == (t.gateway_id, t.uscc, t.region_code) {
            Ok(())
        } else {
            Err(Reject::Identity {
                gateway: gateway_id.to_string(),
                uscc: uscc.to_string(),
                region: region.to_string(),
                topic: t.gateway_id.to_string(),
            })
        }
    }

    /// The envelope must carry `schema` and a usable msg_id, and name the
    /// gateway whose topic it came on.
    fn check_envelope(&self, e: &Envelope, schema: &'static str) -> Result<(), Reject> {
        if e.schema != schema {
            return Err(Reject::Schema {
                found: e.schema.clone(),
                expected: schema,
            });
        }
        if e.instance().is_none() || e.seq < 1 {
            return Err(Reject::MsgId {
                msg_id: e.msg_id.clone(),
                seq: e.seq,
            });
        }
        self.same_identity(&e.gateway_id, &e.uscc, &e.region_code)
    }
}

/// A status message replaces the gateway's last one.
async fn status(tx: &mut Tx<'_>, at: &Arrival<'_>) -> Result<Handled, Stop> {
    let s: StatusMessage = serde_json::from_str(at.text).map_err(|e| malformed("status", e))?;
    at.same_identity(&s.gateway_id, &s.uscc, &s.region_code)?;
    tx.execute(
        "INSERT INTO status (gateway_id, received_ts, state, clock_sync, payload)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (gateway_id) DO UPDATE SET received_ts = excluded.received_ts,
           state = excluded.state, clock_sync = excluded.clock_sync,
           payload = excluded.payload",
        args![
            at.topic.gateway_id,
            at.received,
            &s.state,
            s.clock_sync.as_deref().unwrap_or(""),
            at.text
        ],
    )
    .await?;
    if let Some(o) = &s.outbox {
        // Counters only grow, so the newest status holds the most; one
        // that arrives late (reordered) must not replace it.
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        tx.execute(
            "INSERT INTO outbox_status (gateway_id, instance, ts, received_ts, unsent_rows,
               last_seq, evicted_rows, evicted_metrics, evicted_states)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (gateway_id, instance) DO UPDATE SET ts = excluded.ts,
               received_ts = excluded.received_ts, unsent_rows = excluded.unsent_rows,
               last_seq = excluded.last_seq, evicted_rows = excluded.evicted_rows,
               evicted_metrics = excluded.evicted_metrics,
               evicted_states = excluded.evicted_states
             WHERE excluded.ts >= outbox_status.ts",
            args![
                at.topic.gateway_id,
                &o.instance,
                s.ts,
                at.received,
                n(o.rows),
                o.last_seq,
                n(o.evicted_rows),
                n(o.evicted_metrics),
                n(o.evicted_states)
            ],
        )
        .await?;
    }
    Ok(Handled::Stored)
}

/// A states message: stored once per msg_id, its transitions kept for
/// verifying the windows that cover them.
async fn states(tx: &mut Tx<'_>, at: &Arrival<'_>) -> Result<Handled, Stop> {
    let m: StatesMessage = serde_json::from_str(at.text).map_err(|e| malformed("states", e))?;
    let e = &m.envelope;
    at.check_envelope(e, "zgsz.states/1")?;
    let gateway = at.topic.gateway_id;
    let instance = e.instance().unwrap_or_default().to_string();
    if !insert_message(tx, e, &instance, "states", at).await? {
        return Ok(Handled::Duplicate);
    }
    for tr in &m.transitions {
        tx.execute(
            "INSERT INTO transitions (gateway_id, instance, id, seq, equipment, state, ts)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
            args![
                gateway,
                &instance,
                tr.id,
                e.seq,
                &tr.equipment,
                tr.state.name(),
                tr.ts
            ],
        )
        .await?;
    }
    crate::verify::settle(tx, gateway, &instance).await?;
    Ok(Handled::Stored)
}

/// A metrics message: stored once per msg_id; a sealed window takes its
/// place in the chain, checked on its own now and against the chain and
/// the transitions when they are all in (see `verify`).
async fn metrics(tx: &mut Tx<'_>, cfg: &Config, at: &Arrival<'_>) -> Result<Handled, Stop> {
    let value: Value = serde_json::from_str(at.text).map_err(|e| malformed("metrics", e))?;
    let m: MetricsMessage =
        serde_json::from_value(value.clone()).map_err(|e| malformed("metrics", e))?;
    let e = &m.envelope;
    at.check_envelope(e, "zgsz.metrics/1")?;
    let gateway = at.topic.gateway_id;
    let instance = e.instance().unwrap_or_default().to_string();
    let exists = tx
        .query_opt(
            "SELECT msg_id FROM messages WHERE gateway_id = ?1 AND msg_id = ?2",
            args![gateway, &e.msg_id],
        )
        .await?;
    if exists.is_some() {
        return Ok(Handled::Duplicate);
    }
    let Some(seal) = &m.body.seal else {
        // A snapshot: stored, nothing to verify.
        insert_message(tx, e, &instance, "metrics", at).await?;
        return Ok(Handled::Stored);
    };
    let upto = m
        .body
        .states_upto_seq
        .ok_or_else(|| malformed("metrics", "a seal without states_upto_seq"))?;
    let index =
        i64::try_from(seal.index).map_err(|_| malformed("metrics", "seal.index out of range"))?;
    let holder = tx
        .query_opt(
            "SELECT msg_id FROM windows WHERE gateway_id = ?1 AND instance = ?2 AND chain_index = ?3",
            args![gateway, &instance, index],
        )
        .await?;
    if let Some(other) = holder {
        return Err(Reject::IndexHeld {
            index,
            instance,
            other: other.text(0)?,
        }
        .into());
    }
    insert_message(tx, e, &instance, "metrics", at).await?;
    let broken = crate::verify::self_contained(&value, &m.body);
    let prev_hash = match tx
        .query_opt(
            "SELECT config_hash FROM windows WHERE gateway_id = ?1 AND instance = ?2 AND chain_index = ?3",
            args![gateway, &instance, index - 1],
        )
        .await?
    {
        Some(r) => Some(r.text(0)?),
        None => None,
    };
    let clock = match tx
        .query_opt(
            "SELECT clock_sync FROM status WHERE gateway_id = ?1",
            args![gateway],
        )
        .await?
    {
        Some(r) => Some(r.text(0)?),
        None => None,
    };
    let flags = crate::verify::flags(
        &m.body,
        prev_hash.as_deref(),
        clock.as_deref(),
        cfg.verify.max_declared_verified_gap,
    );
    tx.execute(
        "INSERT INTO windows (gateway_id, instance, chain_index, msg_id, kind, start_ts,
           end_ts, config_hash, states_upto_seq, prev, digest, metrics_sha256,
           transitions_sha256, verdict, reason, flags)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        args![
            gateway,
            &instance,
            index,
            &e.msg_id,
            m.body.window.kind.name(),
            m.body.window.start_ts,
            m.body.window.end_ts,
            &m.body.config_hash,
            upto,
            &seal.prev,
            &seal.digest,
            &seal.metrics_sha256,
            &seal.transitions_sha256,
            if broken.is_some() {
                "broken"
            } else {
                "pending"
            },
            broken.as_deref().unwrap_or_default(),
            &flags
        ],
    )
    .await?;
    crate::verify::flag_next_config_change(tx, gateway, &instance, index, &m.body.config_hash)
        .await?;
    crate::verify::settle(tx, gateway, &instance).await?;
    Ok(Handled::Stored)
}

/// Inserts the message; `false` when its msg_id is already stored.
async fn insert_message(
    tx: &mut Tx<'_>,
    e: &Envelope,
    instance: &str,
    stream: &str,
    at: &Arrival<'_>,
) -> Result<bool, StoreError> {
    let n = tx
        .execute(
            "INSERT INTO messages (gateway_id, msg_id, instance, seq, stream, created_ts, received_ts, payload, received_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (gateway_id, msg_id) DO NOTHING",
            args![
                &e.gateway_id,
                &e.msg_id,
                instance,
                e.seq,
                stream,
                e.created_ts,
                at.received,
                at.text,
                at.received_by
            ],
        )
        .await?;
    Ok(n == 1)
}

/// This instance's connection to the broker: the client that queues
/// requests (acks, subscriptions) and the event loop that sends them.
pub(crate) struct Session {
    client: AsyncClient,
    events: EventLoop,
    /// Events read while a request waited for room (see [`Session::request`]),
    /// handed out by [`Session::next`] before anything new.
    read_ahead: VecDeque<Result<Event, ConnectionError>>,
}

impl Session {
    /// The session of `mqtt.client_id`, with manual acks; `clean_session`
    /// off keeps the session (and its queued share) across disconnects, on
    /// discards it. Connects at the first [`Session::next`].
    pub(crate) fn new(cfg: &Config, clean_session: bool) -> Session {
        let (client, events) = AsyncClient::new(mqtt_options(cfg, clean_session), 256);
        Session {
            client,
            events,
            read_ahead: VecDeque::new(),
        }
    }

    /// The next event; an error is a lost connection, and the next call
    /// reconnects.
    pub(crate) async fn next(&mut self) -> Result<Event, ConnectionError> {
        match self.read_ahead.pop_front() {
            Some(e) => e,
            None => self.events.poll().await,
        }
    }

    /// Queues a request (`queue` is e.g. `|c| c.try_ack(&p)`). The request
    /// queue is bounded and only the event loop empties it, when polled;
    /// when the broker delivers a burst (a session's queue after a restart),
    /// the acks outrun it and the queue fills. Then this polls the event
    /// loop, keeping what it reads for [`Session::next`], until there is
    /// room: an ack is never dropped.
    pub(crate) async fn request(
        &mut self,
        queue: impl Fn(&AsyncClient) -> Result<(), ClientError>,
    ) -> Result<(), ClientError> {
        loop {
            match queue(&self.client) {
                Err(ClientError::TryRequest(_)) => {
                    let e = self.events.poll().await;
                    self.read_ahead.push_back(e);
                }
                done => return done,
            }
        }
    }

    /// Sends what is queued (acks first) and a DISCONNECT, and returns once
    /// the broker has closed the connection (it has then ended a clean
    /// session; a persistent one stays), or after `limit`.
    pub(crate) async fn disconnect(&mut self, limit: Duration) {
        let sent = async {
            if self.request(|c| c.try_disconnect()).await.is_err() {
                return;
            }
            while self.events.poll().await.is_ok() {}
        };
        let _ = tokio::time::timeout(limit, sent).await;
    }

    /// Queues the ack of `p` (see [`Session::request`]).
    pub(crate) async fn ack(&mut self, p: &Publish) -> Result<(), ClientError> {
        self.request(|c| c.try_ack(p)).await
    }
}

fn mqtt_options(cfg: &Config, clean_session: bool) -> MqttOptions {
    let m = &cfg.mqtt;
    let mut opts = MqttOptions::new(&m.client_id, &m.host, m.port);
    opts.set_clean_session(clean_session);
    opts.set_manual_acks(true);
    opts.set_keep_alive(Duration::from_secs(m.keepalive_s));
    opts.set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
    if let (Some(u), Some(p)) = (&m.username, &m.password) {
        opts.set_credentials(u, p);
    }
    opts
}

/// A rejection is worth a warning; the rest is routine.
pub(crate) fn log_outcome(topic_name: &str, outcome: &Handled) {
    match outcome {
        Handled::Rejected(reason) => {
            tracing::warn!(topic = %topic_name, %reason, "Rejected a message")
        }
        Handled::Duplicate => tracing::debug!(topic = %topic_name, "Duplicate"),
        Handled::Stored => tracing::debug!(topic = %topic_name, "Stored"),
    }
}

/// Subscribes and ingests until `shutdown` resolves. A transient database
/// error is retried ([`handle_retrying`]); any other stops the receiver
/// without acking the message (the broker resends it to this session after
/// a restart).
pub async fn run(
    cfg: Config,
    mut store: Store,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), StoreError> {
    let mut session = Session::new(&cfg, false);
    tokio::pin!(shutdown);
    loop {
        let event = tokio::select! {
            () = &mut shutdown => break,
            e = session.next() => e,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                tracing::info!(session_present = ack.session_present, "Connected");
                // Subscribing again is harmless with a present session and
                // needed without one.
                for f in cfg.filters() {
                    if let Err(e) = session
                        .request(|c| c.try_subscribe(f.clone(), QoS::AtLeastOnce))
                        .await
                    {
                        tracing::warn!(filter = %f, error = %e, "Subscribe not queued");
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                // Shutdown while the database is away: stop without the
                // ack; an open transaction rolls back when dropped.
                let outcome = tokio::select! {
                    () = &mut shutdown => break,
                    h = handle_retrying(&mut store, &cfg, &p.topic, &p.payload) => h?,
                };
                log_outcome(&p.topic, &outcome);
                // Committed: now the broker may forget it.
                if let Err(e) = session.ack(&p).await {
                    tracing::warn!(error = %e, "Ack not queued; the broker will resend");
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "MQTT connection lost; reconnecting in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    session.disconnect(Duration::from_secs(5)).await;
    Ok(())
}
