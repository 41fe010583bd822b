//! What is valid but probably not meant, looked for once a config has passed.

use std::collections::{HashMap, HashSet};

use super::Problems;
use crate::config::matcher::PathMatch;
use crate::config::spec::*;

/// What is valid but probably not what was meant: reported by `levee check` (and logged at
/// start and reload) without refusing the config.
pub(super) fn warn(config: &Config, p: &mut Problems) {
    let now = std::time::SystemTime::now();
    // Which upstreams some route uses, found once (not once per upstream: that would grow
    // with upstreams times routes).
    let used: HashSet<&str> = config
        .routes
        .iter()
        .flat_map(|r| {
            r.upstream
                .into_iter()
                .chain(r.canary.as_ref().and_then(|c| match c.target {
                    CanaryTarget::Upstream(index) => Some(index),
                    CanaryTarget::Model { .. } => None,
                }))
        })
        .filter_map(|i| config.upstreams.get(i))
        .map(|u| &*u.name)
        .collect();
    for upstream in &config.upstreams {
        let name = &upstream.name;
        let path = format!("upstreams.{name}");
        if upstream.targets.len() == 1 && upstream.health_check.is_none() {
            p.at(
                &path,
                format!("upstream `{name}` has one target and no health_check: when that target fails, every request to it fails; add targets or a health check"),
            );
        }
        if !used.contains(&**name) {
            p.at(&path, format!("upstream `{name}` is not used by any route"));
        }
        if upstream.tls.as_ref().is_some_and(|t| t.insecure_skip_verify) {
            p.at(
                &format!("{path}.tls.insecure_skip_verify"),
                format!("upstream `{name}` does not verify its targets' certificates: anyone on the path can impersonate them; trust their CA with ca_file instead"),
            );
        }
        if upstream.protocol == UpstreamProtocol::Auto && upstream.tls.is_none() {
            p.at(
                &format!("{path}.protocol"),
                format!("upstream `{name}` has `protocol: auto` without `tls`: ALPN needs TLS, so it speaks HTTP/1.1; use h2c for HTTP/2 in cleartext"),
            );
        }
    }
    for (i, route) in config.routes.iter().enumerate() {
        let path = format!("routes[{i}]");
        for (j, guardrail) in route.guardrails.iter().enumerate() {
            if guardrail.on_response
                && matches!(guardrail.check, crate::config::guardrails::GuardCheck::Webhook(_))
            {
                p.at(
                    &format!("{path}.guardrails[{j}].on"),
                    format!("the webhook guardrail `{}` sees whole answers only: streamed answers on route `{}` pass it unchecked", guardrail.name, route.name),
                );
            }
        }
        if let Some(policy) = &route.retry {
            if policy.attempts > 1 && policy.budget >= 1.0 {
                p.at(
                    &format!("{path}.retry.budget"),
                    format!("route `{}` retries with a budget of {}: during an outage retries may multiply the load on the failing upstream; a budget like 0.2 caps them at 20%", route.name, policy.budget),
                );
            }
        }
        let literal = match &route.matcher.path {
            PathMatch::Exact(path) | PathMatch::Prefix(path) => Some(path.as_str()),
            _ => None,
        };
        sunset_passed(route, &path, now, p);
        if literal.is_some_and(|l| l.contains(['?', '#'])) {
            p.at(
                &format!("{path}.match"),
                format!("route `{}` matches a path containing `?` or `#`, which no request path has (the query string is not part of the path): no request can reach it", route.name),
            );
        }
    }
    let routes: HashMap<&str, &RouteSpec> = config.routes.iter().map(|r| (&*r.name, r)).collect();
    for (i, slo) in config.slos.iter().enumerate() {
        let route = routes.get(&*slo.route);
        if slo.consumer.is_some() && route.is_some_and(|r| r.auth == AuthSpec::None) {
            p.at(
                &format!("slos[{i}].consumer"),
                format!("SLO `{}` counts one consumer's requests, but route `{}` has no auth, so no request names a consumer: it will count nothing", slo.name, slo.route),
            );
        }
    }
    if let Some(admin) = &config.admin {
        if !admin.bind.ip().is_loopback() && admin.token.is_none() {
            p.at(
                "admin.bind",
                "the admin API listens beyond loopback without a token: anyone who can reach it can read the config and reload it; set admin.token_env",
            );
        }
    }
}

/// A route whose sunset has passed still answers: it was meant to be retired by now.
fn sunset_passed(route: &RouteSpec, path: &str, now: std::time::SystemTime, p: &mut Problems) {
    let Some(lifecycle) = &route.lifecycle else {
        return;
    };
    let Some(sunset) = lifecycle.sunset_at.filter(|s| *s <= now) else {
        return;
    };
    if lifecycle.state != LifecycleState::Retired {
        p.at(
            &format!("{path}.lifecycle.sunset_at"),
            format!(
                "route `{}` passed its sunset ({}) but is still {}: retire it (`state: retired`, answered 410 gone) or move sunset_at",
                route.name,
                humantime::format_rfc3339_seconds(sunset),
                lifecycle.state.name()
            ),
        );
    }
}
