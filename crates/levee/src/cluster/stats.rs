//! How a shared store answers: a latency histogram and an error count per store, kept in
//! atomics so that recording costs no lock on the request path.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds: a loopback Redis answers in tens of
/// microseconds, a remote one in a millisecond or two, a PostgreSQL batch in more.
const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0,
];

/// One store's latency histogram and error count.
#[derive(Debug)]
pub struct StoreStats {
    pub store: &'static str,
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
    errors: AtomicU64,
}

impl StoreStats {
    pub fn new(store: &'static str) -> StoreStats {
        StoreStats {
            store,
            buckets: Default::default(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            if let Some(bucket) = self.buckets.get(i) {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// This store's lines of `levee_cluster_store_seconds` (cumulative buckets).
    pub fn render_histogram(&self, out: &mut String) {
        let mut cumulative = 0;
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "levee_cluster_store_seconds_bucket{{store=\"{}\",le=\"{bound}\"}} {cumulative}",
                self.store
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "levee_cluster_store_seconds_bucket{{store=\"{}\",le=\"+Inf\"}} {count}",
            self.store
        );
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "levee_cluster_store_seconds_sum{{store=\"{}\"}} {sum}",
            self.store
        );
        let _ = writeln!(
            out,
            "levee_cluster_store_seconds_count{{store=\"{}\"}} {count}",
            self.store
        );
    }
}
