//! The `routes` section: names, matches (and routes an earlier one makes unreachable), the
//! upstream or AI gateway each serves, header rewrites and canaries. A route's policies
//! (retry, fallback, stale-if-error, rate limit) are checked in [`super::policies`], its
//! auth in [`super::auth`] and its faults in [`super::chaos`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method};

use super::auth::check_auth;
use super::chaos::check_route_fault;
use super::lifecycle::check_publish_and_lifecycle;
use super::policies::{check_fallback, check_rate_limit, check_retry, check_stale};
use super::{global_max_body, Problems};
use crate::config::file::{CanaryFile, ConfigFile, HeaderRewriteFile, MatchFile, RouteFile};
use crate::config::matcher::{parse_template, CoverIndex, HostMatch, PathMatch, RouteMatch};
use crate::config::parse::nearest;
use crate::config::spec::*;

/// Every route that passes its checks, in order; a route that an earlier one covers is
/// reported, since it could never match.
pub(super) fn check_routes(
    file: &ConfigFile,
    upstream_index: &HashMap<String, usize>,
    p: &mut Problems,
) -> Vec<RouteSpec> {
    let mut routes: Vec<RouteSpec> = Vec::new();
    let mut route_names: HashMap<&str, usize> = HashMap::new();
    let mut covering = CoverIndex::default();
    let consumer_names: HashSet<&str> = file.consumers.iter().map(|c| c.name.as_str()).collect();
    for (i, route) in file.routes.iter().enumerate() {
        let path = format!("routes[{i}]");
        if route.name.is_empty() {
            p.at(&format!("{path}.name"), "route name must not be empty");
        } else if let Some(first) = route_names.insert(&route.name, i) {
            p.at(
                &format!("{path}.name"),
                format!(
                    "duplicate route name `{}` (first used by routes[{first}])",
                    route.name
                ),
            );
        }
        let Some(spec) = check_route(route, &path, upstream_index, file, &consumer_names, p) else {
            continue;
        };
        let earlier = covering
            .first_covering(&spec.matcher, |i| routes.get(i).map(|r: &RouteSpec| &r.matcher))
            .and_then(|i| routes.get(i));
        if let Some(earlier) = earlier {
            p.at(
                &format!("{path}.match"),
                format!(
                    "route `{}` can never match: route `{}` comes first and takes every request it would",
                    spec.name, earlier.name
                ),
            );
        }
        covering.insert(routes.len(), &spec.matcher);
        routes.push(spec);
    }
    routes
}

