//! The OpenAI Chat Completions and Embeddings APIs, spoken by `openai` and
//! `openai_compatible` providers (vLLM, Ollama, LM Studio, ...): requests pass through with the
//! model name rewritten, and streamed requests ask for the usage report
//! (`stream_options.include_usage`, OpenAI API reference, "Create chat completion").
//! Answers, errors and streams pass through as they are, read along for the usage.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::provider::{lenient, Answer, Outgoing, Provider};
use super::translate::Translate;
use super::usage::Usage;
use super::ApiError;
use crate::config::spec::LlmProviderSpec;

/// Providers of kind `openai` and `openai_compatible`: the client's request to
/// `{base_url}/{endpoint}` with `Authorization: Bearer`.
#[derive(Debug)]
pub struct OpenAi;

impl Provider for OpenAi {
    fn outgoing(
        &self,
        spec: &LlmProviderSpec,
        endpoint: &str,
        request: &Map<String, Value>,
        model: &str,
        stream: bool,
    ) -> Result<Outgoing, ApiError> {
        let mut body = request.clone();
        prepare(&mut body, model, stream && endpoint != "responses");
        Ok(Outgoing {
            uri: format!("{}/{endpoint}", spec.base_url),
            headers: spec
                .api_key
                .as_ref()
                .map(|k| ("authorization", format!("Bearer {}", k.0)))
                .into_iter()
                .collect(),
            body: serde_json::to_vec(&body).unwrap_or_default(),
        })
    }

    fn answer(&self, body: Bytes, _model: &str, _created: u64) -> Option<Answer> {
        Some(answer(body))
    }

    fn error_answer(&self, body: Bytes) -> Bytes {
        body
    }

    fn stream_translator(&self, _: bool, _: &str, _: u64) -> Option<Box<dyn Translate>> {
        None
    }

    fn speaks_responses(&self) -> bool {
        true
    }
}

/// A whole answer passed through as it is, with the usage it reports.
pub fn answer(body: Bytes) -> Answer {
    let usage = serde_json::from_slice::<Value>(&body)
        .ok()
        .as_ref()
        .and_then(usage);
    Answer { body, usage }
}

/// OpenAI's `usage` object (the fields Levee reads).
#[derive(Debug, Deserialize)]
struct UsageReport {
    prompt_tokens: u64,
    #[serde(default, deserialize_with = "lenient::option")]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<TokenDetails>,
    #[serde(default)]
    completion_tokens_details: Option<TokenDetails>,
}

/// `prompt_tokens_details` and `completion_tokens_details` (the fields of both; each has
/// only its own).
#[derive(Debug, Default, Deserialize)]
struct TokenDetails {
    #[serde(default, deserialize_with = "lenient::option")]
    cached_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient::option")]
    reasoning_tokens: Option<u64>,
}

/// Rewrites a client's request for provider model `model`.
pub fn prepare(request: &mut Map<String, Value>, model: &str, stream: bool) {
    request.insert("model".into(), Value::from(model));
    if stream {
        let options = request
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(options) = options.as_object_mut() {
            options.insert("include_usage".into(), Value::Bool(true));
        }
    }
}

/// The `usage` object of a response or of a stream's last chunk (the Chat Completions
/// API's, or the Responses API's).
pub fn usage(body: &Value) -> Option<Usage> {
    let usage = body.get("usage")?;
    if usage.get("prompt_tokens").is_none() {
        return responses_usage(usage);
    }
    let report = UsageReport::deserialize(usage).ok()?;
    let completion = report.completion_tokens.unwrap_or(0);
    let detail = |details: &Option<TokenDetails>, pick: fn(&TokenDetails) -> Option<u64>| {
        details.as_ref().and_then(pick).unwrap_or(0)
    };
    Some(Usage {
        prompt: report.prompt_tokens,
        completion,
        // Parts of the totals: a provider reporting more is believed only up to the total.
        cached: detail(&report.prompt_tokens_details, |d| d.cached_tokens).min(report.prompt_tokens),
        cache_write: 0,
        reasoning: detail(&report.completion_tokens_details, |d| d.reasoning_tokens).min(completion),
    })
}

/// A Responses API `usage`: `input_tokens` and `output_tokens` with their details.
fn responses_usage(usage: &Value) -> Option<Usage> {
    let count = |pointer: &str| usage.pointer(pointer).and_then(Value::as_u64);
    let (prompt, completion) = (count("/input_tokens")?, count("/output_tokens").unwrap_or(0));
    Some(Usage {
        prompt,
        completion,
        cached: count("/input_tokens_details/cached_tokens")
            .unwrap_or(0)
            .min(prompt),
        cache_write: 0,
        reasoning: count("/output_tokens_details/reasoning_tokens")
            .unwrap_or(0)
            .min(completion),
    })
}

/// Whether a stream chunk carries generated content (text, a refusal or a tool call).
pub fn carries_content(chunk: &Value) -> bool {
    chunk
        .get("choices")
        .and_then(Value::as_array)
        .is_some_and(|choices| {
            choices.iter().any(|c| {
                c.get("delta").is_some_and(|d| {
                    d.get("content")
                        .and_then(Value::as_str)
                        .is_some_and(|s| !s.is_empty())
                        || d.get("tool_calls").is_some()
                        || d.get("refusal")
                            .and_then(Value::as_str)
                            .is_some_and(|s| !s.is_empty())
                })
            })
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn streams_ask_for_usage_and_keep_the_clients_options() {
        let mut request = json!({"model": "smart", "stream": true, "stream_options": {"x": 1}})
            .as_object()
            .unwrap()
            .clone();
        prepare(&mut request, "gpt-4o", true);
        assert_eq!(request["model"], "gpt-4o");
        assert_eq!(request["stream_options"], json!({"x": 1, "include_usage": true}));
    }

    #[test]
    fn usage_and_content_are_read_from_chunks() {
        let last = json!({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}});
        assert_eq!(usage(&last), Some(Usage::plain(9, 12)));
        assert!(carries_content(
            &json!({"choices": [{"delta": {"content": "Hi"}}]})
        ));
        assert!(!carries_content(
            &json!({"choices": [{"delta": {"role": "assistant"}}]})
        ));
    }
}
