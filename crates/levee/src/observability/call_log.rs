//! The call log: one row per request in an embedded SQLite database, written in batches by a
//! background thread, queried by the admin API.
//!
//! Requests never wait for it: records go through a bounded queue and are dropped (and counted
//! in `levee_calllog_dropped_total`) when the writer falls behind. Retention by age and by row
//! count keeps the file bounded. The database runs in WAL mode so the admin API reads on its
//! own connection while the writer writes. In cluster mode (`cluster.postgres`) the records
//! go to PostgreSQL instead (the cluster layer's `calls` module), through the same bounded queue
//! ([`CallLog::channel`]) and counted the same way ([`Drops`]).

use std::borrow::Cow;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection};
use serde::Serialize;

use super::metrics::Metrics;

/// One request, as stored.
#[derive(Debug, Clone, Default, Serialize, PartialEq, schemars::JsonSchema)]
pub struct CallRecord {
    /// Milliseconds since the Unix epoch.
    pub time_ms: i64,
    pub request_id: String,
    pub trace_id: Option<String>,
    // Names shared with the config and the request record (`Arc<str>`) and labels known at
    // compile time (`Cow::Borrowed`): a row costs a reference count, not a copy, per field.
    pub route: Option<Arc<str>>,
    pub consumer: Option<Arc<str>>,
    pub method: Cow<'static, str>,
    pub path: Arc<str>,
    pub status: u16,
    pub error: Option<Cow<'static, str>>,
    pub upstream: Option<Arc<str>>,
    pub target: Option<Arc<str>>,
    pub attempts: u32,
    pub latency_ms: f64,
    pub upstream_ms: Option<f64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// On AI gateway routes: the provider and its model that answered, tokens and cost.
    pub provider: Option<Arc<str>>,
    pub model: Option<Arc<str>>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// Parts of the prompt read from and written to the provider's prompt cache, and of the
    /// completion spent reasoning (see `llm::usage`).
    pub cached_tokens: Option<u64>,
    pub cache_write_tokens: Option<u64>,
    pub reasoning_tokens: Option<u64>,
    pub cost_usd: Option<f64>,
    /// An injected fault (`abort`, `delay`), so reports can set chaos apart.
    pub fault: Option<Cow<'static, str>>,
    /// A gRPC call's final `grpc-status`.
    pub grpc_status: Option<u16>,
    /// What the route's guardrails did: `[{"guardrail", "stage", "action", "found"}]`.
    pub guardrails: Option<serde_json::Value>,
    /// In cluster mode, the replica (`cluster.node_id`) that served the call; absent on a
    /// gateway on its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<Arc<str>>,
}

/// A text column read back, as the row type holds it.
pub fn shared(text: Option<String>) -> Option<Arc<str>> {
    text.map(Arc::from)
}

/// Which calls to return, newest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallQuery {
    pub route: Option<String>,
    pub consumer: Option<String>,
    pub status: Option<u16>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub limit: usize,
}

/// What analytics group by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Route,
    Consumer,
    Upstream,
    Status,
    /// The provider model that answered (LLM calls; other calls are the `null` group).
    Model,
}

impl GroupBy {
    /// The group's SQL expression, standard SQL that SQLite and PostgreSQL read alike.
    pub fn column(self) -> &'static str {
        match self {
            GroupBy::Route => "route",
            GroupBy::Consumer => "consumer",
            GroupBy::Upstream => "upstream",
            GroupBy::Status => "CAST(status AS TEXT)",
            GroupBy::Model => "model",
        }
    }
}

/// An analytics request: time range, bucket width, grouping.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalyticsQuery {
    pub since_ms: i64,
    pub until_ms: i64,
    pub bucket_ms: i64,
    pub group_by: GroupBy,
    /// Only this route's calls (`None`: every route's).
    pub route: Option<String>,
}

/// One (bucket, group) cell of the analytics answer.
#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct Aggregate {
    pub bucket_start_ms: i64,
    pub group: Option<String>,
    pub requests: u64,
    /// Requests answered 5xx (as SLOs count errors).
    pub errors: u64,
    pub error_rate: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Tokens and cost of the LLM calls in the cell (0 without any).
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
}

