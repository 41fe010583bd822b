//! OpenAI's Responses API (`POST …/v1/responses`) for providers that do not speak it:
//! the request becomes a chat request (served like any other, through the provider's own
//! translation), and the answer goes back as a Response object, or as the Responses typed
//! event stream.
//!
//! `openai` and `azure_openai` providers (and `openai_compatible` ones) get the request as
//! it is, and their answer is relayed: only the model is rewritten, and the usage is read
//! from the Response's `usage` (`input_tokens`, `output_tokens` and their details).
//!
//! What is translated: `instructions`, `input` as text or as messages (`input_text`,
//! `output_text` parts), `function_call` and `function_call_output` items, function `tools`
//! and `tool_choice`, `max_output_tokens`, `temperature`, `top_p`, `stream`. What cannot be
//! translated (built-in tools, images and files, `previous_response_id`, structured output,
//! reasoning settings) is refused with a 400 naming it, as for chat requests.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::retell::{Retell, Retold, BROKE};
use super::sse::Event;
use super::usage::LlmCall;
use crate::body::ResponseBody;

/// Request fields a chat call cannot honour.
const UNTRANSLATABLE: &[&str] = &[
    "previous_response_id",
    "conversation",
    "background",
    "reasoning",
    "prompt",
    "include",
];

/// The chat request for a Responses request, or what is wrong with it.
pub fn to_chat_request(request: &Map<String, Value>) -> Result<Map<String, Value>, String> {
    // Empty values (`include: []`, `reasoning: {}`) ask for nothing and pass.
    let given = |v: &Value| match v {
        Value::Null => false,
        Value::Array(items) => !items.is_empty(),
        Value::Object(fields) => !fields.is_empty(),
        _ => true,
    };
    if let Some(field) = UNTRANSLATABLE
        .iter()
        .find(|f| request.get(**f).is_some_and(given))
    {
        return Err(format!("`{field}` is not supported by this model's provider."));
    }
    if request
        .get("text")
        .and_then(|t| t.pointer("/format/type"))
        .is_some_and(|t| t != "text")
    {
        return Err("`text.format` other than `text` is not supported by this model's provider.".into());
    }
    let mut messages = Vec::new();
    if let Some(instructions) = request.get("instructions").and_then(Value::as_str) {
        messages.push(json!({ "role": "system", "content": instructions }));
    }
    match request.get("input") {
        Some(Value::String(text)) => messages.push(json!({ "role": "user", "content": text })),
        Some(Value::Array(items)) => {
            for item in items {
                push_item(item, &mut messages)?;
            }
        }
        _ => return Err("`input` must be a string or a list of items.".into()),
    }
    let mut chat = Map::new();
    chat.insert("model".into(), request.get("model").cloned().unwrap_or_default());
    chat.insert("messages".into(), Value::Array(messages));
    if let Some(Value::Array(tools)) = request.get("tools") {
        let functions = tools.iter().map(function_tool).collect::<Result<Vec<_>, _>>()?;
        chat.insert("tools".into(), Value::Array(functions));
    }
    if let Some(choice) = request.get("tool_choice") {
        let choice = match choice {
            Value::Object(c) if c.get("type").and_then(Value::as_str) == Some("function") => {
                json!({ "type": "function", "function": { "name": c.get("name").cloned().unwrap_or_default() } })
            }
            Value::String(_) => choice.clone(),
            _ => {
                return Err(
                    "`tool_choice` other than a function or auto, none, required is not supported.".into(),
                )
            }
        };
        chat.insert("tool_choice".into(), choice);
    }
    for (from, to) in [
        ("max_output_tokens", "max_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("stream", "stream"),
        ("parallel_tool_calls", "parallel_tool_calls"),
        ("user", "user"),
    ] {
        if let Some(value) = request.get(from).filter(|v| !v.is_null()) {
            chat.insert(to.into(), value.clone());
        }
    }
    Ok(chat)
}

/// One `input` item as chat messages.
fn push_item(item: &Value, messages: &mut Vec<Value>) -> Result<(), String> {
    let kind = item.get("type").and_then(Value::as_str).unwrap_or("message");
    match kind {
        "message" => {
            let role = item.get("role").and_then(Value::as_str).unwrap_or("user");
            let role = match role {
                "developer" => "system",
                "user" | "assistant" | "system" => role,
                other => return Err(format!("input: role `{other}` is not supported.")),
            };
            let text = match item.get("content") {
                Some(Value::String(text)) => text.clone(),
                Some(Value::Array(parts)) => {
                    let mut text = String::new();
                    for part in parts {
                        match part.get("type").and_then(Value::as_str) {
                            Some("input_text" | "output_text" | "text") => {
                                text.push_str(part.get("text").and_then(Value::as_str).unwrap_or_default());
                            }
                            other => {
                                let other = other.unwrap_or("untyped");
                                return Err(format!(
                                    "input: `{other}` content is not supported by this model's provider."
                                ));
                            }
                        }
                    }
                    text
                }
                _ => return Err("input: a message's content must be text or a list of parts.".into()),
            };
            messages.push(json!({ "role": role, "content": text }));
        }
        "function_call" => messages.push(json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [{
                "id": item.get("call_id").cloned().unwrap_or_default(),
                "type": "function",
                "function": {
                    "name": item.get("name").cloned().unwrap_or_default(),
                    "arguments": item.get("arguments").cloned().unwrap_or(Value::from("{}")),
                },
            }],
        })),
        "function_call_output" => {
            let output = match item.get("output") {
                Some(Value::String(text)) => text.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            messages.push(json!({
                "role": "tool",
                "tool_call_id": item.get("call_id").cloned().unwrap_or_default(),
                "content": output,
            }));
        }
        other => {
            return Err(format!(
                "input: `{other}` items are not supported by this model's provider."
            ))
        }
    }
    Ok(())
}

