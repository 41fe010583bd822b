//! The admin API's answers as types, and its OpenAPI 3 document generated from them.
//!
//! Every endpoint is one row of the route table ([`super::routes::ROUTES`]): method, path,
//! handler and a [`Doc`] with what it answers, the schema taken from the very type the handler
//! serialises. The OpenAPI document is built from that table at request time, so it cannot
//! drift from the handlers, and a test checks that every path in it is served.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde::Serialize;
use serde_json::{json, Value};

use super::routes::{Auth, Route};
use crate::config::file::{ConfigFile, RouteFile};
use crate::observability::call_log::{Aggregate, CallRecord};

/// `/healthz` and `/readyz`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Status {
    /// `ok`, `ready` or `draining`.
    pub status: &'static str,
}

/// `GET /api/v1/whoami`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Whoami {
    /// The token's id: `bootstrap` for the token of `admin.token_env`, `anonymous` when the
    /// admin API needs no token.
    pub id: String,
    pub role: crate::management::model::Role,
    /// The team of a `team_admin` token.
    pub team: Option<String>,
}

/// `GET /api/v1/upstreams`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Upstreams {
    pub upstreams: Vec<UpstreamView>,
}

/// One upstream, as the running config has it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct UpstreamView {
    pub name: String,
    /// Requests in flight to it across all workers (what its bulkhead counts).
    pub inflight: usize,
    pub max_concurrent: usize,
    pub targets: Vec<TargetView>,
}

/// One target's state.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TargetView {
    /// As written in the config.
    pub addr: String,
    pub weight: u32,
    /// Takes traffic: passes its health checks and is not ejected.
    pub healthy: bool,
    pub health_check_passing: bool,
    /// Ejected by outlier detection.
    pub ejected: bool,
    /// `closed`, `half_open` or `open`: the worst state any worker sees.
    pub circuit: &'static str,
    /// Requests in flight to it, summed over workers.
    pub inflight: usize,
    /// Peak-EWMA latency estimate in milliseconds (the highest over workers).
    pub ewma_ms: f64,
}

/// `GET /api/v1/calls`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Calls {
    /// Newest first.
    pub calls: Vec<CallRecord>,
}

/// `GET /api/v1/analytics`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Analytics {
    pub since_ms: i64,
    pub until_ms: i64,
    pub bucket_ms: i64,
    /// True when the scan stopped at its row cap (the figures cover the oldest rows only).
    pub truncated: bool,
    pub series: Vec<Aggregate>,
}

/// `GET /api/v1/routes`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Routes {
    /// The config version these routes belong to.
    pub version: u64,
    /// In match order, as configured (header rewrite values of credential headers redacted).
    #[schemars(with = "Vec<RouteFile>")]
    pub routes: Value,
}

/// `GET /api/v1/config`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ActiveConfig {
    /// 1 for the config the process started with, one more per applied reload.
    pub version: u64,
    /// The file it was read from.
    pub source: Option<String>,
    /// The config as read, with secrets redacted: API key digests and the values of
    /// credential headers in rewrites (secrets themselves are only ever named, `*_env`).
    #[schemars(with = "ConfigFile")]
    pub config: Value,
}

/// `POST /api/v1/config/reload`, applied.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Reloaded {
    pub version: u64,
}

/// `POST /api/v1/config/reload`, refused (the running config is kept).
#[derive(Debug, Serialize, JsonSchema)]
pub struct ReloadRefused {
    pub error: ErrorDetail,
    /// Every problem, `FILE:LINE:COL: message`.
    pub errors: Vec<String>,
}

/// The error shape shared with the data plane.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ErrorDetail {
    /// A stable snake_case code.
    pub code: String,
    pub message: String,
    pub request_id: String,
    /// OpenAI's error class (`invalid_request_error`, `authentication_error`, ...).
    #[serde(rename = "type")]
    pub kind: String,
}

/// The text of `GET /metrics` (documented as a string).
#[derive(JsonSchema)]
#[schemars(description = "Prometheus text exposition format 0.0.4")]
pub struct MetricsText(pub String);

/// `GET /openapi.json` (an OpenAPI 3.0 document, described as a JSON object).
#[derive(JsonSchema)]
pub struct OpenApiDocument(pub serde_json::Map<String, Value>);

