//! What an SLO looked like over time: its error budget burning down over the current window,
//! and the alerts it fired and resolved.
//!
//! The burn-down needs no new storage: the ledger already holds every minute of the window,
//! so the budget left at any past minute is the same arithmetic as now, over the events from
//! the window's start to that minute. The alert history is new state, kept in memory and
//! bounded ([`ALERT_HISTORY`] per SLO): the notifications themselves went to Alertmanager
//! or the webhook, which keep the long record; this is what the dashboard shows at a glance.

use std::collections::VecDeque;

use super::alerts::{Severity, Transition};
use super::ledger::Counts;
use super::SloState;

/// Alerts remembered per SLO, the oldest forgotten first.
pub const ALERT_HISTORY: usize = 32;
/// Points of a burn-down at most (one per minute for windows up to this many minutes).
pub const BURN_DOWN_POINTS: u64 = 120;

/// One alert that fired: when it started and, once resolved, when it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertRecord {
    pub severity: Severity,
    pub started_at_ms: u64,
    pub ended_at_ms: Option<u64>,
}

/// The alerts an SLO fired since this process started, newest last.
#[derive(Debug, Default)]
pub struct AlertHistory(VecDeque<AlertRecord>);

impl AlertHistory {
    /// Takes in an alert that started or resolved.
    pub fn note(&mut self, t: &Transition) {
        if !t.firing {
            let open = self
                .0
                .iter_mut()
                .rev()
                .find(|r| r.severity == t.severity && r.ended_at_ms.is_none());
            if let Some(record) = open {
                record.ended_at_ms = t.ends_at_ms;
                return;
            }
        }
        // A start, or the end of an alert that fired before this process (restored from
        // the data directory): either way a record of its own.
        if self.0.len() >= ALERT_HISTORY {
            self.0.pop_front();
        }
        self.0.push_back(AlertRecord {
            severity: t.severity,
            started_at_ms: t.starts_at_ms,
            ended_at_ms: if t.firing { None } else { t.ends_at_ms },
        });
    }

    /// The records, oldest first.
    pub fn records(&self) -> Vec<AlertRecord> {
        self.0.iter().copied().collect()
    }
}

/// The share of the budget left at the end of one minute of the window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetPoint {
    /// The end of the minute, in Unix milliseconds.
    pub at_ms: u64,
    /// 1 untouched, 0 spent, below 0 overspent (as `Status::budget_remaining`).
    pub remaining: f64,
}

/// The budget left after each step of the window that ends at `now` (a minute number):
/// from the window's first minute to `now`, `points` steps at most, each point counting the
/// events from the window's start to the end of its minute. The last point is the budget
/// left now. `budget` is the share of bad events allowed (1 - objective).
pub fn burn_down(buckets: &[(u64, Counts)], now: u64, window_minutes: u64, budget: f64) -> Vec<BudgetPoint> {
    let window_minutes = window_minutes.max(1);
    let first = now.saturating_sub(window_minutes - 1);
    let step = window_minutes.div_ceil(BURN_DOWN_POINTS).max(1);
    let mut events = buckets
        .iter()
        .filter(|(minute, _)| (first..=now).contains(minute))
        .peekable();
    let mut running = Counts::default();
    let mut out = Vec::new();
    let mut at = first + (now - first) % step;
    loop {
        while let Some((_, counts)) = events.next_if(|(minute, _)| *minute <= at) {
            running.add(*counts);
        }
        let remaining = if running.total == 0 || budget <= 0.0 {
            1.0
        } else {
            1.0 - running.bad as f64 / (budget * running.total as f64)
        };
        out.push(BudgetPoint {
            at_ms: (at + 1).saturating_mul(60_000),
            remaining,
        });
        if at >= now {
            return out;
        }
        at += step;
    }
}

