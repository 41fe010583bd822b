//! A streamed answer re-told event by event: the server-sent events of a body are read as
//! they arrive (however they are cut into frames) and each is handed to a [`Retell`],
//! which writes what the client gets instead. The Messages API and Responses API streams
//! (OpenAI chunks re-told in another protocol) and the guardrails on streamed answers
//! (chunks re-told with their text checked) share this loop; each says what its events
//! become and how its stream ends. A stream this loop stops (an event too large to read, the
//! provider's body failing) marks the call interrupted, so the logs do not show a clean call
//! the client saw end in an error.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};

use super::sse::{Event, SseParser};
use super::usage::LlmCall;
use crate::body::ResponseBody;

/// Why a stream stopped before its end.
pub const TOO_LARGE: &str = "The answer had an event too large to read.";
pub const BROKE: &str = "The answer broke off before it was complete.";

/// What a re-told stream does with its events.
pub trait Retell: Send + 'static {
    /// One event of the stream, re-told into `out`.
    fn event(&mut self, event: &Event, out: &mut Vec<u8>);
    /// The stream is over: it ended (`None`), or it broke off (`Some(why)`). Afterwards
    /// [`Retell::ended`] is true.
    fn end(&mut self, broke: Option<&str>, out: &mut Vec<u8>);
    /// Nothing more goes out.
    fn ended(&self) -> bool;
}

/// The body that re-tells `inner` through `R`.
pub struct Retold<R> {
    inner: ResponseBody,
    parser: SseParser,
    events: Vec<Event>,
    retell: R,
    /// The call the stream answers, marked interrupted when the stream breaks off.
    call: Option<Arc<LlmCall>>,
}

impl<R: Retell> Retold<R> {
    pub fn new(inner: ResponseBody, retell: R, call: Option<Arc<LlmCall>>) -> Retold<R> {
        Retold {
            inner,
            parser: SseParser::default(),
            events: Vec::new(),
            retell,
            call,
        }
    }

    fn break_off(&mut self, why: &str, out: &mut Vec<u8>) {
        if let Some(call) = &self.call {
            call.mark_interrupted();
        }
        self.retell.end(Some(why), out);
    }
}

impl<R: Retell + Unpin> Body for Retold<R> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        loop {
            if self.retell.ended() {
                return Poll::Ready(None);
            }
            let polled = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
            let mut out = Vec::new();
            let this = &mut *self;
            match polled {
                Some(Ok(frame)) => {
                    let Some(data) = frame.data_ref() else { continue };
                    // The events before one too large still go out, then the stream stops.
                    let pushed = this.parser.push(data, &mut this.events);
                    for event in this.events.drain(..) {
                        if this.retell.ended() {
                            break;
                        }
                        this.retell.event(&event, &mut out);
                    }
                    if pushed.is_err() && !this.retell.ended() {
                        this.break_off(TOO_LARGE, &mut out);
                    }
                }
                Some(Err(_)) => this.break_off(BROKE, &mut out),
                None => this.retell.end(None, &mut out),
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use http_body_util::BodyExt;

    use super::*;

    /// Writes each event's data back, and why the stream ended.
    #[derive(Default)]
    struct Echo {
        ended: bool,
    }

    impl Retell for Echo {
        fn event(&mut self, event: &Event, out: &mut Vec<u8>) {
            out.extend_from_slice(event.data.as_bytes());
            out.push(b'\n');
        }
        fn end(&mut self, broke: Option<&str>, out: &mut Vec<u8>) {
            out.extend_from_slice(broke.unwrap_or("end").as_bytes());
            self.ended = true;
        }
        fn ended(&self) -> bool {
            self.ended
        }
    }

    async fn retold(body: String) -> (String, bool) {
        let call = Arc::new(LlmCall::new("p".into(), "m".into(), None));
        let retold = Retold::new(ResponseBody::full(body), Echo::default(), Some(call.clone()));
        let bytes = retold.collect().await.unwrap().to_bytes();
        (String::from_utf8(bytes.to_vec()).unwrap(), call.interrupted())
    }

    #[tokio::test]
    async fn a_whole_stream_ends_cleanly_and_an_event_too_large_breaks_it_off() {
        let (text, interrupted) = retold("data: one\n\ndata: two\n\n".into()).await;
        assert_eq!(text, "one\ntwo\nend");
        assert!(!interrupted);

        let huge = "x".repeat(super::super::sse::MAX_EVENT_BYTES + 1);
        let (text, interrupted) = retold(format!("data: one\n\ndata: {huge}\n\n")).await;
        assert_eq!(text, format!("one\n{TOO_LARGE}"));
        assert!(interrupted, "the call log must not show a clean call");
    }
}
