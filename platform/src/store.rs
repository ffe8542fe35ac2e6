//! Storage: the gateway registry, the de-duplicated messages, the state
//! transitions, the sealed windows with their verdicts, and what was
//! rejected.
//!
//! The schema is plain SQL (TEXT, BIGINT, composite primary keys, no
//! AUTOINCREMENT or other SQLite-only syntax), applied by numbered
//! migrations recorded in `schema_migrations`, so that the same statements
//! can run on PostgreSQL. De-duplication is the primary key
//! `(gateway_id, msg_id)` of `messages`, not an in-memory set: several
//! receiver instances share one database.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

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
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
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
    pub(crate) conn: Connection,
}

impl Store {
    /// Opens (creating if needed) the database and applies the migrations
    /// it has not had yet.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let mut store = Store { conn };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        self.conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version BIGINT PRIMARY KEY,
                applied_ts BIGINT NOT NULL
            )",
        )?;
        for (version, sql) in MIGRATIONS {
            // IMMEDIATE: two instances starting at once migrate one at a time.
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let done: Option<i64> = tx
                .query_row(
                    "SELECT version FROM schema_migrations WHERE version = ?1",
                    [version],
                    |r| r.get(0),
                )
                .optional()?;
            if done.is_none() {
                tx.execute_batch(sql)?;
                tx.execute(
                    "INSERT INTO schema_migrations (version, applied_ts) VALUES (?1, ?2)",
                    params![version, now_ms()],
                )?;
            }
            tx.commit()?;
        }
        Ok(())
    }

    /// The highest migration applied.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self.conn.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )?)
    }

    /// Registers a gateway; an id already enrolled is an error, not an
    /// update (a key change is a decision, not a side effect).
    pub fn enrol(&mut self, g: &Gateway) -> Result<(), StoreError> {
        g.validate()?;
        let n = self.conn.execute(
            "INSERT INTO gateways (gateway_id, uscc, region_code, public_key, enrolled_ts)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (gateway_id) DO NOTHING",
            params![g.gateway_id, g.uscc, g.region_code, g.public_key, now_ms()],
        )?;
        if n == 0 {
            return Err(StoreError::AlreadyEnrolled(g.gateway_id.clone()));
        }
        Ok(())
    }

    pub fn gateway(&self, id: &str) -> Result<Option<Gateway>, StoreError> {
        gateway(&self.conn, id)
    }

    /// Seq ranges never received, per (gateway, instance), between the
    /// lowest and the highest seq received (metrics and states).
    pub fn gaps(&self) -> Result<Vec<Gap>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT gateway_id, instance, seq FROM messages ORDER BY gateway_id, instance, seq",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut gaps = Vec::new();
        let mut last: Option<(String, String, i64)> = None;
        for row in rows {
            let (g, i, seq) = row?;
            if let Some((lg, li, ls)) = &last {
                if *lg == g && *li == i && seq > ls + 1 {
                    gaps.push(Gap {
                        gateway_id: g.clone(),
                        instance: i.clone(),
                        from: ls + 1,
                        to: seq - 1,
                    });
                }
            }
            last = Some((g, i, seq));
        }
        Ok(gaps)
    }

    /// The sealed windows, by gateway, instance and chain index.
    pub fn windows(&self) -> Result<Vec<WindowRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT gateway_id, instance, chain_index, msg_id, kind, start_ts, verdict, reason, flags
             FROM windows ORDER BY gateway_id, instance, chain_index",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(WindowRow {
                gateway_id: r.get(0)?,
                instance: r.get(1)?,
                index: r.get(2)?,
                msg_id: r.get(3)?,
                kind: r.get(4)?,
                start_ts: r.get(5)?,
                verdict: r.get(6)?,
                reason: r.get(7)?,
                flags: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// What was rejected: (topic, reason), oldest first.
    pub fn rejected(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT topic, reason FROM rejected ORDER BY received_ts, topic")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// How many messages each receiver instance (MQTT client id) stored.
    pub fn stored_by(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT received_by, COUNT(*) FROM messages GROUP BY received_by ORDER BY received_by",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// How many messages of `stream` are stored (each msg_id once).
    pub fn count(&self, stream: &str) -> Result<i64, StoreError> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*) FROM messages WHERE stream = ?1",
            [stream],
            |r| r.get(0),
        )?)
    }
}

pub(crate) fn gateway(conn: &Connection, id: &str) -> Result<Option<Gateway>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT gateway_id, uscc, region_code, public_key FROM gateways WHERE gateway_id = ?1",
            [id],
            |r| {
                Ok(Gateway {
                    gateway_id: r.get(0)?,
                    uscc: r.get(1)?,
                    region_code: r.get(2)?,
                    public_key: r.get(3)?,
                })
            },
        )
        .optional()?)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
