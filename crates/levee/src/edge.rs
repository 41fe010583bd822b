//! The one place where failures become HTTP answers.
//!
//! Every error the gateway itself produces starts as a typed [`Rejection`]: the module that
//! refused names the failure, and this module alone decides the status, the stable `code`,
//! the public wording and the headers that go with it (`Retry-After`, `WWW-Authenticate`),
//! so the contract (PRODUCT.md section 4, docs/observability.md) is kept in a single file.
//!
//! The body comes in the shape the client speaks ([`Shape`]): Levee's own
//! `{"error": {"type", "code", "message", "request_id"}}` (with OpenAI's error class as
//! `type`), OpenAI's (the same plus `param`, on AI gateway routes, so OpenAI SDKs raise their
//! usual exceptions), or Anthropic's `{"type": "error", "error": {"type", "message"}}` (for
//! clients of the Messages API), or, for gRPC calls, no body and the status in `grpc-status`
//! (see [`Rejection::grpc_code`] for the mapping).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use serde::Serialize;
use serde_json::json;

use crate::auth::AuthError;
use crate::body::ResponseBody;
use crate::grpc;
use crate::headers::X_REQUEST_ID;
use crate::llm::ApiError;
use crate::upstream::UpstreamError;

/// A request the gateway answers itself instead of proxying.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("no route matches this request")]
    NoRoute,
    #[error("the gateway is at its in-flight request limit")]
    Overloaded,
    #[error("the route's rate limit is exceeded")]
    RateLimited,
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A published service called by a consumer without an approved subscription.
    #[error("the consumer has no approved subscription to this service")]
    SubscriptionRequired,
    #[error("the request's headers are larger than allowed")]
    HeadersTooLarge,
    #[error("the request is malformed or ambiguous")]
    BadRequest,
    #[error("the client did not send its request in time")]
    RequestTimeout,
    #[error("the request's body is larger than allowed")]
    BodyTooLarge,
    #[error("a fault was injected (chaos testing)")]
    FaultInjected(StatusCode),
    /// The route's API version is retired (`lifecycle.state: retired`); the message names
    /// its sunset and link when known.
    #[error("the route is retired")]
    Gone(Arc<str>),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The AI gateway's own refusals (unknown model, quota, every provider failing): each
    /// names its status, OpenAI error class and code.
    #[error("{}", .0.message)]
    Llm(ApiError),
}

impl From<ApiError> for Rejection {
    fn from(error: ApiError) -> Rejection {
        Rejection::Llm(error)
    }
}

