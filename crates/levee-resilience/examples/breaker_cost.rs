//! What the process-wide circuit breaker costs per request: a permit taken and a success
//! recorded, on one thread and on several threads sharing one breaker (each thread counts
//! into its own shard), next to the same work on a `Mutex` held per request.
//!
//! `cargo run --release -p levee-resilience --example breaker_cost [THREADS] [MILLIONS]`
use std::sync::{Arc, Mutex};
use std::time::Instant as Wall;

use levee_resilience::{BreakerConfig, CircuitBreaker};
use tokio::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let threads: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);
    let millions: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let per_thread = millions * 1_000_000 / threads as u64;
    let breaker = Arc::new(CircuitBreaker::new(BreakerConfig::default(), Instant::now()));
    let run = |work: Arc<dyn Fn() + Send + Sync>| {
        let start = Wall::now();
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let work = work.clone();
                std::thread::spawn(move || {
                    for _ in 0..per_thread {
                        work();
                    }
                })
            })
            .collect();
        for handle in handles {
            let _ = handle.join();
        }
        start.elapsed().as_nanos() as f64 / per_thread as f64
    };
    let shared = breaker.clone();
    let lock_free = run(Arc::new(move || {
        let now = Instant::now();
        if let Some(permit) = shared.try_acquire(now) {
            shared.record(permit, true, now);
        }
    }));
    let locked = Arc::new(Mutex::new(CircuitBreaker::new(
        BreakerConfig::default(),
        Instant::now(),
    )));
    let mutex = run(Arc::new(move || {
        let now = Instant::now();
        if let Ok(b) = locked.lock() {
            if let Some(permit) = b.try_acquire(now) {
                b.record(permit, true, now);
            }
        }
    }));
    let clock = run(Arc::new(|| {
        std::hint::black_box(Instant::now());
    }));
    println!(
        "{threads} thread(s), {per_thread} requests each: shared lock-free breaker {lock_free:.1} ns/request, \
         the same behind one Mutex {mutex:.1} ns/request, a clock read alone {clock:.1} ns"
    );
}
