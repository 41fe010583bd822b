//! The admin API's one route table: every endpoint's method, path pattern, handler, where the
//! handler runs, whether it needs the admin token, and its OpenAPI description.
//!
//! Dispatch, the `405` answers with their `Allow` header and the paths of the OpenAPI document
//! are all read from [`ROUTES`], so none of them can disagree with another.

use std::sync::Arc;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Method, Response};

use super::api::{self, schema, Doc, Param, JSON};
use super::handlers;
use crate::body::ResponseBody;
use crate::state::SharedState;

/// Who may call a route. Every route but the open ones needs `Authorization: Bearer
/// <token>` when `admin.token_env` is set: that token (the bootstrap admin) or an admin
/// token made through the API, whose role then decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// Anyone: probes, scrapes and the API description.
    Open,
    /// Reads the gateway's state: `admin` and `viewer` (403 for a `team_admin`).
    Viewer,
    /// Changes the gateway's state: `admin` only.
    Admin,
    /// The management objects: every role, the operation checks what the role and team
    /// allow.
    Tenant,
}

/// Where a handler runs.
#[derive(Debug, Clone, Copy)]
pub enum Run {
    /// On the admin event loop: it only reads memory.
    Inline,
    /// On the blocking pool: it reads SQLite or the config file, for seconds at worst, while
    /// `/healthz`, `/readyz` and `/metrics` (liveness probes, scrapes) keep answering.
    /// `unfinished` is the message of the 500 when it panics.
    Blocking { unfinished: &'static str },
    /// On the admin event loop, after reading the request body (at most `limit` bytes).
    WithBody { limit: usize },
    /// On the blocking pool, after reading the request body (it writes to a store).
    BlockingWithBody { limit: usize, unfinished: &'static str },
}

/// One request to a handler.
pub struct Call {
    pub state: Arc<SharedState>,
    pub request_id: HeaderValue,
    /// The query string (empty without one).
    pub query: String,
    /// The path's `{id}` segment, when the route's pattern has one (else empty).
    pub id: String,
    /// The request body for routes that read one (else empty).
    pub body: Bytes,
    /// Who is calling (the role of the token presented).
    pub caller: crate::management::ops::Caller,
}

/// One admin endpoint: a method on a path pattern.
pub struct Route {
    /// `GET` routes also answer `HEAD`.
    pub method: Method,
    /// The path; a `{name}` segment matches any one non-empty segment.
    pub path: &'static str,
    pub auth: Auth,
    pub handler: fn(&Call) -> Response<ResponseBody>,
    pub run: Run,
    pub doc: Doc,
}

impl Route {
    /// Whether the route answers `method` (`HEAD` where it answers `GET`).
    pub fn answers(&self, method: &Method) -> bool {
        self.method == method || (method == Method::HEAD && self.method == Method::GET)
    }
}

/// Matches `path` against `pattern` segment by segment: `Some` when it matches, with the
/// segment a `{name}` stands for, if the pattern has one.
pub fn match_path<'p>(pattern: &str, path: &'p str) -> Option<Option<&'p str>> {
    let (mut wanted, mut given) = (pattern.split('/'), path.split('/'));
    let mut parameter = None;
    loop {
        match (wanted.next(), given.next()) {
            (None, None) => return Some(parameter),
            (Some(w), Some(g)) if w.starts_with('{') && w.ends_with('}') && !g.is_empty() => {
                parameter = Some(g);
            }
            (Some(w), Some(g)) if w == g => {}
            _ => return None,
        }
    }
}

/// Every admin endpoint: the gateway's own, the management plane's, then the dashboard's.
pub fn all() -> impl Iterator<Item = &'static Route> {
    ROUTES
        .iter()
        .chain(super::manage::ROUTES)
        .chain(super::dashboard::ROUTES)
}

