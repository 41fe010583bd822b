//! Callers as written: consumers with their API keys and LLM limits, route auth kinds and
//! the JWT settings.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::duration::DurationStr;

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
