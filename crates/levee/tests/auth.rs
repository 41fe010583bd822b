//! API keys, consumers and the admin token over real sockets.
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

fn config(upstream: std::net::SocketAddr, route_extra: &str) -> String {
    format!(
        r#"consumers:
  - name: mobile
    api_keys: ["{}"]
  - name: partner
    api_keys: ["{}"]
upstreams:
  u:
    targets: ["{upstream}"]
routes:
  - name: open
    match: {{ path_prefix: /open }}
    upstream: u
  - name: api
    upstream: u
    auth: api_key
{route_extra}"#,
        digest_of(MOBILE_KEY),
        digest_of(PARTNER_KEY)
    )
}

#[tokio::test]
async fn a_valid_key_names_the_consumer_and_never_reaches_the_upstream() {
    let upstream = MockUpstream::fixed("ok").await;
    let h = Harness::start(&config(upstream.addr, ""));
    let answer = get(
        &h.url("/orders"),
        &[("authorization", &format!("Bearer {MOBILE_KEY}"))],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let seen = &upstream.seen()[0];
    assert_eq!(seen.headers["x-consumer"], "mobile");
    assert!(
        seen.headers.get("authorization").is_none(),
        "the key is not forwarded"
    );
    eventually("logged", || async { h.access_log().len() == 1 }).await;
    assert_eq!(h.access_log()[0]["consumer"], "mobile");
}

#[tokio::test]
async fn missing_or_wrong_keys_get_401_and_spoofed_identities_are_dropped() {
    let upstream = MockUpstream::fixed("ok").await;
    let h = Harness::start(&config(upstream.addr, ""));
    for headers in [
        vec![],
        vec![("authorization", "Bearer lvk_guess")],
        vec![("authorization", "Basic abc")],
    ] {
        let answer = get(&h.url("/orders"), &headers).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{headers:?}");
        assert_eq!(answer.json()["error"]["code"], "unauthorized");
        assert_eq!(answer.header("www-authenticate"), Some("Bearer"));
    }
    assert_eq!(upstream.hits(), 0);
    // On a route without auth a client cannot claim to be a consumer.
    get(&h.url("/open"), &[("x-consumer", "mobile")]).await;
    assert!(upstream.seen()[0].headers.get("x-consumer").is_none());
}

#[tokio::test]
async fn a_consumer_not_allowed_on_the_route_gets_403() {
    let upstream = MockUpstream::fixed("ok").await;
    let h = Harness::start(&config(upstream.addr, "    consumers: [partner]\n"));
    let answer = get(
        &h.url("/x"),
        &[("authorization", &format!("Bearer {MOBILE_KEY}"))],
    )
    .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(answer.json()["error"]["code"], "forbidden");
    let answer = get(
        &h.url("/x"),
        &[("authorization", &format!("Bearer {PARTNER_KEY}"))],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn keys_from_a_custom_header_and_forwarded_when_asked() {
    let upstream = MockUpstream::fixed("ok").await;
    let h = Harness::start(&config(
        upstream.addr,
        "    api_key_header: x-api-key\n    forward_credentials: true\n",
    ));
    let answer = get(&h.url("/x"), &[("x-api-key", MOBILE_KEY)]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(upstream.seen()[0].headers["x-api-key"], MOBILE_KEY);
    let bearer = get(
        &h.url("/x"),
        &[("authorization", &format!("Bearer {MOBILE_KEY}"))],
    )
    .await;
    assert_eq!(
        bearer.status,
        StatusCode::UNAUTHORIZED,
        "only the configured header counts"
    );
}

#[tokio::test]
async fn rate_limits_can_be_per_consumer() {
    let upstream = MockUpstream::fixed("ok").await;
    let h = Harness::start(&config(
        upstream.addr,
        "    rate_limit: { rate: 1/min, burst: 1, key: consumer }\n",
    ));
    let as_key = |key: &str| vec![("authorization".to_string(), format!("Bearer {key}"))];
    let send_as = |key: &str| {
        let headers = as_key(key);
        let url = h.url("/x");
        async move {
            let refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            get(&url, &refs).await.status
        }
    };
    assert_eq!(send_as(MOBILE_KEY).await, StatusCode::OK);
    assert_eq!(send_as(MOBILE_KEY).await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        send_as(PARTNER_KEY).await,
        StatusCode::OK,
        "each consumer has its own limit"
    );
}

#[tokio::test]
async fn the_admin_api_needs_the_token_when_one_is_set() {
    let upstream = MockUpstream::fixed("ok").await;
    std::env::set_var("LEVEE_TEST_ADMIN_TOKEN", "s3cret-token");
    let h = Harness::start(&format!(
        "admin:\n  bind: 127.0.0.1:0\n  token_env: LEVEE_TEST_ADMIN_TOKEN\n{}",
        config(upstream.addr, "")
    ));
    let api = format!("{}/api/v1/upstreams", h.admin);
    let refused = get(&api, &[]).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.json()["error"]["code"], "unauthorized");
    assert_eq!(
        get(&api, &[("authorization", "Bearer wrong")]).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&api, &[("authorization", "Bearer s3cret-token")])
            .await
            .status,
        StatusCode::OK
    );
    // Probes and metrics stay open for the orchestrator and Prometheus.
    assert_eq!(
        get(&format!("{}/healthz", h.admin), &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&format!("{}/metrics", h.admin), &[]).await.status,
        StatusCode::OK
    );
}

#[test]
fn credentials_are_checked_at_load() {
    let base = "listeners: [{ name: p, bind: 127.0.0.1:0 }]\nupstreams: { u: { targets: [127.0.0.1:9] } }\n";
    let err = |yaml: String| levee::load_str(&yaml, "t.yaml").unwrap_err().to_string();
    let plain = err(format!("{base}consumers: [{{ name: a, api_keys: [plain-key] }}]\nroutes: [{{ name: r, upstream: u, auth: api_key }}]\n"));
    assert!(
        plain.contains("must be given as `sha256:<64 hex digits>`"),
        "{plain}"
    );
    let none = err(format!(
        "{base}routes: [{{ name: r, upstream: u, auth: api_key }}]\n"
    ));
    assert!(none.contains("needs at least one consumer"), "{none}");
    let unknown = err(format!(
        "{base}consumers: [{{ name: a, api_keys: [\"{}\"] }}]\nroutes: [{{ name: r, upstream: u, auth: api_key, consumers: [b] }}]\n",
        digest_of("k")
    ));
    assert!(unknown.contains("unknown consumer `b`"), "{unknown}");
    let token = err(format!(
        "admin: {{ bind: 127.0.0.1:0, token_env: LEVEE_SURELY_UNSET_VAR }}\n{base}routes: []\n"
    ));
    assert!(token.contains("LEVEE_SURELY_UNSET_VAR"), "{token}");
}

#[test]
fn stale_answers_are_refused_on_authenticated_routes() {
    let err = levee::load_str(
        &format!(
            "listeners: [{{ name: p, bind: 127.0.0.1:0 }}]\nconsumers: [{{ name: a, api_keys: [\"{}\"] }}]\nupstreams: {{ u: {{ targets: [127.0.0.1:9] }} }}\nroutes: [{{ name: r, upstream: u, auth: api_key, stale_if_error: {{}} }}]\n",
            digest_of("k")
        ),
        "t.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("stale_if_error cannot be used on a route with auth"),
        "{err}"
    );
}

#[tokio::test]
async fn connection_listed_x_consumer_cannot_strip_the_identity() {
    let upstream = MockUpstream::fixed("ok").await;
    let h = Harness::start(&config(upstream.addr, ""));
    let answer = get(
        &h.url("/x"),
        &[
            ("authorization", &format!("Bearer {MOBILE_KEY}")),
            ("connection", "x-consumer"),
        ],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(upstream.seen()[0].headers["x-consumer"], "mobile");
}
