//! Finished traces written straight into an OTLP `ExportTraceServiceRequest` (protobuf), on
//! the export thread.
//!
//! Why not build `opentelemetry_proto` structs and let prost encode them: every attribute of
//! every span was then two owned `String`s, a `KeyValue` and an `AnyValue`, and prost walks
//! each nested message twice (its length, then its bytes). With every request traced that was
//! a tenth of the gateway's CPU under load, on a 2-core machine taken from the workers. Here
//! a span is written field by field into a reused buffer; the only copies are the buffer into
//! the batch and the batch behind its short header. The tests decode the bytes with prost and
//! compare them with the same spans built the generic way.
//!
//! The wire format: each field is a key (field number << 3 | wire type) as a varint, then a
//! varint (type 0), 8 or 4 little-endian bytes (types 1 and 5), or a varint length and the
//! bytes (type 2: strings, bytes, nested messages). Field numbers are those of
//! `opentelemetry/proto/trace/v1/trace.proto` and `common/v1/common.proto`.

use std::fmt::Write as _;

use http::Version;

use super::traces::{FinishedAttempt, FinishedTrace};

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

/// The span flags bits saying whether the parent is known to be remote (OTLP `SpanFlags`).
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;
/// `Span.SpanKind`.
const SERVER: u64 = 2;
const CLIENT: u64 = 3;
/// `Status.StatusCode.STATUS_CODE_ERROR`.
const STATUS_ERROR: u64 = 2;

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn varint_len(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

fn key(out: &mut Vec<u8>, field: u32, wire: u32) {
    varint(out, u64::from(field << 3 | wire));
}

/// A length-delimited field (string, bytes or an encoded message), written even when empty.
fn delimited(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    key(out, field, LEN);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A string or bytes field, left out when empty (proto3's default).
fn text(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    if !bytes.is_empty() {
        delimited(out, field, bytes);
    }
}

/// A `KeyValue` attribute with a string value (`AnyValue.string_value`, field 1).
fn attr_str(out: &mut Vec<u8>, name: &str, value: &str) {
    let any = 1 + varint_len(value.len() as u64) + value.len();
    attr_head(out, name, any);
    delimited(out, 1, value.as_bytes());
}

/// A `KeyValue` attribute with an integer value (`AnyValue.int_value`, field 3).
fn attr_int(out: &mut Vec<u8>, name: &str, value: i64) {
    // int64 travels as the varint of its two's complement.
    let value = value as u64;
    attr_head(out, name, 1 + varint_len(value));
    key(out, 3, VARINT);
    varint(out, value);
}

/// `Span.attributes` (field 9): a `KeyValue` whose `value` (field 2) is `any` bytes long.
fn attr_head(out: &mut Vec<u8>, name: &str, any: usize) {
    let kv = 1 + varint_len(name.len() as u64) + name.len() + 1 + varint_len(any as u64) + any;
    key(out, 9, LEN);
    varint(out, kv as u64);
    delimited(out, 1, name.as_bytes());
    key(out, 2, LEN);
    varint(out, any as u64);
}

/// `Span.status` (field 15): empty (unset) unless the span failed.
fn status(out: &mut Vec<u8>, failed: bool, message: &str) {
    if !failed {
        delimited(out, 15, &[]);
        return;
    }
    let len = if message.is_empty() {
        0
    } else {
        1 + varint_len(message.len() as u64) + message.len()
    } + 2;
    key(out, 15, LEN);
    varint(out, len as u64);
    text(out, 2, message.as_bytes());
    key(out, 3, VARINT);
    varint(out, STATUS_ERROR);
}

/// The fields every span starts with, in field-number order as prost writes them (the flags,
/// field 16, come last: [`close_span`](Writer::close_span)).
struct Head<'a> {
    trace_id: &'a [u8],
    span_id: &'a [u8],
    trace_state: &'a str,
    parent: &'a [u8],
    name: &'a str,
    kind: u64,
    start: u64,
    end: u64,
}

fn head(out: &mut Vec<u8>, h: &Head<'_>) {
    text(out, 1, h.trace_id);
    text(out, 2, h.span_id);
    text(out, 3, h.trace_state.as_bytes());
    text(out, 4, h.parent);
    text(out, 5, h.name.as_bytes());
    key(out, 6, VARINT);
    varint(out, h.kind);
    key(out, 7, FIXED64);
    out.extend_from_slice(&h.start.to_le_bytes());
    key(out, 8, FIXED64);
    out.extend_from_slice(&h.end.to_le_bytes());
}

/// Reused buffers for one batch.
#[derive(Default)]
pub struct Writer {
    /// `ScopeSpans.spans` entries written so far.
    spans: Vec<u8>,
    /// The span being written.
    span: Vec<u8>,
    /// Span names and formatted numbers.
    words: String,
}

impl Writer {
    /// The request holding every span written, under the encoded `resource` and `scope`.
    pub fn finish(&mut self, resource: &[u8], scope: &[u8]) -> Vec<u8> {
        let scope_field = 1 + varint_len(scope.len() as u64) + scope.len();
        let scope_spans = scope_field + self.spans.len();
        let resource_spans = 1
            + varint_len(resource.len() as u64)
            + resource.len()
            + 1
            + varint_len(scope_spans as u64)
            + scope_spans;
        let mut out = Vec::with_capacity(resource_spans + 8);
        key(&mut out, 1, LEN);
        varint(&mut out, resource_spans as u64);
        delimited(&mut out, 1, resource);
        key(&mut out, 2, LEN);
        varint(&mut out, scope_spans as u64);
        delimited(&mut out, 1, scope);
        out.extend_from_slice(&self.spans);
        self.spans.clear();
        out
    }

    /// The server span of `trace` and one client span per attempt.
    pub fn trace(&mut self, trace: &FinishedTrace) {
        self.server_span(trace);
        for attempt in &trace.attempts {
            self.attempt_span(trace, attempt);
        }
    }

    /// Ends the span in `self.span` with its flags and appends it as a `ScopeSpans.spans`
    /// entry (field 2).
    fn close_span(&mut self, flags: u32) {
        key(&mut self.span, 16, FIXED32);
        self.span.extend_from_slice(&flags.to_le_bytes());
        delimited(&mut self.spans, 2, &self.span);
        self.span.clear();
    }

    fn server_span(&mut self, trace: &FinishedTrace) {
        self.words.clear();
        let _ = match &trace.route {
            Some(route) => write!(self.words, "{} {route}", trace.method),
            None => write!(self.words, "{}", trace.method),
        };
        let name_end = self.words.len();
        let _ = write!(self.words, "{}", trace.client_ip);
        let (name, client) = self.words.split_at(name_end);
        let remote = if trace.parent_span_id.is_some() {
            IS_REMOTE
        } else {
            0
        };
        let out = &mut self.span;
        head(
            out,
            &Head {
                trace_id: &trace.trace_id.0,
                span_id: &trace.span_id,
                trace_state: trace
                    .tracestate
                    .as_ref()
                    .and_then(|t| t.to_str().ok())
                    .unwrap_or_default(),
                parent: trace.parent_span_id.as_ref().map_or(&[][..], |p| &p[..]),
                name,
                kind: SERVER,
                start: trace.start_unix_ns,
                end: trace.end_unix_ns,
            },
        );
        attr_str(out, "http.request.method", trace.method.as_str());
        attr_str(out, "url.path", &trace.path);
        attr_str(out, "url.scheme", trace.scheme);
        attr_str(out, "network.protocol.name", "http");
        attr_str(out, "network.protocol.version", protocol_version(trace.protocol));
        attr_str(out, "client.address", client);
        attr_int(out, "http.response.status_code", i64::from(trace.status));
        attr_str(out, "levee.request_id", trace.request_id.to_str().unwrap_or("-"));
        attr_int(out, "levee.attempts", trace.attempts.len() as i64);
        for (name, value) in [
            ("levee.route", trace.route.as_deref()),
            ("levee.consumer", trace.consumer.as_deref()),
            ("levee.upstream", trace.upstream.as_deref()),
            ("levee.degraded", trace.degraded),
            ("error.type", trace.error),
        ] {
            if let Some(value) = value {
                attr_str(out, name, value);
            }
        }
        status(out, trace.status >= 500, trace.error.unwrap_or_default());
        self.close_span(u32::from(trace.flags) | HAS_IS_REMOTE | remote);
    }

    fn attempt_span(&mut self, trace: &FinishedTrace, attempt: &FinishedAttempt) {
        let upstream = &*attempt.upstream;
        let (address, port) = match attempt.target.rsplit_once(':') {
            Some((host, port)) => (
                host.trim_start_matches('[').trim_end_matches(']'),
                port.parse::<i64>().ok(),
            ),
            None => (&*attempt.target, None),
        };
        self.words.clear();
        let _ = write!(self.words, "{} {upstream}", trace.method);
        let name_end = self.words.len();
        // A 5xx answer names the error by its status when no other error was recorded.
        let failed_status = attempt.status.filter(|s| *s >= 500);
        if let Some(status) = failed_status {
            let _ = write!(self.words, "{status}");
        }
        let (name, status_text) = self.words.split_at(name_end);
        let error = attempt.error.or(failed_status.map(|_| status_text));
        let out = &mut self.span;
        head(
            out,
            &Head {
                trace_id: &trace.trace_id.0,
                span_id: &attempt.span_id,
                trace_state: "",
                parent: &trace.span_id,
                name,
                kind: CLIENT,
                start: attempt.start_unix_ns,
                end: attempt.end_unix_ns,
            },
        );
        attr_str(out, "http.request.method", trace.method.as_str());
        attr_str(out, "server.address", address);
        attr_str(out, "levee.upstream", upstream);
        attr_str(out, "levee.target", &attempt.target);
        attr_int(out, "levee.attempt", i64::from(attempt.attempt));
        if let Some(port) = port {
            attr_int(out, "server.port", port);
        }
        if attempt.attempt > 1 {
            attr_int(out, "http.request.resend_count", i64::from(attempt.attempt - 1));
        }
        if let Some(status) = attempt.status {
            attr_int(out, "http.response.status_code", i64::from(status));
        }
        if let Some(error) = error {
            attr_str(out, "error.type", error);
        }
        status(out, error.is_some(), error.unwrap_or_default());
        self.close_span(u32::from(trace.flags) | HAS_IS_REMOTE);
    }
}

fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

#[cfg(test)]
mod tests {
    //! The reference: the same spans built as `opentelemetry_proto` structs (as the exporter
    //! did before it wrote the wire format itself), compared with what the writer's bytes
    //! decode to.

    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Arc;

    use http::{HeaderValue, Method};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
    use prost::Message;

    use super::*;
    use crate::observability::otlp::string;
    use crate::observability::traces::TraceId;

    /// The server span and one client span per attempt, in OTLP form.
    fn to_spans(trace: FinishedTrace) -> Vec<Span> {
        let flags = u32::from(trace.flags);
        let trace_id = trace.trace_id.0.to_vec();
        let mut spans = Vec::with_capacity(1 + trace.attempts.len());
        let mut attributes = vec![
            string("http.request.method", trace.method.as_str()),
            string("url.path", &trace.path),
            string("url.scheme", trace.scheme),
            string("network.protocol.name", "http"),
            string("network.protocol.version", protocol_version(trace.protocol)),
            string("client.address", &trace.client_ip.to_string()),
            int("http.response.status_code", i64::from(trace.status)),
            string("levee.request_id", trace.request_id.to_str().unwrap_or("-")),
            int("levee.attempts", trace.attempts.len() as i64),
        ];
        for (key, value) in [
            ("levee.route", trace.route.as_deref()),
            ("levee.consumer", trace.consumer.as_deref()),
            ("levee.upstream", trace.upstream.as_deref()),
            ("levee.degraded", trace.degraded),
            ("error.type", trace.error),
        ] {
            if let Some(value) = value {
                attributes.push(string(key, value));
            }
        }
        let failed = trace.status >= 500;
        spans.push(Span {
            trace_id: trace_id.clone(),
            span_id: trace.span_id.to_vec(),
            trace_state: trace
                .tracestate
                .as_ref()
                .and_then(|t| t.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
            parent_span_id: trace.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
            flags: flags
                | HAS_IS_REMOTE
                | if trace.parent_span_id.is_some() {
                    IS_REMOTE
                } else {
                    0
                },
            name: match &trace.route {
                Some(route) => format!("{} {route}", trace.method),
                None => trace.method.to_string(),
            },
            kind: SpanKind::Server as i32,
            start_time_unix_nano: trace.start_unix_ns,
            end_time_unix_nano: trace.end_unix_ns,
            attributes,
            status: Some(status(failed, trace.error.unwrap_or_default())),
            ..Default::default()
        });
        for attempt in &trace.attempts {
            spans.push(attempt_span(&trace, attempt, &trace_id, flags));
        }
        spans
    }

    fn attempt_span(trace: &FinishedTrace, attempt: &FinishedAttempt, trace_id: &[u8], flags: u32) -> Span {
        let upstream = &*attempt.upstream;
        let (address, port) = match attempt.target.rsplit_once(':') {
            Some((host, port)) => (
                host.trim_start_matches('[').trim_end_matches(']'),
                port.parse::<i64>().ok(),
            ),
            None => (&*attempt.target, None),
        };
        let mut attributes = vec![
            string("http.request.method", trace.method.as_str()),
            string("server.address", address),
            string("levee.upstream", upstream),
            string("levee.target", &attempt.target),
            int("levee.attempt", i64::from(attempt.attempt)),
        ];
        if let Some(port) = port {
            attributes.push(int("server.port", port));
        }
        if attempt.attempt > 1 {
            attributes.push(int("http.request.resend_count", i64::from(attempt.attempt - 1)));
        }
        if let Some(status) = attempt.status {
            attributes.push(int("http.response.status_code", i64::from(status)));
        }
        let status_text = attempt.status.map(|s| s.to_string());
        let error = attempt.error.or(status_text
            .as_deref()
            .filter(|_| attempt.status.is_some_and(|s| s >= 500)));
        if let Some(error) = error {
            attributes.push(string("error.type", error));
        }
        Span {
            trace_id: trace_id.to_vec(),
            span_id: attempt.span_id.to_vec(),
            parent_span_id: trace.span_id.to_vec(),
            flags: flags | HAS_IS_REMOTE,
            name: format!("{} {upstream}", trace.method),
            kind: SpanKind::Client as i32,
            start_time_unix_nano: attempt.start_unix_ns,
            end_time_unix_nano: attempt.end_unix_ns,
            attributes,
            status: Some(status(error.is_some(), error.unwrap_or_default())),
            ..Default::default()
        }
    }

    fn status(failed: bool, message: &str) -> Status {
        match failed {
            true => Status {
                message: message.to_owned(),
                code: StatusCode::Error as i32,
            },
            false => Status::default(),
        }
    }

    fn int(key: &str, value: i64) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue {
                value: Some(any_value::Value::IntValue(value)),
            }),
            ..Default::default()
        }
    }

    fn attempt(n: u32, status: Option<u16>, error: Option<&'static str>, target: &str) -> FinishedAttempt {
        FinishedAttempt {
            span_id: [n as u8; 8],
            attempt: n,
            upstream: Arc::from("orders"),
            target: Arc::from(target),
            start_unix_ns: 1_700_000_000_000_000_000 + u64::from(n) * 1000,
            end_unix_ns: 1_700_000_000_000_000_000 + u64::from(n) * 1000 + 500,
            status,
            error,
        }
    }

    /// Traces that between them take every branch: retried attempts (a 503, a reset, a
    /// success), an IPv6 target, a remote parent with tracestate, a failed request with
    /// every optional attribute, and a bare one with none.
    fn traces() -> Vec<FinishedTrace> {
        let full = FinishedTrace {
            trace_id: TraceId([7; 16]),
            parent_span_id: Some([9; 8]),
            span_id: [1; 8],
            flags: 1,
            tracestate: Some(HeaderValue::from_static("vendor=abc")),
            start_unix_ns: 1_700_000_000_000_000_000,
            end_unix_ns: 1_700_000_000_123_456_789,
            method: Method::POST,
            path: Arc::from("/orders/42"),
            scheme: "https",
            protocol: Version::HTTP_2,
            client_ip: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
            route: Some(Arc::from("orders")),
            request_id: HeaderValue::from_static("req-1"),
            consumer: Some(Arc::from("acme")),
            status: 503,
            error: Some("upstream_unavailable"),
            degraded: Some("stale"),
            upstream: Some(Arc::from("orders")),
            attempts: vec![
                attempt(1, Some(503), None, "127.0.0.1:8080"),
                attempt(2, None, Some("reset"), "[::1]:9090"),
                attempt(3, Some(200), None, "backend"),
            ],
        };
        let bare = FinishedTrace {
            trace_id: TraceId([3; 16]),
            parent_span_id: None,
            span_id: [4; 8],
            flags: 0,
            tracestate: None,
            start_unix_ns: 5,
            end_unix_ns: 6,
            method: Method::from_bytes(b"PURGE").unwrap(),
            path: Arc::from("/"),
            scheme: "http",
            protocol: Version::HTTP_11,
            client_ip: "::1".parse().unwrap(),
            route: None,
            request_id: HeaderValue::from_static("req-2"),
            consumer: None,
            status: 404,
            error: None,
            degraded: None,
            upstream: None,
            attempts: Vec::new(),
        };
        vec![full, bare]
    }

    #[test]
    fn the_written_request_decodes_to_the_reference_spans() {
        let resource = Resource {
            attributes: vec![string("service.name", "levee-test")],
            ..Default::default()
        };
        let scope = InstrumentationScope {
            name: "levee".into(),
            version: "1.2.3".into(),
            ..Default::default()
        };
        let mut writer = Writer::default();
        for trace in &traces() {
            writer.trace(trace);
        }
        let bytes = writer.finish(&resource.encode_to_vec(), &scope.encode_to_vec());
        let decoded = ExportTraceServiceRequest::decode(&bytes[..]).unwrap();
        let expected = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope.clone()),
                    spans: traces().into_iter().flat_map(to_spans).collect(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        assert_eq!(decoded, expected);
        assert_eq!(bytes, expected.encode_to_vec(), "the same bytes as prost writes");

        // The writer starts afresh for the next batch.
        let again = writer.finish(&resource.encode_to_vec(), &scope.encode_to_vec());
        let empty = ExportTraceServiceRequest::decode(&again[..]).unwrap();
        assert!(empty.resource_spans[0].scope_spans[0].spans.is_empty());
    }

    #[test]
    fn varint_lengths_match_the_encoding() {
        for value in [0, 1, 127, 128, 16_383, 16_384, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            varint(&mut out, value);
            assert_eq!(out.len(), varint_len(value), "{value}");
        }
    }
}
