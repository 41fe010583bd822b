//! Canary releases: a share of a route's requests to another upstream, rolled back
//! automatically when that share burns the route's SLO budget, and kept rolled back across a
//! restart until the canary's config changes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::Harness;
use http::StatusCode;
use levee_test_support::*;

/// Route `users` on `stable` with a canary on `v2` (`percent`), judged by a 99.9%
/// availability SLO; v2's breaker and ejection are off so its failures reach the SLO.
fn canary_config(
    stable: std::net::SocketAddr,
    v2: std::net::SocketAddr,
    percent: u32,
    extra: &str,
) -> String {
    format!(
        "upstreams:
  stable:
    targets: [\"{stable}\"]
  v2:
    targets: [\"{v2}\"]
    outlier_detection: {{ enabled: false }}
    circuit_breaker: {{ enabled: false }}
routes:
  - name: users
    upstream: stable
    canary:
      upstream: v2
      percent: {percent}
      rollback_if: {{ slo: users-availability, burn_rate_above: 14.4, window: 5m, min_requests: 10 }}
slos:
  - {{ name: users-availability, route: users, objective: 99.9, sli: availability }}
{extra}"
    )
}

async fn canary_state(h: &Harness) -> serde_json::Value {
    get(&format!("{}/api/v1/canaries", h.admin), &[]).await.json()["canaries"][0].clone()
}

/// Sequential GETs; returns how many were not 200.
async fn requests(h: &Harness, n: usize) -> usize {
    let client = client(false);
    let mut failed = 0;
    for _ in 0..n {
        let answer = send(&client, http::Request::get(h.url("/")).body(empty()).unwrap()).await;
        failed += usize::from(answer.status != StatusCode::OK);
    }
    failed
}

/// Sends traffic until the canary is rolled back (or the deadline passes).
async fn until_rolled_back(h: &Harness) -> serde_json::Value {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let state = canary_state(h).await;
        if state["state"] == "rolled_back" {
            return state;
        }
        assert!(std::time::Instant::now() < deadline, "never rolled back: {state}");
        requests(h, 20).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_rolled_back_and_the_receivers_are_told() {
    let stable = MockUpstream::fixed("stable").await;
    let v2 = MockUpstream::start(|_| Reply::status(503)).await;
    let receiver = MockUpstream::start(|_| Reply::ok("")).await;
    let h = Harness::start(&canary_config(
        stable.addr,
        v2.addr,
        30,
        &format!(
            "alerting:\n  evaluation_interval: 1s\n  webhooks: [ {{ url: \"http://{}/hook\" }} ]\n",
            receiver.addr
        ),
    ));
    assert_eq!(canary_state(&h).await["state"], "active");
    let state = until_rolled_back(&h).await;
    assert!(
        state["reason"].as_str().unwrap().contains("above 14.4"),
        "{state}"
    );
    assert_eq!(state["slo"], "users-availability-canary");
    assert!(state["requests"].as_u64().unwrap() >= 10);
    assert_eq!(state["requests"], state["bad"], "every canary request failed");

    // From now on every request goes to the stable upstream.
    let canary_hits = v2.hits();
    assert_eq!(requests(&h, 200).await, 0);
    assert_eq!(v2.hits(), canary_hits);

    let metrics = get(&format!("{}/metrics", h.admin), &[]).await.text();
    assert!(
        metrics.contains("levee_canary_rolled_back{route=\"users\"} 1"),
        "{metrics}"
    );
    common::promtool_accepts(&metrics);
    eventually("the rollback alert at the webhook", || async {
        receiver.seen().iter().any(|s| {
            let body: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
            body["status"] == "firing"
                && body["alerts"][0]["labels"]["alertname"] == "LeveeCanaryRolledBack"
                && body["alerts"][0]["labels"]["route"] == "users"
        })
    })
    .await;
    // The canary's own SLO raises no burn-rate alert of its own: the rollback answered it.
    // (The route's SLO, which counted the same failures, pages: once its page is in, an
    // alert for the canary's SLO would have been sent too.)
    eventually("the route's own page", || async {
        receiver.seen().iter().any(|s| {
            let body: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
            body["alerts"][0]["labels"]["slo"] == "users-availability"
                && body["alerts"][0]["labels"]["severity"] == "page"
        })
    })
    .await;
    let hooks: Vec<serde_json::Value> = receiver
        .seen()
        .iter()
        .map(|s| serde_json::from_slice(&s.body).unwrap())
        .collect();
    assert!(!hooks
        .iter()
        .any(|b| b["alerts"][0]["labels"]["slo"] == "users-availability-canary"
            && b["alerts"][0]["labels"]["alertname"] == "LeveeSLOErrorBudgetBurn"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_takes_its_share_and_stays() {
    let stable = MockUpstream::fixed("stable").await;
    let v2 = MockUpstream::fixed("v2").await;
    let h = Harness::start(&canary_config(stable.addr, v2.addr, 25, ""));
    assert_eq!(requests(&h, 2000).await, 0);
    // 25% of 2000 is 500, with a standard deviation of about 19.4: 400..600 is ±5.2 of them.
    assert!((400..600).contains(&v2.hits()), "{} to the canary", v2.hits());
    assert_eq!(stable.hits() + v2.hits(), 2000);
    let slos_url = format!("{}/api/v1/slos", h.admin);
    eventually("the canary's SLO counts its requests", || async {
        let slos = get(&slos_url, &[]).await.json();
        slos["slos"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "users-availability-canary" && s["events"]["total"] == v2.hits() as u64)
    })
    .await;
    assert_eq!(canary_state(&h).await["state"], "active");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_survives_a_restart_until_the_canary_changes() {
    let stable = MockUpstream::fixed("stable").await;
    let v2 = MockUpstream::start(|_| Reply::status(503)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("levee.yaml");
    let data_dir = format!("data_dir: \"{}\"\n", dir.path().display());
    let h = Harness::start_file(&path, &canary_config(stable.addr, v2.addr, 50, &data_dir));
    until_rolled_back(&h).await;
    h.stop().await;

    // The same config again: rolled back from the first request.
    let h = Harness::start_file(&path, &canary_config(stable.addr, v2.addr, 50, &data_dir));
    let state = canary_state(&h).await;
    assert_eq!(state["state"], "rolled_back", "{state}");
    let canary_hits = v2.hits();
    assert_eq!(requests(&h, 100).await, 0);
    assert_eq!(v2.hits(), canary_hits);

    // A new canary block (another share) is a new release: it gets traffic again.
    common::write_atomically(
        &path,
        &Harness::compose(&canary_config(stable.addr, v2.addr, 20, &data_dir)),
    );
    let reloaded = common::reload(&h).await;
    assert_eq!(reloaded.status, StatusCode::OK);
    assert_eq!(canary_state(&h).await["state"], "active");
    requests(&h, 100).await;
    assert!(v2.hits() > canary_hits, "the new canary takes requests");
    h.stop().await;
}
