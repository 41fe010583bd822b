//! API lifecycle over real sockets: a deprecated route's `Deprecation`, `Sunset` and `Link`
//! on every answer (the upstream's and the gateway's own), a retired route's 410 `gone`,
//! versions side by side, the deprecated-calls metric per consumer, the analytics filter by
//! route, and the `publish` and `lifecycle` blocks checked with their positions.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::Harness;
use http::StatusCode;
use levee::auth::digest_of;
use levee_test_support::*;

const MOBILE_KEY: &str = "lvk_mobile_0123456789";
const PARTNER_KEY: &str = "lvk_partner_9876543210";

/// `/v1/users` deprecated, `/v2/users` published, `/v0/orders` retired, `/legacy`
/// deprecated without auth; all on one upstream.
fn config(upstream: std::net::SocketAddr, extra: &str) -> String {
    format!(
        r#"{extra}consumers:
  - name: mobile
    api_keys: ["{}"]
  - name: partner
    api_keys: ["{}"]
upstreams:
  u:
    targets: ["{upstream}"]
routes:
  - name: users-v1
    match: {{ path_prefix: /v1/users }}
    upstream: u
    auth: api_key
    lifecycle:
      version: v1
      state: deprecated
      deprecated_at: 2026-06-01T00:00:00Z
      sunset_at: 2027-01-01T00:00:00Z
      link: https://docs.example.com/users/migrate
  - name: users-v2
    match: {{ path_prefix: /v2/users }}
    upstream: u
    auth: api_key
    lifecycle: {{ version: v2 }}
  - name: orders-v0
    match: {{ path_prefix: /v0/orders }}
    upstream: u
    lifecycle:
      version: v0
      state: retired
      deprecated_at: 2025-01-01T00:00:00Z
      sunset_at: 2025-06-01T00:00:00Z
      link: https://docs.example.com/orders
  - name: legacy
    match: {{ path_prefix: /legacy }}
    upstream: u
    lifecycle: {{ state: deprecated, deprecated_at: "2026-06-01T02:00:00+02:00" }}
  - name: users-v3
    match: {{ path_prefix: /v3/users }}
    upstream: u
    auth: api_key
    publish: {{ service: users, team: core, description: "User accounts", approval: manual }}
    lifecycle: {{ version: v3 }}
  - name: users-v4
    match: {{ path_prefix: /v4/users }}
    upstream: u
    auth: api_key
    publish: {{ service: users, team: core, openapi: /v4/users/openapi.json }}
"#,
        digest_of(MOBILE_KEY),
        digest_of(PARTNER_KEY)
    )
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

const DEPRECATION: &str = "@1780272000";
const SUNSET: &str = "Fri, 01 Jan 2027 00:00:00 GMT";
const LINK: &str = "<https://docs.example.com/users/migrate>; rel=\"deprecation\"; type=\"text/html\"";

#[tokio::test]
async fn a_deprecated_route_marks_every_answer_and_its_successor_none() {
    let upstream = MockUpstream::fixed("ok").await;
    let h = Harness::start(&config(upstream.addr, ""));

    let ok = get(&h.url("/v1/users/7"), &[("authorization", &bearer(MOBILE_KEY))]).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.text(), "ok");
    assert_eq!(ok.header("deprecation"), Some(DEPRECATION));
    assert_eq!(ok.header("sunset"), Some(SUNSET));
    assert_eq!(ok.header("link"), Some(LINK));

    // The gateway's own answer after the route matched carries them too.
    let refused = get(&h.url("/v1/users/7"), &[]).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.json()["error"]["code"], "unauthorized");
    assert_eq!(refused.header("deprecation"), Some(DEPRECATION));
    assert_eq!(refused.header("sunset"), Some(SUNSET));
    assert_eq!(refused.header("link"), Some(LINK));
    assert!(refused.header("x-request-id").is_some());

    // Version 2 of the same service, side by side: served, unmarked.
    let v2 = get(&h.url("/v2/users/7"), &[("authorization", &bearer(MOBILE_KEY))]).await;
    assert_eq!(v2.status, StatusCode::OK);
    for name in ["deprecation", "sunset", "link"] {
        assert_eq!(v2.header(name), None, "{name} on a published route");
    }
    let v2_refused = get(&h.url("/v2/users/7"), &[]).await;
    assert_eq!(v2_refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(v2_refused.header("deprecation"), None);

    // Only what is known is sent: no sunset, no link; an offset timestamp is the same instant.
    let legacy = get(&h.url("/legacy"), &[]).await;
    assert_eq!(legacy.status, StatusCode::OK);
    assert_eq!(legacy.header("deprecation"), Some(DEPRECATION));
    assert_eq!((legacy.header("sunset"), legacy.header("link")), (None, None));
    assert_eq!(upstream.hits(), 3);

    // The routes view shows both blocks as configured (the published routes, whose callers
    // need a subscription, are not called here: tests/management.rs covers them).
    let routes = get(&format!("{}/api/v1/routes", h.admin), &[]).await.json();
    let v1 = &routes["routes"][0];
    assert_eq!(v1["lifecycle"]["state"], "deprecated");
    assert_eq!(v1["lifecycle"]["deprecated_at"], "2026-06-01T00:00:00Z");
    assert_eq!(v1["lifecycle"]["sunset_at"], "2027-01-01T00:00:00Z");
    let v3 = &routes["routes"][4];
    assert_eq!(v3["publish"]["service"], "users");
    assert_eq!(v3["publish"]["team"], "core");
    assert_eq!(v3["publish"]["approval"], "manual");
    assert_eq!(routes["routes"][5]["publish"]["approval"], "auto");
    h.stop().await;
}

