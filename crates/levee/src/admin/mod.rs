//! The admin listener: liveness, readiness, Prometheus metrics and the admin REST API
//! (described by [`api`], which also generates its OpenAPI document).
//!
//! It runs on its own thread and event loop so that a saturated data plane can still be
//! observed and probed.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub mod api;

use crate::body::ResponseBody;
use crate::edge::error_response;
use crate::observability::call_log::{AnalyticsQuery, CallQuery, CallStore, GroupBy};
use crate::server::SharedState;

/// Serves the admin API until `shutdown` turns true.
pub fn serve_blocking(
    socket: std::net::TcpListener,
    state: Arc<SharedState>,
    shutdown: watch::Receiver<bool>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(error) => {
            tracing::error!(%error, "admin listener could not start its event loop");
            return;
        }
    };
    runtime.block_on(serve(socket, state, shutdown));
}

async fn serve(socket: std::net::TcpListener, state: Arc<SharedState>, mut shutdown: watch::Receiver<bool>) {
    let listener = match TcpListener::from_std(socket) {
        Ok(l) => l,
        Err(error) => {
            tracing::error!(%error, "cannot register admin listener");
            return;
        }
    };
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let state = state.clone();
            async move {
                // A reload reads and compiles the config: off the admin event loop.
                if request.uri().path() == RELOAD && request.method() == Method::POST {
                    let request_id = crate::headers::request_id(request.headers());
                    if !authorized(&state, &request) {
                        return Ok::<_, Infallible>(unauthorized(&request_id));
                    }
                    let reloaded = tokio::task::spawn_blocking(move || crate::reload::reload(&state)).await;
                    return Ok(match reloaded {
                        Ok(result) => reload_answer(result, &request_id),
                        Err(_) => error_response(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "internal",
                            "The reload did not finish.",
                            &request_id,
                        ),
                    });
                }
                let experiments = request.uri().path().starts_with(EXPERIMENTS);
                if experiments && matches!(*request.method(), Method::POST | Method::DELETE) {
                    let request_id = crate::headers::request_id(request.headers());
                    if !authorized(&state, &request) {
                        return Ok(unauthorized(&request_id));
                    }
                    return Ok(change_experiments(&state, request, &request_id).await);
                }
                // Call-log and analytics queries read SQLite, for seconds on a large log:
                // off the admin event loop too, so /healthz, /readyz and /metrics (liveness
                // probes, scrapes) keep answering while one runs.
                if matches!(request.uri().path(), CALLS | ANALYTICS) {
                    let request_id = crate::headers::request_id(request.headers());
                    let answered = tokio::task::spawn_blocking(move || route(&state, request)).await;
                    return Ok(answered.unwrap_or_else(|_| {
                        error_response(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "internal",
                            "The call log query did not finish.",
                            &request_id,
                        )
                    }));
                }
                Ok::<_, Infallible>(route(&state, request))
            }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// `POST` here reloads the config file.
const RELOAD: &str = "/api/v1/config/reload";
/// The call log and its analytics: SQLite queries, run on the blocking pool.
const CALLS: &str = "/api/v1/calls";
const ANALYTICS: &str = "/api/v1/analytics";
/// `POST` starts an experiment; `GET`/`DELETE` `EXPERIMENTS/{id}` show and stop one.
const EXPERIMENTS: &str = "/api/v1/experiments";

/// Largest experiment request body read.
const MAX_EXPERIMENT_BODY: usize = 64 * 1024;

/// `POST /api/v1/experiments` and `DELETE /api/v1/experiments/{id}`.
async fn change_experiments(
    state: &SharedState,
    request: Request<Incoming>,
    request_id: &HeaderValue,
) -> Response<ResponseBody> {
    use crate::chaos::experiments::{ExperimentError, ExperimentRequest};
    use http_body_util::BodyExt;
    let path = request.uri().path().to_owned();
    if request.method() == Method::POST && state.draining.load(Ordering::SeqCst) {
        // The SLO thread that would end it stops with the gateway.
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "The gateway is stopping: no experiment can start.",
            request_id,
        );
    }
    let answer_error = |error: ExperimentError| {
        let (status, code) = match &error {
            ExperimentError::Invalid(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ExperimentError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ExperimentError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
        };
        error_response(status, code, &error.to_string(), request_id)
    };
    if request.method() == Method::DELETE {
        let id = path.strip_prefix(EXPERIMENTS).unwrap_or("").trim_matches('/');
        return match state.slo.experiments.stop(id, &state.slo) {
            Ok(view) => json_value(StatusCode::OK, &view),
            Err(error) => answer_error(error),
        };
    }
    if path.trim_end_matches('/') != EXPERIMENTS {
        return error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            "No such admin endpoint.",
            request_id,
        );
    }
    let body = match http_body_util::Limited::new(request.into_body(), MAX_EXPERIMENT_BODY)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "The body could not be read (at most 64 KiB).",
                request_id,
            )
        }
    };
    let parsed: ExperimentRequest = match serde_json::from_slice(&body) {
        Ok(parsed) => parsed,
        Err(error) => return answer_error(ExperimentError::Invalid(format!("invalid experiment: {error}"))),
    };
    let gateway = state.gateway.load();
    let routes: Vec<&str> = gateway.config.routes.iter().map(|r| &*r.name).collect();
    match state.slo.experiments.start(parsed, &routes, &state.slo) {
        Ok(view) => json_value(StatusCode::CREATED, &view),
        Err(error) => answer_error(error),
    }
}

