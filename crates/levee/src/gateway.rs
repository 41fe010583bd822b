//! A running config: the route table and upstreams compiled from a [`Config`], and what each
//! worker thread keeps for itself (connection pools, metrics shard).
//!
//! A reload builds a new [`Gateway`] next to the running one and hands over the state that
//! must survive it: an upstream whose spec did not change keeps its `Upstream` (health
//! verdicts, outlier ejections, circuit breakers, bulkhead count) and, on each worker, its
//! `WorkerUpstream` (connection pool, balancer state); a route whose rate limit and
//! stale-if-error specs did not change keeps its limiter and its stored answers, and one
//! whose retry budget settings did not change keeps its budget. What changed is always told
//! by comparing spec values (`PartialEq`), never the text of the file.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use levee_resilience::RetryBudget;

pub use crate::admission::LoadPermit;
use crate::auth::Credentials;
use crate::config::spec::{LimitsSpec, RouteSpec, RETRY_BUDGET_WINDOW};
use crate::config::Config;
use crate::jwt::JwtVerifier;
use crate::ratelimit::RouteLimiter;
use crate::record::Recorder;
use crate::router::Router;
use crate::stale::StaleCache;
use crate::upstream::{Upstream, WorkerUpstream};

/// Everything compiled from one config, shared by all workers.
#[derive(Debug)]
pub struct Gateway {
    pub config: Config,
    pub router: Router,
    pub upstreams: Vec<Arc<Upstream>>,
    /// Each route's stale-if-error store (`None` where the route has none).
    pub stale: Vec<Option<Arc<StaleCache>>>,
    /// Each route's rate limiter (`None` where the route has none), shared by the workers.
    pub limiters: Vec<Option<Arc<RouteLimiter>>>,
    /// Each route's retry budget (`None` for routes without a retry policy), shared by the
    /// workers so that its ratio and floor hold for the whole process.
    pub retry_budgets: Vec<Option<Arc<RetryBudget>>>,
    pub credentials: Credentials,
    pub jwt: Option<Arc<JwtVerifier>>,
    /// Each consumer's LLM budget and rate limits (only consumers that have any).
    pub llm_quotas: std::collections::HashMap<Arc<str>, Arc<crate::llm::fleet_quota::ConsumerLimits>>,
    /// Each model's targets' breakers and latency estimates, indexed like `llm.models`.
    pub llm_targets: Vec<Vec<Arc<crate::llm::TargetState>>>,
    /// The AI gateway's answer cache, when configured.
    pub llm_cache: Option<Arc<crate::llm::cache::AnswerCache>>,
    /// Each LLM provider's bulkhead (`None` where the provider has no cap), process-wide
    /// like an upstream's, and kept across a reload while the provider's spec is equal.
    pub llm_bulkheads: Vec<Option<Arc<levee_resilience::Bulkhead>>>,
    /// The MCP gateway's servers and sessions (`None` without an `mcp` block); kept across a
    /// reload while the block is unchanged, so local servers keep running.
    pub mcp: Option<Arc<crate::mcp::Hub>>,
    /// Each route's canary (`None` where the route has none); kept, rolled back or not,
    /// while the route's `canary` block is unchanged.
    pub canaries: Vec<Option<Arc<crate::slo::canary::Canary>>>,
    /// 1 for the config the process started with, one more per applied reload.
    pub version: u64,
    /// Cluster mode's stores (restart-only, so every reload keeps the first one).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// The management plane's keys, teams and subscriptions (kept by every reload: they
    /// live in their store, not in the config).
    pub management: Arc<crate::management::Management>,
}

/// The MCP hub: the running one while `mcp.servers` is unchanged, else a new one (the old
/// one stops with the gateway that holds it, and its processes with it).
fn mcp_hub(config: &Config, previous: Option<&Gateway>) -> Option<Arc<crate::mcp::Hub>> {
    let spec = config.mcp.as_ref()?;
    // Access rules are read from the config per request: only a change of servers restarts.
    if let Some(kept) = previous
        .and_then(|old| old.mcp.as_ref())
        .filter(|hub| hub.spec.servers == spec.servers)
    {
        return Some(kept.clone());
    }
    match crate::mcp::Hub::start(spec) {
        Ok(hub) => Some(Arc::new(hub)),
        Err(error) => {
            tracing::error!(%error, "the MCP gateway could not start");
            None
        }
    }
}

