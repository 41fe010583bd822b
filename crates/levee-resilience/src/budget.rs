//! A retry budget: retries may add at most `ratio` of the recent request rate, plus a small
//! floor so low-traffic routes can still retry (Finagle's and linkerd's design).
//!
//! Why a budget and not just an attempt limit: with 3 attempts per request, an upstream that
//! fails everything receives 3x its normal load exactly when it is least able to take it, and
//! every layer that retries multiplies again. A budget of 0.2 caps the extra load at 20%
//! whatever the failure rate, so retries help with sporadic failures and fade out in an
//! outage.

use std::time::Duration;

use tokio::time::Instant;

use crate::window::Window;

/// Requests deposited and retries withdrawn over a sliding window (10 s by default).
///
/// One budget serves a route for the whole process, shared by every worker thread (on the
/// sharded [`Window`]), so its floor and ratio hold process-wide rather than once per core.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_per_second: f64,
    window_seconds: f64,
    /// a = requests, b = retries.
    window: Window,
}

impl RetryBudget {
    /// `ratio`: retries allowed per request (0.2 = 20%); `min_per_second`: retries always
    /// allowed per second of the window, whatever the traffic.
    pub fn new(ratio: f64, min_per_second: f64, window: Duration, now: Instant) -> RetryBudget {
        RetryBudget {
            ratio: ratio.max(0.0),
            min_per_second: min_per_second.max(0.0),
            window_seconds: window.as_secs_f64().max(1.0),
            window: Window::new(window, now),
        }
    }

    /// Counts an original (first-attempt) request.
    pub fn deposit(&self, now: Instant) {
        self.window.add_a(now, 1);
    }

    /// Takes one retry from the budget if there is one left.
    ///
    /// The retry is counted first and checked after, and taken back if it went over: two
    /// threads racing for the last retry may then both be refused, but the budget is never
    /// exceeded.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        self.window.add_b(now, 1);
        let (requests, retries) = self.window.totals(now);
        let allowed = self.min_per_second * self.window_seconds + self.ratio * requests as f64;
        if retries as f64 <= allowed {
            true
        } else {
            self.window.undo_b(now);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_are_capped_at_the_ratio_plus_floor() {
        let window = Duration::from_secs(10);
        let budget = RetryBudget::new(0.2, 0.0, window, Instant::now());
        for _ in 0..100 {
            budget.deposit(Instant::now());
        }
        let granted = (0..100).filter(|_| budget.try_withdraw(Instant::now())).count();
        assert_eq!(granted, 20);

        // The floor lets a quiet route retry a little: 1/s over 10 s.
        let quiet = RetryBudget::new(0.2, 1.0, window, Instant::now());
        let granted = (0..100).filter(|_| quiet.try_withdraw(Instant::now())).count();
        assert_eq!(granted, 10);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_refills_as_the_window_slides() {
        let budget = RetryBudget::new(0.5, 0.0, Duration::from_secs(2), Instant::now());
        budget.deposit(Instant::now());
        budget.deposit(Instant::now());
        assert!(budget.try_withdraw(Instant::now()));
        assert!(!budget.try_withdraw(Instant::now()));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(
            !budget.try_withdraw(Instant::now()),
            "old requests no longer count"
        );
        budget.deposit(Instant::now());
        budget.deposit(Instant::now());
        assert!(
            budget.try_withdraw(Instant::now()),
            "old retries no longer count either"
        );
    }

    /// Threads share one budget: racing withdrawals never take more than it holds.
    #[test]
    fn threads_never_overdraw_a_shared_budget() {
        use std::sync::Arc;
        let budget = Arc::new(RetryBudget::new(
            0.2,
            0.0,
            Duration::from_secs(3600),
            Instant::now(),
        ));
        for _ in 0..1000 {
            budget.deposit(Instant::now());
        }
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let budget = budget.clone();
                std::thread::spawn(move || (0..100).filter(|_| budget.try_withdraw(Instant::now())).count())
            })
            .collect();
        let granted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(granted <= 200, "{granted} of 200");
        // A race may have refused a retry that was there; alone now, the rest is granted,
        // and not one more.
        let rest = (0..300).filter(|_| budget.try_withdraw(Instant::now())).count();
        assert_eq!(granted + rest, 200);
    }
}
