//! The SQLite outbox: the single source of truth between sources and sinks.
//!
//! # Design
//!
//! * One durable log, a cursor per sink. Every row carries a bit mask of
//!   the sinks that still owe it a PUBACK (`pending`). A sink leases the
//!   rows with its bit set, in `seq` order; its PUBACK clears its bit, and
//!   the row is deleted when no bit is left. A sink that is down holds
//!   back only its own rows: the others lease past them. The sinks' names
//!   and bits are stored (`sinks`), so a restart keeps every sink's place.
//! * What a row carries (telemetry, metrics, states) decides which sinks
//!   owe it: a row that no sink carries is never written, so the default
//!   platform-only config stores no telemetry at all.
//! * Every row is one MQTT message. Telemetry is stored compactly (binary,
//!   see [`cycle`]) and encoded as JSON when it is published; metrics and
//!   states rows are stored as their JSON body. A row's content never
//!   changes after its commit, so a resend is the same message.
//! * A row's `seq` is an `AUTOINCREMENT` key: strictly increasing, never
//!   reused even after deletes, so the platform can use it for duplicate
//!   and gap detection. `msg_id` is `<instance>:<seq>`, where `instance`
//!   is random and fixed when the database file is created.
//! * Writes are group-committed (see [`window`]): the first write after a
//!   commit opens a window (`buffer.commit_window`, 100 ms by default) and
//!   what arrives within it shares one transaction, so one fsync serves
//!   every device whose poll cycle ended in those 100 ms.
//! * The window lives in memory, not in an open SQLite transaction: between
//!   commits nothing uncommitted is visible on the connection, so a lease,
//!   answered at once, can only hand out committed rows. A lease from below
//!   an ack still in the window (after a reconnect) waits for the commit.
//! * When the outbox is over its cap, the oldest telemetry rows are evicted
//!   first, then states, metrics rows last. Every eviction is counted, in
//!   total and for each sink that still owed the row, and logged at ERROR.
//!
//! The guarantees, in MUST/SHOULD words, are in docs/delivery.md.

pub mod cycle;
mod history;
mod outbox;
mod thread;
mod window;

use std::collections::HashMap;
use std::sync::Arc;

use crate::plant::{Sample, State, Transition};
use crate::reading::Reading;

pub use crate::plant::WindowData;
pub use cycle::encode_readings;
pub use history::{
    chain_entries, chain_head, open_read_only, read_stats, sample_minutes, uplink_events,
    window_data,
};
pub use outbox::{Evicted, Outbox, DB_FILE, RETENTION_MS};
pub use thread::{spawn, spawn_with_progress, BufferClient, BufferHandles, ClockWatch};

/// Each equipment's last persisted (state, since).
pub type Restored = HashMap<String, (State, i64)>;

/// Which readings of a cycle are published as telemetry (see
/// `telemetry.rs`); every reading still counts for the device's health.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum Publish {
    /// No sink carries telemetry.
    #[default]
    None,
    /// Every reading (report every cycle).
    All,
    /// The readings whose flag is set (report by exception).
    Only(Vec<bool>),
}

/// One poll cycle as the outbox stores it: the readings, and the equipment
/// state changes and samples derived from them, committed together.
#[derive(Debug, Default)]
pub struct Batch {
    pub readings: Vec<Reading>,
    /// Which of `readings` become telemetry.
    pub publish: Publish,
    pub transitions: Vec<Transition>,
    pub samples: Vec<Sample>,
}

/// Bytes we count per row on top of its body (key, columns, b-tree cell),
/// so a cap in bytes is roughly a cap on the file's data pages.
const ROW_OVERHEAD: u64 = 32;

/// How long `status` shows `disk_full` after a write last failed for want
/// of space. Freed pages are reused before the file grows again, so a full
/// disk fails only every so many commits; a flag cleared by the next good
/// commit would hardly ever be seen.
pub const DISK_FULL_HOLD_MS: i64 = 10 * 60 * 1000;

/// Room kept in every message for the envelope the uplink adds.
pub const ENVELOPE_RESERVE: usize = 1024;

/// What a row carries. The numbers are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Readings as `zgsz.telemetry/1` JSON, written by earlier versions;
    /// still published as they were stored.
    LegacyTelemetry = 0,
    Metrics = 1,
    /// Equipment state transitions (`zgsz.states/1`).
    States = 2,
    /// Poll cycles in the compact binary form of [`cycle`]
    /// (`zgsz.telemetry/3` or `/2` on the wire).
    Telemetry = 3,
}

impl Kind {
    fn from_i64(v: i64) -> Kind {
        match v {
            1 => Kind::Metrics,
            2 => Kind::States,
            3 => Kind::Telemetry,
            _ => Kind::LegacyTelemetry,
        }
    }

    /// The stream, which is also the last part of the topic.
    pub fn stream(self) -> Stream {
        match self {
            Kind::LegacyTelemetry | Kind::Telemetry => Stream::Telemetry,
            Kind::Metrics => Stream::Metrics,
            Kind::States => Stream::States,
        }
    }

    /// Eviction order: lower classes go first.
    fn evict_class(self) -> u8 {
        match self {
            Kind::LegacyTelemetry | Kind::Telemetry => 0,
            Kind::States => 1,
            Kind::Metrics => 2,
        }
    }
}

/// What a sink can carry; `status` is not stored in the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Telemetry,
    Metrics,
    States,
    Status,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Telemetry => "telemetry",
            Stream::Metrics => "metrics",
            Stream::States => "states",
            Stream::Status => "status",
        }
    }
}