/// Rows read per analytics request at most, to bound memory and time; the answer says
/// when it was cut.
pub const MAX_ANALYTICS_ROWS: usize = 200_000;

/// Storage for calls.
pub trait CallStore: Send {
    fn insert(&mut self, batch: &[CallRecord]) -> Result<(), String>;
    fn enforce_retention(&mut self, max_age: Duration, max_rows: u64) -> Result<(), String>;
    fn query(&self, query: &CallQuery) -> Result<Vec<CallRecord>, String>;
    /// Aggregates per time bucket and group; the flag is true when the row cap cut the scan.
    fn analytics(&self, query: &AnalyticsQuery) -> Result<(Vec<Aggregate>, bool), String>;
}

/// Nearest rank: the smallest value with at least `p` of the values at or below it
/// (PostgreSQL's `percentile_disc`).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).copied().unwrap_or(0.0)
}

/// The SQLite store.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY,
    time_ms INTEGER NOT NULL,
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
    latency_ms REAL NOT NULL,
    upstream_ms REAL,
    bytes_in INTEGER NOT NULL,
    bytes_out INTEGER NOT NULL,
    provider TEXT,
    model TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    cost_usd REAL,
    fault TEXT,
    grpc_status INTEGER,
    cached_tokens INTEGER,
    cache_write_tokens INTEGER,
    reasoning_tokens INTEGER,
    guardrails TEXT
);
CREATE INDEX IF NOT EXISTS calls_time ON calls (time_ms);
";

impl SqliteStore {
    pub fn open(path: &Path) -> Result<SqliteStore, String> {
        let conn = Connection::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(2))
            .map_err(|e| e.to_string())?;
        conn.execute_batch(SCHEMA)
            .map_err(|e| format!("cannot prepare {}: {e}", path.display()))?;
        add_missing_columns(&conn).map_err(|e| format!("cannot upgrade {}: {e}", path.display()))?;
        Ok(SqliteStore { conn })
    }
}

/// Columns added after the first release of the table: a file written by an older Levee gets
/// them (empty for its old rows) instead of failing the start.
fn add_missing_columns(conn: &Connection) -> rusqlite::Result<()> {
    let mut statement = conn.prepare("SELECT name FROM pragma_table_info('calls')")?;
    let present: Vec<String> = statement
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for (column, kind) in [
        ("provider", "TEXT"),
        ("model", "TEXT"),
        ("prompt_tokens", "INTEGER"),
        ("completion_tokens", "INTEGER"),
        ("cost_usd", "REAL"),
        ("fault", "TEXT"),
        ("grpc_status", "INTEGER"),
        ("cached_tokens", "INTEGER"),
        ("cache_write_tokens", "INTEGER"),
        ("reasoning_tokens", "INTEGER"),
        ("guardrails", "TEXT"),
    ] {
        if !present.iter().any(|p| p == column) {
            conn.execute_batch(&format!("ALTER TABLE calls ADD COLUMN {column} {kind}"))?;
        }
    }
    Ok(())
}

