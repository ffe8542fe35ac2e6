//! Ingest: messages in, one database transaction, then the acks.
//!
//! [`handle`] decides what a message is (stored, a duplicate, rejected with
//! a reason) and commits it; [`handle_batch`] does the same for several
//! messages in one transaction. [`run`] subscribes through a shared
//! subscription with a persistent session and manual acks, commits the
//! messages that have arrived in batches, and acks a message only after
//! its batch has committed, so a receiver that dies loses nothing: the
//! broker sends the unacknowledged messages again.
//!
//! When the database is away (PostgreSQL restarting, a broken connection,
//! SQLite busy past its timeout), [`handle_batch_retrying`] tries the
//! same batch again with a growing pause, reconnecting, until it commits;
//! no message of it is acknowledged before, and nothing after it is read
//! in the meantime.
//!
//! Several instances may write to one database at once. Everything a
//! message's decision reads and writes belongs to its gateway (registry
//! entry, status, messages, transitions, windows), so the transaction
//! first takes its gateway's lock ([`Tx::lock`]; a batch takes those of all
//! its gateways, in order): the transactions of one
//! gateway run one after the other, whichever instance runs them, and the
//! chain verification, which reads a window's neighbours and the states
//! messages, always sees every message of that gateway committed before
//! it. Without the lock, two instances storing neighbouring windows at
//! once would each miss the other's uncommitted one and both leave their
//! window pending. Different gateways do not wait for each other.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use zgsz_contract::payload::{Envelope, MetricsMessage, StatesMessage, StatusMessage};
use zgsz_contract::WindowKind;

use crate::config::Config;
use crate::store::db::{args, Arg, Dialect, Row, Tx};
use crate::store::{now_ms, Gateway, Store, StoreError};
use crate::topic::{self, Stream};
use crate::verify::Touched;

mod mqtt;
pub(crate) use mqtt::{log_outcome, Session};
pub use mqtt::{run, MAX_BATCH};

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

/// Decides and commits one message: [`handle_batch`] of one.
pub async fn handle(
    store: &mut Store,
    cfg: &Config,
    topic_name: &str,
    payload: &[u8],
) -> Result<Handled, StoreError> {
    only(handle_batch(store, cfg, &[(topic_name, payload)]).await?)
}

/// The outcome of a batch of one message.
fn only(mut outcomes: Vec<Handled>) -> Result<Handled, StoreError> {
    outcomes
        .pop()
        .ok_or_else(|| StoreError::Invalid("a batch of one gave no outcome".into()))
}

/// Decides one message inside `tx`, storing a rejection in `rejected`.
/// `known`: the enrolled gateways among those whose locks the transaction
/// already holds.
/// A stored states or sealed metrics message adds its (gateway, instance)
/// to `touched`, whose pending windows the caller settles before commit.
///
/// Every rejection is decided before the message's first write (the
/// checks come first, see [`decide`]), so a rejected message leaves
/// nothing behind but its row in `rejected`, and a batch needs no
/// savepoints: the other messages of the transaction are unaffected.
async fn one(
    tx: &mut Tx<'_>,
    cfg: &Config,
    topic_name: &str,
    payload: &[u8],
    received: i64,
    known: &Known,
    touched: &mut Touched,
) -> Result<Handled, StoreError> {
    match decide(tx, cfg, topic_name, payload, received, known, touched).await {
        Ok(h) => Ok(h),
        Err(Stop::Store(e)) => Err(e),
        Err(Stop::Reject(why)) => {
            let reason = why.to_string();
            let text = String::from_utf8_lossy(payload);
            tx.execute(
                "INSERT INTO rejected (received_ts, topic, reason, payload) VALUES (?1, ?2, ?3, ?4)",
                args![received, topic_name, &reason, text.as_ref()],
            )
            .await?;
            Ok(Handled::Rejected(reason))
        }
    }
}

