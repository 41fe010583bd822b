//! A route's rate limit counted across the fleet: the GCRA decision is made atomically in
//! Redis by a Lua script, on Redis' own clock, so every replica draws from one bucket.
//!
//! Two things keep it cheap and safe:
//!
//! * **Refusals are remembered locally.** When Redis refuses a key until `allow_at`, every
//!   request for that key before `allow_at` would be refused too (a refusal does not move
//!   the key's theoretical arrival time, and other replicas only move it later), so this
//!   replica refuses them itself without asking. Under a flood, most requests are refused
//!   without a round trip, and the count stays exact.
//! * **Redis slow or down costs one `timeout`, then nothing.** The store backs off; until it
//!   answers again, the replica decides with its share of the limit: the rate divided by the
//!   replicas it last saw alive, and the burst likewise (at least 1). Each such decision is
//!   counted in `levee_cluster_fallback_total{component="rate_limit"}`.
//!
//! Why not leases of capacity (take 10 tokens at once, spend them locally)? They save round
//! trips when most requests pass, but tokens leased by a replica that gets no traffic are
//! lost to the others, which breaks the ±2% accuracy a small limit needs; the round trip on
//! loopback or in one zone is tens of microseconds (bench/cluster.sh measures it).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use levee_resilience::{Decision, KeyedLimiter, Quota};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::coalesce::{Coalescer, LeadGuard, Turn};
use crate::cluster::redis::RedisStore;
use crate::cluster::Cluster;

/// The GCRA step in Redis for `n` requests of one key at once. KEYS[1]: the key's TAT
/// (microseconds, Redis clock). ARGV: the interval and the tolerance in microseconds, and n.
/// Returns {allowed, base_us}: the first `allowed` requests pass; `base_us` is how far the
/// TAT was ahead of now before them, from which each one's headers follow.
static GCRA: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
        local interval, tolerance, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
        local tat = tonumber(redis.call('GET', KEYS[1])) or now
        if tat < now then tat = now end
        local base = tat - now
        local allowed = 0
        while allowed < n and now >= tat - tolerance do
            tat = tat + interval
            allowed = allowed + 1
        end
        if allowed > 0 then
            redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
        end
        return {allowed, base}
        ",
    )
});

const SHARDS: usize = 16;

/// One route's fleet-wide limit.
#[derive(Debug)]
pub struct FleetLimiter {
    cluster: Arc<Cluster>,
    redis: Arc<RedisStore>,
    quota: Quota,
    /// `prefix:rl:ROUTE`: each limited key is a hash under it.
    key_base: String,
    max_keys: usize,
    /// Keys Redis refused, with when they may pass again and when their bucket is whole.
    refused: Vec<Mutex<HashMap<u64, (Instant, Instant)>>>,
    /// The local limiter used while Redis does not answer, sized for the replicas seen then.
    share: ArcSwap<(usize, KeyedLimiter)>,
    /// Requests waiting for a key's call in flight.
    batches: Arc<Coalescer>,
}

impl FleetLimiter {
    pub fn new(
        cluster: Arc<Cluster>,
        redis: Arc<RedisStore>,
        route: &str,
        quota: Quota,
        max_keys: usize,
    ) -> FleetLimiter {
        let replicas = cluster.replicas();
        FleetLimiter {
            key_base: redis.key(&["rl", route]),
            cluster,
            redis,
            quota,
            max_keys,
            refused: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            share: ArcSwap::from_pointee((replicas, KeyedLimiter::new(share_of(quota, replicas), max_keys))),
            batches: Arc::new(Coalescer::default()),
        }
    }

    /// Decides one request for `key` for the whole fleet (or, without Redis, for this
    /// replica's share). Requests for a key with a call in flight join the next call.
    pub async fn check(&self, key: &str, now: Instant) -> Decision {
        let hash = xxhash_rust::xxh3::xxh3_64(key.as_bytes());
        // A request whose batch leader went away starts over; a few times at most.
        for _ in 0..4 {
            if let Some(decision) = self.known_refusal(hash, now) {
                return decision;
            }
            match self.batches.join(hash) {
                Ok(guard) => return self.lead(hash, key, Vec::new(), guard).await,
                Err(turn) => match turn.await {
                    Ok(Turn::Decided(decision)) => return decision,
                    Ok(Turn::Lead(followers, guard)) => return self.lead(hash, key, followers, guard).await,
                    Err(_) => continue,
                },
            }
        }
        self.cluster.fallback("rate_limit");
        self.local_share().1.check(key, now)
    }

    /// Asks Redis for this request and its followers in one call, answers the followers and
    /// returns this request's decision; the guard hands the key on when it is dropped.
    async fn lead(
        &self,
        hash: u64,
        key: &str,
        followers: Vec<oneshot::Sender<Turn>>,
        guard: LeadGuard,
    ) -> Decision {
        let n = 1 + followers.len();
        let redis_key = format!("{}:{hash:016x}", self.key_base);
        let interval = micros(self.quota.interval);
        let tolerance = micros(
            self.quota
                .interval
                .saturating_mul(self.quota.burst.saturating_sub(1)),
        );
        let answer = self
            .redis
            .call(|mut conn| async move {
                GCRA.key(redis_key)
                    .arg(interval)
                    .arg(tolerance)
                    .arg(n)
                    .invoke_async::<(i64, i64)>(&mut conn)
                    .await
            })
            .await;
        let now = Instant::now();
        let decide = |i: usize| -> Decision {
            match answer {
                Some((allowed, base_us)) => {
                    let allowed = usize::try_from(allowed.max(0)).unwrap_or(0);
                    let base = Duration::from_micros(base_us.max(0).unsigned_abs());
                    batch_decision(self.quota, base, allowed, i)
                }
                None => {
                    self.cluster.fallback("rate_limit");
                    self.local_share().1.check(key, now)
                }
            }
        };
        let mine = decide(0);
        for (i, follower) in followers.into_iter().enumerate() {
            let _ = follower.send(Turn::Decided(decide(i + 1)));
        }
        if let Some((allowed, base_us)) = answer {
            let allowed = usize::try_from(allowed.max(0)).unwrap_or(0);
            if allowed < n {
                // Refused requests say until when: every request before then is refused here.
                let base = Duration::from_micros(base_us.max(0).unsigned_abs());
                let refused = batch_decision(self.quota, base, allowed, n);
                self.remember_refusal(hash, now + refused.retry_after, now + refused.reset);
            }
        }
        drop(guard);
        mine
    }