/// A query parameter of an endpoint.
pub struct Param {
    pub name: &'static str,
    pub description: &'static str,
}

/// How an admin endpoint is described in the OpenAPI document (a column of the route table,
/// [`super::routes::ROUTES`]).
pub struct Doc {
    pub summary: &'static str,
    /// Status and schema of the successful answer.
    pub ok: (u16, fn(&mut SchemaGenerator) -> schemars::Schema),
    pub content_type: &'static str,
    /// Other answers, besides 401 (every route that needs the admin token) and 405.
    pub errors: &'static [(u16, &'static str)],
    pub query: &'static [Param],
}

/// The schema of `T`, as a reference into the document's components.
pub(super) fn schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> schemars::Schema {
    generator.subschema_for::<T>()
}

pub(super) const JSON: &str = "application/json";

/// `GET /api/v1/slos`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Slos {
    pub slos: Vec<SloView>,
}

/// One SLO as of the last evaluation (once a second).
#[derive(Debug, Serialize, JsonSchema)]
pub struct SloView {
    pub name: String,
    pub route: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    /// Only requests sent to this upstream count (the SLO judging a route's canary).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// `availability` or `latency_below <duration>`.
    pub sli: String,
    /// Percent of good events wanted (`99.9`).
    pub objective: f64,
    /// The compliance window (`30d`).
    pub window: String,
    /// Percent of good events over the window so far; absent without events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sli_now: Option<f64>,
    /// Events over the window.
    pub events: EventsView,
    pub error_budget: BudgetView,
    /// Per trailing window, shortest first.
    pub burn_rates: Vec<BurnRateView>,
    /// Burn-rate alerts firing now (`page`, `ticket`).
    pub alerts_firing: Vec<AlertView>,
    /// The runbook its burn-rate alerts name (a path in the Levee repository).
    pub runbook: &'static str,
    /// The burn-down: the share of the budget left at the end of each step of the current
    /// window (one per minute up to a 2-hour window, at most 121 points), oldest first; the
    /// last is `error_budget.remaining`.
    pub budget_history: Vec<BudgetPointView>,
    /// Burn-rate alerts fired since this process started, oldest first (the last 32).
    pub alert_history: Vec<AlertRecordView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evaluated_at: Option<String>,
    /// Cluster mode with Redis only: `fleet` when these numbers are the fleet's, `replica`
    /// when they are this replica's own (Redis did not answer, or the fleet's are still
    /// being read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counts: Option<&'static str>,
}

#[derive(Debug, Default, Serialize, JsonSchema)]
pub struct EventsView {
    pub total: u64,
    pub good: u64,
    pub bad: u64,
    /// Of `total`, requests that carried an injected fault (chaos).
    pub injected: u64,
    /// Of `bad`, requests that carried an injected fault.
    pub injected_bad: u64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct BudgetView {
    /// Share left: 1 untouched, 0 spent, below 0 overspent.
    pub remaining: f64,
    /// Bad events still allowed given the window's events so far.
    pub remaining_events: f64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct BurnRateView {
    /// `5m`, `30m`, `1h`, `2h`, `6h`, `1d` or `3d`.
    pub window: &'static str,
    pub burn_rate: f64,
    pub total: u64,
    pub bad: u64,
}

/// One point of an SLO's burn-down.
#[derive(Debug, Serialize, JsonSchema)]
pub struct BudgetPointView {
    /// The end of the step, in Unix milliseconds.
    pub at_ms: u64,
    /// Share of the budget left then (1 untouched, 0 spent, below 0 overspent).
    pub remaining: f64,
}

/// A burn-rate alert that fired.
#[derive(Debug, Serialize, JsonSchema)]
pub struct AlertRecordView {
    /// `page` or `ticket`.
    pub severity: &'static str,
    /// When it started firing (RFC 3339).
    pub started_at: String,
    /// When it resolved (RFC 3339); absent while it fires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct AlertView {
    /// `page` or `ticket`.
    pub severity: &'static str,
    /// When it started firing (RFC 3339).
    pub since: String,
}

/// `GET /api/v1/canaries`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Canaries {
    pub canaries: Vec<CanaryView>,
}

/// One route's canary.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CanaryView {
    pub route: String,
    /// The canary's upstream.
    pub upstream: String,
    /// Share of the route's requests it gets while active.
    pub percent: f64,
    /// `active`, `rolled_back`, or (cluster mode) `waiting`: not checked against the fleet's
    /// rollback decisions yet, so it takes no requests.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rolled_back_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The SLO counting the canary's requests (`<slo>-canary`), when it has `rollback_if`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slo: Option<String>,
    /// That SLO's burn rate over the rollback window, and its events there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burn_rate: Option<f64>,
    pub requests: u64,
    pub bad: u64,
}

