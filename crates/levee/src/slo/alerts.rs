//! Multiwindow, multi-burn-rate alerts (Google SRE Workbook, chapter 5), and the JSON
//! shapes they are sent in.
//!
//! Each rule pairs a long window, which says the burn is big enough to matter, with a short
//! one, which says it is still going on: so an alert fires within minutes of a fast burn
//! and resolves minutes after it stops, instead of an hour later.
//!
//! | severity | long window | short window | burn rate above | budget spent when it fires |
//! | --- | --- | --- | --- | --- |
//! | page | 1h | 5m | 14.4 | 2% of a 30-day budget in an hour |
//! | page | 6h | 30m | 6 | 5% in six hours |
//! | ticket | 1d | 2h | 3 | 10% in a day |
//! | ticket | 3d | 6h | 1 | 10% in three days |

use serde_json::{json, Value};

use super::Status;
use crate::config::spec::SloSpec;

/// One rule: both windows above the factor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rule {
    pub severity: Severity,
    pub long: &'static str,
    pub short: &'static str,
    pub factor: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Page,
    Ticket,
}

impl Severity {
    /// `page` or `ticket`.
    pub fn from_name(name: &str) -> Option<Severity> {
        match name {
            "page" => Some(Severity::Page),
            "ticket" => Some(Severity::Ticket),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Severity::Page => "page",
            Severity::Ticket => "ticket",
        }
    }
}

/// The four rules, in the order of the table above.
pub const RULES: [Rule; 4] = [
    Rule {
        severity: Severity::Page,
        long: "1h",
        short: "5m",
        factor: 14.4,
    },
    Rule {
        severity: Severity::Page,
        long: "6h",
        short: "30m",
        factor: 6.0,
    },
    Rule {
        severity: Severity::Ticket,
        long: "1d",
        short: "2h",
        factor: 3.0,
    },
    Rule {
        severity: Severity::Ticket,
        long: "3d",
        short: "6h",
        factor: 1.0,
    },
];

/// The name every Levee burn-rate alert carries (the `severity` label tells them apart).
pub const ALERT_NAME: &str = "LeveeSLOErrorBudgetBurn";
/// The runbook every burn-rate alert names (its `runbook` annotation), a path in the repository.
pub const RUNBOOK: &str = "docs/runbooks/slo-burn-rate.md";

impl Rule {
    /// Whether both windows burn faster than the factor.
    pub fn holds(&self, status: &Status) -> bool {
        let above = |window| status.burn_rate(window).is_some_and(|rate| rate > self.factor);
        above(self.long) && above(self.short)
    }
}

/// One alert's state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertState {
    /// Unix milliseconds when it started firing; `None` when it does not fire.
    pub firing_since: Option<u64>,
    /// The rule that fired it (for the annotations).
    pub rule: Option<Rule>,
}

/// An SLO's page and ticket alerts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertPair {
    pub page: AlertState,
    pub ticket: AlertState,
}

