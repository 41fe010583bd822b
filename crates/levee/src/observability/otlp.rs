//! OTLP/HTTP span export: a bounded queue, one background thread that batches finished traces
//! and posts them to the collector as protobuf `ExportTraceServiceRequest`s, and counters for
//! what got through and what did not.
//!
//! Requests only ever `try_send` into the queue. When the collector is slow or down, the queue
//! fills and further spans are dropped and counted (`levee_trace_spans_dropped_total`); a batch
//! the collector refuses or does not answer within `export_timeout` is dropped and counted
//! too. Nothing is retried: a trace is worth less than the memory and the head-of-line wait a
//! retry queue would cost, and the next batch tries again anyway.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use tokio::sync::watch;

use super::metrics::Metrics;
use super::traces::{FinishedAttempt, FinishedTrace};
use crate::config::spec::TracingSpec;

/// The export thread, stopped by [`ExportThread::stop`] once the workers are gone.
#[derive(Debug)]
pub struct ExportThread {
    thread: JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl ExportThread {
    /// Ends an export the collector is slow to answer, sends what is left (for a second at
    /// most) and waits for the thread.
    pub fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.thread.join();
    }
}

/// The requests' side of the export queue.
#[derive(Debug, Clone)]
pub struct Exporter {
    tx: SyncSender<FinishedTrace>,
    metrics: Arc<Metrics>,
}

/// The span flags bits saying whether the parent is known to be remote (OTLP `SpanFlags`).
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;
/// Collector answers are read up to this size (they are tiny; a huge one is not trusted).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

impl Exporter {
    /// Starts the export thread. It ends, after a last flush, when every `Exporter` is gone.
    pub fn start(spec: &TracingSpec, metrics: Arc<Metrics>) -> std::io::Result<(Exporter, ExportThread)> {
        let (tx, rx) = sync_channel(spec.queue);
        let (stop, stop_rx) = watch::channel(false);
        let spec = spec.clone();
        let thread_metrics = metrics.clone();
        let thread = std::thread::Builder::new()
            .name("levee-otlp".into())
            .spawn(move || run(rx, &spec, &thread_metrics, &stop_rx))?;
        Ok((Exporter { tx, metrics }, ExportThread { thread, stop }))
    }

    /// Queues a finished trace, or drops and counts its spans when the queue is full.
    pub fn export(&self, trace: FinishedTrace) {
        let spans = trace.span_count();
        if self.tx.try_send(trace).is_err() {
            self.metrics
                .globals
                .spans_dropped_queue_full
                .fetch_add(spans, Ordering::Relaxed);
        }
    }
}

fn run(rx: Receiver<FinishedTrace>, spec: &TracingSpec, metrics: &Metrics, stop: &watch::Receiver<bool>) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "span exporter could not start its event loop; spans are dropped");
            while let Ok(trace) = rx.recv() {
                count(&metrics.globals.spans_dropped_export_failed, trace.span_count());
            }
            return;
        }
    };
    let client: crate::outbound::OutboundClient<Full<Bytes>> = crate::outbound::client(spec.export_timeout);
    let resource = Resource {
        attributes: vec![
            string("service.name", &spec.service_name),
            string("service.version", env!("CARGO_PKG_VERSION")),
            string("telemetry.sdk.name", "levee"),
            string("telemetry.sdk.language", "rust"),
        ],
        ..Default::default()
    };
    let scope = InstrumentationScope {
        name: "levee".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    };
    let mut batches = Batches {
        endpoint: &spec.endpoint,
        client,
        resource,
        scope,
        metrics,
        failing: false,
    };
    let tick = spec.export_interval.min(DRAIN_INTERVAL);
    let mut pending: Vec<FinishedTrace> = Vec::new();
    let mut pending_spans = 0u64;
    let mut oldest: Option<Instant> = None;
    loop {
        std::thread::sleep(tick);
        let before = pending.len();
        let disconnected = super::drain(&rx, &mut pending, before + spec.queue);
        pending_spans += pending
            .iter()
            .skip(before)
            .map(FinishedTrace::span_count)
            .sum::<u64>();
        if pending.len() > before && oldest.is_none() {
            oldest = Some(Instant::now());
        }
        if disconnected || *stop.borrow() {
            // The workers are gone: what is left goes in one last send, bounded so shutdown
            // cannot hang on it.
            pending.extend(rx.try_iter());
            let limit = spec.export_timeout.min(FINAL_FLUSH);
            runtime.block_on(batches.send(std::mem::take(&mut pending), limit, None));
            return;
        }
        // Send full batches now, and a partial one once its oldest trace has waited
        // export_interval.
        let due = oldest.is_some_and(|t| t.elapsed() >= spec.export_interval);
        while pending_spans >= spec.batch_size as u64 || (due && !pending.is_empty()) {
            let batch = take_batch(&mut pending, spec.batch_size as u64);
            pending_spans -= batch.iter().map(FinishedTrace::span_count).sum::<u64>();
            runtime.block_on(batches.send(batch, spec.export_timeout, Some(stop.clone())));
        }
        if pending.is_empty() {
            oldest = None;
        }
    }
}

