//! One try of one model target: the request in the provider's own API (built by its
//! [`Provider`]), sent, and its answer either committed to (a stream relayed, a whole answer
//! read into OpenAI's shape) or handed back so that the next target is tried.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::provider::{provider_for, Outgoing, Provider, Verdict};
use super::usage::{LlmCall, Usage};
use super::{relay, responses_api, ApiError, LlmClient};
use crate::body::ResponseBody;
use crate::config::spec::LlmProviderSpec;
use crate::observability::metrics::Outcome;

/// Non-streamed provider answers are read up to this size.
const MAX_ANSWER_BYTES: usize = 32 << 20;

/// What one try sends, and who reads its answer.
pub(super) struct Attempt {
    provider: &'static dyn Provider,
    outgoing: Outgoing,
    /// `Some(include_usage)` for a streamed request.
    stream: Option<bool>,
    /// How a Responses API request reaches this provider (`None`: not one).
    responses: Option<Responses>,
}

/// A Responses API call: relayed to a provider that serves the API, or translated into a
/// chat call and its answer back ([`responses_api`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Responses {
    Relayed,
    ViaChat,
}

/// Why a try failed, and what the client gets if no target is left.
type Failure = (Outcome, ApiError);

/// The request for `provider` in its own API, or why it cannot express it (a 400 for the
/// client if no other target can).
pub(super) fn outgoing(
    provider: &LlmProviderSpec,
    endpoint: &str,
    request: &Map<String, Value>,
    model: &str,
    stream: bool,
) -> Result<Attempt, ApiError> {
    let api = provider_for(provider.kind);
    if endpoint == "responses" && !api.speaks_responses() {
        let mut chat = responses_api::to_chat_request(request).map_err(ApiError::bad_request)?;
        if stream {
            // The usage chunk carries what the Response's `usage` reports.
            chat.insert(
                "stream_options".into(),
                serde_json::json!({"include_usage": true}),
            );
        }
        return Ok(Attempt {
            provider: api,
            outgoing: api.outgoing(provider, "chat/completions", &chat, model, stream)?,
            stream: stream.then_some(true),
            responses: Some(Responses::ViaChat),
        });
    }
    let include_usage = request
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        == Some(true);
    Ok(Attempt {
        provider: api,
        outgoing: api.outgoing(provider, endpoint, request, model, stream)?,
        stream: stream.then_some(include_usage),
        responses: (endpoint == "responses").then_some(Responses::Relayed),
    })
}

