//! `GET /api/v1/overview`: what the dashboard's overview page shows, computed here so the
//! browser never gets raw rows: totals and per-route counts since the start, requests/s,
//! error rate and latency percentiles over the last fifteen minutes (from the snapshots of
//! [`crate::observability::series`], which [`sample`] takes), SLOs, alerts, canaries and
//! cluster nodes.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Response, StatusCode};
use schemars::JsonSchema;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use super::routes::Call;
use super::{json_value, views};
use crate::body::ResponseBody;
use crate::observability::metrics::Metrics;
use crate::observability::series::{Counts, Series, STEP};
use crate::state::SharedState;

/// `GET /api/v1/overview`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Overview {
    /// When this answer was made (Unix milliseconds).
    pub now_ms: u64,
    /// Seconds since the gateway started.
    pub uptime_s: f64,
    /// The running config's version.
    pub config_version: u64,
    /// Every request since the gateway started.
    pub totals: Totals,
    /// The running config's routes in match order, then any other route with requests (one a
    /// reload removed; `""`: requests no route matched).
    pub routes: Vec<RouteOverview>,
    /// The last fifteen minutes of all routes together.
    pub series: SeriesView,
    pub slos: Vec<SloSummary>,
    /// Burn-rate alerts firing now, over every SLO.
    pub alerts_firing: usize,
    pub canaries: Vec<CanarySummary>,
    /// Live nodes of the fleet in cluster mode; `null` otherwise.
    pub cluster_nodes: Option<usize>,
}

/// Requests since the gateway started; errors are answers with a status of 500 or more.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Totals {
    pub requests: u64,
    pub errors: u64,
    /// `errors / requests` (0 without requests).
    pub error_rate: f64,
}

/// One route.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RouteOverview {
    pub route: String,
    /// Since the gateway started.
    pub requests: u64,
    /// Since the gateway started: answers with a status of 500 or more.
    pub errors: u64,
    /// `errors / requests` since the gateway started (0 without requests).
    pub error_rate: f64,
    /// Median latency in milliseconds, interpolated within its histogram bucket: over the
    /// last fifteen minutes once the series has a point, before that since the start;
    /// `null` without requests in that time.
    pub p50_ms: Option<f64>,
    /// The 99th percentile, like `p50_ms`.
    pub p99_ms: Option<f64>,
    /// Requests per second over the last fifteen minutes (0 before the series has a point).
    pub rps: f64,
}

/// All routes together, one point per step.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SeriesView {
    /// Seconds between points.
    pub step_s: u64,
    /// Oldest first, at most 180 (fifteen minutes).
    pub points: Vec<PointView>,
}

/// One step of the series.
#[derive(Debug, Serialize, JsonSchema)]
pub struct PointView {
    /// When the step ended (Unix milliseconds).
    pub t_ms: u64,
    pub rps: f64,
    pub error_rate: f64,
    /// `null` when the step had no requests.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// One SLO, from the same view as `GET /api/v1/slos`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SloSummary {
    pub name: String,
    /// Share of the error budget left: 1 untouched, 0 spent, below 0 overspent.
    pub budget_remaining: f64,
    /// Severities of the alerts firing now (`page`, `ticket`).
    pub alerts_firing: Vec<&'static str>,
}

/// One canary, from the same view as `GET /api/v1/canaries`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CanarySummary {
    pub route: String,
    /// `active`, `rolled_back` or `waiting`.
    pub state: &'static str,
}

/// `GET /api/v1/overview`.
pub(super) fn overview(call: &Call) -> Response<ResponseBody> {
    json_value(StatusCode::OK, &build(&call.state))
}

/// The overview of `state` now.
pub fn build(state: &SharedState) -> Overview {
    let now = Instant::now();
    let live = state.metrics.route_counts();
    let mut totals = Counts::default();
    for counts in live.values() {
        totals.add(counts);
    }
    let gateway = state.gateway.load();
    let slos: Vec<SloSummary> = views::slos_view(state, views::History::Without)
        .slos
        .into_iter()
        .map(|slo| SloSummary {
            name: slo.name,
            budget_remaining: slo.error_budget.remaining,
            alerts_firing: slo.alerts_firing.iter().map(|a| a.severity).collect(),
        })
        .collect();
    let canaries = views::canaries_view(state)
        .canaries
        .into_iter()
        .map(|c| CanarySummary {
            route: c.route,
            state: c.state,
        })
        .collect();
    Overview {
        now_ms: unix_ms(),
        uptime_s: state.series.uptime().as_secs_f64(),
        config_version: gateway.version,
        totals: Totals {
            requests: totals.requests,
            errors: totals.errors,
            error_rate: totals.error_rate(),
        },
        routes: routes(
            &state.series,
            &live,
            gateway.config.routes.iter().map(|r| &r.name),
            now,
        ),
        series: SeriesView {
            step_s: STEP.as_secs(),
            points: state
                .series
                .points()
                .into_iter()
                .map(|p| PointView {
                    t_ms: p.t_ms,
                    rps: p.rates.rps,
                    error_rate: p.rates.error_rate,
                    p50_ms: p.rates.p50_ms,
                    p99_ms: p.rates.p99_ms,
                })
                .collect(),
        },
        alerts_firing: slos.iter().map(|s| s.alerts_firing.len()).sum(),
        slos,
        canaries,
        cluster_nodes: state
            .cluster
            .as_ref()
            .map(|c| c.view().nodes.iter().filter(|n| n.alive).count()),
    }
}

