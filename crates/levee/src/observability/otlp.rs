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
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use tokio::sync::watch;

use super::metrics::Metrics;
use super::otlp_wire::Writer;
use super::traces::FinishedTrace;
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
        resource: resource.encode_to_vec(),
        scope: scope.encode_to_vec(),
        writer: Writer::default(),
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
    /// Encoded once: they are the same in every request.
    resource: Vec<u8>,
    scope: Vec<u8>,
    writer: Writer,
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
        for trace in &batch {
            self.writer.trace(trace);
        }
        drop(batch);
        let body = Bytes::from(self.writer.finish(&self.resource, &self.scope));
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

pub(super) fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}
