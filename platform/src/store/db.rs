//! The two backends behind one narrow interface: a transaction that runs
//! SQL written once for both.
//!
//! Every statement of the receiver (the migrations, ingest, verification,
//! the listings) is written once, in the SQL that SQLite (3.24 and later)
//! and PostgreSQL both accept: TEXT and BIGINT columns, composite primary
//! keys, `INSERT … ON CONFLICT … DO NOTHING` and `DO UPDATE SET … =
//! excluded.…`. Parameters are numbered `?1`, `?2`, …, and a statement is a
//! `&'static str`, so no SQL is ever built from data.
//!
//! The dialects differ in one place, [`Dialect::sql`]: PostgreSQL numbers
//! its parameters `$1`, `$2`, …, and has no `WITHOUT ROWID` tables (a
//! table clustered by its key in SQLite). A future difference (an auto-increment
//! column, say: `INTEGER PRIMARY KEY` against `BIGSERIAL`) goes there too,
//! never into the callers. The other differences are behaviour, and live in
//! [`Tx`]: how a transaction begins, and [`Tx::lock`].
//!
//! Values are integers (i64) and text, the two column types of the schema;
//! [`Arg`] carries them in, [`Row`] out. Ordering by text is left to the
//! callers, in Rust: SQLite compares bytes and PostgreSQL its database's
//! collation, and the two backends must list the same things in the same
//! order.

use std::collections::HashMap;
use std::time::Duration;

use tokio_postgres::types::{ToSql, Type};

use super::StoreError;

/// A PostgreSQL statement (or a connect) that takes longer than this is
/// abandoned with its connection: a server that vanished without closing
/// the socket must not hold ingest for ever.
const PG_TIMEOUT: Duration = Duration::from_secs(60);

/// How SQLite waits for another connection's write lock.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The SQL dialect of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The statement `sql`, written with `?N` parameters, in this dialect.
    pub(crate) fn sql(self, sql: &str) -> String {
        match self {
            Dialect::Sqlite => sql.to_string(),
            // The statements hold no `?` but their parameters (no string
            // literal has one), so this is the whole translation; a
            // PostgreSQL table is always a heap with its key in an index,
            // which is what SQLite's default rowid table is too.
            Dialect::Postgres => sql.replace('?', "$").replace(") WITHOUT ROWID", ")"),
        }
    }
}

/// A parameter: the schema has integers and text only. The arrays are
/// for PostgreSQL's `unnest`, which inserts many rows in one statement
/// (see [`Tx::dialect`]); SQLite refuses them.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    Int(i64),
    Text(&'a str),
    Ints(&'a [i64]),
    Texts(&'a [&'a str]),
}

impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Arg::Int(v)
    }
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(v: &'a str) -> Self {
        Arg::Text(v)
    }
}

impl<'a> From<&'a String> for Arg<'a> {
    fn from(v: &'a String) -> Self {
        Arg::Text(v)
    }
}

impl rusqlite::ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(match self {
            Arg::Int(v) => (*v).into(),
            Arg::Text(v) => (*v).into(),
            Arg::Ints(_) | Arg::Texts(_) => {
                return Err(rusqlite::Error::ToSqlConversionFailure(
                    "an array parameter is for PostgreSQL only".into(),
                ))
            }
        })
    }
}

impl Arg<'_> {
    fn pg(&self) -> &(dyn ToSql + Sync) {
        match self {
            Arg::Int(v) => v,
            Arg::Text(v) => v,
            Arg::Ints(v) => v,
            Arg::Texts(v) => v,
        }
    }
}

/// `args![a, b, …]`: the parameters of a statement, each an i64 or text.
macro_rules! args {
    ($($x:expr),* $(,)?) => {
        &[$($crate::store::db::Arg::from($x)),*][..]
    };
}
pub(crate) use args;

/// One value of a result row.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cell {
    Null,
    Int(i64),
    Text(String),
}

/// One result row, read the same from both backends.
#[derive(Debug, Clone)]
pub(crate) struct Row(Vec<Cell>);

impl Row {
    /// Column `i` (from 0), an integer.
    pub(crate) fn int(&self, i: usize) -> Result<i64, StoreError> {
        match self.0.get(i) {
            Some(Cell::Int(v)) => Ok(*v),
            other => Err(StoreError::Decode(format!(
                "column {i}: expected an integer, found {other:?}"
            ))),
        }
    }

