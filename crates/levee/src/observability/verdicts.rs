//! Guardrail verdicts of one request, kept for the call log and the metrics. Plain data
//! shared by the request's record and its streamed answer (which finds things after the
//! head went out), with at most one entry per guardrail, side and action, so it is bounded
//! by the route's config.

use std::sync::{Arc, Mutex};

/// What one guardrail did on one side of a call.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GuardVerdict {
    pub guardrail: Arc<str>,
    /// `request` or `response`.
    pub stage: &'static str,
    /// `redact`, `block`, `log`, or a webhook's `allow`, `rewrite`, `fail_open`,
    /// `fail_closed`.
    pub action: &'static str,
    /// The kinds found (`email`, `card`, ... `deny`, `max_prompt_tokens`); empty for a
    /// webhook's.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub found: Vec<&'static str>,
}

/// A request's verdicts.
#[derive(Debug, Default)]
pub struct GuardVerdicts {
    all: Mutex<Vec<GuardVerdict>>,
}

impl GuardVerdicts {
    /// Notes a verdict, merged into the entry of the same guardrail, side and action.
    pub fn record(
        &self,
        guardrail: &Arc<str>,
        stage: &'static str,
        action: &'static str,
        found: &[&'static str],
    ) {
        let mut all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        let same =
            |v: &&mut GuardVerdict| v.guardrail == *guardrail && v.stage == stage && v.action == action;
        match all.iter_mut().find(|v| same(v)) {
            Some(entry) => {
                for kind in found {
                    if !entry.found.contains(kind) {
                        entry.found.push(kind);
                    }
                }
            }
            None => all.push(GuardVerdict {
                guardrail: guardrail.clone(),
                stage,
                action,
                found: found.to_vec(),
            }),
        }
    }

    pub fn all(&self) -> Vec<GuardVerdict> {
        self.all.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `guardrail_blocked` when a guardrail blocked the answer: for a streamed answer,
    /// whose 200 went out before, the logs' only sign that the client got an error.
    pub fn answer_blocked(&self) -> Option<&'static str> {
        let all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        all.iter()
            .any(|v| v.stage == "response" && v.action == "block")
            .then_some("guardrail_blocked")
    }

    /// The verdicts as the call log stores them (a JSON array), `None` without any.
    pub fn json(&self) -> Option<String> {
        let all = self.all();
        (!all.is_empty()).then(|| serde_json::to_string(&all).unwrap_or_default())
    }
}
