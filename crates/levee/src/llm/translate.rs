//! What a provider stream translator does: turn the provider's events into OpenAI
//! `chat.completion.chunk` frames and keep the usage it saw.

use serde_json::{json, Map, Value};

use super::sse::Event;
use super::usage::{openai_usage, Usage};

/// A translator from one provider's stream events to OpenAI chunks.
pub trait Translate: Send {
    /// Translates one event, appending frames to `out`; true when the event carried the final
    /// usage.
    fn event(&mut self, event: &Event, out: &mut Vec<u8>) -> bool;
    /// The usage seen so far.
    fn usage(&self) -> Usage;
    /// Content deltas relayed (for counting when no usage arrives).
    fn deltas(&self) -> u64;
    /// The closing frames are out.
    fn done(&self) -> bool;
    /// The usage chunk (when asked for) and `[DONE]`, once.
    fn finish(&mut self, out: &mut Vec<u8>);
    /// The provider's stream reached its proper end (Anthropic `message_stop`, Gemini a
    /// finish reason). A stream that stops before it was cut, and must not reach the client
    /// as a clean end.
    fn complete(&self) -> bool;
    /// The stream broke off: an error frame in place of the end, once (see
    /// [`write_interrupted`]).
    fn fail(&mut self, message: &str, out: &mut Vec<u8>);
}

/// The frame that ends a stream which broke off: an OpenAI error object as the stream's
/// last `data:` (what OpenAI sends when a stream fails, and what its SDKs raise `APIError`
/// on), with no `[DONE]` after it, so no client mistakes a cut answer for a whole one.
pub fn write_interrupted(message: &str, out: &mut Vec<u8>) {
    let error = json!({
        "error": {
            "message": message,
            "type": "api_error",
            "code": "stream_interrupted",
            "param": null,
        }
    });
    write_data(&error.to_string(), out);
}

/// One SSE `data:` frame.
pub fn write_data(data: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// One `chat.completion.chunk` frame with a single choice.
pub fn write_chunk(
    id: &str,
    created: u64,
    model: &str,
    delta: Value,
    finish_reason: Value,
    out: &mut Vec<u8>,
) {
    let chunk = json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason }],
    });
    write_data(&chunk.to_string(), out);
}

/// The end of a translated stream: the usage chunk (when the client asked for it, as OpenAI
/// sends it: no choices) and `data: [DONE]`.
pub fn write_end(id: &str, created: u64, model: &str, usage: Option<Usage>, out: &mut Vec<u8>) {
    if let Some(usage) = usage {
        let chunk = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": openai_usage(&usage),
        });
        write_data(&chunk.to_string(), out);
    }
    write_data("[DONE]", out);
}

/// Refuses request fields no translated provider can honour, naming them.
pub fn refuse_unsupported(request: &Map<String, Value>) -> Result<(), String> {
    if request.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err("`n` above 1 is not supported by this model's provider.".into());
    }
    if request.get("logprobs").and_then(Value::as_bool) == Some(true) {
        return Err("`logprobs` is not supported by this model's provider.".into());
    }
    Ok(())
}

/// The texts of an OpenAI message's `content` (a string or text parts); other parts are
/// refused by name.
pub fn content_texts(content: Option<&Value>) -> Result<Vec<String>, String> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) if text.is_empty() => Ok(Vec::new()),
        Some(Value::String(text)) => Ok(vec![text.clone()]),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|part| match part.get("type").and_then(Value::as_str) {
                Some("text") => Ok(part
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()),
                Some(other) => Err(format!(
                    "Content parts of type `{other}` are not supported by this model's provider."
                )),
                None => Err("A content part has no `type`.".into()),
            })
            .collect(),
        Some(_) => Err("`content` must be a string or an array of parts.".into()),
    }
}

/// Appends `items` to the last turn under `key` when it has the same role (providers want
/// turns to alternate), else starts a turn `{"role": role, key: items}`.
pub fn push_turn(turns: &mut Vec<Value>, role: &str, key: &str, items: Vec<Value>) {
    if let Some(last) = turns
        .last_mut()
        .filter(|t| t.get("role").and_then(Value::as_str) == Some(role))
    {
        if let Some(existing) = last.get_mut(key).and_then(Value::as_array_mut) {
            existing.extend(items);
            return;
        }
    }
    turns.push(json!({ "role": role, key: items }));
}
