//! Chaos experiments: a fault on a route for a fixed time, with a guard on an SLO.
//!
//! An experiment states a steady-state hypothesis ("users still get their SLO while 5% of
//! requests fail here") and tests it on live traffic, so it must never outlive its welcome:
//! it ends at its duration, on `DELETE`, or by itself as soon as the guarded SLO burns its
//! budget faster than the guard allows (checked every second by the `levee-slo` thread). A
//! gateway that stops or restarts mid-experiment does not resume it: the fault is not in
//! the config file, and an unattended restart (a crash loop, a deploy) must come back to
//! normal traffic. The experiment is then reported as aborted, with what it saw so far.
//!
//! While it runs, the experiment's fault replaces the route's configured `fault`, every
//! request on the route is counted in its report, and injected faults count against the
//! SLOs like real failures (marked as injected).
//!
//! In cluster mode with Redis an experiment is the fleet's ([`fleet`]): started on one
//! replica it runs on all within a second, any replica shows it (with the fleet's report)
//! and can stop it, and the first end (a `DELETE`, a guard, its duration) ends it
//! everywhere. A replica that stops or restarts leaves the fleet's experiment running and
//! takes it up again when it is back.

pub mod fleet;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::duration::DurationStr;
use crate::config::file::{FaultAbortFile, FaultDelayFile};
use crate::config::spec::FaultSpec;
use crate::slo::alerts::rfc3339;
use crate::slo::{SloEngine, BURN_WINDOWS};

/// Experiments running at once, at most.
const MAX_RUNNING: usize = 16;
/// The longest experiment.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// `POST /api/v1/experiments`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExperimentRequest {
    pub name: String,
    /// The route whose requests get the fault.
    pub route: String,
    pub fault: ExperimentFault,
    /// How long it runs, at most 24h (`60s`, `10m`).
    pub duration: DurationStr,
    /// Ends the experiment early when the SLO burns too fast.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_if: Option<Guard>,
}

/// The fault, as in a route's `fault` (without `allow_header`).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExperimentFault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbortFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelayFile>,
}

/// The steady-state guard.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Guard {
    /// An SLO of the running config.
    pub slo: String,
    /// Abort when its burn rate goes above this.
    pub burn_rate_above: f64,
    /// The burn-rate window watched: `5m` (default), `30m`, `1h`, `2h`, `6h`, `1d` or `3d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
}

/// An experiment as the admin API shows it (and as it is saved).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct ExperimentView {
    pub id: String,
    pub name: String,
    pub route: String,
    pub fault: ExperimentFault,
    pub duration: DurationStr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_if: Option<Guard>,
    /// `running`, `completed` (ran its duration) or `aborted` (guard, DELETE, shutdown).
    pub state: String,
    /// Why it ended early.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub started_at: String,
    pub ends_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    pub started_ms: u64,
    pub ends_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_ms: Option<u64>,
    pub report: Report,
}

/// What the experiment did and what clients saw.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
pub struct Report {
    /// Requests the route served while the experiment ran.
    pub requests: u64,
    /// Of those, requests that got an injected fault (a request both delayed and aborted
    /// counts once, as aborted).
    #[serde(default)]
    pub affected: u64,
    /// Of those, answered with the injected status.
    pub aborted: u64,
    /// Of those, held for the injected delay.
    pub delayed: u64,
    /// Answers with a status of 500 or more that clients got (injected or not).
    pub errors: u64,
    /// `errors / requests` (0 without requests).
    pub error_rate: f64,
    /// The guarded SLO's error budget, when there is a guard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetReport>,
}

/// Error budget before and after.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct BudgetReport {
    pub slo: String,
    /// Share of the window's budget left when the experiment started.
    pub remaining_at_start: f64,
    /// ... when it ended (or now, while it runs).
    pub remaining_at_end: f64,
    /// `remaining_at_start - remaining_at_end`: the share of the budget the experiment cost.
    pub spent: f64,
    /// The guard's burn rate at the last check.
    pub burn_rate: f64,
}

