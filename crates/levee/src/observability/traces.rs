//! Trace context and spans: W3C `traceparent`/`tracestate` in, one server span per request and
//! one client span per upstream attempt out.
//!
//! Every request joins a trace: the caller's when it sent a valid `traceparent`, a new one
//! otherwise. Each upstream attempt gets a span id of its own, sent upstream in `traceparent`,
//! so the upstream's spans hang under the attempt that reached it and a retried request shows
//! as two sibling attempts under the gateway's server span.
//!
//! Why spans are not built through an OpenTelemetry SDK tracer: the pipeline already keeps a
//! request's record (the `record` module) with everything a span needs, recorded once when the
//! response ends. A recorded trace costs a few ids and timestamps on the request and one queue
//! push at the end; an unrecorded one costs nothing beyond the `traceparent` it must forward
//! anyway. The spans are turned into OTLP (the official protobuf types) on the exporter's own
//! thread ([`super::otlp`]), where a full queue or a failed collector is counted, never felt by
//! requests. Sampling follows the SDK's default, `ParentBased(TraceIdRatioBased)`.

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Version};
use tokio::time::Instant;

use super::otlp::Exporter;

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The sampled bit of the trace flags.
const SAMPLED: u8 = 0x01;

/// A 16-byte W3C trace id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceId(pub [u8; 16]);

impl TraceId {
    fn random() -> TraceId {
        TraceId(fastrand::u128(1..).to_be_bytes())
    }

    /// The 32 lowercase hex digits of the id.
    pub fn hex(&self) -> String {
        hex(&self.0)
    }
}

/// An 8-byte span id.
pub type SpanId = [u8; 8];

fn random_span_id() -> SpanId {
    fastrand::u64(1..).to_be_bytes()
}

/// Decides which traces are recorded: the caller's decision when there is one and
/// `parent_based` is set, else a fixed share of trace ids (OpenTelemetry's
/// `TraceIdRatioBased`, so every service using the same ratio agrees on the same traces).
#[derive(Debug, Clone, Copy)]
pub struct Sampler {
    /// Traces whose low 63 id bits are below this are recorded.
    threshold: u64,
    parent_based: bool,
}

impl Sampler {
    pub fn new(ratio: f64, parent_based: bool) -> Sampler {
        let threshold = if ratio >= 1.0 {
            u64::MAX
        } else {
            (ratio.max(0.0) * (1u64 << 63) as f64) as u64
        };
        Sampler {
            threshold,
            parent_based,
        }
    }

    fn sample(&self, trace_id: &TraceId, parent_flags: Option<u8>) -> bool {
        if let (true, Some(flags)) = (self.parent_based, parent_flags) {
            return flags & SAMPLED != 0;
        }
        let mut low = [0u8; 8];
        if let Some(bytes) = trace_id.0.get(8..16) {
            low.copy_from_slice(bytes);
        }
        (u64::from_be_bytes(low) >> 1) < self.threshold
    }
}

/// Spans are recorded when this is present: the sampler and the queue to the exporter.
#[derive(Debug, Clone)]
pub struct Tracer {
    pub sampler: Sampler,
    pub exporter: Exporter,
}

/// A request's place in its trace.
#[derive(Debug)]
pub struct TraceContext {
    pub trace_id: TraceId,
    /// The caller's span, when it sent a valid `traceparent`.
    pub parent_span_id: Option<SpanId>,
    /// The gateway's server span.
    pub span_id: SpanId,
    pub flags: u8,
    /// The caller's `tracestate`, kept only with a valid `traceparent` (W3C Trace Context 3.3).
    pub tracestate: Option<HeaderValue>,
    /// Upstream attempts; `Some` only when this trace is recorded.
    pub attempts: Option<Vec<AttemptSpan>>,
}

/// One upstream attempt as a span.
#[derive(Debug)]
pub struct AttemptSpan {
    pub span_id: SpanId,
    /// 1 for the first try.
    pub attempt: u32,
    pub upstream: Arc<str>,
    pub target: Arc<str>,
    pub started: Instant,
    /// When the response head arrived or the attempt failed.
    pub ended: Option<Instant>,
    pub status: Option<u16>,
    /// How the attempt failed (`timeout`, `connect_error`, `reset`, ...).
    pub error: Option<&'static str>,
}

