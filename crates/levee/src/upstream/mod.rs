//! Upstreams: their targets, the per-target load signals balancers read, and sending one
//! attempt to a target over a pooled keep-alive connection.

pub mod balancer;
pub mod health;
pub mod pool;
pub mod request_body;
pub mod transport;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Uri};
use http::{HeaderValue, Request, Response};
use tokio::time::Instant;

use crate::config::spec::{TargetSpec, UpstreamSpec};
use balancer::{Balancer, PickContext};
pub use levee_resilience::BulkheadPermit;
use levee_resilience::{Bulkhead, CircuitBreaker, Permit, State};
pub use request_body::{PrefetchError, ReplayableBody, RequestBody};

/// Why an upstream attempt failed. Each variant knows whether a retry could help.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("could not connect to {target}: {source}")]
    Connect {
        target: Arc<str>,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {target} timed out after {after:?}")]
    ConnectTimeout { target: Arc<str>, after: Duration },
    #[error("{target} did not answer within {after:?}")]
    Timeout { target: Arc<str>, after: Duration },
    #[error("the exchange with {target} failed: {source}")]
    Exchange {
        target: Arc<str>,
        #[source]
        source: hyper::Error,
    },
    #[error("the TLS handshake with {target} failed: {source}")]
    Tls {
        target: Arc<str>,
        #[source]
        source: std::io::Error,
    },
    #[error("{target} refused the request without processing it: {source}")]
    Refused {
        target: Arc<str>,
        #[source]
        source: hyper::Error,
    },
    #[error("upstream {upstream} has no target available (all circuits open or none configured)")]
    NoTarget { upstream: Arc<str> },
    #[error("upstream {upstream} already has {limit} requests in flight (bulkhead full)")]
    BulkheadFull { upstream: Arc<str>, limit: usize },
}

impl UpstreamError {
    /// Whether the request certainly never reached the target's application (safe to
    /// retry elsewhere, whatever its method).
    pub fn never_sent(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect { .. }
                | UpstreamError::ConnectTimeout { .. }
                | UpstreamError::Tls { .. }
                | UpstreamError::Refused { .. }
                | UpstreamError::NoTarget { .. }
        )
    }
}

/// Peak-EWMA latency with a 10s decay, as in linkerd and Finagle.
#[derive(Debug)]
struct Ewma {
    value_ms: f64,
    stamp: Instant,
}

const EWMA_DECAY: Duration = Duration::from_secs(10);

/// A failed attempt counts as this slow (at least), so p2c steers away from failing targets;
/// the penalty fades with the same decay as any other sample.
const FAILURE_PENALTY: Duration = Duration::from_secs(1);

/// One target as one worker sees it: address plus that worker's load signals.
///
/// Load signals are per worker, as in Envoy: each core balances its own traffic without
/// touching another core's cache lines. The target's circuit breaker is not: it judges the
/// target for the whole process (see [`Upstream::breaker`]).
#[derive(Debug)]
pub struct Target {
    /// A worker-local copy of the address (labels are cloned per request; a shared `Arc`
    /// would bounce its reference count between cores).
    pub addr: Arc<str>,
    pub authority: Authority,
    /// The Host header sent when the client's request had none (an HTTP/1.0 client).
    host: Option<HeaderValue>,
    /// Where new connections go, and the TLS name they check.
    connect_to: transport::TargetAddr,
    pub weight: u32,
    inflight: AtomicUsize,
    ewma: Mutex<Ewma>,
}

