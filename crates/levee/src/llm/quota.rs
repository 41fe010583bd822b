//! Per-consumer spending budgets and token and request rate limits on LLM calls.
//!
//! A call is admitted before any provider is asked: the budget must not be spent yet, a
//! request slot must be free, and the call reserves tokens (its `max_tokens` plus an estimate
//! of the prompt) from the consumer's tokens-per-minute bucket. When the call ends its real
//! usage settles the reservation (unused tokens return; a larger use is taken, which can
//! leave the bucket owing) and its cost is added to the budget. A call that no provider
//! served returns its reservation. The state lives in the process: budgets restart with it.
//!
//! A budget can be overshot by the calls in flight when it runs out (their cost is only known
//! at the end); it is never overshot by a new call.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// The budget of the period is spent.
    Budget { usd: f64, resets_in: Duration },
    /// Not enough tokens left this minute.
    Tokens { retry_after: Duration },
    /// Too many calls this minute.
    Requests { retry_after: Duration },
}

/// A bucket refilled continuously at `per_minute / 60` per second, holding at most
/// `per_minute`. It may go negative when usage exceeded a reservation.
#[derive(Debug)]
struct Bucket {
    per_minute: f64,
    available: f64,
    last: Instant,
}

impl Bucket {
    fn new(per_minute: u64, now: Instant) -> Bucket {
        Bucket {
            per_minute: per_minute as f64,
            available: per_minute as f64,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.available = (self.available + elapsed * self.per_minute / 60.0).min(self.per_minute);
        self.last = now;
    }

    /// Takes `n` (at most the whole bucket), or says how long until it could.
    fn take(&mut self, n: f64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        let n = n.min(self.per_minute);
        if self.available >= n {
            self.available -= n;
            return Ok(());
        }
        let missing = n - self.available;
        Err(Duration::from_secs_f64(
            (missing * 60.0 / self.per_minute).max(0.001),
        ))
    }

    fn give_back(&mut self, n: f64) {
        self.available = (self.available + n).min(self.per_minute);
    }
}

#[derive(Debug)]
struct Budget {
    usd: f64,
    period: Duration,
    started: Option<Instant>,
    spent: f64,
}

impl Budget {
    fn roll(&mut self, now: Instant) {
        match self.started {
            Some(start) if now.saturating_duration_since(start) < self.period => {}
            _ => {
                self.started = Some(now);
                self.spent = 0.0;
            }
        }
    }
}

#[derive(Debug)]
struct State {
    budget: Option<Budget>,
    tokens: Option<Bucket>,
    requests: Option<Bucket>,
}

/// One consumer's limits and their state.
#[derive(Debug)]
pub struct ConsumerQuota {
    state: Mutex<State>,
}

/// Tokens taken by an admitted call, to settle when it ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reservation {
    pub tokens: u64,
}

