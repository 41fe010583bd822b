//! Chaos experiments for the fleet (cluster mode with `cluster.redis`).
//!
//! Why: behind a load balancer an experiment started on one replica would fault a third of
//! the route's traffic, be invisible from the others, and keep running on the one replica
//! whose admin API nobody happens to reach. So each replica, once a second
//! ([`Experiments::sync_fleet`]), writes the experiments started on it to Redis, takes up
//! those started elsewhere, follows the first end any replica wrote, and adds its share of
//! every report.
//!
//! Layout in Redis (`P` is `cluster.redis.key_prefix`):
//!
//! - `P:experiments`: a hash from each experiment's id to the experiment as started (JSON).
//! - `P:experiment-ends`: a hash from an id to how the experiment ended (state, reason,
//!   time), set only if absent: the first end (a `DELETE` on any replica, a guard that
//!   tripped on the fleet's SLO, the duration) is everyone's.
//! - `P:experiment:ID`: the fleet's report counts, each replica adding what it counted since
//!   its last sync (`HINCRBY`), kept 30 days after the experiment's end.
//!
//! Two experiments started on the same route on two replicas within the same second both
//! reach Redis; every replica keeps the one started first and ends the other. At most
//! [`MAX_EXPERIMENTS`] are kept, the oldest ended going first. A replica that stopped or
//! restarted takes a running experiment up again (its own record says it was aborted when
//! it stopped; the fleet's says it runs). Without Redis each replica keeps the experiments
//! it knows, ends them by itself (duration, guard on its own counts, `DELETE` on it), and
//! tells the fleet when Redis answers again.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{fault_spec, save, Experiment, ExperimentView, Experiments, Report};
use crate::cluster::redis::RedisStore;
use crate::slo::alerts::rfc3339;
use crate::slo::store::MAX_EXPERIMENTS;
use crate::slo::SloEngine;

/// The report counts, in [`Experiment::counts`] order, as fields of `P:experiment:ID`.
const FIELDS: [&str; 5] = ["requests", "affected", "aborted", "delayed", "errors"];
/// How long a report is kept after its experiment's end.
const REPORT_TTL_S: u64 = 30 * 86_400;
/// Reports are still added to this long after an experiment ended (requests that were on
/// their way when it ended).
const REPORT_AFTER_END_MS: u64 = 60_000;

/// What this replica added to an experiment's fleet report, and the fleet's totals.
#[derive(Debug, Default)]
pub struct SharedReport {
    pushed: [u64; 5],
    pub(super) totals: Option<[u64; 5]>,
}

/// How an experiment ended, as the fleet keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct End {
    state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    ended_ms: u64,
}

/// What a sync changes locally, worked out under the lock and done after it.
enum Change {
    /// Another replica's end.
    Adopt(Arc<Experiment>, End),
    /// The fleet's experiment runs: this replica takes it up again.
    Rejoin(Arc<Experiment>),
    /// Two run on one route: this one started later.
    Conflict(Arc<Experiment>, String),
}

/// The fleet's experiments and their ends.
type Fleet = (HashMap<String, ExperimentView>, HashMap<String, End>);

impl Experiments {
    /// Shares experiments with the fleet (see the module docs). False when Redis did not
    /// answer.
    pub async fn sync_fleet(&self, redis: &RedisStore, engine: &SloEngine) -> bool {
        let Some((started, ends)) = read(redis).await else {
            return false;
        };
        if !self.tell(redis, &started, &ends).await {
            return false;
        }
        let changes = self.follow(&started, &ends, engine);
        let now_ms = engine.clock.now_ms();
        for change in changes {
            match change {
                Change::Adopt(e, end) => self.end_at(&e, &end.state, end.reason, end.ended_ms, engine),
                Change::Rejoin(e) => {
                    {
                        let mut view = e.view.lock().unwrap_or_else(|p| p.into_inner());
                        view.state = "running".into();
                        view.reason = None;
                        view.ended_ms = None;
                        view.ended_at = None;
                    }
                    tracing::info!(id = %e.view().id, "this replica takes up the fleet's chaos experiment again");
                    save(engine, &e.view());
                }
                Change::Conflict(e, reason) => {
                    self.end(&e, "aborted", Some(reason), engine);
                    e.end_to_share.store(true, Ordering::Relaxed);
                }
            }
        }
        {
            let all = self.all.lock().unwrap_or_else(|p| p.into_inner());
            self.publish(&all);
        }
        self.share_reports(redis, &started, now_ms).await
    }