/// A running (or ended) experiment.
#[derive(Debug)]
pub struct Experiment {
    pub route: Arc<str>,
    pub fault: FaultSpec,
    /// When it ends (unix ms), at the latest.
    ends_ms: u64,
    view: Mutex<ExperimentView>,
    requests: AtomicU64,
    affected: AtomicU64,
    aborted: AtomicU64,
    delayed: AtomicU64,
    errors: AtomicU64,
    /// Cluster mode: started here and not yet written to Redis.
    unpublished: AtomicBool,
    /// Ended here in a way the fleet must follow (DELETE, guard, duration), not yet told.
    end_to_share: AtomicBool,
    /// Cluster mode: counts already added to the fleet's report, and the fleet's totals.
    shared: Mutex<fleet::SharedReport>,
}

impl Experiment {
    /// An experiment as `view` describes it, its report's counts included.
    fn new(view: ExperimentView, fault: FaultSpec) -> Experiment {
        let report = &view.report;
        Experiment {
            route: view.route.as_str().into(),
            fault,
            ends_ms: view.ends_ms,
            requests: AtomicU64::new(report.requests),
            affected: AtomicU64::new(report.affected),
            aborted: AtomicU64::new(report.aborted),
            delayed: AtomicU64::new(report.delayed),
            errors: AtomicU64::new(report.errors),
            view: Mutex::new(view),
            unpublished: AtomicBool::new(false),
            end_to_share: AtomicBool::new(false),
            shared: Mutex::new(fleet::SharedReport::default()),
        }
    }

    /// Counts a request the route finished while the experiment ran.
    pub fn observe(&self, status: u16, fault: Option<&str>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if fault.is_some() {
            self.affected.fetch_add(1, Ordering::Relaxed);
        }
        match fault {
            Some("abort") => {
                self.aborted.fetch_add(1, Ordering::Relaxed);
            }
            Some("delay") => {
                self.delayed.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        if status >= 500 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// This replica's counts: requests, affected, aborted, delayed, errors.
    fn counts(&self) -> [u64; 5] {
        [
            self.requests.load(Ordering::Relaxed),
            self.affected.load(Ordering::Relaxed),
            self.aborted.load(Ordering::Relaxed),
            self.delayed.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        ]
    }

    /// The view with the report's counts as of now (the fleet's, in cluster mode, once
    /// read).
    pub fn view(&self) -> ExperimentView {
        let mut view = self.view.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let fleet = self.shared.lock().unwrap_or_else(|p| p.into_inner()).totals;
        let [requests, affected, aborted, delayed, errors] = fleet.unwrap_or_else(|| self.counts());
        let report = &mut view.report;
        report.requests = requests;
        report.affected = affected;
        report.aborted = aborted;
        report.delayed = delayed;
        report.errors = errors;
        report.error_rate = if report.requests == 0 {
            0.0
        } else {
            report.errors as f64 / report.requests as f64
        };
        view
    }

    fn running(&self) -> bool {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).state == "running"
    }
}

/// Why an experiment could not be started or found.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("no experiment with id `{0}`")]
    NotFound(String),
}

/// Every experiment of this process (the newest [`crate::slo::store::MAX_EXPERIMENTS`]).
#[derive(Debug, Default)]
pub struct Experiments {
    all: Mutex<Vec<Arc<Experiment>>>,
    /// The running ones, read by every request on the data plane.
    active: ArcSwap<Vec<Arc<Experiment>>>,
}

impl Experiments {
    /// The experiment running on `route`, if any.
    /// Past its end an experiment injects nothing even before the `levee-slo` thread marks
    /// it ended: the request path checks the time itself, so a stalled thread cannot leave
    /// a fault on.
    pub fn active_for(&self, route: &str, clock: &crate::slo::Clock) -> Option<Arc<Experiment>> {
        let active = self.active.load();
        if active.is_empty() {
            return None;
        }
        let experiment = active.iter().find(|e| &*e.route == route)?;
        (clock.now_ms() < experiment.ends_ms).then(|| experiment.clone())
    }