impl Target {
    /// `sni`: the upstream's `tls.sni`, which replaces the target's host as the TLS name.
    pub fn new(spec: &TargetSpec, sni: Option<&str>) -> Target {
        Target {
            host: HeaderValue::from_str(spec.authority.as_str()).ok(),
            connect_to: transport::TargetAddr::new(&spec.addr, spec.authority.host(), sni),
            addr: Arc::from(&*spec.addr),
            // A copy, not a clone: a clone would share the config's reference count.
            authority: spec
                .authority
                .as_str()
                .parse()
                .unwrap_or_else(|_| spec.authority.clone()),
            weight: spec.weight.max(1),
            inflight: AtomicUsize::new(0),
            ewma: Mutex::new(Ewma {
                value_ms: 0.0,
                stamp: Instant::now(),
            }),
        }
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub fn start_request(&self) -> impl Drop + '_ {
        struct G<'a>(&'a AtomicUsize);
        impl Drop for G<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.inflight.fetch_add(1, Ordering::Relaxed);
        G(&self.inflight)
    }

    /// Feeds one latency sample: a sample above the (decayed) average replaces it at once
    /// (peak), a lower one is blended in with a weight that grows with the time since the
    /// last sample.
    pub fn observe_latency(&self, sample: Duration) {
        let sample_ms = sample.as_secs_f64() * 1000.0;
        let now = Instant::now();
        let mut ewma = self.ewma.lock().unwrap_or_else(|p| p.into_inner());
        let keep = decay(now, ewma.stamp);
        let current = ewma.value_ms * keep;
        ewma.value_ms = if sample_ms > current {
            sample_ms
        } else {
            current + (sample_ms - current) * (1.0 - keep)
        };
        ewma.stamp = now;
    }

    /// The latency estimate now: it decays toward zero while no samples arrive, so a target
    /// penalised for failures gets tried again.
    pub fn ewma_ms(&self) -> f64 {
        match self.ewma.lock() {
            Ok(e) => e.value_ms * decay(Instant::now(), e.stamp),
            Err(_) => 0.0,
        }
    }

    /// p2c cost: expected latency scaled by the queue in front of it, per unit of weight.
    fn cost(&self) -> f64 {
        (self.ewma_ms() + 0.001) * (self.inflight() as f64 + 1.0) / f64::from(self.weight)
    }
}

/// The upstream error for a failed exchange with `target`.
fn send_error(error: pool::SendError, target: Arc<str>, connect_timeout: Duration) -> UpstreamError {
    use transport::ConnectError;
    match error {
        pool::SendError::Connect(ConnectError::TimedOut) => UpstreamError::ConnectTimeout {
            target,
            after: connect_timeout,
        },
        pool::SendError::Connect(ConnectError::Failed(source)) => UpstreamError::Connect { target, source },
        pool::SendError::Connect(ConnectError::Tls(source)) => UpstreamError::Tls { target, source },
        pool::SendError::Connect(ConnectError::Handshake(source)) | pool::SendError::Exchange(source) => {
            UpstreamError::Exchange { target, source }
        }
        pool::SendError::Refused(source) => UpstreamError::Refused { target, source },
    }
}

fn decay(now: Instant, since: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(since).as_secs_f64();
    (-elapsed / EWMA_DECAY.as_secs_f64()).exp()
}

/// An upstream as configured: shared, immutable, the same for every worker.
#[derive(Debug)]
pub struct Upstream {
    pub spec: UpstreamSpec,
    balancer: Balancer,
    /// Requests in flight across all workers: the bulkhead, whose count is also
    /// `levee_inflight_requests`.
    bulkhead: Arc<Bulkhead>,
    /// Per target, shared by all workers: health check verdict and outlier ejection.
    pub health: Vec<health::TargetHealth>,
    /// Per target, shared by all workers: the circuit breaker (`None` when breakers are off).
    /// One per process, so that the failures the config names open it wherever they
    /// happened, and half-open lets its probe count through in the whole process.
    breakers: Vec<Option<CircuitBreaker>>,
    /// The clock outlier ejection counts from.
    pub epoch: Instant,
    /// How connections to the targets are made (TLS, protocol), for the pools and the
    /// health checker alike.
    pub transport: Arc<transport::Transport>,
}

