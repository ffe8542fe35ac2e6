//! The outbox's SQL: one log of rows, each with the bit mask of the sinks
//! that still owe it a PUBACK; the state history and the digest chain
//! committed in the same transactions. Used from the outbox thread only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use super::history::{load_devices, query_stats};
use super::{
    cycle, Batch, BufferError, DeviceHealth, Kind, NewRow, Restored, Route, Row, SinkBit, Stats,
    DISK_FULL_HOLD_MS, ROW_OVERHEAD,
};
use crate::chain::ChainEntry;
use crate::config::{BufferConfig, Synchronous};
use crate::plant::State;
use crate::reading::Reading;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    count INTEGER NOT NULL,
    body BLOB NOT NULL,
    pending INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_kind_seq ON outbox (kind, seq);
CREATE TABLE IF NOT EXISTS sinks (bit INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS names (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
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

/// The counter holding when a write last failed for want of disk space.
pub(super) const DISK_FULL_TS: &str = "disk_full_ts";

/// The outbox file name inside the state directory.
pub const DB_FILE: &str = "outbox.sqlite";

/// The outbox, used from one thread (see [`super::spawn`]).
pub struct Outbox {
    conn: Connection,
    /// Counted bytes of all rows (body + overhead), kept in memory so the
    /// cap check costs nothing per append.
    bytes: u64,
    rows: u64,
    max_bytes: u64,
    max_rows: Option<u64>,
    instance: String,
    /// Persistent counters (totals, and `sink:<name>:<counter>`), mirrored
    /// in memory.
    counters: BTreeMap<String, i64>,
    devices: BTreeMap<String, DeviceHealth>,
    /// The configured sinks with their bits in `pending`.
    routes: Vec<(SinkBit, Route)>,
    /// The names telemetry rows refer to (`names`), see [`cycle`].
    dict: cycle::Dictionary,
    /// A write failed for want of disk space less than
    /// [`DISK_FULL_HOLD_MS`] before the last commit; shown in `status`.
    disk_full: bool,
    /// When a write last failed for want of disk space; stored as the
    /// `disk_full_ts` counter so that `status` shows it offline too.
    disk_full_ts: Option<i64>,
    /// The state directory, which the disk-full ERROR names.
    dir: PathBuf,
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

/// What a commit evicted to stay within the cap, for the ERROR line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Evicted {
    pub rows: u64,
    pub readings: u64,
    /// Per sink that still owed evicted rows: (rows, readings).
    pub by_sink: BTreeMap<String, (u64, u64)>,
}

impl Evicted {
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Adds another commit's evictions (for a rate-limited log line).
    pub fn merge(&mut self, other: Evicted) {
        self.rows += other.rows;
        self.readings += other.readings;
        for (sink, (rows, readings)) in other.by_sink {
            let e = self.by_sink.entry(sink).or_default();
            e.0 += rows;
            e.1 += readings;
        }
    }
}

/// What a commit did.
#[derive(Debug, Default)]
pub struct Committed {
    /// The highest seq in the outbox.
    pub last_seq: i64,
    /// Whether rows were appended (the sinks have something new).
    pub appended: bool,
    /// `Some` when the cap forced evictions.
    pub evicted: Option<Evicted>,
}

fn counter_key(sink: &str, name: &str) -> String {
    format!("sink:{sink}:{name}")
}

impl Outbox {
    /// Opens (creating if needed) the outbox in `state_dir`, for the sinks
    /// in `routes`.
    pub fn open(
        state_dir: &Path,
        cfg: &BufferConfig,
        routes: &[Route],
    ) -> Result<Outbox, BufferError> {
        std::fs::create_dir_all(state_dir).map_err(|e| BufferError::state_dir(state_dir, e))?;
        let path = state_dir.join(DB_FILE);
        let open_err = |source| BufferError::open(&path, source);
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
        let routes = assign_sinks(&conn, routes)?;
        let (rows, bytes): (i64, i64) = conn
            .query_row(
                "SELECT count(*), coalesce(sum(length(body)), 0) FROM outbox",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(open_err)?;
        let mut counters = BTreeMap::new();
        {
            let mut st = conn
                .prepare("SELECT name, value FROM counters")
                .map_err(open_err)?;
            let it = st
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .map_err(open_err)?;
            for row in it {
                let (k, v) = row.map_err(open_err)?;
                counters.insert(k, v);
            }
        }
        let devices = load_devices(&conn).map_err(open_err)?;
        let dict = load_names(&conn).map_err(open_err)?;
        Ok(Outbox {
            disk_full_ts: counters.get(DISK_FULL_TS).copied(),
            dir: state_dir.to_path_buf(),
            conn,
            bytes: bytes as u64 + rows as u64 * ROW_OVERHEAD,
            rows: rows as u64,
            max_bytes: cfg.max_bytes,
            max_rows: cfg.max_rows,
            instance,
            counters,
            devices,
            routes,
            dict,
            disk_full: false,
            commits: 0,
            last_alive: None,
        })
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The state directory the outbox lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The bit of the sink called `name` in `pending`.
    pub fn sink_bit(&self, name: &str) -> Option<SinkBit> {
        self.routes
            .iter()
            .find(|(_, r)| r.name == name)
            .map(|(b, _)| *b)
    }

    /// The sinks that carry `kind` (from `device`, for telemetry).
    pub fn mask_for(&self, kind: Kind, device: Option<&str>) -> u64 {
        mask_for(&self.routes, kind, device)
    }

    /// Appends rows, records device health, state transitions and samples,
    /// applies acks and meta updates, all in one transaction; then evicts to
    /// the cap.
    pub fn commit(
        &mut self,
        rows: &[NewRow],
        batch: &Batch,
        acks: &[(SinkBit, i64)],
        meta: &[(String, i64)],
        now_ms: i64,
    ) -> Result<Committed, BufferError> {
        self.commit_sealed(rows, batch, acks, meta, &[], now_ms)
    }

    /// [`Outbox::commit`], also appending digest-chain entries: a sealed
    /// metrics row and its entry are committed together or not at all.
    #[allow(
        clippy::too_many_lines,
        reason = "one transaction written step by step (history, rows, acks, cap, counters) with running totals the steps share; not split yet"
    )]
    pub fn commit_sealed(
        &mut self,
        rows: &[NewRow],
        batch: &Batch,
        acks: &[(SinkBit, i64)],
        meta: &[(String, i64)],
        seals: &[ChainEntry],
        now_ms: i64,
    ) -> Result<Committed, BufferError> {
        let readings = &batch.readings;
        let mut alive_written = None;
        let states_to = self.mask_for(Kind::States, None);
        let tx = self.conn.transaction()?;
        insert_chain(&tx, seals)?;
        // The states row: the transitions with the ids that order them,
        // so that a platform can rebuild `transitions_sha256`.
        let mut states = Vec::new();
        {
            let mut ins = tx.prepare_cached(
                // Two transitions may share a timestamp (after the clock
                // stepped back, see plant::Tracker); `id` keeps their order.
                "INSERT INTO transitions (equipment, ts, state) VALUES (?1, ?2, ?3)",
            )?;
            for t in &batch.transitions {
                ins.execute(params![&*t.equipment, t.ts, t.state.name()])?;
                if states_to != 0 {
                    states.push((tx.last_insert_rowid(), t));
                }
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
        let states_row = (!states.is_empty()).then(|| NewRow {
            kind: Kind::States,
            count: states.len() as u32,
            body: states_body(&states),
            to: Some(states_to),
        });
        let mut counters = self.counters.clone();
        if let Some(t) = self.disk_full_ts {
            // Written here too in case the eviction that noted it failed.
            counters.insert(DISK_FULL_TS.into(), t);
        }
        let mut added_bytes = 0u64;
        let mut added_rows = 0u64;
        {
            // The names the rows below use for the first time.
            let mut name = tx.prepare_cached("INSERT INTO names (id, name) VALUES (?1, ?2)")?;
            for (id, n) in self.dict.unsaved() {
                name.execute(params![id, n])?;
            }
        }
        {
            let mut ins = tx.prepare_cached(
                "INSERT INTO outbox (kind, created_ms, count, body, pending) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for r in states_row.iter().chain(rows) {
                let to = r.to.unwrap_or_else(|| mask_for(&self.routes, r.kind, None));
                if to == 0 {
                    continue;
                }
                ins.execute(params![r.kind as i64, now_ms, r.count, r.body, to as i64])?;
                added_bytes += r.body.len() as u64 + ROW_OVERHEAD;
                added_rows += 1;
                if r.kind.stream() == super::Stream::Telemetry {
                    *counters.entry("appended_readings".into()).or_default() += i64::from(r.count);
                }
            }
        }
        let mut removed_bytes = 0u64;
        let mut removed_rows = 0u64;
        if !acks.is_empty() {
            let mut clear = tx.prepare_cached(
                "UPDATE outbox SET pending = pending & ~?2 WHERE seq = ?1 AND pending & ?2 != 0
                 RETURNING pending, length(body)",
            )?;
            let mut del = tx.prepare_cached("DELETE FROM outbox WHERE seq = ?1")?;
            for &(bit, seq) in acks {
                let Some(name) = sink_name(&self.routes, bit) else {
                    continue;
                };
                let done = clear
                    .query_row(params![seq, 1i64 << bit], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                    })
                    .optional()?;
                if let Some((left, len)) = done {
                    *counters.entry(counter_key(name, "acked_rows")).or_default() += 1;
                    if left == 0 {
                        del.execute([seq])?;
                        removed_bytes += len as u64 + ROW_OVERHEAD;
                        removed_rows += 1;
                    }
                }
            }
            *counters.entry("acked_rows".into()).or_default() += removed_rows as i64;
            counters.insert("last_ack_ts".into(), now_ms);
        }
        // Applied to memory only after the commit, so a retried commit
        // cannot count a reading twice.
        let health = update_devices(&tx, &self.devices, readings)?;
        let mut rows_now = self.rows + added_rows - removed_rows;
        let mut bytes_now = self.bytes + added_bytes - removed_bytes;
        let evicted = evict(
            &tx,
            &self.routes,
            &mut counters,
            (&mut rows_now, &mut bytes_now),
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
        self.dict.mark_saved();
        self.counters = counters;
        self.rows = rows_now;
        self.bytes = bytes_now;
        if self
            .disk_full_ts
            .is_none_or(|t| now_ms < t || now_ms - t >= DISK_FULL_HOLD_MS)
        {
            self.disk_full = false;
        }
        if alive_written.is_some() {
            self.last_alive = alive_written;
        }
        for h in health {
            self.devices.insert(h.id.clone(), h);
        }
        Ok(Committed {
            last_seq,
            appended: added_rows > 0,
            evicted: (!evicted.is_empty()).then_some(evicted),
        })
    }

    /// Caps the database file at `pages` pages, so that fault tests can
    /// make SQLite report a full disk without filling one.
    pub fn set_max_pages(&self, pages: u64) -> Result<(), BufferError> {
        self.conn
            .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))?;
        Ok(())
    }

    /// Records that a sink's connection came up or went down. Rare (a
    /// connect or a loss), so it is a transaction of its own.
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
        let mut out = Restored::new();
        for row in rows {
            let (eq, ts, state) = row?;
            if let Some(state) = State::parse(&state) {
                out.insert(eq, (state, ts));
            }
        }
        Ok((out, self.meta("last_alive")?))
    }

    /// The telemetry rows of `batches` (see [`cycle::encode`]), naming
    /// devices and tags in the outbox's dictionary. New names are written
    /// with the rows by the next commit.
    pub fn encode_telemetry(&mut self, batches: &[Batch], max_json: usize) -> Vec<NewRow> {
        let routes = &self.routes;
        cycle::encode_shared(
            batches,
            max_json,
            |device| mask_for(routes, Kind::Telemetry, Some(device)),
            &mut self.dict,
        )
    }

    /// Rows with `seq > after` that the sink `bit` still owes, oldest first.
    pub fn lease(&self, bit: SinkBit, after: i64, limit: usize) -> Result<Vec<Row>, BufferError> {
        let names = self.dict.names();
        let mut st = self.conn.prepare_cached(
            "SELECT seq, kind, created_ms, count, body FROM outbox
             WHERE seq > ?1 AND pending & ?2 != 0 ORDER BY seq LIMIT ?3",
        )?;
        let rows = st.query_map(params![after, 1i64 << bit, limit as i64], |r| {
            Ok(Row {
                seq: r.get(0)?,
                kind: Kind::from_i64(r.get(1)?),
                created_ms: r.get(2)?,
                count: r.get(3)?,
                body: r.get(4)?,
                names: names.clone(),
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    pub fn stats(&self) -> Result<Stats, BufferError> {
        let mut s = query_stats(&self.conn)?;
        s.disk_full = self.disk_full;
        s.disk_full_ts = self.disk_full_ts;
        Ok(s)
    }

    /// The read-write connection, for queries the thread answers.
    pub(super) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Frees room after the disk filled up at `now_ms`: drops the oldest
    /// telemetry rows (counted like any eviction) so that the next commit
    /// can succeed, and notes the full disk for `status`.
    pub fn evict_for_space(&mut self, rows: u64, now_ms: i64) -> Result<Evicted, BufferError> {
        self.disk_full = true;
        self.disk_full_ts = Some(now_ms);
        let tx = self.conn.transaction()?;
        let mut counters = self.counters.clone();
        counters.insert(DISK_FULL_TS.into(), now_ms);
        let mut rows_now = self.rows;
        let mut bytes_now = self.bytes;
        let target_rows = rows_now.saturating_sub(rows);
        let evicted = evict(
            &tx,
            &self.routes,
            &mut counters,
            (&mut rows_now, &mut bytes_now),
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
        Ok(evicted)
    }
}

fn mask_for(routes: &[(SinkBit, Route)], kind: Kind, device: Option<&str>) -> u64 {
    routes
        .iter()
        .filter(|(_, r)| r.carries(kind, device))
        .fold(0, |m, (b, _)| m | 1 << b)
}

fn sink_name(routes: &[(SinkBit, Route)], bit: SinkBit) -> Option<&str> {
    routes
        .iter()
        .find(|(b, _)| *b == bit)
        .map(|(_, r)| r.name.as_str())
}

/// Gives every configured sink a bit in `pending`, keeping the bits of
/// sinks the outbox already knows. A sink no longer configured gives its
/// bit back: rows that only it still owed are dropped (nobody will send
/// them). An outbox from before sinks existed gets the `pending` column,
/// its rows owed to the first sink.
fn assign_sinks(conn: &Connection, routes: &[Route]) -> Result<Vec<(SinkBit, Route)>, BufferError> {
    let has_pending = conn
        .prepare("SELECT 1 FROM pragma_table_info('outbox') WHERE name = 'pending'")?
        .exists([])?;
    let tx = conn.unchecked_transaction()?;
    if !has_pending {
        tx.execute_batch("ALTER TABLE outbox ADD COLUMN pending INTEGER NOT NULL DEFAULT 0")?;
    }
    let mut known: BTreeMap<String, SinkBit> = BTreeMap::new();
    {
        let mut st = tx.prepare("SELECT bit, name FROM sinks")?;
        for row in st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))? {
            let (bit, name) = row?;
            known.insert(name, bit as SinkBit);
        }
    }
    for (name, bit) in &known {
        if !routes.iter().any(|r| &r.name == name) {
            let mask = 1i64 << bit;
            tx.execute(
                "UPDATE outbox SET pending = pending & ~?1 WHERE pending & ?1 != 0",
                [mask],
            )?;
            let dropped = tx.execute("DELETE FROM outbox WHERE pending = 0", [])?;
            tx.execute("DELETE FROM sinks WHERE bit = ?1", [*bit as i64])?;
            tracing::warn!(
                sink = %name, dropped_rows = dropped,
                "Sink no longer configured; rows only it still had to send were dropped"
            );
        }
    }
    known.retain(|name, _| routes.iter().any(|r| &r.name == name));
    let mut out = Vec::new();
    for r in routes {
        let bit = match known.get(&r.name) {
            Some(b) => *b,
            None => {
                let free = (0..63u8)
                    .find(|b| !known.values().any(|k| k == b))
                    .ok_or(BufferError::TooManySinks)?;
                tx.execute(
                    "INSERT INTO sinks (bit, name) VALUES (?1, ?2)",
                    params![free as i64, r.name],
                )?;
                known.insert(r.name.clone(), free);
                free
            }
        };
        out.push((bit, r.clone()));
    }
    if !has_pending {
        if let Some((bit, _)) = out.first() {
            tx.execute("UPDATE outbox SET pending = ?1", [1i64 << bit])?;
        }
    }
    tx.commit()?;
    Ok(out)
}

/// The body of a `zgsz.states/1` row: the transitions of one commit with
/// their stored ids.
fn states_body(states: &[(i64, &crate::plant::Transition)]) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Item<'a> {
        id: i64,
        equipment: &'a str,
        state: &'static str,
        ts: i64,
    }
    let items: Vec<Item> = states
        .iter()
        .map(|(id, t)| Item {
            id: *id,
            equipment: &t.equipment,
            state: t.state.name(),
            ts: t.ts,
        })
        .collect();
    let mut body = b"\"transitions\":".to_vec();
    #[allow(
        clippy::expect_used,
        reason = "serialising plain strings and numbers into a Vec cannot fail"
    )]
    serde_json::to_writer(&mut body, &items).expect("serialising transitions into memory");
    body
}

/// Deletes the oldest rows of the lowest eviction class until the outbox is
/// within its caps, counting what it deletes, in total and for each sink
/// that still owed the row.
fn evict(
    tx: &rusqlite::Transaction<'_>,
    routes: &[(SinkBit, Route)],
    counters: &mut BTreeMap<String, i64>,
    (rows, bytes): (&mut u64, &mut u64),
    max_bytes: u64,
    max_rows: Option<u64>,
) -> rusqlite::Result<Evicted> {
    let over = |rows: u64, bytes: u64| {
        (max_bytes > 0 && bytes > max_bytes) || max_rows.is_some_and(|m| rows > m)
    };
    let mut out = Evicted::default();
    // Eviction classes, in order: telemetry, states, metrics.
    for kinds in [
        [Kind::LegacyTelemetry, Kind::Telemetry],
        [Kind::States, Kind::States],
        [Kind::Metrics, Kind::Metrics],
    ] {
        while over(*rows, *bytes) {
            let victims: Vec<(i64, i64, i64, i64, i64)> = {
                let mut st = tx.prepare_cached(
                    "SELECT seq, kind, count, length(body), pending FROM outbox
                     WHERE kind IN (?1, ?2) ORDER BY seq LIMIT 64",
                )?;
                let it = st.query_map(params![kinds[0] as i64, kinds[1] as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })?;
                it.collect::<Result<_, _>>()?
            };
            if victims.is_empty() {
                break;
            }
            let mut del = tx.prepare_cached("DELETE FROM outbox WHERE seq = ?1")?;
            for (seq, kind, count, len, pending) in victims {
                if !over(*rows, *bytes) {
                    break;
                }
                del.execute([seq])?;
                *rows -= 1;
                *bytes = bytes.saturating_sub(len as u64 + ROW_OVERHEAD);
                let what = match Kind::from_i64(kind).evict_class() {
                    0 => "evicted_readings",
                    1 => "evicted_states",
                    _ => "evicted_metrics",
                };
                let n = if what == "evicted_metrics" { 1 } else { count };
                *counters.entry("evicted_rows".into()).or_default() += 1;
                *counters.entry(what.into()).or_default() += n;
                out.rows += 1;
                if what == "evicted_readings" {
                    out.readings += count as u64;
                }
                for (bit, r) in routes {
                    if pending & (1 << bit) != 0 {
                        *counters
                            .entry(counter_key(&r.name, "evicted_rows"))
                            .or_default() += 1;
                        *counters.entry(counter_key(&r.name, what)).or_default() += n;
                        let e = out.by_sink.entry(r.name.clone()).or_default();
                        e.0 += 1;
                        if what == "evicted_readings" {
                            e.1 += count as u64;
                        }
                    }
                }
            }
        }
    }
    Ok(out)
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

/// The names telemetry rows refer to, by id.
fn load_names(conn: &Connection) -> rusqlite::Result<cycle::Dictionary> {
    let mut st = conn.prepare("SELECT id, name FROM names ORDER BY id")?;
    let mut names: Vec<std::sync::Arc<str>> = Vec::new();
    for row in st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))? {
        let (id, name) = row?;
        // Ids are written dense from 0; a gap would shift every later name.
        if id != names.len() as i64 {
            return Err(rusqlite::Error::IntegralValueOutOfRange(0, id));
        }
        names.push(name.into());
    }
    Ok(cycle::Dictionary::from_saved(names))
}