/// What the outbox needs to know of a sink: which rows it owes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub name: String,
    pub metrics: bool,
    pub states: bool,
    /// `None`: no telemetry. `Some(None)`: every device's.
    pub telemetry: Option<Option<Vec<Arc<str>>>>,
}

impl Route {
    fn carries(&self, kind: Kind, device: Option<&str>) -> bool {
        match kind.stream() {
            Stream::Metrics => self.metrics,
            Stream::States => self.states,
            Stream::Telemetry => match &self.telemetry {
                None => false,
                Some(None) => true,
                Some(Some(devices)) => device.is_none_or(|d| devices.iter().any(|x| &**x == d)),
            },
            Stream::Status => false,
        }
    }
}

/// A sink's place in the outbox: the bit it owns in `pending`.
pub type SinkBit = u8;

/// A row to append.
#[derive(Debug, Clone)]
pub struct NewRow {
    pub kind: Kind,
    /// Readings (or other entries) inside, for the counters.
    pub count: u32,
    /// The stored body: JSON object members without braces (metrics,
    /// states), or a compact cycle record (telemetry).
    pub body: Vec<u8>,
    /// The sinks that owe this row; `None`: every sink that carries `kind`.
    pub to: Option<u64>,
}

impl NewRow {
    /// A row for every sink that carries `kind`.
    pub fn new(kind: Kind, count: u32, body: Vec<u8>) -> NewRow {
        NewRow {
            kind,
            count,
            body,
            to: None,
        }
    }
}

/// A row read back for sending.
#[derive(Debug, Clone)]
pub struct Row {
    pub seq: i64,
    pub kind: Kind,
    pub created_ms: i64,
    pub count: u32,
    pub body: Vec<u8>,
    /// The outbox's names, which a telemetry row's ids refer to (see
    /// [`cycle::Dictionary`]); shared, not copied, by every leased row.
    pub names: Arc<Vec<Arc<str>>>,
}

/// Last known state of one device, kept so `status` can answer offline.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DeviceHealth {
    pub id: String,
    pub last_good_ts: Option<i64>,
    pub last_bad_ts: Option<i64>,
    pub last_bad_reason: Option<String>,
    pub good: u64,
    pub bad: u64,
}

/// One sink's share of the outbox.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SinkStats {
    pub name: String,
    /// Whether the sink is connected now (in the status message only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connected: Option<bool>,
    /// Rows this sink still owes a PUBACK for.
    pub rows: u64,
    pub acked_rows: u64,
    /// Rows evicted while this sink still owed them, and what was in them.
    pub evicted_rows: u64,
    pub evicted_readings: u64,
    pub evicted_states: u64,
    pub evicted_metrics: u64,
}

/// Outbox figures for `status`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    pub instance: String,
    pub rows: u64,
    pub bytes: u64,
    pub oldest_unsent_ts: Option<i64>,
    pub last_seq: i64,
    pub last_ack_ts: Option<i64>,
    pub appended_readings: u64,
    pub acked_rows: u64,
    pub evicted_rows: u64,
    pub evicted_readings: u64,
    pub evicted_metrics: u64,
    pub evicted_states: u64,
    /// A write to the outbox failed for want of disk space less than
    /// [`DISK_FULL_HOLD_MS`] ago: the disk, not `buffer.max_bytes`, is what
    /// bounds the outbox, and the oldest telemetry is being evicted.
    pub disk_full: bool,
    /// When a write to the outbox last failed for want of disk space.
    pub disk_full_ts: Option<i64>,
    pub sinks: Vec<SinkStats>,
    /// Left out of the status sent to a sink that carries no telemetry.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceHealth>,
}

/// Why the outbox (or the thread that owns it) could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("cannot create the state directory {path}: {source}")]
    StateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("outbox database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("the outbox has room for at most 63 sinks")]
    TooManySinks,
    /// The file system holding the outbox has no room left: SQLite's
    /// SQLITE_FULL (a write that failed with ENOSPC, or the database at
    /// its `max_page_count`), or ENOSPC / EDQUOT from the file system.
    /// Its own kind: an operator must free space, and `status` shows it.
    #[error("the disk holding the outbox is full: {source}")]
    DiskFull {
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("outbox write failed: {0}")]
    Sql(rusqlite::Error),
    /// The outbox thread has stopped (the agent is shutting down).
    #[error("outbox stopped")]
    Stopped,
}

/// SQLite errors become [`BufferError::Sql`], except a full disk, which is
/// [`BufferError::DiskFull`] wherever it happens.
impl From<rusqlite::Error> for BufferError {
    fn from(e: rusqlite::Error) -> BufferError {
        if sqlite_full(&e) {
            BufferError::DiskFull {
                source: Box::new(e),
            }
        } else {
            BufferError::Sql(e)
        }
    }
}

impl BufferError {
    /// The disk (or the file system's quota) is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, BufferError::DiskFull { .. })
    }

    /// An error opening the database in `path`, unless it is a full disk.
    fn open(path: &std::path::Path, source: rusqlite::Error) -> BufferError {
        if sqlite_full(&source) {
            return source.into();
        }
        BufferError::Open {
            path: path.display().to_string(),
            source,
        }
    }

    /// An error creating the state directory `path`, unless it is a full
    /// disk (ENOSPC, or EDQUOT for a user over quota).
    fn state_dir(path: &std::path::Path, source: std::io::Error) -> BufferError {
        if matches!(
            source.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        ) {
            return BufferError::DiskFull {
                source: Box::new(source),
            };
        }
        BufferError::StateDir {
            path: path.display().to_string(),
            source,
        }
    }
}

/// SQLITE_FULL: what SQLite returns when a write fails with ENOSPC, or
/// when the database reached its `max_page_count`.
fn sqlite_full(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull)
}
