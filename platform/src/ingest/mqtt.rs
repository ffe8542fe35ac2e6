//! The receiver on the broker: its persistent session with manual acks,
//! and the loop that takes what has arrived in batches, commits each batch
//! (on PostgreSQL over several connections at once) and only then acks it.

use std::collections::VecDeque;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ClientError, ConnectionError, Event, EventLoop, MqttOptions, Packet, Publish, QoS,
};

use super::{handle_batch_retrying, Handled};
use crate::config::{Backend, Config};
use crate::store::{Store, StoreError};
use crate::topic;

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

/// The most messages committed in one transaction.
pub const MAX_BATCH: usize = 500;

/// Subscribes and ingests until `shutdown` resolves. A transient database
/// error is retried ([`handle_batch_retrying`]); any other stops the
/// receiver without acking the messages (the broker resends them to this
/// session after a restart).
///
/// The MQTT event loop runs in a task of its own and hands the messages
/// over as they arrive. Each message goes to a lane (a database
/// connection; one on SQLite, `database.connections` on PostgreSQL) chosen
/// by its gateway, so that a gateway's messages keep their order. A lane
/// takes every message already waiting for it (up to [`MAX_BATCH`]),
/// commits them in one transaction and reports them done: a batch is one
/// message when the load is light, hundreds when a district reconnects
/// after an outage. Lanes never wait for each other; the acks go out in the
/// order the messages came, as MQTT wants, each once its message and every
/// earlier one are committed.
pub async fn run(
    cfg: Config,
    store: Store,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), StoreError> {
    let (client, events) = AsyncClient::new(mqtt_options(&cfg, false), 2 * MAX_BATCH + 16);
    // Unbounded, so that the event loop never waits for the ingest loop:
    // it must go on reading (the broker's ping responses) and sending the
    // acks. What it holds is bounded by the broker, which should send no
    // more than its window of unacknowledged messages; a ping response
    // queued behind a backlog the broker sends at once arrives only once
    // the backlog is read, so holding back (and letting TCP stop the
    // broker) would end in a keep-alive timeout instead.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut poller = tokio::spawn(poll_events(events, client.clone(), cfg.filters(), tx));
    // The other connections after the subscription: what arrives while
    // they open waits in the channel (a first start has no session yet, and
    // the broker keeps nothing for a subscription it does not have).
    let mut stores = vec![store];
    if let backend @ Backend::Postgres { .. } = cfg.database.backend() {
        for _ in 1..cfg.database.connections {
            match Store::open(&backend).await {
                Ok(s) => stores.push(s),
                Err(e) => {
                    poller.abort();
                    return Err(e);
                }
            }
        }
    }
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut to_lanes = Vec::with_capacity(stores.len());
    let mut lanes = futures_util::stream::FuturesUnordered::new();
    for store in stores {
        let (to_lane, from_run) = tokio::sync::mpsc::unbounded_channel();
        to_lanes.push(to_lane);
        lanes.push(lane(store, &cfg, from_run, done_tx.clone()));
    }
    drop(done_tx);
    tokio::pin!(shutdown);
    let mut unacked = InOrder::default();
    let failed = loop {
        tokio::select! {
            () = &mut shutdown => break None,
            p = rx.recv() => {
                let Some(p) = p else { break None };
                // Everything that has arrived, before a lane is polled
                // again: a lane's batch is what waits for it when it starts.
                let mut next = Some(p);
                while let Some(p) = next {
                    let lane = lane_of(&cfg, &p, to_lanes.len());
                    let n = unacked.push(p.clone());
                    // A lane ends only on an error, which a branch below takes.
                    let _ = to_lanes[lane].send((n, p));
                    next = rx.try_recv().ok();
                }
            }
            Some(done) = done_rx.recv() => {
                for (n, outcome) in done {
                    unacked.done(n, outcome);
                }
                // Committed, and so is every message before: now the broker
                // may forget it. The event loop keeps taking requests, so
                // this waits only while it catches up.
                while let Some((p, outcome)) = unacked.pop_ready() {
                    log_outcome(&p.topic, &outcome);
                    if let Err(e) = client.ack(&p).await {
                        tracing::warn!(error = %e, "Ack not queued; the broker will resend");
                    }
                }
            }
            Some(ended) = futures_util::StreamExt::next(&mut lanes) => {
                // A lane stops only on an error that is not transient.
                break ended.err();
            }
        }
    };
    // Shutdown while the database is away: stop without the acks; an open
    // transaction rolls back when its lane is dropped.
    drop(lanes);
    if let Some(e) = failed {
        poller.abort();
        return Err(e);
    }
    // Say goodbye: the acks queued so far, then DISCONNECT; the event loop
    // ends once the broker has closed the connection (or after 5 s).
    // Messages delivered meanwhile are not acked: the session keeps them.
    drop(rx);
    if client.disconnect().await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut poller).await;
    }
    poller.abort();
    Ok(())
}

/// The messages not yet acked, in arrival order, each with its outcome
/// once its lane has committed it. Lanes finish in any order; a message
/// is ready to ack once it and every message before it are committed.
struct InOrder<T> {
    waiting: VecDeque<(T, Option<Handled>)>,
    /// The arrival number of `waiting[0]`.
    first: u64,
}

impl<T> Default for InOrder<T> {
    fn default() -> Self {
        InOrder {
            waiting: VecDeque::new(),
            first: 0,
        }
    }
}

impl<T> InOrder<T> {
    /// Queues a message; its arrival number.
    fn push(&mut self, message: T) -> u64 {
        self.waiting.push_back((message, None));
        self.first + self.waiting.len() as u64 - 1
    }

