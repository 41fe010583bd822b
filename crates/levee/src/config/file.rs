//! The config file as written by people: serde types that mirror the YAML one to one.
//!
//! These types only describe shape (and generate the JSON Schema in `docs/levee.schema.json`);
//! they are never used at run time. `validate` turns them into the checked types of
//! [`super::spec`], which is where meaning (addresses, header names, compiled paths) lives.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::duration::DurationStr;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Where the gateway accepts client traffic.
    #[serde(default)]
    pub listeners: Vec<ListenerFile>,
    /// The admin listener (health, readiness, metrics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminFile>,
    /// Named groups of targets that routes send traffic to.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamFile>,
    /// Routes, matched in order: the first route whose match accepts a request takes it.
    #[serde(default)]
    pub routes: Vec<RouteFile>,
    /// Worker threads, each with its own event loop and listening socket: `auto` (one per
    /// core, the default) or a number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<Workers>,
    /// How long in-flight requests may run after SIGTERM/SIGINT before the process exits.
    /// Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_grace: Option<DurationStr>,
    /// The JSON access log written to stdout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLogFile>,
    /// Callers with credentials.
    #[serde(default)]
    pub consumers: Vec<ConsumerFile>,
    /// JSON Web Token settings for routes with `auth: jwt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtFile>,
    /// Directory for Levee's own data (the call log database). Without it there is no call
    /// log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<String>,
    /// The call log: one row per request in `data_dir/calls.sqlite3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_log: Option<CallLogFile>,
    /// The AI gateway: LLM providers and the model names clients use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<LlmFile>,
    /// OpenTelemetry traces: a span per request and per upstream attempt, exported over
    /// OTLP/HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingFile>,
    /// Load shedding: caps that protect the gateway itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsFile>,
    /// Service level objectives the gateway computes from its own traffic (see docs/slo.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slos: Vec<SloFile>,
    /// Where burn-rate alerts on the SLOs are sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerting: Option<AlertingFile>,
}

/// One service level objective.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SloFile {
    /// Names the SLO in metrics, alerts and the admin API: letters, digits, `_`, `-`, `.`.
    pub name: String,
    /// The route whose requests are counted.
    pub route: String,
    /// Count only this consumer's requests on the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    /// Percent of good events, above 0 and below 100 (`99.9`).
    pub objective: f64,
    /// The compliance window the error budget covers, 1h to 90d. Default 30d.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<DurationStr>,
    /// What a good event is: `availability` (any status below 500) or
    /// `{ latency_below: 300ms }` (answered within the threshold).
    pub sli: SliFile,
}

/// An SLI: `availability` or `{ latency_below: DURATION }`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum SliFile {
    Named(SliName),
    Latency(LatencySliFile),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SliName {
    /// Good: any status below 500 (429 and other client errors count as good).
    Availability,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LatencySliFile {
    /// Good: the whole answer was sent within this time.
    pub latency_below: DurationStr,
}

/// Burn-rate alert delivery.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertingFile {
    /// How often alert rules are checked against the burn rates (which are computed every
    /// second), 1s to 1m. Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation_interval: Option<DurationStr>,
    /// A Prometheus Alertmanager: alerts are POSTed to its `/api/v2/alerts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alertmanager: Option<AlertReceiverFile>,
    /// Receivers of Alertmanager-shaped webhook notifications.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<AlertReceiverFile>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertReceiverFile {
    /// `http` or `https` URL.
    pub url: String,
}

/// Call log settings.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CallLogFile {
    /// Record calls (when `data_dir` is set). Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Records waiting for the writer at most; more are dropped and counted. Default 16384.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<usize>,
    /// Rows older than this are deleted. Default 7d.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<DurationStr>,
    /// Rows kept at most (the oldest go first). Default 1000000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rows: Option<u64>,
}

/// The AI gateway's providers, models and prices.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LlmFile {
    /// LLM APIs by name.
    #[serde(default)]
    pub providers: BTreeMap<String, LlmProviderFile>,
    /// The model names clients send, each served by one or more provider models.
    #[serde(default)]
    pub models: Vec<LlmModelFile>,
    /// USD per million tokens by provider model name; overrides the built-in prices.
    #[serde(default)]
    pub pricing: BTreeMap<String, LlmPriceFile>,
    /// The exact-match answer cache for deterministic requests (off without this key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<LlmCacheFile>,
    /// Prompt templates published as REST endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prompts: Vec<LlmPromptFile>,
}

/// A prompt endpoint.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LlmPromptFile {
    pub name: String,
    /// `POST` here runs the prompt; an `llm: true` route must take this path.
    pub path: String,
    /// A name of `llm.models`.
    pub model: String,
    /// The prompt, with `{{variable}}` placeholders.
    pub template: String,
}

