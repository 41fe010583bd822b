//! The request's way through the gateway, in order (PRODUCT.md section 7):
//!
//! 1. accept (connection cap, header-read timeout): `server`
//! 2. request id and trace context; load shedding past the in-flight cap
//! 3. route match, auth (API key or JWT → consumer), then the route's rate limit
//! 4. fault injection (`chaos`): the route's `fault`, or a running chaos experiment's; an
//!    abort answers here, a delay holds the request
//! 5. on an AI gateway route, the `llm` module takes over (answer cache, consumer quota,
//!    the model's targets with fallback and breakers, usage and cost)
//! 6. upstream: bulkhead, then the retry loop { pick a target (the balancer skips targets
//!    whose breaker is open) → circuit admission → per-try timeout → forward }
//! 7. response: on failure the last good answer (stale-if-error) or the route's fallback;
//!    else header rewrite, stale-cache capture, protocol switch
//! 8. access log, metrics, call log, spans and SLO counters, recorded when the response body
//!    ends (`observability`, `slo`)

use std::time::{Duration, SystemTime};

use http::header::{HeaderValue, CONTENT_TYPE, HOST};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use levee_resilience::full_jitter;
use tokio::time::Instant;

use crate::auth::{self, AuthError};
use crate::body::{PrefetchError, ReplayableBody, ResponseBody};
use crate::config::spec::{AuthSpec, Fallback, RouteSpec};
use crate::edge::{self, Rejection};
use crate::gateway::{LoadPermit, WorkerContext};
use crate::headers;
use crate::observability::metrics::Outcome;
use crate::observability::traces::{TraceContext, TRACEPARENT, TRACESTATE};
use crate::observability::{RequestRecord, UpstreamFacts};
use crate::router::strip_path_prefix;
use crate::stale::{Capture, StaleCache, StaleEntry};
use crate::state::ConnInfo;
use crate::upstream::balancer::PickContext;
use crate::upstream::{health, Picked, UpstreamError};

