//! Rate limiting with GCRA, the generic cell rate algorithm (ATM's traffic policing, as in
//! redis-cell and Stripe's limiter): one timestamp per key instead of a token count and a
//! refill timer.
//!
//! For a rate of `n` per `period`, requests are "due" every `interval = period / n`. Each key
//! stores its theoretical arrival time (TAT). A request at `now` is allowed when
//! `now >= TAT - tolerance`, where `tolerance = interval * (burst - 1)` lets up to `burst`
//! requests through at once; it then moves TAT to `max(TAT, now) + interval`. This is exactly
//! a token bucket of size `burst` refilled at the rate, without a background refill.
//!
//! Memory: a key whose TAT has passed carries no information (it is the same as a new key), so
//! it can be dropped at any time. The store keeps at most `max_keys` keys, sweeping passed
//! keys when it fills; past that (every key active at once), new keys are allowed untracked
//! (the decision says so), so a flood of distinct keys costs neither memory nor correct
//! clients.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// What the limiter decided for one request, with the numbers for the `RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests that could still be made right now.
    pub remaining: u64,
    /// Time until the key's quota is whole again.
    pub reset: Duration,
    /// When refused: time until a request would be allowed.
    pub retry_after: Duration,
    /// The key could not be stored (store full): allowed untracked.
    pub untracked: bool,
}

/// Rate-limit parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Time between two requests at the sustained rate.
    pub interval: Duration,
    /// Requests allowed at once.
    pub burst: u32,
}

impl Quota {
    /// `count` requests per `period`, up to `burst` at once.
    pub fn new(count: u32, period: Duration, burst: u32) -> Quota {
        Quota {
            interval: period / count.max(1),
            burst: burst.max(1),
        }
    }

    fn tolerance(&self) -> Duration {
        self.interval.saturating_mul(self.burst - 1)
    }

    /// Decides one request given the key's stored TAT (`None`: new key). Returns the
    /// decision and the TAT to store.
    pub fn decide(&self, tat: Option<Instant>, now: Instant) -> (Decision, Instant) {
        let tat = tat.unwrap_or(now).max(now);
        let tolerance = self.tolerance();
        let allow_at = tat.checked_sub(tolerance).unwrap_or(now);
        if now < allow_at {
            let retry_after = allow_at - now;
            let decision = Decision {
                allowed: false,
                remaining: 0,
                reset: tat - now,
                retry_after,
                untracked: false,
            };
            return (decision, tat);
        }
        let new_tat = tat + self.interval;
        let used = new_tat - now; // time the bucket needs to refill completely
        let headroom = (tolerance + self.interval).saturating_sub(used);
        let remaining = (headroom.as_nanos() / self.interval.as_nanos().max(1)) as u64;
        let decision = Decision {
            allowed: true,
            remaining,
            reset: used,
            retry_after: Duration::ZERO,
            untracked: false,
        };
        (decision, new_tat)
    }
}

const SHARDS: usize = 16;

/// A keyed GCRA limiter shared by all workers: 16 independently locked shards, each holding
/// at most `max_keys / 16` keys.
#[derive(Debug)]
pub struct KeyedLimiter {
    quota: Quota,
    max_per_shard: usize,
    hasher: std::collections::hash_map::RandomState,
    shards: Vec<Mutex<Shard>>,
}

#[derive(Debug, Default)]
struct Shard {
    keys: HashMap<String, Instant>,
    /// When passed keys were last swept out: a full store of live keys is swept at most
    /// once per interval, so a flood of new keys cannot turn every request into a scan.
    last_sweep: Option<Instant>,
}

