//! The SLO metric families in Prometheus' text exposition: events counted, error budget
//! left, burn rates per window, alerts firing and notifications sent.

use std::sync::atomic::Ordering;

use super::{alerts, SloEngine, Status, BURN_WINDOWS};
use crate::observability::metrics::{escape, family};

impl SloEngine {
    /// Appends the SLO metric families to a Prometheus exposition.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let set = self.set.load();
        if !set.all.is_empty() {
            family(
                out,
                "levee_slo_requests_total",
                "counter",
                "Events counted by an SLO since the process started, good or bad.",
            );
            for slo in &set.all {
                let name = escape(&slo.spec.name);
                let total = slo.events_total.load(Ordering::Relaxed);
                let bad = slo.events_bad.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "levee_slo_requests_total{{slo=\"{name}\",result=\"good\"}} {}",
                    total.saturating_sub(bad)
                );
                let _ = writeln!(
                    out,
                    "levee_slo_requests_total{{slo=\"{name}\",result=\"bad\"}} {bad}"
                );
            }
            family(
                out,
                "levee_slo_objective_ratio",
                "gauge",
                "The SLO's objective as a ratio (0.999 for 99.9%).",
            );
            for slo in &set.all {
                let _ = writeln!(
                    out,
                    "levee_slo_objective_ratio{{slo=\"{}\"}} {}",
                    escape(&slo.spec.name),
                    slo.spec.objective / 100.0
                );
            }
            let statuses: Vec<(String, Status, alerts::AlertPair)> = set
                .all
                .iter()
                .filter_map(|s| s.status().map(|st| (escape(&s.spec.name), st, s.alerts())))
                .collect();
            family(
                out,
                "levee_slo_sli_ratio",
                "gauge",
                "Good events over all events in the SLO's window (absent without events).",
            );
            for (name, status, _) in &statuses {
                if let Some(sli) = status.sli {
                    let _ = writeln!(out, "levee_slo_sli_ratio{{slo=\"{name}\"}} {sli}");
                }
            }
            family(
                out,
                "levee_slo_error_budget_remaining",
                "gauge",
                "Share of the SLO window's error budget left: 1 untouched, 0 spent, below 0 overspent.",
            );
            for (name, status, _) in &statuses {
                let _ = writeln!(
                    out,
                    "levee_slo_error_budget_remaining{{slo=\"{name}\"}} {}",
                    status.budget_remaining
                );
            }
            family(out, "levee_slo_burn_rate", "gauge", "Error budget burn rate over a trailing window (1 spends the budget exactly over the SLO window).");
            for (name, status, _) in &statuses {
                for ((window, _), rate) in BURN_WINDOWS.iter().zip(status.burn_rates) {
                    let _ = writeln!(
                        out,
                        "levee_slo_burn_rate{{slo=\"{name}\",window=\"{window}\"}} {rate}"
                    );
                }
            }
            family(
                out,
                "levee_slo_alert_firing",
                "gauge",
                "1 while the SLO's burn-rate alert of that severity fires.",
            );
            for (name, _, pair) in &statuses {
                for (severity, firing) in [
                    ("page", pair.page.firing_since.is_some()),
                    ("ticket", pair.ticket.firing_since.is_some()),
                ] {
                    let _ = writeln!(
                        out,
                        "levee_slo_alert_firing{{slo=\"{name}\",severity=\"{severity}\"}} {}",
                        u8::from(firing)
                    );
                }
            }
        }
        self.notifications.render(out);
    }
}
