//! The commit window, as a state machine with no I/O: what the outbox
//! thread has gathered for its next commit, when that commit is due, and
//! which inputs may wake the thread meanwhile.
//!
//! The first write after a commit opens a window of `buffer.commit_window`;
//! what arrives within it shares the commit (and its fsync). The window
//! closes early when it holds [`MAX_ITEMS_PER_COMMIT`] items or
//! [`MAX_BATCHES_PER_COMMIT`] cycles, when a query must read what was
//! written, and at shutdown. While it is open, poll cycles and acks do not
//! wake the thread: they wait in their channels and are taken when it
//! closes (wake-ups, not SQLite, are most of the agent's cost at plant
//! load). A commit that fills up makes the thread listen through the next
//! window, so that under load full windows commit back to back. Acks alone
//! wait up to [`ACK_WAIT`] for data to share a commit with.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::thread::Control;
use super::{Batch, SinkBit};

/// A window ends early after this many poll cycles, so that memory and the
/// length of one transaction stay bounded when cycles queue up.
pub const MAX_BATCHES_PER_COMMIT: usize = 256;

/// A window also ends early at this many readings, acks and appended rows.
/// From about 10,000 readings per commit an fsync no longer shows in the
/// cost of a commit (see BENCHMARKS.md), so waiting longer saves nothing,
/// and a long transaction would keep leases waiting.
pub const MAX_ITEMS_PER_COMMIT: usize = 10_000;

/// How long acks alone wait for a write to share a commit with. The
/// sinks' acks arrive just after each commit; with a window of their own
/// they would double the commits (and fsyncs) at plant load, where the
/// next poll cycles come within this time anyway. An ack not yet committed
/// only means that its row may be sent again after a crash.
pub const ACK_WAIT: Duration = Duration::from_secs(1);

/// Writes gathered for the next commit, and the requests that must see it.
#[derive(Default)]
pub struct Pending {
    pub batches: Vec<Batch>,
    /// Writes (appends, acks) and the queries answered after the commit.
    pub controls: Vec<Control>,
    /// Readings, acked seqs and appended rows: what bounds the window.
    items: usize,
    /// Per sink, the highest acked seq not yet committed: a lease from
    /// below it would hand out a row whose ack is still waiting.
    max_ack: HashMap<SinkBit, i64>,
    /// A query is waiting for the commit, so the window closes now: it
    /// must see what was sent before it (read your own writes).
    query: bool,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty() && self.controls.is_empty()
    }

    /// Holds something other than acks (which can wait, see [`ACK_WAIT`]).
    fn has_data(&self) -> bool {
        !self.batches.is_empty() || self.controls.iter().any(|c| !matches!(c, Control::Ack(..)))
    }

    pub fn full(&self) -> bool {
        self.batches.len() >= MAX_BATCHES_PER_COMMIT || self.items >= MAX_ITEMS_PER_COMMIT
    }

    pub fn batch(&mut self, b: Batch) {
        self.items += b.readings.len();
        self.batches.push(b);
    }

    /// Takes one request. Writes join the window; any other query waits
    /// for the commit, except a lease that committed rows can answer,
    /// which is handed back to be answered at once.
    pub fn control(&mut self, c: Control) -> Option<Control> {
        match c {
            Control::Append(..) | Control::AppendSealed(..) => {
                self.items += 1;
                self.controls.push(c);
            }
            Control::Ack(bit, ref seqs) => {
                self.items += seqs.len();
                let top = seqs.iter().copied().max().unwrap_or(0);
                let m = self.max_ack.entry(bit).or_default();
                *m = (*m).max(top);
                self.controls.push(c);
            }
            // No transaction is open between commits, so a lease sees
            // committed rows only; the sink must not wait for the window.
            Control::Lease { bit, after, .. }
                if self.max_ack.get(&bit).is_none_or(|m| *m <= after) =>
            {
                return Some(c);
            }
            c => {
                self.query = true;
                self.controls.push(c);
            }
        }
        None
    }
}

/// The window: what is gathered and when it must be committed.
pub struct Window {
    pub pending: Pending,
    /// `buffer.commit_window`; zero commits every write at once.
    length: Duration,
    /// When the open window must be committed; set by its first write.
    deadline: Option<Instant>,
    /// The last commit filled up: listen through the next window too.
    busy: bool,
    /// The open window holds acks only, and waits for data.
    waiting_acks: bool,
}

impl Window {
    pub fn new(length: Duration) -> Window {
        Window {
            pending: Pending::default(),
            length,
            deadline: None,
            busy: false,
            waiting_acks: false,
        }
    }

