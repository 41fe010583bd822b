//! The state a model's targets share across requests and workers: each target's circuit
//! breaker and latency estimate, the order targets are tried in (the model's strategy), and
//! each provider's bulkhead.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

use super::ApiError;
use crate::config::spec::{LlmModelSpec, LlmStrategy};
use crate::gateway::WorkerContext;

/// A place in the provider's bulkhead, if it has one (`None` when it has no cap).
pub(super) async fn enter_provider(
    worker: &WorkerContext,
    provider_index: usize,
    provider_name: &Arc<str>,
) -> Result<Option<levee_resilience::BulkheadPermit>, ApiError> {
    let Some(bulkhead) = worker
        .gateway
        .llm_bulkheads
        .get(provider_index)
        .and_then(Option::as_ref)
    else {
        return Ok(None);
    };
    match bulkhead.enter().await {
        Ok(place) => Ok(Some(place)),
        Err(_) => {
            worker
                .recorder
                .metrics
                .lock()
                .record_bulkhead_rejected(provider_name);
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "api_error",
                "upstream_unavailable",
                "Every provider for this model is at its concurrency limit.",
            ))
        }
    }
}

/// The shared state of one model target: its circuit breaker and its latency estimate.
#[derive(Debug)]
pub struct TargetState {
    breaker: Option<levee_resilience::CircuitBreaker>,
    /// Peak-free EWMA of the time to an answer (its first bytes for a stream), in ms.
    latency_ms: std::sync::Mutex<Option<f64>>,
}

/// A breaker permit that is released if nobody records an outcome for it.
pub(super) struct Ticket<'a> {
    pub(super) state: Option<&'a Arc<TargetState>>,
    pub(super) permit: Option<levee_resilience::Permit>,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if let (Some(state), Some(permit)) = (self.state, self.permit.take()) {
            if let Some(breaker) = &state.breaker {
                breaker.release(permit);
            }
        }
    }
}

/// How much a new latency sample moves the estimate.
const LATENCY_WEIGHT: f64 = 0.3;

impl TargetState {
    pub fn new(breaker: Option<levee_resilience::BreakerConfig>) -> TargetState {
        TargetState {
            breaker: breaker.map(|c| levee_resilience::CircuitBreaker::new(c, Instant::now())),
            latency_ms: std::sync::Mutex::new(None),
        }
    }

    /// A breaker permit, `Ok(None)` without a breaker, `Err` when the breaker is open.
    pub(super) fn admit(&self, now: Instant) -> Result<Option<levee_resilience::Permit>, ()> {
        match &self.breaker {
            None => Ok(None),
            Some(breaker) => breaker.try_acquire(now).map(Some).ok_or(()),
        }
    }

    pub(super) fn settle(
        &self,
        permit: Option<levee_resilience::Permit>,
        served: bool,
        elapsed: Duration,
        now: Instant,
    ) {
        if let (Some(breaker), Some(permit)) = (&self.breaker, permit) {
            breaker.record(permit, served, now);
        }
        if served {
            let sample = elapsed.as_secs_f64() * 1000.0;
            let mut estimate = self.latency_ms.lock().unwrap_or_else(|p| p.into_inner());
            *estimate = Some(match *estimate {
                Some(old) => old + LATENCY_WEIGHT * (sample - old),
                None => sample,
            });
        }
    }

    /// The latency estimate; targets never measured count as 0, so they get measured.
    pub fn latency_ms(&self) -> f64 {
        self.latency_ms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or(0.0)
    }
}

/// The order in which a model's targets are tried.
pub(super) fn try_order(model: &LlmModelSpec, states: &[Arc<TargetState>]) -> Vec<usize> {
    let all: Vec<usize> = (0..model.targets.len()).collect();
    match model.strategy {
        LlmStrategy::Fallback => all,
        LlmStrategy::Weighted => {
            let total: u64 = model.weights.iter().map(|w| u64::from(*w)).sum();
            if total == 0 {
                return all;
            }
            let mut pick = fastrand::u64(..total);
            let first = model
                .weights
                .iter()
                .position(|w| {
                    let w = u64::from(*w);
                    if pick < w {
                        true
                    } else {
                        pick -= w;
                        false
                    }
                })
                .unwrap_or(0);
            std::iter::once(first)
                .chain(all.into_iter().filter(|i| *i != first))
                .collect()
        }
        LlmStrategy::LowestLatency => {
            let mut sorted = all;
            sorted.sort_by(|a, b| {
                let latency = |i: &usize| states.get(*i).map_or(0.0, |s| s.latency_ms());
                latency(a).total_cmp(&latency(b))
            });
            sorted
        }
    }
}