/// Decides and commits several messages in one transaction: the same
/// decisions as [`handle`] on each in turn, one commit (and one fsync)
/// for all. A rejection is still per message; a database error fails the
/// whole batch, of which nothing is then committed.
///
/// The gateway locks of the whole batch are taken first, in sorted order:
/// two instances locking the gateways of their batches as they came would
/// deadlock as soon as their batches shared two gateways in opposite
/// orders.
pub async fn handle_batch(
    store: &mut Store,
    cfg: &Config,
    messages: &[(&str, &[u8])],
) -> Result<Vec<Handled>, StoreError> {
    let mut tx = store.begin(true).await?;
    let received = now_ms();
    let mut ids: Vec<&str> = messages
        .iter()
        .filter_map(|(t, _)| topic::parse(&cfg.mqtt.topic_prefix, t).map(|t| t.gateway_id))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    tx.lock_all(&ids).await?;
    let known = gateways(&mut tx, &ids).await?;
    let mut outcomes = Vec::with_capacity(messages.len());
    let mut touched = Touched::new();
    for (topic_name, payload) in messages {
        let outcome = one(
            &mut tx,
            cfg,
            topic_name,
            payload,
            received,
            &known,
            &mut touched,
        );
        outcomes.push(outcome.await?);
    }
    crate::verify::settle(&mut tx, &touched).await?;
    tx.commit().await?;
    Ok(outcomes)
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
    only(handle_batch_retrying(store, cfg, &[(topic_name, payload)]).await?)
}

/// [`handle_batch`], retried as [`handle_retrying`] retries one message:
/// the whole batch again, since a failed try committed none of it.
pub async fn handle_batch_retrying(
    store: &mut Store,
    cfg: &Config,
    messages: &[(&str, &[u8])],
) -> Result<Vec<Handled>, StoreError> {
    let mut pause = FIRST_RETRY_PAUSE;
    let mut failures = 0u32;
    loop {
        match handle_batch(store, cfg, messages).await {
            Err(e) if e.is_transient() => {
                failures += 1;
                // The first failure and then every tenth: an outage of
                // minutes must not flood the log.
                if failures == 1 || failures.is_multiple_of(10) {
                    tracing::warn!(
                        error = %e,
                        failures,
                        messages = messages.len(),
                        pause_ms = pause.as_millis() as u64,
                        "Database unavailable; the messages stay unacknowledged, retrying"
                    );
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_RETRY_PAUSE);
            }
            outcome => {
                if failures > 0 && outcome.is_ok() {
                    tracing::info!(failures, "Database back; the messages are committed");
                }
                return outcome;
            }
        }
    }
}

/// The enrolled gateways of a batch, by id.
type Known = HashMap<String, Gateway>;

