//! The AI gateway: one OpenAI-compatible API in front of the configured LLM providers.
//!
//! An `llm: true` route serves `POST …/chat/completions` (streamed or not),
//! `POST …/embeddings` and `GET …/models`. The `model` a client sends names one of
//! `llm.models`; its targets are tried in order (`fallback`): a connect failure, a timeout
//! before the answer starts, a 429 or a 5xx moves to the next target, while a provider's 4xx
//! (the client's request was wrong) is returned as it is. Once the first streamed byte went to
//! the client nothing is retried. Every answer names the provider and model that produced it
//! (`x-levee-provider`, `x-levee-model`), and token usage and cost are recorded for every call,
//! streams included (see [`usage`]).
//!
//! This is the backend of the one pipeline (`pipeline/mod.rs`): auth, rate limits, shedding,
//! faults, fallback and recording are the pipeline's, as on every route. The refusals made
//! here are [`ApiError`]s; the pipeline's error edge answers them OpenAI-shaped
//! (`{"error": {"message", "type", "code", "param"}}`), so OpenAI SDKs raise their usual
//! exceptions, and Anthropic-shaped on `…/v1/messages`.
//!
//! Provider kinds, one file each: `openai` and `openai_compatible` ([`openai`]), `azure_openai`
//! ([`azure`]), `anthropic` ([`anthropic`]) and `gemini` ([`gemini`]). Each implements the
//! `Provider` trait (`provider.rs`: the outgoing request, reading answers and errors, the stream
//! translator, which statuses move to the next target), and `attempt.rs` makes every call
//! through it, so nothing else here knows the kinds. A new provider is a new file here with its
//! `Provider`, one line in `provider::provider_for`, and its variant of
//! `config::spec::LlmProviderKind` (in the config, with its validation).

pub mod anthropic;
mod attempt;
pub mod azure;
pub mod cache;
pub mod fleet_quota;
pub mod gemini;
mod guarded;
pub mod messages_api;
pub mod openai;
pub mod prompt;
mod provider;
pub mod quota;
pub mod relay;
pub mod responses_api;
mod retell;
pub mod sse;
pub mod targets;
pub mod translate;
pub mod usage;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::client_body::ClientBody;
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use crate::body::ResponseBody;
use crate::config::spec::{CanaryTarget, LlmModelSpec, LlmSpec};
use crate::observability::metrics::MetricsShard;
use crate::observability::metrics::Outcome;
use crate::observability::UpstreamFacts;
use crate::record::RequestRecord;
use crate::slo::canary::Canary;
use attempt::{outgoing, try_target};
pub use targets::TargetState;
use targets::{enter_provider, try_order, Ticket};
use usage::LlmCall;

/// The per-worker client for LLM providers (HTTPS or plain HTTP, pooled).
pub type LlmClient = crate::outbound::OutboundClient<Full<Bytes>>;

pub static X_LEVEE_PROVIDER: http::HeaderName = http::HeaderName::from_static("x-levee-provider");
pub static X_LEVEE_MODEL: http::HeaderName = http::HeaderName::from_static("x-levee-model");
/// On answers: `hit` or `miss` (for requests the cache considered). On requests: `use` asks
/// for the cache whatever the temperature, `skip` bypasses it.
pub static X_LEVEE_CACHE: http::HeaderName = http::HeaderName::from_static("x-levee-cache");

/// A worker's client for the providers.
pub fn client() -> LlmClient {
    crate::outbound::client(Duration::from_secs(10))
}

/// A refusal of the AI gateway's own (unknown model, spent quota, every provider failing):
/// the pipeline hands it to its error edge, which answers in the client's shape.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// OpenAI's error class (`invalid_request_error`, `rate_limit_error`, `api_error`, ...).
    pub kind: &'static str,
    pub code: &'static str,
    pub message: String,
    /// Sent as `Retry-After` (rate limits).
    pub retry_after: Option<Duration>,
}

impl ApiError {
    fn new(
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            kind,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
            message,
        )
    }
}

/// The backend of an `llm: true` route (PRODUCT.md section 7, step 6): the models' targets,
/// with the answer cache, consumer quotas, translation and usage accounting as its steps.
/// Everything before (auth, rate limits, faults, shedding) and after (fallback, recording)
/// is the pipeline's, as on every route.
pub async fn serve(
    backend: &Backend<'_>,
    parts: Parts,
    body: ClientBody,
    record: &mut RequestRecord,
) -> Result<Response<ResponseBody>, ApiError> {
    dispatch(backend, parts, body, record).await
}

