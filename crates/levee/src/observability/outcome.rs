//! How one upstream attempt ended: the `outcome` label of the upstream metrics, and what the
//! resilience state machines learn from an attempt.

/// How one upstream attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    Status1xx,
    Status2xx,
    Status3xx,
    Status4xx,
    Status5xx,
    ConnectError,
    /// The TLS handshake failed (certificate, name, client certificate, protocol).
    TlsError,
    Timeout,
    Reset,
    /// No target could take the attempt.
    Unavailable,
    /// An HTTP/2 upstream refused the stream unprocessed (`REFUSED_STREAM`, or above a
    /// `GOAWAY`'s last stream id).
    Refused,
}

impl Outcome {
    pub fn from_status(status: u16) -> Outcome {
        match status {
            100..=199 => Outcome::Status1xx,
            200..=299 => Outcome::Status2xx,
            300..=399 => Outcome::Status3xx,
            400..=499 => Outcome::Status4xx,
            _ => Outcome::Status5xx,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Status1xx => "1xx",
            Outcome::Status2xx => "2xx",
            Outcome::Status3xx => "3xx",
            Outcome::Status4xx => "4xx",
            Outcome::Status5xx => "5xx",
            Outcome::ConnectError => "connect_error",
            Outcome::TlsError => "tls_error",
            Outcome::Timeout => "timeout",
            Outcome::Reset => "reset",
            Outcome::Unavailable => "unavailable",
            Outcome::Refused => "refused",
        }
    }
}
