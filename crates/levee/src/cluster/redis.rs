//! Redis as the fleet's shared counters and leases, behind one rule: **no request waits on
//! Redis for longer than `timeout`, and none fails because of it.**
//!
//! Every call goes through [`RedisStore::call`], which answers `None` instead of an error when
//! Redis is slow, down or in back-off; the caller then decides locally (its share of the
//! limit). After a failure no call asks Redis for `backoff`, and after that not before a
//! background probe (driven by the `levee-cluster` thread, every 250 ms) finds Redis
//! answering again; so a hanging or flapping Redis costs the requests in flight at the first
//! failure one timeout, and at most one more per back-off period, never one per request.
//! The change between "fleet-wide" and "local" is logged once per change, never per request.
//!
//! Each worker thread has its own multiplexed connection, driven by its own event loop, so
//! a call costs no hop to another thread; the calls of one worker are pipelined on it
//! (redis-rs writes them in order and matches answers by order), which is what Redis is
//! fastest at. A worker without its connection yet (just started, or after a reconnect)
//! uses the `levee-cluster` thread's while its own is opened in the background.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;

use super::stats::StoreStats;
use crate::config::spec::RedisSpec;

/// The shortest wait for a background call: a whole SLO history read may take more than a
/// request may wait.
pub const BACKGROUND_TIMEOUT: Duration = Duration::from_secs(1);

/// The fleet's Redis, or the knowledge that it is not answering.
pub struct RedisStore {
    client: redis::Client,
    conn: ArcSwapOption<MultiplexedConnection>,
    timeout: Duration,
    backoff: Duration,
    prefix: String,
    /// Milliseconds since `epoch` before which no call is tried (0: none).
    down_until_ms: AtomicU64,
    /// Whether the last call or probe reached Redis (what `levee_cluster_store_up` shows).
    up: AtomicBool,
    epoch: std::time::Instant,
    pub stats: Arc<StoreStats>,
    /// Tells the threads' own connections apart from another store's.
    id: usize,
    /// One more each time a broken connection is dropped: threads then open new ones.
    generation: AtomicU64,
}

static NEXT_STORE_ID: AtomicUsize = AtomicUsize::new(0);

/// A thread's own connection to a store: (store id) -> (generation, connection or `None`
/// while it is being opened).
type ThreadConnections = HashMap<usize, (u64, Option<MultiplexedConnection>)>;

