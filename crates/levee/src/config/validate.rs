//! Turns a config file into a [`Config`], collecting every problem with its position.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use http::uri::Authority;
use http::{HeaderName, HeaderValue, Method};

use levee_resilience::BreakerConfig;

use super::file::{
    AuthFile, BalanceFile, CircuitBreakerFile, ConfigFile, FallbackFile, HeaderRewriteFile, HealthCheckFile,
    JwtFile, MatchFile, OutlierFile, RateLimitFile, RetryFile, RetryOnFile, RouteFile, TracingFile,
    UpstreamFile, Workers,
};
use super::matcher::{parse_template, CoverIndex, HostMatch, PathMatch, RouteMatch};
use super::parse::{self, nearest, Cuts};
use super::secrets::{resolve_secrets, Resolved, Secrets};
use super::source_map::SourceMap;
use super::spec::*;
use super::{ConfigError, ConfigErrors};

/// Collects problems, each tied to the path of the value it is about.
struct Problems<'a> {
    file: &'a str,
    map: SourceMap,
    /// What was cut from the document to get past its type errors, so that paths in what is
    /// left are reported where they were written.
    cuts: Cuts,
    errors: Vec<ConfigError>,
}

impl Problems<'_> {
    fn at(&mut self, path: &str, message: impl Into<String>) {
        let pos = self.map.value(&self.cuts.original(path));
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line: pos.line,
            col: pos.col,
            message: message.into(),
        });
    }

    /// The value of a secret or file as resolved, or `None` once its problem is reported at
    /// `path`.
    fn resolved<T>(&mut self, path: &str, item: Resolved<T>) -> Option<T> {
        item.map_err(|message| self.at(path, message)).ok()
    }
}

pub(super) fn load(text: &str, name: &str) -> Result<Config, ConfigErrors> {
    let map = SourceMap::build(text);
    let (file, mut errors, cuts) = parse::read(text, name, &map)?;
    let mut problems = Problems {
        file: name,
        map,
        cuts,
        errors: Vec::new(),
    };
    let config = file.and_then(|file| check(file, &mut problems));
    errors.append(&mut problems.errors);
    if errors.is_empty() {
        if let Some(mut config) = config {
            let mut advice = Problems {
                file: name,
                map: problems.map,
                cuts: Cuts::default(),
                errors: Vec::new(),
            };
            warn(&config, &mut advice);
            advice.errors.sort_by_key(|e| (e.line, e.col));
            config.warnings = advice.errors;
            return Ok(config);
        }
    }
    errors.sort_by_key(|e| (e.line, e.col));
    Err(ConfigErrors(errors))
}