/// The answer when the config has no `llm` section.
pub fn no_models() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "not_found",
        "No models are configured.",
    )
}

/// What the AI gateway needs for one request: the config, the process-wide state of its
/// providers and models (kept across reloads by the gateway), the worker's client and
/// metrics, and the route's limits and model canary. The pipeline hands it over, so the AI
/// gateway knows nothing of the gateway's own types.
pub struct Backend<'a> {
    pub llm: &'a LlmSpec,
    pub client: &'a LlmClient,
    pub metrics: &'a MetricsShard,
    pub cache: Option<&'a cache::AnswerCache>,
    pub quotas: &'a HashMap<Arc<str>, Arc<fleet_quota::ConsumerLimits>>,
    /// More limits the call must pass besides its consumer's: the virtual key's and its
    /// team's (the management plane's).
    pub key_quotas: Vec<Arc<fleet_quota::ConsumerLimits>>,
    /// The models the caller's key may ask for (`None`: every model).
    pub allowed_models: Option<&'a [Arc<str>]>,
    /// Told each settled call's tokens and cost (the key's usage).
    pub on_usage: Option<Arc<dyn Fn(u64, f64) + Send + Sync>>,
    /// Per model, per target.
    pub targets: &'a [Vec<Arc<TargetState>>],
    /// Per provider.
    pub bulkheads: &'a [Option<Arc<levee_resilience::Bulkhead>>],
    pub canary: Option<&'a Canary>,
    pub max_body_bytes: u64,
    pub read_timeout: Duration,
    /// The route's guardrails (empty: none).
    pub guardrails: Arc<[crate::config::guardrails::GuardrailSpec]>,
}

impl Backend<'_> {
    /// The model a request for `model` goes to: the route's model canary takes its share of
    /// the requests for the model it stands in for, unless it was rolled back.
    fn choose_model<'m>(&self, model: &'m LlmModelSpec, models: &'m [LlmModelSpec]) -> &'m LlmModelSpec {
        let canary = self
            .canary
            .filter(
                |c| matches!(&c.spec.target, CanaryTarget::Model { instead_of } if *instead_of == model.name),
            )
            .filter(|c| c.takes_request());
        canary
            .and_then(|c| models.iter().find(|m| m.name == c.spec.upstream_name))
            .unwrap_or(model)
    }
}

async fn dispatch(
    b: &Backend<'_>,
    parts: Parts,
    body: ClientBody,
    record: &mut RequestRecord,
) -> Result<Response<ResponseBody>, ApiError> {
    let llm = b.llm;
    let path = parts.uri.path();
    if let Some(prompt) = llm.prompts.iter().find(|p| p.path == path) {
        return run_prompt(b, prompt, parts, body, record).await;
    }
    if path.ends_with("/messages") && parts.method == Method::POST {
        return serve_messages(b, parts, body, record).await;
    }
    if path.ends_with("/models") && parts.method == Method::GET {
        return Ok(models(llm));
    }
    let endpoint = if path.ends_with("/chat/completions") {
        "chat/completions"
    } else if path.ends_with("/responses") {
        "responses"
    } else if path.ends_with("/embeddings") {
        "embeddings"
    } else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "unknown_url",
            format!("Unknown request URL: {} {path}.", parts.method),
        ));
    };
    if parts.method != Method::POST {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method_not_allowed",
            format!("{endpoint} takes POST."),
        ));
    }
    let request = read_object(b, body, record).await?;
    let (response, _) = complete(b, endpoint, request, &parts.headers, record).await?;
    Ok(response)
}

