//! A consumer's LLM budget and token and request limits held for the whole fleet, in Redis.
//!
//! The same reserve-then-settle protocol as the local [`super::quota`], with each step one
//! Lua script, so it is atomic across replicas: admission checks the budget and takes a
//! request slot and the call's token reservation in one step; the end of the call returns
//! unused tokens and adds its cost. The budget's period starts with the first spend in the
//! fleet (the key expires with it). The overspend is bounded as it is locally: by the calls
//! in flight when the budget runs out, whose cost is only known when they end.
//!
//! Redis slow or down: the call is admitted against this replica's share (budget and limits
//! divided by the replicas it last saw alive), counted in
//! `levee_cluster_fallback_total{component="llm_quota"}`, and settled where it was admitted.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use super::quota::{ConsumerQuota, Refusal};
use crate::cluster::redis::RedisStore;
use crate::cluster::Cluster;

/// KEYS: spent, tokens, requests. ARGV: budget USD (-1: none), tokens/min (-1), requests/min
/// (-1), tokens to reserve. Returns {0} admitted, {1, ms} budget spent (renews in ms),
/// {2, ms} tokens short, {3, ms} requests short.
static ADMIT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        local usd, tpm, rpm, need = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
        if usd >= 0 then
            local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
            if spent >= usd then
                return {1, math.max(redis.call('PTTL', KEYS[1]), 0)}
            end
        end
        local function level(key, per_minute)
            local h = redis.call('HMGET', key, 'available', 'last')
            local available = tonumber(h[1]) or per_minute
            local last = tonumber(h[2]) or now
            return math.min(per_minute, available + math.max(now - last, 0) * per_minute / 60000)
        end
        local requests, tokens
        if rpm >= 0 then
            requests = level(KEYS[3], rpm)
            if requests < 1 then return {3, math.ceil((1 - requests) * 60000 / rpm)} end
        end
        if tpm >= 0 then
            tokens = level(KEYS[2], tpm)
            need = math.min(need, tpm)
            if tokens < need then return {2, math.ceil((need - tokens) * 60000 / tpm)} end
            redis.call('HSET', KEYS[2], 'available', tostring(tokens - need), 'last', tostring(now))
            redis.call('PEXPIRE', KEYS[2], 120000)
        end
        if rpm >= 0 then
            redis.call('HSET', KEYS[3], 'available', tostring(requests - 1), 'last', tostring(now))
            redis.call('PEXPIRE', KEYS[3], 120000)
        end
        return {0, 0}
        ",
    )
});

/// KEYS: spent, tokens. ARGV: cost USD, tokens reserved, tokens used, tokens/min (-1: none),
/// budget period in ms. Adds the cost (starting the period with the first spend) and returns
/// the unused reservation (or takes the excess).
static SETTLE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local cost, reserved, used, tpm, period = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
        if cost > 0 and period > 0 then
            local fresh = redis.call('EXISTS', KEYS[1]) == 0
            redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
            if fresh then redis.call('PEXPIRE', KEYS[1], period) end
        end
        if tpm >= 0 then
            local t = redis.call('TIME')
            local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
            local h = redis.call('HMGET', KEYS[2], 'available', 'last')
            local available = tonumber(h[1]) or tpm
            local last = tonumber(h[2]) or now
            available = math.min(tpm, available + math.max(now - last, 0) * tpm / 60000)
            available = math.min(tpm, available + math.min(reserved, tpm) - used)
            redis.call('HSET', KEYS[2], 'available', tostring(available), 'last', tostring(now))
            redis.call('PEXPIRE', KEYS[2], 120000)
        end
        return 0
        ",
    )
});

/// Where an admitted call's reservation is held.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Held {
    /// In Redis, for the fleet.
    Fleet,
    /// In this replica's share, because Redis did not answer.
    Share,
}

/// One consumer's limits for the fleet.
#[derive(Debug)]
pub struct FleetQuota {
    cluster: Arc<Cluster>,
    redis: Arc<RedisStore>,
    /// spent, tokens, requests.
    keys: [String; 3],
    budget: Option<(f64, Duration)>,
    limits: (Option<u64>, Option<u64>),
    /// This replica's share, used while Redis does not answer, sized for the replicas seen.
    share: ArcSwap<(usize, ConsumerQuota)>,
}

