//! The `llm` section (providers that exist and are built, models served by them, prices,
//! the answer cache and prompt endpoints), and the routes prompt endpoints need.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::upstreams::check_breaker;
use super::Problems;
use crate::config::file::{LlmFile, LlmModelFile};
use crate::config::prompt::Template;
use crate::config::secrets::Resolved;
use crate::config::spec::LlmProviderKind;
use crate::config::spec::*;

/// The `llm` section (`provider_keys`: each provider's resolved `api_key_env`, by name).
pub(super) fn check_llm(
    file: &LlmFile,
    provider_keys: BTreeMap<String, Resolved<Secret>>,
    p: &mut Problems,
) -> Option<LlmSpec> {
    let providers = check_providers(file, provider_keys, p);
    let mut models = Vec::new();
    let mut names = HashSet::new();
    for (i, model) in file.models.iter().enumerate() {
        let path = format!("llm.models[{i}]");
        if !names.insert(model.name.as_str()) {
            p.at(
                &format!("{path}.name"),
                format!("duplicate model name `{}`", model.name),
            );
        }
        models.push(check_model(model, &path, &providers, p));
    }
    let pricing = check_pricing(file, p);
    let cache = check_cache(file, p);
    let prompts = check_prompts(file, p);
    Some(LlmSpec {
        providers,
        models,
        pricing,
        cache,
        prompts,
    })
}

/// `llm.providers`: an http(s) base URL, and an API key where the kind needs one.
fn check_providers(
    file: &LlmFile,
    mut provider_keys: BTreeMap<String, Resolved<Secret>>,
    p: &mut Problems,
) -> Vec<LlmProviderSpec> {
    let mut providers = Vec::new();
    for (name, provider) in &file.providers {
        let path = format!("llm.providers.{name}");
        if provider.api_version.is_some() && provider.kind != LlmProviderKind::AzureOpenai {
            p.at(
                &format!("{path}.api_version"),
                "api_version is for azure_openai providers",
            );
        }
        let base_url = provider.base_url.trim_end_matches('/').to_owned();
        let valid_url = base_url
            .parse::<http::Uri>()
            .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
        if !valid_url {
            p.at(
                &format!("{path}.base_url"),
                format!("`{}` is not an http(s) URL", provider.base_url),
            );
        }
        let api_key = provider_keys
            .remove(name)
            .and_then(|key| p.resolved(&format!("{path}.api_key_env"), key));
        if provider.kind != LlmProviderKind::OpenaiCompatible && provider.api_key_env.is_none() {
            p.at(
                &path,
                format!("provider `{name}` needs `api_key_env` (its API key)"),
            );
        }
        providers.push(LlmProviderSpec {
            name: Arc::from(name.as_str()),
            kind: provider.kind,
            base_url,
            api_key,
            api_version: provider
                .api_version
                .clone()
                .unwrap_or_else(|| "2024-10-21".into()),
            bulkhead: provider_bulkhead(provider, &path, p),
        });
    }
    providers
}

/// One of `llm.models`: its strategy, breaker, targets (on known providers) and timeouts.
fn check_model(
    model: &LlmModelFile,
    path: &str,
    providers: &[LlmProviderSpec],
    p: &mut Problems,
) -> LlmModelSpec {
    let strategy = match model.strategy.as_deref() {
        None | Some("fallback") => LlmStrategy::Fallback,
        Some("weighted") => LlmStrategy::Weighted,
        Some("lowest_latency") => LlmStrategy::LowestLatency,
        Some(other) => {
            p.at(
                &format!("{path}.strategy"),
                format!("unknown strategy `{other}`: use fallback, weighted or lowest_latency"),
            );
            LlmStrategy::Fallback
        }
    };
    let mut breaker_ok = true;
    let breaker = check_breaker(
        model.circuit_breaker.as_ref(),
        &format!("{path}.circuit_breaker"),
        p,
        &mut breaker_ok,
    );
    let weights: Vec<u32> = model.targets.iter().map(|t| t.weight.unwrap_or(1)).collect();
    if strategy == LlmStrategy::Weighted && weights.iter().all(|w| *w == 0) {
        p.at(
            &format!("{path}.targets"),
            "weighted targets need a weight above zero",
        );
    }
    if model.targets.is_empty() {
        p.at(&format!("{path}.targets"), "a model needs at least one target");
    }
    let mut targets = Vec::new();
    for (j, target) in model.targets.iter().enumerate() {
        match providers
            .iter()
            .position(|pr| &*pr.name == target.provider.as_str())
        {
            Some(index) => targets.push((index, Arc::from(target.model.as_str()))),
            None => p.at(
                &format!("{path}.targets[{j}].provider"),
                format!("unknown provider `{}`", target.provider),
            ),
        }
    }
    let timeouts = model.timeouts.clone().unwrap_or_default();
    let first_token = timeouts.first_token.map_or(Duration::from_secs(30), |d| d.0);
    let total = timeouts.total.map_or(Duration::from_secs(300), |d| d.0);
    if first_token.is_zero() || total.is_zero() {
        p.at(&format!("{path}.timeouts"), "timeouts must be above zero");
    }
    LlmModelSpec {
        name: Arc::from(model.name.as_str()),
        targets,
        strategy,
        weights,
        breaker,
        first_token,
        total,
    }
}

