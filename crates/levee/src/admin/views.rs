//! The admin API's views of live state (upstreams, SLOs, canaries): built here from the
//! shared state, in the types of [`super::api`], so the state itself knows nothing of the API.

use std::sync::Arc;

use super::api::{self, TargetView, UpstreamView, Upstreams};
use crate::state::SharedState;
use crate::upstream::{Upstream, WorkerUpstream};

/// `GET /api/v1/upstreams`: every target's health, breaker state, requests in flight (summed
/// over workers) and peak-EWMA latency (the highest).
pub fn upstreams_view(state: &SharedState) -> Upstreams {
    let workers = state.worker_upstreams.lock().unwrap_or_else(|p| p.into_inner());
    let now = tokio::time::Instant::now();
    let gateway = state.gateway.load();
    let upstreams = gateway
        .upstreams
        .iter()
        .map(|upstream| {
            let now_ms = crate::upstream::health::millis_since(upstream.epoch, now);
            let targets = upstream
                .spec
                .targets
                .iter()
                .enumerate()
                .map(|(t, target)| {
                    let views: Vec<_> = worker_views(&workers, upstream)
                        .filter_map(|w| w.targets.get(t))
                        .collect();
                    let circuit = upstream.circuit(t);
                    let health = upstream.health.get(t);
                    TargetView {
                        addr: target.addr.to_string(),
                        weight: target.weight,
                        healthy: health.is_some_and(|h| h.usable(now_ms)),
                        health_check_passing: health.is_some_and(|h| h.healthy()),
                        ejected: health.is_some_and(|h| h.ejected(now_ms)),
                        circuit: circuit.name(),
                        inflight: views.iter().map(|v| v.inflight()).sum::<usize>(),
                        ewma_ms: views.iter().map(|v| v.ewma_ms()).fold(0.0, f64::max),
                    }
                })
                .collect();
            UpstreamView {
                name: upstream.spec.name.to_string(),
                inflight: upstream.inflight(),
                max_concurrent: upstream.spec.max_concurrent,
                targets,
            }
        })
        .collect();
    Upstreams { upstreams }
}

/// Every worker's view of `upstream` (one per worker that serves a config holding it).
fn worker_views<'a>(
    workers: &'a [Vec<Arc<WorkerUpstream>>],
    upstream: &'a Arc<Upstream>,
) -> impl Iterator<Item = &'a Arc<WorkerUpstream>> + 'a {
    workers
        .iter()
        .filter_map(move |w| w.iter().find(|view| Arc::ptr_eq(view.shared(), upstream)))
}

/// `GET /api/v1/canaries`.
pub fn canaries_view(state: &SharedState) -> api::Canaries {
    let gateway = state.gateway.load();
    let canaries = gateway
        .canaries
        .iter()
        .flatten()
        .map(|canary| {
            let rollback = canary.rolled_back();
            let rule = canary.spec.rollback.as_ref();
            let status = rule
                .and_then(|r| state.slo.get(&r.slo))
                .and_then(|slo| slo.status());
            let counts = status
                .as_ref()
                .zip(rule)
                .and_then(|(s, r)| s.burn_counts(r.window))
                .unwrap_or_default();
            api::CanaryView {
                route: canary.route.to_string(),
                upstream: canary.spec.upstream_name.to_string(),
                percent: (canary.spec.share * 100.0 * 1e6).round() / 1e6,
                state: if rollback.is_some() {
                    "rolled_back"
                } else if canary.is_held() {
                    "waiting"
                } else {
                    "active"
                },
                rolled_back_at: rollback.as_ref().map(|(at, _)| crate::slo::alerts::rfc3339(*at)),
                reason: rollback.map(|(_, reason)| reason),
                slo: rule.map(|r| r.slo.to_string()),
                burn_rate: status.as_ref().zip(rule).and_then(|(s, r)| s.burn_rate(r.window)),
                requests: counts.total,
                bad: counts.bad,
            }
        })
        .collect();
    api::Canaries { canaries }
}