    /// Records the outcome of message `n`.
    fn done(&mut self, n: u64, outcome: Handled) {
        let slot = n
            .checked_sub(self.first)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.waiting.get_mut(i));
        if let Some(slot) = slot {
            slot.1 = Some(outcome);
        }
    }

    /// The oldest message, if it is committed.
    fn pop_ready(&mut self) -> Option<(T, Handled)> {
        if !self.waiting.front().is_some_and(|(_, h)| h.is_some()) {
            return None;
        }
        let (message, outcome) = self.waiting.pop_front()?;
        self.first += 1;
        Some((message, outcome?))
    }
}

/// The lane of a message: by a hash of its gateway, so that a gateway
/// always goes to the same lane and its messages keep their order. The
/// gateway locks a lane takes (see the module note) are then its own, and
/// lanes never wait for each other.
fn lane_of(cfg: &Config, p: &Publish, lanes: usize) -> usize {
    topic::parse(&cfg.mqtt.topic_prefix, &p.topic).map_or(0, |t| {
        let mut h = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(t.gateway_id, &mut h);
        usize::try_from(std::hash::Hasher::finish(&h) % lanes.max(1) as u64).unwrap_or(0)
    })
}

/// One connection's loop: takes every message waiting for it (up to
/// [`MAX_BATCH`]), commits them in one transaction, and reports their
/// outcomes by arrival number. On PostgreSQL a transaction spends most of
/// its time waiting for the server, so lanes side by side ingest several
/// times as fast as one. Ends when `run` drops its sender, or on an error
/// that is not transient.
async fn lane(
    mut store: Store,
    cfg: &Config,
    mut from_run: tokio::sync::mpsc::UnboundedReceiver<(u64, Publish)>,
    done: tokio::sync::mpsc::UnboundedSender<Vec<(u64, Handled)>>,
) -> Result<(), StoreError> {
    let mut batch: Vec<(u64, Publish)> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = from_run.recv().await {
        batch.push(first);
        // The MQTT task and `run` share this thread: let them hand over
        // what has arrived meanwhile. A SQLite commit blocks the thread, so
        // without this turn the next batch would start with whatever was
        // dispatched first, often one message.
        tokio::task::yield_now().await;
        while batch.len() < MAX_BATCH {
            match from_run.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let messages: Vec<(&str, &[u8])> = batch
            .iter()
            .map(|(_, p)| (p.topic.as_str(), &p.payload[..]))
            .collect();
        let outcomes = handle_batch_retrying(&mut store, cfg, &messages).await?;
        // Every message needs its outcome; one without would be acked
        // unstored, so a short answer is an error, never a default.
        if outcomes.len() != batch.len() {
            return Err(StoreError::Invalid(
                "a batch gave fewer outcomes than messages".into(),
            ));
        }
        let numbered = batch.drain(..).map(|(n, _)| n).zip(outcomes).collect();
        if done.send(numbered).is_err() {
            break;
        }
    }
    Ok(())
}

/// Drives the MQTT connection: subscribes at every connect, reconnects
/// after a loss, and hands each message to the ingest loop.
async fn poll_events(
    mut events: rumqttc::EventLoop,
    client: AsyncClient,
    filters: Vec<String>,
    to_ingest: tokio::sync::mpsc::UnboundedSender<Publish>,
) {
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                tracing::info!(session_present = ack.session_present, "Connected");
                // Subscribing again is harmless with a present session and
                // needed without one.
                for f in &filters {
                    if let Err(e) = client.try_subscribe(f.clone(), QoS::AtLeastOnce) {
                        tracing::warn!(filter = %f, error = %e, "Subscribe not queued");
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                // After the ingest loop has stopped, a message is left
                // unacked for the session to deliver again.
                let _ = to_ingest.send(p);
            }
            Ok(_) => {}
            // The ingest loop has stopped and asked to disconnect: the
            // broker closed the connection, or it broke; either way, done.
            Err(_) if to_ingest.is_closed() => return,
            Err(e) => {
                tracing::warn!(error = %e, "MQTT connection lost; reconnecting in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lanes report out of order; acks go out in arrival order, each only
    /// when every earlier message is committed.
    #[test]
    fn a_message_is_ready_to_ack_only_after_every_earlier_one() {
        let mut q = InOrder::default();
        let n: Vec<u64> = ["a", "b", "c", "d"]
            .into_iter()
            .map(|m| q.push(m))
            .collect();
        assert_eq!(n, [0, 1, 2, 3]);
        q.done(2, Handled::Stored);
        q.done(1, Handled::Duplicate);
        assert_eq!(q.pop_ready(), None, "a is not committed yet");
        q.done(0, Handled::Stored);
        assert_eq!(q.pop_ready(), Some(("a", Handled::Stored)));
        assert_eq!(q.pop_ready(), Some(("b", Handled::Duplicate)));
        assert_eq!(q.pop_ready(), Some(("c", Handled::Stored)));
        assert_eq!(q.pop_ready(), None, "d is not committed yet");
        assert_eq!(q.push("e"), 4, "numbers go on after the acked ones");
        q.done(4, Handled::Stored);
        q.done(3, Handled::Stored);
        assert_eq!(q.pop_ready(), Some(("d", Handled::Stored)));
        assert_eq!(q.pop_ready(), Some(("e", Handled::Stored)));
        assert_eq!(q.pop_ready(), None);
        q.done(1, Handled::Stored); // long acked: ignored
        assert_eq!(q.pop_ready(), None);
    }
}