fn check(file: ConfigFile, p: &mut Problems) -> Option<Config> {
    let mut secrets = resolve_secrets(&file);
    if file.listeners.is_empty() {
        p.at("listeners", "at least one listener is required under `listeners`");
    }
    let mut listeners = Vec::new();
    let mut listener_names = HashSet::new();
    let mut binds = HashSet::new();
    for (i, l) in file.listeners.iter().enumerate() {
        let path = format!("listeners[{i}]");
        if !label_safe(&l.name) {
            p.at(
                &format!("{path}.name"),
                format!(
                    "listener name `{}` must be letters, digits, `_`, `-` or `.`",
                    l.name
                ),
            );
        }
        if !listener_names.insert(l.name.clone()) {
            p.at(
                &format!("{path}.name"),
                format!("duplicate listener name `{}`", l.name),
            );
        }
        if let Some(bind) = socket_addr(&l.bind, &format!("{path}.bind"), p) {
            if bind.port() != 0 && !binds.insert(bind) {
                p.at(&format!("{path}.bind"), format!("address {bind} is bound twice"));
            }
            let tls = l.tls.as_ref().and_then(|t| {
                if t.reload_interval.is_some_and(|d| d.0.is_zero()) {
                    p.at(
                        &format!("{path}.tls.reload_interval"),
                        "reload_interval must be above zero",
                    );
                }
                let spec = TlsSpec {
                    cert: t.cert.clone().into(),
                    key: t.key.clone().into(),
                    reload_interval: t
                        .reload_interval
                        .map(|d| d.0)
                        .unwrap_or(std::time::Duration::from_secs(5)),
                };
                let loaded = secrets.tls.get_mut(i).and_then(Option::take)?;
                p.resolved(&format!("{path}.tls.cert"), loaded).map(|()| spec)
            });
            if l.max_connections.is_some_and(|m| m == 0 || m > 10_000_000) {
                p.at(
                    &format!("{path}.max_connections"),
                    "max_connections must be from 1 to 10000000",
                );
            }
            listeners.push(ListenerSpec {
                name: l.name.as_str().into(),
                bind,
                tls,
                max_connections: l.max_connections,
            });
        }
    }
    let admin = file.admin.as_ref().and_then(|a| {
        let bind = socket_addr(&a.bind, "admin.bind", p)?;
        if bind.port() != 0 && binds.contains(&bind) {
            p.at(
                "admin.bind",
                format!("address {bind} is already used by a listener"),
            );
        }
        let token = secrets
            .admin_token
            .take()
            .and_then(|token| p.resolved("admin.token_env", token));
        Some(AdminSpec { bind, token })
    });

    let mut upstreams = Vec::new();
    let mut upstream_index = HashMap::new();
    for (name, upstream) in &file.upstreams {
        if let Some(spec) = check_upstream(name, upstream, p) {
            upstream_index.insert(name.clone(), upstreams.len());
            upstreams.push(spec);
        }
    }

    let consumers = check_consumers(&file, p);
    let jwt = file.jwt.as_ref().and_then(|j| check_jwt(j, &mut secrets, p));
    let call_log = file.data_dir.as_ref().and_then(|dir| {
        let settings = file.call_log.clone().unwrap_or_default();
        if settings.enabled == Some(false) {
            return None;
        }
        let spec = CallLogSpec {
            dir: dir.into(),
            queue: settings.queue.unwrap_or(16_384),
            max_age: settings
                .max_age
                .map(|d| d.0)
                .unwrap_or(std::time::Duration::from_secs(7 * 86_400)),
            max_rows: settings.max_rows.unwrap_or(1_000_000),
        };
        if spec.queue == 0 || spec.queue > 1_048_576 {
            p.at("call_log.queue", "call_log.queue must be from 1 to 1048576");
        }
        if spec.max_age.is_zero() || spec.max_rows == 0 {
            p.at("call_log", "call_log.max_age and max_rows must be above zero");
        }
        Some(spec)
    });
    if file.call_log.is_some() && file.data_dir.is_none() {
        p.at(
            "call_log",
            "the call log needs `data_dir` (where its database lives)",
        );
    }
    let tracing = file.tracing.as_ref().and_then(|t| check_tracing(t, p));
    let llm = file.llm.as_ref().and_then(|l| check_llm(l, &mut secrets, p));
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
        let Some(spec) = check_route(route, &path, &upstream_index, &file, &consumer_names, p) else {
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
    // A prompt endpoint is served by the first route whose path takes it: it must be an AI
    // gateway route (whose auth and rate limit then apply).
    for (i, prompt) in llm.iter().flat_map(|l| l.prompts.iter()).enumerate() {
        match routes.iter().find(|r| r.matcher.path.matches(&prompt.path)) {
            Some(route) if route.llm => {}
            Some(route) => p.at(
                &format!("llm.prompts[{i}].path"),
                format!(
                    "`{}` is taken by route `{}`, which is not an AI gateway route (`llm: true`)",
                    prompt.path, route.name
                ),
            ),
            None => p.at(
                &format!("llm.prompts[{i}].path"),
                format!(
                    "no route takes `{}`: add a route with `llm: true` whose match covers it",
                    prompt.path
                ),
            ),
        }
    }

    let workers = match file.workers {
        None | Some(Workers::Auto) => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        Some(Workers::Count(n)) => n,
    };
    let access_log = AccessLogSpec {
        enabled: file.access_log.as_ref().is_none_or(|a| a.enabled),
        queue: file
            .access_log
            .as_ref()
            .and_then(|a| a.queue)
            .unwrap_or(DEFAULT_ACCESS_LOG_QUEUE),
        success_sample: file
            .access_log
            .as_ref()
            .and_then(|a| a.success_sample)
            .unwrap_or(1.0),
    };
    if !(0.0..=1.0).contains(&access_log.success_sample) {
        p.at(
            "access_log.success_sample",
            "access_log.success_sample must be from 0 to 1",
        );
    }
    if access_log.queue == 0 || access_log.queue > 1_048_576 {
        p.at(
            "access_log.queue",
            "access_log.queue must be between 1 and 1048576",
        );
    }
    let limits = LimitsSpec {
        max_inflight: file
            .limits
            .as_ref()
            .and_then(|l| l.max_inflight)
            .unwrap_or(DEFAULT_MAX_INFLIGHT),
        max_connections: file
            .limits
            .as_ref()
            .and_then(|l| l.max_connections)
            .unwrap_or(DEFAULT_MAX_CONNECTIONS),
        max_header_bytes: file
            .limits
            .as_ref()
            .and_then(|l| l.max_header_bytes)
            .unwrap_or(DEFAULT_MAX_HEADER_BYTES),
        max_body_bytes: global_max_body(&file),
        header_read_timeout: file
            .limits
            .as_ref()
            .and_then(|l| l.header_read_timeout)
            .map(|d| d.0)
            .unwrap_or(DEFAULT_HEADER_READ_TIMEOUT),
    };
    if !(1024..=1024 * 1024).contains(&limits.max_header_bytes) {
        p.at(
            "limits.max_header_bytes",
            "limits.max_header_bytes must be from 1024 to 1048576",
        );
    }
    if limits.header_read_timeout.is_zero() {
        p.at(
            "limits.header_read_timeout",
            "limits.header_read_timeout must be above zero",
        );
    }
    for (key, value) in [
        ("max_inflight", limits.max_inflight),
        ("max_connections", limits.max_connections),
    ] {
        if value == 0 || value > 10_000_000 {
            p.at(
                &format!("limits.{key}"),
                format!("limits.{key} must be from 1 to 10000000"),
            );
        }
    }
    let shutdown_grace = file.shutdown_grace.map(|d| d.0).unwrap_or(DEFAULT_SHUTDOWN_GRACE);
    let mut slos = check_slos(&file, &routes, &consumers, p);
    check_canary_rollbacks(&file, &mut routes, &mut slos, p);
    let alerting = file
        .alerting
        .as_ref()
        .map(|a| check_alerting(a, p))
        .unwrap_or_default();
    Some(Config {
        listeners,
        admin,
        upstreams,
        routes,
        workers,
        shutdown_grace,
        access_log,
        limits,
        consumers,
        jwt,
        call_log,
        tracing,
        llm,
        slos,
        alerting,
        file,
        source: None,
        warnings: Vec::new(),
    })
}

/// A name that is also a metric label value and a file-safe word: letters, digits, `_`,
/// `-`, `.`, at least one.
fn label_safe(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn socket_addr(text: &str, path: &str, p: &mut Problems) -> Option<SocketAddr> {
    match text.parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            p.at(
                path,
                format!("invalid address `{text}`: expected IP:PORT such as 127.0.0.1:8080 or [::1]:8080"),
            );
            None
        }
    }
}

