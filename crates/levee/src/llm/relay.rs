//! A provider's SSE stream relayed to the client: unchanged (OpenAI-style providers) or
//! translated into OpenAI chunks (Anthropic, Gemini), read along for usage either way.
//!
//! The provider's report (the last chunk's `usage`) is taken when it comes; if the stream ends
//! without one, or the client goes away first (the body is dropped, which also drops the
//! provider's connection and so cancels its request), what was relayed is counted instead.
//!
//! A stream must end the way its provider ends a whole answer: `data: [DONE]` (OpenAI),
//! `message_stop` (Anthropic), a finish reason (Gemini). One that stops before (the
//! connection cut, the provider's own error event, the route's total timeout) is a cut
//! answer, and a client must never take it for a whole one: the stream ends with an OpenAI
//! error event ([`write_interrupted`]), which the OpenAI SDKs raise as `APIError`, and the
//! call is marked interrupted for the call log. Before the first byte nothing is committed,
//! and the call falls back to the next target instead (`attempt.rs`).
//!
//! The time spent here on each frame (reading along, translating) is Levee's, and is added
//! to the call for `levee_llm_overhead_seconds`.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::openai;
use super::sse::{Event, SseParser};
use super::translate::{write_interrupted, Translate};
use super::usage::{LlmCall, Usage};

/// What the client reads when the provider's connection broke mid-answer.
const CUT: &str = "The provider's stream broke off before the answer was complete.";
/// ... when the route's total timeout ended the answer.
const TIMED_OUT: &str = "The answer did not complete within the route's total timeout.";
/// ... when the provider ended the stream without its end marker.
const UNFINISHED: &str = "The provider's stream ended before the answer was complete.";

type Polled = Poll<Option<Result<Frame<Bytes>, hyper::Error>>>;

/// The relayed stream.
pub struct Relay {
    /// A first frame read before the response was committed (to decide on fallback).
    first: Option<Frame<Bytes>>,
    body: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    parser: SseParser,
    events: Vec<Event>,
    call: Arc<LlmCall>,
    prompt_estimate: u64,
    chunks_with_content: u64,
    /// The parser gave up (an oversized event): keep relaying, stop reading.
    blind: bool,
    /// Present when the stream is translated rather than relayed as it is.
    translator: Option<Box<dyn Translate>>,
    /// A relayed stream carried its end: `[DONE]`, or the provider's own error event.
    ended_properly: bool,
    /// The relayed stream is the Responses API's (its end is `response.completed`,
    /// `response.incomplete` or `response.failed`, and a cut is told with its `error`
    /// event).
    responses: bool,
    /// Responses events relayed, for the sequence number of an `error` event Levee adds.
    sequence: u64,
    /// The last frame is out (the stream's end, or the error event in its place).
    closed: bool,
}

impl Relay {
    pub fn new(
        first: Frame<Bytes>,
        body: Incoming,
        deadline: Instant,
        call: Arc<LlmCall>,
        prompt_estimate: u64,
        translator: Option<Box<dyn Translate>>,
        responses: bool,
    ) -> Relay {
        let mut relay = Relay {
            translator,
            ended_properly: false,
            responses,
            sequence: 0,
            closed: false,
            first: None,
            body,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            parser: SseParser::default(),
            events: Vec::new(),
            call,
            prompt_estimate,
            chunks_with_content: 0,
            blind: false,
        };
        if relay.translator.is_none() {
            relay.read_along(&first);
        }
        relay.first = Some(first);
        relay
    }

    /// Translates a provider frame into OpenAI frames (possibly none yet).
    fn translate(&mut self, frame: &Frame<Bytes>) -> Bytes {
        let mut out = Vec::new();
        let (Some(data), Some(translator)) = (frame.data_ref(), self.translator.as_mut()) else {
            return Bytes::new();
        };
        if self.parser.push(data, &mut self.events).is_err() {
            // An event too large to hold: the stream cannot be translated further.
            translator.fail("The provider sent an event too large to translate.", &mut out);
            self.call.mark_interrupted();
            self.closed = true;
            return Bytes::from(out);
        }
        for event in self.events.drain(..) {
            if translator.event(&event, &mut out) {
                self.call.report(translator.usage());
            }
        }
        self.prompt_estimate = self.prompt_estimate.max(translator.usage().prompt);
        self.chunks_with_content = translator.deltas();
        if translator.done() {
            self.closed = true;
            if !translator.complete() {
                self.call.mark_interrupted();
            }
        }
        Bytes::from(out)
    }

    fn read_along(&mut self, frame: &Frame<Bytes>) {
        let Some(data) = frame.data_ref() else {
            return;
        };
        if self.blind {
            return;
        }
        if self.parser.push(data, &mut self.events).is_err() {
            // Past an event too large to read, the end marker cannot be told apart either:
            // the stream is taken as it ends.
            self.blind = true;
            self.ended_properly = true;
            return;
        }
        // Taken out and put back, so the buffer's capacity is kept across frames.
        let mut events = std::mem::take(&mut self.events);
        for event in events.drain(..) {
            if event.data == "[DONE]" {
                self.ended_properly = true;
                continue;
            }
            let Ok(chunk) = serde_json::from_str::<serde_json::Value>(&event.data) else {
                continue;
            };
            if self.responses {
                self.sequence += 1;
                self.read_responses_event(&chunk);
                continue;
            }
            if let Some(usage) = openai::usage(&chunk) {
                self.call.report(usage);
            }
            if openai::carries_content(&chunk) {
                self.chunks_with_content += 1;
            }
            if chunk.get("error").is_some() {
                // The provider's own error event already tells the client.
                self.ended_properly = true;
                self.call.mark_interrupted();
            }
        }
        self.events = events;
    }