/// An alert that started or stopped firing (or, for re-sends, still fires).
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub slo: String,
    pub severity: Severity,
    pub firing: bool,
    pub starts_at_ms: u64,
    /// When it resolved.
    pub ends_at_ms: Option<u64>,
    pub labels: Vec<(&'static str, String)>,
    pub annotations: Vec<(&'static str, String)>,
}

impl AlertPair {
    /// Moves both alerts to what `status` says; returns the changes.
    pub fn step(&mut self, spec: &SloSpec, status: &Status, now_ms: u64) -> Vec<Transition> {
        let mut out = Vec::new();
        for (severity, state) in [
            (Severity::Page, &mut self.page),
            (Severity::Ticket, &mut self.ticket),
        ] {
            let holding = RULES.iter().find(|r| r.severity == severity && r.holds(status));
            match (holding, state.firing_since) {
                (Some(rule), None) => {
                    state.firing_since = Some(now_ms);
                    state.rule = Some(*rule);
                    out.push(transition(spec, status, severity, Some(*rule), now_ms, None));
                }
                (Some(rule), Some(_)) => state.rule = Some(*rule),
                (None, Some(since)) => {
                    let rule = state.rule.take();
                    state.firing_since = None;
                    out.push(transition(spec, status, severity, rule, since, Some(now_ms)));
                }
                (None, None) => {}
            }
        }
        out
    }

    /// The alerts firing now, as notifications (Alertmanager wants them repeated).
    pub fn firing(&self, spec: &SloSpec, status: &Status) -> Vec<Transition> {
        [(Severity::Page, &self.page), (Severity::Ticket, &self.ticket)]
            .into_iter()
            .filter_map(|(severity, state)| {
                state
                    .firing_since
                    .map(|since| transition(spec, status, severity, state.rule, since, None))
            })
            .collect()
    }
}

/// The labels of an SLO's alert of `severity` (what identifies it, see [`fingerprint`]).
pub fn labels(spec: &SloSpec, severity: Severity) -> Vec<(&'static str, String)> {
    let mut labels = vec![
        ("alertname", ALERT_NAME.to_owned()),
        ("slo", spec.name.to_string()),
        ("severity", severity.name().to_owned()),
        ("route", spec.route.to_string()),
    ];
    if let Some(consumer) = &spec.consumer {
        labels.push(("consumer", consumer.to_string()));
    }
    labels
}

fn transition(
    spec: &SloSpec,
    status: &Status,
    severity: Severity,
    rule: Option<Rule>,
    starts_at_ms: u64,
    ends_at_ms: Option<u64>,
) -> Transition {
    let labels = labels(spec, severity);
    let rates: Vec<String> = super::BURN_WINDOWS
        .iter()
        .zip(status.burn_rates)
        .map(|((w, _), r)| format!("{w}={r:.2}"))
        .collect();
    let summary = match rule {
        Some(rule) => format!(
            "SLO {} is burning its error budget over {}x too fast ({} and {} windows)",
            spec.name, rule.factor, rule.long, rule.short
        ),
        None => format!("SLO {} error budget burn", spec.name),
    };
    let annotations = vec![
        ("summary", summary),
        (
            "description",
            format!(
                "Objective {}% over {}; error budget remaining {:.1}%; burn rates {}.",
                spec.objective,
                super::window_text(spec.window),
                status.budget_remaining * 100.0,
                rates.join(" ")
            ),
        ),
        ("runbook", RUNBOOK.to_owned()),
    ];
    Transition {
        slo: spec.name.to_string(),
        severity,
        firing: ends_at_ms.is_none(),
        starts_at_ms,
        ends_at_ms,
        labels,
        annotations,
    }
}

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339(unix_ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    humantime::format_rfc3339_millis(time).to_string()
}

/// Alertmanager's "no end" time in its webhook payloads.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

fn object(pairs: &[(&'static str, String)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::String(v.clone())))
            .collect(),
    )
}

/// A stable id of an alert's labels (Alertmanager's `fingerprint` plays this part).
pub fn fingerprint(labels: &[(&'static str, String)]) -> String {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for (k, v) in labels {
        hasher.update(k.as_bytes());
        hasher.update(&[0xff]);
        hasher.update(v.as_bytes());
        hasher.update(&[0xfe]);
    }
    format!("{:016x}", hasher.digest())
}

/// A webhook notification in the shape Alertmanager sends to its webhook receivers
/// (version 4), one alert per notification.
pub fn webhook_body(t: &Transition, external_url: &str) -> Value {
    let status = if t.firing { "firing" } else { "resolved" };
    let labels = object(&t.labels);
    let group: Vec<(&'static str, String)> = t
        .labels
        .iter()
        .filter(|(k, _)| matches!(*k, "alertname" | "slo" | "severity" | "route"))
        .cloned()
        .collect();
    json!({
        "version": "4",
        "groupKey": format!(
            "{{}}:{{{}}}",
            group.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect::<Vec<_>>().join(", ")
        ),
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "levee",
        "groupLabels": object(&group),
        "commonLabels": labels,
        "commonAnnotations": object(&t.annotations),
        "externalURL": external_url,
        "alerts": [{
            "status": status,
            "labels": object(&t.labels),
            "annotations": object(&t.annotations),
            "startsAt": rfc3339(t.starts_at_ms),
            "endsAt": t.ends_at_ms.map_or_else(|| ZERO_TIME.to_owned(), rfc3339),
            "generatorURL": external_url,
            "fingerprint": fingerprint(&t.labels),
        }],
    })
}

/// The body of `POST /api/v2/alerts`: firing alerts end `resend_ends_after_ms` from now
/// unless sent again (as Prometheus does), resolved ones end when they resolved.
pub fn alertmanager_body(transitions: &[Transition], now_ms: u64, resend_ends_after_ms: u64) -> Value {
    Value::Array(
        transitions
            .iter()
            .map(|t| {
                json!({
                    "labels": object(&t.labels),
                    "annotations": object(&t.annotations),
                    "startsAt": rfc3339(t.starts_at_ms),
                    "endsAt": rfc3339(t.ends_at_ms.unwrap_or(now_ms.saturating_add(resend_ends_after_ms))),
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn transition(ends_at_ms: Option<u64>) -> Transition {
        Transition {
            slo: "api".into(),
            severity: Severity::Page,
            firing: ends_at_ms.is_none(),
            starts_at_ms: 1_700_000_000_000,
            ends_at_ms,
            labels: vec![
                ("alertname", ALERT_NAME.into()),
                ("slo", "api".into()),
                ("severity", "page".into()),
            ],
            annotations: vec![("summary", "burning".into())],
        }
    }

    #[test]
    fn alertmanager_gets_an_end_for_firing_and_resolved_alerts() {
        let now = 1_700_000_060_000;
        let body = alertmanager_body(&[transition(None), transition(Some(now))], now, 240_000);
        // Firing: ends four minutes from now unless sent again.
        assert_eq!(body[0]["endsAt"], "2023-11-14T22:18:20.000Z");
        assert_eq!(body[0]["startsAt"], "2023-11-14T22:13:20.000Z");
        // Resolved: ends when it resolved.
        assert_eq!(body[1]["endsAt"], "2023-11-14T22:14:20.000Z");
        assert_eq!(body[1]["labels"]["slo"], "api");
    }

    #[test]
    fn a_webhook_group_key_names_the_alert_it_carries() {
        let mut t = transition(None);
        t.labels[0].1 = "LeveeCanaryRolledBack".into();
        let body = webhook_body(&t, "");
        assert!(body["groupKey"]
            .as_str()
            .unwrap()
            .contains("alertname=\"LeveeCanaryRolledBack\""));
    }
}
