//! Storage: the gateway registry, the de-duplicated messages, the state
//! transitions, the sealed windows with their verdicts, and what was
//! rejected; in SQLite (one instance, nothing to install) or PostgreSQL
//! (several instances sharing the load), chosen by `database.path` or
//! `database.url`.
//!
//! Both backends run the same SQL (see [`db`] for the common dialect and
//! the one place it differs) and the same numbered migrations, recorded in
//! `schema_migrations`. De-duplication is the primary key
//! `(gateway_id, msg_id)` of `messages`, not an in-memory set: several
//! receiver instances share one database.

pub(crate) mod days;
pub(crate) mod db;
mod reports;

pub use days::Scope;
pub use reports::{ReportRecord, StoredDigest};

use std::path::PathBuf;

use crate::config::Backend;
use db::{args, Conn, Tx};

/// The migrations, in order; a migration is never edited once released.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE gateways (
        gateway_id TEXT PRIMARY KEY,
        uscc TEXT NOT NULL,
        region_code TEXT NOT NULL,
        public_key TEXT NOT NULL,
        enrolled_ts BIGINT NOT NULL
    );
    CREATE TABLE messages (
        gateway_id TEXT NOT NULL,
        msg_id TEXT NOT NULL,
        instance TEXT NOT NULL,
        seq BIGINT NOT NULL,
        stream TEXT NOT NULL,
        created_ts BIGINT NOT NULL,
        received_ts BIGINT NOT NULL,
        payload TEXT NOT NULL,
        PRIMARY KEY (gateway_id, msg_id)
    );
    CREATE INDEX messages_by_seq ON messages (gateway_id, instance, seq);
    CREATE TABLE transitions (
        gateway_id TEXT NOT NULL,
        instance TEXT NOT NULL,
        id BIGINT NOT NULL,
        seq BIGINT NOT NULL,
        equipment TEXT NOT NULL,
        state TEXT NOT NULL,
        ts BIGINT NOT NULL,
        PRIMARY KEY (gateway_id, instance, id)
    );
    CREATE TABLE windows (
        gateway_id TEXT NOT NULL,
        instance TEXT NOT NULL,
        chain_index BIGINT NOT NULL,
        msg_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        start_ts BIGINT NOT NULL,
        end_ts BIGINT NOT NULL,
        config_hash TEXT NOT NULL,
        states_upto_seq BIGINT NOT NULL,
        prev TEXT NOT NULL,
        digest TEXT NOT NULL,
        metrics_sha256 TEXT NOT NULL,
        transitions_sha256 TEXT NOT NULL,
        verdict TEXT NOT NULL,
        reason TEXT NOT NULL,
        flags TEXT NOT NULL,
        PRIMARY KEY (gateway_id, instance, chain_index)
    );
    CREATE TABLE rejected (
        received_ts BIGINT NOT NULL,
        topic TEXT NOT NULL,
        reason TEXT NOT NULL,
        payload TEXT NOT NULL
    );
    CREATE TABLE status (
        gateway_id TEXT PRIMARY KEY,
        received_ts BIGINT NOT NULL,
        state TEXT NOT NULL,
        clock_sync TEXT NOT NULL,
        payload TEXT NOT NULL
    );",
    ),
    // Which receiver instance (its MQTT client id) stored a message: with
    // several instances on one shared subscription, each does a share.
    (
        2,
        "ALTER TABLE messages ADD COLUMN received_by TEXT NOT NULL DEFAULT ''",
    ),
    // Every evidence report taken in (`POST /api/v1/reports`,
    // `verify-report`), accepted or refused, with what was found. The key
    // is text (received_ts and the report's SHA-256): the two dialects
    // number rows differently, text keys they share.
    (
        3,
        "CREATE TABLE reports (
        id TEXT PRIMARY KEY,
        received_ts BIGINT NOT NULL,
        gateway_id TEXT NOT NULL,
        period_from TEXT NOT NULL,
        period_to TEXT NOT NULL,
        report_sha256 TEXT NOT NULL,
        verdict TEXT NOT NULL,
        reasons TEXT NOT NULL,
        entries BIGINT NOT NULL,
        matched BIGINT NOT NULL,
        not_received BIGINT NOT NULL,
        mismatched BIGINT NOT NULL,
        report TEXT NOT NULL,
        signature TEXT NOT NULL
    );
    CREATE INDEX reports_by_gateway ON reports (gateway_id, received_ts);",
    ),
    // What verifying a window reads, by index instead of a scan of the
    // gateway's whole history: the transitions inside a window (by time),
    // each equipment's last one before it, and the windows still pending.
    // A window keeps its equipment list (a JSON array of ids, in the
    // payload's order) so that verifying it does not parse its payload
    // again; '' for windows stored before, which fall back to the payload.
    (
        4,
        "CREATE INDEX transitions_by_ts ON transitions (gateway_id, instance, ts);
    CREATE INDEX transitions_by_equipment ON transitions (gateway_id, instance, equipment, ts);
    CREATE INDEX windows_pending ON windows (gateway_id, instance, chain_index)
        WHERE verdict = 'pending';
    ALTER TABLE windows ADD COLUMN equipment TEXT NOT NULL DEFAULT '';",
    ),
    // The outbox counters of each gateway instance's latest status: what
    // explains the messages that never arrived (see `gaps`). Kept per
    // instance, because a gateway whose database was replaced reports only
    // its new instance, and the old one's losses must stay explainable.
    (
        5,
        "CREATE TABLE outbox_status (
        gateway_id TEXT NOT NULL,
        instance TEXT NOT NULL,
        ts BIGINT NOT NULL,
        received_ts BIGINT NOT NULL,
        unsent_rows BIGINT NOT NULL,
        last_seq BIGINT NOT NULL,
        evicted_rows BIGINT NOT NULL,
        evicted_metrics BIGINT NOT NULL,
        evicted_states BIGINT NOT NULL,
        PRIMARY KEY (gateway_id, instance)
    )",
    ),
    // Each day window's figures as counts (see `days`): the district and
    // city pages read these rows, filtered by date and region, instead of
    // parsing a year of payloads per request. The verdict is the window's,
    // kept in step. Every window keeps its local date, so that the broken
    // windows of a period are found by index. Day windows stored before
    // get their rows, and windows not verified their date, from the
    // payloads once, when this migration is applied (`days::backfill`).
    (
        6,
        "CREATE TABLE day_figures (
        gateway_id TEXT NOT NULL,
        instance TEXT NOT NULL,
        chain_index BIGINT NOT NULL,
        verdict TEXT NOT NULL,
        local_date TEXT NOT NULL,
        uscc TEXT NOT NULL,
        region_code TEXT NOT NULL,
        industry TEXT NOT NULL,
        any_key BIGINT NOT NULL,
        cnc_declared_n BIGINT NOT NULL,
        cnc_declared_d BIGINT NOT NULL,
        cnc_verified_n BIGINT NOT NULL,
        cnc_verified_d BIGINT NOT NULL,
        networked_n BIGINT NOT NULL,
        networked_d BIGINT NOT NULL,
        nc_time_n BIGINT NOT NULL,
        nc_time_d BIGINT NOT NULL,
        processes TEXT NOT NULL,
        PRIMARY KEY (gateway_id, instance, chain_index)
    );
    CREATE INDEX day_figures_by_date ON day_figures (local_date)
        WHERE verdict = 'verified';
    CREATE INDEX day_figures_by_region ON day_figures (region_code, local_date)
        WHERE verdict = 'verified';
    CREATE INDEX day_figures_by_uscc ON day_figures (uscc, local_date)
        WHERE verdict = 'verified';
    ALTER TABLE windows ADD COLUMN local_date TEXT NOT NULL DEFAULT '';
    CREATE INDEX windows_broken ON windows (local_date) WHERE verdict = 'broken';",
    ),
    // The district page lists each enterprise with its name and the flags
    // of its windows in the period: the name as the gateway's day figures
    // last gave it (set at ingest), the flagged windows by index.
    (
        7,
        "ALTER TABLE gateways ADD COLUMN enterprise_name TEXT NOT NULL DEFAULT '';
    CREATE INDEX windows_flagged ON windows (local_date) WHERE flags <> '';",
    ),
    // The transitions kept in one tree, ordered by gateway instance and
    // time, instead of a table and three indexes: a catch-up spent most of
    // its time writing the pages that each window's transitions touched in
    // four trees (five places in one of them, one per machine). Verifying
    // reads a window's transitions and, going back from its start, each
    // machine's last one before it, both in this order. A transition is
    // kept once per (time, id): a gateway's replay of it is a duplicate.
    (
        8,
        "CREATE TABLE transitions_by_time (
        gateway_id TEXT NOT NULL,
        instance TEXT NOT NULL,
        ts BIGINT NOT NULL,
        id BIGINT NOT NULL,
        seq BIGINT NOT NULL,
        equipment TEXT NOT NULL,
        state TEXT NOT NULL,
        PRIMARY KEY (gateway_id, instance, ts, id)
    ) WITHOUT ROWID;
    INSERT INTO transitions_by_time (gateway_id, instance, ts, id, seq, equipment, state)
        SELECT gateway_id, instance, ts, id, seq, equipment, state FROM transitions;
    DROP TABLE transitions;
    ALTER TABLE transitions_by_time RENAME TO transitions;",
    ),
];

