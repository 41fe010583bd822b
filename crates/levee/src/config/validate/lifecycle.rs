//! A route's `publish` (the service it is in the catalog) and `lifecycle` (published,
//! deprecated or retired, with the dates and link its answers carry), and the rule that
//! binds routes together: the routes of one service name one owning team.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{label_safe, Problems};
use crate::config::file::{ConfigFile, LifecycleFile, PublishFile, RouteFile};
use crate::config::spec::{AuthSpec, LifecycleSpec, LifecycleState, PublishSpec};

/// A route's `publish` and `lifecycle` blocks, each `None` when absent or invalid (its
/// problems reported).
pub(super) fn check_publish_and_lifecycle(
    route: &RouteFile,
    auth: &AuthSpec,
    path: &str,
    p: &mut Problems,
) -> (Option<PublishSpec>, Option<LifecycleSpec>) {
    let publish = route
        .publish
        .as_ref()
        .and_then(|publish| check_publish(publish, route, auth, &format!("{path}.publish"), p));
    let lifecycle = route
        .lifecycle
        .as_ref()
        .and_then(|lifecycle| check_lifecycle(lifecycle, &format!("{path}.lifecycle"), p));
    (publish, lifecycle)
}

fn check_publish(
    publish: &PublishFile,
    route: &RouteFile,
    auth: &AuthSpec,
    path: &str,
    p: &mut Problems,
) -> Option<PublishSpec> {
    let before = p.errors.len();
    if *auth == AuthSpec::None {
        p.at(
            path,
            format!(
                "route `{}` publishes service `{}` but has no auth: consumers subscribe to a published service, so its callers must be known (auth: api_key or jwt)",
                route.name, publish.service
            ),
        );
    }
    if !label_safe(&publish.service) {
        p.at(
            &format!("{path}.service"),
            "a service name is letters, digits, `_`, `-` and `.`, at least one",
        );
    }
    if publish.team.as_deref().is_some_and(|team| !label_safe(team)) {
        p.at(
            &format!("{path}.team"),
            "a team name is letters, digits, `_`, `-` and `.`, at least one",
        );
    }
    if let Some(openapi) = &publish.openapi {
        if !openapi.starts_with('/') && !is_http_url(openapi) {
            p.at(
                &format!("{path}.openapi"),
                format!("`{openapi}` is neither a path (starting with /) nor an absolute http(s) URL"),
            );
        }
    }
    (p.errors.len() == before).then(|| PublishSpec {
        service: publish.service.as_str().into(),
        team: publish.team.as_deref().map(Arc::from),
        description: publish.description.clone(),
        approval: publish.approval,
        openapi: publish.openapi.clone(),
    })
}

fn check_lifecycle(lifecycle: &LifecycleFile, path: &str, p: &mut Problems) -> Option<LifecycleSpec> {
    let before = p.errors.len();
    let mut timestamp = |key: &str, value: Option<&String>| {
        let value = value?;
        let parsed = parse_rfc3339(value);
        if parsed.is_none() {
            p.at(
                &format!("{path}.{key}"),
                format!("`{value}` is not an RFC 3339 timestamp (like 2026-06-01T00:00:00Z)"),
            );
        }
        parsed
    };
    let deprecated_at = timestamp("deprecated_at", lifecycle.deprecated_at.as_ref());
    let sunset_at = timestamp("sunset_at", lifecycle.sunset_at.as_ref());
    if lifecycle.state == LifecycleState::Deprecated && lifecycle.deprecated_at.is_none() {
        p.at(
            &format!("{path}.state"),
            "state `deprecated` needs `deprecated_at` (when the route was deprecated, RFC 3339)",
        );
    }
    if let (Some(deprecated), Some(sunset)) = (deprecated_at, sunset_at) {
        if sunset < deprecated {
            p.at(
                &format!("{path}.sunset_at"),
                format!(
                    "sunset_at ({}) is before deprecated_at ({})",
                    humantime::format_rfc3339_seconds(sunset),
                    humantime::format_rfc3339_seconds(deprecated)
                ),
            );
        }
    }
    if let Some(link) = lifecycle.link.as_ref().filter(|l| !is_http_url(l)) {
        p.at(
            &format!("{path}.link"),
            format!("`{link}` is not an absolute http(s) URL"),
        );
    }
    if lifecycle.version.as_deref() == Some("") {
        p.at(
            &format!("{path}.version"),
            "version must not be empty (or be left out)",
        );
    }
    (p.errors.len() == before).then(|| {
        LifecycleSpec::new(
            lifecycle.version.as_deref().map(Arc::from),
            lifecycle.state,
            deprecated_at,
            sunset_at,
            lifecycle.link.clone(),
        )
    })
}

