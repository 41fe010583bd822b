//! Entry points for the fuzz targets in `fuzz/` (not part of the stable API).
//!
//! Each takes arbitrary bytes and drives a path that handles untrusted input; the only
//! property checked is the important one: nothing panics, loops or allocates without bound.

use std::sync::OnceLock;

use crate::config::Config;
use crate::router::Router;

/// Parses `bytes` as a config file (what `levee check` and a reload do with operator input).
pub fn config(bytes: &[u8]) {
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = crate::config::load_str(text, "fuzz.yaml");
    }
}

fn router() -> &'static Router {
    static ROUTER: OnceLock<Router> = OnceLock::new();
    ROUTER.get_or_init(|| {
        let yaml = "listeners: [{ name: p, bind: 127.0.0.1:0 }]
upstreams: { u: { targets: [127.0.0.1:9] } }
routes:
  - { name: t, match: { path: \"/users/{id}/orders\", methods: [GET] }, upstream: u }
  - { name: h, match: { host: \"*.example.com\", path_prefix: /api }, upstream: u }
  - { name: x, match: { headers: { x-env: canary } }, upstream: u }
  - { name: all, upstream: u }
";
        let config: Result<Config, _> = crate::config::load_str(yaml, "fuzz.yaml");
        Router::new(config.map(|c| c.routes).unwrap_or_default())
    })
}

/// Parses `bytes` as an HTTP/1 request head, then runs every check and rewrite the gateway
/// applies to a head before any upstream work.
pub fn request_head(bytes: &[u8]) {
    // The smuggling guard follows the raw stream first, as it does in front of hyper.
    let _ = crate::strict::HeadGuard::new(()).follow(bytes);
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = parsed.parse(bytes) else {
        return;
    };
    let mut builder = http::Request::builder()
        .method(parsed.method.unwrap_or("GET"))
        .uri(parsed.path.unwrap_or("/"));
    for header in parsed.headers.iter() {
        builder = builder.header(header.name, header.value);
    }
    let Ok(request) = builder.body(()) else {
        return;
    };
    let (mut parts, ()) = request.into_parts();
    let _ = crate::host::settle(&mut parts);
    let _ = crate::pipeline::strict_framing(&parts);
    let _ = crate::pipeline::head_bytes(&parts);
    let _ = router().route(&parts);
    let _ = crate::stale::StaleCache::key(&parts);
    let _ = crate::headers::request_id(&parts.headers);
    let _ = crate::observability::traces::TraceContext::start(&parts.headers, None);
    let upgrade = crate::headers::wants_upgrade(&parts.headers);
    crate::headers::remove_hop_by_hop(&mut parts.headers, upgrade);
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    crate::headers::add_forwarded(&mut parts.headers, [127, 0, 0, 1].into(), "http", host.as_deref());
}

#[cfg(test)]
mod tests {
    #[test]
    fn handles_odd_heads_and_configs() {
        super::request_head(b"GET /users/1/orders HTTP/1.1\r\nHost: a.example.com\r\nConnection: x, upgrade\r\nUpgrade: websocket\r\nX-Request-Id: \xff\r\n\r\n");
        super::request_head(b"POST / HTTP/1.1\r\nContent-Length: 1, 2\r\nTransfer-Encoding: chunked\r\n\r\n");
        super::config(b"routes: [{ name: [1, 2], upstream: }]\n  - :\n");
        super::config(b"upstreams: { u: { targets: [\"\xe2\x82\xac:80\"] } }");
    }
}
