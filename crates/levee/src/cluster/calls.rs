//! The call log of a fleet: with `cluster.postgres`, every replica writes its calls to one
//! PostgreSQL table, so `GET /api/v1/calls` and `GET /api/v1/analytics` on any replica
//! answer for all of them.
//!
//! Requests never wait for PostgreSQL, as they never wait for SQLite: records go through the
//! same bounded queue (`call_log.queue`) to a `levee-call-log` thread that writes them in
//! batches (`cluster.postgres.batch`). While PostgreSQL is down the writer keeps its batch and
//! stops taking records, so the queue fills up to its bound and further records are dropped,
//! counted in `levee_calllog_dropped_total` and in
//! `levee_cluster_fallback_total{component="call_log"}`; once the `levee-cluster` thread has
//! reconnected, writing resumes with the batch it kept. A batch whose write timed out is
//! written again, so a call can be stored twice around an outage, never silently lost.
//!
//! The admin API reads on its blocking pool; PostgreSQL's client is async, so the reader
//! keeps a small runtime of its own to wait on it there, never on an event loop.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use super::call_sql;
use super::postgres::{PgError, PgStore};
use super::Cluster;
use crate::observability::call_log::{
    Aggregate, AnalyticsQuery, CallLog, CallQuery, CallQueue, CallRecord, CallStore, Drops, Retention,
    SqliteStore, FLUSH_EVERY, RETAIN_EVERY,
};
use crate::observability::metrics::Metrics;

