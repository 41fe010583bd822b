//! The recent history behind the admin API's overview: a bounded ring of snapshots of the
//! request counters summed over every route (requests, 5xx answers, the duration histogram's
//! buckets), one every [`STEP`], and a smaller ring of per-route snapshots, one a minute.
//!
//! The counters are cumulative, so any stretch of time is the difference of two snapshots:
//! each point of the series is that of two consecutive snapshots over the time between them,
//! and a route's last fifteen minutes are its counts now minus those of the oldest per-route
//! snapshot at most [`WINDOW`] old. Nothing here grows with traffic: the rings hold at most
//! [`CAPACITY`] and [`ROUTE_CAPACITY`] snapshots, a per-route one as many entries as there are
//! routes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::metrics::LATENCY_BUCKETS;

/// Time between two snapshots of the summed counters.
pub const STEP: Duration = Duration::from_secs(5);
/// The span the overview covers.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Snapshots of the summed counters kept: [`WINDOW`] at [`STEP`].
pub const CAPACITY: usize = 180;
/// A per-route snapshot is taken with every this many snapshots (once a minute at [`STEP`]).
pub const ROUTE_EVERY: u64 = 12;
/// Per-route snapshots kept: a minute apart, so once the gateway has run fifteen minutes one
/// of them is always between fourteen and fifteen minutes old.
pub const ROUTE_CAPACITY: usize = 16;

/// Slots of a latency histogram: one per bound of [`LATENCY_BUCKETS`], then `+Inf`.
const SLOTS: usize = LATENCY_BUCKETS.len() + 1;

/// A latency histogram's per-bucket (not cumulative) counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Buckets(pub [u64; SLOTS]);

impl Buckets {
    pub fn count(&self) -> u64 {
        self.0.iter().sum()
    }

    pub fn add(&mut self, other: &Buckets) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a = a.saturating_add(*b);
        }
    }

    /// What was observed after `earlier` (an older snapshot of the same counters).
    pub fn since(&self, earlier: &Buckets) -> Buckets {
        let mut out = *self;
        for (a, b) in out.0.iter_mut().zip(earlier.0.iter()) {
            *a = a.saturating_sub(*b);
        }
        out
    }

    /// The `q` quantile in seconds, interpolated linearly within its bucket as Prometheus'
    /// `histogram_quantile` does (the first bucket starts at 0; a quantile in `+Inf` is the
    /// highest finite bound). `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let (mut below, mut lower) = (0u64, 0.0);
        for (slot, &count) in self.0.iter().enumerate() {
            let Some(&upper) = LATENCY_BUCKETS.get(slot) else {
                break;
            };
            if count > 0 && (below + count) as f64 >= rank {
                let within = (rank - below as f64) / count as f64;
                return Some(lower + (upper - lower) * within);
            }
            below += count;
            lower = upper;
        }
        LATENCY_BUCKETS.last().copied()
    }
}

/// Requests, those answered with a status of 500 or more, and their durations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub errors: u64,
    pub buckets: Buckets,
}

impl Counts {
    pub fn add(&mut self, other: &Counts) {
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        self.buckets.add(&other.buckets);
    }

    /// What was counted after `earlier` (an older snapshot of the same counters).
    pub fn since(&self, earlier: &Counts) -> Counts {
        Counts {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            buckets: self.buckets.since(&earlier.buckets),
        }
    }

    /// Errors per request (0 without requests).
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// The `q` latency quantile in milliseconds (`None` without requests).
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        self.buckets.quantile(q).map(|s| s * 1000.0)
    }

    /// These counts as rates over `seconds` (requests/s 0 over no time).
    pub fn rates(&self, seconds: f64) -> Rates {
        Rates {
            rps: if seconds > 0.0 {
                self.requests as f64 / seconds
            } else {
                0.0
            },
            error_rate: self.error_rate(),
            p50_ms: self.quantile_ms(0.5),
            p99_ms: self.quantile_ms(0.99),
        }
    }
}