/// One route; `None` (after reporting why) when it cannot be built.
fn check_route(
    route: &RouteFile,
    path: &str,
    upstream_index: &HashMap<String, usize>,
    file: &ConfigFile,
    consumer_names: &HashSet<&str>,
    p: &mut Problems,
) -> Option<RouteSpec> {
    let upstream = route_upstream(route, path, upstream_index, file, p);
    let matcher = check_match(&route.matcher, &format!("{path}.match"), p);
    if route.strip_prefix && route.matcher.path_prefix.is_none() {
        p.at(
            &format!("{path}.strip_prefix"),
            "strip_prefix needs `match.path_prefix` (there is no prefix to strip)",
        );
    }
    let request_headers = check_rewrite(
        route.request_headers.as_ref(),
        &format!("{path}.request_headers"),
        p,
    );
    let response_headers = check_rewrite(
        route.response_headers.as_ref(),
        &format!("{path}.response_headers"),
        p,
    );
    // Check everything before giving up on the route, so one run reports every problem.
    let retry = route
        .retry
        .as_ref()
        .map(|r| check_retry(r, &format!("{path}.retry"), p));
    let fallback = route
        .fallback
        .as_ref()
        .map(|f| check_fallback(f, &format!("{path}.fallback"), p));
    if route.retry_non_idempotent && route.retry.is_none() {
        p.at(
            &format!("{path}.retry_non_idempotent"),
            "retry_non_idempotent needs a `retry` policy",
        );
    }
    let stale_if_error = check_stale(route, path, p);
    let auth = check_auth(route, path, file, consumer_names, p);
    let rate_limit = route
        .rate_limit
        .as_ref()
        .and_then(|r| check_rate_limit(r, &format!("{path}.rate_limit"), p));
    if rate_limit.as_ref().is_some_and(|r| r.key == LimitKey::Consumer) && auth == AuthSpec::None {
        p.at(
            &format!("{path}.rate_limit.key"),
            "key `consumer` needs the route to authenticate callers (auth: api_key)",
        );
    }
    let retry = retry.transpose().ok()?;
    let fallback = fallback.transpose().ok()?;
    if route.max_body_bytes.is_some_and(|m| m > 1 << 40) {
        p.at(
            &format!("{path}.max_body_bytes"),
            "max_body_bytes must be at most 1 TiB",
        );
    }
    let fault = check_route_fault(route, path, p);
    let guardrails = super::guardrails::check_guardrails(route, path, p);
    let mcp = super::mcp::check_mcp_route(route, path, file.mcp.as_ref(), p);
    let (publish, lifecycle) = check_publish_and_lifecycle(route, &auth, path, p);
    let canary = route.canary.as_ref().and_then(|c| {
        let models: HashSet<&str> = file
            .llm
            .iter()
            .flat_map(|l| l.models.iter())
            .map(|m| m.name.as_str())
            .collect();
        check_canary(c, route, path, upstream_index, &models, p)
    });
    Some(RouteSpec {
        max_body_bytes: route.max_body_bytes.unwrap_or_else(|| global_max_body(file)),
        publish,
        lifecycle,
        auth,
        fault,
        canary,
        rate_limit,
        stale_if_error,
        retry,
        retry_non_idempotent: route.retry_non_idempotent,
        fallback,
        name: route.name.as_str().into(),
        matcher: matcher?,
        upstream: match route.llm || route.mcp {
            true => None,
            false => Some(upstream?),
        },
        mcp,
        llm: route.llm,
        guardrails,
        strip_prefix: route.strip_prefix,
        request_headers: request_headers?,
        response_headers: response_headers?,
    })
}

/// The index of the upstream a route serves; `None` for an AI gateway route, and for an
/// upstream that is missing or failed its own checks.
fn route_upstream(
    route: &RouteFile,
    path: &str,
    upstream_index: &HashMap<String, usize>,
    file: &ConfigFile,
    p: &mut Problems,
) -> Option<usize> {
    match upstream_index.get(&route.upstream) {
        _ if route.llm => {
            check_llm_route(route, path, file, p);
            None
        }
        _ if route.mcp => {
            if !route.upstream.is_empty() {
                p.at(
                    &format!("{path}.upstream"),
                    format!("route `{}` is an MCP endpoint (`mcp: true`): its servers are under `mcp.servers`, not an upstream", route.name),
                );
            }
            None
        }
        Some(i) => Some(*i),
        None if route.upstream.is_empty() => {
            p.at(
                path,
                format!("route `{}` needs an `upstream` (or `llm: true`)", route.name),
            );
            None
        }
        None => {
            // An upstream that exists but failed its own checks is already reported.
            if !file.upstreams.contains_key(&route.upstream) {
                let hint = nearest(&route.upstream, file.upstreams.keys().map(String::as_str))
                    .map(|n| format!(" (did you mean `{n}`?)"))
                    .unwrap_or_default();
                p.at(
                    &format!("{path}.upstream"),
                    format!(
                        "route `{}` names unknown upstream `{}`{hint}",
                        route.name, route.upstream
                    ),
                );
            }
            None
        }
    }
}

/// An AI gateway route (`llm: true`): no upstream, none of the proxy-only keys, and models
/// to serve.
fn check_llm_route(route: &RouteFile, path: &str, file: &ConfigFile, p: &mut Problems) {
    let ignored = [
        ("strip_prefix", route.strip_prefix),
        ("request_headers", route.request_headers.is_some()),
        ("response_headers", route.response_headers.is_some()),
        ("retry", route.retry.is_some()),
        ("retry_non_idempotent", route.retry_non_idempotent),
        ("stale_if_error", route.stale_if_error.is_some()),
    ];
    for (key, set) in ignored {
        if set {
            p.at(
                &format!("{path}.{key}"),
                format!("`{key}` has no effect on an AI gateway route (`llm: true`): its models fall back over their targets; remove it"),
            );
        }
    }
    if !route.upstream.is_empty() {
        p.at(
            &format!("{path}.upstream"),
            format!("route `{}` serves the AI gateway (`llm: true`): its models are under `llm.models`, not an upstream", route.name),
        );
    }
    if file.llm.as_ref().is_none_or(|l| l.models.is_empty()) {
        p.at(
            &format!("{path}.llm"),
            format!(
                "route `{}` serves the AI gateway but `llm.models` names no model",
                route.name
            ),
        );
    }
}

