//! Target health shared by every worker: active health checks and passive outlier ejection.
//!
//! Health is process-wide, like the breakers (ADR 0010), because it is expensive or slow to
//! learn: one health checker probes each
//! target for the whole process, and an ejection decided on one worker's evidence applies to
//! all of them at once. Writes are rare (a verdict changes, a failure streak grows), reads are
//! a relaxed atomic load per pick.
//!
//! When no target is left that health checks and ejection allow, the balancer ignores both
//! and uses every target whose breaker admits requests ("panic routing", as Envoy does):
//! health signals can be wrong, and sending to possibly-bad targets beats refusing everything.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use tokio::time::Instant;

use super::transport::{Conn, TargetAddr, Transport};
use super::Upstream;
use crate::config::spec::{HealthCheckSpec, OutlierSpec};

/// Health of one target, as every worker sees it.
#[derive(Debug)]
pub struct TargetHealth {
    /// The active health check's verdict (true until a check says otherwise).
    healthy: AtomicBool,
    consecutive_failures: AtomicU32,
    /// Milliseconds since the upstream's epoch until which the target is ejected (0: not).
    ejected_until_ms: AtomicU64,
    times_ejected: AtomicU32,
    last_ejected_ms: AtomicU64,
}

impl Default for TargetHealth {
    fn default() -> Self {
        TargetHealth {
            healthy: AtomicBool::new(true),
            consecutive_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            times_ejected: AtomicU32::new(0),
            last_ejected_ms: AtomicU64::new(0),
        }
    }
}

impl TargetHealth {
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    pub fn ejected(&self, now_ms: u64) -> bool {
        now_ms < self.ejected_until_ms.load(Ordering::Relaxed)
    }

    /// Whether the balancer may use this target (health check and ejection agree).
    pub fn usable(&self, now_ms: u64) -> bool {
        self.healthy() && !self.ejected(now_ms)
    }
}

/// Milliseconds since `epoch`, the clock outlier ejection runs on.
pub fn millis_since(epoch: Instant, now: Instant) -> u64 {
    now.saturating_duration_since(epoch).as_millis() as u64
}

/// Feeds one attempt's outcome to passive outlier detection; returns true when this failure
/// ejected the target.
pub fn record_outcome(upstream: &Upstream, index: usize, failed: bool, now: Instant) -> bool {
    let (Some(spec), Some(target)) = (upstream.spec.outlier.as_ref(), upstream.health.get(index)) else {
        return false;
    };
    if !failed {
        // Load first: the common case (no streak) must not write a shared cache line.
        if target.consecutive_failures.load(Ordering::Relaxed) != 0 {
            target.consecutive_failures.store(0, Ordering::Relaxed);
        }
        return false;
    }
    let streak = target.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
    if streak < spec.consecutive_failures {
        return false;
    }
    let now_ms = millis_since(upstream.epoch, now);
    if target.ejected(now_ms) || !ejection_allowed(upstream, spec, now_ms) {
        return false;
    }
    eject(target, spec, now_ms);
    true
}

fn ejection_allowed(upstream: &Upstream, spec: &OutlierSpec, now_ms: u64) -> bool {
    let total = upstream.health.len();
    if total < 2 {
        // Ejecting the only target helps nobody; its breaker still fails fast.
        return false;
    }
    let ejected = upstream.health.iter().filter(|t| t.ejected(now_ms)).count();
    ejected == 0 || (ejected + 1) * 100 <= spec.max_ejected_percent as usize * total
}

fn eject(target: &TargetHealth, spec: &OutlierSpec, now_ms: u64) {
    // Repeat offenders stay out longer; a target that behaved for a while starts over.
    let last = target.last_ejected_ms.load(Ordering::Relaxed);
    let quiet_for = now_ms.saturating_sub(last);
    let times = if last == 0 || quiet_for > 2 * spec.max_ejection.as_millis() as u64 {
        1
    } else {
        target.times_ejected.load(Ordering::Relaxed).saturating_add(1)
    };
    let period = spec.base_ejection.saturating_mul(times).min(spec.max_ejection);
    target.times_ejected.store(times, Ordering::Relaxed);
    target.last_ejected_ms.store(now_ms.max(1), Ordering::Relaxed);
    target
        .ejected_until_ms
        .store(now_ms + period.as_millis() as u64, Ordering::Relaxed);
    target.consecutive_failures.store(0, Ordering::Relaxed);
}

/// Checks every target of `upstream` (if it has a health check) until dropped.
pub async fn check_upstream(upstream: Arc<Upstream>) {
    let Some(spec) = upstream.spec.health_check.clone() else {
        return;
    };
    let checks =
        (0..upstream.spec.targets.len()).map(|index| check_target(upstream.clone(), index, spec.clone()));
    futures_util::future::join_all(checks).await;
}

/// Checks one target every `interval`, flipping its verdict after enough checks in a row.
async fn check_target(upstream: Arc<Upstream>, index: usize, spec: HealthCheckSpec) {
    let (Some(target), Some(health)) = (upstream.spec.targets.get(index), upstream.health.get(index)) else {
        return;
    };
    let sni = upstream.spec.tls.as_ref().and_then(|t| t.sni.as_deref());
    let addr = TargetAddr::new(&target.addr, target.authority.host(), sni);
    let mut passes = 0u32;
    let mut failures = 0u32;
    let mut ticker = tokio::time::interval(spec.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let passed = tokio::time::timeout(
            spec.timeout,
            probe(&upstream.transport, &addr, &target.authority, &spec),
        )
        .await
        .unwrap_or(false);
        if passed {
            passes += 1;
            failures = 0;
            if !health.healthy() && passes >= spec.healthy_after {
                tracing::info!(upstream = %upstream.spec.name, target = %target.addr, "target healthy again");
                health.set_healthy(true);
            }
        } else {
            failures += 1;
            passes = 0;
            if health.healthy() && failures >= spec.unhealthy_after {
                tracing::warn!(upstream = %upstream.spec.name, target = %target.addr, "target failed its health checks");
                health.set_healthy(false);
            }
        }
    }
}

