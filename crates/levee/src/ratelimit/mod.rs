//! Route rate limits: which key a request counts against, the limiter behind a small trait,
//! and the `RateLimit-*` / `Retry-After` headers.
//!
//! The limiter is process-wide (one GCRA store shared by the workers, in 16 locked shards),
//! because a per-worker split would let a client that reaches several workers exceed its
//! rate. In cluster mode with Redis the same reasoning goes one step further: the decision
//! is made for the whole fleet ([`fleet`]), so that three replicas do not let three times
//! the rate through.

mod coalesce;
pub mod fleet;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue};
use levee_resilience::{Decision, KeyedLimiter};
use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::config::spec::{LimitKey, RateLimitSpec};
use fleet::FleetLimiter;

static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// One route's limit: counted in this process, or across the fleet in cluster mode.
#[derive(Debug)]
pub struct RouteLimiter {
    local: KeyedLimiter,
    fleet: Option<FleetLimiter>,
    key: LimitKey,
}

impl RouteLimiter {
    pub fn new(spec: &RateLimitSpec) -> RouteLimiter {
        RouteLimiter {
            local: KeyedLimiter::new(spec.quota, spec.max_keys),
            fleet: None,
            key: spec.key.clone(),
        }
    }

    /// The route's limit for the whole fleet when the cluster has Redis, else [`RouteLimiter::new`].
    pub fn for_fleet(spec: &RateLimitSpec, route: &str, cluster: Option<&Arc<Cluster>>) -> RouteLimiter {
        let mut limiter = RouteLimiter::new(spec);
        if let Some((cluster, redis)) = cluster.and_then(|c| Some((c, c.redis.clone()?))) {
            limiter.fleet = Some(FleetLimiter::new(
                cluster.clone(),
                redis,
                route,
                spec.quota,
                spec.max_keys,
            ));
        }
        limiter
    }

    /// Decides a request. A request without the keyed header shares one bucket with every
    /// other such request, so leaving the header out is no way around the limit.
    pub async fn check(&self, parts: &Parts, client_ip: IpAddr, consumer: Option<&str>) -> Decision {
        let now = Instant::now();
        let ip;
        let key = match &self.key {
            LimitKey::Route => "",
            LimitKey::Consumer => consumer.unwrap_or("-"),
            LimitKey::ClientIp => {
                ip = client_ip.to_string();
                &ip
            }
            LimitKey::Header(name) => parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-"),
        };
        match &self.fleet {
            Some(fleet) => fleet.check(key, now).await,
            None => self.local.check(key, now),
        }
    }

    /// Adds the `RateLimit-*` headers (and `Retry-After` when refused).
    pub fn annotate(&self, decision: &Decision, headers: &mut HeaderMap) {
        let quota = self.local.quota();
        headers.insert(RATELIMIT_LIMIT.clone(), HeaderValue::from(quota.burst));
        headers.insert(RATELIMIT_REMAINING.clone(), HeaderValue::from(decision.remaining));
        headers.insert(
            RATELIMIT_RESET.clone(),
            HeaderValue::from(ceil_secs(decision.reset)),
        );
        if !decision.allowed {
            headers.insert(
                http::header::RETRY_AFTER,
                HeaderValue::from(ceil_secs(decision.retry_after).max(1)),
            );
        }
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}
