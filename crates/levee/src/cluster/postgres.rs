//! PostgreSQL as the fleet's record store: one connection per process, opened and reopened
//! by the `levee-cluster` thread, and the versioned schema migrations every replica applies
//! at start.
//!
//! Nothing on the request path waits for PostgreSQL: records are queued and written in
//! batches by a background writer, and reads (the admin API) are bounded by `timeout`.
//! Migrations run in one transaction under a transaction-scoped advisory lock, so replicas
//! that start together apply each migration exactly once, and a replica that finds the
//! schema newer than itself leaves it alone.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio_postgres::{Client, NoTls};

use super::stats::StoreStats;
use crate::config::spec::PostgresSpec;

/// The schema, one migration per version, applied in order and never edited once released
/// (a change is a new version).
///
/// 1. The call log (`crate::cluster::calls`): the columns of the SQLite call log, plus the
///    `node` that served each call; an index on time serves retention, the newest-first
///    listing and the analytics range scan.
/// 2. `grpc_status`: a gRPC call's final status.
/// 3. The details of an LLM call's tokens (cached and cache-write prompt tokens, reasoning
///    tokens) and its guardrails' verdicts (JSON text).
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE levee_calls (
        id BIGSERIAL PRIMARY KEY,
        node TEXT NOT NULL,
        time_ms BIGINT NOT NULL,
        request_id TEXT NOT NULL,
        trace_id TEXT,
        route TEXT,
        consumer TEXT,
        method TEXT NOT NULL,
        path TEXT NOT NULL,
        status INTEGER NOT NULL,
        error TEXT,
        upstream TEXT,
        target TEXT,
        attempts INTEGER NOT NULL,
        latency_ms DOUBLE PRECISION NOT NULL,
        upstream_ms DOUBLE PRECISION,
        bytes_in BIGINT NOT NULL,
        bytes_out BIGINT NOT NULL,
        provider TEXT,
        model TEXT,
        prompt_tokens BIGINT,
        completion_tokens BIGINT,
        cost_usd DOUBLE PRECISION,
        fault TEXT
    );
    CREATE INDEX levee_calls_time ON levee_calls (time_ms);",
    ),
    (2, "ALTER TABLE levee_calls ADD COLUMN grpc_status INTEGER;"),
    (
        3,
        "ALTER TABLE levee_calls ADD COLUMN cached_tokens BIGINT, \
         ADD COLUMN cache_write_tokens BIGINT, ADD COLUMN reasoning_tokens BIGINT, \
         ADD COLUMN guardrails TEXT;",
    ),
];

/// Any number that is the same for every Levee: the lock that makes migrations one at a time.
const MIGRATION_LOCK: i64 = 0x4c65_7665_6531; // "Levee1"

/// The fleet's PostgreSQL, or the knowledge that it is not reachable.
pub struct PgStore {
    config: tokio_postgres::Config,
    client: ArcSwapOption<Client>,
    timeout: Duration,
    pub batch: usize,
    up: AtomicBool,
    pub stats: Arc<StoreStats>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("up", &self.up.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Why PostgreSQL could not be set up or used.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("PostgreSQL connection string not usable")]
    Config,
    #[error("PostgreSQL did not answer within {0:?}")]
    Timeout(Duration),
    #[error("PostgreSQL is not connected")]
    NotConnected,
    #[error("PostgreSQL: {0}")]
    Db(#[from] tokio_postgres::Error),
}

impl PgStore {
    pub fn new(spec: &PostgresSpec) -> Result<PgStore, PgError> {
        let mut config: tokio_postgres::Config = spec.url.0.parse().map_err(|_| PgError::Config)?;
        config.connect_timeout(spec.timeout);
        // The server gives up on a statement when the client would: one connection is shared,
        // so a slow query must not hold it past `timeout` for the statements queued behind.
        let statement_timeout = format!("-c statement_timeout={}", spec.timeout.as_millis());
        let options = match config.get_options() {
            Some(options) => format!("{options} {statement_timeout}"),
            None => statement_timeout,
        };
        config.options(&options);
        if config.get_application_name().is_none() {
            config.application_name("levee");
        }
        Ok(PgStore {
            config,
            client: ArcSwapOption::empty(),
            timeout: spec.timeout,
            batch: spec.batch,
            up: AtomicBool::new(false),
            stats: Arc::new(StoreStats::new("postgres")),
        })
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `op` with the connection, within `timeout`.
    pub async fn run<T, F, Fut>(&self, op: F) -> Result<T, PgError>
    where
        F: FnOnce(Arc<Client>) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let client = self
            .client
            .load_full()
            .filter(|c| !c.is_closed())
            .ok_or(PgError::NotConnected)?;
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(self.timeout, op(client.clone())).await;
        self.stats.observe(started.elapsed());
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                self.stats.error();
                if client.is_closed() {
                    self.lost();
                }
                Err(PgError::Db(error))
            }
            Err(_) => {
                self.stats.error();
                Err(PgError::Timeout(self.timeout))
            }
        }
    }

    fn lost(&self) {
        self.client.store(None);
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                "PostgreSQL is not reachable: call records queue up (then drop, counted) until it is back"
            );
        }
    }

    /// Connects (and migrates) when there is no live connection. Run by the `levee-cluster`
    /// thread, whose runtime drives the connection.
    pub async fn probe(&self) {
        if self.client.load().as_ref().is_some_and(|c| !c.is_closed()) {
            return;
        }
        match self.connect().await {
            Ok(client) => {
                self.client.store(Some(Arc::new(client)));
                if !self.up.swap(true, Ordering::Relaxed) {
                    tracing::info!("PostgreSQL is reachable: the call log is written to it");
                }
            }
            Err(error) => {
                self.stats.error();
                if self.up.swap(false, Ordering::Relaxed) {
                    tracing::warn!(%error, "PostgreSQL is not reachable");
                }
                self.client.store(None);
            }
        }
    }

    async fn connect(&self) -> Result<Client, PgError> {
        let connect = self.config.connect(NoTls);
        let (mut client, connection) = tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| PgError::Timeout(self.timeout))??;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "PostgreSQL connection ended");
            }
        });
        tokio::time::timeout(self.timeout.max(Duration::from_secs(10)), migrate(&mut client))
            .await
            .map_err(|_| PgError::Timeout(self.timeout))??;
        Ok(client)
    }
}

/// Applies the migrations this build knows and the database lacks, one replica at a time.
async fn migrate(client: &mut Client) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    // A migration may take longer than one statement may (the lock waits for another
    // replica's migrations), bounded by the caller instead.
    tx.batch_execute("SET LOCAL statement_timeout = 0").await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS levee_schema_migrations (
            version INTEGER PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
    )
    .await?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM levee_schema_migrations", &[])
        .await?
        .iter()
        .filter_map(|row| row.try_get(0).ok())
        .collect();
    for (version, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO levee_schema_migrations (version) VALUES ($1)",
            &[version],
        )
        .await?;
        tracing::info!(version, "PostgreSQL schema migrated");
    }
    tx.commit().await
}
