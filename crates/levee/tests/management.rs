//! The management plane over real sockets: keys made, limited, rotated, expired and revoked
//! through the admin API and obeyed by the data plane within a second; budgets per key and
//! team on the AI gateway; everything surviving a restart; subscriptions to published
//! services; the audit log.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::time::{Duration, Instant};

use common::Harness;
use http::StatusCode;
use levee_test_support::*;
use serde_json::{json, Value};

const ROOT: &str = "root-token-for-tests";
const COMPLETION: &str = include_str!("fixtures/openai/chat_completion.json");

/// A gateway with a management store in `dir`, the bootstrap token [`ROOT`], an upstream
/// route `/api`, a second route `/other`, an AI route `/v1` (each call costs $2.90) and a
/// published service `orders` (team `alpha`, manual approval).
fn gateway(dir: &std::path::Path, upstream: std::net::SocketAddr, provider: std::net::SocketAddr) -> Harness {
    std::env::set_var("LEVEE_TEST_MGMT_TOKEN", ROOT);
    std::env::set_var("LEVEE_TEST_OPENAI_KEY", "sk-test-123");
    Harness::start(&format!(
        r#"data_dir: {dir}
admin: {{ bind: 127.0.0.1:0, token_env: LEVEE_TEST_MGMT_TOKEN }}
consumers:
  - name: from-config
    api_keys: ["{config_key}"]
llm:
  providers:
    p0: {{ kind: openai, base_url: "http://{provider}/v1", api_key_env: LEVEE_TEST_OPENAI_KEY }}
  models:
    - {{ name: smart, targets: [{{ provider: p0, model: gpt-4o }}] }}
    - {{ name: other-model, targets: [{{ provider: p0, model: gpt-4o }}] }}
  pricing:
    gpt-4o: {{ input: 100000, output: 100000 }}
upstreams:
  u:
    targets: ["{upstream}"]
routes:
  - name: api
    match: {{ path_prefix: /api }}
    upstream: u
    auth: api_key
  - name: other
    match: {{ path_prefix: /other }}
    upstream: u
    auth: api_key
  - name: ai
    match: {{ path_prefix: /v1 }}
    llm: true
    auth: api_key
  - name: orders
    match: {{ path_prefix: /orders }}
    upstream: u
    auth: api_key
    publish: {{ service: orders, team: alpha, description: "Orders", approval: manual }}
"#,
        dir = dir.display(),
        config_key = levee::auth::digest_of("config-key"),
    ))
}

async fn provider() -> MockUpstream {
    MockUpstream::start(|_| Reply::ok(COMPLETION).header("content-type", "application/json")).await
}

async fn admin(h: &Harness, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Answer {
    common::admin_call(h, method, path, token, body).await
}

/// `admin` as the bootstrap admin, expecting `status`.
async fn root(h: &Harness, method: &str, path: &str, body: Option<Value>, status: u16) -> Value {
    let answer = admin(h, method, path, Some(ROOT), body).await;
    assert_eq!(
        answer.status.as_u16(),
        status,
        "{method} {path}: {}",
        answer.text()
    );
    answer.json()
}

async fn call_with(h: &Harness, path: &str, key: &str) -> Answer {
    get(&h.url(path), &[("authorization", &format!("Bearer {key}"))]).await
}

async fn chat(h: &Harness, key: &str, model: &str) -> Answer {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "Hi"}]});
    send(
        &client(false),
        http::Request::post(h.url("/v1/chat/completions"))
            .header("authorization", format!("Bearer {key}"))
            .body(full(body.to_string()))
            .unwrap(),
    )
    .await
}