/// The schema version the migrations reach.
pub const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("PostgreSQL: no answer within the timeout; the connection is replaced")]
    Timeout,
    #[error("PostgreSQL: not connected")]
    NotConnected,
    #[error("database: unexpected value: {0}")]
    Decode(String),
    #[error("gateway {0} is already enrolled")]
    AlreadyEnrolled(String),
    #[error("{0}")]
    Invalid(String),
}

/// A registered gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    pub gateway_id: String,
    /// 统一社会信用代码, 18 characters.
    pub uscc: String,
    /// GB/T 2260, 6 digits.
    pub region_code: String,
    /// Ed25519 public key, 64 lowercase hex, as `zgsz-agent identity`
    /// prints it.
    pub public_key: String,
}

impl Gateway {
    /// Checks the forms docs/mqtt.md gives for the topic parts and the key.
    pub fn validate(&self) -> Result<(), StoreError> {
        let bad = |s: String| Err(StoreError::Invalid(s));
        if self.gateway_id.is_empty()
            || !self
                .gateway_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return bad(format!(
                "gateway id {:?}: use [A-Za-z0-9_-]+, as agent.gateway_id",
                self.gateway_id
            ));
        }
        if self.uscc.len() != 18 || !self.uscc.chars().all(|c| c.is_ascii_alphanumeric()) {
            return bad(format!(
                "USCC {:?}: the 18-character 统一社会信用代码, as enterprise.uscc",
                self.uscc
            ));
        }
        if self.region_code.len() != 6 || !self.region_code.chars().all(|c| c.is_ascii_digit()) {
            return bad(format!(
                "region code {:?}: 6 digits (GB/T 2260), as enterprise.region_code",
                self.region_code
            ));
        }
        if self.public_key.len() != 64
            || !self
                .public_key
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        {
            return bad(
                "public key: 64 lowercase hex characters, the `public key` line of `zgsz-agent identity`"
                    .into(),
            );
        }
        Ok(())
    }
}

