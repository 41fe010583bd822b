//! The admin listener: liveness, readiness, Prometheus metrics, the admin REST API and the
//! web dashboard (`dashboard`).
//!
//! It runs on its own thread and event loop so that a saturated data plane can still be
//! observed and probed. Every endpoint is a row of one route table ([`routes::ROUTES`]),
//! which drives dispatch, the `405` answers and the OpenAPI document ([`api`]); this file
//! serves connections and dispatches by that table; `handlers` and `calls` answer.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub mod api;
mod calls;
pub mod dashboard;
mod handlers;
pub mod llm;
pub mod manage;
pub mod overview;
pub mod routes;
pub mod views;

pub use calls::{parse_analytics_query, parse_call_query};

use crate::body::ResponseBody;
use crate::edge::error_response;
use crate::management::model::Role;
use crate::management::ops::Caller;
use crate::state::SharedState;
use routes::{Auth, Call, Route, Run};

/// Serves the admin API on `socket` until `shutdown` turns true (on the admin thread's own
/// event loop, which the server starts).
pub async fn serve(
    socket: std::net::TcpListener,
    state: Arc<SharedState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let listener = match TcpListener::from_std(socket) {
        Ok(l) => l,
        Err(error) => {
            tracing::error!(%error, "cannot register admin listener");
            return;
        }
    };
    tokio::spawn(overview::sample(state.clone(), shutdown.clone()));
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
            async move { Ok::<_, Infallible>(answer(state, request).await) }
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

/// Answers one admin request from the route table: 404 for a path no route serves, 405 with
/// `Allow` for a method its routes do not take, 401 without the admin token where the route
/// needs it; else the route's handler, where [`Run`] says.
async fn answer(state: Arc<SharedState>, request: Request<Incoming>) -> Response<ResponseBody> {
    let request_id = crate::headers::request_id(request.headers());
    let path = request.uri().path();
    let on_path: Vec<(&Route, Option<&str>)> = routes::all()
        .filter_map(|route| routes::match_path(route.path, path).map(|id| (route, id)))
        .collect();
    let Some(&(route, id)) = on_path.iter().find(|(route, _)| route.answers(request.method())) else {
        if on_path.is_empty() {
            // Paths under /api/ reveal nothing to a caller without the token, not even that
            // they are not served.
            if path.starts_with("/api/") && caller(&state, &request).is_none() {
                return unauthorized(&request_id);
            }
            return error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                "No such admin endpoint.",
                &request_id,
            );
        }
        return method_not_allowed(request.method(), on_path.iter().map(|(r, _)| *r), &request_id);
    };
    let caller = match route.auth {
        Auth::Open => Caller::bootstrap("anonymous"),
        _ => match caller(&state, &request) {
            Some(caller) => caller,
            None => return unauthorized(&request_id),
        },
    };
    let allowed = match route.auth {
        Auth::Viewer => caller.role != Role::TeamAdmin,
        Auth::Admin => caller.role == Role::Admin,
        Auth::Open | Auth::Tenant => true,
    };
    if !allowed {
        return error_response(
            StatusCode::FORBIDDEN,
            "forbidden",
            "This token's role may not call this endpoint.",
            &request_id,
        );
    }
    let mut call = Call {
        state,
        request_id,
        query: request.uri().query().unwrap_or("").to_owned(),
        id: id.unwrap_or("").to_owned(),
        body: Bytes::new(),
        caller,
    };
    let handler = route.handler;
    match route.run {
        Run::Inline => handler(&call),
        Run::Blocking { unfinished } => blocking(handler, call, unfinished).await,
        Run::WithBody { limit } => match read_body(request, limit, &call.request_id).await {
            Ok(body) => {
                call.body = body;
                handler(&call)
            }
            Err(refused) => refused,
        },
        Run::BlockingWithBody { limit, unfinished } => {
            match read_body(request, limit, &call.request_id).await {
                Ok(body) => {
                    call.body = body;
                    blocking(handler, call, unfinished).await
                }
                Err(refused) => refused,
            }
        }
    }
}

/// Runs `handler` on the blocking pool; a panic answers 500 with `unfinished`.
async fn blocking(
    handler: fn(&Call) -> Response<ResponseBody>,
    call: Call,
    unfinished: &'static str,
) -> Response<ResponseBody> {
    let request_id = call.request_id.clone();
    tokio::task::spawn_blocking(move || handler(&call))
        .await
        .unwrap_or_else(|_| {
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                unfinished,
                &request_id,
            )
        })
}

/// The request body, at most `limit` bytes, or the 400 saying it could not be read.
async fn read_body(
    request: Request<Incoming>,
    limit: usize,
    request_id: &HeaderValue,
) -> Result<Bytes, Response<ResponseBody>> {
    match http_body_util::Limited::new(request.into_body(), limit)
        .collect()
        .await
    {
        Ok(body) => Ok(body.to_bytes()),
        Err(_) => {
            let message = format!("The body could not be read (at most {} KiB).", limit / 1024);
            Err(error_response(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &message,
                request_id,
            ))
        }
    }
}

/// 405, with the methods the path's `routes` take in `Allow`.
fn method_not_allowed<'r>(
    method: &Method,
    routes: impl IntoIterator<Item = &'r Route>,
    request_id: &HeaderValue,
) -> Response<ResponseBody> {
    let allow = routes::allow(routes);
    let message = format!("{method} is not allowed here: this admin endpoint answers {allow}.");
    let mut response = error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &message,
        request_id,
    );
    if let Ok(value) = HeaderValue::from_str(&allow) {
        response.headers_mut().insert(http::header::ALLOW, value);
    }
    response
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

/// Who presents the request's token: the bootstrap admin (the token of `admin.token_env`,
/// compared in constant time), the holder of a stored admin token, or nobody (`None`).
/// Without `admin.token_env` the admin API is open and every caller is an admin.
fn caller(state: &SharedState, request: &Request<Incoming>) -> Option<Caller> {
    let gateway = state.gateway.load();
    let Some(token) = gateway.config.admin.as_ref().and_then(|a| a.token.as_ref()) else {
        return Some(Caller::bootstrap("anonymous"));
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
    let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    let bootstrap = Sha256::digest(token.0.as_bytes());
    if bool::from(presented.ct_eq(&bootstrap)) {
        return Some(Caller::bootstrap("bootstrap"));
    }
    let directory = gateway.management.directory();
    let stored = directory.token(&presented)?;
    Some(Caller {
        id: stored.id.clone(),
        role: stored.role,
        team: stored.team.clone(),
    })
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
