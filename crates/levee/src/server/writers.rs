//! The writer threads that take records off the workers: the access log, the call log and
//! the span exporter. The workers hold the only senders, so once they exit the writers
//! drain their queues and end.

use std::io;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::{AccessLogSink, StartError};
use crate::config::Config;
use crate::observability::access_log::AccessLog;
use crate::observability::call_log::{CallLog, Retention, SqliteStore};
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
    /// Starts the writers `config` asks for; returns them with a read connection to the call
    /// log, when there is one.
    pub fn start(
        config: &Config,
        sink: AccessLogSink,
        metrics: &Arc<Metrics>,
    ) -> Result<(Writers, Option<Mutex<SqliteStore>>), StartError> {
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
                let retention = Retention {
                    max_age: spec.max_age,
                    max_rows: spec.max_rows,
                };
                let (log, thread) = CallLog::start(&spec.dir, spec.queue, retention, metrics.clone())
                    .map_err(|message| StartError::CallLog { message })?;
                let reader = log.reader().map_err(|message| StartError::CallLog { message })?;
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
    pub fn recorder(&self, metrics: &Metrics, slo: &Arc<SloEngine>) -> Arc<Recorder> {
        Arc::new(Recorder {
            metrics: metrics.shard(),
            access_log: self.access_log.clone(),
            call_log: self.call_log.clone(),
            tracer: self.tracer.clone(),
            slo: slo.clone(),
        })
    }

    /// Drops this copy of the senders (once every worker has its own) and keeps the threads.
    pub fn into_threads(self) -> WriterThreads {
        self.threads
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
