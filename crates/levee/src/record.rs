//! What one request leaves behind: its record, gathered as it travels through the pipeline
//! and written once, when its response has finished streaming or was abandoned, so duration
//! and bytes cover the whole exchange.
//!
//! The record holds what must live as long as the response (the places it took under the
//! in-flight cap, in a bulkhead, on a target) and gives them back when it is written. It sits
//! above the features whose facts it carries (SLOs, chaos experiments, upstream guards) and
//! below everything that builds responses (the response body carries it), and it writes to
//! [`crate::observability`], which records plain data.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method, Version};
use tokio::time::Instant;

use crate::observability::access_log::{AccessLog, AccessRecord};
use crate::observability::call_log::{self, CallRecord};
use crate::observability::llm_call::LlmCall;
use crate::observability::metrics::{method_label, MetricsShard};
use crate::observability::traces::{FinishedAttempt, FinishedTrace, TraceContext, Tracer};
use crate::observability::UpstreamFacts;

/// What one worker needs to record requests.
#[derive(Debug, Clone)]
pub struct Recorder {
    pub metrics: MetricsShard,
    pub access_log: AccessLog,
    pub call_log: Option<call_log::CallLog>,
    /// Present when spans are exported.
    pub tracer: Option<Tracer>,
    /// SLO counters.
    pub slo: Arc<crate::slo::SloEngine>,
    /// Chaos experiments: the one running on a route injects its fault and counts its
    /// requests.
    pub experiments: Arc<crate::chaos::experiments::Experiments>,
}

/// A request in flight; recorded exactly once, when finished or dropped.
#[derive(Debug)]
pub struct RequestRecord {
    pub recorder: Arc<Recorder>,
    pub started: Instant,
    pub wall_start: SystemTime,
    pub request_id: HeaderValue,
    pub trace: TraceContext,
    pub client_ip: IpAddr,
    pub listener: Arc<str>,
    /// `http` or `https`.
    pub scheme: &'static str,
    pub version: Version,
    pub method: Method,
    /// Shared by the call-log row, the span and the access-log line.
    pub path: Arc<str>,
    pub route: Option<Arc<str>>,
    pub status: u16,
    pub error: Option<&'static str>,
    pub upstream: Option<UpstreamFacts>,
    pub bytes_in: Option<Arc<AtomicU64>>,
    /// Keeps the request counted as in flight on its target until the response ends.
    pub inflight: Option<crate::upstream::InflightGuard>,
    /// The request's place under the worker's in-flight cap, held until the response ends.
    pub admission: Option<crate::admission::LoadPermit>,
    /// The request's place in its upstream's bulkhead, held until the response ends.
    pub bulkhead: Option<levee_resilience::BulkheadPermit>,
    /// Upstream attempts made (0 when none was).
    pub attempts: u32,
    /// Time spent waiting for upstream answers (each attempt, from sending to its response
    /// head, or to its failure), summed.
    pub upstream_wait: Duration,
    /// When the response head was handed to the client's connection.
    pub head_at: Option<Instant>,
    /// The status a route fallback replaced, if it did.
    pub fallback_for: Option<u16>,
    /// How a failure was replaced: `stale` or `fallback`.
    pub degraded: Option<&'static str>,
    /// The authenticated caller.
    pub consumer: Option<Arc<str>>,
    /// The fault injected into this request (`abort` or `delay`), if any.
    pub fault: Option<&'static str>,
    /// The LLM call's accounting, on AI gateway routes.
    pub llm: Option<Arc<LlmCall>>,
    /// An MCP tool call: its server, the tool (as the client named it) and its outcome.
    pub mcp_call: Option<(Arc<str>, Arc<str>, &'static str)>,
    /// What the route's guardrails did (shared with a streamed answer's guard).
    pub guard_verdicts: Option<Arc<crate::observability::verdicts::GuardVerdicts>>,
    /// The upstream the request was sent to (the route's own, or its canary).
    pub sent_to: Option<Arc<str>>,
    /// The chaos experiment running on the route, which counts this request in its report.
    pub experiment: Option<Arc<crate::chaos::experiments::Experiment>>,
    /// A gRPC call's final `grpc-status` (from the answer's headers or trailers, or the
    /// gateway's own refusal).
    pub grpc_status: Option<u16>,
    /// The request's count on its client connection (which is not idle while any is held).
    pub connection: Option<crate::admission::LoadPermit>,
    /// Set once metrics and the log line are written, so that happens exactly once.
    pub emitted: bool,
}

/// A method as the call log stores it: the standard ones without a copy.
fn method_text(method: &Method) -> Cow<'static, str> {
    match method_label(method) {
        "OTHER" => Cow::Owned(method.as_str().to_owned()),
        label => Cow::Borrowed(label),
    }
}

static NO_ROUTE: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(""));

