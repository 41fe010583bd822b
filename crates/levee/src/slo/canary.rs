//! Canary releases that roll themselves back.
//!
//! A route's `canary` sends a share of its requests to another upstream. Those requests are
//! counted by an SLO of their own (the route's SLO named in `rollback_if`, restricted to the
//! canary's upstream), and once a second the `levee-slo` thread compares that SLO's burn rate
//! with the threshold: above it, with enough requests seen, the canary is rolled back and
//! every request goes to the route's own upstream again. A rollback is the safe end state: it
//! holds until the config's `canary` block changes (a reload with a new release or share),
//! and it is remembered in the data directory so a restart does not send traffic back to a
//! release that already failed.
//!
//! In cluster mode with Redis the decision is the fleet's: the alert leader decides on the
//! fleet's counts, the decision is written once to Redis (`P:canary:ID`, set only if absent,
//! kept 90 days), and every replica reads the decisions of its canaries once a second and
//! obeys them ([`sync_fleet`]). A canary that a replica has not checked against Redis yet
//! (after a start or a reload) takes no requests until it has, for at most
//! [`HOLD_LIMIT`]; a replica cut off from Redis decides on its own counts (rolling back is
//! always safe) and publishes its decision when Redis answers again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cluster::redis::RedisStore;
use crate::config::spec::CanarySpec;
use crate::slo::alerts::{Severity, Transition};
use crate::slo::SloEngine;

/// How long a canary not yet checked against the fleet's decisions waits for Redis before
/// it takes requests on this replica's own record.
pub const HOLD_LIMIT: Duration = Duration::from_secs(3);

/// How long the fleet keeps a rollback decision.
const DECISION_TTL_MS: u64 = 90 * 86_400_000;

/// The alert sent when a canary is rolled back (resolved when its config changes).
pub const ROLLBACK_ALERT: &str = "LeveeCanaryRolledBack";

/// A route's canary while its config stays the same.
#[derive(Debug)]
pub struct Canary {
    pub route: Arc<str>,
    pub spec: CanarySpec,
    rolled_back: AtomicBool,
    /// When and why it was rolled back.
    rollback: Mutex<Option<(u64, String)>>,
    /// Cluster mode: not checked against the fleet's decisions yet (takes no requests).
    held: AtomicBool,
    /// Until when (unix ms) it waits to be checked.
    hold_until_ms: AtomicU64,
    /// Checked against the fleet's decisions once (a reload that keeps it does not hold it).
    checked: AtomicBool,
}

impl Canary {
    pub fn new(route: Arc<str>, spec: CanarySpec) -> Canary {
        Canary {
            route,
            spec,
            rolled_back: AtomicBool::new(false),
            rollback: Mutex::new(None),
            held: AtomicBool::new(false),
            hold_until_ms: AtomicU64::new(0),
            checked: AtomicBool::new(false),
        }
    }

    /// Whether this request goes to the canary (drawn by its share, never after a rollback
    /// nor while it waits for the fleet's decision).
    pub fn takes_request(&self) -> bool {
        !self.rolled_back.load(Ordering::Relaxed)
            && !self.held.load(Ordering::Relaxed)
            && fastrand::f64() < self.spec.share
    }

    /// Whether it waits to be checked against the fleet's decisions.
    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::Relaxed)
    }

    /// Keeps requests from it until it was checked against the fleet's decisions (or until
    /// `until_ms`); a canary checked once is not held again.
    fn hold(&self, until_ms: u64) {
        if !self.checked.load(Ordering::Relaxed) {
            self.hold_until_ms.store(until_ms, Ordering::Relaxed);
            self.held.store(true, Ordering::Relaxed);
        }
    }

    fn release_hold(&self) {
        self.checked.store(true, Ordering::Relaxed);
        self.held.store(false, Ordering::Relaxed);
    }

    pub fn rolled_back(&self) -> Option<(u64, String)> {
        self.rollback.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn roll_back(&self, at_ms: u64, reason: String) {
        // Traffic stops first; the admin view follows.
        self.rolled_back.store(true, Ordering::Relaxed);
        *self.rollback.lock().unwrap_or_else(|p| p.into_inner()) = Some((at_ms, reason));
    }

    /// The notification for this canary's rollback (firing, or resolved at `ended_ms`).
    pub fn notification(&self, ended_ms: Option<u64>) -> Option<Transition> {
        let (at_ms, reason) = self.rolled_back()?;
        let mut labels = vec![
            ("alertname", ROLLBACK_ALERT.to_owned()),
            ("route", self.route.to_string()),
            ("severity", Severity::Ticket.name().to_owned()),
            ("upstream", self.spec.upstream_name.to_string()),
        ];
        if let Some(rollback) = &self.spec.rollback {
            labels.push(("slo", rollback.slo.to_string()));
        }
        Some(Transition {
            slo: self
                .spec
                .rollback
                .as_ref()
                .map(|r| r.slo.to_string())
                .unwrap_or_default(),
            severity: Severity::Ticket,
            firing: ended_ms.is_none(),
            starts_at_ms: at_ms,
            ends_at_ms: ended_ms,
            labels,
            annotations: vec![
                (
                    "summary",
                    format!(
                        "The canary of route {} (upstream {}) was rolled back",
                        self.route, self.spec.upstream_name
                    ),
                ),
                ("description", reason),
                ("runbook", "docs/runbooks/slo-burn-rate.md".to_owned()),
            ],
        })
    }
}

