//! The thread that owns the outbox: it takes poll cycles, appends, acks
//! and queries, gathers writes in the commit window (see [`super::window`])
//! and commits them. It runs its own single-threaded runtime, so blocking
//! on SQLite never stalls a network task.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::outbox::{Committed, Evicted, Outbox};
use super::window::{Pending, Window};
use super::{Batch, BufferError, NewRow, Row, SinkBit, Stats, WindowData, ENVELOPE_RESERVE};
use crate::chain::ChainEntry;
use crate::clock::Clock;
use crate::config::BufferConfig;
use crate::loglimit::LogLimiter;
use crate::watchdog::Progress;

type Reply<T> = oneshot::Sender<Result<T, BufferError>>;

/// Requests to the outbox thread from the sinks, the metrics and the CLI.
pub enum Control {
    /// Append a non-telemetry message (metrics), with meta values that
    /// must change in the same transaction (e.g. "this window is closed").
    Append(NewRow, Vec<(String, i64)>),
    /// As `Append`, with the digest-chain entry of a closed window.
    AppendSealed(NewRow, Vec<(String, i64)>, Box<ChainEntry>),
    /// The last chain entry: (index, digest).
    ChainHead(Reply<Option<(u64, String)>>),
    /// Transitions and samples for a window, for the metrics.
    WindowData {
        from: i64,
        to: i64,
        reply: Reply<WindowData>,
    },
    /// A meta value.
    Meta {
        key: String,
        reply: Reply<Option<i64>>,
    },
    /// Rows after `after` that the sink `bit` owes, at most `limit`.
    Lease {
        bit: SinkBit,
        after: i64,
        limit: usize,
        reply: Reply<Vec<Row>>,
    },
    /// The sink's broker acknowledged these seqs. Sent on a channel of its
    /// own (see [`BufferClient::ack`]) and turned into this on arrival.
    Ack(SinkBit, Vec<i64>),
    Stats(Reply<Stats>),
    /// The sink called `name`'s bit, if the outbox knows it.
    SinkBit {
        name: String,
        reply: oneshot::Sender<Option<SinkBit>>,
    },
    /// A sink came up (`up`) or went down, with why; the evidence report
    /// lists the outages.
    UplinkEvent {
        ts: i64,
        up: bool,
        reason: Option<String>,
    },
    /// Stop taking requests once the readings channel is closed too; sent
    /// at shutdown so that stray client clones cannot keep the thread alive.
    Close,
}

/// Cheap handle to the outbox thread.
#[derive(Clone)]
pub struct BufferClient {
    control: mpsc::Sender<Control>,
    /// Acks have their own channel so that, like poll cycles, they need not
    /// wake the outbox thread while a commit window is open: they only
    /// join it. Leases and queries on `control` always wake it.
    acks: mpsc::Sender<(SinkBit, Vec<i64>)>,
}