impl Upstream {
    pub fn new(spec: UpstreamSpec) -> Upstream {
        let balancer = Balancer::new(&spec.balance, &spec.targets);
        Upstream {
            health: spec
                .targets
                .iter()
                .map(|_| health::TargetHealth::default())
                .collect(),
            breakers: spec
                .targets
                .iter()
                .map(|_| {
                    spec.circuit_breaker
                        .clone()
                        .map(|config| CircuitBreaker::new(config, Instant::now()))
                })
                .collect(),
            epoch: Instant::now(),
            transport: Arc::new(transport::Transport::new(&spec)),
            bulkhead: Arc::new(Bulkhead::new(spec.max_concurrent, spec.queue)),
            spec,
            balancer,
        }
    }

    pub fn inflight(&self) -> usize {
        self.bulkhead.inflight()
    }

    /// Target `index`'s breaker (`None` when breakers are off).
    pub fn breaker(&self, index: usize) -> Option<&CircuitBreaker> {
        self.breakers.get(index).and_then(Option::as_ref)
    }

    /// Whether target `index`'s breaker would let a request through now.
    fn admits(&self, index: usize, now: Instant) -> bool {
        self.breaker(index).is_none_or(|b| b.would_admit(now))
    }

    /// Target `index`'s breaker state now (closed when breakers are off).
    pub fn circuit(&self, index: usize) -> State {
        self.breaker(index)
            .map_or(State::Closed, |b| b.state(Instant::now()))
    }
}

/// One worker's side of an upstream: its connection pool and its view of target load.
#[derive(Debug)]
pub struct WorkerUpstream {
    shared: Arc<Upstream>,
    /// Worker-local copy of the upstream name (for labels).
    pub name: Arc<str>,
    pub targets: Vec<Target>,
    pool: pool::Pool,
}

/// Counts a request as in flight on a target until dropped.
#[derive(Debug)]
pub struct InflightGuard(Arc<WorkerUpstream>, usize);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if let Some(target) = self.0.targets.get(self.1) {
            target.inflight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A target chosen for one attempt.
pub struct Picked {
    pub index: usize,
    pub addr: Arc<str>,
    pub guard: InflightGuard,
    /// The breaker's permission: settle it with the outcome.
    pub ticket: BreakerTicket,
}

/// A breaker permit that must be settled with the attempt's outcome; one dropped unsettled
/// (the request was abandoned) is given back without counting either way.
#[derive(Debug)]
pub struct BreakerTicket {
    upstream: Arc<WorkerUpstream>,
    index: usize,
    permit: Option<Permit>,
}

impl BreakerTicket {
    pub fn settle(mut self, success: bool) {
        if let (Some(permit), Some(breaker)) = (self.permit.take(), self.upstream.shared.breaker(self.index))
        {
            breaker.record(permit, success, Instant::now());
        }
    }
}

impl Drop for BreakerTicket {
    fn drop(&mut self) {
        if let (Some(permit), Some(breaker)) = (self.permit.take(), self.upstream.shared.breaker(self.index))
        {
            breaker.release(permit);
        }
    }
}

impl WorkerUpstream {
    /// A worker's view of `shared`, with a fresh connection pool. Connections are never
    /// shared across workers.
    pub fn new(shared: Arc<Upstream>) -> WorkerUpstream {
        let spec = &shared.spec;
        let pool = pool::Pool::new(
            spec.pool_max_idle_per_target,
            spec.pool_idle_timeout,
            shared.transport.clone(),
        );
        let sni = spec.tls.as_ref().and_then(|t| t.sni.as_deref());
        WorkerUpstream {
            name: Arc::from(&*spec.name),
            targets: spec.targets.iter().map(|t| Target::new(t, sni)).collect(),
            pool,
            shared,
        }
    }

    /// The id this worker's idle connections to the upstream are kept under.
    pub fn pool_id(&self) -> u64 {
        self.pool.id()
    }