/// The routes that publish one service name one owning team (or none, all of them).
pub(super) fn check_services(file: &ConfigFile, p: &mut Problems) {
    let mut first: HashMap<&str, (&RouteFile, Option<&str>)> = HashMap::new();
    for (i, route) in file.routes.iter().enumerate() {
        let Some(publish) = &route.publish else {
            continue;
        };
        let team = publish.team.as_deref();
        let Some((earlier, earlier_team)) = first.get(publish.service.as_str()) else {
            first.insert(&publish.service, (route, team));
            continue;
        };
        if *earlier_team != team {
            let name =
                |team: Option<&str>| team.map_or_else(|| "no team".to_owned(), |t| format!("team `{t}`"));
            let at = match team {
                Some(_) => format!("routes[{i}].publish.team"),
                None => format!("routes[{i}].publish"),
            };
            p.at(
                &at,
                format!(
                    "route `{}` publishes service `{}` with {}, but route `{}` publishes it with {}: a service has one owning team",
                    route.name,
                    publish.service,
                    name(team),
                    earlier.name,
                    name(*earlier_team)
                ),
            );
        }
    }
}

/// An absolute `http://` or `https://` URL with a host.
fn is_http_url(text: &str) -> bool {
    text.parse::<http::Uri>().is_ok_and(|uri| {
        matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some_and(|h| !h.is_empty())
    })
}

/// An RFC 3339 timestamp: `Z` or a numeric offset (`+02:00`), with optional fractions of a
/// second.
pub(crate) fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    if let Ok(time) = humantime::parse_rfc3339(text) {
        return Some(time);
    }
    let split = text.len().checked_sub(6)?;
    let (local, offset) = (text.get(..split)?, text.get(split..)?);
    let ahead = match offset.as_bytes().first()? {
        b'+' => true,
        b'-' => false,
        _ => return None,
    };
    let hours = offset.get(1..3)?.parse::<u64>().ok().filter(|h| *h < 24)?;
    let minutes = offset.get(4..6)?.parse::<u64>().ok().filter(|m| *m < 60)?;
    if offset.get(3..4)? != ":" || !local.contains('T') {
        return None;
    }
    let as_utc = humantime::parse_rfc3339(&format!("{local}Z")).ok()?;
    let shift = Duration::from_secs(hours * 3600 + minutes * 60);
    match ahead {
        true => as_utc.checked_sub(shift),
        false => as_utc.checked_add(shift),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_take_z_or_an_offset() {
        let utc = parse_rfc3339("2026-06-01T00:00:00Z").unwrap();
        assert_eq!(parse_rfc3339("2026-06-01T02:00:00+02:00"), Some(utc));
        assert_eq!(parse_rfc3339("2026-05-31T22:30:00-01:30"), Some(utc));
        for bad in [
            "2026-06-01",
            "yesterday",
            "2026-06-01T00:00:00+2:00",
            "2026-13-01T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_absolute_http_urls_are_links() {
        assert!(is_http_url("https://docs.example.com/users/migrate"));
        assert!(is_http_url("http://x"));
        for bad in ["/docs", "ftp://x/y", "docs.example.com", "https://"] {
            assert!(!is_http_url(bad), "{bad}");
        }
    }
}