/// An SLO's burn-down over its current window.
fn budget_history(slo: &crate::slo::SloState, minute: u64) -> Vec<api::BudgetPointView> {
    slo.burn_down(minute)
        .into_iter()
        .map(|p| api::BudgetPointView {
            at_ms: p.at_ms,
            remaining: p.remaining,
        })
        .collect()
}

/// The alerts an SLO fired since the process started.
fn alert_history(slo: &crate::slo::SloState) -> Vec<api::AlertRecordView> {
    use crate::slo::alerts::rfc3339;
    slo.alert_history()
        .into_iter()
        .map(|r| api::AlertRecordView {
            severity: r.severity.name(),
            started_at: rfc3339(r.started_at_ms),
            ended_at: r.ended_at_ms.map(rfc3339),
        })
        .collect()
}

/// Whether an SLO view carries its burn-down and alert history (the overview, read every
/// 5 s by each open dashboard, does not show them and skips the work).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum History {
    With,
    Without,
}

/// `GET /api/v1/slos`.
pub fn slos_view(state: &SharedState, history: History) -> api::Slos {
    use crate::config::spec::Sli;
    let slos = state
        .slo
        .slos()
        .all
        .iter()
        .map(|slo| {
            let spec = &slo.spec;
            let status = slo.status();
            let alerts = slo.alerts();
            let alerts_firing = [("page", &alerts.page), ("ticket", &alerts.ticket)]
                .into_iter()
                .filter_map(|(severity, a)| {
                    a.firing_since.map(|since| api::AlertView {
                        severity,
                        since: crate::slo::alerts::rfc3339(since),
                    })
                })
                .collect();
            let window = status.as_ref().map(|s| s.window).unwrap_or_default();
            let fleet = slo.evaluates_fleet();
            let counts = state
                .slo
                .is_shared()
                .then_some(if fleet { "fleet" } else { "replica" });
            api::SloView {
                name: spec.name.to_string(),
                route: spec.route.to_string(),
                consumer: spec.consumer.as_deref().map(str::to_owned),
                upstream: spec.upstream.as_deref().map(str::to_owned),
                sli: match spec.sli {
                    Sli::Availability => "availability".into(),
                    Sli::LatencyBelow(d) => format!("latency_below {}ms", d.as_millis()),
                },
                objective: spec.objective,
                window: crate::slo::window_text(spec.window),
                sli_now: status.as_ref().and_then(|s| s.sli).map(|r| r * 100.0),
                events: api::EventsView {
                    total: window.total,
                    good: window.good(),
                    bad: window.bad,
                    injected: window.injected,
                    injected_bad: window.injected_bad,
                },
                error_budget: api::BudgetView {
                    remaining: status.as_ref().map_or(1.0, |s| s.budget_remaining),
                    remaining_events: status.as_ref().map_or(0.0, |s| s.budget_remaining_events),
                },
                burn_rates: crate::slo::BURN_WINDOWS
                    .iter()
                    .enumerate()
                    .map(|(i, (name, _))| {
                        let counts = status
                            .as_ref()
                            .and_then(|s| s.burn_counts.get(i).copied())
                            .unwrap_or_default();
                        api::BurnRateView {
                            window: name,
                            burn_rate: status
                                .as_ref()
                                .and_then(|s| s.burn_rates.get(i).copied())
                                .unwrap_or(0.0),
                            total: counts.total,
                            bad: counts.bad,
                        }
                    })
                    .collect(),
                alerts_firing,
                runbook: crate::slo::alerts::RUNBOOK,
                budget_history: match history {
                    History::With => budget_history(slo, state.slo.clock.minute()),
                    History::Without => Vec::new(),
                },
                alert_history: match history {
                    History::With => alert_history(slo),
                    History::Without => Vec::new(),
                },
                evaluated_at: status
                    .as_ref()
                    .map(|s| crate::slo::alerts::rfc3339(s.evaluated_at_ms)),
                counts,
            }
        })
        .collect();
    api::Slos { slos }
}