    /// Column `i` (from 0), text.
    pub(crate) fn text(&self, i: usize) -> Result<String, StoreError> {
        match self.0.get(i) {
            Some(Cell::Text(v)) => Ok(v.clone()),
            other => Err(StoreError::Decode(format!(
                "column {i}: expected text, found {other:?}"
            ))),
        }
    }

    /// Column `i` (from 0), text, taken out of the row (left empty): no
    /// copy, for reading many rows.
    pub(crate) fn take_text(&mut self, i: usize) -> Result<String, StoreError> {
        match self.0.get_mut(i) {
            Some(Cell::Text(v)) => Ok(std::mem::take(v)),
            other => Err(StoreError::Decode(format!(
                "column {i}: expected text, found {other:?}"
            ))),
        }
    }

    fn from_sqlite(r: &rusqlite::Row, n: usize) -> Result<Row, StoreError> {
        use rusqlite::types::ValueRef;
        let mut cells = Vec::with_capacity(n);
        for i in 0..n {
            cells.push(match r.get_ref(i)? {
                ValueRef::Null => Cell::Null,
                ValueRef::Integer(v) => Cell::Int(v),
                ValueRef::Text(t) => Cell::Text(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Real(_) | ValueRef::Blob(_) => {
                    return Err(StoreError::Decode(format!(
                        "column {i}: neither integer nor text"
                    )))
                }
            });
        }
        Ok(Row(cells))
    }

    fn from_pg(r: &tokio_postgres::Row) -> Result<Row, StoreError> {
        let mut cells = Vec::with_capacity(r.len());
        for (i, col) in r.columns().iter().enumerate() {
            let ty = col.type_();
            let cell = if *ty == Type::INT8 {
                r.try_get::<_, Option<i64>>(i)?.map(Cell::Int)
            } else if *ty == Type::INT4 {
                r.try_get::<_, Option<i32>>(i)?.map(|v| Cell::Int(v.into()))
            } else if *ty == Type::INT2 {
                r.try_get::<_, Option<i16>>(i)?.map(|v| Cell::Int(v.into()))
            } else if *ty == Type::VOID {
                // What pg_advisory_xact_lock returns.
                None
            } else if [Type::TEXT, Type::VARCHAR, Type::BPCHAR, Type::NAME].contains(ty) {
                r.try_get::<_, Option<String>>(i)?.map(Cell::Text)
            } else {
                return Err(StoreError::Decode(format!(
                    "column {i} ({}): type {ty} is neither integer nor text",
                    col.name()
                )));
            };
            cells.push(cell.unwrap_or(Cell::Null));
        }
        Ok(Row(cells))
    }
}

/// A database connection of either backend.
pub(crate) enum Conn {
    Sqlite(rusqlite::Connection),
    /// Boxed: its config and statement cache are large beside SQLite's
    /// handle.
    Postgres(Box<Pg>),
}

/// A PostgreSQL connection that reconnects when it is needed again after
/// it broke.
pub(crate) struct Pg {
    /// Parsed from `database.url`; kept to reconnect.
    config: tokio_postgres::Config,
    /// `None` until connected; a closed client is replaced at the next
    /// [`Conn::begin`].
    client: Option<tokio_postgres::Client>,
    /// Set when a statement timed out: the connection's state is unknown,
    /// so it is replaced at the next [`Conn::begin`] too.
    poisoned: bool,
    /// The statements prepared on `client`, by their `?N` text: a message
    /// runs a dozen statements, and preparing each costs a round trip.
    statements: HashMap<&'static str, tokio_postgres::Statement>,
}

impl Conn {
    pub(crate) fn open_sqlite(path: &std::path::Path) -> Result<Conn, StoreError> {
        let conn = rusqlite::Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // 64 MiB of page cache instead of 2: verifying a window reads index
        // pages all over a database of gigabytes, and a cache too small to
        // hold them spills and re-reads pages (most of a backlog's time).
        conn.pragma_update(None, "cache_size", -65_536)?;
        conn.busy_timeout(SQLITE_BUSY_TIMEOUT)?;
        // Ingest alone runs about twenty statements in turn; rusqlite's
        // default cache of 16 would prepare most of them again each time.
        conn.set_prepared_statement_cache_capacity(64);
        // Checkpoints every 100,000 pages (400 MB of WAL) instead of 1,000:
        // each copies every page the WAL holds into the database, and a
        // page that many commits changed is copied once instead of once a
        // commit. A catch-up's transactions change thousands of index pages
        // each, so the default checkpointed at nearly every commit (a
        // district's week took 162 s instead of 109 s; BENCHMARKS.md).
        conn.pragma_update(None, "wal_autocheckpoint", 100_000)?;
        Ok(Conn::Sqlite(conn))
    }