    /// Whether the gathered writes must be committed now.
    pub fn due(&self, now: Instant, stopping: bool) -> bool {
        !self.pending.is_empty()
            && (stopping
                || self.deadline.is_some_and(|d| d <= now)
                || self.length.is_zero()
                || self.pending.full()
                || self.pending.query)
    }

    /// Whether poll cycles may wake the thread now.
    pub fn hears_cycles(&self, stopping: bool) -> bool {
        self.busy || stopping || self.waiting_acks || self.deadline.is_none()
    }

    /// Whether acks may wake the thread now.
    pub fn hears_acks(&self, stopping: bool) -> bool {
        self.busy || stopping || self.deadline.is_none()
    }

    /// When the thread must wake to commit, if a window is open.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// After input was taken: opens the window, or shortens a wait that
    /// acks alone started.
    pub fn opened(&mut self, now: Instant) {
        if self.pending.is_empty() {
            return;
        }
        if self.pending.has_data() {
            let end = now + self.length;
            self.deadline = Some(self.deadline.map_or(end, |d| d.min(end)));
            self.waiting_acks = false;
        } else if self.deadline.is_none() {
            self.deadline = Some(now + ACK_WAIT.max(self.length));
            self.waiting_acks = true;
        }
    }

    /// Hands over what was gathered and closes the window. `filled`: the
    /// commit reached its bound, so the next window listens throughout.
    pub fn take(&mut self, filled: bool) -> Pending {
        self.busy = filled;
        self.deadline = None;
        self.waiting_acks = false;
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::{Quality, Reading, Value};

    fn cycle() -> Batch {
        Batch {
            readings: vec![Reading {
                device: "d".into(),
                tag: "t".into(),
                value: Some(Value::Int(1)),
                quality: Quality::Good,
                ts: 1,
            }],
            ..Default::default()
        }
    }

    const W: Duration = Duration::from_millis(100);

    #[tokio::test(start_paused = true)]
    async fn a_cycle_opens_a_window_that_ends_after_its_length() {
        let mut w = Window::new(W);
        let t0 = Instant::now();
        assert!(w.hears_cycles(false), "an idle thread listens");
        w.pending.batch(cycle());
        w.opened(t0);
        assert!(!w.due(t0, false));
        assert!(
            !w.hears_cycles(false),
            "cycles wait while the window is open"
        );
        tokio::time::advance(W).await;
        assert!(w.due(Instant::now(), false));
        let p = w.take(false);
        assert_eq!(p.batches.len(), 1);
        assert!(w.hears_cycles(false));
        assert_eq!(w.deadline(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn acks_alone_wait_for_data_which_shortens_the_wait() {
        let mut w = Window::new(W);
        let t0 = Instant::now();
        assert!(w.pending.control(Control::Ack(0, vec![1, 2])).is_none());
        w.opened(t0);
        assert_eq!(w.deadline(), Some(t0 + ACK_WAIT));
        assert!(
            w.hears_cycles(false),
            "acks alone keep listening for cycles"
        );
        tokio::time::advance(Duration::from_millis(10)).await;
        w.pending.batch(cycle());
        w.opened(Instant::now());
        assert_eq!(w.deadline(), Some(Instant::now() + W));
        assert!(!w.hears_cycles(false));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_window_or_a_query_commits_at_once_and_a_full_one_keeps_listening() {
        let mut w = Window::new(W);
        let t0 = Instant::now();
        for _ in 0..MAX_BATCHES_PER_COMMIT {
            w.pending.batch(cycle());
        }
        w.opened(t0);
        assert!(w.due(t0, false));
        w.take(true);
        assert!(w.hears_cycles(false) && w.hears_acks(false));
        w.pending.batch(cycle());
        w.opened(t0);
        assert!(
            w.hears_cycles(false),
            "after a full commit the next window listens"
        );
        w.take(false);
        let (reply, _rx) = tokio::sync::oneshot::channel();
        assert!(w.pending.control(Control::Stats(reply)).is_none());
        w.opened(t0);
        assert!(w.due(t0, false), "a query closes the window");
    }

    #[test]
    fn a_lease_from_below_an_uncommitted_ack_of_its_sink_waits() {
        let mut p = Pending::default();
        p.control(Control::Ack(1, vec![5]));
        let lease = |bit, after| {
            let (reply, _rx) = tokio::sync::oneshot::channel();
            Control::Lease {
                bit,
                after,
                limit: 10,
                reply,
            }
        };
        assert!(p.control(lease(1, 5)).is_some(), "from above: at once");
        assert!(p.control(lease(0, 0)).is_some(), "another sink: at once");
        assert!(
            p.control(lease(1, 0)).is_none(),
            "from below: after the commit"
        );
    }
}
