//! One small SQL interface over the two stores the management plane runs on: the embedded
//! SQLite file (`data_dir/management.sqlite3`) and, in cluster mode, PostgreSQL.
//!
//! The management store's SQL is written once, in the subset both databases read alike
//! (`$1` parameters, `BIGINT`, `DOUBLE PRECISION`, `TEXT`, `ON CONFLICT`, `RETURNING`), and
//! values travel as [`Value`]. That keeps the store's logic in one place instead of two
//! dialects drifting apart; the price is that only those few types exist.
//!
//! Every change runs in a transaction. PostgreSQL gets a connection of its own (not the call
//! log's shared one), so that a transaction's statements are never interleaved with another
//! user's; it is driven by a small runtime owned here, from blocking threads only (the admin
//! API's blocking pool and the `levee-manage` thread).

use std::sync::Mutex;
use std::time::Duration;

use bytes::BytesMut;
use tokio_postgres::types::{IsNull, ToSql, Type};

/// A value in a row or a parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

impl Value {
    pub fn int(&self) -> Option<i64> {
        match self {
            Value::Int(v) => Some(*v),
            Value::Real(v) => Some(*v as i64),
            _ => None,
        }
    }

    pub fn real(&self) -> Option<f64> {
        match self {
            Value::Real(v) => Some(*v),
            Value::Int(v) => Some(*v as f64),
            _ => None,
        }
    }

    pub fn text(&self) -> Option<&str> {
        match self {
            Value::Text(v) => Some(v),
            _ => None,
        }
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(v.to_owned())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Real(v)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

pub type Row = Vec<Value>;

/// Why a statement failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("PostgreSQL did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// A unique constraint refused the write (a duplicate name).
    #[error("already exists")]
    Duplicate,
}

/// The statements of one transaction.
pub trait Tx {
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError>;

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError>;

    /// The first column of the first row.
    fn one(&mut self, sql: &str, params: &[Value]) -> Result<Value, DbError> {
        let rows = self.query(sql, params)?;
        Ok(rows
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next())
            .unwrap_or(Value::Null))
    }
}

/// Which database, for the few statements that differ (locks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A management store's database.
pub enum Db {
    Sqlite(Mutex<rusqlite::Connection>),
    Postgres(Box<Mutex<PgConn>>),
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Db::Sqlite(_) => "Db::Sqlite",
            Db::Postgres(_) => "Db::Postgres",
        })
    }
}

impl Db {
    /// Opens (creates) the SQLite file at `path`.
    pub fn sqlite(path: &std::path::Path) -> Result<Db, DbError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| DbError::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
        }
        let conn = rusqlite::Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")?;
        Ok(Db::Sqlite(Mutex::new(conn)))
    }

    /// A PostgreSQL store reached with `config` (connected on first use).
    pub fn postgres(config: tokio_postgres::Config, timeout: Duration) -> Result<Db, DbError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| DbError::Unavailable(format!("cannot start a runtime: {e}")))?;
        Ok(Db::Postgres(Box::new(Mutex::new(PgConn {
            config,
            timeout,
            runtime: Some(runtime),
            client: None,
        }))))
    }

    pub fn dialect(&self) -> Dialect {
        match self {
            Db::Sqlite(_) => Dialect::Sqlite,
            Db::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Runs `work` in one transaction: committed when it returns `Ok`, rolled back otherwise.
    /// Blocks: call it off any event loop.
    pub fn transaction<T, E: From<DbError>>(
        &self,
        work: impl FnOnce(&mut dyn Tx) -> Result<T, E>,
    ) -> Result<T, E> {
        match self {
            Db::Sqlite(conn) => {
                let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
                // IMMEDIATE: the write lock is taken at the start, so two writers queue
                // instead of one failing at its first write.
                let tx = conn
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .map_err(DbError::from)?;
                let mut handle = SqliteTx(&tx);
                let value = work(&mut handle)?;
                tx.commit().map_err(DbError::from)?;
                Ok(value)
            }
            Db::Postgres(conn) => {
                let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
                conn.transaction(work)
            }
        }
    }
}

struct SqliteTx<'a>(&'a rusqlite::Transaction<'a>);

/// `$1` → `?1`: SQLite reads `$1` as a *named* parameter numbered by first appearance, which
/// would silently bind the wrong values when a statement uses `$2` before `$1`.
fn sqlite_sql(sql: &str) -> String {
    sql.replace('$', "?")
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(v) => ToSqlOutput::Borrowed(ValueRef::Integer(*v)),
            Value::Real(v) => ToSqlOutput::Borrowed(ValueRef::Real(*v)),
            Value::Text(v) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
        })
    }
}

fn sqlite_error(error: rusqlite::Error) -> DbError {
    match &error {
        rusqlite::Error::SqliteFailure(e, _)
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE =>
        {
            DbError::Duplicate
        }
        rusqlite::Error::SqliteFailure(e, _)
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
        {
            DbError::Duplicate
        }
        _ => DbError::Sqlite(error),
    }
}