impl RequestRecord {
    /// Records metrics and the access log line. `completed` is false when the response body
    /// was cut short.
    pub fn finish(mut self, bytes_out: u64, completed: bool) {
        self.emit(bytes_out, completed);
    }

    fn emit(&mut self, bytes_out: u64, completed: bool) {
        if self.emitted {
            return;
        }
        self.emitted = true;
        self.inflight = None;
        self.bulkhead = None;
        self.admission = None;
        self.connection = None;
        if self.status == 0 {
            // Dropped before any response existed: the client went away (nginx's 499).
            self.status = 499;
            self.error = Some("client_closed");
        }
        let elapsed = self.started.elapsed();
        self.count(elapsed);
        let bytes_in = self
            .bytes_in
            .as_ref()
            .map(|b| b.load(Ordering::Relaxed))
            .unwrap_or(0);
        if self.recorder.call_log.is_some() {
            self.log_call(elapsed, bytes_in, bytes_out);
        }
        if self.trace.recording() && self.recorder.tracer.is_some() {
            let trace = self.finished_trace(elapsed);
            if let Some(tracer) = &self.recorder.tracer {
                tracer.exporter.export(trace);
            }
        }
        if self.recorder.access_log.wants(self.status) {
            self.log_access(elapsed, bytes_in, bytes_out, completed);
        }
    }

    /// Metrics, SLO counters and the running experiment's report.
    /// Levee's own time: until the response head was handed over, less the upstream waits.
    fn overhead(&self) -> Option<Duration> {
        let head = self.head_at?;
        Some(
            head.saturating_duration_since(self.started)
                .saturating_sub(self.upstream_wait),
        )
    }

    fn count(&self, elapsed: Duration) {
        {
            let mut shard = self.recorder.metrics.lock();
            let route = self.route.as_ref().unwrap_or(&NO_ROUTE);
            shard.record_request(
                route,
                method_label(&self.method),
                self.status,
                elapsed,
                self.overhead(),
            );
            if let Some(up) = &self.upstream {
                shard.record_upstream(&up.upstream, &up.target, up.outcome, up.elapsed);
            }
            if let (Some(code), Some(route)) = (self.grpc_status, &self.route) {
                shard.record_grpc(route, code);
            }
            if let (Some(verdicts), Some(route)) = (&self.guard_verdicts, &self.route) {
                for verdict in verdicts.all() {
                    shard
                        .ai
                        .record_guardrail(route, &verdict.guardrail, verdict.action);
                }
            }
            if let Some(call) = &self.llm {
                call.settle();
                let key = (call.provider.clone(), call.model.clone());
                shard
                    .ai
                    .record_llm(&key, call.usage(), call.cost_usd(), self.attempts > 1);
                if let (Some(route), Some(overhead)) = (&self.route, self.overhead()) {
                    shard.ai.record_overhead(route, overhead + call.levee_time());
                }
            }
        }
        // SLO counters: injected faults count like real ones, marked as injected.
        if let Some(route) = &self.route {
            self.recorder.slo.record(
                route,
                self.consumer.as_deref(),
                self.sent_to.as_deref(),
                crate::slo::Answered {
                    status: self.status,
                    replaced: self.fallback_for,
                    grpc_status: self.grpc_status,
                },
                elapsed,
                self.fault.is_some(),
            );
        }
        if let Some(experiment) = &self.experiment {
            experiment.observe(self.status, self.fault);
        }
    }

    fn log_call(&self, elapsed: Duration, bytes_in: u64, bytes_out: u64) {
        let Some(calls) = &self.recorder.call_log else {
            return;
        };
        let usage = self.llm.as_ref().map(|c| c.usage());
        calls.log(CallRecord {
            time_ms: self
                .wall_start
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
            request_id: self.request_id.to_str().unwrap_or("-").to_owned(),
            trace_id: Some(self.trace.trace_id.hex()),
            route: self.route.clone(),
            consumer: self.consumer.clone(),
            method: method_text(&self.method),
            path: self.path.clone(),
            status: self.status,
            error: self
                .error
                .or_else(|| self.late_error())
                .or_else(|| self.mcp_call.as_ref().map(|c| c.2).filter(|o| *o != "ok"))
                .map(Cow::Borrowed),
            upstream: self
                .upstream
                .as_ref()
                .map(|u| u.upstream.clone())
                .or_else(|| self.mcp_call.as_ref().map(|c| c.0.clone())),
            target: self
                .upstream
                .as_ref()
                .map(|u| u.target.clone())
                .or_else(|| self.mcp_call.as_ref().map(|c| c.1.clone())),
            attempts: self.attempts,
            latency_ms: elapsed.as_secs_f64() * 1000.0,
            upstream_ms: self.upstream.as_ref().map(|u| u.elapsed.as_secs_f64() * 1000.0),
            bytes_in,
            bytes_out,
            provider: self.llm.as_ref().map(|c| c.provider.clone()),
            model: self.llm.as_ref().map(|c| c.model.clone()),
            prompt_tokens: usage.map(|u| u.prompt),
            completion_tokens: usage.map(|u| u.completion),
            cached_tokens: usage.map(|u| u.cached),
            cache_write_tokens: usage.map(|u| u.cache_write),
            reasoning_tokens: usage.map(|u| u.reasoning),
            cost_usd: self.llm.as_ref().map(|c| c.cost_usd()),
            fault: self.fault.map(Cow::Borrowed),
            grpc_status: self.grpc_status,
            guardrails: self
                .guard_verdicts
                .as_ref()
                .and_then(|v| v.json())
                .and_then(|text| serde_json::from_str(&text).ok()),
            // The PostgreSQL writer stores the replica's node id with every row.
            node: None,
        });
    }

