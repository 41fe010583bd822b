//! Google's Gemini API (`generateContent`, `streamGenerateContent?alt=sse`; Gemini API
//! reference, "Generating content") behind the OpenAI Chat Completions API.
//!
//! Requests: system messages become `systemInstruction`; user and assistant turns become
//! `contents` with roles `user` and `model` (consecutive turns of one role merged); an
//! assistant's `tool_calls` become `functionCall` parts and `tool` messages `functionResponse`
//! parts (named after the call they answer); `tools` become `functionDeclarations`;
//! `temperature`, `top_p`, `max_tokens` and `stop` go to `generationConfig`. Answers: text
//! parts join into `content`, `functionCall` parts become `tool_calls` (with ids Levee makes
//! up, as Gemini has none), `finishReason` maps to `finish_reason`, `usageMetadata` to usage.
//! Streams: every `GenerateContentResponse` event becomes `chat.completion.chunk` frames; the
//! stream ends with the usage chunk (when asked for) and `data: [DONE]`.
//!
//! Refused with a 400 naming the field: `n` above 1, `logprobs`, non-text content parts.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::provider::{lenient, percent_encode_segment, Answer, Outgoing, Provider};
use super::sse::Event;
use super::translate::{
    content_texts, push_turn, refuse_unsupported, write_chunk, write_end, write_interrupted, Translate,
};
use super::usage::{openai_usage, Usage};
use super::ApiError;
use crate::config::spec::LlmProviderSpec;

/// Providers of kind `gemini`: chat completions to
/// `{base_url}/v1beta/models/{model}:generateContent` (or `:streamGenerateContent?alt=sse`),
/// with `x-goog-api-key`.
#[derive(Debug)]
pub struct Gemini;

impl Provider for Gemini {
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
                "The provider `{}` (Gemini) does not offer {endpoint} here.",
                spec.name
            )));
        }
        let body = chat_request(request).map_err(ApiError::bad_request)?;
        let method = if stream {
            "streamGenerateContent?alt=sse"
        } else {
            "generateContent"
        };
        Ok(Outgoing {
            uri: format!(
                "{}/v1beta/models/{}:{method}",
                spec.base_url,
                percent_encode_segment(model)
            ),
            headers: spec
                .api_key
                .as_ref()
                .map(|k| ("x-goog-api-key", k.0.clone()))
                .into_iter()
                .collect(),
            body: body.to_string().into_bytes(),
        })
    }

    fn answer(&self, body: Bytes, model: &str, created: u64) -> Option<Answer> {
        let answer = serde_json::from_slice::<GenerateContentResponse>(&body).ok()?;
        let (completion, usage) = chat_answer(&answer, model, created)?;
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
        model: &str,
        created: u64,
    ) -> Option<Box<dyn Translate>> {
        Some(Box::new(StreamTranslator::new(include_usage, created, model)))
    }
}

/// The request body for `model`, or why it cannot be expressed.
pub fn chat_request(request: &Map<String, Value>) -> Result<Value, String> {
    refuse_unsupported(request)?;
    let (system, contents) = turns(request)?;
    let mut body = Map::new();
    body.insert("contents".into(), Value::Array(contents));
    if !system.is_empty() {
        body.insert(
            "systemInstruction".into(),
            json!({ "parts": [{ "text": system.join("\n\n") }] }),
        );
    }
    let generation = generation_config(request);
    if !generation.is_empty() {
        body.insert("generationConfig".into(), Value::Object(generation));
    }
    if let Some(tools) = request.get("tools").and_then(Value::as_array) {
        body.insert("tools".into(), function_declarations(tools));
    }
    if let Some(choice) = request.get("tool_choice") {
        body.insert("toolConfig".into(), tool_config(choice)?);
    }
    Ok(Value::Object(body))
}