/// Why the call log could not be started or read.
#[derive(Debug, thiserror::Error)]
pub enum CallsError {
    #[error("the call log is in PostgreSQL, but cluster.postgres is not set")]
    NoPostgres,
    #[error("cannot start the call log's event loop: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot start thread levee-call-log: {0}")]
    Thread(#[source] std::io::Error),
    #[error("call log unavailable")]
    Poisoned,
    #[error("{0}")]
    Sqlite(String),
    #[error(transparent)]
    Postgres(#[from] PgError),
}

/// Where the admin API reads the call log: this replica's SQLite file, or the fleet's
/// PostgreSQL.
#[derive(Debug)]
pub enum CallReader {
    Sqlite(Mutex<SqliteStore>),
    Postgres {
        pg: Arc<PgStore>,
        /// Waits for PostgreSQL's answers on the calling (blocking) thread.
        runtime: QueryRuntime,
    },
}

/// A runtime to wait on from blocking threads. It may be dropped anywhere, even inside an
/// async context (the last holder of the shared state can be an event loop), where dropping
/// a plain runtime would panic: it shuts down in the background instead.
#[derive(Debug)]
pub struct QueryRuntime(Option<tokio::runtime::Runtime>);

impl QueryRuntime {
    pub fn new() -> Result<QueryRuntime, CallsError> {
        runtime().map(|r| QueryRuntime(Some(r)))
    }

    fn block_on<F: std::future::Future>(&self, future: F) -> Result<F::Output, CallsError> {
        let runtime = self.0.as_ref().ok_or(CallsError::Poisoned)?;
        Ok(runtime.block_on(future))
    }
}

impl Drop for QueryRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl CallReader {
    /// The calls `q` asks for, newest first. Blocks: call it off any event loop.
    pub fn query(&self, q: &CallQuery) -> Result<Vec<CallRecord>, CallsError> {
        match self {
            CallReader::Sqlite(store) => {
                let store = store.lock().map_err(|_| CallsError::Poisoned)?;
                store.query(q).map_err(CallsError::Sqlite)
            }
            CallReader::Postgres { pg, runtime } => Ok(runtime.block_on(call_sql::query(pg, q))??),
        }
    }

    /// Aggregates per time bucket and group, and whether the row cap cut the scan. Blocks.
    pub fn analytics(&self, q: &AnalyticsQuery) -> Result<(Vec<Aggregate>, bool), CallsError> {
        match self {
            CallReader::Sqlite(store) => {
                let store = store.lock().map_err(|_| CallsError::Poisoned)?;
                store.analytics(q).map_err(CallsError::Sqlite)
            }
            CallReader::Postgres { pg, runtime } => Ok(runtime.block_on(call_sql::analytics(pg, q))??),
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CallsError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CallsError::Runtime)
}

/// Starts the fleet's call log: the queue the workers send into, the `levee-call-log`
/// thread that writes it to PostgreSQL, and the admin API's reader.
pub fn start(
    cluster: &Arc<Cluster>,
    queue: usize,
    retention: Retention,
    metrics: Arc<Metrics>,
) -> Result<(CallLog, JoinHandle<()>, CallReader), CallsError> {
    let pg = cluster.postgres.clone().ok_or(CallsError::NoPostgres)?;
    let fleet = cluster.clone();
    let drops = Drops::new(metrics).with(Arc::new(move |lost| {
        for _ in 0..lost {
            fleet.fallback("call_log");
        }
    }));
    let (log, records) = CallLog::channel(queue, drops.clone());
    let writer = Writer {
        pg: pg.clone(),
        node: cluster.node_id.clone(),
        batch: pg.batch.max(1),
        retention,
        drops,
    };
    let event_loop = runtime()?;
    let thread = std::thread::Builder::new()
        .name("levee-call-log".into())
        .spawn(move || event_loop.block_on(writer.run(records)))
        .map_err(CallsError::Thread)?;
    let reader = CallReader::Postgres {
        pg,
        runtime: QueryRuntime::new()?,
    };
    Ok((log, thread, reader))
}

/// The `levee-call-log` thread of cluster mode.
struct Writer {
    pg: Arc<PgStore>,
    node: String,
    batch: usize,
    retention: Retention,
    drops: Drops,
}

impl Writer {
    /// Writes what the workers queue, every [`FLUSH_EVERY`], until they are gone and the
    /// queue is written (or, with PostgreSQL not answering then, counted as lost).
    async fn run(self, records: CallQueue) {
        let mut pending = Vec::with_capacity(self.batch);
        let mut last_retention = Instant::now();
        let mut retention: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            tokio::time::sleep(FLUSH_EVERY).await;
            // Sampled before the flush: once closed, this flush sees every record there is.
            let closing = records.closed();
            self.flush(&records, &mut pending, closing).await;
            if closing {
                return;
            }
            let idle = retention.as_ref().is_none_or(|r| r.is_finished());
            if idle && self.pg.is_up() && last_retention.elapsed() >= RETAIN_EVERY {
                last_retention = Instant::now();
                // Beside the writes, on the same connection: retention never holds them up.
                retention = Some(tokio::spawn(retain(self.pg.clone(), self.retention)));
            }
        }
    }

    /// Writes the queued records a batch at a time. A batch PostgreSQL cannot take right now
    /// stays in `pending` for the next tick (and the queue fills meanwhile); one it refuses
    /// for its content is dropped and counted. When `closing`, a failure loses everything
    /// left, counted: shutting down does not wait for PostgreSQL to come back.
    async fn flush(&self, records: &CallQueue, pending: &mut Vec<CallRecord>, closing: bool) {
        loop {
            records.drain(pending, self.batch);
            if pending.is_empty() {
                return;
            }
            let result = if self.pg.is_up() {
                call_sql::insert(&self.pg, &self.node, pending).await
            } else {
                Err(PgError::NotConnected)
            };
            match result {
                Ok(()) => {
                    let full = pending.len() >= self.batch;
                    pending.clear();
                    if !full {
                        return;
                    }
                }
                Err(error) if call_sql::retryable(&error) && !closing => return,
                Err(error) => {
                    tracing::warn!(%error, lost = pending.len(), "call log write to PostgreSQL failed");
                    self.lose(pending);
                    if closing {
                        loop {
                            let emptied = records.drain(pending, self.batch);
                            let last = emptied || pending.is_empty();
                            self.lose(pending);
                            if last {
                                return;
                            }
                        }
                    }
                }
            }
        }
    }

    fn lose(&self, pending: &mut Vec<CallRecord>) {
        self.drops.count(pending.len() as u64);
        pending.clear();
    }
}

/// One round of retention (every replica runs it; chunks skip each other's rows).
async fn retain(pg: Arc<PgStore>, retention: Retention) {
    match call_sql::enforce_retention(&pg, retention.max_age, retention.max_rows).await {
        Ok(0) => {}
        Ok(deleted) => tracing::debug!(deleted, "call log retention"),
        Err(error) => tracing::warn!(%error, "call log retention failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_query_runtime_waits_on_the_blocking_pool_and_drops_on_an_event_loop() {
        let runtime = QueryRuntime::new().unwrap();
        let (runtime, answer) = tokio::task::spawn_blocking(move || {
            let answer = runtime.block_on(async {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                7
            });
            (runtime, answer)
        })
        .await
        .unwrap();
        assert_eq!(answer.unwrap(), 7);
        // A plain runtime dropped here would panic.
        drop(runtime);
    }
}