fn function_tool(tool: &Value) -> Result<Value, String> {
    match tool.get("type").and_then(Value::as_str) {
        Some("function") => Ok(json!({
            "type": "function",
            "function": {
                "name": tool.get("name").cloned().unwrap_or_default(),
                "description": tool.get("description").cloned().unwrap_or(Value::from("")),
                "parameters": tool.get("parameters").cloned().unwrap_or(json!({"type": "object"})),
            },
        })),
        other => Err(format!(
            "tools: `{}` tools are not supported by this model's provider.",
            other.unwrap_or("untyped")
        )),
    }
}

/// The Responses `usage` for a chat `usage`.
fn usage(chat: Option<&Value>) -> Value {
    let get = |pointer: &str| {
        chat.and_then(|u| u.pointer(pointer))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let (input, output) = (get("/prompt_tokens"), get("/completion_tokens"));
    json!({
        "input_tokens": input,
        "input_tokens_details": { "cached_tokens": get("/prompt_tokens_details/cached_tokens") },
        "output_tokens": output,
        "output_tokens_details": { "reasoning_tokens": get("/completion_tokens_details/reasoning_tokens") },
        "total_tokens": input + output,
    })
}

/// A Response object around `output`.
fn response(id: &str, model: &Value, created: u64, status: &str, output: Vec<Value>, usage: Value) -> Value {
    let incomplete = (status == "incomplete").then(|| json!({ "reason": "max_output_tokens" }));
    json!({
        "id": id,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": null,
        "incomplete_details": incomplete,
        "instructions": null,
        "max_output_tokens": null,
        "model": model,
        "output": output,
        "parallel_tool_calls": true,
        "previous_response_id": null,
        "reasoning": { "effort": null, "summary": null },
        "store": false,
        "temperature": null,
        "text": { "format": { "type": "text" } },
        "tool_choice": "auto",
        "tools": [],
        "top_p": null,
        "truncation": "disabled",
        "usage": usage,
        "metadata": {},
    })
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "type": "message",
        "id": id,
        "status": status,
        "role": "assistant",
        "content": [{ "type": "output_text", "text": text, "annotations": [] }],
    })
}

