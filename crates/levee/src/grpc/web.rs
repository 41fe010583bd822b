//! The gRPC-Web bridge: a browser's gRPC-Web call in, a gRPC call to the upstream out.
//!
//! Browsers cannot read HTTP trailers, so gRPC-Web (grpc/doc/PROTOCOL-WEB.md) moves them into
//! the body: after the messages comes one more length-prefixed frame whose flag byte has its
//! top bit set (`0x80`) and whose payload is the trailers as `name: value\r\n` lines. The
//! `-text` variant base64-encodes the whole body, both ways, for clients that can only handle
//! text. Everything else (paths, messages, metadata headers) is the same as gRPC, so the
//! bridge changes the content type, asks for trailers (`te: trailers`), decodes a `-text`
//! request body, and on the way back turns the upstream's trailers into that last frame.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, TE};
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A `-text` body that is not base64.
#[derive(Debug, thiserror::Error)]
#[error("the gRPC-Web text body is not valid base64")]
pub struct NotBase64;

/// Rewrites a gRPC-Web request's headers into a gRPC request's.
pub fn request_headers(headers: &mut HeaderMap) {
    let proto_suffix = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once('+').map(|(_, suffix)| suffix.to_owned()));
    let content_type = match proto_suffix.as_deref() {
        Some(suffix) => HeaderValue::from_str(&format!("application/grpc+{suffix}"))
            .unwrap_or(HeaderValue::from_static("application/grpc")),
        None => HeaderValue::from_static("application/grpc"),
    };
    headers.insert(CONTENT_TYPE, content_type);
    headers.insert(TE, HeaderValue::from_static("trailers"));
    // The body may change length (base64); the upstream gets it framed by HTTP/2.
    headers.remove(CONTENT_LENGTH);
    headers.remove("x-grpc-web");
}

/// Rewrites a gRPC response's headers into a gRPC-Web response's.
pub fn response_headers(headers: &mut HeaderMap, text: bool) {
    let content_type = if text {
        "application/grpc-web-text+proto"
    } else {
        "application/grpc-web+proto"
    };
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.remove(CONTENT_LENGTH);
}

/// The trailer frame of a gRPC-Web body: `0x80`, the length, then `name: value\r\n` lines.
pub fn trailer_frame(trailers: &HeaderMap) -> Bytes {
    let mut text = Vec::new();
    for (name, value) in trailers {
        text.extend_from_slice(name.as_str().as_bytes());
        text.extend_from_slice(b": ");
        text.extend_from_slice(value.as_bytes());
        text.extend_from_slice(b"\r\n");
    }
    let mut out = BytesMut::with_capacity(5 + text.len());
    out.put_u8(0x80);
    out.put_u32(u32::try_from(text.len()).unwrap_or(u32::MAX));
    out.put_slice(&text);
    out.freeze()
}

/// Decodes a `-text` request body from base64 as it streams (a chunk may end mid-quantum:
/// the rest waits for the next chunk).
pub struct TextDecoder<B> {
    inner: B,
    /// Base64 characters not yet decoded (fewer than 4).
    partial: Vec<u8>,
}

impl<B> TextDecoder<B> {
    pub fn new(inner: B) -> TextDecoder<B> {
        TextDecoder {
            inner,
            partial: Vec::new(),
        }
    }
}

impl<B> Body for TextDecoder<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let polled = ready!(Pin::new(&mut self.inner).poll_frame(cx));
            let frame = match polled {
                None if self.partial.is_empty() => return Poll::Ready(None),
                None => return Poll::Ready(Some(Err(Box::new(NotBase64)))),
                Some(Err(error)) => return Poll::Ready(Some(Err(error.into()))),
                Some(Ok(frame)) => frame,
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => return Poll::Ready(Some(Ok(frame))),
            };
            let mut text = std::mem::take(&mut self.partial);
            text.extend(data.iter().filter(|b| !b.is_ascii_whitespace()));
            let whole = text.len() - text.len() % 4;
            let (ready_part, rest) = text.split_at(whole);
            self.partial = rest.to_vec();
            if ready_part.is_empty() {
                continue;
            }
            // Padding may close any quantum: decode quantum by quantum where it does.
            let mut decoded = Vec::with_capacity(ready_part.len() / 4 * 3);
            for quantum in ready_part.chunks(4) {
                match STANDARD.decode(quantum) {
                    Ok(bytes) => decoded.extend_from_slice(&bytes),
                    Err(_) => return Poll::Ready(Some(Err(Box::new(NotBase64)))),
                }
            }
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(decoded)))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.partial.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// A gRPC response body as a gRPC-Web one: messages pass through (base64-encoded for
/// `-text`), and the trailers become the body's last frame.
pub struct WebResponse<B> {
    inner: B,
    text: bool,
    /// Bytes not yet base64-encoded (`-text`: fewer than 3, encoded with padding at the end).
    pending: Vec<u8>,
    /// Frames ready to hand on.
    out: VecDeque<Bytes>,
    done: bool,
    /// The `grpc-status` of the trailers, once they passed.
    status: Option<u16>,
}