/// A seq range of one (gateway, instance) that was never received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub gateway_id: String,
    pub instance: String,
    /// First missing seq.
    pub from: i64,
    /// Last missing seq.
    pub to: i64,
}

/// One sealed window as stored, with its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowRow {
    pub gateway_id: String,
    pub instance: String,
    pub index: i64,
    pub msg_id: String,
    pub kind: String,
    pub start_ts: i64,
    /// `pending`, `verified` or `broken`.
    pub verdict: String,
    pub reason: String,
    /// Comma-separated: `config_hash_changed`, `clock_unsynchronized`,
    /// `declared_verified_gap`.
    pub flags: String,
}

pub struct Store {
    /// The backend's connection; every statement goes through its
    /// transactions.
    pub(crate) conn: Conn,
}

impl Store {
    /// Opens (creating a SQLite file if needed) the database and applies
    /// the migrations it has not had yet.
    pub async fn open(backend: &Backend) -> Result<Store, StoreError> {
        let conn = match backend {
            Backend::Sqlite { path } => Conn::open_sqlite(path)?,
            Backend::Postgres { url } => Conn::open_postgres(url).await?,
        };
        let mut store = Store { conn };
        store.migrate().await?;
        Ok(store)
    }

    /// Opens the SQLite database at `path`.
    pub async fn sqlite(path: impl Into<PathBuf>) -> Result<Store, StoreError> {
        Store::open(&Backend::Sqlite { path: path.into() }).await
    }

