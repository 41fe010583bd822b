//! The writer threads that take records off the workers: the access log, the call log and
//! the span exporter. The workers hold the only senders, so once they exit the writers
//! drain their queues and end.

use std::io;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::{AccessLogSink, StartError};
use crate::chaos::experiments::Experiments;
use crate::cluster::calls::CallReader;
use crate::cluster::Cluster;
use crate::config::spec::{CallLogSpec, CallLogStore};
use crate::config::Config;
use crate::observability::access_log::AccessLog;
use crate::observability::call_log::{CallLog, Retention};
use crate::observability::metrics::Metrics;
use crate::observability::otlp::{ExportThread, Exporter};
use crate::observability::traces::{Sampler, Tracer};
use crate::record::Recorder;
use crate::slo::SloEngine;

/// The senders to the writer threads, and the threads.
pub(super) struct Writers {
    access_log: AccessLog,
    call_log: Option<CallLog>,
    tracer: Option<Tracer>,
    threads: WriterThreads,
}

/// The writer threads, joined last when the gateway stops.
#[derive(Default)]
pub(super) struct WriterThreads {
    access_log: Option<JoinHandle<()>>,
    call_log: Option<JoinHandle<()>>,
    tracer: Option<ExportThread>,
}

impl Writers {
    /// Starts the writers `config` asks for; returns them with the call log's reader, when
    /// there is one. `cluster` is cluster mode's handle (the call log goes to its
    /// PostgreSQL when the config says so).
    pub fn start(
        config: &Config,
        sink: AccessLogSink,
        metrics: &Arc<Metrics>,
        cluster: Option<&Arc<Cluster>>,
    ) -> Result<(Writers, Option<CallReader>), StartError> {
        let mut threads = WriterThreads::default();
        let access_log = if config.access_log.enabled {
            let sink: Box<dyn io::Write + Send> = match sink {
                AccessLogSink::Stdout => Box::new(io::stdout()),
                AccessLogSink::Writer(w) => w,
            };
            let (log, thread) = AccessLog::start(
                config.access_log.queue,
                config.access_log.success_sample,
                metrics.clone(),
                sink,
            )
            .map_err(|source| StartError::Thread {
                name: "access-log".into(),
                source,
            })?;
            threads.access_log = Some(thread);
            log
        } else {
            AccessLog::disabled(metrics.clone())
        };
        let (call_log, calls) = match &config.call_log {
            Some(spec) => {
                let (log, thread, reader) = start_call_log(spec, metrics, cluster)
                    .map_err(|message| StartError::CallLog { message })?;
                threads.call_log = Some(thread);
                (Some(log), Some(reader))
            }
            None => (None, None),
        };
        let tracer = match &config.tracing {
            Some(spec) => {
                let (exporter, thread) =
                    Exporter::start(spec, metrics.clone()).map_err(|source| StartError::Thread {
                        name: "otlp".into(),
                        source,
                    })?;
                threads.tracer = Some(thread);
                let sampler = Sampler::new(spec.sample_ratio, spec.parent_based);
                Some(Tracer { sampler, exporter })
            }
            None => None,
        };
        let writers = Writers {
            access_log,
            call_log,
            tracer,
            threads,
        };
        Ok((writers, calls))
    }

    /// What one worker records into: its own metrics shard and senders to every writer.
    pub fn recorder(
        &self,
        metrics: &Metrics,
        slo: &Arc<SloEngine>,
        experiments: &Arc<Experiments>,
    ) -> Arc<Recorder> {
        Arc::new(Recorder {
            metrics: metrics.shard(),
            access_log: self.access_log.clone(),
            call_log: self.call_log.clone(),
            tracer: self.tracer.clone(),
            slo: slo.clone(),
            experiments: experiments.clone(),
        })
    }

    /// Drops this copy of the senders (once every worker has its own) and keeps the threads.
    pub fn into_threads(self) -> WriterThreads {
        self.threads
    }
}

/// The call log's queue, writer thread and reader: SQLite in `data_dir`, or in cluster mode
/// the fleet's PostgreSQL.
fn start_call_log(
    spec: &CallLogSpec,
    metrics: &Arc<Metrics>,
    cluster: Option<&Arc<Cluster>>,
) -> Result<(CallLog, JoinHandle<()>, CallReader), String> {
    let retention = Retention {
        max_age: spec.max_age,
        max_rows: spec.max_rows,
    };
    match &spec.store {
        CallLogStore::Sqlite(dir) => {
            let (log, thread, reader) = CallLog::start(dir, spec.queue, retention, metrics.clone())?;
            Ok((log, thread, CallReader::Sqlite(Mutex::new(reader))))
        }
        CallLogStore::Postgres => {
            let cluster = cluster.ok_or(crate::cluster::calls::CallsError::NoPostgres.to_string())?;
            crate::cluster::calls::start(cluster, spec.queue, retention, metrics.clone())
                .map_err(|e| e.to_string())
        }
    }
}

impl WriterThreads {
    /// Waits for the access log and call log writers to drain, then stops the span exporter.
    pub fn join(&mut self) {
        if let Some(writer) = self.access_log.take() {
            let _ = writer.join();
        }
        if let Some(writer) = self.call_log.take() {
            let _ = writer.join();
        }
        if let Some(exporter) = self.tracer.take() {
            exporter.stop();
        }
    }
}