fn call_item(id: &str, call_id: &Value, name: &Value, arguments: &str, status: &str) -> Value {
    json!({
        "type": "function_call",
        "id": id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    })
}

/// A whole chat completion as a Response object.
pub fn from_chat(completion: &Value) -> Value {
    let chat_id = completion.get("id").and_then(Value::as_str).unwrap_or("levee");
    let choice = completion.pointer("/choices/0").cloned().unwrap_or_default();
    let mut output = Vec::new();
    if let Some(text) = choice.pointer("/message/content").and_then(Value::as_str) {
        output.push(message_item(&format!("msg_{chat_id}"), text, "completed"));
    }
    for (i, call) in choice
        .pointer("/message/tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let arguments = call
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .unwrap_or("{}");
        let name = call.pointer("/function/name").cloned().unwrap_or_default();
        let call_id = call.get("id").cloned().unwrap_or_default();
        output.push(call_item(
            &format!("fc_{chat_id}_{i}"),
            &call_id,
            &name,
            arguments,
            "completed",
        ));
    }
    let status = match choice.get("finish_reason").and_then(Value::as_str) {
        Some("length") => "incomplete",
        _ => "completed",
    };
    let created = completion.get("created").and_then(Value::as_u64).unwrap_or(0);
    let model = completion.get("model").cloned().unwrap_or_default();
    response(
        &format!("resp_{chat_id}"),
        &model,
        created,
        status,
        output,
        usage(completion.get("usage")),
    )
}

/// The Responses `error` event: the fields of OpenAI's error event, with an `error` object
/// too, which makes the OpenAI SDKs raise `APIError` on it.
pub fn error_event(code: &str, message: &str, sequence: u64) -> String {
    let data = json!({
        "type": "error",
        "code": code,
        "message": message,
        "param": null,
        "sequence_number": sequence,
        "error": { "type": "api_error", "code": code, "message": message },
    });
    format!("event: error\ndata: {data}\n\n")
}

/// An open output item of a translated stream.
enum Item {
    Message {
        id: String,
        text: String,
    },
    Call {
        id: String,
        call_id: Value,
        name: Value,
        arguments: String,
    },
}

/// A chat chunk stream re-told as the Responses event stream.
pub struct EventsBody {
    sequence: u64,
    id: String,
    model: Value,
    created: u64,
    started: bool,
    /// Finished output items, and the one open.
    done: Vec<Value>,
    open: Option<Item>,
    status: &'static str,
    usage: Option<Value>,
    ended: bool,
}

impl EventsBody {
    pub fn new(inner: ResponseBody, call: Option<Arc<LlmCall>>) -> Retold<EventsBody> {
        let retell = EventsBody {
            sequence: 0,
            id: "resp_levee".into(),
            model: Value::Null,
            created: 0,
            started: false,
            done: Vec::new(),
            open: None,
            status: "completed",
            usage: None,
            ended: false,
        };
        Retold::new(inner, retell, call)
    }

    fn emit(&mut self, kind: &str, mut data: Value, out: &mut Vec<u8>) {
        if let Some(object) = data.as_object_mut() {
            object.insert("type".into(), Value::from(kind));
            object.insert("sequence_number".into(), Value::from(self.sequence));
        }
        self.sequence += 1;
        out.extend_from_slice(format!("event: {kind}\ndata: {data}\n\n").as_bytes());
    }

    fn snapshot(&self, status: &str) -> Value {
        let usage = if status == "in_progress" {
            Value::Null
        } else {
            usage(self.usage.as_ref())
        };
        response(
            &self.id,
            &self.model,
            self.created,
            status,
            self.done.clone(),
            usage,
        )
    }

