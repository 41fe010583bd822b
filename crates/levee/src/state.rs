//! The state the parts of a running gateway share: the running config, the workers' views of
//! it, metrics, the call log's read connection, the reload lock and the SLO engine.
//!
//! It sits below the modules that use it (the server fills it in at start; the admin API,
//! reloads and the request pipeline read it), so none of them needs to import another.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::gateway::Gateway;
use crate::observability::metrics::{Gauge, Metrics};
use crate::upstream::WorkerUpstream;

/// Who is on the other end of a client connection.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub listener: Arc<str>,
    /// The connection arrived over TLS.
    pub tls: bool,
    /// Requests started on the connection so far.
    pub started: AtomicU64,
    /// Requests whose answers are not finished yet (each record holds a permit on it).
    pub in_flight: Arc<AtomicUsize>,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, listener: Arc<str>, tls: bool) -> ConnInfo {
        ConnInfo {
            peer,
            listener,
            tls,
            started: AtomicU64::new(0),
            in_flight: Arc::default(),
        }
    }
}

/// Where the config comes from, and the lock that makes reloads one at a time.
#[derive(Debug, Default)]
pub struct Reloader {
    path: Option<PathBuf>,
    lock: Mutex<()>,
}

impl Reloader {
    pub fn new(path: Option<PathBuf>) -> Reloader {
        Reloader {
            path,
            lock: Mutex::new(()),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Held for the whole of a reload: reloads run one at a time.
    pub(crate) fn one_at_a_time(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// State the admin API and the workers share.
#[derive(Debug)]
pub struct SharedState {
    pub metrics: Arc<Metrics>,
    /// Snapshots of the request counters over the last fifteen minutes, for the admin API's
    /// overview (taken by the admin thread).
    pub series: crate::observability::series::Series,
    pub draining: AtomicBool,
    /// The running config, replaced whole by a reload.
    pub gateway: ArcSwap<Gateway>,
    /// Announces each applied config to the workers and the control thread.
    pub gateway_tx: watch::Sender<Arc<Gateway>>,
    /// Each worker's view of the upstreams (its load signals: in flight, peak EWMA), indexed
    /// by worker, for the admin API. Breakers are in the shared `Upstream`.
    pub worker_upstreams: Mutex<Vec<Vec<Arc<WorkerUpstream>>>>,
    /// The config version each worker serves, indexed by worker.
    pub worker_versions: Vec<AtomicU64>,
    /// Where the admin API reads the call log (SQLite, or the fleet's PostgreSQL), when
    /// there is one.
    pub calls: Option<crate::cluster::calls::CallReader>,
    pub reloader: Reloader,
    /// SLOs and alerts.
    pub slo: Arc<crate::slo::SloEngine>,
    /// Chaos experiments (guarded by the SLOs).
    pub experiments: Arc<crate::chaos::experiments::Experiments>,
    /// Cluster mode's stores and roll call (`None` on a replica on its own).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl SharedState {
    /// Gauges read from live state: in-flight requests per upstream and the breaker state per
    /// target (0 closed, 1 half-open, 2 open).
    pub fn gauges(&self) -> Vec<Gauge> {
        let mut gauges = Vec::new();
        let gateway = self.gateway.load();
        for upstream in &gateway.upstreams {
            gauges.push(Gauge {
                name: "levee_inflight_requests",
                help: "Requests in flight to an upstream (what its bulkhead counts).",
                labels: vec![("upstream", upstream.spec.name.to_string())],
                value: upstream.inflight() as f64,
            });
        }
        let now = tokio::time::Instant::now();
        for upstream in &gateway.upstreams {
            let now_ms = crate::upstream::health::millis_since(upstream.epoch, now);
            for (target, health) in upstream.spec.targets.iter().zip(&upstream.health) {
                gauges.push(Gauge {
                    name: "levee_target_healthy",
                    help: "1 when the target passes its health checks and is not ejected as an outlier.",
                    labels: vec![
                        ("upstream", upstream.spec.name.to_string()),
                        ("target", target.addr.to_string()),
                    ],
                    value: if health.usable(now_ms) { 1.0 } else { 0.0 },
                });
            }
        }
        for server in gateway.mcp.iter().flat_map(|hub| hub.servers.iter()) {
            gauges.push(Gauge {
                name: "levee_mcp_server_up",
                help: "1 while an MCP server answers (its breaker closed, its process running), else 0: it is left out of tool lists.",
                labels: vec![("server", server.spec.name.to_string())],
                value: if server.up() { 1.0 } else { 0.0 },
            });
        }
        for canary in gateway.canaries.iter().flatten() {
            gauges.push(Gauge {
                name: "levee_canary_rolled_back",
                help: "1 once a route's canary was rolled back (every request goes to the route's own upstream), else 0.",
                labels: vec![("route", canary.route.to_string())],
                value: if canary.rolled_back().is_some() { 1.0 } else { 0.0 },
            });
        }
        for upstream in &gateway.upstreams {
            for (t, target) in upstream.spec.targets.iter().enumerate() {
                let state = upstream.circuit(t).gauge();
                gauges.push(Gauge {
                    name: "levee_circuit_state",
                    help: "Circuit breaker state per target: 0 closed, 1 half-open, 2 open.",
                    labels: vec![
                        ("upstream", upstream.spec.name.to_string()),
                        ("target", target.addr.to_string()),
                    ],
                    value: f64::from(state),
                });
            }
        }
        let management = &gateway.management;
        if management.configured() {
            let directory = management.directory();
            gauges.push(Gauge {
                name: "levee_management_keys",
                help: "Keys of the management store this process knows (revoked and expired ones included).",
                labels: Vec::new(),
                value: directory.key_count() as f64,
            });
            gauges.push(Gauge {
                name: "levee_management_version",
                help: "The management store's change number this process has applied.",
                labels: Vec::new(),
                value: directory.version as f64,
            });
            gauges.push(Gauge {
                name: "levee_management_store_up",
                help: "1 when the last poll of the management store succeeded, else 0.",
                labels: Vec::new(),
                value: if management.reachable() { 1.0 } else { 0.0 },
            });
        }
        gauges
    }
}