/// `GET /api/v1/canaries`.
fn canaries_view(state: &SharedState) -> api::Canaries {
    let gateway = state.gateway.load();
    let canaries = gateway
        .canaries
        .iter()
        .flatten()
        .map(|canary| {
            let rollback = canary.rolled_back();
            let rule = canary.spec.rollback.as_ref();
            let status = rule
                .and_then(|r| state.slo.get(&r.slo))
                .and_then(|slo| slo.status());
            let counts = status
                .as_ref()
                .zip(rule)
                .and_then(|(s, r)| s.burn_counts(r.window))
                .unwrap_or_default();
            api::CanaryView {
                route: canary.route.to_string(),
                upstream: canary.spec.upstream_name.to_string(),
                percent: (canary.spec.share * 100.0 * 1e6).round() / 1e6,
                state: if rollback.is_some() {
                    "rolled_back"
                } else {
                    "active"
                },
                rolled_back_at: rollback.as_ref().map(|(at, _)| crate::slo::alerts::rfc3339(*at)),
                reason: rollback.map(|(_, reason)| reason),
                slo: rule.map(|r| r.slo.to_string()),
                burn_rate: status.as_ref().zip(rule).and_then(|(s, r)| s.burn_rate(r.window)),
                requests: counts.total,
                bad: counts.bad,
            }
        })
        .collect();
    api::Canaries { canaries }
}

/// `GET /api/v1/slos`.
fn slos_view(state: &SharedState) -> api::Slos {
    use crate::config::spec::Sli;
    let slos = state
        .slo
        .slos()
        .all
        .iter()
        .map(|slo| {
            let spec = &slo.spec;
            let status = slo.status();
            let alerts = slo.alerts();
            let alerts_firing = [("page", &alerts.page), ("ticket", &alerts.ticket)]
                .into_iter()
                .filter_map(|(severity, a)| {
                    a.firing_since.map(|since| api::AlertView {
                        severity,
                        since: crate::slo::alerts::rfc3339(since),
                    })
                })
                .collect();
            let window = status.as_ref().map(|s| s.window).unwrap_or_default();
            api::SloView {
                name: spec.name.to_string(),
                route: spec.route.to_string(),
                consumer: spec.consumer.as_deref().map(str::to_owned),
                upstream: spec.upstream.as_deref().map(str::to_owned),
                sli: match spec.sli {
                    Sli::Availability => "availability".into(),
                    Sli::LatencyBelow(d) => format!("latency_below {}ms", d.as_millis()),
                },
                objective: spec.objective,
                window: crate::slo::window_text(spec.window),
                sli_now: status.as_ref().and_then(|s| s.sli).map(|r| r * 100.0),
                events: api::EventsView {
                    total: window.total,
                    good: window.good(),
                    bad: window.bad,
                    injected: window.injected,
                    injected_bad: window.injected_bad,
                },
                error_budget: api::BudgetView {
                    remaining: status.as_ref().map_or(1.0, |s| s.budget_remaining),
                    remaining_events: status.as_ref().map_or(0.0, |s| s.budget_remaining_events),
                },
                burn_rates: crate::slo::BURN_WINDOWS
                    .iter()
                    .enumerate()
                    .map(|(i, (name, _))| {
                        let counts = status
                            .as_ref()
                            .and_then(|s| s.burn_counts.get(i).copied())
                            .unwrap_or_default();
                        api::BurnRateView {
                            window: name,
                            burn_rate: status
                                .as_ref()
                                .and_then(|s| s.burn_rates.get(i).copied())
                                .unwrap_or(0.0),
                            total: counts.total,
                            bad: counts.bad,
                        }
                    })
                    .collect(),
                alerts_firing,
                evaluated_at: status
                    .as_ref()
                    .map(|s| crate::slo::alerts::rfc3339(s.evaluated_at_ms)),
            }
        })
        .collect();
    api::Slos { slos }
}

