//! The request's way through the gateway, in order (PRODUCT.md section 7):
//!
//! 1. accept (connection cap, header-read timeout): `server`
//! 2. request id and trace context ([`start_record`]); the request's host settled
//!    (`host::settle`); load shedding past the in-flight cap ([`shed`])
//! 3. route match; a retired route's 410, and a deprecated one's headers on every answer
//!    ([`lifecycle`]); strict framing and the head's size limits ([`strict_framing`],
//!    [`check_head_size`]); auth (API key or JWT → consumer), then the route's rate limit
//! 4. fault injection (`chaos`): the route's `fault`, or a running chaos experiment's; an
//!    abort answers here, a delay holds the request
//! 5. stale-if-error lookup key (GETs without credentials)
//! 6. the route's backend: on an AI gateway route its models' targets ([`crate::llm`]); on
//!    any other the upstream ([`proxy`]): the body's first piece, the bulkhead, then the
//!    retry loop { pick a target (the balancer skips targets whose breaker is open) →
//!    circuit admission → per-try timeout → forward }
//! 7. response: on failure the last good answer (stale-if-error) or the route's fallback;
//!    else header rewrite, stale-cache capture; every refusal is answered by [`edge`] in the
//!    shape the client speaks (Levee's, OpenAI's or Anthropic's)
//! 8. access log, metrics, call log, spans and SLO counters, recorded when the response body
//!    ends ([`crate::record`])
//!
//! Both route kinds take every stage; only step 6 differs. A new stage goes here, in order,
//! as one function called from [`handle`].

mod identify;
mod lifecycle;
mod proxy;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::client_body::ClientBody;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::request::Parts;
use http::{Request, Response, StatusCode};
use tokio::time::Instant;

use crate::body::ResponseBody;
use crate::config::spec::{AuthSpec, Fallback, RouteSpec};
use crate::edge::{self, Rejection, Shape};
use crate::gateway::{LoadPermit, WorkerContext};
use crate::headers;
use crate::observability::traces::TraceContext;
use crate::record::RequestRecord;
use crate::stale::{Capture, StaleCache, StaleEntry};
use crate::state::ConnInfo;

/// Serves one request. Never fails: every problem becomes an error response in the shape
/// the client speaks ([`edge`]).
pub async fn handle(
    worker: &WorkerContext,
    conn: &ConnInfo,
    request: Request<ClientBody>,
) -> Response<ResponseBody> {
    let (mut parts, body) = request.into_parts();

    // 2. Request id and trace context.
    let mut record = start_record(worker, conn, &parts);

    // The host the request is for, settled before anything reads it: routing and the
    // request sent upstream must agree on it (RFC 9112 section 3.2).
    if let Err(reason) = crate::host::settle(&mut parts) {
        tracing::debug!(request_id = ?record.request_id, reason, "request host refused");
        return refuse_and_close(record);
    }

    // Load shedding: past the worker's in-flight cap, refuse at once.
    match LoadPermit::try_take(&worker.inflight, worker.limits.max_inflight) {
        Some(permit) => record.admission = Some(permit),
        None => return shed(worker, &parts, record),
    }

    // 3. Route match.
    let gateway = &worker.gateway;
    let Some((route_index, route)) = gateway.router.route(&parts) else {
        let shape = crate::grpc::flavor(&parts.headers).map_or(Shape::Levee, Shape::Grpc);
        return answer(Rejection::NoRoute, shape, record);
    };
    record.route = worker.route_names.get(route_index).cloned();
    let shape = shape_for(route, &parts);

    // API lifecycle: a retired route answers 410 `gone`; a deprecated one marks every
    // answer it gives from here on ([`lifecycle`]).
    if let Some(retired) = lifecycle::retired(route) {
        return lifecycle::gone(retired, shape, record);
    }
    let response = serve_route(worker, conn, (route_index, route, shape), parts, body, record).await;
    lifecycle::mark_deprecated(route, response)
}