impl CallStore for SqliteStore {
    fn insert(&mut self, batch: &[CallRecord]) -> Result<(), String> {
        let tx = self.conn.transaction().map_err(|e| e.to_string())?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO calls (time_ms, request_id, trace_id, route, consumer, method, path, status, error,
                     upstream, target, attempts, latency_ms, upstream_ms, bytes_in, bytes_out,
                     provider, model, prompt_tokens, completion_tokens, cost_usd, fault, grpc_status,
                     cached_tokens, cache_write_tokens, reasoning_tokens, guardrails)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                             ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27)",
                )
                .map_err(|e| e.to_string())?;
            for c in batch {
                insert
                    .execute(params![
                        c.time_ms,
                        c.request_id,
                        c.trace_id,
                        c.route,
                        c.consumer,
                        c.method,
                        c.path,
                        c.status,
                        c.error,
                        c.upstream,
                        c.target,
                        c.attempts,
                        c.latency_ms,
                        c.upstream_ms,
                        c.bytes_in as i64,
                        c.bytes_out as i64,
                        c.provider,
                        c.model,
                        c.prompt_tokens.map(|t| t as i64),
                        c.completion_tokens.map(|t| t as i64),
                        c.cost_usd,
                        c.fault,
                        c.grpc_status,
                        c.cached_tokens.map(|t| t as i64),
                        c.cache_write_tokens.map(|t| t as i64),
                        c.reasoning_tokens.map(|t| t as i64),
                        c.guardrails.as_ref().map(serde_json::Value::to_string)
                    ])
                    .map_err(|e| e.to_string())?;
            }
        }
        tx.commit().map_err(|e| e.to_string())
    }

    fn enforce_retention(&mut self, max_age: Duration, max_rows: u64) -> Result<(), String> {
        let cutoff = now_ms() - max_age.as_millis() as i64;
        self.conn
            .execute("DELETE FROM calls WHERE time_ms < ?1", params![cutoff])
            .map_err(|e| e.to_string())?;
        self.conn
            .execute(
                "DELETE FROM calls WHERE id <= (SELECT MAX(id) FROM calls) - ?1",
                params![max_rows as i64],
            )
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    fn analytics(&self, q: &AnalyticsQuery) -> Result<(Vec<Aggregate>, bool), String> {
        let sql = format!(
            "SELECT time_ms, {}, status, latency_ms, bytes_in, bytes_out,
                    COALESCE(prompt_tokens, 0), COALESCE(completion_tokens, 0), COALESCE(cost_usd, 0.0)
             FROM calls WHERE time_ms >= ?1 AND time_ms < ?2 AND (?4 IS NULL OR route = ?4)
             ORDER BY time_ms LIMIT ?3",
            q.group_by.column()
        );
        let mut statement = self.conn.prepare(&sql).map_err(|e| e.to_string())?;
        let mut rows = statement
            .query(params![
                q.since_ms,
                q.until_ms,
                (MAX_ANALYTICS_ROWS + 1) as i64,
                q.route
            ])
            .map_err(|e| e.to_string())?;
        /// One (bucket, group) cell while rows are added up.
        #[derive(Default)]
        struct Cell {
            requests: u64,
            errors: u64,
            latencies: Vec<f64>,
            bytes_in: u64,
            bytes_out: u64,
            prompt_tokens: u64,
            completion_tokens: u64,
            cost_usd: f64,
        }
        let mut cells: std::collections::BTreeMap<(i64, Option<String>), Cell> = Default::default();
        let mut scanned = 0usize;
        let count = |v: i64| u64::try_from(v).unwrap_or(0);
        while let Some(row) = rows.next().map_err(|e| e.to_string())? {
            scanned += 1;
            if scanned > MAX_ANALYTICS_ROWS {
                break;
            }
            let read = || -> rusqlite::Result<_> {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, Option<String>>(1)?,
                    row.get::<_, u16>(2)?,
                    row.get::<_, f64>(3)?,
                    [
                        row.get::<_, i64>(4)?,
                        row.get::<_, i64>(5)?,
                        row.get::<_, i64>(6)?,
                        row.get::<_, i64>(7)?,
                    ],
                    row.get::<_, f64>(8)?,
                ))
            };
            let (time, group, status, latency, [bytes_in, bytes_out, prompt, completion], cost) =
                read().map_err(|e| e.to_string())?;
            let bucket = time - time.rem_euclid(q.bucket_ms.max(1));
            let cell = cells.entry((bucket, group)).or_default();
            cell.requests += 1;
            cell.errors += u64::from(status >= 500);
            cell.latencies.push(latency);
            cell.bytes_in += count(bytes_in);
            cell.bytes_out += count(bytes_out);
            cell.prompt_tokens += count(prompt);
            cell.completion_tokens += count(completion);
            cell.cost_usd += cost;
        }
        let aggregates = cells
            .into_iter()
            .map(|((bucket_start_ms, group), mut cell)| {
                cell.latencies.sort_by(|a, b| a.total_cmp(b));
                Aggregate {
                    bucket_start_ms,
                    group,
                    requests: cell.requests,
                    errors: cell.errors,
                    error_rate: cell.errors as f64 / cell.requests.max(1) as f64,
                    p50_ms: percentile(&cell.latencies, 0.50),
                    p95_ms: percentile(&cell.latencies, 0.95),
                    p99_ms: percentile(&cell.latencies, 0.99),
                    bytes_in: cell.bytes_in,
                    bytes_out: cell.bytes_out,
                    prompt_tokens: cell.prompt_tokens,
                    completion_tokens: cell.completion_tokens,
                    cost_usd: cell.cost_usd,
                }
            })
            .collect();
        Ok((aggregates, scanned > MAX_ANALYTICS_ROWS))
    }

    fn query(&self, q: &CallQuery) -> Result<Vec<CallRecord>, String> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT time_ms, request_id, trace_id, route, consumer, method, path, status, error, upstream, target,
                        attempts, latency_ms, upstream_ms, bytes_in, bytes_out,
                        provider, model, prompt_tokens, completion_tokens, cost_usd, fault, grpc_status,
                        cached_tokens, cache_write_tokens, reasoning_tokens, guardrails
                 FROM calls
                 WHERE (?1 IS NULL OR route = ?1) AND (?2 IS NULL OR consumer = ?2) AND (?3 IS NULL OR status = ?3)
                   AND (?4 IS NULL OR time_ms >= ?4) AND (?5 IS NULL OR time_ms < ?5)
                 ORDER BY id DESC LIMIT ?6",
            )
            .map_err(|e| e.to_string())?;
        let rows = statement
            .query_map(
                params![
                    q.route,
                    q.consumer,
                    q.status,
                    q.since_ms,
                    q.until_ms,
                    q.limit as i64
                ],
                |row| {
                    Ok(CallRecord {
                        time_ms: row.get(0)?,
                        request_id: row.get(1)?,
                        trace_id: row.get(2)?,
                        route: shared(row.get(3)?),
                        consumer: shared(row.get(4)?),
                        method: Cow::Owned(row.get(5)?),
                        path: Arc::from(row.get::<_, String>(6)?),
                        status: row.get(7)?,
                        error: row.get::<_, Option<String>>(8)?.map(Cow::Owned),
                        upstream: shared(row.get(9)?),
                        target: shared(row.get(10)?),
                        attempts: row.get(11)?,
                        latency_ms: row.get(12)?,
                        upstream_ms: row.get(13)?,
                        bytes_in: row.get::<_, i64>(14)?.max(0) as u64,
                        bytes_out: row.get::<_, i64>(15)?.max(0) as u64,
                        provider: shared(row.get(16)?),
                        model: shared(row.get(17)?),
                        prompt_tokens: row.get::<_, Option<i64>>(18)?.map(|t| t.max(0) as u64),
                        completion_tokens: row.get::<_, Option<i64>>(19)?.map(|t| t.max(0) as u64),
                        cost_usd: row.get(20)?,
                        fault: row.get::<_, Option<String>>(21)?.map(Cow::Owned),
                        grpc_status: row.get(22)?,
                        cached_tokens: row.get::<_, Option<i64>>(23)?.map(|t| t.max(0) as u64),
                        cache_write_tokens: row.get::<_, Option<i64>>(24)?.map(|t| t.max(0) as u64),
                        reasoning_tokens: row.get::<_, Option<i64>>(25)?.map(|t| t.max(0) as u64),
                        guardrails: row
                            .get::<_, Option<String>>(26)?
                            .and_then(|text| serde_json::from_str(&text).ok()),
                        node: None,
                    })
                },
            )
            .map_err(|e| e.to_string())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Counts lost call records: in `levee_calllog_dropped_total`, and through `also` (cluster
/// mode counts them as `call_log` fallbacks too).
#[derive(Clone)]
pub struct Drops {
    metrics: Arc<Metrics>,
    also: Option<Arc<dyn Fn(u64) + Send + Sync>>,
}

impl std::fmt::Debug for Drops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drops").finish_non_exhaustive()
    }
}