/// The registry entries of `ids` that are enrolled, read at once.
async fn gateways(tx: &mut Tx<'_>, ids: &[&str]) -> Result<Known, StoreError> {
    let args: Vec<[Arg<'_>; 1]> = ids.iter().map(|id| [Arg::Text(id)]).collect();
    let statements: Vec<(&'static str, &[Arg<'_>])> = args
        .iter()
        .map(|a| {
            (
                "SELECT gateway_id, uscc, region_code, public_key FROM gateways WHERE gateway_id = ?1",
                &a[..],
            )
        })
        .collect();
    let mut known = HashMap::new();
    for rows in tx.query_many(&statements).await? {
        if let Some(r) = rows.first() {
            let g = Gateway {
                gateway_id: r.text(0)?,
                uscc: r.text(1)?,
                region_code: r.text(2)?,
                public_key: r.text(3)?,
            };
            known.insert(g.gateway_id.clone(), g);
        }
    }
    Ok(known)
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
    known: &Known,
    touched: &mut Touched,
) -> Result<Handled, Stop> {
    let t = topic::parse(&cfg.mqtt.topic_prefix, topic_name).ok_or(Reject::Topic)?;
    let g = known.get(t.gateway_id).cloned();
    let g = g.ok_or_else(|| Reject::NotEnrolled(t.gateway_id.to_string()))?;
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
        Stream::States => states(tx, &at, touched).await,
        Stream::Metrics => metrics(tx, cfg, &at, touched).await,
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
async fn states(tx: &mut Tx<'_>, at: &Arrival<'_>, touched: &mut Touched) -> Result<Handled, Stop> {
    let m: StatesMessage = serde_json::from_str(at.text).map_err(|e| malformed("states", e))?;
    let e = &m.envelope;
    at.check_envelope(e, "zgsz.states/1")?;
    let gateway = at.topic.gateway_id;
    let instance = e.instance().unwrap_or_default().to_string();
    if !insert_message(tx, e, &instance, "states", at).await? {
        return Ok(Handled::Duplicate);
    }
    insert_transitions(tx, (gateway, &instance, e.seq), &m.transitions).await?;
    touched.insert((gateway.to_string(), instance));
    Ok(Handled::Stored)
}

/// What a metrics message's decision reads, in one round trip: whether
/// its msg_id is stored, who holds chain index `at`, the config hash of
/// the entry before it, and the gateway's clock.
async fn decision_reads(
    tx: &mut Tx<'_>,
    gateway: &str,
    instance: &str,
    msg_id: &str,
    at: i64,
) -> Result<(Option<Row>, Option<Row>, Option<Row>, Option<Row>), StoreError> {
    let clock_args = [Arg::from(gateway)];
    let mut reads = tx
        .query_many(&[
            (
                "SELECT msg_id FROM messages WHERE gateway_id = ?1 AND msg_id = ?2",
                args![gateway, msg_id],
            ),
            (
                "SELECT msg_id FROM windows WHERE gateway_id = ?1 AND instance = ?2 AND chain_index = ?3",
                args![gateway, instance, at],
            ),
            (
                "SELECT config_hash FROM windows WHERE gateway_id = ?1 AND instance = ?2 AND chain_index = ?3",
                args![gateway, instance, at - 1],
            ),
            (
                "SELECT clock_sync FROM status WHERE gateway_id = ?1",
                &clock_args[..],
            ),
        ])
        .await?
        .into_iter()
        .map(|rows| rows.into_iter().next());
    let mut next = || reads.next().flatten();
    Ok((next(), next(), next(), next()))
}

/// Stores the transitions of the states message `seq` of (gateway,
/// instance); one already stored (a replay) is kept as it was.
///
/// PostgreSQL takes them all in one statement, as arrays: a statement
/// costs the server more than a row, and a catch-up brings millions of
/// transitions. SQLite, in the process, takes them one by one.
async fn insert_transitions(
    tx: &mut Tx<'_>,
    (gateway, instance, seq): (&str, &str, i64),
    transitions: &[zgsz_contract::payload::StateTransition],
) -> Result<(), StoreError> {
    if tx.dialect() == Dialect::Postgres {
        let ids: Vec<i64> = transitions.iter().map(|t| t.id).collect();
        let equipment: Vec<&str> = transitions.iter().map(|t| t.equipment.as_str()).collect();
        let states: Vec<&str> = transitions.iter().map(|t| t.state.name()).collect();
        let ts: Vec<i64> = transitions.iter().map(|t| t.ts).collect();
        tx.execute(
            "INSERT INTO transitions (gateway_id, instance, id, seq, equipment, state, ts)
             SELECT ?1::text, ?2::text, t.id, ?3::bigint, t.equipment, t.state, t.ts
             FROM unnest(?4::bigint[], ?5::text[], ?6::text[], ?7::bigint[])
               AS t (id, equipment, state, ts)
             ON CONFLICT DO NOTHING",
            &[
                Arg::Text(gateway),
                Arg::Text(instance),
                Arg::Int(seq),
                Arg::Ints(&ids),
                Arg::Texts(&equipment),
                Arg::Texts(&states),
                Arg::Ints(&ts),
            ],
        )
        .await?;
        return Ok(());
    }
    let rows: Vec<[Arg<'_>; 7]> = transitions
        .iter()
        .map(|tr| {
            [
                Arg::from(gateway),
                Arg::from(instance),
                Arg::from(tr.id),
                Arg::from(seq),
                Arg::from(&tr.equipment),
                Arg::from(tr.state.name()),
                Arg::from(tr.ts),
            ]
        })
        .collect();
    let inserts: Vec<(&'static str, &[Arg<'_>])> = rows
        .iter()
        .map(|a| {
            (
                "INSERT INTO transitions (gateway_id, instance, id, seq, equipment, state, ts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
                &a[..],
            )
        })
        .collect();
    tx.query_many(&inserts).await?;
    Ok(())
}

/// A metrics message: stored once per msg_id; a sealed window takes its
/// place in the chain, checked on its own now and against the chain and
/// the transitions when they are all in (see `verify`).
async fn metrics(
    tx: &mut Tx<'_>,
    cfg: &Config,
    at: &Arrival<'_>,
    touched: &mut Touched,
) -> Result<Handled, Stop> {
    let value: Value = serde_json::from_str(at.text).map_err(|e| malformed("metrics", e))?;
    // From the parsed value, not the text again: a payload is parsed once.
    let m = MetricsMessage::deserialize(&value).map_err(|e| malformed("metrics", e))?;
    let e = &m.envelope;
    at.check_envelope(e, "zgsz.metrics/1")?;
    let gateway = at.topic.gateway_id;
    let instance = e.instance().unwrap_or_default().to_string();
    // What the decision reads, at once: whether the msg_id is stored,
    // who holds the seal's chain index, the config hash before it, and
    // the gateway's clock (a snapshot's index -1 is never held).
    let index = m.body.seal.as_ref().map(|s| i64::try_from(s.index));
    let at_index = match index {
        Some(Ok(i)) => i,
        _ => -1,
    };
    let (exists, holder, prev, clock) =
        decision_reads(tx, gateway, &instance, &e.msg_id, at_index).await?;
    if exists.is_some() {
        return Ok(Handled::Duplicate);
    }
    let (Some(seal), Some(index)) = (&m.body.seal, index) else {
        // A snapshot: stored, nothing to verify.
        insert_message(tx, e, &instance, "metrics", at).await?;
        return Ok(Handled::Stored);
    };
    let upto = m
        .body
        .states_upto_seq
        .ok_or_else(|| malformed("metrics", "a seal without states_upto_seq"))?;
    let index = index.map_err(|_| malformed("metrics", "seal.index out of range"))?;
    if let Some(other) = holder {
        return Err(Reject::IndexHeld {
            index,
            instance,
            other: other.text(0)?,
        }
        .into());
    }
    let broken = crate::verify::self_contained(&value, &m.body);
    let prev_hash = prev.map(|r| r.text(0)).transpose()?;
    let clock = clock.map(|r| r.text(0)).transpose()?;
    let equipment = serde_json::to_string(&crate::verify::equipment_ids(&value))
        .map_err(|e| StoreError::Invalid(format!("equipment list: {e}")))?;
    let flags = crate::verify::flags(
        &m.body,
        prev_hash.as_deref(),
        clock.as_deref(),
        cfg.verify.max_declared_verified_gap,
    );
    let verdict = if broken.is_some() {
        "broken"
    } else {
        "pending"
    };
    let local_date = crate::aggregate::GatewayDay::date_of(&m.body).unwrap_or_default();
    // The message, its window, and the entry after it (which may have
    // arrived first), at once: none depends on another's outcome, and the
    // msg_id and the index were found free above, under the gateway's lock.
    let message = message_args(e, &instance, "metrics", at);
    let after = [
        Arg::from(gateway),
        Arg::from(&instance),
        Arg::from(index + 1),
    ];
    let mut answers = tx
        .query_many(&[
            (INSERT_MESSAGE, &message[..]),
            (
                "INSERT INTO windows (gateway_id, instance, chain_index, msg_id, kind, start_ts,
           end_ts, config_hash, states_upto_seq, prev, digest, metrics_sha256,
           transitions_sha256, verdict, reason, flags, equipment, local_date)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
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
                    verdict,
                    broken.as_deref().unwrap_or_default(),
                    &flags,
                    &equipment,
                    &local_date
                ],
            ),
            (crate::verify::NEXT_ENTRY, &after[..]),
        ])
        .await?;
    let next = answers.pop().and_then(|rows| rows.into_iter().next());
    if m.body.window.kind == WindowKind::Day {
        let t = at.topic;
        let key = (gateway, instance.as_str(), index);
        crate::store::days::record(tx, key, verdict, t.uscc, t.region_code, &m.body).await?;
        tx.execute(
            "UPDATE gateways SET enterprise_name = ?2 WHERE gateway_id = ?1 AND enterprise_name <> ?2",
            args![gateway, &m.body.enterprise_name],
        )
        .await?;
    }
    let key = (gateway, instance.as_str(), index);
    crate::verify::flag_next_config_change(tx, key, &m.body.config_hash, next).await?;
    touched.insert((gateway.to_string(), instance));
    Ok(Handled::Stored)
}

const INSERT_MESSAGE: &str = "INSERT INTO messages (gateway_id, msg_id, instance, seq, stream,
       created_ts, received_ts, payload, received_by)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (gateway_id, msg_id) DO NOTHING";

/// The arguments of [`INSERT_MESSAGE`].
fn message_args<'a>(
    e: &'a Envelope,
    instance: &'a str,
    stream: &'a str,
    at: &Arrival<'a>,
) -> [Arg<'a>; 9] {
    [
        Arg::from(&e.gateway_id),
        Arg::from(&e.msg_id),
        Arg::from(instance),
        Arg::from(e.seq),
        Arg::from(stream),
        Arg::from(e.created_ts),
        Arg::from(at.received),
        Arg::from(at.text),
        Arg::from(at.received_by),
    ]
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
        .execute(INSERT_MESSAGE, &message_args(e, instance, stream, at))
        .await?;
    Ok(n == 1)
}