thread_local! {
    static THREAD_CONNECTIONS: RefCell<ThreadConnections> = RefCell::new(HashMap::new());
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: only the prefix and the state are shown.
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("up", &self.up.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Why a Redis store could not be set up (the URL was checked by validation, so this is rare).
#[derive(Debug, thiserror::Error)]
#[error("Redis URL not usable: {0}")]
pub struct RedisSetupError(String);

impl RedisStore {
    pub fn new(spec: &RedisSpec) -> Result<RedisStore, RedisSetupError> {
        // The client's own error text can quote the URL: keep only its kind.
        let client = redis::Client::open(spec.url.0.as_str())
            .map_err(|e| RedisSetupError(format!("{:?}", e.kind())))?;
        Ok(RedisStore {
            client,
            conn: ArcSwapOption::empty(),
            timeout: spec.timeout,
            backoff: spec.backoff,
            prefix: spec.key_prefix.clone(),
            // Nothing is asked before the first probe connects.
            down_until_ms: AtomicU64::new(u64::MAX),
            up: AtomicBool::new(false),
            epoch: std::time::Instant::now(),
            stats: Arc::new(StoreStats::new("redis")),
            id: NEXT_STORE_ID.fetch_add(1, Ordering::Relaxed),
            generation: AtomicU64::new(0),
        })
    }

    /// A key under this fleet's prefix: `prefix:a:b:c`.
    pub fn key(&self, parts: &[&str]) -> String {
        let mut key = self.prefix.clone();
        for part in parts {
            key.push(':');
            key.push_str(part);
        }
        key
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether Redis answered the last call or probe.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Runs `op` on the shared connection within `timeout`. `None` when Redis is in back-off,
    /// not connected, slow or failing: the caller decides locally.
    pub async fn call<T, F, Fut>(&self, op: F) -> Option<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.call_within(op, self.timeout, true).await
    }

    /// [`RedisStore::call`] for the background (SLO sync, leases, experiments, heartbeats):
    /// it may wait longer ([`BACKGROUND_TIMEOUT`] at least), and a slow answer only fails
    /// this call, without putting the request path into back-off; a broken connection
    /// still does (it is broken for everyone).
    pub async fn call_background<T, F, Fut>(&self, op: F) -> Option<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.call_within(op, self.timeout.max(BACKGROUND_TIMEOUT), false)
            .await
    }

    async fn call_within<T, F, Fut>(&self, op: F, timeout: Duration, slow_trips: bool) -> Option<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if self.now_ms() < self.down_until_ms.load(Ordering::Relaxed) {
            return None;
        }
        let conn = match self.thread_connection() {
            Some(conn) => conn,
            None => (*self.conn.load_full()?).clone(),
        };
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(timeout, op(conn)).await;
        self.stats.observe(started.elapsed());
        match result {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) if !is_connection_error(&error) => {
                // A script or type error is our bug, not Redis being down: say so, once per
                // back-off, and decide locally meanwhile.
                tracing::error!(kind = ?error.kind(), "Redis refused a command; deciding locally");
                self.fail(false);
                None
            }
            Ok(Err(_)) => {
                self.fail(true);
                None
            }
            Err(_) if slow_trips => {
                self.fail(false);
                None
            }
            Err(_) => {
                self.stats.error();
                None
            }
        }
    }

    /// This thread's own connection, when it has one of the current generation; else starts
    /// opening one on this thread's event loop (if it runs in one) and answers `None`.
    fn thread_connection(&self) -> Option<MultiplexedConnection> {
        let generation = self.generation.load(Ordering::Relaxed);
        let opening = THREAD_CONNECTIONS.with(|cell| {
            let mut connections = cell.borrow_mut();
            match connections.get(&self.id) {
                Some((g, Some(conn))) if *g == generation => return Ok(conn.clone()),
                Some((g, None)) if *g == generation => return Err(false),
                _ => {}
            }
            connections.insert(self.id, (generation, None));
            Err(true)
        });
        match opening {
            Ok(conn) => Some(conn),
            Err(true) => {
                self.open_thread_connection(generation);
                None
            }
            Err(false) => None,
        }
    }

    fn open_thread_connection(&self, generation: u64) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (client, id, timeout) = (
            self.client.clone(),
            self.id,
            self.timeout.max(Duration::from_millis(500)),
        );
        // The task runs on this thread's own event loop (the workers' are single-threaded),
        // so the connection lands in this thread's map.
        runtime.spawn(async move {
            let conn = tokio::time::timeout(timeout, client.get_multiplexed_async_connection()).await;
            THREAD_CONNECTIONS.with(|cell| {
                let mut connections = cell.borrow_mut();
                match conn {
                    Ok(Ok(conn)) => {
                        if let Some(entry) = connections.get_mut(&id).filter(|(g, _)| *g == generation) {
                            entry.1 = Some(conn);
                        }
                    }
                    // Tried again by a later call.
                    _ => {
                        connections.remove(&id);
                    }
                }
            });
        });
    }

    /// Marks Redis as not answering: no call is tried for `backoff`. A broken connection is
    /// dropped, for the probe to open a new one.
    fn fail(&self, broken: bool) {
        self.stats.error();
        self.down_until_ms.store(
            self.now_ms().saturating_add(millis(self.backoff)),
            Ordering::Relaxed,
        );
        if broken {
            self.conn.store(None);
            self.generation.fetch_add(1, Ordering::Relaxed);
        }
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                backoff_ms = millis(self.backoff),
                "Redis is not answering: rate limits and budgets are decided per replica (each its share) until it is back"
            );
        }
    }

    /// Connects when there is no connection, pings, and lifts the back-off when Redis
    /// answers. Run by the `levee-cluster` thread a few times a second.
    pub async fn probe(&self) {
        let conn = match self.conn.load_full() {
            Some(conn) => conn,
            None => {
                let connect = self.client.get_multiplexed_async_connection();
                match tokio::time::timeout(self.timeout.max(Duration::from_millis(500)), connect).await {
                    Ok(Ok(conn)) => {
                        let conn = Arc::new(conn);
                        self.conn.store(Some(conn.clone()));
                        // The threads' own connections date from before the outage: they
                        // are broken, and must not cost a request a failure to find out.
                        self.generation.fetch_add(1, Ordering::Relaxed);
                        conn
                    }
                    _ => return self.probe_failed(),
                }
            }
        };
        let ping = async move {
            let mut conn = (*conn).clone();
            redis::cmd("PING").query_async::<String>(&mut conn).await
        };
        match tokio::time::timeout(self.timeout.max(Duration::from_millis(500)), ping).await {
            Ok(Ok(_)) => {
                // A back-off still running is served out (a Redis that answers pings but
                // fails calls must not cost a timeout every probe); a Redis that did not
                // even answer probes is asked again at once.
                let _ =
                    self.down_until_ms
                        .compare_exchange(u64::MAX, 0, Ordering::Relaxed, Ordering::Relaxed);
                if !self.up.swap(true, Ordering::Relaxed) {
                    tracing::info!("Redis answers: rate limits and budgets are decided for the whole fleet");
                }
            }
            Ok(Err(error)) if is_connection_error(&error) => {
                self.conn.store(None);
                self.probe_failed();
            }
            _ => self.probe_failed(),
        }
    }

    fn probe_failed(&self) {
        if self.up.load(Ordering::Relaxed) {
            self.fail(false);
        } else {
            self.down_until_ms.store(u64::MAX, Ordering::Relaxed);
        }
    }
}

fn is_connection_error(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || error.is_unrecoverable_error()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
