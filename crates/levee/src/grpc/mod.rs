//! gRPC as a gateway sees it: which requests are gRPC calls, their status codes, the
//! `grpc-timeout` deadline, and the few protobuf bytes the health check needs.
//!
//! A gateway does not need to understand the messages of a gRPC call: a call is an HTTP/2
//! POST whose body is a stream of length-prefixed messages and whose outcome is the
//! `grpc-status` trailer (or header, in a "trailers-only" answer). So Levee proxies gRPC as
//! HTTP/2 with trailers, and reads only the headers and trailers that say how a call ended
//! (see docs/protocols.md). gRPC-Web, which carries trailers inside the body so that browsers
//! can read them, is bridged in [`web`].

pub mod web;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, HeaderValue};

pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
pub static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// How a request speaks gRPC, from its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `application/grpc` (and `+proto`, `+json`...): gRPC over HTTP/2.
    Grpc,
    /// `application/grpc-web` (binary) or `application/grpc-web-text` (base64): a browser's
    /// gRPC-Web call, bridged to gRPC upstream.
    Web { text: bool },
}

/// The gRPC flavor of a request, if its content type is one.
pub fn flavor(headers: &HeaderMap) -> Option<Flavor> {
    let content_type = headers.get(CONTENT_TYPE)?.as_bytes();
    let lower = |prefix: &[u8]| {
        content_type.len() >= prefix.len()
            && content_type
                .iter()
                .zip(prefix)
                .all(|(c, p)| c.eq_ignore_ascii_case(p))
    };
    // Order matters: `application/grpc` is a prefix of the gRPC-Web types.
    if lower(b"application/grpc-web-text") {
        Some(Flavor::Web { text: true })
    } else if lower(b"application/grpc-web") {
        Some(Flavor::Web { text: false })
    } else if lower(b"application/grpc") {
        Some(Flavor::Grpc)
    } else {
        None
    }
}

/// The status codes of gRPC (grpc/doc/statuscodes.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

const NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The codes an availability SLO counts as bad unless it lists its own: the server or the
/// path to it failed (as opposed to the caller's mistakes, such as `INVALID_ARGUMENT`).
pub const DEFAULT_BAD: [u16; 4] = [
    Code::Unknown as u16,
    Code::DeadlineExceeded as u16,
    Code::Internal as u16,
    Code::Unavailable as u16,
];

/// The name of status `code` (`UNAVAILABLE`), or `UNKNOWN` past the known ones, as gRPC
/// libraries read unknown codes.
pub fn code_name(code: u16) -> &'static str {
    NAMES.get(usize::from(code)).copied().unwrap_or("UNKNOWN")
}

/// The code named `name`, in either case (`unavailable`, `UNAVAILABLE`).
pub fn code_by_name(name: &str) -> Option<u16> {
    NAMES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(name))
        .and_then(|i| u16::try_from(i).ok())
}