    fn shard(&self, hash: u64) -> Option<std::sync::MutexGuard<'_, HashMap<u64, (Instant, Instant)>>> {
        let shard = self.refused.get((hash % SHARDS as u64) as usize)?;
        Some(shard.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn known_refusal(&self, hash: u64, now: Instant) -> Option<Decision> {
        let mut shard = self.shard(hash)?;
        let &(allow_at, whole_at) = shard.get(&hash)?;
        if now < allow_at {
            return Some(refused_decision(whole_at - now, allow_at - now));
        }
        shard.remove(&hash);
        None
    }

    fn remember_refusal(&self, hash: u64, allow_at: Instant, whole_at: Instant) {
        let Some(mut shard) = self.shard(hash) else { return };
        let cap = self.max_keys.div_ceil(SHARDS).max(1);
        if shard.len() >= cap {
            let now = Instant::now();
            shard.retain(|_, (allow_at, _)| *allow_at > now);
        }
        // Full of live refusals: this one is simply asked again next time.
        if shard.len() < cap {
            shard.insert(hash, (allow_at, whole_at));
        }
    }

    /// The limiter for this replica's share, rebuilt when the number of replicas changed.
    fn local_share(&self) -> Arc<(usize, KeyedLimiter)> {
        let replicas = self.cluster.replicas();
        let current = self.share.load_full();
        if current.0 == replicas {
            return current;
        }
        let next = Arc::new((
            replicas,
            KeyedLimiter::new(share_of(self.quota, replicas), self.max_keys),
        ));
        self.share.store(next.clone());
        next
    }
}

/// One replica's share of `quota` among `replicas`: the rate and the burst divided (the
/// burst at least 1).
pub fn share_of(quota: Quota, replicas: usize) -> Quota {
    let n = u32::try_from(replicas.max(1)).unwrap_or(u32::MAX);
    Quota {
        interval: quota.interval.saturating_mul(n),
        burst: quota.burst.div_ceil(n).max(1),
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The decision for an allowed request whose bucket is whole again after `reset`, with the
/// same arithmetic as the local limiter ([`Quota::decide`]).
fn allowed_decision(quota: Quota, reset: Duration) -> Decision {
    let tolerance = quota.interval.saturating_mul(quota.burst.saturating_sub(1));
    let headroom = (tolerance + quota.interval).saturating_sub(reset);
    let remaining = (headroom.as_nanos() / quota.interval.as_nanos().max(1)) as u64;
    Decision {
        allowed: true,
        remaining,
        reset,
        retry_after: Duration::ZERO,
        untracked: false,
    }
}

/// The decision for request `i` of a batch whose first `allowed` requests passed, the key's
/// TAT having been `base` ahead of now before them.
fn batch_decision(quota: Quota, base: Duration, allowed: usize, i: usize) -> Decision {
    let steps = |k: usize| {
        quota
            .interval
            .saturating_mul(u32::try_from(k).unwrap_or(u32::MAX))
    };
    if i < allowed {
        return allowed_decision(quota, base + steps(i + 1));
    }
    let whole_at = base + steps(allowed);
    let tolerance = quota.interval.saturating_mul(quota.burst.saturating_sub(1));
    refused_decision(whole_at, whole_at.saturating_sub(tolerance))
}

fn refused_decision(reset: Duration, retry_after: Duration) -> Decision {
    Decision {
        allowed: false,
        remaining: 0,
        reset,
        retry_after,
        untracked: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_divides_rate_and_burst() {
        let quota = Quota::new(50, Duration::from_secs(1), 10);
        let share = share_of(quota, 3);
        assert_eq!(share.interval, Duration::from_millis(60));
        assert_eq!(share.burst, 4);
        assert_eq!(share_of(quota, 1), quota);
        assert_eq!(share_of(Quota::new(1, Duration::from_secs(1), 1), 5).burst, 1);
    }

    #[test]
    fn a_batch_decides_like_the_same_requests_one_after_another() {
        let quota = Quota::new(10, Duration::from_secs(1), 5);
        let now = Instant::now();
        let mut tat = None;
        let mut one_by_one = Vec::new();
        for _ in 0..8 {
            let (decision, next) = quota.decide(tat, now);
            one_by_one.push(decision);
            tat = Some(next);
        }
        // What the script answers for 8 requests on a new key: 5 pass, the TAT was now.
        let batch: Vec<Decision> = (0..8)
            .map(|i| batch_decision(quota, Duration::ZERO, 5, i))
            .collect();
        assert_eq!(batch, one_by_one);
    }

    #[test]
    fn allowed_decisions_count_remaining_like_the_local_limiter() {
        let quota = Quota::new(10, Duration::from_secs(1), 5);
        let (local, _) = quota.decide(None, Instant::now());
        let fleet = allowed_decision(quota, local.reset);
        assert_eq!(fleet, local);
    }
}
