//! Anthropic's Messages API behind the OpenAI Chat Completions API (Anthropic API reference:
//! "Messages", "Streaming Messages"; version header `2023-06-01`).
//!
//! Requests: system messages become `system`; user and assistant turns become `messages`
//! (consecutive turns of one role are merged, as the API wants them alternating); an
//! assistant's `tool_calls` become `tool_use` blocks and `tool` messages become `tool_result`
//! blocks; `tools` become `input_schema` tools; `max_tokens` (required by Anthropic) defaults
//! to 4096. Answers: text blocks join into `content`, `tool_use` blocks become `tool_calls`,
//! `stop_reason` maps to `finish_reason`, `usage` to OpenAI's usage. Streams: the events
//! `message_start`, `content_block_start`, `content_block_delta`, `message_delta` and
//! `message_stop` become `chat.completion.chunk` frames ending in `data: [DONE]`.
//!
//! Refused with a 400 naming the field rather than silently dropped: `n` above 1, `logprobs`,
//! and image or audio content parts.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::provider::{lenient, Answer, Outgoing, Provider};
use super::sse::Event;
use super::translate::{
    content_texts, push_turn, refuse_unsupported, write_chunk, write_end, write_interrupted, Translate,
};
use super::usage::{openai_usage, Usage};
use super::ApiError;
use crate::config::spec::LlmProviderSpec;

/// The API version this adapter speaks.
pub const VERSION: &str = "2023-06-01";
/// Anthropic requires `max_tokens`; this is used when the client sends none.
const DEFAULT_MAX_TOKENS: u64 = 4096;

/// Providers of kind `anthropic`: chat completions to `{base_url}/v1/messages`, with
/// `x-api-key` and `anthropic-version`.
#[derive(Debug)]
pub struct Anthropic;

impl Provider for Anthropic {
    fn outgoing(
        &self,
        spec: &LlmProviderSpec,
        endpoint: &str,
        request: &Map<String, Value>,
        model: &str,
        stream: bool,
    ) -> Result<Outgoing, ApiError> {
        if endpoint != "chat/completions" {
            return Err(ApiError::bad_request(format!(
                "The provider `{}` (Anthropic) does not offer {endpoint}.",
                spec.name
            )));
        }
        let body = chat_request(request, model, stream).map_err(ApiError::bad_request)?;
        let mut headers = vec![("anthropic-version", VERSION.to_owned())];
        if let Some(key) = &spec.api_key {
            headers.push(("x-api-key", key.0.clone()));
        }
        Ok(Outgoing {
            uri: format!("{}/v1/messages", spec.base_url),
            headers,
            body: body.to_string().into_bytes(),
        })
    }

    fn answer(&self, body: Bytes, _model: &str, created: u64) -> Option<Answer> {
        let message = serde_json::from_slice::<Message>(&body).ok()?;
        let (completion, usage) = chat_answer(&message, created);
        Some(Answer {
            body: Bytes::from(completion.to_string()),
            usage: Some(usage),
        })
    }

    fn error_answer(&self, body: Bytes) -> Bytes {
        let parsed = serde_json::from_slice::<Value>(&body).unwrap_or_default();
        Bytes::from(error_answer(&parsed).to_string())
    }

    fn stream_translator(
        &self,
        include_usage: bool,
        _model: &str,
        created: u64,
    ) -> Option<Box<dyn Translate>> {
        Some(Box::new(StreamTranslator::new(include_usage, created)))
    }
}

/// A Messages API answer (the fields Levee reads; `id` and `model` pass through as they are).
#[derive(Debug, Deserialize)]
pub struct Message {
    #[serde(default)]
    id: Value,
    #[serde(default)]
    model: Value,
    content: lenient::Items<Block>,
    #[serde(default, deserialize_with = "lenient::option")]
    stop_reason: Option<String>,
    #[serde(default, deserialize_with = "lenient::option")]
    usage: Option<MessageUsage>,
}

