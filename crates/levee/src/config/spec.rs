//! The validated configuration: typed, checked values with nothing left to parse at run time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::uri::Authority;
use http::{HeaderName, HeaderValue};

use levee_resilience::BreakerConfig;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::matcher::RouteMatch;

// The file's `kind`, kept as it is: a plain enum, so the spec holds it and the file re-exports it.
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

/// A config that passed validation.
#[derive(Debug, Clone)]
pub struct Config {
    pub listeners: Vec<ListenerSpec>,
    pub admin: Option<AdminSpec>,
    pub upstreams: Vec<UpstreamSpec>,
    pub routes: Vec<RouteSpec>,
    /// Worker threads: the number written, or for `workers: auto` the cores found at load.
    pub workers: usize,
    /// `workers` is `auto` (or not given). A reload compares this and a number written, not
    /// the cores found, so that a change in the cores the process may use is no config change.
    pub workers_auto: bool,
    pub shutdown_grace: Duration,
    pub access_log: AccessLogSpec,
    pub limits: LimitsSpec,
    pub consumers: Vec<ConsumerSpec>,
    pub jwt: Option<JwtSpec>,
    /// Levee's own data (the call log and SLO databases).
    pub data_dir: Option<std::path::PathBuf>,
    pub call_log: Option<CallLogSpec>,
    pub tracing: Option<TracingSpec>,
    pub llm: Option<LlmSpec>,
    /// The MCP gateway's servers and access rules (`None` without an `mcp` block).
    pub mcp: Option<super::mcp::McpSpec>,
    pub slos: Vec<SloSpec>,
    pub alerting: AlertingSpec,
    /// Cluster mode (`None`: this replica is on its own, with in-process state).
    pub cluster: Option<ClusterSpec>,
    /// The file as read, as JSON with its secrets redacted (`config::shown`): what the admin
    /// API shows. Built at load; the file types themselves never reach the running config.
    pub shown: Arc<serde_json::Value>,
    /// The restart-only top-level keys the file sets (see `Config::restart_only_changes`):
    /// adding or removing one needs a restart even when it writes the default value.
    pub restart_keys: Vec<&'static str>,
    /// The file it was read from (`None` for a config given as text); reloads read it again.
    pub source: Option<std::path::PathBuf>,
    /// Valid but probably not meant (see `levee check`).
    pub warnings: Vec<super::ConfigError>,
}

/// The AI gateway's providers and models.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmSpec {
    pub providers: Vec<LlmProviderSpec>,
    pub models: Vec<LlmModelSpec>,
    /// Prices by provider model name, from `llm.pricing`.
    pub pricing: Vec<LlmPriceSpec>,
    /// (TTL, entries, bytes) of the answer cache, when on.
    pub cache: Option<(Duration, usize, usize)>,
    pub prompts: Vec<LlmPromptSpec>,
}

/// One `llm.pricing` entry: USD per million tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmPriceSpec {
    pub model: String,
    pub input: f64,
    pub output: f64,
    pub cached_input: Option<f64>,
    pub cache_write: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LlmPromptSpec {
    pub name: Arc<str>,
    pub path: String,
    /// A name of `models`.
    pub model: Arc<str>,
    pub template: super::prompt::Template,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LlmProviderSpec {
    pub name: Arc<str>,
    pub kind: LlmProviderKind,
    /// The base URL without a trailing slash (`https://api.openai.com/v1`).
    pub base_url: String,
    pub api_key: Option<Secret>,
    /// `azure_openai`: the `api-version` query parameter.
    pub api_version: String,
    /// The provider's bulkhead: calls in flight at most (across all workers and models),
    /// and its waiting room (waiters at most, longest wait); `None`: no cap.
    pub bulkhead: Option<(usize, Option<(usize, Duration)>)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LlmModelSpec {
    pub name: Arc<str>,
    /// (index into `providers`, the provider's model name), in fallback order.
    pub targets: Vec<(usize, Arc<str>)>,
    pub strategy: LlmStrategy,
    /// Per target, for `weighted`.
    pub weights: Vec<u32>,
    /// Each target's breaker; `None` when turned off.
    pub breaker: Option<BreakerConfig>,
    pub first_token: Duration,
    pub total: Duration,
}

/// A route's fault injection.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultSpec {
    /// (probability 0..1, status)
    pub abort: Option<(f64, http::StatusCode)>,
    /// (probability 0..1, duration)
    pub delay: Option<(f64, Duration)>,
    pub allow_header: bool,
}

/// How a model's targets are ordered for a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlmStrategy {
    Fallback,
    Weighted,
    LowestLatency,
}

