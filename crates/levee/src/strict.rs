//! A guard in front of hyper's HTTP/1 parser for the one smuggling shape hyper repairs instead
//! of refusing: a request with both `Content-Length` and `Transfer-Encoding`.
//!
//! hyper follows RFC 9112 section 6.3 and frames such a request by `Transfer-Encoding` alone,
//! drops the `Content-Length` and closes the connection afterwards; safe, but the request still
//! goes upstream and Levee's service never learns it was ambiguous. Levee refuses it instead:
//! [`HeadGuard`] follows the request stream (heads, then bodies by their framing) and, when a
//! head carries both headers, corrupts that head's final line feed so that hyper's own parser
//! rejects it with 400 and closes the connection. Nothing reaches the upstream.
//!
//! The guard is deliberately conservative: whenever the stream stops looking like plain
//! HTTP/1 requests it can follow (HTTP/2 preface, a protocol upgrade, a head too large,
//! framing it does not understand), it stops inspecting and passes bytes through untouched.
//! Being wrong can then only mean missing the shape (hyper's repair still applies), never
//! corrupting a valid request.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Heads larger than this are left to hyper (which refuses them).
const MAX_HEAD: usize = 256 * 1024;

#[derive(Debug)]
enum State {
    /// Collecting a request head (into `HeadGuard::head`).
    Head,
    /// Skipping `n` bytes of a Content-Length body.
    Body(u64),
    /// Inside a chunked body.
    Chunked(Chunk),
    /// Not following any more: pass everything through.
    Opaque,
}

#[derive(Debug)]
enum Chunk {
    /// Reading the size line (hex digits, optional extensions) until LF.
    Size {
        size: u64,
        digits: usize,
        in_ext: bool,
    },
    /// Skipping chunk data, then its CRLF.
    Data(u64),
    DataEnd(u8),
    /// Trailer lines until an empty line; `line` counts the current line's bytes.
    Trailers {
        line: usize,
    },
}

/// What a complete head means for the bytes after it.
enum Next {
    Body(u64),
    Chunked,
    Poison,
    Opaque,
}

fn classify(head: &[u8]) -> Next {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        // hyper will refuse it (or it is HTTP/2): nothing more to follow.
        _ => return Next::Opaque,
    }
    let mut length = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut upgrade = request.method == Some("CONNECT");
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            if length.is_none() {
                return Next::Opaque;
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            chunked = header.value.eq_ignore_ascii_case(b"chunked");
        } else if header.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    if transfer_encoding && length.is_some() {
        return Next::Poison;
    }
    if upgrade || (transfer_encoding && !chunked) {
        return Next::Opaque;
    }
    if chunked {
        return Next::Chunked;
    }
    Next::Body(length.unwrap_or(0))
}

/// Wraps a client connection's IO (see the module docs).
#[derive(Debug)]
pub struct HeadGuard<T> {
    inner: T,
    state: State,
    /// The head being collected; cleared, not freed, between requests.
    head: Vec<u8>,
}

impl<T> HeadGuard<T> {
    pub fn new(inner: T) -> HeadGuard<T> {
        HeadGuard {
            inner,
            state: State::Head,
            head: Vec::new(),
        }
    }

    /// Follows `bytes` (just read); returns the index of a byte to corrupt, if any.
    pub(crate) fn follow(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < bytes.len() {
            let rest = bytes.get(i..)?;
            match &mut self.state {
                State::Opaque => return None,
                State::Head => {
                    let (used, poison) = self.head(rest);
                    i += used;
                    if poison {
                        // The head's last byte is in this read: turn its final LF into a
                        // byte no parser accepts there.
                        return Some(i - 1);
                    }
                }
                State::Body(remaining) => {
                    i += skip(remaining, rest);
                    if *remaining == 0 {
                        self.state = State::Head;
                    }
                }
                State::Chunked(chunk) => {
                    let (used, next) = chunk.follow(rest);
                    i += used;
                    if let Some(next) = next {
                        self.state = next;
                    }
                }
            }
        }
        None
    }