    fn publish(&self, all: &[Arc<Experiment>]) {
        let running: Vec<Arc<Experiment>> = all.iter().filter(|e| e.running()).cloned().collect();
        self.active.store(Arc::new(running));
    }

    /// Every experiment, newest first.
    pub fn views(&self) -> Vec<ExperimentView> {
        let all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        all.iter().rev().map(|e| e.view()).collect()
    }

    pub fn view(&self, id: &str) -> Option<ExperimentView> {
        let all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        all.iter()
            .find(|e| e.view.lock().unwrap_or_else(|p| p.into_inner()).id == id)
            .map(|e| e.view())
    }

    /// Starts an experiment on a route of `routes`; its guard must name an SLO of `engine`.
    pub fn start(
        &self,
        request: ExperimentRequest,
        routes: &[&str],
        engine: &SloEngine,
    ) -> Result<ExperimentView, ExperimentError> {
        let invalid = |m: String| Err(ExperimentError::Invalid(m));
        if request.name.is_empty() || request.name.chars().count() > 128 {
            return invalid("`name` must be 1 to 128 characters".into());
        }
        if !routes.contains(&request.route.as_str()) {
            return invalid(format!("no route named `{}`", request.route));
        }
        if request.duration.0.is_zero() || request.duration.0 > MAX_DURATION {
            return invalid("`duration` must be above zero and at most 24h".into());
        }
        let fault = fault_spec(&request.fault).map_err(ExperimentError::Invalid)?;
        let now_ms = engine.clock.now_ms();
        let budget = match &request.abort_if {
            Some(guard) => {
                let window = guard.window.as_deref().unwrap_or("5m");
                if !BURN_WINDOWS.iter().any(|(w, _)| *w == window) {
                    return invalid(format!(
                        "`abort_if.window` `{window}` is not one of 5m, 30m, 1h, 2h, 6h, 1d, 3d"
                    ));
                }
                if !(guard.burn_rate_above.is_finite() && guard.burn_rate_above > 0.0) {
                    return invalid("`abort_if.burn_rate_above` must be above zero".into());
                }
                let Some(slo) = engine.get(&guard.slo) else {
                    return invalid(format!("no SLO named `{}`", guard.slo));
                };
                let status = slo.evaluate(now_ms / 60_000, now_ms);
                Some(BudgetReport {
                    slo: guard.slo.clone(),
                    remaining_at_start: status.budget_remaining,
                    remaining_at_end: status.budget_remaining,
                    spent: 0.0,
                    burn_rate: status.burn_rate(window).unwrap_or(0.0),
                })
            }
            None => None,
        };
        let mut all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        let running: Vec<&Arc<Experiment>> = all.iter().filter(|e| e.running()).collect();
        if let Some(other) = running.iter().find(|e| *e.route == *request.route) {
            return Err(ExperimentError::Conflict(format!(
                "experiment `{}` already runs on route `{}`",
                other.view().id,
                request.route
            )));
        }
        if running.len() >= MAX_RUNNING {
            return Err(ExperimentError::Conflict(format!(
                "{MAX_RUNNING} experiments run already"
            )));
        }
        let duration_ms = u64::try_from(request.duration.0.as_millis()).unwrap_or(u64::MAX);
        let ends_ms = now_ms.saturating_add(duration_ms);
        let view = ExperimentView {
            id: format!("exp-{:012x}", fastrand::u64(..) >> 16),
            name: request.name,
            route: request.route.clone(),
            fault: request.fault,
            duration: request.duration,
            abort_if: request.abort_if,
            state: "running".into(),
            reason: None,
            started_at: rfc3339(now_ms),
            ends_at: rfc3339(ends_ms),
            ended_at: None,
            started_ms: now_ms,
            ends_ms,
            ended_ms: None,
            report: Report {
                budget,
                ..Report::default()
            },
        };
        let experiment = Arc::new(Experiment::new(view, fault));
        experiment.unpublished.store(true, Ordering::Relaxed);
        all.push(experiment.clone());
        // Beyond the limit the oldest ended experiments go; running ones always stay.
        while all.len() > crate::slo::store::MAX_EXPERIMENTS {
            let Some(oldest_ended) = all.iter().position(|e| !e.running()) else {
                break;
            };
            all.remove(oldest_ended);
        }
        self.publish(&all);
        drop(all);
        let view = experiment.view();
        tracing::info!(id = %view.id, route = %view.route, name = %view.name, "chaos experiment started");
        save(engine, &view);
        Ok(view)
    }

