//! The `slos` and `alerting` sections, and the SLOs that canary rollbacks derive from them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::{label_safe, Problems};
use crate::config::file::{AlertingFile, ConfigFile, SliFile, SloFile};
use crate::config::parse::nearest;
use crate::config::spec::*;

/// Most SLOs one config may declare (each holds a minute-bucket ring sized to its window).
const MAX_SLOS: usize = 100;

/// The `slos` section: names usable as metric labels, routes and consumers that exist,
/// objectives and windows that make sense.
pub(super) fn check_slos(
    file: &ConfigFile,
    routes: &[RouteSpec],
    consumers: &[ConsumerSpec],
    p: &mut Problems,
) -> Vec<SloSpec> {
    let mut slos: Vec<SloSpec> = Vec::new();
    let route_by_name: HashMap<&str, &RouteSpec> = routes.iter().map(|r| (&*r.name, r)).collect();
    let consumer_names: HashSet<&str> = consumers.iter().map(|c| &*c.name).collect();
    let mut slo_names: HashSet<String> = HashSet::new();
    if file.slos.len() > MAX_SLOS {
        p.at("slos", format!("at most {MAX_SLOS} SLOs"));
    }
    for (i, slo) in file.slos.iter().enumerate() {
        let path = format!("slos[{i}]");
        if !label_safe(&slo.name) || slo.name.len() > 128 {
            p.at(
                &format!("{path}.name"),
                format!(
                    "SLO name `{}` must be 1 to 128 letters, digits, `_`, `-` or `.`",
                    slo.name
                ),
            );
        }
        if !slo_names.insert(slo.name.clone()) {
            p.at(
                &format!("{path}.name"),
                format!("duplicate SLO name `{}`", slo.name),
            );
        }
        let route = route_by_name.get(slo.route.as_str()).copied();
        if route.is_none() {
            let suggestion = nearest(&slo.route, routes.iter().map(|r| &*r.name))
                .map(|n| format!(" (did you mean `{n}`?)"))
                .unwrap_or_default();
            p.at(
                &format!("{path}.route"),
                format!("no route named `{}`{suggestion}", slo.route),
            );
        }
        if let Some(consumer) = &slo.consumer {
            if !consumer_names.contains(&**consumer) {
                p.at(
                    &format!("{path}.consumer"),
                    format!("no consumer named `{consumer}`"),
                );
            }
        }
        if !(slo.objective > 0.0 && slo.objective < 100.0) {
            p.at(
                &format!("{path}.objective"),
                "objective is a percentage above 0 and below 100 (like 99.9)",
            );
        }
        let window = slo
            .window
            .map_or(std::time::Duration::from_secs(30 * 86_400), |d| d.0);
        if window < std::time::Duration::from_secs(3600)
            || window > std::time::Duration::from_secs(90 * 86_400)
        {
            p.at(&format!("{path}.window"), "window must be from 1h to 90d");
        }
        let sli = match &slo.sli {
            SliFile::Named(_) => Sli::Availability,
            SliFile::Latency(l) => {
                if l.latency_below.0.is_zero() {
                    p.at(
                        &format!("{path}.sli.latency_below"),
                        "latency_below must be above zero",
                    );
                }
                Sli::LatencyBelow(l.latency_below.0)
            }
        };
        slos.push(SloSpec {
            name: slo.name.as_str().into(),
            route: slo.route.as_str().into(),
            consumer: slo.consumer.as_deref().map(Arc::from),
            upstream: None,
            release: None,
            alerts: true,
            objective: slo.objective,
            window,
            sli,
            bad_grpc_statuses: check_grpc_statuses(slo, sli, &path, p),
        });
    }
    slos
}

