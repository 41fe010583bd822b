//! A circuit breaker for one target: closed, open, half-open.
//!
//! * **Closed**: requests flow; outcomes are counted over a sliding window. The breaker opens
//!   when the failure rate reaches `failure_rate` once at least `min_requests` were seen in the
//!   window (so two failures out of two requests at 3 a.m. do not open it), or after
//!   `consecutive_failures` failures in a row (so a target that fails everything opens fast
//!   even at low traffic).
//! * **Open**: no requests are sent; callers fail fast or go elsewhere. After `open_for`
//!   the breaker turns half-open.
//! * **Half-open**: up to `half_open_probes` requests at a time are let through as probes.
//!   That many successes close the breaker; any failure opens it again for another `open_for`.

use std::time::Duration;

use tokio::time::Instant;

use crate::window::Window;

/// Breaker thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    pub failure_rate: f64,
    pub min_requests: u64,
    pub window: Duration,
    pub open_for: Duration,
    pub consecutive_failures: u32,
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_rate: 0.5,
            min_requests: 20,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(10),
            consecutive_failures: 5,
            half_open_probes: 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    /// The value of `levee_circuit_state`: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> u8 {
        match self {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::HalfOpen => "half_open",
            State::Open => "open",
        }
    }
}

/// Permission to send one request; hand it back with the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    Normal,
    Probe,
}

#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    state: State,
    opened_at: Instant,
    /// a = successes, b = failures, while closed.
    window: Window,
    consecutive: u32,
    probes_in_flight: u32,
    probes_succeeded: u32,
}

impl CircuitBreaker {
    pub fn new(config: BreakerConfig, now: Instant) -> CircuitBreaker {
        CircuitBreaker {
            window: Window::new(config.window, now),
            config,
            state: State::Closed,
            opened_at: now,
            consecutive: 0,
            probes_in_flight: 0,
            probes_succeeded: 0,
        }
    }

    /// The state now (an open breaker whose `open_for` has passed reads as half-open).
    pub fn state(&mut self, now: Instant) -> State {
        if self.state == State::Open && now.saturating_duration_since(self.opened_at) >= self.config.open_for
        {
            self.state = State::HalfOpen;
            self.probes_in_flight = 0;
            self.probes_succeeded = 0;
        }
        self.state
    }

    /// Whether a request could be admitted now, without taking a permit.
    pub fn would_admit(&mut self, now: Instant) -> bool {
        match self.state(now) {
            State::Closed => true,
            State::HalfOpen => self.probes_in_flight < self.config.half_open_probes,
            State::Open => false,
        }
    }

    /// Takes a permit, or `None` when the breaker refuses the request.
    pub fn try_acquire(&mut self, now: Instant) -> Option<Permit> {
        match self.state(now) {
            State::Closed => Some(Permit::Normal),
            State::HalfOpen if self.probes_in_flight < self.config.half_open_probes => {
                self.probes_in_flight += 1;
                Some(Permit::Probe)
            }
            _ => None,
        }
    }

    /// Records the outcome of a request sent under `permit`.
    pub fn record(&mut self, permit: Permit, success: bool, now: Instant) {
        let state = self.state(now);
        match (permit, state) {
            (Permit::Probe, State::HalfOpen) => {
                self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
                if success {
                    self.probes_succeeded += 1;
                    if self.probes_succeeded >= self.config.half_open_probes {
                        self.close();
                    }
                } else {
                    self.open(now);
                }
            }
            (_, State::Closed) => {
                if success {
                    self.consecutive = 0;
                    self.window.add_a(now, 1);
                } else {
                    self.consecutive += 1;
                    self.window.add_b(now, 1);
                    let (ok, failed) = self.window.totals(now);
                    let total = ok + failed;
                    let rate_trips = total >= self.config.min_requests.max(1)
                        && failed as f64 >= self.config.failure_rate * total as f64;
                    let streak_trips = self.config.consecutive_failures > 0
                        && self.consecutive >= self.config.consecutive_failures;
                    if rate_trips || streak_trips {
                        self.open(now);
                    }
                }
            }
            // Outcomes of requests admitted before the state changed: they say nothing about
            // the target's health now.
            _ => {}
        }
    }

    /// Gives back a permit whose request was abandoned (client gone, shutdown) without an
    /// outcome: it says nothing about the target, but a probe's slot must be freed or a
    /// half-open breaker would refuse forever.
    pub fn release(&mut self, permit: Permit) {
        if permit == Permit::Probe && self.state == State::HalfOpen {
            self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
        }
    }

