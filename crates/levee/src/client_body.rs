//! The body of a client's request, whichever transport brought it: hyper's for HTTP/1.1 and
//! HTTP/2, a boxed one for HTTP/3 (served by quinn and h3, not hyper) and for bodies Levee
//! decodes on the way (a gRPC-Web `-text` body).
//!
//! An enum rather than a boxed trait object, so the common case (hyper) costs no allocation
//! per request; only HTTP/3 requests pay for the box.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A client's request body.
pub enum ClientBody {
    Hyper(Incoming),
    Boxed(UnsyncBoxBody<Bytes, BoxError>),
}

impl ClientBody {
    /// A body from another transport.
    pub fn boxed(body: impl Body<Data = Bytes, Error = BoxError> + Send + 'static) -> ClientBody {
        ClientBody::Boxed(UnsyncBoxBody::new(body))
    }
}

impl From<Incoming> for ClientBody {
    fn from(body: Incoming) -> ClientBody {
        ClientBody::Hyper(body)
    }
}

impl std::fmt::Debug for ClientBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClientBody::Hyper(_) => "ClientBody::Hyper",
            ClientBody::Boxed(_) => "ClientBody::Boxed",
        })
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Hyper(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(|e| Box::new(e) as BoxError))),
            ClientBody::Boxed(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Hyper(body) => body.is_end_stream(),
            ClientBody::Boxed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Hyper(body) => body.size_hint(),
            ClientBody::Boxed(body) => body.size_hint(),
        }
    }
}
