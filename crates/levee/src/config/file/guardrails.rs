//! Guardrails as written under a route's `guardrails`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::duration::DurationStr;
pub use crate::config::guardrails::{FailMode, GuardAction, GuardStage, PiiKind};

/// One guardrail of an AI gateway route: exactly one of `pii`, `deny`, `max_prompt_tokens`
/// and `webhook`. A route's guardrails run in the order listed, each on the text the one
/// before left.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GuardrailFile {
    /// Unique on the route; named in refusals, the call log and the metrics.
    pub name: String,
    /// Which side it checks: `request`, `response`, or both (the default; `max_prompt_tokens`
    /// checks requests only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<Vec<GuardStage>>,
    /// Personal and secret data to find: `email`, `phone`, `card`, `iban`, `ssn`, `ip`,
    /// `secret`, or `all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pii: Option<Vec<PiiKind>>,
    /// Words and patterns that must not pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny: Option<DenyFile>,
    /// The largest prompt allowed, in tokens (estimated at four bytes a token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prompt_tokens: Option<u64>,
    /// An outside service asked about each text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookFile>,
    /// What a finding does: `redact` (the default for `pii`), `block` (the default for
    /// `deny`) or `log`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<GuardAction>,
}

/// A deny list.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DenyFile {
    /// Words matched whole and in any case.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub words: Vec<String>,
    /// Regular expressions (Rust `regex` syntax: linear time, no look-around).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patterns: Vec<String>,
    /// The longest text a pattern matches, which a streamed answer holds back so a match
    /// split across chunks is still found. Default 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_match_bytes: Option<usize>,
}

/// An outside guardrail service.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookFile {
    /// Where the texts are POSTed (http or https).
    pub url: String,
    /// How long to wait for its verdict. Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationStr>,
    /// When it cannot be asked: `open` lets the text through, `closed` (the default)
    /// refuses the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail: Option<FailMode>,
    /// Headers sent with each call (an `authorization` for the service, say).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}