impl Drops {
    pub fn new(metrics: Arc<Metrics>) -> Drops {
        Drops { metrics, also: None }
    }

    /// Also calls `also` with each count.
    pub fn with(mut self, also: Arc<dyn Fn(u64) + Send + Sync>) -> Drops {
        self.also = Some(also);
        self
    }

    pub fn count(&self, lost: u64) {
        self.metrics
            .globals
            .calllog_dropped
            .fetch_add(lost, Ordering::Relaxed);
        if let Some(also) = &self.also {
            also(lost);
        }
    }
}

/// The sending side, shared by the workers.
#[derive(Debug, Clone)]
pub struct CallLog {
    tx: SyncSender<CallRecord>,
    drops: Drops,
    /// One count per copy, so the writer can tell the senders are gone without taking a
    /// record off the queue ([`CallQueue::closed`]).
    _senders: Arc<()>,
}

/// The receiving side, owned by the writer.
#[derive(Debug)]
pub struct CallQueue {
    rx: Receiver<CallRecord>,
    senders: std::sync::Weak<()>,
}

impl CallQueue {
    /// Moves queued records into `batch` until it holds `max`; true once the queue is empty
    /// and every sender is gone.
    pub fn drain(&self, batch: &mut Vec<CallRecord>, max: usize) -> bool {
        super::drain(&self.rx, batch, max)
    }