/// How often the exporter wakes to drain the queue (senders never wake it; see
/// [`super::drain`]).
const DRAIN_INTERVAL: Duration = Duration::from_millis(20);

/// The oldest traces, up to `max_spans` spans (at least one trace).
fn take_batch(pending: &mut Vec<FinishedTrace>, max_spans: u64) -> Vec<FinishedTrace> {
    let mut spans = 0;
    let mut count = 0;
    for trace in pending.iter() {
        if count > 0 && spans + trace.span_count() > max_spans {
            break;
        }
        spans += trace.span_count();
        count += 1;
    }
    pending.drain(..count).collect()
}

/// How long the last export at shutdown may take at most.
const FINAL_FLUSH: Duration = Duration::from_secs(1);

/// What every export needs: where to, how, and what to count.
struct Batches<'a, C> {
    endpoint: &'a http::Uri,
    client: Client<C, Full<Bytes>>,
    resource: Resource,
    scope: InstrumentationScope,
    metrics: &'a Metrics,
    /// True while the collector is failing (so an outage is logged once, not per batch).
    failing: bool,
}

impl<C> Batches<'_, C>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    /// Sends one batch within `limit` (cut short when `stop` turns true) and counts the
    /// outcome.
    async fn send(
        &mut self,
        batch: Vec<FinishedTrace>,
        limit: Duration,
        stop: Option<watch::Receiver<bool>>,
    ) {
        if batch.is_empty() {
            return;
        }
        let sent = batch.iter().map(FinishedTrace::span_count).sum::<u64>();
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(self.scope.clone()),
                    spans: batch.into_iter().flat_map(to_spans).collect(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        let body = Bytes::from(request.encode_to_vec());
        let export = async {
            tokio::time::timeout(limit, post(&self.client, self.endpoint, body))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {limit:?}")))
        };
        let result = match stop {
            Some(mut stop) => tokio::select! {
                result = export => result,
                _ = stop.wait_for(|stopping| *stopping) => Err("the gateway is stopping".to_owned()),
            },
            None => export.await,
        };
        let globals = &self.metrics.globals;
        match result {
            Ok(rejected) => {
                let rejected = rejected.min(sent);
                count(&globals.spans_exported, sent - rejected);
                count(&globals.spans_dropped_export_failed, rejected);
                if self.failing {
                    tracing::info!(endpoint = %self.endpoint, "span export recovered");
                    self.failing = false;
                }
            }
            Err(error) => {
                count(&globals.spans_dropped_export_failed, sent);
                if !self.failing {
                    tracing::warn!(endpoint = %self.endpoint, %error, "span export failed; spans are dropped until it recovers");
                    self.failing = true;
                }
            }
        }
    }
}

fn count(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Posts one batch; returns how many spans the collector rejected (OTLP partial success).
async fn post<C>(client: &Client<C, Full<Bytes>>, endpoint: &http::Uri, body: Bytes) -> Result<u64, String>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let request = Request::post(endpoint.clone())
        .version(Version::HTTP_11)
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if !status.is_success() {
        return Err(format!("collector answered {status}"));
    }
    let rejected = ExportTraceServiceResponse::decode(body)
        .ok()
        .and_then(|r| r.partial_success)
        .map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0));
    Ok(rejected)
}

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

fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
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