impl Gateway {
    pub fn new(config: Config) -> Gateway {
        Gateway::build(config, None)
    }

    /// Compiles `config`, taking over from `previous` (the running gateway, on a reload) the
    /// state of every upstream and route limit whose spec did not change.
    pub fn build(config: Config, previous: Option<&Gateway>) -> Gateway {
        let cluster = previous.and_then(|p| p.cluster.clone());
        Gateway::build_with(config, previous, cluster)
    }

    /// [`Gateway::build`] in cluster mode: limits and budgets count across the fleet.
    pub fn build_with(
        config: Config,
        previous: Option<&Gateway>,
        cluster: Option<Arc<crate::cluster::Cluster>>,
    ) -> Gateway {
        let old_upstreams: HashMap<&str, &Arc<Upstream>> = previous
            .map(|old| old.upstreams.iter().map(|u| (&*u.spec.name, u)).collect())
            .unwrap_or_default();
        // An upstream of the same name and an equal spec is taken over as it runs.
        let upstreams = config
            .upstreams
            .iter()
            .map(|spec| {
                old_upstreams
                    .get(&*spec.name)
                    .filter(|old| old.spec == *spec)
                    .map(|old| Arc::clone(old))
                    .unwrap_or_else(|| Arc::new(Upstream::new(spec.clone())))
            })
            .collect();
        let router = Router::new(config.routes.clone());
        let RouteState {
            stale,
            limiters,
            retry_budgets,
        } = RouteState::build(&config, previous, cluster.as_ref());
        let credentials = Credentials::new(&config.consumers);
        // The verifier keeps its fetched JWKS when nothing about it changed.
        let jwt = match (previous.and_then(|old| old.jwt.as_ref()), &config.jwt) {
            (Some(old), Some(spec)) if old.spec() == spec => Some(old.clone()),
            (_, spec) => spec.clone().map(|spec| Arc::new(JwtVerifier::new(spec))),
        };
        // Cached answers survive a reload only when nothing about the models changed.
        let llm_cache = match previous {
            Some(old) if old.config.llm == config.llm => old.llm_cache.clone(),
            _ => config
                .llm
                .as_ref()
                .and_then(|l| l.cache)
                .map(|(ttl, entries, bytes)| {
                    Arc::new(crate::llm::cache::AnswerCache::new(ttl, entries, bytes))
                }),
        };
        // Spending and limits carry over a reload for a consumer whose limits did not change.
        let llm_quotas = config
            .consumers
            .iter()
            .filter(|c| c.llm_budget.is_some() || c.llm_rate_limit.is_some())
            .map(|c| {
                let kept = previous.and_then(|old| {
                    let before = old.config.consumers.iter().find(|o| o.name == c.name)?;
                    let same = before.llm_budget == c.llm_budget && before.llm_rate_limit == c.llm_rate_limit;
                    old.llm_quotas.get(&c.name).filter(|_| same).cloned()
                });
                let quota = kept.unwrap_or_else(|| {
                    Arc::new(crate::llm::fleet_quota::ConsumerLimits::new(
                        &c.name,
                        c.llm_budget,
                        c.llm_rate_limit,
                        cluster.as_ref(),
                    ))
                });
                (c.name.clone(), quota)
            })
            .collect();
        let llm_targets = match previous {
            Some(old) if old.config.llm == config.llm => old.llm_targets.clone(),
            _ => config
                .llm
                .iter()
                .flat_map(|l| l.models.iter())
                .map(|m| {
                    m.targets
                        .iter()
                        .map(|_| Arc::new(crate::llm::TargetState::new(m.breaker.clone())))
                        .collect()
                })
                .collect(),
        };
        let llm_bulkheads = llm_bulkheads(&config, previous);
        let mcp = mcp_hub(&config, previous);
        let canaries = config
            .routes
            .iter()
            .map(|route| {
                let spec = route.canary.as_ref()?;
                let kept = previous.and_then(|old| {
                    old.canaries
                        .iter()
                        .flatten()
                        .find(|c| c.route == route.name && c.spec.definition == spec.definition)
                        .cloned()
                });
                Some(kept.unwrap_or_else(|| {
                    Arc::new(crate::slo::canary::Canary::new(route.name.clone(), spec.clone()))
                }))
            })
            .collect();
        Gateway {
            mcp,
            canaries,
            llm_targets,
            llm_bulkheads,
            llm_quotas,
            llm_cache,
            config,
            router,
            upstreams,
            stale,
            limiters,
            retry_budgets,
            credentials,
            jwt,
            version: 1,
            cluster,
            management: previous
                .map(|p| p.management.clone())
                .unwrap_or_else(|| Arc::new(crate::management::Management::detached())),
        }
    }

