//! The backend of a proxied route (PRODUCT.md section 7, step 6): the upstream (the route's
//! own, or its canary's share), its bulkhead, then the retry loop { pick a target (the
//! balancer skips targets whose breaker is open) → circuit admission → per-try timeout →
//! forward }, and the answer cleaned for the client (hop-by-hop headers, protocol switch).

use std::sync::Arc;
use std::time::Duration;

use crate::client_body::ClientBody;
use http::header::{HeaderValue, HOST, TE};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use levee_resilience::full_jitter;
use tokio::time::Instant;

use crate::auth;
use crate::body::ResponseBody;
use crate::config::spec::{CanaryTarget, RouteSpec, DEFAULT_MAX_REPLAY_BODY};
use crate::edge::Rejection;
use crate::gateway::WorkerContext;
use crate::grpc::web::TextDecoder;
use crate::grpc::Flavor;
use crate::headers;
use crate::observability::metrics::Outcome;
use crate::observability::traces::{TRACEPARENT, TRACESTATE};
use crate::observability::UpstreamFacts;
use crate::record::RequestRecord;
use crate::router::strip_path_prefix;
use crate::state::ConnInfo;
use crate::upstream::balancer::PickContext;
use crate::upstream::pool::PooledBody;
use crate::upstream::{
    health, BreakerTicket, Picked, PrefetchError, ReplayableBody, UpstreamError, WorkerUpstream,
};

/// Why an attempt may be retried (the `reason` label of `levee_retries_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    ConnectFailure,
    Reset,
    Timeout,
    Status,
    /// An HTTP/2 upstream refused the stream unprocessed: retried whatever the policy.
    RefusedStream,
}

impl RetryReason {
    pub fn label(self) -> &'static str {
        match self {
            RetryReason::ConnectFailure => "connect_failure",
            RetryReason::Reset => "reset",
            RetryReason::Timeout => "timeout",
            RetryReason::Status => "status",
            RetryReason::RefusedStream => "refused_stream",
        }
    }
}