impl ConsumerQuota {
    pub fn new(
        budget: Option<(f64, Duration)>,
        limits: Option<(Option<u64>, Option<u64>)>,
        now: Instant,
    ) -> ConsumerQuota {
        let (tokens, requests) = limits.unwrap_or((None, None));
        ConsumerQuota {
            state: Mutex::new(State {
                budget: budget.map(|(usd, period)| Budget {
                    usd,
                    period,
                    started: None,
                    spent: 0.0,
                }),
                tokens: tokens.map(|n| Bucket::new(n, now)),
                requests: requests.map(|n| Bucket::new(n, now)),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes up a budget period an earlier run started `age` ago with `spent` already spent
    /// (kept in the management store), so that a restart does not hand out the budget again.
    pub fn resume(&self, spent: f64, age: Duration, now: Instant) {
        let mut state = self.state();
        if let Some(budget) = state.budget.as_mut() {
            if age < budget.period {
                budget.started = Some(now.checked_sub(age).unwrap_or(now));
                budget.spent = spent.max(0.0);
            }
        }
    }

    /// Admits a call that may use up to `tokens`, or says why not.
    pub fn admit(&self, tokens: u64, now: Instant) -> Result<Reservation, Refusal> {
        let mut state = self.state();
        if let Some(budget) = state.budget.as_mut() {
            budget.roll(now);
            if budget.spent >= budget.usd {
                let resets_in = budget.started.map_or(budget.period, |s| {
                    budget.period.saturating_sub(now.saturating_duration_since(s))
                });
                return Err(Refusal::Budget {
                    usd: budget.usd,
                    resets_in,
                });
            }
        }
        if let Some(requests) = state.requests.as_mut() {
            requests
                .take(1.0, now)
                .map_err(|retry_after| Refusal::Requests { retry_after })?;
        }
        if let Some(bucket) = state.tokens.as_mut() {
            if let Err(retry_after) = bucket.take(tokens as f64, now) {
                // The request slot taken above is given back: nothing was sent.
                if let Some(requests) = state.requests.as_mut() {
                    requests.give_back(1.0);
                }
                return Err(Refusal::Tokens { retry_after });
            }
        }
        Ok(Reservation { tokens })
    }

    /// Settles an admitted call with what it really used and cost.
    pub fn settle(&self, reservation: Reservation, used_tokens: u64, cost_usd: f64, now: Instant) {
        let mut state = self.state();
        if let Some(bucket) = state.tokens.as_mut() {
            bucket.refill(now);
            let reserved = (reservation.tokens as f64).min(bucket.per_minute);
            bucket.available += reserved - used_tokens as f64;
            bucket.available = bucket.available.min(bucket.per_minute);
        }
        if let Some(budget) = state.budget.as_mut() {
            budget.roll(now);
            budget.spent += cost_usd;
        }
    }

    /// Returns the reservation of a call that no provider served.
    pub fn release(&self, reservation: Reservation) {
        let mut state = self.state();
        if let Some(bucket) = state.tokens.as_mut() {
            bucket.give_back(reservation.tokens as f64);
        }
    }

    /// The budget in US dollars, its period, and what was spent of it in the period running
    /// at `now` (0 once the period is over: the next call starts a new one).
    pub fn budget(&self, now: Instant) -> Option<(f64, Duration, f64)> {
        let state = self.state();
        let budget = state.budget.as_ref()?;
        let running = budget
            .started
            .is_some_and(|s| now.saturating_duration_since(s) < budget.period);
        Some((
            budget.usd,
            budget.period,
            if running { budget.spent } else { 0.0 },
        ))
    }

    /// US dollars spent in the current period (for tests and the admin API).
    pub fn spent_usd(&self) -> f64 {
        self.state().budget.as_ref().map_or(0.0, |b| b.spent)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_budget_stops_new_calls_once_spent_and_resets_with_its_period() {
        let now = Instant::now();
        let quota = ConsumerQuota::new(Some((1.0, Duration::from_secs(3600))), None, now);
        let call = quota.admit(10, now).unwrap();
        quota.settle(call, 10, 0.6, now);
        let call = quota.admit(10, now).unwrap();
        quota.settle(call, 10, 0.6, now);
        assert!(matches!(quota.admit(10, now), Err(Refusal::Budget { .. })));
        tokio::time::advance(Duration::from_secs(3601)).await;
        assert!(quota.admit(10, Instant::now()).is_ok(), "a new period");
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_are_reserved_then_settled_with_the_real_usage() {
        let now = Instant::now();
        let quota = ConsumerQuota::new(None, Some((Some(100), Some(10))), now);
        let first = quota.admit(60, now).unwrap();
        // 40 left: a call reserving 60 waits, one reserving 40 passes.
        assert!(matches!(quota.admit(60, now), Err(Refusal::Tokens { .. })));
        quota.settle(first, 20, 0.0, now);
        // The unused 40 came back: 80 available.
        let second = quota.admit(80, now).unwrap();
        assert!(matches!(quota.admit(1, now), Err(Refusal::Tokens { .. })));
        quota.release(second);
        assert!(quota.admit(80, now).is_ok());
        // A minute refills the bucket.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(quota.admit(100, Instant::now()).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn requests_per_minute_are_counted() {
        let now = Instant::now();
        let quota = ConsumerQuota::new(None, Some((None, Some(2))), now);
        assert!(quota.admit(0, now).is_ok());
        assert!(quota.admit(0, now).is_ok());
        let Err(Refusal::Requests { retry_after }) = quota.admit(0, now) else {
            panic!("a third call in the same instant is refused");
        };
        assert!(retry_after <= Duration::from_secs(30));
    }
}
