//! Route matching: which configured route takes a request.
//!
//! Routes are tried in config order and the first whose every condition holds wins, as in
//! Envoy. The conditions themselves ([`RouteMatch`] and its parts) are compiled by config
//! validation and live in [`crate::config::matcher`]; they are re-exported here, where
//! requests are matched against them.

use http::request::Parts;

pub use crate::config::matcher::{
    parse_template, prefix_matches, request_host, CoverIndex, HostMatch, PathMatch, RouteMatch, Segment,
};
use crate::config::spec::RouteSpec;

/// The path to forward once `prefix` is stripped: always starts with `/`.
pub fn strip_path_prefix<'a>(prefix: &str, path: &'a str) -> std::borrow::Cow<'a, str> {
    match path.strip_prefix(prefix) {
        Some(rest) if rest.starts_with('/') => rest.into(),
        Some(rest) => format!("/{rest}").into(),
        None => path.into(),
    }
}

/// The compiled route table.
#[derive(Debug)]
pub struct Router {
    routes: Vec<RouteSpec>,
}

impl Router {
    pub fn new(routes: Vec<RouteSpec>) -> Router {
        Router { routes }
    }

    /// The first route that takes the request, with its index.
    pub fn route(&self, parts: &Parts) -> Option<(usize, &RouteSpec)> {
        self.routes
            .iter()
            .enumerate()
            .find(|(_, route)| route.matcher.matches(parts))
    }

    pub fn routes(&self) -> &[RouteSpec] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_prefix_keeps_a_leading_slash() {
        assert_eq!(strip_path_prefix("/api", "/api/users"), "/users");
        assert_eq!(strip_path_prefix("/api", "/api"), "/");
        assert_eq!(strip_path_prefix("/api/", "/api/users"), "/users");
    }
}
