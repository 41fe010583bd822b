//! The request's way through the gateway, in order (PRODUCT.md section 7):
//!
//! 1. accept (connection limits, slow-client timeouts): `server`
//! 2. request id and trace context
//! 3. route match
//! 4. upstream: pick a target, then forward within the timeouts
//! 5. response: header rewrite, protocol switch for WebSocket
//! 6. access log and metrics, recorded when the response body ends (`observability`)
//!
//! Later stages of the contract (auth, rate limits, fault injection, cache, bulkhead, the
//! retry loop with circuit admission) slot in between 3 and 4 in that order.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::SystemTime;

use http::header::{HeaderValue, HOST};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use crate::body::{RequestBody, ResponseBody};
use crate::config::spec::RouteSpec;
use crate::edge::{self, Rejection};
use crate::gateway::WorkerContext;
use crate::headers;
use crate::observability::metrics::Outcome;
use crate::observability::{RequestRecord, UpstreamFacts};
use crate::router::strip_path_prefix;
use crate::server::ConnInfo;
use crate::upstream::balancer::PickContext;
use crate::upstream::UpstreamError;

/// Serves one request. Never fails: every problem becomes a JSON error response.
pub async fn handle(
    worker: &WorkerContext,
    conn: &ConnInfo,
    request: Request<Incoming>,
) -> Response<ResponseBody> {
    let (parts, body) = request.into_parts();

    // 2. Request id and trace context.
    let request_id = headers::request_id(&parts.headers);
    let traceparent = headers::child_traceparent(&parts.headers);
    let mut record = RequestRecord {
        recorder: worker.recorder.clone(),
        started: Instant::now(),
        wall_start: SystemTime::now(),
        request_id: request_id.clone(),
        traceparent: Some(traceparent.clone()),
        client_ip: conn.peer.ip(),
        listener: conn.listener.clone(),
        version: parts.version,
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        route: None,
        status: 0,
        error: None,
        upstream: None,
        bytes_in: None,
        inflight: None,
        emitted: false,
    };

    // 3. Route match.
    let gateway = &worker.gateway;
    let Some((route_index, route)) = gateway.router.route(&parts) else {
        return answer(Rejection::NoRoute, record);
    };
    record.route = worker.route_names.get(route_index).cloned();

    // 4. Upstream.
    match forward(worker, conn, route, parts, body, &mut record).await {
        Ok(response) => {
            // 5. Response.
            let mut response = response;
            // Route rewrites first, so the gateway's own headers always win.
            route.response_headers.apply(response.headers_mut());
            response
                .headers_mut()
                .insert(headers::X_REQUEST_ID.clone(), request_id);
            let (parts, body) = response.into_parts();
            Response::from_parts(parts, body.with_record(record))
        }
        Err(rejection) => answer(rejection, record),
    }
}

/// Answers with the gateway's own JSON error and records the request.
fn answer(rejection: Rejection, mut record: RequestRecord) -> Response<ResponseBody> {
    if let Rejection::Upstream(error) = &rejection {
        tracing::debug!(request_id = ?record.request_id, %error, "upstream attempt failed");
    }
    let response = edge::reject(&rejection, &record.request_id);
    record.status = response.status().as_u16();
    record.error = Some(rejection.code());
    let mut response = response;
    response
        .headers_mut()
        .insert(headers::X_REQUEST_ID.clone(), record.request_id.clone());
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, body.with_record(record))
}

/// Picks a target, sends the request and returns the upstream's response (headers cleaned).
async fn forward(
    worker: &WorkerContext,
    conn: &ConnInfo,
    route: &RouteSpec,
    mut parts: Parts,
    body: Incoming,
    record: &mut RequestRecord,
) -> Result<Response<ResponseBody>, Rejection> {
    let Some(upstream) = worker.upstreams.get(route.upstream) else {
        return Err(Rejection::NoRoute);
    };
    let picked = upstream.pick(&PickContext {
        parts: &parts,
        client_ip: conn.peer.ip(),
        sequence: worker.next_sequence(),
    })?;

    // A protocol switch (WebSocket) is only possible from HTTP/1.1.
    let client_upgrade = if parts.version == Version::HTTP_11 && headers::wants_upgrade(&parts.headers) {
        parts.extensions.remove::<OnUpgrade>()
    } else {
        None
    };

    // Rewrite the request for the target.
    let original_host: Option<HeaderValue> = match parts.headers.get(HOST) {
        Some(host) => Some(host.clone()),
        // HTTP/2 carries the host in :authority (port included).
        None => parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    let path = upstream_path(route, &parts);
    let uri = upstream
        .target_uri(picked.index, path)
        .ok_or_else(|| UpstreamError::NoTarget {
            upstream: upstream.name.clone(),
        })?;
    parts.uri = uri;
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
        "http",
        original_host.as_ref().and_then(|h| h.to_str().ok()),
    );
    parts
        .headers
        .insert(headers::X_REQUEST_ID.clone(), record.request_id.clone());
    if let Some(traceparent) = &record.traceparent {
        parts
            .headers
            .insert(headers::TRACEPARENT.clone(), traceparent.clone());
    }

    let received = (!http_body::Body::is_end_stream(&body)).then(|| Arc::new(AtomicU64::new(0)));
    record.bytes_in = received.clone();
    let request = Request::from_parts(parts, RequestBody::new(body, received));

    let target_addr = picked.addr.clone();
    record.inflight = Some(picked.guard);
    let started = Instant::now();
    let result = upstream.send(picked.index, request).await;
    let elapsed = started.elapsed();
    let response = match result {
        Ok(response) => response,
        Err(error) => {
            let outcome = match &error {
                UpstreamError::Timeout { .. } | UpstreamError::ConnectTimeout { .. } => Outcome::Timeout,
                UpstreamError::Connect { .. } => Outcome::ConnectError,
                UpstreamError::NoTarget { .. } => Outcome::Unavailable,
                UpstreamError::Exchange { .. } => Outcome::Reset,
            };
            record.upstream = Some(UpstreamFacts {
                upstream: upstream.name.clone(),
                target: target_addr,
                outcome,
                elapsed,
            });
            return Err(error.into());
        }
    };

    let (mut rparts, rbody) = response.into_parts();
    record.status = rparts.status.as_u16();
    record.upstream = Some(UpstreamFacts {
        upstream: upstream.name.clone(),
        target: target_addr,
        outcome: Outcome::from_status(record.status),
        elapsed,
    });
    let switching = rparts.status == StatusCode::SWITCHING_PROTOCOLS && client_upgrade.is_some();
    if let (true, Some(client_side), Some(upstream_side)) =
        (switching, client_upgrade, rparts.extensions.remove::<OnUpgrade>())
    {
        tokio::spawn(tunnel(client_side, upstream_side));
    }
    headers::remove_hop_by_hop(&mut rparts.headers, switching);
    Ok(Response::from_parts(rparts, ResponseBody::upstream(rbody)))
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
