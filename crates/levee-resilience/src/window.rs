//! A sliding window of per-second counters of two kinds of event, shared by every thread of
//! the process: the building block of the breaker and the retry budget.
//!
//! Why shared, and why sharded: a breaker that each worker thread keeps for itself needs N
//! times the evidence on N cores before it protects anyone (each worker must see its own
//! failures), and lets N half-open probes at a recovering target at once. One window per
//! process fixes that, but a single counter that every request increments would bounce one
//! cache line between all cores. So the window is split into shards, one per core up to
//! eight; a thread always counts into the same shard (its own cache lines, uncontended), and
//! the rare reader of the totals (a failure deciding whether to open the breaker, a retry
//! asking the budget) sums every shard.
//!
//! Each counter is one `AtomicU64`: the second it counts (high 32 bits, plus one so that 0
//! means "never used") and the count (low 32 bits), updated together by compare-and-swap,
//! so a slot that rolls over to a new second never mixes two seconds' counts, whichever
//! threads write to it. Memory is fixed at construction: two words per second of the window
//! per shard.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

/// Words between two shards' first slots beyond their own: 128 bytes, so two shards never
/// share a cache line (or an adjacent-line prefetch pair).
const SHARD_GAP: usize = 16;

/// At most this many shards, whatever the core count: every breaker and every route's retry
/// budget has a window, and a config of 100,000 routes with retries on a 64-core host must
/// not spend a gigabyte on counters. With more threads than shards, a few threads share a
/// shard: still exact, with a little contention on the counting CAS.
const MAX_SHARDS: usize = 8;

/// Counts of two kinds of event (`a` and `b`) over the last `len` seconds.
#[derive(Debug)]
pub struct Window {
    epoch: Instant,
    seconds: usize,
    stride: usize,
    shards: usize,
    words: Box<[AtomicU64]>,
}

/// Which of the two counts.
#[derive(Debug, Clone, Copy)]
enum Kind {
    A = 0,
    B = 1,
}

/// The number of shards: the machine's cores, within `1..=MAX_SHARDS`.
fn shard_count() -> usize {
    static SHARDS: OnceLock<usize> = OnceLock::new();
    *SHARDS.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, MAX_SHARDS)
    })
}

/// This thread's shard: threads are numbered as they first count, so worker threads
/// started together land on different shards.
fn shard_of_this_thread(shards: usize) -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static ID: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    ID.with(|id| *id) % shards.max(1)
}

fn tag(second: u64) -> u64 {
    // Seconds since the window's creation fit 32 bits for 136 years.
    (second.wrapping_add(1) & 0xffff_ffff) << 32
}

impl Window {
    /// A window of `len` (rounded up to whole seconds, at least one).
    pub fn new(len: Duration, now: Instant) -> Window {
        Window::with_shards(len, now, shard_count())
    }

    /// A window with an explicit number of shards (tests use this to pin the layout).
    pub fn with_shards(len: Duration, now: Instant, shards: usize) -> Window {
        let seconds = (len.as_secs() + u64::from(len.subsec_nanos() > 0)).max(1) as usize;
        let shards = shards.max(1);
        let stride = 2 * seconds + SHARD_GAP;
        Window {
            epoch: now,
            seconds,
            stride,
            shards,
            words: (0..stride * shards).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }

    fn word(&self, now: Instant, kind: Kind) -> Option<(&AtomicU64, u64)> {
        let second = self.second(now);
        let shard = shard_of_this_thread(self.shards);
        let slot = (second % self.seconds as u64) as usize;
        let index = shard * self.stride + slot * 2 + kind as usize;
        self.words.get(index).map(|word| (word, tag(second)))
    }

    fn add(&self, now: Instant, kind: Kind, n: u64) {
        let Some((word, tag)) = self.word(now, kind) else {
            return;
        };
        let n = n.min(0xffff_ffff);
        let _ = word.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |current| {
            Some(if current & !0xffff_ffff == tag {
                let count = (current & 0xffff_ffff).saturating_add(n).min(0xffff_ffff);
                tag | count
            } else {
                // The slot last counted an older second: start it afresh.
                tag | n
            })
        });
    }

    pub fn add_a(&self, now: Instant, n: u64) {
        self.add(now, Kind::A, n);
    }

    pub fn add_b(&self, now: Instant, n: u64) {
        self.add(now, Kind::B, n);
    }

    /// Takes back one `b` counted in this second by this thread (a retry the budget granted
    /// and then found over the limit). Nothing happens if the slot moved on.
    pub fn undo_b(&self, now: Instant) {
        let Some((word, tag)) = self.word(now, Kind::B) else {
            return;
        };
        let _ = word.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |current| {
            (current & !0xffff_ffff == tag && current & 0xffff_ffff > 0).then(|| current - 1)
        });
    }

    /// Sums of (a, b) over the window ending now, over every shard.
    ///
    /// Counts and these loads are sequentially consistent, so that a thread that counts and
    /// then reads the totals sees every count another thread made before reading its own
    /// totals: the retry budget's count-then-check relies on it. (On x86 this costs nothing
    /// more than acquire/release.)
    pub fn totals(&self, now: Instant) -> (u64, u64) {
        let second = self.second(now);
        let len = self.seconds as u64;
        let mut sums = [0u64; 2];
        for shard in 0..self.shards {
            let base = shard * self.stride;
            let Some(words) = self.words.get(base..base + 2 * self.seconds) else {
                continue;
            };
            for (i, word) in words.iter().enumerate() {
                let value = word.load(Ordering::SeqCst);
                let stamp = value >> 32;
                if stamp == 0 {
                    continue;
                }
                let counted = stamp - 1;
                // Compare modulo 2^32, like the tags.
                let age = (second & 0xffff_ffff).wrapping_sub(counted) & 0xffff_ffff;
                if age < len {
                    if let Some(sum) = sums.get_mut(i % 2) {
                        *sum += value & 0xffff_ffff;
                    }
                }
            }
        }
        (sums[0], sums[1])
    }

    /// Forgets every count.
    pub fn clear(&self) {
        for word in self.words.iter() {
            word.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn old_seconds_fall_out() {
        let w = Window::new(Duration::from_secs(3), Instant::now());
        w.add_a(Instant::now(), 5);
        tokio::time::advance(Duration::from_secs(1)).await;
        w.add_b(Instant::now(), 2);
        assert_eq!(w.totals(Instant::now()), (5, 2));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            w.totals(Instant::now()),
            (0, 2),
            "the first second left the window"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(w.totals(Instant::now()), (0, 0));
        w.add_a(Instant::now(), 1);
        assert_eq!(w.totals(Instant::now()), (1, 0), "a reused slot starts empty");
        w.add_b(Instant::now(), 1);
        w.undo_b(Instant::now());
        assert_eq!(w.totals(Instant::now()), (1, 0));
        w.clear();
        assert_eq!(w.totals(Instant::now()), (0, 0));
    }

    /// Every thread counts into its own shard; the totals see them all, none lost.
    #[test]
    fn counts_from_many_threads_add_up() {
        let w = std::sync::Arc::new(Window::with_shards(Duration::from_secs(3600), Instant::now(), 3));
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        w.add_a(Instant::now(), 1);
                        w.add_b(Instant::now(), 2);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(w.totals(Instant::now()), (60_000, 120_000));
    }
}