impl KeyedLimiter {
    pub fn new(quota: Quota, max_keys: usize) -> KeyedLimiter {
        KeyedLimiter {
            quota,
            max_per_shard: max_keys.div_ceil(SHARDS).max(1),
            hasher: Default::default(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        }
    }

    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// Decides one request for `key` at `now`.
    pub fn check(&self, key: &str, now: Instant) -> Decision {
        let shard = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        let Some(Ok(mut shard)) = self.shards.get(shard).map(|m| m.lock()) else {
            return self.quota.decide(None, now).0;
        };
        if let Some(tat) = shard.keys.get_mut(key) {
            let (decision, new_tat) = self.quota.decide(Some(*tat), now);
            *tat = new_tat;
            return decision;
        }
        let (mut decision, new_tat) = self.quota.decide(None, now);
        let sweep_due = shard.last_sweep.is_none_or(|last| {
            now.saturating_duration_since(last) >= self.quota.interval.max(Duration::from_millis(1))
        });
        if shard.keys.len() >= self.max_per_shard && sweep_due {
            // Keys whose TAT has passed say nothing a new key would not.
            shard.keys.retain(|_, tat| *tat > now);
            shard.last_sweep = Some(now);
        }
        if shard.keys.len() >= self.max_per_shard {
            decision.untracked = true;
        } else {
            shard.keys.insert(key.to_owned(), new_tat);
        }
        decision
    }

    /// Keys stored now (for tests and metrics).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .filter_map(|m| m.lock().ok())
            .map(|m| m.keys.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_the_sustained_rate() {
        let quota = Quota::new(10, Duration::from_secs(1), 5);
        let limiter = KeyedLimiter::new(quota, 100);
        let now = Instant::now();
        let burst: Vec<Decision> = (0..6).map(|_| limiter.check("k", now)).collect();
        assert!(burst[..5].iter().all(|d| d.allowed));
        assert_eq!(
            burst.iter().map(|d| d.remaining).collect::<Vec<_>>()[..5],
            [4, 3, 2, 1, 0]
        );
        assert!(!burst[5].allowed);
        assert_eq!(burst[5].retry_after, Duration::from_millis(100));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(limiter.check("k", Instant::now()).allowed);
        assert!(!limiter.check("k", Instant::now()).allowed);
        assert!(
            limiter.check("other", Instant::now()).allowed,
            "keys are independent"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn accepted_requests_match_rate_times_time_plus_burst() {
        // 3x the rate for 10 s: 50/s with a burst of 10 accepts 50 * 10 + 10.
        let limiter = KeyedLimiter::new(Quota::new(50, Duration::from_secs(1), 10), 10);
        let mut accepted = 0;
        for _ in 0..1500 {
            if limiter.check("k", Instant::now()).allowed {
                accepted += 1;
            }
            tokio::time::advance(Duration::from_micros(6_667)).await;
        }
        assert!((505..=515).contains(&accepted), "accepted {accepted}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_million_distinct_keys_stay_within_the_cap() {
        let limiter = KeyedLimiter::new(Quota::new(100, Duration::from_secs(1), 1), 10_000);
        let mut untracked = 0;
        for i in 0..1_000_000u32 {
            if limiter.check(&format!("client-{i}"), Instant::now()).untracked {
                untracked += 1;
            }
            if i % 1000 == 0 {
                tokio::time::advance(Duration::from_millis(1)).await;
            }
        }
        assert!(limiter.len() <= 10_000 + 16, "{} keys stored", limiter.len());
        // With keys expiring after 10 ms and 1000 new keys per ms, the store is always full
        // of live keys: the overflow is allowed untracked, never stored.
        assert!(untracked > 0);
    }

    #[tokio::test(start_paused = true)]
    async fn reset_and_remaining_follow_the_bucket() {
        let quota = Quota::new(1, Duration::from_secs(1), 3);
        let (d, tat) = quota.decide(None, Instant::now());
        assert_eq!((d.remaining, d.reset), (2, Duration::from_secs(1)));
        let (d, tat) = quota.decide(Some(tat), Instant::now());
        assert_eq!((d.remaining, d.reset), (1, Duration::from_secs(2)));
        tokio::time::advance(Duration::from_secs(2)).await;
        let (d, _) = quota.decide(Some(tat), Instant::now());
        assert_eq!((d.remaining, d.reset), (2, Duration::from_secs(1)), "refilled");
    }
}
