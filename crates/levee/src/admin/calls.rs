//! The call log over the admin API: `GET /api/v1/calls` (the calls, filtered) and
//! `GET /api/v1/analytics` (aggregates per time bucket and group), with the parsing of their
//! query parameters. Both read SQLite, or in cluster mode the fleet's PostgreSQL
//! ([`CallReader`]), and block while they do, so the route table runs them on the blocking
//! pool.

use http::header::HeaderValue;
use http::{Response, StatusCode};

use super::routes::Call;
use super::{api, json_value};
use crate::body::ResponseBody;
use crate::cluster::calls::CallReader;
use crate::edge::error_response;
use crate::observability::call_log::{AnalyticsQuery, CallQuery, GroupBy};
use crate::state::SharedState;

/// The call log's reader, or the 404 that says there is none.
fn call_store<'a>(
    state: &'a SharedState,
    request_id: &HeaderValue,
) -> Result<&'a CallReader, Box<Response<ResponseBody>>> {
    state.calls.as_ref().ok_or_else(|| {
        Box::new(error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            "There is no call log: set data_dir (or cluster.postgres) in the config.",
            request_id,
        ))
    })
}

/// `GET /api/v1/calls`: the call log, newest first, filtered by the query parameters.
pub(super) fn calls(call: &Call) -> Response<ResponseBody> {
    let (state, query, request_id) = (&*call.state, call.query.as_str(), &call.request_id);
    let bad = |message: String| error_response(StatusCode::BAD_REQUEST, "bad_request", &message, request_id);
    let store = match call_store(state, request_id) {
        Ok(store) => store,
        Err(response) => return *response,
    };
    let filter = match parse_call_query(query) {
        Ok(filter) => filter,
        Err(message) => return bad(message),
    };
    let result = store.query(&filter);
    match result {
        Ok(rows) => json_value(StatusCode::OK, &api::Calls { calls: rows }),
        Err(error) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "call_log_unavailable",
            &error.to_string(),
            request_id,
        ),
    }
}

/// `GET /api/v1/analytics`: requests, 5xx rate, latency percentiles and bytes per time
/// bucket and group, computed from the call log.
pub(super) fn analytics(call: &Call) -> Response<ResponseBody> {
    let (state, query, request_id) = (&*call.state, call.query.as_str(), &call.request_id);
    let store = match call_store(state, request_id) {
        Ok(store) => store,
        Err(response) => return *response,
    };
    let request = match parse_analytics_query(query) {
        Ok(request) => request,
        Err(message) => return error_response(StatusCode::BAD_REQUEST, "bad_request", &message, request_id),
    };
    let result = store.analytics(&request);
    match result {
        Ok((series, truncated)) => json_value(
            StatusCode::OK,
            &api::Analytics {
                since_ms: request.since_ms,
                until_ms: request.until_ms,
                bucket_ms: request.bucket_ms,
                truncated,
                series,
            },
        ),
        Err(error) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "call_log_unavailable",
            &error.to_string(),
            request_id,
        ),
    }
}

/// Parses analytics parameters: `group_by` (route, consumer, upstream, status, model; default
/// route), `bucket` (1m, 1h, 1d; default 1m), `route` (only its calls), `since`/`until`
/// (default: the last hour).
pub fn parse_analytics_query(query: &str) -> Result<AnalyticsQuery, String> {
    let now = crate::observability::call_log::now_ms();
    let mut request = AnalyticsQuery {
        since_ms: now - 3_600_000,
        until_ms: now + 1,
        bucket_ms: 60_000,
        group_by: GroupBy::Route,
        route: None,
    };
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let (key, value): (&str, String) = (&key, value.into_owned());
        match key {
            "group_by" => {
                request.group_by = match value.as_str() {
                    "route" => GroupBy::Route,
                    "consumer" => GroupBy::Consumer,
                    "upstream" => GroupBy::Upstream,
                    "status" => GroupBy::Status,
                    "model" => GroupBy::Model,
                    _ => {
                        return Err(
                            "parameter `group_by` must be route, consumer, upstream, status or model".into(),
                        )
                    }
                }
            }
            "bucket" => {
                request.bucket_ms = match value.as_str() {
                    "1m" => 60_000,
                    "1h" => 3_600_000,
                    "1d" => 86_400_000,
                    _ => return Err("parameter `bucket` must be 1m, 1h or 1d".into()),
                }
            }
            "route" => request.route = Some(value),
            "since" | "until" => {
                let ms = parse_time(key, &value)?;
                if key == "since" {
                    request.since_ms = ms;
                } else {
                    request.until_ms = ms;
                }
            }
            other => {
                return Err(format!(
                    "unknown parameter `{other}`: use group_by, bucket, route, since, until"
                ))
            }
        }
    }
    if request.until_ms <= request.since_ms {
        return Err("parameter `until` must be after `since`".into());
    }
    Ok(request)
}

pub(super) fn parse_time(key: &str, value: &str) -> Result<i64, String> {
    if let Ok(ms) = value.parse::<i64>() {
        return Ok(ms);
    }
    humantime::parse_rfc3339_weak(value)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .ok_or_else(|| {
            format!(
                "parameter `{key}` must be RFC 3339 (2026-11-23T12:00:00Z) or milliseconds since the epoch"
            )
        })
}

/// Parses the call-log filters; an unknown or malformed parameter is an error naming it.
pub fn parse_call_query(query: &str) -> Result<CallQuery, String> {
    let mut filter = CallQuery {
        limit: 100,
        ..CallQuery::default()
    };
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let (key, value): (&str, String) = (&key, value.into_owned());
        let time = |v: &str| parse_time(key, v);
        match key {
            "route" => filter.route = Some(value),
            "consumer" => filter.consumer = Some(value),
            "status" => {
                filter.status = Some(
                    value
                        .parse::<u16>()
                        .ok()
                        .filter(|s| (100..600).contains(s))
                        .ok_or("parameter `status` must be a status code from 100 to 599")?,
                )
            }
            "since" => filter.since_ms = Some(time(&value)?),
            "until" => filter.until_ms = Some(time(&value)?),
            "limit" => {
                filter.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|l| (1..=1000).contains(l))
                    .ok_or("parameter `limit` must be from 1 to 1000")?
            }
            other => {
                return Err(format!(
                    "unknown parameter `{other}`: use route, consumer, status, since, until, limit"
                ))
            }
        }
    }
    Ok(filter)
}