impl BufferClient {
    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Control) -> Result<T, BufferError> {
        let (reply, rx) = oneshot::channel();
        self.control
            .send(make(reply))
            .await
            .map_err(|_| BufferError::Stopped)?;
        rx.await.map_err(|_| BufferError::Stopped)?
    }

    async fn tell(&self, c: Control) -> Result<(), BufferError> {
        self.control.send(c).await.map_err(|_| BufferError::Stopped)
    }

    /// Rows after `after` that the sink `bit` still owes.
    pub async fn lease(
        &self,
        bit: SinkBit,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Row>, BufferError> {
        self.ask(|reply| Control::Lease {
            bit,
            after,
            limit,
            reply,
        })
        .await
    }

    /// The sink `bit`'s broker acknowledged `seqs`.
    pub async fn ack(&self, bit: SinkBit, seqs: Vec<i64>) {
        let _ = self.acks.send((bit, seqs)).await;
    }

    pub async fn append(&self, row: NewRow, meta: Vec<(String, i64)>) -> Result<(), BufferError> {
        self.tell(Control::Append(row, meta)).await
    }

    /// Appends a closed window's metrics row and its chain entry atomically.
    pub async fn append_sealed(
        &self,
        row: NewRow,
        meta: Vec<(String, i64)>,
        entry: ChainEntry,
    ) -> Result<(), BufferError> {
        self.tell(Control::AppendSealed(row, meta, Box::new(entry)))
            .await
    }

    pub async fn chain_head(&self) -> Result<Option<(u64, String)>, BufferError> {
        self.ask(Control::ChainHead).await
    }

    pub async fn window_data(&self, from: i64, to: i64) -> Result<WindowData, BufferError> {
        self.ask(|reply| Control::WindowData { from, to, reply })
            .await
    }

    pub async fn meta(&self, key: &str) -> Result<Option<i64>, BufferError> {
        let key = key.to_string();
        self.ask(|reply| Control::Meta { key, reply }).await
    }

    /// The bit of the sink called `name`.
    pub async fn sink_bit(&self, name: &str) -> Result<Option<SinkBit>, BufferError> {
        let (reply, rx) = oneshot::channel();
        self.tell(Control::SinkBit {
            name: name.to_string(),
            reply,
        })
        .await?;
        rx.await.map_err(|_| BufferError::Stopped)
    }

    /// Records that a sink came up or went down.
    pub async fn uplink_event(&self, ts: i64, up: bool, reason: Option<String>) {
        let _ = self.tell(Control::UplinkEvent { ts, up, reason }).await;
    }

    /// Asks the outbox thread to finish once its input is drained.
    pub async fn close(&self) {
        let _ = self.tell(Control::Close).await;
    }

    pub async fn stats(&self) -> Result<Stats, BufferError> {
        self.ask(Control::Stats).await
    }
}

/// Handles to a running outbox thread.
pub struct BufferHandles {
    /// The plant stage sends each poll cycle here.
    pub readings: mpsc::Sender<Batch>,
    pub client: BufferClient,
    /// The last committed seq; the sinks wake on changes.
    pub appended: watch::Receiver<i64>,
    /// Joins when both senders are gone and everything is committed.
    pub thread: std::thread::JoinHandle<()>,
}

/// Starts the outbox thread.
pub fn spawn(outbox: Outbox, cfg: &BufferConfig, clock: Arc<dyn Clock>) -> BufferHandles {
    spawn_with_progress(outbox, cfg, clock, Progress::new())
}

/// The thread's inputs, each with whether it is still open.
struct Inputs {
    readings: mpsc::Receiver<Batch>,
    readings_open: bool,
    control: mpsc::Receiver<Control>,
    control_open: bool,
    acks: mpsc::Receiver<(SinkBit, Vec<i64>)>,
    acks_open: bool,
}

impl Inputs {
    /// Moves what is already queued into the window, without waiting: it
    /// costs no wait, and under load it is what keeps commits large.
    fn drain_into(&mut self, outbox: &Outbox, pending: &mut Pending) {
        while !pending.full() {
            match self.readings.try_recv() {
                Ok(b) => pending.batch(b),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.readings_open = false;
                    break;
                }
            }
        }
        self.drain_acks(outbox, pending);
        while let Ok(c) = self.control.try_recv() {
            if let Control::Close = c {
                self.control_open = false;
                break;
            }
            take(outbox, pending, c);
        }
    }

    /// Moves the acks already sent into the window, without waiting.
    fn drain_acks(&mut self, outbox: &Outbox, pending: &mut Pending) {
        while let Ok((bit, seqs)) = self.acks.try_recv() {
            take(outbox, pending, Control::Ack(bit, seqs));
        }
    }
}

/// Gives a request to the window, answering a lease at once when
/// committed rows can answer it.
fn take(outbox: &Outbox, pending: &mut Pending, c: Control) {
    if let Some(Control::Lease {
        bit,
        after,
        limit,
        reply,
    }) = pending.control(c)
    {
        let _ = reply.send(outbox.lease(bit, after, limit));
    }
}

