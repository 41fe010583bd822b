//! Guardrails: checks on the prompts and answers of an AI gateway route, in the order the
//! route lists them, each on the text the one before left.
//!
//! Four kinds. `pii` finds personal and secret data ([`pii`]: email addresses, phone
//! numbers, card numbers that pass Luhn, IBANs with right check digits, US SSNs, IP
//! addresses, API-key shapes); `deny` finds listed words and patterns; either `redact`s
//! (masks what it found and lets the rest through), `block`s (the call is refused with
//! 400 `guardrail_blocked`, naming the guardrail and never the text) or `log`s.
//! `max_prompt_tokens` refuses prompts over a size. `webhook` asks an outside service,
//! which allows, blocks or rewrites the texts; when it cannot be asked in time its `fail`
//! mode decides: `open` lets the text through, `closed` refuses the call (503
//! `guardrail_unavailable`).
//!
//! Detection is local, bounded and linear: patterns are compiled once (Rust's `regex`,
//! which never backtracks), and every match has a longest length. That bound is what lets
//! streamed answers be redacted exactly while they stream ([`scan`]): only as many bytes
//! are held back as a match still being written could take. Webhooks see whole texts
//! only, so on streamed answers they do not run (the docs say so, and `levee check`
//! warns).
//!
//! Every verdict is kept ([`GuardVerdicts`]) for the call log and
//! `levee_guardrail_actions_total`.

pub mod pii;
pub mod scan;
mod webhook;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;

use crate::config::guardrails::{FailMode, GuardAction, GuardCheck, GuardStage, GuardrailSpec};
pub use crate::observability::verdicts::{GuardVerdict, GuardVerdicts};
pub use scan::{Finder, Incremental, Scanned};

/// Why guardrails refused a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("blocked by the guardrail `{guardrail}`")]
    Blocked { guardrail: Arc<str>, stage: GuardStage },
    #[error("the guardrail `{guardrail}` could not be asked")]
    Unavailable { guardrail: Arc<str> },
}

/// What a webhook guardrail needs to call out.
pub struct Context<'a> {
    pub client: &'a crate::outbound::OutboundClient<Full<Bytes>>,
    pub route: &'a str,
    pub consumer: Option<&'a str>,
}

/// Runs the guardrails that look at `stage` over `texts`, changing them in place when one
/// redacts or rewrites. `prompt_tokens` is the prompt's estimated size.
pub async fn check(
    guardrails: &[GuardrailSpec],
    stage: GuardStage,
    texts: &mut [String],
    prompt_tokens: u64,
    context: &Context<'_>,
    verdicts: &GuardVerdicts,
) -> Result<(), Refusal> {
    let no_text = texts.iter().all(String::is_empty);
    if no_text && prompt_tokens == 0 {
        // Nothing to check (an answer that is only tool calls, say).
        return Ok(());
    }
    for guardrail in guardrails.iter().filter(|g| g.applies(stage)) {
        // A service is not asked about no text (a prompt of images or tool results only);
        // `max_prompt_tokens` still counts such a prompt.
        if no_text && matches!(guardrail.check, GuardCheck::Webhook(_)) {
            continue;
        }
        let note = |action: &'static str, found: &[&'static str]| {
            verdicts.record(&guardrail.name, stage.name(), action, found);
        };
        let blocked = || Refusal::Blocked {
            guardrail: guardrail.name.clone(),
            stage,
        };
        match &guardrail.check {
            GuardCheck::Pii { kinds, action } => {
                local(Finder::Pii(kinds), *action, texts, &note).map_err(|()| blocked())?;
            }
            GuardCheck::Deny(deny) => {
                local(Finder::Deny(deny), deny.action, texts, &note).map_err(|()| blocked())?;
            }
            GuardCheck::MaxPromptTokens(max) => {
                if prompt_tokens > *max {
                    note("block", &["max_prompt_tokens"]);
                    return Err(blocked());
                }
            }
            GuardCheck::Webhook(spec) => {
                let asked = webhook::ask(spec, &guardrail.name, stage, texts, context).await;
                match asked {
                    Ok(webhook::Verdict::Allow) => note("allow", &[]),
                    Ok(webhook::Verdict::Block) => {
                        note("block", &[]);
                        return Err(blocked());
                    }
                    Ok(webhook::Verdict::Rewrite(rewritten)) => {
                        note("rewrite", &[]);
                        for (text, new) in texts.iter_mut().zip(rewritten) {
                            *text = new;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(guardrail = %guardrail.name, %error, "guardrail webhook failed");
                        if spec.fail == FailMode::Closed {
                            note("fail_closed", &[]);
                            return Err(Refusal::Unavailable {
                                guardrail: guardrail.name.clone(),
                            });
                        }
                        note("fail_open", &[]);
                    }
                }
            }
        }
    }
    Ok(())
}

/// A `pii` or `deny` guardrail over whole texts: `Err` when it blocks.
fn local(
    finder: Finder<'_>,
    action: GuardAction,
    texts: &mut [String],
    note: &dyn Fn(&'static str, &[&'static str]),
) -> Result<(), ()> {
    let mut kinds: Vec<&'static str> = Vec::new();
    for text in texts.iter_mut() {
        let scanned = scan::scan(finder, text);
        if scanned.kinds.is_empty() {
            continue;
        }
        for kind in scanned.kinds {
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        if action == GuardAction::Redact {
            *text = scanned.redacted;
        }
    }
    if kinds.is_empty() {
        return Ok(());
    }
    note(action.name(), &kinds);
    match action {
        GuardAction::Block => Err(()),
        GuardAction::Redact | GuardAction::Log => Ok(()),
    }
}

/// The guardrails a streamed answer runs as it streams: the `pii` and `deny` ones that
/// look at answers, as finders with their actions.
pub fn streaming(guardrails: &[GuardrailSpec]) -> Vec<(&GuardrailSpec, Finder<'_>, GuardAction)> {
    guardrails
        .iter()
        .filter(|g| g.on_response)
        .filter_map(|g| match &g.check {
            GuardCheck::Pii { kinds, action } => Some((g, Finder::Pii(kinds), *action)),
            GuardCheck::Deny(deny) => Some((g, Finder::Deny(deny), deny.action)),
            GuardCheck::MaxPromptTokens(_) | GuardCheck::Webhook(_) => None,
        })
        .collect()
}
