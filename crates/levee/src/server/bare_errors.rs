//! hyper's own answers to requests its HTTP/1 parser refuses, rewritten into the contract's
//! shape on their way out.
//!
//! When a request head cannot be parsed (a malformed line, an ambiguous framing the
//! `strict` guard poisoned, a URI or head too long), hyper never calls Levee's service: it
//! writes a bare `400`, `414` or `431` with no body and closes the connection. So no request
//! id exists and no JSON body is written. [`ErrorRewriter`] sits on the connection's write
//! side and recognises that answer: a `400`, `414` or `431` head without `x-request-id`
//! (every answer Levee's pipeline writes carries one). It writes in its place the same
//! status with Levee's JSON error body, a fresh `x-request-id` and `connection: close`, and
//! logs the refusal with that id, so a client's bug report can be matched to the log.
//!
//! HTTP/2 cannot be treated the same way: h2 refuses a malformed request with a stream
//! reset, which has no body to carry JSON, and its `431` for an oversized header block is
//! HPACK-encoded inside the codec (see docs/security.md).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{HeaderMap, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::edge;
use crate::headers;

/// Wraps a client connection's IO (see the module docs).
#[derive(Debug)]
pub struct ErrorRewriter<T> {
    inner: T,
    /// The replacement answer still to write, and how much of it was written.
    pending: Option<(Vec<u8>, usize)>,
}

impl<T> ErrorRewriter<T> {
    pub fn new(inner: T) -> ErrorRewriter<T> {
        ErrorRewriter { inner, pending: None }
    }
}

/// The status of a bare parser refusal at the start of `bytes`, if that is what they are.
fn bare_refusal(bytes: &[u8]) -> Option<StatusCode> {
    let status = match bytes.get(..13)? {
        b"HTTP/1.1 400 " | b"HTTP/1.0 400 " => StatusCode::BAD_REQUEST,
        b"HTTP/1.1 414 " | b"HTTP/1.0 414 " => StatusCode::URI_TOO_LONG,
        b"HTTP/1.1 431 " | b"HTTP/1.0 431 " => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        _ => return None,
    };
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = bytes.get(..end)?;
    let has_id = head.split(|&b| b == b'\n').any(|line| {
        line.len() > 13
            && line
                .get(..13)
                .is_some_and(|n| n.eq_ignore_ascii_case(b"x-request-id:"))
    });
    (!has_id).then_some(status)
}

/// The answer written in place of a bare refusal.
fn replacement(status: StatusCode) -> Vec<u8> {
    let request_id = headers::request_id(&HeaderMap::new());
    let id = request_id.to_str().unwrap_or("");
    tracing::info!(
        request_id = id,
        status = status.as_u16(),
        "request refused by the HTTP/1 parser"
    );
    let body = edge::parse_error_body(status, id);
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: {id}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

impl<T: AsyncWrite + Unpin> ErrorRewriter<T> {
    /// Writes what is left of the replacement; ready once all of it is written.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.pending {
            let Some(rest) = bytes.get(*written..).filter(|r| !r.is_empty()) else {
                self.pending = None;
                break;
            };
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ErrorRewriter<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ErrorRewriter<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if let Some(status) = bare_refusal(data) {
            // hyper's answer is taken as written; ours goes out in its place.
            self.pending = Some((replacement(status), 0));
            ready!(self.poll_pending(cx))?;
            return Poll::Ready(Ok(data.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        let first = bufs.iter().find(|b| !b.is_empty());
        if let Some(status) = first.and_then(|b| bare_refusal(b)) {
            self.pending = Some((replacement(status), 0));
            ready!(self.poll_pending(cx))?;
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_bare_refusals_are_recognised() {
        let bare = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        assert_eq!(bare_refusal(bare), Some(StatusCode::BAD_REQUEST));
        let too_large = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(
            bare_refusal(too_large),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
        // Levee's own answers (and anything proxied through it) carry a request id.
        let ours =
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nx-request-id: abc\r\n\r\n{}";
        assert_eq!(bare_refusal(ours), None);
        let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
        assert_eq!(bare_refusal(interim), None);
        assert_eq!(
            bare_refusal(b"HTTP/1.1 400 Bad"),
            None,
            "an incomplete head is left alone"
        );
    }

    #[tokio::test]
    async fn the_replacement_is_levees_json_with_a_request_id() {
        use tokio::io::AsyncWriteExt;
        let (client, mut server) = tokio::io::duplex(4096);
        let mut writer = ErrorRewriter::new(client);
        writer
            .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        writer.shutdown().await.unwrap();
        let mut out = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut server, &mut out)
            .await
            .unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(head.contains("connection: close"), "{head}");
        let id = head
            .lines()
            .find_map(|l| l.strip_prefix("x-request-id: "))
            .unwrap();
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "bad_request");
        assert_eq!(json["error"]["request_id"], id);
    }
}
