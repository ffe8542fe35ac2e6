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

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
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
    let outcome = match decide(&mut tx, cfg, topic_name, payload, received).await? {
        Ok(h) => h,
        Err(reason) => {
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

/// `Ok(Err(reason))`: reject. The checks run in the order a forger would
/// have to get past them: topic, registry, payload, identity, chain.
#[allow(
    clippy::too_many_lines,
    reason = "every check of one message in the order a forger meets them, per stream; not split yet"
)]
async fn decide(
    tx: &mut Tx<'_>,
    cfg: &Config,
    topic_name: &str,
    payload: &[u8],
    received: i64,
) -> Result<Result<Handled, String>, StoreError> {
    let Some(t) = topic::parse(&cfg.mqtt.topic_prefix, topic_name) else {
        return Ok(Err(
            "not a gateway topic of metrics, states or status".into()
        ));
    };
    // Serialises the transactions of this gateway (see the module note).
    tx.lock(t.gateway_id).await?;
    let Some(g) = gateway(tx, t.gateway_id).await? else {
        return Ok(Err(format!(
            "unknown gateway {}: not enrolled",
            t.gateway_id
        )));
    };
    if (t.uscc, t.region_code) != (g.uscc.as_str(), g.region_code.as_str()) {
        return Ok(Err(format!(
            "topic names USCC {} and region {}, but gateway {} is enrolled with {} and {}",
            t.uscc, t.region_code, g.gateway_id, g.uscc, g.region_code
        )));
    }
    let Ok(text) = std::str::from_utf8(payload) else {
        return Ok(Err("malformed payload: not UTF-8".into()));
    };
    let same_identity = |gateway_id: &str, uscc: &str, region: &str| {
        if (gateway_id, uscc, region) == (t.gateway_id, t.uscc, t.region_code) {
            Ok(())
        } else {
            Err(format!(
                "payload names gateway {gateway_id} ({uscc}, {region}), but it came on {}'s topic",
                t.gateway_id
            ))
        }
    };
    match t.stream {
        Stream::Status => {
            let s: StatusMessage = match serde_json::from_str(text) {
                Ok(s) => s,
                Err(e) => return Ok(Err(format!("malformed status payload: {e}"))),
            };
            if let Err(why) = same_identity(&s.gateway_id, &s.uscc, &s.region_code) {
                return Ok(Err(why));
            }
            tx.execute(
                "INSERT INTO status (gateway_id, received_ts, state, clock_sync, payload)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (gateway_id) DO UPDATE SET received_ts = excluded.received_ts,
                   state = excluded.state, clock_sync = excluded.clock_sync,
                   payload = excluded.payload",
                args![
                    t.gateway_id,
                    received,
                    &s.state,
                    s.clock_sync.as_deref().unwrap_or(""),
                    text
                ],
            )
            .await?;
            Ok(Ok(Handled::Stored))
        }
        Stream::States => {
            let m: StatesMessage = match serde_json::from_str(text) {
                Ok(m) => m,
                Err(e) => return Ok(Err(format!("malformed states payload: {e}"))),
            };
            let e = &m.envelope;
            if let Err(why) = check_envelope(e, "zgsz.states/1")
                .and_then(|()| same_identity(&e.gateway_id, &e.uscc, &e.region_code))
            {
                return Ok(Err(why));
            }
            let instance = e.instance().unwrap_or_default().to_string();
            if !insert_message(
                tx,
                e,
                &instance,
                "states",
                text,
                received,
                &cfg.mqtt.client_id,
            )
            .await?
            {
                return Ok(Ok(Handled::Duplicate));
            }
            for tr in &m.transitions {
                tx.execute(
                    "INSERT INTO transitions (gateway_id, instance, id, seq, equipment, state, ts)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
                    args![
                        t.gateway_id,
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
            crate::verify::settle(tx, t.gateway_id, &instance).await?;
            Ok(Ok(Handled::Stored))
        }
        Stream::Metrics => {
            let value: Value = match serde_json::from_str(text) {
                Ok(v) => v,
                Err(e) => return Ok(Err(format!("malformed metrics payload: {e}"))),
            };
            let m: MetricsMessage = match serde_json::from_value(value.clone()) {
                Ok(m) => m,
                Err(e) => return Ok(Err(format!("malformed metrics payload: {e}"))),
            };
            let e = &m.envelope;
            if let Err(why) = check_envelope(e, "zgsz.metrics/1")
                .and_then(|()| same_identity(&e.gateway_id, &e.uscc, &e.region_code))
            {
                return Ok(Err(why));
            }
            let instance = e.instance().unwrap_or_default().to_string();
            let exists = tx
                .query_opt(
                    "SELECT msg_id FROM messages WHERE gateway_id = ?1 AND msg_id = ?2",
                    args![t.gateway_id, &e.msg_id],
                )
                .await?;
            if exists.is_some() {
                return Ok(Ok(Handled::Duplicate));
            }
            let Some(seal) = &m.body.seal else {
                // A snapshot: stored, nothing to verify.
                insert_message(
                    tx,
                    e,
                    &instance,
                    "metrics",
                    text,
                    received,
                    &cfg.mqtt.client_id,
                )
                .await?;
                return Ok(Ok(Handled::Stored));
            };
            let Some(upto) = m.body.states_upto_seq else {
                return Ok(Err(
                    "malformed metrics payload: a seal without states_upto_seq".into(),
                ));
            };
            let Ok(index) = i64::try_from(seal.index) else {
                return Ok(Err(
                    "malformed metrics payload: seal.index out of range".into()
                ));
            };
            let holder = tx
                .query_opt(
                    "SELECT msg_id FROM windows WHERE gateway_id = ?1 AND instance = ?2 AND chain_index = ?3",
                    args![t.gateway_id, &instance, index],
                )
                .await?;
            if let Some(other) = holder {
                let other = other.text(0)?;
                return Ok(Err(format!(
                    "chain index {index} of instance {instance} is already held by {other}"
                )));
            }
            insert_message(
                tx,
                e,
                &instance,
                "metrics",
                text,
                received,
                &cfg.mqtt.client_id,
            )
            .await?;
            let broken = crate::verify::self_contained(&value, &m.body);
            let prev_hash = match tx
                .query_opt(
                    "SELECT config_hash FROM windows WHERE gateway_id = ?1 AND instance = ?2 AND chain_index = ?3",
                    args![t.gateway_id, &instance, index - 1],
                )
                .await?
            {
                Some(r) => Some(r.text(0)?),
                None => None,
            };
            let clock = match tx
                .query_opt(
                    "SELECT clock_sync FROM status WHERE gateway_id = ?1",
                    args![t.gateway_id],
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
                    t.gateway_id,
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
            crate::verify::settle(tx, t.gateway_id, &instance).await?;
            Ok(Ok(Handled::Stored))
        }
    }
}

fn check_envelope(e: &Envelope, schema: &str) -> Result<(), String> {
    if e.schema != schema {
        return Err(format!("schema is {:?}, expected {schema:?}", e.schema));
    }
    if e.instance().is_none() || e.seq < 1 {
        return Err(format!(
            "msg_id {:?} is not <instance>:<seq> with seq {}",
            e.msg_id, e.seq
        ));
    }
    Ok(())
}

/// Inserts the message; `false` when its msg_id is already stored.
async fn insert_message(
    tx: &mut Tx<'_>,
    e: &Envelope,
    instance: &str,
    stream: &str,
    text: &str,
    received: i64,
    received_by: &str,
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
                received,
                text,
                received_by
            ],
        )
        .await?;
    Ok(n == 1)
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
    let m = &cfg.mqtt;
    let mut opts = MqttOptions::new(&m.client_id, &m.host, m.port);
    opts.set_clean_session(false);
    opts.set_manual_acks(true);
    opts.set_keep_alive(Duration::from_secs(m.keepalive_s));
    opts.set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
    if let (Some(u), Some(p)) = (&m.username, &m.password) {
        opts.set_credentials(u, p);
    }
    let (client, mut events) = AsyncClient::new(opts, 256);
    tokio::pin!(shutdown);
    loop {
        let event = tokio::select! {
            () = &mut shutdown => break,
            e = events.poll() => e,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                tracing::info!(session_present = ack.session_present, "Connected");
                // Subscribing again is harmless with a present session and
                // needed without one.
                for f in cfg.filters() {
                    if let Err(e) = client.try_subscribe(f.clone(), QoS::AtLeastOnce) {
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
                match &outcome {
                    Handled::Rejected(reason) => {
                        tracing::warn!(topic = %p.topic, %reason, "Rejected a message")
                    }
                    Handled::Duplicate => tracing::debug!(topic = %p.topic, "Duplicate"),
                    Handled::Stored => tracing::debug!(topic = %p.topic, "Stored"),
                }
                // Committed: now the broker may forget it.
                if let Err(e) = client.try_ack(&p) {
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
    let _ = client.try_disconnect();
    Ok(())
}
