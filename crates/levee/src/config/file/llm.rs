//! The AI gateway as written: providers, models and their targets, prices, the answer cache
//! and prompt endpoints.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::CircuitBreakerFile;
use crate::config::duration::DurationStr;

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
    pub queue: Option<super::QueueFile>,
}

/// The API a provider speaks (a plain enum, so the spec holds it as it is).
pub use crate::config::spec::LlmProviderKind;

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

/// A model's price in USD per million tokens. Reasoning tokens are output tokens.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LlmPriceFile {
    pub input: f64,
    pub output: f64,
    /// Input read from the provider's prompt cache. Default: the input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<f64>,
    /// Input written to the provider's prompt cache (Anthropic). Default: the input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<f64>,
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
