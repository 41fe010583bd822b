//! A sliding window of per-second counters, the shared building block of the breaker and the
//! budget. Memory is fixed at construction: one slot per second of the window.

use std::time::Duration;

use tokio::time::Instant;

/// Counts of two kinds of event over the last `len` seconds.
#[derive(Debug, Clone)]
pub struct Window {
    epoch: Instant,
    /// (second since epoch, a, b) per slot; a slot older than the window counts as empty.
    slots: Vec<(u64, u64, u64)>,
}

impl Window {
    /// A window of `len` (rounded up to whole seconds, at least one).
    pub fn new(len: Duration, now: Instant) -> Window {
        let seconds = len.as_secs() + u64::from(len.subsec_nanos() > 0);
        Window {
            epoch: now,
            slots: vec![(u64::MAX, 0, 0); seconds.max(1) as usize],
        }
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }

    fn with_slot(&mut self, now: Instant, update: impl FnOnce(&mut (u64, u64, u64))) {
        let second = self.second(now);
        let index = (second % self.slots.len() as u64) as usize;
        if let Some(slot) = self.slots.get_mut(index) {
            if slot.0 != second {
                *slot = (second, 0, 0);
            }
            update(slot);
        }
    }

    pub fn add_a(&mut self, now: Instant, n: u64) {
        self.with_slot(now, |slot| slot.1 += n);
    }

    pub fn add_b(&mut self, now: Instant, n: u64) {
        self.with_slot(now, |slot| slot.2 += n);
    }

    /// Sums of (a, b) over the window ending now.
    pub fn totals(&self, now: Instant) -> (u64, u64) {
        let second = self.second(now);
        let len = self.slots.len() as u64;
        self.slots
            .iter()
            .filter(|(s, _, _)| *s != u64::MAX && *s <= second && second - s < len)
            .fold((0, 0), |(a, b), (_, x, y)| (a + x, b + y))
    }

    pub fn clear(&mut self) {
        for slot in &mut self.slots {
            *slot = (u64::MAX, 0, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn old_seconds_fall_out() {
        let mut w = Window::new(Duration::from_secs(3), Instant::now());
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
    }
}