/// Rolls back every canary of `canaries` whose SLO burns too fast; returns the rollbacks'
/// notifications. Called once a second, after the SLOs were evaluated.
pub fn step(engine: &SloEngine, canaries: &[Arc<Canary>]) -> Vec<Transition> {
    let mut out = Vec::new();
    for canary in canaries {
        let Some(rollback) = &canary.spec.rollback else {
            continue;
        };
        if canary.rolled_back.load(Ordering::Relaxed) {
            continue;
        }
        let Some(status) = engine.get(&rollback.slo).and_then(|s| s.status()) else {
            continue;
        };
        let rate = status.burn_rate(rollback.window).unwrap_or(0.0);
        let counts = status.burn_counts(rollback.window).unwrap_or_default();
        if counts.total < rollback.min_requests || rate <= rollback.burn_rate_above {
            continue;
        }
        let now_ms = engine.clock.now_ms();
        let reason = format!(
            "burn rate {rate:.2} over {} above {} ({} of {} canary requests bad)",
            rollback.window, rollback.burn_rate_above, counts.bad, counts.total
        );
        tracing::warn!(route = %canary.route, upstream = %canary.spec.upstream_name, %reason, "canary rolled back");
        canary.roll_back(now_ms, reason.clone());
        remember(engine, canary, now_ms, &reason);
        out.extend(canary.notification(None));
    }
    out
}

/// Saves a rollback to the data directory (when there is one).
fn remember(engine: &SloEngine, canary: &Canary, at_ms: u64, reason: &str) {
    if let Some(store) = engine.store() {
        let saved = store.lock().unwrap_or_else(|p| p.into_inner()).save_rollback(
            &canary.route,
            &canary.spec.definition,
            at_ms,
            reason,
        );
        if let Err(error) = saved {
            tracing::warn!(route = %canary.route, %error, "cannot save the canary rollback");
        }
    }
}

/// Marks canaries rolled back in an earlier run (same route, same `canary` block) as rolled
/// back again, before any request is served.
/// In cluster mode, also holds the canaries not checked against the fleet's decisions yet.
pub fn restore(engine: &SloEngine, canaries: &[Arc<Canary>]) {
    if engine.is_shared() {
        let until = engine.clock.now_ms().saturating_add(millis(HOLD_LIMIT));
        for canary in canaries.iter().filter(|c| c.spec.rollback.is_some()) {
            canary.hold(until);
        }
    }
    let Some(store) = engine.store() else {
        return;
    };
    let store = store.lock().unwrap_or_else(|p| p.into_inner());
    for canary in canaries {
        match store.rollback(&canary.route, &canary.spec.definition) {
            Ok(Some((at_ms, reason))) => canary.roll_back(at_ms, reason),
            Ok(None) => {}
            Err(error) => tracing::warn!(route = %canary.route, %error, "cannot read saved canary rollbacks"),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A rollback decision as the fleet keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Decision {
    at_ms: u64,
    reason: String,
    /// The replica that decided.
    #[serde(default)]
    node: String,
}

/// The Redis key of a canary's decision: its route and block.
fn decision_key(redis: &RedisStore, canary: &Canary) -> String {
    let id = xxhash_rust::xxh3::xxh3_64(format!("{}\n{}", canary.route, canary.spec.definition).as_bytes());
    redis.key(&["canary", &format!("{id:016x}")])
}

/// Sets `KEYS[1]` to `ARGV[1]` (for `ARGV[2]` ms) unless it is set; returns the value that
/// holds: the first decision wins.
static DECIDE_SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
        local current = redis.call('GET', KEYS[1])
        if current then
            return current
        end
        redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
        return ARGV[1]
        ",
    )
});