    fn output_index(&self) -> usize {
        self.done.len()
    }

    /// Closes the open item (its `done` events), if any.
    fn close_item(&mut self, out: &mut Vec<u8>) {
        let index = self.output_index();
        let item = match self.open.take() {
            None => return,
            Some(Item::Message { id, text }) => {
                let part = json!({ "type": "output_text", "text": text, "annotations": [] });
                self.emit(
                    "response.output_text.done",
                    json!({ "item_id": id, "output_index": index, "content_index": 0, "text": text }),
                    out,
                );
                self.emit(
                    "response.content_part.done",
                    json!({ "item_id": id, "output_index": index, "content_index": 0, "part": part }),
                    out,
                );
                message_item(&id, &text, "completed")
            }
            Some(Item::Call {
                id,
                call_id,
                name,
                arguments,
            }) => {
                self.emit(
                    "response.function_call_arguments.done",
                    json!({ "item_id": id, "output_index": index, "arguments": arguments }),
                    out,
                );
                call_item(&id, &call_id, &name, &arguments, "completed")
            }
        };
        self.emit(
            "response.output_item.done",
            json!({ "output_index": index, "item": item }),
            out,
        );
        self.done.push(item);
    }

    fn text(&mut self, delta: &str, out: &mut Vec<u8>) {
        if !matches!(self.open, Some(Item::Message { .. })) {
            self.close_item(out);
            let id = format!("msg_{}_{}", self.id, self.output_index());
            let index = self.output_index();
            let item = json!({ "type": "message", "id": id, "status": "in_progress", "role": "assistant", "content": [] });
            self.emit(
                "response.output_item.added",
                json!({ "output_index": index, "item": item }),
                out,
            );
            let part = json!({ "type": "output_text", "text": "", "annotations": [] });
            self.emit(
                "response.content_part.added",
                json!({ "item_id": id, "output_index": index, "content_index": 0, "part": part }),
                out,
            );
            self.open = Some(Item::Message {
                id,
                text: String::new(),
            });
        }
        let index = self.output_index();
        if let Some(Item::Message { id, text }) = &mut self.open {
            text.push_str(delta);
            let data = json!({ "item_id": id, "output_index": index, "content_index": 0, "delta": delta });
            self.emit("response.output_text.delta", data, out);
        }
    }

    fn call(&mut self, call: &Value, out: &mut Vec<u8>) {
        if let Some(call_id) = call.get("id").filter(|i| i.is_string()) {
            self.close_item(out);
            let index = self.output_index();
            let id = format!("fc_{}_{index}", self.id);
            let name = call.pointer("/function/name").cloned().unwrap_or_default();
            let item = call_item(&id, call_id, &name, "", "in_progress");
            self.emit(
                "response.output_item.added",
                json!({ "output_index": index, "item": item }),
                out,
            );
            self.open = Some(Item::Call {
                id,
                call_id: call_id.clone(),
                name,
                arguments: String::new(),
            });
        }
        let delta = call
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let index = self.output_index();
        if let (Some(Item::Call { id, arguments, .. }), false) = (&mut self.open, delta.is_empty()) {
            arguments.push_str(delta);
            let data = json!({ "item_id": id, "output_index": index, "delta": delta });
            self.emit("response.function_call_arguments.delta", data, out);
        }
    }

