//! The `upstreams` section: targets, load balancing, timeouts and the connection pool, the
//! bulkhead, health checks, outlier ejection and circuit breakers (the breaker settings are
//! shared with LLM models).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use http::uri::Authority;
use http::HeaderName;

use levee_resilience::BreakerConfig;

use super::upstream_transport::check_transport;
use super::Problems;
use crate::config::file::{
    BalanceFile, CircuitBreakerFile, ConfigFile, HealthCheckFile, HealthKindFile, OutlierFile, TargetFile,
    UpstreamFile,
};
use crate::config::secrets::UpstreamTlsFiles;
use crate::config::spec::*;

/// Every upstream that passes its checks, with each one's index by name.
pub(super) fn check_upstreams(
    file: &ConfigFile,
    mut tls_files: BTreeMap<String, UpstreamTlsFiles>,
    p: &mut Problems,
) -> (Vec<UpstreamSpec>, HashMap<String, usize>) {
    let mut upstreams = Vec::new();
    let mut upstream_index = HashMap::new();
    for (name, upstream) in &file.upstreams {
        if let Some(spec) = check_upstream(name, upstream, tls_files.remove(name), p) {
            upstream_index.insert(name.clone(), upstreams.len());
            upstreams.push(spec);
        }
    }
    (upstreams, upstream_index)
}