/// A call to `endpoint` for a parsed request: model lookup, answer cache, consumer quota,
/// then the targets. Also returns the whole answer when it was not streamed.
async fn complete(
    b: &Backend<'_>,
    endpoint: &'static str,
    mut request: Map<String, Value>,
    headers: &http::HeaderMap,
    record: &mut RequestRecord,
) -> Result<(Response<ResponseBody>, Option<Bytes>), ApiError> {
    let llm = b.llm;
    let Some(name) = request.get("model").and_then(Value::as_str) else {
        return Err(ApiError::bad_request("`model` is required."));
    };
    if b.allowed_models
        .is_some_and(|allowed| !allowed.iter().any(|m| &**m == name))
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "model_not_allowed",
            format!("This API key may not use the model `{name}`."),
        ));
    }
    let Some(model) = llm.models.iter().find(|m| &*m.name == name) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            format!("The model `{name}` does not exist; GET /v1/models lists the models."),
        ));
    };
    let model = b.choose_model(model, &llm.models);
    // What the request was sent to: the model's name is what a model canary's SLO counts.
    record.sent_to = Some(model.name.clone());
    let stream = matches!(endpoint, "chat/completions" | "responses")
        && request.get("stream").and_then(Value::as_bool) == Some(true);
    // For counting when the provider reports nothing: about four bytes per token.
    let prompt_estimate = request
        .get("messages")
        .or_else(|| request.get("input"))
        .map_or(0, |m| m.to_string().len() as u64 / 4);
    if !b.guardrails.is_empty() {
        let verdicts = record.guard_verdicts.get_or_insert_with(Default::default).clone();
        let context = guard_context(b, record);
        guarded::check_request(&b.guardrails, &mut request, prompt_estimate, &context, &verdicts).await?;
    }
    // The answer cache: deterministic, non-streamed chat requests.
    let cache = b
        .cache
        .filter(|_| endpoint == "chat/completions" && cache::wanted(&request, headers.get(&X_LEVEE_CACHE)));
    // A route with guardrails keeps its answers apart: another route's may not be masked.
    let owner = match (b.guardrails.is_empty(), &record.route) {
        (false, Some(route)) => Some(format!(
            "{route}\0{}",
            record.consumer.as_deref().unwrap_or_default()
        )),
        _ => record.consumer.as_deref().map(str::to_owned),
    };
    let key = cache.map(|_| cache::key(owner.as_deref(), &request));
    if let (Some(cache), Some(key)) = (cache, &key) {
        if let Some(hit) = cache.get(key, Instant::now()) {
            b.metrics.lock().ai.record_cache(true);
            // Served from memory: no provider call, no tokens.
            record.llm = Some(Arc::new(LlmCall::new(
                hit.provider.clone(),
                hit.model.clone(),
                None,
            )));
            let body = hit.body.clone();
            return Ok((cached_answer(hit), Some(body)));
        }
        b.metrics.lock().ai.record_cache(false);
    }
    let admitted = admit_quotas(b, &request, prompt_estimate, record).await?;
    let called = call_targets(b, model, endpoint, request, stream, prompt_estimate, record).await;
    match (&called, &record.llm) {
        (Ok(_), Some(call)) if !admitted.is_empty() || b.on_usage.is_some() => {
            let on_usage = b.on_usage.clone();
            call.settle_on_end(Box::new(move |tokens, cost| {
                for (quota, admission) in admitted {
                    quota.settle(admission, tokens, cost);
                }
                if let Some(on_usage) = on_usage {
                    on_usage(tokens, cost);
                }
            }));
        }
        _ => {
            for (quota, admission) in admitted {
                quota.release(admission);
            }
        }
    }
    let (response, whole) = called?;
    let (mut response, whole) = guard_answer(b, response, whole, (stream, endpoint), record).await?;
    if let (Some(cache), Some(key)) = (cache, key) {
        response
            .headers_mut()
            .insert(X_LEVEE_CACHE.clone(), HeaderValue::from_static("miss"));
        if let (true, Some(body), Some(call)) = (response.status().is_success(), whole.clone(), &record.llm) {
            cache.put(
                key,
                cache::Cached {
                    body,
                    content_type: response.headers().get(CONTENT_TYPE).cloned(),
                    provider: call.provider.clone(),
                    model: call.model.clone(),
                },
                Instant::now(),
            );
        }
    }
    Ok((response, whole))
}

/// What a webhook guardrail is told about the call.
fn guard_context<'a>(b: &'a Backend<'_>, record: &'a RequestRecord) -> crate::guardrails::Context<'a> {
    crate::guardrails::Context {
        client: b.client,
        route: record.route.as_deref().unwrap_or_default(),
        consumer: record.consumer.as_deref(),
    }
}