/// The system texts and the `contents` turns of a chat request's messages.
fn turns(request: &Map<String, Value>) -> Result<(Vec<String>, Vec<Value>), String> {
    let empty = Vec::new();
    let mut system: Vec<String> = Vec::new();
    let mut contents: Vec<Value> = Vec::new();
    // Tool call id → function name, to name the answers to calls.
    let mut call_names: Vec<(String, String)> = Vec::new();
    for message in request
        .get("messages")
        .and_then(Value::as_array)
        .unwrap_or(&empty)
    {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("user");
        match role {
            "system" | "developer" => system.push(text_of(message.get("content"))?),
            "user" => push_turn(
                &mut contents,
                "user",
                "parts",
                text_parts(message.get("content"))?,
            ),
            "assistant" => {
                let parts = model_parts(message, &mut call_names)?;
                push_turn(&mut contents, "model", "parts", parts);
            }
            "tool" => {
                let part = function_response(message, &call_names)?;
                push_turn(&mut contents, "user", "parts", vec![part]);
            }
            other => return Err(format!("Message role `{other}` is not supported.")),
        }
    }
    Ok((system, contents))
}

/// An assistant message as `model` parts: its text, then a `functionCall` per tool call
/// (whose id → name goes to `call_names`).
fn model_parts(message: &Value, call_names: &mut Vec<(String, String)>) -> Result<Vec<Value>, String> {
    let mut parts = text_parts(message.get("content"))?;
    for call in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let function = call.get("function").cloned().unwrap_or_default();
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let arguments = function.get("arguments").and_then(Value::as_str).unwrap_or("{}");
        if let Some(id) = call.get("id").and_then(Value::as_str) {
            call_names.push((id.to_owned(), name.clone()));
        }
        parts.push(json!({ "functionCall": {
            "name": name,
            "args": serde_json::from_str::<Value>(arguments).unwrap_or_else(|_| json!({})),
        }}));
    }
    Ok(parts)
}

/// A `tool` message as a `functionResponse` part, named after the call it answers.
fn function_response(message: &Value, call_names: &[(String, String)]) -> Result<Value, String> {
    let id = message
        .get("tool_call_id")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let name = call_names
        .iter()
        .find(|(call, _)| call == id)
        .map(|(_, name)| name.clone())
        .unwrap_or_default();
    let result = text_of(message.get("content"))?;
    let response = serde_json::from_str::<Value>(&result)
        .ok()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({ "result": result }));
    Ok(json!({ "functionResponse": { "name": name, "response": response } }))
}

/// `temperature`, `top_p`, the token limit and `stop` as a `generationConfig` (maybe empty).
fn generation_config(request: &Map<String, Value>) -> Map<String, Value> {
    let mut generation = Map::new();
    for (from, to) in [("temperature", "temperature"), ("top_p", "topP")] {
        if let Some(value) = request.get(from) {
            generation.insert(to.into(), value.clone());
        }
    }
    if let Some(max) = request
        .get("max_completion_tokens")
        .or_else(|| request.get("max_tokens"))
    {
        generation.insert("maxOutputTokens".into(), max.clone());
    }
    match request.get("stop") {
        Some(Value::String(stop)) => {
            generation.insert("stopSequences".into(), json!([stop]));
        }
        Some(Value::Array(stops)) => {
            generation.insert("stopSequences".into(), Value::Array(stops.clone()));
        }
        _ => {}
    }
    generation
}

/// OpenAI `tools` as Gemini's `tools` (one entry of `functionDeclarations`).
fn function_declarations(tools: &[Value]) -> Value {
    let declarations: Vec<Value> = tools
        .iter()
        .filter_map(|t| t.get("function"))
        .map(|f| {
            let mut declaration = json!({
                "name": f.get("name").cloned().unwrap_or_default(),
                "description": f.get("description").cloned().unwrap_or(Value::from("")),
            });
            if let (Some(parameters), Some(object)) = (f.get("parameters"), declaration.as_object_mut()) {
                object.insert("parameters".into(), parameters.clone());
            }
            declaration
        })
        .collect();
    json!([{ "functionDeclarations": declarations }])
}

/// OpenAI's `tool_choice` as Gemini's `toolConfig`.
fn tool_config(choice: &Value) -> Result<Value, String> {
    let config = match choice {
        Value::String(s) if s == "auto" => json!({ "mode": "AUTO" }),
        Value::String(s) if s == "required" => json!({ "mode": "ANY" }),
        Value::String(s) if s == "none" => json!({ "mode": "NONE" }),
        Value::Object(o) => json!({
            "mode": "ANY",
            "allowedFunctionNames": [o.get("function").and_then(|f| f.get("name")).cloned().unwrap_or_default()],
        }),
        _ => return Err("`tool_choice` is not valid.".into()),
    };
    Ok(json!({ "functionCallingConfig": config }))
}