/// Requests per second, errors per request and latency percentiles over a stretch of time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    pub rps: f64,
    pub error_rate: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// One point of the series: the step that ended at `t_ms` (Unix milliseconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub t_ms: u64,
    pub rates: Rates,
}

/// The summed counters at one moment.
#[derive(Debug, Clone, Copy)]
struct Snapshot {
    at: Instant,
    t_ms: u64,
    total: Counts,
}

/// Every route's counters at one moment.
#[derive(Debug)]
struct RouteSnapshot {
    at: Instant,
    routes: BTreeMap<Arc<str>, Counts>,
}

#[derive(Debug, Default)]
struct Rings {
    totals: VecDeque<Snapshot>,
    routes: VecDeque<RouteSnapshot>,
    taken: u64,
}

/// The overview's rings of snapshots (see the module's documentation).
#[derive(Debug)]
pub struct Series {
    started: Instant,
    rings: Mutex<Rings>,
}

impl Default for Series {
    fn default() -> Series {
        Series::new()
    }
}

impl Series {
    pub fn new() -> Series {
        Series {
            started: Instant::now(),
            rings: Mutex::default(),
        }
    }

    fn rings(&self) -> MutexGuard<'_, Rings> {
        self.rings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Time since the series was made (with the gateway's shared state).
    pub fn uptime(&self) -> Duration {
        Instant::now().saturating_duration_since(self.started)
    }

    /// Adds a snapshot of every route's counters taken at `at` (Unix time `t_ms`), dropping
    /// the oldest beyond the rings' capacities.
    pub fn record(&self, at: Instant, t_ms: u64, routes: BTreeMap<Arc<str>, Counts>) {
        let mut total = Counts::default();
        for counts in routes.values() {
            total.add(counts);
        }
        let mut rings = self.rings();
        if rings.taken.is_multiple_of(ROUTE_EVERY) {
            rings.routes.push_back(RouteSnapshot { at, routes });
            while rings.routes.len() > ROUTE_CAPACITY {
                rings.routes.pop_front();
            }
        }
        rings.taken += 1;
        rings.totals.push_back(Snapshot { at, t_ms, total });
        while rings.totals.len() > CAPACITY {
            rings.totals.pop_front();
        }
    }

    /// Snapshots of the summed counters held (at most [`CAPACITY`]).
    pub fn len(&self) -> usize {
        self.rings().totals.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The series, oldest first: each point the difference of two consecutive snapshots
    /// over the time between them (the step, unless the sampler was late).
    pub fn points(&self) -> Vec<Point> {
        let rings = self.rings();
        rings
            .totals
            .iter()
            .zip(rings.totals.iter().skip(1))
            .map(|(earlier, later)| {
                let seconds = later.at.saturating_duration_since(earlier.at).as_secs_f64();
                Point {
                    t_ms: later.t_ms,
                    rates: later.total.since(&earlier.total).rates(seconds),
                }
            })
            .collect()
    }

    /// Where a route's last [`WINDOW`] starts at `now`: the oldest per-route snapshot at most
    /// that old, when it was taken, and its counts; `None` while the series has no point yet
    /// (or no snapshot is recent enough).
    pub fn window_start(&self, now: Instant) -> Option<(Instant, BTreeMap<Arc<str>, Counts>)> {
        let rings = self.rings();
        if rings.totals.len() < 2 {
            return None;
        }
        rings
            .routes
            .iter()
            .find(|s| now.saturating_duration_since(s.at) <= WINDOW)
            .map(|s| (s.at, s.routes.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(requests: u64, errors: u64, slot: usize) -> Counts {
        let mut buckets = Buckets::default();
        buckets.0[slot] = requests;
        Counts {
            requests,
            errors,
            buckets,
        }
    }

    fn one_route(c: Counts) -> BTreeMap<Arc<str>, Counts> {
        BTreeMap::from([(Arc::from("r"), c)])
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        // 10 observations in (1 ms, 2.5 ms]: the median is halfway through it.
        let c = counts(10, 0, 2);
        assert!((c.quantile_ms(0.5).unwrap() - 1.75).abs() < 1e-9);
        assert!((c.quantile_ms(0.99).unwrap() - (1.0 + 1.5 * 0.99)).abs() < 1e-9);
        // The first bucket starts at 0.
        let first = counts(4, 0, 0);
        assert!((first.quantile_ms(0.5).unwrap() - 0.25).abs() < 1e-9);
        // Across buckets: 90 fast, 10 in (50, 100] ms; p99 is 90% through the slow one.
        let mut mixed = counts(90, 0, 0);
        mixed.add(&counts(10, 0, 7));
        assert!((mixed.quantile_ms(0.5).unwrap() - 0.5 * 50.0 / 90.0).abs() < 1e-9);
        assert!((mixed.quantile_ms(0.99).unwrap() - 95.0).abs() < 1e-9);
        // In +Inf: the highest finite bound.
        assert_eq!(counts(3, 0, SLOTS - 1).quantile_ms(0.5), Some(60_000.0));
        assert_eq!(Counts::default().quantile_ms(0.5), None);
    }

    #[test]
    fn each_point_is_the_difference_of_consecutive_snapshots_over_the_time_between() {
        let series = Series::new();
        let start = Instant::now();
        series.record(start, 1_000, one_route(counts(100, 5, 3)));
        assert!(series.points().is_empty());
        series.record(start + STEP, 6_000, one_route(counts(150, 15, 3)));
        series.record(start + STEP * 3, 16_000, one_route(counts(170, 15, 3)));
        let points = series.points();
        assert_eq!(points.len(), 2);
        assert_eq!(points[0].t_ms, 6_000);
        assert!((points[0].rates.rps - 10.0).abs() < 1e-9, "50 requests over 5 s");
        assert!((points[0].rates.error_rate - 0.2).abs() < 1e-9, "10 of 50");
        assert!(points[0].rates.p50_ms.unwrap() > 2.5 && points[0].rates.p50_ms.unwrap() <= 5.0);
        // A late sampler: the difference is divided by the time that really passed.
        assert!((points[1].rates.rps - 2.0).abs() < 1e-9, "20 requests over 10 s");
        assert_eq!(points[1].rates.error_rate, 0.0);
    }

    #[test]
    fn a_step_without_requests_has_no_percentiles() {
        let series = Series::new();
        let start = Instant::now();
        series.record(start, 0, one_route(counts(7, 0, 3)));
        series.record(start + STEP, 5_000, one_route(counts(7, 0, 3)));
        let rates = series.points()[0].rates;
        assert_eq!((rates.rps, rates.error_rate), (0.0, 0.0));
        assert_eq!((rates.p50_ms, rates.p99_ms), (None, None));
    }

    #[test]
    fn the_rings_never_grow_past_their_capacity() {
        let series = Series::new();
        let start = Instant::now();
        for i in 0..1_000u32 {
            series.record(
                start + STEP * i,
                u64::from(i),
                one_route(counts(u64::from(i), 0, 1)),
            );
            assert!(series.len() <= CAPACITY);
            assert!(series.rings().routes.len() <= ROUTE_CAPACITY);
        }
        assert_eq!(series.len(), CAPACITY);
        assert_eq!(series.points().len(), CAPACITY - 1);
        assert_eq!(series.rings().routes.len(), ROUTE_CAPACITY);
    }

    #[test]
    fn a_routes_window_starts_at_most_fifteen_minutes_back() {
        let series = Series::new();
        let start = Instant::now();
        series.record(start, 0, one_route(counts(1, 0, 1)));
        assert!(series.window_start(start).is_none(), "no point yet");
        for i in 1..=400u32 {
            let at = start + STEP * i;
            series.record(at, 0, one_route(counts(u64::from(i) + 1, 0, 1)));
            let (from, routes) = series.window_start(at).unwrap();
            let age = at - from;
            assert!(age <= WINDOW, "{age:?}");
            // Once the process has run a window, the window is at least 14 minutes long.
            if STEP * i >= WINDOW {
                assert!(age >= WINDOW - Duration::from_secs(60), "{age:?} at step {i}");
            } else {
                assert_eq!(from, start);
            }
            assert!(routes.contains_key("r"));
        }
    }
}
