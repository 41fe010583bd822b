//! A route's resilience and traffic policies: `retry`, `fallback`, `stale_if_error` and
//! `rate_limit`.

use http::{HeaderName, HeaderValue};

use super::Problems;
use crate::config::file::{AuthFile, FallbackFile, RateLimitFile, RetryFile, RetryOnFile, RouteFile};
use crate::config::parse::nearest;
use crate::config::spec::*;

/// A route's `retry`; `Err` once its problems are reported.
pub(super) fn check_retry(file: &RetryFile, path: &str, p: &mut Problems) -> Result<RetryPolicy, ()> {
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
                        other if other.starts_with("grpc:") => {
                            match crate::grpc::code_by_name(other.trim_start_matches("grpc:")) {
                                Some(0) | None => p.at(
                                    &format!("{path}.on[{i}]"),
                                    format!("unknown gRPC status in `{other}`: use a code name such as grpc:unavailable or grpc:resource_exhausted"),
                                ),
                                Some(code) => on.grpc.push(code),
                            }
                        }
                        other => {
                            let hint =
                                nearest(other, ["connect_failure", "reset", "timeout", "5xx"].into_iter())
                                    .map(|n| format!(" (did you mean `{n}`?)"))
                                    .unwrap_or_default();
                            p.at(
                                &format!("{path}.on[{i}]"),
                                format!("unknown retry condition `{other}`{hint}: use connect_failure, reset, timeout, 5xx, a status code or grpc:STATUS"),
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

/// A route's `fallback` answer; `Err` once its problems are reported.
pub(super) fn check_fallback(file: &FallbackFile, path: &str, p: &mut Problems) -> Result<Fallback, ()> {
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

/// A route's `stale_if_error`: bounded, and never on a route with auth.
pub(super) fn check_stale(route: &RouteFile, path: &str, p: &mut Problems) -> Option<StaleSpec> {
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
    stale_if_error
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

/// A route's `rate_limit`: its rate, burst, key and key count.
pub(super) fn check_rate_limit(file: &RateLimitFile, path: &str, p: &mut Problems) -> Option<RateLimitSpec> {
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