/// OpenAI message content as Gemini text parts.
fn text_parts(content: Option<&Value>) -> Result<Vec<Value>, String> {
    Ok(content_texts(content)?
        .into_iter()
        .map(|text| json!({ "text": text }))
        .collect())
}

/// OpenAI message content as plain text.
fn text_of(content: Option<&Value>) -> Result<String, String> {
    Ok(content_texts(content)?.join("\n"))
}

/// A `GenerateContentResponse`: a whole answer or one stream event (the fields Levee reads).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateContentResponse {
    #[serde(default, deserialize_with = "lenient::option")]
    candidates: Option<lenient::Items<Candidate>>,
    #[serde(default, deserialize_with = "lenient::option")]
    response_id: Option<String>,
    #[serde(default, deserialize_with = "lenient::option")]
    model_version: Option<String>,
    #[serde(default, deserialize_with = "lenient::present")]
    usage_metadata: Option<UsageMetadata>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    #[serde(default, deserialize_with = "lenient::option")]
    content: Option<Content>,
    #[serde(default, deserialize_with = "lenient::option")]
    finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Content {
    #[serde(default, deserialize_with = "lenient::option")]
    parts: Option<lenient::Items<Part>>,
}

/// A part of a candidate's content: text or a function call (others are skipped).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Part {
    #[serde(default, deserialize_with = "lenient::option")]
    text: Option<String>,
    #[serde(default, deserialize_with = "lenient::present")]
    function_call: Option<FunctionCall>,
}

/// A `functionCall` part (`name` and `args` pass through as they are).
#[derive(Debug, Default, Deserialize)]
struct FunctionCall {
    #[serde(default)]
    name: Value,
    #[serde(default, deserialize_with = "lenient::present")]
    args: Option<Value>,
}

/// `usageMetadata`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default, deserialize_with = "lenient::option")]
    prompt_token_count: Option<u64>,
    #[serde(default, deserialize_with = "lenient::option")]
    candidates_token_count: Option<u64>,
    #[serde(default, deserialize_with = "lenient::option")]
    cached_content_token_count: Option<u64>,
    #[serde(default, deserialize_with = "lenient::option")]
    thoughts_token_count: Option<u64>,
}

fn finish_reason(reason: Option<&str>, called: bool) -> Value {
    match reason {
        None => Value::Null,
        Some(_) if called => Value::from("tool_calls"),
        Some("STOP") => Value::from("stop"),
        Some("MAX_TOKENS") => Value::from("length"),
        Some(_) => Value::from("content_filter"),
    }
}

fn usage_of(answer: &GenerateContentResponse) -> Option<Usage> {
    let usage = answer.usage_metadata.as_ref()?;
    // In OpenAI's terms: Gemini's prompt count includes the cached part, but its candidates
    // count leaves out the thoughts, which are billed as output too.
    let prompt = usage.prompt_token_count.unwrap_or(0);
    let thoughts = usage.thoughts_token_count.unwrap_or(0);
    Some(Usage {
        prompt,
        completion: usage.candidates_token_count.unwrap_or(0).saturating_add(thoughts),
        cached: usage.cached_content_token_count.unwrap_or(0).min(prompt),
        cache_write: 0,
        reasoning: thoughts,
    })
}

/// The text and function calls of the first candidate.
fn candidate_parts(answer: &GenerateContentResponse) -> (String, Vec<&FunctionCall>, Option<&str>) {
    let candidate = answer.candidates.as_ref().and_then(|c| c.0.first());
    let parts = candidate
        .and_then(|c| c.content.as_ref())
        .and_then(|c| c.parts.as_ref());
    let mut text = String::new();
    let mut calls = Vec::new();
    for part in parts.into_iter().flat_map(|p| &p.0) {
        if let Some(t) = &part.text {
            text.push_str(t);
        }
        if let Some(call) = &part.function_call {
            calls.push(call);
        }
    }
    let reason = candidate.and_then(|c| c.finish_reason.as_deref());
    (text, calls, reason)
}

