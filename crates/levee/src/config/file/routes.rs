//! Routes as written: the match, header rewrites, retry, fallback, stale-if-error, rate
//! limit, fault injection, canary release, publication in the catalog and lifecycle.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::AuthFile;
use crate::config::duration::DurationStr;

/// A route: which requests it takes and where they go.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// Unique name, used in metrics and logs.
    pub name: String,
    /// What a request must look like to take this route. An empty match takes everything.
    #[serde(default, rename = "match")]
    pub matcher: MatchFile,
    /// The upstream that serves this route (not used by `llm: true` routes).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub upstream: String,
    /// Serve the OpenAI-compatible AI gateway API here (`/v1/chat/completions`,
    /// `/v1/embeddings`, `/v1/models`) from the models under `llm`. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub llm: bool,
    /// Serve one MCP endpoint (Streamable HTTP) here that federates the tools, resources and
    /// prompts of the servers under `mcp`. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mcp: bool,
    /// The MCP servers this endpoint federates (default: every server of `mcp.servers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_servers: Option<Vec<String>>,
    /// Checks on the prompts and answers of an AI gateway route (`llm: true`), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guardrails: Vec<super::GuardrailFile>,
    /// Remove the matched `path_prefix` before forwarding. Default false.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Changes to the request headers sent upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderRewriteFile>,
    /// Changes to the response headers sent to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderRewriteFile>,
    /// Retry policy; without one, nothing is retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryFile>,
    /// Allow retries of non-idempotent methods (POST, PATCH). Default false.
    #[serde(default)]
    pub retry_non_idempotent: bool,
    /// A static answer that replaces any 502/503/504 answer on this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<FallbackFile>,
    /// Serve the last good answer to a GET when the upstream fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_if_error: Option<StaleFile>,
    /// Authentication: `api_key` or `none` (the default).
    #[serde(default)]
    pub auth: AuthFile,
    /// Where the API key is read from: a header name. Default: `Authorization: Bearer <key>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_header: Option<String>,
    /// Consumers allowed on this route (others get 403). Default: every consumer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumers: Option<Vec<String>>,
    /// Request body bytes allowed on this route (overrides `limits.max_body_bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// Send the caller's credential upstream too. Default false: the upstream sees only
    /// `x-consumer`.
    #[serde(default)]
    pub forward_credentials: bool,
    /// Rate limit (GCRA): past it, 429 `rate_limited` with `Retry-After`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitFile>,
    /// Fault injection: abort or delay a share of requests (chaos testing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultFile>,
    /// Send a share of the route's requests to another upstream (a new release), and take
    /// it back automatically when that share burns an SLO's error budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryFile>,
    /// Publish the route as a service of the catalog, which consumers subscribe to. Needs
    /// `auth` (callers must be known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<PublishFile>,
    /// The route's place in its API's life: `deprecated` answers carry `Deprecation`,
    /// `Sunset` and `Link` headers; `retired` answers 410 `gone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<LifecycleFile>,
}

/// A route published as a service of the catalog.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishFile {
    /// The service's name; several routes (its versions) may publish the same service.
    pub service: String,
    /// The owning team's name (the same on every route of the service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// What the service is for, shown in the catalog.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// How subscriptions are granted: `auto` (the default) or `manual` (the owning team's
    /// admin approves each).
    #[serde(default)]
    pub approval: Approval,
    /// Path or absolute http(s) URL of the service's OpenAPI document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openapi: Option<String>,
}

/// A route's lifecycle.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LifecycleFile {
    /// A label for the version this route serves, e.g. `v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `published` (the default), `deprecated` or `retired`.
    #[serde(default)]
    pub state: LifecycleState,
    /// When the route was (or will be) deprecated, RFC 3339 (`2026-06-01T00:00:00Z`);
    /// required when `state` is `deprecated`. Sent as `Deprecation: @<unix seconds>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub deprecated_at: Option<String>,
    /// When the route stops answering, RFC 3339; not before `deprecated_at`. Sent as
    /// `Sunset: <HTTP-date>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub sunset_at: Option<String>,
    /// An absolute http(s) URL telling callers what to move to. Sent as
    /// `Link: <link>; rel="deprecation"; type="text/html"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

pub use crate::config::spec::{Approval, LifecycleState};

