//! Service level objectives computed by the gateway from its own traffic.
//!
//! Every request that ends on a route with an SLO adds one good or bad event to that SLO's
//! [`ledger`] (one-minute buckets over the SLO's window). A background thread
//! (`levee-slo`) turns the ledgers into the SLI, the error budget left and the burn rates
//! over 5m..3d once a second, evaluates the multiwindow multi-burn-rate [`alerts`], hands
//! notifications to [`notify`] (which retries on its own, never holding a request), saves
//! new counts to the data directory ([`store`]) so a restart does not reset the budget, and
//! watches the guards of running chaos experiments.
//!
//! Why the gateway and not only Prometheus rules: the gateway sees every request, so its
//! SLIs are exact (no scrape gaps, no histogram buckets to round a latency threshold to) and
//! alerting needs no second system. [`rules`] still writes the equivalent Prometheus rules
//! for teams that alert from Prometheus.
//!
//! Burn rate: how fast the budget is spent compared with spending exactly all of it over
//! the window. 1 means the budget lasts the window; 14.4 over an hour means 2% of a 30-day
//! budget gone in that hour. A window with less data than its length uses the data it has.

pub mod alerts;
pub mod canary;
mod exposition;
pub mod fleet;
pub mod history;
pub mod leader;
pub mod ledger;
pub mod notify;
pub mod rules;
pub mod store;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use crate::config::spec::{Sli, SloSpec};
use ledger::{Counts, Ledger};

/// The burn-rate windows, with their length in minutes (config validation checks a canary's
/// rollback window against them, so they are defined with the config).
pub use crate::config::spec::BURN_WINDOWS;

/// A window as people write it: `30d`, `12h`, `90m`.
pub fn window_text(window: Duration) -> String {
    let secs = window.as_secs();
    if secs >= 86_400 && secs.is_multiple_of(86_400) {
        format!("{}d", secs / 86_400)
    } else if secs >= 3600 && secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else {
        format!("{}m", secs / 60)
    }
}

/// How far back the store keeps counts: the longest window validation allows (90 days).
const MAX_RING_MINUTES: u64 = 90 * 1440;

/// Unsaved minute counts kept at most per SLO while the store is failing.
const MAX_UNSAVED: usize = 1440;

/// Wall-clock time read through tokio's clock: in production it is the system clock as of
/// the start plus monotonic time since, so a clock step cannot move events between buckets;
/// in tests a paused tokio clock drives it.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    unix_ms_at_start: u64,
    start: tokio::time::Instant,
}

impl Clock {
    pub fn system() -> Clock {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Clock::starting_at(unix_ms)
    }

    /// A clock that reads `unix_ms` now and moves with tokio's clock.
    pub fn starting_at(unix_ms: u64) -> Clock {
        Clock {
            unix_ms_at_start: unix_ms,
            start: tokio::time::Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        let elapsed = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.unix_ms_at_start.saturating_add(elapsed)
    }

    /// Minutes since the Unix epoch.
    pub fn minute(&self) -> u64 {
        self.now_ms() / 60_000
    }
}

/// The status a request was answered with, and the one a fallback or stale answer replaced.
#[derive(Debug, Clone, Copy)]
pub struct Answered {
    pub status: u16,
    pub replaced: Option<u16>,
    /// A gRPC call's final status.
    pub grpc_status: Option<u16>,
}

impl From<u16> for Answered {
    fn from(status: u16) -> Answered {
        Answered {
            status,
            replaced: None,
            grpc_status: None,
        }
    }
}

/// The ledger, and the counts not yet written to the store (when there is one) and not yet
/// added to the fleet's counts in Redis (in cluster mode, [`fleet`]).
#[derive(Debug)]
struct Tally {
    ledger: Ledger,
    unsaved: Vec<(u64, Counts)>,
    saved: bool,
    unpushed: Vec<(u64, Counts)>,
    shared: bool,
}

impl Tally {
    fn add(&mut self, minute: u64, counts: Counts) {
        if counts == Counts::default() {
            return;
        }
        self.ledger.add(minute, counts);
        if self.saved {
            merge_unsaved(&mut self.unsaved, minute, counts);
        }
        if self.shared {
            merge_unsaved(&mut self.unpushed, minute, counts);
        }
    }
}

/// Adds a minute's counts to a list of unsaved counts (merged with the last entry when it is
/// the same minute), keeping the newest [`MAX_UNSAVED`] minutes.
fn merge_unsaved(unsaved: &mut Vec<(u64, Counts)>, minute: u64, counts: Counts) {
    match unsaved.last_mut() {
        Some((m, c)) if *m == minute => c.add(counts),
        _ => unsaved.push((minute, counts)),
    }
    let excess = unsaved.len().saturating_sub(MAX_UNSAVED);
    unsaved.drain(..excess);
}

/// The current minute's events, counted with atomics so that workers never wait on each
/// other or on the evaluation: two slots (even and odd minutes). The first request of a
/// minute moves what its slot held (two minutes back) to `rolled`, under a lock held for a
/// push; once a second the `levee-slo` thread moves `rolled` and both slots into the
/// ledger. The long ledger walks happen under the tally lock, which requests never take.
/// The fields of a slot are separate atomics, so a fold may take an event's `total`
/// without its `bad` for a second (the next fold takes it): sums are exact, a single
/// bucket may lag by an event.
#[derive(Debug, Default)]
struct Pending {
    minute: AtomicU64,
    total: AtomicU64,
    bad: AtomicU64,
    injected: AtomicU64,
    injected_bad: AtomicU64,
}

impl Pending {
    fn add(&self, c: Counts) {
        self.total.fetch_add(c.total, Ordering::Relaxed);
        self.bad.fetch_add(c.bad, Ordering::Relaxed);
        self.injected.fetch_add(c.injected, Ordering::Relaxed);
        self.injected_bad.fetch_add(c.injected_bad, Ordering::Relaxed);
    }

