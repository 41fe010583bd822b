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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::spec::CanarySpec;
use crate::slo::alerts::{Severity, Transition};
use crate::slo::SloEngine;

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
}

impl Canary {
    pub fn new(route: Arc<str>, spec: CanarySpec) -> Canary {
        Canary {
            route,
            spec,
            rolled_back: AtomicBool::new(false),
            rollback: Mutex::new(None),
        }
    }

    /// Whether this request goes to the canary (drawn by its share, never after a rollback).
    pub fn takes_request(&self) -> bool {
        !self.rolled_back.load(Ordering::Relaxed) && fastrand::f64() < self.spec.share
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
        if let Some(store) = engine.store() {
            let saved = store.lock().unwrap_or_else(|p| p.into_inner()).save_rollback(
                &canary.route,
                &canary.spec.definition,
                now_ms,
                &reason,
            );
            if let Err(error) = saved {
                tracing::warn!(route = %canary.route, %error, "cannot save the canary rollback");
            }
        }
        out.extend(canary.notification(None));
    }
    out
}

/// Marks canaries rolled back in an earlier run (same route, same `canary` block) as rolled
/// back again, before any request is served.
pub fn restore(engine: &SloEngine, canaries: &[Arc<Canary>]) {
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