#[tokio::test]
async fn a_retired_route_answers_410_gone_without_asking_the_upstream() {
    let upstream = MockUpstream::fixed("ok").await;
    let h = Harness::start(&config(upstream.addr, ""));
    let gone = get(&h.url("/v0/orders/1"), &[("x-request-id", "retired-1")]).await;
    assert_eq!(gone.status, StatusCode::GONE);
    assert_eq!(gone.header("x-request-id"), Some("retired-1"));
    assert_eq!(
        gone.header("link"),
        Some("<https://docs.example.com/orders>; rel=\"deprecation\"; type=\"text/html\"")
    );
    assert_eq!(gone.header("content-type"), Some("application/json"));
    let body = gone.json();
    assert_eq!(body["error"]["code"], "gone");
    assert_eq!(body["error"]["request_id"], "retired-1");
    assert_eq!(
        body["error"]["message"],
        "This API version (v0) was retired on 2025-06-01T00:00:00Z; see https://docs.example.com/orders."
    );
    assert_eq!(upstream.hits(), 0, "a retired route never reaches its upstream");
    eventually("logged", || async { h.access_log().len() == 1 }).await;
    let line = &h.access_log()[0];
    assert_eq!(
        (line["status"].as_u64(), line["route"].as_str()),
        (Some(410), Some("orders-v0"))
    );
    h.stop().await;
}

#[tokio::test]
async fn a_reload_retires_a_deprecated_version() {
    let upstream = MockUpstream::fixed("ok").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("levee.yaml");
    let h = Harness::start_file(&path, &config(upstream.addr, ""));
    let key = [("authorization", bearer(MOBILE_KEY))];
    let key: Vec<(&str, &str)> = key.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(get(&h.url("/v1/users"), &key).await.status, StatusCode::OK);
    let retired = config(upstream.addr, "").replacen("state: deprecated", "state: retired", 1);
    common::write_atomically(&path, &Harness::compose(&retired));
    assert_eq!(common::reload(&h).await.status, StatusCode::OK);
    let gone = get(&h.url("/v1/users"), &key).await;
    assert_eq!(gone.status, StatusCode::GONE);
    assert_eq!(
        gone.json()["error"]["message"],
        "This API version (v1) was retired on 2027-01-01T00:00:00Z; see https://docs.example.com/users/migrate."
    );
    assert_eq!(get(&h.url("/v2/users"), &key).await.status, StatusCode::OK);
    h.stop().await;
}

#[tokio::test]
async fn deprecated_calls_are_counted_per_consumer() {
    let upstream = MockUpstream::fixed("ok").await;
    let h = Harness::start(&config(upstream.addr, ""));
    for (key, times) in [(MOBILE_KEY, 3), (PARTNER_KEY, 1)] {
        for _ in 0..times {
            let answer = get(&h.url("/v1/users"), &[("authorization", &bearer(key))]).await;
            assert_eq!(answer.status, StatusCode::OK);
        }
    }
    // Not counted: refused by auth (no consumer known), and calls to the published version.
    assert_eq!(
        get(&h.url("/v1/users"), &[]).await.status,
        StatusCode::UNAUTHORIZED
    );
    get(&h.url("/v2/users"), &[("authorization", &bearer(MOBILE_KEY))]).await;
    // A deprecated route without auth counts under the empty consumer.
    get(&h.url("/legacy"), &[]).await;

    let metrics = get(&format!("{}/metrics", h.admin), &[]).await.text();
    let samples: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("levee_deprecated_requests_total{"))
        .collect();
    assert_eq!(
        samples,
        [
            "levee_deprecated_requests_total{route=\"legacy\",consumer=\"\"} 1",
            "levee_deprecated_requests_total{route=\"users-v1\",consumer=\"mobile\"} 3",
            "levee_deprecated_requests_total{route=\"users-v1\",consumer=\"partner\"} 1",
        ],
        "{metrics}"
    );
    assert!(metrics.contains("# TYPE levee_deprecated_requests_total counter"));
    common::promtool_accepts(&metrics);
    h.stop().await;
}

