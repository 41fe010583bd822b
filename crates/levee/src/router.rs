//! Route matching: which configured route takes a request.
//!
//! Routes are tried in config order and the first whose every condition holds wins, as in
//! Envoy. The conditions themselves ([`RouteMatch`] and its parts) are compiled by config
//! validation and live in [`crate::config::matcher`]; they are re-exported here, where
//! requests are matched against them.
//!
//! Walking every route for every request costs in proportion to the table: with 10,000
//! routes that is 10,000 comparisons per request. So the table is indexed by path: each
//! route is filed under the one path string a matching request's path must contain at a
//! segment boundary (an exact path; a prefix; a template's leading literal segments), or in
//! a short list of routes that any path may match. A request looks up its own path and each
//! of its segment-boundary prefixes (a handful of hash lookups), merges the routes found
//! with that list, and compares only those, in config order: the first that matches in
//! full is the answer, exactly as the walk would find it, since every route that could
//! match is among them.

use std::collections::HashMap;

use http::request::Parts;
use smallvec::SmallVec;

use crate::config::matcher::literal_head;
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

/// Adds a list of candidates once (a path ending in `/` finds its own list twice: whole, and
/// up to the `/`).
fn take<'a>(lists: &mut SmallVec<[&'a [usize]; INLINE_LISTS]>, found: Option<&'a Vec<usize>>) {
    if let Some(found) = found {
        if !lists.iter().any(|l| std::ptr::eq(*l, found.as_slice())) {
            lists.push(found.as_slice());
        }
    }
}

/// The compiled route table.
#[derive(Debug)]
pub struct Router {
    routes: Vec<RouteSpec>,
    /// Exact path -> the routes (indices, ascending) that want exactly it.
    exact: HashMap<String, Vec<usize>, foldhash::fast::RandomState>,
    /// Prefix or template head -> the routes filed under it, ascending.
    prefixes: HashMap<String, Vec<usize>, foldhash::fast::RandomState>,
    /// Routes any path may match (no path condition), ascending.
    any: Vec<usize>,
}

/// Lists of candidates held for one request without allocating (a path of up to about
/// seven segments); more spill to the heap.
const INLINE_LISTS: usize = 16;

impl Router {
    pub fn new(routes: Vec<RouteSpec>) -> Router {
        let mut exact: HashMap<String, Vec<usize>, _> = HashMap::default();
        let mut prefixes: HashMap<String, Vec<usize>, _> = HashMap::default();
        let mut any = Vec::new();
        for (index, route) in routes.iter().enumerate() {
            match &route.matcher.path {
                PathMatch::Any => any.push(index),
                PathMatch::Exact(path) => exact.entry(path.clone()).or_default().push(index),
                PathMatch::Prefix(prefix) => prefixes.entry(prefix.clone()).or_default().push(index),
                PathMatch::Template(template) => {
                    prefixes.entry(literal_head(template)).or_default().push(index)
                }
            }
        }
        Router {
            routes,
            exact,
            prefixes,
            any,
        }
    }

    /// The first route that takes the request, with its index.
    pub fn route(&self, parts: &Parts) -> Option<(usize, &RouteSpec)> {
        let path = parts.uri.path();
        // The lists of routes that may take this path, each in config order.
        let mut lists: SmallVec<[&[usize]; INLINE_LISTS]> = SmallVec::new();
        take(&mut lists, self.exact.get(path));
        take(&mut lists, self.prefixes.get(path));
        // Every prefix ending just before a `/` (a prefix `/api` takes `/api/x`) and just
        // after one (a prefix `/api/` takes `/api/x`).
        for (i, _) in path.match_indices('/') {
            take(&mut lists, path.get(..i).and_then(|p| self.prefixes.get(p)));
            take(&mut lists, path.get(..=i).and_then(|p| self.prefixes.get(p)));
        }
        if !self.any.is_empty() {
            lists.push(self.any.as_slice());
        }
        // Merged in config order: the lowest index left is compared next.
        loop {
            let (slot, index) = lists
                .iter()
                .enumerate()
                .filter_map(|(slot, list)| Some((slot, *list.first()?)))
                .min_by_key(|(_, index)| *index)?;
            if let Some(route) = self.routes.get(index).filter(|r| r.matcher.matches(parts)) {
                return Some((index, route));
            }
            if let Some(list) = lists.get_mut(slot) {
                *list = list.get(1..).unwrap_or_default();
            }
        }
    }

    pub fn routes(&self) -> &[RouteSpec] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The table as it was before the index: every route in order.
    fn walk<'r>(routes: &'r [RouteSpec], parts: &Parts) -> Option<(usize, &'r RouteSpec)> {
        routes.iter().enumerate().find(|(_, r)| r.matcher.matches(parts))
    }

    #[test]
    fn the_index_finds_the_route_the_walk_finds() {
        let yaml = "listeners: [{ name: public, bind: \"127.0.0.1:0\" }]\nupstreams:\n  u:\n    targets: [\"127.0.0.1:1\"]\nroutes:\n\
  - { name: get-only, match: { path_prefix: /api/users, methods: [GET] }, upstream: u }\n\
  - { name: host, match: { host: admin.example.com, path_prefix: /api }, upstream: u }\n\
  - { name: exact, match: { path: /api/users/me }, upstream: u }\n\
  - { name: template, match: { path: \"/api/users/{id}/orders\" }, upstream: u }\n\
  - { name: leading-param, match: { path: \"/{tenant}/health\" }, upstream: u }\n\
  - { name: slash, match: { path_prefix: /static/ }, upstream: u }\n\
  - { name: header, match: { headers: { x-canary: \"1\" } }, upstream: u }\n\
  - { name: api, match: { path_prefix: /api }, upstream: u }\n\
  - { name: v2, match: { path_prefix: /v2 }, upstream: u }\n\
  - { name: rest, match: { path_prefix: / }, upstream: u }\n";
        let config = crate::config::load_str(yaml, "t.yaml").unwrap();
        let router = Router::new(config.routes.clone());
        let paths = [
            "/",
            "/api",
            "/api/",
            "/api/users",
            "/api/users/me",
            "/api/users/7/orders",
            "/api/users/7/orders/",
            "/apix",
            "/acme/health",
            "/acme/health/x",
            "/static",
            "/static/",
            "/static/a.css",
            "/v2",
            "/v2/x",
            "/v22",
            "//",
            "/a//b",
            "*",
        ];
        for path in paths {
            for (method, host, canary) in [
                ("GET", "example.com", false),
                ("POST", "admin.example.com", false),
                ("DELETE", "example.com", true),
            ] {
                let mut request = http::Request::builder()
                    .method(method)
                    .uri(path)
                    .header("host", host);
                if canary {
                    request = request.header("x-canary", "1");
                }
                let Ok(request) = request.body(()) else { continue };
                let (parts, ()) = request.into_parts();
                let found = router.route(&parts).map(|(i, r)| (i, r.name.to_string()));
                let walked = walk(&config.routes, &parts).map(|(i, r)| (i, r.name.to_string()));
                assert_eq!(found, walked, "{method} {host} {path} canary={canary}");
            }
        }
    }

    #[test]
    fn strip_prefix_keeps_a_leading_slash() {
        assert_eq!(strip_path_prefix("/api", "/api/users"), "/users");
        assert_eq!(strip_path_prefix("/api", "/api"), "/");
        assert_eq!(strip_path_prefix("/api/", "/api/users"), "/users");
    }
}
