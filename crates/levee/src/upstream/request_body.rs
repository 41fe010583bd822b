//! The client's request body on its way upstream: streamed as it arrives and, up to a cap,
//! kept so that a failed attempt can be retried with the same body.
//!
//! It lives with the upstream because only the upstream's retry loop replays it; the
//! response side, which carries the request's record, is the `body` module.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use crate::client_body::{BoxError, ClientBody};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// The client's body, shared by every attempt of one request.
///
/// Frames are streamed upstream as they arrive (nothing waits for the whole body) and, up to
/// `cap` bytes, kept: an attempt that fails can then be retried with the same body, replayed
/// from memory and continued from the client. A body longer than `cap` stops being kept and
/// makes the request unretryable, so memory per request stays bounded.
#[derive(Debug)]
struct ReplaySource {
    incoming: Option<ClientBody>,
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
    pub fn new(incoming: ClientBody, cap: usize, max_bytes: u64) -> ReplayableBody {
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

#[cfg(test)]
impl RequestBody {
    /// A body with nothing in it.
    pub fn empty() -> RequestBody {
        RequestBody {
            source: None,
            position: 0,
            generation: 0,
        }
    }
}

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
        Poll::Ready(polled)
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