#[tokio::test]
async fn analytics_by_route_shows_who_still_calls_a_deprecated_version() {
    let upstream = MockUpstream::fixed("ok").await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = format!("data_dir: \"{}\"\n", dir.path().display());
    let h = Harness::start(&config(upstream.addr, &data_dir));
    for (path, key, times) in [
        ("/v1/users", MOBILE_KEY, 2),
        ("/v1/users", PARTNER_KEY, 1),
        ("/v2/users", MOBILE_KEY, 4),
    ] {
        for _ in 0..times {
            get(&h.url(path), &[("authorization", &bearer(key))]).await;
        }
    }
    let analytics = format!(
        "{}/api/v1/analytics?route=users-v1&group_by=consumer&bucket=1d",
        h.admin
    );
    let per_consumer = |answer: &serde_json::Value| -> Vec<(String, u64)> {
        let mut cells: Vec<(String, u64)> = answer["series"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["group"].as_str().unwrap_or("").to_owned(),
                    c["requests"].as_u64().unwrap(),
                )
            })
            .collect();
        cells.sort();
        cells
    };
    // Calls reach the log when the writer flushes: poll until all seven are there.
    let everything = format!("{}/api/v1/analytics?bucket=1d", h.admin);
    eventually("seven calls stored", || async {
        let answer = get(&everything, &[]).await.json();
        per_consumer(&answer).iter().map(|(_, n)| n).sum::<u64>() == 7
    })
    .await;
    let answer = get(&analytics, &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        per_consumer(&answer.json()),
        [("mobile".to_owned(), 2), ("partner".to_owned(), 1)]
    );
    let none = get(
        &format!("{}/api/v1/analytics?route=nope&group_by=consumer", h.admin),
        &[],
    )
    .await
    .json();
    assert!(none["series"].as_array().unwrap().is_empty());
    h.stop().await;
}

const BASE: &str = "listeners:
  - name: public
    bind: 127.0.0.1:8080
upstreams:
  users:
    targets: [127.0.0.1:9001, 127.0.0.1:9002]
consumers:
  - name: mobile
    api_keys: [\"sha256:0000000000000000000000000000000000000000000000000000000000000000\"]
routes:
";

#[test]
fn publish_and_lifecycle_problems_are_reported_where_they_are_written() {
    let yaml = format!(
        "{BASE}  - name: open
    upstream: users
    match: {{ path_prefix: /open }}
    publish: {{ service: users, team: core }}
  - name: v1
    upstream: users
    auth: api_key
    match: {{ path_prefix: /v1 }}
    publish: {{ service: users, team: growth, openapi: openapi.json }}
    lifecycle:
      state: deprecated
      sunset_at: yesterday
      link: docs.example.com/migrate
  - name: v0
    upstream: users
    auth: api_key
    match: {{ path_prefix: /v0 }}
    lifecycle:
      state: retired
      deprecated_at: 2026-06-01T00:00:00Z
      sunset_at: 2026-01-01T00:00:00Z
"
    );
    let errors: Vec<String> = match levee::load_str(&yaml, "levee.yaml") {
        Ok(_) => panic!("config should be rejected"),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    };
    for (position, text) in [
        ("levee.yaml:14:14: ", "route `open` publishes service `users` but has no auth"),
        (
            "levee.yaml:19:38: ",
            "route `v1` publishes service `users` with team `growth`, but route `open` publishes it with team `core`",
        ),
        (
            "levee.yaml:19:55: ",
            "`openapi.json` is neither a path (starting with /) nor an absolute http(s) URL",
        ),
        ("levee.yaml:21:14: ", "state `deprecated` needs `deprecated_at`"),
        ("levee.yaml:22:18: ", "`yesterday` is not an RFC 3339 timestamp"),
        ("levee.yaml:23:13: ", "`docs.example.com/migrate` is not an absolute http(s) URL"),
        (
            "levee.yaml:31:18: ",
            "sunset_at (2026-01-01T00:00:00Z) is before deprecated_at (2026-06-01T00:00:00Z)",
        ),
    ] {
        assert!(
            errors.iter().any(|e| e.starts_with(position) && e.contains(text)),
            "{position}{text} not in {errors:#?}"
        );
    }
    assert_eq!(errors.len(), 7, "{errors:#?}");
}

#[test]
fn a_passed_sunset_on_a_route_still_served_is_a_warning() {
    let yaml = format!(
        "{BASE}  - name: v1
    upstream: users
    match: {{ path_prefix: /v1 }}
    lifecycle: {{ state: deprecated, deprecated_at: 2025-01-01T00:00:00Z, sunset_at: 2025-06-01T00:00:00Z }}
  - name: v0
    upstream: users
    match: {{ path_prefix: /v0 }}
    lifecycle: {{ state: retired, sunset_at: 2025-06-01T00:00:00Z }}
  - name: v2
    upstream: users
    match: {{ path_prefix: /v2 }}
    lifecycle: {{ state: deprecated, deprecated_at: 2025-01-01T00:00:00Z, sunset_at: 2999-01-01T00:00:00Z }}
"
    );
    let config = levee::load_str(&yaml, "levee.yaml").unwrap();
    let warnings: Vec<String> = config.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].starts_with("levee.yaml:14:85: ")
            && warnings[0]
                .contains("route `v1` passed its sunset (2025-06-01T00:00:00Z) but is still deprecated"),
        "{warnings:#?}"
    );
}
