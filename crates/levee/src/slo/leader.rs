//! One alert sender for the fleet (cluster mode with `cluster.redis`).
//!
//! Why: with every replica evaluating the same fleet-wide counts, every replica would send
//! the same notification. One replica at a time holds the `alerts` lease in Redis
//! ([`hold_lease`]); only it steps the alerts, decides canary rollbacks and notifies. The
//! lease lives [`lease_ttl`] (the evaluation interval, 1 s to 15 s) and is renewed four
//! times per life, so when the leader dies another replica takes it within 1.25 TTL and
//! evaluates at once: within two evaluation intervals.
//!
//! Which alerts fire, and since when, is shared in Redis (`P:alerts`, a hash from each
//! alert's fingerprint to its labels, annotations, `startsAt` and rule), so a new leader
//! carries on from it: it does not send a firing alert again, and it sends the resolved
//! notification of an alert another leader fired. Every replica mirrors the hash once a
//! second (so `/api/v1/slos` and the `levee_slo_alert_firing` gauges agree everywhere).
//! A leader commits each change before sending it, in one Lua script that first checks
//! the lease is still its own (fencing: a leader that stalled past its lease sends
//! nothing), then `HSETNX` for an alert that starts firing and `HDEL` for one that
//! resolves: only a change that this commit made is sent, so a change is sent at most once
//! however leaders come and go. A leader killed between its commit and the delivery loses
//! that one notification (as a single node killed with notifications queued does).
//!
//! Without Redis there is no leader and no notification at all (see docs/slo.md, "Fleet
//! mode"): two replicas each sure it leads would send every notification twice, and the
//! shared state a resolution needs would split. Alerts that still hold fire when Redis
//! answers again, from the counts kept meanwhile.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::alerts::{self, fingerprint, AlertState, Severity, Transition, RULES};
use super::canary::Canary;
use super::SloEngine;
use crate::cluster::redis::RedisStore;
use crate::cluster::{nodes, Cluster};

/// The lease's name (`P:lease:alerts`).
pub const LEASE: &str = "alerts";

/// The hash of the fleet's firing alerts (`P:alerts`).
const FIRING: &str = "alerts";

/// How long the lease lasts for an evaluation interval: the interval, from 1 s to 15 s.
pub fn lease_ttl(interval: Duration) -> Duration {
    interval.clamp(Duration::from_secs(1), Duration::from_secs(15))
}

