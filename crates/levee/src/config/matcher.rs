//! Route conditions as compiled from the config: the path, host, method and header rules
//! of one route, how a request is matched against them, and how validation finds a route
//! that an earlier one fully covers (so it can never match).
//!
//! Routes are tried in config order and the first whose every condition holds wins, as in
//! Envoy. Because order decides, [`RouteMatch::covers`] and [`CoverIndex`] let validation
//! refuse a config with an unreachable route instead of silently ignoring it. Everything
//! here is compiled at load time: matching a request only compares bytes.

use std::collections::HashMap;

use http::request::Parts;
use http::{HeaderName, HeaderValue, Method};

/// How a route matches the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Any,
    Exact(String),
    /// Prefix on segment boundaries (see [`prefix_matches`]).
    Prefix(String),
    /// `/users/{id}`: literal segments and single-segment parameters.
    Template(Vec<Segment>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Param(String),
}

/// How a route matches the host (port ignored, ASCII case-insensitive).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostMatch {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
}

/// The compiled conditions of one route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    pub path: PathMatch,
    pub host: Option<HostMatch>,
    pub methods: Option<Vec<Method>>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// `/users` takes `/users`, `/users/` and `/users/7` but not `/usersx`; a prefix that ends in
/// `/` takes whatever starts with it.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix.ends_with('/') {
        return path.starts_with(prefix);
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The path made of a template's leading literal segments: `/users` for `/users/{id}/x`.
pub fn literal_head(template: &[Segment]) -> String {
    let head: Vec<&str> = template
        .iter()
        .map_while(|s| match s {
            Segment::Literal(l) => Some(l.as_str()),
            Segment::Param(_) => None,
        })
        .collect();
    format!("/{}", head.join("/"))
}

/// Splits a template such as `/users/{id}/orders` into segments.
pub fn parse_template(path: &str) -> Result<Vec<Segment>, String> {
    let mut segments = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for part in path.split('/').skip(1) {
        if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            let valid = !inner.is_empty()
                && inner
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid {
                return Err(format!(
                    "invalid template parameter `{part}`: use {{name}} with letters, digits, _ or -"
                ));
            }
            if names.contains(&inner) {
                return Err(format!("template parameter `{inner}` appears twice"));
            }
            names.push(inner);
            segments.push(Segment::Param(inner.to_string()));
        } else if part.contains(['{', '}']) {
            return Err(format!(
                "invalid path segment `{part}`: a template parameter must be a whole segment, like /users/{{id}}"
            ));
        } else {
            segments.push(Segment::Literal(part.to_string()));
        }
    }
    Ok(segments)
}

fn template_matches(template: &[Segment], path: &str) -> bool {
    let mut parts = path.split('/').skip(1);
    for segment in template {
        match (segment, parts.next()) {
            (Segment::Literal(lit), Some(part)) if lit == part => {}
            (Segment::Param(_), Some(part)) if !part.is_empty() => {}
            _ => return false,
        }
    }
    parts.next().is_none()
}

/// The host a request is addressed to, without port: the URI authority (HTTP/2, absolute
/// form) or else the Host header.
pub fn request_host(parts: &Parts) -> Option<&str> {
    let raw = match parts.uri.host() {
        Some(host) => host,
        None => {
            let value = parts.headers.get(http::header::HOST)?.to_str().ok()?;
            strip_port(value)
        }
    };
    Some(raw)
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return match host.find(']') {
            Some(end) => host.get(..=end).unwrap_or(host),
            None => host,
        };
    }
    match host.rfind(':') {
        Some(i) => host.get(..i).unwrap_or(host),
        None => host,
    }
}

impl HostMatch {
    pub fn parse(host: &str) -> Result<HostMatch, String> {
        let lower = host.to_ascii_lowercase();
        let (is_wildcard, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
        if !valid {
            return Err(format!(
                "invalid host `{host}`: expected a DNS name such as api.example.com or *.example.com (no port)"
            ));
        }
        Ok(if is_wildcard {
            HostMatch::Suffix(format!(".{name}"))
        } else {
            HostMatch::Exact(name.to_string())
        })
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(name) => host.eq_ignore_ascii_case(name),
            HostMatch::Suffix(suffix) => {
                host.len() > suffix.len()
                    && host
                        .get(host.len() - suffix.len()..)
                        .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
            }
        }
    }

