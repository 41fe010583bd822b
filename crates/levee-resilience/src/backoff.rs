//! Exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff and
//! Jitter", 2015): the delay before retry `n` is uniform in `[0, min(cap, base * 2^n))`.
//! Full jitter spreads retries of many clients that failed together better than equal or
//! decorrelated jitter, at the same mean cost.

use std::time::Duration;

/// The delay before retry number `retry` (1 for the first retry). `random` is uniform in
/// `[0, 1)`; passing it in keeps this function pure and testable.
pub fn full_jitter(retry: u32, base: Duration, cap: Duration, random: f64) -> Duration {
    let exponent = retry.saturating_sub(1).min(30);
    let ceiling = base.saturating_mul(1u32 << exponent).min(cap);
    ceiling.mul_f64(random.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_up_to_the_cap() {
        let base = Duration::from_millis(25);
        let cap = Duration::from_millis(250);
        let max = |retry| full_jitter(retry, base, cap, 1.0);
        assert_eq!(max(1), Duration::from_millis(25));
        assert_eq!(max(2), Duration::from_millis(50));
        assert_eq!(max(3), Duration::from_millis(100));
        assert_eq!(max(5), Duration::from_millis(250));
        assert_eq!(max(60), Duration::from_millis(250), "no overflow");
        assert_eq!(full_jitter(3, base, cap, 0.0), Duration::ZERO);
        assert_eq!(full_jitter(3, base, cap, 0.5), Duration::from_millis(50));
    }
}
