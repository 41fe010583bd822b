//! Memory of the rate limiter's key store under a flood of distinct keys, against what an
//! unbounded map would hold: `cargo run --release -p levee-resilience --example gcra_memory`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::HashMap;
use std::time::Duration;

use levee_resilience::{KeyedLimiter, Quota};
use tokio::time::Instant;

/// Resident set size in KiB, from /proc (Linux).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let keys = 1_000_000u32;
    let before = rss_kib();
    // 1 request/min per key: every key stays live for the whole run, the worst case for the
    // store (nothing can be swept, so the cap is what bounds it).
    let limiter = KeyedLimiter::new(Quota::new(1, Duration::from_secs(60), 1), 100_000);
    let started = std::time::Instant::now();
    let mut untracked = 0u64;
    for i in 0..keys {
        if limiter
            .check(&format!("203.0.113.{}:{i}", i % 256), Instant::now())
            .untracked
        {
            untracked += 1;
        }
    }
    let elapsed = started.elapsed();
    let with_limiter = rss_kib();
    println!(
        "bounded store: {keys} distinct keys in {:.2}s, {} stored (cap 100000), {untracked} untracked, RSS +{} KiB",
        elapsed.as_secs_f64(),
        limiter.len(),
        with_limiter.saturating_sub(before)
    );
    drop(limiter);

    let before = rss_kib();
    let mut unbounded: HashMap<String, Instant> = HashMap::new();
    for i in 0..keys {
        unbounded.insert(format!("203.0.113.{}:{i}", i % 256), Instant::now());
    }
    println!(
        "unbounded map for comparison: {} keys, RSS +{} KiB",
        unbounded.len(),
        rss_kib().saturating_sub(before)
    );
}