/// The answer's guardrails: a stream is guarded as it streams, a whole answer now (the
/// cache and a translation to the Messages API then see the guarded answer).
async fn guard_answer(
    b: &Backend<'_>,
    response: Response<ResponseBody>,
    whole: Option<Bytes>,
    (stream, endpoint): (bool, &str),
    record: &mut RequestRecord,
) -> Result<(Response<ResponseBody>, Option<Bytes>), ApiError> {
    if !b.guardrails.iter().any(|g| g.on_response) || !response.status().is_success() {
        return Ok((response, whole));
    }
    // A Responses API event stream is not guarded as it streams (its whole answers are).
    if stream && endpoint == "responses" {
        return Ok((response, whole));
    }
    let verdicts = record.guard_verdicts.get_or_insert_with(Default::default).clone();
    if stream {
        let guardrails = b.guardrails.clone();
        let call = record.llm.clone();
        let response = response
            .map(|body| ResponseBody::boxed(guarded::GuardedStream::new(body, guardrails, verdicts, call)));
        return Ok((response, whole));
    }
    let Some(bytes) = &whole else {
        return Ok((response, whole));
    };
    let context = guard_context(b, record);
    match guarded::check_answer(&b.guardrails, bytes, &context, &verdicts).await? {
        None => Ok((response, whole)),
        Some(guarded) => {
            let (mut head, _) = response.into_parts();
            head.headers.remove(http::header::CONTENT_LENGTH);
            Ok((
                Response::from_parts(head, ResponseBody::full(guarded.clone())),
                Some(guarded),
            ))
        }
    }
}

/// `POST …/v1/messages`: a client speaking Anthropic's Messages API, served through the same
/// models and answered in its own shape ([`messages_api`]).
async fn serve_messages(
    b: &Backend<'_>,
    parts: Parts,
    body: ClientBody,
    record: &mut RequestRecord,
) -> Result<Response<ResponseBody>, ApiError> {
    let input = read_object(b, body, record).await?;
    let stream = input.get("stream").and_then(Value::as_bool) == Some(true);
    let request = messages_api::to_chat_request(&input).map_err(ApiError::bad_request)?;
    // Refusals are answered by the pipeline's error edge, in Anthropic's shape for this path.
    let (response, whole) = complete(b, "chat/completions", request, &parts.headers, record).await?;
    let (mut head, inner) = response.into_parts();
    if stream && head.status.is_success() {
        head.headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        return Ok(Response::from_parts(
            head,
            ResponseBody::boxed(messages_api::EventsBody::new(inner, record.llm.clone())),
        ));
    }
    let translated = whole
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .map(|v| {
            if head.status.is_success() {
                messages_api::to_message(&v)
            } else {
                messages_api::to_error(&v)
            }
        })
        .unwrap_or_default();
    head.headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    head.headers.remove(http::header::CONTENT_LENGTH);
    Ok(Response::from_parts(
        head,
        ResponseBody::full(translated.to_string()),
    ))
}

/// `POST <prompt path>` with `{"variables": {...}}` (and optionally `temperature` and
/// `max_tokens`): the rendered template as one user message to the prompt's model, answered
/// as `{"output", "usage", "model"}`.
async fn run_prompt(
    b: &Backend<'_>,
    prompt: &crate::config::spec::LlmPromptSpec,
    parts: Parts,
    body: ClientBody,
    record: &mut RequestRecord,
) -> Result<Response<ResponseBody>, ApiError> {
    if parts.method != Method::POST {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method_not_allowed",
            format!("The prompt `{}` takes POST.", prompt.name),
        ));
    }
    let input = read_object(b, body, record).await?;
    let variables = match input.get("variables") {
        Some(Value::Object(values)) => values.clone(),
        None => Map::new(),
        Some(_) => return Err(ApiError::bad_request("`variables` must be an object.")),
    };
    let text = prompt.template.render(&variables).map_err(|missing| {
        let names: Vec<String> = missing.iter().map(|m| format!("`{m}`")).collect();
        ApiError::bad_request(format!("Missing variables: {}.", names.join(", ")))
    })?;
    let mut request = Map::new();
    request.insert("model".into(), Value::from(&*prompt.model));
    request.insert("messages".into(), json!([{ "role": "user", "content": text }]));
    for key in ["temperature", "max_tokens"] {
        if let Some(value) = input.get(key) {
            request.insert(key.into(), value.clone());
        }
    }
    let (response, whole) = complete(b, "chat/completions", request, &parts.headers, record).await?;
    let answer = whole
        .filter(|_| response.status().is_success())
        .and_then(|body| serde_json::from_slice::<Value>(&body).ok());
    let Some(answer) = answer else {
        // The provider's error, as it is.
        return Ok(response);
    };
    let output = answer
        .pointer("/choices/0/message/content")
        .cloned()
        .unwrap_or(Value::from(""));
    let body = json!({
        "output": output,
        "usage": answer.get("usage").cloned().unwrap_or_default(),
        "model": &*prompt.model,
    });
    let mut rendered = Response::new(ResponseBody::full(serde_json::to_vec(&body).unwrap_or_default()));
    let headers = rendered.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for name in [&X_LEVEE_PROVIDER, &X_LEVEE_MODEL, &X_LEVEE_CACHE] {
        if let Some(value) = response.headers().get(name) {
            headers.insert(name.clone(), value.clone());
        }
    }
    Ok(rendered)
}