/// A content block of an answer: `text` or `tool_use` (others are skipped).
#[derive(Debug, Default, Deserialize)]
struct Block {
    #[serde(rename = "type", default, deserialize_with = "lenient::option")]
    kind: Option<String>,
    #[serde(default, deserialize_with = "lenient::option")]
    text: Option<String>,
    /// A `thinking` block's text (extended thinking).
    #[serde(default, deserialize_with = "lenient::option")]
    thinking: Option<String>,
    #[serde(default)]
    id: Value,
    #[serde(default)]
    name: Value,
    /// The tool call's arguments (an object, passed on as JSON text).
    #[serde(default, deserialize_with = "lenient::present")]
    input: Option<Value>,
}

/// An answer's `usage`, or the one in a stream's `message_start`.
#[derive(Debug, Default, Deserialize)]
struct MessageUsage {
    #[serde(default, deserialize_with = "lenient::option")]
    input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient::option")]
    output_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient::option")]
    cache_read_input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient::option")]
    cache_creation_input_tokens: Option<u64>,
}

impl MessageUsage {
    /// In OpenAI's terms: Anthropic's `input_tokens` counts only the input neither read
    /// from nor written to the cache, so the prompt is the sum of the three.
    fn usage(&self) -> Usage {
        let cached = self.cache_read_input_tokens.unwrap_or(0);
        let cache_write = self.cache_creation_input_tokens.unwrap_or(0);
        Usage {
            prompt: self
                .input_tokens
                .unwrap_or(0)
                .saturating_add(cached)
                .saturating_add(cache_write),
            completion: self.output_tokens.unwrap_or(0),
            cached,
            cache_write,
            reasoning: 0,
        }
    }
}

/// Thinking tokens within `output_tokens`. Anthropic bills extended thinking as output and
/// reports it only inside `output_tokens`, so the total and the cost are exact; the split
/// is Levee's count of the thinking text (four bytes a token, as the prompt estimate),
/// never above the output.
fn thinking_tokens(thinking_bytes: usize, output: u64) -> u64 {
    (thinking_bytes as u64).div_ceil(4).min(output)
}