fn unauthorized(request_id: &HeaderValue) -> Response<ResponseBody> {
    let mut response = error_response(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "The admin API needs `Authorization: Bearer <admin token>`.",
        request_id,
    );
    response
        .headers_mut()
        .insert(http::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// `POST /api/v1/config/reload`: 200 `{"version": N}`, or 400 with every problem in
/// `errors` (and the usual error object) while the running config stays.
fn reload_answer(
    result: Result<u64, crate::reload::ReloadError>,
    request_id: &HeaderValue,
) -> Response<ResponseBody> {
    match result {
        Ok(version) => json_value(StatusCode::OK, &api::Reloaded { version }),
        Err(error) => {
            let errors = error.messages();
            json_value(
                StatusCode::BAD_REQUEST,
                &api::ReloadRefused {
                    error: api::ErrorDetail {
                        code: "invalid_config".into(),
                        message: format!(
                            "The config was not reloaded ({} problem(s)); the running config is kept.",
                            errors.len()
                        ),
                        request_id: request_id.to_str().unwrap_or("").into(),
                        kind: "invalid_request_error".into(),
                    },
                    errors,
                },
            )
        }
    }
}

fn route(state: &SharedState, request: Request<Incoming>) -> Response<ResponseBody> {
    let request_id = crate::headers::request_id(request.headers());
    let path = request.uri().path();
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let (allowed, message) = match path {
            RELOAD => ("POST", "A reload is a POST."),
            EXPERIMENTS => (
                "GET, HEAD, POST",
                "Experiments are listed with GET and started with POST.",
            ),
            p if p.starts_with("/api/v1/experiments/") => (
                "GET, HEAD, DELETE",
                "An experiment is shown with GET and stopped with DELETE.",
            ),
            _ => ("GET, HEAD", "This admin endpoint only answers GET."),
        };
        let mut response = error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            message,
            &request_id,
        );
        response
            .headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static(allowed));
        return response;
    }
    if path.starts_with("/api/") && !authorized(state, &request) {
        return unauthorized(&request_id);
    }
    match request.uri().path() {
        "/healthz" => json(StatusCode::OK, r#"{"status":"ok"}"#),
        "/readyz" => {
            if state.draining.load(Ordering::SeqCst) {
                json(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"draining"}"#)
            } else {
                json(StatusCode::OK, r#"{"status":"ready"}"#)
            }
        }
        RELOAD => {
            let mut response = error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "A reload is a POST.",
                &request_id,
            );
            response
                .headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static("POST"));
            response
        }
        CALLS => calls(state, request.uri().query().unwrap_or(""), &request_id),
        ANALYTICS => analytics(state, request.uri().query().unwrap_or(""), &request_id),
        "/api/v1/upstreams" => json_value(StatusCode::OK, &state.upstreams_view()),
        "/api/v1/routes" => {
            let gateway = state.gateway.load();
            let routes = gateway.config.shown.get("routes").cloned().unwrap_or_default();
            json_value(
                StatusCode::OK,
                &api::Routes {
                    version: gateway.version,
                    routes,
                },
            )
        }
        "/api/v1/config" => {
            let gateway = state.gateway.load();
            json_value(
                StatusCode::OK,
                &api::ActiveConfig {
                    version: gateway.version,
                    source: gateway.config.source.as_ref().map(|p| p.display().to_string()),
                    config: (*gateway.config.shown).clone(),
                },
            )
        }
        "/openapi.json" => json_value(StatusCode::OK, &api::openapi()),
        "/api/v1/slos" => json_value(StatusCode::OK, &slos_view(state)),
        "/api/v1/canaries" => json_value(StatusCode::OK, &canaries_view(state)),
        EXPERIMENTS => json_value(
            StatusCode::OK,
            &api::Experiments {
                experiments: state.slo.experiments.views(),
            },
        ),
        path if path.starts_with("/api/v1/experiments/") => {
            let id = path.trim_start_matches("/api/v1/experiments/");
            match state.slo.experiments.view(id) {
                Some(view) => json_value(StatusCode::OK, &view),
                None => error_response(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    &format!("No experiment with id `{id}`."),
                    &request_id,
                ),
            }
        }
        "/metrics" => {
            let mut text = state.metrics.render_with(&state.gauges());
            state.slo.render_metrics(&mut text);
            let mut response = Response::new(ResponseBody::full(text));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        _ => error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            "No such admin endpoint.",
            &request_id,
        ),
    }
}