/// The error body's shape: the API the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Levee,
    OpenAi,
    Anthropic,
    /// A gRPC (or gRPC-Web) call: HTTP 200, no body, the status in `grpc-status` and
    /// `grpc-message` headers (a "trailers-only" answer).
    Grpc(grpc::Flavor),
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::NoRoute => StatusCode::NOT_FOUND,
            Rejection::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Rejection::Auth(AuthError::Forbidden) | Rejection::SubscriptionRequired => StatusCode::FORBIDDEN,
            Rejection::Auth(_) => StatusCode::UNAUTHORIZED,
            Rejection::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Rejection::BadRequest => StatusCode::BAD_REQUEST,
            Rejection::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Rejection::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::FaultInjected(status) => *status,
            Rejection::Gone(_) => StatusCode::GONE,
            Rejection::Upstream(e) => match e {
                UpstreamError::Connect { .. }
                | UpstreamError::Exchange { .. }
                | UpstreamError::Tls { .. }
                | UpstreamError::Refused { .. } => StatusCode::BAD_GATEWAY,
                UpstreamError::ConnectTimeout { .. } | UpstreamError::Timeout { .. } => {
                    StatusCode::GATEWAY_TIMEOUT
                }
                UpstreamError::NoTarget { .. } | UpstreamError::BulkheadFull { .. } => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            },
            Rejection::Llm(error) => error.status,
        }
    }

    /// The stable snake_case code clients and dashboards key on: each rejection names its
    /// own, so two failures that share a status stay apart (shedding is `overloaded`, an
    /// upstream with no admitted target `upstream_unavailable`).
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::NoRoute => "no_route",
            Rejection::Overloaded => "overloaded",
            Rejection::RateLimited => "rate_limited",
            Rejection::Auth(AuthError::Forbidden) => "forbidden",
            Rejection::Auth(AuthError::Expired) => "key_expired",
            Rejection::Auth(AuthError::Revoked) => "key_revoked",
            Rejection::Auth(_) => "unauthorized",
            Rejection::SubscriptionRequired => "subscription_required",
            Rejection::HeadersTooLarge => "headers_too_large",
            Rejection::BadRequest => "bad_request",
            Rejection::RequestTimeout => "request_timeout",
            Rejection::BodyTooLarge => "body_too_large",
            Rejection::FaultInjected(_) => "fault_injected",
            Rejection::Gone(_) => "gone",
            Rejection::Upstream(e) => match e {
                UpstreamError::Connect { .. }
                | UpstreamError::Exchange { .. }
                | UpstreamError::Refused { .. } => "upstream_error",
                UpstreamError::Tls { .. } => "upstream_tls_error",
                UpstreamError::ConnectTimeout { .. } | UpstreamError::Timeout { .. } => "upstream_timeout",
                UpstreamError::NoTarget { .. } | UpstreamError::BulkheadFull { .. } => "upstream_unavailable",
            },
            Rejection::Llm(error) => error.code,
        }
    }

    /// The gRPC status a gRPC client gets for this rejection.
    pub fn grpc_code(&self) -> grpc::Code {
        use grpc::Code;
        match self {
            Rejection::RateLimited | Rejection::BodyTooLarge | Rejection::HeadersTooLarge => {
                Code::ResourceExhausted
            }
            Rejection::Auth(AuthError::Forbidden) | Rejection::SubscriptionRequired => Code::PermissionDenied,
            Rejection::Auth(_) => Code::Unauthenticated,
            Rejection::NoRoute | Rejection::Gone(_) => Code::Unimplemented,
            Rejection::BadRequest => Code::Internal,
            Rejection::RequestTimeout
            | Rejection::Upstream(UpstreamError::Timeout { .. } | UpstreamError::ConnectTimeout { .. }) => {
                Code::DeadlineExceeded
            }
            Rejection::Overloaded | Rejection::Upstream(_) => Code::Unavailable,
            Rejection::FaultInjected(status) => grpc_code_for_http(*status),
            Rejection::Llm(error) => grpc_code_for_http(error.status),
        }
    }

    /// OpenAI's error class (`type`), which its SDKs map to exceptions.
    pub fn kind(&self) -> &'static str {
        match self {
            Rejection::Llm(error) => error.kind,
            other => error_type(other.status()),
        }
    }

    /// A sentence for humans that names no internal address.
    pub fn public_message(&self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            Rejection::NoRoute => "No route matches this request.",
            Rejection::Overloaded => "The gateway is overloaded; try again shortly.",
            Rejection::RateLimited => "Too many requests; slow down and retry after the time in Retry-After.",
            Rejection::Auth(AuthError::Missing) => {
                "This route needs a credential (an API key or a bearer token)."
            }
            Rejection::Auth(AuthError::Invalid) => "The credential is not valid.",
            Rejection::Auth(AuthError::Forbidden) => "This consumer may not use this route.",
            Rejection::Auth(AuthError::Expired) => "This API key has expired.",
            Rejection::Auth(AuthError::Revoked) => "This API key was revoked.",
            Rejection::SubscriptionRequired => {
                "This service needs an approved subscription: ask for one with POST /api/v1/subscriptions on the admin API."
            }
            Rejection::HeadersTooLarge => "The request's headers are larger than this gateway accepts.",
            Rejection::BadRequest => "The request is malformed or its framing is ambiguous.",
            Rejection::RequestTimeout => "The request was not sent in time.",
            Rejection::BodyTooLarge => "The request's body is larger than this route accepts.",
            Rejection::FaultInjected(_) => "A fault was injected by the gateway (chaos testing).",
            Rejection::Upstream(e) => match e {
                UpstreamError::Connect { .. } => "The upstream service could not be reached.",
                UpstreamError::Exchange { .. } => "The upstream service failed while answering.",
                UpstreamError::Tls { .. } => {
                    "The TLS handshake with the upstream service failed (certificate or protocol)."
                }
                UpstreamError::Refused { .. } => "The upstream service refused the request without processing it.",
                UpstreamError::ConnectTimeout { .. } => "Connecting to the upstream service timed out.",
                UpstreamError::Timeout { .. } => "The upstream service did not answer in time.",
                UpstreamError::NoTarget { .. } => "No upstream target is available.",
                UpstreamError::BulkheadFull { .. } => "The upstream service is at its concurrency limit.",
            },
            Rejection::Llm(error) => return Cow::Owned(error.message.clone()),
            Rejection::Gone(message) => return Cow::Owned(message.to_string()),
        })
    }

    /// How long the client should wait before trying again, when that is known.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Rejection::Overloaded => Some(Duration::from_secs(1)),
            Rejection::Llm(error) => error.retry_after,
            _ => None,
        }
    }
}

