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
//!
//! One breaker serves a target for the whole process: every worker thread reads and writes
//! it, so the evidence the config names (`min_requests`, `consecutive_failures`) opens it
//! wherever the failures happened, and the half-open probe count holds process-wide. Envoy's
//! outlier detection, Hystrix and Resilience4j all judge a target once per process for the
//! same reason; a per-thread breaker needs N times the evidence on N cores.
//!
//! The hot path takes no lock: the state is one `AtomicU64` (state, half-open generation and
//! either the opening time or the probe counts), changed by compare-and-swap, and outcomes go
//! into a sharded [`Window`] where each thread writes its own cache lines. A request in the
//! closed state costs one load of the state word, a load of the failure streak, and one
//! uncontended atomic update of its shard; only a failure reads every shard.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
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
    /// A request in the closed period numbered `generation`: its outcome counts only while
    /// the breaker is still closed in that period (not after it opened and closed again).
    Normal { generation: u32 },
    /// A half-open probe, from the half-open period numbered `generation`: an outcome from
    /// an earlier period says nothing about this one and is ignored.
    Probe { generation: u32 },
}

/// The state word: bits 0-1 the state, bits 2-21 the half-open generation, bits 22-63 the
/// payload (open: milliseconds since the breaker's epoch when it opened; half-open: probes in
/// flight in bits 22-42 and probes succeeded in bits 43-63).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Word(u64);

const TAG_CLOSED: u64 = 0;
const TAG_OPEN: u64 = 1;
const TAG_HALF_OPEN: u64 = 2;
const GENERATION_BITS: u32 = 20;
const PROBE_BITS: u32 = 21;
const PROBE_MAX: u64 = (1 << PROBE_BITS) - 1;

impl Word {
    fn new(tag: u64, generation: u32, payload: u64) -> Word {
        let generation = u64::from(generation) & ((1 << GENERATION_BITS) - 1);
        Word(tag | generation << 2 | payload << (2 + GENERATION_BITS))
    }
    fn closed(generation: u32) -> Word {
        Word::new(TAG_CLOSED, generation, 0)
    }
    fn open(generation: u32, at_ms: u64) -> Word {
        Word::new(TAG_OPEN, generation, at_ms & ((1 << 42) - 1))
    }
    fn half_open(generation: u32, in_flight: u64, succeeded: u64) -> Word {
        let payload = in_flight.min(PROBE_MAX) | succeeded.min(PROBE_MAX) << PROBE_BITS;
        Word::new(TAG_HALF_OPEN, generation, payload)
    }
    fn tag(self) -> u64 {
        self.0 & 0b11
    }
    fn generation(self) -> u32 {
        ((self.0 >> 2) & ((1 << GENERATION_BITS) - 1)) as u32
    }
    fn payload(self) -> u64 {
        self.0 >> (2 + GENERATION_BITS)
    }
    fn probes(self) -> (u64, u64) {
        let payload = self.payload();
        (payload & PROBE_MAX, payload >> PROBE_BITS & PROBE_MAX)
    }
}

/// One target's breaker, shared by every thread (see the module docs).
#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    epoch: Instant,
    /// `open_for` in whole milliseconds, rounded up.
    open_for_ms: u64,
    word: AtomicU64,
    /// a = successes, b = failures, while closed.
    window: Window,
    consecutive: AtomicU32,
}

impl CircuitBreaker {
    pub fn new(config: BreakerConfig, now: Instant) -> CircuitBreaker {
        let nanos = config.open_for.as_nanos();
        CircuitBreaker {
            window: Window::new(config.window, now),
            open_for_ms: u64::try_from(nanos.div_ceil(1_000_000)).unwrap_or(u64::MAX),
            config,
            epoch: now,
            word: AtomicU64::new(Word::closed(0).0),
            consecutive: AtomicU32::new(0),
        }
    }

