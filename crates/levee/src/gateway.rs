//! A running config: the route table and upstreams compiled from a [`Config`], and what each
//! worker thread keeps for itself (connection pools, metrics shard).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use levee_resilience::RetryBudget;

use crate::auth::Credentials;
use crate::config::spec::{LimitsSpec, RETRY_BUDGET_WINDOW};
use crate::config::Config;
use crate::jwt::JwtVerifier;
use crate::observability::Recorder;
use crate::ratelimit::RouteLimiter;
use crate::router::Router;
use crate::stale::StaleCache;
use crate::upstream::{Upstream, WorkerUpstream};

/// Everything compiled from one config, shared by all workers.
#[derive(Debug)]
pub struct Gateway {
    pub config: Config,
    pub router: Router,
    pub upstreams: Vec<Arc<Upstream>>,
    /// Each route's stale-if-error store (`None` where the route has none).
    pub stale: Vec<Option<Arc<StaleCache>>>,
    /// Each route's rate limiter (`None` where the route has none), shared by the workers.
    pub limiters: Vec<Option<RouteLimiter>>,
    pub credentials: Credentials,
    pub jwt: Option<Arc<JwtVerifier>>,
}

impl Gateway {
    pub fn new(config: Config) -> Gateway {
        let upstreams = config
            .upstreams
            .iter()
            .cloned()
            .map(|spec| Arc::new(Upstream::new(spec)))
            .collect();
        let router = Router::new(config.routes.clone());
        let stale = config
            .routes
            .iter()
            .map(|r| r.stale_if_error.clone().map(|s| Arc::new(StaleCache::new(s))))
            .collect();
        let limiters = config
            .routes
            .iter()
            .map(|r| r.rate_limit.as_ref().map(RouteLimiter::new))
            .collect();
        let credentials = Credentials::new(&config.consumers);
        let jwt = config.jwt.clone().map(|spec| Arc::new(JwtVerifier::new(spec)));
        Gateway {
            config,
            router,
            upstreams,
            stale,
            limiters,
            credentials,
            jwt,
        }
    }
}

/// One worker thread's view: the shared gateway plus its own pools, load signals, label
/// copies and counters. Nothing in here is written by another core.
pub struct WorkerContext {
    pub gateway: Arc<Gateway>,
    /// Indexed like `gateway.upstreams`.
    pub upstreams: Vec<Arc<WorkerUpstream>>,
    /// Worker-local copies of route names, indexed like the routes.
    pub route_names: Vec<Arc<str>>,
    /// Each route's retry budget on this worker (`None` for routes without a retry policy).
    pub retry_budgets: Vec<Option<Mutex<RetryBudget>>>,
    pub recorder: Arc<Recorder>,
    /// This worker's share of the process-wide caps.
    pub limits: LimitsSpec,
    /// Requests in flight on this worker (load shedding).
    pub inflight: Arc<AtomicUsize>,
    /// Client connections open on this worker (load shedding).
    pub connections: Arc<AtomicUsize>,
    sequence: AtomicU64,
}

/// Counts one unit (a request or a connection) against a worker's cap until dropped.
#[derive(Debug)]
pub struct LoadPermit(Arc<AtomicUsize>);

impl LoadPermit {
    /// Takes a unit if fewer than `cap` are taken.
    pub fn try_take(counter: &Arc<AtomicUsize>, cap: usize) -> Option<LoadPermit> {
        let before = counter.fetch_add(1, Ordering::Relaxed);
        let permit = LoadPermit(counter.clone());
        (before < cap).then_some(permit)
    }
}

impl Drop for LoadPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl WorkerContext {
    pub fn new(gateway: Arc<Gateway>, recorder: Arc<Recorder>) -> WorkerContext {
        let upstreams = gateway
            .upstreams
            .iter()
            .map(|u| Arc::new(WorkerUpstream::new(u.clone())))
            .collect();
        let route_names = gateway
            .router
            .routes()
            .iter()
            .map(|r| Arc::from(&*r.name))
            .collect();
        let retry_budgets = gateway
            .router
            .routes()
            .iter()
            .map(|r| {
                r.retry.as_ref().map(|p| {
                    Mutex::new(RetryBudget::new(
                        p.budget,
                        p.min_per_second,
                        RETRY_BUDGET_WINDOW,
                        tokio::time::Instant::now(),
                    ))
                })
            })
            .collect();
        let limits = gateway.config.limits.per_worker(gateway.config.workers);
        WorkerContext {
            gateway,
            upstreams,
            route_names,
            retry_budgets,
            recorder,
            limits,
            inflight: Arc::default(),
            connections: Arc::default(),
            // Start workers at different points so round robin does not move in lockstep.
            sequence: AtomicU64::new(fastrand::u64(..1024)),
        }
    }

    /// A per-worker request counter for round robin (never shared across cores).
    pub fn next_sequence(&self) -> u64 {
        self.sequence.fetch_add(1, Ordering::Relaxed)
    }
}