/// The budgets and rate limits that apply (the consumer's, the key's, the key's team's):
/// all admitted before any provider is asked, or none.
async fn admit_quotas(
    b: &Backend<'_>,
    request: &Map<String, Value>,
    prompt_estimate: u64,
    record: &RequestRecord,
) -> Result<Vec<(Arc<fleet_quota::ConsumerLimits>, fleet_quota::Admission)>, ApiError> {
    let quotas = record
        .consumer
        .as_ref()
        .and_then(|c| b.quotas.get(c))
        .into_iter()
        .chain(&b.key_quotas);
    let max_tokens = request
        .get("max_completion_tokens")
        .or_else(|| request.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_RESERVED_COMPLETION);
    let mut admitted = Vec::new();
    for quota in quotas {
        match quota.admit(prompt_estimate + max_tokens).await {
            Ok(admission) => admitted.push((quota.clone(), admission)),
            Err(refusal) => {
                for (quota, admission) in admitted {
                    quota.release(admission);
                }
                return Err(refused(refusal));
            }
        }
    }
    Ok(admitted)
}

/// Tokens a call without `max_tokens` reserves for its completion.
const DEFAULT_RESERVED_COMPLETION: u64 = 1024;

/// A quota refusal in OpenAI's shape (`insufficient_quota` for a spent budget, as OpenAI
/// answers when an account's credit is used up).
fn refused(refusal: quota::Refusal) -> ApiError {
    match refusal {
        quota::Refusal::Budget { usd, resets_in } => {
            let mut error = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "insufficient_quota",
                "insufficient_quota",
                format!(
                    "The LLM budget of ${usd} for this period is spent; it renews in {}.",
                    humantime::format_duration(Duration::from_secs(resets_in.as_secs()))
                ),
            );
            error.retry_after = Some(resets_in);
            error
        }
        quota::Refusal::Tokens { retry_after } | quota::Refusal::Requests { retry_after } => {
            let mut error = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "rate_limit_exceeded",
                "This consumer's LLM token or request limit per minute is reached; retry later.",
            );
            error.retry_after = Some(retry_after);
            error
        }
    }
}

/// A cached answer, marked as such.
fn cached_answer(hit: cache::Cached) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(hit.body));
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        hit.content_type
            .unwrap_or_else(|| HeaderValue::from_static("application/json")),
    );
    headers.insert(X_LEVEE_CACHE.clone(), HeaderValue::from_static("hit"));
    if let Ok(value) = HeaderValue::from_str(&hit.provider) {
        headers.insert(X_LEVEE_PROVIDER.clone(), value);
    }
    if let Ok(value) = HeaderValue::from_str(&hit.model) {
        headers.insert(X_LEVEE_MODEL.clone(), value);
    }
    response
}