/// The call log's read connection, or the 404 that says there is none.
fn call_store<'a>(
    state: &'a SharedState,
    request_id: &HeaderValue,
) -> Result<&'a std::sync::Mutex<crate::observability::call_log::SqliteStore>, Box<Response<ResponseBody>>> {
    state.calls.as_ref().ok_or_else(|| {
        Box::new(error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            "There is no call log: set data_dir in the config.",
            request_id,
        ))
    })
}

/// `GET /api/v1/calls`: the call log, newest first, filtered by the query parameters.
fn calls(state: &SharedState, query: &str, request_id: &HeaderValue) -> Response<ResponseBody> {
    let bad = |message: String| error_response(StatusCode::BAD_REQUEST, "bad_request", &message, request_id);
    let store = match call_store(state, request_id) {
        Ok(store) => store,
        Err(response) => return *response,
    };
    let filter = match parse_call_query(query) {
        Ok(filter) => filter,
        Err(message) => return bad(message),
    };
    let result = store
        .lock()
        .map_err(|_| "call log unavailable".to_string())
        .and_then(|s| s.query(&filter));
    match result {
        Ok(rows) => json_value(StatusCode::OK, &api::Calls { calls: rows }),
        Err(error) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "call_log_unavailable",
            &error,
            request_id,
        ),
    }
}

/// `GET /api/v1/analytics`: requests, 5xx rate, latency percentiles and bytes per time
/// bucket and group, computed from the call log.
fn analytics(state: &SharedState, query: &str, request_id: &HeaderValue) -> Response<ResponseBody> {
    let store = match call_store(state, request_id) {
        Ok(store) => store,
        Err(response) => return *response,
    };
    let request = match parse_analytics_query(query) {
        Ok(request) => request,
        Err(message) => return error_response(StatusCode::BAD_REQUEST, "bad_request", &message, request_id),
    };
    let result = store
        .lock()
        .map_err(|_| "call log unavailable".to_string())
        .and_then(|s| s.analytics(&request));
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
            &error,
            request_id,
        ),
    }
}

/// Parses analytics parameters: `group_by` (route, consumer, upstream, status; default
/// route), `bucket` (1m, 1h, 1d; default 1m), `since`/`until` (default: the last hour).
pub fn parse_analytics_query(query: &str) -> Result<AnalyticsQuery, String> {
    let now = crate::observability::call_log::now_ms();
    let mut request = AnalyticsQuery {
        since_ms: now - 3_600_000,
        until_ms: now + 1,
        bucket_ms: 60_000,
        group_by: GroupBy::Route,
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
                    _ => {
                        return Err("parameter `group_by` must be route, consumer, upstream or status".into())
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
                    "unknown parameter `{other}`: use group_by, bucket, since, until"
                ))
            }
        }
    }
    if request.until_ms <= request.since_ms {
        return Err("parameter `until` must be after `since`".into());
    }
    Ok(request)
}

fn parse_time(key: &str, value: &str) -> Result<i64, String> {
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

/// Whether the request carries the admin token (always true when none is configured).
/// Compared in constant time.
fn authorized(state: &SharedState, request: &Request<Incoming>) -> bool {
    let gateway = state.gateway.load();
    let Some(token) = gateway.config.admin.as_ref().and_then(|a| a.token.as_ref()) else {
        return true;
    };
    let presented = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .unwrap_or("");
    // Compare digests: fixed length, so neither content nor length leaks through timing.
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let (a, b) = (
        Sha256::digest(presented.as_bytes()),
        Sha256::digest(token.0.as_bytes()),
    );
    a.ct_eq(&b).into()
}

/// A 200 JSON response with an already serialised body.
fn json_bytes(body: Vec<u8>) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(body));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn json(status: StatusCode, body: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A JSON response with `status` and `value` as its body.
fn json_value(status: StatusCode, value: &impl serde::Serialize) -> Response<ResponseBody> {
    let mut response = json_bytes(serde_json::to_vec(value).unwrap_or_default());
    *response.status_mut() = status;
    response
}
