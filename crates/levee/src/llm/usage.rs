//! Token usage and cost of one LLM call, shared by the response body (which learns the usage as
//! the answer streams) and the request record (which reports it once the response ends).
//!
//! Usage comes from the provider's own report (OpenAI-style `usage`, asked for on streams with
//! `stream_options.include_usage`). When there is none, e.g. because the client went away
//! before the final chunk, the gateway counts what it relayed: one token per streamed content
//! chunk and a quarter token per byte of the prompt, and marks the figures as estimated.

pub use crate::observability::llm_call::{LlmCall, Price, Usage};

/// List prices published by the providers (USD per million tokens, 2025); `llm.pricing`
/// overrides them. A dated model name (`gpt-4o-2024-08-06`) takes the price of the longest
/// listed name it starts with.
const BUILT_IN: &[(&str, f64, f64)] = &[
    ("gpt-4o", 2.50, 10.00),
    ("gpt-4o-mini", 0.15, 0.60),
    ("gpt-4.1", 2.00, 8.00),
    ("gpt-4.1-mini", 0.40, 1.60),
    ("gpt-4.1-nano", 0.10, 0.40),
    ("o3-mini", 1.10, 4.40),
    ("text-embedding-3-small", 0.02, 0.0),
    ("text-embedding-3-large", 0.13, 0.0),
    ("claude-sonnet-4-5", 3.00, 15.00),
    ("claude-haiku-4-5", 1.00, 5.00),
    ("claude-opus-4-1", 15.00, 75.00),
    ("gemini-2.5-pro", 1.25, 10.00),
    ("gemini-2.5-flash", 0.30, 2.50),
];

/// The price of `model`: the config's, else the built-in list's (longest matching name).
pub fn price(model: &str, configured: &[(String, f64, f64)]) -> Option<Price> {
    if let Some((_, input, output)) = configured.iter().find(|(name, _, _)| name == model) {
        return Some(Price {
            input: *input,
            output: *output,
        });
    }
    BUILT_IN
        .iter()
        .filter(|(name, _, _)| {
            model == *name || model.strip_prefix(name).is_some_and(|rest| rest.starts_with('-'))
        })
        .max_by_key(|(name, _, _)| name.len())
        .map(|(_, input, output)| Price {
            input: *input,
            output: *output,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_prices_win_and_dated_names_find_their_model() {
        let configured = vec![("gpt-4o".to_owned(), 1.0, 2.0)];
        assert_eq!(
            price("gpt-4o", &configured),
            Some(Price {
                input: 1.0,
                output: 2.0
            })
        );
        assert_eq!(
            price("gpt-4o-mini-2024-07-18", &[]),
            Some(Price {
                input: 0.15,
                output: 0.60
            })
        );
        assert_eq!(
            price("gpt-4o-2024-08-06", &[]),
            Some(Price {
                input: 2.50,
                output: 10.00
            })
        );
        assert_eq!(price("gpt-4oops", &[]), None);
        assert_eq!(price("my-local-llama", &[]), None);
    }

    #[test]
    fn a_report_wins_over_an_estimate() {
        let call = LlmCall::new("p".into(), "gpt-4o".into(), price("gpt-4o", &[]));
        call.estimate(Usage {
            prompt: 5,
            completion: 5,
        });
        assert!(!call.reported());
        call.report(Usage {
            prompt: 1_000_000,
            completion: 100_000,
        });
        call.estimate(Usage {
            prompt: 1,
            completion: 1,
        });
        assert_eq!(
            call.usage(),
            Usage {
                prompt: 1_000_000,
                completion: 100_000
            }
        );
        assert!((call.cost_usd() - 3.5).abs() < 1e-9);
    }
}
