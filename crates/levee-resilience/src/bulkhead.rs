//! A bulkhead: at most `limit` requests in flight to one backend, with an optional bounded
//! waiting room.
//!
//! A slow backend holds every request sent to it; without a cap, it ends up holding all of
//! the gateway's memory and connections, and backends that are fine starve with it. The
//! bulkhead (Envoy's `max_requests`, Hystrix's semaphore isolation) turns that into a fast,
//! honest refusal for the overflow only. One bulkhead guards an upstream, another an LLM
//! provider; both are shared by every worker thread of the process, so the limit is the
//! process's and not a worker's.
//!
//! The count is one atomic (`fetch_add`, undone on overflow), so taking a place costs one
//! atomic operation. Waiters park on a [`Notify`] and re-check after registering, so a place
//! freed between the check and the wait is never missed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// The refusal: the bulkhead is full (and its waiting room, if any, too or timed out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full {
    pub limit: usize,
}

/// A process-wide cap on requests in flight to one backend.
#[derive(Debug)]
pub struct Bulkhead {
    limit: usize,
    /// (waiters at most, longest wait); `None`: a full bulkhead refuses at once.
    queue: Option<(usize, Duration)>,
    inflight: AtomicUsize,
    waiting: AtomicUsize,
    freed: Notify,
}

/// A place in a bulkhead, given back when dropped.
#[derive(Debug)]
pub struct BulkheadPermit(Arc<Bulkhead>);

impl Drop for BulkheadPermit {
    fn drop(&mut self) {
        let bulkhead = &self.0;
        bulkhead.inflight.fetch_sub(1, Ordering::SeqCst);
        // Only pay for a wake-up when someone waits.
        if bulkhead.waiting.load(Ordering::SeqCst) > 0 {
            bulkhead.freed.notify_one();
        }
    }
}

/// Counts a request in the waiting room until dropped: also when the wait is abandoned
/// (client gone, shutdown), or the count would leak and the room stay "full".
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Bulkhead {
    pub fn new(limit: usize, queue: Option<(usize, Duration)>) -> Bulkhead {
        Bulkhead {
            limit,
            queue,
            inflight: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Requests holding a place now.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Takes a place. When the bulkhead is full: waits in the bounded room if there is one
    /// (and it has space), else refuses at once.
    pub async fn enter(self: &Arc<Self>) -> Result<BulkheadPermit, Full> {
        if let Some(permit) = self.try_enter() {
            return Ok(permit);
        }
        let full = Full { limit: self.limit };
        let Some((size, timeout)) = self.queue else {
            return Err(full);
        };
        let position = self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        if position >= size {
            return Err(full);
        }
        let waited = tokio::time::timeout(timeout, async {
            loop {
                let freed = self.freed.notified();
                tokio::pin!(freed);
                // Register before re-checking, so a place freed in between is not missed.
                freed.as_mut().enable();
                if let Some(permit) = self.try_enter() {
                    return permit;
                }
                freed.await;
            }
        })
        .await;
        waited.map_err(|_| full)
    }

    /// Takes a place if one is free now.
    pub fn try_enter(self: &Arc<Self>) -> Option<BulkheadPermit> {
        if self.inflight.fetch_add(1, Ordering::SeqCst) >= self.limit {
            // Undo without waking anyone: this place was never really taken.
            self.inflight.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(BulkheadPermit(self.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn refuses_past_the_limit_and_frees_on_drop() {
        let bulkhead = Arc::new(Bulkhead::new(2, None));
        let first = bulkhead.enter().await.unwrap();
        let _second = bulkhead.enter().await.unwrap();
        assert_eq!(bulkhead.enter().await.unwrap_err(), Full { limit: 2 });
        assert_eq!(bulkhead.inflight(), 2);
        drop(first);
        assert!(bulkhead.enter().await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gets_the_place_freed_within_its_wait() {
        let bulkhead = Arc::new(Bulkhead::new(1, Some((1, Duration::from_secs(1)))));
        let held = bulkhead.enter().await.unwrap();
        let waiter = tokio::spawn({
            let bulkhead = bulkhead.clone();
            async move { bulkhead.enter().await.map(drop) }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        // The room holds one: a second waiter is refused at once.
        assert!(bulkhead.enter().await.is_err());
        drop(held);
        assert_eq!(waiter.await.unwrap(), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_at_its_timeout_and_leaves_the_room_empty() {
        let bulkhead = Arc::new(Bulkhead::new(1, Some((1, Duration::from_secs(1)))));
        let _held = bulkhead.enter().await.unwrap();
        assert!(bulkhead.enter().await.is_err());
        assert_eq!(bulkhead.waiting.load(Ordering::SeqCst), 0);
    }
}
