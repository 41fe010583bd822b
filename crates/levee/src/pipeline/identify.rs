//! Step 3's auth: who is calling, and whether their key may call this route now.
//!
//! A key is looked up by its digest among the config file's keys, then among the
//! management plane's (`crate::management`). A stored key answers 401 `key_revoked` once
//! revoked and `key_expired` past its `expires_at`; it may be limited to some routes (403
//! `forbidden` elsewhere) and have its own request rate (429, with the `RateLimit` headers).
//! Each request a stored key makes is counted for its usage here; its tokens and cost when
//! its LLM call settles.

use std::sync::Arc;

use http::request::Parts;

use crate::auth::{self, AuthError};
use crate::config::spec::{AuthSpec, RouteSpec};
use crate::edge::Rejection;
use crate::gateway::WorkerContext;
use crate::management::KeyGrant;
use crate::ratelimit::RouteLimiter;
use crate::record::RequestRecord;
use crate::state::ConnInfo;
use levee_resilience::Decision;

/// A refusal, with the rate limiter whose headers go on it (a key's own rate limit).
pub(super) struct Refused {
    pub rejection: Rejection,
    pub limited: Option<(Arc<RouteLimiter>, Decision)>,
}

impl From<Rejection> for Refused {
    fn from(rejection: Rejection) -> Refused {
        Refused {
            rejection,
            limited: None,
        }
    }
}

impl From<AuthError> for Refused {
    fn from(error: AuthError) -> Refused {
        Rejection::Auth(error).into()
    }
}

/// Authenticates the request on `route` and sets `record.consumer`; returns the stored key
/// it presented, if it was one. On a published route, the consumer also needs an approved
/// subscription to its service (403 `subscription_required`).
pub(super) async fn identify(
    worker: &WorkerContext,
    conn: &ConnInfo,
    route: &RouteSpec,
    parts: &mut Parts,
    record: &mut RequestRecord,
) -> Result<Option<Arc<KeyGrant>>, Refused> {
    let key = authenticate(worker, conn, route, parts, record).await?;
    if let (Some(publish), Some(consumer)) = (&route.publish, &record.consumer) {
        let directory = worker.gateway.management.directory();
        if !directory.subscribed(consumer, &publish.service) {
            return Err(Rejection::SubscriptionRequired.into());
        }
    }
    Ok(key)
}

async fn authenticate(
    worker: &WorkerContext,
    conn: &ConnInfo,
    route: &RouteSpec,
    parts: &mut Parts,
    record: &mut RequestRecord,
) -> Result<Option<Arc<KeyGrant>>, Refused> {
    let gateway = &worker.gateway;
    if let AuthSpec::Jwt { .. } = &route.auth {
        record.consumer = auth::authenticate_jwt(&route.auth, gateway.jwt.as_deref(), parts).await?;
        return Ok(None);
    }
    let Some(digest) = auth::presented_key(&route.auth, parts)? else {
        return Ok(None);
    };
    if let Some(consumer) = gateway.credentials.consumer_for_digest(&digest) {
        auth::admit_api_key(&route.auth, &consumer, parts)?;
        record.consumer = Some(consumer);
        return Ok(None);
    }
    let key = gateway
        .management
        .directory()
        .key(&digest)
        .cloned()
        .ok_or(AuthError::Invalid)?;
    if key.revoked {
        return Err(AuthError::Revoked.into());
    }
    if key
        .expires_ms
        .is_some_and(|at| at <= crate::management::model::now_ms())
    {
        return Err(AuthError::Expired.into());
    }
    auth::admit_api_key(&route.auth, &key.consumer, parts)?;
    record.consumer = Some(key.consumer.clone());
    if !key.allows_route(&route.name) {
        return Err(AuthError::Forbidden.into());
    }
    key.usage
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if let Some(limiter) = &key.rate {
        let decision = limiter.check(parts, conn.peer.ip(), None).await;
        if !decision.allowed {
            return Err(Refused {
                rejection: Rejection::RateLimited,
                limited: Some((limiter.clone(), decision)),
            });
        }
    }
    Ok(Some(key))
}

/// What the AI gateway gets from a stored key: its limits and its team's, the models it
/// may use, and where its usage is counted.
pub(super) fn key_limits(
    worker: &WorkerContext,
    key: Option<&Arc<KeyGrant>>,
) -> Vec<Arc<crate::llm::fleet_quota::ConsumerLimits>> {
    let Some(key) = key else {
        return Vec::new();
    };
    let directory = worker.gateway.management.directory();
    let team = key
        .team
        .as_deref()
        .and_then(|t| directory.team(t))
        .and_then(|t| t.llm.clone());
    key.llm.iter().cloned().chain(team).collect()
}
