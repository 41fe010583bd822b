//! A route's `guardrails`: one check each, unique names, patterns that compile, a webhook
//! URL Levee can call; only on AI gateway routes.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::Problems;
use crate::config::file::{DenyFile, GuardrailFile, RouteFile, WebhookFile};
use crate::config::guardrails::*;

/// Patterns compiled from a config are bounded in size, so a mistyped one cannot take the
/// memory of the process.
const PATTERN_SIZE_LIMIT: usize = 1 << 20;
/// The default `max_match_bytes` of deny patterns.
const DEFAULT_MAX_MATCH: usize = 64;

pub(super) fn check_guardrails(route: &RouteFile, path: &str, p: &mut Problems) -> Arc<[GuardrailSpec]> {
    if !route.guardrails.is_empty() && !route.llm {
        p.at(
            &format!("{path}.guardrails"),
            "guardrails check prompts and answers: they are for AI gateway routes (`llm: true`)",
        );
        return Arc::from([]);
    }
    let mut names = HashSet::new();
    let mut specs = Vec::new();
    for (i, file) in route.guardrails.iter().enumerate() {
        let at = format!("{path}.guardrails[{i}]");
        if !names.insert(file.name.as_str()) {
            p.at(
                &format!("{at}.name"),
                format!("a second guardrail named `{}`", file.name),
            );
        }
        if file.name.is_empty() {
            p.at(&format!("{at}.name"), "a guardrail needs a name");
        }
        if let Some(spec) = check_guardrail(file, &at, p) {
            specs.push(spec);
        }
    }
    specs.into()
}

fn check_guardrail(file: &GuardrailFile, at: &str, p: &mut Problems) -> Option<GuardrailSpec> {
    let given = [
        file.pii.is_some(),
        file.deny.is_some(),
        file.max_prompt_tokens.is_some(),
        file.webhook.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        p.at(
            at,
            "a guardrail has exactly one of `pii`, `deny`, `max_prompt_tokens` and `webhook`",
        );
        return None;
    }
    let stages = file
        .on
        .clone()
        .unwrap_or_else(|| vec![GuardStage::Request, GuardStage::Response]);
    if stages.is_empty() {
        p.at(&format!("{at}.on"), "`on` names `request`, `response` or both");
    }
    let check = if let Some(kinds) = &file.pii {
        check_pii(kinds, file.action, at, p)?
    } else if let Some(deny) = &file.deny {
        check_deny(deny, file.action.unwrap_or(GuardAction::Block), at, p)?
    } else if let Some(max) = file.max_prompt_tokens {
        if stages.contains(&GuardStage::Response) && file.on.is_some() {
            p.at(&format!("{at}.on"), "`max_prompt_tokens` checks requests only");
        }
        if file.action.is_some_and(|a| a != GuardAction::Block) {
            p.at(
                &format!("{at}.action"),
                "`max_prompt_tokens` blocks (it has no other action)",
            );
        }
        if max == 0 {
            p.at(&format!("{at}.max_prompt_tokens"), "must be above 0");
        }
        GuardCheck::MaxPromptTokens(max)
    } else {
        if file.action.is_some() {
            p.at(
                &format!("{at}.action"),
                "a webhook's verdict is its action: remove `action`",
            );
        }
        GuardCheck::Webhook(check_webhook(
            file.webhook.as_ref()?,
            &format!("{at}.webhook"),
            p,
        )?)
    };
    let on_response =
        stages.contains(&GuardStage::Response) && !matches!(check, GuardCheck::MaxPromptTokens(_));
    Some(GuardrailSpec {
        name: file.name.as_str().into(),
        on_request: stages.contains(&GuardStage::Request),
        on_response,
        check,
    })
}

fn check_pii(
    kinds: &[PiiKind],
    action: Option<GuardAction>,
    at: &str,
    p: &mut Problems,
) -> Option<GuardCheck> {
    if kinds.is_empty() {
        p.at(&format!("{at}.pii"), "name the kinds to find, or `all`");
        return None;
    }
    let mut expanded: Vec<PiiKind> = if kinds.contains(&PiiKind::All) {
        PiiKind::EVERY.to_vec()
    } else {
        kinds.to_vec()
    };
    expanded.sort_by_key(|k| PiiKind::EVERY.iter().position(|e| e == k));
    expanded.dedup();
    Some(GuardCheck::Pii {
        kinds: expanded,
        action: action.unwrap_or(GuardAction::Redact),
    })
}

fn check_deny(deny: &DenyFile, action: GuardAction, at: &str, p: &mut Problems) -> Option<GuardCheck> {
    if deny.words.is_empty() && deny.patterns.is_empty() {
        p.at(&format!("{at}.deny"), "a deny list needs `words` or `patterns`");
        return None;
    }
    if deny.words.iter().any(|w| w.trim().is_empty()) {
        p.at(&format!("{at}.deny.words"), "an empty word matches nothing");
    }
    let words = (!deny.words.is_empty())
        .then(|| {
            let alternatives: Vec<String> = deny.words.iter().map(|w| regex::escape(w.trim())).collect();
            compile(&format!(r"(?i)\b(?:{})\b", alternatives.join("|")))
        })
        .transpose()
        .map_err(|e| p.at(&format!("{at}.deny.words"), e))
        .ok()?;
    let mut patterns = Vec::new();
    for (i, pattern) in deny.patterns.iter().enumerate() {
        match compile(pattern) {
            Ok(regex) => patterns.push(regex),
            Err(e) => p.at(&format!("{at}.deny.patterns[{i}]"), e),
        }
    }
    let longest_word = deny.words.iter().map(|w| w.trim().len()).max().unwrap_or(0);
    let max_match = deny.max_match_bytes.unwrap_or(DEFAULT_MAX_MATCH);
    if max_match == 0 || max_match > 1 << 16 {
        p.at(
            &format!("{at}.deny.max_match_bytes"),
            "must be between 1 and 65536",
        );
    }
    let hold = if patterns.is_empty() {
        longest_word
    } else {
        longest_word.max(max_match)
    };
    Some(GuardCheck::Deny(DenySpec {
        words,
        patterns,
        action,
        hold,
    }))
}

fn compile(pattern: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(pattern)
        .size_limit(PATTERN_SIZE_LIMIT)
        .build()
        .map_err(|e| {
            // The parser's message draws the pattern over several lines; its last says why.
            let text = e.to_string();
            let why = text
                .lines()
                .last()
                .unwrap_or_default()
                .trim_start_matches("error: ")
                .to_owned();
            format!("not a valid pattern: {why}")
        })
}

fn check_webhook(file: &WebhookFile, at: &str, p: &mut Problems) -> Option<WebhookSpec> {
    let url = match file.url.parse::<http::Uri>() {
        Ok(url) if matches!(url.scheme_str(), Some("http" | "https")) && url.host().is_some() => Some(url),
        _ => {
            p.at(&format!("{at}.url"), "an http:// or https:// URL");
            None
        }
    };
    let timeout = file.timeout.map_or(Duration::from_secs(1), |t| t.0);
    if timeout.is_zero() {
        p.at(&format!("{at}.timeout"), "must be above 0");
    }
    let mut headers = Vec::new();
    for (name, value) in &file.headers {
        match (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            (Ok(name), Ok(value)) => headers.push((name, value)),
            _ => p.at(&format!("{at}.headers.{name}"), "not a valid header"),
        }
    }
    Some(WebhookSpec {
        url: url?,
        timeout,
        fail: file.fail.unwrap_or_default(),
        headers,
    })
}