/// The request's way once its route is known and serving: framing and size checks, auth,
/// rate limit, fault injection, the backend, and the answer.
async fn serve_route(
    worker: &WorkerContext,
    conn: &ConnInfo,
    (route_index, route, shape): (usize, &RouteSpec, Shape),
    mut parts: Parts,
    body: ClientBody,
    mut record: RequestRecord,
) -> Response<ResponseBody> {
    let gateway = &worker.gateway;
    // Strict framing (smuggling) and the size limits that can be judged from the head.
    if let Err(reason) = strict_framing(&parts) {
        tracing::debug!(request_id = ?record.request_id, reason, "ambiguous request framing refused");
        return refuse_and_close(record);
    }
    if let Err(rejection) = check_head_size(worker, route, &parts) {
        return answer(rejection, shape, record);
    }

    // Auth: who is calling (the upstream learns it in x-consumer, never the key), and
    // whether their key may call this route now.
    let key = match identify::identify(worker, conn, route, &mut parts, &mut record).await {
        Ok(key) => key,
        Err(refused) => {
            let mut response = answer(refused.rejection, shape, record);
            if let Some((limiter, decision)) = refused.limited {
                limiter.annotate(&decision, response.headers_mut());
            }
            return response;
        }
    };
    lifecycle::count_deprecated(worker, route, &record);

    // Rate limit, after auth so that limits can be per consumer.
    let limiter = gateway.limiters.get(route_index).and_then(Option::as_ref);
    let decision = match limiter {
        Some(l) => Some(l.check(&parts, conn.peer.ip(), record.consumer.as_deref()).await),
        None => None,
    };
    if let (Some(limiter), Some(decision)) = (limiter, decision.filter(|d| !d.allowed)) {
        if let Some(route_name) = &record.route {
            worker.recorder.metrics.lock().record_rate_limited(route_name);
        }
        let mut response = answer(Rejection::RateLimited, shape, record);
        limiter.annotate(&decision, response.headers_mut());
        return response;
    }

    // 4. Fault injection (chaos), after the rate limit and before any backend is asked.
    if let Err(rejection) = inject_fault(worker, route, &parts, &mut record).await {
        return answer(rejection, shape, record);
    }
    // The fault header is for this gateway, never for the backend.
    parts.headers.remove(&crate::chaos::X_LEVEE_FAULT);

    // Stale-if-error: only GETs without credentials are stored or served.
    let stale = gateway
        .stale
        .get(route_index)
        .and_then(Option::as_ref)
        .filter(|_| route.auth == AuthSpec::None)
        .and_then(|cache| Some((cache, StaleCache::key(&parts)?)));

    // 5-6. The route's backend: the AI gateway's models, or the upstream (bulkhead, then
    // the retry loop). The AI gateway's state is boxed: held inline it would more than
    // double the size of every request's future, which is moved as a whole.
    let result = if route.llm {
        Box::pin(llm_backend(
            worker,
            route_index,
            route,
            key.as_ref(),
            parts,
            body,
            &mut record,
        ))
        .await
    } else if let Some(servers) = &route.mcp {
        mcp_backend(worker, route, servers, key.as_ref(), parts, body, &mut record).await
    } else {
        proxy::forward(worker, conn, route_index, route, parts, body, &mut record).await
    };

    // 7. Response. A failure is replaced by the last good answer if there is one, else by
    // the route's fallback.
    let status = match &result {
        Ok(response) => response.status(),
        Err(rejection) => rejection.status(),
    };
    if let Err(rejection) = &result {
        record.error = Some(rejection.code());
    }
    if let (true, Some((cache, key))) = (status.is_server_error(), &stale) {
        if let Some((entry, age)) = cache.get(key, Instant::now()) {
            return answer_stale(entry, age, status, record);
        }
    }
    // A gRPC client could not read a static fallback: it gets the status instead.
    let replaceable = matches!(status.as_u16(), 502..=504) && !matches!(shape, Shape::Grpc(_));
    if let (Some(fallback), true) = (&route.fallback, replaceable) {
        return answer_fallback(fallback, status, record);
    }
    match result {
        Ok(response) => {
            let annotate = |headers: &mut http::HeaderMap| {
                if let (Some(limiter), Some(decision)) = (limiter, &decision) {
                    limiter.annotate(decision, headers);
                }
            };
            respond(response, route, stale, annotate, record)
        }
        Err(rejection) => answer(rejection, shape, record),
    }
}