/// Every route: the `configured` ones in order, then the others `live` has counts of. Counts
/// are since the start; rates over the window that starts at the series' window start.
fn routes<'a>(
    series: &Series,
    live: &std::collections::BTreeMap<Arc<str>, Counts>,
    configured: impl Iterator<Item = &'a Arc<str>>,
    now: Instant,
) -> Vec<RouteOverview> {
    let mut names: Vec<Arc<str>> = configured.cloned().collect();
    for name in live.keys() {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    let window = series.window_start(now);
    names
        .into_iter()
        .map(|name| {
            let since_start = live.get(&name).copied().unwrap_or_default();
            let rates = match &window {
                Some((from, before)) => {
                    let seconds = now.saturating_duration_since(*from).as_secs_f64();
                    let before = before.get(&name).copied().unwrap_or_default();
                    since_start.since(&before).rates(seconds)
                }
                // No point yet: the gateway started less than a step ago; rates since the
                // start, but requests/s 0 (not measured yet).
                None => since_start.rates(0.0),
            };
            RouteOverview {
                route: name.to_string(),
                requests: since_start.requests,
                errors: since_start.errors,
                error_rate: since_start.error_rate(),
                p50_ms: rates.p50_ms,
                p99_ms: rates.p99_ms,
                rps: rates.rps,
            }
        })
        .collect()
}

/// Unix time in milliseconds.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Snapshots `state`'s counters into its series every [`STEP`] until `shutdown` turns true.
///
/// It runs on the admin thread's event loop rather than on the `levee-slo` thread: the admin
/// thread is the series' only reader and otherwise idle, a snapshot costs what a scrape of
/// `/metrics` does there already (each worker's shard locked briefly and summed), and the SLO
/// thread's one-second tick, which waits on Redis in cluster mode, stays as it is.
pub(super) async fn sample(state: Arc<SharedState>, shutdown: watch::Receiver<bool>) {
    sample_every(&state.series, &state.metrics, STEP, shutdown).await;
}

/// Snapshots `metrics` into `series` every `step` (the first at once) until `shutdown` turns
/// true or its sender is dropped.
async fn sample_every(
    series: &Series,
    metrics: &Metrics,
    step: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(step);
    // A late tick is taken late, not twice: each point divides by the time that passed.
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = tick.tick() => series.record(Instant::now(), unix_ms(), metrics.route_counts()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observability::series::CAPACITY;

    #[tokio::test(start_paused = true)]
    async fn the_sampler_keeps_fifteen_minutes_and_a_point_per_step() {
        let metrics = Arc::new(Metrics::default());
        let series = Arc::new(Series::new());
        let shard = metrics.shard();
        let (stop, stopped) = watch::channel(false);
        let task = {
            let (series, metrics) = (series.clone(), metrics.clone());
            tokio::spawn(async move { sample_every(&series, &metrics, STEP, stopped).await })
        };
        let route: Arc<str> = "users".into();
        // Requests half-way between snapshots (taken at 0, 5 s, 10 s, ...), so each step
        // holds one batch whatever order the tasks wake in.
        tokio::time::sleep(STEP / 2).await;
        // An hour of 10 requests a step, one of them a 503.
        for _ in 0..720 {
            {
                let mut shard = shard.lock();
                for i in 0..10 {
                    let status = if i == 0 { 503 } else { 200 };
                    shard.record_request(&route, "GET", status, Duration::from_millis(3), None);
                }
            }
            tokio::time::sleep(STEP).await;
            assert!(series.len() <= CAPACITY);
        }
        assert_eq!(series.len(), CAPACITY);
        let points = series.points();
        assert_eq!(points.len(), CAPACITY - 1);
        for point in &points {
            assert!((point.rates.rps - 2.0).abs() < 1e-9, "{point:?}");
            assert!((point.rates.error_rate - 0.1).abs() < 1e-9, "{point:?}");
            let p50 = point.rates.p50_ms.unwrap_or_default();
            assert!(p50 > 2.5 && p50 <= 5.0, "{point:?}");
        }
        // The route's window: 14 to 15 minutes of it, 2 requests/s.
        let live = metrics.route_counts();
        let answer = routes(&series, &live, [&route].into_iter(), Instant::now());
        let users = answer.first().map(|r| (r.requests, r.errors, r.rps));
        assert_eq!(users.map(|u| (u.0, u.1)), Some((7_200, 720)));
        let rps = users.map_or(0.0, |u| u.2);
        assert!((rps - 2.0).abs() < 0.01, "{rps}");
        let _ = stop.send(true);
        let _ = task.await;
    }

    #[tokio::test(start_paused = true)]
    async fn before_the_first_point_percentiles_are_since_the_start() {
        let metrics = Metrics::default();
        let series = Series::new();
        let route: Arc<str> = "users".into();
        metrics
            .shard()
            .lock()
            .record_request(&route, "GET", 200, Duration::from_millis(3), None);
        series.record(Instant::now(), 0, metrics.route_counts());
        let live = metrics.route_counts();
        let other: Arc<str> = "idle".into();
        let answer = routes(&series, &live, [&other].into_iter(), Instant::now());
        let names: Vec<&str> = answer.iter().map(|r| r.route.as_str()).collect();
        assert_eq!(names, ["idle", "users"], "configured first, then the others");
        let users = answer.iter().find(|r| r.route == "users");
        assert!(users.is_some_and(|u| u.p50_ms.is_some() && u.rps == 0.0));
        let idle = answer.iter().find(|r| r.route == "idle");
        assert!(idle.is_some_and(|u| u.p50_ms.is_none() && u.requests == 0));
    }
}