async fn call_targets(
    b: &Backend<'_>,
    model: &LlmModelSpec,
    endpoint: &'static str,
    request: Map<String, Value>,
    stream: bool,
    prompt_estimate: u64,
    record: &mut RequestRecord,
) -> Result<(Response<ResponseBody>, Option<Bytes>), ApiError> {
    let (llm, client) = (b.llm, b.client);
    let started = Instant::now();
    let deadline = started + model.total;
    let mut last = ApiError::new(
        StatusCode::BAD_GATEWAY,
        "api_error",
        "upstream_error",
        "No provider could serve the request.",
    );
    let states = llm
        .models
        .iter()
        .position(|m| std::ptr::eq(m, model))
        .and_then(|i| b.targets.get(i));
    let order = try_order(model, states.map(Vec::as_slice).unwrap_or_default());
    for (attempt, index) in order.into_iter().enumerate() {
        let Some((provider_index, provider_model)) = model.targets.get(index) else {
            continue;
        };
        let Some(provider) = llm.providers.get(*provider_index) else {
            continue;
        };
        let state = states.and_then(|s| s.get(index));
        // A provider at its bulkhead's cap is passed over, like a target whose breaker is
        // open; the place is held until the answer's body ends.
        let place = match enter_provider(b.bulkheads, b.metrics, *provider_index, &provider.name).await {
            Ok(place) => place,
            Err(full) => {
                last = full;
                continue;
            }
        };
        // A target whose breaker is open is passed over without a call.
        let permit = match state.map(|s| s.admit(Instant::now())) {
            Some(Err(())) => {
                last = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "api_error",
                    "upstream_unavailable",
                    "Every provider for this model is failing; their circuit breakers are open.",
                );
                continue;
            }
            Some(Ok(permit)) => permit,
            None => None,
        };
        // Handed back unused if this try ends before its outcome is recorded (the request
        // cannot be expressed for this provider, or the client left while it waited).
        let mut ticket = Ticket { state, permit };
        record.attempts = u32::try_from(attempt + 1).unwrap_or(u32::MAX);
        let outgoing = match outgoing(provider, endpoint, &request, provider_model, stream) {
            Ok(outgoing) => outgoing,
            Err(error) => {
                // This provider cannot express the request; another target may.
                last = error;
                continue;
            }
        };
        let call = Arc::new(LlmCall::new(
            provider.name.clone(),
            provider_model.clone(),
            usage::price(provider_model, &llm.pricing),
        ));
        let try_started = Instant::now();
        let first_token = model
            .first_token
            .min(deadline.saturating_duration_since(try_started));
        let outcome = try_target(client, outgoing, first_token, deadline, &call, prompt_estimate).await;
        let elapsed = try_started.elapsed();
        record.upstream_wait += elapsed;
        if let Some(state) = state {
            state.settle(ticket.permit.take(), outcome.is_ok(), elapsed, Instant::now());
        }
        let (result_outcome, result) = match outcome {
            Ok((status, response, whole)) => (Outcome::from_status(status), Ok((response, whole))),
            Err((outcome, error)) => (outcome, Err(error)),
        };
        let facts = UpstreamFacts {
            upstream: provider.name.clone(),
            target: provider_model.clone(),
            outcome: result_outcome,
            elapsed,
        };
        match result {
            Ok((mut response, whole)) => {
                name_the_answer(response.headers_mut(), &provider.name, provider_model);
                record.upstream = Some(facts);
                record.llm = Some(call);
                record.bulkhead = place;
                return Ok((response, whole));
            }
            Err(error) => {
                tracing::debug!(provider = %provider.name, model = %provider_model, message = %error.message, "LLM target failed; trying the next");
                // Counted like any upstream attempt, so provider trouble shows in the metrics.
                b.metrics.lock().record_upstream(
                    &facts.upstream,
                    &facts.target,
                    facts.outcome,
                    facts.elapsed,
                );
                last = error;
            }
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    Err(last)
}

/// Every answer names the provider and model that produced it.
fn name_the_answer(headers: &mut http::HeaderMap, provider: &str, model: &str) {
    if let Ok(value) = HeaderValue::from_str(provider) {
        headers.insert(X_LEVEE_PROVIDER.clone(), value);
    }
    if let Ok(value) = HeaderValue::from_str(model) {
        headers.insert(X_LEVEE_MODEL.clone(), value);
    }
}

/// `GET /v1/models`: the configured model names, in OpenAI's list shape.
fn models(llm: &LlmSpec) -> Response<ResponseBody> {
    let data: Vec<Value> = llm
        .models
        .iter()
        .map(|m| json!({ "id": &*m.name, "object": "model", "created": 0, "owned_by": "levee" }))
        .collect();
    let body = json!({ "object": "list", "data": data });
    let mut response = Response::new(ResponseBody::full(serde_json::to_vec(&body).unwrap_or_default()));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The request body as a JSON object (its size goes to the record).
async fn read_object(
    b: &Backend<'_>,
    body: ClientBody,
    record: &mut RequestRecord,
) -> Result<Map<String, Value>, ApiError> {
    let bytes = read_request(body, b.max_body_bytes, b.read_timeout).await?;
    record.bytes_in = Some(Arc::new(std::sync::atomic::AtomicU64::new(bytes.len() as u64)));
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(object)) => Ok(object),
        _ => Err(ApiError::bad_request("The request body must be a JSON object.")),
    }
}

async fn read_request(body: ClientBody, limit: u64, timeout: Duration) -> Result<Bytes, ApiError> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "body_too_large",
                "The request body is larger than this route allows.",
            ))
        }
        Ok(Err(_)) => Err(ApiError::bad_request("The request body could not be read.")),
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            "request_timeout",
            "The request body did not arrive in time.",
        )),
    }
}