impl TraceContext {
    /// Joins the caller's trace or starts one. With a tracer, the trace is recorded when its
    /// sampler says so; without one nothing is recorded, and a new trace is marked sampled so
    /// that services behind the gateway still see one trace per request.
    pub fn start(headers: &HeaderMap, tracer: Option<&Tracer>) -> TraceContext {
        let parent = headers
            .get(&TRACEPARENT)
            .and_then(|v| parse_traceparent(v.as_bytes()));
        let (trace_id, parent_span_id, parent_flags) = match parent {
            Some((trace_id, span_id, flags)) => (trace_id, Some(span_id), Some(flags)),
            None => (TraceId::random(), None, None),
        };
        let recorded = match tracer {
            Some(tracer) => tracer.sampler.sample(&trace_id, parent_flags),
            None => parent_flags.is_none_or(|f| f & SAMPLED != 0),
        };
        let flags = (parent_flags.unwrap_or(0) & !SAMPLED) | if recorded { SAMPLED } else { 0 };
        let tracestate = match parent_span_id {
            Some(_) => joined(headers, &TRACESTATE),
            None => None,
        };
        TraceContext {
            trace_id,
            parent_span_id,
            span_id: random_span_id(),
            flags,
            tracestate,
            attempts: (recorded && tracer.is_some()).then(Vec::new),
        }
    }

    /// True when this request's spans will be exported.
    pub fn recording(&self) -> bool {
        self.attempts.is_some()
    }

    /// Opens the span of an upstream attempt and returns the `traceparent` to send with it.
    pub fn start_attempt(
        &mut self,
        attempt: u32,
        upstream: &Arc<str>,
        target: &Arc<str>,
        now: Instant,
    ) -> HeaderValue {
        let span_id = random_span_id();
        if let Some(attempts) = &mut self.attempts {
            attempts.push(AttemptSpan {
                span_id,
                attempt,
                upstream: upstream.clone(),
                target: target.clone(),
                started: now,
                ended: None,
                status: None,
                error: None,
            });
        }
        traceparent(&self.trace_id, &span_id, self.flags)
    }

    /// Closes the latest attempt's span with its answer or failure.
    pub fn end_attempt(&mut self, now: Instant, status: Option<u16>, error: Option<&'static str>) {
        if let Some(span) = self.attempts.as_mut().and_then(|a| a.last_mut()) {
            span.ended = Some(now);
            span.status = status;
            span.error = error;
        }
    }

    /// The `tracestate` to forward, if the caller sent one with a valid `traceparent`.
    pub fn tracestate(&self) -> Option<&HeaderValue> {
        self.tracestate.as_ref()
    }
}

/// Every value of a header as one comma-joined value (list headers may be split in lines).
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let mut rest = values.peekable();
    if rest.peek().is_none() {
        return Some(first.clone());
    }
    let mut all = first.as_bytes().to_vec();
    for value in rest {
        all.push(b',');
        all.extend_from_slice(value.as_bytes());
    }
    HeaderValue::from_bytes(&all).ok()
}

/// `00-<trace id>-<span id>-<flags>`.
pub fn traceparent(trace_id: &TraceId, span_id: &SpanId, flags: u8) -> HeaderValue {
    // One allocation: this runs for every upstream attempt.
    let mut out = Vec::with_capacity(55);
    out.extend_from_slice(b"00-");
    crate::hex::encode_into(&trace_id.0, &mut out);
    out.push(b'-');
    crate::hex::encode_into(span_id, &mut out);
    out.push(b'-');
    crate::hex::encode_into(&[flags], &mut out);
    HeaderValue::from_maybe_shared(bytes::Bytes::from(out)).unwrap_or_else(|_| {
        HeaderValue::from_static("00-00000000000000000000000000000001-0000000000000001-01")
    })
}

/// Parses `<version>-<32 hex>-<16 hex>-<2 hex>` (W3C Trace Context level 1; a later version
/// may append fields, version `ff` is invalid). All-zero ids are invalid per the spec.
pub fn parse_traceparent(value: &[u8]) -> Option<(TraceId, SpanId, u8)> {
    if value.len() < 55 {
        return None;
    }
    let seps = [2, 35, 52].iter().all(|&i| value.get(i) == Some(&b'-'));
    let version = value.get(0..2)?;
    let versioned_ok = version != b"ff" && (version != b"00" || value.len() == 55);
    // A later version may only add fields after another dash.
    let tail_ok = value.len() == 55 || value.get(55) == Some(&b'-');
    if !seps || !versioned_ok || !tail_ok || !crate::hex::is_lower(version) {
        return None;
    }
    let mut trace_id = [0u8; 16];
    let mut span_id = [0u8; 8];
    let mut flags = [0u8; 1];
    unhex(value.get(3..35)?, &mut trace_id)?;
    unhex(value.get(36..52)?, &mut span_id)?;
    unhex(value.get(53..55)?, &mut flags)?;
    let nonzero = |b: &[u8]| b.iter().any(|x| *x != 0);
    (nonzero(&trace_id) && nonzero(&span_id)).then_some((TraceId(trace_id), span_id, flags[0]))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    crate::hex::encode(bytes)
}

