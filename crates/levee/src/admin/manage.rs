//! The management API's endpoints: teams, consumers, keys, admin tokens, subscriptions, the
//! service catalog, the audit log and usage. Each handler hands the caller and the request
//! to an operation of [`crate::management::ops`], which checks the caller's role, and turns
//! its answer or refusal into JSON here.

use http::{Method, Response, StatusCode};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value as Json;

use super::api::{schema, Doc, Param};
use super::json_value;
use super::routes::{json_doc, Auth, Call, Route, Run};
use crate::body::ResponseBody;
use crate::edge::error_response;
use crate::management::model::{Consumer, Key, Subscription, Team, Token};
use crate::management::ops::{OpError, Ops};
use crate::management::store::{AuditEntry, AuditQuery, Usage};

/// Request bodies are small JSON objects.
const MAX_BODY: usize = 64 * 1024;

/// Runs `op` with the caller's view of the management plane and answers `ok` with its
/// result, or the refusal's status and code.
fn run(
    call: &Call,
    ok: StatusCode,
    op: impl FnOnce(&Ops<'_>) -> Result<Json, OpError>,
) -> Response<ResponseBody> {
    let gateway = call.state.gateway.load();
    let ops = Ops {
        management: &gateway.management,
        config: &gateway.config,
        caller: &call.caller,
    };
    match op(&ops) {
        Ok(value) => json_value(ok, &value),
        Err(error) => {
            if let OpError::Store(cause) = &error {
                tracing::warn!(error = %cause, "management store");
            }
            let (status, code) = error.status_and_code();
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let message = match &error {
                OpError::Store(_) => "The management store is unavailable; try again.".to_owned(),
                other => other.to_string(),
            };
            error_response(status, code, &message, &call.request_id)
        }
    }
}

/// A query parameter's value.
fn param(call: &Call, name: &str) -> Option<String> {
    form_urlencoded::parse(call.query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn list_teams(c: &Call) -> Response<ResponseBody> {
    run(c, StatusCode::OK, |o| o.list_teams())
}
fn create_team(c: &Call) -> Response<ResponseBody> {
    run(c, StatusCode::CREATED, |o| o.create_team(&c.body))
}
fn get_team(c: &Call) -> Response<ResponseBody> {
    run(c, StatusCode::OK, |o| o.get_team(&c.id))
}
fn patch_team(c: &Call) -> Response<ResponseBody> {
    run(c, StatusCode::OK, |o| o.patch_team(&c.id, &c.body))
}
fn delete_team(c: &Call) -> Response<ResponseBody> {
    run(c, StatusCode::OK, |o| o.delete_team(&c.id))
}
fn list_consumers(c: &Call) -> Response<ResponseBody> {
    run(c, StatusCode::OK, |o| o.list_consumers())
}
fn create_consumer(c: &Call) -> Response<ResponseBody> {
    run(c, StatusCode::CREATED, |o| o.create_consumer(&c.body))
}
fn get_consumer(c: &Call) -> Response<ResponseBody> {
    run(c, StatusCode::OK, |o| o.get_consumer(&c.id))
}
fn patch_consumer(c: &Call) -> Response<ResponseBody> {
    run(c, StatusCode::OK, |o| o.patch_consumer(&c.id, &c.body))
}
fn delete_consumer(c: &Call) -> Response<ResponseBody> {
    run(c, StatusCode::OK, |o| o.delete_consumer(&c.id))
}
fn list_keys(c: &Call) -> Response<ResponseBody> {
    let limit = match param(c, "limit").map(|l| l.parse::<i64>()) {
        Some(Ok(l)) if (1..=1000).contains(&l) => Some(l),
        Some(_) => {
            return run(c, StatusCode::OK, |_| {
                Err(OpError::BadRequest("limit is from 1 to 1000.".into()))
            })
        }
        None => None,
    };
    let (consumer, after) = (param(c, "consumer"), param(c, "after"));
    run(c, StatusCode::OK, |o| {
        o.list_keys(consumer.as_deref(), after.as_deref(), limit)
    })
}
fn create_key(c: &Call) -> Response<ResponseBody> {
    run(c, StatusCode::CREATED, |o| o.create_key(&c.body))
}
fn get_key(c: &Call) -> Response<ResponseBody> {
    run(c, StatusCode::OK, |o| o.get_key(&c.id))
}
fn patch_key(c: &Call) -> Response<ResponseBody> {
    run(c, StatusCode::OK, |o| o.patch_key(&c.id, &c.body))
}
fn revoke_key(c: &Call) -> Response<ResponseBody> {
    run(c, StatusCode::OK, |o| o.revoke_key(&c.id))
}
fn rotate_key(c: &Call) -> Response<ResponseBody> {
    run(c, StatusCode::CREATED, |o| o.rotate_key(&c.id, &c.body))
}
fn list_tokens(c: &Call) -> Response<ResponseBody> {
    run(c, StatusCode::OK, |o| o.list_tokens())
}
fn create_token(c: &Call) -> Response<ResponseBody> {
    run(c, StatusCode::CREATED, |o| o.create_token(&c.body))
}
fn revoke_token(c: &Call) -> Response<ResponseBody> {
    run(c, StatusCode::OK, |o| o.revoke_token(&c.id))
}
fn list_subscriptions(c: &Call) -> Response<ResponseBody> {
    let consumer = param(c, "consumer");
    run(c, StatusCode::OK, |o| o.list_subscriptions(consumer.as_deref()))
}
fn create_subscription(c: &Call) -> Response<ResponseBody> {
    run(c, StatusCode::CREATED, |o| o.create_subscription(&c.body))
}
fn get_subscription(c: &Call) -> Response<ResponseBody> {
    run(c, StatusCode::OK, |o| o.get_subscription(&c.id))
}
fn approve_subscription(c: &Call) -> Response<ResponseBody> {
    run(c, StatusCode::OK, |o| o.decide_subscription(&c.id, true, &c.body))
}
fn reject_subscription(c: &Call) -> Response<ResponseBody> {
    run(c, StatusCode::OK, |o| {
        o.decide_subscription(&c.id, false, &c.body)
    })
}
fn cancel_subscription(c: &Call) -> Response<ResponseBody> {
    run(c, StatusCode::OK, |o| o.cancel_subscription(&c.id))
}
fn catalog(c: &Call) -> Response<ResponseBody> {
    run(c, StatusCode::OK, |o| Ok(o.catalog()))
}
fn usage(c: &Call) -> Response<ResponseBody> {
    let group = param(c, "group_by").unwrap_or_else(|| "key".into());
    run(c, StatusCode::OK, |o| o.usage(&group))
}
fn audit(c: &Call) -> Response<ResponseBody> {
    let query = match parse_audit_query(&c.query) {
        Ok(q) => q,
        Err(message) => return run(c, StatusCode::OK, |_| Err(OpError::BadRequest(message))),
    };
    run(c, StatusCode::OK, |o| o.audit(query))
}

/// The audit log's filters; an unknown or malformed parameter is an error naming it.
pub fn parse_audit_query(query: &str) -> Result<AuditQuery, String> {
    let mut q = AuditQuery {
        limit: 100,
        ..AuditQuery::default()
    };
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let value = value.into_owned();
        let time = |v: &str| super::calls::parse_time(&key, v);
        match &*key {
            "kind" => q.kind = Some(value),
            "object_id" => q.object_id = Some(value),
            "actor" => q.actor = Some(value),
            "action" => q.action = Some(value),
            "since" => q.since_ms = Some(time(&value)?),
            "until" => q.until_ms = Some(time(&value)?),
            "limit" => {
                q.limit = value
                    .parse::<i64>()
                    .ok()
                    .filter(|l| (1..=1000).contains(l))
                    .ok_or("parameter `limit` must be from 1 to 1000")?
            }
            other => return Err(format!("unknown parameter `{other}`")),
        }
    }
    Ok(q)
}

// The answers' shapes, for the OpenAPI document only.
#[derive(Serialize, JsonSchema)]
struct Teams {
    teams: Vec<Team>,
}
#[derive(Serialize, JsonSchema)]
struct Consumers {
    consumers: Vec<Consumer>,
}
/// A key as listed: with its usage so far (written every second).
#[derive(Serialize, JsonSchema)]
struct KeyView {
    #[serde(flatten)]
    key: Key,
    usage: Usage,
}
#[derive(Serialize, JsonSchema)]
struct Keys {
    keys: Vec<KeyView>,
    /// Pass as `after` for the next page (absent on the last page).
    next_after: Option<String>,
}
/// A key just made: `key` is the secret, shown this once.
#[derive(Serialize, JsonSchema)]
struct NewKey {
    key: String,
    #[serde(flatten)]
    fields: Key,
}
#[derive(Serialize, JsonSchema)]
struct Tokens {
    tokens: Vec<Token>,
}
/// A token just made: `token` is the secret, shown this once.
#[derive(Serialize, JsonSchema)]
struct NewToken {
    token: String,
    #[serde(flatten)]
    fields: Token,
}
#[derive(Serialize, JsonSchema)]
struct Subscriptions {
    subscriptions: Vec<Subscription>,
}
#[derive(Serialize, JsonSchema)]
struct Deleted {
    deleted: String,
}
#[derive(Serialize, JsonSchema)]
struct Audit {
    /// Newest first.
    entries: Vec<AuditEntry>,
}
#[derive(Serialize, JsonSchema)]
struct UsageGroup {
    group: Option<String>,
    #[serde(flatten)]
    usage: Usage,
}
#[derive(Serialize, JsonSchema)]
struct UsageAnswer {
    group_by: String,
    groups: Vec<UsageGroup>,
}
/// One version (route) of a published service.
#[derive(Serialize, JsonSchema)]
struct ServiceVersion {
    route: String,
    version: Option<String>,
    /// `published`, `deprecated` or `retired`.
    state: String,
    sunset_at: Option<String>,
    link: Option<String>,
    openapi: Option<String>,
}
#[derive(Serialize, JsonSchema)]
struct Service {
    service: String,
    team: Option<String>,
    description: String,
    /// `auto` or `manual`.
    approval: String,
    openapi: Option<String>,
    versions: Vec<ServiceVersion>,
}
#[derive(Serialize, JsonSchema)]
struct Catalog {
    services: Vec<Service>,
}

const STORE_ERRORS: &[(u16, &str)] = &[
    (403, "The caller's role or team does not allow it."),
    (
        503,
        "There is no management store (`no_store`) or it does not answer.",
    ),
];
const READ_ERRORS: &[(u16, &str)] = &[
    (403, "The caller's role or team does not allow it."),
    (404, "No such object."),
    (
        503,
        "There is no management store (`no_store`) or it does not answer.",
    ),
];
const WRITE_ERRORS: &[(u16, &str)] = &[
    (400, "The body is not valid (the message says why)."),
    (403, "The caller's role or team does not allow it."),
    (404, "No such object."),
    (
        409,
        "It conflicts with what exists (`conflict`), or it comes from the config file (`read_only`).",
    ),
    (
        503,
        "There is no management store (`no_store`) or it does not answer.",
    ),
];

const fn blocking() -> Run {
    Run::Blocking {
        unfinished: "The management operation did not finish.",
    }
}

const fn with_body() -> Run {
    Run::BlockingWithBody {
        limit: MAX_BODY,
        unfinished: "The management operation did not finish.",
    }
}

/// A management endpoint: every role may call it, the operation decides.
const fn endpoint(
    method: Method,
    path: &'static str,
    handler: fn(&Call) -> Response<ResponseBody>,
    run: Run,
    doc: Doc,
) -> Route {
    Route {
        method,
        path,
        auth: Auth::Tenant,
        handler,
        run,
        doc,
    }
}

const KEY_QUERY: &[Param] = &[
    Param {
        name: "consumer",
        description: "Only this consumer's keys.",
    },
    Param {
        name: "after",
        description: "The page after this key id (`next_after` of the previous page).",
    },
    Param {
        name: "limit",
        description: "Keys per page, 1 to 1000 (default 100).",
    },
];

const AUDIT_QUERY: &[Param] = &[
    Param {
        name: "kind",
        description: "Only this kind of object (team, consumer, key, token, subscription).",
    },
    Param {
        name: "object_id",
        description: "Only this object.",
    },
    Param {
        name: "actor",
        description: "Only changes by this token id (`bootstrap`: the token of admin.token_env).",
    },
    Param {
        name: "action",
        description: "Only this action, e.g. key.revoke.",
    },
    Param {
        name: "since",
        description: "From this time (RFC 3339 or ms since the epoch).",
    },
    Param {
        name: "until",
        description: "Until this time.",
    },
    Param {
        name: "limit",
        description: "At most this many entries, 1 to 1000 (default 100).",
    },
];

/// The management endpoints, in the admin API's one route table.
pub static ROUTES: &[Route] = &[
    endpoint(Method::GET, "/api/v1/teams", list_teams, blocking(), json_doc("Teams (a team admin sees its own).", (200, schema::<Teams>), STORE_ERRORS)),
    endpoint(Method::POST, "/api/v1/teams", create_team, with_body(), json_doc("Makes a team (admin): name, description, budget {usd, per}, metadata.", (201, schema::<Team>), WRITE_ERRORS)),
    endpoint(Method::GET, "/api/v1/teams/{id}", get_team, blocking(), json_doc("One team.", (200, schema::<Team>), READ_ERRORS)),
    endpoint(Method::PATCH, "/api/v1/teams/{id}", patch_team, with_body(), json_doc("Changes a team's description, budget or metadata (admin; JSON merge patch).", (200, schema::<Team>), WRITE_ERRORS)),
    endpoint(Method::DELETE, "/api/v1/teams/{id}", delete_team, blocking(), json_doc("Deletes a team without consumers (admin).", (200, schema::<Deleted>), WRITE_ERRORS)),
    endpoint(Method::GET, "/api/v1/consumers", list_consumers, blocking(), json_doc("Consumers, the config file's included (`source: config`).", (200, schema::<Consumers>), STORE_ERRORS)),
    endpoint(Method::POST, "/api/v1/consumers", create_consumer, with_body(), json_doc("Makes a consumer: name, team, description, metadata.", (201, schema::<Consumer>), WRITE_ERRORS)),
    endpoint(Method::GET, "/api/v1/consumers/{id}", get_consumer, blocking(), json_doc("One consumer.", (200, schema::<Consumer>), READ_ERRORS)),
    endpoint(Method::PATCH, "/api/v1/consumers/{id}", patch_consumer, with_body(), json_doc("Changes a consumer (JSON merge patch; moving it to another team: admin).", (200, schema::<Consumer>), WRITE_ERRORS)),
    endpoint(Method::DELETE, "/api/v1/consumers/{id}", delete_consumer, blocking(), json_doc("Deletes a consumer whose keys are all revoked.", (200, schema::<Deleted>), WRITE_ERRORS)),
    endpoint(Method::GET, "/api/v1/keys", list_keys, blocking(), Doc { query: KEY_QUERY, ..json_doc("Keys with their usage, a page at a time.", (200, schema::<Keys>), STORE_ERRORS) }),
    endpoint(Method::POST, "/api/v1/keys", create_key, with_body(), json_doc("Makes a key for a consumer; the answer's `key` is the secret, shown only here.", (201, schema::<NewKey>), WRITE_ERRORS)),
    endpoint(Method::GET, "/api/v1/keys/{id}", get_key, blocking(), json_doc("One key with its usage so far.", (200, schema::<KeyView>), READ_ERRORS)),
    endpoint(Method::PATCH, "/api/v1/keys/{id}", patch_key, with_body(), json_doc("Changes a key's name, expiry, allowed routes and models, limits, budget or metadata (JSON merge patch).", (200, schema::<Key>), WRITE_ERRORS)),
    endpoint(Method::DELETE, "/api/v1/keys/{id}", revoke_key, blocking(), json_doc("Revokes a key: 401 `key_revoked` everywhere within a second.", (200, schema::<Key>), WRITE_ERRORS)),
    endpoint(Method::POST, "/api/v1/keys/{id}/rotate", rotate_key, with_body(), json_doc("Makes a new key in place of this one (body: {\"grace\": \"1h\"}); the old one works until the grace period ends.", (201, schema::<NewKey>), WRITE_ERRORS)),
    endpoint(Method::GET, "/api/v1/tokens", list_tokens, blocking(), json_doc("Admin tokens (admin).", (200, schema::<Tokens>), STORE_ERRORS)),
    endpoint(Method::POST, "/api/v1/tokens", create_token, with_body(), json_doc("Makes an admin token (admin): name, role, team; the answer's `token` is the secret, shown only here.", (201, schema::<NewToken>), WRITE_ERRORS)),
    endpoint(Method::DELETE, "/api/v1/tokens/{id}", revoke_token, blocking(), json_doc("Revokes an admin token (admin).", (200, schema::<Token>), WRITE_ERRORS)),
    endpoint(Method::GET, "/api/v1/subscriptions", list_subscriptions, blocking(), Doc { query: &[Param { name: "consumer", description: "Only this consumer's subscriptions." }], ..json_doc("Subscriptions the caller may see.", (200, schema::<Subscriptions>), STORE_ERRORS) }),
    endpoint(Method::POST, "/api/v1/subscriptions", create_subscription, with_body(), json_doc("Asks for a consumer's access to a published service: approved at once with `approval: auto`, else pending.", (201, schema::<Subscription>), WRITE_ERRORS)),
    endpoint(Method::GET, "/api/v1/subscriptions/{id}", get_subscription, blocking(), json_doc("One subscription.", (200, schema::<Subscription>), READ_ERRORS)),
    endpoint(Method::DELETE, "/api/v1/subscriptions/{id}", cancel_subscription, blocking(), json_doc("Cancels a subscription (the consumer's team).", (200, schema::<Subscription>), WRITE_ERRORS)),
    endpoint(Method::POST, "/api/v1/subscriptions/{id}/approve", approve_subscription, with_body(), json_doc("Approves a subscription (the service's team; body: optional reason).", (200, schema::<Subscription>), WRITE_ERRORS)),
    endpoint(Method::POST, "/api/v1/subscriptions/{id}/reject", reject_subscription, with_body(), json_doc("Rejects a subscription, or takes back an approved one (the service's team).", (200, schema::<Subscription>), WRITE_ERRORS)),
    endpoint(Method::GET, "/api/v1/catalog", catalog, Run::Inline, json_doc("Published services, their versions and OpenAPI documents.", (200, schema::<Catalog>), &[])),
    endpoint(Method::GET, "/api/v1/audit", audit, blocking(), Doc { query: AUDIT_QUERY, ..json_doc("Every change made through the admin API, newest first (a team admin sees its team's).", (200, schema::<Audit>), STORE_ERRORS) }),
    endpoint(Method::GET, "/api/v1/usage", usage, blocking(), Doc { query: &[Param { name: "group_by", description: "key (default), consumer or team." }], ..json_doc("Requests, tokens and cost of stored keys, summed per key, consumer or team.", (200, schema::<UsageAnswer>), STORE_ERRORS) }),
];