    /// The same gateway with `management` as its management plane (set once, at start).
    pub fn with_management(mut self, management: Arc<crate::management::Management>) -> Gateway {
        self.management = management;
        self
    }
}

/// The state each route keeps between requests, taken over from the running gateway for
/// every route whose settings for it did not change.
struct RouteState {
    stale: Vec<Option<Arc<StaleCache>>>,
    limiters: Vec<Option<Arc<RouteLimiter>>>,
    retry_budgets: Vec<Option<Arc<RetryBudget>>>,
}

impl RouteState {
    fn build(
        config: &Config,
        previous: Option<&Gateway>,
        cluster: Option<&Arc<crate::cluster::Cluster>>,
    ) -> RouteState {
        // The running routes by name, so that finding a route's predecessor stays linear in
        // the number of routes (a reload of 100,000 routes must not compare every pair).
        let old_routes: HashMap<&str, usize> = previous
            .map(|old| {
                old.router
                    .routes()
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (&*r.name, i))
                    .collect()
            })
            .unwrap_or_default();
        // The old route of the same name, when its limiter and cache specs are equal.
        let kept_route = |route: &RouteSpec| -> Option<usize> {
            let index = *old_routes.get(&*route.name)?;
            let before = previous?.router.routes().get(index)?;
            (before.rate_limit == route.rate_limit && before.stale_if_error == route.stale_if_error)
                .then_some(index)
        };
        let stale = config
            .routes
            .iter()
            .map(|r| {
                let kept =
                    kept_route(r).and_then(|i| previous.and_then(|old| old.stale.get(i).cloned().flatten()));
                kept.or_else(|| r.stale_if_error.clone().map(|s| Arc::new(StaleCache::new(s))))
            })
            .collect();
        let limiters = config
            .routes
            .iter()
            .map(|r| {
                let kept = kept_route(r)
                    .and_then(|i| previous.and_then(|old| old.limiters.get(i).cloned().flatten()));
                kept.or_else(|| {
                    r.rate_limit
                        .as_ref()
                        .map(|spec| Arc::new(RouteLimiter::for_fleet(spec, &r.name, cluster)))
                })
            })
            .collect();
        // A retry budget carries over while the route's budget settings stay the same.
        let retry_budgets = config
            .routes
            .iter()
            .map(|r| {
                let policy = r.retry.as_ref()?;
                let kept = previous.and_then(|old| {
                    let i = *old_routes.get(&*r.name)?;
                    let before = old.router.routes().get(i)?.retry.as_ref()?;
                    let same =
                        before.budget == policy.budget && before.min_per_second == policy.min_per_second;
                    old.retry_budgets.get(i).cloned().flatten().filter(|_| same)
                });
                Some(kept.unwrap_or_else(|| {
                    Arc::new(RetryBudget::new(
                        policy.budget,
                        policy.min_per_second,
                        RETRY_BUDGET_WINDOW,
                        tokio::time::Instant::now(),
                    ))
                }))
            })
            .collect();
        RouteState {
            stale,
            limiters,
            retry_budgets,
        }
    }
}

