//! API lifecycle on the request's way (`lifecycle` on a route): a retired route answers
//! 410 `gone` before auth, with its `Link`; a deprecated one marks every answer it gives
//! once matched (the upstream's and the gateway's own errors alike) with `Deprecation`
//! (RFC 9745), `Sunset` (RFC 8594) and `Link` (`rel="deprecation"`), and counts its calls
//! per consumer in `levee_deprecated_requests_total`. The header values are formatted once,
//! at load ([`LifecycleAnswer`]).

use http::header::{HeaderName, LINK};
use http::{HeaderMap, Response};

use super::answer;
use crate::body::ResponseBody;
use crate::config::spec::{LifecycleAnswer, LifecycleSpec, LifecycleState, RouteSpec};
use crate::edge::{Rejection, Shape};
use crate::gateway::WorkerContext;
use crate::record::RequestRecord;

/// `Deprecation` (RFC 9745).
pub static DEPRECATION: HeaderName = HeaderName::from_static("deprecation");
/// `Sunset` (RFC 8594).
pub static SUNSET: HeaderName = HeaderName::from_static("sunset");

/// The route's lifecycle when it is in `state`.
fn in_state(route: &RouteSpec, state: LifecycleState) -> Option<&LifecycleSpec> {
    route.lifecycle.as_ref().filter(|l| l.state == state)
}

/// The route's lifecycle when it is retired.
pub(super) fn retired(route: &RouteSpec) -> Option<&LifecycleSpec> {
    in_state(route, LifecycleState::Retired)
}

/// A retired route's 410 `gone`, with its `Link` when it has one.
pub(super) fn gone(lifecycle: &LifecycleSpec, shape: Shape, record: RequestRecord) -> Response<ResponseBody> {
    let mut response = answer(Rejection::Gone(lifecycle.answer.gone.clone()), shape, record);
    if let Some(link) = &lifecycle.answer.link {
        response.headers_mut().insert(LINK, link.clone());
    }
    response
}

/// Marks every answer of a deprecated route; any other route's answer passes unchanged.
pub(super) fn mark_deprecated(
    route: &RouteSpec,
    mut response: Response<ResponseBody>,
) -> Response<ResponseBody> {
    if let Some(lifecycle) = in_state(route, LifecycleState::Deprecated) {
        insert_headers(&lifecycle.answer, response.headers_mut());
    }
    response
}

/// `Deprecation`, `Sunset` and `Link`, those of them that are set. They replace any the
/// upstream sent: the route's lifecycle is the gateway's to state.
fn insert_headers(answer: &LifecycleAnswer, headers: &mut HeaderMap) {
    for (name, value) in [
        (&DEPRECATION, &answer.deprecation),
        (&SUNSET, &answer.sunset),
        (&LINK, &answer.link),
    ] {
        if let Some(value) = value {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// Counts a call to a deprecated route, once auth has named its consumer.
pub(super) fn count_deprecated(worker: &WorkerContext, route: &RouteSpec, record: &RequestRecord) {
    let (Some(_), Some(name)) = (in_state(route, LifecycleState::Deprecated), &record.route) else {
        return;
    };
    let cap = &worker.recorder.access_log.metrics().deprecated_consumers;
    worker
        .recorder
        .metrics
        .lock()
        .record_deprecated(name, record.consumer.as_ref(), cap);
}