impl FleetQuota {
    pub fn new(
        cluster: Arc<Cluster>,
        redis: Arc<RedisStore>,
        consumer: &str,
        budget: Option<(f64, Duration)>,
        limits: Option<(Option<u64>, Option<u64>)>,
    ) -> FleetQuota {
        let limits = limits.unwrap_or((None, None));
        let replicas = cluster.replicas();
        let share = share_of(budget, limits, replicas);
        // Braces make the three keys one hash slot, should the Redis be a cluster.
        let base = redis.key(&["llm", &format!("{{{consumer}}}")]);
        FleetQuota {
            keys: [
                format!("{base}:spent"),
                format!("{base}:tokens"),
                format!("{base}:requests"),
            ],
            cluster,
            redis,
            budget,
            limits,
            share: ArcSwap::from_pointee(share),
        }
    }

    /// Admits a call that may use up to `tokens`, for the fleet when Redis answers.
    pub async fn admit(&self, tokens: u64) -> Result<Held, Refusal> {
        let keys = self.keys.clone();
        let usd = self.budget.map_or(-1.0, |(usd, _)| usd);
        let (tpm, rpm) = (as_arg(self.limits.0), as_arg(self.limits.1));
        let answer = self
            .redis
            .call(|mut conn| async move {
                ADMIT
                    .key(&keys[0])
                    .key(&keys[1])
                    .key(&keys[2])
                    .arg(usd)
                    .arg(tpm)
                    .arg(rpm)
                    .arg(tokens)
                    .invoke_async::<(i64, i64)>(&mut conn)
                    .await
            })
            .await;
        let Some((verdict, ms)) = answer else {
            self.cluster.fallback("llm_quota");
            return self
                .local_share()
                .1
                .admit(tokens, Instant::now())
                .map(|_| Held::Share);
        };
        let wait = Duration::from_millis(ms.max(0).unsigned_abs());
        match verdict {
            0 => Ok(Held::Fleet),
            1 => Err(Refusal::Budget {
                usd: usd.max(0.0),
                resets_in: if wait.is_zero() {
                    self.budget.map_or(wait, |(_, p)| p)
                } else {
                    wait
                },
            }),
            2 => Err(Refusal::Tokens { retry_after: wait }),
            _ => Err(Refusal::Requests { retry_after: wait }),
        }
    }

    /// Settles a call admitted as `held` with what it used and cost.
    pub async fn settle(&self, held: Held, reserved: u64, used: u64, cost_usd: f64) {
        if held == Held::Share {
            let reservation = super::quota::Reservation { tokens: reserved };
            self.local_share()
                .1
                .settle(reservation, used, cost_usd, Instant::now());
            return;
        }
        let keys = self.keys.clone();
        let tpm = as_arg(self.limits.0);
        let period = self
            .budget
            .map_or(0, |(_, p)| u64::try_from(p.as_millis()).unwrap_or(u64::MAX));
        let settled: Option<i64> = self
            .redis
            .call_background(|mut conn| async move {
                SETTLE
                    .key(&keys[0])
                    .key(&keys[1])
                    .arg(cost_usd)
                    .arg(reserved)
                    .arg(used)
                    .arg(tpm)
                    .arg(period)
                    .invoke_async(&mut conn)
                    .await
            })
            .await;
        if settled.is_none() {
            // The spend is not lost from this replica's view: its share carries it.
            self.cluster.fallback("llm_quota");
            let reservation = super::quota::Reservation { tokens: 0 };
            self.local_share()
                .1
                .settle(reservation, 0, cost_usd, Instant::now());
        }
    }

    /// Returns the reservation of a call that no provider served.
    pub async fn release(&self, held: Held, reserved: u64) {
        self.settle(held, reserved, 0, 0.0).await;
    }

    fn local_share(&self) -> Arc<(usize, ConsumerQuota)> {
        let replicas = self.cluster.replicas();
        let current = self.share.load_full();
        if current.0 == replicas {
            return current;
        }
        let next = Arc::new(share_of(self.budget, self.limits, replicas));
        self.share.store(next.clone());
        next
    }
}

fn as_arg(limit: Option<u64>) -> i64 {
    limit.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX))
}

/// One replica's share of a consumer's limits among `replicas`.
fn share_of(
    budget: Option<(f64, Duration)>,
    limits: (Option<u64>, Option<u64>),
    replicas: usize,
) -> (usize, ConsumerQuota) {
    let n = replicas.max(1);
    let budget = budget.map(|(usd, period)| (usd / n as f64, period));
    let divide = |limit: Option<u64>| limit.map(|l| l.div_ceil(n as u64).max(1));
    let limits = Some((divide(limits.0), divide(limits.1)));
    (n, ConsumerQuota::new(budget, limits, Instant::now()))
}