/// The `Allow` header of a path served by `routes`: their methods in table order, `HEAD`
/// after `GET`.
pub fn allow<'r>(routes: impl IntoIterator<Item = &'r Route>) -> String {
    let mut methods: Vec<&str> = Vec::new();
    for route in routes {
        methods.push(route.method.as_str());
        if route.method == Method::GET {
            methods.push(Method::HEAD.as_str());
        }
    }
    methods.join(", ")
}

/// The call log's filters.
const CALL_QUERY: &[Param] = &[
    Param {
        name: "route",
        description: "Only this route.",
    },
    Param {
        name: "consumer",
        description: "Only this consumer.",
    },
    Param {
        name: "status",
        description: "Only this status code.",
    },
    Param {
        name: "since",
        description: "From this time (RFC 3339 or milliseconds since the epoch).",
    },
    Param {
        name: "until",
        description: "Before this time (RFC 3339 or milliseconds since the epoch).",
    },
    Param {
        name: "limit",
        description: "At most this many calls, from 1 to 1000 (default 100).",
    },
];

/// The analytics parameters.
const ANALYTICS_QUERY: &[Param] = &[
    Param {
        name: "since",
        description: "From this time (default: one hour ago).",
    },
    Param {
        name: "until",
        description: "Before this time (default: now).",
    },
    Param {
        name: "bucket",
        description: "`1m` (default), `1h` or `1d`.",
    },
    Param {
        name: "group_by",
        description: "`route` (default), `consumer`, `upstream`, `status` or `model` (the provider model of LLM calls).",
    },
    Param {
        name: "route",
        description: "Only this route's calls: with `group_by=consumer`, who still calls a deprecated route.",
    },
];

/// Answers of the call-log endpoints besides 200.
const CALL_LOG_ERRORS: &[(u16, &str)] = &[
    (400, "A query parameter is invalid (the message names it)."),
    (
        404,
        "There is no call log (no `data_dir` and no `cluster.postgres`).",
    ),
    (
        503,
        "The call log cannot be read (in cluster mode: PostgreSQL is not answering).",
    ),
];

/// Largest experiment request body read.
const MAX_EXPERIMENT_BODY: usize = 64 * 1024;

/// A documented route with a JSON answer, no query parameters and the given other answers.
pub(super) const fn json_doc(
    summary: &'static str,
    ok: (u16, fn(&mut schemars::SchemaGenerator) -> schemars::Schema),
    errors: &'static [(u16, &'static str)],
) -> Doc {
    Doc {
        summary,
        ok,
        content_type: JSON,
        errors,
        query: &[],
    }
}