/// The upstream this request goes to (the route's own, or its canary's share), its body's
/// first piece, and a place in the upstream's bulkhead.
async fn enter_upstream<'w>(
    worker: &'w WorkerContext,
    (route_index, route): (usize, &RouteSpec),
    body: ClientBody,
    grpc: Option<Flavor>,
    record: &mut RequestRecord,
) -> Result<(&'w Arc<WorkerUpstream>, ReplayableBody), Rejection> {
    // A canary takes its share of the route's requests, unless it was rolled back.
    let canary = worker
        .gateway
        .canaries
        .get(route_index)
        .and_then(Option::as_ref)
        .filter(|c| c.takes_request());
    let upstream_index = match canary.map(|c| &c.spec.target) {
        Some(CanaryTarget::Upstream(index)) => Some(*index),
        _ => route.upstream,
    };
    let Some(upstream) = upstream_index.and_then(|i| worker.upstreams.get(i)) else {
        return Err(Rejection::NoRoute);
    };
    record.sent_to = Some(upstream.name.clone());

    // The first piece of the body arrives before any upstream work: a malformed or too
    // large start is refused without touching the upstream, and a client slow to start its
    // body does not hold a place in the bulkhead.
    // A stream an HTTP/2 upstream refuses is retried even without a policy, so its body
    // is kept for that.
    let refusable = upstream.shared().transport.may_use_h2();
    let replay_cap = route
        .retry
        .as_ref()
        .map_or(0, |p| p.max_replay_body)
        .max(if refusable { DEFAULT_MAX_REPLAY_BODY } else { 0 });
    // A gRPC-Web `-text` body reaches the upstream decoded from base64.
    let body = match grpc {
        Some(Flavor::Web { text: true }) => ClientBody::boxed(TextDecoder::new(body)),
        _ => body,
    };
    let body = ReplayableBody::new(body, replay_cap, route.max_body_bytes);
    // A streaming gRPC call may rightly wait for the server before sending anything.
    if grpc.is_none() {
        match tokio::time::timeout(worker.limits.header_read_timeout, body.prefetch()).await {
            Ok(Ok(())) => {}
            Ok(Err(PrefetchError::TooLarge)) => return Err(Rejection::BodyTooLarge),
            Ok(Err(PrefetchError::Malformed)) => return Err(Rejection::BadRequest),
            Err(_) => return Err(Rejection::RequestTimeout),
        }
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
    Ok((upstream, body))
}

/// Bulkhead, then the retry loop: pick a target (the balancer skips targets whose breaker is
/// open, and prefers one not tried yet), send within the per-try timeout, feed the outcome to
/// the breaker, and retry while the policy, the budget and the body allow.
pub(super) async fn forward(
    worker: &WorkerContext,
    conn: &ConnInfo,
    route_index: usize,
    route: &RouteSpec,
    mut parts: Parts,
    body: ClientBody,
    record: &mut RequestRecord,
) -> Result<Response<ResponseBody>, Rejection> {
    let grpc = crate::grpc::flavor(&parts.headers);
    let (upstream, body) = enter_upstream(worker, (route_index, route), body, grpc, record).await?;

    let client = ClientSide::of(&mut parts, grpc);
    let upgrade = client.upgrade.is_some();
    let RetryPlan {
        policy,
        any_reason,
        mut max_attempts,
        per_try_timeout,
        budget,
    } = RetryPlan::new(worker, route_index, route, &parts, upgrade);
    let per_try_timeout = match grpc {
        Some(_) => grpc_deadline(&mut parts, per_try_timeout, upstream),
        None => per_try_timeout,
    };

    // Rewrite the request for the upstream, once for every attempt.
    let path = upstream_path(route, &parts);
    rewrite_for_upstream(route, conn, record, &mut parts, upgrade);
    if let Some(Flavor::Web { .. }) = grpc {
        crate::grpc::web::request_headers(&mut parts.headers);
    }

    let mut tried: Vec<usize> = Vec::new();
    let mut attempt: u32 = 1;
    let mut refused_retries: u32 = 0;
    // The attempt before this one, when it is being retried: returned as is if no target is
    // left for the retry, and counted in the metrics once the retry really starts.
    let mut previous: Option<PreviousAttempt> = None;
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
            // No target is left for the retry: the attempt before it stands.
            Err(error) => return no_target_left(previous, error, record, client),
        };
        if let Some((_, facts, reason)) = previous.take() {
            count_retry(worker, route_index, &facts, reason);
        }
        let last = attempt == max_attempts;
        let mut request = attempt_request(upstream, picked.index, &path, &body, &mut parts, last)?;

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
        record.upstream_wait += elapsed;

        let (outcome, failed, reason) = classify(&result, policy.map(|p| &p.on), any_reason);
        record.trace.end_attempt(
            started + elapsed,
            result.as_ref().ok().map(|r| r.status().as_u16()),
            result.as_ref().err().map(|_| outcome.label()),
        );
        settle(upstream, index, ticket, failed, &body);
        let facts = UpstreamFacts {
            upstream: upstream.name.clone(),
            target: addr,
            outcome,
            elapsed,
        };

        let retry = reason.filter(|reason| match reason {
            // Not the policy's to spend: the request never ran (a draining server).
            RetryReason::RefusedStream => refused_retries < MAX_REFUSED_RETRIES && body.replayable(),
            _ => {
                attempt < max_attempts
                    && body.replayable()
                    && budget.is_some_and(|b| b.try_withdraw(Instant::now()))
            }
        });
        let Some(reason) = retry else {
            record.upstream = Some(facts);
            return final_answer(result, &body, client);
        };
        previous = Some((result, facts, reason));
        if reason == RetryReason::RefusedStream {
            refused_retries += 1;
            max_attempts += 1;
            attempt += 1;
            continue;
        }
        if let Some(policy) = policy {
            let delay = full_jitter(attempt, policy.backoff, policy.max_backoff, fastrand::f64());
            tokio::time::sleep(delay).await;
        }
        tried.push(index);
        attempt += 1;
    }
}

/// Tells the target's breaker and outlier detection how the attempt went.
fn settle(
    upstream: &WorkerUpstream,
    index: usize,
    ticket: BreakerTicket,
    failed: bool,
    body: &ReplayableBody,
) {
    if failed && body.client_failed() {
        // The client's body broke the attempt (too large, malformed): the target did
        // nothing wrong, so neither its breaker nor outlier detection hears about it.
        drop(ticket);
    } else {
        ticket.settle(!failed);
        health::record_outcome(upstream.shared(), index, failed, Instant::now());
    }
}

/// The client's answer from the last attempt's result.
fn final_answer(
    result: Result<Response<PooledBody>, UpstreamError>,
    body: &ReplayableBody,
    client: ClientSide,
) -> Result<Response<ResponseBody>, Rejection> {
    match result {
        Ok(response) => Ok(finish_response(response, client)),
        // The upstream attempt failed because the client's body went over the limit.
        Err(_) if body.too_large() => Err(Rejection::BodyTooLarge),
        Err(_) if body.client_failed() => Err(Rejection::BadRequest),
        Err(error) => Err(error.into()),
    }
}