/// Serves one request. Never fails: every problem becomes a JSON error response.
pub async fn handle(
    worker: &WorkerContext,
    conn: &ConnInfo,
    request: Request<Incoming>,
) -> Response<ResponseBody> {
    let (mut parts, body) = request.into_parts();

    // 2. Request id and trace context.
    let request_id = headers::request_id(&parts.headers);
    let trace = TraceContext::start(&parts.headers, worker.recorder.tracer.as_ref());
    let mut record = RequestRecord {
        recorder: worker.recorder.clone(),
        started: Instant::now(),
        wall_start: SystemTime::now(),
        request_id: request_id.clone(),
        trace,
        client_ip: conn.peer.ip(),
        listener: conn.listener.clone(),
        scheme: if conn.tls { "https" } else { "http" },
        version: parts.version,
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        route: None,
        status: 0,
        error: None,
        upstream: None,
        bytes_in: None,
        inflight: None,
        admission: None,
        bulkhead: None,
        attempts: 0,
        fallback_for: None,
        degraded: None,
        consumer: None,
        llm: None,
        fault: None,
        experiment: None,
        sent_to: None,
        emitted: false,
    };

    // The host the request is for, settled before anything reads it: routing and the
    // request sent upstream must agree on it (RFC 9112 section 3.2).
    if let Err(reason) = crate::host::settle(&mut parts) {
        tracing::debug!(request_id = ?record.request_id, reason, "request host refused");
        return refuse_and_close(record);
    }

    // Load shedding: past the worker's in-flight cap, refuse at once.
    match LoadPermit::try_take(&worker.inflight, worker.limits.max_inflight) {
        Some(permit) => record.admission = Some(permit),
        None => {
            worker
                .recorder
                .access_log
                .metrics()
                .globals
                .shed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Named by its route, a shed request counts against that route's SLOs: an
            // overloaded gateway is an outage its users see.
            record.route = worker
                .gateway
                .router
                .route(&parts)
                .and_then(|(index, _)| worker.route_names.get(index).cloned());
            return answer(Rejection::Overloaded, record);
        }
    }

    // 3. Route match.
    let gateway = &worker.gateway;
    let Some((route_index, route)) = gateway.router.route(&parts) else {
        return answer(Rejection::NoRoute, record);
    };
    record.route = worker.route_names.get(route_index).cloned();

    // Strict framing: shapes that parse but that proxies disagree about (smuggling).
    if let Err(reason) = strict_framing(&parts) {
        tracing::debug!(request_id = ?record.request_id, reason, "ambiguous request framing refused");
        return refuse_and_close(record);
    }

    // Size limits that can be judged from the head alone.
    if head_bytes(&parts) > worker.limits.max_header_bytes {
        return answer(Rejection::HeadersTooLarge, record);
    }
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > route.max_body_bytes) {
        return answer(Rejection::BodyTooLarge, record);
    }

    // Auth: who is calling (the upstream learns it in x-consumer, never the key).
    let authenticated = match &route.auth {
        AuthSpec::Jwt { .. } => auth::authenticate_jwt(&route.auth, gateway.jwt.as_deref(), &mut parts).await,
        _ => auth::authenticate(&route.auth, &gateway.credentials, &mut parts),
    };
    match authenticated {
        Ok(consumer) => record.consumer = consumer,
        Err(error) => return answer(Rejection::Auth(error), record),
    }

    // Rate limit, after auth so that limits can be per consumer.
    let limiter = gateway.limiters.get(route_index).and_then(Option::as_ref);
    let decision = limiter.map(|l| l.check(&parts, conn.peer.ip(), record.consumer.as_deref()));
    if let (Some(limiter), Some(decision)) = (limiter, decision.filter(|d| !d.allowed)) {
        if let Some(route_name) = &record.route {
            worker.recorder.metrics.lock().record_rate_limited(route_name);
        }
        let mut response = answer(Rejection::RateLimited, record);
        limiter.annotate(&decision, response.headers_mut());
        return response;
    }

    // Fault injection (chaos), after the rate limit and before anything reaches an upstream.
    // A running chaos experiment's fault takes the place of the route's own.
    let slo = &worker.recorder.slo;
    record.experiment = record
        .route
        .as_deref()
        .and_then(|name| slo.experiments.active_for(name, &slo.clock));
    let fault = match &record.experiment {
        Some(experiment) => Some(&experiment.fault),
        None => route.fault.as_ref(),
    };
    if let Some(fault) = fault {
        let allow_header = route.fault.as_ref().is_some_and(|f| f.allow_header);
        let injection = crate::chaos::decide(fault, allow_header, &parts.headers);
        if let Some(delay) = injection.delay {
            record.fault = Some("delay");
            if let Some(name) = &record.route {
                worker.recorder.metrics.lock().record_fault(name, "delay");
            }
            tokio::time::sleep(delay).await;
        }
        if let Some(status) = injection.abort {
            record.fault = Some("abort");
            if let Some(name) = &record.route {
                worker.recorder.metrics.lock().record_fault(name, "abort");
            }
            let mut response = edge::error_response(
                status,
                "fault_injected",
                "A fault was injected by the gateway (chaos testing).",
                &record.request_id,
            );
            record.status = status.as_u16();
            record.error = Some("fault_injected");
            response
                .headers_mut()
                .insert(headers::X_REQUEST_ID.clone(), record.request_id.clone());
            let (head, body) = response.into_parts();
            return Response::from_parts(head, body.with_record(record));
        }
    }

    // The fault header is for this gateway, never for the upstream.
    parts.headers.remove(&crate::chaos::X_LEVEE_FAULT);

    // The AI gateway answers on its own (OpenAI-shaped, with fallback over providers).
    if route.llm {
        return crate::llm::serve(worker, route, parts, body, record).await;
    }

    // Stale-if-error: only GETs without credentials are stored or served.
    let stale = gateway
        .stale
        .get(route_index)
        .and_then(Option::as_ref)
        .filter(|_| route.auth == AuthSpec::None)
        .and_then(|cache| Some((cache, StaleCache::key(&parts)?)));

    // 4. Upstream: bulkhead, then the retry loop.
    let result = forward(worker, conn, route_index, route, parts, body, &mut record).await;

    // 5. Response. A failure is replaced by the last good answer if there is one, else by
    // the route's fallback.
    let status = match &result {
        Ok(response) => response.status(),
        Err(rejection) => rejection.status(),
    };
    let failed = status.is_server_error();
    if let Err(rejection) = &result {
        record.error = Some(rejection.code());
    }
    if let (true, Some((cache, key))) = (failed, &stale) {
        if let Some((entry, age)) = cache.get(key, Instant::now()) {
            return answer_stale(entry, age, status, record);
        }
    }
    if let (Some(fallback), true) = (&route.fallback, matches!(status.as_u16(), 502..=504)) {
        return answer_fallback(fallback, status, record);
    }
    match result {
        Ok(response) => {
            record.status = response.status().as_u16();
            let mut response = response;
            // Route rewrites first, so the gateway's own headers always win.
            route.response_headers.apply(response.headers_mut());
            let capture = match &stale {
                Some((cache, key)) if StaleCache::storable(response.status(), response.headers()) => {
                    Some(Capture::new(
                        (*cache).clone(),
                        key.clone(),
                        response.status(),
                        response.headers().clone(),
                    ))
                }
                _ => None,
            };
            response
                .headers_mut()
                .insert(headers::X_REQUEST_ID.clone(), request_id);
            if let (Some(limiter), Some(decision)) = (limiter, &decision) {
                limiter.annotate(decision, response.headers_mut());
            }
            let (parts, mut body) = response.into_parts();
            if let Some(capture) = capture {
                body = body.with_capture(capture);
            }
            Response::from_parts(parts, body.with_record(record))
        }
        Err(rejection) => answer(rejection, record),
    }
}

