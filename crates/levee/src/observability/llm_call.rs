//! The accounting of one LLM call: tokens and cost, shared by the response body (which learns
//! the usage as the answer streams) and the request's record (which reports it once the
//! response ends). Plain data with one hook, so that observability needs nothing of the AI
//! gateway: the gateway hands over what it learns and what to settle at the end.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Tokens of one call, in OpenAI's terms whatever the provider: `prompt` counts every input
/// token (those read from or written to the provider's prompt cache included) and
/// `completion` every output token (reasoning included). The details are parts of those
/// totals, never added to them, so `prompt + completion` is always the call's size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt: u64,
    pub completion: u64,
    /// Prompt tokens read from the provider's prompt cache (OpenAI `cached_tokens`,
    /// Anthropic `cache_read_input_tokens`, Gemini `cachedContentTokenCount`).
    pub cached: u64,
    /// Prompt tokens written to the provider's prompt cache (Anthropic
    /// `cache_creation_input_tokens`), priced above plain input.
    pub cache_write: u64,
    /// Completion tokens spent on reasoning before the answer (OpenAI `reasoning_tokens`,
    /// Gemini `thoughtsTokenCount`, Anthropic extended thinking).
    pub reasoning: u64,
}

impl Usage {
    /// Prompt and completion only, without details (a Levee count, or a provider that
    /// reports no more).
    pub fn plain(prompt: u64, completion: u64) -> Usage {
        Usage {
            prompt,
            completion,
            ..Usage::default()
        }
    }

    /// Prompt tokens billed at the plain input rate: neither read from nor written to the
    /// cache.
    pub fn uncached_prompt(&self) -> u64 {
        self.prompt
            .saturating_sub(self.cached)
            .saturating_sub(self.cache_write)
    }
}

/// USD per million tokens: input and output, and the rates of cached input where the
/// provider has them (absent: the input rate). Reasoning tokens are output tokens at every
/// provider, priced at `output`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    /// Input read from the prompt cache.
    pub cached_input: Option<f64>,
    /// Input written to the prompt cache.
    pub cache_write: Option<f64>,
}

impl Price {
    pub fn new(input: f64, output: f64) -> Price {
        Price {
            input,
            output,
            cached_input: None,
            cache_write: None,
        }
    }

    /// The cost of `usage` in USD.
    pub fn cost(&self, usage: &Usage) -> f64 {
        let input = usage.uncached_prompt() as f64 * self.input
            + usage.cached as f64 * self.cached_input.unwrap_or(self.input)
            + usage.cache_write as f64 * self.cache_write.unwrap_or(self.input);
        (input + usage.completion as f64 * self.output) / 1_000_000.0
    }
}

/// One call's accounting.
pub struct LlmCall {
    pub provider: Arc<str>,
    /// The provider's model name.
    pub model: Arc<str>,
    price: Option<Price>,
    prompt: AtomicU64,
    completion: AtomicU64,
    cached: AtomicU64,
    cache_write: AtomicU64,
    reasoning: AtomicU64,
    /// Nanoseconds Levee spent on the call while the provider was not the one working:
    /// reading a whole answer into the client's shape, and each streamed frame's
    /// translation and accounting (`levee_llm_overhead_seconds` adds them to the time up to
    /// the response head less the provider's waits).
    levee_ns: AtomicU64,
    /// The provider's stream broke off before its proper end (the client got an error
    /// event in place of the end).
    interrupted: AtomicBool,
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
            cached: AtomicU64::new(0),
            cache_write: AtomicU64::new(0),
            reasoning: AtomicU64::new(0),
            levee_ns: AtomicU64::new(0),
            interrupted: AtomicBool::new(false),
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
        self.store(usage);
        self.reported.store(true, Ordering::Relaxed);
    }

    /// Levee's count, used only when the provider reported nothing.
    pub fn estimate(&self, usage: Usage) {
        if !self.reported.load(Ordering::Relaxed) {
            self.store(usage);
        }
    }

    fn store(&self, usage: Usage) {
        self.prompt.store(usage.prompt, Ordering::Relaxed);
        self.completion.store(usage.completion, Ordering::Relaxed);
        self.cached.store(usage.cached, Ordering::Relaxed);
        self.cache_write.store(usage.cache_write, Ordering::Relaxed);
        self.reasoning.store(usage.reasoning, Ordering::Relaxed);
    }

    pub fn usage(&self) -> Usage {
        Usage {
            prompt: self.prompt.load(Ordering::Relaxed),
            completion: self.completion.load(Ordering::Relaxed),
            cached: self.cached.load(Ordering::Relaxed),
            cache_write: self.cache_write.load(Ordering::Relaxed),
            reasoning: self.reasoning.load(Ordering::Relaxed),
        }
    }

    /// Adds time Levee spent on the call after the provider answered (see `levee_ns`).
    pub fn add_levee_time(&self, spent: std::time::Duration) {
        let nanos = u64::try_from(spent.as_nanos()).unwrap_or(u64::MAX);
        self.levee_ns.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The time added by [`LlmCall::add_levee_time`].
    pub fn levee_time(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.levee_ns.load(Ordering::Relaxed))
    }

    /// Marks the stream as broken off before its end.
    pub fn mark_interrupted(&self) {
        self.interrupted.store(true, Ordering::Relaxed);
    }

    pub fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::Relaxed)
    }

    pub fn reported(&self) -> bool {
        self.reported.load(Ordering::Relaxed)
    }

    /// The call's cost in USD (0 when the model has no known price).
    pub fn cost_usd(&self) -> f64 {
        self.price.map_or(0.0, |p| p.cost(&self.usage()))
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
