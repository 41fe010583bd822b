//! The `levee-slo` thread: what the gateway watches about itself once a second.
//!
//! It follows config reloads, evaluates every SLO, sends burn-rate alerts, rolls back canaries
//! whose SLO burns too fast, guards running chaos experiments, and saves counts. It sits above
//! the SLO engine, chaos experiments and the gateway's state it reads, so that none of them
//! needs to know the others: the SLO engine only counts and judges.
//!
//! In cluster mode with Redis ([`crate::slo::fleet`], [`crate::slo::leader`]) each second
//! also adds this replica's counts to the fleet's and reads the fleet's back, obeys the
//! fleet's canary decisions and shares experiments; only the replica holding the alert
//! lease steps the alerts, decides canary rollbacks and sends notifications.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::chaos::experiments::Experiments;
use crate::cluster::redis::RedisStore;
use crate::cluster::Cluster;
use crate::gateway::Gateway;
use crate::slo::canary::Canary;
use crate::slo::fleet::FleetCounts;
use crate::slo::leader::{self, SharedAlerts};
use crate::slo::{canary, notify, SloEngine};

/// The `levee-slo` thread's loop: follows config reloads, evaluates every second, sends
/// alerts every `alerting.evaluation_interval`, saves counts, and steps experiments. Ends
/// (after a last save) when `stop` turns true. `cluster` (with Redis) makes it one replica
/// of a fleet.
pub async fn run(
    engine: Arc<SloEngine>,
    experiments: Arc<Experiments>,
    mut gateway_rx: watch::Receiver<Arc<Gateway>>,
    mut stop: watch::Receiver<bool>,
    external_url: String,
    cluster: Option<Arc<Cluster>>,
) {
    let interval = gateway_rx.borrow().config.alerting.evaluation_interval;
    let mut fleet = cluster.and_then(|c| Fleet::start(c, interval, &stop));
    let mut watch = Watch {
        engine,
        experiments,
        external_url,
        outbox: None,
        next_alerts: tokio::time::Instant::now(),
        next_resend: tokio::time::Instant::now() + notify::RESEND_EVERY,
        rolled_back: Vec::new(),
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let gateway = gateway_rx.borrow_and_update().clone();
        let canaries: Vec<Arc<Canary>> = gateway.canaries.iter().flatten().cloned().collect();
        watch.follow(&gateway, &canaries, fleet.is_none());
        let interval = gateway.config.alerting.evaluation_interval;
        if let Some(f) = &fleet {
            f.interval
                .send_if_modified(|i| std::mem::replace(i, interval) != interval);
        }
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                changed = gateway_rx.changed() => match changed {
                    Ok(()) => break,
                    Err(_) => return watch.finish(fleet).await,
                },
                _ = stop.wait_for(|s| *s) => return watch.finish(fleet).await,
                leads = leader_changed(&mut fleet) => {
                    if leads {
                        // A new leader evaluates at once: the old one may be gone.
                        watch.next_alerts = tokio::time::Instant::now();
                    }
                }
            }
            match &mut fleet {
                None => watch.tick(&canaries, interval),
                Some(f) => watch.fleet_tick(f, &canaries, interval).await,
            }
        }
    }
}

/// Cluster mode's part of the loop.
struct Fleet {
    cluster: Arc<Cluster>,
    redis: Arc<RedisStore>,
    counts: FleetCounts,
    alerts: SharedAlerts,
    /// Whether this replica holds the alert lease (from the lease task).
    leader: watch::Receiver<bool>,
    /// The evaluation interval, for the lease's length.
    interval: watch::Sender<Duration>,
    lease: tokio::task::JoinHandle<()>,
}

impl Fleet {
    /// Starts the lease task; `None` without Redis (each replica then alerts on its own).
    fn start(cluster: Arc<Cluster>, interval: Duration, stop: &watch::Receiver<bool>) -> Option<Fleet> {
        let redis = cluster.redis.clone()?;
        let (leader_tx, leader) = watch::channel(false);
        let (interval, interval_rx) = watch::channel(interval);
        let lease = tokio::spawn(leader::hold_lease(
            cluster.clone(),
            redis.clone(),
            interval_rx,
            leader_tx,
            stop.clone(),
        ));
        Some(Fleet {
            counts: FleetCounts::new(cluster.clone(), redis.clone()),
            alerts: SharedAlerts::new(&cluster, redis.clone()),
            cluster,
            redis,
            leader,
            interval,
            lease,
        })
    }
}

