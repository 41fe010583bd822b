//! Bodies that stream through the gateway, counting bytes as they pass.
//!
//! Nothing is buffered: each frame is handed on as it arrives. The response body carries the
//! request's [`RequestRecord`] and records it when the last frame is sent, when the stream
//! fails, or when the client goes away and the body is dropped: so logs and metrics describe
//! what the client actually received.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use crate::observability::RequestRecord;
use crate::stale::Capture;

/// The client's body, shared by every attempt of one request.
///
/// Frames are streamed upstream as they arrive (nothing waits for the whole body) and, up to
/// `cap` bytes, kept: an attempt that fails can then be retried with the same body, replayed
/// from memory and continued from the client. A body longer than `cap` stops being kept and
/// makes the request unretryable, so memory per request stays bounded.
#[derive(Debug)]
struct ReplaySource {
    incoming: Option<Incoming>,
    kept: Vec<Bytes>,
    kept_bytes: usize,
    cap: usize,
    overflowed: bool,
    finished: bool,
    received: Arc<AtomicU64>,
    /// Most body bytes accepted from the client; past it the body fails and `too_large` is
    /// set, so the request ends with 413.
    max_bytes: u64,
    too_large: bool,
    /// The client's body stream failed (broken framing, connection lost).
    client_error: bool,
    /// A prefetched frame too large to keep for replays, served once to the first attempt.
    pending: Option<Bytes>,
    /// The attempt allowed to read: an older one still being sent by an abandoned
    /// connection must not take frames a newer one needs.
    generation: u64,
}

/// Why the start of a body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefetchError {
    /// The client's framing is broken (e.g. an invalid chunk size).
    Malformed,
    /// Larger than the route allows.
    TooLarge,
}

/// The client sent more body than the route allows.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than the route allows")]
pub struct TooLarge;

/// An attempt's body was taken over by a retry.
#[derive(Debug, thiserror::Error)]
#[error("request body superseded by a retry")]
pub struct Superseded;

/// A handle on the request body that can produce one [`RequestBody`] per attempt.
#[derive(Debug, Clone)]
pub struct ReplayableBody {
    source: Option<Arc<Mutex<ReplaySource>>>,
}

impl ReplayableBody {
    /// Wraps the client's body, keeping up to `cap` bytes for replays. An empty body costs
    /// nothing.
    pub fn new(incoming: Incoming, cap: usize, max_bytes: u64) -> ReplayableBody {
        if incoming.is_end_stream() {
            return ReplayableBody { source: None };
        }
        ReplayableBody {
            source: Some(Arc::new(Mutex::new(ReplaySource {
                incoming: Some(incoming),
                kept: Vec::new(),
                kept_bytes: 0,
                cap,
                overflowed: false,
                finished: false,
                received: Arc::default(),
                max_bytes,
                too_large: false,
                client_error: false,
                pending: None,
                generation: 0,
            }))),
        }
    }

    /// Whether a new attempt can send the whole body again.
    pub fn replayable(&self) -> bool {
        match &self.source {
            None => true,
            Some(source) => source.lock().map(|s| !s.overflowed).unwrap_or(false),
        }
    }

    /// Waits for the first piece of the body (or its end) and keeps it for the first attempt,
    /// so that broken framing or an oversized start is refused before any upstream work.
    pub async fn prefetch(&self) -> Result<(), PrefetchError> {
        let Some(source) = &self.source else {
            return Ok(());
        };
        std::future::poll_fn(|cx| {
            let Ok(mut s) = source.lock() else {
                return Poll::Ready(Err(PrefetchError::Malformed));
            };
            let Some(incoming) = s.incoming.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            match ready!(Pin::new(incoming).poll_frame(cx)) {
                None => {
                    s.finished = true;
                    s.incoming = None;
                    Poll::Ready(Ok(()))
                }
                Some(Err(_)) => Poll::Ready(Err(PrefetchError::Malformed)),
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        // Trailers first: nothing to keep, nothing to check.
                        return Poll::Ready(Ok(()));
                    };
                    let total =
                        s.received.fetch_add(data.len() as u64, Ordering::Relaxed) + data.len() as u64;
                    if total > s.max_bytes {
                        s.too_large = true;
                        return Poll::Ready(Err(PrefetchError::TooLarge));
                    }
                    if s.kept_bytes + data.len() <= s.cap {
                        s.kept_bytes += data.len();
                        s.kept.push(data);
                    } else {
                        s.overflowed = true;
                        s.pending = Some(data);
                    }
                    Poll::Ready(Ok(()))
                }
            }
        })
        .await
    }

    /// Whether the client's body, not the upstream, broke an attempt.
    pub fn client_failed(&self) -> bool {
        self.source
            .as_ref()
            .is_some_and(|s| s.lock().map(|s| s.too_large || s.client_error).unwrap_or(false))
    }

    /// Whether the client sent more than the route allows.
    pub fn too_large(&self) -> bool {
        self.source
            .as_ref()
            .is_some_and(|s| s.lock().map(|s| s.too_large).unwrap_or(false))
    }

    /// Bytes received from the client so far (for the access log).
    pub fn received(&self) -> Option<Arc<AtomicU64>> {
        let source = self.source.as_ref()?;
        source.lock().ok().map(|s| s.received.clone())
    }

    /// The body for one attempt: kept frames first, then the rest from the client. Any
    /// earlier attempt's body stops reading (it fails with [`Superseded`]).
    pub fn attempt(&self) -> RequestBody {
        let generation = match &self.source {
            Some(source) => source
                .lock()
                .map(|mut s| {
                    s.generation += 1;
                    s.generation
                })
                .unwrap_or(0),
            None => 0,
        };
        RequestBody {
            source: self.source.clone(),
            position: 0,
            generation,
        }
    }
}