    /// Connects to PostgreSQL at `url` (a `postgresql://` URL or libpq
    /// key=value pairs).
    pub(crate) async fn open_postgres(url: &str) -> Result<Conn, StoreError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Invalid(format!("database.url: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(PG_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("zgsz-platform");
        }
        let mut pg = Pg {
            config,
            client: None,
            poisoned: false,
            statements: HashMap::new(),
        };
        pg.connected().await?;
        Ok(Conn::Postgres(Box::new(pg)))
    }

    pub(crate) fn dialect(&self) -> Dialect {
        match self {
            Conn::Sqlite(_) => Dialect::Sqlite,
            Conn::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Begins a transaction; `write` when it will write.
    ///
    /// SQLite: a writer begins `IMMEDIATE`, taking the database's one write
    /// lock at BEGIN (where the busy timeout waits for it), so writers run
    /// one after the other; a deferred transaction upgrading after another
    /// connection's commit would fail at once instead.
    ///
    /// PostgreSQL: `READ COMMITTED`, explicitly (a server may default to
    /// another level). Writers of one gateway are serialised by
    /// [`Tx::lock`], and READ COMMITTED is what makes that enough:
    /// each statement sees every transaction committed before the
    /// statement began, so every read after the lock sees all that the
    /// previous holder wrote. (Under REPEATABLE READ the snapshot would
    /// be taken at the lock statement, before its wait, and miss exactly
    /// that.) A broken connection is replaced here, first.
    pub(crate) async fn begin(&mut self, write: bool) -> Result<Tx<'_>, StoreError> {
        match self {
            Conn::Sqlite(conn) => {
                conn.execute_batch(if write {
                    "BEGIN IMMEDIATE"
                } else {
                    "BEGIN DEFERRED"
                })?;
                Ok(Tx::Sqlite(SqliteTx { conn, open: true }))
            }
            Conn::Postgres(pg) => {
                pg.connected().await?;
                let Pg {
                    client,
                    statements,
                    poisoned,
                    ..
                } = &mut **pg;
                let Some(client) = client.as_mut() else {
                    return Err(StoreError::NotConnected);
                };
                let start = client
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::ReadCommitted)
                    .read_only(!write)
                    .start();
                let tx = PgTx::timed(poisoned, start).await?;
                Ok(Tx::Postgres(PgTx {
                    tx,
                    statements,
                    poisoned,
                }))
            }
        }
    }
}

impl Pg {
    /// Connects unless connected; drops a client that has closed or that a
    /// timeout left in an unknown state.
    async fn connected(&mut self) -> Result<(), StoreError> {
        if !self.poisoned && self.client.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(());
        }
        // Dropping the client ends its connection task, which closes the
        // socket; the server then rolls back whatever was left open.
        self.client = None;
        self.poisoned = false;
        self.statements.clear();
        let (client, connection) = match tokio::time::timeout(
            PG_TIMEOUT,
            self.config.connect(tokio_postgres::NoTls),
        )
        .await
        {
            Ok(c) => c?,
            Err(_) => return Err(StoreError::Timeout),
        };
        // The connection does the socket I/O; it ends when the socket does,
        // and the client reports `is_closed` from then on.
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "PostgreSQL connection lost");
            }
        });
        // Payloads stored out of line (a metrics message is about 4 KB) are
        // compressed; lz4 takes a fraction of the CPU of the default pglz,
        // which was the costliest single function in the server's profile
        // of a catch-up (see BENCHMARKS.md). A server built without lz4
        // refuses the setting and keeps pglz.
        match tokio::time::timeout(
            PG_TIMEOUT,
            client.batch_execute("SET default_toast_compression = 'lz4'"),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "PostgreSQL keeps pglz compression"),
            Err(_) => return Err(StoreError::Timeout),
        }
        tracing::info!("Connected to PostgreSQL");
        self.client = Some(client);
        Ok(())
    }
}