/// A canary release: a share of a route's requests to another upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct CanarySpec {
    pub target: CanaryTarget,
    /// The upstream (or, on an AI gateway route, the model) the canary sends to: what its
    /// requests' `sent_to` is, and what its SLO counts.
    pub upstream_name: Arc<str>,
    /// 0..1.
    pub share: f64,
    pub rollback: Option<CanaryRollback>,
    /// The `canary` block as written (rollbacks are remembered for this exact block).
    pub definition: String,
}

/// Where a canary's share of requests goes.
#[derive(Debug, Clone, PartialEq)]
pub enum CanaryTarget {
    /// Index into [`Config::upstreams`].
    Upstream(usize),
    /// Requests for the model `instead_of` go to the model named `upstream_name`.
    Model { instead_of: Arc<str> },
}

/// When a canary is taken back.
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryRollback {
    /// The SLO that counts the canary's requests (built from the one the config names).
    pub slo: Arc<str>,
    pub burn_rate_above: f64,
    /// A burn-rate window name (`5m` .. `3d`).
    pub window: &'static str,
    pub min_requests: u64,
}

/// A service level objective on a route's traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct SloSpec {
    pub name: Arc<str>,
    pub route: Arc<str>,
    pub consumer: Option<Arc<str>>,
    /// Count only requests sent to this upstream (a canary's SLO).
    pub upstream: Option<Arc<str>>,
    /// For a canary's SLO, the canary block it judges: a new release starts a new count.
    pub release: Option<Arc<str>>,
    /// Burn-rate alerts are evaluated and sent (false for the SLO a canary's rollback uses:
    /// the rollback is its answer).
    pub alerts: bool,
    /// Percent of good events (`99.9`).
    pub objective: f64,
    pub window: Duration,
    pub sli: Sli,
    /// The gRPC statuses an availability SLO counts as bad; `None`: the default set
    /// (`crate::grpc::DEFAULT_BAD`).
    pub bad_grpc_statuses: Option<Vec<u16>>,
}

impl SloSpec {
    /// The share of events allowed to be bad (`0.001` for 99.9).
    pub fn error_budget(&self) -> f64 {
        1.0 - self.objective / 100.0
    }

    /// What the SLO counts, as text: counts recorded under another definition are not
    /// mixed with these (a changed threshold starts a new history).
    pub fn definition(&self) -> String {
        let sli = match self.sli {
            Sli::Availability => "availability".to_owned(),
            Sli::LatencyBelow(d) => format!("latency_below={}ms", d.as_millis()),
        };
        let mut text = format!("route={}", self.route);
        if let Some(c) = &self.consumer {
            text.push_str(&format!(";consumer={c}"));
        }
        if let Some(u) = &self.upstream {
            text.push_str(&format!(";upstream={u}"));
        }
        if let Some(r) = &self.release {
            text.push_str(&format!(";release={r}"));
        }
        // Only a list of its own changes the definition: histories from before gRPC
        // statuses were counted keep their meaning.
        if let Some(codes) = &self.bad_grpc_statuses {
            let codes: Vec<String> = codes.iter().map(u16::to_string).collect();
            text.push_str(&format!(";bad_grpc={}", codes.join(",")));
        }
        format!("{text};{sli}")
    }
}

/// The burn-rate windows, with their length in minutes (a canary's rollback watches one).
pub const BURN_WINDOWS: [(&str, u64); 7] = [
    ("5m", 5),
    ("30m", 30),
    ("1h", 60),
    ("2h", 120),
    ("6h", 360),
    ("1d", 1440),
    ("3d", 4320),
];

/// Memory one minute bucket of an SLO's ring takes: the minute and four counts, eight bytes
/// each (the SLO ledger checks it against its bucket type at compile time).
pub const SLO_BUCKET_BYTES: u64 = 40;

/// What makes an event good.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sli {
    /// Any status below 500.
    Availability,
    /// Answered in full within the duration.
    LatencyBelow(Duration),
}

/// Where alerts go and how often they are evaluated.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertingSpec {
    pub evaluation_interval: Duration,
    /// Alertmanager's `/api/v2/alerts` URL.
    pub alertmanager: Option<http::Uri>,
    pub webhooks: Vec<http::Uri>,
}

impl Default for AlertingSpec {
    fn default() -> Self {
        AlertingSpec {
            evaluation_interval: Duration::from_secs(5),
            alertmanager: None,
            webhooks: Vec::new(),
        }
    }
}