    fn take(&self) -> Counts {
        Counts {
            total: self.total.swap(0, Ordering::Relaxed),
            bad: self.bad.swap(0, Ordering::Relaxed),
            injected: self.injected.swap(0, Ordering::Relaxed),
            injected_bad: self.injected_bad.swap(0, Ordering::Relaxed),
        }
    }
}

/// What one evaluation found for an SLO.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// Events over the SLO's window.
    pub window: Counts,
    /// Good events over all events in the window; `None` without events.
    pub sli: Option<f64>,
    /// Share of the window's error budget left (1 untouched, 0 spent, below 0 overspent).
    pub budget_remaining: f64,
    /// Bad events the budget still allows over the window's events so far.
    pub budget_remaining_events: f64,
    /// Burn rate per [`BURN_WINDOWS`] entry, in that order.
    pub burn_rates: [f64; 7],
    /// Events per [`BURN_WINDOWS`] entry.
    pub burn_counts: [Counts; 7],
    pub evaluated_at_ms: u64,
}

impl Status {
    /// The burn rate over the window named `name` (`5m` .. `3d`).
    pub fn burn_rate(&self, name: &str) -> Option<f64> {
        window_index(name).and_then(|i| self.burn_rates.get(i).copied())
    }

    /// The events in the burn window named `name`.
    pub fn burn_counts(&self, name: &str) -> Option<Counts> {
        window_index(name).and_then(|i| self.burn_counts.get(i).copied())
    }
}

/// The position of the burn window named `name` in [`BURN_WINDOWS`].
pub fn window_index(name: &str) -> Option<usize> {
    BURN_WINDOWS.iter().position(|(n, _)| *n == name)
}

/// One SLO's counts and latest evaluation.
#[derive(Debug)]
pub struct SloState {
    pub spec: SloSpec,
    /// What is counted (route, consumer, SLI); persisted counts are matched on it.
    pub definition: String,
    pending: [Pending; 2],
    /// Counts moved out of a pending slot by a request, waiting for the next fold.
    rolled: Mutex<Vec<(u64, Counts)>>,
    tally: Mutex<Tally>,
    /// Events since this process started (Prometheus counters).
    pub events_total: AtomicU64,
    pub events_bad: AtomicU64,
    status: Mutex<Option<Status>>,
    alerts: Mutex<alerts::AlertPair>,
    history: Mutex<history::AlertHistory>,
    /// The fleet's counts as last read from Redis (cluster mode): evaluated instead of the
    /// ledger while present; `None` while Redis does not answer (this replica's own counts
    /// are evaluated then).
    fleet: Mutex<Option<Ledger>>,
}

