//! Read-only queries over the outbox database: the figures `status`
//! shows, and the evidence (state history, samples, digest chain, uplink
//! events) that the metrics, the report and the CLI read. Every function
//! takes any connection, so a command can read beside a running agent.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension};

use super::outbox::DISK_FULL_TS;
use super::{
    BufferError, DeviceHealth, SinkStats, Stats, DB_FILE, DISK_FULL_HOLD_MS, ROW_OVERHEAD,
};
use crate::chain::{ChainEntry, Seal};
use crate::plant::{State, WindowData};

pub(super) fn load_devices(conn: &Connection) -> rusqlite::Result<BTreeMap<String, DeviceHealth>> {
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
    let mut s = query_stats(&conn).map_err(open_err)?;
    // Offline there is no commit to clear it: judged by the wall clock.
    let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
    s.disk_full = s
        .disk_full_ts
        .is_some_and(|t| t <= now && now - t < DISK_FULL_HOLD_MS);
    Ok(s)
}

pub(super) fn query_stats(conn: &Connection) -> rusqlite::Result<Stats> {
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
        evicted_states: counter("evicted_states")? as u64,
        disk_full: false,
        disk_full_ts: Some(counter(DISK_FULL_TS)?).filter(|&t| t > 0),
        sinks: sink_stats(conn)?,
        devices: load_devices(conn)?.into_values().collect(),
    })
}

/// Each sink's depth and counters, in bit order.
fn sink_stats(conn: &Connection) -> rusqlite::Result<Vec<SinkStats>> {
    let mut counters: BTreeMap<String, i64> = BTreeMap::new();
    let mut st = conn.prepare("SELECT name, value FROM counters WHERE name LIKE 'sink:%'")?;
    for row in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
        let (k, v) = row?;
        counters.insert(k, v);
    }
    let mut st = conn.prepare(
        "SELECT s.name, (SELECT count(*) FROM outbox WHERE pending & (1 << s.bit) != 0)
         FROM sinks s ORDER BY s.bit",
    )?;
    let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (name, depth) = row?;
        let c = |what: &str| {
            counters
                .get(&format!("sink:{name}:{what}"))
                .copied()
                .unwrap_or(0) as u64
        };
        out.push(SinkStats {
            connected: None,
            rows: depth as u64,
            acked_rows: c("acked_rows"),
            evicted_rows: c("evicted_rows"),
            evicted_readings: c("evicted_readings"),
            evicted_states: c("evicted_states"),
            evicted_metrics: c("evicted_metrics"),
            name,
        });
    }
    Ok(out)
}

/// Loads what the metrics need for [from, to) from any connection (the
/// outbox thread's, or a read-only one for the `metrics` command).
pub fn window_data(conn: &Connection, from: i64, to: i64) -> rusqlite::Result<WindowData> {
    let mut data = WindowData {
        upto_seq: conn
            .prepare_cached(
                "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name='outbox'), 0)",
            )?
            .query_row([], |r| r.get(0))?,
        ..Default::default()
    };
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