    /// The error the logs show for an LLM stream that ended in an error event after its
    /// head (the status stays the 200 the client got): a guardrail stopped it, or it broke
    /// off.
    fn late_error(&self) -> Option<&'static str> {
        self.guard_verdicts
            .as_ref()
            .and_then(|v| v.answer_blocked())
            .or_else(|| {
                self.llm
                    .as_ref()
                    .filter(|c| c.interrupted())
                    .map(|_| "llm_stream_interrupted")
            })
    }

    /// The access log line; it takes the record's strings, so it comes last.
    fn log_access(&mut self, elapsed: Duration, bytes_in: u64, bytes_out: u64, completed: bool) {
        let upstream_ms = self.upstream.as_ref().map(|u| u.elapsed.as_secs_f64() * 1000.0);
        let (upstream, target) = match self.upstream.take() {
            Some(u) => (Some(u.upstream), Some(u.target)),
            None => (None, None),
        };
        self.recorder.access_log.log(AccessRecord {
            time: self.wall_start,
            request_id: self.request_id.clone(),
            trace_id: self.trace.trace_id,
            client_ip: self.client_ip,
            listener: self.listener.clone(),
            protocol: self.version,
            method: std::mem::replace(&mut self.method, Method::GET),
            path: self.path.clone(),
            route: self.route.take(),
            upstream,
            target,
            status: self.status,
            error: self.error.or_else(|| self.late_error()),
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            upstream_ms,
            bytes_in,
            bytes_out,
            completed,
            attempts: self.attempts,
            fallback_for: self.fallback_for,
            degraded: self.degraded,
            consumer: self.consumer.take(),
            llm: self.llm.take(),
            fault: self.fault,
            grpc_status: self.grpc_status,
        });
    }
}

impl RequestRecord {
    /// The request's spans with wall-clock times (the monotonic offsets from its start added
    /// to the wall-clock start, so clock steps cannot make a span end before it began).
    fn finished_trace(&mut self, elapsed: Duration) -> FinishedTrace {
        let start_unix_ns = self
            .wall_start
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let at = |offset: Duration| {
            start_unix_ns.saturating_add(u64::try_from(offset.as_nanos()).unwrap_or(u64::MAX))
        };
        let mut spans = self.trace.attempts.take().unwrap_or_default();
        // The attempt whose answer was served lasts until that answer has streamed out.
        if let Some(last) = spans.last_mut().filter(|s| s.status.is_some()) {
            last.ended = None;
        }
        let attempts = spans
            .into_iter()
            .map(|span| FinishedAttempt {
                span_id: span.span_id,
                attempt: span.attempt,
                upstream: span.upstream,
                target: span.target,
                start_unix_ns: at(span.started.saturating_duration_since(self.started)),
                end_unix_ns: at(span
                    .ended
                    .map_or(elapsed, |e| e.saturating_duration_since(self.started))),
                status: span.status,
                error: span.error,
            })
            .collect();
        FinishedTrace {
            trace_id: self.trace.trace_id,
            parent_span_id: self.trace.parent_span_id,
            span_id: self.trace.span_id,
            flags: self.trace.flags,
            tracestate: self.trace.tracestate.take(),
            start_unix_ns,
            end_unix_ns: at(elapsed),
            method: self.method.clone(),
            path: self.path.clone(),
            scheme: self.scheme,
            protocol: self.version,
            client_ip: self.client_ip,
            route: self.route.clone(),
            request_id: self.request_id.clone(),
            consumer: self.consumer.clone(),
            status: self.status,
            error: self.error,
            degraded: self.degraded,
            upstream: self.upstream.as_ref().map(|u| u.upstream.clone()),
            attempts,
        }
    }
}

impl Drop for RequestRecord {
    /// A request abandoned before it finished (client disconnect, stream reset, shutdown
    /// past the grace period) is still counted and logged.
    fn drop(&mut self) {
        self.emit(0, false);
    }
}
