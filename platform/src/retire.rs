//! Retiring an instance for good.
//!
//! A shared-subscription member that is offline but keeps a persistent
//! session still gets its share of the messages at some brokers (mosquitto
//! 2.0 queues it in the session until the member returns). An instance
//! removed for good would strand that share. [`retire`] connects with the
//! instance's session, unsubscribes the shared filters at once (so no new
//! share is routed to it), ingests and acks what the broker delivers from
//! the session's queue through the same path as `run`
//! ([`ingest::handle_retrying`]), and when nothing has arrived for a quiet
//! period after the unsubscribe was acknowledged, ends the session:
//! reconnects with clean session on and disconnects, so the broker deletes
//! it.
//!
//! mosquitto sends a returning session's whole queue at once, ahead of
//! any PINGRESP; when ingesting it takes longer than the keepalive, the
//! client drops the connection ("last pingreq isn't acked"). `retire` then
//! reconnects to the same session, and the broker sends again what was not
//! acked; it gives up only after [`MAX_CONNECT_FAILURES`] failed connects in
//! a row. A database error that would repeat stops it too. Either way the
//! session is kept: whatever was not committed stays queued, and running
//! `retire` again takes it over.

use std::time::Duration;

use rumqttc::{ClientError, ConnectionError, Event, Packet};
use tokio::time::Instant;

use crate::config::Config;
use crate::ingest::{self, Handled, Session};
use crate::store::{Store, StoreError};

/// Connection failures in a row (without a CONNACK between them) after
/// which `retire` gives up, with the session kept.
const MAX_CONNECT_FAILURES: u32 = 5;

/// How long to wait for the broker to close the connection after our
/// DISCONNECT; mosquitto closes it at once.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// What a retirement took over from the session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retired {
    /// The broker held a session for this client id when `retire`
    /// connected. Without one there was nothing queued to take over.
    pub session_present: bool,
    /// Messages delivered from the session and committed (the sum of the
    /// three below).
    pub taken_over: u64,
    pub stored: u64,
    pub duplicates: u64,
    pub rejected: u64,
}

impl Retired {
    fn count(&mut self, outcome: &Handled) {
        self.taken_over += 1;
        match outcome {
            Handled::Stored => self.stored += 1,
            Handled::Duplicate => self.duplicates += 1,
            Handled::Rejected(_) => self.rejected += 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RetireError {
    #[error("the database: {0}; the session is kept, run retire again")]
    Store(#[from] StoreError),
    #[error("the broker connection: {0} ({MAX_CONNECT_FAILURES} connects failed in a row); the session is kept, run retire again")]
    Connection(#[from] ConnectionError),
    #[error("the MQTT client: {0}; the session is kept, run retire again")]
    Client(#[from] ClientError),
    #[error("ending the session: {0}; everything taken over is committed, run retire again to delete the session")]
    EndSession(ConnectionError),
}

/// Takes over the queued share of `cfg.mqtt.client_id`'s session into
/// `store`, then has the broker delete the session. Returns once nothing
/// has arrived for `quiet` after the broker acknowledged the unsubscribe.
pub async fn retire(
    cfg: &Config,
    store: &mut Store,
    quiet: Duration,
) -> Result<Retired, RetireError> {
    let mut session = Session::new(cfg, false);
    let mut retired = drain(cfg, store, quiet, &mut session).await?;
    session.request(|c| c.try_disconnect()).await?;
    after_disconnect(cfg, store, &mut session, &mut retired).await?;
    end_session(cfg).await.map_err(RetireError::EndSession)?;
    tracing::info!(
        client_id = %cfg.mqtt.client_id,
        taken_over = retired.taken_over,
        "Session ended"
    );
    Ok(retired)
}

/// Unsubscribes on connect and ingests until the queue has been quiet.
async fn drain(
    cfg: &Config,
    store: &mut Store,
    quiet: Duration,
    session: &mut Session,
) -> Result<Retired, RetireError> {
    let filters = cfg.filters();
    let mut retired = Retired::default();
    let mut connected_before = false;
    let mut unsubacks = 0;
    let mut failures = 0;
    // Set once every unsubscribe is acknowledged: from then on no new
    // message is routed to this session, only its queue is delivered.
    let mut last_arrival: Option<Instant> = None;
    loop {
        let next = match last_arrival {
            Some(at) => tokio::select! {
                // What has arrived goes first.
                biased;
                e = session.next() => e,
                () = tokio::time::sleep_until(at + quiet) => return Ok(retired),
            },
            None => session.next().await,
        };
        let event = match next {
            Ok(event) => event,
            Err(e) => {
                // The session is kept: reconnecting resumes it, and what was
                // not acked comes again.
                failures += 1;
                if failures >= MAX_CONNECT_FAILURES {
                    return Err(e.into());
                }
                tracing::warn!(error = %e, failures, "Broker connection lost; reconnecting in 1 s");
                (unsubacks, last_arrival) = (0, None);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        match event {
            Event::Incoming(Packet::ConnAck(ack)) => {
                failures = 0;
                // Only the first connect tells whether the broker held a
                // session before; after that it is this one.
                if !connected_before {
                    retired.session_present = ack.session_present;
                    connected_before = true;
                }
                tracing::info!(
                    session_present = ack.session_present,
                    "Connected; unsubscribing"
                );
                for f in &filters {
                    session.request(|c| c.try_unsubscribe(f.clone())).await?;
                }
            }
            Event::Incoming(Packet::UnsubAck(_)) => {
                unsubacks += 1;
                if unsubacks == filters.len() {
                    tracing::info!("Unsubscribed; taking over the queued messages");
                    last_arrival = Some(Instant::now());
                }
            }
            Event::Incoming(Packet::Publish(p)) => {
                let outcome = ingest::handle_retrying(store, cfg, &p.topic, &p.payload).await?;
                ingest::log_outcome(&p.topic, &outcome);
                retired.count(&outcome);
                session.ack(&p).await?;
                if let Some(at) = &mut last_arrival {
                    *at = Instant::now();
                }
            }
            _ => {}
        }
    }
}

/// After the DISCONNECT is queued (behind the last acks), reads until the
/// broker closes the connection. A message it sent before it read the
/// DISCONNECT is committed too (it can no longer be acked, but the session
/// is about to be deleted, so the ack would not matter).
async fn after_disconnect(
    cfg: &Config,
    store: &mut Store,
    session: &mut Session,
    retired: &mut Retired,
) -> Result<(), RetireError> {
    let deadline = Instant::now() + CLOSE_WAIT;
    loop {
        let event = tokio::select! {
            () = tokio::time::sleep_until(deadline) => return Ok(()),
            e = session.next() => e,
        };
        match event {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let outcome = ingest::handle_retrying(store, cfg, &p.topic, &p.payload).await?;
                ingest::log_outcome(&p.topic, &outcome);
                retired.count(&outcome);
            }
            Ok(_) => {}
            // The broker closed the connection after our DISCONNECT.
            Err(_) => return Ok(()),
        }
    }
}

/// Connects with clean session on, which discards the persistent session,
/// and disconnects, which deletes the clean one.
async fn end_session(cfg: &Config) -> Result<(), ConnectionError> {
    let mut session = Session::new(cfg, true);
    loop {
        if let Event::Incoming(Packet::ConnAck(_)) = session.next().await? {
            session.disconnect(CLOSE_WAIT).await;
            return Ok(());
        }
    }
}
