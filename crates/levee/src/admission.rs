//! Load shedding: counted places under a worker's cap on requests or connections.
//!
//! Past the cap the gateway refuses at once (503 `overloaded`) instead of queueing: work it
//! cannot finish in time only adds latency for everyone, and a quick refusal lets a client or
//! load balancer go elsewhere. The count is one relaxed atomic per place; the permit gives
//! the place back when dropped, whichever way the request ends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Counts one unit (a request or a connection) against a worker's cap until dropped.
#[derive(Debug)]
pub struct LoadPermit(Arc<AtomicUsize>);

impl LoadPermit {
    /// Takes a unit if fewer than `cap` are taken.
    pub fn try_take(counter: &Arc<AtomicUsize>, cap: usize) -> Option<LoadPermit> {
        let before = counter.fetch_add(1, Ordering::Relaxed);
        let permit = LoadPermit(counter.clone());
        (before < cap).then_some(permit)
    }
}

impl Drop for LoadPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