/// A transaction of either backend; dropped without [`Tx::commit`], it
/// rolls back.
pub(crate) enum Tx<'a> {
    Sqlite(SqliteTx<'a>),
    Postgres(PgTx<'a>),
}

/// A SQLite transaction over `&mut Connection`, not `rusqlite::Transaction`:
/// that one holds a `&Connection`, which is not `Send` (the connection is
/// not `Sync`), and ingest's futures must be `Send` to be spawned.
pub(crate) struct SqliteTx<'a> {
    conn: &'a mut rusqlite::Connection,
    /// Begun and neither committed nor rolled back.
    open: bool,
}

impl Drop for SqliteTx<'_> {
    fn drop(&mut self) {
        if self.open {
            // Nothing to do about a failure: the connection then keeps the
            // transaction, and the next BEGIN fails and says so.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

pub(crate) struct PgTx<'a> {
    tx: tokio_postgres::Transaction<'a>,
    /// The connection's prepared statements.
    statements: &'a mut HashMap<&'static str, tokio_postgres::Statement>,
    /// The connection's [`Pg::poisoned`].
    poisoned: &'a mut bool,
}

impl PgTx<'_> {
    async fn timed<T>(
        poisoned: &mut bool,
        fut: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(PG_TIMEOUT, fut).await {
            Ok(r) => Ok(r?),
            Err(_) => {
                *poisoned = true;
                Err(StoreError::Timeout)
            }
        }
    }

    async fn statement(
        &mut self,
        sql: &'static str,
    ) -> Result<tokio_postgres::Statement, StoreError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let text = Dialect::Postgres.sql(sql);
        let s = Self::timed(self.poisoned, self.tx.prepare(&text)).await?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }
}