/// OpenAI's error class for a status.
pub fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// The gRPC status for an HTTP status, as gRPC clients map one they receive
/// (grpc/doc/http-grpc-status-mapping.md).
fn grpc_code_for_http(status: StatusCode) -> grpc::Code {
    match status.as_u16() {
        400 => grpc::Code::Internal,
        401 => grpc::Code::Unauthenticated,
        403 => grpc::Code::PermissionDenied,
        404 => grpc::Code::Unimplemented,
        429 | 502 | 503 | 504 => grpc::Code::Unavailable,
        _ => grpc::Code::Unknown,
    }
}

/// Anthropic's error class for a status (its Messages API error reference).
fn anthropic_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// The body of an error in `shape`.
fn error_body(
    shape: Shape,
    status: StatusCode,
    kind: &str,
    code: &str,
    message: &str,
    request_id: &str,
) -> Vec<u8> {
    // Written straight from borrowed fields: shedding answers this under overload, so it
    // builds no intermediate JSON tree.
    let detail = Detail {
        kind,
        code,
        message,
        request_id,
        param: (shape == Shape::OpenAi).then_some(()),
    };
    let written = match shape {
        Shape::Levee | Shape::OpenAi | Shape::Grpc(_) => serde_json::to_vec(&LeveeBody { error: detail }),
        Shape::Anthropic => serde_json::to_vec(&AnthropicBody {
            kind: "error",
            error: AnthropicDetail {
                kind: anthropic_type(status),
                message,
            },
        }),
    };
    written.unwrap_or_default()
}

#[derive(Serialize)]
struct LeveeBody<'a> {
    error: Detail<'a>,
}

/// Levee's error object; OpenAI's is the same with `param` (always null here).
#[derive(Serialize)]
struct Detail<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    code: &'a str,
    message: &'a str,
    request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "null")]
    param: Option<()>,
}

fn null<S: serde::Serializer>(_: &Option<()>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_none()
}

#[derive(Serialize)]
struct AnthropicBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: AnthropicDetail<'a>,
}

#[derive(Serialize)]
struct AnthropicDetail<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
}

/// A JSON error response in Levee's shape, for errors that are not a [`Rejection`] (the
/// admin API's).
pub fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: &HeaderValue,
) -> Response<ResponseBody> {
    let body = error_body(
        Shape::Levee,
        status,
        error_type(status),
        code,
        message,
        request_id.to_str().unwrap_or(""),
    );
    json_response(status, body)
}