/// One provider call. `Ok` is the answer for the client (even a provider's 4xx); `Err` means
/// the next target may be tried, with what the client gets if none is left.
pub(super) async fn try_target(
    client: &LlmClient,
    attempt: Attempt,
    first_token: Duration,
    deadline: Instant,
    call: &Arc<LlmCall>,
    prompt_estimate: u64,
) -> Result<(u16, Response<ResponseBody>, Option<Bytes>), Failure> {
    let Attempt {
        provider,
        outgoing,
        stream,
        responses,
    } = attempt;
    let mut builder = Request::post(outgoing.uri).header(CONTENT_TYPE, "application/json");
    for (name, value) in outgoing.headers {
        builder = builder.header(name, value);
    }
    let request = builder
        .body(Full::new(Bytes::from(outgoing.body)))
        .map_err(|e| unavailable(Outcome::ConnectError, e.to_string()))?;
    let first_token_deadline = Instant::now() + first_token;
    let response = match tokio::time::timeout_at(first_token_deadline, client.request(request)).await {
        Err(_) => return Err(timed_out()),
        Ok(Err(error)) => {
            let outcome = if error.is_connect() {
                Outcome::ConnectError
            } else {
                Outcome::Reset
            };
            return Err(unavailable(
                outcome,
                format!("The provider could not be reached: {error}."),
            ));
        }
        Ok(Ok(response)) => response,
    };
    let status = response.status();
    if provider.verdict(status) == Verdict::NextTarget {
        return Err(passed_on(status));
    }
    let (parts, incoming) = response.into_parts();
    let content_type = parts.headers.get(CONTENT_TYPE).cloned();
    let Some(include_usage) = stream.filter(|_| status.is_success()) else {
        // A whole answer (or a provider's 4xx, returned as it is).
        let read = read_whole(provider, incoming, status, deadline, call, prompt_estimate).await?;
        return Ok(answered(read, content_type, responses));
    };
    // Commit to this provider only once its stream has started.
    let mut incoming = incoming;
    let first = match tokio::time::timeout_at(first_token_deadline, incoming.frame()).await {
        Err(_) => return Err(timed_out()),
        Ok(Some(Ok(frame))) => frame,
        Ok(_) => {
            return Err(unavailable(
                Outcome::Reset,
                "The provider's stream ended before it began.",
            ))
        }
    };
    let translator = provider.stream_translator(include_usage, &call.model, unix_seconds());
    let relay = relay::Relay::new(
        first,
        incoming,
        deadline,
        call.clone(),
        prompt_estimate,
        translator,
        responses == Some(Responses::Relayed),
    );
    let body = match responses {
        Some(Responses::ViaChat) => ResponseBody::boxed(responses_api::EventsBody::new(
            ResponseBody::boxed(relay),
            Some(call.clone()),
        )),
        _ => ResponseBody::boxed(relay),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        content_type.unwrap_or_else(|| HeaderValue::from_static("text/event-stream")),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok((status.as_u16(), response, None))
}

/// The client's answer for a whole answer read: as it is, or, for a Responses request
/// served through chat, its chat completion as a Response object.
fn answered(
    (status, bytes): (StatusCode, Bytes),
    content_type: Option<HeaderValue>,
    responses: Option<Responses>,
) -> (u16, Response<ResponseBody>, Option<Bytes>) {
    let bytes = match responses {
        Some(Responses::ViaChat) if status.is_success() => serde_json::from_slice::<Value>(&bytes)
            .map(|completion| Bytes::from(responses_api::from_chat(&completion).to_string()))
            .unwrap_or(bytes),
        _ => bytes,
    };
    let mut response = Response::new(ResponseBody::full(bytes.clone()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        content_type.unwrap_or_else(|| HeaderValue::from_static("application/json")),
    );
    (status.as_u16(), response, Some(bytes))
}

/// A whole answer, read by `provider` into OpenAI's shape (an error answer too) and accounted.
async fn read_whole(
    provider: &dyn Provider,
    incoming: Incoming,
    status: StatusCode,
    deadline: Instant,
    call: &LlmCall,
    prompt_estimate: u64,
) -> Result<(StatusCode, Bytes), Failure> {
    let collected =
        tokio::time::timeout_at(deadline, Limited::new(incoming, MAX_ANSWER_BYTES).collect()).await;
    let bytes = match collected {
        Err(_) => return Err(timed_out()),
        Ok(Err(_)) => return Err(unavailable(Outcome::Reset, "The provider's answer broke off.")),
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    // Reading the answer into the client's shape is Levee's time, though spent inside the
    // attempt (which counts as the provider's wait).
    let reading = Instant::now();
    let bytes = if status.is_success() {
        let Some(answer) = provider.answer(bytes, &call.model, unix_seconds()) else {
            return Err(unavailable(
                Outcome::Reset,
                "The provider's answer could not be read.",
            ));
        };
        match answer.usage {
            Some(usage) => call.report(usage),
            None => call.estimate(Usage::plain(prompt_estimate, 0)),
        }
        answer.body
    } else {
        provider.error_answer(bytes)
    };
    call.add_levee_time(reading.elapsed());
    Ok((status, bytes))
}

/// The failure for an answer whose status moves the call to the next target.
fn passed_on(status: StatusCode) -> Failure {
    let outcome = Outcome::from_status(status.as_u16());
    let error = if status == StatusCode::TOO_MANY_REQUESTS {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "rate_limit_exceeded",
            "Every provider for this model is rate limiting; retry later.",
        )
    } else {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "api_error",
            "upstream_error",
            format!("The provider answered {status}."),
        )
    };
    (outcome, error)
}

fn unavailable(outcome: Outcome, message: impl Into<String>) -> Failure {
    (
        outcome,
        ApiError::new(StatusCode::BAD_GATEWAY, "api_error", "upstream_error", message),
    )
}

fn timed_out() -> Failure {
    (
        Outcome::Timeout,
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "api_error",
            "upstream_timeout",
            "The model did not start answering in time.",
        ),
    )
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