/// [`spawn`], bumping `progress` on every iteration of the outbox loop
/// (and on an idle tick), for the systemd watchdog.
pub fn spawn_with_progress(
    mut outbox: Outbox,
    cfg: &BufferConfig,
    clock: Arc<dyn Clock>,
    progress: Arc<Progress>,
) -> BufferHandles {
    let (readings_tx, readings_rx) = mpsc::channel::<Batch>(1024);
    let (control_tx, control_rx) = mpsc::channel::<Control>(256);
    let (acks_tx, acks_rx) = mpsc::channel(256);
    let (appended_tx, appended_rx) = watch::channel(0i64);
    let max_body = cfg
        .max_message_bytes
        .saturating_sub(ENVELOPE_RESERVE)
        .max(256);
    let length = cfg.commit_window;
    #[allow(
        clippy::expect_used,
        reason = "as with std::thread::spawn: an agent that cannot start a thread at start-up cannot run"
    )]
    let thread = std::thread::Builder::new()
        .name("outbox".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "Cannot start the outbox thread's runtime; no readings will be stored");
                    return;
                }
            };
            let mut inputs = Inputs {
                readings: readings_rx,
                readings_open: true,
                control: control_rx,
                control_open: true,
                acks: acks_rx,
                acks_open: true,
            };
            let mut thread = Thread {
                clock_watch: ClockWatch::default(),
                log: LogLimiter::new(Duration::from_secs(60)),
                max_body,
                clock,
                appended: appended_tx,
                progress,
            };
            rt.block_on(thread.run(&mut outbox, &mut inputs, length));
        })
        .expect("spawning the outbox thread");
    BufferHandles {
        readings: readings_tx,
        client: BufferClient {
            control: control_tx,
            acks: acks_tx,
        },
        appended: appended_rx,
        thread,
    }
}

/// The outbox thread's own state besides the outbox.
struct Thread {
    clock_watch: ClockWatch,
    /// Eviction ERRORs, at most one a minute with the counts in between.
    log: LogLimiter,
    /// Largest stored body, so a published message fits `max_message_bytes`.
    max_body: usize,
    clock: Arc<dyn Clock>,
    /// The last committed seq, for the sinks.
    appended: watch::Sender<i64>,
    progress: Arc<Progress>,
}

