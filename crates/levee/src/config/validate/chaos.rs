//! Fault injection: a route's `fault`, and the check shared with chaos experiments.

use super::Problems;
use crate::config::file::{FaultAbortFile, FaultDelayFile, RouteFile};
use crate::config::spec::*;

/// Checks a fault as written (a route's `fault`, or an experiment's): each problem as the
/// key under `fault` it concerns and a message.
pub fn check_fault(
    abort: Option<&FaultAbortFile>,
    delay: Option<&FaultDelayFile>,
    allow_header: bool,
) -> Result<FaultSpec, Vec<(&'static str, &'static str)>> {
    let mut problems = Vec::new();
    let percent_ok = |p: f64| (0.0..=100.0).contains(&p);
    let abort = abort.and_then(|a| {
        if !percent_ok(a.percent) {
            problems.push(("abort.percent", "percent must be from 0 to 100"));
        }
        match http::StatusCode::from_u16(a.status) {
            Ok(status) if (400..=599).contains(&a.status) => Some((a.percent / 100.0, status)),
            _ => {
                problems.push(("abort.status", "status must be from 400 to 599"));
                None
            }
        }
    });
    let delay = delay.map(|d| {
        if !percent_ok(d.percent) {
            problems.push(("delay.percent", "percent must be from 0 to 100"));
        }
        if d.duration.0 > std::time::Duration::from_secs(3600) {
            problems.push(("delay.duration", "duration must be at most 1h"));
        }
        (d.percent / 100.0, d.duration.0)
    });
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(FaultSpec {
        abort,
        delay,
        allow_header,
    })
}

/// A route's `fault`, each problem reported under it.
pub(super) fn check_route_fault(route: &RouteFile, path: &str, p: &mut Problems) -> Option<FaultSpec> {
    route.fault.as_ref().and_then(|f| {
        check_fault(f.abort.as_ref(), f.delay.as_ref(), f.allow_header)
            .map_err(|problems| {
                for (key, message) in problems {
                    p.at(&format!("{path}.fault.{key}"), message);
                }
            })
            .ok()
    })
}