impl SloState {
    fn new(spec: SloSpec, saved: bool, shared: bool) -> SloState {
        // The ring covers the window and the longest burn window, whichever is longer.
        let minutes = (spec.window.as_secs() / 60).max(4320);
        SloState {
            definition: spec.definition(),
            spec,
            pending: Default::default(),
            rolled: Mutex::new(Vec::new()),
            tally: Mutex::new(Tally {
                ledger: Ledger::new(minutes),
                unsaved: Vec::new(),
                saved,
                unpushed: Vec::new(),
                shared,
            }),
            events_total: AtomicU64::new(0),
            events_bad: AtomicU64::new(0),
            status: Mutex::new(None),
            alerts: Mutex::new(alerts::AlertPair::default()),
            history: Mutex::default(),
            fleet: Mutex::new(None),
        }
    }

    /// Whether an answer with `status` (and, for a gRPC call, `grpc` status) after
    /// `elapsed` is a good event.
    pub fn is_good(&self, status: u16, grpc: Option<u16>, elapsed: Duration) -> bool {
        match self.spec.sli {
            Sli::Availability => {
                let bad_grpc = |code: u16| match &self.spec.bad_grpc_statuses {
                    Some(codes) => codes.contains(&code),
                    None => crate::grpc::DEFAULT_BAD.contains(&code),
                };
                status < 500 && !grpc.is_some_and(bad_grpc)
            }
            Sli::LatencyBelow(threshold) => elapsed < threshold,
        }
    }

    fn record(&self, minute: u64, counts: Counts) {
        self.events_total.fetch_add(counts.total, Ordering::Relaxed);
        self.events_bad.fetch_add(counts.bad, Ordering::Relaxed);
        let Some(slot) = self.pending.get(usize::from(minute % 2 == 1)) else {
            return;
        };
        if slot.minute.load(Ordering::Acquire) != minute {
            // First event of a new minute in this slot: set aside what it held (two minutes
            // ago). The lock makes one request do it; the others find it done.
            let mut rolled = self.rolled.lock().unwrap_or_else(|p| p.into_inner());
            if slot.minute.load(Ordering::Acquire) != minute {
                let previous = slot.minute.load(Ordering::Acquire);
                let held = slot.take();
                // Any count, even a `bad` whose `total` an earlier fold took.
                if held != Counts::default() {
                    merge_unsaved(&mut rolled, previous, held);
                }
                slot.minute.store(minute, Ordering::Release);
            }
        }
        slot.add(counts);
    }

    fn lock_tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves the pending counts into the ledger (under the tally lock). The `rolled` lock,
    /// held for a few atomic swaps, keeps a slot from changing minute while it is taken.
    fn fold(&self, tally: &mut Tally) {
        let mut taken = Vec::new();
        {
            let mut rolled = self.rolled.lock().unwrap_or_else(|p| p.into_inner());
            taken.append(&mut rolled);
            for slot in &self.pending {
                taken.push((slot.minute.load(Ordering::Acquire), slot.take()));
            }
        }
        for (minute, counts) in taken {
            tally.add(minute, counts);
        }
    }

    /// Adds counts read back from the store (not to be saved again).
    fn restore(&self, buckets: &[(u64, Counts)]) {
        let mut tally = self.tally.lock().unwrap_or_else(|p| p.into_inner());
        for (minute, counts) in buckets {
            tally.ledger.add(*minute, *counts);
        }
    }

    fn take_unsaved(&self) -> Vec<(u64, Counts)> {
        let mut tally = self.lock_tally();
        self.fold(&mut tally);
        std::mem::take(&mut tally.unsaved)
    }

    /// Computes the SLI, budget and burn rates as of `minute`.
    pub fn evaluate(&self, minute: u64, now_ms: u64) -> Status {
        let window_minutes = (self.spec.window.as_secs() / 60).max(1);
        let lengths: Vec<u64> = BURN_WINDOWS.iter().map(|(_, m)| *m).collect();
        let (burn, window) = {
            let mut tally = self.lock_tally();
            self.fold(&mut tally);
            let fleet = self.fleet.lock().unwrap_or_else(|p| p.into_inner());
            let ledger = fleet.as_ref().unwrap_or(&tally.ledger);
            (ledger.sums(minute, &lengths), ledger.sum(minute, window_minutes))
        };
        let budget = self.spec.error_budget();
        let mut burn_rates = [0.0; 7];
        let mut burn_counts = [Counts::default(); 7];
        for ((rate, count), counts) in burn_rates.iter_mut().zip(burn_counts.iter_mut()).zip(&burn) {
            *rate = counts.error_rate() / budget;
            *count = *counts;
        }
        let allowed = budget * window.total as f64;
        let (budget_remaining, budget_remaining_events) = if window.total == 0 {
            (1.0, 0.0)
        } else {
            (1.0 - window.bad as f64 / allowed, allowed - window.bad as f64)
        };
        Status {
            window,
            sli: (window.total > 0).then(|| window.good() as f64 / window.total as f64),
            budget_remaining,
            budget_remaining_events,
            burn_rates,
            burn_counts,
            evaluated_at_ms: now_ms,
        }
    }

