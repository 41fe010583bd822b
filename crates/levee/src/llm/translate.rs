//! What a provider stream translator does: turn the provider's events into OpenAI
//! `chat.completion.chunk` frames and keep the usage it saw.

use serde_json::{json, Value};

use super::sse::Event;
use super::usage::Usage;

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
            "usage": {
                "prompt_tokens": usage.prompt,
                "completion_tokens": usage.completion,
                "total_tokens": usage.prompt + usage.completion,
            },
        });
        write_data(&chunk.to_string(), out);
    }
    write_data("[DONE]", out);
}
