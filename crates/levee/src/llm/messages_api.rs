//! Clients that speak Anthropic's Messages API (`POST …/v1/messages`): their request becomes
//! an OpenAI chat request (then served like any other, by whatever provider the model names),
//! and the answer goes back in the Messages shape, streams included.
//!
//! This is the reverse of [`super::anthropic`]: system → a system message; `tool_use` blocks
//! → `tool_calls`; `tool_result` blocks → `tool` messages; `tools` with `input_schema` →
//! functions; `stop_sequences` → `stop`. Answers: content → a text block, `tool_calls` →
//! `tool_use` blocks, `finish_reason` → `stop_reason`, usage → `input_tokens` and
//! `output_tokens`. A stream of OpenAI chunks becomes `message_start`,
//! `content_block_start`/`delta`/`stop`, `message_delta` and `message_stop` events.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::retell::{Retell, Retold, BROKE};
use super::sse::Event;
use super::usage::LlmCall;
use crate::body::ResponseBody;

/// The OpenAI chat request for a Messages API request, or what is wrong with it.
pub fn to_chat_request(request: &Map<String, Value>) -> Result<Map<String, Value>, String> {
    let mut messages: Vec<Value> = Vec::new();
    match request.get("system") {
        Some(Value::String(text)) => messages.push(json!({ "role": "system", "content": text })),
        Some(Value::Array(blocks)) => {
            let text: Vec<&str> = blocks
                .iter()
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect();
            messages.push(json!({ "role": "system", "content": text.join("\n") }));
        }
        _ => {}
    }
    let empty = Vec::new();
    for message in request
        .get("messages")
        .and_then(Value::as_array)
        .unwrap_or(&empty)
    {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("user");
        if role != "user" && role != "assistant" {
            return Err(format!("messages: role `{role}` is not user or assistant"));
        }
        let blocks = match message.get("content") {
            Some(Value::String(text)) => vec![json!({ "type": "text", "text": text })],
            Some(Value::Array(blocks)) => blocks.clone(),
            _ => return Err("messages: content must be a string or a list of blocks".into()),
        };
        let mut text = String::new();
        let mut calls = Vec::new();
        for block in &blocks {
            match block.get("type").and_then(Value::as_str) {
                Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or_default()),
                Some("tool_use") => calls.push(json!({
                    "id": block.get("id").cloned().unwrap_or_default(),
                    "type": "function",
                    "function": {
                        "name": block.get("name").cloned().unwrap_or_default(),
                        "arguments": block.get("input").map(Value::to_string).unwrap_or_else(|| "{}".into()),
                    },
                })),
                Some("tool_result") => {
                    let content = match block.get("content") {
                        Some(Value::String(s)) => s.clone(),
                        Some(Value::Array(parts)) => parts
                            .iter()
                            .filter_map(|p| p.get("text").and_then(Value::as_str))
                            .collect::<Vec<_>>()
                            .join("\n"),
                        _ => String::new(),
                    };
                    messages.push(json!({
                        "role": "tool",
                        "tool_call_id": block.get("tool_use_id").cloned().unwrap_or_default(),
                        "content": content,
                    }));
                }
                Some(other) => return Err(format!("content blocks of type `{other}` are not supported")),
                None => return Err("a content block has no `type`".into()),
            }
        }
        if !text.is_empty() || !calls.is_empty() {
            let mut out = json!({ "role": role, "content": if text.is_empty() { Value::Null } else { Value::from(text) } });
            if let (false, Some(object)) = (calls.is_empty(), out.as_object_mut()) {
                object.insert("tool_calls".into(), Value::Array(calls));
            }
            messages.push(out);
        }
    }
    let mut chat = Map::new();
    chat.insert("model".into(), request.get("model").cloned().unwrap_or_default());
    chat.insert("messages".into(), Value::Array(messages));
    for key in ["max_tokens", "temperature", "top_p"] {
        if let Some(value) = request.get(key) {
            chat.insert(key.into(), value.clone());
        }
    }
    if let Some(stops) = request.get("stop_sequences") {
        chat.insert("stop".into(), stops.clone());
    }
    if let Some(tools) = request.get("tools").and_then(Value::as_array) {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                json!({ "type": "function", "function": {
                    "name": t.get("name").cloned().unwrap_or_default(),
                    "description": t.get("description").cloned().unwrap_or(Value::from("")),
                    "parameters": t.get("input_schema").cloned().unwrap_or_else(|| json!({"type": "object"})),
                }})
            })
            .collect();
        chat.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = request.get("tool_choice") {
        let translated = match choice.get("type").and_then(Value::as_str) {
            Some("auto") => Value::from("auto"),
            Some("any") => Value::from("required"),
            Some("none") => Value::from("none"),
            Some("tool") => {
                json!({ "type": "function", "function": { "name": choice.get("name").cloned().unwrap_or_default() } })
            }
            _ => return Err("tool_choice is not valid".into()),
        };
        chat.insert("tool_choice".into(), translated);
    }
    if request.get("stream").and_then(Value::as_bool) == Some(true) {
        chat.insert("stream".into(), Value::Bool(true));
        chat.insert("stream_options".into(), json!({ "include_usage": true }));
    }
    Ok(chat)
}