    fn chunk(&mut self, chunk: &Value, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            let chat_id = chunk.get("id").and_then(Value::as_str).unwrap_or("levee");
            self.id = format!("resp_{chat_id}");
            self.model = chunk.get("model").cloned().unwrap_or_default();
            self.created = chunk.get("created").and_then(Value::as_u64).unwrap_or(0);
            let snapshot = self.snapshot("in_progress");
            self.emit("response.created", json!({ "response": snapshot }), out);
            let snapshot = self.snapshot("in_progress");
            self.emit("response.in_progress", json!({ "response": snapshot }), out);
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(usage.clone());
        }
        let Some(choice) = chunk.pointer("/choices/0") else {
            return;
        };
        if let Some(text) = choice
            .pointer("/delta/content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            self.text(text, out);
        }
        for call in choice
            .pointer("/delta/tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            self.call(call, out);
        }
        if choice.get("finish_reason").and_then(Value::as_str) == Some("length") {
            self.status = "incomplete";
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.close_item(out);
        let status = self.status;
        let snapshot = self.snapshot(status);
        let kind = if status == "incomplete" {
            "response.incomplete"
        } else {
            "response.completed"
        };
        self.emit(kind, json!({ "response": snapshot }), out);
    }

    fn fail(&mut self, message: &str, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        self.ended = true;
        out.extend_from_slice(error_event("stream_interrupted", message, self.sequence).as_bytes());
    }
}

impl Retell for EventsBody {
    fn event(&mut self, event: &Event, out: &mut Vec<u8>) {
        if event.data == "[DONE]" {
            self.finish(out);
        } else if let Ok(chunk) = serde_json::from_str::<Value>(&event.data) {
            match chunk.pointer("/error/message").and_then(Value::as_str) {
                Some(message) => self.fail(message, out),
                None => self.chunk(&chunk, out),
            }
        }
    }

    /// A stream that ends before `[DONE]` broke off (a finished one is already ended).
    fn end(&mut self, broke: Option<&str>, out: &mut Vec<u8>) {
        self.fail(broke.unwrap_or(BROKE), out);
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
    fn a_responses_request_becomes_a_chat_request_and_refuses_what_it_cannot_say() {
        let request = json!({
            "model": "smart", "instructions": "Be brief.", "max_output_tokens": 50,
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
                {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{\"city\":\"Oslo\"}"},
                {"type": "function_call_output", "call_id": "c1", "output": "3C"}
            ],
            "tools": [{"type": "function", "name": "weather", "parameters": {"type": "object"}}]
        });
        let chat = to_chat_request(request.as_object().unwrap()).unwrap();
        assert_eq!(
            chat["messages"][0],
            json!({"role": "system", "content": "Be brief."})
        );
        assert_eq!(
            chat["messages"][1],
            json!({"role": "user", "content": "Weather?"})
        );
        assert_eq!(
            chat["messages"][2]["tool_calls"][0]["function"]["name"],
            "weather"
        );
        assert_eq!(
            chat["messages"][3],
            json!({"role": "tool", "tool_call_id": "c1", "content": "3C"})
        );
        assert_eq!(chat["tools"][0]["function"]["name"], "weather");
        assert_eq!(chat["max_tokens"], 50);
        for (odd, named) in [
            (
                json!({"input": "x", "tools": [{"type": "web_search"}]}),
                "`web_search` tools",
            ),
            (
                json!({"input": "x", "previous_response_id": "resp_1"}),
                "`previous_response_id`",
            ),
            (
                json!({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}),
                "`input_image`",
            ),
        ] {
            let error = to_chat_request(odd.as_object().unwrap()).unwrap_err();
            assert!(error.contains(named), "{error}");
        }
    }

    #[test]
    fn a_chat_answer_becomes_a_response_with_its_usage() {
        let completion = json!({"id": "c1", "created": 7, "model": "claude", "choices": [{"message": {"content": "Hi", "tool_calls": [
            {"id": "t1", "function": {"name": "f", "arguments": "{}"}}]}, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 2}}});
        let response = from_chat(&completion);
        assert_eq!(response["object"], "response");
        assert_eq!(response["output"][0]["content"][0]["text"], "Hi");
        assert_eq!(response["output"][1]["call_id"], "t1");
        assert_eq!(response["usage"]["input_tokens"], 5);
        assert_eq!(response["usage"]["input_tokens_details"]["cached_tokens"], 2);
        assert_eq!(response["usage"]["total_tokens"], 8);
    }
}