/// Answers with the last good answer in place of a failure, marked as stale.
fn answer_stale(
    entry: StaleEntry,
    age: Duration,
    replaced: StatusCode,
    mut record: RequestRecord,
) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(entry.body));
    *response.status_mut() = entry.status;
    *response.headers_mut() = entry.headers;
    let headers = response.headers_mut();
    headers.insert(http::header::AGE, HeaderValue::from(age.as_secs()));
    headers.insert(headers::X_LEVEE_CACHE.clone(), HeaderValue::from_static("stale"));
    headers.insert(headers::X_REQUEST_ID.clone(), record.request_id.clone());
    record.status = entry.status.as_u16();
    record.fallback_for = Some(replaced.as_u16());
    record.degraded = Some("stale");
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, body.with_record(record))
}

/// Refuses framing that different HTTP implementations read differently (RFC 9112 6.1 and
/// 6.3): both Content-Length and Transfer-Encoding, several or non-numeric Content-Length
/// values, and any Transfer-Encoding other than exactly `chunked`.
pub(crate) fn strict_framing(parts: &Parts) -> Result<(), &'static str> {
    use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
    let lengths = parts.headers.get_all(CONTENT_LENGTH).iter().count();
    let codings: Vec<&HeaderValue> = parts.headers.get_all(TRANSFER_ENCODING).iter().collect();
    if lengths > 0 && !codings.is_empty() {
        return Err("both Content-Length and Transfer-Encoding");
    }
    if lengths > 1 {
        return Err("several Content-Length headers");
    }
    if let Some(length) = parts.headers.get(CONTENT_LENGTH) {
        if length.is_empty() || !length.as_bytes().iter().all(u8::is_ascii_digit) {
            return Err("Content-Length is not a number");
        }
    }
    match codings.as_slice() {
        [] => Ok(()),
        [only] if only.as_bytes().eq_ignore_ascii_case(b"chunked") => Ok(()),
        _ => Err("Transfer-Encoding other than chunked"),
    }
}

/// A 400 for a request too malformed to trust the connection it came on (ambiguous framing,
/// a confused host): as nginx does, the client gets no second request on it.
fn refuse_and_close(record: RequestRecord) -> Response<ResponseBody> {
    let mut response = answer(Rejection::BadRequest, record);
    response
        .headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The size of a request head as it arrived: request line and header lines.
pub(crate) fn head_bytes(parts: &Parts) -> usize {
    let line = parts.method.as_str().len() + parts.uri.path_and_query().map_or(1, |p| p.as_str().len()) + 12;
    parts.headers.iter().fold(line, |total, (name, value)| {
        total + name.as_str().len() + value.len() + 4
    })
}

/// Answers with the route's static fallback in place of a 502/503/504.
fn answer_fallback(
    fallback: &Fallback,
    replaced: StatusCode,
    mut record: RequestRecord,
) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(fallback.body.clone()));
    *response.status_mut() = fallback.status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, fallback.content_type.clone());
    headers.insert(headers::X_REQUEST_ID.clone(), record.request_id.clone());
    record.status = fallback.status.as_u16();
    record.fallback_for = Some(replaced.as_u16());
    record.degraded = Some("fallback");
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, body.with_record(record))
}