/// The Messages API request for an OpenAI chat request, or the reason it cannot be expressed.
pub fn chat_request(request: &Map<String, Value>, model: &str, stream: bool) -> Result<Value, String> {
    refuse_unsupported(request)?;
    let mut system: Vec<String> = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    let empty = Vec::new();
    for message in request
        .get("messages")
        .and_then(Value::as_array)
        .unwrap_or(&empty)
    {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("user");
        match role {
            "system" | "developer" => system.push(text_of(message.get("content"))?),
            "user" => push_turn(
                &mut messages,
                "user",
                "content",
                content_blocks(message.get("content"))?,
            ),
            "assistant" => {
                let mut blocks = content_blocks(message.get("content"))?;
                for call in message
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .unwrap_or(&empty)
                {
                    let function = call.get("function").cloned().unwrap_or_default();
                    let arguments = function.get("arguments").and_then(Value::as_str).unwrap_or("{}");
                    blocks.push(json!({
                        "type": "tool_use",
                        "id": call.get("id").cloned().unwrap_or_default(),
                        "name": function.get("name").cloned().unwrap_or_default(),
                        "input": serde_json::from_str::<Value>(arguments).unwrap_or_else(|_| json!({})),
                    }));
                }
                push_turn(&mut messages, "assistant", "content", blocks);
            }
            "tool" => {
                let result = json!({
                    "type": "tool_result",
                    "tool_use_id": message.get("tool_call_id").cloned().unwrap_or_default(),
                    "content": text_of(message.get("content"))?,
                });
                push_turn(&mut messages, "user", "content", vec![result]);
            }
            other => return Err(format!("Message role `{other}` is not supported.")),
        }
    }
    let max_tokens = request
        .get("max_completion_tokens")
        .or_else(|| request.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    let mut body = Map::new();
    body.insert("model".into(), Value::from(model));
    body.insert("max_tokens".into(), Value::from(max_tokens));
    body.insert("messages".into(), Value::Array(messages));
    if !system.is_empty() {
        body.insert("system".into(), Value::from(system.join("\n\n")));
    }
    for key in ["temperature", "top_p"] {
        if let Some(value) = request.get(key) {
            body.insert(key.into(), value.clone());
        }
    }
    match request.get("stop") {
        Some(Value::String(stop)) => {
            body.insert("stop_sequences".into(), json!([stop]));
        }
        Some(Value::Array(stops)) => {
            body.insert("stop_sequences".into(), Value::Array(stops.clone()));
        }
        _ => {}
    }
    if let Some(tools) = request.get("tools").and_then(Value::as_array) {
        let tools: Vec<Value> = tools
            .iter()
            .filter_map(|t| t.get("function"))
            .map(|f| {
                json!({
                    "name": f.get("name").cloned().unwrap_or_default(),
                    "description": f.get("description").cloned().unwrap_or(Value::from("")),
                    "input_schema": f.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object"})),
                })
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = request.get("tool_choice") {
        let translated = match choice {
            Value::String(s) if s == "auto" => json!({"type": "auto"}),
            Value::String(s) if s == "required" => json!({"type": "any"}),
            Value::String(s) if s == "none" => json!({"type": "none"}),
            Value::Object(o) => json!({
                "type": "tool",
                "name": o.get("function").and_then(|f| f.get("name")).cloned().unwrap_or_default(),
            }),
            _ => return Err("`tool_choice` is not valid.".into()),
        };
        body.insert("tool_choice".into(), translated);
    }
    if stream {
        body.insert("stream".into(), Value::Bool(true));
    }
    Ok(Value::Object(body))
}

/// OpenAI message content as Anthropic text blocks.
fn content_blocks(content: Option<&Value>) -> Result<Vec<Value>, String> {
    Ok(content_texts(content)?
        .into_iter()
        .map(|text| json!({"type": "text", "text": text}))
        .collect())
}

/// OpenAI message content as plain text.
fn text_of(content: Option<&Value>) -> Result<String, String> {
    Ok(content_texts(content)?.join("\n"))
}

fn finish_reason(stop_reason: Option<&str>) -> Value {
    match stop_reason {
        Some("end_turn" | "stop_sequence" | "pause_turn") => Value::from("stop"),
        Some("max_tokens") => Value::from("length"),
        Some("tool_use") => Value::from("tool_calls"),
        Some("refusal") => Value::from("content_filter"),
        _ => Value::Null,
    }
}

/// The usage in a stream event's `usage` field, when it has one.
fn usage_of(usage: Option<&Value>) -> Option<Usage> {
    Some(MessageUsage::deserialize(usage?).unwrap_or_default().usage())
}

/// A whole Messages API answer as an OpenAI chat completion, with its usage.
pub fn chat_answer(answer: &Message, created: u64) -> (Value, Usage) {
    let blocks = &answer.content.0;
    let text: String = blocks
        .iter()
        .filter(|b| b.kind.as_deref() == Some("text"))
        .filter_map(|b| b.text.as_deref())
        .collect();
    let tool_calls: Vec<Value> = blocks
        .iter()
        .filter(|b| b.kind.as_deref() == Some("tool_use"))
        .map(|b| {
            json!({
                "id": b.id,
                "type": "function",
                "function": {
                    "name": b.name,
                    "arguments": b.input.as_ref().map(Value::to_string).unwrap_or_else(|| "{}".into()),
                },
            })
        })
        .collect();
    let mut usage = answer.usage.as_ref().map(MessageUsage::usage).unwrap_or_default();
    let thinking: usize = blocks
        .iter()
        .filter(|b| b.kind.as_deref() == Some("thinking"))
        .filter_map(|b| b.thinking.as_deref())
        .map(str::len)
        .sum();
    usage.reasoning = thinking_tokens(thinking, usage.completion);
    let mut message = json!({
        "role": "assistant",
        "content": if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { Value::from(text) },
        "refusal": null,
    });
    if let (false, Some(message)) = (tool_calls.is_empty(), message.as_object_mut()) {
        message.insert("tool_calls".into(), Value::Array(tool_calls));
    }
    let completion = json!({
        "id": answer.id,
        "object": "chat.completion",
        "created": created,
        "model": answer.model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(answer.stop_reason.as_deref()),
        }],
        "usage": openai_usage(&usage),
    });
    (completion, usage)
}

/// An Anthropic error answer in OpenAI's shape.
pub fn error_answer(answer: &Value) -> Value {
    let error = answer.get("error").cloned().unwrap_or_default();
    json!({
        "error": {
            "message": error.get("message").cloned().unwrap_or(Value::from("The provider refused the request.")),
            "type": error.get("type").cloned().unwrap_or(Value::from("invalid_request_error")),
            "code": null,
            "param": null,
        }
    })
}

/// Turns a Messages API event stream into `chat.completion.chunk` frames.
#[derive(Debug)]
pub struct StreamTranslator {
    /// The client asked for the usage chunk (`stream_options.include_usage`).
    include_usage: bool,
    created: u64,
    id: String,
    model: String,
    /// Content block index → tool call ordinal, for `tool_use` blocks.
    tools: Vec<(u64, usize)>,
    usage: Usage,
    /// Content deltas relayed (for counting when no usage arrives).
    deltas: u64,
    /// Bytes of thinking text seen (extended thinking), for the reasoning split.
    thinking_bytes: usize,
    /// `message_stop` arrived.
    complete: bool,
    done: bool,
}

impl StreamTranslator {
    pub fn new(include_usage: bool, created: u64) -> StreamTranslator {
        StreamTranslator {
            include_usage,
            created,
            id: String::new(),
            model: String::new(),
            tools: Vec::new(),
            usage: Usage::default(),
            deltas: 0,
            thinking_bytes: 0,
            complete: false,
            done: false,
        }
    }

    fn chunk(&self, delta: Value, finish_reason: Value, out: &mut Vec<u8>) {
        write_chunk(&self.id, self.created, &self.model, delta, finish_reason, out);
    }

    /// `message_delta`'s usage: the output count so far, and (in newer API versions) the
    /// input counts again.
    fn delta_usage(&mut self, usage: Option<&Value>) {
        let Some(report) = usage.and_then(|u| MessageUsage::deserialize(u).ok()) else {
            return;
        };
        if report.input_tokens.is_some() {
            let output = self.usage.completion;
            self.usage = report.usage();
            self.usage.completion = output;
        }
        if let Some(output) = report.output_tokens {
            self.usage.completion = output;
        }
        self.usage.reasoning = thinking_tokens(self.thinking_bytes, self.usage.completion);
    }
}

impl Translate for StreamTranslator {
    /// The usage seen so far (input tokens from `message_start`, output from `message_delta`).
    fn usage(&self) -> Usage {
        self.usage
    }

    fn done(&self) -> bool {
        self.done
    }

    /// Content deltas relayed so far.
    fn deltas(&self) -> u64 {
        self.deltas
    }

    /// Translates one event, appending OpenAI frames to `out`. Returns true when the event
    /// carried the final usage (`message_delta`).
    fn event(&mut self, event: &Event, out: &mut Vec<u8>) -> bool {
        let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
            return false;
        };
        let kind = event
            .event
            .as_deref()
            .or_else(|| data.get("type").and_then(Value::as_str))
            .unwrap_or("");
        match kind {
            "message_start" => {
                let message = data.get("message").cloned().unwrap_or_default();
                self.id = message
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                self.model = message
                    .get("model")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                if let Some(usage) = usage_of(message.get("usage")) {
                    self.usage = usage;
                }
                self.chunk(json!({"role": "assistant", "content": ""}), Value::Null, out);
                false
            }
            "content_block_start" => {
                let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
                let block = data.get("content_block").cloned().unwrap_or_default();
                if block.get("type").and_then(Value::as_str) == Some("tool_use") {
                    let ordinal = self.tools.len();
                    self.tools.push((index, ordinal));
                    self.chunk(
                        json!({"tool_calls": [{
                            "index": ordinal,
                            "id": block.get("id").cloned().unwrap_or_default(),
                            "type": "function",
                            "function": { "name": block.get("name").cloned().unwrap_or_default(), "arguments": "" },
                        }]}),
                        Value::Null,
                        out,
                    );
                }
                false
            }
            "content_block_delta" => {
                let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
                let delta = data.get("delta").cloned().unwrap_or_default();
                self.deltas += 1;
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        let text = delta.get("text").cloned().unwrap_or_default();
                        self.chunk(json!({ "content": text }), Value::Null, out);
                    }
                    Some("thinking_delta") => {
                        let thinking = delta.get("thinking").and_then(Value::as_str);
                        self.thinking_bytes += thinking.map_or(0, str::len);
                    }
                    Some("input_json_delta") => {
                        let ordinal = self
                            .tools
                            .iter()
                            .find(|(i, _)| *i == index)
                            .map_or(0, |(_, o)| *o);
                        let partial = delta.get("partial_json").cloned().unwrap_or_default();
                        self.chunk(
                            json!({"tool_calls": [{ "index": ordinal, "function": { "arguments": partial } }]}),
                            Value::Null,
                            out,
                        );
                    }
                    _ => {}
                }
                false
            }
            "message_delta" => {
                self.delta_usage(data.get("usage"));
                let reason = data
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str);
                self.chunk(json!({}), finish_reason(reason), out);
                true
            }
            "message_stop" => {
                self.complete = true;
                self.finish(out);
                false
            }
            "error" => {
                // Anthropic failed the stream (`overloaded_error`...): the client learns it.
                tracing::debug!(error = %event.data, "provider stream error");
                let message = data
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("The provider's stream failed.");
                self.fail(&format!("The provider's stream failed: {message}"), out);
                false
            }
            _ => false, // ping, content_block_stop
        }
    }

    /// The usage chunk (when asked for) and `[DONE]`, once.
    fn finish(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        self.done = true;
        let usage = self.include_usage.then_some(self.usage);
        write_end(&self.id, self.created, &self.model, usage, out);
    }

    fn complete(&self) -> bool {
        self.complete
    }

    fn fail(&mut self, message: &str, out: &mut Vec<u8>) {
        if !self.done {
            self.done = true;
            write_interrupted(message, out);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn a_conversation_with_tools_maps_both_ways() {
        let request = json!({
            "model": "smart",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
                {"role": "user", "content": [{"type": "text", "text": "And tomorrow?"}]}
            ],
            "tools": [{"type": "function", "function": {"name": "weather", "description": "Weather", "parameters": {"type": "object"}}}],
            "tool_choice": "required",
            "stop": "END",
            "max_tokens": 100
        });
        let body = chat_request(request.as_object().unwrap(), "claude-sonnet-4-5", false).unwrap();
        assert_eq!(body["system"], "Be brief.");
        assert_eq!(body["max_tokens"], 100);
        assert_eq!(body["stop_sequences"], json!(["END"]));
        assert_eq!(body["tool_choice"], json!({"type": "any"}));
        assert_eq!(body["tools"][0]["input_schema"], json!({"type": "object"}));
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(
            messages.len(),
            3,
            "the tool result and the next user turn merge: {messages:#?}"
        );
        assert_eq!(messages[1]["content"][0]["type"], "tool_use");
        assert_eq!(messages[1]["content"][0]["input"], json!({"city": "Paris"}));
        assert_eq!(messages[2]["content"][0]["type"], "tool_result");
        assert_eq!(messages[2]["content"][0]["tool_use_id"], "toolu_1");
        assert_eq!(messages[2]["content"][1]["text"], "And tomorrow?");
    }

    const STREAM: &str = include_str!("../../tests/fixtures/anthropic/stream.sse");

    /// The OpenAI stream for `pieces` of the recorded Anthropic stream.
    fn translate(pieces: &[&[u8]]) -> (String, Usage) {
        let mut parser = crate::llm::sse::SseParser::default();
        let mut translator = StreamTranslator::new(true, 7);
        let mut events = Vec::new();
        let mut out = Vec::new();
        for piece in pieces {
            parser.push(piece, &mut events).unwrap();
            for event in events.drain(..) {
                translator.event(&event, &mut out);
            }
        }
        translator.finish(&mut out);
        (String::from_utf8(out).unwrap(), translator.usage())
    }

    #[test]
    fn a_stream_translates_to_openai_chunks_however_it_is_split() {
        let bytes = STREAM.as_bytes();
        let (whole, usage) = translate(&[bytes]);
        assert_eq!(usage, Usage::plain(25, 15));
        let chunks: Vec<Value> = whole
            .split("\n\n")
            .filter_map(|frame| frame.strip_prefix("data: "))
            .filter(|data| *data != "[DONE]")
            .map(|data| serde_json::from_str(data).unwrap())
            .collect();
        assert!(whole.ends_with("data: [DONE]\n\n"));
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "Hello!");
        let arguments: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
            .collect();
        assert_eq!(arguments, "{\"location\": \"San Francisco, CA\"}");
        let started = chunks
            .iter()
            .find(|c| c["choices"][0]["delta"]["tool_calls"][0]["id"].is_string())
            .unwrap();
        assert_eq!(
            started["choices"][0]["delta"]["tool_calls"][0]["function"]["name"],
            "get_weather"
        );
        assert!(chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "tool_calls"));
        let last = chunks.last().unwrap();
        assert_eq!(last["usage"]["total_tokens"], 40);
        assert!(chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk" && c["model"] == "claude-sonnet-4-5-20250929"));
        for cut in 0..=bytes.len() {
            let (a, b) = bytes.split_at(cut);
            assert_eq!(translate(&[a, b]).0, whole, "split at byte {cut}");
        }
    }

    #[test]
    fn answers_are_read_leniently_and_odd_ones_refused() {
        let answer = r#"{"id": "msg_1", "model": "claude", "stop_reason": "tool_use", "content": [
            {"type": "text", "text": "Hi"}, {"type": "thinking", "thinking": "..."}, 3,
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}}
        ], "usage": {"input_tokens": 5, "output_tokens": "many"}}"#;
        let (completion, usage) = chat_answer(&serde_json::from_str(answer).unwrap(), 7);
        assert_eq!(usage, Usage::plain(5, 0));
        let message = &completion["choices"][0]["message"];
        assert_eq!(message["content"], "Hi");
        assert_eq!(message["tool_calls"][0]["function"]["arguments"], "{\"a\":1}");
        assert_eq!(completion["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(completion["usage"]["total_tokens"], 5);
        for odd in [r#"{"id": "msg_1"}"#, r#"{"content": "Hi"}"#, "[]"] {
            assert!(serde_json::from_str::<Message>(odd).is_err(), "{odd}");
        }
    }

    #[test]
    fn unsupported_fields_are_refused_by_name() {
        for (request, field) in [
            (json!({"n": 2, "messages": []}), "`n`"),
            (json!({"logprobs": true, "messages": []}), "`logprobs`"),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}),
                "image_url",
            ),
        ] {
            let error = chat_request(request.as_object().unwrap(), "m", false).unwrap_err();
            assert!(error.contains(field), "{error}");
        }
    }
}