    /// Every sender is gone: what is queued is all there will be.
    pub fn closed(&self) -> bool {
        self.senders.strong_count() == 0
    }
}

/// Retention settings.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_age: Duration,
    pub max_rows: u64,
}

/// Rows per transaction at most.
const BATCH: usize = 4096;
/// How often the writer wakes to drain the queue (senders never wake it; see
/// [`super::drain`]).
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// How often retention runs.
pub const RETAIN_EVERY: Duration = Duration::from_secs(30);

impl CallLog {
    /// The bounded queue to a writer: `queue` records at most, the rest dropped and counted
    /// in `drops`. The writer owns the receiving end; it ends once every sender is gone.
    pub fn channel(queue: usize, drops: Drops) -> (CallLog, CallQueue) {
        let (tx, rx) = sync_channel(queue);
        let senders = Arc::new(());
        let queue = CallQueue {
            rx,
            senders: Arc::downgrade(&senders),
        };
        (
            CallLog {
                tx,
                drops,
                _senders: senders,
            },
            queue,
        )
    }

    /// Opens (creates) `data_dir/calls.sqlite3` and starts the writer thread; returns the
    /// queue's sending side, the thread and a read connection for the admin API.
    pub fn start(
        data_dir: &Path,
        queue: usize,
        retention: Retention,
        metrics: Arc<Metrics>,
    ) -> Result<(CallLog, JoinHandle<()>, SqliteStore), String> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
        let path = data_dir.join("calls.sqlite3");
        let mut store = SqliteStore::open(&path)?;
        let reader = SqliteStore::open(&path)?;
        let drops = Drops::new(metrics);
        let (log, records) = CallLog::channel(queue, drops.clone());
        let writer = std::thread::Builder::new()
            .name("levee-call-log".into())
            .spawn(move || write_batches(records, &mut store, retention, &drops))
            .map_err(|e| e.to_string())?;
        Ok((log, writer, reader))
    }

    /// Queues a record, or drops and counts it when the writer is behind.
    pub fn log(&self, record: CallRecord) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(record) {
            self.drops.count(1);
        }
    }
}