/// Every endpoint of the admin listener.
pub static ROUTES: &[Route] = &[
    Route {
        method: Method::GET,
        path: "/healthz",
        auth: Auth::Open,
        handler: handlers::healthz,
        run: Run::Inline,
        doc: json_doc(
            "Liveness: 200 while the process serves.",
            (200, schema::<api::Status>),
            &[],
        ),
    },
    Route {
        method: Method::GET,
        path: "/readyz",
        auth: Auth::Open,
        handler: handlers::readyz,
        run: Run::Inline,
        doc: json_doc(
            "Readiness: 200 when a config is active and the gateway is not draining, else 503.",
            (200, schema::<api::Status>),
            &[(503, "Draining (shutting down or handing over to a successor).")],
        ),
    },
    Route {
        method: Method::GET,
        path: "/metrics",
        auth: Auth::Open,
        handler: handlers::metrics,
        run: Run::Inline,
        doc: Doc {
            summary: "Prometheus metrics.",
            ok: (200, schema::<api::MetricsText>),
            content_type: "text/plain; version=0.0.4",
            errors: &[],
            query: &[],
        },
    },
    Route {
        method: Method::GET,
        path: "/openapi.json",
        auth: Auth::Open,
        handler: handlers::openapi,
        run: Run::Inline,
        doc: json_doc("This document.", (200, schema::<api::OpenApiDocument>), &[]),
    },
    Route {
        method: Method::GET,
        path: "/api/v1/whoami",
        auth: Auth::Tenant,
        handler: handlers::whoami,
        run: Run::Inline,
        doc: json_doc(
            "The caller: its token's id, role and team.",
            (200, schema::<api::Whoami>),
            &[],
        ),
    },
    Route {
        method: Method::GET,
        path: "/api/v1/overview",
        auth: Auth::Viewer,
        handler: super::overview::overview,
        run: Run::Inline,
        doc: json_doc(
            "Totals and per-route requests, errors, requests/s and p50/p99 latency, a 15-minute series at a 5 s step, SLO budgets, alerts firing, canaries and cluster nodes.",
            (200, schema::<super::overview::Overview>),
            &[],
        ),
    },
    Route {
        method: Method::GET,
        path: "/api/v1/llm",
        auth: Auth::Viewer,
        handler: super::llm::llm,
        run: Run::Inline,
        doc: json_doc(
            "The AI gateway since this process started: tokens, cost and provider fallbacks per provider model, the answer cache's hit rate, and every LLM budget with its spend and what is left.",
            (200, schema::<super::llm::LlmOverview>),
            &[],
        ),
    },
    Route {
        method: Method::GET,
        path: "/api/v1/upstreams",
        auth: Auth::Viewer,
        handler: handlers::upstreams,
        run: Run::Inline,
        doc: json_doc(
            "Every target's health, ejection, circuit state, load and latency.",
            (200, schema::<api::Upstreams>),
            &[],
        ),
    },
    Route {
        method: Method::GET,
        path: "/api/v1/routes",
        auth: Auth::Viewer,
        handler: handlers::routes,
        run: Run::Inline,
        doc: json_doc(
            "The routes of the running config, in match order.",
            (200, schema::<api::Routes>),
            &[],
        ),
    },
    Route {
        method: Method::GET,
        path: "/api/v1/config",
        auth: Auth::Viewer,
        handler: handlers::config,
        run: Run::Inline,
        doc: json_doc(
            "The running config with its version, secrets redacted.",
            (200, schema::<api::ActiveConfig>),
            &[],
        ),
    },
    Route {
        method: Method::POST,
        path: "/api/v1/config/reload",
        auth: Auth::Admin,
        handler: handlers::reload,
        // A reload reads and compiles the config.
        run: Run::Blocking {
            unfinished: "The reload did not finish.",
        },
        doc: json_doc(
            "Reloads the config file; any problem keeps the running config.",
            (200, schema::<api::Reloaded>),
            &[(
                400,
                "Refused: the `errors` list says why; the running config is kept.",
            )],
        ),
    },
    Route {
        method: Method::GET,
        path: "/api/v1/calls",
        auth: Auth::Viewer,
        handler: super::calls::calls,
        run: Run::Blocking {
            unfinished: "The call log query did not finish.",
        },
        doc: Doc {
            summary: "The call log, newest first.",
            ok: (200, schema::<api::Calls>),
            content_type: JSON,
            errors: CALL_LOG_ERRORS,
            query: CALL_QUERY,
        },
    },
    Route {
        method: Method::GET,
        path: "/api/v1/analytics",
        auth: Auth::Viewer,
        handler: super::calls::analytics,
        run: Run::Blocking {
            unfinished: "The call log query did not finish.",
        },
        doc: Doc {
            summary: "Aggregates over the call log per time bucket and group.",
            ok: (200, schema::<api::Analytics>),
            content_type: JSON,
            errors: CALL_LOG_ERRORS,
            query: ANALYTICS_QUERY,
        },
    },
    Route {
        method: Method::GET,
        path: "/api/v1/slos",
        auth: Auth::Viewer,
        handler: handlers::slos,
        run: Run::Inline,
        doc: json_doc(
            "Every SLO: objective, SLI now, error budget remaining, burn rates, alerts firing.",
            (200, schema::<api::Slos>),
            &[],
        ),
    },
    Route {
        method: Method::GET,
        path: "/api/v1/cluster",
        auth: Auth::Viewer,
        handler: handlers::cluster,
        run: Run::Inline,
        doc: json_doc(
            "The fleet as this replica sees it: every node's heartbeat, version, config hash and stores, the alert leader, and warnings.",
            (200, schema::<crate::cluster::FleetView>),
            &[],
        ),
    },
    Route {
        method: Method::GET,
        path: "/api/v1/canaries",
        auth: Auth::Viewer,
        handler: handlers::canaries,
        run: Run::Inline,
        doc: json_doc(
            "Every route's canary: its share, whether it was rolled back and why, its burn rate.",
            (200, schema::<api::Canaries>),
            &[],
        ),
    },
    Route {
        method: Method::GET,
        path: "/api/v1/experiments",
        auth: Auth::Viewer,
        handler: handlers::experiments,
        run: Run::Inline,
        doc: json_doc(
            "Chaos experiments of this process, newest first, with their reports.",
            (200, schema::<api::Experiments>),
            &[],
        ),
    },
    Route {
        method: Method::POST,
        path: "/api/v1/experiments",
        auth: Auth::Admin,
        handler: handlers::start_experiment,
        run: Run::WithBody {
            limit: MAX_EXPERIMENT_BODY,
        },
        doc: json_doc(
            "Starts a chaos experiment (body: name, route, fault, duration, abort_if).",
            (201, schema::<crate::chaos::experiments::ExperimentView>),
            &[
                (400, "The experiment is invalid (the message says why)."),
                (409, "An experiment already runs on the route, or too many run."),
            ],
        ),
    },
    Route {
        method: Method::GET,
        path: "/api/v1/experiments/{id}",
        auth: Auth::Viewer,
        handler: handlers::experiment,
        run: Run::Inline,
        doc: json_doc(
            "One experiment: state (running, completed, aborted) and report.",
            (200, schema::<crate::chaos::experiments::ExperimentView>),
            &[(404, "No experiment has this id.")],
        ),
    },
    Route {
        method: Method::DELETE,
        path: "/api/v1/experiments/{id}",
        auth: Auth::Admin,
        handler: handlers::stop_experiment,
        run: Run::Inline,
        doc: json_doc(
            "Stops a running experiment (its state becomes aborted) and returns it.",
            (200, schema::<crate::chaos::experiments::ExperimentView>),
            &[(404, "No experiment has this id.")],
        ),
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_segment_by_segment() {
        assert_eq!(match_path("/healthz", "/healthz"), Some(None));
        assert_eq!(match_path("/healthz", "/healthz/"), None);
        assert_eq!(
            match_path("/api/v1/experiments/{id}", "/api/v1/experiments/e1"),
            Some(Some("e1"))
        );
        assert_eq!(
            match_path("/api/v1/experiments/{id}", "/api/v1/experiments/"),
            None
        );
        assert_eq!(
            match_path("/api/v1/experiments/{id}", "/api/v1/experiments/a/b"),
            None
        );
        assert_eq!(match_path("/api/v1/experiments", "/api/v1/experiments/e1"), None);
    }

    #[test]
    fn the_table_has_one_row_per_method_and_path_and_guards_all_of_api() {
        for (i, route) in all().enumerate() {
            let twins = all()
                .skip(i + 1)
                .filter(|r| r.path == route.path && r.method == route.method);
            assert_eq!(twins.count(), 0, "{} {} twice", route.method, route.path);
            let guarded = route.path.starts_with("/api/");
            assert_eq!(route.auth != Auth::Open, guarded, "{}", route.path);
        }
    }

    #[test]
    fn allow_lists_head_after_get() {
        let on = |path: &str| allow(all().filter(|r| r.path == path));
        assert_eq!(on("/api/v1/experiments"), "GET, HEAD, POST");
        assert_eq!(on("/api/v1/experiments/{id}"), "GET, HEAD, DELETE");
        assert_eq!(on("/api/v1/config/reload"), "POST");
        assert_eq!(on("/healthz"), "GET, HEAD");
    }
}
