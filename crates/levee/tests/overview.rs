//! The dashboard's two endpoints over real sockets: `GET /api/v1/overview` after traffic
//! (some of it answered 500 by the upstream) counts what the gateway answered, per route and
//! in total, with plausible percentiles, the same SLOs and canaries as their own endpoints,
//! and gets a point of its series within a step; `GET /api/v1/whoami` names the caller.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::time::{Duration, Instant};

use common::{admin_call, Harness};
use http::StatusCode;
use levee_test_support::*;
use serde_json::{json, Value};

/// Requests sent to `users`, of them answered 500, and sent to `orders`.
const USERS: u64 = 30;
const USERS_FAILED: u64 = 10;
const ORDERS: u64 = 20;

/// Longer than a step of the series (5 s) with room for a slow machine.
const SERIES_DEADLINE: Duration = Duration::from_secs(30);

async fn overview(h: &Harness) -> Value {
    let answer = get(&format!("{}/api/v1/overview", h.admin), &[]).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    answer.json()
}

fn route<'a>(overview: &'a Value, name: &str) -> &'a Value {
    overview["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == name)
        .unwrap_or_else(|| panic!("no route {name} in {overview}"))
}

/// Sends [`USERS`] requests to `users`, the first [`USERS_FAILED`] answered 500, and
/// [`ORDERS`] to `orders`.
async fn send_traffic(h: &Harness) {
    let client = client(false);
    for i in 0..USERS {
        let path = if i < USERS_FAILED {
            "/users/fail"
        } else {
            "/users/1"
        };
        let answer = send(&client, http::Request::get(h.url(path)).body(empty()).unwrap()).await;
        let expected = if i < USERS_FAILED { 500 } else { 200 };
        assert_eq!(answer.status.as_u16(), expected, "{path}");
    }
    for _ in 0..ORDERS {
        let answer = send(
            &client,
            http::Request::get(h.url("/orders/1")).body(empty()).unwrap(),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK);
    }
}