/// How often the lease is renewed (or tried): four times per life.
pub fn renew_every(ttl: Duration) -> Duration {
    ttl / 4
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Takes, renews and watches the alert lease until `stop` turns true; `leader` tells the
/// `levee-slo` thread whether this replica holds it. A renewal Redis does not answer counts
/// as lost at once (no notification until the next renewal succeeds).
pub async fn hold_lease(
    cluster: Arc<Cluster>,
    redis: Arc<RedisStore>,
    interval: watch::Receiver<Duration>,
    leader: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let ttl = lease_ttl(*interval.borrow());
        let held = nodes::lease(&redis, LEASE, &cluster.node_id, millis(ttl)).await == Some(true);
        if held != *leader.borrow() {
            if held {
                tracing::info!(node = %cluster.node_id, "this replica leads alerting for the fleet");
            } else {
                tracing::warn!(node = %cluster.node_id, "this replica no longer leads alerting");
            }
            cluster.set_alert_leader(held);
            leader.send_replace(held);
        }
        tokio::select! {
            _ = tokio::time::sleep(renew_every(ttl)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Gives the lease up (a clean stop): another replica takes over at once.
pub async fn release(cluster: &Cluster, redis: &RedisStore) {
    if cluster.is_alert_leader() {
        cluster.set_alert_leader(false);
        nodes::release(redis, LEASE, &cluster.node_id).await;
    }
}

/// An alert that fires for the fleet, as saved in `P:alerts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedAlert {
    /// `startsAt`, Unix milliseconds.
    pub since: u64,
    /// The index in [`RULES`] of the rule that fired it (SLO alerts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<usize>,
    /// In their order (the fingerprint hashes them in order).
    pub labels: Vec<(String, String)>,
    pub annotations: Vec<(String, String)>,
}

/// The label and annotation names Levee sends (a stored alert's names are mapped back to
/// these; any other is dropped).
const NAMES: [&str; 9] = [
    "alertname",
    "slo",
    "severity",
    "route",
    "consumer",
    "upstream",
    "summary",
    "description",
    "runbook",
];

fn known(pairs: &[(String, String)]) -> Vec<(&'static str, String)> {
    pairs
        .iter()
        .filter_map(|(k, v)| NAMES.iter().find(|n| **n == k).map(|n| (*n, v.clone())))
        .collect()
}

fn owned(pairs: &[(&'static str, String)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
}

impl SharedAlert {
    /// Its resolved notification at `now_ms`.
    fn resolved(&self, now_ms: u64) -> Transition {
        let labels = known(&self.labels);
        let label = |name: &str| labels.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone());
        Transition {
            slo: label("slo").unwrap_or_default(),
            severity: label("severity")
                .and_then(|s| Severity::from_name(&s))
                .unwrap_or(Severity::Ticket),
            firing: false,
            starts_at_ms: self.since,
            ends_at_ms: Some(now_ms),
            labels,
            annotations: known(&self.annotations),
        }
    }
}

/// Commits alert changes if `ARGV[1]` still holds the lease `KEYS[1]`: pairs (fingerprint,
/// JSON) from `ARGV[2]` on, an empty JSON resolving. Returns 0 (not the holder) or 1
/// followed by one 0/1 per change (1: this call made it).
static COMMIT_SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
        if redis.call('GET', KEYS[1]) ~= ARGV[1] then
            return {0}
        end
        local done = {1}
        for i = 2, #ARGV - 1, 2 do
            if ARGV[i + 1] == '' then
                done[#done + 1] = redis.call('HDEL', KEYS[2], ARGV[i])
            else
                done[#done + 1] = redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1])
            end
        end
        return done
        ",
    )
});

/// The fleet's firing alerts as this replica last read them, and the leader's commits.
#[derive(Debug)]
pub struct SharedAlerts {
    redis: Arc<RedisStore>,
    holder: String,
    /// By fingerprint.
    firing: HashMap<String, SharedAlert>,
    /// Read at least once since the start.
    read_once: bool,
}

impl SharedAlerts {
    pub fn new(cluster: &Cluster, redis: Arc<RedisStore>) -> SharedAlerts {
        SharedAlerts {
            redis,
            holder: cluster.node_id.clone(),
            firing: HashMap::new(),
            read_once: false,
        }
    }

    /// Whether there is anything to read: a config with no SLO and no canary has nothing to
    /// alert on, and once read empty the fleet's hash needs no reading each second.
    pub fn needed(&self, engine: &SloEngine, canaries: &[Arc<Canary>]) -> bool {
        !self.read_once || !self.firing.is_empty() || !canaries.is_empty() || !engine.slos().all.is_empty()
    }

    /// Reads the fleet's firing alerts; false when Redis did not answer.
    pub async fn read(&mut self) -> bool {
        let key = self.redis.key(&[FIRING]);
        let Some(all) = self
            .redis
            .call_background(|mut conn| async move {
                redis::cmd("HGETALL")
                    .arg(key)
                    .query_async::<Vec<(String, String)>>(&mut conn)
                    .await
            })
            .await
        else {
            return false;
        };
        self.firing = all
            .into_iter()
            .filter_map(|(fp, json)| Some((fp, serde_json::from_str(&json).ok()?)))
            .collect();
        self.read_once = true;
        true
    }

    /// Whether the fleet's alert with these labels fires.
    pub fn fires(&self, labels: &[(&'static str, String)]) -> bool {
        self.firing.contains_key(&fingerprint(labels))
    }

    /// Sets every SLO's alerts to what fires for the fleet.
    pub fn mirror(&self, engine: &SloEngine) {
        for slo in engine.slos().all.iter().filter(|s| s.spec.alerts) {
            let state = |severity| {
                let shared = self
                    .firing
                    .get(&fingerprint(&alerts::labels(&slo.spec, severity)));
                AlertState {
                    firing_since: shared.map(|a| a.since),
                    rule: shared.and_then(|a| a.rule).and_then(|i| RULES.get(i)).copied(),
                }
            };
            let (page, ticket) = (state(Severity::Page), state(Severity::Ticket));
            let mut pair = slo.alerts.lock().unwrap_or_else(|p| p.into_inner());
            pair.page = page;
            pair.ticket = ticket;
        }
    }

    /// Resolved notifications for the fleet's firing alerts that nothing in this replica's
    /// config raises any more (an SLO or canary removed while another replica led, say).
    pub fn orphans(&self, engine: &SloEngine, canaries: &[Arc<Canary>], now_ms: u64) -> Vec<Transition> {
        let mut expected: HashSet<String> = HashSet::new();
        for slo in engine.slos().all.iter().filter(|s| s.spec.alerts) {
            for severity in [Severity::Page, Severity::Ticket] {
                expected.insert(fingerprint(&alerts::labels(&slo.spec, severity)));
            }
        }
        for canary in canaries {
            if let Some(n) = canary.notification(None) {
                expected.insert(fingerprint(&n.labels));
            }
        }
        self.firing
            .iter()
            .filter(|(fp, _)| !expected.contains(*fp))
            .map(|(_, alert)| alert.resolved(now_ms))
            .collect()
    }

    /// Commits `changes` if this replica still holds the lease; returns those this commit
    /// made (to send). Nothing when the lease is another's or Redis does not answer.
    pub async fn commit(&mut self, engine: &SloEngine, changes: Vec<Transition>) -> Vec<Transition> {
        if changes.is_empty() {
            return changes;
        }
        let mut args = vec![self.holder.clone()];
        let mut shared = Vec::with_capacity(changes.len());
        for t in &changes {
            let fp = fingerprint(&t.labels);
            let alert = t.firing.then(|| SharedAlert {
                since: t.starts_at_ms,
                rule: rule_index(engine, t),
                labels: owned(&t.labels),
                annotations: owned(&t.annotations),
            });
            args.push(fp.clone());
            args.push(
                alert
                    .as_ref()
                    .and_then(|a| serde_json::to_string(a).ok())
                    .unwrap_or_default(),
            );
            shared.push((fp, alert));
        }
        let keys = [nodes::lease_key(&self.redis, LEASE), self.redis.key(&[FIRING])];
        let done: Option<Vec<i64>> = self
            .redis
            .call_background(|mut conn| async move {
                let mut invocation = COMMIT_SCRIPT.prepare_invoke();
                invocation.key(&keys[0]).key(&keys[1]);
                for arg in &args {
                    invocation.arg(arg);
                }
                invocation.invoke_async(&mut conn).await
            })
            .await;
        let Some((leads, made)) = done.as_deref().and_then(|d| d.split_first()) else {
            return Vec::new();
        };
        if *leads != 1 {
            return Vec::new();
        }
        let mut out = Vec::new();
        for ((t, (fp, alert)), made) in changes.into_iter().zip(shared).zip(made) {
            match alert {
                Some(alert) => self.firing.insert(fp, alert),
                None => self.firing.remove(&fp),
            };
            if *made == 1 {
                out.push(t);
            }
        }
        out
    }
}

/// The rule that fires an SLO alert, as the leader's state has it.
fn rule_index(engine: &SloEngine, t: &Transition) -> Option<usize> {
    let slo = engine.get(&t.slo)?;
    let pair = slo.alerts();
    let state = match t.severity {
        Severity::Page => pair.page,
        Severity::Ticket => pair.ticket,
    };
    RULES.iter().position(|r| Some(*r) == state.rule)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn the_lease_outlives_a_missed_renewal_and_hands_over_within_two_intervals() {
        for secs in [1, 5, 15, 60] {
            let interval = Duration::from_secs(secs);
            let ttl = lease_ttl(interval);
            // Three renewals may fail before the lease lapses.
            assert!(renew_every(ttl) * 3 < ttl);
            // A dead leader's lease lapses within a TTL; another replica tries within a
            // renewal period after that.
            assert!(ttl + renew_every(ttl) < interval * 2, "{secs}s");
        }
    }

    #[test]
    fn a_stored_alert_resolves_with_its_labels_in_order() {
        let alert = SharedAlert {
            since: 1_000,
            rule: Some(0),
            labels: vec![
                ("alertname".into(), alerts::ALERT_NAME.into()),
                ("slo".into(), "api".into()),
                ("severity".into(), "page".into()),
                ("route".into(), "r".into()),
                ("x-unknown".into(), "dropped".into()),
            ],
            annotations: vec![("summary".into(), "burning".into())],
        };
        let json = serde_json::to_string(&alert).unwrap();
        let back: SharedAlert = serde_json::from_str(&json).unwrap();
        assert_eq!(back, alert);
        let t = back.resolved(5_000);
        assert_eq!(
            (t.slo.as_str(), t.severity, t.firing),
            ("api", Severity::Page, false)
        );
        assert_eq!((t.starts_at_ms, t.ends_at_ms), (1_000, Some(5_000)));
        assert_eq!(t.labels.len(), 4);
        // The same labels in the same order: the same alert for receivers and for Redis.
        let labels: Vec<(&'static str, String)> = vec![
            ("alertname", alerts::ALERT_NAME.into()),
            ("slo", "api".into()),
            ("severity", "page".into()),
            ("route", "r".into()),
        ];
        assert_eq!(fingerprint(&t.labels), fingerprint(&labels));
    }
}