/// Answers with the gateway's own JSON error and records the request.
fn answer(rejection: Rejection, mut record: RequestRecord) -> Response<ResponseBody> {
    if let Rejection::Upstream(error) = &rejection {
        tracing::debug!(request_id = ?record.request_id, %error, "upstream attempt failed");
    }
    let mut response = edge::reject(&rejection, &record.request_id);
    match rejection {
        Rejection::Overloaded => {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        Rejection::Auth(AuthError::Missing | AuthError::Invalid) => {
            response
                .headers_mut()
                .insert(http::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        _ => {}
    }
    record.status = response.status().as_u16();
    record.error = Some(rejection.code());
    response
        .headers_mut()
        .insert(headers::X_REQUEST_ID.clone(), record.request_id.clone());
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, body.with_record(record))
}

/// Why an attempt may be retried (the `reason` label of `levee_retries_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    ConnectFailure,
    Reset,
    Timeout,
    Status,
}

impl RetryReason {
    pub fn label(self) -> &'static str {
        match self {
            RetryReason::ConnectFailure => "connect_failure",
            RetryReason::Reset => "reset",
            RetryReason::Timeout => "timeout",
            RetryReason::Status => "status",
        }
    }
}

/// Bulkhead, then the retry loop: pick a target (the balancer skips targets whose breaker is
/// open, and prefers one not tried yet), send within the per-try timeout, feed the outcome to
/// the breaker, and retry while the policy, the budget and the body allow.
async fn forward(
    worker: &WorkerContext,
    conn: &ConnInfo,
    route_index: usize,
    route: &RouteSpec,
    mut parts: Parts,
    body: Incoming,
    record: &mut RequestRecord,
) -> Result<Response<ResponseBody>, Rejection> {
    // A canary takes its share of the route's requests, unless it was rolled back.
    let canary = worker
        .gateway
        .canaries
        .get(route_index)
        .and_then(Option::as_ref)
        .filter(|c| c.takes_request());
    let upstream_index = match canary {
        Some(canary) => Some(canary.spec.upstream),
        None => route.upstream,
    };
    let Some(upstream) = upstream_index.and_then(|i| worker.upstreams.get(i)) else {
        return Err(Rejection::NoRoute);
    };
    record.sent_to = Some(upstream.name.clone());

    // The first piece of the body arrives before any upstream work: a malformed or too
    // large start is refused without touching the upstream, and a client slow to start its
    // body does not hold a place in the bulkhead.
    let replay_cap = route.retry.as_ref().map_or(0, |p| p.max_replay_body);
    let body = ReplayableBody::new(body, replay_cap, route.max_body_bytes);
    match tokio::time::timeout(worker.limits.header_read_timeout, body.prefetch()).await {
        Ok(Ok(())) => {}
        Ok(Err(PrefetchError::TooLarge)) => return Err(Rejection::BodyTooLarge),
        Ok(Err(PrefetchError::Malformed)) => return Err(Rejection::BadRequest),
        Err(_) => return Err(Rejection::RequestTimeout),
    }
    record.bytes_in = body.received();

    // Bulkhead: a full upstream refuses at once, or after a bounded wait in its queue.
    match upstream.enter().await {
        Ok(permit) => record.bulkhead = Some(permit),
        Err(error) => {
            worker
                .recorder
                .metrics
                .lock()
                .record_bulkhead_rejected(&upstream.name);
            return Err(error.into());
        }
    }

    // A protocol switch (WebSocket) is only possible from HTTP/1.1.
    let client_upgrade = if parts.version == Version::HTTP_11 && headers::wants_upgrade(&parts.headers) {
        parts.extensions.remove::<OnUpgrade>()
    } else {
        None
    };
    let policy = route.retry.as_ref().filter(|_| client_upgrade.is_none());
    // A non-idempotent request may only be retried when it certainly never left (a failed
    // connect), unless the route opts in (nginx's rule too).
    let any_reason = parts.method.is_idempotent() || route.retry_non_idempotent;
    let max_attempts = policy.map_or(1, |p| p.attempts.max(1));
    let per_try_timeout = policy.and_then(|p| p.per_try_timeout);
    let budget = worker
        .gateway
        .retry_budgets
        .get(route_index)
        .and_then(Option::as_ref);
    if let (Some(_), Some(budget)) = (policy, budget) {
        budget.deposit(Instant::now());
    }

    // Rewrite the request for the upstream, once for every attempt.
    // `host::settle` made Host the request's host (the URI's authority when it has one).
    let original_host: Option<HeaderValue> = parts.headers.get(HOST).cloned();
    let path = upstream_path(route, &parts);
    parts.version = Version::HTTP_11;
    headers::remove_hop_by_hop(&mut parts.headers, client_upgrade.is_some());
    // Route rewrites first, so the gateway's own headers below always win.
    route.request_headers.apply(&mut parts.headers);
    if let Some(host) = &original_host {
        if !parts.headers.contains_key(HOST) {
            parts.headers.insert(HOST, host.clone());
        }
    }
    headers::add_forwarded(
        &mut parts.headers,
        conn.peer.ip(),
        if conn.tls { "https" } else { "http" },
        original_host.as_ref().and_then(|h| h.to_str().ok()),
    );
    parts
        .headers
        .insert(headers::X_REQUEST_ID.clone(), record.request_id.clone());
    // The caller's identity is the gateway's to state: a client-sent x-consumer never passes.
    match record
        .consumer
        .as_ref()
        .and_then(|c| HeaderValue::from_str(c).ok())
    {
        Some(consumer) => parts.headers.insert(auth::X_CONSUMER.clone(), consumer),
        None => parts.headers.remove(&auth::X_CONSUMER),
    };
    // A tracestate travels only with the trace it belongs to (each attempt's traceparent is
    // set below).
    match record.trace.tracestate() {
        Some(state) => parts.headers.insert(TRACESTATE.clone(), state.clone()),
        None => parts.headers.remove(&TRACESTATE),
    };

    let mut tried: Vec<usize> = Vec::new();
    let mut attempt: u32 = 1;
    // The attempt before this one, when it is being retried: returned as is if no target is
    // left for the retry, and counted in the metrics once the retry really starts.
    let mut previous: Option<(
        Result<Response<Incoming>, UpstreamError>,
        UpstreamFacts,
        RetryReason,
    )> = None;
    loop {
        let picked = match upstream.pick(
            &PickContext {
                parts: &parts,
                client_ip: conn.peer.ip(),
                sequence: worker.next_sequence(),
            },
            &tried,
        ) {
            Ok(picked) => picked,
            Err(error) => {
                return match previous {
                    Some((result, facts, _)) => {
                        record.upstream = Some(facts);
                        result
                            .map(|response| finish_response(response, client_upgrade))
                            .map_err(Rejection::from)
                    }
                    None => Err(error.into()),
                };
            }
        };
        if let Some((result, facts, reason)) = previous.take() {
            drop(result);
            let mut shard = worker.recorder.metrics.lock();
            shard.record_upstream(&facts.upstream, &facts.target, facts.outcome, facts.elapsed);
            if let Some(name) = worker.route_names.get(route_index) {
                shard.record_retry(name, reason.label());
            }
        }
        let uri = upstream
            .target_uri(picked.index, path.clone())
            .ok_or_else(|| UpstreamError::NoTarget {
                upstream: upstream.name.clone(),
            })?;
        let mut request = Request::new(body.attempt());
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = if attempt == max_attempts {
            std::mem::take(&mut parts.headers)
        } else {
            parts.headers.clone()
        };

        let Picked {
            index,
            addr,
            guard,
            ticket,
        } = picked;
        record.inflight = Some(guard);
        record.attempts = attempt;
        let started = Instant::now();
        let traceparent = record
            .trace
            .start_attempt(attempt, &upstream.name, &addr, started);
        request.headers_mut().insert(TRACEPARENT.clone(), traceparent);
        let result = upstream.send(index, request, per_try_timeout).await;
        let elapsed = started.elapsed();

        let on = policy.map(|p| &p.on);
        let (outcome, failed, reason) = match &result {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry = any_reason && on.is_some_and(|o| o.status(status));
                (
                    Outcome::from_status(status),
                    status >= 500,
                    retry.then_some(RetryReason::Status),
                )
            }
            Err(error) => {
                let (outcome, reason, wanted) = match error {
                    UpstreamError::Connect { .. } => (
                        Outcome::ConnectError,
                        RetryReason::ConnectFailure,
                        on.is_some_and(|o| o.connect_failure),
                    ),
                    UpstreamError::ConnectTimeout { .. } => (
                        Outcome::Timeout,
                        RetryReason::ConnectFailure,
                        on.is_some_and(|o| o.connect_failure),
                    ),
                    UpstreamError::Timeout { .. } => (
                        Outcome::Timeout,
                        RetryReason::Timeout,
                        any_reason && on.is_some_and(|o| o.timeout),
                    ),
                    UpstreamError::Exchange { .. } => (
                        Outcome::Reset,
                        RetryReason::Reset,
                        any_reason && on.is_some_and(|o| o.reset),
                    ),
                    UpstreamError::NoTarget { .. } | UpstreamError::BulkheadFull { .. } => {
                        (Outcome::Unavailable, RetryReason::ConnectFailure, false)
                    }
                };
                (outcome, true, wanted.then_some(reason))
            }
        };
        record.trace.end_attempt(
            started + elapsed,
            result.as_ref().ok().map(|r| r.status().as_u16()),
            result.as_ref().err().map(|_| outcome.label()),
        );
        if failed && body.client_failed() {
            // The client's body broke the attempt (too large, malformed): the target did
            // nothing wrong, so neither its breaker nor outlier detection hears about it.
            drop(ticket);
        } else {
            ticket.settle(!failed);
            health::record_outcome(upstream.shared(), index, failed, Instant::now());
        }
        let facts = UpstreamFacts {
            upstream: upstream.name.clone(),
            target: addr,
            outcome,
            elapsed,
        };

        let retry = reason.filter(|_| {
            attempt < max_attempts
                && body.replayable()
                && budget.is_some_and(|b| b.try_withdraw(Instant::now()))
        });
        let Some(reason) = retry else {
            record.upstream = Some(facts);
            return match result {
                Ok(response) => Ok(finish_response(response, client_upgrade)),
                // The upstream attempt failed because the client's body went over the limit.
                Err(_) if body.too_large() => Err(Rejection::BodyTooLarge),
                Err(_) if body.client_failed() => Err(Rejection::BadRequest),
                Err(error) => Err(error.into()),
            };
        };
        previous = Some((result, facts, reason));
        if let Some(policy) = policy {
            let delay = full_jitter(attempt, policy.backoff, policy.max_backoff, fastrand::f64());
            tokio::time::sleep(delay).await;
        }
        tried.push(index);
        attempt += 1;
    }
}