/// Where and how spans are exported.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingSpec {
    /// The full URL spans are posted to.
    pub endpoint: http::Uri,
    pub sample_ratio: f64,
    pub parent_based: bool,
    pub service_name: String,
    pub queue: usize,
    pub batch_size: usize,
    pub export_interval: Duration,
    pub export_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerSpec {
    pub name: Arc<str>,
    pub bind: SocketAddr,
    pub tls: Option<TlsSpec>,
    pub max_connections: Option<usize>,
    /// HTTP/3 on the same port over UDP (TLS listeners only).
    pub http3: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSpec {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub reload_interval: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminSpec {
    pub bind: SocketAddr,
    /// The admin token (from the environment), never written back out.
    pub token: Option<Secret>,
}

/// Cluster mode: the shared stores and this replica's name in the fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSpec {
    pub node_id: String,
    pub redis: Option<RedisSpec>,
    pub postgres: Option<PostgresSpec>,
    pub heartbeat: Duration,
}

/// Redis for counters and leases.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisSpec {
    pub url: Secret,
    pub timeout: Duration,
    pub backoff: Duration,
    pub key_prefix: String,
}

/// PostgreSQL for records.
#[derive(Debug, Clone, PartialEq)]
pub struct PostgresSpec {
    pub url: Secret,
    pub timeout: Duration,
    pub batch: usize,
}

/// Where the call log lives: `data_dir/calls.sqlite3` on a gateway on its own, PostgreSQL
/// (`cluster.postgres`) for a fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallLogStore {
    Sqlite(std::path::PathBuf),
    Postgres,
}

pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);
pub const DEFAULT_REDIS_BACKOFF: Duration = Duration::from_secs(1);
pub const DEFAULT_POSTGRES_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_POSTGRES_BATCH: usize = 500;
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);

/// A secret read from the environment: its Debug output never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A consumer and the SHA-256 digests of its API keys.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub name: Arc<str>,
    pub key_digests: Vec<[u8; 32]>,
    /// (US dollars, period) for LLM calls.
    pub llm_budget: Option<(f64, Duration)>,
    /// (tokens per minute, requests per minute) for LLM calls.
    pub llm_rate_limit: Option<(Option<u64>, Option<u64>)>,
}

/// Where and how long calls are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallLogSpec {
    pub store: CallLogStore,
    pub queue: usize,
    pub max_age: Duration,
    pub max_rows: u64,
}

/// How JSON Web Tokens are checked.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtSpec {
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    pub issuer: Option<String>,
    pub audience: Option<Vec<String>>,
    pub secret: Option<Secret>,
    /// PEM contents of the configured public keys.
    pub public_keys: Vec<Vec<u8>>,
    pub jwks_url: Option<http::Uri>,
    pub jwks_refresh: Duration,
    pub consumer_claim: String,
    pub leeway: Duration,
}

/// A route's authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthSpec {
    None,
    Jwt {
        allowed: Option<Vec<Arc<str>>>,
        forward_credentials: bool,
    },
    ApiKey {
        /// `None`: `Authorization: Bearer <key>`.
        header: Option<HeaderName>,
        /// `None`: every consumer.
        allowed: Option<Vec<Arc<str>>>,
        forward_credentials: bool,
    },
}

/// Process-wide caps (each worker enforces its even share).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitsSpec {
    pub max_inflight: usize,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    pub header_read_timeout: Duration,
    /// PING liveness of HTTP/2 client connections: `None` sends no PINGs.
    pub http2_keepalive_interval: Option<Duration>,
    pub http2_keepalive_timeout: Duration,
    /// Client connections with no request in flight this long are closed; `None`: never.
    pub http2_idle_timeout: Option<Duration>,
}