    fn covers(&self, other: &HostMatch) -> bool {
        match (self, other) {
            (HostMatch::Exact(a), HostMatch::Exact(b)) => a == b,
            (HostMatch::Suffix(_), HostMatch::Exact(b)) => self.matches(b),
            (HostMatch::Suffix(a), HostMatch::Suffix(b)) => a == b || b.ends_with(a.as_str()),
            (HostMatch::Exact(_), HostMatch::Suffix(_)) => false,
        }
    }
}

impl PathMatch {
    /// Whether `path` is taken by this path rule (host, methods and headers aside).
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Any => true,
            PathMatch::Exact(exact) => path == exact,
            PathMatch::Prefix(prefix) => prefix_matches(prefix, path),
            PathMatch::Template(template) => template_matches(template, path),
        }
    }

    /// True when every path `other` takes, `self` takes too.
    fn covers(&self, other: &PathMatch) -> bool {
        match (self, other) {
            (PathMatch::Any, _) => true,
            (PathMatch::Prefix(p), PathMatch::Any) => p == "/",
            (PathMatch::Prefix(p), PathMatch::Exact(e)) => prefix_matches(p, e),
            (PathMatch::Prefix(p), PathMatch::Prefix(q)) => prefix_matches(p, q),
            (PathMatch::Prefix(p), PathMatch::Template(t)) => {
                // Covered when the prefix lies within the template's leading literals.
                prefix_matches(p, &literal_head(t))
            }
            (PathMatch::Exact(a), PathMatch::Exact(b)) => a == b,
            (PathMatch::Template(t), PathMatch::Exact(e)) => template_matches(t, e),
            (PathMatch::Template(a), PathMatch::Template(b)) => {
                a.len() == b.len()
                    && a.iter().zip(b).all(|(x, y)| match (x, y) {
                        (Segment::Param(_), _) => true,
                        (Segment::Literal(l), Segment::Literal(m)) => l == m,
                        (Segment::Literal(_), Segment::Param(_)) => false,
                    })
            }
            _ => false,
        }
    }
}

impl RouteMatch {
    /// Whether a request takes this route.
    pub fn matches(&self, parts: &Parts) -> bool {
        if let Some(methods) = &self.methods {
            if !methods.contains(&parts.method) {
                return false;
            }
        }
        if !self.path.matches(parts.uri.path()) {
            return false;
        }
        if let Some(host_match) = &self.host {
            match request_host(parts) {
                Some(host) if host_match.matches(host) => {}
                _ => return false,
            }
        }
        self.headers
            .iter()
            .all(|(name, value)| parts.headers.get_all(name).iter().any(|v| v == value))
    }

    /// True when every request `later` would take, `self` takes first: `later` is unreachable.
    pub fn covers(&self, later: &RouteMatch) -> bool {
        let host = match (&self.host, &later.host) {
            (None, _) => true,
            (Some(a), Some(b)) => a.covers(b),
            (Some(_), None) => false,
        };
        let methods = match (&self.methods, &later.methods) {
            (None, _) => true,
            (Some(a), Some(b)) => b.iter().all(|m| a.contains(m)),
            (Some(_), None) => false,
        };
        let headers = self.headers.iter().all(|h| later.headers.contains(h));
        host && methods && headers && self.path.covers(&later.path)
    }
}