fn tool_call(call: &FunctionCall, ordinal: usize, id: &str) -> Value {
    json!({
        "id": format!("call_{id}_{ordinal}"),
        "type": "function",
        "function": {
            "name": call.name,
            "arguments": call.args.as_ref().map(Value::to_string).unwrap_or_else(|| "{}".into()),
        },
    })
}

/// A whole answer as an OpenAI chat completion, with its usage.
pub fn chat_answer(answer: &GenerateContentResponse, model: &str, created: u64) -> Option<(Value, Usage)> {
    answer.candidates.as_ref()?;
    let (text, calls, reason) = candidate_parts(answer);
    let id = answer.response_id.as_deref().unwrap_or("gemini").to_owned();
    let usage = usage_of(answer).unwrap_or_default();
    let mut message = Map::new();
    message.insert("role".into(), Value::from("assistant"));
    message.insert(
        "content".into(),
        if text.is_empty() && !calls.is_empty() {
            Value::Null
        } else {
            Value::from(text)
        },
    );
    if !calls.is_empty() {
        let calls: Vec<Value> = calls
            .iter()
            .enumerate()
            .map(|(i, c)| tool_call(c, i, &id))
            .collect();
        message.insert("tool_calls".into(), Value::Array(calls));
    }
    let called = message.contains_key("tool_calls");
    let completion = json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": answer.model_version.as_deref().unwrap_or(model),
        "choices": [{
            "index": 0,
            "message": Value::Object(message),
            "logprobs": null,
            "finish_reason": finish_reason(reason, called),
        }],
        "usage": openai_usage(&usage),
    });
    Some((completion, usage))
}

/// A Gemini error answer (`{"error": {"code", "message", "status"}}`) in OpenAI's shape.
pub fn error_answer(answer: &Value) -> Value {
    let error = answer.get("error").cloned().unwrap_or_default();
    json!({
        "error": {
            "message": error.get("message").cloned().unwrap_or(Value::from("The provider refused the request.")),
            "type": "invalid_request_error",
            "code": error.get("status").cloned().unwrap_or(Value::Null),
            "param": null,
        }
    })
}

/// Turns `streamGenerateContent?alt=sse` events into `chat.completion.chunk` frames.
#[derive(Debug)]
pub struct StreamTranslator {
    include_usage: bool,
    created: u64,
    model: String,
    id: String,
    started: bool,
    calls: usize,
    usage: Usage,
    deltas: u64,
    /// A finish reason arrived (Gemini's streams have no end event of their own).
    complete: bool,
    done: bool,
}

impl StreamTranslator {
    pub fn new(include_usage: bool, created: u64, model: &str) -> StreamTranslator {
        StreamTranslator {
            include_usage,
            created,
            model: model.to_owned(),
            id: String::from("gemini"),
            started: false,
            calls: 0,
            usage: Usage::default(),
            deltas: 0,
            complete: false,
            done: false,
        }
    }

    fn chunk(&self, delta: Value, finish: Value, out: &mut Vec<u8>) {
        write_chunk(&self.id, self.created, &self.model, delta, finish, out);
    }
}

impl Translate for StreamTranslator {
    fn event(&mut self, event: &Event, out: &mut Vec<u8>) -> bool {
        let Ok(answer) = serde_json::from_str::<Value>(&event.data) else {
            return false;
        };
        // Read leniently: an event of another shape still starts the stream.
        let answer = GenerateContentResponse::deserialize(&answer).unwrap_or_default();
        if let Some(id) = &answer.response_id {
            self.id.clone_from(id);
        }
        if let Some(version) = &answer.model_version {
            self.model.clone_from(version);
        }
        if !self.started {
            self.started = true;
            self.chunk(json!({ "role": "assistant", "content": "" }), Value::Null, out);
        }
        let (text, calls, reason) = candidate_parts(&answer);
        if !text.is_empty() {
            self.deltas += 1;
            self.chunk(json!({ "content": text }), Value::Null, out);
        }
        for call in &calls {
            let ordinal = self.calls;
            self.calls += 1;
            self.deltas += 1;
            let mut delta = tool_call(call, ordinal, &self.id);
            if let Some(object) = delta.as_object_mut() {
                object.insert("index".into(), Value::from(ordinal));
            }
            self.chunk(json!({ "tool_calls": [delta] }), Value::Null, out);
        }
        let usage = usage_of(&answer);
        if let Some(usage) = usage {
            self.usage = usage;
        }
        if reason.is_some() {
            self.complete = true;
            self.chunk(json!({}), finish_reason(reason, self.calls > 0), out);
        }
        // Gemini repeats usageMetadata as it goes; the one with the finish reason is final.
        reason.is_some() && usage.is_some()
    }