    /// Collects one byte of a request head; at the head's end, classifies it and moves on
    /// to its body. Returns the bytes used and whether the head must be poisoned.
    fn head(&mut self, rest: &[u8]) -> (usize, bool) {
        let Some(&byte) = rest.first() else {
            return (0, false);
        };
        let head = &mut self.head;
        // Leading CRLFs between requests are allowed (RFC 9112 2.2).
        if head.is_empty() && matches!(byte, b'\r' | b'\n') {
            return (1, false);
        }
        head.push(byte);
        if (head.len() == 3 && head.as_slice() == b"PRI") || head.len() > MAX_HEAD {
            // HTTP/2 prior knowledge, or a head left to hyper.
            self.state = State::Opaque;
            return (1, false);
        }
        if !(head.ends_with(b"\r\n\r\n") || head.ends_with(b"\n\n")) {
            return (1, false);
        }
        let next = classify(head);
        head.clear();
        let poison = matches!(next, Next::Poison);
        self.state = match next {
            // After a poisoned head hyper closes the connection: nothing more to follow.
            Next::Poison | Next::Opaque => State::Opaque,
            Next::Body(0) => State::Head,
            Next::Body(n) => State::Body(n),
            Next::Chunked => State::Chunked(Chunk::SIZE),
        };
        (1, poison)
    }
}

/// Counts off up to `remaining` bytes of `rest`; returns how many.
fn skip(remaining: &mut u64, rest: &[u8]) -> usize {
    let take = (*remaining).min(rest.len() as u64);
    *remaining -= take;
    take as usize
}

impl Chunk {
    /// The start of a chunk: its size line.
    const SIZE: Chunk = Chunk::Size {
        size: 0,
        digits: 0,
        in_ext: false,
    };

    /// Follows a chunked body over the start of `rest` (which is not empty). Returns the
    /// bytes used and, when the body ended or stopped making sense, the guard's next state.
    fn follow(&mut self, rest: &[u8]) -> (usize, Option<State>) {
        let Some(&byte) = rest.first() else {
            return (0, None);
        };
        match self {
            Chunk::Size { size, digits, in_ext } => match byte {
                b'\n' if *digits == 0 => return (1, Some(State::Opaque)),
                b'\n' if *size == 0 => *self = Chunk::Trailers { line: 0 },
                b'\n' => *self = Chunk::Data(*size),
                b'\r' => {}
                b';' => *in_ext = true,
                _ if *in_ext => {}
                _ => match (byte as char).to_digit(16) {
                    Some(d) if *digits < 16 => {
                        *size = *size * 16 + u64::from(d);
                        *digits += 1;
                    }
                    _ => return (1, Some(State::Opaque)),
                },
            },
            Chunk::Data(remaining) => {
                let used = skip(remaining, rest);
                if *remaining == 0 {
                    *self = Chunk::DataEnd(0);
                }
                return (used, None);
            }
            Chunk::DataEnd(seen) => match (byte, *seen) {
                (b'\r', 0) => *seen = 1,
                (b'\n', _) => *self = Chunk::SIZE,
                _ => return (1, Some(State::Opaque)),
            },
            Chunk::Trailers { line } => match byte {
                b'\n' if *line == 0 => return (1, Some(State::Head)),
                b'\n' => *line = 0,
                b'\r' => {}
                _ => {
                    *line += 1;
                    if *line > MAX_HEAD {
                        return (1, Some(State::Opaque));
                    }
                }
            },
        }
        (1, None)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for HeadGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let poison = buf.filled().get(before..).and_then(|fresh| this.follow(fresh));
                if let Some(index) = poison {
                    if let Some(byte) = buf.filled_mut().get_mut(before + index) {
                        *byte = 0;
                    }
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HeadGuard<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> Vec<Option<usize>> {
        let mut guard = HeadGuard::new(());
        chunks.iter().map(|c| guard.follow(c)).collect()
    }

    #[test]
    fn poisons_content_length_with_transfer_encoding_on_the_final_lf() {
        let head = b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(run(&[head]), vec![Some(head.len() - 1)]);
        // Split anywhere: the poison lands in the read that completes the head.
        let (a, b) = head.split_at(20);
        assert_eq!(run(&[a, b]), vec![None, Some(b.len() - 1)]);
    }

    #[test]
    fn follows_bodies_to_later_heads() {
        let stream: &[u8] = b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloPOST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nTrailer: t\r\n\r\nPOST /s HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(run(&[stream]), vec![Some(stream.len() - 1)]);
        // One byte at a time.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        let results = run(&bytes);
        assert_eq!(results.iter().filter(|r| r.is_some()).count(), 1);
        assert_eq!(results.last(), Some(&Some(0)));
    }

    #[test]
    fn leaves_valid_streams_and_other_protocols_alone() {
        let valid: &[u8] =
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(run(&[valid]), vec![None]);
        let h2: &[u8] =
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(run(&[h2]), vec![None]);
        let upgrade: &[u8] = b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            run(&[upgrade]),
            vec![None],
            "after an upgrade the bytes are not HTTP"
        );
    }
}