/// Each canary's `rollback_if`: an SLO of its route, copied into an SLO that counts only the
/// canary's requests (named `<slo>-canary`, without alerts: the rollback is the answer).
pub(super) fn check_canary_rollbacks(
    file: &ConfigFile,
    routes: &mut [RouteSpec],
    slos: &mut Vec<SloSpec>,
    p: &mut Problems,
) {
    for (i, route_file) in file.routes.iter().enumerate() {
        let Some(rollback) = route_file.canary.as_ref().and_then(|c| c.rollback_if.as_ref()) else {
            continue;
        };
        let path = format!("routes[{i}].canary.rollback_if");
        let Some(route) = routes.iter_mut().find(|r| *r.name == *route_file.name) else {
            continue;
        };
        let Some(canary) = route.canary.as_mut() else {
            continue;
        };
        let window = rollback.window.as_deref().unwrap_or("5m");
        let Some(window) = BURN_WINDOWS.iter().map(|(w, _)| *w).find(|w| *w == window) else {
            p.at(
                &format!("{path}.window"),
                format!("`{window}` is not one of 5m, 30m, 1h, 2h, 6h, 1d, 3d"),
            );
            continue;
        };
        if !(rollback.burn_rate_above.is_finite() && rollback.burn_rate_above > 0.0) {
            p.at(
                &format!("{path}.burn_rate_above"),
                "burn_rate_above must be above zero",
            );
        }
        let Some(base) = slos.iter().find(|s| *s.name == *rollback.slo && s.alerts) else {
            p.at(&format!("{path}.slo"), format!("no SLO named `{}`", rollback.slo));
            continue;
        };
        if *base.route != *route.name {
            p.at(
                &format!("{path}.slo"),
                format!(
                    "SLO `{}` is on route `{}`, not on this route",
                    base.name, base.route
                ),
            );
            continue;
        }
        let name: Arc<str> = format!("{}-canary", base.name).into();
        if slos.iter().any(|s| s.name == name) {
            p.at(
                &format!("{path}.slo"),
                format!("the canary's SLO would be named `{name}`, which another SLO already is"),
            );
            continue;
        }
        let derived = SloSpec {
            name: name.clone(),
            upstream: Some(canary.upstream_name.clone()),
            release: Some(canary.definition.as_str().into()),
            alerts: false,
            ..base.clone()
        };
        canary.rollback = Some(CanaryRollback {
            slo: name,
            burn_rate_above: rollback.burn_rate_above,
            window,
            min_requests: rollback.min_requests.unwrap_or(100),
        });
        slos.push(derived);
    }
    if slos.len() > MAX_SLOS {
        p.at(
            "slos",
            format!("at most {MAX_SLOS} SLOs, counting the one each canary's rollback_if adds"),
        );
    }
    // Each SLO holds a one-minute ring of the longer of its window and 3 days.
    let ring_bytes: u64 = slos
        .iter()
        .map(|s| (s.window.as_secs() / 60).max(3 * 1440) * SLO_BUCKET_BYTES)
        .sum();
    if ring_bytes > MAX_SLO_MEMORY {
        p.at(
            "slos",
            format!(
                "the SLOs' minute buckets would take {} MiB, more than {} MiB: use shorter windows or fewer SLOs",
                ring_bytes >> 20,
                MAX_SLO_MEMORY >> 20
            ),
        );
    }
}

/// Memory the SLOs' minute buckets may take at most (100 SLOs of `30d` take 165 MiB).
const MAX_SLO_MEMORY: u64 = 256 << 20;

/// The `alerting` section: receiver URLs and the evaluation interval.
pub(super) fn check_alerting(a: &AlertingFile, p: &mut Problems) -> AlertingSpec {
    let mut url = |text: &str, path: &str, suffix: Option<&str>| -> Option<http::Uri> {
        let uri = match text.parse::<http::Uri>() {
            Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => uri,
            _ => {
                p.at(path, format!("`{text}` is not an http(s) URL"));
                return None;
            }
        };
        match suffix {
            // Alertmanager is named by its base URL; alerts go to its v2 API under it.
            Some(suffix) if uri.path().trim_end_matches('/').ends_with(suffix) => Some(uri),
            Some(suffix) => {
                // The API path goes after the base path, before any query.
                let mut parts = uri.into_parts();
                let base = parts
                    .path_and_query
                    .as_ref()
                    .map_or("", |pq| pq.path())
                    .trim_end_matches('/');
                let query = parts
                    .path_and_query
                    .as_ref()
                    .and_then(|pq| pq.query())
                    .map(|q| format!("?{q}"))
                    .unwrap_or_default();
                parts.path_and_query = format!("{base}{suffix}{query}").parse().ok();
                http::Uri::from_parts(parts).ok()
            }
            None => Some(uri),
        }
    };
    let alertmanager = a
        .alertmanager
        .as_ref()
        .and_then(|r| url(&r.url, "alerting.alertmanager.url", Some("/api/v2/alerts")));
    let webhooks = a
        .webhooks
        .iter()
        .enumerate()
        .filter_map(|(i, r)| url(&r.url, &format!("alerting.webhooks[{i}].url"), None))
        .collect();
    let evaluation_interval = a
        .evaluation_interval
        .map_or(std::time::Duration::from_secs(5), |d| d.0);
    if evaluation_interval < std::time::Duration::from_secs(1)
        || evaluation_interval > std::time::Duration::from_secs(60)
    {
        p.at(
            "alerting.evaluation_interval",
            "evaluation_interval must be from 1s to 1m",
        );
    }
    AlertingSpec {
        evaluation_interval,
        alertmanager,
        webhooks,
    }
}

/// An SLO's `bad_grpc_statuses`: gRPC status names, for availability SLOs only.
fn check_grpc_statuses(slo: &SloFile, sli: Sli, path: &str, p: &mut Problems) -> Option<Vec<u16>> {
    let names = slo.bad_grpc_statuses.as_ref()?;
    if sli != Sli::Availability {
        p.at(
            &format!("{path}.bad_grpc_statuses"),
            "bad_grpc_statuses is only used by `sli: availability`",
        );
    }
    let mut codes = Vec::new();
    for (i, name) in names.iter().enumerate() {
        match crate::grpc::code_by_name(name) {
            Some(0) | None => p.at(
                &format!("{path}.bad_grpc_statuses[{i}]"),
                format!(
                    "`{name}` is not a gRPC error status: use names such as unavailable or deadline_exceeded"
                ),
            ),
            Some(code) => codes.push(code),
        }
    }
    Some(codes)
}