/// One upstream; `None` (after reporting why) when any of its settings is wrong.
fn check_upstream(
    name: &str,
    u: &UpstreamFile,
    tls_files: Option<UpstreamTlsFiles>,
    p: &mut Problems,
) -> Option<UpstreamSpec> {
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
    let targets = check_targets(&u.targets, &path, p, &mut ok);
    let balance = check_balance(u, &path, p, &mut ok);
    let (connect_timeout, request_timeout) = check_timeouts(u, &path, p, &mut ok);
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
    let (max_concurrent, queue) = check_bulkhead(u, &path, p, &mut ok);
    let (protocol, tls, http2) = check_transport(u, &path, tls_files, p, &mut ok);
    let health_check = u
        .health_check
        .as_ref()
        .and_then(|h| check_health(h, &format!("{path}.health_check"), p, &mut ok));
    let grpc_checked = health_check.as_ref().is_some_and(|h| h.grpc_service.is_some());
    if grpc_checked && !protocol.may_use_h2(tls.is_some()) {
        p.at(
            &format!("{path}.health_check.kind"),
            "gRPC health checks need HTTP/2: set `protocol: h2c` (or h2 with tls)",
        );
        ok = false;
    }
    let outlier = check_outlier(
        u.outlier_detection.as_ref(),
        &format!("{path}.outlier_detection"),
        p,
        &mut ok,
    );
    ok.then(|| UpstreamSpec {
        protocol,
        tls,
        http2,
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

/// An upstream's `targets`: at least one, each a `HOST:PORT` listed once, with a weight.
fn check_targets(targets: &[TargetFile], path: &str, p: &mut Problems, ok: &mut bool) -> Vec<TargetSpec> {
    if targets.is_empty() {
        p.at(
            &format!("{path}.targets"),
            "an upstream needs at least one target",
        );
        *ok = false;
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (i, t) in targets.iter().enumerate() {
        let tpath = format!("{path}.targets[{i}]");
        if t.weight == 0 || t.weight > 1000 {
            p.at(
                &tpath,
                format!("target weight must be from 1 to 1000, got {}", t.weight),
            );
            *ok = false;
        }
        match target_authority(&t.addr) {
            Ok(authority) => {
                if !seen.insert(authority.as_str().to_ascii_lowercase()) {
                    p.at(&tpath, format!("target `{}` is listed twice", t.addr));
                    *ok = false;
                }
                out.push(TargetSpec {
                    addr: t.addr.as_str().into(),
                    authority,
                    weight: t.weight,
                });
            }
            Err(message) => {
                p.at(&tpath, message);
                *ok = false;
            }
        }
    }
    out
}

/// An upstream's `balance`, and its `hash_key` (for `consistent_hash` only).
fn check_balance(u: &UpstreamFile, path: &str, p: &mut Problems, ok: &mut bool) -> Balance {
    let balance = match u.balance {
        BalanceFile::RoundRobin => Balance::RoundRobin,
        BalanceFile::LeastRequest => Balance::LeastRequest,
        BalanceFile::P2cEwma => Balance::P2cEwma,
        BalanceFile::ConsistentHash => match parse_hash_key(u.hash_key.as_deref().unwrap_or("ip")) {
            Ok(key) => Balance::ConsistentHash(key),
            Err(message) => {
                p.at(&format!("{path}.hash_key"), message);
                *ok = false;
                Balance::ConsistentHash(HashKey::ClientIp)
            }
        },
    };
    if u.hash_key.is_some() && u.balance != BalanceFile::ConsistentHash {
        p.at(
            &format!("{path}.hash_key"),
            "hash_key is only used with `balance: consistent_hash`",
        );
        *ok = false;
    }
    balance
}

/// An upstream's (connect, request) timeouts.
fn check_timeouts(u: &UpstreamFile, path: &str, p: &mut Problems, ok: &mut bool) -> (Duration, Duration) {
    let connect_timeout = u.timeouts.connect.map(|d| d.0).unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let request_timeout = u.timeouts.request.map(|d| d.0).unwrap_or(DEFAULT_REQUEST_TIMEOUT);
    for (key, value) in [("connect", connect_timeout), ("request", request_timeout)] {
        if value.is_zero() {
            p.at(
                &format!("{path}.timeouts.{key}"),
                format!("timeouts.{key} must be above zero"),
            );
            *ok = false;
        }
    }
    (connect_timeout, request_timeout)
}

/// An upstream's bulkhead: `max_concurrent`, and the `queue` that waits for a place.
fn check_bulkhead(
    u: &UpstreamFile,
    path: &str,
    p: &mut Problems,
    ok: &mut bool,
) -> (usize, Option<(usize, Duration)>) {
    let max_concurrent = u.max_concurrent.unwrap_or(DEFAULT_MAX_CONCURRENT);
    if max_concurrent == 0 || max_concurrent > 1_000_000 {
        p.at(
            &format!("{path}.max_concurrent"),
            "max_concurrent must be from 1 to 1000000",
        );
        *ok = false;
    }
    let queue = u.queue.as_ref().map(|q| (q.size, q.timeout.0));
    if let Some((size, timeout)) = queue {
        if size == 0 || size > 1_000_000 {
            p.at(
                &format!("{path}.queue.size"),
                "queue.size must be from 1 to 1000000",
            );
            *ok = false;
        }
        if timeout.is_zero() {
            p.at(
                &format!("{path}.queue.timeout"),
                "queue.timeout must be above zero",
            );
            *ok = false;
        }
    }
    (max_concurrent, queue)
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

fn check_health(
    file: &HealthCheckFile,
    path: &str,
    p: &mut Problems,
    ok: &mut bool,
) -> Option<HealthCheckSpec> {
    let before = p.errors.len();
    let kind = file.kind.unwrap_or(if file.path.is_some() {
        HealthKindFile::Http
    } else {
        HealthKindFile::Tcp
    });
    match (kind, &file.path, &file.service) {
        (HealthKindFile::Http, None, _) => p.at(path, "a health check of kind http needs a `path` to GET"),
        (HealthKindFile::Tcp | HealthKindFile::Grpc, Some(_), _) => p.at(
            &format!("{path}.path"),
            "`path` is only used by health checks of kind http",
        ),
        (HealthKindFile::Http | HealthKindFile::Tcp, _, Some(_)) => p.at(
            &format!("{path}.service"),
            "`service` is only used by health checks of kind grpc",
        ),
        _ => {}
    }
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
        grpc_service: (kind == HealthKindFile::Grpc).then(|| file.service.clone().unwrap_or_default()),
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

/// A circuit breaker (an upstream's or an LLM model's): the defaults when not given, `None`
/// when turned off.
pub(super) fn check_breaker(
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

#[cfg(test)]
mod tests {
    use super::*;

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