/// Answer-cache settings.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LlmCacheFile {
    /// How long an answer is served from the cache. Default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<DurationStr>,
    /// Answers kept at most (the oldest go first). Default 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_entries: Option<usize>,
    /// Bytes of answers kept at most. Default 67108864 (64 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<usize>,
}

/// One LLM API.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LlmProviderFile {
    /// Which API it speaks.
    pub kind: LlmProviderKind,
    /// The API's base URL, e.g. `https://api.openai.com/v1` or `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    /// The environment variable holding the API key (sent as `Authorization: Bearer`, or as
    /// Anthropic's `x-api-key` and Azure's `api-key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// `azure_openai` only: the `api-version` query parameter. Default `2024-10-21`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Bulkhead: calls in flight to this provider at most (across all workers and models);
    /// beyond it the model's next target is tried, and with none left the client gets 503.
    /// Default: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<usize>,
    /// A bounded wait for a place when the bulkhead is full (as an upstream's `queue`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueFile>,
}

/// The API a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LlmProviderKind {
    Openai,
    OpenaiCompatible,
    Anthropic,
    Gemini,
    AzureOpenai,
}

/// A model name clients use.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LlmModelFile {
    /// The `model` clients send.
    pub name: String,
    /// How targets are chosen: `fallback` (in order, the default), `weighted` (the first try
    /// by weight, then the others in order) or `lowest_latency` (fastest first answer first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// A circuit breaker per target (on by default, with the upstream breaker's defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreakerFile>,
    /// Provider models that serve it.
    pub targets: Vec<LlmTargetFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<LlmTimeoutsFile>,
}

/// One provider model.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LlmTargetFile {
    /// A key of `llm.providers`.
    pub provider: String,
    /// The model name the provider knows.
    pub model: String,
    /// `weighted` strategy: the share of first tries (relative). Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// Time limits for one call to a provider.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LlmTimeoutsFile {
    /// Until the response starts (for a stream: its first bytes). Past it, the next target is
    /// tried. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_token: Option<DurationStr>,
    /// The whole call. Default 300s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<DurationStr>,
}

/// A model's price in USD per million tokens.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LlmPriceFile {
    pub input: f64,
    pub output: f64,
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

/// OpenTelemetry tracing settings.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TracingFile {
    /// The OTLP/HTTP collector: a base URL such as `http://127.0.0.1:4318` (spans are posted to
    /// `/v1/traces` under it) or a full URL ending in a path of its own. `http` or `https`.
    pub otlp_endpoint: String,
    /// Share of new traces recorded, from 0 to 1. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_ratio: Option<f64>,
    /// Follow the caller's sampling decision (the `traceparent` sampled flag) when there is
    /// one. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_based: Option<bool>,
    /// `service.name` of the exported spans. Default `levee`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// Requests whose spans may wait for export; past it spans are dropped and counted in
    /// `levee_trace_spans_dropped_total`. Default 8192.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<usize>,
    /// Spans sent per export request at most. Default 512.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// Longest wait before queued spans are sent. Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_interval: Option<DurationStr>,
    /// Give up on one export request after this long (its spans are dropped and counted).
    /// Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_timeout: Option<DurationStr>,
}

/// Caps on the gateway's own load; past them new work is refused quickly with 503.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Requests in flight in the whole process (split evenly across workers). Default 16384.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_inflight: Option<usize>,
    /// Open client connections in the whole process (split evenly across workers); a
    /// connection past it gets a 503 and is closed. Default 65536.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Request line plus headers, in bytes; past it 431 `headers_too_large`. Default 65536.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_header_bytes: Option<usize>,
    /// Request body bytes on every route unless the route sets its own; past it 413
    /// `body_too_large`. Default 10485760 (10 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// Time a client has to send a request's headers, and to start the next request on a
    /// kept-alive connection (slowloris protection). Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_read_timeout: Option<DurationStr>,
}

/// A listening socket for client traffic (HTTP/1.1 and HTTP/2 cleartext on the same port).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerFile {
    /// A name for logs and metrics.
    pub name: String,
    /// `IP:PORT` to listen on, e.g. `127.0.0.1:8080` or `[::]:8080`. Port 0 picks a free port.
    pub bind: String,
    /// Terminate TLS on this listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFile>,
    /// Open connections on this listener at most (split evenly across workers), within the
    /// process-wide `limits.max_connections`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
}

/// TLS for a listener: PEM files, reloaded when they change.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// PEM certificate chain (leaf first).
    pub cert: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// How often the files are checked for changes. Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload_interval: Option<DurationStr>,
}

/// The admin listener.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// `IP:PORT` of the admin listener, e.g. `127.0.0.1:9901`.
    pub bind: String,
    /// Environment variable holding the admin token; when set, `/api/*` needs
    /// `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
}