/// A route's `match`, compiled; `None` once its problems are reported.
fn check_match(m: &MatchFile, path: &str, p: &mut Problems) -> Option<RouteMatch> {
    let before = p.errors.len();
    let path_match = match (&m.path, &m.path_prefix) {
        (Some(_), Some(_)) => {
            p.at(path, "set either `path` or `path_prefix`, not both");
            PathMatch::Any
        }
        (Some(exact), None) => {
            if !exact.starts_with('/') {
                p.at(
                    &format!("{path}.path"),
                    format!("path `{exact}` must start with /"),
                );
                PathMatch::Any
            } else if exact.contains(['{', '}']) {
                match parse_template(exact) {
                    Ok(segments) => PathMatch::Template(segments),
                    Err(message) => {
                        p.at(&format!("{path}.path"), message);
                        PathMatch::Any
                    }
                }
            } else {
                PathMatch::Exact(exact.clone())
            }
        }
        (None, Some(prefix)) => {
            if !prefix.starts_with('/') {
                p.at(
                    &format!("{path}.path_prefix"),
                    format!("path_prefix `{prefix}` must start with /"),
                );
            }
            PathMatch::Prefix(prefix.clone())
        }
        (None, None) => PathMatch::Any,
    };
    let host = m.host.as_ref().and_then(|h| match HostMatch::parse(h) {
        Ok(host) => Some(host),
        Err(message) => {
            p.at(&format!("{path}.host"), message);
            None
        }
    });
    let methods = m.methods.as_ref().map(|methods| {
        let mut parsed = Vec::new();
        for (i, name) in methods.iter().enumerate() {
            let upper = name.to_ascii_uppercase();
            match Method::from_bytes(upper.as_bytes()) {
                Ok(method) if !upper.is_empty() => parsed.push(method),
                _ => p.at(
                    &format!("{path}.methods[{i}]"),
                    format!("invalid method `{name}`"),
                ),
            }
        }
        if methods.is_empty() {
            p.at(
                &format!("{path}.methods"),
                "methods must list at least one method (or be left out)",
            );
        }
        parsed
    });
    let mut headers = Vec::new();
    for (name, value) in m.headers.iter().flatten() {
        let hpath = format!("{path}.headers.{name}");
        match (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            (Ok(n), Ok(v)) => headers.push((n, v)),
            (Err(_), _) => p.at(&hpath, format!("invalid header name `{name}`")),
            (_, Err(_)) => p.at(&hpath, format!("invalid value for header `{name}`")),
        }
    }
    (p.errors.len() == before).then_some(RouteMatch {
        path: path_match,
        host,
        methods,
        headers,
    })
}

/// Headers a route may not rewrite: hop-by-hop and framing headers belong to each connection,
/// and the request id and trace context are the gateway's own.
const PROTECTED_HEADERS: [&str; 11] = [
    "x-consumer",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "x-request-id",
    "traceparent",
];

