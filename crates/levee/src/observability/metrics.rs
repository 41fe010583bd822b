//! Prometheus metrics kept per worker and merged at scrape time.
//!
//! Each worker thread owns a [`MetricsShard`] that only it writes, so recording a request
//! costs one uncontended lock and a few map updates instead of atomics bouncing between cores
//! (PERFORMANCE.md: "no shared mutable state per request across cores"). A scrape locks each
//! shard briefly, sums them, and writes the text exposition. Label values come only from the
//! config (route, upstream and target names) or small fixed sets (method, status, outcome),
//! so every map here is bounded by the config, never by traffic; the one label that comes
//! from callers, the consumer of a deprecated route, is capped per route
//! ([`super::deprecated`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::Method;

use super::deprecated::ConsumerCap;
use super::histogram::{histogram, Overhead};
pub use super::histogram::{Histogram, LATENCY_BUCKETS};
pub use super::outcome::Outcome;
use super::series::{Buckets, Counts};

/// Method label: the standard methods by name, anything else as `OTHER` (bounded cardinality).
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

#[derive(Debug, Default)]
struct RouteStats {
    /// (method, status) -> count; a handful of entries, so a linear scan beats hashing.
    requests: Vec<((&'static str, u16), u64)>,
    duration: Histogram,
    overhead: Histogram<Overhead>,
}

#[derive(Debug, Default)]
struct TargetStats {
    outcomes: BTreeMap<Outcome, u64>,
    duration: Histogram,
}

use super::ai_metrics::{AiShard, AiTotals};
pub use super::ai_metrics::{LlmTotals, ProviderModel};

/// The shards' maps: keyed by config names, hashed on every request, so with a fast hasher
/// (foldhash) rather than SipHash, which guards against keys an attacker picks; these keys
/// come from the config, never from a request.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// One worker's counters.
#[derive(Debug, Default)]
pub struct Shard {
    routes: Map<Arc<str>, RouteStats>,
    /// route -> reason -> retries.
    retries: Map<Arc<str>, BTreeMap<&'static str, u64>>,
    /// route -> requests refused by its rate limit.
    rate_limited: Map<Arc<str>, u64>,
    /// upstream -> requests refused by the bulkhead.
    bulkhead_rejected: Map<Arc<str>, u64>,
    /// upstream -> target -> stats; nested so that lookups borrow `&str` and never clone.
    targets: Map<Arc<str>, Map<Arc<str>, TargetStats>>,
    /// The AI gateway's counters.
    pub ai: AiShard,
    /// (route, kind) -> faults injected.
    faults: Map<(Arc<str>, &'static str), u64>,
    /// (route, gRPC status code) -> gRPC calls.
    grpc: Map<(Arc<str>, u16), u64>,
    /// (route, consumer label) -> requests to a deprecated route.
    deprecated: Map<(Arc<str>, Arc<str>), u64>,
}

impl Shard {
    /// Counts one finished request. `route` is empty for requests that matched no route.
    /// `overhead`: Levee's own share of `elapsed` (see `levee_request_overhead_seconds`),
    /// when the response head was handed over.
    pub fn record_request(
        &mut self,
        route: &Arc<str>,
        method: &'static str,
        status: u16,
        elapsed: Duration,
        overhead: Option<Duration>,
    ) {
        let stats = match self.routes.get_mut(&**route) {
            Some(stats) => stats,
            None => self.routes.entry(route.clone()).or_default(),
        };
        match stats
            .requests
            .iter_mut()
            .find(|(key, _)| *key == (method, status))
        {
            Some((_, count)) => *count += 1,
            None => stats.requests.push(((method, status), 1)),
        }
        stats.duration.observe(elapsed);
        if let Some(overhead) = overhead {
            stats.overhead.observe(overhead);
        }
    }

    /// Counts one retry of `route` for `reason`.
    pub fn record_retry(&mut self, route: &Arc<str>, reason: &'static str) {
        let reasons = match self.retries.get_mut(&**route) {
            Some(reasons) => reasons,
            None => self.retries.entry(route.clone()).or_default(),
        };
        *reasons.entry(reason).or_default() += 1;
    }

    /// Counts one request refused by `route`'s rate limit.
    pub fn record_rate_limited(&mut self, route: &Arc<str>) {
        match self.rate_limited.get_mut(&**route) {
            Some(count) => *count += 1,
            None => {
                self.rate_limited.insert(route.clone(), 1);
            }
        }
    }

    /// Counts one request refused by `upstream`'s bulkhead.
    pub fn record_bulkhead_rejected(&mut self, upstream: &Arc<str>) {
        match self.bulkhead_rejected.get_mut(&**upstream) {
            Some(count) => *count += 1,
            None => {
                self.bulkhead_rejected.insert(upstream.clone(), 1);
            }
        }
    }

    /// Counts one injected fault.
    pub fn record_fault(&mut self, route: &Arc<str>, kind: &'static str) {
        *self.faults.entry((route.clone(), kind)).or_default() += 1;
    }

    /// Counts one gRPC call by its final status (codes past the known ones as `UNKNOWN`,
    /// so the label set stays bounded).
    pub fn record_grpc(&mut self, route: &Arc<str>, code: u16) {
        let code = if code > 16 { 2 } else { code };
        *self.grpc.entry((route.clone(), code)).or_default() += 1;
    }

    /// Counts one request to a deprecated route, under its consumer's name while `cap`
    /// admits it (`""` without a consumer), else under `_other`.
    pub fn record_deprecated(&mut self, route: &Arc<str>, consumer: Option<&Arc<str>>, cap: &ConsumerCap) {
        let key = (route.clone(), consumer.unwrap_or(cap.anonymous()).clone());
        if let Some(count) = self.deprecated.get_mut(&key) {
            *count += 1;
            return;
        }
        let label = cap.label(&key.0, &key.1);
        *self.deprecated.entry((key.0, label)).or_default() += 1;
    }

    /// Counts one upstream attempt.
    pub fn record_upstream(
        &mut self,
        upstream: &Arc<str>,
        target: &Arc<str>,
        outcome: Outcome,
        elapsed: Duration,
    ) {
        let targets = match self.targets.get_mut(&**upstream) {
            Some(targets) => targets,
            None => self.targets.entry(upstream.clone()).or_default(),
        };
        let stats = match targets.get_mut(&**target) {
            Some(stats) => stats,
            None => targets.entry(target.clone()).or_default(),
        };
        *stats.outcomes.entry(outcome).or_default() += 1;
        stats.duration.observe(elapsed);
    }
}

/// One gauge sample read from live state at scrape time. Samples of one family must be
/// adjacent.
#[derive(Debug, Clone)]
pub struct Gauge {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

/// Per route, summed over shards: (method, status) counts and the duration histogram.
type RouteTotals = (BTreeMap<(&'static str, u16), u64>, Histogram, Histogram<Overhead>);
/// Per (upstream, target), summed over shards: outcome counts and the duration histogram.
type TargetTotals = (BTreeMap<Outcome, u64>, Histogram);

/// A worker's handle on its own shard.
#[derive(Debug, Clone)]
pub struct MetricsShard(Arc<Mutex<Shard>>);

impl MetricsShard {
    pub fn lock(&self) -> MutexGuard<'_, Shard> {
        // A panic while holding the lock cannot leave counters inconsistent in a way that
        // matters; keep counting rather than poisoning every later request.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Process-wide counters that are not per request (rarely written).
#[derive(Debug, Default)]
pub struct Globals {
    pub access_log_dropped: AtomicU64,
    /// Call-log records dropped because the writer fell behind.
    pub calllog_dropped: AtomicU64,
    /// Requests and connections refused by load shedding.
    pub shed: AtomicU64,
    pub connections_accepted: AtomicU64,
    pub config_version: AtomicU64,
    /// Reloads applied, and reloads refused (the running config kept).
    pub config_reloads_ok: AtomicU64,
    pub config_reloads_error: AtomicU64,
    /// Spans the collector accepted.
    pub spans_exported: AtomicU64,
    /// Spans dropped because the export queue was full.
    pub spans_dropped_queue_full: AtomicU64,
    /// Spans dropped because the collector failed, refused or timed out.
    pub spans_dropped_export_failed: AtomicU64,
}

/// All shards plus the process-wide counters.
#[derive(Debug, Default)]
pub struct Metrics {
    shards: Mutex<Vec<MetricsShard>>,
    pub globals: Globals,
    /// The consumers each deprecated route names in `levee_deprecated_requests_total`.
    pub deprecated_consumers: ConsumerCap,
}

impl Metrics {
    /// A new shard for a worker, included in every later scrape.
    pub fn shard(&self) -> MetricsShard {
        let shard = MetricsShard(Arc::default());
        self.shards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(shard.clone());
        shard
    }

    /// Per route, summed over shards: requests, those answered 5xx (errors, as SLOs count
    /// them) and the duration histogram (`""`: requests no route matched).
    pub fn route_counts(&self) -> BTreeMap<Arc<str>, Counts> {
        let shards: Vec<MetricsShard> = self.shards.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut out: BTreeMap<Arc<str>, Counts> = BTreeMap::new();
        for shard in &shards {
            for (route, stats) in &shard.lock().routes {
                let entry = out.entry(route.clone()).or_default();
                for ((_, status), count) in &stats.requests {
                    entry.requests += count;
                    if *status >= 500 {
                        entry.errors += count;
                    }
                }
                entry.buckets.add(&Buckets(stats.duration.counts));
            }
        }
        out
    }

    /// The Prometheus text exposition (format 0.0.4), with `gauges` (state read from the
    /// running gateway at scrape time) appended.
    pub fn render_with(&self, gauges: &[Gauge]) -> String {
        let mut out = self.render();
        let mut last = "";
        for gauge in gauges {
            if gauge.name != last {
                family(&mut out, gauge.name, "gauge", gauge.help);
                last = gauge.name;
            }
            let labels: Vec<String> = gauge
                .labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = writeln!(out, "{}{{{}}} {}", gauge.name, labels.join(","), gauge.value);
        }
        out
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let totals = self.totals();
        let mut out = String::with_capacity(4096);
        totals.render_requests(&mut out);
        totals.render_upstreams(&mut out);
        totals.render_refusals(&mut out);
        self.globals.render_counters(&mut out);
        totals.render_llm(&mut out);
        self.globals.render_reloads_and_spans(&mut out);
        super::process::render(&mut out);
        out
    }

    /// Per provider model: tokens, cost and fallbacks; and the answer cache's hits and
    /// misses; since the process started.
    pub fn llm_totals(&self) -> (BTreeMap<ProviderModel, LlmTotals>, (u64, u64)) {
        let totals = self.totals();
        (totals.ai.llm, totals.ai.cache)
    }

    fn totals(&self) -> Totals {
        let shards: Vec<MetricsShard> = self.shards.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut totals = Totals::default();
        for shard in &shards {
            totals.add(&shard.lock());
        }
        totals
    }
}

/// Every shard's counters summed, in the order they are written.
#[derive(Default)]
struct Totals {
    routes: BTreeMap<Arc<str>, RouteTotals>,
    targets: BTreeMap<(Arc<str>, Arc<str>), TargetTotals>,
    retries: BTreeMap<(Arc<str>, &'static str), u64>,
    bulkhead: BTreeMap<Arc<str>, u64>,
    rate_limited: BTreeMap<Arc<str>, u64>,
    ai: AiTotals,
    faults: BTreeMap<(Arc<str>, &'static str), u64>,
    grpc: BTreeMap<(Arc<str>, u16), u64>,
    deprecated: BTreeMap<(Arc<str>, Arc<str>), u64>,
}

impl Totals {
    /// Adds one shard's counters.
    fn add(&mut self, shard: &Shard) {
        for (route, stats) in &shard.routes {
            let entry = self.routes.entry(route.clone()).or_default();
            for (key, count) in &stats.requests {
                *entry.0.entry(*key).or_default() += count;
            }
            entry.1.merge(&stats.duration);
            entry.2.merge(&stats.overhead);
        }
        for (route, reasons) in &shard.retries {
            for (reason, count) in reasons {
                *self.retries.entry((route.clone(), *reason)).or_default() += count;
            }
        }
        for (route, count) in &shard.rate_limited {
            *self.rate_limited.entry(route.clone()).or_default() += count;
        }
        for (key, count) in &shard.faults {
            *self.faults.entry(key.clone()).or_default() += count;
        }
        for (key, count) in &shard.grpc {
            *self.grpc.entry(key.clone()).or_default() += count;
        }
        for (key, count) in &shard.deprecated {
            *self.deprecated.entry(key.clone()).or_default() += count;
        }
        self.ai.add(&shard.ai);
        for (upstream, count) in &shard.bulkhead_rejected {
            *self.bulkhead.entry(upstream.clone()).or_default() += count;
        }
        for (upstream, per_target) in &shard.targets {
            for (target, stats) in per_target {
                let entry = self
                    .targets
                    .entry((upstream.clone(), target.clone()))
                    .or_default();
                for (outcome, count) in &stats.outcomes {
                    *entry.0.entry(*outcome).or_default() += count;
                }
                entry.1.merge(&stats.duration);
            }
        }
    }

    /// Requests answered and their durations, by route.
    fn render_requests(&self, out: &mut String) {
        family(
            out,
            "levee_requests_total",
            "counter",
            "Requests answered, by route, method and status.",
        );
        for (route, (counts, _, _)) in &self.routes {
            for ((method, status), count) in counts {
                let _ = writeln!(
                    out,
                    "levee_requests_total{{route=\"{}\",method=\"{method}\",status=\"{status}\"}} {count}",
                    escape(route)
                );
            }
        }
        family(
            out,
            "levee_request_duration_seconds",
            "histogram",
            "Time from request received to response finished, by route.",
        );
        for (route, (_, hist, _)) in &self.routes {
            histogram(
                out,
                "levee_request_duration_seconds",
                &format!("route=\"{}\"", escape(route)),
                hist,
            );
        }
        family(
            out,
            "levee_request_overhead_seconds",
            "histogram",
            "Time Levee spent on a request itself, by route: from request received to response head handed to the client, less the waits for upstream answers.",
        );
        for (route, (_, _, hist)) in &self.routes {
            let labels = format!("route=\"{}\"", escape(route));
            histogram(out, "levee_request_overhead_seconds", &labels, hist);
        }
    }

    /// Upstream attempts and their durations, by upstream and target.
    fn render_upstreams(&self, out: &mut String) {
        family(
            out,
            "levee_upstream_requests_total",
            "counter",
            "Upstream attempts, by upstream, target and outcome.",
        );
        for ((upstream, target), (outcomes, _)) in &self.targets {
            for (outcome, count) in outcomes {
                let _ = writeln!(
                    out,
                    "levee_upstream_requests_total{{upstream=\"{}\",target=\"{}\",outcome=\"{}\"}} {count}",
                    escape(upstream),
                    escape(target),
                    outcome.label()
                );
            }
        }
        family(
            out,
            "levee_upstream_duration_seconds",
            "histogram",
            "Time from sending an upstream attempt to its response headers (or failure).",
        );
        for ((upstream, target), (_, hist)) in &self.targets {
            let labels = format!("upstream=\"{}\",target=\"{}\"", escape(upstream), escape(target));
            histogram(out, "levee_upstream_duration_seconds", &labels, hist);
        }
    }

    /// Retries, requests refused by a bulkhead or a rate limit, and requests to deprecated
    /// routes.
    fn render_refusals(&self, out: &mut String) {
        family(
            out,
            "levee_retries_total",
            "counter",
            "Retries, by route and reason (connect_failure, reset, timeout, status).",
        );
        for ((route, reason), count) in &self.retries {
            let _ = writeln!(
                out,
                "levee_retries_total{{route=\"{}\",reason=\"{reason}\"}} {count}",
                escape(route)
            );
        }
        labelled_counter(
            out,
            "levee_bulkhead_rejected_total",
            "Requests refused because the upstream's max_concurrent was reached.",
            "upstream",
            &self.bulkhead,
        );
        labelled_counter(
            out,
            "levee_rate_limited_total",
            "Requests refused with 429 by a route's rate limit.",
            "route",
            &self.rate_limited,
        );
        family(
            out,
            "levee_deprecated_requests_total",
            "counter",
            "Requests to deprecated routes after auth, by route and consumer (empty without auth; past 1000 consumers of a route, _other).",
        );
        for ((route, consumer), count) in &self.deprecated {
            let _ = writeln!(
                out,
                "levee_deprecated_requests_total{{route=\"{}\",consumer=\"{}\"}} {count}",
                escape(route),
                escape(consumer)
            );
        }
    }

    /// The AI gateway's families ([`super::ai_metrics`]), injected faults and gRPC statuses.
    fn render_llm(&self, out: &mut String) {
        self.ai.render(out);
        family(
            out,
            "levee_faults_injected_total",
            "counter",
            "Faults injected into a route's requests (chaos testing), by kind: abort or delay.",
        );
        for ((route, kind), count) in &self.faults {
            let _ = writeln!(
                out,
                "levee_faults_injected_total{{route=\"{}\",kind=\"{kind}\"}} {count}",
                escape(route)
            );
        }
        family(
            out,
            "levee_grpc_requests_total",
            "counter",
            "gRPC calls per route by final status (grpc-status as its name: OK, UNAVAILABLE...).",
        );
        for ((route, code), count) in &self.grpc {
            let (route, name) = (escape(route), crate::grpc::code_name(*code));
            let _ = writeln!(
                out,
                "levee_grpc_requests_total{{route=\"{route}\",grpc_code=\"{name}\"}} {count}"
            );
        }
    }
}

impl Globals {
    /// The process-wide counters without labels (and the config version).
    fn render_counters(&self, out: &mut String) {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        for (name, kind, help, value) in [
            (
                "levee_access_log_dropped_total",
                "counter",
                "Access log lines dropped because the writer fell behind.",
                load(&self.access_log_dropped),
            ),
            (
                "levee_shed_total",
                "counter",
                "Requests and connections refused because the gateway was at its limits.",
                load(&self.shed),
            ),
            (
                "levee_connections_accepted_total",
                "counter",
                "Client connections accepted.",
                load(&self.connections_accepted),
            ),
            (
                "levee_config_version",
                "gauge",
                "Version of the active config (1 for the config loaded at start).",
                load(&self.config_version),
            ),
            (
                "levee_calllog_dropped_total",
                "counter",
                "Call-log records dropped because the writer fell behind.",
                load(&self.calllog_dropped),
            ),
            (
                "levee_trace_spans_exported_total",
                "counter",
                "Spans the OTLP collector accepted.",
                load(&self.spans_exported),
            ),
        ] {
            family(out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
    }

    /// Config reloads by result, and spans dropped by reason.
    fn render_reloads_and_spans(&self, out: &mut String) {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        family(
            out,
            "levee_config_reloads_total",
            "counter",
            "Config reloads: applied (ok) or refused with the running config kept (error).",
        );
        for (result, counter) in [
            ("ok", &self.config_reloads_ok),
            ("error", &self.config_reloads_error),
        ] {
            let _ = writeln!(
                out,
                "levee_config_reloads_total{{result=\"{result}\"}} {}",
                load(counter)
            );
        }
        family(
            out,
            "levee_trace_spans_dropped_total",
            "counter",
            "Spans not exported: the export queue was full, or the collector failed or timed out.",
        );
        for (reason, counter) in [
            ("queue_full", &self.spans_dropped_queue_full),
            ("export_failed", &self.spans_dropped_export_failed),
        ] {
            let _ = writeln!(
                out,
                "levee_trace_spans_dropped_total{{reason=\"{reason}\"}} {}",
                load(counter)
            );
        }
    }
}

/// A counter family with one label, from summed per-label counts.
fn labelled_counter(out: &mut String, name: &str, help: &str, label: &str, counts: &BTreeMap<Arc<str>, u64>) {
    family(out, name, "counter", help);
    for (value, count) in counts {
        let _ = writeln!(out, "{name}{{{label}=\"{}\"}} {count}", escape(value));
    }
}

pub(crate) fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value per the exposition format.
pub(crate) fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_summed_at_scrape() {
        let metrics = Metrics::default();
        let a = metrics.shard();
        let b = metrics.shard();
        let route: Arc<str> = "users".into();
        a.lock().record_request(
            &route,
            "GET",
            200,
            Duration::from_millis(3),
            Some(Duration::from_micros(40)),
        );
        b.lock()
            .record_request(&route, "GET", 200, Duration::from_millis(30), None);
        b.lock()
            .record_request(&route, "GET", 502, Duration::from_millis(1), None);
        let text = metrics.render();
        assert!(text.contains("levee_requests_total{route=\"users\",method=\"GET\",status=\"200\"} 2"));
        assert!(text.contains("levee_requests_total{route=\"users\",method=\"GET\",status=\"502\"} 1"));
        assert!(text.contains("levee_request_duration_seconds_bucket{route=\"users\",le=\"0.005\"} 2"));
        assert!(text.contains("levee_request_duration_seconds_count{route=\"users\"} 3"));
        assert!(text.contains("levee_request_overhead_seconds_bucket{route=\"users\",le=\"0.00005\"} 1"));
        assert!(text.contains("levee_request_overhead_seconds_bucket{route=\"users\",le=\"+Inf\"} 1"));
        let users = &metrics.route_counts()["users"];
        assert_eq!((users.requests, users.errors, users.buckets.count()), (3, 1, 3));
    }

    #[test]
    fn histogram_bucket_edges_are_inclusive() {
        let mut h: Histogram = Histogram::default();
        h.observe(Duration::from_millis(1));
        assert_eq!(h.counts[1], 1, "1ms lands in le=0.001");
        h.observe(Duration::from_secs(120));
        assert_eq!(
            h.counts[LATENCY_BUCKETS.len()],
            1,
            "beyond the last bound lands in +Inf"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