/// Waits for a point of the series with traffic in it, and checks the series and the
/// routes' requests/s against the `sent` requests.
async fn series_gets_a_point(h: &Harness, sent: u64) {
    // Within a step (5 s) the series has a point with the traffic sent, and the routes a
    // window to measure requests/s over.
    let deadline = Instant::now() + SERIES_DEADLINE;
    let o = loop {
        let o = overview(h).await;
        let points = o["series"]["points"].as_array().unwrap();
        if points.iter().any(|p| p["rps"].as_f64().unwrap() > 0.0) {
            break o;
        }
        assert!(Instant::now() < deadline, "no point with traffic: {o}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let points = o["series"]["points"].as_array().unwrap();
    assert!(points.len() <= 180);
    let mut counted = 0.0;
    for p in points {
        counted += p["rps"].as_f64().unwrap() * 5.0;
        let rate = p["error_rate"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&rate), "{p}");
        if let (Some(p50), Some(p99)) = (p["p50_ms"].as_f64(), p["p99_ms"].as_f64()) {
            assert!(p50 > 0.0 && p50 <= p99, "{p}");
        }
    }
    // No more than was sent (the admin calls are not counted; the step may be a little
    // longer than 5 s, hence the margin).
    assert!(counted > 0.0 && counted <= sent as f64 * 1.05, "{counted}: {o}");
    assert!(route(&o, "users")["rps"].as_f64().unwrap() > 0.0, "{o}");
    assert!(route(&o, "orders")["rps"].as_f64().unwrap() > 0.0, "{o}");
    assert_eq!(route(&o, "idle")["rps"].as_f64(), Some(0.0), "{o}");
}

#[tokio::test]
async fn the_overview_counts_what_the_gateway_answered() {
    let upstream = MockUpstream::start(|seen| {
        if seen.uri.path().ends_with("/fail") {
            Reply::status(500)
        } else {
            Reply::ok("ok")
        }
    })
    .await;
    let h = Harness::start(&format!(
        r#"upstreams:
  u:
    targets: ["{addr}"]
    outlier_detection: {{ enabled: false }}
    circuit_breaker: {{ enabled: false }}
  v2:
    targets: ["{addr}"]
routes:
  - name: users
    match: {{ path_prefix: /users }}
    upstream: u
  - name: orders
    match: {{ path_prefix: /orders }}
    upstream: u
    canary: {{ upstream: v2, percent: 50 }}
  - name: idle
    match: {{ path_prefix: /idle }}
    upstream: u
slos:
  - {{ name: users-availability, route: users, objective: 99.9, sli: availability }}
"#,
        addr = upstream.addr
    ));
    // Once the admin listener answers, its thread has taken the series' first snapshot (the
    // sampler is spawned before the first accept), so the traffic falls in the first step.
    let health = get(&format!("{}/healthz", h.admin), &[]).await;
    assert_eq!(health.status, StatusCode::OK);
    send_traffic(&h).await;

    let o = overview(&h).await;
    let total = USERS + ORDERS;
    assert_eq!(o["totals"]["requests"], total, "{o}");
    assert_eq!(o["totals"]["errors"], USERS_FAILED, "{o}");
    let rate = o["totals"]["error_rate"].as_f64().unwrap();
    assert!((rate - USERS_FAILED as f64 / total as f64).abs() < 1e-9, "{o}");
    assert_eq!(o["config_version"], 1);
    assert_eq!(o["cluster_nodes"], Value::Null);
    assert_eq!(o["series"]["step_s"], 5);
    assert!(o["uptime_s"].as_f64().unwrap() > 0.0);
    assert!(o["now_ms"].as_u64().unwrap() > 1_700_000_000_000);
    // Configured routes in match order, each with its own counts.
    let names: Vec<&str> = o["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["route"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["users", "orders", "idle"], "{o}");
    for (name, requests, errors) in [("users", USERS, USERS_FAILED), ("orders", ORDERS, 0)] {
        let r = route(&o, name);
        assert_eq!(
            (r["requests"].as_u64(), r["errors"].as_u64()),
            (Some(requests), Some(errors)),
            "{r}"
        );
        let (p50, p99) = (r["p50_ms"].as_f64().unwrap(), r["p99_ms"].as_f64().unwrap());
        assert!(p50 > 0.0 && p50 <= p99 && p99 < 10_000.0, "{r}");
    }
    let idle = route(&o, "idle");
    assert_eq!(
        (idle["requests"].as_u64(), idle["p50_ms"].is_null()),
        (Some(0), true),
        "{idle}"
    );

    // The SLOs and canaries are those of their own endpoints.
    let slos = get(&format!("{}/api/v1/slos", h.admin), &[]).await.json();
    let slo = &slos["slos"][0];
    assert_eq!(
        o["slos"],
        json!([{
            "name": "users-availability",
            "budget_remaining": slo["error_budget"]["remaining"],
            "alerts_firing": slo["alerts_firing"].as_array().unwrap().iter().map(|a| a["severity"].clone()).collect::<Vec<_>>(),
        }])
    );
    assert_eq!(
        o["alerts_firing"],
        o["slos"][0]["alerts_firing"].as_array().unwrap().len()
    );
    assert_eq!(o["canaries"], json!([{"route": "orders", "state": "active"}]));

    series_gets_a_point(&h, USERS + ORDERS).await;

    // Without an admin token, the caller is an anonymous admin.
    let me = get(&format!("{}/api/v1/whoami", h.admin), &[]).await;
    assert_eq!(
        me.json(),
        json!({"id": "anonymous", "role": "admin", "team": null})
    );
    h.stop().await;
}

const ROOT: &str = "root-token-for-overview";

#[tokio::test]
async fn whoami_names_the_token_presented() {
    std::env::set_var("LEVEE_TEST_OVERVIEW_TOKEN", ROOT);
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(&format!(
        "data_dir: {}\nadmin: {{ bind: 127.0.0.1:0, token_env: LEVEE_TEST_OVERVIEW_TOKEN }}\n",
        dir.path().display()
    ));
    let whoami = |token: Option<String>| {
        let h = &h;
        async move { admin_call(h, "GET", "/api/v1/whoami", token.as_deref(), None).await }
    };
    let me = whoami(Some(ROOT.into())).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text());
    assert_eq!(
        me.json(),
        json!({"id": "bootstrap", "role": "admin", "team": null})
    );

    let made = admin_call(
        &h,
        "POST",
        "/api/v1/tokens",
        Some(ROOT),
        Some(json!({"role": "viewer"})),
    )
    .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.text());
    let made = made.json();
    let me = whoami(made["token"].as_str().map(str::to_owned)).await;
    assert_eq!(
        me.json(),
        json!({"id": made["id"], "role": "viewer", "team": null})
    );

    let team = admin_call(
        &h,
        "POST",
        "/api/v1/teams",
        Some(ROOT),
        Some(json!({"name": "alpha"})),
    )
    .await;
    assert_eq!(team.status, StatusCode::CREATED, "{}", team.text());
    let made = admin_call(
        &h,
        "POST",
        "/api/v1/tokens",
        Some(ROOT),
        Some(json!({"role": "team_admin", "team": "alpha"})),
    )
    .await
    .json();
    let team_admin = made["token"].as_str().map(str::to_owned);
    let me = whoami(team_admin.clone()).await;
    assert_eq!(
        me.json(),
        json!({"id": made["id"], "role": "team_admin", "team": "alpha"})
    );
    // A team admin may ask who it is, not read the overview.
    let refused = admin_call(&h, "GET", "/api/v1/overview", team_admin.as_deref(), None).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);

    assert_eq!(whoami(None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        whoami(Some("not-a-token".into())).await.status,
        StatusCode::UNAUTHORIZED
    );
    h.stop().await;
}