/// A consumer's LLM limits: held in this process, or for the fleet in cluster mode.
#[derive(Debug)]
pub enum ConsumerLimits {
    Local(ConsumerQuota),
    Fleet(FleetQuota),
}

/// An admitted call's reservation, to settle or release when it ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Admission {
    tokens: u64,
    /// `None`: held by the local quota.
    held: Option<Held>,
}

impl ConsumerLimits {
    /// The limits of a consumer: for the fleet when the cluster has Redis.
    pub fn new(
        consumer: &str,
        budget: Option<(f64, Duration)>,
        limits: Option<(Option<u64>, Option<u64>)>,
        cluster: Option<&Arc<Cluster>>,
    ) -> ConsumerLimits {
        match cluster.and_then(|c| Some((c, c.redis.clone()?))) {
            Some((cluster, redis)) => {
                ConsumerLimits::Fleet(FleetQuota::new(cluster.clone(), redis, consumer, budget, limits))
            }
            None => ConsumerLimits::Local(ConsumerQuota::new(budget, limits, Instant::now())),
        }
    }

    /// The budget (US dollars, period) and the spend of its current period as this process
    /// knows it. For the fleet the spend is kept in Redis and not read here: `None`.
    pub fn budget(&self) -> Option<(f64, Duration, Option<f64>)> {
        match self {
            ConsumerLimits::Local(quota) => quota
                .budget(Instant::now())
                .map(|(usd, period, spent)| (usd, period, Some(spent))),
            ConsumerLimits::Fleet(fleet) => fleet.budget.map(|(usd, period)| (usd, period, None)),
        }
    }

    /// Takes up the spend an earlier run recorded (see [`ConsumerQuota::resume`]). For the
    /// fleet, Redis keeps the spend itself: nothing to take up.
    pub fn resume(&self, spent: f64, age: Duration) {
        if let ConsumerLimits::Local(quota) = self {
            quota.resume(spent, age, Instant::now());
        }
    }

    pub async fn admit(&self, tokens: u64) -> Result<Admission, Refusal> {
        match self {
            ConsumerLimits::Local(quota) => quota.admit(tokens, Instant::now()).map(|r| Admission {
                tokens: r.tokens,
                held: None,
            }),
            ConsumerLimits::Fleet(fleet) => fleet.admit(tokens).await.map(|held| Admission {
                tokens,
                held: Some(held),
            }),
        }
    }

    /// Settles an admitted call with what it used and cost. For the fleet the write to
    /// Redis runs in the background: the end of a response never waits for it.
    pub fn settle(self: &Arc<Self>, admission: Admission, used: u64, cost_usd: f64) {
        match (&**self, admission.held) {
            (ConsumerLimits::Fleet(_), Some(held)) => {
                let limits = self.clone();
                spawn_or_settle_here(limits, held, admission.tokens, used, cost_usd);
            }
            (ConsumerLimits::Local(quota), _) => {
                let reservation = super::quota::Reservation {
                    tokens: admission.tokens,
                };
                quota.settle(reservation, used, cost_usd, Instant::now());
            }
            (ConsumerLimits::Fleet(_), None) => {}
        }
    }

    /// Returns the reservation of a call that no provider served.
    pub fn release(self: &Arc<Self>, admission: Admission) {
        match &**self {
            ConsumerLimits::Local(quota) => quota.release(super::quota::Reservation {
                tokens: admission.tokens,
            }),
            ConsumerLimits::Fleet(_) => self.settle(admission, 0, 0.0),
        }
    }
}

/// Settles a fleet reservation on the current event loop, or (outside one) against the
/// replica's share so that the spend is still counted somewhere.
fn spawn_or_settle_here(limits: Arc<ConsumerLimits>, held: Held, reserved: u64, used: u64, cost_usd: f64) {
    let ConsumerLimits::Fleet(fleet) = &*limits else {
        return;
    };
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(async move {
                if let ConsumerLimits::Fleet(fleet) = &*limits {
                    fleet.settle(held, reserved, used, cost_usd).await;
                }
            });
        }
        Err(_) => {
            let reservation = super::quota::Reservation { tokens: 0 };
            fleet
                .local_share()
                .1
                .settle(reservation, 0, cost_usd, Instant::now());
        }
    }
}