impl Gateway {
    pub fn with_version(mut self, version: u64) -> Gateway {
        self.version = version;
        self
    }
}

/// One worker thread's view: the shared gateway plus its own pools, load signals, label
/// copies and counters. Nothing in here is written by another core.
pub struct WorkerContext {
    pub gateway: Arc<Gateway>,
    /// Indexed like `gateway.upstreams`.
    pub upstreams: Vec<Arc<WorkerUpstream>>,
    /// Worker-local copies of route names, indexed like the routes.
    pub route_names: Vec<Arc<str>>,
    pub recorder: Arc<Recorder>,
    /// This worker's share of the process-wide caps.
    pub limits: LimitsSpec,
    /// Requests in flight on this worker (load shedding).
    pub inflight: Arc<AtomicUsize>,
    /// Client connections open on this worker (load shedding).
    pub connections: Arc<AtomicUsize>,
    /// This worker's client for LLM providers, when the config has any.
    pub llm_client: Option<crate::llm::LlmClient>,
    sequence: AtomicU64,
}

impl WorkerContext {
    pub fn new(gateway: Arc<Gateway>, recorder: Arc<Recorder>) -> WorkerContext {
        WorkerContext::build(gateway, recorder, None)
    }

    /// This worker's view of `gateway`, keeping from `previous` the pools and balancer state of every upstream the new gateway took over unchanged.
    pub fn build(
        gateway: Arc<Gateway>,
        recorder: Arc<Recorder>,
        previous: Option<&WorkerContext>,
    ) -> WorkerContext {
        // The worker views of the previous config, by the shared upstream they view.
        let views: HashMap<*const Upstream, &Arc<WorkerUpstream>> = previous
            .map(|old| {
                old.upstreams
                    .iter()
                    .map(|w| (Arc::as_ptr(w.shared()), w))
                    .collect()
            })
            .unwrap_or_default();
        let upstreams = gateway
            .upstreams
            .iter()
            .map(|u| {
                views
                    .get(&Arc::as_ptr(u))
                    .map(|w| Arc::clone(w))
                    .unwrap_or_else(|| Arc::new(WorkerUpstream::new(u.clone())))
            })
            .collect();
        let route_names = gateway
            .router
            .routes()
            .iter()
            .map(|r| Arc::from(&*r.name))
            .collect();
        let limits = gateway.config.limits.per_worker(gateway.config.workers);
        let llm_client = gateway.config.llm.as_ref().map(|_| {
            previous
                .and_then(|p| p.llm_client.clone())
                .unwrap_or_else(crate::llm::client)
        });
        WorkerContext {
            gateway,
            upstreams,
            route_names,
            recorder,
            limits,
            // The worker's load counts span configs: requests and connections that began
            // under the previous one still count against the caps.
            inflight: previous.map(|p| p.inflight.clone()).unwrap_or_default(),
            connections: previous.map(|p| p.connections.clone()).unwrap_or_default(),
            llm_client,
            // Start workers at different points so round robin does not move in lockstep.
            sequence: AtomicU64::new(fastrand::u64(..1024)),
        }
    }

    /// A per-worker request counter for round robin (never shared across cores).
    pub fn next_sequence(&self) -> u64 {
        self.sequence.fetch_add(1, Ordering::Relaxed)
    }
}