/// A caller known to the gateway.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsumerFile {
    /// Unique name; sent upstream in `x-consumer`, used in logs and rate-limit keys.
    pub name: String,
    /// The consumer's API keys as `sha256:<hex digest>` (`levee key new` makes one).
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// What the consumer may spend on LLM calls per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_budget: Option<LlmBudgetFile>,
    /// Tokens and requests per minute on LLM calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_rate_limit: Option<LlmRateLimitFile>,
}

/// A spending limit on LLM calls.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LlmBudgetFile {
    /// US dollars per period.
    pub usd: f64,
    /// The period, e.g. `30d`; it starts with the consumer's first call after the start.
    pub per: DurationStr,
}

/// Rate limits on LLM calls.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LlmRateLimitFile {
    /// Tokens (prompt and completion) per minute; a call reserves its `max_tokens` (or an
    /// estimate) up front and settles with the real usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    /// Calls per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
}

/// How a route authenticates callers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthFile {
    /// No authentication (the default).
    #[default]
    None,
    /// An API key of a configured consumer.
    ApiKey,
    /// A JSON Web Token checked against the top-level `jwt` settings.
    Jwt,
}

/// How JSON Web Tokens are checked (routes with `auth: jwt`).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtFile {
    /// Accepted signature algorithms. Default `[RS256, ES256]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithms: Option<Vec<String>>,
    /// Required `iss`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Required `aud` (one of).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<Vec<String>>,
    /// Environment variable holding the HS256 shared secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// PEM public keys (RSA or EC) files.
    #[serde(default)]
    pub public_keys: Vec<String>,
    /// JWKS URL (http or https); keys are fetched at start and refreshed in the background.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// How often the JWKS is refreshed. Default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_refresh: Option<DurationStr>,
    /// Claim that names the consumer. Default `sub`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_claim: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leeway: Option<DurationStr>,
}

/// `auto` or a positive number of worker threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    Auto,
    Count(usize),
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct WorkersVisitor;
        impl Visitor<'_> for WorkersVisitor {
            type Value = Workers;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`auto` or a number of worker threads from 1 to 256")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Workers, E> {
                if v == "auto" {
                    Ok(Workers::Auto)
                } else {
                    Err(E::custom(format!(
                        "invalid workers `{v}`: expected `auto` or a number from 1 to 256"
                    )))
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Workers, E> {
                match v {
                    1..=256 => Ok(Workers::Count(v as usize)),
                    _ => Err(E::custom(format!(
                        "invalid workers `{v}`: expected `auto` or a number from 1 to 256"
                    ))),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Workers, E> {
                Err(E::custom(format!(
                    "invalid workers `{v}`: expected `auto` or a number from 1 to 256"
                )))
            }
        }
        deserializer.deserialize_any(WorkersVisitor)
    }
}

impl Serialize for Workers {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Workers::Auto => serializer.serialize_str("auto"),
            Workers::Count(n) => serializer.serialize_u64(*n as u64),
        }
    }
}

impl JsonSchema for Workers {
    fn schema_name() -> Cow<'static, str> {
        "Workers".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "`auto` (one worker per core) or a number of worker threads.",
            "oneOf": [
                { "type": "string", "const": "auto" },
                { "type": "integer", "minimum": 1, "maximum": 256 }
            ]
        })
    }
}

/// The access log.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessLogFile {
    /// Write one JSON line per request to stdout. Default true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How many lines may wait for the writer before new ones are dropped (and counted in
    /// `levee_access_log_dropped_total`). Default 16384.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<usize>,
    /// Share of successful requests (status below 400) that get a line, from 0 to 1; errors
    /// are always logged. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_sample: Option<f64>,
}

fn default_true() -> bool {
    true
}

/// A named group of targets.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    /// The targets: `IP:PORT` / `HOST:PORT` strings, or `{ addr, weight }` maps.
    pub targets: Vec<TargetFile>,
    /// Load-balancing policy. Default `round_robin`.
    #[serde(default)]
    pub balance: BalanceFile,
    /// For `consistent_hash`: where the key comes from: `header:NAME`, `cookie:NAME` or `ip`
    /// (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_key: Option<String>,
    /// Connect and request timeouts.
    #[serde(default)]
    pub timeouts: TimeoutsFile,
    /// Keep-alive connection pool to the targets.
    #[serde(default)]
    pub pool: PoolFile,
    /// Per-target circuit breaker. On by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreakerFile>,
    /// Active health checks: HTTP GET of `path` on each target (TCP connect when no path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckFile>,
    /// Passive outlier ejection, shared by all workers. On by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierFile>,
    /// Bulkhead: requests in flight to this upstream at most (across all workers); beyond it
    /// new requests get 503 at once. Default 1024 (Envoy's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<usize>,
    /// A bounded wait for a place when the bulkhead is full. Without it (the default) a full
    /// bulkhead refuses at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueFile>,
}

