//! Good and bad events in one-minute buckets, in a ring that covers an SLO's window.
//!
//! Every SLI, error budget and burn rate is a sum over a suffix of this ring, so one
//! structure answers all of them: the window's SLI sums it whole, a 5-minute burn rate sums
//! the last five buckets. A bucket remembers its minute, so a slot left over from a lap
//! ago is never mistaken for a recent one, and a quiet period needs no clean-up.

/// Events counted over some span of time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: u64,
    pub bad: u64,
    /// Of `total`, events that carried an injected fault (chaos testing).
    pub injected: u64,
    /// Of `bad`, events that carried an injected fault.
    pub injected_bad: u64,
}

impl Counts {
    /// One event.
    pub fn one(good: bool, injected: bool) -> Counts {
        Counts {
            total: 1,
            bad: u64::from(!good),
            injected: u64::from(injected),
            injected_bad: u64::from(injected && !good),
        }
    }

    pub fn add(&mut self, other: Counts) {
        self.total = self.total.saturating_add(other.total);
        self.bad = self.bad.saturating_add(other.bad);
        self.injected = self.injected.saturating_add(other.injected);
        self.injected_bad = self.injected_bad.saturating_add(other.injected_bad);
    }

    pub fn good(&self) -> u64 {
        self.total.saturating_sub(self.bad)
    }

    /// Bad events over all events; 0 with no events.
    pub fn error_rate(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.bad as f64 / self.total as f64
        }
    }
}

/// Memory one bucket takes: the minute and four counts (config validation caps the SLOs'
/// memory with it, so it is defined with the config and checked against [`Bucket`] here).
pub use crate::config::spec::SLO_BUCKET_BYTES as BUCKET_BYTES;
const _: () = assert!(std::mem::size_of::<Bucket>() as u64 == BUCKET_BYTES);

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Minutes since the Unix epoch.
    minute: u64,
    counts: Counts,
}

/// A ring of one-minute buckets.
#[derive(Debug, Clone)]
pub struct Ledger {
    slots: Vec<Bucket>,
}

impl Ledger {
    /// A ring covering `minutes` minutes (at least one).
    pub fn new(minutes: u64) -> Ledger {
        let len = usize::try_from(minutes.max(1)).unwrap_or(1);
        Ledger {
            slots: vec![Bucket::default(); len],
        }
    }

    /// The minutes the ring covers.
    pub fn minutes(&self) -> u64 {
        self.slots.len() as u64
    }

    /// Adds `counts` to the bucket of `minute`. Counts for a minute older than what the
    /// slot holds now (a lap behind) are dropped: they are outside every window.
    pub fn add(&mut self, minute: u64, counts: Counts) {
        let len = self.slots.len() as u64;
        let Some(bucket) = usize::try_from(minute % len)
            .ok()
            .and_then(|i| self.slots.get_mut(i))
        else {
            return;
        };
        if bucket.minute == minute {
            bucket.counts.add(counts);
        } else if bucket.minute < minute {
            *bucket = Bucket { minute, counts };
        }
    }

    /// Sets the bucket of `minute` to `counts` (the fleet's total as read from Redis), unless
    /// the slot holds a newer minute.
    pub fn set(&mut self, minute: u64, counts: Counts) {
        let len = self.slots.len() as u64;
        let Some(bucket) = usize::try_from(minute % len)
            .ok()
            .and_then(|i| self.slots.get_mut(i))
        else {
            return;
        };
        if bucket.minute <= minute {
            *bucket = Bucket { minute, counts };
        }
    }

    /// The sum over the last `minutes` minutes up to and including `now`: the current,
    /// partial minute and the `minutes - 1` before it.
    pub fn sum(&self, now: u64, minutes: u64) -> Counts {
        self.sums(now, &[minutes]).first().copied().unwrap_or_default()
    }

    /// The sums over several trailing spans at once, in one walk back from `now`.
    /// `lengths` must be ascending; a span longer than the ring is cut to the ring.
    pub fn sums(&self, now: u64, lengths: &[u64]) -> Vec<Counts> {
        let len = self.slots.len() as u64;
        let mut out = Vec::with_capacity(lengths.len());
        let mut running = Counts::default();
        let mut walked = 0u64;
        for &length in lengths {
            let until = length.min(len);
            while walked < until {
                let Some(minute) = now.checked_sub(walked) else {
                    break;
                };
                let index = usize::try_from(minute % len).unwrap_or(0);
                if let Some(bucket) = self.slots.get(index).filter(|b| b.minute == minute) {
                    running.add(bucket.counts);
                }
                walked += 1;
            }
            out.push(running);
        }
        out
    }

    /// The buckets with events, as (minute, counts), oldest first.
    pub fn buckets(&self) -> Vec<(u64, Counts)> {
        let mut out: Vec<(u64, Counts)> = self
            .slots
            .iter()
            .filter(|b| b.counts != Counts::default())
            .map(|b| (b.minute, b.counts))
            .collect();
        out.sort_by_key(|(minute, _)| *minute);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(total: u64, bad: u64) -> Counts {
        Counts {
            total,
            bad,
            ..Counts::default()
        }
    }

    #[test]
    fn sums_cover_the_trailing_minutes_only() {
        let mut ledger = Ledger::new(60);
        ledger.add(1000, events(10, 1));
        ledger.add(1001, events(10, 2));
        ledger.add(1005, events(10, 3));
        assert_eq!(ledger.sum(1005, 1), events(10, 3));
        // Minutes 1001..=1005.
        assert_eq!(ledger.sum(1005, 5), events(20, 5));
        assert_eq!(ledger.sum(1005, 6), events(30, 6));
        let sums = ledger.sums(1005, &[1, 5, 6, 600]);
        let expected = vec![events(10, 3), events(20, 5), events(30, 6), events(30, 6)];
        assert_eq!(sums, expected);
    }

    #[test]
    fn a_lap_old_slot_is_replaced_not_added_to() {
        let mut ledger = Ledger::new(10);
        ledger.add(5, events(7, 7));
        ledger.add(15, events(1, 0));
        assert_eq!(ledger.sum(15, 10), events(1, 0));
        // Counts for a minute the ring has moved past are dropped.
        ledger.add(5, events(100, 100));
        assert_eq!(ledger.sum(15, 10), events(1, 0));
        // Nothing counts once the window has passed, without any clean-up.
        assert_eq!(ledger.sum(40, 10), Counts::default());
    }

    #[test]
    fn set_replaces_a_minute_but_never_a_newer_one() {
        let mut ledger = Ledger::new(10);
        ledger.add(3, events(5, 1));
        ledger.set(3, events(9, 2));
        assert_eq!(ledger.sum(3, 1), events(9, 2));
        ledger.set(13, events(1, 1));
        // Minute 3 is a lap behind the slot now: setting it changes nothing.
        ledger.set(3, events(100, 100));
        assert_eq!(ledger.sum(13, 10), events(1, 1));
    }

    #[test]
    fn injected_faults_are_counted_apart() {
        let mut ledger = Ledger::new(5);
        ledger.add(1, Counts::one(false, true));
        ledger.add(1, Counts::one(false, false));
        ledger.add(1, Counts::one(true, true));
        let sum = ledger.sum(1, 5);
        assert_eq!((sum.total, sum.bad, sum.injected, sum.injected_bad), (3, 2, 2, 1));
        assert_eq!(sum.good(), 1);
    }
}