impl Tx<'_> {
    /// The backend's dialect, for the rare statement written for one of
    /// them (an `unnest` of arrays on PostgreSQL).
    pub(crate) fn dialect(&self) -> Dialect {
        match self {
            Tx::Sqlite(_) => Dialect::Sqlite,
            Tx::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Runs a statement; the number of rows it changed.
    pub(crate) async fn execute(
        &mut self,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> Result<u64, StoreError> {
        match self {
            Tx::Sqlite(tx) => {
                let mut stmt = tx.conn.prepare_cached(sql)?;
                Ok(stmt.execute(rusqlite::params_from_iter(args.iter()))? as u64)
            }
            Tx::Postgres(pg) => {
                let stmt = pg.statement(sql).await?;
                let params: Vec<_> = args.iter().map(Arg::pg).collect();
                PgTx::timed(pg.poisoned, pg.tx.execute(&stmt, &params)).await
            }
        }
    }

    /// Runs a query; all its rows.
    pub(crate) async fn query(
        &mut self,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> Result<Vec<Row>, StoreError> {
        match self {
            Tx::Sqlite(tx) => {
                let mut stmt = tx.conn.prepare_cached(sql)?;
                let n = stmt.column_count();
                let mut rows = stmt.query(rusqlite::params_from_iter(args.iter()))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    out.push(Row::from_sqlite(r, n)?);
                }
                Ok(out)
            }
            Tx::Postgres(pg) => {
                let stmt = pg.statement(sql).await?;
                let params: Vec<_> = args.iter().map(Arg::pg).collect();
                let rows = PgTx::timed(pg.poisoned, pg.tx.query(&stmt, &params)).await?;
                rows.iter().map(Row::from_pg).collect()
            }
        }
    }

    /// Runs a query, handing each row to `each` as it is read instead of
    /// collecting them: a year of rows is never all held as [`Row`]s.
    pub(crate) async fn query_each(
        &mut self,
        sql: &'static str,
        args: &[Arg<'_>],
        mut each: impl FnMut(Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        match self {
            Tx::Sqlite(tx) => {
                let mut stmt = tx.conn.prepare_cached(sql)?;
                let n = stmt.column_count();
                let mut rows = stmt.query(rusqlite::params_from_iter(args.iter()))?;
                while let Some(r) = rows.next()? {
                    each(Row::from_sqlite(r, n)?)?;
                }
                Ok(())
            }
            Tx::Postgres(pg) => {
                let stmt = pg.statement(sql).await?;
                let params: Vec<_> = args.iter().map(Arg::pg).collect();
                let rows = PgTx::timed(pg.poisoned, pg.tx.query(&stmt, &params)).await?;
                for r in &rows {
                    each(Row::from_pg(r)?)?;
                }
                Ok(())
            }
        }
    }

    /// Runs a query; its first row, if any.
    pub(crate) async fn query_opt(
        &mut self,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, args).await?.into_iter().next())
    }

    /// Runs independent statements, each with its arguments; the rows of
    /// each, in order.
    ///
    /// On PostgreSQL they are sent at once and answered in order
    /// (pipelined): one round trip for all instead of one each, which is
    /// most of a statement's cost on a server nearby. The server still runs
    /// them one after the other, in order, so a statement may depend on
    /// the locks an earlier one took, but not on the rows it returns.
    pub(crate) async fn query_many(
        &mut self,
        statements: &[(&'static str, &[Arg<'_>])],
    ) -> Result<Vec<Vec<Row>>, StoreError> {
        match self {
            Tx::Sqlite(_) => {
                let mut out = Vec::with_capacity(statements.len());
                for (sql, args) in statements {
                    out.push(self.query(sql, args).await?);
                }
                Ok(out)
            }
            Tx::Postgres(pg) => {
                let mut prepared = Vec::with_capacity(statements.len());
                for (sql, _) in statements {
                    prepared.push(pg.statement(sql).await?);
                }
                let params: Vec<Vec<&(dyn ToSql + Sync)>> = statements
                    .iter()
                    .map(|(_, args)| args.iter().map(Arg::pg).collect())
                    .collect();
                let PgTx { tx, poisoned, .. } = pg;
                let all = futures_util::future::try_join_all(
                    prepared.iter().zip(&params).map(|(s, p)| tx.query(s, p)),
                );
                let answers = PgTx::timed(poisoned, all).await?;
                answers
                    .iter()
                    .map(|rows| rows.iter().map(Row::from_pg).collect())
                    .collect()
            }
        }
    }

    /// Runs several statements without parameters (a migration).
    pub(crate) async fn batch(&mut self, sql: &'static str) -> Result<(), StoreError> {
        match self {
            Tx::Sqlite(tx) => Ok(tx.conn.execute_batch(sql)?),
            Tx::Postgres(pg) => {
                let text = Dialect::Postgres.sql(sql);
                PgTx::timed(pg.poisoned, pg.tx.batch_execute(&text)).await
            }
        }
    }

    /// Serialises this transaction with every other one that holds the
    /// same lock `key`, until commit or rollback.
    ///
    /// SQLite needs nothing: a writer already holds the database's one
    /// write lock (see [`Conn::begin`]). PostgreSQL takes a transaction-
    /// scoped advisory lock on a 64-bit hash of the key (a collision only
    /// serialises two keys that need not be; it never lets two holders of
    /// one key run together).
    pub(crate) async fn lock(&mut self, key: &str) -> Result<(), StoreError> {
        if matches!(self, Tx::Postgres(_)) {
            self.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(?1, 0))",
                args![key],
            )
            .await?;
        }
        Ok(())
    }

    /// [`Tx::lock`] on each of `keys`, in their order, sent at once.
    pub(crate) async fn lock_all(&mut self, keys: &[&str]) -> Result<(), StoreError> {
        if matches!(self, Tx::Postgres(_)) {
            let args: Vec<[Arg<'_>; 1]> = keys.iter().map(|k| [Arg::Text(k)]).collect();
            let statements: Vec<(&'static str, &[Arg<'_>])> = args
                .iter()
                .map(|a| {
                    (
                        "SELECT pg_advisory_xact_lock(hashtextextended(?1, 0))",
                        &a[..],
                    )
                })
                .collect();
            self.query_many(&statements).await?;
        }
        Ok(())
    }

    pub(crate) async fn commit(self) -> Result<(), StoreError> {
        match self {
            Tx::Sqlite(mut tx) => {
                // A failed COMMIT (busy) leaves the transaction open; the
                // drop rolls it back.
                tx.conn.execute_batch("COMMIT")?;
                tx.open = false;
                Ok(())
            }
            Tx::Postgres(pg) => PgTx::timed(pg.poisoned, pg.tx.commit()).await,
        }
    }
}