/// One attempt's request body.
#[derive(Debug)]
pub struct RequestBody {
    source: Option<Arc<Mutex<ReplaySource>>>,
    /// Next kept frame to replay.
    position: usize,
    generation: u64,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(source) = self.source.clone() else {
            return Poll::Ready(None);
        };
        let Ok(mut source) = source.lock() else {
            return Poll::Ready(None);
        };
        if source.generation != self.generation {
            return Poll::Ready(Some(Err(Box::new(Superseded))));
        }
        if !source.overflowed {
            if let Some(frame) = source.kept.get(self.position) {
                let frame = frame.clone();
                self.position += 1;
                return Poll::Ready(Some(Ok(Frame::data(frame))));
            }
        }
        if let Some(frame) = source.pending.take() {
            return Poll::Ready(Some(Ok(Frame::data(frame))));
        }
        if source.finished {
            return Poll::Ready(None);
        }
        let Some(incoming) = source.incoming.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = ready!(Pin::new(incoming).poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let total =
                        source.received.fetch_add(data.len() as u64, Ordering::Relaxed) + data.len() as u64;
                    if total > source.max_bytes {
                        source.too_large = true;
                        source.overflowed = true;
                        return Poll::Ready(Some(Err(Box::new(TooLarge))));
                    }
                    if !source.overflowed {
                        if source.kept_bytes + data.len() > source.cap {
                            // Too long to keep: stream the rest, never retry.
                            source.overflowed = true;
                            source.kept = Vec::new();
                        } else {
                            source.kept_bytes += data.len();
                            source.kept.push(data.clone());
                            self.position = source.kept.len();
                        }
                    }
                }
            }
            Some(Err(_)) => {
                source.overflowed = true;
                source.client_error = true;
            }
            None => {
                source.finished = true;
                source.incoming = None;
            }
        }
        Poll::Ready(polled.map(|frame| frame.map_err(|e| Box::new(e) as BoxError)))
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            None => true,
            Some(source) => source
                .lock()
                .map(|s| s.finished && (s.overflowed || self.position >= s.kept.len()))
                .unwrap_or(true),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            None => SizeHint::with_exact(0),
            Some(source) => match source.lock() {
                // Before anything was read the client's own hint (its Content-Length) holds.
                Ok(s) if s.kept_bytes == 0 && !s.overflowed => {
                    s.incoming.as_ref().map(|i| i.size_hint()).unwrap_or_default()
                }
                _ => SizeHint::default(),
            },
        }
    }
}

pin_project! {
    #[project = SourceProj]
    enum Source {
        Upstream { #[pin] body: Incoming },
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
    pub fn upstream(body: Incoming) -> ResponseBody {
        ResponseBody {
            source: Source::Upstream { body },
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
            SourceProj::Boxed { body } => ready!(Pin::new(body).poll_frame(cx)),
        };
        match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.finisher.sent += data.len() as u64;
                    if let Some(capture) = this.finisher.capture.as_mut() {
                        capture.push(data);
                    }
                }
                // hyper stops polling once a sized body is exhausted, so notice the end here.
                let ended = match this.source.as_ref().get_ref() {
                    Source::Upstream { body } => body.is_end_stream(),
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
            Source::Full { data } => data.is_none(),
            Source::Boxed { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Upstream { body } => body.size_hint(),
            Source::Full { data } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Source::Boxed { body } => body.size_hint(),
        }
    }
}