/// The backend of an AI gateway route: the pipeline hands the AI gateway what it needs.
async fn llm_backend(
    worker: &WorkerContext,
    route_index: usize,
    route: &RouteSpec,
    key: Option<&Arc<crate::management::KeyGrant>>,
    parts: Parts,
    body: ClientBody,
    record: &mut RequestRecord,
) -> Result<Response<ResponseBody>, Rejection> {
    let gateway = &worker.gateway;
    let (Some(llm), Some(client)) = (&gateway.config.llm, &worker.llm_client) else {
        return Err(crate::llm::no_models().into());
    };
    let backend = crate::llm::Backend {
        llm,
        client,
        metrics: &worker.recorder.metrics,
        cache: gateway.llm_cache.as_deref(),
        quotas: &gateway.llm_quotas,
        key_quotas: identify::key_limits(worker, key),
        allowed_models: key.and_then(|k| k.allowed_models.as_deref()),
        on_usage: key.map(|k| {
            let usage = k.usage.clone();
            Arc::new(move |tokens, cost| usage.add_llm(tokens, cost)) as Arc<dyn Fn(u64, f64) + Send + Sync>
        }),
        targets: &gateway.llm_targets,
        bulkheads: &gateway.llm_bulkheads,
        canary: gateway.canaries.get(route_index).and_then(Option::as_deref),
        max_body_bytes: route.max_body_bytes,
        read_timeout: worker.limits.header_read_timeout,
        guardrails: route.guardrails.clone(),
    };
    Ok(crate::llm::serve(&backend, parts, body, record).await?)
}

/// The backend of an MCP route: the hub, the route's servers, the caller's access.
async fn mcp_backend(
    worker: &WorkerContext,
    route: &RouteSpec,
    servers: &[Arc<str>],
    key: Option<&Arc<crate::management::KeyGrant>>,
    parts: Parts,
    body: ClientBody,
    record: &mut RequestRecord,
) -> Result<Response<ResponseBody>, Rejection> {
    let gateway = &worker.gateway;
    let (Some(hub), Some(spec)) = (&gateway.mcp, &gateway.config.mcp) else {
        return Ok(crate::mcp::not_running());
    };
    let consumer = record.consumer.clone();
    let backend = crate::mcp::Backend {
        hub,
        servers,
        access: &spec.access,
        caller: crate::mcp::Caller {
            consumer: consumer.as_deref(),
            key: key.map(|k| &*k.id),
            team: key.and_then(|k| k.team.as_deref()),
        },
        metrics: &worker.recorder.metrics,
        max_body_bytes: route.max_body_bytes,
        read_timeout: worker.limits.header_read_timeout,
    };
    Ok(crate::mcp::serve(&backend, parts, body, record).await)
}

/// The record of a request that just arrived (request id and trace context included).
fn start_record(worker: &WorkerContext, conn: &ConnInfo, parts: &Parts) -> RequestRecord {
    conn.started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    RequestRecord {
        recorder: worker.recorder.clone(),
        started: Instant::now(),
        wall_start: SystemTime::now(),
        request_id: headers::request_id(&parts.headers),
        trace: TraceContext::start(&parts.headers, worker.recorder.tracer.as_ref()),
        client_ip: conn.peer.ip(),
        listener: conn.listener.clone(),
        scheme: if conn.tls { "https" } else { "http" },
        version: parts.version,
        method: parts.method.clone(),
        path: Arc::from(parts.uri.path()),
        route: None,
        status: 0,
        error: None,
        upstream: None,
        bytes_in: None,
        inflight: None,
        admission: None,
        bulkhead: None,
        attempts: 0,
        upstream_wait: Duration::ZERO,
        head_at: None,
        fallback_for: None,
        degraded: None,
        consumer: None,
        llm: None,
        mcp_call: None,
        guard_verdicts: None,
        fault: None,
        experiment: None,
        sent_to: None,
        grpc_status: None,
        connection: LoadPermit::try_take(&conn.in_flight, usize::MAX),
        emitted: false,
    }
}

