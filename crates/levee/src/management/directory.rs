//! What the request path knows of the management objects: an immutable snapshot, swapped
//! whole when the store changes, and read without a lock by every worker.
//!
//! A presented key is found by its SHA-256 digest in a hash map, in one step however many keys
//! there are. Comparing digests in constant time one by one (as a list of config keys once
//! did) is unnecessary here: the keys are 256 random bits, so the digest of a guess tells an
//! attacker nothing about any stored key, and a lookup's timing leaks only whether the guess
//! hit. The map's hasher takes the digest's first 8 bytes as they are: they are already
//! uniformly spread, and the attacker cannot choose them without a preimage.
//!
//! Applying a change copies the maps (a few milliseconds for 100,000 keys) and keeps, for
//! every key and team whose limits did not change, the limiter and the quota that count for
//! it, so a change to one key never resets another's budget.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Deserialize;

use super::model::{self, Key, Role, Subscription, SubscriptionState, Team, Token};
use super::store::{Kind, Object, Usage};
use crate::cluster::Cluster;
use crate::config::spec::{LimitKey, RateLimitSpec};
use crate::llm::fleet_quota::ConsumerLimits;
use crate::ratelimit::RouteLimiter;

/// Hashes a SHA-256 digest by its first 8 bytes (see the module docs).
#[derive(Debug, Default, Clone, Copy)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut word = [0u8; 8];
        for (slot, byte) in word.iter_mut().zip(bytes) {
            *slot = *byte;
        }
        self.0 = self.0.rotate_left(7) ^ u64::from_le_bytes(word);
    }
}

pub type DigestMap<V> = HashMap<[u8; 32], V, BuildHasherDefault<DigestHasher>>;

/// Requests, tokens and cost counted for a key since the last flush to the store.
#[derive(Debug, Default)]
pub struct UsageCounter {
    pub requests: AtomicU64,
    pub tokens: AtomicU64,
    /// In millionths of a US dollar.
    pub cost_micro_usd: AtomicU64,
}

impl UsageCounter {
    pub fn add_llm(&self, tokens: u64, cost_usd: f64) {
        self.tokens.fetch_add(tokens, Ordering::Relaxed);
        let micro = (cost_usd.max(0.0) * 1e6).round() as u64;
        self.cost_micro_usd.fetch_add(micro, Ordering::Relaxed);
    }

    /// Whether nothing was counted since the last flush (read before taking, so that a
    /// flush over 100,000 mostly idle keys writes no cache line it does not have to).
    pub fn is_idle(&self) -> bool {
        self.requests.load(Ordering::Relaxed) == 0
            && self.tokens.load(Ordering::Relaxed) == 0
            && self.cost_micro_usd.load(Ordering::Relaxed) == 0
    }

    /// Takes what was counted (requests, tokens, cost).
    pub fn take(&self) -> (u64, u64, f64) {
        (
            self.requests.swap(0, Ordering::Relaxed),
            self.tokens.swap(0, Ordering::Relaxed),
            self.cost_micro_usd.swap(0, Ordering::Relaxed) as f64 / 1e6,
        )
    }

    /// Puts back what a failed flush took.
    pub fn put_back(&self, (requests, tokens, cost): (u64, u64, f64)) {
        self.requests.fetch_add(requests, Ordering::Relaxed);
        self.add_llm(tokens, cost);
    }
}

/// A stored key as the request path uses it.
#[derive(Debug)]
pub struct KeyGrant {
    pub id: Arc<str>,
    pub consumer: Arc<str>,
    pub team: Option<Arc<str>>,
    pub expires_ms: Option<i64>,
    pub revoked: bool,
    pub allowed_routes: Option<Vec<Arc<str>>>,
    pub allowed_models: Option<Vec<Arc<str>>>,
    /// The key's own request rate limit.
    pub rate: Option<Arc<RouteLimiter>>,
    /// The key's LLM budget and token and request limits per minute.
    pub llm: Option<Arc<ConsumerLimits>>,
    pub usage: Arc<UsageCounter>,
    /// The budget's period in ms (0 without a budget).
    pub budget_period_ms: i64,
    /// What the limiters were built from: kept while it is equal.
    limits: Limits,
}

/// The fields of a key its limiters are built from.
#[derive(Debug, PartialEq)]
struct Limits {
    rate_limit: Option<model::RateLimit>,
    budget: Option<model::Budget>,
    tokens_per_minute: Option<u64>,
    requests_per_minute: Option<u64>,
}

impl Limits {
    fn of(key: &Key) -> Limits {
        Limits {
            rate_limit: key.rate_limit.clone(),
            budget: key.budget.clone(),
            tokens_per_minute: key.tokens_per_minute,
            requests_per_minute: key.requests_per_minute,
        }
    }
}

impl KeyGrant {
    pub fn allows_route(&self, route: &str) -> bool {
        self.allowed_routes
            .as_ref()
            .is_none_or(|routes| routes.iter().any(|r| &**r == route))
    }
}

/// A team as the request path uses it: its budget over all its keys.
#[derive(Debug)]
pub struct TeamGrant {
    pub llm: Option<Arc<ConsumerLimits>>,
    budget: Option<model::Budget>,
}