    fn millis(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// Milliseconds since the epoch rounded up: an opening time stored this way never lets
    /// half-open start before `open_for` has really passed.
    fn millis_ceil(&self, now: Instant) -> u64 {
        let nanos = now.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(nanos.div_ceil(1_000_000)).unwrap_or(u64::MAX)
    }

    /// The state word now, an open breaker whose `open_for` has passed turned half-open.
    fn current(&self, now: Instant) -> Word {
        let mut word = Word(self.word.load(Ordering::Acquire));
        loop {
            if word.tag() != TAG_OPEN {
                return word;
            }
            // 42 bits of milliseconds last 139 years. A caller whose `now` was read just
            // before another thread opened the breaker sees no time passed, not a wrap.
            if self.millis(now).saturating_sub(word.payload()) < self.open_for_ms {
                return word;
            }
            let next = Word::half_open(word.generation().wrapping_add(1), 0, 0);
            match self
                .word
                .compare_exchange(word.0, next.0, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return next,
                Err(seen) => word = Word(seen),
            }
        }
    }

    /// The state now (an open breaker whose `open_for` has passed reads as half-open).
    pub fn state(&self, now: Instant) -> State {
        match self.current(now).tag() {
            TAG_CLOSED => State::Closed,
            TAG_OPEN => State::Open,
            _ => State::HalfOpen,
        }
    }

    /// Whether a request could be admitted now, without taking a permit.
    pub fn would_admit(&self, now: Instant) -> bool {
        let word = self.current(now);
        match word.tag() {
            TAG_CLOSED => true,
            TAG_HALF_OPEN => word.probes().0 < u64::from(self.config.half_open_probes),
            _ => false,
        }
    }

    /// Takes a permit, or `None` when the breaker refuses the request.
    pub fn try_acquire(&self, now: Instant) -> Option<Permit> {
        let mut word = self.current(now);
        loop {
            match word.tag() {
                TAG_CLOSED => {
                    return Some(Permit::Normal {
                        generation: word.generation(),
                    })
                }
                TAG_HALF_OPEN => {
                    let (in_flight, succeeded) = word.probes();
                    if in_flight >= u64::from(self.config.half_open_probes) {
                        return None;
                    }
                    let next = Word::half_open(word.generation(), in_flight + 1, succeeded);
                    match self
                        .word
                        .compare_exchange(word.0, next.0, Ordering::AcqRel, Ordering::Acquire)
                    {
                        Ok(_) => {
                            return Some(Permit::Probe {
                                generation: word.generation(),
                            })
                        }
                        Err(_) => word = self.current(now),
                    }
                }
                _ => return None,
            }
        }
    }

    /// Records the outcome of a request sent under `permit`.
    pub fn record(&self, permit: Permit, success: bool, now: Instant) {
        match permit {
            Permit::Probe { generation } => self.record_probe(generation, success, now),
            Permit::Normal { generation } => {
                // Outcomes of requests admitted before the state changed say nothing about
                // the target's health now.
                let word = self.current(now);
                if word.tag() != TAG_CLOSED || word.generation() != generation {
                    return;
                }
                if success {
                    // Read first: writing a zero that is already there would still take the
                    // cache line away from every other core.
                    if self.consecutive.load(Ordering::Relaxed) != 0 {
                        self.consecutive.store(0, Ordering::Relaxed);
                    }
                    self.window.add_a(now, 1);
                } else {
                    let streak = self.consecutive.fetch_add(1, Ordering::AcqRel).saturating_add(1);
                    self.window.add_b(now, 1);
                    let (ok, failed) = self.window.totals(now);
                    let total = ok + failed;
                    let rate_trips = total >= self.config.min_requests.max(1)
                        && failed as f64 >= self.config.failure_rate * total as f64;
                    let streak_trips =
                        self.config.consecutive_failures > 0 && streak >= self.config.consecutive_failures;
                    if rate_trips || streak_trips {
                        self.open_from(Word(self.word.load(Ordering::Acquire)), TAG_CLOSED, now);
                    }
                }
            }
        }
    }

    fn record_probe(&self, generation: u32, success: bool, now: Instant) {
        let mut word = self.current(now);
        loop {
            if word.tag() != TAG_HALF_OPEN || word.generation() != generation {
                return; // a probe of an earlier half-open period
            }
            if !success {
                self.open_from(word, TAG_HALF_OPEN, now);
                return;
            }
            let (in_flight, succeeded) = word.probes();
            let succeeded = succeeded + 1;
            let closes = succeeded >= u64::from(self.config.half_open_probes);
            if closes {
                // Closed again with a clean slate, cleared before the state says closed so
                // that no request of the new closed period sees the failures that opened it
                // (no outcome counts while half-open, so this is harmless if the swap below
                // loses to a failing probe).
                self.consecutive.store(0, Ordering::Release);
                self.window.clear();
            }
            let next = if closes {
                Word::closed(generation)
            } else {
                Word::half_open(generation, in_flight.saturating_sub(1), succeeded)
            };
            match self
                .word
                .compare_exchange(word.0, next.0, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(seen) => word = Word(seen),
            }
        }
    }

    /// Gives back a permit whose request was abandoned (client gone, shutdown) without an
    /// outcome: it says nothing about the target, but a probe's slot must be freed or a
    /// half-open breaker would refuse forever.
    pub fn release(&self, permit: Permit) {
        let Permit::Probe { generation } = permit else {
            return;
        };
        let mut word = Word(self.word.load(Ordering::Acquire));
        loop {
            if word.tag() != TAG_HALF_OPEN || word.generation() != generation {
                return;
            }
            let (in_flight, succeeded) = word.probes();
            let next = Word::half_open(generation, in_flight.saturating_sub(1), succeeded);
            match self
                .word
                .compare_exchange(word.0, next.0, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(seen) => word = Word(seen),
            }
        }
    }

    /// Opens the breaker if it is still in the state (`from`) and generation of `seen`; a
    /// breaker another thread opened (or closed) meanwhile is left as it is.
    fn open_from(&self, mut seen: Word, from: u64, now: Instant) {
        let generation = seen.generation();
        loop {
            if seen.tag() != from || seen.generation() != generation {
                return;
            }
            let next = Word::open(generation, self.millis_ceil(now));
            match self
                .word
                .compare_exchange(seen.0, next.0, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(actual) => seen = Word(actual),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(config: BreakerConfig) -> CircuitBreaker {
        CircuitBreaker::new(config, Instant::now())
    }

    fn send(b: &CircuitBreaker, success: bool) -> bool {
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
        let b = breaker(BreakerConfig {
            consecutive_failures: 0,
            min_requests: 10,
            failure_rate: 0.5,
            ..BreakerConfig::default()
        });
        for _ in 0..4 {
            send(&b, true);
            send(&b, false);
        }
        assert_eq!(
            b.state(Instant::now()),
            State::Closed,
            "8 requests: below min_requests"
        );
        send(&b, true);
        send(&b, false);
        assert_eq!(b.state(Instant::now()), State::Open, "10 requests, 50% failed");
        assert!(!send(&b, true), "open refuses");
    }

    #[tokio::test(start_paused = true)]
    async fn old_failures_leave_the_window() {
        let b = breaker(BreakerConfig {
            consecutive_failures: 0,
            min_requests: 4,
            window: Duration::from_secs(5),
            ..BreakerConfig::default()
        });
        send(&b, false);
        send(&b, false);
        send(&b, false);
        tokio::time::advance(Duration::from_secs(6)).await;
        for _ in 0..4 {
            send(&b, true);
        }
        send(&b, false);
        assert_eq!(b.state(Instant::now()), State::Closed, "1 failure in 5 now");
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_open_it_at_low_traffic() {
        let b = breaker(BreakerConfig {
            consecutive_failures: 3,
            min_requests: 100,
            ..BreakerConfig::default()
        });
        send(&b, false);
        send(&b, false);
        send(&b, true);
        send(&b, false);
        send(&b, false);
        assert_eq!(
            b.state(Instant::now()),
            State::Closed,
            "a success resets the streak"
        );
        send(&b, false);
        assert_eq!(b.state(Instant::now()), State::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_probes_then_closes_or_reopens() {
        let b = breaker(BreakerConfig {
            consecutive_failures: 1,
            open_for: Duration::from_secs(10),
            half_open_probes: 2,
            ..BreakerConfig::default()
        });
        send(&b, false);
        assert_eq!(b.state(Instant::now()), State::Open);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!b.would_admit(Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.state(Instant::now()), State::HalfOpen);

        // Two probes at a time, no more.
        let p1 = b.try_acquire(Instant::now()).unwrap();
        let p2 = b.try_acquire(Instant::now()).unwrap();
        assert!(matches!((p1, p2), (Permit::Probe { .. }, Permit::Probe { .. })));
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
        assert!(send(&b, true));
        assert_eq!(
            b.state(Instant::now()),
            State::HalfOpen,
            "one of two probes succeeded"
        );
        assert!(send(&b, true));
        assert_eq!(b.state(Instant::now()), State::Closed);
        // Closed again with a clean slate.
        assert!(send(&b, true));
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_frees_its_slot() {
        let b = breaker(BreakerConfig {
            consecutive_failures: 1,
            half_open_probes: 1,
            ..BreakerConfig::default()
        });
        send(&b, false);
        tokio::time::advance(Duration::from_secs(10)).await;
        let probe = b.try_acquire(Instant::now()).unwrap();
        assert!(b.try_acquire(Instant::now()).is_none());
        b.release(probe);
        assert!(b.try_acquire(Instant::now()).is_some(), "the slot is free again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_from_an_earlier_half_open_period_is_ignored() {
        let b = breaker(BreakerConfig {
            consecutive_failures: 1,
            half_open_probes: 2,
            ..BreakerConfig::default()
        });
        send(&b, false);
        tokio::time::advance(Duration::from_secs(10)).await;
        let early = b.try_acquire(Instant::now()).unwrap();
        let failing = b.try_acquire(Instant::now()).unwrap();
        b.record(failing, false, Instant::now());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            b.state(Instant::now()),
            State::HalfOpen,
            "a second half-open period"
        );
        b.record(early, true, Instant::now());
        assert!(send(&b, true));
        assert_eq!(
            b.state(Instant::now()),
            State::HalfOpen,
            "only this period's probes count: one of two succeeded"
        );
        let _third = b.try_acquire(Instant::now()).unwrap();
        let _fourth = b.try_acquire(Instant::now()).unwrap();
        b.release(early);
        assert!(
            b.try_acquire(Instant::now()).is_none(),
            "the old probe freed no slot"
        );
    }

    /// Threads share one breaker: it opens on exactly the failures the config names,
    /// whichever threads carried them, and half-open admits the configured probes in all.
    #[test]
    fn threads_share_one_breaker() {
        use std::sync::Arc;
        let b = Arc::new(breaker(BreakerConfig {
            consecutive_failures: 0,
            min_requests: 4,
            failure_rate: 0.5,
            half_open_probes: 3,
            open_for: Duration::from_secs(5),
            ..BreakerConfig::default()
        }));
        let fail_on_a_new_thread = |b: &Arc<CircuitBreaker>| {
            let b = b.clone();
            std::thread::spawn(move || send(&b, false)).join().unwrap()
        };
        for _ in 0..3 {
            assert!(fail_on_a_new_thread(&b));
        }
        assert_eq!(
            b.state(Instant::now()),
            State::Closed,
            "three failures of four needed"
        );
        assert!(fail_on_a_new_thread(&b));
        assert_eq!(
            b.state(Instant::now()),
            State::Open,
            "the fourth, on yet another thread"
        );
        assert!(!fail_on_a_new_thread(&b), "refused everywhere");

        let later = Instant::now() + Duration::from_secs(6);
        let probes: Vec<_> = (0..8)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || b.try_acquire(later))
            })
            .collect();
        let granted: Vec<Permit> = probes.into_iter().filter_map(|t| t.join().unwrap()).collect();
        assert_eq!(granted.len(), 3, "half_open_probes for the whole process");
        for permit in granted {
            b.record(permit, true, later);
        }
        assert_eq!(b.state(later), State::Closed);
    }

    /// A caller that read the clock just before another thread opened the breaker sees it
    /// open, not a wrapped-around elapsed time that would end the open period at once.
    #[tokio::test(start_paused = true)]
    async fn an_earlier_clock_reading_keeps_it_open() {
        let b = breaker(BreakerConfig {
            consecutive_failures: 1,
            ..BreakerConfig::default()
        });
        let before = Instant::now();
        tokio::time::advance(Duration::from_millis(5)).await;
        send(&b, false);
        assert!(!b.would_admit(before));
        assert!(b.try_acquire(before).is_none());
        assert_eq!(b.state(Instant::now()), State::Open);
    }

    /// A request let through before the breaker opened, finishing after it closed again,
    /// says nothing about the new closed period.
    #[tokio::test(start_paused = true)]
    async fn an_outcome_from_an_earlier_closed_period_is_ignored() {
        let b = breaker(BreakerConfig {
            consecutive_failures: 2,
            ..BreakerConfig::default()
        });
        let slow = b.try_acquire(Instant::now()).unwrap();
        send(&b, false);
        send(&b, false);
        assert_eq!(b.state(Instant::now()), State::Open);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(send(&b, true), "the probe");
        assert_eq!(b.state(Instant::now()), State::Closed);
        b.record(slow, false, Instant::now());
        send(&b, false);
        assert_eq!(
            b.state(Instant::now()),
            State::Closed,
            "one failure of this period, not two"
        );
    }
}