    /// Stops a running experiment (`DELETE`); an ended one is returned as it is.
    pub fn stop(&self, id: &str, engine: &SloEngine) -> Result<ExperimentView, ExperimentError> {
        let experiment = {
            let all = self.all.lock().unwrap_or_else(|p| p.into_inner());
            all.iter()
                .find(|e| e.view.lock().unwrap_or_else(|p| p.into_inner()).id == id)
                .cloned()
                .ok_or_else(|| ExperimentError::NotFound(id.to_owned()))?
        };
        if experiment.running() {
            self.end(
                &experiment,
                "aborted",
                Some("stopped through the admin API".into()),
                engine,
            );
            experiment.end_to_share.store(true, Ordering::Relaxed);
        }
        Ok(experiment.view())
    }

    fn end(&self, experiment: &Experiment, state: &str, reason: Option<String>, engine: &SloEngine) {
        self.end_at(experiment, state, reason, engine.clock.now_ms(), engine);
    }

    /// Ends a running experiment as of `now_ms` (another replica's end, in a fleet).
    fn end_at(
        &self,
        experiment: &Experiment,
        state: &str,
        reason: Option<String>,
        now_ms: u64,
        engine: &SloEngine,
    ) {
        {
            let mut view = experiment.view.lock().unwrap_or_else(|p| p.into_inner());
            // A DELETE and the thread's step may both find it running: the first one ends it.
            if view.state != "running" {
                return;
            }
            view.state = state.into();
            view.reason = reason;
            view.ended_ms = Some(now_ms);
            view.ended_at = Some(rfc3339(now_ms));
        }
        update_budget(experiment, engine);
        let all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        self.publish(&all);
        drop(all);
        let view = experiment.view();
        tracing::info!(id = %view.id, state = %view.state, reason = ?view.reason, requests = view.report.requests, errors = view.report.errors, "chaos experiment ended");
        save(engine, &view);
    }

    /// Ends experiments whose time is up or whose guard tripped; saves the others' reports.
    /// Called once a second, after the SLOs were evaluated.
    pub fn step(&self, engine: &SloEngine) {
        let running: Vec<Arc<Experiment>> = self.active.load().iter().cloned().collect();
        let now_ms = engine.clock.now_ms();
        for experiment in running {
            let (ends_ms, guard) = {
                let view = experiment.view.lock().unwrap_or_else(|p| p.into_inner());
                (view.ends_ms, view.abort_if.clone())
            };
            if let Some(guard) = guard.as_ref().filter(|g| engine.get(&g.slo).is_none()) {
                // A reload removed the guarded SLO: without its guard the experiment stops.
                let reason = format!("the guarded SLO {} is no longer in the config", guard.slo);
                self.end(&experiment, "aborted", Some(reason), engine);
                experiment.end_to_share.store(true, Ordering::Relaxed);
                continue;
            }
            let burn = update_budget(&experiment, engine);
            if let (Some(guard), Some(rate)) = (&guard, burn) {
                if rate > guard.burn_rate_above {
                    let window = guard.window.as_deref().unwrap_or("5m");
                    let reason = format!(
                        "guard tripped: SLO {} burn rate over {window} is {rate:.2}, above {}",
                        guard.slo, guard.burn_rate_above
                    );
                    self.end(&experiment, "aborted", Some(reason), engine);
                    experiment.end_to_share.store(true, Ordering::Relaxed);
                    continue;
                }
            }
            if now_ms >= ends_ms {
                self.end(&experiment, "completed", None, engine);
                experiment.end_to_share.store(true, Ordering::Relaxed);
            } else {
                save(engine, &experiment.view());
            }
        }
    }

