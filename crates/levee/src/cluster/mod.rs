//! Cluster mode: many Levee replicas acting as one gateway through shared stores, **Redis**
//! for counters and leases and **PostgreSQL** for records (docs/cluster.md, ADR 0012).
//!
//! This module owns the connections and the fleet's roll call; the features that share
//! state (rate limits, LLM budgets, SLOs, the call log) use it and keep their local logic as
//! the fallback. The rule they all follow: a store that is slow or down costs at most one
//! `timeout`, never a failed request, and each replica then decides alone with its share
//! (the limit divided by the replicas it last saw alive), counted in
//! `levee_cluster_fallback_total{component}`.
//!
//! What stays local, on purpose: circuit breakers, outlier ejection, health checks and retry
//! budgets describe this replica's own connections to its upstreams; sharing them would let
//! one replica's broken network path eject a target for replicas that reach it fine.

pub mod call_sql;
pub mod calls;
pub mod nodes;
pub mod postgres;
pub mod redis;
pub mod stats;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::spec::ClusterSpec;
use crate::observability::metrics::family;
use nodes::NodeInfo;
use postgres::PgStore;
use redis::RedisStore;

/// The parts that can fall back to local decisions, as named in
/// `levee_cluster_fallback_total{component}`.
pub const COMPONENTS: [&str; 4] = ["rate_limit", "llm_quota", "slo", "call_log"];

/// Why cluster mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Redis(#[from] redis::RedisSetupError),
    #[error(transparent)]
    Postgres(#[from] postgres::PgError),
}

/// This replica's handle on the fleet.
#[derive(Debug)]
pub struct Cluster {
    pub node_id: String,
    pub redis: Option<Arc<RedisStore>>,
    pub postgres: Option<Arc<PgStore>>,
    heartbeat: Duration,
    started_ms: u64,
    /// Replicas alive at the last roll call that answered (at least 1: this one).
    alive: AtomicUsize,
    /// The roll as last read.
    nodes: Mutex<Vec<NodeInfo>>,
    config_hash: AtomicU64,
    /// This replica holds the alerting lease.
    alert_leader: AtomicBool,
    fallbacks: [AtomicU64; COMPONENTS.len()],
}

impl Cluster {
    pub fn new(spec: &ClusterSpec) -> Result<Cluster, ClusterError> {
        let redis = spec
            .redis
            .as_ref()
            .map(RedisStore::new)
            .transpose()?
            .map(Arc::new);
        let postgres = spec
            .postgres
            .as_ref()
            .map(PgStore::new)
            .transpose()?
            .map(Arc::new);
        Ok(Cluster {
            node_id: spec.node_id.clone(),
            redis,
            postgres,
            heartbeat: spec.heartbeat,
            started_ms: unix_ms(),
            alive: AtomicUsize::new(1),
            nodes: Mutex::new(Vec::new()),
            config_hash: AtomicU64::new(0),
            alert_leader: AtomicBool::new(false),
            fallbacks: Default::default(),
        })
    }

    /// Replicas alive as last seen (at least 1): a limit's local share is the limit divided
    /// by this.
    pub fn replicas(&self) -> usize {
        self.alive.load(Ordering::Relaxed).max(1)
    }