    /// Writes the experiments started here and the ends decided here that the fleet does
    /// not know yet, and forgets the oldest ended ones beyond [`MAX_EXPERIMENTS`].
    async fn tell(
        &self,
        redis: &RedisStore,
        started: &HashMap<String, ExperimentView>,
        ends: &HashMap<String, End>,
    ) -> bool {
        let local: Vec<Arc<Experiment>> = self.all.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut pipe = redis::pipe();
        let mut writes = 0;
        let mut told = Vec::new();
        for e in &local {
            let view = e.view.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if e.unpublished.load(Ordering::Relaxed) && !started.contains_key(&view.id) {
                let first = ExperimentView {
                    state: "running".into(),
                    reason: None,
                    ended_at: None,
                    ended_ms: None,
                    report: Report {
                        budget: view.report.budget.clone(),
                        ..Report::default()
                    },
                    ..view.clone()
                };
                if let Ok(json) = serde_json::to_string(&first) {
                    pipe.hset_nx(redis.key(&["experiments"]), &view.id, json).ignore();
                    writes += 1;
                    told.push(e.clone());
                }
            }
            if e.end_to_share.load(Ordering::Relaxed) && !ends.contains_key(&view.id) {
                let end = End {
                    state: view.state.clone(),
                    reason: view.reason.clone(),
                    ended_ms: view.ended_ms.unwrap_or_default(),
                };
                if let Ok(json) = serde_json::to_string(&end) {
                    // Sent again each second until the fleet shows it (`follow` then clears
                    // the flag): until then this replica must not take the experiment up.
                    pipe.hset_nx(redis.key(&["experiment-ends"]), &view.id, json)
                        .ignore();
                    writes += 1;
                }
            }
        }
        let mut by_age: Vec<&ExperimentView> = started.values().collect();
        by_age.sort_by_key(|v| std::cmp::Reverse(v.started_ms));
        for old in by_age
            .iter()
            .skip(MAX_EXPERIMENTS)
            .filter(|v| ends.contains_key(&v.id))
        {
            pipe.hdel(redis.key(&["experiments"]), &old.id).ignore();
            pipe.hdel(redis.key(&["experiment-ends"]), &old.id).ignore();
            pipe.del(redis.key(&["experiment", &old.id])).ignore();
            writes += 3;
        }
        if writes == 0 {
            return true;
        }
        let written: Option<()> = redis
            .call_background(|mut conn| async move { pipe.query_async(&mut conn).await })
            .await;
        if written.is_none() {
            return false;
        }
        for e in told {
            e.unpublished.store(false, Ordering::Relaxed);
        }
        true
    }

    /// Takes up the fleet's experiments this replica does not have, and works out the
    /// ends and conflicts to apply.
    fn follow(
        &self,
        started: &HashMap<String, ExperimentView>,
        ends: &HashMap<String, End>,
        engine: &SloEngine,
    ) -> Vec<Change> {
        let now_ms = engine.clock.now_ms();
        let mut changes = Vec::new();
        let mut all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        let mut by_age: Vec<&ExperimentView> = started.values().collect();
        by_age.sort_by_key(|v| (v.started_ms, v.id.clone()));
        for shared in by_age {
            let end = ends.get(&shared.id);
            let local = all
                .iter()
                .find(|e| e.view.lock().unwrap_or_else(|p| p.into_inner()).id == shared.id);
            if let (Some(e), Some(_)) = (local, end) {
                e.end_to_share.store(false, Ordering::Relaxed);
            }
            match (local, end) {
                (Some(e), Some(end)) if e.running() => changes.push(Change::Adopt(e.clone(), end.clone())),
                (Some(e), None)
                    if !e.running() && !e.end_to_share.load(Ordering::Relaxed) && now_ms < shared.ends_ms =>
                {
                    changes.push(Change::Rejoin(e.clone()))
                }
                (Some(_), _) => {}
                (None, end) => {
                    let Ok(fault) = fault_spec(&shared.fault) else {
                        continue;
                    };
                    let mut view = shared.clone();
                    if let Some(end) = end {
                        view.state = end.state.clone();
                        view.reason = end.reason.clone();
                        view.ended_ms = Some(end.ended_ms);
                        view.ended_at = Some(rfc3339(end.ended_ms));
                    } else {
                        tracing::info!(id = %view.id, route = %view.route, name = %view.name, "chaos experiment started on another replica runs here too");
                    }
                    all.push(Arc::new(Experiment::new(view, fault)));
                }
            }
        }
        all.sort_by_key(|e| {
            let view = e.view.lock().unwrap_or_else(|p| p.into_inner());
            (view.started_ms, view.id.clone())
        });
        while all.len() > MAX_EXPERIMENTS {
            let Some(oldest_ended) = all.iter().position(|e| !e.running()) else {
                break;
            };
            all.remove(oldest_ended);
        }
        // One experiment per route: the one started first (then the smaller id) stays.
        let mut first_on: HashMap<String, String> = HashMap::new();
        for e in all.iter().filter(|e| e.running()) {
            let view = e.view.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let ended_by_fleet = ends.contains_key(&view.id);
            match first_on.get(&view.route) {
                Some(first) if !ended_by_fleet => changes.push(Change::Conflict(
                    e.clone(),
                    format!("experiment `{first}` already runs on route `{}`", view.route),
                )),
                Some(_) => {}
                None => {
                    if !ended_by_fleet {
                        first_on.insert(view.route.clone(), view.id.clone());
                    }
                }
            }
        }
        changes
    }

