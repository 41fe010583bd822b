//! Latency histograms as Prometheus keeps them: a count per bucket (not cumulative until
//! rendered) and a sum, with the bucket bounds fixed by the kind of duration measured.

use std::fmt::Write as _;
use std::marker::PhantomData;
use std::time::Duration;

/// Upper bounds (seconds) of the latency histograms: sub-millisecond to a minute.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Upper bounds (seconds) of the gateway's own time per request: 5 µs to 50 ms (what it
/// adds is measured in microseconds; anything past 50 ms is a problem worth one bucket).
pub const OVERHEAD_BUCKETS: [f64; 13] = [
    0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
];

/// Slots every histogram has room for: the most bounds any kind has, and `+Inf`.
const SLOTS: usize = LATENCY_BUCKETS.len() + 1;

/// The bounds of a kind of histogram.
pub trait Bounds {
    const BOUNDS: &'static [f64];
}

/// Request and upstream durations ([`LATENCY_BUCKETS`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency;

impl Bounds for Latency {
    const BOUNDS: &'static [f64] = &LATENCY_BUCKETS;
}

/// The gateway's own time ([`OVERHEAD_BUCKETS`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Overhead;

impl Bounds for Overhead {
    const BOUNDS: &'static [f64] = &OVERHEAD_BUCKETS;
}

const _: () = assert!(OVERHEAD_BUCKETS.len() < SLOTS);

/// A histogram with per-bucket (not cumulative) counts.
#[derive(Debug, Clone)]
pub struct Histogram<B: Bounds = Latency> {
    /// One per bound of `B`, then `+Inf`; the rest unused.
    pub(super) counts: [u64; SLOTS],
    pub(super) sum: f64,
    bounds: PhantomData<B>,
}

impl<B: Bounds> Default for Histogram<B> {
    fn default() -> Self {
        Histogram {
            counts: [0; SLOTS],
            sum: 0.0,
            bounds: PhantomData,
        }
    }
}

impl<B: Bounds> Histogram<B> {
    pub fn observe(&mut self, value: Duration) {
        let secs = value.as_secs_f64();
        let slot = B::BOUNDS.partition_point(|bound| *bound < secs);
        if let Some(count) = self.counts.get_mut(slot) {
            *count += 1;
        }
        self.sum += secs;
    }

    pub(super) fn merge(&mut self, other: &Histogram<B>) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.sum += other.sum;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Writes `hist` as the `_bucket`, `_sum` and `_count` series of `name` with `labels`.
pub(super) fn histogram<B: Bounds>(out: &mut String, name: &str, labels: &str, hist: &Histogram<B>) {
    let mut cumulative = 0;
    for (bound, count) in B::BOUNDS.iter().zip(hist.counts.iter()) {
        cumulative += count;
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
    }
    let total = hist.count();
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {total}");
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", hist.sum);
    let _ = writeln!(out, "{name}_count{{{labels}}} {total}");
}
