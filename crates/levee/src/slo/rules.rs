//! Prometheus recording and alerting rules equivalent to the gateway's own evaluation
//! (`levee slo rules`), written from Levee's metric names.
//!
//! The recording rules turn `levee_slo_requests_total` (the very events the gateway counts,
//! whatever the SLI) into error ratios per trailing window; the alerting rules compare them
//! with the objective exactly as [`super::alerts::RULES`] does. Teams that alert from
//! Prometheus get the same alerts, with the same names and labels, as the built-in ones.

use serde_json::{json, Value};

use super::alerts::{Severity, ALERT_NAME, RULES};
use super::BURN_WINDOWS;
use crate::config::spec::SloSpec;

/// The recorded series of the error ratio over `window` (`5m` .. `3d`).
pub fn ratio_series(window: &str) -> String {
    format!("levee_slo:error_ratio:rate{window}")
}

/// The rules file (a Prometheus `groups:` document) for `slos`, as YAML.
pub fn prometheus_rules(slos: &[SloSpec]) -> Result<String, String> {
    serde_yaml_ng::to_string(&rules_value(slos)).map_err(|e| e.to_string())
}

fn rules_value(slos: &[SloSpec]) -> Value {
    let recording: Vec<Value> = BURN_WINDOWS
        .iter()
        .map(|(window, _)| {
            json!({
                "record": ratio_series(window),
                "expr": format!(
                    "sum by (slo) (rate(levee_slo_requests_total{{result=\"bad\"}}[{window}]))\n/\nsum by (slo) (rate(levee_slo_requests_total[{window}]))"
                ),
            })
        })
        .collect();
    let mut alerting = Vec::new();
    // A canary's SLO has no alerts (its rollback is the answer).
    for slo in slos.iter().filter(|s| s.alerts) {
        for severity in [Severity::Page, Severity::Ticket] {
            let budget = slo.error_budget();
            let clauses: Vec<String> = RULES
                .iter()
                .filter(|r| r.severity == severity)
                .map(|r| {
                    // Rounded so that 14.4 x 0.001 reads 0.0144, not 0.014400000000000013.
                    let threshold = (r.factor * budget * 1e12).round() / 1e12;
                    format!(
                        "({long}{{slo=\"{name}\"}} > {threshold} and {short}{{slo=\"{name}\"}} > {threshold})",
                        long = ratio_series(r.long),
                        short = ratio_series(r.short),
                        name = slo.name,
                    )
                })
                .collect();
            let mut labels = serde_json::Map::new();
            labels.insert("severity".into(), severity.name().into());
            labels.insert("slo".into(), slo.name.to_string().into());
            labels.insert("route".into(), slo.route.to_string().into());
            if let Some(consumer) = &slo.consumer {
                labels.insert("consumer".into(), consumer.to_string().into());
            }
            let factors: Vec<String> = RULES
                .iter()
                .filter(|r| r.severity == severity)
                .map(|r| format!("{}x over {} and {}", r.factor, r.long, r.short))
                .collect();
            alerting.push(json!({
                "alert": ALERT_NAME,
                "expr": clauses.join("\nor\n"),
                "labels": labels,
                "annotations": {
                    "summary": format!("SLO {} is burning its error budget too fast ({})", slo.name, factors.join(", or ")),
                    "description": format!(
                        "Objective {}% over {}. The budget left is in levee_slo_error_budget_remaining{{slo=\"{}\"}}.",
                        slo.objective,
                        super::window_text(slo.window),
                        slo.name
                    ),
                    "runbook": "docs/runbooks/slo-burn-rate.md",
                },
            }));
        }
    }
    json!({
        "groups": [
            { "name": "levee-slo-error-ratios", "rules": recording },
            { "name": "levee-slo-burn-rate-alerts", "rules": alerting },
        ],
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::config::spec::Sli;
    use std::time::Duration;

    #[test]
    fn thresholds_are_factor_times_budget() {
        let slo = SloSpec {
            name: "api".into(),
            route: "users".into(),
            consumer: None,
            upstream: None,
            release: None,
            alerts: true,
            objective: 99.9,
            window: Duration::from_secs(30 * 86_400),
            sli: Sli::Availability,
            bad_grpc_statuses: None,
        };
        let value = rules_value(&[slo]);
        let alerts = value["groups"][1]["rules"].as_array().unwrap();
        assert_eq!(alerts.len(), 2);
        let page = alerts[0]["expr"].as_str().unwrap();
        assert!(
            page.contains("levee_slo:error_ratio:rate1h{slo=\"api\"} > 0.0144"),
            "{page}"
        );
        assert!(
            page.contains("levee_slo:error_ratio:rate30m{slo=\"api\"} > 0.006"),
            "{page}"
        );
        assert_eq!(alerts[1]["labels"]["severity"], "ticket");
    }
}