fn stop_reason(finish: Option<&str>) -> Value {
    match finish {
        Some("stop") => Value::from("end_turn"),
        Some("length") => Value::from("max_tokens"),
        Some("tool_calls") => Value::from("tool_use"),
        Some("content_filter") => Value::from("refusal"),
        _ => Value::Null,
    }
}

/// A chat completion as a Messages API answer.
pub fn to_message(completion: &Value) -> Value {
    let message = completion
        .pointer("/choices/0/message")
        .cloned()
        .unwrap_or_default();
    let mut content = Vec::new();
    if let Some(text) = message
        .get("content")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        content.push(json!({ "type": "text", "text": text }));
    }
    for call in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let arguments = call
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .unwrap_or("{}");
        content.push(json!({
            "type": "tool_use",
            "id": call.get("id").cloned().unwrap_or_default(),
            "name": call.pointer("/function/name").cloned().unwrap_or_default(),
            "input": serde_json::from_str::<Value>(arguments).unwrap_or_else(|_| json!({})),
        }));
    }
    json!({
        "id": completion.get("id").cloned().unwrap_or_default(),
        "type": "message",
        "role": "assistant",
        "model": completion.get("model").cloned().unwrap_or_default(),
        "content": content,
        "stop_reason": stop_reason(completion.pointer("/choices/0/finish_reason").and_then(Value::as_str)),
        "stop_sequence": null,
        "usage": {
            "input_tokens": completion.pointer("/usage/prompt_tokens").cloned().unwrap_or(Value::from(0)),
            "output_tokens": completion.pointer("/usage/completion_tokens").cloned().unwrap_or(Value::from(0)),
        },
    })
}

/// An OpenAI-shaped error as a Messages API error.
pub fn to_error(error: &Value) -> Value {
    json!({
        "type": "error",
        "error": {
            "type": error.pointer("/error/type").cloned().unwrap_or(Value::from("api_error")),
            "message": error.pointer("/error/message").cloned().unwrap_or(Value::from("The request failed.")),
        }
    })
}

/// An OpenAI chunk stream re-told as Messages API events.
pub struct EventsBody {
    started: bool,
    /// The open content block: its index and whether it is text.
    block: Option<(u64, bool)>,
    next_index: u64,
    stop_reason: Value,
    output_tokens: u64,
    input_tokens: u64,
    ended: bool,
}

impl EventsBody {
    pub fn new(inner: ResponseBody, call: Option<Arc<LlmCall>>) -> Retold<EventsBody> {
        let retell = EventsBody {
            started: false,
            block: None,
            next_index: 0,
            stop_reason: Value::Null,
            output_tokens: 0,
            input_tokens: 0,
            ended: false,
        };
        Retold::new(inner, retell, call)
    }

    fn emit(kind: &str, data: Value, out: &mut Vec<u8>) {
        out.extend_from_slice(format!("event: {kind}\ndata: {data}\n\n").as_bytes());
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        if let Some((index, _)) = self.block.take() {
            EventsBody::emit(
                "content_block_stop",
                json!({ "type": "content_block_stop", "index": index }),
                out,
            );
        }
    }

    fn open_block(&mut self, text: bool, block: Value, out: &mut Vec<u8>) -> u64 {
        self.close_block(out);
        let index = self.next_index;
        self.next_index += 1;
        self.block = Some((index, text));
        EventsBody::emit(
            "content_block_start",
            json!({ "type": "content_block_start", "index": index, "content_block": block }),
            out,
        );
        index
    }

