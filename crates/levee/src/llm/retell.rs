//! A streamed answer re-told event by event: the server-sent events of a body are read as
//! they arrive (however they are cut into frames) and each is handed to a [`Retell`],
//! which writes what the client gets instead. The Messages API and Responses API streams
//! (OpenAI chunks re-told in another protocol) and the guardrails on streamed answers
//! (chunks re-told with their text checked) share this loop; each says what its events
//! become and how its stream ends.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};

use super::sse::{Event, SseParser};
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
}

impl<R: Retell> Retold<R> {
    pub fn new(inner: ResponseBody, retell: R) -> Retold<R> {
        Retold {
            inner,
            parser: SseParser::default(),
            events: Vec::new(),
            retell,
        }
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
                    if this.parser.push(data, &mut this.events).is_err() {
                        this.retell.end(Some(TOO_LARGE), &mut out);
                    }
                    for event in this.events.drain(..) {
                        if this.retell.ended() {
                            break;
                        }
                        this.retell.event(&event, &mut out);
                    }
                }
                Some(Err(_)) => this.retell.end(Some(BROKE), &mut out),
                None => this.retell.end(None, &mut out),
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
            }
        }
    }
}
