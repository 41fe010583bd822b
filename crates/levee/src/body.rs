//! Bodies that stream through the gateway, counting bytes as they pass.
//!
//! Nothing is buffered: each frame is handed on as it arrives. The response body carries the
//! request's [`RequestRecord`] and records it when the last frame is sent, when the stream
//! fails, or when the client goes away and the body is dropped: so logs and metrics describe
//! what the client actually received.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use crate::observability::RequestRecord;

pin_project! {
    /// The client's request body on its way upstream.
    pub struct RequestBody {
        #[pin]
        inner: Incoming,
        received: Option<Arc<AtomicU64>>,
    }
}

impl RequestBody {
    /// Wraps `inner`; `received` (when given) counts the bytes read from the client.
    pub fn new(inner: Incoming, received: Option<Arc<AtomicU64>>) -> RequestBody {
        RequestBody { inner, received }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let (Some(Ok(frame)), Some(counter)) = (&frame, this.received.as_ref()) {
            if let Some(data) = frame.data_ref() {
                counter.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    #[project = SourceProj]
    enum Source {
        Upstream { #[pin] body: Incoming },
        Full { data: Option<Bytes> },
    }
}

/// Records the request once, whichever way the response ends.
struct Finisher {
    record: Option<RequestRecord>,
    sent: u64,
}

impl Finisher {
    fn finish(&mut self, completed: bool) {
        if let Some(record) = self.record.take() {
            record.finish(self.sent, completed);
        }
    }
}

impl Drop for Finisher {
    fn drop(&mut self) {
        self.finish(false);
    }
}

pin_project! {
    /// A response body: streamed from the upstream or produced by the gateway.
    pub struct ResponseBody {
        #[pin]
        source: Source,
        finisher: Finisher,
    }
}

impl ResponseBody {
    pub fn upstream(body: Incoming) -> ResponseBody {
        ResponseBody {
            source: Source::Upstream { body },
            finisher: Finisher {
                record: None,
                sent: 0,
            },
        }
    }

    pub fn full(data: impl Into<Bytes>) -> ResponseBody {
        let data: Bytes = data.into();
        ResponseBody {
            source: Source::Full {
                data: (!data.is_empty()).then_some(data),
            },
            finisher: Finisher {
                record: None,
                sent: 0,
            },
        }
    }

    pub fn empty() -> ResponseBody {
        ResponseBody::full(Bytes::new())
    }

    /// Attaches the record to write when this body ends.
    pub fn with_record(mut self, record: RequestRecord) -> ResponseBody {
        self.finisher.record = Some(record);
        if self.is_end_stream() {
            // Nothing will be polled (e.g. HEAD or 204): record now.
            self.finisher.finish(true);
        }
        self
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let polled = match this.source.as_mut().project() {
            SourceProj::Upstream { body } => ready!(body.poll_frame(cx)),
            SourceProj::Full { data } => data.take().map(|d| Ok(Frame::data(d))),
        };
        match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.finisher.sent += data.len() as u64;
                }
                // hyper stops polling once a sized body is exhausted, so notice the end here.
                let ended = match this.source.as_ref().get_ref() {
                    Source::Upstream { body } => body.is_end_stream(),
                    Source::Full { data } => data.is_none(),
                };
                if ended {
                    this.finisher.finish(true);
                }
            }
            Some(Err(_)) => this.finisher.finish(false),
            None => this.finisher.finish(true),
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Upstream { body } => body.is_end_stream(),
            Source::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Upstream { body } => body.size_hint(),
            Source::Full { data } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}