impl Tx for SqliteTx<'_> {
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError> {
        let mut statement = self.0.prepare_cached(&sqlite_sql(sql)).map_err(sqlite_error)?;
        let columns = statement.column_count();
        let mut rows = statement
            .query(rusqlite::params_from_iter(params.iter()))
            .map_err(sqlite_error)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(sqlite_error)? {
            let mut values = Vec::with_capacity(columns);
            for i in 0..columns {
                use rusqlite::types::ValueRef;
                values.push(match row.get_ref(i)? {
                    ValueRef::Null | ValueRef::Blob(_) => Value::Null,
                    ValueRef::Integer(v) => Value::Int(v),
                    ValueRef::Real(v) => Value::Real(v),
                    ValueRef::Text(v) => Value::Text(String::from_utf8_lossy(v).into_owned()),
                });
            }
            out.push(values);
        }
        Ok(out)
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        let mut statement = self.0.prepare_cached(&sqlite_sql(sql)).map_err(sqlite_error)?;
        let changed = statement
            .execute(rusqlite::params_from_iter(params.iter()))
            .map_err(sqlite_error)?;
        Ok(changed as u64)
    }
}

/// The management plane's own PostgreSQL connection, reopened when it is lost.
pub struct PgConn {
    config: tokio_postgres::Config,
    timeout: Duration,
    /// Dropped in the background (see `Drop`): it may go away inside an async context.
    runtime: Option<tokio::runtime::Runtime>,
    client: Option<tokio_postgres::Client>,
}

impl Drop for PgConn {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl PgConn {
    fn transaction<T, E: From<DbError>>(
        &mut self,
        work: impl FnOnce(&mut dyn Tx) -> Result<T, E>,
    ) -> Result<T, E> {
        let timeout = self.timeout;
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| DbError::Unavailable("no runtime".into()))?;
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            let connect = self.config.connect(tokio_postgres::NoTls);
            let (client, connection) = runtime
                .block_on(async { tokio::time::timeout(timeout, connect).await })
                .map_err(|_| DbError::Timeout(timeout))?
                .map_err(DbError::from)?;
            runtime.spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "management PostgreSQL connection ended");
                }
            });
            self.client = Some(client);
        }
        let client = self
            .client
            .as_mut()
            .ok_or_else(|| DbError::Unavailable("not connected".into()))?;
        let tx = runtime
            .block_on(async { tokio::time::timeout(timeout, client.transaction()).await })
            .map_err(|_| DbError::Timeout(timeout))?
            .map_err(DbError::from)?;
        let mut handle = PgTx {
            tx: &tx,
            runtime,
            timeout,
        };
        let value = work(&mut handle)?;
        runtime
            .block_on(async { tokio::time::timeout(timeout, tx.commit()).await })
            .map_err(|_| DbError::Timeout(timeout))?
            .map_err(DbError::from)?;
        Ok(value)
    }
}

struct PgTx<'a> {
    tx: &'a tokio_postgres::Transaction<'a>,
    runtime: &'a tokio::runtime::Runtime,
    timeout: Duration,
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) if *ty == Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
            Value::Int(v) if *ty == Type::FLOAT8 => (*v as f64).to_sql(ty, out),
            Value::Int(v) => v.to_sql(ty, out),
            Value::Real(v) => v.to_sql(ty, out),
            Value::Text(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

fn pg_error(error: tokio_postgres::Error) -> DbError {
    if error.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
        DbError::Duplicate
    } else {
        DbError::Postgres(error)
    }
}

impl Tx for PgTx<'_> {
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError> {
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let timeout = self.timeout;
        let rows = self
            .runtime
            .block_on(async { tokio::time::timeout(timeout, self.tx.query(sql, &refs)).await })
            .map_err(|_| DbError::Timeout(timeout))?
            .map_err(pg_error)?;
        rows.iter().map(pg_row).collect()
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let timeout = self.timeout;
        self.runtime
            .block_on(async { tokio::time::timeout(timeout, self.tx.execute(sql, &refs)).await })
            .map_err(|_| DbError::Timeout(timeout))?
            .map_err(pg_error)
    }
}

fn pg_row(row: &tokio_postgres::Row) -> Result<Row, DbError> {
    let mut values = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let ty = column.type_();
        let value = if *ty == Type::INT8 {
            row.try_get::<_, Option<i64>>(i)?.into()
        } else if *ty == Type::INT4 {
            row.try_get::<_, Option<i32>>(i)?.map(i64::from).into()
        } else if *ty == Type::FLOAT8 {
            row.try_get::<_, Option<f64>>(i)?.into()
        } else if *ty == Type::NUMERIC {
            // Only SUM() of BIGINT gives NUMERIC; the store casts those, so none arrive.
            Value::Null
        } else {
            row.try_get::<_, Option<String>>(i)?.into()
        };
        values.push(value);
    }
    Ok(values)
}
