//! Server-sent events read incrementally, as they arrive in TCP reads of any size.
//!
//! A provider's stream is relayed byte for byte, but the gateway reads along to find the usage
//! report (and to count what it relayed when there is none). Events may be split anywhere,
//! even inside a `\r\n`, so lines are cut only once complete; an event ends at a blank line
//! (WHATWG HTML, "server-sent events"). Memory is bounded: an event or a line longer than
//! [`MAX_EVENT_BYTES`] is an error, not a reason to buffer more.

/// The longest event (or line) accepted.
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// One event: its `event:` type (if any) and its `data:` lines joined by `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub event: Option<String>,
    pub data: String,
}

/// The stream broke the size bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("server-sent event longer than {MAX_EVENT_BYTES} bytes")]
pub struct TooLarge;

/// Reassembles events from arbitrary chunks.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of a line not yet complete.
    line: Vec<u8>,
    event: Option<String>,
    data: String,
    has_data: bool,
}

impl SseParser {
    /// Feeds `chunk`, appending every event it completes to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<Event>) -> Result<(), TooLarge> {
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|b| *b == b'\n') {
            let (head, tail) = rest.split_at(end);
            rest = tail.get(1..).unwrap_or_default();
            if self.line.len() + head.len() > MAX_EVENT_BYTES {
                return Err(TooLarge);
            }
            self.line.extend_from_slice(head);
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.take_line(&line, out)?;
        }
        if self.line.len() + rest.len() > MAX_EVENT_BYTES {
            return Err(TooLarge);
        }
        self.line.extend_from_slice(rest);
        Ok(())
    }

    fn take_line(&mut self, line: &[u8], out: &mut Vec<Event>) -> Result<(), TooLarge> {
        if line.is_empty() {
            if self.has_data {
                out.push(Event {
                    event: self.event.take(),
                    data: std::mem::take(&mut self.data),
                });
            }
            self.event = None;
            self.has_data = false;
            return Ok(());
        }
        if line.first() == Some(&b':') {
            return Ok(()); // a comment (keep-alive)
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (text.as_ref(), ""),
        };
        match field {
            "data" => {
                if self.data.len() + value.len() + 1 > MAX_EVENT_BYTES {
                    return Err(TooLarge);
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_owned()),
            _ => {} // id, retry and unknown fields do not matter here
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    const STREAM: &str = "event: message_start\r\ndata: {\"a\":1}\r\n\r\n: keep-alive\n\ndata: line one\ndata: line two\n\ndata: [DONE]\n\n";

    fn parse_in_pieces(pieces: &[&[u8]]) -> Vec<Event> {
        let mut parser = SseParser::default();
        let mut out = Vec::new();
        for piece in pieces {
            parser.push(piece, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn events_are_the_same_however_the_stream_is_split() {
        let whole = parse_in_pieces(&[STREAM.as_bytes()]);
        assert_eq!(
            whole,
            vec![
                Event {
                    event: Some("message_start".into()),
                    data: "{\"a\":1}".into()
                },
                Event {
                    event: None,
                    data: "line one\nline two".into()
                },
                Event {
                    event: None,
                    data: "[DONE]".into()
                },
            ]
        );
        let bytes = STREAM.as_bytes();
        for cut in 0..=bytes.len() {
            let (a, b) = bytes.split_at(cut);
            assert_eq!(parse_in_pieces(&[a, b]), whole, "split at {cut}");
        }
        let one_by_one: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(parse_in_pieces(&one_by_one), whole);
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut parser = SseParser::default();
        let mut out = Vec::new();
        let chunk = vec![b'x'; 64 * 1024];
        let mut result = Ok(());
        for _ in 0..20 {
            result = parser.push(&chunk, &mut out);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(TooLarge));
    }
}
