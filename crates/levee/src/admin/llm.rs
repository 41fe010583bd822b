//! `GET /api/v1/llm`: the AI gateway's state that the call log does not hold, for the
//! dashboard's AI gateway page and for scripts: tokens, cost and provider fallbacks per
//! provider model since this process started, the answer cache's hit rate, and every LLM
//! budget (config consumers, stored keys, teams) with what is left of it. Spend over a
//! chosen time range, per consumer or model and for the whole fleet, comes from
//! `GET /api/v1/analytics` instead.

use http::{Response, StatusCode};
use schemars::JsonSchema;
use serde::Serialize;

use super::json_value;
use super::routes::Call;
use crate::body::ResponseBody;
use crate::management::directory::LimitsHolder;
use crate::state::SharedState;

/// `GET /api/v1/llm`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct LlmOverview {
    /// Per provider model that answered, since this process started.
    pub models: Vec<ModelTotals>,
    pub cache: CacheView,
    /// Every LLM budget, by scope (`consumer`, `key`, `team`) and name.
    pub budgets: Vec<LlmBudgetView>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ModelTotals {
    pub provider: String,
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Parts of the prompt tokens read from, and written to, the provider's prompt cache.
    pub cached_prompt_tokens: u64,
    pub cache_write_tokens: u64,
    /// Part of the completion tokens spent reasoning.
    pub reasoning_tokens: u64,
    pub cost_usd: f64,
    /// Calls this model answered after an earlier target of theirs failed or was passed
    /// over (`levee_llm_fallbacks_total`).
    pub fallbacks: u64,
}

/// The answer cache's lookups since this process started.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CacheView {
    pub hits: u64,
    pub misses: u64,
    /// Hits over lookups; absent before the first lookup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hit_rate: Option<f64>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct LlmBudgetView {
    /// `consumer` (from the config), `key` or `team` (from the management store).
    pub scope: &'static str,
    /// The consumer's or team's name, or the key's id.
    pub name: String,
    /// A key's consumer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    /// The budget in US dollars per period.
    pub usd: f64,
    /// The period (`30d`, `1h`).
    pub period: String,
    /// Spent in the current period. Absent in cluster mode with Redis, where the fleet's
    /// spend is kept in Redis and this endpoint does not read it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spent_usd: Option<f64>,
    /// What is left of it (never below 0); absent with `spent_usd`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining_usd: Option<f64>,
}

/// `GET /api/v1/llm`.
pub(super) fn llm(call: &Call) -> Response<ResponseBody> {
    json_value(StatusCode::OK, &build(&call.state))
}

/// The AI gateway's state now.
pub fn build(state: &SharedState) -> LlmOverview {
    let (models, (hits, misses)) = state.metrics.llm_totals();
    let lookups = hits + misses;
    let gateway = state.gateway.load();
    let mut consumers: Vec<_> = gateway.llm_quotas.iter().collect();
    consumers.sort_by(|a, b| a.0.cmp(b.0));
    let configured = consumers.into_iter().map(|(name, limits)| LimitsHolder {
        scope: "consumer",
        name: name.clone(),
        consumer: None,
        limits: limits.clone(),
    });
    let budgets = configured
        .chain(gateway.management.directory().budgets())
        .filter_map(|holder| budget_view(&holder))
        .collect();
    LlmOverview {
        models: models
            .into_iter()
            .map(|((provider, model), totals)| ModelTotals {
                provider: provider.to_string(),
                model: model.to_string(),
                prompt_tokens: totals.usage.prompt,
                completion_tokens: totals.usage.completion,
                cached_prompt_tokens: totals.usage.cached,
                cache_write_tokens: totals.usage.cache_write,
                reasoning_tokens: totals.usage.reasoning,
                cost_usd: totals.cost_usd,
                fallbacks: totals.fallbacks,
            })
            .collect(),
        cache: CacheView {
            hits,
            misses,
            hit_rate: (lookups > 0).then(|| hits as f64 / lookups as f64),
        },
        budgets,
    }
}

fn budget_view(holder: &LimitsHolder) -> Option<LlmBudgetView> {
    let (usd, period, spent) = holder.limits.budget()?;
    Some(LlmBudgetView {
        scope: holder.scope,
        name: holder.name.to_string(),
        consumer: holder.consumer.as_ref().map(|c| c.to_string()),
        usd,
        period: crate::slo::window_text(period),
        spent_usd: spent,
        remaining_usd: spent.map(|s| (usd - s).max(0.0)),
    })
}
