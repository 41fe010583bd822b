//! Fault injection (chaos testing): a route can abort or delay a share of its requests, or
//! the ones that ask for it with `x-levee-fault` when the route allows the header.
//!
//! Injected faults happen after auth and the rate limit and before anything reaches an
//! upstream, so they test what clients and the upstream's callers do when this hop fails,
//! without touching the upstream. They are counted like real failures (a chaos experiment
//! must spend error budget to mean anything) and labelled everywhere (`levee_faults_injected_total`,
//! the access and call logs' `fault`) so reports can tell them apart.

pub mod experiments;

use std::time::Duration;

use http::{HeaderMap, HeaderName, StatusCode};

use crate::config::spec::FaultSpec;

pub static X_LEVEE_FAULT: HeaderName = HeaderName::from_static("x-levee-fault");

/// Checks a fault as written (a route's `fault`, or an experiment's); part of config
/// validation, re-exported here for experiments.
pub use crate::config::check_fault;

/// What to inject into one request.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Injection {
    pub delay: Option<Duration>,
    pub abort: Option<StatusCode>,
}

/// The faults for a request: the header's, when the route allows it (`allow_header`, which
/// a running experiment keeps from the route) and it is present, else drawn by `spec`'s
/// percentages.
pub fn decide(spec: &FaultSpec, allow_header: bool, headers: &HeaderMap) -> Injection {
    if allow_header {
        if let Some(value) = headers.get(&X_LEVEE_FAULT).and_then(|v| v.to_str().ok()) {
            return parse_header(value);
        }
    }
    draw(spec, fastrand::f64(), fastrand::f64())
}

/// The route's faults for two uniform draws in 0..1.
fn draw(spec: &FaultSpec, abort_draw: f64, delay_draw: f64) -> Injection {
    Injection {
        delay: spec.delay.filter(|(p, _)| delay_draw < *p).map(|(_, d)| d),
        abort: spec.abort.filter(|(p, _)| abort_draw < *p).map(|(_, s)| s),
    }
}

/// `abort=503`, `delay=200ms`, or both separated by `;`. Unknown or malformed parts are
/// ignored (a fault header never breaks a request by itself).
fn parse_header(value: &str) -> Injection {
    let mut injection = Injection::default();
    for part in value.split(';') {
        let Some((key, value)) = part.split_once('=') else {
            continue;
        };
        match key.trim() {
            "abort" => {
                injection.abort = value
                    .trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|s| (400..=599).contains(s))
                    .and_then(|s| StatusCode::from_u16(s).ok());
            }
            "delay" => {
                injection.delay = humantime::parse_duration(value.trim())
                    .ok()
                    .filter(|d| *d <= Duration::from_secs(3600));
            }
            _ => {}
        }
    }
    injection
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_header_names_the_faults() {
        assert_eq!(
            parse_header("abort=503; delay=250ms"),
            Injection {
                delay: Some(Duration::from_millis(250)),
                abort: Some(StatusCode::SERVICE_UNAVAILABLE)
            }
        );
        assert_eq!(parse_header("abort=200;delay=forever;x=1"), Injection::default());
    }

    #[test]
    fn draws_below_the_share_inject() {
        let spec = FaultSpec {
            abort: Some((0.25, StatusCode::BAD_GATEWAY)),
            delay: Some((0.5, Duration::from_millis(10))),
            allow_header: false,
        };
        assert_eq!(draw(&spec, 0.2, 0.9).abort, Some(StatusCode::BAD_GATEWAY));
        assert_eq!(draw(&spec, 0.3, 0.9), Injection::default());
        assert_eq!(draw(&spec, 0.9, 0.4).delay, Some(Duration::from_millis(10)));
        // Without allow_header the header is ignored.
        let mut headers = HeaderMap::new();
        headers.insert(&X_LEVEE_FAULT, http::HeaderValue::from_static("abort=503"));
        let quiet = FaultSpec {
            abort: None,
            delay: None,
            allow_header: false,
        };
        assert_eq!(decide(&quiet, quiet.allow_header, &headers), Injection::default());
    }
}