    /// Counts one decision made locally because a store did not answer.
    pub fn fallback(&self, component: &str) {
        if let Some(i) = COMPONENTS.iter().position(|c| *c == component) {
            if let Some(counter) = self.fallbacks.get(i) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn fallbacks(&self, component: &str) -> u64 {
        COMPONENTS
            .iter()
            .position(|c| *c == component)
            .and_then(|i| self.fallbacks.get(i))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// The config this replica serves, for the roll call (set at start and on each reload).
    pub fn set_config_hash(&self, hash: u64) {
        self.config_hash.store(hash, Ordering::Relaxed);
    }

    pub fn set_alert_leader(&self, leader: bool) {
        self.alert_leader.store(leader, Ordering::Relaxed);
    }

    pub fn is_alert_leader(&self) -> bool {
        self.alert_leader.load(Ordering::Relaxed)
    }

    pub fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    fn me(&self) -> NodeInfo {
        NodeInfo {
            id: self.node_id.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            config_hash: format!("{:016x}", self.config_hash.load(Ordering::Relaxed)),
            last_heartbeat_ms: unix_ms(),
            started_ms: self.started_ms,
            redis: self.redis.as_ref().is_some_and(|r| r.is_up()),
            postgres: self.postgres.as_ref().is_some_and(|p| p.is_up()),
            alert_leader: self.is_alert_leader(),
            alive: true,
            this: false,
        }
    }

    /// The `levee-cluster` thread: keeps the store connections alive (a probe every 250 ms)
    /// and beats every `heartbeat`, until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut probe = tokio::time::interval(Duration::from_millis(250));
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_beat = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = probe.tick() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            if let Some(redis) = &self.redis {
                if !redis.is_up() {
                    redis.probe().await;
                }
            }
            if let Some(postgres) = &self.postgres {
                postgres.probe().await;
            }
            if tokio::time::Instant::now() >= next_beat {
                next_beat = tokio::time::Instant::now() + self.heartbeat;
                self.beat().await;
            }
        }
        if let Some(redis) = &self.redis {
            let _: Option<i64> = {
                let key = redis.key(&["nodes"]);
                let id = self.node_id.clone();
                redis
                    .call_background(|mut conn| async move {
                        ::redis::cmd("HDEL").arg(key).arg(id).query_async(&mut conn).await
                    })
                    .await
            };
        }
    }

    /// Writes this replica's heartbeat and reads the roll.
    async fn beat(&self) {
        let me = self.me();
        let Some(redis) = &self.redis else {
            *self.nodes.lock().unwrap_or_else(|p| p.into_inner()) = vec![me];
            return;
        };
        if redis.is_up() {
            // A live connection that stopped answering is only noticed by a call.
            redis.probe().await;
        }
        let Some(roll) = nodes::beat(redis, &me).await else {
            // Redis is not answering: the count of replicas last seen stands.
            return;
        };
        let dead_after = u64::try_from(self.heartbeat.as_millis() * 3).unwrap_or(u64::MAX);
        let alive = roll
            .iter()
            .filter(|n| me.last_heartbeat_ms.saturating_sub(n.last_heartbeat_ms) < dead_after)
            .count();
        self.alive.store(alive.max(1), Ordering::Relaxed);
        *self.nodes.lock().unwrap_or_else(|p| p.into_inner()) = roll;
    }

    /// `GET /api/v1/cluster`: every node of the roll, with whether it is alive, and a warning
    /// when replicas serve different configs.
    pub fn view(&self) -> FleetView {
        let now = unix_ms();
        let dead_after = u64::try_from(self.heartbeat.as_millis() * 3).unwrap_or(u64::MAX);
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let me = self.me();
        match nodes.iter_mut().find(|n| n.id == me.id) {
            Some(mine) => *mine = me,
            None => nodes.push(me),
        }
        for node in &mut nodes {
            node.alive = now.saturating_sub(node.last_heartbeat_ms) < dead_after;
            node.this = node.id == self.node_id;
        }
        let mut hashes: Vec<&str> = nodes
            .iter()
            .filter(|n| n.alive)
            .map(|n| n.config_hash.as_str())
            .collect();
        hashes.sort_unstable();
        hashes.dedup();
        let mut warnings = Vec::new();
        if hashes.len() > 1 {
            warnings.push(format!(
                "replicas serve {} different configs ({}): reload them all from the same file",
                hashes.len(),
                hashes.join(", ")
            ));
        }
        FleetView {
            cluster: true,
            node_id: Some(self.node_id.clone()),
            replicas_alive: self.replicas(),
            redis: self.redis.as_ref().map(|r| r.is_up()),
            postgres: self.postgres.as_ref().map(|p| p.is_up()),
            nodes,
            warnings,
        }
    }

    /// The cluster metric families.
    pub fn render_metrics(&self, out: &mut String) {
        family(
            out,
            "levee_cluster_nodes",
            "gauge",
            "Replicas alive in the fleet, as this replica last saw them.",
        );
        let _ = writeln!(out, "levee_cluster_nodes {}", self.replicas());
        family(
            out,
            "levee_cluster_store_up",
            "gauge",
            "1 when the shared store answers this replica, else 0.",
        );
        if let Some(r) = &self.redis {
            let _ = writeln!(
                out,
                "levee_cluster_store_up{{store=\"redis\"}} {}",
                u8::from(r.is_up())
            );
        }
        if let Some(p) = &self.postgres {
            let _ = writeln!(
                out,
                "levee_cluster_store_up{{store=\"postgres\"}} {}",
                u8::from(p.is_up())
            );
        }
        family(
            out,
            "levee_cluster_fallback_total",
            "counter",
            "Decisions made locally (this replica's share) because a shared store did not answer in time.",
        );
        for (component, count) in COMPONENTS.iter().zip(&self.fallbacks) {
            let _ = writeln!(
                out,
                "levee_cluster_fallback_total{{component=\"{component}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        family(
            out,
            "levee_cluster_store_seconds",
            "histogram",
            "Time a shared store took to answer one call.",
        );
        if let Some(r) = &self.redis {
            r.stats.render_histogram(out);
        }
        if let Some(p) = &self.postgres {
            p.stats.render_histogram(out);
        }
        family(
            out,
            "levee_cluster_alert_leader",
            "gauge",
            "1 when this replica holds the alerting lease.",
        );
        let _ = writeln!(
            out,
            "levee_cluster_alert_leader {}",
            u8::from(self.is_alert_leader())
        );
    }
}

/// The fleet as one replica sees it (`GET /api/v1/cluster`, `levee cluster status`).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct FleetView {
    /// Whether the config has a `cluster` block (without one the other fields are empty).
    pub cluster: bool,
    pub node_id: Option<String>,
    /// Replicas alive as this one last saw them: its share of each limit when Redis does not
    /// answer is the limit divided by this.
    pub replicas_alive: usize,
    /// Whether Redis answers this replica (`null`: not configured).
    pub redis: Option<bool>,
    /// Whether PostgreSQL answers this replica (`null`: not configured).
    pub postgres: Option<bool>,
    pub nodes: Vec<NodeInfo>,
    /// For example: replicas serving different configs.
    pub warnings: Vec<String>,
}

/// Unix time in milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
