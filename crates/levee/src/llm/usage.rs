//! Token usage and cost of one LLM call, shared by the response body (which learns the usage as
//! the answer streams) and the request record (which reports it once the response ends).
//!
//! Usage comes from the provider's own report (OpenAI-style `usage`, asked for on streams with
//! `stream_options.include_usage`). When there is none, e.g. because the client went away
//! before the final chunk, the gateway counts what it relayed: one token per streamed content
//! chunk and a quarter token per byte of the prompt, and marks the figures as estimated.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Tokens of one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt: u64,
    pub completion: u64,
}

/// USD per million input and output tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input: f64,
    pub output: f64,
}

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

/// One call's accounting.
#[derive(Debug)]
pub struct LlmCall {
    pub provider: Arc<str>,
    /// The provider's model name.
    pub model: Arc<str>,
    price: Option<Price>,
    prompt: AtomicU64,
    completion: AtomicU64,
    /// True once the provider reported the usage (else the figures are counted by Levee).
    reported: AtomicBool,
    /// The consumer's quota reservation, settled with the final usage when the call ends.
    settlement: std::sync::Mutex<Option<(Arc<super::quota::ConsumerQuota>, super::quota::Reservation)>>,
}

impl LlmCall {
    pub fn new(provider: Arc<str>, model: Arc<str>, price: Option<Price>) -> LlmCall {
        LlmCall {
            provider,
            model,
            price,
            prompt: AtomicU64::new(0),
            completion: AtomicU64::new(0),
            reported: AtomicBool::new(false),
            settlement: std::sync::Mutex::new(None),
        }
    }

    /// Settles `reservation` on `quota` with this call's usage and cost when the call ends.
    pub fn settle_on_end(
        &self,
        quota: Arc<super::quota::ConsumerQuota>,
        reservation: super::quota::Reservation,
    ) {
        *self.settlement.lock().unwrap_or_else(|p| p.into_inner()) = Some((quota, reservation));
    }

    /// The provider's own report.
    pub fn report(&self, usage: Usage) {
        self.prompt.store(usage.prompt, Ordering::Relaxed);
        self.completion.store(usage.completion, Ordering::Relaxed);
        self.reported.store(true, Ordering::Relaxed);
    }

    /// Levee's count, used only when the provider reported nothing.
    pub fn estimate(&self, usage: Usage) {
        if !self.reported.load(Ordering::Relaxed) {
            self.prompt.store(usage.prompt, Ordering::Relaxed);
            self.completion.store(usage.completion, Ordering::Relaxed);
        }
    }

    pub fn usage(&self) -> Usage {
        Usage {
            prompt: self.prompt.load(Ordering::Relaxed),
            completion: self.completion.load(Ordering::Relaxed),
        }
    }

    pub fn reported(&self) -> bool {
        self.reported.load(Ordering::Relaxed)
    }

    /// The call's cost in USD (0 when the model has no known price).
    pub fn cost_usd(&self) -> f64 {
        let usage = self.usage();
        self.price.map_or(0.0, |p| {
            (usage.prompt as f64 * p.input + usage.completion as f64 * p.output) / 1_000_000.0
        })
    }
}

impl LlmCall {
    /// Settles the quota reservation with the final usage, once (the request is recorded).
    pub fn settle(&self) {
        let settlement = self.settlement.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((quota, reservation)) = settlement {
            let usage = self.usage();
            quota.settle(
                reservation,
                usage.prompt + usage.completion,
                self.cost_usd(),
                tokio::time::Instant::now(),
            );
        }
    }
}

impl Drop for LlmCall {
    /// A call that ended without being recorded still settles.
    fn drop(&mut self) {
        self.settle();
    }
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