/// An admin token's holder.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenGrant {
    pub id: String,
    pub role: Role,
    pub team: Option<String>,
}

/// The snapshot.
#[derive(Debug, Default, Clone)]
pub struct Directory {
    /// The store version this snapshot has seen.
    pub version: i64,
    keys: DigestMap<Arc<KeyGrant>>,
    key_digests: HashMap<String, [u8; 32]>,
    teams: HashMap<Arc<str>, Arc<TeamGrant>>,
    subscriptions: HashMap<String, (Arc<str>, Arc<str>, SubscriptionState)>,
    /// Approved subscriptions: consumer → services.
    approved: HashMap<Arc<str>, Vec<Arc<str>>>,
    tokens: DigestMap<TokenGrant>,
    token_digests: HashMap<String, [u8; 32]>,
}

/// Who holds a set of LLM limits (for `GET /api/v1/llm`).
pub struct LimitsHolder {
    /// `key` or `team`.
    pub scope: &'static str,
    /// The key's id or the team's name.
    pub name: Arc<str>,
    /// A key's consumer.
    pub consumer: Option<Arc<str>>,
    pub limits: Arc<ConsumerLimits>,
}

/// What building limiters needs: the fleet (cluster mode), and usage an earlier run stored.
pub struct Context<'a> {
    pub cluster: Option<&'a Arc<Cluster>>,
    pub usage: &'a HashMap<String, Usage>,
    pub now_ms: i64,
}

impl Directory {
    /// The LLM limits of stored keys (not revoked) and teams, sorted by scope and name.
    pub fn budgets(&self) -> Vec<LimitsHolder> {
        let keys = self.keys.values().filter(|k| !k.revoked).filter_map(|k| {
            Some(LimitsHolder {
                scope: "key",
                name: k.id.clone(),
                consumer: Some(k.consumer.clone()),
                limits: k.llm.clone()?,
            })
        });
        let teams = self.teams.iter().filter_map(|(name, t)| {
            Some(LimitsHolder {
                scope: "team",
                name: name.clone(),
                consumer: None,
                limits: t.llm.clone()?,
            })
        });
        let mut out: Vec<_> = keys.chain(teams).collect();
        out.sort_by(|a, b| (a.scope, &a.name).cmp(&(b.scope, &b.name)));
        out
    }

    pub fn key(&self, digest: &[u8; 32]) -> Option<&Arc<KeyGrant>> {
        self.keys.get(digest)
    }

    pub fn token(&self, digest: &[u8; 32]) -> Option<&TokenGrant> {
        self.tokens.get(digest)
    }

    pub fn team(&self, name: &str) -> Option<&Arc<TeamGrant>> {
        self.teams.get(name)
    }