/// Levee's error with one more top-level field beside `error` (the admin API's refused
/// reload lists every problem in `errors`).
pub fn error_response_with(
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: &HeaderValue,
    (key, value): (&str, serde_json::Value),
) -> Response<ResponseBody> {
    let mut body = json!({
        "error": {
            "type": error_type(status),
            "code": code,
            "message": message,
            "request_id": request_id.to_str().unwrap_or(""),
        }
    });
    if let Some(object) = body.as_object_mut() {
        object.insert(key.to_owned(), value);
    }
    json_response(status, serde_json::to_vec(&body).unwrap_or_default())
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A rejection as a gRPC client expects it: HTTP 200 with no body and the status in the
/// headers (trailers-only), so every gRPC library reports the gateway's refusal as the
/// status it is (`UNAVAILABLE`, `RESOURCE_EXHAUSTED`...), with Levee's code in the message.
fn grpc_rejection(
    rejection: &Rejection,
    flavor: grpc::Flavor,
    request_id: &HeaderValue,
) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::empty());
    let headers = response.headers_mut();
    let content_type = match flavor {
        grpc::Flavor::Grpc => "application/grpc",
        grpc::Flavor::Web { text: false } => "application/grpc-web+proto",
        grpc::Flavor::Web { text: true } => "application/grpc-web-text+proto",
    };
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        grpc::GRPC_STATUS.clone(),
        HeaderValue::from(rejection.grpc_code() as u16),
    );
    let message = format!("{} ({})", rejection.public_message(), rejection.code());
    headers.insert(grpc::GRPC_MESSAGE.clone(), grpc::encode_message(&message));
    if let Some(after) = rejection.retry_after() {
        let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        headers.insert(RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    }
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
    response
}

/// The JSON body of an answer to a request hyper's HTTP/1 parser refused (400, 414 or
/// 431), which Levee writes in place of hyper's bare one.
pub fn parse_error_body(status: StatusCode, request_id: &str) -> Vec<u8> {
    let (code, message) = match status {
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => (
            Rejection::HeadersTooLarge.code(),
            Rejection::HeadersTooLarge.public_message(),
        ),
        StatusCode::URI_TOO_LONG => (
            "uri_too_long",
            Cow::Borrowed("The request's URI is longer than this gateway accepts."),
        ),
        _ => (
            Rejection::BadRequest.code(),
            Rejection::BadRequest.public_message(),
        ),
    };
    error_body(
        Shape::Levee,
        status,
        error_type(status),
        code,
        &message,
        request_id,
    )
}

/// The whole HTTP/1.1 answer written straight to a connection refused at accept, past a
/// connection cap: no request was parsed (so there is no request id), and the same JSON
/// shape as every other error.
pub fn connection_refusal() -> Vec<u8> {
    let status = StatusCode::SERVICE_UNAVAILABLE;
    let json = error_body(
        Shape::Levee,
        status,
        error_type(status),
        Rejection::Overloaded.code(),
        "The gateway is at its connection limit; try again shortly.",
        "",
    );
    let mut answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        json.len()
    )
    .into_bytes();
    answer.extend_from_slice(&json);
    answer
}

/// The response for a rejection, in the client's shape, with the headers that belong to it.
pub fn reject(rejection: &Rejection, shape: Shape, request_id: &HeaderValue) -> Response<ResponseBody> {
    if let Shape::Grpc(flavor) = shape {
        return grpc_rejection(rejection, flavor, request_id);
    }
    let status = rejection.status();
    let body = error_body(
        shape,
        status,
        rejection.kind(),
        rejection.code(),
        &rejection.public_message(),
        request_id.to_str().unwrap_or(""),
    );
    let mut response = json_response(status, body);
    let headers = response.headers_mut();
    if let Some(after) = rejection.retry_after() {
        // Whole seconds, rounded up, at least one.
        let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        headers.insert(RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    }
    if let Rejection::Auth(
        AuthError::Missing | AuthError::Invalid | AuthError::Expired | AuthError::Revoked,
    ) = rejection
    {
        headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
    response
}
