//! Token usage and cost of one LLM call, shared by the response body (which learns the usage as
//! the answer streams) and the request record (which reports it once the response ends).
//!
//! Usage comes from the provider's own report (OpenAI-style `usage`, asked for on streams with
//! `stream_options.include_usage`). When there is none, e.g. because the client went away
//! before the final chunk, the gateway counts what it relayed: one token per streamed content
//! chunk and a quarter token per byte of the prompt, and marks the figures as estimated.

use crate::config::spec::LlmPriceSpec;
pub use crate::observability::llm_call::{LlmCall, Price, Usage};

/// One row of the built-in price list: model name, then USD per million tokens of input,
/// output, input read from the prompt cache, and input written to it.
type ListPrice = (&'static str, f64, f64, Option<f64>, Option<f64>);

/// The providers' list prices, USD per million tokens, as published on their pricing pages
/// and read on 2025-10-01: platform.openai.com/docs/pricing (cached input is OpenAI's
/// "cached input" column), docs.claude.com/en/docs/about-claude/pricing (cache reads are
/// 0.1x input, cache writes with the default 5-minute lifetime 1.25x input) and
/// ai.google.dev/gemini-api/docs/pricing (prompts up to 200k tokens; context-cache reads).
/// Reasoning and thinking tokens are billed as output by all three. `llm.pricing` overrides
/// any row, and prices models the list does not know. A dated model name
/// (`gpt-4o-2024-08-06`) takes the price of the longest listed name it starts with.
pub const PRICES_READ_ON: &str = "2025-10-01";
const BUILT_IN: &[ListPrice] = &[
    ("gpt-4o", 2.50, 10.00, Some(1.25), None),
    ("gpt-4o-mini", 0.15, 0.60, Some(0.075), None),
    ("gpt-4.1", 2.00, 8.00, Some(0.50), None),
    ("gpt-4.1-mini", 0.40, 1.60, Some(0.10), None),
    ("gpt-4.1-nano", 0.10, 0.40, Some(0.025), None),
    ("o3-mini", 1.10, 4.40, Some(0.55), None),
    ("o4-mini", 1.10, 4.40, Some(0.275), None),
    ("text-embedding-3-small", 0.02, 0.0, None, None),
    ("text-embedding-3-large", 0.13, 0.0, None, None),
    ("claude-sonnet-4-5", 3.00, 15.00, Some(0.30), Some(3.75)),
    ("claude-haiku-4-5", 1.00, 5.00, Some(0.10), Some(1.25)),
    ("claude-opus-4-1", 15.00, 75.00, Some(1.50), Some(18.75)),
    ("gemini-2.5-pro", 1.25, 10.00, Some(0.31), None),
    ("gemini-2.5-flash", 0.30, 2.50, Some(0.075), None),
];

/// The price of `model`: the config's, else the built-in list's (longest matching name).
pub fn price(model: &str, configured: &[LlmPriceSpec]) -> Option<Price> {
    if let Some(price) = configured.iter().find(|p| p.model == model) {
        return Some(Price {
            input: price.input,
            output: price.output,
            cached_input: price.cached_input,
            cache_write: price.cache_write,
        });
    }
    BUILT_IN
        .iter()
        .filter(|(name, ..)| {
            model == *name || model.strip_prefix(name).is_some_and(|rest| rest.starts_with('-'))
        })
        .max_by_key(|(name, ..)| name.len())
        .map(|(_, input, output, cached_input, cache_write)| Price {
            input: *input,
            output: *output,
            cached_input: *cached_input,
            cache_write: *cache_write,
        })
}

/// `usage` as OpenAI reports it, details included where there are any, so a client behind
/// Levee reads cached and reasoning tokens whatever provider answered.
pub fn openai_usage(usage: &Usage) -> serde_json::Value {
    let mut object = serde_json::json!({
        "prompt_tokens": usage.prompt,
        "completion_tokens": usage.completion,
        "total_tokens": usage.prompt + usage.completion,
    });
    if let Some(map) = object.as_object_mut() {
        if usage.cached > 0 || usage.cache_write > 0 {
            map.insert(
                "prompt_tokens_details".into(),
                serde_json::json!({"cached_tokens": usage.cached}),
            );
        }
        if usage.reasoning > 0 {
            map.insert(
                "completion_tokens_details".into(),
                serde_json::json!({"reasoning_tokens": usage.reasoning}),
            );
        }
    }
    object
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn configured_prices_win_and_dated_names_find_their_model() {
        let configured = vec![LlmPriceSpec {
            model: "gpt-4o".into(),
            input: 1.0,
            output: 2.0,
            cached_input: None,
            cache_write: None,
        }];
        assert_eq!(price("gpt-4o", &configured), Some(Price::new(1.0, 2.0)));
        let mini = price("gpt-4o-mini-2024-07-18", &[]).unwrap();
        assert_eq!(
            (mini.input, mini.output, mini.cached_input),
            (0.15, 0.60, Some(0.075))
        );
        let dated = price("gpt-4o-2024-08-06", &[]).unwrap();
        assert_eq!((dated.input, dated.output), (2.50, 10.00));
        assert_eq!(price("gpt-4oops", &[]), None);
        assert_eq!(price("my-local-llama", &[]), None);
    }

    #[test]
    fn a_report_wins_over_an_estimate() {
        let call = LlmCall::new("p".into(), "gpt-4o".into(), price("gpt-4o", &[]));
        call.estimate(Usage::plain(5, 5));
        assert!(!call.reported());
        call.report(Usage::plain(1_000_000, 100_000));
        call.estimate(Usage::plain(1, 1));
        assert_eq!(call.usage(), Usage::plain(1_000_000, 100_000));
        assert!((call.cost_usd() - 3.5).abs() < 1e-9);
    }
}