impl SloState {
    /// The budget burning down over the window ending at `minute` (see [`burn_down`]), from
    /// the counts the SLO is evaluated on (the fleet's when they are read).
    pub fn burn_down(&self, minute: u64) -> Vec<BudgetPoint> {
        let buckets = {
            let mut tally = self.lock_tally();
            self.fold(&mut tally);
            let fleet = self.fleet.lock().unwrap_or_else(|p| p.into_inner());
            fleet.as_ref().unwrap_or(&tally.ledger).buckets()
        };
        burn_down(
            &buckets,
            minute,
            self.spec.window.as_secs() / 60,
            self.spec.error_budget(),
        )
    }

    /// The alerts this SLO fired since the process started, oldest first.
    pub fn alert_history(&self) -> Vec<AlertRecord> {
        self.history.lock().unwrap_or_else(|p| p.into_inner()).records()
    }

    pub(super) fn note_alerts(&self, transitions: &[Transition]) {
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        for t in transitions {
            history.note(t);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn events(total: u64, bad: u64) -> Counts {
        Counts {
            total,
            bad,
            ..Counts::default()
        }
    }

    #[test]
    fn the_burn_down_ends_at_the_budget_left_now_and_counts_from_the_window_start() {
        // A 60-minute window ending at minute 1000, 1% budget: 100 good events at its
        // start, then 1 bad at minute 990 (the budget is half spent: 1 of 2 allowed over
        // 200 events once minute 995's 99 good come in). A bucket before the window is
        // ignored.
        let buckets = [
            (900, events(50, 50)),
            (941, events(100, 0)),
            (990, events(1, 1)),
            (995, events(99, 0)),
        ];
        let points = burn_down(&buckets, 1000, 60, 0.01);
        assert_eq!(points.len(), 60, "one point per minute for an hour");
        assert_eq!(points[0].at_ms, 942 * 60_000);
        assert_eq!(points[0].remaining, 1.0);
        let at = |minute: u64| {
            points
                .iter()
                .find(|p| p.at_ms == (minute + 1) * 60_000)
                .unwrap()
                .remaining
        };
        assert_eq!(at(989), 1.0);
        // 1 bad of 101: 1 - 1/1.01.
        assert!((at(990) - (1.0 - 1.0 / 1.01)).abs() < 1e-9);
        assert!((at(1000) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn a_long_window_is_sampled_to_a_bounded_number_of_points_ending_now() {
        let points = burn_down(&[(5000, events(10, 1))], 43_200, 43_200, 0.001);
        assert!(points.len() as u64 <= BURN_DOWN_POINTS + 1, "{}", points.len());
        assert_eq!(points.last().unwrap().at_ms, 43_201 * 60_000);
        assert!(points.windows(2).all(|w| w[0].at_ms < w[1].at_ms));
    }

    fn transition(severity: Severity, firing: bool, starts: u64, ends: Option<u64>) -> Transition {
        Transition {
            slo: "s".into(),
            severity,
            firing,
            starts_at_ms: starts,
            ends_at_ms: ends,
            labels: Vec::new(),
            annotations: Vec::new(),
        }
    }

    #[test]
    fn alerts_are_recorded_when_they_fire_closed_when_they_resolve_and_bounded() {
        let mut history = AlertHistory::default();
        history.note(&transition(Severity::Page, true, 10, None));
        history.note(&transition(Severity::Ticket, true, 20, None));
        history.note(&transition(Severity::Page, false, 10, Some(30)));
        let records = history.records();
        assert_eq!(records[0].ended_at_ms, Some(30));
        assert_eq!(records[1].ended_at_ms, None, "the ticket still fires");
        // An end whose start this process never saw is a record of its own.
        history.note(&transition(Severity::Page, false, 5, Some(40)));
        assert_eq!(history.records()[2].started_at_ms, 5);
        for i in 0..100 {
            history.note(&transition(Severity::Page, true, 100 + i, None));
        }
        assert_eq!(history.records().len(), ALERT_HISTORY);
        assert_eq!(history.records().last().unwrap().started_at_ms, 199);
    }
}
