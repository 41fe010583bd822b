//! A provider's SSE stream relayed to the client unchanged, read along for usage.
//!
//! The provider's report (the last chunk's `usage`) is taken when it comes; if the stream ends
//! without one, or the client goes away first (the body is dropped, which also drops the
//! provider's connection and so cancels its request), what was relayed is counted instead.
//! The total timeout ends the stream.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use hyper::body::Incoming;

use super::openai;
use super::sse::{Event, SseParser};
use super::usage::{LlmCall, Usage};

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
}

impl Relay {
    pub fn new(
        first: Frame<Bytes>,
        body: Incoming,
        deadline: tokio::time::Instant,
        call: Arc<LlmCall>,
        prompt_estimate: u64,
    ) -> Relay {
        let mut relay = Relay {
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
        relay.read_along(&first);
        relay.first = Some(first);
        relay
    }

    fn read_along(&mut self, frame: &Frame<Bytes>) {
        let Some(data) = frame.data_ref() else {
            return;
        };
        if self.blind {
            return;
        }
        if self.parser.push(data, &mut self.events).is_err() {
            self.blind = true;
            return;
        }
        for event in self.events.drain(..) {
            if event.data == "[DONE]" {
                continue;
            }
            let Ok(chunk) = serde_json::from_str::<serde_json::Value>(&event.data) else {
                continue;
            };
            if let Some(usage) = openai::usage(&chunk) {
                self.call.report(usage);
            }
            if openai::carries_content(&chunk) {
                self.chunks_with_content += 1;
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.call.estimate(Usage {
            prompt: self.prompt_estimate,
            completion: self.chunks_with_content,
        });
    }
}

impl Body for Relay {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            tracing::debug!(provider = %self.call.provider, "LLM stream cut at the total timeout");
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            // A cheap clone (reference-counted bytes), so the frame can be read along.
            if let Some(data) = frame.data_ref().cloned() {
                self.read_along(&Frame::data(data));
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.body.is_end_stream()
    }
}