/// The bulkhead's waiting room.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueFile {
    /// Requests that may wait at once; more are refused at once.
    pub size: usize,
    /// How long a request may wait for a place before it is refused.
    pub timeout: DurationStr,
}

/// Active health checking of each target.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFile {
    /// Path to GET, e.g. `/healthz`; without one a TCP connect is the check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Time between checks of a target. Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<DurationStr>,
    /// Time a check may take. Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationStr>,
    /// Failed checks in a row that mark a target unhealthy. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_after: Option<u32>,
    /// Passed checks in a row that bring an unhealthy target back. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_after: Option<u32>,
    /// Statuses that pass. Default: any 2xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_statuses: Option<Vec<u16>>,
}

/// Passive outlier ejection: a target that fails many requests in a row is taken out of
/// rotation for a while, by every worker at once.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutlierFile {
    /// Set false to turn ejection off. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Failures in a row (connect failures, timeouts, resets, 5xx) that eject. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// First ejection period; each repeat ejection lasts one more period. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection: Option<DurationStr>,
    /// Longest ejection. Default 300s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection: Option<DurationStr>,
    /// At most this share of the targets is ejected at once (one always may be). Default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejected_percent: Option<u32>,
}

/// Circuit breaker thresholds (see docs/resilience.md).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerFile {
    /// Set false to turn the breaker off. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Share of failed requests in the window that opens the breaker. Default 0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_rate: Option<f64>,
    /// Requests the window must hold before the failure rate counts. Default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
    /// Sliding window for the failure rate. Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<DurationStr>,
    /// How long the breaker stays open before letting probes through. Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_for: Option<DurationStr>,
    /// Failures in a row that open the breaker whatever the rate (0 = off). Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// Probe requests let through at a time while half-open; that many successes close
    /// the breaker. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half_open_probes: Option<u32>,
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

/// A target: a plain `HOST:PORT` string or a map with a weight.
#[derive(Debug, Clone, Serialize)]
pub struct TargetFile {
    /// `IP:PORT` or `HOST:PORT`.
    pub addr: String,
    /// Relative share of traffic for `round_robin`, `least_request`, `p2c_ewma` and
    /// `consistent_hash`. Default 1.
    pub weight: u32,
}

impl JsonSchema for TargetFile {
    fn schema_name() -> Cow<'static, str> {
        "Target".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A target: `HOST:PORT`, or `{ addr: HOST:PORT, weight: N }` (weight 1 to 1000, default 1).",
            "oneOf": [
                { "type": "string", "examples": ["127.0.0.1:9001"] },
                {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["addr"],
                    "properties": {
                        "addr": { "type": "string", "description": "`IP:PORT` or `HOST:PORT`." },
                        "weight": { "type": "integer", "minimum": 1, "maximum": 1000, "default": 1 }
                    }
                }
            ]
        })
    }
}

fn default_weight() -> u32 {
    1
}

impl<'de> Deserialize<'de> for TargetFile {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct TargetMap {
            addr: String,
            #[serde(default = "default_weight")]
            weight: u32,
        }
        struct TargetVisitor;
        impl<'de> Visitor<'de> for TargetVisitor {
            type Value = TargetFile;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a target `HOST:PORT` or a map `{ addr: HOST:PORT, weight: N }`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TargetFile, E> {
                Ok(TargetFile {
                    addr: v.to_string(),
                    weight: 1,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TargetFile, A::Error> {
                let target = TargetMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(TargetFile {
                    addr: target.addr,
                    weight: target.weight,
                })
            }
        }
        deserializer.deserialize_any(TargetVisitor)
    }
}

/// Load-balancing policies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BalanceFile {
    /// Weighted round robin (smooth: weights interleave rather than burst).
    #[default]
    RoundRobin,
    /// The target with the fewest requests in flight (relative to its weight).
    LeastRequest,
    /// Power of two random choices, scored by peak-EWMA latency times load.
    P2cEwma,
    /// A hash ring: the same key goes to the same target; adding a target moves ~1/N keys.
    ConsistentHash,
}

/// Upstream timeouts.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsFile {
    /// Time allowed to establish a TCP connection to a target. Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<DurationStr>,
    /// Time from sending the request until the response headers arrive. Streaming bodies
    /// are not cut by it. Default 15s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<DurationStr>,
}

/// Upstream keep-alive pool settings.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolFile {
    /// Idle keep-alive connections kept per target and per worker. Default 128.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_idle_per_target: Option<usize>,
    /// How long an idle pooled connection is kept. Default 90s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<DurationStr>,
}

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

/// The JSON Schema of the config file, as published in `docs/levee.schema.json`.
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(ConfigFile);
    schema.to_value()
}