/// The shape of the errors a route's clients expect: gRPC statuses for gRPC calls, OpenAI's
/// on an AI gateway route (Anthropic's for its Messages API), Levee's elsewhere.
fn shape_for(route: &RouteSpec, parts: &Parts) -> Shape {
    if let Some(flavor) = crate::grpc::flavor(&parts.headers) {
        return Shape::Grpc(flavor);
    }
    match route.llm {
        true if parts.uri.path().ends_with("/messages") => Shape::Anthropic,
        true => Shape::OpenAi,
        false => Shape::Levee,
    }
}

/// Refuses a request past the worker's in-flight cap (load shedding).
fn shed(worker: &WorkerContext, parts: &Parts, mut record: RequestRecord) -> Response<ResponseBody> {
    worker
        .recorder
        .access_log
        .metrics()
        .globals
        .shed
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Named by its route, a shed request counts against that route's SLOs: an overloaded
    // gateway is an outage its users see.
    let routed = worker.gateway.router.route(parts);
    record.route = routed.and_then(|(index, _)| worker.route_names.get(index).cloned());
    let shape = routed.map_or(Shape::Levee, |(_, route)| shape_for(route, parts));
    answer(Rejection::Overloaded, shape, record)
}

/// The size limits a request head shows: its headers, and a declared body length.
fn check_head_size(worker: &WorkerContext, route: &RouteSpec, parts: &Parts) -> Result<(), Rejection> {
    if head_bytes(parts) > worker.limits.max_header_bytes {
        return Err(Rejection::HeadersTooLarge);
    }
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > route.max_body_bytes) {
        return Err(Rejection::BodyTooLarge);
    }
    Ok(())
}

/// The route's fault (or a running chaos experiment's, which takes its place): a delay
/// holds the request here, an abort refuses it.
async fn inject_fault(
    worker: &WorkerContext,
    route: &RouteSpec,
    parts: &Parts,
    record: &mut RequestRecord,
) -> Result<(), Rejection> {
    let recorder = &worker.recorder;
    record.experiment = record
        .route
        .as_deref()
        .and_then(|name| recorder.experiments.active_for(name, &recorder.slo.clock));
    let fault = match &record.experiment {
        Some(experiment) => Some(&experiment.fault),
        None => route.fault.as_ref(),
    };
    let Some(fault) = fault else {
        return Ok(());
    };
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
        return Err(Rejection::FaultInjected(status));
    }
    Ok(())
}

/// The backend's answer on its way to the client: route header rewrites, the gateway's own
/// headers, stale-cache capture, and the record that travels with the body.
fn respond(
    mut response: Response<ResponseBody>,
    route: &RouteSpec,
    stale: Option<(&Arc<StaleCache>, String)>,
    annotate: impl FnOnce(&mut http::HeaderMap),
    mut record: RequestRecord,
) -> Response<ResponseBody> {
    record.status = response.status().as_u16();
    // A trailers-only gRPC answer has its status in the headers (else it comes in the
    // trailers, which the response body reads).
    record.grpc_status = crate::grpc::status(response.headers());
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
        .insert(headers::X_REQUEST_ID.clone(), record.request_id.clone());
    annotate(response.headers_mut());
    let (parts, mut body) = response.into_parts();
    if let Some(capture) = capture {
        body = body.with_capture(capture);
    }
    Response::from_parts(parts, body.with_record(record))
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
    let mut response = answer(Rejection::BadRequest, Shape::Levee, record);
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

/// Answers with the gateway's own error, in the client's shape, and records the request.
fn answer(rejection: Rejection, shape: Shape, mut record: RequestRecord) -> Response<ResponseBody> {
    if let Rejection::Upstream(error) = &rejection {
        tracing::debug!(request_id = ?record.request_id, %error, "upstream attempt failed");
    }
    let response = edge::reject(&rejection, shape, &record.request_id);
    record.status = response.status().as_u16();
    record.grpc_status = crate::grpc::status(response.headers());
    record.error = Some(rejection.code());
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, body.with_record(record))
}
