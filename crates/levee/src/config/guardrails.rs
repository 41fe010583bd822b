//! A route's guardrails as validated: what each one checks, on which side of the call, and
//! what a finding does. The checks themselves are the `guardrails` module's.

use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A kind of personal or secret data the `pii` guardrail finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PiiKind {
    /// Every kind below.
    All,
    Email,
    /// Phone numbers: international (`+` and a country code) or 10-digit national ones.
    Phone,
    /// Payment card numbers of 13 to 19 digits that pass the Luhn check.
    Card,
    /// IBANs whose check digits are right (ISO 13616, mod 97).
    Iban,
    /// US Social Security numbers written `AAA-GG-SSSS` (valid area, group and serial).
    Ssn,
    /// IPv4 and IPv6 addresses.
    Ip,
    /// Strings shaped like API keys (OpenAI, Anthropic, AWS, GitHub, Slack, Google, Stripe).
    Secret,
}

impl PiiKind {
    /// The kinds `all` stands for, in the order spans are preferred when they overlap at
    /// the same place and length.
    pub const EVERY: [PiiKind; 7] = [
        PiiKind::Secret,
        PiiKind::Card,
        PiiKind::Iban,
        PiiKind::Ssn,
        PiiKind::Email,
        PiiKind::Ip,
        PiiKind::Phone,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PiiKind::All => "all",
            PiiKind::Email => "email",
            PiiKind::Phone => "phone",
            PiiKind::Card => "card",
            PiiKind::Iban => "iban",
            PiiKind::Ssn => "ssn",
            PiiKind::Ip => "ip",
            PiiKind::Secret => "secret",
        }
    }
}

/// What a guardrail does when it finds something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GuardAction {
    /// Replace what was found with a mask (`[EMAIL]`, `[CARD]`, ... `[REDACTED]`) and go on.
    Redact,
    /// Refuse: 400 `guardrail_blocked`, naming the guardrail (never the text).
    Block,
    /// Let it through unchanged; the finding is in the call log and the metrics.
    Log,
}

impl GuardAction {
    pub fn name(self) -> &'static str {
        match self {
            GuardAction::Redact => "redact",
            GuardAction::Block => "block",
            GuardAction::Log => "log",
        }
    }
}

/// Which side of the call a guardrail looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GuardStage {
    /// The prompt: the text of the request's messages.
    Request,
    /// The answer: the text the model wrote, streamed or not.
    Response,
}

impl GuardStage {
    pub fn name(self) -> &'static str {
        match self {
            GuardStage::Request => "request",
            GuardStage::Response => "response",
        }
    }
}

/// What a webhook guardrail does when its service cannot be asked (timeout, error, an
/// answer it cannot read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// Let the text through unchanged.
    Open,
    /// Refuse the call: 503 `guardrail_unavailable` (the default: a guardrail that cannot
    /// check lets nothing unchecked through).
    #[default]
    Closed,
}

/// One guardrail.
#[derive(Debug, Clone)]
pub struct GuardrailSpec {
    pub name: Arc<str>,
    pub on_request: bool,
    pub on_response: bool,
    pub check: GuardCheck,
}

impl GuardrailSpec {
    pub fn applies(&self, stage: GuardStage) -> bool {
        match stage {
            GuardStage::Request => self.on_request,
            GuardStage::Response => self.on_response,
        }
    }
}

/// What a guardrail checks.
#[derive(Debug, Clone)]
pub enum GuardCheck {
    /// Personal and secret data, by kind (never `All`: expanded at load).
    Pii {
        kinds: Vec<PiiKind>,
        action: GuardAction,
    },
    /// Listed words (whole words, any case) and patterns.
    Deny(DenySpec),
    /// A prompt over this many tokens (estimated at four bytes a token) is refused.
    MaxPromptTokens(u64),
    /// An outside service that allows, blocks or rewrites the text.
    Webhook(WebhookSpec),
}

#[derive(Debug, Clone)]
pub struct DenySpec {
    /// The listed words as one case-insensitive whole-word pattern.
    pub words: Option<regex::Regex>,
    pub patterns: Vec<regex::Regex>,
    pub action: GuardAction,
    /// Bytes a streamed answer holds back so that a match split across chunks is still
    /// found: the longest word, or `max_match_bytes` when there are patterns.
    pub hold: usize,
}

#[derive(Debug, Clone)]
pub struct WebhookSpec {
    pub url: http::Uri,
    pub timeout: Duration,
    pub fail: FailMode,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}