fn write_batches(queue: CallQueue, store: &mut SqliteStore, retention: Retention, drops: &Drops) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut last_retention = std::time::Instant::now();
    loop {
        std::thread::sleep(FLUSH_EVERY);
        // Everything queued since the last tick, in transactions of up to BATCH rows.
        let disconnected = loop {
            let disconnected = queue.drain(&mut batch, BATCH);
            if !batch.is_empty() {
                // A failed write (disk full, database locked past the busy timeout) loses
                // its batch: counted with the drops, and the next tick tries again.
                if let Err(error) = store.insert(&batch) {
                    tracing::warn!(%error, lost = batch.len(), "call log write failed");
                    drops.count(batch.len() as u64);
                }
            }
            let full = batch.len() == BATCH;
            batch.clear();
            if disconnected || !full {
                break disconnected;
            }
        };
        if last_retention.elapsed() >= RETAIN_EVERY || disconnected {
            if let Err(error) = store.enforce_retention(retention.max_age, retention.max_rows) {
                tracing::warn!(%error, "call log retention failed");
            }
            last_retention = std::time::Instant::now();
        }
        if disconnected {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: i64, route: &str, status: u16) -> CallRecord {
        CallRecord {
            time_ms: now_ms() - 1000 + i,
            request_id: format!("r{i}"),
            route: Some(route.into()),
            method: "GET".into(),
            path: "/".into(),
            status,
            attempts: 1,
            latency_ms: 1.5,
            upstream_ms: Some(1.0),
            bytes_out: 2,
            ..CallRecord::default()
        }
    }

    #[test]
    fn a_database_from_before_the_llm_columns_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite3");
        {
            let old = Connection::open(&path).unwrap();
            old.execute_batch(
                "CREATE TABLE calls (id INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL, request_id TEXT NOT NULL,
                 trace_id TEXT, route TEXT, consumer TEXT, method TEXT NOT NULL, path TEXT NOT NULL,
                 status INTEGER NOT NULL, error TEXT, upstream TEXT, target TEXT, attempts INTEGER NOT NULL,
                 latency_ms REAL NOT NULL, upstream_ms REAL, bytes_in INTEGER NOT NULL, bytes_out INTEGER NOT NULL);
                 INSERT INTO calls (time_ms, request_id, method, path, status, attempts, latency_ms, bytes_in, bytes_out)
                 VALUES (1, 'old', 'GET', '/', 200, 1, 1.0, 0, 0);",
            )
            .unwrap();
        }
        let mut store = SqliteStore::open(&path).unwrap();
        let mut new = record(1, "r", 200);
        new.provider = Some("p".into());
        new.prompt_tokens = Some(7);
        store.insert(&[new]).unwrap();
        let rows = store
            .query(&CallQuery {
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].provider.as_deref(), rows[0].prompt_tokens),
            (Some("p"), Some(7))
        );
        assert_eq!(
            (rows[1].request_id.as_str(), rows[1].provider.as_deref()),
            ("old", None)
        );
    }

    #[test]
    fn stores_filters_and_keeps_the_newest_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(&dir.path().join("c.sqlite3")).unwrap();
        let batch: Vec<CallRecord> = (0..10)
            .map(|i| record(i, if i % 2 == 0 { "a" } else { "b" }, 200 + (i as u16 % 3)))
            .collect();
        store.insert(&batch).unwrap();
        let all = store
            .query(&CallQuery {
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(all.len(), 10);
        assert_eq!(all[0].request_id, "r9", "newest first");
        let a = store
            .query(&CallQuery {
                route: Some("a".into()),
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(a.len(), 5);
        let s = store
            .query(&CallQuery {
                status: Some(201),
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        assert!(s.iter().all(|c| c.status == 201));
        let (cells, cut) = store
            .analytics(&AnalyticsQuery {
                since_ms: 0,
                until_ms: now_ms() + 1,
                bucket_ms: 3_600_000_000,
                group_by: GroupBy::Route,
                route: None,
            })
            .unwrap();
        assert!(!cut);
        let a = cells.iter().find(|c| c.group.as_deref() == Some("a")).unwrap();
        assert_eq!((a.requests, a.p50_ms, a.p99_ms), (5, 1.5, 1.5));
        store.enforce_retention(Duration::from_secs(3600), 4).unwrap();
        let kept = store
            .query(&CallQuery {
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            kept.iter().map(|c| c.request_id.as_str()).collect::<Vec<_>>(),
            ["r9", "r8", "r7", "r6"]
        );
        store.enforce_retention(Duration::from_millis(1), 100).unwrap();
        assert!(store
            .query(&CallQuery {
                limit: 100,
                ..Default::default()
            })
            .unwrap()
            .is_empty());
    }
}
