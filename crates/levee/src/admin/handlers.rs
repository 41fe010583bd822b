//! The admin endpoints' handlers, one function per row of the route table
//! ([`super::routes::ROUTES`]) apart from the call log's (in `calls`): probes,
//! metrics, the API description, the running config and its reload, SLOs, canaries and chaos
//! experiments.

use std::sync::atomic::Ordering;

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};

use super::routes::Call;
use super::{api, json, json_value, views};
use crate::body::ResponseBody;
use crate::chaos::experiments::{ExperimentError, ExperimentRequest};
use crate::edge::error_response;

/// `GET /healthz`.
pub(super) fn healthz(_: &Call) -> Response<ResponseBody> {
    json(StatusCode::OK, r#"{"status":"ok"}"#)
}

/// `GET /readyz`: 503 once the gateway is draining.
pub(super) fn readyz(call: &Call) -> Response<ResponseBody> {
    if call.state.draining.load(Ordering::SeqCst) {
        json(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"draining"}"#)
    } else {
        json(StatusCode::OK, r#"{"status":"ready"}"#)
    }
}

/// `GET /metrics`: every worker's shard summed, the gauges read from live state, the SLO
/// families.
pub(super) fn metrics(call: &Call) -> Response<ResponseBody> {
    let state = &call.state;
    let mut text = state.metrics.render_with(&state.gauges());
    state.slo.render_metrics(&mut text);
    if let Some(cluster) = &state.cluster {
        cluster.render_metrics(&mut text);
    }
    let mut response = Response::new(ResponseBody::full(text));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// `GET /openapi.json`.
pub(super) fn openapi(_: &Call) -> Response<ResponseBody> {
    json_value(StatusCode::OK, &api::openapi())
}

/// `GET /api/v1/whoami`: who the presented token is (what a dashboard shows controls for).
pub(super) fn whoami(call: &Call) -> Response<ResponseBody> {
    let caller = &call.caller;
    json_value(
        StatusCode::OK,
        &api::Whoami {
            id: caller.id.clone(),
            role: caller.role,
            team: caller.team.clone(),
        },
    )
}

/// `GET /api/v1/upstreams`.
pub(super) fn upstreams(call: &Call) -> Response<ResponseBody> {
    json_value(StatusCode::OK, &views::upstreams_view(&call.state))
}

/// `GET /api/v1/routes`.
pub(super) fn routes(call: &Call) -> Response<ResponseBody> {
    let gateway = call.state.gateway.load();
    let routes = gateway.config.shown.get("routes").cloned().unwrap_or_default();
    json_value(
        StatusCode::OK,
        &api::Routes {
            version: gateway.version,
            routes,
        },
    )
}

/// `GET /api/v1/config`.
pub(super) fn config(call: &Call) -> Response<ResponseBody> {
    let gateway = call.state.gateway.load();
    json_value(
        StatusCode::OK,
        &api::ActiveConfig {
            version: gateway.version,
            source: gateway.config.source.as_ref().map(|p| p.display().to_string()),
            config: (*gateway.config.shown).clone(),
        },
    )
}

/// `POST /api/v1/config/reload`: 200 `{"version": N}`, or 400 with every problem in
/// `errors` (and the usual error object) while the running config stays.
pub(super) fn reload(call: &Call) -> Response<ResponseBody> {
    match crate::reload::reload(&call.state) {
        Ok(version) => json_value(StatusCode::OK, &api::Reloaded { version }),
        Err(error) => {
            let errors = error.messages();
            let message = format!(
                "The config was not reloaded ({} problem(s)); the running config is kept.",
                errors.len()
            );
            crate::edge::error_response_with(
                StatusCode::BAD_REQUEST,
                "invalid_config",
                &message,
                &call.request_id,
                ("errors", serde_json::json!(errors)),
            )
        }
    }
}

/// `GET /api/v1/slos`.
pub(super) fn slos(call: &Call) -> Response<ResponseBody> {
    json_value(
        StatusCode::OK,
        &views::slos_view(&call.state, views::History::With),
    )
}

/// `GET /api/v1/cluster`.
pub(super) fn cluster(call: &Call) -> Response<ResponseBody> {
    let view = match &call.state.cluster {
        Some(cluster) => cluster.view(),
        None => crate::cluster::FleetView {
            replicas_alive: 1,
            ..Default::default()
        },
    };
    json_value(StatusCode::OK, &view)
}

/// `GET /api/v1/canaries`.
pub(super) fn canaries(call: &Call) -> Response<ResponseBody> {
    json_value(StatusCode::OK, &views::canaries_view(&call.state))
}

/// `GET /api/v1/experiments`.
pub(super) fn experiments(call: &Call) -> Response<ResponseBody> {
    json_value(
        StatusCode::OK,
        &api::Experiments {
            experiments: call.state.experiments.views(),
        },
    )
}

/// `POST /api/v1/experiments`: starts one (201), unless the gateway is stopping.
pub(super) fn start_experiment(call: &Call) -> Response<ResponseBody> {
    let state = &call.state;
    if state.draining.load(Ordering::SeqCst) {
        // The SLO thread that would end it stops with the gateway.
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "The gateway is stopping: no experiment can start.",
            &call.request_id,
        );
    }
    let parsed: ExperimentRequest = match serde_json::from_slice(&call.body) {
        Ok(parsed) => parsed,
        Err(error) => {
            let error = ExperimentError::Invalid(format!("invalid experiment: {error}"));
            return experiment_error(&error, &call.request_id);
        }
    };
    let gateway = state.gateway.load();
    let routes: Vec<&str> = gateway.config.routes.iter().map(|r| &*r.name).collect();
    match state.experiments.start(parsed, &routes, &state.slo) {
        Ok(view) => json_value(StatusCode::CREATED, &view),
        Err(error) => experiment_error(&error, &call.request_id),
    }
}

/// `GET /api/v1/experiments/{id}`.
pub(super) fn experiment(call: &Call) -> Response<ResponseBody> {
    match call.state.experiments.view(&call.id) {
        Some(view) => json_value(StatusCode::OK, &view),
        None => error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("No experiment with id `{}`.", call.id),
            &call.request_id,
        ),
    }
}

/// `DELETE /api/v1/experiments/{id}`: stops it if it runs, and returns it.
pub(super) fn stop_experiment(call: &Call) -> Response<ResponseBody> {
    let state = &call.state;
    match state.experiments.stop(&call.id, &state.slo) {
        Ok(view) => json_value(StatusCode::OK, &view),
        Err(error) => experiment_error(&error, &call.request_id),
    }
}

/// An experiment refused: 400 invalid, 409 conflict, 404 unknown id.
fn experiment_error(error: &ExperimentError, request_id: &HeaderValue) -> Response<ResponseBody> {
    let (status, code) = match error {
        ExperimentError::Invalid(_) => (StatusCode::BAD_REQUEST, "bad_request"),
        ExperimentError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
        ExperimentError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
    };
    error_response(status, code, &error.to_string(), request_id)
}