impl<B> WebResponse<B> {
    pub fn new(inner: B, text: bool) -> WebResponse<B> {
        WebResponse {
            inner,
            text,
            pending: Vec::new(),
            out: VecDeque::new(),
            done: false,
            status: None,
        }
    }

    /// The call's `grpc-status`, once its trailers have passed.
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// Queues `bytes` for the client; `last`: nothing follows, so flush `-text` padding.
    fn push(&mut self, bytes: &[u8], last: bool) {
        if !self.text {
            if !bytes.is_empty() {
                self.out.push_back(Bytes::copy_from_slice(bytes));
            }
            return;
        }
        self.pending.extend_from_slice(bytes);
        let whole = if last {
            self.pending.len()
        } else {
            self.pending.len() - self.pending.len() % 3
        };
        if whole > 0 {
            let encoded = STANDARD.encode(self.pending.get(..whole).unwrap_or_default());
            self.pending.drain(..whole);
            self.out.push_back(Bytes::from(encoded));
        }
    }
}

impl<B> Body for WebResponse<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        loop {
            if let Some(bytes) = self.out.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
            if self.done {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.push(&data, false),
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.status = super::status(&trailers);
                            self.push(&trailer_frame(&trailers), true);
                            self.done = true;
                        }
                    }
                },
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => {
                    // No trailers (a trailers-only answer had them in its headers).
                    self.push(&[], true);
                    self.done = true;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.out.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    fn chunks(parts: Vec<Frame<Bytes>>) -> impl Body<Data = Bytes, Error = BoxError> + Unpin {
        StreamBody::new(futures_util::stream::iter(
            parts.into_iter().map(Ok::<_, BoxError>),
        ))
    }

    #[tokio::test]
    async fn a_text_body_decodes_across_every_split() {
        let message = super::super::frame_message(b"hello gRPC-Web");
        let encoded = STANDARD.encode(&message);
        for split in 0..=encoded.len() {
            let (a, b) = encoded.split_at(split);
            let body = chunks(vec![
                Frame::data(Bytes::copy_from_slice(a.as_bytes())),
                Frame::data(Bytes::copy_from_slice(b.as_bytes())),
            ]);
            let decoded = TextDecoder::new(body).collect().await.unwrap().to_bytes();
            assert_eq!(decoded, message, "split at {split}");
        }
        let broken = chunks(vec![Frame::data(Bytes::from_static(b"!!!!"))]);
        assert!(TextDecoder::new(broken).collect().await.is_err());
    }

    #[tokio::test]
    async fn trailers_become_the_last_frame_and_text_is_base64() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("x-trailer", HeaderValue::from_static("kept"));
        let message = super::super::frame_message(b"abcd");
        let upstream = || {
            chunks(vec![
                Frame::data(message.clone()),
                Frame::trailers(trailers.clone()),
            ])
        };
        let binary = WebResponse::new(upstream(), false)
            .collect()
            .await
            .unwrap()
            .to_bytes();
        let mut expected = message.to_vec();
        expected.extend_from_slice(&trailer_frame(&trailers));
        assert_eq!(binary, expected);
        assert_eq!(
            &trailer_frame(&trailers)[5..],
            b"grpc-status: 0\r\nx-trailer: kept\r\n"
        );
        let text = WebResponse::new(upstream(), true)
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(STANDARD.decode(&text).unwrap(), expected);
    }
}
