//! The response body on its way to the client, counting bytes as they pass.
//!
//! Nothing is buffered: each frame is handed on as it arrives. The response body carries the
//! request's [`RequestRecord`] and records it when the last frame is sent, when the stream
//! fails, or when the client goes away and the body is dropped: so logs and metrics describe
//! what the client actually received.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::grpc::web::WebResponse;
use crate::record::RequestRecord;
use crate::stale::Capture;
use crate::upstream::pool::PooledBody;

pin_project! {
    #[project = SourceProj]
    enum Source {
        Upstream { #[pin] body: PooledBody },
        GrpcWeb { body: WebResponse<PooledBody> },
        Full { data: Option<Bytes> },
        Boxed { body: http_body_util::combinators::UnsyncBoxBody<Bytes, hyper::Error> },
    }
}

/// Records the request once, whichever way the response ends, and hands a fully sent body
/// to the stale cache when one is being captured.
struct Finisher {
    record: Option<RequestRecord>,
    capture: Option<Capture>,
    sent: u64,
}

impl Finisher {
    fn finish(&mut self, completed: bool) {
        if let Some(capture) = self.capture.take() {
            if completed {
                capture.complete();
            }
        }
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
    pub fn upstream(body: PooledBody) -> ResponseBody {
        ResponseBody {
            source: Source::Upstream { body },
            finisher: Finisher {
                record: None,
                capture: None,
                sent: 0,
            },
        }
    }

    /// An upstream's gRPC answer bridged to a gRPC-Web client (`text`: base64).
    pub fn grpc_web(body: PooledBody, text: bool) -> ResponseBody {
        ResponseBody {
            source: Source::GrpcWeb {
                body: WebResponse::new(body, text),
            },
            finisher: Finisher {
                record: None,
                capture: None,
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
                capture: None,
                sent: 0,
            },
        }
    }

    /// A body the gateway streams itself (an LLM relay).
    pub fn boxed(body: impl Body<Data = Bytes, Error = hyper::Error> + Send + 'static) -> ResponseBody {
        ResponseBody {
            source: Source::Boxed {
                body: http_body_util::BodyExt::boxed_unsync(body),
            },
            finisher: Finisher {
                record: None,
                capture: None,
                sent: 0,
            },
        }
    }

    pub fn empty() -> ResponseBody {
        ResponseBody::full(Bytes::new())
    }

    /// Captures the body for the stale cache as it streams.
    pub fn with_capture(mut self, capture: Capture) -> ResponseBody {
        self.finisher.capture = Some(capture);
        self
    }

    /// Attaches the record to write when this body ends.
    pub fn with_record(mut self, mut record: RequestRecord) -> ResponseBody {
        // The head goes to the client's connection now: Levee's own time ends here.
        record.head_at = Some(tokio::time::Instant::now());
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
            SourceProj::GrpcWeb { body } => {
                let polled = ready!(Pin::new(&mut *body).poll_frame(cx));
                if let (Some(status), Some(record)) = (body.status(), this.finisher.record.as_mut()) {
                    record.grpc_status = Some(status);
                }
                polled
            }
            SourceProj::Full { data } => data.take().map(|d| Ok(Frame::data(d))),
            SourceProj::Boxed { body } => ready!(Pin::new(body).poll_frame(cx)),
        };
        match &polled {
            Some(Ok(frame)) => {
                if let (Some(trailers), Some(record)) = (frame.trailers_ref(), this.finisher.record.as_mut())
                {
                    // A gRPC call's outcome arrives last.
                    if let Some(status) = crate::grpc::status(trailers) {
                        record.grpc_status = Some(status);
                    }
                }
                if let Some(data) = frame.data_ref() {
                    this.finisher.sent += data.len() as u64;
                    if let Some(capture) = this.finisher.capture.as_mut() {
                        capture.push(data);
                    }
                }
                // hyper stops polling once a sized body is exhausted, so notice the end here.
                let ended = match this.source.as_ref().get_ref() {
                    Source::Upstream { body } => body.is_end_stream(),
                    Source::GrpcWeb { body } => body.is_end_stream(),
                    Source::Full { data } => data.is_none(),
                    Source::Boxed { body } => body.is_end_stream(),
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
            Source::GrpcWeb { body } => body.is_end_stream(),
            Source::Full { data } => data.is_none(),
            Source::Boxed { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Upstream { body } => body.size_hint(),
            Source::GrpcWeb { body } => body.size_hint(),
            Source::Full { data } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Source::Boxed { body } => body.size_hint(),
        }
    }
}