fn unhex(text: &[u8], out: &mut [u8]) -> Option<()> {
    if !crate::hex::is_lower(text) {
        return None;
    }
    crate::hex::decode_into(text, out)
}

/// A finished request's spans, handed to the exporter.
#[derive(Debug)]
pub struct FinishedTrace {
    pub trace_id: TraceId,
    pub parent_span_id: Option<SpanId>,
    pub span_id: SpanId,
    pub flags: u8,
    pub tracestate: Option<HeaderValue>,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub method: Method,
    pub path: Arc<str>,
    pub scheme: &'static str,
    pub protocol: Version,
    pub client_ip: IpAddr,
    pub route: Option<Arc<str>>,
    pub request_id: HeaderValue,
    pub consumer: Option<Arc<str>>,
    pub status: u16,
    pub error: Option<&'static str>,
    pub degraded: Option<&'static str>,
    pub upstream: Option<Arc<str>>,
    pub attempts: Vec<FinishedAttempt>,
}

/// One upstream attempt, with wall-clock times.
#[derive(Debug)]
pub struct FinishedAttempt {
    pub span_id: SpanId,
    pub attempt: u32,
    pub upstream: Arc<str>,
    pub target: Arc<str>,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub status: Option<u16>,
    pub error: Option<&'static str>,
}

impl FinishedTrace {
    /// The server span plus one per attempt.
    pub fn span_count(&self) -> u64 {
        1 + self.attempts.len() as u64
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn parses_and_writes_traceparent() {
        let (trace, span, flags) = parse_traceparent(PARENT.as_bytes()).unwrap();
        assert_eq!(trace.hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&span), "00f067aa0ba902b7");
        assert_eq!(flags, 1);
        assert_eq!(traceparent(&trace, &span, flags).to_str().unwrap(), PARENT);
        // A later version may carry more fields.
        let v1 = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
        assert!(parse_traceparent(v1.as_bytes()).is_some());
    }

    #[test]
    fn refuses_invalid_traceparents() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad.as_bytes()).is_none(), "{bad}");
        }
    }

    #[test]
    fn joins_the_callers_trace_with_a_new_span_per_attempt() {
        let h = headers(&[
            ("traceparent", PARENT),
            ("tracestate", "a=1"),
            ("tracestate", "b=2"),
        ]);
        let mut trace = TraceContext::start(&h, None);
        assert_eq!(trace.trace_id.hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&trace.parent_span_id.unwrap()), "00f067aa0ba902b7");
        assert_eq!(trace.tracestate().unwrap(), "a=1,b=2");
        assert!(!trace.recording(), "nothing is recorded without a tracer");
        let now = Instant::now();
        let target: Arc<str> = Arc::from("127.0.0.1:1");
        let first = trace.start_attempt(1, &target, &target, now);
        let second = trace.start_attempt(2, &target, &target, now);
        assert_ne!(first, second);
        for sent in [&first, &second] {
            let (id, span, flags) = parse_traceparent(sent.as_bytes()).unwrap();
            assert_eq!(id, trace.trace_id);
            assert_ne!(hex(&span), "00f067aa0ba902b7");
            assert_eq!(flags, 1);
        }
    }

    #[test]
    fn a_new_trace_drops_a_stray_tracestate() {
        let h = headers(&[("traceparent", "garbage"), ("tracestate", "a=1")]);
        let trace = TraceContext::start(&h, None);
        assert!(trace.parent_span_id.is_none());
        assert!(trace.tracestate().is_none());
        assert_eq!(trace.flags, SAMPLED);
    }

    #[test]
    fn ratio_sampling_follows_the_low_bits_of_the_trace_id() {
        let none = Sampler::new(0.0, false);
        let all = Sampler::new(1.0, false);
        let half = Sampler::new(0.5, false);
        let low = TraceId([0; 16]);
        let mut high = [0u8; 16];
        high[8] = 0xff;
        let high = TraceId(high);
        assert!(!none.sample(&low, None));
        assert!(all.sample(&high, None));
        assert!(half.sample(&low, None));
        assert!(!half.sample(&high, None));
        // Over many random ids, about half are kept.
        let kept = (0..10_000)
            .filter(|_| half.sample(&TraceId::random(), None))
            .count();
        assert!((4_500..5_500).contains(&kept), "{kept}");
    }

    #[test]
    fn parent_based_sampling_follows_the_caller() {
        let ratio_zero = Sampler::new(0.0, true);
        assert!(ratio_zero.sample(&TraceId::random(), Some(1)));
        assert!(!Sampler::new(1.0, true).sample(&TraceId::random(), Some(0)));
        assert!(!ratio_zero.sample(&TraceId::random(), None));
        // Not parent based: the ratio decides even with a caller.
        assert!(Sampler::new(1.0, false).sample(&TraceId::random(), Some(0)));
    }
}
