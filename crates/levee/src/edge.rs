//! The one place where failures become HTTP answers.
//!
//! Every error the gateway itself produces is JSON of one shape (PRODUCT.md section 4):
//! `{"error": {"code", "message", "request_id"}}`, plus OpenAI's `type` (the error class its
//! SDKs map to exceptions), so that the same errors also read right to OpenAI clients of the
//! AI gateway. Modules report failures with their own
//! error types; this module alone decides the status code and the public wording, so the
//! contract is kept in a single file.

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use serde::Serialize;

use crate::auth::AuthError;
use crate::body::ResponseBody;
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
    #[error("the request's headers are larger than allowed")]
    HeadersTooLarge,
    #[error("the request is malformed or ambiguous")]
    BadRequest,
    #[error("the client did not send its request in time")]
    RequestTimeout,
    #[error("the request's body is larger than allowed")]
    BodyTooLarge,
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::NoRoute => StatusCode::NOT_FOUND,
            Rejection::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Rejection::Auth(AuthError::Forbidden) => StatusCode::FORBIDDEN,
            Rejection::Auth(_) => StatusCode::UNAUTHORIZED,
            Rejection::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Rejection::BadRequest => StatusCode::BAD_REQUEST,
            Rejection::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Rejection::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::Upstream(e) => match e {
                UpstreamError::Connect { .. } | UpstreamError::Exchange { .. } => StatusCode::BAD_GATEWAY,
                UpstreamError::ConnectTimeout { .. } | UpstreamError::Timeout { .. } => {
                    StatusCode::GATEWAY_TIMEOUT
                }
                UpstreamError::NoTarget { .. } | UpstreamError::BulkheadFull { .. } => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            },
        }
    }

    /// The stable snake_case code clients and dashboards key on.
    pub fn code(&self) -> &'static str {
        match self.status() {
            StatusCode::NOT_FOUND => "no_route",
            StatusCode::TOO_MANY_REQUESTS => "rate_limited",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "headers_too_large",
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::REQUEST_TIMEOUT => "request_timeout",
            StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
            StatusCode::GATEWAY_TIMEOUT => "upstream_timeout",
            StatusCode::SERVICE_UNAVAILABLE => "upstream_unavailable",
            _ => "upstream_error",
        }
    }

    /// A sentence for humans that names no internal address.
    pub fn public_message(&self) -> &'static str {
        match self {
            Rejection::NoRoute => "No route matches this request.",
            Rejection::Overloaded => "The gateway is overloaded; try again shortly.",
            Rejection::RateLimited => "Too many requests; slow down and retry after the time in Retry-After.",
            Rejection::Auth(AuthError::Missing) => {
                "This route needs a credential (an API key or a bearer token)."
            }
            Rejection::Auth(AuthError::Invalid) => "The credential is not valid.",
            Rejection::Auth(AuthError::Forbidden) => "This consumer may not use this route.",
            Rejection::HeadersTooLarge => "The request's headers are larger than this gateway accepts.",
            Rejection::BadRequest => "The request is malformed or its framing is ambiguous.",
            Rejection::RequestTimeout => "The request was not sent in time.",
            Rejection::BodyTooLarge => "The request's body is larger than this route accepts.",
            Rejection::Upstream(e) => match e {
                UpstreamError::Connect { .. } => "The upstream service could not be reached.",
                UpstreamError::Exchange { .. } => "The upstream service failed while answering.",
                UpstreamError::ConnectTimeout { .. } => "Connecting to the upstream service timed out.",
                UpstreamError::Timeout { .. } => "The upstream service did not answer in time.",
                UpstreamError::NoTarget { .. } => "No upstream target is available.",
                UpstreamError::BulkheadFull { .. } => "The upstream service is at its concurrency limit.",
            },
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
    request_id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
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

/// A JSON error response in the contract's shape.
pub fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: &HeaderValue,
) -> Response<ResponseBody> {
    let body = ErrorBody {
        error: ErrorDetail {
            code,
            message,
            request_id: request_id.to_str().unwrap_or(""),
            kind: error_type(status),
        },
    };
    let json = serde_json::to_vec(&body).unwrap_or_default();
    let mut response = Response::new(ResponseBody::full(json));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The whole HTTP/1.1 answer written straight to a connection refused at accept, past a
/// connection cap: no request was parsed (so there is no request id), and the same JSON
/// shape as every other error.
pub fn connection_refusal() -> Vec<u8> {
    let body = ErrorBody {
        error: ErrorDetail {
            code: "upstream_unavailable",
            message: "The gateway is at its connection limit; try again shortly.",
            request_id: "",
            kind: error_type(StatusCode::SERVICE_UNAVAILABLE),
        },
    };
    let json = serde_json::to_vec(&body).unwrap_or_default();
    let mut answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        json.len()
    )
    .into_bytes();
    answer.extend_from_slice(&json);
    answer
}

/// The response for a rejection.
pub fn reject(rejection: &Rejection, request_id: &HeaderValue) -> Response<ResponseBody> {
    error_response(
        rejection.status(),
        rejection.code(),
        rejection.public_message(),
        request_id,
    )
}
