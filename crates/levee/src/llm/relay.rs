//! A provider's SSE stream relayed to the client: unchanged (OpenAI-style providers) or
//! translated into OpenAI chunks (Anthropic, Gemini), read along for usage either way.
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
use super::translate::Translate;
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
    /// Present when the stream is translated rather than relayed as it is.
    translator: Option<Box<dyn Translate>>,
    /// The translated stream has ended (its closing frames are out).
    ended: bool,
}

impl Relay {
    pub fn new(
        first: Frame<Bytes>,
        body: Incoming,
        deadline: tokio::time::Instant,
        call: Arc<LlmCall>,
        prompt_estimate: u64,
        translator: Option<Box<dyn Translate>>,
    ) -> Relay {
        let mut relay = Relay {
            translator,
            ended: false,
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
            translator.finish(&mut out);
            self.ended = true;
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
            self.ended = true;
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

impl Relay {
    /// Levee's count, for when the provider reported no usage. Done before the last frame
    /// leaves (the request is recorded as soon as the body ends) and again if the body is
    /// dropped early.
    fn count_relayed(&self) {
        self.call.estimate(Usage {
            prompt: self.prompt_estimate,
            completion: self.chunks_with_content,
        });
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

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if self.translator.is_some() {
            return self.poll_translated(cx);
        }
        if let Some(first) = self.first.take() {
            if self.body.is_end_stream() {
                self.count_relayed();
            }
            return Poll::Ready(Some(Ok(first)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            tracing::debug!(provider = %self.call.provider, "LLM stream cut at the total timeout");
            self.count_relayed();
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                // A cheap clone (reference-counted bytes), so the frame can be read along.
                if let Some(data) = frame.data_ref().cloned() {
                    self.read_along(&Frame::data(data));
                }
                if self.body.is_end_stream() {
                    self.count_relayed();
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.count_relayed(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match self.translator {
            Some(_) => self.ended && self.first.is_none(),
            None => self.first.is_none() && self.body.is_end_stream(),
        }
    }
}

impl Relay {
    fn poll_translated(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        loop {
            if self.ended {
                return Poll::Ready(None);
            }
            let frame = match self.first.take() {
                Some(first) => first,
                None => {
                    if self.deadline.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(self.close());
                    }
                    match Pin::new(&mut self.body).poll_frame(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Some(Ok(frame))) => frame,
                        Poll::Ready(Some(Err(error))) => {
                            self.count_relayed();
                            return Poll::Ready(Some(Err(error)));
                        }
                        // The provider ended without `message_stop`: close the stream properly.
                        Poll::Ready(None) => return Poll::Ready(self.close()),
                    }
                }
            };
            let out = self.translate(&frame);
            if self.ended {
                self.count_relayed();
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
        }
    }

    /// The closing frames of a translated stream, once.
    fn close(&mut self) -> Option<Result<Frame<Bytes>, hyper::Error>> {
        self.count_relayed();
        let translator = self.translator.as_mut()?;
        self.ended = true;
        let mut out = Vec::new();
        translator.finish(&mut out);
        (!out.is_empty()).then(|| Ok(Frame::data(Bytes::from(out))))
    }
}