/// A route's header rewrite, leaving alone the headers the gateway manages.
fn check_rewrite(rw: Option<&HeaderRewriteFile>, path: &str, p: &mut Problems) -> Option<HeaderRewrite> {
    let Some(rw) = rw else {
        return Some(HeaderRewrite::default());
    };
    let before = p.errors.len();
    let mut out = HeaderRewrite::default();
    let names = rw
        .remove
        .iter()
        .enumerate()
        .map(|(i, n)| (format!("{path}.remove[{i}]"), n))
        .chain(rw.set.keys().map(|n| (format!("{path}.set.{n}"), n)))
        .chain(rw.add.keys().map(|n| (format!("{path}.add.{n}"), n)));
    for (npath, name) in names {
        if PROTECTED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            p.at(
                &npath,
                format!("header `{name}` is managed by the gateway and cannot be rewritten"),
            );
        }
    }
    for (i, name) in rw.remove.iter().enumerate() {
        match HeaderName::try_from(name.as_str()) {
            Ok(n) => out.remove.push(n),
            Err(_) => p.at(
                &format!("{path}.remove[{i}]"),
                format!("invalid header name `{name}`"),
            ),
        }
    }
    for (key, map, target) in [("set", &rw.set, &mut out.set), ("add", &rw.add, &mut out.add)] {
        for (name, value) in map {
            let hpath = format!("{path}.{key}.{name}");
            match (
                HeaderName::try_from(name.as_str()),
                HeaderValue::try_from(value.as_str()),
            ) {
                (Ok(n), Ok(v)) => target.push((n, v)),
                (Err(_), _) => p.at(&hpath, format!("invalid header name `{name}`")),
                (_, Err(_)) => p.at(&hpath, format!("invalid value for header `{name}`")),
            }
        }
    }
    (p.errors.len() == before).then_some(out)
}

/// A route's `canary` (its rollback is checked with the SLOs, in
/// A route's `canary` (its rollback is checked with the SLOs, in
/// `check_canary_rollbacks`): an upstream on a proxied route, a model on an AI gateway route.
fn check_canary(
    canary: &CanaryFile,
    route: &RouteFile,
    path: &str,
    upstream_index: &HashMap<String, usize>,
    models: &HashSet<&str>,
    p: &mut Problems,
) -> Option<CanarySpec> {
    if !(0.0..=100.0).contains(&canary.percent) {
        p.at(&format!("{path}.canary.percent"), "percent must be from 0 to 100");
    }
    if route.llm {
        return check_model_canary(canary, path, models, p);
    }
    for (key, set) in [
        ("model", canary.model.is_some()),
        ("instead_of", canary.instead_of.is_some()),
    ] {
        if set {
            p.at(
                &format!("{path}.canary.{key}"),
                format!("`{key}` is for AI gateway routes (`llm: true`); a proxied route's canary names an `upstream`"),
            );
        }
    }
    if canary.upstream == route.upstream {
        p.at(
            &format!("{path}.canary.upstream"),
            "the canary's upstream must differ from the route's own",
        );
    }
    let Some(index) = upstream_index.get(&canary.upstream) else {
        p.at(
            &format!("{path}.canary.upstream"),
            format!("no upstream named `{}`", canary.upstream),
        );
        return None;
    };
    Some(CanarySpec {
        target: CanaryTarget::Upstream(*index),
        upstream_name: canary.upstream.as_str().into(),
        share: canary.percent / 100.0,
        rollback: None,
        definition: serde_json::to_string(canary).unwrap_or_default(),
    })
}

/// A model canary on an AI gateway route: `model` takes `percent` of the requests for
/// `instead_of`; both are models of `llm.models`.
fn check_model_canary(
    canary: &CanaryFile,
    path: &str,
    models: &HashSet<&str>,
    p: &mut Problems,
) -> Option<CanarySpec> {
    if !canary.upstream.is_empty() {
        p.at(
            &format!("{path}.canary.upstream"),
            "an AI gateway route's canary names a `model` (and the model it stands `instead_of`), not an upstream",
        );
    }
    let mut named = |key: &str, value: Option<&String>| -> Option<Arc<str>> {
        let Some(value) = value else {
            p.at(
                &format!("{path}.canary"),
                format!("an AI gateway route's canary needs `{key}`"),
            );
            return None;
        };
        if !models.contains(value.as_str()) {
            p.at(
                &format!("{path}.canary.{key}"),
                format!("no model named `{value}` in llm.models"),
            );
            return None;
        }
        Some(value.as_str().into())
    };
    let model = named("model", canary.model.as_ref());
    let instead_of = named("instead_of", canary.instead_of.as_ref());
    let (model, instead_of) = (model?, instead_of?);
    if model == instead_of {
        p.at(
            &format!("{path}.canary.model"),
            "the canary's model must differ from the one it stands in for",
        );
        return None;
    }
    Some(CanarySpec {
        target: CanaryTarget::Model { instead_of },
        upstream_name: model,
        share: canary.percent / 100.0,
        rollback: None,
        definition: serde_json::to_string(canary).unwrap_or_default(),
    })
}