    /// The latest evaluation.
    pub fn status(&self) -> Option<Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The alerts' states (page, ticket).
    pub fn alerts(&self) -> alerts::AlertPair {
        self.alerts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The SLOs of the running config, found by route.
#[derive(Debug, Default)]
pub struct SloSet {
    pub all: Vec<Arc<SloState>>,
    /// Looked up on every request of an SLO'd route: config names, so a fast hasher.
    by_route: HashMap<Arc<str>, Vec<Arc<SloState>>, foldhash::fast::RandomState>,
}

/// Every SLO of the process, their evaluation and alerting.
#[derive(Debug)]
pub struct SloEngine {
    pub clock: Clock,
    set: ArcSwap<SloSet>,
    store: Option<Mutex<store::Store>>,
    /// Alert notifications by receiver and result.
    pub notifications: notify::Counters,
    /// The minute after which old rows are next deleted from the store.
    next_forget: AtomicU64,
    /// Counts are also added to the fleet's in Redis (cluster mode, [`fleet`]).
    shared: std::sync::atomic::AtomicBool,
}

impl SloEngine {
    /// An engine with no SLOs yet; `store` keeps counts across restarts.
    pub fn new(clock: Clock, store: Option<store::Store>) -> SloEngine {
        SloEngine {
            clock,
            set: ArcSwap::from_pointee(SloSet::default()),
            store: store.map(Mutex::new),
            notifications: notify::Counters::default(),
            next_forget: AtomicU64::new(0),
            shared: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Cluster mode with Redis: from now on every SLO also queues its new counts for the
    /// fleet's (call before the first [`SloEngine::apply`]).
    pub fn share_counts(&self) {
        self.shared.store(true, Ordering::Relaxed);
    }

    /// Whether counts are shared with the fleet.
    pub fn is_shared(&self) -> bool {
        self.shared.load(Ordering::Relaxed)
    }

    /// Takes the SLOs of a (new) config. An SLO whose name, definition and window are
    /// unchanged keeps its counts and alert state (a new objective applies to them); a new
    /// one starts from what the store holds. Returns the resolved notifications of alerts
    /// that fired for SLOs that went away (or whose definition changed).
    pub fn apply(&self, specs: &[SloSpec]) -> Vec<alerts::Transition> {
        let current = self.set.load_full();
        // Saved first, so that an SLO rebuilt with another window reads every count back.
        self.save();
        let mut set = SloSet::default();
        for spec in specs {
            let kept = current
                .all
                .iter()
                .find(|s| s.spec.name == spec.name && s.definition == spec.definition());
            let state = match kept {
                Some(state) if state.spec == *spec => state.clone(),
                Some(state) => {
                    // A new objective or window over the same events: the counts and alerts
                    // move over (into a ring of the new window's size).
                    let fresh = SloState::new(spec.clone(), self.store.is_some(), self.is_shared());
                    {
                        let mut old = state.lock_tally();
                        state.fold(&mut old);
                        let mut new = fresh.lock_tally();
                        for (minute, counts) in old.ledger.buckets() {
                            new.ledger.add(minute, counts);
                        }
                        new.unsaved = std::mem::take(&mut old.unsaved);
                        new.unpushed = std::mem::take(&mut old.unpushed);
                    }
                    *fresh.alerts.lock().unwrap_or_else(|p| p.into_inner()) = state.alerts();
                    Arc::new(fresh)
                }
                None => Arc::new(self.restored(spec)),
            };
            set.by_route
                .entry(spec.route.clone())
                .or_default()
                .push(state.clone());
            set.all.push(state);
        }
        self.set.store(Arc::new(set));
        let set = self.set.load();
        let now_ms = self.clock.now_ms();
        let mut resolved = Vec::new();
        for old in &current.all {
            if set.all.iter().any(|s| Arc::ptr_eq(s, old)) {
                continue;
            }
            // Counts recorded until the swap are saved before the state is dropped.
            self.save_one(old);
            if set
                .all
                .iter()
                .any(|s| s.spec.name == old.spec.name && s.definition == old.definition)
            {
                continue;
            }
            let Some(status) = old.status() else {
                continue;
            };
            for mut t in old.alerts().firing(&old.spec, &status) {
                t.firing = false;
                t.ends_at_ms = Some(now_ms);
                self.save_alert(old, t.severity, None);
                resolved.push(t);
            }
        }
        resolved
    }

    /// A new SLO state with the counts and alert state the store holds for it.
    fn restored(&self, spec: &SloSpec) -> SloState {
        let fresh = SloState::new(spec.clone(), self.store.is_some(), self.is_shared());
        let Some(store) = &self.store else {
            return fresh;
        };
        let since = self
            .clock
            .minute()
            .saturating_sub(fresh.lock_tally().ledger.minutes());
        let store = store.lock().unwrap_or_else(|p| p.into_inner());
        match store.load(&spec.name, &fresh.definition, since) {
            Ok(buckets) => fresh.restore(&buckets),
            Err(error) => {
                tracing::warn!(slo = %spec.name, %error, "cannot read saved SLO counts; starting from zero")
            }
        }
        // An alert that fired when the last process stopped still fires (and resolves, with
        // a notification, once the burn rates say so).
        match store.alerts(&spec.name, &fresh.definition) {
            Ok(firing) => {
                let mut pair = fresh.alerts.lock().unwrap_or_else(|p| p.into_inner());
                for (severity, since) in firing {
                    match alerts::Severity::from_name(&severity) {
                        Some(alerts::Severity::Page) => pair.page.firing_since = Some(since),
                        Some(alerts::Severity::Ticket) => pair.ticket.firing_since = Some(since),
                        None => {}
                    }
                }
            }
            Err(error) => tracing::warn!(slo = %spec.name, %error, "cannot read saved alert state"),
        }
        fresh
    }

    fn save_alert(&self, slo: &SloState, severity: alerts::Severity, firing_since: Option<u64>) {
        let Some(store) = &self.store else {
            return;
        };
        let saved = store.lock().unwrap_or_else(|p| p.into_inner()).save_alert(
            &slo.spec.name,
            &slo.definition,
            severity.name(),
            firing_since,
        );
        if let Err(error) = saved {
            tracing::warn!(slo = %slo.spec.name, %error, "cannot save alert state");
        }
    }

    /// Counts one finished request on `route`.
    pub fn record(
        &self,
        route: &str,
        consumer: Option<&str>,
        upstream: Option<&str>,
        answered: Answered,
        elapsed: Duration,
        injected: bool,
    ) {
        let set = self.set.load();
        if set.all.is_empty() {
            return;
        }
        let Some(slos) = set.by_route.get(route) else {
            return;
        };
        let minute = self.clock.minute();
        for slo in slos {
            if slo.spec.consumer.as_deref().is_some_and(|c| Some(c) != consumer)
                || slo.spec.upstream.as_deref().is_some_and(|u| Some(u) != upstream)
            {
                continue;
            }
            // An SLO on one upstream (a canary's) judges what that upstream answered, even
            // when a fallback or a stale answer hid it from the client.
            let status = match slo.spec.upstream {
                Some(_) => answered.replaced.unwrap_or(answered.status),
                None => answered.status,
            };
            let good = slo.is_good(status, answered.grpc_status, elapsed);
            slo.record(minute, Counts::one(good, injected));
        }
    }

    /// The SLOs of the running config.
    pub fn slos(&self) -> Arc<SloSet> {
        self.set.load_full()
    }

    /// The SLO named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<SloState>> {
        self.set
            .load()
            .all
            .iter()
            .find(|s| &*s.spec.name == name)
            .cloned()
    }

    /// Evaluates every SLO now and stores the results.
    pub fn evaluate(&self) {
        let now_ms = self.clock.now_ms();
        let minute = now_ms / 60_000;
        for slo in &self.set.load().all {
            let status = slo.evaluate(minute, now_ms);
            *slo.status.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
        }
    }

    /// Steps every SLO's alerts with its latest status; returns what changed (to notify).
    /// With shared counts, only SLOs whose fleet counts are read are stepped (one still
    /// being read would be judged on this replica's share alone).
    pub fn step_alerts(&self) -> Vec<alerts::Transition> {
        let now_ms = self.clock.now_ms();
        let mut transitions = Vec::new();
        let judged = |s: &&Arc<SloState>| {
            s.spec.alerts
                && (!self.is_shared() || s.fleet.lock().unwrap_or_else(|p| p.into_inner()).is_some())
        };
        for slo in self.set.load().all.iter().filter(judged) {
            let Some(status) = slo.status() else {
                continue;
            };
            let changed = slo
                .alerts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .step(&slo.spec, &status, now_ms);
            for t in &changed {
                self.save_alert(slo, t.severity, t.firing.then_some(t.starts_at_ms));
            }
            slo.note_alerts(&changed);
            transitions.extend(changed);
        }
        transitions
    }

    /// Alerts firing now, for re-sending to Alertmanager.
    pub fn firing(&self) -> Vec<alerts::Transition> {
        let mut out = Vec::new();
        for slo in &self.set.load().all {
            let Some(status) = slo.status() else {
                continue;
            };
            out.extend(slo.alerts().firing(&slo.spec, &status));
        }
        out
    }

    /// Writes counts not yet saved to the store (no-op without one).
    pub fn save(&self) {
        for slo in &self.set.load().all {
            self.save_one(slo);
        }
        // Once an hour, rows no window can reach (of SLOs since removed, say) go.
        let minute = self.clock.minute();
        if let Some(store) = &self.store {
            if minute >= self.next_forget.load(Ordering::Relaxed) {
                self.next_forget.store(minute + 60, Ordering::Relaxed);
                let horizon = minute.saturating_sub(MAX_RING_MINUTES);
                if let Err(error) = store
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .forget_before(horizon)
                {
                    tracing::warn!(%error, "cannot delete old SLO counts");
                }
            }
        }
    }

    fn save_one(&self, slo: &SloState) {
        let Some(store) = &self.store else {
            return;
        };
        let unsaved = slo.take_unsaved();
        if unsaved.is_empty() {
            return;
        }
        let mut store = store.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(error) = store.add(&slo.spec.name, &slo.definition, &unsaved) {
            tracing::warn!(slo = %slo.spec.name, %error, "cannot save SLO counts; keeping them for the next try");
            let mut tally = slo.tally.lock().unwrap_or_else(|p| p.into_inner());
            let newer = std::mem::take(&mut tally.unsaved);
            tally.unsaved = unsaved;
            for (minute, counts) in newer {
                merge_unsaved(&mut tally.unsaved, minute, counts);
            }
        }
    }

    /// The store, for experiments.
    pub fn store(&self) -> Option<&Mutex<store::Store>> {
        self.store.as_ref()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::config::spec::Sli;

    fn state() -> SloState {
        SloState::new(
            SloSpec {
                name: "s".into(),
                route: "r".into(),
                consumer: None,
                upstream: None,
                release: None,
                alerts: true,
                objective: 99.9,
                window: Duration::from_secs(86_400),
                sli: Sli::Availability,
                bad_grpc_statuses: None,
            },
            true,
            false,
        )
    }

    /// Four threads record across minute boundaries while another folds, as the `levee-slo`
    /// thread does: every event lands in the ledger, in its own minute. Like workers reading
    /// one clock, the threads are at most a minute apart: in each phase two record the
    /// phase's minute and two the next one.
    #[test]
    fn concurrent_recording_across_minutes_loses_nothing() {
        let slo = Arc::new(state());
        let phases = 12u64;
        let per_phase = 5_000u64;
        let barrier = Arc::new(std::sync::Barrier::new(4));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let folder = {
            let slo = slo.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut tally = slo.lock_tally();
                    slo.fold(&mut tally);
                }
            })
        };
        let writers: Vec<_> = (0..4u64)
            .map(|w| {
                let slo = slo.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    for phase in 1..=phases {
                        let minute = phase + w % 2;
                        for i in 0..per_phase {
                            slo.record(minute, Counts::one((i + w) % 10 != 0, false));
                        }
                        barrier.wait();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        folder.join().unwrap();
        let mut tally = slo.lock_tally();
        slo.fold(&mut tally);
        for minute in 1..=phases + 1 {
            // Two writers per phase: minute m gets the even writers' phase m and the odd
            // writers' phase m - 1.
            let writers_on_it = u64::from(minute <= phases) * 2 + u64::from(minute >= 2) * 2;
            let counts = tally.ledger.sum(minute, 1);
            assert_eq!(counts.total, writers_on_it * per_phase, "minute {minute}");
            assert_eq!(counts.bad, writers_on_it * per_phase / 10, "minute {minute}");
        }
        let unsaved: u64 = tally.unsaved.iter().map(|(_, c)| c.total).sum();
        assert_eq!(
            unsaved,
            4 * per_phase * phases,
            "everything is also queued for the store"
        );
    }
}