fn check_upstream(name: &str, u: &UpstreamFile, p: &mut Problems) -> Option<UpstreamSpec> {
    let path = format!("upstreams.{name}");
    let mut ok = true;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        p.at(
            &path,
            format!("invalid upstream name `{name}`: use letters, digits, _, - or ."),
        );
        ok = false;
    }
    if u.targets.is_empty() {
        p.at(
            &format!("{path}.targets"),
            "an upstream needs at least one target",
        );
        ok = false;
    }
    let mut targets = Vec::new();
    let mut seen = HashSet::new();
    for (i, t) in u.targets.iter().enumerate() {
        let tpath = format!("{path}.targets[{i}]");
        if t.weight == 0 || t.weight > 1000 {
            p.at(
                &tpath,
                format!("target weight must be from 1 to 1000, got {}", t.weight),
            );
            ok = false;
        }
        match target_authority(&t.addr) {
            Ok(authority) => {
                if !seen.insert(authority.as_str().to_ascii_lowercase()) {
                    p.at(&tpath, format!("target `{}` is listed twice", t.addr));
                    ok = false;
                }
                targets.push(TargetSpec {
                    addr: t.addr.as_str().into(),
                    authority,
                    weight: t.weight,
                });
            }
            Err(message) => {
                p.at(&tpath, message);
                ok = false;
            }
        }
    }
    let balance = match u.balance {
        BalanceFile::RoundRobin => Balance::RoundRobin,
        BalanceFile::LeastRequest => Balance::LeastRequest,
        BalanceFile::P2cEwma => Balance::P2cEwma,
        BalanceFile::ConsistentHash => match parse_hash_key(u.hash_key.as_deref().unwrap_or("ip")) {
            Ok(key) => Balance::ConsistentHash(key),
            Err(message) => {
                p.at(&format!("{path}.hash_key"), message);
                ok = false;
                Balance::ConsistentHash(HashKey::ClientIp)
            }
        },
    };
    if u.hash_key.is_some() && u.balance != BalanceFile::ConsistentHash {
        p.at(
            &format!("{path}.hash_key"),
            "hash_key is only used with `balance: consistent_hash`",
        );
        ok = false;
    }
    let connect_timeout = u.timeouts.connect.map(|d| d.0).unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let request_timeout = u.timeouts.request.map(|d| d.0).unwrap_or(DEFAULT_REQUEST_TIMEOUT);
    for (key, value) in [("connect", connect_timeout), ("request", request_timeout)] {
        if value.is_zero() {
            p.at(
                &format!("{path}.timeouts.{key}"),
                format!("timeouts.{key} must be above zero"),
            );
            ok = false;
        }
    }
    let pool_max_idle_per_target = u.pool.max_idle_per_target.unwrap_or(DEFAULT_POOL_MAX_IDLE);
    if pool_max_idle_per_target > 65_536 {
        p.at(
            &format!("{path}.pool.max_idle_per_target"),
            "pool.max_idle_per_target must be at most 65536",
        );
        ok = false;
    }
    let circuit_breaker = check_breaker(
        u.circuit_breaker.as_ref(),
        &format!("{path}.circuit_breaker"),
        p,
        &mut ok,
    );
    let max_concurrent = u.max_concurrent.unwrap_or(DEFAULT_MAX_CONCURRENT);
    if max_concurrent == 0 || max_concurrent > 1_000_000 {
        p.at(
            &format!("{path}.max_concurrent"),
            "max_concurrent must be from 1 to 1000000",
        );
        ok = false;
    }
    let queue = u.queue.as_ref().map(|q| (q.size, q.timeout.0));
    if let Some((size, timeout)) = queue {
        if size == 0 || size > 1_000_000 {
            p.at(
                &format!("{path}.queue.size"),
                "queue.size must be from 1 to 1000000",
            );
            ok = false;
        }
        if timeout.is_zero() {
            p.at(
                &format!("{path}.queue.timeout"),
                "queue.timeout must be above zero",
            );
            ok = false;
        }
    }
    let health_check = u
        .health_check
        .as_ref()
        .and_then(|h| check_health(h, &format!("{path}.health_check"), p, &mut ok));
    let outlier = check_outlier(
        u.outlier_detection.as_ref(),
        &format!("{path}.outlier_detection"),
        p,
        &mut ok,
    );
    ok.then(|| UpstreamSpec {
        health_check,
        outlier,
        circuit_breaker,
        max_concurrent,
        queue,
        name: name.into(),
        targets,
        balance,
        connect_timeout,
        request_timeout,
        pool_max_idle_per_target,
        pool_idle_timeout: u
            .pool
            .idle_timeout
            .map(|d| d.0)
            .unwrap_or(DEFAULT_POOL_IDLE_TIMEOUT),
    })
}

fn target_authority(addr: &str) -> Result<Authority, String> {
    let bad = || format!("invalid target `{addr}`: expected HOST:PORT such as 127.0.0.1:9001");
    if addr.contains(['/', '@', '?', '#']) {
        return Err(bad());
    }
    let authority: Authority = addr.parse().map_err(|_| bad())?;
    match authority.port_u16() {
        Some(port) if port != 0 && !authority.host().is_empty() => Ok(authority),
        _ => Err(bad()),
    }
}

fn parse_hash_key(text: &str) -> Result<HashKey, String> {
    if text == "ip" {
        return Ok(HashKey::ClientIp);
    }
    if let Some(name) = text.strip_prefix("header:") {
        return HeaderName::try_from(name)
            .map(HashKey::Header)
            .map_err(|_| format!("invalid header name `{name}` in hash_key"));
    }
    if let Some(name) = text.strip_prefix("cookie:") {
        if !name.is_empty() && name.chars().all(|c| c.is_ascii_graphic() && c != '=' && c != ';') {
            return Ok(HashKey::Cookie(name.to_string()));
        }
        return Err(format!("invalid cookie name `{name}` in hash_key"));
    }
    Err(format!(
        "invalid hash_key `{text}`: expected `ip`, `header:NAME` or `cookie:NAME`"
    ))
}