impl Thread {
    async fn run(&mut self, outbox: &mut Outbox, inputs: &mut Inputs, length: Duration) {
        let mut window = Window::new(length);
        let mut beat = tokio::time::interval(crate::watchdog::HEARTBEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Evictions since the last ERROR line, reported with the next one.
        let mut evicted = Evicted::default();
        loop {
            self.progress.outbox_beat();
            let closed = !inputs.readings_open && !inputs.control_open;
            // Without a control channel the agent is stopping (or nobody
            // can read the outbox any more): no window.
            let stopping = !inputs.control_open;
            if window.due(tokio::time::Instant::now(), stopping) {
                inputs.drain_into(outbox, &mut window.pending);
                let filled = window.pending.full();
                self.clock_watch.check(self.clock.now_ms());
                let p = window.take(filled);
                let running = inputs.readings_open;
                if let Some(e) = self.process(outbox, p, running).await {
                    evicted.merge(e);
                    self.log_evicted(&mut evicted);
                }
                continue;
            }
            if closed {
                break;
            }
            let deadline = window.deadline();
            tokio::select! {
                b = inputs.readings.recv(), if inputs.readings_open && window.hears_cycles(stopping) => match b {
                    Some(b) => window.pending.batch(b),
                    None => inputs.readings_open = false,
                },
                a = inputs.acks.recv(), if inputs.acks_open && window.hears_acks(stopping) => match a {
                    Some((bit, seqs)) => take(outbox, &mut window.pending, Control::Ack(bit, seqs)),
                    None => inputs.acks_open = false,
                },
                c = inputs.control.recv(), if inputs.control_open => match c {
                    Some(Control::Close) | None => inputs.control_open = false,
                    Some(c) => {
                        // A lease must see the acks sent before it.
                        inputs.drain_acks(outbox, &mut window.pending);
                        take(outbox, &mut window.pending, c);
                    }
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {}
                // Idle tick: a quiet outbox still shows it is alive.
                _ = beat.tick() => {}
            }
            window.opened(tokio::time::Instant::now());
        }
        tracing::debug!("Outbox closed");
    }

    /// Eviction is data loss: an operator must hear of it, with the counts
    /// and the sinks that held the rows back, but not once per commit.
    fn log_evicted(&mut self, evicted: &mut Evicted) {
        if let Some(suppressed) = self.log.check("evicted") {
            let sinks = evicted
                .by_sink
                .iter()
                .map(|(name, (rows, readings))| format!("{name}: {rows} rows, {readings} readings"))
                .collect::<Vec<_>>()
                .join("; ");
            tracing::error!(
                rows = evicted.rows, readings = evicted.readings, held_back_by = %sinks, suppressed,
                "Outbox full: oldest rows evicted and lost; a sink is down or too slow, or buffer.max_bytes is too small"
            );
            *evicted = Evicted::default();
        }
    }

    /// A full disk is its own kind: the operator must free space, and the
    /// outbox makes room meanwhile by evicting the oldest telemetry. It
    /// recurs every time the reused pages run out, so it is logged at most
    /// once a minute; `status` shows it as `disk_full`.
    fn disk_full(&mut self, outbox: &mut Outbox, e: &BufferError, readings: usize, attempt: u32) {
        if let Some(suppressed) = self.log.check("disk_full") {
            tracing::error!(
                state_dir = %outbox.dir().display(), error = %e, readings, attempt, suppressed,
                "Disk full: the outbox cannot grow, so its oldest telemetry is evicted to make room; free space on the state_dir's file system or lower buffer.max_bytes"
            );
        }
        if let Err(e) = outbox.evict_for_space(64, self.clock.now_ms()) {
            tracing::error!(error = %e, "Cannot free space in the outbox; holding the readings in memory and retrying");
        }
    }

    /// Commits what a window gathered, then answers the queries that
    /// waited for it. Returns what the cap evicted.
    async fn process(&mut self, outbox: &mut Outbox, p: Pending, running: bool) -> Option<Evicted> {
        let mut rows = outbox.encode_telemetry(&p.batches, self.max_body);
        let mut batch = Batch::default();
        for b in p.batches {
            batch.readings.extend(b.readings);
            batch.transitions.extend(b.transitions);
            batch.samples.extend(b.samples);
        }
        let mut acks = Vec::new();
        let mut meta = Vec::new();
        let mut seals = Vec::new();
        let mut queries = Vec::new();
        for c in p.controls {
            match c {
                Control::Append(r, m) => {
                    rows.push(r);
                    meta.extend(m);
                }
                Control::AppendSealed(r, m, e) => {
                    rows.push(r);
                    meta.extend(m);
                    seals.push(*e);
                }
                Control::Ack(bit, s) => acks.extend(s.into_iter().map(|seq| (bit, seq))),
                q => queries.push(q),
            }
        }
        let mut evicted = None;
        if !rows.is_empty()
            || !acks.is_empty()
            || !batch.readings.is_empty()
            || !batch.transitions.is_empty()
        {
            let committed = self
                .commit(outbox, &rows, &batch, &acks, &meta, &seals, running)
                .await;
            if let Some(c) = committed {
                if c.appended {
                    self.appended.send_replace(c.last_seq);
                }
                evicted = c.evicted;
            }
        }
        for q in queries {
            answer(outbox, q);
        }
        evicted
    }

    /// Commits, retrying while the disk is full or the write fails: a
    /// restart would lose the readings held here, not fix the disk.
    #[allow(
        clippy::too_many_arguments,
        reason = "the parts of one commit, passed through to Outbox::commit_sealed as they are"
    )]
    async fn commit(
        &mut self,
        outbox: &mut Outbox,
        rows: &[NewRow],
        batch: &Batch,
        acks: &[(SinkBit, i64)],
        meta: &[(String, i64)],
        seals: &[ChainEntry],
        running: bool,
    ) -> Option<Committed> {
        let mut attempt = 0u32;
        loop {
            match outbox.commit_sealed(rows, batch, acks, meta, seals, self.clock.now_ms()) {
                Ok(c) => return Some(c),
                Err(e) => {
                    attempt += 1;
                    // Retrying a failed write is progress.
                    self.progress.outbox_beat();
                    if e.is_disk_full() {
                        self.disk_full(outbox, &e, batch.readings.len(), attempt);
                    } else {
                        tracing::error!(
                            error = %e, readings = batch.readings.len(), attempt,
                            "Cannot write to the outbox; holding the readings in memory and retrying"
                        );
                    }
                    // While shutting down there is no one left to wait for.
                    if !running && attempt >= 5 {
                        tracing::error!(
                            readings = batch.readings.len(),
                            "Giving up on the outbox at shutdown; these readings are lost"
                        );
                        return None;
                    }
                    tokio::time::sleep(
                        Duration::from_secs(1).min(Duration::from_millis(100) * attempt),
                    )
                    .await;
                }
            }
        }
    }
}