/// Finds, for a route, the first earlier route that covers it (so that it can never match),
/// without comparing every pair: `levee check` and a reload must stay fast for a file of
/// 100,000 routes, and comparing each route with all before it grows with the square.
///
/// Earlier routes are filed by what a covering route must have in common with the one
/// asked about: its host rule (none, the same name, or a wildcard the name ends in), its set
/// of header conditions (a subset of the later route's) and its path rule (any;
/// a prefix, found among the prefixes of the later route's path; an exact path; a template,
/// found by walking a trie of templates segment by segment). Only those candidates are then
/// compared in full with [`RouteMatch::covers`], so the answer is exactly what comparing
/// every earlier route would give.
#[derive(Debug, Default)]
pub struct CoverIndex {
    scopes: HashMap<Scope, PathIndex>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Scope {
    host: Option<HostMatch>,
    /// The route's header conditions, sorted and without repeats: a covering route's set is
    /// a subset of the later route's.
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// Header conditions sorted and without repeats, to file and find them as a set.
fn header_set(headers: &[(HeaderName, HeaderValue)]) -> Vec<(HeaderName, HeaderValue)> {
    let mut set = headers.to_vec();
    set.sort_by(|a, b| (a.0.as_str(), a.1.as_bytes()).cmp(&(b.0.as_str(), b.1.as_bytes())));
    set.dedup();
    set
}

/// Up to this many header conditions, a later route's subsets are looked up one by one
/// (2^12 at most); past it every filed scope of a covering host is looked at instead.
const MAX_HEADER_SUBSETS: usize = 12;

#[derive(Debug, Default)]
struct PathIndex {
    any: Vec<usize>,
    exact: HashMap<String, Vec<usize>>,
    prefix: HashMap<String, Vec<usize>>,
    templates: TemplateNode,
}

/// A trie of templates by segment; `routes` are the templates that end at this node.
#[derive(Debug, Default)]
struct TemplateNode {
    routes: Vec<usize>,
    literal: HashMap<String, TemplateNode>,
    param: Option<Box<TemplateNode>>,
}

impl TemplateNode {
    fn insert(&mut self, segments: &[Segment], index: usize) {
        match segments.split_first() {
            None => self.routes.push(index),
            Some((Segment::Literal(l), rest)) => {
                self.literal.entry(l.clone()).or_default().insert(rest, index)
            }
            Some((Segment::Param(_), rest)) => {
                self.param.get_or_insert_with(Box::default).insert(rest, index)
            }
        }
    }

    /// Templates that could take every path `segments` stand for.
    fn candidates(&self, segments: &[Part], out: &mut Vec<usize>) {
        let Some((first, rest)) = segments.split_first() else {
            out.extend_from_slice(&self.routes);
            return;
        };
        if let Some(param) = &self.param {
            // A parameter takes one non-empty segment of a path, and any segment of a
            // template.
            if !matches!(first, Part::Path("")) {
                param.candidates(rest, out);
            }
        }
        if let Part::Path(text) | Part::Literal(text) = first {
            if let Some(next) = self.literal.get(*text) {
                next.candidates(rest, out);
            }
        }
    }
}

/// One segment of what a later route takes: of an exact path, or of a template.
#[derive(Debug, Clone, Copy)]
enum Part<'a> {
    Path(&'a str),
    Literal(&'a str),
    Param,
}

/// The prefixes `p` for which `prefix_matches(p, path)` can hold.
fn covering_prefixes(path: &str) -> impl Iterator<Item = &str> {
    let bytes = path.as_bytes();
    (1..=path.len()).filter_map(move |end| {
        let head = path.get(..end)?;
        let boundary = head.ends_with('/') || end == path.len() || bytes.get(end) == Some(&b'/');
        boundary.then_some(head)
    })
}

impl CoverIndex {
    /// Files route `index` (its position among the routes) under its conditions.
    pub fn insert(&mut self, index: usize, route: &RouteMatch) {
        let scope = Scope {
            host: route.host.clone(),
            headers: header_set(&route.headers),
        };
        let paths = self.scopes.entry(scope).or_default();
        match &route.path {
            PathMatch::Any => paths.any.push(index),
            PathMatch::Exact(path) => paths.exact.entry(path.clone()).or_default().push(index),
            PathMatch::Prefix(prefix) => paths.prefix.entry(prefix.clone()).or_default().push(index),
            PathMatch::Template(segments) => paths.templates.insert(segments, index),
        }
    }

    /// The first filed route that covers `later`, given how to look a filed route up.
    pub fn first_covering<'a>(
        &self,
        later: &RouteMatch,
        filed: impl Fn(usize) -> Option<&'a RouteMatch>,
    ) -> Option<usize> {
        let mut candidates = Vec::new();
        let headers = header_set(&later.headers);
        for host in covering_hosts(later.host.as_ref()) {
            if headers.len() > MAX_HEADER_SUBSETS {
                for (scope, paths) in &self.scopes {
                    if scope.host == host {
                        paths.candidates(&later.path, &mut candidates);
                    }
                }
                continue;
            }
            for mask in 0u32..(1 << headers.len()) {
                let subset = headers
                    .iter()
                    .enumerate()
                    .filter(|(bit, _)| mask & (1 << bit) != 0)
                    .map(|(_, header)| header.clone())
                    .collect();
                let scope = Scope {
                    host: host.clone(),
                    headers: subset,
                };
                if let Some(paths) = self.scopes.get(&scope) {
                    paths.candidates(&later.path, &mut candidates);
                }
            }
        }
        candidates
            .into_iter()
            .filter(|&i| filed(i).is_some_and(|earlier| earlier.covers(later)))
            .min()
    }
}

/// The host rules that could cover `host`: none, the same, or a wildcard it ends in.
fn covering_hosts(host: Option<&HostMatch>) -> Vec<Option<HostMatch>> {
    let mut hosts = vec![None];
    let name = match host {
        None => return hosts,
        Some(HostMatch::Exact(name)) => {
            hosts.push(Some(HostMatch::Exact(name.clone())));
            name.as_str()
        }
        Some(HostMatch::Suffix(suffix)) => suffix.as_str(),
    };
    let exact = matches!(host, Some(HostMatch::Exact(_)));
    for (at, _) in name.match_indices('.') {
        // A wildcard takes strictly longer names; a suffix covers itself and longer ones.
        if exact && at == 0 {
            continue;
        }
        if let Some(suffix) = name.get(at..) {
            hosts.push(Some(HostMatch::Suffix(suffix.to_string())));
        }
    }
    hosts
}

impl PathIndex {
    fn candidates(&self, path: &PathMatch, out: &mut Vec<usize>) {
        out.extend_from_slice(&self.any);
        let mut prefixes_of = |text: &str| {
            for head in covering_prefixes(text) {
                if let Some(found) = self.prefix.get(head) {
                    out.extend_from_slice(found);
                }
            }
        };
        match path {
            PathMatch::Any => prefixes_of("/"),
            PathMatch::Exact(exact) => {
                prefixes_of(exact);
                if let Some(found) = self.exact.get(exact) {
                    out.extend_from_slice(found);
                }
                let parts: Vec<Part> = exact.split('/').skip(1).map(Part::Path).collect();
                self.templates.candidates(&parts, out);
            }
            PathMatch::Prefix(prefix) => prefixes_of(prefix),
            PathMatch::Template(segments) => {
                prefixes_of(&literal_head(segments));
                let parts: Vec<Part> = segments
                    .iter()
                    .map(|s| match s {
                        Segment::Literal(l) => Part::Literal(l),
                        Segment::Param(_) => Part::Param,
                    })
                    .collect();
                self.templates.candidates(&parts, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn any() -> RouteMatch {
        RouteMatch {
            path: PathMatch::Any,
            host: None,
            methods: None,
            headers: vec![],
        }
    }

    #[test]
    fn prefix_respects_segments() {
        assert!(prefix_matches("/users", "/users"));
        assert!(prefix_matches("/users", "/users/7"));
        assert!(!prefix_matches("/users", "/usersx"));
        assert!(prefix_matches("/users/", "/users/7"));
        assert!(!prefix_matches("/users/", "/users"));
        assert!(prefix_matches("/", "/anything"));
    }

    #[test]
    fn templates_match_whole_segments() {
        let t = parse_template("/users/{id}/orders").unwrap();
        assert!(template_matches(&t, "/users/7/orders"));
        assert!(!template_matches(&t, "/users//orders"));
        assert!(!template_matches(&t, "/users/7/orders/9"));
        assert!(!template_matches(&t, "/users/7"));
        assert!(parse_template("/users/{id").is_err());
        assert!(parse_template("/users/x{id}").is_err());
        assert!(parse_template("/a/{id}/b/{id}").is_err());
    }

    #[test]
    fn host_ignores_port_and_case() {
        let m = RouteMatch {
            host: Some(HostMatch::parse("API.example.com").unwrap()),
            ..any()
        };
        assert!(m.matches(&parts("GET", "/", &[("host", "api.EXAMPLE.com:8080")])));
        assert!(!m.matches(&parts("GET", "/", &[("host", "other.com")])));
        assert!(m.matches(&parts("GET", "http://api.example.com/x", &[])));
        let wild = RouteMatch {
            host: Some(HostMatch::parse("*.example.com").unwrap()),
            ..any()
        };
        assert!(wild.matches(&parts("GET", "/", &[("host", "a.example.com")])));
        assert!(!wild.matches(&parts("GET", "/", &[("host", "example.com")])));
    }

    #[test]
    fn methods_and_headers_must_all_hold() {
        let m = RouteMatch {
            methods: Some(vec![Method::POST]),
            headers: vec![(
                HeaderName::from_static("x-env"),
                HeaderValue::from_static("canary"),
            )],
            ..any()
        };
        assert!(m.matches(&parts("POST", "/", &[("x-env", "canary")])));
        assert!(!m.matches(&parts("GET", "/", &[("x-env", "canary")])));
        assert!(!m.matches(&parts("POST", "/", &[("x-env", "prod")])));
    }

    #[test]
    fn covering_detects_unreachable_routes() {
        let prefix = |p: &str| RouteMatch {
            path: PathMatch::Prefix(p.into()),
            ..any()
        };
        let exact = |p: &str| RouteMatch {
            path: PathMatch::Exact(p.into()),
            ..any()
        };
        let template = |p: &str| RouteMatch {
            path: PathMatch::Template(parse_template(p).unwrap()),
            ..any()
        };
        assert!(prefix("/users").covers(&exact("/users/7")));
        assert!(prefix("/users").covers(&prefix("/users/admin")));
        assert!(!prefix("/users/admin").covers(&prefix("/users")));
        assert!(prefix("/users").covers(&template("/users/{id}")));
        assert!(!prefix("/users/admin").covers(&template("/users/{id}")));
        assert!(template("/users/{id}").covers(&exact("/users/7")));
        assert!(template("/users/{id}").covers(&template("/users/{uid}")));
        assert!(!exact("/users/7").covers(&template("/users/{id}")));
        // Narrower conditions on the earlier route leave the later one reachable.
        let get_only = RouteMatch {
            methods: Some(vec![Method::GET]),
            ..prefix("/")
        };
        assert!(!get_only.covers(&prefix("/users")));
        assert!(any().covers(&get_only));
    }

    /// The index gives exactly the answer of comparing with every earlier route, over many
    /// random routes drawn from a small vocabulary (so that covering is frequent).
    #[test]
    fn the_cover_index_agrees_with_comparing_every_pair() {
        let mut rng = fastrand::Rng::with_seed(7);
        let paths = [
            "/", "/a", "/a/", "/a/b", "/a/b/", "/a/7", "/b", "/b/c/d", "/{x}", "/a/{x}", "/{x}/b", "/a/{x}/c",
        ];
        let hosts = [
            None,
            Some("a.example.com"),
            Some("*.example.com"),
            Some("*.a.example.com"),
            Some("b.example.com"),
        ];
        let header = |i: usize| {
            (
                HeaderName::from_static("x-env"),
                HeaderValue::from_static(["a", "b"][i % 2]),
            )
        };
        let random_match = |rng: &mut fastrand::Rng| {
            let text = paths[rng.usize(..paths.len())];
            let path = match rng.usize(..4) {
                0 => PathMatch::Any,
                1 if !text.contains('{') => PathMatch::Exact(text.to_string()),
                2 if !text.contains('{') => PathMatch::Prefix(text.to_string()),
                _ => PathMatch::Template(parse_template(text).unwrap()),
            };
            RouteMatch {
                path,
                host: hosts[rng.usize(..hosts.len())].map(|h| HostMatch::parse(h).unwrap()),
                methods: rng
                    .bool()
                    .then(|| vec![[Method::GET, Method::POST][rng.usize(..2)].clone()]),
                headers: (0..rng.usize(..3)).map(|_| header(rng.usize(..2))).collect(),
            }
        };
        for _ in 0..50 {
            let routes: Vec<RouteMatch> = (0..60).map(|_| random_match(&mut rng)).collect();
            let mut index = CoverIndex::default();
            for (i, route) in routes.iter().enumerate() {
                let brute = routes[..i].iter().position(|earlier| earlier.covers(route));
                let indexed = index.first_covering(route, |j| routes.get(j));
                assert_eq!(indexed, brute, "route {i}: {route:?}");
                index.insert(i, route);
            }
        }
    }
}