    fn usage(&self) -> Usage {
        self.usage
    }

    fn deltas(&self) -> u64 {
        self.deltas
    }

    fn done(&self) -> bool {
        self.done
    }

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

    const STREAM: &str = include_str!("../../tests/fixtures/gemini/stream.sse");

    #[test]
    fn a_conversation_with_tools_maps_to_gemini() {
        let request = json!({
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "{\"celsius\": 18}"}
            ],
            "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
            "tool_choice": "auto",
            "max_tokens": 100,
            "stop": ["END"]
        });
        let body = chat_request(request.as_object().unwrap()).unwrap();
        assert_eq!(body["systemInstruction"]["parts"][0]["text"], "Be brief.");
        assert_eq!(body["contents"][1]["role"], "model");
        assert_eq!(
            body["contents"][1]["parts"][0]["functionCall"]["args"],
            json!({"city": "Paris"})
        );
        assert_eq!(
            body["contents"][2]["parts"][0]["functionResponse"]["name"],
            "weather"
        );
        assert_eq!(
            body["contents"][2]["parts"][0]["functionResponse"]["response"],
            json!({"celsius": 18})
        );
        assert_eq!(
            body["generationConfig"],
            json!({"maxOutputTokens": 100, "stopSequences": ["END"]})
        );
        assert_eq!(body["tools"][0]["functionDeclarations"][0]["name"], "weather");
        assert_eq!(body["toolConfig"]["functionCallingConfig"]["mode"], "AUTO");
    }

    #[test]
    fn answers_are_read_leniently() {
        let answer = r#"{"candidates": [{"content": {"parts": [
            {"text": "Hi"}, {"thought": true}, {"functionCall": {"name": "f", "args": {"a": 1}}}
        ]}, "finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": 3}}"#;
        let answer: GenerateContentResponse = serde_json::from_str(answer).unwrap();
        let (completion, usage) = chat_answer(&answer, "gemini-2.5-flash", 7).unwrap();
        assert_eq!(usage, Usage::plain(3, 0));
        assert_eq!(completion["id"], "gemini");
        assert_eq!(completion["model"], "gemini-2.5-flash");
        let message = &completion["choices"][0]["message"];
        assert_eq!(message["content"], "Hi");
        assert_eq!(message["tool_calls"][0]["id"], "call_gemini_0");
        assert_eq!(message["tool_calls"][0]["function"]["arguments"], "{\"a\":1}");
        assert_eq!(completion["choices"][0]["finish_reason"], "tool_calls");
        let none: GenerateContentResponse = serde_json::from_str(r#"{"candidates": 3}"#).unwrap();
        assert!(chat_answer(&none, "m", 7).is_none(), "no candidates, no answer");
    }

    fn translate(pieces: &[&[u8]]) -> (String, Usage) {
        let mut parser = crate::llm::sse::SseParser::default();
        let mut translator = StreamTranslator::new(true, 7, "gemini-2.5-flash");
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
    fn a_stream_translates_however_it_is_split() {
        let bytes = STREAM.as_bytes();
        let (whole, usage) = translate(&[bytes]);
        assert_eq!(usage, Usage::plain(8, 13));
        let text: String = whole
            .split("\n\n")
            .filter_map(|f| f.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str::<Value>(d).unwrap())
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(text, "Hello there! How can I help?");
        assert!(whole.contains("\"finish_reason\":\"stop\""));
        assert!(whole.ends_with("data: [DONE]\n\n"));
        for cut in 0..=bytes.len() {
            let (a, b) = bytes.split_at(cut);
            assert_eq!(translate(&[a, b]).0, whole, "split at byte {cut}");
        }
    }
}
