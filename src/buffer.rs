//! The SQLite outbox: the single source of truth between sources and uplink.
//!
//! # Design
//!
//! * Every outbox row is one MQTT message, ready to send. Readings are cut
//!   into rows of at most `max_message_bytes` when they are appended, so a
//!   row's content never changes afterwards and a resend is byte-identical.
//! * A row's `seq` is an `AUTOINCREMENT` key: strictly increasing, never
//!   reused even after deletes, so the platform can use it for duplicate
//!   and gap detection. `msg_id` is `<instance>:<seq>`, where `instance`
//!   is random and fixed when the database file is created.
//! * A row is deleted only when the broker has acknowledged it (PUBACK).
//!   Until then it is sent again after every reconnect and every restart.
//! * Writes are group-committed. The first write after a commit opens a
//!   window (`buffer.commit_window`, 100 ms by default); readings, acks and
//!   appended rows that arrive within it go into the same transaction, so
//!   one fsync serves every device whose poll cycle ended in those 100 ms
//!   instead of one fsync per cycle. The window closes early when it holds
//!   `MAX_ITEMS_PER_COMMIT` items or `MAX_BATCHES_PER_COMMIT` cycles, when
//!   a query needs to read what was written, and at shutdown. While a
//!   window is open, poll cycles do not wake the outbox thread: they wait
//!   in the channel in front of it and are taken when the window closes
//!   (wake-ups, not SQLite, are most of the agent's cost at plant load).
//!   A commit that fills up makes the thread listen through the next
//!   window, so that under load full windows still commit back to back.
//! * The window lives in memory, not in an open SQLite transaction: between
//!   commits nothing uncommitted is visible on the connection, so a lease,
//!   answered at once and never held for the window, can only hand out
//!   committed rows. A lease from below an ack still in the window (after a
//!   reconnect) waits for the commit, so that the acked row is not sent
//!   again needlessly.
//! * When the outbox is over its cap, the oldest telemetry rows are evicted
//!   first; metrics rows only when no telemetry is left. Every eviction is
//!   counted in the `counters` table, which `status` publishes.
//!
//! The guarantees, in MUST/SHOULD words, are in docs/delivery.md.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot, watch};

use crate::chain::{ChainEntry, Seal};
use crate::clock::Clock;
use crate::config::{BufferConfig, Synchronous};
use crate::metrics::WindowData;
use crate::plant::{Sample, State, Transition};
use crate::reading::Reading;

/// Each equipment's last persisted (state, since).
pub type Restored = HashMap<String, (State, i64)>;

/// One poll cycle as the outbox stores it: the readings, and the equipment
/// state changes and samples derived from them, committed together.
#[derive(Debug, Default)]
pub struct Batch {
    pub readings: Vec<Reading>,
    pub transitions: Vec<Transition>,
    pub samples: Vec<Sample>,
}

/// Bytes we count per row on top of its body (key, columns, b-tree cell),
/// so a cap in bytes is roughly a cap on the file's data pages.
const ROW_OVERHEAD: u64 = 48;

/// Room kept in every message for the envelope the uplink adds.
pub const ENVELOPE_RESERVE: usize = 1024;

/// What a row carries. The numbers are stored and are the eviction order:
/// lower classes go first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Telemetry = 0,
    Metrics = 1,
}

impl Kind {
    fn from_i64(v: i64) -> Kind {
        if v == 1 {
            Kind::Metrics
        } else {
            Kind::Telemetry
        }
    }

    pub fn topic(self) -> &'static str {
        match self {
            Kind::Telemetry => "telemetry",
            Kind::Metrics => "metrics",
        }
    }
}

/// A row to append.
#[derive(Debug, Clone)]
pub struct NewRow {
    pub kind: Kind,
    /// Readings (or other entries) inside, for the counters.
    pub count: u32,
    /// The message's own fields, as JSON object members without braces.
    pub body: Vec<u8>,
}

/// A row read back for sending.
#[derive(Debug, Clone)]
pub struct Row {
    pub seq: i64,
    pub kind: Kind,
    pub created_ms: i64,
    pub count: u32,
    pub body: Vec<u8>,
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
    pub devices: Vec<DeviceHealth>,
}

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
    #[error("outbox write failed: {0}")]
    Sql(#[from] rusqlite::Error),
}

