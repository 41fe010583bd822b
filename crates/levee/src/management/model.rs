//! The management objects as the API shows and takes them: teams, consumers, keys, admin
//! tokens and subscriptions, with the checks each field gets.
//!
//! Stored bodies are exactly these JSON shapes, so what the store holds, what the audit log
//! records and what the API answers never disagree. None of them holds a secret: a key or a
//! token is shown once, when it is made, and kept only as a digest beside the body.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

/// An LLM spending budget: `usd` per `per` (a duration such as `30d`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub usd: f64,
    pub per: String,
}

impl Budget {
    pub fn parsed(&self) -> Result<(f64, Duration), String> {
        let per =
            crate::config::duration::parse_duration(&self.per).map_err(|e| format!("budget.per: {e}"))?;
        if !(self.usd.is_finite() && self.usd >= 0.0) || per.is_zero() {
            return Err("budget needs `usd` (not negative) and a `per` period above zero".into());
        }
        Ok((self.usd, per))
    }
}

/// A request rate limit: `rate` such as `100/s`, up to `burst` at once (default: the rate's
/// count).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub rate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

impl RateLimit {
    pub fn quota(&self) -> Result<levee_resilience::Quota, String> {
        let (count, period) =
            crate::config::parse_rate(&self.rate).map_err(|e| format!("rate_limit.rate: {e}"))?;
        Ok(levee_resilience::Quota::new(
            count,
            period,
            self.burst.unwrap_or(count),
        ))
    }
}

/// A team: a tenant owning consumers, keys and published services.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Team {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Caps the sum of its keys' LLM spend.
    #[serde(default)]
    pub budget: Option<Budget>,
    #[serde(default)]
    pub metadata: Map<String, Json>,
    #[serde(default)]
    pub created_at: String,
}

/// Who calls: a consumer holds keys and subscriptions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Consumer {
    pub name: String,
    #[serde(default)]
    pub team: Option<String>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub metadata: Map<String, Json>,
    #[serde(default)]
    pub created_at: String,
    /// `api` (made through the API) or `config` (from the config file: read-only here).
    #[serde(default = "api_source")]
    pub source: String,
}

/// A virtual key: what a consumer presents, with its own limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Key {
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub consumer: String,
    #[serde(default)]
    pub team: Option<String>,
    /// The key's first characters, to tell keys apart (`lv_ab12cd…`).
    #[serde(default)]
    pub prefix: String,
    /// RFC 3339; the key answers 401 `key_expired` from then on.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Route names the key may call (every route when absent).
    #[serde(default)]
    pub allowed_routes: Option<Vec<String>>,
    /// Model names (as clients send them) the key may ask for (every model when absent).
    #[serde(default)]
    pub allowed_models: Option<Vec<String>>,
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    #[serde(default)]
    pub budget: Option<Budget>,
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    #[serde(default)]
    pub metadata: Map<String, Json>,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub revoked_at: Option<String>,
    /// The key that replaced this one (`POST /api/v1/keys/{id}/rotate`).
    #[serde(default)]
    pub rotated_to: Option<String>,
    #[serde(default)]
    pub rotated_from: Option<String>,
    #[serde(default = "api_source")]
    pub source: String,
}

/// What an admin token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    Admin,
    /// Its own team's consumers, keys and subscriptions (and approving subscriptions to its
    /// team's services).
    TeamAdmin,
    /// Reads everything, changes nothing.
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::TeamAdmin => "team_admin",
            Role::Viewer => "viewer",
        }
    }
}

/// An admin API token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Token {
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub role: Role,
    /// The team of a `team_admin`.
    #[serde(default)]
    pub team: Option<String>,
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub revoked_at: Option<String>,
}

/// Where a subscription stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionState {
    Pending,
    Approved,
    Rejected,
    Cancelled,
}

/// A consumer's access to a published service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    pub id: String,
    pub consumer: String,
    #[serde(default)]
    pub consumer_team: Option<String>,
    pub service: String,
    /// The team owning the service, whose admins decide.
    #[serde(default)]
    pub service_team: Option<String>,
    pub state: SubscriptionState,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub decided_at: Option<String>,
    #[serde(default)]
    pub decided_by: Option<String>,
}

fn api_source() -> String {
    "api".into()
}

/// Names of teams, consumers and keys: what fits in a URL segment and a metric label.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} `{name}` must be 1 to 64 letters, digits, `-`, `_` or `.`"
        ))
    }
}

/// Checks a key's limits and dates.
pub fn check_key(key: &Key) -> Result<(), String> {
    if let Some(budget) = &key.budget {
        budget.parsed()?;
    }
    if let Some(limit) = &key.rate_limit {
        limit.quota()?;
    }
    if let Some(at) = &key.expires_at {
        parse_time(at).map_err(|e| format!("expires_at: {e}"))?;
    }
    if key.tokens_per_minute == Some(0) || key.requests_per_minute == Some(0) {
        return Err("tokens_per_minute and requests_per_minute must be above zero".into());
    }
    if key.name.len() > 200 {
        return Err("name must be at most 200 characters".into());
    }
    Ok(())
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// RFC 3339 (seconds) of a time in ms since the epoch.
pub fn rfc3339(ms: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(time).to_string()
}

/// An RFC 3339 time as ms since the epoch.
pub fn parse_time(text: &str) -> Result<i64, String> {
    let time = humantime::parse_rfc3339_weak(text)
        .map_err(|_| format!("`{text}` is not an RFC 3339 time such as 2027-01-01T00:00:00Z"))?;
    let ms = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    Ok(i64::try_from(ms).unwrap_or(i64::MAX))
}

/// A fresh random secret: `prefix` and 32 bytes of the OS's randomness in hex.
pub fn new_secret(prefix: &str) -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
    Ok(format!("{prefix}{}", crate::hex::encode(&bytes)))
}

/// A fresh random object id: `prefix` and 8 random bytes in hex.
pub fn new_id(prefix: &str) -> Result<String, String> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
    Ok(format!("{prefix}{}", crate::hex::encode(&bytes)))
}

/// What is shown of a secret afterwards: its first 8 characters and an ellipsis.
pub fn shown_prefix(secret: &str) -> String {
    let head: String = secret.chars().take(8).collect();
    format!("{head}...")
}