/// `llm.pricing`: finite prices, not negative.
fn check_pricing(file: &LlmFile, p: &mut Problems) -> Vec<LlmPriceSpec> {
    let mut pricing = Vec::new();
    for (model, price) in &file.pricing {
        let optional = [price.cached_input, price.cache_write];
        let all = [price.input, price.output]
            .into_iter()
            .chain(optional.into_iter().flatten());
        if !all.into_iter().all(|v| v >= 0.0 && v.is_finite()) {
            p.at(
                &format!("llm.pricing.{model}"),
                "prices must be finite and not negative",
            );
        }
        pricing.push(LlmPriceSpec {
            model: model.clone(),
            input: price.input,
            output: price.output,
            cached_input: price.cached_input,
            cache_write: price.cache_write,
        });
    }
    pricing
}

/// `llm.cache`: (TTL, entries, bytes), each above zero.
fn check_cache(file: &LlmFile, p: &mut Problems) -> Option<(Duration, usize, usize)> {
    file.cache.as_ref().map(|c| {
        let ttl = c.ttl.as_ref().map_or(Duration::from_secs(300), |d| d.0);
        let entries = c.max_entries.unwrap_or(10_000);
        let bytes = c.max_bytes.unwrap_or(64 << 20);
        if ttl.is_zero() || entries == 0 || bytes == 0 {
            p.at(
                "llm.cache",
                "llm.cache ttl, max_entries and max_bytes must be above zero",
            );
        }
        (ttl, entries, bytes)
    })
}

/// `llm.prompts`: a path used once, a known model and a template that parses.
fn check_prompts(file: &LlmFile, p: &mut Problems) -> Vec<LlmPromptSpec> {
    let mut prompts = Vec::new();
    let mut paths = HashSet::new();
    for (i, prompt) in file.prompts.iter().enumerate() {
        let path = format!("llm.prompts[{i}]");
        if !prompt.path.starts_with('/') || !paths.insert(prompt.path.as_str()) {
            p.at(
                &format!("{path}.path"),
                format!(
                    "prompt path `{}` must start with `/` and be used once",
                    prompt.path
                ),
            );
        }
        if !file.models.iter().any(|m| m.name == prompt.model) {
            p.at(
                &format!("{path}.model"),
                format!("unknown model `{}`", prompt.model),
            );
        }
        match Template::parse(&prompt.template) {
            Ok(template) => prompts.push(LlmPromptSpec {
                name: Arc::from(prompt.name.as_str()),
                path: prompt.path.clone(),
                model: Arc::from(prompt.model.as_str()),
                template,
            }),
            Err(message) => p.at(&format!("{path}.template"), message),
        }
    }
    prompts
}

/// A prompt endpoint is served by the first route whose path takes it: it must be an AI
/// gateway route (whose auth and rate limit then apply).
pub(super) fn check_prompt_routes(llm: Option<&LlmSpec>, routes: &[RouteSpec], p: &mut Problems) {
    for (i, prompt) in llm.iter().flat_map(|l| l.prompts.iter()).enumerate() {
        match routes.iter().find(|r| r.matcher.path.matches(&prompt.path)) {
            Some(route) if route.llm => {}
            Some(route) => p.at(
                &format!("llm.prompts[{i}].path"),
                format!(
                    "`{}` is taken by route `{}`, which is not an AI gateway route (`llm: true`)",
                    prompt.path, route.name
                ),
            ),
            None => p.at(
                &format!("llm.prompts[{i}].path"),
                format!(
                    "no route takes `{}`: add a route with `llm: true` whose match covers it",
                    prompt.path
                ),
            ),
        }
    }
}

/// A provider's `max_concurrent` and `queue`, checked as an upstream's are.
fn provider_bulkhead(
    provider: &crate::config::file::LlmProviderFile,
    path: &str,
    p: &mut Problems,
) -> Option<(usize, Option<(usize, Duration)>)> {
    let limit = provider.max_concurrent?;
    if limit == 0 || limit > 1_000_000 {
        p.at(
            &format!("{path}.max_concurrent"),
            "max_concurrent must be from 1 to 1000000",
        );
    }
    let queue = provider.queue.as_ref().map(|q| (q.size, q.timeout.0));
    if queue.is_some_and(|(size, wait)| size == 0 || size > 1_000_000 || wait.is_zero()) {
        p.at(
            &format!("{path}.queue"),
            "queue.size must be from 1 to 1000000 and queue.timeout above zero",
        );
    }
    Some((limit, queue))
}