impl BufferError {
    /// The disk (or the file system's quota) is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, BufferError::Sql(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::DiskFull)
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    count INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_kind_seq ON outbox (kind, seq);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS transitions (
    id INTEGER PRIMARY KEY,
    equipment TEXT NOT NULL,
    ts INTEGER NOT NULL,
    state TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS transitions_equipment_ts ON transitions (equipment, ts, id);
CREATE TABLE IF NOT EXISTS samples (
    equipment TEXT NOT NULL,
    minute INTEGER NOT NULL,
    good INTEGER NOT NULL,
    total INTEGER NOT NULL,
    PRIMARY KEY (equipment, minute)
);
CREATE TABLE IF NOT EXISTS chain (
    idx INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    start_ts INTEGER NOT NULL,
    end_ts INTEGER NOT NULL,
    config_hash TEXT NOT NULL,
    prev TEXT NOT NULL,
    metrics_sha256 TEXT NOT NULL,
    transitions_sha256 TEXT NOT NULL,
    digest TEXT NOT NULL,
    body BLOB
);
CREATE INDEX IF NOT EXISTS chain_window ON chain (start_ts, kind);
CREATE TABLE IF NOT EXISTS uplink_events (
    id INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    up INTEGER NOT NULL,
    reason TEXT
);
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    last_good_ts INTEGER,
    last_bad_ts INTEGER,
    last_bad_reason TEXT,
    good INTEGER NOT NULL DEFAULT 0,
    bad INTEGER NOT NULL DEFAULT 0
);
";

/// The outbox file name inside the state directory.
pub const DB_FILE: &str = "outbox.sqlite";

/// The outbox, used from one thread (see [`spawn`]).
pub struct Outbox {
    conn: Connection,
    /// Counted bytes of all rows (body + overhead), kept in memory so the
    /// cap check costs nothing per append.
    bytes: u64,
    rows: u64,
    max_bytes: u64,
    max_rows: Option<u64>,
    instance: String,
    /// Persistent counters, mirrored in memory.
    counters: BTreeMap<&'static str, i64>,
    devices: BTreeMap<String, DeviceHealth>,
    /// Commits since open; evidence older than [`RETENTION_MS`] is pruned
    /// every [`PRUNE_EVERY`] commits.
    commits: u64,
    /// The `last_alive` stored by the last commit that wrote it. It is
    /// written at most once a second: with a commit every 100 ms it would
    /// otherwise dirty a page in every commit, and a value up to a second
    /// old only ends the equipment states that much earlier after a crash
    /// (less time claimed, never more).
    last_alive: Option<i64>,
}

/// How stale the stored `last_alive` may get while readings are committed.
const LAST_ALIVE_EVERY_MS: i64 = 1_000;

/// State transitions and samples are kept this long (13 months: a full
/// year of evidence plus the month a diagnosis takes).
pub const RETENTION_MS: i64 = 400 * 24 * 3_600_000;
const PRUNE_EVERY: u64 = 10_000;

const COUNTERS: [&str; 6] = [
    "appended_readings",
    "acked_rows",
    "evicted_rows",
    "evicted_readings",
    "evicted_metrics",
    "last_ack_ts",
];

impl Outbox {
    /// Opens (creating if needed) the outbox in `state_dir`.
    pub fn open(state_dir: &Path, cfg: &BufferConfig) -> Result<Outbox, BufferError> {
        std::fs::create_dir_all(state_dir).map_err(|source| BufferError::StateDir {
            path: state_dir.display().to_string(),
            source,
        })?;
        let path = state_dir.join(DB_FILE);
        let open_err = |source| BufferError::Open {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(&path).map_err(open_err)?;
        let sync = match cfg.synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA busy_timeout=5000; {SCHEMA}"
        ))
        .map_err(open_err)?;
        // Without the planner's stability guarantee, SQLite plans a cached
        // `LIMIT ?` query for the value bound and prepares the statement
        // again on every run: the lease, several times a second, spent
        // most of its time in the parser. Our queries have one good plan.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )
        .map_err(open_err)?;
        let instance: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key='instance'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(open_err)?;
        let instance = match instance {
            Some(i) => i,
            None => {
                let i = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('instance', ?1)",
                    [&i],
                )
                .map_err(open_err)?;
                i
            }
        };
        let (rows, bytes): (i64, i64) = conn
            .query_row(
                "SELECT count(*), coalesce(sum(length(body)), 0) FROM outbox",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(open_err)?;
        let mut counters = BTreeMap::new();
        for name in COUNTERS {
            let v: Option<i64> = conn
                .query_row("SELECT value FROM counters WHERE name=?1", [name], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(open_err)?;
            counters.insert(name, v.unwrap_or(0));
        }
        let devices = load_devices(&conn).map_err(open_err)?;
        Ok(Outbox {
            conn,
            bytes: bytes as u64 + rows as u64 * ROW_OVERHEAD,
            rows: rows as u64,
            max_bytes: cfg.max_bytes,
            max_rows: cfg.max_rows,
            instance,
            counters,
            devices,
            commits: 0,
            last_alive: None,
        })
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Appends rows, records device health, state transitions and samples,
    /// applies acks and meta updates, all in one transaction; then evicts to
    /// the cap. Returns the last seq.
    pub fn commit(
        &mut self,
        rows: &[NewRow],
        batch: &Batch,
        acks: &[i64],
        meta: &[(String, i64)],
        now_ms: i64,
    ) -> Result<i64, BufferError> {
        self.commit_sealed(rows, batch, acks, meta, &[], now_ms)
    }

    /// [`Outbox::commit`], also appending digest-chain entries: a sealed
    /// metrics row and its entry are committed together or not at all.
    pub fn commit_sealed(
        &mut self,
        rows: &[NewRow],
        batch: &Batch,
        acks: &[i64],
        meta: &[(String, i64)],
        seals: &[ChainEntry],
        now_ms: i64,
    ) -> Result<i64, BufferError> {
        let readings = &batch.readings;
        let mut alive_written = None;
        let tx = self.conn.transaction()?;
        insert_chain(&tx, seals)?;
        {
            let mut ins = tx.prepare_cached(
                // Two transitions may share a timestamp (after the clock
                // stepped back, see plant::Tracker); `id` keeps their order.
                "INSERT INTO transitions (equipment, ts, state) VALUES (?1, ?2, ?3)",
            )?;
            for t in &batch.transitions {
                ins.execute(params![&*t.equipment, t.ts, t.state.name()])?;
            }
            let mut up = tx.prepare_cached(
                "INSERT INTO samples (equipment, minute, good, total) VALUES (?1, ?2, ?3, 1)
                 ON CONFLICT(equipment, minute) DO UPDATE SET good = good + excluded.good, total = total + 1",
            )?;
            for s in &batch.samples {
                up.execute(params![&*s.equipment, s.minute, i64::from(s.good)])?;
            }
            let mut m = tx.prepare_cached(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            )?;
            // The last moment the agent was demonstrably alive; after a
            // crash, equipment is offline from here until the restart. A
            // clock that stepped back is written at once.
            if !readings.is_empty()
                && self
                    .last_alive
                    .is_none_or(|t| now_ms < t || now_ms - t >= LAST_ALIVE_EVERY_MS)
            {
                m.execute(params!["last_alive", now_ms.to_string()])?;
                alive_written = Some(now_ms);
            }
            for (k, v) in meta {
                m.execute(params![k, v.to_string()])?;
            }
        }
        let mut added_bytes = 0u64;
        let mut appended_readings = 0i64;
        {
            let mut ins = tx.prepare_cached(
                "INSERT INTO outbox (kind, created_ms, count, body) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for r in rows {
                ins.execute(params![r.kind as i64, now_ms, r.count, r.body])?;
                added_bytes += r.body.len() as u64 + ROW_OVERHEAD;
                if r.kind == Kind::Telemetry {
                    appended_readings += i64::from(r.count);
                }
            }
        }
        let mut removed_bytes = 0u64;
        let mut removed_rows = 0u64;
        if !acks.is_empty() {
            let mut del =
                tx.prepare_cached("DELETE FROM outbox WHERE seq = ?1 RETURNING length(body)")?;
            for seq in acks {
                if let Some(len) = del.query_row([seq], |r| r.get::<_, i64>(0)).optional()? {
                    removed_bytes += len as u64 + ROW_OVERHEAD;
                    removed_rows += 1;
                }
            }
        }
        // Applied to memory only after the commit, so a retried commit
        // cannot count a reading twice.
        let health = update_devices(&tx, &self.devices, readings)?;
        let mut counters = self.counters.clone();
        *counters.entry("appended_readings").or_default() += appended_readings;
        if !acks.is_empty() {
            *counters.entry("acked_rows").or_default() += removed_rows as i64;
            counters.insert("last_ack_ts", now_ms);
        }
        let mut rows_now = self.rows + rows.len() as u64 - removed_rows;
        let mut bytes_now = self.bytes + added_bytes - removed_bytes;
        evict(
            &tx,
            &mut counters,
            &mut rows_now,
            &mut bytes_now,
            self.max_bytes,
            self.max_rows,
        )?;
        {
            let mut up = tx.prepare_cached(
                "INSERT INTO counters (name, value) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            )?;
            for (name, v) in &counters {
                if self.counters.get(name) != Some(v) {
                    up.execute(params![name, v])?;
                }
            }
        }
        self.commits += 1;
        if self.commits % PRUNE_EVERY == 1 {
            prune(&tx, now_ms - RETENTION_MS)?;
        }
        // Cached: parsing it again for every commit showed in the profile.
        let last_seq: i64 = tx
            .prepare_cached("SELECT coalesce(max(seq), 0) FROM outbox")?
            .query_row([], |r| r.get(0))?;
        tx.commit()?;
        // Only now is the new state real.
        self.counters = counters;
        self.rows = rows_now;
        self.bytes = bytes_now;
        if alive_written.is_some() {
            self.last_alive = alive_written;
        }
        for h in health {
            self.devices.insert(h.id.clone(), h);
        }
        Ok(last_seq)
    }

    /// Caps the database file at `pages` pages, so that fault tests can
    /// make SQLite report a full disk without filling one.
    pub fn set_max_pages(&self, pages: u64) -> Result<(), BufferError> {
        self.conn
            .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))?;
        Ok(())
    }

    /// Records that the uplink came up or went down. Rare (a connect or a
    /// loss), so it is a transaction of its own.
    pub fn record_uplink(
        &self,
        ts: i64,
        up: bool,
        reason: Option<&str>,
    ) -> Result<(), BufferError> {
        self.conn.execute(
            "INSERT INTO uplink_events (ts, up, reason) VALUES (?1, ?2, ?3)",
            params![ts, up, reason],
        )?;
        Ok(())
    }

    /// A meta value written by [`Outbox::commit`].
    pub fn meta(&self, key: &str) -> Result<Option<i64>, BufferError> {
        let v: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?;
        Ok(v.and_then(|v| v.parse().ok()))
    }

    /// Each equipment's last persisted state, and when the agent was last
    /// alive: what the state tracker resumes from.
    pub fn plant_restore(&self) -> Result<(Restored, Option<i64>), BufferError> {
        let mut st = self.conn.prepare(
            "SELECT equipment, ts, state FROM transitions t
             WHERE id = (SELECT id FROM transitions u WHERE u.equipment = t.equipment ORDER BY ts DESC, id DESC LIMIT 1)",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = HashMap::new();
        for row in rows {
            let (eq, ts, state) = row?;
            if let Some(state) = State::parse(&state) {
                out.insert(eq, (state, ts));
            }
        }
        Ok((out, self.meta("last_alive")?))
    }

    /// Rows with `seq > after`, oldest first.
    pub fn lease(&self, after: i64, limit: usize) -> Result<Vec<Row>, BufferError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT seq, kind, created_ms, count, body FROM outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
        let rows = st.query_map(params![after, limit as i64], |r| {
            Ok(Row {
                seq: r.get(0)?,
                kind: Kind::from_i64(r.get(1)?),
                created_ms: r.get(2)?,
                count: r.get(3)?,
                body: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    pub fn stats(&self) -> Result<Stats, BufferError> {
        Ok(query_stats(&self.conn)?)
    }

    /// Frees room after the disk filled up: drops the oldest telemetry rows
    /// (counted like any eviction) so that the next commit can succeed.
    pub fn evict_for_space(&mut self, rows: u64) -> Result<(), BufferError> {
        let tx = self.conn.transaction()?;
        let mut counters = self.counters.clone();
        let mut rows_now = self.rows;
        let mut bytes_now = self.bytes;
        let target_rows = rows_now.saturating_sub(rows);
        evict(
            &tx,
            &mut counters,
            &mut rows_now,
            &mut bytes_now,
            0,
            Some(target_rows.max(1)),
        )?;
        for (name, v) in &counters {
            tx.execute(
                "INSERT INTO counters (name, value) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                params![name, v],
            )?;
        }
        tx.commit()?;
        self.counters = counters;
        self.rows = rows_now;
        self.bytes = bytes_now;
        Ok(())
    }
}

fn load_devices(conn: &Connection) -> rusqlite::Result<BTreeMap<String, DeviceHealth>> {
    let mut st = conn
        .prepare("SELECT id, last_good_ts, last_bad_ts, last_bad_reason, good, bad FROM devices")?;
    let rows = st.query_map([], |r| {
        Ok(DeviceHealth {
            id: r.get(0)?,
            last_good_ts: r.get(1)?,
            last_bad_ts: r.get(2)?,
            last_bad_reason: r.get(3)?,
            good: r.get::<_, i64>(4)? as u64,
            bad: r.get::<_, i64>(5)? as u64,
        })
    })?;
    rows.map(|r| r.map(|d| (d.id.clone(), d))).collect()
}

fn update_devices(
    tx: &rusqlite::Transaction<'_>,
    devices: &BTreeMap<String, DeviceHealth>,
    readings: &[Reading],
) -> rusqlite::Result<Vec<DeviceHealth>> {
    let mut touched: BTreeMap<&str, DeviceHealth> = BTreeMap::new();
    for r in readings {
        let h = touched.entry(&r.device).or_insert_with(|| {
            devices
                .get(&*r.device)
                .cloned()
                .unwrap_or_else(|| DeviceHealth {
                    id: r.device.to_string(),
                    ..Default::default()
                })
        });
        match &r.quality {
            crate::reading::Quality::Good => {
                h.good += 1;
                h.last_good_ts = Some(h.last_good_ts.map_or(r.ts, |t| t.max(r.ts)));
            }
            crate::reading::Quality::Bad(why) => {
                h.bad += 1;
                h.last_bad_ts = Some(h.last_bad_ts.map_or(r.ts, |t| t.max(r.ts)));
                h.last_bad_reason = Some(why.to_string());
            }
        }
    }
    let mut up = tx.prepare_cached(
        "INSERT INTO devices (id, last_good_ts, last_bad_ts, last_bad_reason, good, bad) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(id) DO UPDATE SET last_good_ts=excluded.last_good_ts, last_bad_ts=excluded.last_bad_ts,
         last_bad_reason=excluded.last_bad_reason, good=excluded.good, bad=excluded.bad",
    )?;
    for h in touched.values() {
        up.execute(params![
            h.id,
            h.last_good_ts,
            h.last_bad_ts,
            h.last_bad_reason,
            h.good as i64,
            h.bad as i64
        ])?;
    }
    Ok(touched.into_values().collect())
}

/// Deletes the oldest rows of the lowest kind until the outbox is within
/// its caps, counting what it deletes.
fn evict(
    tx: &rusqlite::Transaction<'_>,
    counters: &mut BTreeMap<&'static str, i64>,
    rows: &mut u64,
    bytes: &mut u64,
    max_bytes: u64,
    max_rows: Option<u64>,
) -> rusqlite::Result<()> {
    let over = |rows: u64, bytes: u64| {
        (max_bytes > 0 && bytes > max_bytes) || max_rows.is_some_and(|m| rows > m)
    };
    while over(*rows, *bytes) {
        let victims: Vec<(i64, i64, i64, i64)> = {
            let mut st = tx.prepare_cached(
                "SELECT seq, kind, count, length(body) FROM outbox
                 WHERE kind = (SELECT min(kind) FROM outbox) ORDER BY seq LIMIT 64",
            )?;
            let it = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
            it.collect::<Result<_, _>>()?
        };
        if victims.is_empty() {
            break;
        }
        let mut del = tx.prepare_cached("DELETE FROM outbox WHERE seq = ?1")?;
        for (seq, kind, count, len) in victims {
            if !over(*rows, *bytes) {
                break;
            }
            del.execute([seq])?;
            *rows -= 1;
            *bytes = bytes.saturating_sub(len as u64 + ROW_OVERHEAD);
            *counters.entry("evicted_rows").or_default() += 1;
            if Kind::from_i64(kind) == Kind::Telemetry {
                *counters.entry("evicted_readings").or_default() += count;
            } else {
                *counters.entry("evicted_metrics").or_default() += 1;
            }
        }
    }
    Ok(())
}

/// Cuts readings into telemetry rows of at most `max_body` bytes each.
pub fn encode_readings(readings: &[Reading], max_body: usize) -> Vec<NewRow> {
    let mut rows = Vec::new();
    let mut body: Vec<u8> = Vec::with_capacity(max_body.min(64 * 1024));
    let mut item: Vec<u8> = Vec::with_capacity(256);
    let mut count = 0u32;
    const HEAD: &[u8] = b"\"readings\":[";
    for r in readings {
        item.clear();
        r.write_json(&mut item);
        if count > 0 && body.len() + 1 + item.len() + 1 > max_body {
            body.push(b']');
            rows.push(NewRow {
                kind: Kind::Telemetry,
                count,
                body: std::mem::take(&mut body),
            });
            count = 0;
        }
        if count == 0 {
            body.extend_from_slice(HEAD);
        } else {
            body.push(b',');
        }
        body.extend_from_slice(&item);
        count += 1;
    }
    if count > 0 {
        body.push(b']');
        rows.push(NewRow {
            kind: Kind::Telemetry,
            count,
            body,
        });
    }
    rows
}

// ---------------------------------------------------------------------------
// The actor that owns the outbox.

/// Requests to the outbox thread from the uplink and the CLI.
pub enum Control {
    /// Append a non-telemetry message (metrics), with meta values that
    /// must change in the same transaction (e.g. "this window is closed").
    Append(NewRow, Vec<(String, i64)>),
    /// As `Append`, with the digest-chain entry of a closed window.
    AppendSealed(NewRow, Vec<(String, i64)>, Box<ChainEntry>),
    /// The last chain entry: (index, digest).
    ChainHead(oneshot::Sender<Result<Option<(u64, String)>, String>>),
    /// Transitions and samples for a window, for the metrics.
    WindowData {
        from: i64,
        to: i64,
        reply: oneshot::Sender<Result<WindowData, String>>,
    },
    /// A meta value.
    Meta {
        key: String,
        reply: oneshot::Sender<Result<Option<i64>, String>>,
    },
    /// Rows after `after`, at most `limit`.
    Lease {
        after: i64,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<Row>, String>>,
    },
    /// The broker acknowledged these seqs. Sent on a channel of its own
    /// (see [`BufferClient::ack`]) and turned into this on arrival.
    Ack(Vec<i64>),
    Stats(oneshot::Sender<Result<Stats, String>>),
    /// The uplink came up (`up`) or went down, with why; the evidence
    /// report lists the outages.
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
    acks: mpsc::Sender<Vec<i64>>,
}

impl BufferClient {
    pub async fn lease(&self, after: i64, limit: usize) -> Result<Vec<Row>, String> {
        let (reply, rx) = oneshot::channel();
        self.control
            .send(Control::Lease {
                after,
                limit,
                reply,
            })
            .await
            .map_err(|_| "outbox stopped".to_string())?;
        rx.await.map_err(|_| "outbox stopped".to_string())?
    }

    pub async fn ack(&self, seqs: Vec<i64>) {
        let _ = self.acks.send(seqs).await;
    }

    pub async fn append(&self, row: NewRow, meta: Vec<(String, i64)>) -> Result<(), String> {
        self.control
            .send(Control::Append(row, meta))
            .await
            .map_err(|_| "outbox stopped".to_string())
    }

    /// Appends a closed window's metrics row and its chain entry atomically.
    pub async fn append_sealed(
        &self,
        row: NewRow,
        meta: Vec<(String, i64)>,
        entry: ChainEntry,
    ) -> Result<(), String> {
        self.control
            .send(Control::AppendSealed(row, meta, Box::new(entry)))
            .await
            .map_err(|_| "outbox stopped".to_string())
    }

    pub async fn chain_head(&self) -> Result<Option<(u64, String)>, String> {
        let (reply, rx) = oneshot::channel();
        self.control
            .send(Control::ChainHead(reply))
            .await
            .map_err(|_| "outbox stopped".to_string())?;
        rx.await.map_err(|_| "outbox stopped".to_string())?
    }

    pub async fn window_data(&self, from: i64, to: i64) -> Result<WindowData, String> {
        let (reply, rx) = oneshot::channel();
        self.control
            .send(Control::WindowData { from, to, reply })
            .await
            .map_err(|_| "outbox stopped".to_string())?;
        rx.await.map_err(|_| "outbox stopped".to_string())?
    }

    pub async fn meta(&self, key: &str) -> Result<Option<i64>, String> {
        let (reply, rx) = oneshot::channel();
        self.control
            .send(Control::Meta {
                key: key.to_string(),
                reply,
            })
            .await
            .map_err(|_| "outbox stopped".to_string())?;
        rx.await.map_err(|_| "outbox stopped".to_string())?
    }

    /// Records that the uplink came up or went down.
    pub async fn uplink_event(&self, ts: i64, up: bool, reason: Option<String>) {
        let _ = self
            .control
            .send(Control::UplinkEvent { ts, up, reason })
            .await;
    }

    /// Asks the outbox thread to finish once its input is drained.
    pub async fn close(&self) {
        let _ = self.control.send(Control::Close).await;
    }

    pub async fn stats(&self) -> Result<Stats, String> {
        let (reply, rx) = oneshot::channel();
        self.control
            .send(Control::Stats(reply))
            .await
            .map_err(|_| "outbox stopped".to_string())?;
        rx.await.map_err(|_| "outbox stopped".to_string())?
    }
}

/// Handles to a running outbox thread.
pub struct BufferHandles {
    /// Sources send each poll cycle's readings here.
    pub readings: mpsc::Sender<Batch>,
    pub client: BufferClient,
    /// The last committed seq; the uplink wakes on changes.
    pub appended: watch::Receiver<i64>,
    /// Joins when both senders are gone and everything is committed.
    pub thread: std::thread::JoinHandle<()>,
}

/// A window ends early after this many poll cycles, so that memory and the
/// length of one transaction stay bounded when cycles queue up.
const MAX_BATCHES_PER_COMMIT: usize = 256;

/// A window also ends early at this many readings, acks and appended rows.
/// From about 10,000 readings per commit an fsync no longer shows in the
/// cost of a commit (see BENCHMARKS.md), so waiting longer saves nothing,
/// and a long transaction would keep leases waiting.
const MAX_ITEMS_PER_COMMIT: usize = 10_000;

/// How long acks alone wait for a write to share a commit with. The
/// uplink's acks arrive just after each commit; with a window of their
/// own they would double the commits (and fsyncs) at plant load, where
/// the next poll cycles come within this time anyway. An ack not yet
/// committed only means that its row may be sent again after a crash.
const ACK_WAIT: Duration = Duration::from_secs(1);

/// Writes gathered for the next commit, and the requests that must see it.
#[derive(Default)]
struct Pending {
    batches: Vec<Batch>,
    /// Writes (appends, acks) and the queries answered after the commit.
    controls: Vec<Control>,
    /// Readings, acked seqs and appended rows: what bounds the window.
    items: usize,
    /// The highest acked seq not yet committed: a lease from below it would
    /// hand out a row whose ack is still waiting.
    max_ack: i64,
    /// A query is waiting for the commit, so the window closes now: it
    /// must see what was sent before it (read your own writes).
    query: bool,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.batches.is_empty() && self.controls.is_empty()
    }

    /// Holds something other than acks (which can wait, see [`ACK_WAIT`]).
    fn has_data(&self) -> bool {
        !self.batches.is_empty() || self.controls.iter().any(|c| !matches!(c, Control::Ack(_)))
    }

    fn full(&self) -> bool {
        self.batches.len() >= MAX_BATCHES_PER_COMMIT || self.items >= MAX_ITEMS_PER_COMMIT
    }

    fn batch(&mut self, b: Batch) {
        self.items += b.readings.len();
        self.batches.push(b);
    }

    /// Takes one request. Writes join the window; a lease is answered at
    /// once from what is committed; any other query waits for the commit.
    fn control(&mut self, c: Control, outbox: &Outbox) {
        match c {
            Control::Append(..) | Control::AppendSealed(..) => {
                self.items += 1;
                self.controls.push(c);
            }
            Control::Ack(ref seqs) => {
                self.items += seqs.len();
                self.max_ack = self.max_ack.max(seqs.iter().copied().max().unwrap_or(0));
                self.controls.push(c);
            }
            // No transaction is open between commits, so a lease sees
            // committed rows only; the uplink must not wait for the window.
            Control::Lease {
                after,
                limit,
                reply,
            } if self.max_ack <= after => {
                let _ = reply.send(outbox.lease(after, limit).map_err(|e| e.to_string()));
            }
            c => {
                self.query = true;
                self.controls.push(c);
            }
        }
    }
}

/// Starts the outbox thread. It owns the SQLite connection and runs its own
/// single-threaded runtime, so blocking on SQLite never stalls a network task.
pub fn spawn(
    outbox: Outbox,
    cfg: &BufferConfig,
    clock: std::sync::Arc<dyn Clock>,
) -> BufferHandles {
    spawn_with_progress(outbox, cfg, clock, crate::watchdog::Progress::new())
}

/// [`spawn`], bumping `progress` on every iteration of the outbox loop
/// (and on an idle tick), for the systemd watchdog.
pub fn spawn_with_progress(
    mut outbox: Outbox,
    cfg: &BufferConfig,
    clock: std::sync::Arc<dyn Clock>,
    progress: std::sync::Arc<crate::watchdog::Progress>,
) -> BufferHandles {
    let (readings_tx, mut readings_rx) = mpsc::channel::<Batch>(1024);
    let (control_tx, mut control_rx) = mpsc::channel::<Control>(256);
    let (acks_tx, mut acks_rx) = mpsc::channel::<Vec<i64>>(256);
    let (appended_tx, appended_rx) = watch::channel(0i64);
    let max_body = cfg
        .max_message_bytes
        .saturating_sub(ENVELOPE_RESERVE)
        .max(256);
    let window = cfg.commit_window;
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
            rt.block_on(async move {
                let mut clock_watch = ClockWatch::default();
                let mut readings_open = true;
                let mut control_open = true;
                let mut acks_open = true;
                let mut beat = tokio::time::interval(crate::watchdog::HEARTBEAT);
                beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut pending = Pending::default();
                // When the open window must be committed; set by its first write.
                let mut deadline: Option<tokio::time::Instant> = None;
                // Whether poll cycles (and acks) wake this thread while a
                // window is open. At plant load they need not: a cycle that arrives
                // in the window waits in the channel and is taken when the
                // window closes, which saves a wake-up (and a context switch
                // on both sides) per cycle. Once a commit fills up, the
                // thread listens again, so that under load a full window
                // commits at once instead of waiting out its time.
                let mut busy = false;
                // The open window holds acks only, and waits for data.
                let mut waiting_acks = false;
                loop {
                    progress.outbox_beat();
                    let closed = !readings_open && !control_open;
                    let due = deadline.is_some_and(|d| d <= tokio::time::Instant::now());
                    // Without a control channel the agent is stopping (or
                    // nobody can read the outbox any more): no window.
                    let stopping = !control_open;
                    if !pending.is_empty() && (stopping || due || window.is_zero() || pending.full() || pending.query) {
                        // What is already queued joins this commit: it
                        // costs no wait, and under load it is what keeps
                        // commits large.
                        while !pending.full() {
                            match readings_rx.try_recv() {
                                Ok(b) => pending.batch(b),
                                Err(mpsc::error::TryRecvError::Empty) => break,
                                Err(mpsc::error::TryRecvError::Disconnected) => {
                                    readings_open = false;
                                    break;
                                }
                            }
                        }
                        busy = pending.full();
                        take_acks(&mut acks_rx, &mut pending, &outbox);
                        while let Ok(c) = control_rx.try_recv() {
                            if let Control::Close = c {
                                control_open = false;
                                break;
                            }
                            pending.control(c, &outbox);
                        }
                        clock_watch.check(clock.now_ms());
                        let p = std::mem::take(&mut pending);
                        process(&mut outbox, p.batches, p.controls, max_body, &*clock, &appended_tx, readings_open, &progress).await;
                        deadline = None;
                        waiting_acks = false;
                        continue;
                    }
                    if closed {
                        break;
                    }
                    tokio::select! {
                        b = readings_rx.recv(), if readings_open && (busy || stopping || waiting_acks || deadline.is_none()) => match b {
                            Some(b) => pending.batch(b),
                            None => readings_open = false,
                        },
                        a = acks_rx.recv(), if acks_open && (busy || stopping || deadline.is_none()) => match a {
                            Some(seqs) => pending.control(Control::Ack(seqs), &outbox),
                            None => acks_open = false,
                        },
                        c = control_rx.recv(), if control_open => match c {
                            Some(Control::Close) | None => control_open = false,
                            Some(c) => {
                                // A lease must see the acks sent before it.
                                take_acks(&mut acks_rx, &mut pending, &outbox);
                                pending.control(c, &outbox);
                            }
                        },
                        _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {}
                        // Idle tick: a quiet outbox still shows it is alive.
                        _ = beat.tick() => {}
                    }
                    if !pending.is_empty() {
                        let now = tokio::time::Instant::now();
                        if pending.has_data() {
                            // Shortens a wait that acks alone started.
                            let end = now + window;
                            deadline = Some(deadline.map_or(end, |d| d.min(end)));
                            waiting_acks = false;
                        } else if deadline.is_none() {
                            deadline = Some(now + ACK_WAIT.max(window));
                            waiting_acks = true;
                        }
                    }
                }
                tracing::debug!("Outbox closed");
            });
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

/// Moves the acks already sent into the window, without waiting.
fn take_acks(rx: &mut mpsc::Receiver<Vec<i64>>, pending: &mut Pending, outbox: &Outbox) {
    while let Ok(seqs) = rx.try_recv() {
        pending.control(Control::Ack(seqs), outbox);
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

#[allow(clippy::too_many_arguments)]
async fn process(
    outbox: &mut Outbox,
    batches: Vec<Batch>,
    controls: Vec<Control>,
    max_body: usize,
    clock: &dyn Clock,
    appended: &watch::Sender<i64>,
    running: bool,
    progress: &crate::watchdog::Progress,
) {
    let mut batch = Batch::default();
    for b in batches {
        batch.readings.extend(b.readings);
        batch.transitions.extend(b.transitions);
        batch.samples.extend(b.samples);
    }
    let readings = &batch.readings;
    let mut rows = encode_readings(readings, max_body);
    let mut acks = Vec::new();
    let mut meta = Vec::new();
    let mut seals = Vec::new();
    let mut queries = Vec::new();
    for c in controls {
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
            Control::Ack(s) => acks.extend(s),
            q => queries.push(q),
        }
    }
    if !rows.is_empty() || !acks.is_empty() || !readings.is_empty() || !batch.transitions.is_empty()
    {
        let mut attempt = 0u32;
        loop {
            match outbox.commit_sealed(&rows, &batch, &acks, &meta, &seals, clock.now_ms()) {
                Ok(last) => {
                    if !rows.is_empty() {
                        appended.send_replace(last);
                    }
                    break;
                }
                Err(e) => {
                    attempt += 1;
                    // Retrying a failed write is progress: a restart would
                    // lose the readings held here, not fix the disk.
                    progress.outbox_beat();
                    let full = e.is_disk_full();
                    tracing::error!(
                        error = %e, readings = readings.len(), attempt, disk_full = full,
                        "Cannot write to the outbox; holding the readings in memory and retrying"
                    );
                    if full {
                        if let Err(e) = outbox.evict_for_space(64) {
                            tracing::error!(error = %e, "Cannot free space in the outbox");
                        }
                    }
                    // While shutting down there is no one left to wait for.
                    if !running && attempt >= 5 {
                        tracing::error!(
                            readings = readings.len(),
                            "Giving up on the outbox at shutdown; these readings are lost"
                        );
                        break;
                    }
                    tokio::time::sleep(
                        Duration::from_secs(1).min(Duration::from_millis(100) * attempt),
                    )
                    .await;
                }
            }
        }
    }
    for q in queries {
        match q {
            Control::Lease {
                after,
                limit,
                reply,
            } => {
                let _ = reply.send(outbox.lease(after, limit).map_err(|e| e.to_string()));
            }
            Control::Stats(reply) => {
                let _ = reply.send(outbox.stats().map_err(|e| e.to_string()));
            }
            Control::UplinkEvent { ts, up, reason } => {
                if let Err(e) = outbox.record_uplink(ts, up, reason.as_deref()) {
                    tracing::warn!(error = %e, "Cannot record an uplink event");
                }
            }
            Control::WindowData { from, to, reply } => {
                let _ = reply.send(window_data(&outbox.conn, from, to).map_err(|e| e.to_string()));
            }
            Control::Meta { key, reply } => {
                let _ = reply.send(outbox.meta(&key).map_err(|e| e.to_string()));
            }
            Control::ChainHead(reply) => {
                let _ = reply.send(chain_head(&outbox.conn).map_err(|e| e.to_string()));
            }
            Control::Append(..) | Control::AppendSealed(..) | Control::Ack(_) | Control::Close => {}
        }
    }
}

/// Reads outbox figures from a state directory without disturbing a running
/// agent (WAL lets readers and the writer work side by side).
pub fn read_stats(state_dir: &Path) -> Result<Stats, BufferError> {
    let path = state_dir.join(DB_FILE);
    let open_err = |source| BufferError::Open {
        path: path.display().to_string(),
        source,
    };
    let conn = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(open_err)?;
    query_stats(&conn).map_err(open_err)
}

fn query_stats(conn: &Connection) -> rusqlite::Result<Stats> {
    let instance: String =
        conn.query_row("SELECT value FROM meta WHERE key='instance'", [], |r| {
            r.get(0)
        })?;
    let (rows, bytes, oldest): (i64, i64, Option<i64>) = conn.query_row(
        "SELECT count(*), coalesce(sum(length(body)),0), min(created_ms) FROM outbox",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let last_seq: i64 = conn.query_row(
        "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name='outbox'), 0)",
        [],
        |r| r.get(0),
    )?;
    let counter = |n: &str| -> rusqlite::Result<i64> {
        Ok(conn
            .query_row("SELECT value FROM counters WHERE name=?1", [n], |r| {
                r.get(0)
            })
            .optional()?
            .unwrap_or(0))
    };
    Ok(Stats {
        instance,
        rows: rows as u64,
        bytes: bytes as u64 + rows as u64 * ROW_OVERHEAD,
        oldest_unsent_ts: oldest,
        last_seq,
        last_ack_ts: Some(counter("last_ack_ts")?).filter(|&t| t > 0),
        appended_readings: counter("appended_readings")? as u64,
        acked_rows: counter("acked_rows")? as u64,
        evicted_rows: counter("evicted_rows")? as u64,
        evicted_readings: counter("evicted_readings")? as u64,
        evicted_metrics: counter("evicted_metrics")? as u64,
        devices: load_devices(conn)?.into_values().collect(),
    })
}

/// Loads what the metrics need for [from, to) from any connection (the
/// outbox thread's, or a read-only one for the `metrics` command).
pub fn window_data(conn: &Connection, from: i64, to: i64) -> rusqlite::Result<WindowData> {
    let mut data = WindowData::default();
    let mut st = conn.prepare_cached(
        "SELECT equipment, state FROM transitions t
         WHERE id = (SELECT id FROM transitions u WHERE u.equipment = t.equipment AND u.ts <= ?1 ORDER BY ts DESC, id DESC LIMIT 1)",
    )?;
    for row in st.query_map([from], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })? {
        let (eq, state) = row?;
        if let Some(state) = State::parse(&state) {
            data.initial.insert(eq, state);
        }
    }
    let mut st = conn.prepare_cached(
        "SELECT equipment, ts, state FROM transitions WHERE ts > ?1 AND ts < ?2 ORDER BY ts, id",
    )?;
    for row in st.query_map([from, to], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
        ))
    })? {
        let (eq, ts, state) = row?;
        if let Some(state) = State::parse(&state) {
            data.transitions.push((eq, ts, state));
        }
    }
    let mut st = conn.prepare_cached(
        "SELECT equipment, sum(good), sum(total) FROM samples WHERE minute >= ?1 AND minute < ?2 GROUP BY equipment",
    )?;
    for row in st.query_map([from, to], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })? {
        let (eq, good, total) = row?;
        data.samples.insert(eq, (good as u64, total as u64));
    }
    Ok(data)
}

/// Opens a state directory's outbox read-only, for commands that inspect
/// it beside a running agent.
pub fn open_read_only(state_dir: &Path) -> Result<Connection, BufferError> {
    let path = state_dir.join(DB_FILE);
    Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(
        |source| BufferError::Open {
            path: path.display().to_string(),
            source,
        },
    )
}

/// Drops evidence older than `before`, keeping each equipment's last
/// transition before it (the state at the start of what remains).
fn prune(tx: &rusqlite::Transaction<'_>, before: i64) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM samples WHERE minute < ?1", [before])?;
    tx.execute(
        "DELETE FROM transitions WHERE ts < ?1 AND id NOT IN
         (SELECT (SELECT id FROM transitions u WHERE u.equipment = t.equipment AND u.ts < ?1 ORDER BY ts DESC, id DESC LIMIT 1)
          FROM (SELECT DISTINCT equipment FROM transitions) t)",
        [before],
    )?;
    Ok(())
}

fn insert_chain(tx: &rusqlite::Transaction<'_>, seals: &[ChainEntry]) -> rusqlite::Result<()> {
    if seals.is_empty() {
        return Ok(());
    }
    // A conflicting index must not wedge the outbox (every retry would
    // fail the same way and hold back the readings): the entry is skipped,
    // loudly. It cannot happen with one agent per state directory.
    let mut ins = tx.prepare_cached(
        "INSERT INTO chain (idx, kind, start_ts, end_ts, config_hash, prev, metrics_sha256, transitions_sha256, digest, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT(idx) DO NOTHING",
    )?;
    for e in seals {
        let added = ins.execute(params![
            e.seal.index as i64,
            e.kind,
            e.start_ts,
            e.end_ts,
            e.config_hash,
            e.seal.prev,
            e.seal.metrics_sha256,
            e.seal.transitions_sha256,
            e.seal.digest,
            e.body
        ])?;
        if added == 0 {
            tracing::error!(
                index = e.seal.index, start_ts = e.start_ts,
                "Digest chain already has an entry with this index (two agents on one state directory?); this window is not chained"
            );
        }
    }
    Ok(())
}

/// The last digest-chain entry: (index, digest).
pub fn chain_head(conn: &Connection) -> rusqlite::Result<Option<(u64, String)>> {
    conn.query_row(
        "SELECT idx, digest FROM chain ORDER BY idx DESC LIMIT 1",
        [],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?)),
    )
    .optional()
}

/// Chain entries of windows starting in [from, to), in chain order.
pub fn chain_entries(conn: &Connection, from: i64, to: i64) -> rusqlite::Result<Vec<ChainEntry>> {
    let mut st = conn.prepare(
        "SELECT idx, kind, start_ts, end_ts, config_hash, prev, metrics_sha256, transitions_sha256, digest, body
         FROM chain WHERE idx >= (SELECT coalesce(min(idx), 0) FROM chain WHERE start_ts >= ?1 AND start_ts < ?2)
           AND idx <= (SELECT coalesce(max(idx), -1) FROM chain WHERE start_ts >= ?1 AND start_ts < ?2)
         ORDER BY idx",
    )?;
    let rows = st.query_map([from, to], |r| {
        Ok(ChainEntry {
            seal: Seal {
                index: r.get::<_, i64>(0)? as u64,
                prev: r.get(5)?,
                digest: r.get(8)?,
                metrics_sha256: r.get(6)?,
                transitions_sha256: r.get(7)?,
            },
            kind: r.get(1)?,
            start_ts: r.get(2)?,
            end_ts: r.get(3)?,
            config_hash: r.get(4)?,
            body: r.get(9)?,
        })
    })?;
    rows.collect()
}

/// Minutes (UTC, start ms) in [from, to) in which any equipment was
/// evaluated: the agent was running then. Gaps are agent downtime.
pub fn sample_minutes(conn: &Connection, from: i64, to: i64) -> rusqlite::Result<Vec<i64>> {
    let mut st = conn.prepare(
        "SELECT DISTINCT minute FROM samples WHERE minute >= ?1 AND minute < ?2 ORDER BY minute",
    )?;
    let rows = st.query_map([from, to], |r| r.get::<_, i64>(0))?;
    rows.collect()
}

/// Uplink events (ts, up, reason) with `from <= ts < to`, plus the last one
/// before `from` (the state the period starts in), oldest first.
pub fn uplink_events(
    conn: &Connection,
    from: i64,
    to: i64,
) -> rusqlite::Result<Vec<(i64, bool, Option<String>)>> {
    let mut st = conn.prepare(
        "SELECT ts, up, reason FROM (
             SELECT id, ts, up, reason FROM (SELECT * FROM uplink_events WHERE ts < ?1 ORDER BY ts DESC, id DESC LIMIT 1)
             UNION ALL
             SELECT id, ts, up, reason FROM uplink_events WHERE ts >= ?1 AND ts < ?2
         ) ORDER BY ts, id",
    )?;
    let rows = st.query_map([from, to], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::reading::{Quality, Value};
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
        let outbox = Outbox::open(dir, &cfg).expect("open outbox");
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
            ..Default::default()
        }
    }

    fn metrics_row() -> NewRow {
        NewRow {
            kind: Kind::Metrics,
            count: 1,
            body: br#""window":{"kind":"hour"}"#.to_vec(),
        }
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
        let leased = within("a lease", h.client.lease(0, 10))
            .await
            .expect("lease");
        assert!(leased.is_empty(), "a row still in the window was leased");
        // A query closes the window, so it reads what was sent before it.
        let s = within("stats", h.client.stats()).await.expect("stats");
        assert_eq!(s.rows, 1);
        let leased = within("a lease", h.client.lease(0, 10))
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
        let rows = within("a lease", h.client.lease(0, 10))
            .await
            .expect("lease");
        let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        assert_eq!(seqs.len(), 2);
        h.client.ack(vec![seqs[0]]).await;
        // From above the ack (the uplink's usual cursor): no commit needed.
        let after = within("a lease", h.client.lease(seqs[1], 10))
            .await
            .expect("lease");
        assert!(after.is_empty());
        // From below it (a reconnect starts at 0): the ack is applied first.
        let again = within("a lease", h.client.lease(0, 10))
            .await
            .expect("lease");
        assert_eq!(
            again.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![seqs[1]]
        );
        stop(h).await;
    }
}