/// Answers a query that waited for the commit.
fn answer(outbox: &Outbox, q: Control) {
    match q {
        Control::Lease {
            bit,
            after,
            limit,
            reply,
        } => {
            let _ = reply.send(outbox.lease(bit, after, limit));
        }
        Control::Stats(reply) => {
            let _ = reply.send(outbox.stats());
        }
        Control::SinkBit { name, reply } => {
            let _ = reply.send(outbox.sink_bit(&name));
        }
        Control::UplinkEvent { ts, up, reason } => {
            if let Err(e) = outbox.record_uplink(ts, up, reason.as_deref()) {
                tracing::warn!(error = %e, "Cannot record an uplink event");
            }
        }
        Control::WindowData { from, to, reply } => {
            let _ = reply.send(super::window_data(outbox.conn(), from, to).map_err(Into::into));
        }
        Control::Meta { key, reply } => {
            let _ = reply.send(outbox.meta(&key));
        }
        Control::ChainHead(reply) => {
            let _ = reply.send(super::chain_head(outbox.conn()).map_err(Into::into));
        }
        Control::Append(..) | Control::AppendSealed(..) | Control::Ack(..) | Control::Close => {}
    }
}

/// Notices the system clock stepping backwards. Timestamps are evidence, so
/// the operator must hear about it; seqs are unaffected (they come from
/// SQLite, not the clock), and the state tracker never dates a transition
/// before the previous one.
#[derive(Default)]
pub struct ClockWatch {
    /// The latest time seen so far.
    high: Option<i64>,
}