    fn open(&mut self, now: Instant) {
        self.state = State::Open;
        self.opened_at = now;
        self.probes_in_flight = 0;
        self.probes_succeeded = 0;
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.consecutive = 0;
        self.window.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(config: BreakerConfig) -> CircuitBreaker {
        CircuitBreaker::new(config, Instant::now())
    }

    fn send(b: &mut CircuitBreaker, success: bool) -> bool {
        match b.try_acquire(Instant::now()) {
            Some(permit) => {
                b.record(permit, success, Instant::now());
                true
            }
            None => false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_failure_rate_only_after_min_requests() {
        let mut b = breaker(BreakerConfig {
            consecutive_failures: 0,
            min_requests: 10,
            failure_rate: 0.5,
            ..BreakerConfig::default()
        });
        for _ in 0..4 {
            send(&mut b, true);
            send(&mut b, false);
        }
        assert_eq!(
            b.state(Instant::now()),
            State::Closed,
            "8 requests: below min_requests"
        );
        send(&mut b, true);
        send(&mut b, false);
        assert_eq!(b.state(Instant::now()), State::Open, "10 requests, 50% failed");
        assert!(!send(&mut b, true), "open refuses");
    }

    #[tokio::test(start_paused = true)]
    async fn old_failures_leave_the_window() {
        let mut b = breaker(BreakerConfig {
            consecutive_failures: 0,
            min_requests: 4,
            window: Duration::from_secs(5),
            ..BreakerConfig::default()
        });
        send(&mut b, false);
        send(&mut b, false);
        send(&mut b, false);
        tokio::time::advance(Duration::from_secs(6)).await;
        for _ in 0..4 {
            send(&mut b, true);
        }
        send(&mut b, false);
        assert_eq!(b.state(Instant::now()), State::Closed, "1 failure in 5 now");
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_open_it_at_low_traffic() {
        let mut b = breaker(BreakerConfig {
            consecutive_failures: 3,
            min_requests: 100,
            ..BreakerConfig::default()
        });
        send(&mut b, false);
        send(&mut b, false);
        send(&mut b, true);
        send(&mut b, false);
        send(&mut b, false);
        assert_eq!(
            b.state(Instant::now()),
            State::Closed,
            "a success resets the streak"
        );
        send(&mut b, false);
        assert_eq!(b.state(Instant::now()), State::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_probes_then_closes_or_reopens() {
        let mut b = breaker(BreakerConfig {
            consecutive_failures: 1,
            open_for: Duration::from_secs(10),
            half_open_probes: 2,
            ..BreakerConfig::default()
        });
        send(&mut b, false);
        assert_eq!(b.state(Instant::now()), State::Open);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!b.would_admit(Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.state(Instant::now()), State::HalfOpen);

        // Two probes at a time, no more.
        let p1 = b.try_acquire(Instant::now()).unwrap();
        let p2 = b.try_acquire(Instant::now()).unwrap();
        assert_eq!((p1, p2), (Permit::Probe, Permit::Probe));
        assert!(b.try_acquire(Instant::now()).is_none());
        // A failed probe reopens for another open_for.
        b.record(p1, false, Instant::now());
        assert_eq!(b.state(Instant::now()), State::Open);
        b.record(p2, true, Instant::now());
        assert_eq!(
            b.state(Instant::now()),
            State::Open,
            "a stale probe result changes nothing"
        );

        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(send(&mut b, true));
        assert_eq!(
            b.state(Instant::now()),
            State::HalfOpen,
            "one of two probes succeeded"
        );
        assert!(send(&mut b, true));
        assert_eq!(b.state(Instant::now()), State::Closed);
        // Closed again with a clean slate.
        assert!(send(&mut b, true));
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_frees_its_slot() {
        let mut b = breaker(BreakerConfig {
            consecutive_failures: 1,
            half_open_probes: 1,
            ..BreakerConfig::default()
        });
        send(&mut b, false);
        tokio::time::advance(Duration::from_secs(10)).await;
        let probe = b.try_acquire(Instant::now()).unwrap();
        assert!(b.try_acquire(Instant::now()).is_none());
        b.release(probe);
        assert!(b.try_acquire(Instant::now()).is_some(), "the slot is free again");
    }
}
