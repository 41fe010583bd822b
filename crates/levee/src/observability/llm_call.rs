//! The accounting of one LLM call: tokens and cost, shared by the response body (which learns
//! the usage as the answer streams) and the request's record (which reports it once the
//! response ends). Plain data with one hook, so that observability needs nothing of the AI
//! gateway: the gateway hands over what it learns and what to settle at the end.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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

/// One call's accounting.
pub struct LlmCall {
    pub provider: Arc<str>,
    /// The provider's model name.
    pub model: Arc<str>,
    price: Option<Price>,
    prompt: AtomicU64,
    completion: AtomicU64,
    /// True once the provider reported the usage (else the figures are counted by Levee).
    reported: AtomicBool,
    /// What runs once with the final usage when the call ends (the AI gateway settles the
    /// consumer's quota reservation with it): tokens in all, cost in USD.
    settlement: Mutex<Option<Settlement>>,
}

/// Work left for when a call's usage is final: `(tokens, cost_usd)`.
pub type Settlement = Box<dyn FnOnce(u64, f64) + Send>;

impl std::fmt::Debug for LlmCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmCall")
            .field("provider", &self.provider)
            .field("model", &self.model)
            .field("usage", &self.usage())
            .finish_non_exhaustive()
    }
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
            settlement: Mutex::new(None),
        }
    }

    /// Runs `settlement` with this call's final usage and cost when the call ends.
    pub fn settle_on_end(&self, settlement: Settlement) {
        *self.settlement.lock().unwrap_or_else(|p| p.into_inner()) = Some(settlement);
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
        if let Some(settle) = settlement {
            let usage = self.usage();
            settle(usage.prompt + usage.completion, self.cost_usd());
        }
    }
}

impl Drop for LlmCall {
    /// A call that ended without being recorded still settles.
    fn drop(&mut self) {
        self.settle();
    }
}
