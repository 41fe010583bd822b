//! The JSON access log: one line per request on stdout, written by a background thread.
//!
//! Request tasks hand a finished [`AccessRecord`] to a bounded queue and move on; if the writer
//! falls behind (a slow pipe, a stalled terminal) new lines are dropped and counted rather than
//! stalling requests or growing memory.

use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, Version};
use serde::Serialize;

use super::metrics::Metrics;

/// Everything the access log says about one request.
#[derive(Debug)]
pub struct AccessRecord {
    pub time: SystemTime,
    pub request_id: HeaderValue,
    pub trace_id: super::traces::TraceId,
    pub client_ip: IpAddr,
    pub listener: Arc<str>,
    pub protocol: Version,
    pub method: Method,
    pub path: Arc<str>,
    pub route: Option<Arc<str>>,
    pub upstream: Option<Arc<str>>,
    pub target: Option<Arc<str>>,
    pub status: u16,
    pub error: Option<&'static str>,
    pub duration_ms: f64,
    pub upstream_ms: Option<f64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// False when the response body did not finish (client went away, upstream reset).
    pub completed: bool,
    /// Upstream attempts made (retries included).
    pub attempts: u32,
    /// The 502/503/504 a route fallback replaced.
    pub fallback_for: Option<u16>,
    /// How a failure was replaced: `stale` or `fallback`.
    pub degraded: Option<&'static str>,
    pub consumer: Option<Arc<str>>,
    /// On AI gateway routes: the call's accounting (provider, model, tokens, cost).
    pub llm: Option<Arc<super::llm_call::LlmCall>>,
    /// An injected fault: `abort` or `delay`.
    pub fault: Option<&'static str>,
    /// A gRPC call's final `grpc-status`.
    pub grpc_status: Option<u16>,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    log: &'static str,
    request_id: &'a str,
    trace_id: String,
    client_ip: String,
    listener: &'a str,
    protocol: &'static str,
    method: &'a str,
    path: &'a str,
    route: Option<&'a str>,
    upstream: Option<&'a str>,
    target: Option<&'a str>,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_ms: Option<f64>,
    bytes_in: u64,
    bytes_out: u64,
    completed: bool,
    attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    fallback_for: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    degraded: Option<&'static str>,
    consumer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    llm: Option<LlmLine<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fault: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    grpc_status: Option<u16>,
}

/// The `llm` object of an AI gateway request's line.
#[derive(Serialize)]
struct LlmLine<'a> {
    provider: &'a str,
    model: &'a str,
    prompt_tokens: u64,
    completion_tokens: u64,
    /// False when Levee counted the tokens itself (the provider reported none).
    usage_reported: bool,
    cost_usd: f64,
}

/// RFC 3339 with milliseconds, as in the access log.
pub fn format_time(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

fn round3(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

impl AccessRecord {
    /// The JSON line (without newline).
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(512);
        self.write_json(&mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Appends the JSON line (without newline) to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let line = Line {
            time: humantime::format_rfc3339_millis(self.time).to_string(),
            log: "access",
            request_id: self.request_id.to_str().unwrap_or("-"),
            trace_id: self.trace_id.hex(),
            client_ip: self.client_ip.to_string(),
            listener: &self.listener,
            protocol: match self.protocol {
                Version::HTTP_09 => "HTTP/0.9",
                Version::HTTP_10 => "HTTP/1.0",
                Version::HTTP_2 => "HTTP/2",
                Version::HTTP_3 => "HTTP/3",
                _ => "HTTP/1.1",
            },
            method: self.method.as_str(),
            path: &self.path,
            route: self.route.as_deref(),
            upstream: self.upstream.as_deref(),
            target: self.target.as_deref(),
            status: self.status,
            error: self.error,
            duration_ms: round3(self.duration_ms),
            upstream_ms: self.upstream_ms.map(round3),
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            completed: self.completed,
            attempts: self.attempts,
            fallback_for: self.fallback_for,
            degraded: self.degraded,
            consumer: self.consumer.as_deref(),
            llm: self.llm.as_deref().map(|call| {
                let usage = call.usage();
                LlmLine {
                    provider: &call.provider,
                    model: &call.model,
                    prompt_tokens: usage.prompt,
                    completion_tokens: usage.completion,
                    usage_reported: call.reported(),
                    cost_usd: call.cost_usd(),
                }
            }),
            fault: self.fault,
            grpc_status: self.grpc_status,
        };
        let _ = serde_json::to_writer(out, &line);
    }
}

/// The sending side, cloned into every worker.
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: Option<SyncSender<AccessRecord>>,
    metrics: Arc<Metrics>,
    /// Share of successful requests written (errors always are).
    success_sample: f64,
}

impl AccessLog {
    /// A log that writes nothing.
    pub fn disabled(metrics: Arc<Metrics>) -> AccessLog {
        AccessLog {
            tx: None,
            metrics,
            success_sample: 1.0,
        }
    }

    /// Starts the writer thread; lines go to `sink` (stdout in production).
    pub fn start(
        queue: usize,
        success_sample: f64,
        metrics: Arc<Metrics>,
        sink: Box<dyn Write + Send>,
    ) -> std::io::Result<(AccessLog, JoinHandle<()>)> {
        let (tx, rx) = sync_channel(queue);
        let writer = std::thread::Builder::new()
            .name("levee-access-log".into())
            .spawn(move || write_lines(rx, sink))?;
        Ok((
            AccessLog {
                tx: Some(tx),
                metrics,
                success_sample,
            },
            writer,
        ))
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Whether a request with `status` gets a line: errors always, successes by sampling.
    pub fn wants(&self, status: u16) -> bool {
        self.tx.is_some()
            && (status >= 400 || self.success_sample >= 1.0 || fastrand::f64() < self.success_sample)
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Queues a record, or drops and counts it when the writer is behind.
    pub fn log(&self, record: AccessRecord) {
        if let Some(tx) = &self.tx {
            match tx.try_send(record) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    self.metrics
                        .globals
                        .access_log_dropped
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// How often the writer wakes to drain the queue. Senders never wake it: on a busy gateway a
/// wake-up per line would cost more than writing the line.
const DRAIN_INTERVAL: Duration = Duration::from_millis(20);

/// Writes until every sender is gone, draining the queue every [`DRAIN_INTERVAL`].
fn write_lines(rx: Receiver<AccessRecord>, sink: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, sink);
    let mut line = Vec::with_capacity(512);
    let mut batch = Vec::with_capacity(1024);
    loop {
        let disconnected = super::drain(&rx, &mut batch, usize::MAX);
        let wrote = !batch.is_empty();
        for record in batch.drain(..) {
            line.clear();
            record.write_json(&mut line);
            line.push(b'\n');
            // A closed stdout must not stop the draining, or senders would only ever drop;
            // so write errors are ignored here.
            let _ = out.write_all(&line);
        }
        if wrote {
            let _ = out.flush();
        }
        if disconnected {
            return;
        }
        std::thread::park_timeout(DRAIN_INTERVAL);
    }
}