/// `GET /api/v1/experiments`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Experiments {
    /// Newest first.
    pub experiments: Vec<crate::chaos::experiments::ExperimentView>,
}

/// The OpenAPI 3.0 document of the admin API.
pub fn openapi() -> Value {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let error = schema::<ErrorBody>(&mut generator).to_value();
    let refused = schema::<ReloadRefused>(&mut generator).to_value();
    let mut paths = serde_json::Map::new();
    for route in super::routes::all() {
        let doc = &route.doc;
        let guarded = route.auth != Auth::Open;
        let (status, ok_schema) = doc.ok;
        let mut responses = serde_json::Map::new();
        responses.insert(
            status.to_string(),
            json!({
                "description": "OK",
                "content": { doc.content_type: { "schema": ok_schema(&mut generator).to_value() } },
            }),
        );
        for (code, description) in doc.errors {
            let body = if route.path.ends_with("/reload") && *code == 400 {
                refused.clone()
            } else {
                error.clone()
            };
            responses.insert(
                code.to_string(),
                json!({ "description": description, "content": { JSON: { "schema": body } } }),
            );
        }
        if guarded {
            responses.insert(
                "401".into(),
                json!({
                    "description": "An admin token is required (`admin.token_env`, or one made with POST /api/v1/tokens).",
                    "content": { JSON: { "schema": error.clone() } },
                }),
            );
        }
        if matches!(route.auth, Auth::Viewer | Auth::Admin) {
            let who = if route.auth == Auth::Admin {
                "an admin"
            } else {
                "an admin or a viewer"
            };
            responses.insert(
                "403".into(),
                json!({
                    "description": format!("Only {who} token may call this."),
                    "content": { JSON: { "schema": error.clone() } },
                }),
            );
        }
        let mut parameters: Vec<Value> = doc
            .query
            .iter()
            .map(|p| json!({ "name": p.name, "in": "query", "required": false, "description": p.description, "schema": { "type": "string" } }))
            .collect();
        if route.path.contains("{id}") {
            parameters.push(json!({ "name": "id", "in": "path", "required": true, "description": "The object's id (a team's or consumer's name; under /assets, the file's hashed name).", "schema": { "type": "string" } }));
        }
        let mut operation = serde_json::Map::new();
        operation.insert("summary".into(), doc.summary.into());
        operation.insert("operationId".into(), operation_id(route).into());
        operation.insert("responses".into(), responses.into());
        if !parameters.is_empty() {
            operation.insert("parameters".into(), parameters.into());
        }
        if guarded {
            operation.insert("security".into(), json!([{ "adminToken": [] }]));
        }
        if let Some(item) = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| json!({}))
            .as_object_mut()
        {
            item.insert(route.method.as_str().to_ascii_lowercase(), operation.into());
        }
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Levee admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Health, readiness, metrics, upstream state, routes, the running config and its reload, and the call log.",
        },
        "paths": paths,
        "components": {
            "schemas": generator.take_definitions(true),
            "securitySchemes": {
                "adminToken": { "type": "http", "scheme": "bearer", "description": "The token named by `admin.token_env`; without one configured, no token is needed." },
            },
        },
    })
}

fn operation_id(route: &Route) -> String {
    let words: Vec<&str> = route
        .path
        .split(['/', '.'])
        .filter(|w| !w.is_empty() && *w != "api" && *w != "v1")
        .map(|w| w.trim_matches(['{', '}']))
        .collect();
    format!(
        "{}_{}",
        route.method.as_str().to_ascii_lowercase(),
        words.join("_")
    )
}