    /// Adds this replica's new counts to the fleet's report of each experiment the fleet
    /// knows that runs or ended lately, and reads the fleet's totals back.
    async fn share_reports(
        &self,
        redis: &RedisStore,
        started: &HashMap<String, ExperimentView>,
        now_ms: u64,
    ) -> bool {
        let tracked: Vec<Arc<Experiment>> = self
            .all
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|e| {
                let view = e.view.lock().unwrap_or_else(|p| p.into_inner());
                started.contains_key(&view.id)
                    && view
                        .ended_ms
                        .is_none_or(|end| now_ms < end.saturating_add(REPORT_AFTER_END_MS))
            })
            .cloned()
            .collect();
        if tracked.is_empty() {
            return true;
        }
        let mut pipe = redis::pipe();
        let mut deltas = Vec::new();
        for e in &tracked {
            let view = e.view.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let key = redis.key(&["experiment", &view.id]);
            let counts = e.counts();
            let pushed = e.shared.lock().unwrap_or_else(|p| p.into_inner()).pushed;
            let mut delta = [0u64; 5];
            for ((d, c), p) in delta.iter_mut().zip(counts).zip(pushed) {
                *d = c.saturating_sub(p);
            }
            for (field, d) in FIELDS.iter().zip(delta).filter(|(_, d)| *d > 0) {
                pipe.hincr(&key, *field, d).ignore();
            }
            let expires = (view.ends_ms / 1000).saturating_add(REPORT_TTL_S);
            pipe.expire_at(&key, i64::try_from(expires).unwrap_or(i64::MAX))
                .ignore();
            pipe.hgetall(&key);
            deltas.push(delta);
        }
        let Some(totals) = redis
            .call_background(|mut conn| async move {
                pipe.query_async::<Vec<HashMap<String, u64>>>(&mut conn).await
            })
            .await
        else {
            return false;
        };
        for ((e, delta), fields) in tracked.iter().zip(deltas).zip(totals) {
            let mut shared = e.shared.lock().unwrap_or_else(|p| p.into_inner());
            for (p, d) in shared.pushed.iter_mut().zip(delta) {
                *p = p.saturating_add(d);
            }
            shared.totals = Some(FIELDS.map(|f| fields.get(f).copied().unwrap_or(0)));
        }
        true
    }
}

/// The fleet's experiments and ends.
async fn read(redis: &RedisStore) -> Option<Fleet> {
    let keys = (redis.key(&["experiments"]), redis.key(&["experiment-ends"]));
    let (started, ends): (HashMap<String, String>, HashMap<String, String>) = redis
        .call_background(|mut conn| async move {
            redis::pipe()
                .hgetall(keys.0)
                .hgetall(keys.1)
                .query_async(&mut conn)
                .await
        })
        .await?;
    let started = started
        .into_iter()
        .filter_map(|(id, json)| Some((id, serde_json::from_str(&json).ok()?)))
        .collect();
    let ends = ends
        .into_iter()
        .filter_map(|(id, json)| Some((id, serde_json::from_str(&json).ok()?)))
        .collect();
    Some((started, ends))
}