    pub fn spec(&self) -> &UpstreamSpec {
        &self.shared.spec
    }

    pub fn shared(&self) -> &Arc<Upstream> {
        &self.shared
    }

    /// Takes a place in the upstream's bulkhead (see [`Bulkhead::enter`]).
    pub async fn enter(&self) -> Result<BulkheadPermit, UpstreamError> {
        self.shared
            .bulkhead
            .enter()
            .await
            .map_err(|full| UpstreamError::BulkheadFull {
                upstream: self.name.clone(),
                limit: full.limit,
            })
    }

    /// Chooses a target whose breaker admits a request, preferring one not in `tried`, and
    /// counts the request against it.
    pub fn pick(self: &Arc<Self>, ctx: &PickContext, tried: &[usize]) -> Result<Picked, UpstreamError> {
        let no_target = || UpstreamError::NoTarget {
            upstream: self.name.clone(),
        };
        let now = Instant::now();
        let now_ms = health::millis_since(self.shared.epoch, now);
        let admits = |i: usize| self.shared.admits(i, now);
        let usable = |i: usize| self.shared.health.get(i).is_some_and(|h| h.usable(now_ms));
        let balancer = &self.shared.balancer;
        let index = balancer
            .pick(&self.targets, ctx, &|i| {
                !tried.contains(&i) && usable(i) && admits(i)
            })
            // Every other target is out: the one that failed may still be worth a retry.
            .or_else(|| balancer.pick(&self.targets, ctx, &|i| usable(i) && admits(i)))
            // Nothing healthy is left: panic routing, health signals may be wrong.
            .or_else(|| balancer.pick(&self.targets, ctx, &admits))
            .ok_or_else(no_target)?;
        let target = self.targets.get(index).ok_or_else(no_target)?;
        let permit = match self.shared.breaker(index) {
            None => Permit::Normal { generation: 0 },
            Some(breaker) => breaker.try_acquire(now).ok_or_else(no_target)?,
        };
        target.inflight.fetch_add(1, Ordering::Relaxed);
        Ok(Picked {
            index,
            addr: target.addr.clone(),
            guard: InflightGuard(self.clone(), index),
            ticket: BreakerTicket {
                upstream: self.clone(),
                index,
                permit: Some(permit),
            },
        })
    }

    /// The URI of `path` on target `index`, in the origin form HTTP/1.1 sends to a server.
    pub fn target_uri(&self, index: usize, path: PathAndQuery) -> Option<Uri> {
        self.targets.get(index)?;
        Some(Uri::from(path))
    }

    /// Sends one attempt and waits for the response headers, within `timeout` (the
    /// upstream's request timeout unless the route sets a per-try timeout).
    pub async fn send(
        &self,
        index: usize,
        request: Request<RequestBody>,
        timeout: Option<Duration>,
    ) -> Result<Response<pool::PooledBody>, UpstreamError> {
        let spec = &self.shared.spec;
        let Some(target) = self.targets.get(index) else {
            return Err(UpstreamError::NoTarget {
                upstream: self.name.clone(),
            });
        };
        let mut request = request;
        if let (false, Some(host)) = (request.headers().contains_key(HOST), &target.host) {
            request.headers_mut().insert(HOST, host.clone());
        }
        let started = Instant::now();
        let timeout = timeout.unwrap_or(spec.request_timeout);
        let sent = self.pool.send(index, &target.connect_to, request);
        let result = tokio::time::timeout(timeout, sent).await;
        let addr = || target.addr.clone();
        let outcome = match result {
            Err(_) => Err(UpstreamError::Timeout {
                target: addr(),
                after: timeout,
            }),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(send_error(error, addr(), spec.connect_timeout)),
        };
        let elapsed = started.elapsed();
        target.observe_latency(match outcome {
            Ok(_) => elapsed,
            Err(_) => elapsed.max(FAILURE_PENALTY),
        });
        outcome
    }
}
