//! What the gateway tells operators: metrics, the access log, the call log and traces.
//!
//! This layer records plain data and imports no feature module: the features hand it their
//! facts ([`UpstreamFacts`], [`llm_call::LlmCall`]), and the `record` module gathers a
//! request's facts as it travels and writes them here once, when its response has finished
//! streaming (or was abandoned). Nothing is written on the hot path but a queue push and one
//! uncontended lock.

pub mod access_log;
pub mod ai_metrics;
pub mod call_log;
pub mod deprecated;
pub mod histogram;
pub mod llm_call;
pub mod metrics;
pub mod otlp;
mod otlp_wire;
mod outcome;
pub mod process;
pub mod series;
pub mod traces;
pub mod verdicts;

use std::sync::Arc;
use std::time::Duration;

use metrics::Outcome;

/// Facts about the upstream attempt that served a request.
#[derive(Debug, Clone)]
pub struct UpstreamFacts {
    pub upstream: Arc<str>,
    pub target: Arc<str>,
    pub outcome: Outcome,
    pub elapsed: Duration,
}

/// Moves up to `max` queued items into `batch` without blocking; true when every sender is
/// gone. The background writers (access log, call log, span export) wake on a timer and
/// drain with this instead of blocking on the queue: a blocked receiver makes every send a
/// futex wake-up and a context switch on the request path, which costs more than the work
/// it hands over.
pub(crate) fn drain<T>(rx: &std::sync::mpsc::Receiver<T>, batch: &mut Vec<T>, max: usize) -> bool {
    while batch.len() < max {
        match rx.try_recv() {
            Ok(item) => batch.push(item),
            Err(std::sync::mpsc::TryRecvError::Empty) => return false,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => return true,
        }
    }
    false
}
