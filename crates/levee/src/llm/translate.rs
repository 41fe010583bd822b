//! What a provider stream translator does: turn the provider's events into OpenAI
//! `chat.completion.chunk` frames and keep the usage it saw.

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