/// Cleans the upstream's response for the client and starts a protocol switch if agreed.
fn finish_response(
    response: Response<Incoming>,
    client_upgrade: Option<OnUpgrade>,
) -> Response<ResponseBody> {
    let (mut rparts, rbody) = response.into_parts();
    let switching = rparts.status == StatusCode::SWITCHING_PROTOCOLS && client_upgrade.is_some();
    if let (true, Some(client_side), Some(upstream_side)) =
        (switching, client_upgrade, rparts.extensions.remove::<OnUpgrade>())
    {
        tokio::spawn(tunnel(client_side, upstream_side));
    }
    headers::remove_hop_by_hop(&mut rparts.headers, switching);
    Response::from_parts(rparts, ResponseBody::upstream(rbody))
}

/// The path (and query) to send upstream, with the route's prefix stripped if asked.
fn upstream_path(route: &RouteSpec, parts: &Parts) -> PathAndQuery {
    let original = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let prefix = match (&route.matcher.path, route.strip_prefix) {
        (crate::router::PathMatch::Prefix(prefix), true) => prefix,
        _ => return original,
    };
    let stripped = strip_path_prefix(prefix, original.path());
    let rebuilt = match original.query() {
        Some(query) => format!("{stripped}?{query}"),
        None => stripped.into_owned(),
    };
    PathAndQuery::try_from(rebuilt).unwrap_or(original)
}

/// Copies bytes both ways between a switched client connection and its upstream.
async fn tunnel(client: OnUpgrade, upstream: OnUpgrade) {
    let (client, upstream) = tokio::join!(client, upstream);
    let (Ok(client), Ok(upstream)) = (client, upstream) else {
        return;
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}