/// Each LLM provider's bulkhead. A provider keeps its bulkhead (and the places taken in it)
/// while its spec is equal, as an upstream does: a fresh count would let up to twice its cap
/// through after a reload.
fn llm_bulkheads(
    config: &Config,
    previous: Option<&Gateway>,
) -> Vec<Option<Arc<levee_resilience::Bulkhead>>> {
    let old: HashMap<
        &str,
        (
            &crate::config::spec::LlmProviderSpec,
            &Option<Arc<levee_resilience::Bulkhead>>,
        ),
    > = previous
        .and_then(|old| Some((old.config.llm.as_ref()?, &old.llm_bulkheads)))
        .map(|(llm, bulkheads)| {
            llm.providers
                .iter()
                .zip(bulkheads)
                .map(|(spec, bulkhead)| (&*spec.name, (spec, bulkhead)))
                .collect()
        })
        .unwrap_or_default();
    config
        .llm
        .iter()
        .flat_map(|l| l.providers.iter())
        .map(|p| match old.get(&*p.name) {
            Some((spec, bulkhead)) if *spec == p => (*bulkhead).clone(),
            _ => p
                .bulkhead
                .map(|(limit, queue)| Arc::new(levee_resilience::Bulkhead::new(limit, queue))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(upstream: &str, rate_limit: &str) -> Config {
        let text = format!(
            "listeners: [{{ name: public, bind: \"127.0.0.1:0\" }}]
upstreams:
  a: {{ targets: [\"127.0.0.1:9\"]{upstream} }}
  b: {{ targets: [\"127.0.0.1:10\"] }}
routes:
  - {{ name: r, match: {{ path_prefix: / }}, upstream: a{rate_limit} }}
"
        );
        crate::config::load_str(&text, "t.yaml").unwrap()
    }

    #[test]
    fn a_reload_keeps_a_providers_bulkhead_and_its_places_while_its_spec_is_equal() {
        std::env::set_var("LEVEE_GATEWAY_TEST_KEY", "k");
        let config = |cap: u32| {
            let text = format!(
                "listeners: [{{ name: public, bind: \"127.0.0.1:0\" }}]
llm:
  providers:
    p: {{ kind: openai, base_url: \"http://127.0.0.1:9/v1\", api_key_env: LEVEE_GATEWAY_TEST_KEY, max_concurrent: {cap} }}
  models:
    - {{ name: m, targets: [{{ provider: p, model: gpt-4o }}] }}
routes:
  - {{ name: ai, match: {{ path_prefix: / }}, llm: true }}
"
            );
            crate::config::load_str(&text, "t.yaml").unwrap()
        };
        let old = Gateway::new(config(2));
        let held = old.llm_bulkheads[0].as_ref().unwrap().try_enter().unwrap();
        let same = Gateway::build(config(2), Some(&old));
        let kept = same.llm_bulkheads[0].as_ref().unwrap();
        assert_eq!(
            kept.inflight(),
            1,
            "the place taken before the reload still counts"
        );
        let changed = Gateway::build(config(3), Some(&same));
        assert_eq!(changed.llm_bulkheads[0].as_ref().unwrap().inflight(), 0);
        drop(held);
        assert_eq!(kept.inflight(), 0);
    }

    #[test]
    fn a_reload_keeps_the_state_of_equal_specs_however_written() {
        let limit = ", rate_limit: { rate: 10/s }";
        let old = Gateway::new(config("", limit));
        // The same upstream and limit, spelt differently: both kept.
        let same = Gateway::build(
            config(
                ", timeouts: { connect: 1000ms }",
                ", rate_limit: { rate: 10/s, burst: 10, key: ip }",
            ),
            Some(&old),
        );
        assert!(Arc::ptr_eq(&old.upstreams[0], &same.upstreams[0]));
        assert!(Arc::ptr_eq(&old.upstreams[1], &same.upstreams[1]));
        let (kept, before) = (same.limiters[0].as_ref(), old.limiters[0].as_ref());
        assert!(Arc::ptr_eq(kept.unwrap(), before.unwrap()));
        // A changed upstream and a changed limit start afresh; the other upstream is kept.
        let changed = Gateway::build(
            config(", timeouts: { connect: 2s }", ", rate_limit: { rate: 11/s }"),
            Some(&same),
        );
        assert!(!Arc::ptr_eq(&same.upstreams[0], &changed.upstreams[0]));
        assert!(Arc::ptr_eq(&same.upstreams[1], &changed.upstreams[1]));
        let (fresh, before) = (changed.limiters[0].as_ref(), same.limiters[0].as_ref());
        assert!(!Arc::ptr_eq(fresh.unwrap(), before.unwrap()));
    }
}