/// Cluster mode, once a second: applies the fleet's rollback decisions to `canaries`,
/// publishes this replica's own (made while it decided alone, or by the leader), and lets
/// the canaries checked take requests. Returns false when Redis did not answer; canaries
/// held past [`HOLD_LIMIT`] then take requests on this replica's own record.
pub async fn sync_fleet(
    engine: &SloEngine,
    redis: &RedisStore,
    node: &str,
    canaries: &[Arc<Canary>],
) -> bool {
    let judged: Vec<&Arc<Canary>> = canaries.iter().filter(|c| c.spec.rollback.is_some()).collect();
    if judged.is_empty() {
        return true;
    }
    let keys: Vec<String> = judged.iter().map(|c| decision_key(redis, c)).collect();
    let read_keys = keys.clone();
    let decisions: Option<Vec<Option<String>>> = redis
        .call_background(
            |mut conn| async move { redis::cmd("MGET").arg(read_keys).query_async(&mut conn).await },
        )
        .await;
    let Some(decisions) = decisions else {
        let now_ms = engine.clock.now_ms();
        for canary in judged {
            if canary.is_held() && now_ms >= canary.hold_until_ms.load(Ordering::Relaxed) {
                tracing::warn!(route = %canary.route, "Redis did not answer: the canary takes requests by this replica's own record");
                canary.release_hold();
            }
        }
        return false;
    };
    for ((canary, key), decision) in judged.into_iter().zip(keys).zip(decisions) {
        let mut decision = decision.and_then(|json| serde_json::from_str::<Decision>(&json).ok());
        if decision.is_none() {
            if let Some((at_ms, reason)) = canary.rolled_back() {
                decision = publish(
                    redis,
                    key,
                    Decision {
                        at_ms,
                        reason,
                        node: node.to_owned(),
                    },
                )
                .await;
            }
        }
        if let Some(d) = decision {
            let local = canary.rolled_back();
            if local.as_ref() != Some(&(d.at_ms, d.reason.clone())) {
                if local.is_none() {
                    tracing::warn!(route = %canary.route, upstream = %canary.spec.upstream_name, reason = %d.reason, decided_by = %d.node, "canary rolled back by the fleet's decision");
                }
                canary.roll_back(d.at_ms, d.reason.clone());
                remember(engine, canary, d.at_ms, &d.reason);
            }
        }
        canary.release_hold();
    }
    true
}

/// Writes `decision` unless another was written first; returns the one that holds.
async fn publish(redis: &RedisStore, key: String, decision: Decision) -> Option<Decision> {
    let json = serde_json::to_string(&decision).ok()?;
    let holds: String = redis
        .call_background(|mut conn| async move {
            DECIDE_SCRIPT
                .key(key)
                .arg(json)
                .arg(DECISION_TTL_MS)
                .invoke_async(&mut conn)
                .await
        })
        .await?;
    serde_json::from_str(&holds).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::spec::{CanaryRollback, CanaryTarget, RedisSpec, Secret};
    use crate::slo::Clock;

    /// A Redis nobody answers for (the store never connects: every call is `None`).
    fn silent_redis() -> RedisStore {
        RedisStore::new(&RedisSpec {
            url: Secret("redis://127.0.0.1:1/0".into()),
            timeout: Duration::from_millis(50),
            backoff: Duration::from_secs(1),
            key_prefix: "t".into(),
        })
        .unwrap()
    }

    fn judged_canary() -> Arc<Canary> {
        Arc::new(Canary::new(
            "users".into(),
            CanarySpec {
                target: CanaryTarget::Upstream(0),
                upstream_name: "v2".into(),
                share: 1.0,
                rollback: Some(CanaryRollback {
                    slo: "users-availability-canary".into(),
                    burn_rate_above: 14.4,
                    window: "5m",
                    min_requests: 10,
                }),
                definition: "{}".into(),
            },
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn a_canary_waits_for_the_fleets_decision_at_most_the_hold_limit() {
        let engine = SloEngine::new(Clock::starting_at(1_700_000_000_000), None);
        engine.share_counts();
        let canary = judged_canary();
        let canaries = [canary.clone()];
        restore(&engine, &canaries);
        assert!(canary.is_held() && !canary.takes_request());
        let redis = silent_redis();
        tokio::time::advance(HOLD_LIMIT - Duration::from_millis(1)).await;
        assert!(!sync_fleet(&engine, &redis, "gw-0", &canaries).await);
        assert!(canary.is_held(), "still waiting for Redis");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!sync_fleet(&engine, &redis, "gw-0", &canaries).await);
        assert!(!canary.is_held() && canary.takes_request());
        // Checked once: a reload that keeps the canary does not hold it again.
        restore(&engine, &canaries);
        assert!(!canary.is_held());
    }

    #[tokio::test(start_paused = true)]
    async fn a_single_node_never_holds_a_canary() {
        let engine = SloEngine::new(Clock::starting_at(1_700_000_000_000), None);
        let canary = judged_canary();
        restore(&engine, std::slice::from_ref(&canary));
        assert!(!canary.is_held() && canary.takes_request());
    }
}
