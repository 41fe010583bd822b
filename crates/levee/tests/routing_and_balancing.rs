//! Route matching, path rewriting, header rewriting and load balancing over real sockets.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::collections::HashMap;

use common::Harness;
use http::{Request, StatusCode};
use levee_test_support::*;

/// Method, path, headers, and the upstream expected to answer.
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);

/// Upstreams that say who they are.
async fn named(names: &[&'static str]) -> Vec<MockUpstream> {
    let mut out = Vec::new();
    for name in names {
        out.push(MockUpstream::fixed(name).await);
    }
    out
}

#[tokio::test]
async fn requests_take_the_first_route_whose_conditions_all_hold() {
    let ups = named(&[
        "host", "exact", "template", "post", "header", "prefix", "fallback",
    ])
    .await;
    let mut yaml = String::from("upstreams:\n");
    for (i, u) in ups.iter().enumerate() {
        yaml.push_str(&format!("  u{i}:\n    targets: [\"{}\"]\n", u.addr));
    }
    yaml.push_str(
        r#"routes:
  - name: by-host
    match: { host: "*.example.com", path_prefix: /api }
    upstream: u0
  - name: exact
    match: { path: /api/status }
    upstream: u1
  - name: template
    match: { path: "/api/users/{id}/orders" }
    upstream: u2
  - name: post-only
    match: { path_prefix: /api/users, methods: [POST] }
    upstream: u3
  - name: canary
    match: { path_prefix: /api/users, headers: { x-env: canary } }
    upstream: u4
  - name: api
    match: { path_prefix: /api }
    upstream: u5
  - name: rest
    upstream: u6
"#,
    );
    let h = Harness::start(&yaml);
    let cases: &[Case] = &[
        ("GET", "/api/status", &[("host", "eu.example.com:8443")], "host"),
        ("GET", "/api/status", &[], "exact"),
        ("GET", "/api/status/more", &[], "prefix"),
        ("GET", "/api/users/7/orders", &[], "template"),
        ("GET", "/api/users/7/orders/1", &[], "prefix"),
        ("POST", "/api/users", &[], "post"),
        ("GET", "/api/users", &[("x-env", "canary")], "header"),
        ("GET", "/api/users", &[("x-env", "prod")], "prefix"),
        ("GET", "/apix", &[], "fallback"),
        ("GET", "/", &[("host", "example.com")], "fallback"),
    ];
    for (method, path, headers, expected) in cases {
        let mut builder = Request::builder().method(*method).uri(h.url(path));
        for (k, v) in *headers {
            builder = builder.header(*k, *v);
        }
        let answer = send(&client(false), builder.body(empty()).unwrap()).await;
        assert_eq!(answer.text(), *expected, "{method} {path} {headers:?}");
    }
}

#[tokio::test]
async fn unmatched_requests_get_a_json_404() {
    let ups = named(&["only"]).await;
    let h = Harness::start(&format!(
        "upstreams:\n  u:\n    targets: [\"{}\"]\nroutes:\n  - name: api\n    match: {{ path_prefix: /api }}\n    upstream: u\n",
        ups[0].addr
    ));
    let answer = get(&h.url("/nope"), &[("x-request-id", "abc")]).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let json = answer.json();
    assert_eq!(json["error"]["code"], "no_route");
    assert_eq!(json["error"]["request_id"], "abc");
    assert!(json["error"]["message"].as_str().unwrap().len() > 5);
    assert_eq!(ups[0].hits(), 0);
}

#[tokio::test]
async fn strip_prefix_and_header_rewrites() {
    let upstream = MockUpstream::start(|_| {
        Reply::ok("x")
            .header("server", "secret-version")
            .header("x-extra", "a")
    })
    .await;
    let h = Harness::start(&format!(
        r#"upstreams:
  u:
    targets: ["{}"]
routes:
  - name: api
    match: {{ path_prefix: /api/v1 }}
    upstream: u
    strip_prefix: true
    request_headers:
      remove: [x-drop-me]
      set: {{ x-team: payments }}
      add: {{ x-tag: gateway }}
    response_headers:
      remove: [server]
      set: {{ x-served-by: levee }}
      add: {{ x-extra: b }}
"#,
        upstream.addr
    ));
    let answer = get(
        &h.url("/api/v1/users/7?full=1"),
        &[("x-drop-me", "1"), ("x-team", "other"), ("x-tag", "client")],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("server"), None);
    assert_eq!(answer.header("x-served-by"), Some("levee"));
    let extra: Vec<_> = answer
        .headers
        .get_all("x-extra")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(extra, ["a", "b"]);
    let seen = &upstream.seen()[0];
    assert_eq!(seen.uri.path_and_query().unwrap().as_str(), "/users/7?full=1");
    assert!(seen.headers.get("x-drop-me").is_none());
    assert_eq!(seen.headers["x-team"], "payments");
    let tags: Vec<_> = seen
        .headers
        .get_all("x-tag")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(tags, ["client", "gateway"]);
    // The bare prefix maps to the upstream root.
    get(&h.url("/api/v1"), &[]).await;
    assert_eq!(upstream.seen()[1].uri.path(), "/");
}

async fn spread(h: &Harness, n: usize, headers: &[(&str, &str)]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        *counts.entry(get(&h.url("/"), headers).await.text()).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn weighted_round_robin_follows_the_weights() {
    let ups = named(&["a", "b", "c"]).await;
    let h = Harness::start(&format!(
        "upstreams:\n  u:\n    targets:\n      - {{ addr: \"{}\", weight: 3 }}\n      - \"{}\"\n      - {{ addr: \"{}\", weight: 2 }}\nroutes:\n  - name: all\n    upstream: u\n",
        ups[0].addr, ups[1].addr, ups[2].addr
    ));
    let counts = spread(&h, 60, &[]).await;
    assert_eq!(counts["a"], 30);
    assert_eq!(counts["b"], 10);
    assert_eq!(counts["c"], 20);
}

#[tokio::test]
async fn consistent_hash_keeps_a_key_on_one_target() {
    let ups = named(&["a", "b", "c"]).await;
    let h = Harness::start(&format!(
        "upstreams:\n  u:\n    targets: [\"{}\", \"{}\", \"{}\"]\n    balance: consistent_hash\n    hash_key: header:x-user\nroutes:\n  - name: all\n    upstream: u\n",
        ups[0].addr, ups[1].addr, ups[2].addr
    ));
    let mut owners = std::collections::HashSet::new();
    for user in 0..12 {
        let key = format!("user-{user}");
        let counts = spread(&h, 5, &[("x-user", &key)]).await;
        assert_eq!(counts.len(), 1, "{key} always lands on one target: {counts:?}");
        owners.extend(counts.into_keys());
    }
    assert!(
        owners.len() >= 2,
        "different keys spread over targets: {owners:?}"
    );
}

#[tokio::test]
async fn least_request_and_p2c_send_to_every_healthy_target() {
    for balance in ["least_request", "p2c_ewma"] {
        let ups = named(&["a", "b"]).await;
        let h = Harness::start(&format!(
            "upstreams:\n  u:\n    targets: [\"{}\", \"{}\"]\n    balance: {balance}\nroutes:\n  - name: all\n    upstream: u\n",
            ups[0].addr, ups[1].addr
        ));
        let counts = spread(&h, 40, &[]).await;
        assert_eq!(counts.values().sum::<usize>(), 40, "{balance}: {counts:?}");
        // Sequential requests see equal load, so ties rotate (least_request) or are broken at
        // random (p2c): both targets get traffic.
        if balance == "least_request" {
            assert_eq!((counts["a"], counts["b"]), (20, 20), "{balance}");
        } else {
            assert!(counts.len() == 2, "{balance}: {counts:?}");
        }
    }
}