fn check_route(
    route: &RouteFile,
    path: &str,
    upstream_index: &HashMap<String, usize>,
    file: &ConfigFile,
    consumer_names: &HashSet<&str>,
    p: &mut Problems,
) -> Option<RouteSpec> {
    let upstream = match upstream_index.get(&route.upstream) {
        _ if route.llm => {
            let ignored = [
                ("strip_prefix", route.strip_prefix),
                ("request_headers", route.request_headers.is_some()),
                ("response_headers", route.response_headers.is_some()),
                ("retry", route.retry.is_some()),
                ("retry_non_idempotent", route.retry_non_idempotent),
                ("stale_if_error", route.stale_if_error.is_some()),
                ("fallback", route.fallback.is_some()),
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
    };
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
    let stale_if_error = route.stale_if_error.as_ref().map(|f| StaleSpec {
        max_age: f
            .max_age
            .map(|d| d.0)
            .unwrap_or(std::time::Duration::from_secs(300)),
        max_entries: f.max_entries.unwrap_or(1000),
        max_body: f.max_body.unwrap_or(65_536),
    });
    if stale_if_error.is_some() && route.auth != AuthFile::None {
        p.at(
            &format!("{path}.stale_if_error"),
            "stale_if_error cannot be used on a route with auth: a stored answer would be served to other callers",
        );
    }
    if let Some(stale) = &stale_if_error {
        if stale.max_age.is_zero() {
            p.at(
                &format!("{path}.stale_if_error.max_age"),
                "max_age must be above zero",
            );
        }
        if stale.max_entries == 0 || stale.max_entries > 1_000_000 {
            p.at(
                &format!("{path}.stale_if_error.max_entries"),
                "max_entries must be from 1 to 1000000",
            );
        }
        if stale.max_body > 16 * 1024 * 1024 {
            p.at(
                &format!("{path}.stale_if_error.max_body"),
                "max_body must be at most 16777216 (16 MiB)",
            );
        }
    }
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
    let fault = route.fault.as_ref().and_then(|f| {
        check_fault(f.abort.as_ref(), f.delay.as_ref(), f.allow_header)
            .map_err(|problems| {
                for (key, message) in problems {
                    p.at(&format!("{path}.fault.{key}"), message);
                }
            })
            .ok()
    });
    Some(RouteSpec {
        max_body_bytes: route.max_body_bytes.unwrap_or_else(|| global_max_body(file)),
        auth,
        fault,
        canary: route
            .canary
            .as_ref()
            .and_then(|c| check_canary(c, route, path, upstream_index, p)),
        rate_limit,
        stale_if_error,
        retry,
        retry_non_idempotent: route.retry_non_idempotent,
        fallback,
        name: route.name.as_str().into(),
        matcher: matcher?,
        upstream: match route.llm {
            true => None,
            false => Some(upstream?),
        },
        llm: route.llm,
        strip_prefix: route.strip_prefix,
        request_headers: request_headers?,
        response_headers: response_headers?,
    })
}

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

fn check_jwt(file: &JwtFile, secrets: &mut Secrets, p: &mut Problems) -> Option<JwtSpec> {
    use jsonwebtoken::Algorithm;
    let before = p.errors.len();
    let mut algorithms = Vec::new();
    let names = file
        .algorithms
        .clone()
        .unwrap_or_else(|| vec!["RS256".into(), "ES256".into()]);
    for (i, name) in names.iter().enumerate() {
        match name.parse::<Algorithm>() {
            Ok(alg) if matches!(alg, Algorithm::HS256 | Algorithm::RS256 | Algorithm::ES256) => {
                algorithms.push(alg)
            }
            _ => p.at(
                &format!("jwt.algorithms[{i}]"),
                format!("unsupported algorithm `{name}`: use HS256, RS256 or ES256"),
            ),
        }
    }
    let secret = secrets
        .jwt_secret
        .take()
        .and_then(|secret| p.resolved("jwt.secret_env", secret));
    if algorithms.contains(&Algorithm::HS256) && file.secret_env.is_none() {
        p.at(
            "jwt.algorithms",
            "HS256 needs a shared secret: set jwt.secret_env",
        );
    }
    let public_keys: Vec<Vec<u8>> = std::mem::take(&mut secrets.jwt_public_keys)
        .into_iter()
        .enumerate()
        .filter_map(|(i, pem)| p.resolved(&format!("jwt.public_keys[{i}]"), pem))
        .collect();
    let jwks_url = file
        .jwks_url
        .as_ref()
        .and_then(|url| match url.parse::<http::Uri>() {
            Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {
                Some(uri)
            }
            _ => {
                p.at(
                    "jwt.jwks_url",
                    format!("invalid jwks_url `{url}`: expected an http(s) URL"),
                );
                None
            }
        });
    if file.jwks_refresh.is_some_and(|d| d.0.is_zero()) {
        p.at("jwt.jwks_refresh", "jwks_refresh must be above zero");
    }
    if secret.is_none() && public_keys.is_empty() && file.jwks_url.is_none() {
        p.at("jwt", "jwt needs keys: secret_env, public_keys or jwks_url");
    }
    if p.errors.len() != before {
        return None;
    }
    Some(JwtSpec {
        algorithms,
        issuer: file.issuer.clone(),
        audience: file.audience.clone(),
        secret,
        public_keys,
        jwks_url,
        jwks_refresh: file
            .jwks_refresh
            .map(|d| d.0)
            .unwrap_or(std::time::Duration::from_secs(300)),
        consumer_claim: file.consumer_claim.clone().unwrap_or_else(|| "sub".into()),
        leeway: file
            .leeway
            .map(|d| d.0)
            .unwrap_or(std::time::Duration::from_secs(30)),
    })
}

fn global_max_body(file: &ConfigFile) -> u64 {
    file.limits
        .as_ref()
        .and_then(|l| l.max_body_bytes)
        .unwrap_or(DEFAULT_MAX_BODY_BYTES)
}

fn check_consumers(file: &ConfigFile, p: &mut Problems) -> Vec<ConsumerSpec> {
    let mut out = Vec::new();
    let mut names = HashSet::new();
    let mut digests = HashSet::new();
    for (i, consumer) in file.consumers.iter().enumerate() {
        let path = format!("consumers[{i}]");
        if consumer.name.is_empty() || !names.insert(consumer.name.as_str()) {
            p.at(
                &format!("{path}.name"),
                format!("consumer name `{}` is empty or used twice", consumer.name),
            );
        }
        let mut key_digests = Vec::new();
        for (k, key) in consumer.api_keys.iter().enumerate() {
            match parse_digest(key) {
                Some(digest) => {
                    if !digests.insert(digest) {
                        p.at(&format!("{path}.api_keys[{k}]"), "this API key digest is listed twice");
                    }
                    key_digests.push(digest);
                }
                None => p.at(
                    &format!("{path}.api_keys[{k}]"),
                    "an API key must be given as `sha256:<64 hex digits>` (never the key itself; `levee key new` prints one)",
                ),
            }
        }
        let llm_budget = consumer.llm_budget.as_ref().map(|b| {
            if !(b.usd.is_finite() && b.usd >= 0.0) || b.per.0.is_zero() {
                p.at(
                    &format!("{path}.llm_budget"),
                    "llm_budget needs `usd` (not negative) and a `per` period above zero",
                );
            }
            (b.usd, b.per.0)
        });
        let llm_rate_limit = consumer.llm_rate_limit.as_ref().map(|l| {
            if l.tokens_per_minute == Some(0) || l.requests_per_minute == Some(0) {
                p.at(&format!("{path}.llm_rate_limit"), "limits must be above zero");
            }
            (l.tokens_per_minute, l.requests_per_minute)
        });
        out.push(ConsumerSpec {
            name: consumer.name.as_str().into(),
            key_digests,
            llm_budget,
            llm_rate_limit,
        });
    }
    out
}

fn parse_digest(text: &str) -> Option<[u8; 32]> {
    let mut digest = [0u8; 32];
    crate::hex::decode_into(text.strip_prefix("sha256:")?.as_bytes(), &mut digest)?;
    Some(digest)
}

fn check_auth(
    route: &RouteFile,
    path: &str,
    file: &ConfigFile,
    consumer_names: &HashSet<&str>,
    p: &mut Problems,
) -> AuthSpec {
    let extra = route.api_key_header.is_some() || route.consumers.is_some() || route.forward_credentials;
    match route.auth {
        AuthFile::None => {
            if extra {
                p.at(
                    &format!("{path}.auth"),
                    "api_key_header, consumers and forward_credentials need `auth: api_key`",
                );
            }
            AuthSpec::None
        }
        AuthFile::Jwt => {
            if file.jwt.is_none() {
                p.at(
                    &format!("{path}.auth"),
                    "auth: jwt needs the top-level `jwt` settings",
                );
            }
            if route.api_key_header.is_some() {
                p.at(
                    &format!("{path}.api_key_header"),
                    "api_key_header is for auth: api_key",
                );
            }
            AuthSpec::Jwt {
                allowed: route
                    .consumers
                    .as_ref()
                    .map(|list| list.iter().map(|n| Arc::from(n.as_str())).collect()),
                forward_credentials: route.forward_credentials,
            }
        }
        AuthFile::ApiKey => {
            if file.consumers.iter().all(|c| c.api_keys.is_empty()) {
                p.at(
                    &format!("{path}.auth"),
                    "auth: api_key needs at least one consumer with an API key",
                );
            }
            let header = route
                .api_key_header
                .as_ref()
                .and_then(|h| match HeaderName::try_from(h.as_str()) {
                    Ok(name) => Some(name),
                    Err(_) => {
                        p.at(
                            &format!("{path}.api_key_header"),
                            format!("invalid header name `{h}`"),
                        );
                        None
                    }
                });
            let allowed = route.consumers.as_ref().map(|list| {
                list.iter()
                    .enumerate()
                    .filter_map(|(i, name)| {
                        if consumer_names.contains(name.as_str()) {
                            Some(Arc::from(name.as_str()))
                        } else {
                            p.at(
                                &format!("{path}.consumers[{i}]"),
                                format!("unknown consumer `{name}`"),
                            );
                            None
                        }
                    })
                    .collect()
            });
            AuthSpec::ApiKey {
                header,
                allowed,
                forward_credentials: route.forward_credentials,
            }
        }
    }
}

/// Parses `100/s`, `6000/min`, `10/h` into (count, period).
pub fn parse_rate(text: &str) -> Result<(u32, std::time::Duration), String> {
    let bad = || format!("invalid rate `{text}`: expected N/s, N/min or N/h, e.g. 100/s");
    let (count, unit) = text.trim().split_once('/').ok_or_else(bad)?;
    let count: u32 = count.trim().parse().map_err(|_| bad())?;
    let period = match unit.trim() {
        "s" | "sec" | "second" => std::time::Duration::from_secs(1),
        "m" | "min" | "minute" => std::time::Duration::from_secs(60),
        "h" | "hour" => std::time::Duration::from_secs(3600),
        _ => return Err(bad()),
    };
    if count == 0 || count > 10_000_000 {
        return Err(format!(
            "rate `{text}` must allow from 1 to 10000000 requests per period"
        ));
    }
    Ok((count, period))
}

fn check_rate_limit(file: &RateLimitFile, path: &str, p: &mut Problems) -> Option<RateLimitSpec> {
    let before = p.errors.len();
    let (count, period) = match parse_rate(&file.rate) {
        Ok(rate) => rate,
        Err(message) => {
            p.at(&format!("{path}.rate"), message);
            (1, std::time::Duration::from_secs(1))
        }
    };
    let burst = file.burst.unwrap_or(count);
    if burst == 0 || burst > 10_000_000 {
        p.at(&format!("{path}.burst"), "burst must be from 1 to 10000000");
    }
    let key = match file.key.as_deref().unwrap_or("ip") {
        "ip" => LimitKey::ClientIp,
        "route" => LimitKey::Route,
        "consumer" => LimitKey::Consumer,
        other => match other.strip_prefix("header:").map(HeaderName::try_from) {
            Some(Ok(name)) => LimitKey::Header(name),
            _ => {
                p.at(
                    &format!("{path}.key"),
                    format!("invalid rate-limit key `{other}`: expected ip, consumer, header:NAME or route"),
                );
                LimitKey::Route
            }
        },
    };
    let max_keys = file.max_keys.unwrap_or(100_000);
    if max_keys == 0 || max_keys > 10_000_000 {
        p.at(&format!("{path}.max_keys"), "max_keys must be from 1 to 10000000");
    }
    (p.errors.len() == before).then(|| RateLimitSpec {
        quota: levee_resilience::Quota::new(count, period, burst),
        key,
        max_keys,
    })
}

fn check_health(
    file: &HealthCheckFile,
    path: &str,
    p: &mut Problems,
    ok: &mut bool,
) -> Option<HealthCheckSpec> {
    let before = p.errors.len();
    let check_path = match &file.path {
        None => None,
        Some(text) if text.starts_with('/') => match http::uri::PathAndQuery::try_from(text.as_str()) {
            Ok(pq) => Some(pq),
            Err(_) => {
                p.at(
                    &format!("{path}.path"),
                    format!("invalid health check path `{text}`"),
                );
                None
            }
        },
        Some(text) => {
            p.at(
                &format!("{path}.path"),
                format!("health check path `{text}` must start with /"),
            );
            None
        }
    };
    let interval = file
        .interval
        .map(|d| d.0)
        .unwrap_or(std::time::Duration::from_secs(5));
    let timeout = file
        .timeout
        .map(|d| d.0)
        .unwrap_or(std::time::Duration::from_secs(1));
    if interval < std::time::Duration::from_millis(10) {
        p.at(&format!("{path}.interval"), "interval must be at least 10ms");
    }
    if timeout.is_zero() {
        p.at(&format!("{path}.timeout"), "timeout must be above zero");
    }
    let unhealthy_after = file.unhealthy_after.unwrap_or(2);
    let healthy_after = file.healthy_after.unwrap_or(2);
    for (key, value) in [
        ("unhealthy_after", unhealthy_after),
        ("healthy_after", healthy_after),
    ] {
        if value == 0 || value > 100 {
            p.at(&format!("{path}.{key}"), format!("{key} must be from 1 to 100"));
        }
    }
    let expected_statuses = file.expected_statuses.clone().unwrap_or_default();
    for (i, status) in expected_statuses.iter().enumerate() {
        if !(100..600).contains(status) {
            p.at(
                &format!("{path}.expected_statuses[{i}]"),
                format!("invalid status {status}"),
            );
        }
    }
    if p.errors.len() != before {
        *ok = false;
        return None;
    }
    Some(HealthCheckSpec {
        path: check_path,
        interval,
        timeout,
        unhealthy_after,
        healthy_after,
        expected_statuses,
    })
}

fn check_outlier(
    file: Option<&OutlierFile>,
    path: &str,
    p: &mut Problems,
    ok: &mut bool,
) -> Option<OutlierSpec> {
    if file.is_some_and(|f| f.enabled == Some(false)) {
        return None;
    }
    let file = file.cloned().unwrap_or_default();
    let spec = OutlierSpec {
        consecutive_failures: file.consecutive_failures.unwrap_or(5),
        base_ejection: file
            .base_ejection
            .map(|d| d.0)
            .unwrap_or(std::time::Duration::from_secs(30)),
        max_ejection: file
            .max_ejection
            .map(|d| d.0)
            .unwrap_or(std::time::Duration::from_secs(300)),
        max_ejected_percent: file.max_ejected_percent.unwrap_or(50),
    };
    let before = p.errors.len();
    if spec.consecutive_failures == 0 {
        p.at(
            &format!("{path}.consecutive_failures"),
            "consecutive_failures must be at least 1 (or set enabled: false)",
        );
    }
    if spec.base_ejection.is_zero() {
        p.at(
            &format!("{path}.base_ejection"),
            "base_ejection must be above zero",
        );
    }
    if spec.max_ejection < spec.base_ejection {
        p.at(
            &format!("{path}.max_ejection"),
            "max_ejection must be at least base_ejection",
        );
    }
    if spec.max_ejected_percent > 100 {
        p.at(
            &format!("{path}.max_ejected_percent"),
            "max_ejected_percent must be from 0 to 100",
        );
    }
    if p.errors.len() != before {
        *ok = false;
    }
    Some(spec)
}

fn check_breaker(
    file: Option<&CircuitBreakerFile>,
    path: &str,
    p: &mut Problems,
    ok: &mut bool,
) -> Option<BreakerConfig> {
    let defaults = BreakerConfig::default();
    let Some(file) = file else {
        return Some(defaults);
    };
    if file.enabled == Some(false) {
        return None;
    }
    let config = BreakerConfig {
        failure_rate: file.failure_rate.unwrap_or(defaults.failure_rate),
        min_requests: file.min_requests.unwrap_or(defaults.min_requests),
        window: file.window.map(|d| d.0).unwrap_or(defaults.window),
        open_for: file.open_for.map(|d| d.0).unwrap_or(defaults.open_for),
        consecutive_failures: file.consecutive_failures.unwrap_or(defaults.consecutive_failures),
        half_open_probes: file.half_open_probes.unwrap_or(defaults.half_open_probes),
    };
    let mut bad = |key: &str, message: &str| {
        p.at(&format!("{path}.{key}"), message);
        *ok = false;
    };
    if !(config.failure_rate > 0.0 && config.failure_rate <= 1.0) {
        bad(
            "failure_rate",
            "failure_rate must be above 0 and at most 1 (0.5 = half the requests)",
        );
    }
    if config.window.is_zero() || config.window > std::time::Duration::from_secs(3600) {
        bad("window", "window must be from 1s to 1h");
    }
    if config.open_for.is_zero() {
        bad("open_for", "open_for must be above zero");
    }
    if config.half_open_probes == 0 || config.half_open_probes > 1000 {
        bad("half_open_probes", "half_open_probes must be from 1 to 1000");
    }
    Some(config)
}

fn check_retry(file: &RetryFile, path: &str, p: &mut Problems) -> Result<RetryPolicy, ()> {
    let before = p.errors.len();
    let attempts = file.attempts.unwrap_or(DEFAULT_RETRY_ATTEMPTS);
    if attempts == 0 || attempts > 10 {
        p.at(
            &format!("{path}.attempts"),
            "attempts must be from 1 to 10 (the first attempt included)",
        );
    }
    let mut on = RetryOn::default();
    match &file.on {
        None => on.connect_failure = true,
        Some(list) => {
            if list.is_empty() {
                p.at(&format!("{path}.on"), "`on` must name at least one condition");
            }
            for (i, item) in list.iter().enumerate() {
                match item {
                    RetryOnFile::Status(code)
                        if (500..600).contains(code) || *code == 429 || *code == 408 =>
                    {
                        on.statuses.push(*code)
                    }
                    RetryOnFile::Status(code) => p.at(
                        &format!("{path}.on[{i}]"),
                        format!("retrying status {code} makes no sense: use 5xx codes, 408 or 429"),
                    ),
                    RetryOnFile::Name(name) => match name.as_str() {
                        "connect_failure" => on.connect_failure = true,
                        "reset" => on.reset = true,
                        "timeout" => on.timeout = true,
                        "5xx" => on.any_5xx = true,
                        other => {
                            let hint =
                                nearest(other, ["connect_failure", "reset", "timeout", "5xx"].into_iter())
                                    .map(|n| format!(" (did you mean `{n}`?)"))
                                    .unwrap_or_default();
                            p.at(
                                &format!("{path}.on[{i}]"),
                                format!("unknown retry condition `{other}`{hint}: use connect_failure, reset, timeout, 5xx or a status code"),
                            )
                        }
                    },
                }
            }
        }
    }
    let backoff = file.backoff.map(|d| d.0).unwrap_or(DEFAULT_RETRY_BACKOFF);
    let max_backoff = file
        .max_backoff
        .map(|d| d.0)
        .unwrap_or(backoff.saturating_mul(10));
    if max_backoff < backoff {
        p.at(
            &format!("{path}.max_backoff"),
            "max_backoff must be at least backoff",
        );
    }
    let budget = file.budget.unwrap_or(DEFAULT_RETRY_BUDGET);
    if !(0.0..=10.0).contains(&budget) {
        p.at(
            &format!("{path}.budget"),
            "budget must be from 0 to 10 (0.2 = retries add at most 20% load)",
        );
    }
    let min_per_second = file.min_per_second.unwrap_or(DEFAULT_RETRY_MIN_PER_SECOND);
    if !(0.0..=1000.0).contains(&min_per_second) {
        p.at(
            &format!("{path}.min_per_second"),
            "min_per_second must be from 0 to 1000",
        );
    }
    let per_try_timeout = file.per_try_timeout.map(|d| d.0);
    if per_try_timeout.is_some_and(|d| d.is_zero()) {
        p.at(
            &format!("{path}.per_try_timeout"),
            "per_try_timeout must be above zero",
        );
    }
    let max_replay_body = file.max_replay_body.unwrap_or(DEFAULT_MAX_REPLAY_BODY);
    if max_replay_body > 16 * 1024 * 1024 {
        p.at(
            &format!("{path}.max_replay_body"),
            "max_replay_body must be at most 16777216 (16 MiB)",
        );
    }
    if p.errors.len() != before {
        return Err(());
    }
    Ok(RetryPolicy {
        attempts,
        on,
        backoff,
        max_backoff,
        budget,
        min_per_second,
        per_try_timeout,
        max_replay_body,
    })
}

fn check_fallback(file: &FallbackFile, path: &str, p: &mut Problems) -> Result<Fallback, ()> {
    let before = p.errors.len();
    let status = match http::StatusCode::from_u16(file.status.unwrap_or(503)) {
        Ok(status) if (200..600).contains(&status.as_u16()) => status,
        _ => {
            p.at(
                &format!("{path}.status"),
                "fallback status must be from 200 to 599",
            );
            http::StatusCode::SERVICE_UNAVAILABLE
        }
    };
    let content_type = file.content_type.as_deref().unwrap_or("application/json");
    let content_type = match HeaderValue::try_from(content_type) {
        Ok(value) => value,
        Err(_) => {
            p.at(
                &format!("{path}.content_type"),
                format!("invalid content_type `{content_type}`"),
            );
            HeaderValue::from_static("application/json")
        }
    };
    if p.errors.len() != before {
        return Err(());
    }
    Ok(Fallback {
        status,
        body: bytes::Bytes::from(file.body.clone()),
        content_type,
    })
}

/// Checks a fault as written (a route's `fault`, or an experiment's): each problem as the
/// key under `fault` it concerns and a message.
pub fn check_fault(
    abort: Option<&super::file::FaultAbortFile>,
    delay: Option<&super::file::FaultDelayFile>,
    allow_header: bool,
) -> Result<FaultSpec, Vec<(&'static str, &'static str)>> {
    let mut problems = Vec::new();
    let percent_ok = |p: f64| (0.0..=100.0).contains(&p);
    let abort = abort.and_then(|a| {
        if !percent_ok(a.percent) {
            problems.push(("abort.percent", "percent must be from 0 to 100"));
        }
        match http::StatusCode::from_u16(a.status) {
            Ok(status) if (400..=599).contains(&a.status) => Some((a.percent / 100.0, status)),
            _ => {
                problems.push(("abort.status", "status must be from 400 to 599"));
                None
            }
        }
    });
    let delay = delay.map(|d| {
        if !percent_ok(d.percent) {
            problems.push(("delay.percent", "percent must be from 0 to 100"));
        }
        if d.duration.0 > std::time::Duration::from_secs(3600) {
            problems.push(("delay.duration", "duration must be at most 1h"));
        }
        (d.percent / 100.0, d.duration.0)
    });
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(FaultSpec {
        abort,
        delay,
        allow_header,
    })
}

/// What is valid but probably not what was meant: reported by `levee check` (and logged at
/// start and reload) without refusing the config.
fn warn(config: &Config, p: &mut Problems) {
    // Which upstreams some route uses, found once (not once per upstream: that would grow
    // with upstreams times routes).
    let used: HashSet<&str> = config
        .routes
        .iter()
        .flat_map(|r| {
            r.upstream
                .into_iter()
                .chain(r.canary.as_ref().map(|c| c.upstream))
        })
        .filter_map(|i| config.upstreams.get(i))
        .map(|u| &*u.name)
        .collect();
    for (name, upstream) in &config.file.upstreams {
        let path = format!("upstreams.{name}");
        if upstream.targets.len() == 1 && upstream.health_check.is_none() {
            p.at(
                &path,
                format!("upstream `{name}` has one target and no health_check: when that target fails, every request to it fails; add targets or a health check"),
            );
        }
        if !used.contains(name.as_str()) {
            p.at(&path, format!("upstream `{name}` is not used by any route"));
        }
    }
    for (i, route) in config.routes.iter().enumerate() {
        let path = format!("routes[{i}]");
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

/// The `llm` section: providers that exist and are built, models served by them.
fn check_llm(file: &super::file::LlmFile, secrets: &mut Secrets, p: &mut Problems) -> Option<LlmSpec> {
    use super::file::LlmProviderKind;
    let mut providers = Vec::new();
    for (name, provider) in &file.providers {
        let path = format!("llm.providers.{name}");
        if provider.api_version.is_some() && provider.kind != LlmProviderKind::AzureOpenai {
            p.at(
                &format!("{path}.api_version"),
                "api_version is for azure_openai providers",
            );
        }
        let base_url = provider.base_url.trim_end_matches('/').to_owned();
        let valid_url = base_url
            .parse::<http::Uri>()
            .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
        if !valid_url {
            p.at(
                &format!("{path}.base_url"),
                format!("`{}` is not an http(s) URL", provider.base_url),
            );
        }
        let api_key = secrets
            .provider_keys
            .remove(name)
            .and_then(|key| p.resolved(&format!("{path}.api_key_env"), key));
        if provider.kind != LlmProviderKind::OpenaiCompatible && provider.api_key_env.is_none() {
            p.at(
                &path,
                format!("provider `{name}` needs `api_key_env` (its API key)"),
            );
        }
        providers.push(LlmProviderSpec {
            name: Arc::from(name.as_str()),
            kind: provider.kind,
            base_url,
            api_key,
            api_version: provider
                .api_version
                .clone()
                .unwrap_or_else(|| "2024-10-21".into()),
        });
    }
    let mut models = Vec::new();
    let mut names = HashSet::new();
    for (i, model) in file.models.iter().enumerate() {
        let path = format!("llm.models[{i}]");
        if !names.insert(model.name.as_str()) {
            p.at(
                &format!("{path}.name"),
                format!("duplicate model name `{}`", model.name),
            );
        }
        let strategy = match model.strategy.as_deref() {
            None | Some("fallback") => LlmStrategy::Fallback,
            Some("weighted") => LlmStrategy::Weighted,
            Some("lowest_latency") => LlmStrategy::LowestLatency,
            Some(other) => {
                p.at(
                    &format!("{path}.strategy"),
                    format!("unknown strategy `{other}`: use fallback, weighted or lowest_latency"),
                );
                LlmStrategy::Fallback
            }
        };
        let mut breaker_ok = true;
        let breaker = check_breaker(
            model.circuit_breaker.as_ref(),
            &format!("{path}.circuit_breaker"),
            p,
            &mut breaker_ok,
        );
        let weights: Vec<u32> = model.targets.iter().map(|t| t.weight.unwrap_or(1)).collect();
        if strategy == LlmStrategy::Weighted && weights.iter().all(|w| *w == 0) {
            p.at(
                &format!("{path}.targets"),
                "weighted targets need a weight above zero",
            );
        }
        if model.targets.is_empty() {
            p.at(&format!("{path}.targets"), "a model needs at least one target");
        }
        let mut targets = Vec::new();
        for (j, target) in model.targets.iter().enumerate() {
            match providers
                .iter()
                .position(|pr| &*pr.name == target.provider.as_str())
            {
                Some(index) => targets.push((index, Arc::from(target.model.as_str()))),
                None => p.at(
                    &format!("{path}.targets[{j}].provider"),
                    format!("unknown provider `{}`", target.provider),
                ),
            }
        }
        let timeouts = model.timeouts.clone().unwrap_or_default();
        let first_token = timeouts
            .first_token
            .map_or(std::time::Duration::from_secs(30), |d| d.0);
        let total = timeouts
            .total
            .map_or(std::time::Duration::from_secs(300), |d| d.0);
        if first_token.is_zero() || total.is_zero() {
            p.at(&format!("{path}.timeouts"), "timeouts must be above zero");
        }
        models.push(LlmModelSpec {
            name: Arc::from(model.name.as_str()),
            targets,
            strategy,
            weights,
            breaker,
            first_token,
            total,
        });
    }
    let mut pricing = Vec::new();
    for (model, price) in &file.pricing {
        if !(price.input >= 0.0 && price.output >= 0.0 && price.input.is_finite() && price.output.is_finite())
        {
            p.at(
                &format!("llm.pricing.{model}"),
                "prices must be finite and not negative",
            );
        }
        pricing.push((model.clone(), price.input, price.output));
    }
    let cache = file.cache.as_ref().map(|c| {
        let ttl = c
            .ttl
            .as_ref()
            .map_or(std::time::Duration::from_secs(300), |d| d.0);
        let entries = c.max_entries.unwrap_or(10_000);
        let bytes = c.max_bytes.unwrap_or(64 << 20);
        if ttl.is_zero() || entries == 0 || bytes == 0 {
            p.at(
                "llm.cache",
                "llm.cache ttl, max_entries and max_bytes must be above zero",
            );
        }
        (ttl, entries, bytes)
    });
    let mut prompts = Vec::new();
    let mut paths = HashSet::new();
    for (i, prompt) in file.prompts.iter().enumerate() {
        let path = format!("llm.prompts[{i}]");
        if !prompt.path.starts_with('/') || !paths.insert(prompt.path.as_str()) {
            p.at(
                &format!("{path}.path"),
                format!(
                    "prompt path `{}` must start with `/` and be used once",
                    prompt.path
                ),
            );
        }
        if !file.models.iter().any(|m| m.name == prompt.model) {
            p.at(
                &format!("{path}.model"),
                format!("unknown model `{}`", prompt.model),
            );
        }
        match super::prompt::Template::parse(&prompt.template) {
            Ok(template) => prompts.push(LlmPromptSpec {
                name: Arc::from(prompt.name.as_str()),
                path: prompt.path.clone(),
                model: Arc::from(prompt.model.as_str()),
                template,
            }),
            Err(message) => p.at(&format!("{path}.template"), message),
        }
    }
    Some(LlmSpec {
        providers,
        models,
        pricing,
        cache,
        prompts,
    })
}

/// Most SLOs one config may declare (each holds a minute-bucket ring sized to its window).
const MAX_SLOS: usize = 100;

/// The `slos` section: names usable as metric labels, routes and consumers that exist,
/// objectives and windows that make sense.
fn check_slos(
    file: &ConfigFile,
    routes: &[RouteSpec],
    consumers: &[ConsumerSpec],
    p: &mut Problems,
) -> Vec<SloSpec> {
    use super::file::SliFile;
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
        });
    }
    slos
}

/// A route's `canary` (its rollback is checked with the SLOs, in
/// [`check_canary_rollbacks`]).
fn check_canary(
    canary: &super::file::CanaryFile,
    route: &RouteFile,
    path: &str,
    upstream_index: &HashMap<String, usize>,
    p: &mut Problems,
) -> Option<CanarySpec> {
    if route.llm {
        p.at(
            &format!("{path}.canary"),
            "`canary` has no effect on an AI gateway route (`llm: true`): split traffic with a weighted model instead",
        );
        return None;
    }
    if !(0.0..=100.0).contains(&canary.percent) {
        p.at(&format!("{path}.canary.percent"), "percent must be from 0 to 100");
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
        upstream: *index,
        upstream_name: canary.upstream.as_str().into(),
        share: canary.percent / 100.0,
        rollback: None,
        definition: serde_json::to_string(canary).unwrap_or_default(),
    })
}