    /// One event of a relayed Responses API stream.
    fn read_responses_event(&mut self, event: &serde_json::Value) {
        match event.get("type").and_then(serde_json::Value::as_str) {
            Some("response.output_text.delta" | "response.function_call_arguments.delta") => {
                self.chunks_with_content += 1;
            }
            Some("response.completed" | "response.incomplete") => {
                self.ended_properly = true;
                if let Some(usage) = event.get("response").and_then(openai::usage) {
                    self.call.report(usage);
                }
            }
            Some("response.failed" | "error") => {
                // The provider's own failure already tells the client.
                self.ended_properly = true;
                self.call.mark_interrupted();
            }
            _ => {}
        }
    }

    /// Levee's count, for when the provider reported no usage. Done before the last frame
    /// leaves (the request is recorded as soon as the body ends) and again if the body is
    /// dropped early.
    fn count_relayed(&self) {
        self.call
            .estimate(Usage::plain(self.prompt_estimate, self.chunks_with_content));
    }

    /// The last frame of a stream that stops here: nothing more when it carried its end,
    /// else the error event that says it was cut.
    fn close(&mut self, why: &str) -> Polled {
        self.count_relayed();
        self.closed = true;
        let mut out = Vec::new();
        match self.translator.as_mut() {
            Some(translator) if translator.complete() => translator.finish(&mut out),
            Some(translator) => translator.fail(why, &mut out),
            None if self.ended_properly => {}
            None if self.responses => {
                let event = super::responses_api::error_event("stream_interrupted", why, self.sequence);
                out.extend_from_slice(event.as_bytes());
            }
            None => write_interrupted(why, &mut out),
        }
        let complete = self
            .translator
            .as_ref()
            .map_or(self.ended_properly, |t| t.complete());
        if !complete {
            tracing::debug!(provider = %self.call.provider, reason = why, "LLM stream cut");
            self.call.mark_interrupted();
        }
        Poll::Ready((!out.is_empty()).then(|| Ok(Frame::data(Bytes::from(out)))))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.count_relayed();
    }
}

impl Body for Relay {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        if self.closed {
            return Poll::Ready(None);
        }
        if self.translator.is_some() {
            return self.poll_translated(cx);
        }
        if let Some(first) = self.first.take() {
            if self.body.is_end_stream() {
                return self.last_frame(first);
            }
            return Poll::Ready(Some(Ok(first)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            return self.close(TIMED_OUT);
        }
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let started = Instant::now();
                // A cheap clone (reference-counted bytes), so the frame can be read along.
                if let Some(data) = frame.data_ref().cloned() {
                    self.read_along(&Frame::data(data));
                }
                self.call.add_levee_time(started.elapsed());
                if self.body.is_end_stream() {
                    return self.last_frame(frame);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => self.close(UNFINISHED),
            Poll::Ready(Some(Err(error))) => {
                tracing::debug!(%error, "LLM provider stream failed");
                self.close(CUT)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.closed
    }
}

impl Relay {
    /// The provider's last frame: relayed as it is when the stream carried its end, else
    /// with the error event after it.
    fn last_frame(&mut self, frame: Frame<Bytes>) -> Polled {
        self.count_relayed();
        if self.ended_properly {
            self.closed = true;
            return Poll::Ready(Some(Ok(frame)));
        }
        let Poll::Ready(Some(Ok(end))) = self.close(UNFINISHED) else {
            return Poll::Ready(Some(Ok(frame)));
        };
        let mut joined = frame.into_data().unwrap_or_default().to_vec();
        joined.extend_from_slice(end.data_ref().map_or(&[][..], |d| &d[..]));
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(joined)))))
    }

    fn poll_translated(&mut self, cx: &mut Context<'_>) -> Polled {
        loop {
            if self.closed {
                return Poll::Ready(None);
            }
            let frame = match self.first.take() {
                Some(first) => first,
                None => {
                    if self.deadline.as_mut().poll(cx).is_ready() {
                        return self.close(TIMED_OUT);
                    }
                    match Pin::new(&mut self.body).poll_frame(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Some(Ok(frame))) => frame,
                        Poll::Ready(Some(Err(error))) => {
                            tracing::debug!(%error, "LLM provider stream failed");
                            return self.close(CUT);
                        }
                        // The provider ended: properly (`message_stop` was seen, its closing
                        // frames are due) or not (an error event in their place).
                        Poll::Ready(None) => return self.close(UNFINISHED),
                    }
                }
            };
            let started = Instant::now();
            let out = self.translate(&frame);
            self.call.add_levee_time(started.elapsed());
            if self.closed {
                self.count_relayed();
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
        }
    }
}