/// One check, through the upstream's own transport (TLS and protocol included): a new
/// connection, then (with a path) a GET whose status must be expected, or (gRPC) a
/// `grpc.health.v1.Health/Check` that must answer `SERVING`.
async fn probe(
    transport: &Transport,
    target: &TargetAddr,
    authority: &http::uri::Authority,
    spec: &HealthCheckSpec,
) -> bool {
    let Ok(conn) = transport.connect::<Full<Bytes>>(target).await else {
        return false;
    };
    let scheme = if transport.tls() { "https" } else { "http" };
    if let Some(service) = &spec.grpc_service {
        let Conn::H2(sender) = conn else {
            return false;
        };
        return grpc_probe(sender, &format!("{scheme}://{authority}"), service).await;
    }
    let Some(path) = &spec.path else {
        return true;
    };
    let request = |uri: String| {
        Request::get(uri)
            .header(http::header::HOST, authority.as_str())
            .header(http::header::USER_AGENT, USER_AGENT)
            .body(Full::new(Bytes::new()))
    };
    let response = match conn {
        Conn::H1(mut sender) => match request(path.to_string()) {
            Ok(request) => sender.send_request(request).await.ok(),
            Err(_) => None,
        },
        Conn::H2(mut sender) => match request(format!("{scheme}://{authority}{path}")) {
            Ok(request) => sender.send_request(request).await.ok(),
            Err(_) => None,
        },
    };
    response.is_some_and(|response| {
        let status = response.status().as_u16();
        if spec.expected_statuses.is_empty() {
            (200..300).contains(&status)
        } else {
            spec.expected_statuses.contains(&status)
        }
    })
}

const USER_AGENT: &str = "levee-health-check";

/// The standard gRPC health check: `SERVING` with `grpc-status` 0 passes; anything else
/// (`NOT_SERVING`, `SERVICE_UNKNOWN`, an error status, a broken answer) fails.
async fn grpc_probe(
    mut sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    base: &str,
    service: &str,
) -> bool {
    let request = Request::post(format!("{base}/grpc.health.v1.Health/Check"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .header(http::header::USER_AGENT, USER_AGENT)
        .body(Full::new(crate::grpc::health_check_request(service)));
    let Ok(request) = request else {
        return false;
    };
    let Ok(response) = sender.send_request(request).await else {
        return false;
    };
    if response.status() != http::StatusCode::OK {
        return false;
    }
    let head_status = crate::grpc::status(response.headers());
    let Ok(collected) = response.into_body().collect().await else {
        return false;
    };
    let status = collected.trailers().and_then(crate::grpc::status).or(head_status);
    status == Some(0) && crate::grpc::health_check_serving(&collected.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;
    use std::time::Duration;

    fn upstream(targets: usize, outlier: &str) -> Upstream {
        let list: Vec<String> = (0..targets)
            .map(|i| format!("\"127.0.0.1:{}\"", 9000 + i))
            .collect();
        let yaml = format!(
            "listeners: [{{ name: p, bind: 127.0.0.1:0 }}]\nupstreams:\n  u:\n    targets: [{}]\n    outlier_detection: {outlier}\nroutes: [{{ name: r, upstream: u }}]\n",
            list.join(", ")
        );
        let config = load_str(&yaml, "t.yaml").unwrap();
        Upstream::new(config.upstreams.into_iter().next().unwrap())
    }

    fn fail(u: &Upstream, index: usize, times: u32) -> bool {
        (0..times).fold(false, |ejected, _| {
            record_outcome(u, index, true, Instant::now()) || ejected
        })
    }

    fn usable(u: &Upstream, index: usize) -> bool {
        u.health[index].usable(millis_since(u.epoch, Instant::now()))
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_for_a_growing_period() {
        let u = upstream(
            3,
            "{ consecutive_failures: 3, base_ejection: 10s, max_ejection: 25s }",
        );
        assert!(!fail(&u, 0, 2));
        record_outcome(&u, 0, false, Instant::now());
        assert!(!fail(&u, 0, 2), "a success resets the streak");
        assert!(fail(&u, 0, 1));
        assert!(!usable(&u, 0));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(usable(&u, 0), "back after the base period");
        assert!(fail(&u, 0, 3));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!usable(&u, 0), "second ejection lasts two periods");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(usable(&u, 0));
        assert!(fail(&u, 0, 3));
        tokio::time::advance(Duration::from_secs(25)).await;
        assert!(usable(&u, 0), "capped at max_ejection");
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_the_allowed_share_is_ejected() {
        let u = upstream(4, "{ consecutive_failures: 1, max_ejected_percent: 50 }");
        assert!(fail(&u, 0, 1));
        assert!(fail(&u, 1, 1));
        assert!(!fail(&u, 2, 1), "a third of four would be 75%");
        assert!(usable(&u, 2) && usable(&u, 3));
        // One target may always be ejected, even when the share rounds to zero.
        let u = upstream(3, "{ consecutive_failures: 1, max_ejected_percent: 10 }");
        assert!(fail(&u, 0, 1));
        assert!(!fail(&u, 1, 1));
        // A single target is never ejected.
        let u = upstream(1, "{ consecutive_failures: 1 }");
        assert!(!fail(&u, 0, 5));
    }
}