/// Retries of refused HTTP/2 streams per request, on top of the policy's attempts: enough
/// to ride over one server's graceful shutdown, few enough that a server refusing
/// everything is answered quickly.
const MAX_REFUSED_RETRIES: u32 = 2;

/// The answer when no target is left to try: the last attempt's, or the picker's error when
/// there was none.
fn no_target_left(
    previous: Option<PreviousAttempt>,
    error: UpstreamError,
    record: &mut RequestRecord,
    client: ClientSide,
) -> Result<Response<ResponseBody>, Rejection> {
    match previous {
        Some((result, facts, _)) => {
            record.upstream = Some(facts);
            result
                .map(|response| finish_response(response, client))
                .map_err(Rejection::from)
        }
        None => Err(error.into()),
    }
}

/// An attempt being retried: its result (returned as is if no target is left for the
/// retry), its facts and why it is retried.
type PreviousAttempt = (
    Result<Response<PooledBody>, UpstreamError>,
    UpstreamFacts,
    RetryReason,
);

/// How a request may be retried: the route's policy (none for a protocol switch), whether
/// every reason counts, and the retry budget it deposits into.
struct RetryPlan<'a> {
    policy: Option<&'a crate::config::spec::RetryPolicy>,
    any_reason: bool,
    max_attempts: u32,
    per_try_timeout: Option<Duration>,
    budget: Option<&'a levee_resilience::RetryBudget>,
}

impl<'a> RetryPlan<'a> {
    fn new(
        worker: &'a WorkerContext,
        route_index: usize,
        route: &'a RouteSpec,
        parts: &Parts,
        upgrade: bool,
    ) -> RetryPlan<'a> {
        let policy = route.retry.as_ref().filter(|_| !upgrade);
        let budget = worker
            .gateway
            .retry_budgets
            .get(route_index)
            .and_then(Option::as_ref)
            .map(|b| &**b);
        if let (Some(_), Some(budget)) = (policy, budget) {
            budget.deposit(Instant::now());
        }
        RetryPlan {
            policy,
            // A non-idempotent request may only be retried when it certainly never left (a
            // failed connect), unless the route opts in (nginx's rule too).
            any_reason: parts.method.is_idempotent() || route.retry_non_idempotent,
            max_attempts: policy.map_or(1, |p| p.attempts.max(1)),
            per_try_timeout: policy.and_then(|p| p.per_try_timeout),
            budget,
        }
    }
}

/// Counts an attempt that is being retried: its upstream outcome and the retry.
fn count_retry(worker: &WorkerContext, route_index: usize, facts: &UpstreamFacts, reason: RetryReason) {
    let mut shard = worker.recorder.metrics.lock();
    shard.record_upstream(&facts.upstream, &facts.target, facts.outcome, facts.elapsed);
    if let Some(name) = worker.route_names.get(route_index) {
        shard.record_retry(name, reason.label());
    }
}

/// One attempt's request to target `index`: the last attempt takes the headers, earlier
/// ones a copy.
fn attempt_request(
    upstream: &WorkerUpstream,
    index: usize,
    path: &PathAndQuery,
    body: &ReplayableBody,
    parts: &mut Parts,
    last: bool,
) -> Result<Request<crate::upstream::RequestBody>, UpstreamError> {
    let uri = upstream
        .target_uri(index, path.clone())
        .ok_or_else(|| UpstreamError::NoTarget {
            upstream: upstream.name.clone(),
        })?;
    let mut request = Request::new(body.attempt());
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = if last {
        std::mem::take(&mut parts.headers)
    } else {
        parts.headers.clone()
    };
    Ok(request)
}

/// The request as the upstream gets it: HTTP/1.1 without hop-by-hop headers, the route's
/// rewrites, then the gateway's own headers (Host, forwarding, request id, consumer, trace).
fn rewrite_for_upstream(
    route: &RouteSpec,
    conn: &ConnInfo,
    record: &RequestRecord,
    parts: &mut Parts,
    upgrade: bool,
) {
    // `host::settle` made Host the request's host (the URI's authority when it has one).
    let original_host: Option<HeaderValue> = parts.headers.get(HOST).cloned();
    parts.version = Version::HTTP_11;
    // `te: trailers` is hop-by-hop, but on a gRPC call it says the client reads trailers,
    // which gRPC needs end to end (Envoy and nginx's grpc_pass keep it too).
    let trailers = crate::grpc::flavor(&parts.headers).is_some()
        && parts
            .headers
            .get(TE)
            .is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"));
    headers::remove_hop_by_hop(&mut parts.headers, upgrade);
    if trailers {
        parts.headers.insert(TE, HeaderValue::from_static("trailers"));
    }
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
    // set by the retry loop).
    match record.trace.tracestate() {
        Some(state) => parts.headers.insert(TRACESTATE.clone(), state.clone()),
        None => parts.headers.remove(&TRACESTATE),
    };
}