impl ClockWatch {
    /// Returns how far the clock went back, if it did by more than a second.
    pub fn check(&mut self, now: i64) -> Option<i64> {
        let high = self.high.get_or_insert(now);
        let back = *high - now;
        *high = (*high).max(now);
        if back > 1_000 {
            tracing::warn!(
                stepped_back_ms = back,
                "System clock stepped backwards; readings are stamped with the new time, check NTP on this gateway"
            );
            // Warn once per step, not on every commit until time catches up.
            *high = now;
            return Some(back);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::window::MAX_ITEMS_PER_COMMIT;
    use crate::buffer::{read_stats, Kind, Publish, Route};
    use crate::clock::SystemClock;
    use crate::config::Synchronous;
    use crate::reading::Reading;
    use crate::reading::{Quality, Value};
    use std::path::Path;
    use std::sync::Arc;

    /// Long enough that a test passing within its timeout proves the
    /// window did not have to end for it.
    const HOUR: Duration = Duration::from_secs(3600);
    /// A bound on how long a test waits for the outbox thread, not a pause.
    const PATIENCE: Duration = Duration::from_secs(20);

    fn start(dir: &Path, window: Duration) -> BufferHandles {
        let cfg = BufferConfig {
            synchronous: Synchronous::Full,
            max_bytes: 1 << 30,
            max_rows: None,
            max_message_bytes: 64 * 1024,
            commit_window: window,
        };
        let all = Route {
            name: "platform".into(),
            metrics: true,
            states: true,
            telemetry: Some(None),
        };
        let outbox = Outbox::open(dir, &cfg, &[all]).expect("open outbox");
        spawn(outbox, &cfg, Arc::new(SystemClock))
    }

    fn batch(n: usize) -> Batch {
        Batch {
            readings: (0..n)
                .map(|i| Reading {
                    device: "d".into(),
                    tag: format!("t{i}").into(),
                    value: Some(Value::Int(i as i64)),
                    quality: Quality::Good,
                    ts: 1_000 + i as i64,
                })
                .collect(),
            publish: Publish::All,
            ..Default::default()
        }
    }

    fn metrics_row() -> NewRow {
        NewRow::new(Kind::Metrics, 1, br#""window":{"kind":"hour"}"#.to_vec())
    }

    async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
        match tokio::time::timeout(PATIENCE, f).await {
            Ok(v) => v,
            Err(_) => panic!("{what} did not happen within {PATIENCE:?}"),
        }
    }

    async fn stop(h: BufferHandles) {
        drop(h.readings);
        h.client.close().await;
        let thread = h.thread;
        within(
            "the outbox thread ending",
            tokio::task::spawn_blocking(move || thread.join()),
        )
        .await
        .expect("join task")
        .expect("outbox thread");
    }

    #[tokio::test]
    async fn a_lease_is_answered_during_the_window_with_committed_rows_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let h = start(dir.path(), HOUR);
        // The control channel is FIFO: the append is in the window when
        // the lease is taken.
        h.client
            .append(metrics_row(), vec![])
            .await
            .expect("append");
        let leased = within("a lease", h.client.lease(0, 0, 10))
            .await
            .expect("lease");
        assert!(leased.is_empty(), "a row still in the window was leased");
        // A query closes the window, so it reads what was sent before it.
        let s = within("stats", h.client.stats()).await.expect("stats");
        assert_eq!(s.rows, 1);
        let leased = within("a lease", h.client.lease(0, 0, 10))
            .await
            .expect("lease");
        assert_eq!(leased.len(), 1);
        stop(h).await;
    }

    #[tokio::test]
    async fn shutdown_commits_the_open_window() {
        let dir = tempfile::tempdir().expect("tempdir");
        let h = start(dir.path(), HOUR);
        h.readings.send(batch(7)).await.expect("send");
        stop(h).await;
        let s = read_stats(dir.path()).expect("stats");
        assert_eq!(s.appended_readings, 7);
        assert_eq!(s.rows, 1);
    }

    #[tokio::test]
    async fn a_full_window_commits_without_waiting_for_its_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut h = start(dir.path(), HOUR);
        h.readings
            .send(batch(MAX_ITEMS_PER_COMMIT))
            .await
            .expect("send");
        within("the commit", h.appended.changed())
            .await
            .expect("outbox running");
        assert!(*h.appended.borrow() > 0);
        stop(h).await;
    }

    #[tokio::test]
    async fn a_zero_window_commits_each_batch_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut h = start(dir.path(), Duration::ZERO);
        h.readings.send(batch(1)).await.expect("send");
        within("the commit", h.appended.changed())
            .await
            .expect("outbox running");
        stop(h).await;
    }

    #[tokio::test]
    async fn an_ack_in_the_window_is_committed_before_a_lease_from_below_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let h = start(dir.path(), HOUR);
        h.client
            .append(metrics_row(), vec![])
            .await
            .expect("append");
        h.client
            .append(metrics_row(), vec![])
            .await
            .expect("append");
        within("stats", h.client.stats()).await.expect("stats");
        let rows = within("a lease", h.client.lease(0, 0, 10))
            .await
            .expect("lease");
        let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        assert_eq!(seqs.len(), 2);
        h.client.ack(0, vec![seqs[0]]).await;
        // From above the ack (the uplink's usual cursor): no commit needed.
        let after = within("a lease", h.client.lease(0, seqs[1], 10))
            .await
            .expect("lease");
        assert!(after.is_empty());
        // From below it (a reconnect starts at 0): the ack is applied first.
        let again = within("a lease", h.client.lease(0, 0, 10))
            .await
            .expect("lease");
        assert_eq!(
            again.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![seqs[1]]
        );
        stop(h).await;
    }
}