    fn chunk(&mut self, chunk: &Value, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            EventsBody::emit(
                "message_start",
                json!({ "type": "message_start", "message": {
                    "id": chunk.get("id").cloned().unwrap_or_default(),
                    "type": "message", "role": "assistant", "content": [],
                    "model": chunk.get("model").cloned().unwrap_or_default(),
                    "stop_reason": null, "stop_sequence": null,
                    "usage": { "input_tokens": 0, "output_tokens": 0 },
                }}),
                out,
            );
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            self.input_tokens = usage.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0);
            self.output_tokens = usage
                .get("completion_tokens")
                .and_then(Value::as_u64)
                .unwrap_or(0);
        }
        let Some(choice) = chunk.pointer("/choices/0") else {
            return;
        };
        let delta = choice.get("delta").cloned().unwrap_or_default();
        if let Some(text) = delta
            .get("content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            let index = match self.block {
                Some((index, true)) => index,
                _ => self.open_block(true, json!({ "type": "text", "text": "" }), out),
            };
            EventsBody::emit(
                "content_block_delta",
                json!({ "type": "content_block_delta", "index": index, "delta": { "type": "text_delta", "text": text } }),
                out,
            );
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(id) = call.get("id").and_then(Value::as_str) {
                let name = call.pointer("/function/name").cloned().unwrap_or_default();
                self.open_block(
                    false,
                    json!({ "type": "tool_use", "id": id, "name": name, "input": {} }),
                    out,
                );
            }
            let arguments = call
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if let (Some((index, false)), false) = (self.block, arguments.is_empty()) {
                EventsBody::emit(
                    "content_block_delta",
                    json!({ "type": "content_block_delta", "index": index, "delta": { "type": "input_json_delta", "partial_json": arguments } }),
                    out,
                );
            }
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.stop_reason = stop_reason(Some(reason));
        }
    }

    /// The stream broke off: Anthropic's `error` event in place of `message_stop` (what
    /// Anthropic sends when a stream fails; its SDKs raise on it).
    fn fail(&mut self, message: &Value, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        self.ended = true;
        EventsBody::emit(
            "error",
            json!({ "type": "error", "error": { "type": "api_error", "message": message } }),
            out,
        );
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.close_block(out);
        EventsBody::emit(
            "message_delta",
            json!({ "type": "message_delta", "delta": { "stop_reason": self.stop_reason, "stop_sequence": null },
                    "usage": { "input_tokens": self.input_tokens, "output_tokens": self.output_tokens } }),
            out,
        );
        EventsBody::emit("message_stop", json!({ "type": "message_stop" }), out);
    }
}

impl Retell for EventsBody {
    fn event(&mut self, event: &Event, out: &mut Vec<u8>) {
        if event.data == "[DONE]" {
            self.finish(out);
        } else if let Ok(chunk) = serde_json::from_str::<Value>(&event.data) {
            match chunk.pointer("/error/message") {
                Some(message) => self.fail(message, out),
                None => self.chunk(&chunk, out),
            }
        }
    }

    /// A stream that ends before `[DONE]` broke off (a finished one is already ended).
    fn end(&mut self, broke: Option<&str>, out: &mut Vec<u8>) {
        self.fail(&Value::from(broke.unwrap_or(BROKE)), out);
    }

    fn ended(&self) -> bool {
        self.ended
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn a_messages_request_with_tools_becomes_a_chat_request() {
        let request = json!({
            "model": "smart", "max_tokens": 100, "system": "Be brief.", "stop_sequences": ["END"],
            "tools": [{"name": "weather", "description": "W", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any"},
            "messages": [
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Oslo"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "3C"}]}
            ]
        });
        let chat = to_chat_request(request.as_object().unwrap()).unwrap();
        assert_eq!(
            chat["messages"][0],
            json!({"role": "system", "content": "Be brief."})
        );
        assert_eq!(
            chat["messages"][2]["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"Oslo\"}"
        );
        assert_eq!(
            chat["messages"][3],
            json!({"role": "tool", "tool_call_id": "t1", "content": "3C"})
        );
        assert_eq!(
            chat["tools"][0]["function"]["parameters"],
            json!({"type": "object"})
        );
        assert_eq!(
            (chat["tool_choice"].as_str(), chat["stop"].clone()),
            (Some("required"), json!(["END"]))
        );
    }

    #[test]
    fn a_chat_completion_becomes_a_message() {
        let completion = json!({"id": "c1", "model": "gpt-4o", "choices": [{"message": {"content": "Hi", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
            "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 5, "completion_tokens": 7}});
        let message = to_message(&completion);
        assert_eq!(message["content"][0], json!({"type": "text", "text": "Hi"}));
        assert_eq!(message["content"][1]["input"], json!({"city": "Oslo"}));
        assert_eq!(message["stop_reason"], "tool_use");
        assert_eq!(message["usage"], json!({"input_tokens": 5, "output_tokens": 7}));
    }
}