impl LimitsSpec {
    /// One worker's share of each cap (at least one).
    pub fn per_worker(&self, workers: usize) -> LimitsSpec {
        let share = |total: usize| total.div_ceil(workers.max(1)).max(1);
        LimitsSpec {
            max_inflight: share(self.max_inflight),
            max_connections: share(self.max_connections),
            ..*self
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogSpec {
    pub enabled: bool,
    pub queue: usize,
    /// Share of successful requests logged (errors always are).
    pub success_sample: f64,
}

pub use super::transport::*;

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamSpec {
    pub name: Arc<str>,
    pub targets: Vec<TargetSpec>,
    pub balance: Balance,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub pool_max_idle_per_target: usize,
    pub pool_idle_timeout: Duration,
    pub protocol: UpstreamProtocol,
    /// `None`: cleartext.
    pub tls: Option<UpstreamTlsSpec>,
    pub http2: UpstreamHttp2Spec,
    /// `None` when the breaker is turned off.
    pub circuit_breaker: Option<BreakerConfig>,
    pub max_concurrent: usize,
    /// (waiters at most, longest wait) when the bulkhead is full; `None`: refuse at once.
    pub queue: Option<(usize, Duration)>,
    pub health_check: Option<HealthCheckSpec>,
    /// `None` when ejection is turned off.
    pub outlier: Option<OutlierSpec>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckSpec {
    /// `None`: a TCP connect is the check (unless `grpc_service` is set).
    pub path: Option<http::uri::PathAndQuery>,
    /// `Some`: a gRPC health check of this service (`""`: the whole server).
    pub grpc_service: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_after: u32,
    pub healthy_after: u32,
    /// Empty: any 2xx passes.
    pub expected_statuses: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutlierSpec {
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_ejected_percent: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TargetSpec {
    /// As written in the config (`127.0.0.1:9001`); the label in metrics and logs.
    pub addr: Arc<str>,
    pub authority: Authority,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastRequest,
    P2cEwma,
    ConsistentHash(HashKey),
}

/// Where a consistent-hash key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    Header(HeaderName),
    Cookie(String),
    ClientIp,
}

#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub name: Arc<str>,
    pub matcher: RouteMatch,
    /// Index into [`Config::upstreams`]; `None` for an AI gateway route.
    pub upstream: Option<usize>,
    /// Serves the AI gateway API from `Config::llm`.
    pub llm: bool,
    /// The MCP servers this route federates into one MCP endpoint (`mcp: true`); `None`
    /// for other routes.
    pub mcp: Option<Arc<[Arc<str>]>>,
    /// The route's guardrails, in order (AI gateway routes only).
    pub guardrails: Arc<[super::guardrails::GuardrailSpec]>,
    pub strip_prefix: bool,
    pub request_headers: HeaderRewrite,
    pub response_headers: HeaderRewrite,
    pub retry: Option<RetryPolicy>,
    pub retry_non_idempotent: bool,
    pub fallback: Option<Fallback>,
    pub stale_if_error: Option<StaleSpec>,
    pub rate_limit: Option<RateLimitSpec>,
    pub auth: AuthSpec,
    pub fault: Option<FaultSpec>,
    pub canary: Option<CanarySpec>,
    /// Request body bytes allowed (the route's own limit or the global one).
    pub max_body_bytes: u64,
    /// The route is a service of the catalog (`publish`).
    pub publish: Option<PublishSpec>,
    /// The route's place in its API's life (`lifecycle`): deprecated or retired.
    pub lifecycle: Option<LifecycleSpec>,
}

/// A route published as a service of the catalog: consumers subscribe to `service`, and
/// several routes (its versions) may share one.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishSpec {
    pub service: Arc<str>,
    /// The owning team's name.
    pub team: Option<Arc<str>>,
    pub description: String,
    pub approval: Approval,
    /// Path or URL of the service's OpenAPI document.
    pub openapi: Option<String>,
}

// The file's `approval` and `state`, kept as written: plain enums the file re-exports.
/// How a subscription to a published service is granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Approval {
    /// Every subscription is granted at once (the default).
    #[default]
    Auto,
    /// The owning team's admin approves or rejects each subscription.
    Manual,
}

/// Where a route stands in its API's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LifecycleState {
    /// Served as usual (the default).
    #[default]
    Published,
    /// Served, with `Deprecation`, `Sunset` and `Link` headers on every answer.
    Deprecated,
    /// Answered 410 `gone`; the upstream is never asked.
    Retired,
}

impl LifecycleState {
    /// The state as written in the file.
    pub fn name(self) -> &'static str {
        match self {
            LifecycleState::Published => "published",
            LifecycleState::Deprecated => "deprecated",
            LifecycleState::Retired => "retired",
        }
    }
}

/// A route's lifecycle, with the headers and message it answers built once at load.
#[derive(Debug, Clone, PartialEq)]
pub struct LifecycleSpec {
    pub version: Option<Arc<str>>,
    pub state: LifecycleState,
    pub deprecated_at: Option<SystemTime>,
    pub sunset_at: Option<SystemTime>,
    /// Where callers learn what to move to (an absolute http(s) URL).
    pub link: Option<String>,
    pub answer: LifecycleAnswer,
}

/// What a deprecated or retired route adds to its answers, formatted at load.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LifecycleAnswer {
    /// `Deprecation: @<unix seconds>` (RFC 9745), when `deprecated_at` is set.
    pub deprecation: Option<HeaderValue>,
    /// `Sunset: <IMF-fixdate>` (RFC 8594), when `sunset_at` is set.
    pub sunset: Option<HeaderValue>,
    /// `Link: <link>; rel="deprecation"; type="text/html"`, when `link` is set.
    pub link: Option<HeaderValue>,
    /// The message of a retired route's 410 `gone`.
    pub gone: Arc<str>,
}

