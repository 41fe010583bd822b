//! The AI gateway's counters, kept per worker beside the request counters
//! ([`super::metrics`]) and merged the same way: tokens and cost per provider model, the
//! answer cache, Levee's own time per LLM request, and guardrail verdicts.
//!
//! Every label comes from the config (routes, providers' model names, guardrail names) or
//! from a small fixed set (token kinds, guardrail actions), so the maps are bounded by the
//! config, never by traffic. Plain data: what a call spent is handed in as numbers.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use super::histogram::{histogram, Histogram, Overhead};
use super::llm_call::Usage;
use super::metrics::{escape, family};

/// An LLM provider's name and its model's name.
pub type ProviderModel = (Arc<str>, Arc<str>);

/// One provider model's tokens, cost and fallbacks since the start.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LlmTotals {
    pub usage: Usage,
    pub cost_usd: f64,
    /// Calls answered after a fallback.
    pub fallbacks: u64,
}

impl LlmTotals {
    fn add(&mut self, other: &LlmTotals) {
        let (a, b) = (&mut self.usage, &other.usage);
        a.prompt += b.prompt;
        a.completion += b.completion;
        a.cached += b.cached;
        a.cache_write += b.cache_write;
        a.reasoning += b.reasoning;
        self.cost_usd += other.cost_usd;
        self.fallbacks += other.fallbacks;
    }
}

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// One worker's AI gateway counters.
#[derive(Debug, Default)]
pub struct AiShard {
    llm: Map<ProviderModel, LlmTotals>,
    /// Answer-cache hits and misses.
    cache: (u64, u64),
    /// route -> Levee's own time per LLM request.
    overhead: Map<Arc<str>, Histogram<Overhead>>,
    /// (route, guardrail, action) -> verdicts.
    guardrails: Map<(Arc<str>, Arc<str>, &'static str), u64>,
    /// (route, MCP server, outcome) -> tool calls.
    mcp: Map<(Arc<str>, Arc<str>, &'static str), u64>,
}

impl AiShard {
    /// Counts one MCP tool call.
    pub fn record_mcp(&mut self, route: &Arc<str>, server: &Arc<str>, outcome: &'static str) {
        *self
            .mcp
            .entry((route.clone(), server.clone(), outcome))
            .or_default() += 1;
    }

    /// Counts one LLM call's tokens and cost.
    pub fn record_llm(&mut self, key: &ProviderModel, usage: Usage, cost_usd: f64, fell_back: bool) {
        let totals = LlmTotals {
            usage,
            cost_usd,
            fallbacks: u64::from(fell_back),
        };
        match self.llm.get_mut(key) {
            Some(entry) => entry.add(&totals),
            None => {
                self.llm.insert(key.clone(), totals);
            }
        }
    }

    /// Counts one answer-cache lookup.
    pub fn record_cache(&mut self, hit: bool) {
        if hit {
            self.cache.0 += 1;
        } else {
            self.cache.1 += 1;
        }
    }

    /// Observes Levee's own time on one LLM request of `route`.
    pub fn record_overhead(&mut self, route: &Arc<str>, spent: Duration) {
        match self.overhead.get_mut(route) {
            Some(hist) => hist.observe(spent),
            None => self.overhead.entry(route.clone()).or_default().observe(spent),
        }
    }

    /// Counts one guardrail verdict.
    pub fn record_guardrail(&mut self, route: &Arc<str>, guardrail: &Arc<str>, action: &'static str) {
        *self
            .guardrails
            .entry((route.clone(), guardrail.clone(), action))
            .or_default() += 1;
    }
}

/// Every shard's AI counters summed, in the order they are written.
#[derive(Debug, Default)]
pub struct AiTotals {
    pub llm: BTreeMap<ProviderModel, LlmTotals>,
    /// Answer-cache hits and misses.
    pub cache: (u64, u64),
    overhead: BTreeMap<Arc<str>, Histogram<Overhead>>,
    guardrails: BTreeMap<(Arc<str>, Arc<str>, &'static str), u64>,
    mcp: BTreeMap<(Arc<str>, Arc<str>, &'static str), u64>,
}

impl AiTotals {
    pub fn add(&mut self, shard: &AiShard) {
        for (key, totals) in &shard.llm {
            self.llm.entry(key.clone()).or_default().add(totals);
        }
        self.cache.0 += shard.cache.0;
        self.cache.1 += shard.cache.1;
        for (route, hist) in &shard.overhead {
            self.overhead.entry(route.clone()).or_default().merge(hist);
        }
        for (key, count) in &shard.guardrails {
            *self.guardrails.entry(key.clone()).or_default() += count;
        }
        for (key, count) in &shard.mcp {
            *self.mcp.entry(key.clone()).or_default() += count;
        }
    }

    /// The text exposition of the AI gateway's families.
    pub fn render(&self, out: &mut String) {
        self.render_tokens(out);
        self.render_mcp(out);
        family(
            out,
            "levee_llm_cost_usd_total",
            "counter",
            "Cost of LLM calls in US dollars, from the configured or built-in prices (cached and cache-write input at their own rates).",
        );
        for ((provider, model), totals) in &self.llm {
            let (provider, model) = (escape(provider), escape(model));
            let cost = totals.cost_usd;
            let _ = writeln!(
                out,
                "levee_llm_cost_usd_total{{provider=\"{provider}\",model=\"{model}\"}} {cost}"
            );
        }
        family(
            out,
            "levee_llm_fallbacks_total",
            "counter",
            "LLM calls answered by a later target of their model after an earlier one failed or was passed over.",
        );
        for ((provider, model), totals) in &self.llm {
            let (provider, model, n) = (escape(provider), escape(model), totals.fallbacks);
            let _ = writeln!(
                out,
                "levee_llm_fallbacks_total{{provider=\"{provider}\",model=\"{model}\"}} {n}"
            );
        }
        family(
            out,
            "levee_llm_cache_total",
            "counter",
            "AI gateway answer-cache lookups by result (hit or miss).",
        );
        for (result, count) in [("hit", self.cache.0), ("miss", self.cache.1)] {
            let _ = writeln!(out, "levee_llm_cache_total{{result=\"{result}\"}} {count}");
        }
        family(
            out,
            "levee_llm_overhead_seconds",
            "histogram",
            "Time Levee spent on an LLM request itself, by route: up to the response head less the waits for providers, plus the work on the answer after it (reading a whole answer into the client's shape, each streamed frame's translation and accounting).",
        );
        for (route, hist) in &self.overhead {
            let labels = format!("route=\"{}\"", escape(route));
            histogram(out, "levee_llm_overhead_seconds", &labels, hist);
        }
        family(
            out,
            "levee_guardrail_actions_total",
            "counter",
            "Guardrail verdicts by route, guardrail and action (redact, block, log, allow, rewrite, fail_open, fail_closed).",
        );
        for ((route, guardrail, action), count) in &self.guardrails {
            let (route, guardrail) = (escape(route), escape(guardrail));
            let _ = writeln!(
                out,
                "levee_guardrail_actions_total{{route=\"{route}\",guardrail=\"{guardrail}\",action=\"{action}\"}} {count}"
            );
        }
    }

    fn render_mcp(&self, out: &mut String) {
        family(
            out,
            "levee_mcp_tool_calls_total",
            "counter",
            "MCP tool calls by route, server and outcome (ok, tool_error, error, refused, unavailable, timeout, circuit_open, rate_limited, bad_answer).",
        );
        for ((route, server, outcome), count) in &self.mcp {
            let (route, server) = (escape(route), escape(server));
            let _ = writeln!(
                out,
                "levee_mcp_tool_calls_total{{route=\"{route}\",server=\"{server}\",outcome=\"{outcome}\"}} {count}"
            );
        }
    }

    /// The token families: the totals, and their details (parts of the totals, in a family
    /// of their own so that summing `levee_llm_tokens_total` over `kind` stays right).
    fn render_tokens(&self, out: &mut String) {
        family(
            out,
            "levee_llm_tokens_total",
            "counter",
            "Tokens of LLM calls per provider and provider model; kind is prompt (all input, cached included) or completion (all output, reasoning included).",
        );
        for ((provider, model), totals) in &self.llm {
            let (provider, model) = (escape(provider), escape(model));
            for (kind, count) in [
                ("prompt", totals.usage.prompt),
                ("completion", totals.usage.completion),
            ] {
                let _ = writeln!(
                    out,
                    "levee_llm_tokens_total{{provider=\"{provider}\",model=\"{model}\",kind=\"{kind}\"}} {count}"
                );
            }
        }
        family(
            out,
            "levee_llm_token_details_total",
            "counter",
            "Parts of levee_llm_tokens_total: cached_prompt (input read from the prompt cache), cache_write (input written to it) and reasoning (output spent reasoning).",
        );
        for ((provider, model), totals) in &self.llm {
            let (provider, model) = (escape(provider), escape(model));
            let usage = &totals.usage;
            for (kind, count) in [
                ("cached_prompt", usage.cached),
                ("cache_write", usage.cache_write),
                ("reasoning", usage.reasoning),
            ] {
                let _ = writeln!(
                    out,
                    "levee_llm_token_details_total{{provider=\"{provider}\",model=\"{model}\",kind=\"{kind}\"}} {count}"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_sum_and_details_stay_apart_from_totals() {
        let key: ProviderModel = ("openai".into(), "o3-mini".into());
        let usage = Usage {
            prompt: 100,
            completion: 50,
            cached: 40,
            cache_write: 0,
            reasoning: 30,
        };
        let (mut a, mut b) = (AiShard::default(), AiShard::default());
        a.record_llm(&key, usage, 0.5, false);
        b.record_llm(&key, usage, 0.25, true);
        let route: Arc<str> = "ai".into();
        a.record_overhead(&route, Duration::from_micros(80));
        b.record_guardrail(&route, &Arc::from("pii"), "redact");
        let mut totals = AiTotals::default();
        totals.add(&a);
        totals.add(&b);
        let mut text = String::new();
        totals.render(&mut text);
        let labels = "provider=\"openai\",model=\"o3-mini\"";
        assert!(text.contains(&format!("levee_llm_tokens_total{{{labels},kind=\"prompt\"}} 200")));
        assert!(text.contains(&format!(
            "levee_llm_tokens_total{{{labels},kind=\"completion\"}} 100"
        )));
        assert!(text.contains(&format!(
            "levee_llm_token_details_total{{{labels},kind=\"cached_prompt\"}} 80"
        )));
        assert!(text.contains(&format!(
            "levee_llm_token_details_total{{{labels},kind=\"reasoning\"}} 60"
        )));
        assert!(text.contains(&format!("levee_llm_cost_usd_total{{{labels}}} 0.75")));
        assert!(text.contains(&format!("levee_llm_fallbacks_total{{{labels}}} 1")));
        assert!(text.contains("levee_llm_overhead_seconds_count{route=\"ai\"} 1"));
        assert!(text
            .contains("levee_guardrail_actions_total{route=\"ai\",guardrail=\"pii\",action=\"redact\"} 1"));
    }
}