/// Resolves when this replica's alert leadership changes (to whether it leads now); never
/// without a fleet.
async fn leader_changed(fleet: &mut Option<Fleet>) -> bool {
    match fleet {
        Some(f) => match f.leader.changed().await {
            Ok(()) => *f.leader.borrow_and_update(),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// What the loop carries from one second to the next.
struct Watch {
    engine: Arc<SloEngine>,
    experiments: Arc<Experiments>,
    external_url: String,
    outbox: Option<notify::Outbox>,
    next_alerts: tokio::time::Instant,
    next_resend: tokio::time::Instant,
    /// Canaries rolled back whose alert fires (it resolves when their config goes); single
    /// node only: the fleet keeps this in Redis.
    rolled_back: Vec<Arc<Canary>>,
}

impl Watch {
    /// Takes a new config: its SLOs, canaries and receivers. `notify`: send what the change
    /// resolves (a single node; in a fleet the leader resolves what no config raises).
    fn follow(&mut self, gateway: &Gateway, canaries: &[Arc<Canary>], notify: bool) {
        let engine = &self.engine;
        let mut resolved = engine.apply(&gateway.config.slos);
        if notify {
            let now_ms = engine.clock.now_ms();
            self.rolled_back.retain(|old| {
                let kept = canaries.iter().any(|c| Arc::ptr_eq(c, old));
                if !kept {
                    resolved.extend(old.notification(Some(now_ms)));
                }
                kept
            });
            track_rollbacks(canaries, &mut self.rolled_back);
            if let Some(outbox) = &self.outbox {
                outbox.notify(&resolved, engine.clock.now_ms());
            }
        }
        if self
            .outbox
            .as_ref()
            .is_none_or(|o| *o.spec() != gateway.config.alerting)
        {
            // The old receivers finish what they hold in the background.
            if let Some(old) = self.outbox.take() {
                tokio::spawn(old.drain(DRAIN_LIMIT));
            }
            self.outbox = Some(notify::Outbox::start(
                &gateway.config.alerting,
                self.external_url.clone(),
                engine.clone(),
            ));
        }
    }

    /// One second of a single node.
    fn tick(&mut self, canaries: &[Arc<Canary>], interval: Duration) {
        let engine = &self.engine;
        engine.evaluate();
        self.experiments.step(engine);
        let rollbacks = canary::step(engine, canaries);
        if !rollbacks.is_empty() {
            track_rollbacks(canaries, &mut self.rolled_back);
            if let Some(outbox) = &self.outbox {
                outbox.notify(&rollbacks, engine.clock.now_ms());
            }
        }
        let now = tokio::time::Instant::now();
        if now >= self.next_alerts {
            self.next_alerts = now + interval;
            let transitions = engine.step_alerts();
            log_transitions(&transitions);
            if let Some(outbox) = &self.outbox {
                outbox.notify(&transitions, engine.clock.now_ms());
            }
        }
        if now >= self.next_resend {
            self.next_resend = now + notify::RESEND_EVERY;
            if let Some(outbox) = &self.outbox {
                let mut firing = engine.firing();
                firing.extend(self.rolled_back.iter().filter_map(|c| c.notification(None)));
                outbox.resend(&firing, engine.clock.now_ms());
            }
        }
        engine.save();
    }

    /// One second of a replica in a fleet.
    async fn fleet_tick(&mut self, f: &mut Fleet, canaries: &[Arc<Canary>], interval: Duration) {
        let engine = &self.engine;
        let shared = f.counts.sync(engine).await;
        engine.evaluate();
        self.experiments.step(engine);
        self.experiments.sync_fleet(&f.redis, engine).await;
        let leads = *f.leader.borrow();
        if leads || !shared {
            // The leader decides for the fleet on the fleet's counts; a replica cut off from
            // Redis decides alone on its own. The leader's commit below notifies.
            let _ = canary::step(engine, canaries);
        }
        canary::sync_fleet(engine, &f.redis, &f.cluster.node_id, canaries).await;
        if f.alerts.needed(engine, canaries) && f.alerts.read().await {
            f.alerts.mirror(engine);
            // A leader whose counts did not sync this second judges nothing on its own.
            if leads && shared {
                self.lead(f, canaries, interval).await;
            }
        }
        self.engine.save();
    }

    /// The leader's part: steps the alerts, and commits and sends what changed for the
    /// fleet (burn-rate alerts, canary rollbacks, alerts no config raises any more).
    async fn lead(&mut self, f: &mut Fleet, canaries: &[Arc<Canary>], interval: Duration) {
        let engine = &self.engine;
        let now = tokio::time::Instant::now();
        let now_ms = engine.clock.now_ms();
        let mut changes = Vec::new();
        if now >= self.next_alerts {
            self.next_alerts = now + interval;
            changes.extend(engine.step_alerts());
        }
        for canary in canaries {
            if let Some(n) = canary.notification(None).filter(|n| !f.alerts.fires(&n.labels)) {
                changes.push(n);
            }
        }
        changes.extend(f.alerts.orphans(engine, canaries, now_ms));
        let sent = f.alerts.commit(engine, changes).await;
        log_transitions(&sent);
        if let Some(outbox) = &self.outbox {
            outbox.notify(&sent, now_ms);
            if now >= self.next_resend {
                self.next_resend = now + notify::RESEND_EVERY;
                let mut firing = engine.firing();
                firing.extend(canaries.iter().filter_map(|c| c.notification(None)));
                outbox.resend(&firing, now_ms);
            }
        }
    }

    async fn finish(self, fleet: Option<Fleet>) {
        let engine = &self.engine;
        self.experiments
            .stop_all("the gateway stopped during the experiment", engine);
        engine.save();
        if let Some(mut f) = fleet {
            f.lease.abort();
            // The last second's counts, and the lease for another replica at once.
            f.counts.sync(engine).await;
            leader::release(&f.cluster, &f.redis).await;
        }
        if let Some(outbox) = self.outbox {
            outbox.drain(DRAIN_LIMIT).await;
        }
    }
}

/// Logs the burn-rate alerts among `transitions` (a rollback logs its own line).
fn log_transitions(transitions: &[crate::slo::alerts::Transition]) {
    let burn = |t: &&crate::slo::alerts::Transition| {
        t.labels
            .iter()
            .any(|(k, v)| *k == "alertname" && v == crate::slo::alerts::ALERT_NAME)
    };
    for t in transitions.iter().filter(burn) {
        tracing::warn!(slo = %t.slo, severity = t.severity.name(), firing = t.firing, "SLO burn-rate alert");
    }
}

/// Adds the canaries of `canaries` that are rolled back to `rolled_back`.
fn track_rollbacks(canaries: &[Arc<Canary>], rolled_back: &mut Vec<Arc<Canary>>) {
    for canary in canaries {
        if canary.rolled_back().is_some() && !rolled_back.iter().any(|c| Arc::ptr_eq(c, canary)) {
            rolled_back.push(canary.clone());
        }
    }
}

/// How long notifications still queued may take when the gateway stops or the receivers
/// change.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
