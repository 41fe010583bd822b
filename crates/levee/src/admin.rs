//! The admin listener: liveness, readiness and Prometheus metrics.
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

use crate::body::ResponseBody;
use crate::edge::error_response;
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
        let service = service_fn(move |request| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(route(&state, request)) }
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

fn route(state: &SharedState, request: Request<Incoming>) -> Response<ResponseBody> {
    let request_id = crate::headers::request_id(request.headers());
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "This admin endpoint only answers GET.",
            &request_id,
        );
    }
    if request.uri().path().starts_with("/api/") && !authorized(state, &request) {
        let mut response = error_response(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "The admin API needs `Authorization: Bearer <admin token>`.",
            &request_id,
        );
        response
            .headers_mut()
            .insert(http::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
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
        "/api/v1/upstreams" => {
            let body = serde_json::to_vec(&state.upstreams_json()).unwrap_or_default();
            let mut response = Response::new(ResponseBody::full(body));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        "/metrics" => {
            let mut response = Response::new(ResponseBody::full(state.metrics.render_with(&state.gauges())));
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

/// Whether the request carries the admin token (always true when none is configured).
/// Compared in constant time.
fn authorized(state: &SharedState, request: &Request<Incoming>) -> bool {
    let Some(token) = state.gateway.config.admin.as_ref().and_then(|a| a.token.as_ref()) else {
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
    let (a, b) = (
        Sha256::digest(presented.as_bytes()),
        Sha256::digest(token.0.as_bytes()),
    );
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn json(status: StatusCode, body: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