/// The `grpc-status` in `headers` (trailers, or the headers of a trailers-only answer).
pub fn status(headers: &HeaderMap) -> Option<u16> {
    std::str::from_utf8(headers.get(&GRPC_STATUS)?.as_bytes())
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether a call ending with `code` is a failure of the server or the way to it (for the
/// circuit breaker and outlier detection, as a 5xx is for HTTP).
pub fn server_failure(code: u16) -> bool {
    DEFAULT_BAD.contains(&code)
}

/// The deadline a `grpc-timeout` header states: at most 8 digits and a unit (`H`, `M`, `S`,
/// `m`, `u`, `n`).
pub fn parse_timeout(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?;
    let (digits, unit) = text.split_at_checked(text.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// `timeout` as a `grpc-timeout` value, in the finest unit whose amount fits in 8 digits
/// (rounded up, so a server never sees a deadline earlier than the gateway's).
pub fn format_timeout(timeout: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let nanos = timeout.as_nanos();
    let units: [(u128, &str); 6] = [
        (1, "n"),
        (1_000, "u"),
        (1_000_000, "m"),
        (1_000_000_000, "S"),
        (60_000_000_000, "M"),
        (3_600_000_000_000, "H"),
    ];
    let (amount, unit) = units
        .iter()
        .map(|(per, unit)| (nanos.div_ceil(*per), *unit))
        .find(|(amount, _)| *amount <= MAX)
        .unwrap_or((MAX, "H"));
    HeaderValue::from_str(&format!("{amount}{unit}")).unwrap_or(HeaderValue::from_static("1S"))
}

/// A `grpc-message` value: the text percent-encoded as the gRPC HTTP/2 spec asks (bytes
/// outside printable ASCII, and `%`, as `%XX`).
pub fn encode_message(message: &str) -> HeaderValue {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    HeaderValue::from_str(&out).unwrap_or(HeaderValue::from_static(""))
}

/// One length-prefixed message as gRPC frames it: a flag byte (0: not compressed), the
/// length in 4 bytes, then the bytes.
pub fn frame_message(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(0);
    out.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    out.put_slice(message);
    out.freeze()
}

/// The request body of `grpc.health.v1.Health/Check` for `service`: one message holding
/// field 1 (`service`, a string).
pub fn health_check_request(service: &str) -> Bytes {
    let mut message = Vec::with_capacity(service.len() + 3);
    if !service.is_empty() {
        message.push(0x0a); // field 1, length-delimited
        put_varint(&mut message, service.len() as u64);
        message.extend_from_slice(service.as_bytes());
    }
    frame_message(&message)
}

/// Whether a `grpc.health.v1.Health/Check` answer body says `SERVING` (field 1 = 1).
pub fn health_check_serving(body: &[u8]) -> bool {
    // One uncompressed message: flag, 4-byte length, then the message.
    let Some((&0, rest)) = body.split_first() else {
        return false;
    };
    let Some((length, message)) = rest.split_at_checked(4) else {
        return false;
    };
    let length = u32::from_be_bytes([
        length.first().copied().unwrap_or(0),
        length.get(1).copied().unwrap_or(0),
        length.get(2).copied().unwrap_or(0),
        length.get(3).copied().unwrap_or(0),
    ]) as usize;
    let Some(message) = message.get(..length) else {
        return false;
    };
    // Field 1 as a varint (tag 0x08); the enum value SERVING is 1. Other fields are skipped
    // only in the simple case this message has (it has no others today).
    let mut at = 0;
    let mut serving = false;
    while let Some(&tag) = message.get(at) {
        at += 1;
        match tag {
            0x08 => match read_varint(message, &mut at) {
                Some(value) => serving = value == 1,
                None => return false,
            },
            _ => return false,
        }
    }
    serving
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn read_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_name_the_flavor() {
        let of = |ct: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            flavor(&headers)
        };
        assert_eq!(of("application/grpc"), Some(Flavor::Grpc));
        assert_eq!(of("application/grpc+proto"), Some(Flavor::Grpc));
        assert_eq!(of("Application/GRPC+json"), Some(Flavor::Grpc));
        assert_eq!(of("application/grpc-web"), Some(Flavor::Web { text: false }));
        assert_eq!(
            of("application/grpc-web+proto"),
            Some(Flavor::Web { text: false })
        );
        assert_eq!(
            of("application/grpc-web-text+proto"),
            Some(Flavor::Web { text: true })
        );
        assert_eq!(of("application/json"), None);
    }

    #[test]
    fn timeouts_parse_and_format_in_every_unit() {
        let parse = |s: &str| parse_timeout(&HeaderValue::from_str(s).unwrap());
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "S", "123456789S", "1s", "1.5S", "-1S", "1 S"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        assert_eq!(format_timeout(Duration::from_millis(250)), "250000u");
        assert_eq!(format_timeout(Duration::from_secs(5)), "5000000u");
        assert_eq!(format_timeout(Duration::from_secs(3600)), "3600000m");
        assert_eq!(format_timeout(Duration::from_secs(86_400 * 365)), "31536000S");
        // Rounded up to the unit that fits: never a deadline earlier than the gateway's.
        assert_eq!(
            parse(
                format_timeout(Duration::from_nanos(1_234_567_891))
                    .to_str()
                    .unwrap()
            ),
            Some(Duration::from_micros(1_234_568))
        );
    }

    #[test]
    fn code_names_round_trip() {
        assert_eq!(code_name(14), "UNAVAILABLE");
        assert_eq!(code_name(99), "UNKNOWN");
        assert_eq!(code_by_name("deadline_exceeded"), Some(4));
        assert_eq!(code_by_name("nope"), None);
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(
            encode_message("rate limited: 100% used"),
            "rate limited: 100%25 used"
        );
        assert_eq!(encode_message("é"), "%C3%A9");
    }

    #[test]
    fn the_health_check_messages_match_protobuf() {
        assert_eq!(&health_check_request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(&health_check_request("a")[..], &[0, 0, 0, 0, 3, 0x0a, 1, b'a']);
        assert!(health_check_serving(&[0, 0, 0, 0, 2, 0x08, 1]));
        assert!(!health_check_serving(&[0, 0, 0, 0, 2, 0x08, 2]));
        assert!(!health_check_serving(&[0, 0, 0, 0, 0]));
        assert!(
            !health_check_serving(&[1, 0, 0, 0, 2, 0x08, 1]),
            "a compressed message"
        );
        assert!(!health_check_serving(&[0, 0, 0]));
    }
}
