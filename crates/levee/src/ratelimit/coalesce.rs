//! Group commit for one key: requests for a key that arrive while a call to Redis for that
//! key is in flight wait, and then go together in the next call, led by the first of them.
//!
//! A hot key (every request of a route limited by `key: route`, or one busy client) would
//! otherwise cost one Redis round trip per request; with coalescing it costs one per round
//! trip time, however many requests arrive meanwhile, and no request waits longer than the
//! call before its own. A lone request leads at once: coalescing adds no latency when there
//! is nothing to coalesce.
//!
//! The map holds a key only while a call for it is in flight, so it is bounded by the
//! requests in flight. The lead is a [`LeadGuard`] that hands the key on when it is dropped,
//! wherever that happens: a leader whose client hung up mid-call, or a lead sent to a
//! request that went away before reading it (the guard travels inside the message, and is
//! dropped with it). The followers of a lost batch start over. So no key is left stuck.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use levee_resilience::Decision;
use tokio::sync::oneshot;

/// What a waiting request is told.
#[derive(Debug)]
pub enum Turn {
    /// Its decision, made in a batch led by another request.
    Decided(Decision),
    /// It leads the next call, for itself and these followers, holding the key's guard.
    Lead(Vec<oneshot::Sender<Turn>>, LeadGuard),
}

const SHARDS: usize = 16;

/// Keys with a call in flight, and the requests waiting for the next call.
#[derive(Debug)]
pub struct Coalescer {
    shards: Vec<Mutex<HashMap<u64, Vec<oneshot::Sender<Turn>>>>>,
}

impl Default for Coalescer {
    fn default() -> Coalescer {
        Coalescer {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl Coalescer {
    fn shard(&self, hash: u64) -> Option<MutexGuard<'_, HashMap<u64, Vec<oneshot::Sender<Turn>>>>> {
        let shard = self.shards.get((hash % SHARDS as u64) as usize)?;
        Some(shard.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// `Ok`: nothing is in flight for the key, the caller leads now (and must call
    /// [`Coalescer::pass_on`] when its call is done, which [`LeadGuard`] does). `Err`: wait
    /// on the receiver for a decision or the lead.
    pub fn join(self: &Arc<Self>, hash: u64) -> Result<LeadGuard, oneshot::Receiver<Turn>> {
        let Some(mut shard) = self.shard(hash) else {
            return Ok(LeadGuard::new(self, hash));
        };
        match shard.get_mut(&hash) {
            Some(waiting) => {
                let (tx, rx) = oneshot::channel();
                waiting.push(tx);
                Err(rx)
            }
            None => {
                shard.insert(hash, Vec::new());
                Ok(LeadGuard::new(self, hash))
            }
        }
    }

    /// The key's call is done: the requests that queued meanwhile get the lead (the first)
    /// and follow it (the rest); with none, the key is free.
    fn pass_on(self: &Arc<Self>, hash: u64) {
        let Some(mut shard) = self.shard(hash) else { return };
        let mut waiting = shard.remove(&hash).unwrap_or_default();
        while !waiting.is_empty() {
            let first = waiting.remove(0);
            // The key stays in flight under its new leader, whose guard goes with the lead.
            shard.insert(hash, Vec::new());
            match first.send(Turn::Lead(
                std::mem::take(&mut waiting),
                LeadGuard::new(self, hash),
            )) {
                Ok(()) => return,
                // That request is gone: its followers come back with the message, and its
                // guard must not hand on (this is the handing on, and the lock is held).
                Err(Turn::Lead(rest, mut guard)) => {
                    guard.defuse();
                    shard.remove(&hash);
                    waiting = rest;
                }
                Err(Turn::Decided(_)) => return,
            }
        }
    }
}

/// Held by a leader while its call is in flight; dropping it (the call done, the leader
/// cancelled, or a lead message never read) hands the key on.
#[derive(Debug)]
pub struct LeadGuard {
    coalescer: Option<Arc<Coalescer>>,
    hash: u64,
}

impl LeadGuard {
    fn new(coalescer: &Arc<Coalescer>, hash: u64) -> LeadGuard {
        LeadGuard {
            coalescer: Some(coalescer.clone()),
            hash,
        }
    }

    fn defuse(&mut self) {
        self.coalescer = None;
    }
}

impl Drop for LeadGuard {
    fn drop(&mut self) {
        if let Some(coalescer) = self.coalescer.take() {
            coalescer.pass_on(self.hash);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use std::time::Duration;

    fn decided() -> Decision {
        Decision {
            allowed: true,
            remaining: 0,
            reset: Duration::ZERO,
            retry_after: Duration::ZERO,
            untracked: false,
        }
    }

    #[tokio::test]
    async fn waiters_form_the_next_batch_under_the_first_of_them() {
        let c = Arc::new(Coalescer::default());
        let lead = c.join(7).unwrap();
        let (a, b) = (c.join(7).unwrap_err(), c.join(7).unwrap_err());
        assert!(c.join(8).is_ok(), "another key is independent");
        drop(lead);
        let Ok(Turn::Lead(followers, _guard)) = a.await else {
            panic!("a leads the next call")
        };
        assert_eq!(followers.len(), 1);
        for f in followers {
            f.send(Turn::Decided(decided())).unwrap();
        }
        assert!(matches!(b.await, Ok(Turn::Decided(_))));
    }

    #[tokio::test]
    async fn a_cancelled_waiter_is_skipped_and_the_key_is_freed_when_nobody_waits() {
        let c = Arc::new(Coalescer::default());
        let lead = c.join(1).unwrap();
        drop(c.join(1).unwrap_err()); // this request went away
        let b = c.join(1).unwrap_err();
        drop(lead);
        let Ok(Turn::Lead(followers, guard)) = b.await else {
            panic!("b leads")
        };
        assert!(followers.is_empty());
        drop(guard); // b's call ends
        assert!(c.join(1).is_ok(), "the key is free again");
    }

    #[tokio::test]
    async fn a_lead_sent_to_a_request_that_never_reads_it_is_handed_on() {
        let c = Arc::new(Coalescer::default());
        let lead = c.join(3).unwrap();
        let gone = c.join(3).unwrap_err();
        let after = c.join(3).unwrap_err();
        // The lead goes to `gone` (with `after` as its follower)...
        drop(lead);
        // ...whose request is dropped before reading it: the follower starts over.
        drop(gone);
        assert!(
            after.await.is_err(),
            "the follower's batch was lost with its leader"
        );
        // And the key is not stuck: the next request leads at once.
        assert!(c.join(3).is_ok());
    }
}