/// Polls until `path` answers `status` with `key`, and says how long it took.
async fn within_a_second(h: &Harness, path: &str, key: &str, status: u16) -> Duration {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < Duration::from_secs(1) {
        let answer = call_with(h, path, key).await;
        if answer.status.as_u16() == status {
            return started.elapsed();
        }
        last = format!("{} {}", answer.status, answer.text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{path} did not answer {status} within a second; last: {last}");
}

fn code(answer: &Answer) -> String {
    let body: Value = serde_json::from_slice(&answer.body).unwrap_or_default();
    body["error"]["code"].as_str().unwrap_or("").to_owned()
}

/// A team `team`, a consumer `consumer` in it, and a key for it with `extra` fields: the
/// key's secret and id.
async fn key_for(h: &Harness, team: &str, consumer: &str, extra: Value) -> (String, String) {
    if admin(h, "GET", &format!("/api/v1/teams/{team}"), Some(ROOT), None)
        .await
        .status
        == StatusCode::NOT_FOUND
    {
        root(h, "POST", "/api/v1/teams", Some(json!({"name": team})), 201).await;
    }
    if admin(
        h,
        "GET",
        &format!("/api/v1/consumers/{consumer}"),
        Some(ROOT),
        None,
    )
    .await
    .status
        == StatusCode::NOT_FOUND
    {
        root(
            h,
            "POST",
            "/api/v1/consumers",
            Some(json!({"name": consumer, "team": team})),
            201,
        )
        .await;
    }
    let mut body = json!({"consumer": consumer});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let made = root(h, "POST", "/api/v1/keys", Some(body), 201).await;
    (
        made["key"].as_str().unwrap().to_owned(),
        made["id"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn a_key_works_at_once_and_stops_within_a_second_when_revoked_expired_or_rotated() {
    let (upstream, openai) = (MockUpstream::fixed("ok").await, provider().await);
    let dir = tempfile::tempdir().unwrap();
    let h = gateway(dir.path(), upstream.addr, openai.addr);

    let (secret, id) = key_for(&h, "alpha", "alpha-app", json!({"name": "ci"})).await;
    assert!(secret.starts_with("lv_") && secret.len() == 67, "{secret}");
    within_a_second(&h, "/api/x", &secret, 200).await;
    assert_eq!(upstream.seen().last().unwrap().headers["x-consumer"], "alpha-app");
    // Shown once: afterwards only its prefix.
    let shown = root(&h, "GET", &format!("/api/v1/keys/{id}"), None, 200).await;
    assert_eq!(shown["key"], Value::Null);
    assert_eq!(shown["prefix"].as_str().unwrap(), format!("{}...", &secret[..8]));
    assert!(!shown.to_string().contains(&secret));

    root(&h, "DELETE", &format!("/api/v1/keys/{id}"), None, 200).await;
    within_a_second(&h, "/api/x", &secret, 401).await;
    assert_eq!(code(&call_with(&h, "/api/x", &secret).await), "key_revoked");

    // Expired: an expiry in the past.
    let (expiring, id) = key_for(&h, "alpha", "alpha-app", json!({})).await;
    within_a_second(&h, "/api/x", &expiring, 200).await;
    root(
        &h,
        "PATCH",
        &format!("/api/v1/keys/{id}"),
        Some(json!({"expires_at": "2020-01-01T00:00:00Z"})),
        200,
    )
    .await;
    within_a_second(&h, "/api/x", &expiring, 401).await;
    assert_eq!(code(&call_with(&h, "/api/x", &expiring).await), "key_expired");

    // Rotated: the old key works through its grace period, then expires; the new one works.
    let (old, id) = key_for(&h, "alpha", "alpha-app", json!({"allowed_routes": ["api"]})).await;
    let rotated = root(
        &h,
        "POST",
        &format!("/api/v1/keys/{id}/rotate"),
        Some(json!({"grace": "1s"})),
        201,
    )
    .await;
    let new = rotated["key"].as_str().unwrap().to_owned();
    assert_eq!(
        rotated["allowed_routes"],
        json!(["api"]),
        "the new key keeps the old one's limits"
    );
    within_a_second(&h, "/api/x", &new, 200).await;
    assert_eq!(
        call_with(&h, "/api/x", &old).await.status,
        StatusCode::OK,
        "within the grace period"
    );
    eventually("the old key expires after its grace period", || async {
        code(&call_with(&h, "/api/x", &old).await) == "key_expired"
    })
    .await;

    // Allowed routes: elsewhere 403.
    let elsewhere = call_with(&h, "/other/x", &new).await;
    assert_eq!(
        (elsewhere.status, code(&elsewhere).as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );

    // A key's own rate limit: 2 a minute, the third is 429 with Retry-After.
    let (limited, _) = key_for(&h, "alpha", "alpha-app", json!({"rate_limit": {"rate": "2/min"}})).await;
    for _ in 0..2 {
        assert_eq!(call_with(&h, "/api/x", &limited).await.status, StatusCode::OK);
    }
    let refused = call_with(&h, "/api/x", &limited).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.header("retry-after").is_some());
    // What the gateway sets is refused in a request.
    let forged = admin(
        &h,
        "POST",
        "/api/v1/keys",
        Some(ROOT),
        Some(json!({"consumer": "alpha-app", "source": "config"})),
    )
    .await;
    assert_eq!(
        (forged.status.as_u16(), code(&forged).as_str()),
        (400, "bad_request")
    );
    // An unknown key is still plain 401.
    assert_eq!(code(&call_with(&h, "/api/x", "lv_nothing").await), "unauthorized");
    h.stop().await;
}

#[tokio::test]
async fn budgets_and_minute_limits_of_keys_and_teams_hold_and_survive_a_restart() {
    let (upstream, openai) = (MockUpstream::fixed("ok").await, provider().await);
    let dir = tempfile::tempdir().unwrap();
    let h = gateway(dir.path(), upstream.addr, openai.addr);
    // Each call costs $2.90: a $1 budget allows one.
    let (budgeted, budgeted_id) = key_for(
        &h,
        "alpha",
        "alpha-app",
        json!({"budget": {"usd": 1, "per": "1h"}}),
    )
    .await;
    let (per_minute, _) = key_for(
        &h,
        "alpha",
        "alpha-app",
        json!({"requests_per_minute": 1, "allowed_models": ["smart"]}),
    )
    .await;
    root(
        &h,
        "POST",
        "/api/v1/teams",
        Some(json!({"name": "capped", "budget": {"usd": 1, "per": "1h"}})),
        201,
    )
    .await;
    let (team_a, _) = key_for(&h, "capped", "capped-app", json!({})).await;
    let (team_b, _) = key_for(&h, "capped", "capped-app", json!({})).await;

    assert_eq!(chat(&h, &budgeted, "smart").await.status, StatusCode::OK);
    let spent = chat(&h, &budgeted, "smart").await;
    assert_eq!(
        (spent.status.as_u16(), code(&spent).as_str()),
        (429, "insufficient_quota")
    );

    let forbidden_model = chat(&h, &per_minute, "other-model").await;
    assert_eq!(
        (forbidden_model.status.as_u16(), code(&forbidden_model).as_str()),
        (403, "model_not_allowed")
    );
    assert_eq!(chat(&h, &per_minute, "smart").await.status, StatusCode::OK);
    let limited = chat(&h, &per_minute, "smart").await;
    assert_eq!(
        (limited.status.as_u16(), code(&limited).as_str()),
        (429, "rate_limit_exceeded")
    );

    // The team's budget caps the sum of its keys: one key spends it, the other is refused.
    assert_eq!(chat(&h, &team_a, "smart").await.status, StatusCode::OK);
    let team_spent = chat(&h, &team_b, "smart").await;
    assert_eq!(
        (team_spent.status.as_u16(), code(&team_spent).as_str()),
        (429, "insufficient_quota")
    );
    let provider_calls = openai.hits();
    assert_eq!(provider_calls, 3, "refused calls never reach the provider");

    // Usage is written to the store within a second or so, per key and per team.
    eventually("the key's spend is queryable", || async {
        let key = admin(
            &h,
            "GET",
            &format!("/api/v1/keys/{budgeted_id}"),
            Some(ROOT),
            None,
        )
        .await
        .json();
        key["usage"]["cost_usd"].as_f64().unwrap_or(0.0) > 2.8
    })
    .await;
    let teams = root(&h, "GET", "/api/v1/usage?group_by=team", None, 200).await;
    let capped = teams["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == "capped")
        .cloned()
        .unwrap();
    assert!(capped["cost_usd"].as_f64().unwrap() > 2.8, "{capped}");
    h.stop().await;

    // After a restart: keys still work, and spent budgets stay spent.
    let h = gateway(dir.path(), upstream.addr, openai.addr);
    assert_eq!(call_with(&h, "/api/x", &budgeted).await.status, StatusCode::OK);
    let still_spent = chat(&h, &budgeted, "smart").await;
    assert_eq!(
        (still_spent.status.as_u16(), code(&still_spent).as_str()),
        (429, "insufficient_quota")
    );
    let team_still_spent = chat(&h, &team_b, "smart").await;
    assert_eq!(
        team_still_spent.status.as_u16(),
        429,
        "{}",
        team_still_spent.text()
    );
    assert_eq!(openai.hits(), provider_calls);
    h.stop().await;
}

#[tokio::test]
async fn a_published_service_needs_an_approved_subscription() {
    let (upstream, openai) = (MockUpstream::fixed("ok").await, provider().await);
    let dir = tempfile::tempdir().unwrap();
    let h = gateway(dir.path(), upstream.addr, openai.addr);
    root(&h, "POST", "/api/v1/teams", Some(json!({"name": "alpha"})), 201).await;
    let (key, _) = key_for(&h, "beta", "beta-app", json!({})).await;
    let beta_admin = root(
        &h,
        "POST",
        "/api/v1/tokens",
        Some(json!({"role": "team_admin", "team": "beta"})),
        201,
    )
    .await;
    let alpha_admin = root(
        &h,
        "POST",
        "/api/v1/tokens",
        Some(json!({"role": "team_admin", "team": "alpha"})),
        201,
    )
    .await;
    let (beta_admin, alpha_admin) = (
        beta_admin["token"].as_str().unwrap(),
        alpha_admin["token"].as_str().unwrap(),
    );

    let catalog = root(&h, "GET", "/api/v1/catalog", None, 200).await;
    assert_eq!(catalog["services"][0]["service"], "orders");
    assert_eq!(catalog["services"][0]["approval"], "manual");

    let refused = call_with(&h, "/orders/1", &key).await;
    assert_eq!(
        (refused.status.as_u16(), code(&refused).as_str()),
        (403, "subscription_required")
    );

    // The consumer's team asks; the service's team approves (the asking team may not).
    let asked = admin(
        &h,
        "POST",
        "/api/v1/subscriptions",
        Some(beta_admin),
        Some(json!({"consumer": "beta-app", "service": "orders"})),
    )
    .await;
    assert_eq!(asked.status, StatusCode::CREATED, "{}", asked.text());
    let id = asked.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(asked.json()["state"], "pending");
    let approve = format!("/api/v1/subscriptions/{id}/approve");
    assert_eq!(
        admin(&h, "POST", &approve, Some(beta_admin), None).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        code(&call_with(&h, "/orders/1", &key).await),
        "subscription_required"
    );
    let approved = admin(&h, "POST", &approve, Some(alpha_admin), None).await;
    assert_eq!(
        (approved.status, approved.json()["state"].as_str()),
        (StatusCode::OK, Some("approved"))
    );
    within_a_second(&h, "/orders/1", &key, 200).await;

    // Rejecting takes the access back.
    let reject = format!("/api/v1/subscriptions/{id}/reject");
    let rejected = admin(
        &h,
        "POST",
        &reject,
        Some(alpha_admin),
        Some(json!({"reason": "contract ended"})),
    )
    .await;
    assert_eq!(rejected.json()["state"], "rejected");
    within_a_second(&h, "/orders/1", &key, 403).await;

    // A fresh request, rejected outright.
    let again = admin(
        &h,
        "POST",
        "/api/v1/subscriptions",
        Some(beta_admin),
        Some(json!({"consumer": "beta-app", "service": "orders"})),
    )
    .await;
    let again_id = again.json()["id"].as_str().unwrap().to_owned();
    let no = admin(
        &h,
        "POST",
        &format!("/api/v1/subscriptions/{again_id}/reject"),
        Some(alpha_admin),
        None,
    )
    .await;
    assert_eq!(no.json()["state"], "rejected");
    assert_eq!(
        code(&call_with(&h, "/orders/1", &key).await),
        "subscription_required"
    );
    h.stop().await;
}

#[tokio::test]
async fn every_change_is_audited_without_secrets_and_config_objects_are_read_only() {
    let (upstream, openai) = (MockUpstream::fixed("ok").await, provider().await);
    let dir = tempfile::tempdir().unwrap();
    let h = gateway(dir.path(), upstream.addr, openai.addr);
    let (secret, id) = key_for(&h, "alpha", "alpha-app", json!({"name": "first"})).await;
    root(
        &h,
        "PATCH",
        &format!("/api/v1/keys/{id}"),
        Some(json!({"name": "second"})),
        200,
    )
    .await;
    let rotated = root(&h, "POST", &format!("/api/v1/keys/{id}/rotate"), None, 201).await;
    let new_secret = rotated["key"].as_str().unwrap().to_owned();
    root(
        &h,
        "DELETE",
        &format!("/api/v1/keys/{}", rotated["id"].as_str().unwrap()),
        None,
        200,
    )
    .await;
    let token = root(
        &h,
        "POST",
        "/api/v1/tokens",
        Some(json!({"role": "viewer", "name": "dash"})),
        201,
    )
    .await;
    let token_secret = token["token"].as_str().unwrap().to_owned();

    let audit = root(&h, "GET", "/api/v1/audit?limit=100", None, 200).await;
    let entries = audit["entries"].as_array().unwrap();
    let actions: Vec<&str> = entries.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        [
            "token.create",
            "key.revoke",
            "key.rotate",
            "key.update",
            "key.create",
            "consumer.create",
            "team.create"
        ]
    );
    for entry in entries {
        assert_eq!(
            (entry["actor"].as_str(), entry["role"].as_str()),
            (Some("bootstrap"), Some("admin"))
        );
        assert!(entry["time"].as_str().unwrap().ends_with('Z'));
    }
    let update = &entries[3];
    assert_eq!(
        (
            update["before"]["name"].as_str(),
            update["after"]["name"].as_str()
        ),
        (Some("first"), Some("second"))
    );
    let text = audit.to_string();
    for secret in [&secret, &new_secret, &token_secret] {
        assert!(!text.contains(secret.as_str()), "a secret is in the audit log");
    }
    assert!(!text.contains("sha256:"), "no digest either");
    let keys_only = root(&h, "GET", &format!("/api/v1/audit?object_id={id}"), None, 200).await;
    assert_eq!(keys_only["entries"].as_array().unwrap().len(), 3);

    // The config's consumer and key are listed as such and cannot be changed here.
    let consumers = root(&h, "GET", "/api/v1/consumers", None, 200).await;
    let from_config = consumers["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "from-config")
        .cloned()
        .unwrap();
    assert_eq!(from_config["source"], "config");
    let keys = root(&h, "GET", "/api/v1/keys?consumer=from-config", None, 200).await;
    assert_eq!(keys["keys"][0]["source"], "config");
    let patch = admin(
        &h,
        "PATCH",
        "/api/v1/consumers/from-config",
        Some(ROOT),
        Some(json!({"description": "x"})),
    )
    .await;
    assert_eq!((patch.status.as_u16(), code(&patch).as_str()), (409, "read_only"));
    assert_eq!(call_with(&h, "/api/x", "config-key").await.status, StatusCode::OK);

    // The management plane's gauges, in an exposition promtool accepts.
    let metrics = get(&format!("{}/metrics", h.admin), &[]).await.text();
    assert!(metrics.contains("\nlevee_management_keys{} 2\n"), "{metrics}");
    assert!(metrics.contains("\nlevee_management_store_up{} 1\n"));
    common::promtool_accepts(&metrics);
    h.stop().await;
}