    /// Ends every running experiment (the gateway stops).
    pub fn stop_all(&self, reason: &str, engine: &SloEngine) {
        let running: Vec<Arc<Experiment>> = self.active.load().iter().cloned().collect();
        for experiment in running {
            self.end(&experiment, "aborted", Some(reason.into()), engine);
        }
    }

    /// Reads saved experiments back; one that was running is ended as aborted (the
    /// gateway restarted under it) and its fault is not applied again.
    pub fn restore(&self, engine: &SloEngine) {
        let Some(store) = engine.store() else {
            return;
        };
        let saved = match store.lock().unwrap_or_else(|p| p.into_inner()).experiments() {
            Ok(saved) => saved,
            Err(error) => {
                tracing::warn!(%error, "cannot read saved chaos experiments");
                return;
            }
        };
        let now_ms = engine.clock.now_ms();
        let mut all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        for body in saved {
            let Ok(mut view) = serde_json::from_str::<ExperimentView>(&body) else {
                continue;
            };
            let interrupted = view.state == "running";
            if interrupted {
                view.state = "aborted".into();
                view.reason =
                    Some("the gateway restarted during the experiment; normal traffic resumed".into());
                view.ended_ms = Some(now_ms);
                view.ended_at = Some(rfc3339(now_ms));
                tracing::warn!(id = %view.id, "a chaos experiment was running when the gateway stopped; it is ended, not resumed");
                save(engine, &view);
            }
            let Ok(fault) = fault_spec(&view.fault) else {
                continue;
            };
            all.push(Arc::new(Experiment::new(view, fault)));
        }
        self.publish(&all);
    }
}

/// Refreshes the budget part of the report; returns the guard window's burn rate.
fn update_budget(experiment: &Experiment, engine: &SloEngine) -> Option<f64> {
    let mut view = experiment.view.lock().unwrap_or_else(|p| p.into_inner());
    let guard = view.abort_if.clone()?;
    let slo = engine.get(&guard.slo)?;
    let status = slo.status()?;
    let window = guard.window.as_deref().unwrap_or("5m");
    let rate = status.burn_rate(window).unwrap_or(0.0);
    if let Some(budget) = view.report.budget.as_mut() {
        budget.remaining_at_end = status.budget_remaining;
        budget.spent = budget.remaining_at_start - status.budget_remaining;
        budget.burn_rate = rate;
    }
    Some(rate)
}

fn save(engine: &SloEngine, view: &ExperimentView) {
    let Some(store) = engine.store() else {
        return;
    };
    let Ok(body) = serde_json::to_string(view) else {
        return;
    };
    if let Err(error) =
        store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .save_experiment(&view.id, view.started_ms, &body)
    {
        tracing::warn!(id = %view.id, %error, "cannot save chaos experiment");
    }
}

/// The checked fault of a request.
fn fault_spec(fault: &ExperimentFault) -> Result<FaultSpec, String> {
    if fault.abort.is_none() && fault.delay.is_none() {
        return Err("`fault` needs `abort` or `delay`".into());
    }
    crate::chaos::check_fault(fault.abort.as_ref(), fault.delay.as_ref(), false).map_err(|problems| {
        let named: Vec<String> = problems
            .iter()
            .map(|(key, message)| format!("`fault.{key}`: {message}"))
            .collect();
        named.join("; ")
    })
}