    /// `SQLite` or `PostgreSQL`.
    pub fn backend_name(&self) -> &'static str {
        match self.conn.dialect() {
            db::Dialect::Sqlite => "SQLite",
            db::Dialect::Postgres => "PostgreSQL",
        }
    }

    /// Begins a transaction (reconnecting to PostgreSQL if it broke).
    pub(crate) async fn begin(&mut self, write: bool) -> Result<Tx<'_>, StoreError> {
        self.conn.begin(write).await
    }

    /// One migration per transaction, each under a lock, so that instances
    /// starting together migrate one after the other and each version is
    /// applied once. On PostgreSQL DDL is transactional, and even the
    /// `CREATE TABLE IF NOT EXISTS` of the bookkeeping table runs under
    /// the lock: run concurrently it can fail on the catalogue's unique
    /// keys.
    async fn migrate(&mut self) -> Result<(), StoreError> {
        for (version, sql) in MIGRATIONS {
            let mut tx = self.begin(true).await?;
            tx.lock("zgsz-platform schema_migrations").await?;
            tx.batch(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                    version BIGINT PRIMARY KEY,
                    applied_ts BIGINT NOT NULL
                )",
            )
            .await?;
            let done = tx
                .query_opt(
                    "SELECT version FROM schema_migrations WHERE version = ?1",
                    args![*version],
                )
                .await?;
            if done.is_none() {
                tx.batch(sql).await?;
                if *version == 6 {
                    days::backfill(&mut tx).await?;
                }
                tx.execute(
                    "INSERT INTO schema_migrations (version, applied_ts) VALUES (?1, ?2)",
                    args![*version, now_ms()],
                )
                .await?;
            }
            tx.commit().await?;
        }
        Ok(())
    }

    /// The highest migration applied.
    pub async fn schema_version(&mut self) -> Result<i64, StoreError> {
        let mut tx = self.begin(false).await?;
        let row = tx
            .query_opt(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                args![],
            )
            .await?;
        tx.commit().await?;
        row.map_or(Ok(0), |r| r.int(0))
    }

    /// Registers a gateway; an id already enrolled is an error, not an
    /// update (a key change is a decision, not a side effect).
    pub async fn enrol(&mut self, g: &Gateway) -> Result<(), StoreError> {
        g.validate()?;
        let mut tx = self.begin(true).await?;
        let n = tx
            .execute(
                "INSERT INTO gateways (gateway_id, uscc, region_code, public_key, enrolled_ts)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (gateway_id) DO NOTHING",
                args![
                    &g.gateway_id,
                    &g.uscc,
                    &g.region_code,
                    &g.public_key,
                    now_ms()
                ],
            )
            .await?;
        tx.commit().await?;
        if n == 0 {
            return Err(StoreError::AlreadyEnrolled(g.gateway_id.clone()));
        }
        Ok(())
    }

    pub async fn gateway(&mut self, id: &str) -> Result<Option<Gateway>, StoreError> {
        let mut tx = self.begin(false).await?;
        let g = gateway(&mut tx, id).await?;
        tx.commit().await?;
        Ok(g)
    }

    /// Seq ranges never received, per (gateway, instance), between the
    /// lowest and the highest seq received (metrics and states); see
    /// [`Store::accounting`] for what they mean.
    pub async fn gaps(&mut self) -> Result<Vec<Gap>, StoreError> {
        Ok(self
            .accounting()
            .await?
            .into_iter()
            .flat_map(|a| {
                a.seq_gaps.into_iter().map(move |(from, to)| Gap {
                    gateway_id: a.gateway_id.clone(),
                    instance: a.instance.clone(),
                    from,
                    to,
                })
            })
            .collect())
    }

    /// The sealed windows, by gateway, instance and chain index.
    pub async fn windows(&mut self) -> Result<Vec<WindowRow>, StoreError> {
        let mut tx = self.begin(false).await?;
        let rows = tx
            .query(
                "SELECT gateway_id, instance, chain_index, msg_id, kind, start_ts, verdict,
                   reason, flags FROM windows",
                args![],
            )
            .await?;
        tx.commit().await?;
        let mut windows = rows
            .iter()
            .map(|r| {
                Ok(WindowRow {
                    gateway_id: r.text(0)?,
                    instance: r.text(1)?,
                    index: r.int(2)?,
                    msg_id: r.text(3)?,
                    kind: r.text(4)?,
                    start_ts: r.int(5)?,
                    verdict: r.text(6)?,
                    reason: r.text(7)?,
                    flags: r.text(8)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        windows.sort_by(|a, b| {
            (&a.gateway_id, &a.instance, a.index).cmp(&(&b.gateway_id, &b.instance, b.index))
        });
        Ok(windows)
    }

    /// What was rejected: (topic, reason), oldest first.
    pub async fn rejected(&mut self) -> Result<Vec<(String, String)>, StoreError> {
        let mut tx = self.begin(false).await?;
        let rows = tx
            .query("SELECT received_ts, topic, reason FROM rejected", args![])
            .await?;
        tx.commit().await?;
        let mut rejected = rows
            .iter()
            .map(|r| Ok((r.int(0)?, r.text(1)?, r.text(2)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        rejected.sort();
        Ok(rejected.into_iter().map(|(_, t, r)| (t, r)).collect())
    }

    /// How many messages each receiver instance (MQTT client id) stored.
    pub async fn stored_by(&mut self) -> Result<Vec<(String, i64)>, StoreError> {
        self.counts("SELECT received_by, COUNT(*) FROM messages GROUP BY received_by")
            .await
    }

    /// How many sealed windows have each verdict, by verdict: what a
    /// monitor polls, without listing the windows.
    pub async fn verdicts(&mut self) -> Result<Vec<(String, i64)>, StoreError> {
        self.counts("SELECT verdict, COUNT(*) FROM windows GROUP BY verdict")
            .await
    }

    /// How many windows of one gateway instance are verified: a read of
    /// that instance's part of the key, where `verdicts` reads every
    /// window (which a progress display polling it would pay each time).
    pub async fn verified_windows(
        &mut self,
        gateway_id: &str,
        instance: &str,
    ) -> Result<i64, StoreError> {
        let mut tx = self.begin(false).await?;
        let rows = tx
            .query(
                "SELECT COUNT(*) FROM windows
                 WHERE gateway_id = ?1 AND instance = ?2 AND verdict = 'verified'",
                args![gateway_id, instance],
            )
            .await?;
        tx.commit().await?;
        rows.first().map_or(Ok(0), |r| r.int(0))
    }

    /// The (text, count) rows of a `GROUP BY`, sorted by the text.
    async fn counts(&mut self, sql: &'static str) -> Result<Vec<(String, i64)>, StoreError> {
        let mut tx = self.begin(false).await?;
        let rows = tx.query(sql, args![]).await?;
        tx.commit().await?;
        let mut by = rows
            .iter()
            .map(|r| Ok((r.text(0)?, r.int(1)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        by.sort();
        Ok(by)
    }

    /// How many messages of `stream` are stored (each msg_id once).
    pub async fn count(&mut self, stream: &str) -> Result<i64, StoreError> {
        let mut tx = self.begin(false).await?;
        let row = tx
            .query_opt(
                "SELECT COUNT(*) FROM messages WHERE stream = ?1",
                args![stream],
            )
            .await?;
        tx.commit().await?;
        row.map_or(Ok(0), |r| r.int(0))
    }
}

pub(crate) async fn gateway(tx: &mut Tx<'_>, id: &str) -> Result<Option<Gateway>, StoreError> {
    let Some(r) = tx
        .query_opt(
            "SELECT gateway_id, uscc, region_code, public_key FROM gateways WHERE gateway_id = ?1",
            args![id],
        )
        .await?
    else {
        return Ok(None);
    };
    Ok(Some(Gateway {
        gateway_id: r.text(0)?,
        uscc: r.text(1)?,
        region_code: r.text(2)?,
        public_key: r.text(3)?,
    }))
}

impl StoreError {
    /// Whether the same transaction may succeed if tried again later: the
    /// database was unreachable, restarting, busy, or chose this
    /// transaction as a deadlock or serialisation victim. Nothing of it
    /// was committed (or, if the connection broke during COMMIT, it may
    /// have been; trying again then finds a duplicate). Any other error
    /// would fail again the same way.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Timeout | StoreError::NotConnected => true,
            StoreError::Db(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ),
            StoreError::Postgres(e) => {
                if e.is_closed() {
                    return true;
                }
                if let Some(code) = e.code() {
                    let c = code.code();
                    // 08: connection exception; 57P01-57P03: the server is
                    // shutting down or starting; 53300: too many
                    // connections; 40001, 40P01: serialisation failure,
                    // deadlock.
                    return c.starts_with("08")
                        || matches!(c, "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01");
                }
                // No SQLSTATE: the socket itself failed (refused, reset,
                // the server's socket file gone while it restarts).
                let mut source = std::error::Error::source(e);
                while let Some(s) = source {
                    if s.is::<std::io::Error>() {
                        return true;
                    }
                    source = s.source();
                }
                false
            }
            _ => false,
        }
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
