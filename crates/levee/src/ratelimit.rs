//! Route rate limits: which key a request counts against, the limiter behind a small trait,
//! and the `RateLimit-*` / `Retry-After` headers.
//!
//! The limiter is process-wide (one GCRA store shared by the workers, in 16 locked shards),
//! because a per-worker split would let a client that reaches several workers exceed its
//! rate. The [`Limiter`] trait is the seam for a Redis-backed limiter in cluster mode.

use std::fmt::Debug;
use std::net::IpAddr;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue};
use levee_resilience::{Decision, KeyedLimiter, Quota};
use tokio::time::Instant;

use crate::config::spec::{LimitKey, RateLimitSpec};

/// Anything that can decide a request for a key.
pub trait Limiter: Send + Sync + Debug {
    fn check(&self, key: &str, now: Instant) -> Decision;
    fn quota(&self) -> Quota;
}

impl Limiter for KeyedLimiter {
    fn check(&self, key: &str, now: Instant) -> Decision {
        KeyedLimiter::check(self, key, now)
    }

    fn quota(&self) -> Quota {
        KeyedLimiter::quota(self)
    }
}

static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// One route's limit.
#[derive(Debug)]
pub struct RouteLimiter {
    limiter: Box<dyn Limiter>,
    key: LimitKey,
}

impl RouteLimiter {
    pub fn new(spec: &RateLimitSpec) -> RouteLimiter {
        RouteLimiter {
            limiter: Box::new(KeyedLimiter::new(spec.quota, spec.max_keys)),
            key: spec.key.clone(),
        }
    }

    /// Decides a request. A request without the keyed header shares one bucket with every
    /// other such request, so leaving the header out is no way around the limit.
    pub fn check(&self, parts: &Parts, client_ip: IpAddr, consumer: Option<&str>) -> Decision {
        let now = Instant::now();
        match &self.key {
            LimitKey::Route => self.limiter.check("", now),
            LimitKey::Consumer => self.limiter.check(consumer.unwrap_or("-"), now),
            LimitKey::ClientIp => self.limiter.check(&client_ip.to_string(), now),
            LimitKey::Header(name) => {
                let value = parts
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                self.limiter.check(value, now)
            }
        }
    }

    /// Adds the `RateLimit-*` headers (and `Retry-After` when refused).
    pub fn annotate(&self, decision: &Decision, headers: &mut HeaderMap) {
        let quota = self.limiter.quota();
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