/// Request matching. Every given condition must hold.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchFile {
    /// Exact path, or a template with `{param}` segments such as `/users/{id}/orders`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Path prefix on segment boundaries: `/users` takes `/users` and `/users/7`, not
    /// `/usersx`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Host (port ignored, case-insensitive); `*.example.com` takes any subdomain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Allowed methods, e.g. `[GET, HEAD]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// Headers that must be present with exactly these values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
}

/// Header changes: `remove` first, then `set` (replace), then `add` (append).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderRewriteFile {
    /// Headers to set, replacing any existing value.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Headers to append, keeping existing values.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Header names to remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// Retry policy of a route (see docs/resilience.md).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryFile {
    /// Attempts in all, the first included (3 = up to 2 retries). Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// What is retried: `connect_failure`, `reset`, `timeout`, `5xx`, or status codes such as
    /// 502. Default `[connect_failure]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<Vec<RetryOnFile>>,
    /// Base of the exponential backoff (full jitter). Default 25ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<DurationStr>,
    /// Cap of the backoff. Default 10 x `backoff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff: Option<DurationStr>,
    /// Retries may add at most this share of the route's requests over the last 10s.
    /// Default 0.2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<f64>,
    /// Retries always allowed per second and worker, whatever the traffic. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_per_second: Option<f64>,
    /// Timeout of each attempt until response headers; default: the upstream's
    /// `timeouts.request`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<DurationStr>,
    /// Request bodies up to this many bytes are kept so they can be sent again; a longer
    /// body is streamed and never retried. Default 65536.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replay_body: Option<usize>,
}

/// A retry condition: a name or a status code.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum RetryOnFile {
    Status(u16),
    Name(String),
}

/// A static answer that replaces 502/503/504 answers on a route.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FallbackFile {
    /// Status of the fallback answer. Default 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Body of the fallback answer.
    #[serde(default)]
    pub body: String,
    /// Content-Type of the body. Default `application/json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

/// Stale-if-error settings (see docs/resilience.md).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StaleFile {
    /// How old a stored answer may be and still be served. Default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<DurationStr>,
    /// Answers kept for the route at most (oldest dropped first). Default 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_entries: Option<usize>,
    /// Bodies larger than this are not kept. Default 65536.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body: Option<usize>,
}

/// A route's rate limit.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFile {
    /// Sustained rate: `N/s`, `N/min` or `N/h`, e.g. `100/s`.
    pub rate: String,
    /// Requests allowed at once. Default: the rate's count (100 for `100/s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// What is limited: `ip` (the default), `consumer` (routes with auth), `header:NAME`, or
    /// `route` (one shared limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Distinct keys tracked at most; idle keys are dropped first. Default 100000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_keys: Option<usize>,
}

/// Faults injected into a route's requests.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultFile {
    /// Answer a share of requests with an error status instead of forwarding them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbortFile>,
    /// Hold a share of requests before forwarding them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelayFile>,
    /// Honour the request header `x-levee-fault` (`abort=503`, `delay=200ms`, or both
    /// separated by `;`). Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_header: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultAbortFile {
    /// Share of requests, 0 to 100.
    pub percent: f64,
    /// The status answered, 400 to 599.
    pub status: u16,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultDelayFile {
    /// Share of requests, 0 to 100.
    pub percent: f64,
    /// How long each is held, at most 1h.
    pub duration: DurationStr,
}

/// A canary release on a route.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CanaryFile {
    /// The upstream serving the new release (on a proxied route).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub upstream: String,
    /// On an AI gateway route: the model (one of `llm.models`) serving the new release, for
    /// a share of the requests that ask for `instead_of`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// On an AI gateway route: the model whose requests the canary takes a share of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instead_of: Option<String>,
    /// Share of the route's requests sent to it, 0 to 100.
    pub percent: f64,
    /// Roll back (send every request to the route's own upstream again) when the canary's
    /// requests burn the SLO's budget too fast. Without it the split is never undone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_if: Option<CanaryRollbackFile>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CanaryRollbackFile {
    /// An SLO on this route: the canary's requests are judged by its SLI and objective.
    pub slo: String,
    /// Roll back when the canary's burn rate goes above this.
    pub burn_rate_above: f64,
    /// The burn-rate window watched: `5m` (default), `30m`, `1h`, `2h`, `6h`, `1d` or `3d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Canary requests the window must hold before a rollback can happen. Default 100 (at
    /// 99.9% and 14.4, one bad request in fewer than 70 would trip it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
}