/// What an attempt's result means: its outcome for the metrics, whether it failed (for the
/// breaker and outlier detection), and why it may be retried (when the policy says so).
fn classify(
    result: &Result<Response<PooledBody>, UpstreamError>,
    on: Option<&crate::config::spec::RetryOn>,
    any_reason: bool,
) -> (Outcome, bool, Option<RetryReason>) {
    match result {
        Ok(response) => {
            let status = response.status().as_u16();
            // A failed gRPC call answers 200 with its status in the headers (trailers-only):
            // the statuses of a server failing count as failures, and those the policy
            // lists are retried whatever the method (gRPC methods are all POSTs).
            let grpc = crate::grpc::status(response.headers());
            let failed = status >= 500 || grpc.is_some_and(crate::grpc::server_failure);
            let retry = (any_reason && on.is_some_and(|o| o.status(status)))
                || grpc.is_some_and(|code| on.is_some_and(|o| o.grpc.contains(&code)));
            (
                Outcome::from_status(status),
                failed,
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
                UpstreamError::Tls { .. } => (
                    Outcome::TlsError,
                    RetryReason::ConnectFailure,
                    on.is_some_and(|o| o.connect_failure),
                ),
                UpstreamError::Exchange { .. } => (
                    Outcome::Reset,
                    RetryReason::Reset,
                    any_reason && on.is_some_and(|o| o.reset),
                ),
                // A draining server's refusal says nothing about the target's health.
                UpstreamError::Refused { .. } => {
                    return (Outcome::Refused, false, Some(RetryReason::RefusedStream));
                }
                UpstreamError::NoTarget { .. } | UpstreamError::BulkheadFull { .. } => {
                    (Outcome::Unavailable, RetryReason::ConnectFailure, false)
                }
            };
            (outcome, true, wanted.then_some(reason))
        }
    }
}

/// What the answer must suit on the client's side: a protocol switch it asked for, or the
/// gRPC-Web bridge (`Some(text)`).
struct ClientSide {
    upgrade: Option<OnUpgrade>,
    grpc_web_text: Option<bool>,
}

impl ClientSide {
    /// Takes the client's side of a protocol switch (WebSocket: only possible from
    /// HTTP/1.1) out of the request.
    fn of(parts: &mut Parts, grpc: Option<Flavor>) -> ClientSide {
        let wants_upgrade = parts.version == Version::HTTP_11 && headers::wants_upgrade(&parts.headers);
        ClientSide {
            upgrade: wants_upgrade
                .then(|| parts.extensions.remove::<OnUpgrade>())
                .flatten(),
            grpc_web_text: match grpc {
                Some(Flavor::Web { text }) => Some(text),
                _ => None,
            },
        }
    }
}

/// Cleans the upstream's response for the client, starts a protocol switch if agreed, and
/// bridges a gRPC answer to a gRPC-Web client.
fn finish_response(response: Response<PooledBody>, client: ClientSide) -> Response<ResponseBody> {
    let (mut rparts, rbody) = response.into_parts();
    let switching = rparts.status == StatusCode::SWITCHING_PROTOCOLS && client.upgrade.is_some();
    if let (true, Some(client_side), Some(upstream_side)) =
        (switching, client.upgrade, rparts.extensions.remove::<OnUpgrade>())
    {
        tokio::spawn(tunnel(client_side, upstream_side));
    }
    headers::remove_hop_by_hop(&mut rparts.headers, switching);
    let body = match client.grpc_web_text {
        Some(text) => {
            crate::grpc::web::response_headers(&mut rparts.headers, text);
            ResponseBody::grpc_web(rbody, text)
        }
        None => ResponseBody::upstream(rbody),
    };
    Response::from_parts(rparts, body)
}

/// A gRPC call's deadline (`grpc-timeout`) caps the attempt's timeout, and the upstream is
/// told the deadline it has (never a later one than the client's).
fn grpc_deadline(
    parts: &mut Parts,
    per_try: Option<Duration>,
    upstream: &WorkerUpstream,
) -> Option<Duration> {
    let Some(deadline) = parts
        .headers
        .get(&crate::grpc::GRPC_TIMEOUT)
        .and_then(crate::grpc::parse_timeout)
    else {
        return per_try;
    };
    let capped = per_try.unwrap_or(upstream.spec().request_timeout).min(deadline);
    parts.headers.insert(
        crate::grpc::GRPC_TIMEOUT.clone(),
        crate::grpc::format_timeout(capped),
    );
    Some(capped)
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