/// Each canary's `rollback_if`: an SLO of its route, copied into an SLO that counts only the
/// canary's requests (named `<slo>-canary`, without alerts: the rollback is the answer).
fn check_canary_rollbacks(
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
fn check_alerting(a: &super::file::AlertingFile, p: &mut Problems) -> AlertingSpec {
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

/// The `tracing` section: a collector URL and sane batching numbers.
fn check_tracing(t: &TracingFile, p: &mut Problems) -> Option<TracingSpec> {
    let endpoint = match t.otlp_endpoint.parse::<http::Uri>() {
        Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {
            otlp_traces_url(uri)
        }
        _ => None,
    };
    if endpoint.is_none() {
        p.at(
            "tracing.otlp_endpoint",
            format!(
                "`{}` is not an http(s) URL of an OTLP collector (like http://127.0.0.1:4318)",
                t.otlp_endpoint
            ),
        );
    }
    let sample_ratio = t.sample_ratio.unwrap_or(1.0);
    let queue = t.queue.unwrap_or(8192);
    let batch_size = t.batch_size.unwrap_or(512);
    let export_interval = t
        .export_interval
        .as_ref()
        .map_or(std::time::Duration::from_secs(1), |d| d.0);
    let export_timeout = t
        .export_timeout
        .as_ref()
        .map_or(std::time::Duration::from_secs(5), |d| d.0);
    let service_name = t.service_name.clone().unwrap_or_else(|| "levee".into());
    if !(0.0..=1.0).contains(&sample_ratio) {
        p.at("tracing.sample_ratio", "tracing.sample_ratio must be from 0 to 1");
    }
    if queue == 0 || queue > 1_048_576 {
        p.at("tracing.queue", "tracing.queue must be from 1 to 1048576");
    }
    if batch_size == 0 || batch_size > 65_536 {
        p.at("tracing.batch_size", "tracing.batch_size must be from 1 to 65536");
    }
    if export_interval.is_zero() || export_timeout.is_zero() {
        p.at(
            "tracing",
            "tracing.export_interval and export_timeout must be above zero",
        );
    }
    if service_name.is_empty() {
        p.at("tracing.service_name", "tracing.service_name must not be empty");
    }
    Some(TracingSpec {
        endpoint: endpoint?,
        sample_ratio,
        parent_based: t.parent_based.unwrap_or(true),
        service_name,
        queue,
        batch_size,
        export_interval,
        export_timeout,
    })
}

/// A base collector URL gets the OTLP/HTTP traces path; a URL with a path is used as is (the
/// same rule as `OTEL_EXPORTER_OTLP_ENDPOINT` versus `..._TRACES_ENDPOINT`).
fn otlp_traces_url(uri: http::Uri) -> Option<http::Uri> {
    if uri.path() != "/" || uri.query().is_some() {
        return Some(uri);
    }
    let mut parts = uri.into_parts();
    parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/v1/traces"));
    http::Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::super::parse::unknown_key_message;
    use super::*;

    #[test]
    fn unknown_key_suggests_nearest() {
        let msg = unknown_key_message(
            "routes[0]: unknown field `upstreem`, expected one of `name`, `match`, `upstream`, `strip_prefix`",
        )
        .unwrap();
        assert_eq!(
            msg,
            "routes[0]: unknown key `upstreem` (did you mean `upstream`?)"
        );
    }

    #[test]
    fn hash_keys_parse() {
        assert_eq!(parse_hash_key("ip"), Ok(HashKey::ClientIp));
        assert_eq!(
            parse_hash_key("header:x-user"),
            Ok(HashKey::Header(HeaderName::from_static("x-user")))
        );
        assert_eq!(parse_hash_key("cookie:sid"), Ok(HashKey::Cookie("sid".into())));
        assert!(parse_hash_key("body").is_err());
    }

    #[test]
    fn targets_need_host_and_port() {
        assert!(target_authority("127.0.0.1:9001").is_ok());
        assert!(target_authority("backend.internal:80").is_ok());
        assert!(target_authority("127.0.0.1").is_err());
        assert!(target_authority("http://x:1").is_err());
        assert!(target_authority("x:0").is_err());
    }
}