    /// Whether `consumer` holds an approved subscription to `service`.
    pub fn subscribed(&self, consumer: &str, service: &str) -> bool {
        self.approved
            .get(consumer)
            .is_some_and(|services| services.iter().any(|s| &**s == service))
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Every key, for flushing usage.
    pub fn keys(&self) -> impl Iterator<Item = &Arc<KeyGrant>> {
        self.keys.values()
    }

    /// Applies `changes` (in version order) to this snapshot.
    pub fn apply(&mut self, changes: &[Object], context: &Context<'_>) {
        let next = self;
        let mut subscriptions_changed = false;
        // Teams last: a team's budget takes up what its keys spent, so its keys come first.
        let (teams, others): (Vec<&Object>, Vec<&Object>) =
            changes.iter().partition(|o| o.kind == Kind::Team);
        for object in others.into_iter().chain(teams) {
            next.version = next.version.max(object.version);
            match object.kind {
                Kind::Key => next.apply_key(object, context),
                Kind::Team => next.apply_team(object, context),
                // Consumers matter to the request path only through their keys.
                Kind::Consumer => {}
                Kind::Token => next.apply_token(object),
                Kind::Subscription => {
                    subscriptions_changed = true;
                    match Subscription::deserialize(&object.body) {
                        Ok(s) if !object.deleted => {
                            let entry = (s.consumer.as_str().into(), s.service.as_str().into(), s.state);
                            next.subscriptions.insert(object.id.clone(), entry);
                        }
                        _ => {
                            next.subscriptions.remove(&object.id);
                        }
                    }
                }
            }
        }
        if subscriptions_changed {
            next.approved.clear();
            for (consumer, service, state) in next.subscriptions.values() {
                if *state == SubscriptionState::Approved {
                    next.approved
                        .entry(consumer.clone())
                        .or_default()
                        .push(service.clone());
                }
            }
        }
    }

    fn apply_key(&mut self, object: &Object, context: &Context<'_>) {
        let old = self
            .key_digests
            .remove(&object.id)
            .and_then(|digest| self.keys.remove(&digest));
        let parsed = Key::deserialize(&object.body);
        let (Some(digest), Ok(key), false) = (
            object.digest.as_deref().and_then(parse_digest),
            parsed,
            object.deleted,
        ) else {
            return;
        };
        let grant = key_grant(key, old.as_deref(), context);
        self.key_digests.insert(object.id.clone(), digest);
        self.keys.insert(digest, Arc::new(grant));
    }

    fn apply_team(&mut self, object: &Object, context: &Context<'_>) {
        let name: Arc<str> = object.id.as_str().into();
        let old = self.teams.remove(&name);
        let Ok(team) = Team::deserialize(&object.body) else {
            return;
        };
        if object.deleted {
            return;
        }
        let kept = old.filter(|o| o.budget == team.budget);
        let grant = kept.unwrap_or_else(|| {
            let budget = team.budget.as_ref().and_then(|b| b.parsed().ok());
            let llm = budget.map(|budget| {
                let limits =
                    ConsumerLimits::new(&format!("team:{name}"), Some(budget), None, context.cluster);
                // What the team's keys spent in the current period, as stored.
                let spent: f64 = self
                    .keys
                    .values()
                    .filter(|k| k.team.as_deref() == Some(&*name))
                    .filter_map(|k| context.usage.get(&*k.id))
                    .filter(|u| context.now_ms - u.period_start_ms < duration_ms(budget.1))
                    .map(|u| u.period_cost_usd)
                    .sum();
                limits.resume(spent, std::time::Duration::ZERO);
                Arc::new(limits)
            });
            Arc::new(TeamGrant {
                llm,
                budget: team.budget.clone(),
            })
        });
        self.teams.insert(name, grant);
    }

    fn apply_token(&mut self, object: &Object) {
        if let Some(digest) = self.token_digests.remove(&object.id) {
            self.tokens.remove(&digest);
        }
        let parsed = Token::deserialize(&object.body);
        let (Some(digest), Ok(token), false) = (
            object.digest.as_deref().and_then(parse_digest),
            parsed,
            object.deleted,
        ) else {
            return;
        };
        if token.revoked_at.is_some() {
            return;
        }
        self.token_digests.insert(object.id.clone(), digest);
        self.tokens.insert(
            digest,
            TokenGrant {
                id: token.id,
                role: token.role,
                team: token.team,
            },
        );
    }
}

/// The grant of `key`, keeping `old`'s limiters and quota while the limits are unchanged.
fn key_grant(key: Key, old: Option<&KeyGrant>, context: &Context<'_>) -> KeyGrant {
    let limits = Limits::of(&key);
    let same_limits = old.is_some_and(|o| o.limits == limits);
    let (rate, llm) = match old {
        Some(old) if same_limits => (old.rate.clone(), old.llm.clone()),
        _ => limiters(&key, context),
    };
    let budget_period_ms = key
        .budget
        .as_ref()
        .and_then(|b| b.parsed().ok())
        .map_or(0, |(_, per)| duration_ms(per));
    let names = |list: &Option<Vec<String>>| {
        list.as_ref()
            .map(|l| l.iter().map(|s| Arc::from(s.as_str())).collect())
    };
    KeyGrant {
        id: key.id.as_str().into(),
        consumer: key.consumer.as_str().into(),
        team: key.team.as_deref().map(Arc::from),
        expires_ms: key.expires_at.as_deref().and_then(|t| model::parse_time(t).ok()),
        revoked: key.revoked_at.is_some(),
        allowed_routes: names(&key.allowed_routes),
        allowed_models: names(&key.allowed_models),
        rate,
        llm,
        usage: old.map(|o| o.usage.clone()).unwrap_or_default(),
        budget_period_ms,
        limits,
    }
}

#[allow(clippy::type_complexity)]
fn limiters(key: &Key, context: &Context<'_>) -> (Option<Arc<RouteLimiter>>, Option<Arc<ConsumerLimits>>) {
    let rate = key.rate_limit.as_ref().and_then(|r| r.quota().ok()).map(|quota| {
        let spec = RateLimitSpec {
            quota,
            key: LimitKey::Route,
            max_keys: 1,
        };
        Arc::new(RouteLimiter::for_fleet(
            &spec,
            &format!("key:{}", key.id),
            context.cluster,
        ))
    });
    let budget = key.budget.as_ref().and_then(|b| b.parsed().ok());
    let per_minute = (key.tokens_per_minute, key.requests_per_minute);
    let llm = (budget.is_some() || per_minute != (None, None)).then(|| {
        let limits = ConsumerLimits::new(
            &format!("key:{}", key.id),
            budget,
            (per_minute != (None, None)).then_some(per_minute),
            context.cluster,
        );
        if let (Some((_, period)), Some(usage)) = (budget, context.usage.get(&key.id)) {
            let age = context.now_ms.saturating_sub(usage.period_start_ms).max(0);
            let age = std::time::Duration::from_millis(age as u64);
            if age < period {
                limits.resume(usage.period_cost_usd, age);
            }
        }
        Arc::new(limits)
    });
    (rate, llm)
}

fn duration_ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `sha256:<64 hex>` as bytes.
pub fn parse_digest(text: &str) -> Option<[u8; 32]> {
    let mut digest = [0u8; 32];
    crate::hex::decode_into(text.strip_prefix("sha256:")?.as_bytes(), &mut digest)?;
    Some(digest)
}