impl LifecycleSpec {
    /// A lifecycle and the answer it gives, formatted once.
    pub fn new(
        version: Option<Arc<str>>,
        state: LifecycleState,
        deprecated_at: Option<SystemTime>,
        sunset_at: Option<SystemTime>,
        link: Option<String>,
    ) -> LifecycleSpec {
        let unix = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let header = |text: String| HeaderValue::try_from(text).ok();
        let version_named = version.as_ref().map(|v| format!(" ({v})")).unwrap_or_default();
        let when = sunset_at
            .map(|t| format!(" on {}", humantime::format_rfc3339_seconds(t)))
            .unwrap_or_default();
        let see = link.as_ref().map(|l| format!("; see {l}")).unwrap_or_default();
        let answer = LifecycleAnswer {
            deprecation: deprecated_at.and_then(|t| header(format!("@{}", unix(t)))),
            sunset: sunset_at.and_then(|t| header(httpdate::fmt_http_date(t))),
            link: link
                .as_ref()
                .and_then(|l| header(format!("<{l}>; rel=\"deprecation\"; type=\"text/html\""))),
            gone: format!("This API version{version_named} was retired{when}{see}.").into(),
        };
        LifecycleSpec {
            version,
            state,
            deprecated_at,
            sunset_at,
            link,
            answer,
        }
    }
}

/// A route's rate limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitSpec {
    pub quota: levee_resilience::Quota,
    pub key: LimitKey,
    pub max_keys: usize,
}

/// What a rate limit counts by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    ClientIp,
    Consumer,
    Header(HeaderName),
    Route,
}

/// Serving the last good GET answer when the upstream fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleSpec {
    pub max_age: Duration,
    pub max_entries: usize,
    pub max_body: usize,
}

/// When and how a route retries.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    pub on: RetryOn,
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub budget: f64,
    pub min_per_second: f64,
    pub per_try_timeout: Option<Duration>,
    pub max_replay_body: usize,
}

/// Which failures a route retries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryOn {
    pub connect_failure: bool,
    pub reset: bool,
    pub timeout: bool,
    pub any_5xx: bool,
    pub statuses: Vec<u16>,
    /// gRPC status codes (`grpc:unavailable`), read from a trailers-only answer's headers.
    pub grpc: Vec<u16>,
}

impl RetryOn {
    pub fn status(&self, status: u16) -> bool {
        (self.any_5xx && (500..600).contains(&status)) || self.statuses.contains(&status)
    }
}

/// The static answer that replaces 502/503/504 on a route.
#[derive(Debug, Clone)]
pub struct Fallback {
    pub status: http::StatusCode,
    pub body: bytes::Bytes,
    pub content_type: HeaderValue,
}

/// Header edits, applied as remove, then set, then add.
#[derive(Debug, Clone, Default)]
pub struct HeaderRewrite {
    pub remove: Vec<HeaderName>,
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderRewrite {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
pub const DEFAULT_POOL_MAX_IDLE: usize = 128;
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
pub const DEFAULT_ACCESS_LOG_QUEUE: usize = 16_384;
pub const DEFAULT_CALL_LOG_QUEUE: usize = 16_384;
pub const DEFAULT_CALL_LOG_MAX_AGE: Duration = Duration::from_secs(7 * 86_400);
pub const DEFAULT_CALL_LOG_MAX_ROWS: u64 = 1_000_000;
pub const DEFAULT_MAX_CONCURRENT: usize = 1024;
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 2;
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(25);
pub const DEFAULT_RETRY_BUDGET: f64 = 0.2;
pub const DEFAULT_RETRY_MIN_PER_SECOND: f64 = 1.0;
pub const DEFAULT_MAX_REPLAY_BODY: usize = 64 * 1024;
/// The retry budget's window: requests and retries of the last 10 s count.
pub const RETRY_BUDGET_WINDOW: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_INFLIGHT: usize = 16_384;
pub const DEFAULT_MAX_CONNECTIONS: usize = 65_536;
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that vanished without a FIN (a NAT that forgot the flow, a pulled cable) holds
/// an HTTP/2 connection, and every stream on it, until something is written: a PING every
/// 30 s finds it within 40 s, for 17 bytes each way.
pub const DEFAULT_HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle client connections are closed after this: longer than any client's pause between
/// bursts that is worth a warm connection, short enough that abandoned connections do not
/// pile up against `max_connections` (nginx closes idle HTTP/2 connections after 75 s, Envoy
/// after an hour; gRPC clients reconnect on a GOAWAY without failing a call).
pub const DEFAULT_HTTP2_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
