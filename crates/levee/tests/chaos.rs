//! Fault injection on a route: aborts and delays by share or by header, counted and labelled.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::time::Duration;

use common::Harness;
use http::StatusCode;
use levee_test_support::*;

fn gateway(upstream: std::net::SocketAddr, fault: &str, extra: &str) -> Harness {
    Harness::start(&format!(
        "{extra}upstreams:\n  u:\n    targets: [\"{upstream}\"]\nroutes:\n  - name: flaky\n    upstream: u\n    fault: {fault}\n"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborts_follow_their_share_and_are_counted() {
    let upstream = MockUpstream::fixed("ok").await;
    let h = gateway(upstream.addr, "{ abort: { percent: 30, status: 503 } }", "");
    let client = client(false);
    let mut aborted = 0usize;
    for _ in 0..2000 {
        let answer = send(&client, http::Request::get(h.url("/")).body(empty()).unwrap()).await;
        if answer.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(answer.json()["error"]["code"], "fault_injected");
            aborted += 1;
        } else {
            assert_eq!(answer.status, StatusCode::OK);
        }
    }
    // 30% of 2000 is 600, with a standard deviation of about 20.5: 500..700 is ±4.9 of them.
    assert!((500..700).contains(&aborted), "{aborted} aborted");
    assert_eq!(
        upstream.hits(),
        2000 - aborted,
        "aborted requests never reach the upstream"
    );
    let metrics = get(&format!("{}/metrics", h.admin), &[]).await.text();
    let line = format!("levee_faults_injected_total{{route=\"flaky\",kind=\"abort\"}} {aborted}");
    assert!(metrics.contains(&line), "{line} in\n{metrics}");
}

#[tokio::test]
async fn the_header_asks_for_faults_only_where_allowed_and_logs_label_them() {
    let upstream = MockUpstream::fixed("ok").await;
    let dir = tempfile::tempdir().unwrap();
    let h = gateway(
        upstream.addr,
        "{ allow_header: true }",
        &format!("data_dir: \"{}\"\n", dir.path().display()),
    );
    let teapot = get(&h.url("/"), &[("x-levee-fault", "abort=418")]).await;
    assert_eq!(teapot.status.as_u16(), 418);
    let started = std::time::Instant::now();
    let slow = get(&h.url("/slow"), &[("x-levee-fault", "delay=150ms")]).await;
    assert_eq!(slow.status, StatusCode::OK);
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "the request was held"
    );
    assert!(
        upstream.seen()[0].headers.get("x-levee-fault").is_none(),
        "the fault header is not forwarded"
    );
    eventually("both lines logged", || {
        std::future::ready(h.access_log().len() == 2)
    })
    .await;
    let logs = h.access_log();
    assert!(
        logs.iter().any(|l| l["fault"] == "abort" && l["status"] == 418),
        "{logs:?}"
    );
    assert!(
        logs.iter().any(|l| l["fault"] == "delay" && l["path"] == "/slow"),
        "{logs:?}"
    );
    let calls = format!("{}/api/v1/calls", h.admin);
    eventually("calls stored", || async {
        get(&calls, &[]).await.json()["calls"]
            .as_array()
            .is_some_and(|c| c.len() == 2)
    })
    .await;
    let stored = get(&calls, &[]).await.json();
    assert!(stored["calls"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["fault"] == "delay"));

    // Where the header is not allowed it does nothing.
    let plain = MockUpstream::fixed("ok").await;
    let strict = gateway(plain.addr, "{ delay: { percent: 0, duration: 1s } }", "");
    let answer = get(&strict.url("/"), &[("x-levee-fault", "abort=503")]).await;
    assert_eq!(answer.status, StatusCode::OK);
}

/// A route `flaky` with a 99.9% availability SLO (`flaky-availability`) and no fault of its
/// own; the upstream's breaker and ejection are off so only injected faults fail.
fn experiment_gateway(upstream: std::net::SocketAddr, data_dir: Option<&std::path::Path>) -> Harness {
    let dir = data_dir
        .map(|d| format!("data_dir: \"{}\"\n", d.display()))
        .unwrap_or_default();
    Harness::start(&format!(
        "{dir}upstreams:\n  u:\n    targets: [\"{upstream}\"]\n    outlier_detection: {{ enabled: false }}\n    circuit_breaker: {{ enabled: false }}\nroutes:\n  - name: flaky\n    upstream: u\nslos:\n  - name: flaky-availability\n    route: flaky\n    objective: 99.9\n    sli: availability\n"
    ))
}

async fn post_experiment(h: &Harness, body: &str) -> Answer {
    send(
        &client(false),
        http::Request::post(format!("{}/api/v1/experiments", h.admin))
            .body(full(body.to_owned()))
            .unwrap(),
    )
    .await
}

async fn experiment(h: &Harness, id: &str) -> serde_json::Value {
    get(&format!("{}/api/v1/experiments/{id}", h.admin), &[])
        .await
        .json()
}

/// Sequential GETs; returns how many got 503.
async fn requests(h: &Harness, n: usize) -> usize {
    let client = client(false);
    let mut unavailable = 0;
    for _ in 0..n {
        let answer = send(&client, http::Request::get(h.url("/")).body(empty()).unwrap()).await;
        if answer.status == StatusCode::SERVICE_UNAVAILABLE {
            unavailable += 1;
        } else {
            assert_eq!(answer.status, StatusCode::OK);
        }
    }
    unavailable
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_experiment_aborts_itself_when_its_guard_trips_and_reports_what_clients_saw() {
    let upstream = MockUpstream::fixed("ok").await;
    let h = experiment_gateway(upstream.addr, None);
    // Some clean traffic first, so the budget starts untouched.
    assert_eq!(requests(&h, 100).await, 0);
    let started = post_experiment(
        &h,
        r#"{"name": "one in five fails", "route": "flaky", "fault": {"abort": {"percent": 20, "status": 503}}, "duration": "10m", "abort_if": {"slo": "flaky-availability", "burn_rate_above": 14.4}}"#,
    )
    .await;
    assert_eq!(started.status, StatusCode::CREATED, "{}", started.text());
    let id = started.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(started.json()["state"], "running");
    // Traffic until the guard (checked every second) ends it: a 20% error rate burns the
    // 0.1% budget 200 times too fast.
    let mut seen_503 = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while experiment(&h, &id).await["state"] == "running" {
        assert!(std::time::Instant::now() < deadline, "the guard never tripped");
        seen_503 += requests(&h, 50).await;
    }
    let view = experiment(&h, &id).await;
    assert_eq!(view["state"], "aborted", "{view}");
    assert!(
        view["reason"].as_str().unwrap().contains("guard tripped"),
        "{view}"
    );
    // Every 503 the clients saw was injected and is in the report (a request is counted
    // when its answer has gone out, so the last one may land a moment later).
    assert!(seen_503 > 0);
    let url = format!("{}/api/v1/experiments/{id}", h.admin);
    eventually("the report counts every injected 503", || async {
        get(&url, &[]).await.json()["report"]["aborted"] == seen_503
    })
    .await;
    let view = experiment(&h, &id).await;
    let report = &view["report"];
    assert_eq!(report["affected"], seen_503);
    assert_eq!(report["aborted"], seen_503, "{view}");
    assert_eq!(report["errors"], seen_503, "{view}");
    assert_eq!(report["delayed"], 0);
    assert!(report["requests"].as_u64().unwrap() >= seen_503 as u64);
    let budget = &report["budget"];
    assert_eq!(budget["slo"], "flaky-availability");
    assert_eq!(budget["remaining_at_start"], 1.0);
    assert!(budget["spent"].as_f64().unwrap() > 0.0, "{view}");
    assert!(budget["burn_rate"].as_f64().unwrap() > 14.4, "{view}");
    // The SLO counted the injected failures, marked as injected (as of its next evaluation,
    // once a second).
    let slos_url = format!("{}/api/v1/slos", h.admin);
    eventually("the SLO counts every injected failure", || async {
        let events = get(&slos_url, &[]).await.json()["slos"][0]["events"].clone();
        events["injected_bad"] == seen_503 && events["bad"] == seen_503
    })
    .await;
    // Normal traffic again.
    assert_eq!(requests(&h, 200).await, 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_experiment_ends_at_its_duration_or_on_delete() {
    let upstream = MockUpstream::fixed("ok").await;
    let h = experiment_gateway(upstream.addr, None);
    let started = post_experiment(
        &h,
        r#"{"name": "short", "route": "flaky", "fault": {"abort": {"percent": 100, "status": 503}}, "duration": "3s"}"#,
    )
    .await;
    assert_eq!(started.status, StatusCode::CREATED);
    let id = started.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(requests(&h, 5).await, 5, "every request fails while it runs");
    // One experiment per route at a time; bad requests are refused with a reason.
    let second = post_experiment(
        &h,
        r#"{"name": "again", "route": "flaky", "fault": {"delay": {"percent": 10, "duration": "10ms"}}, "duration": "1m"}"#,
    )
    .await;
    assert_eq!(second.status, StatusCode::CONFLICT);
    let unknown = post_experiment(
        &h,
        r#"{"name": "x", "route": "nope", "fault": {"abort": {"percent": 1, "status": 503}}, "duration": "1m"}"#,
    )
    .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert!(unknown.text().contains("no route named `nope`"));
    let bad = post_experiment(
        &h,
        r#"{"name": "x", "route": "flaky", "fault": {"abort": {"percent": 120, "status": 200}}, "duration": "1m"}"#,
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let message = bad.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("`fault.abort.percent`: percent must be from 0 to 100")
            && message.contains("`fault.abort.status`: status must be from 400 to 599"),
        "{message}"
    );
    let url = format!("{}/api/v1/experiments/{id}", h.admin);
    eventually("the experiment completes", || async {
        get(&url, &[]).await.json()["state"] == "completed"
    })
    .await;
    assert_eq!(requests(&h, 20).await, 0, "normal traffic after it ends");
    assert_eq!(experiment(&h, &id).await["report"]["aborted"], 5);

    // DELETE stops a running one at once.
    let started = post_experiment(
        &h,
        r#"{"name": "long", "route": "flaky", "fault": {"abort": {"percent": 100, "status": 500}}, "duration": "1h"}"#,
    )
    .await;
    let id = started.json()["id"].as_str().unwrap().to_owned();
    let stopped = send(
        &client(false),
        http::Request::delete(format!("{}/api/v1/experiments/{id}", h.admin))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(stopped.status, StatusCode::OK);
    assert_eq!(stopped.json()["state"], "aborted");
    assert_eq!(requests(&h, 20).await, 0);
    let list = get(&format!("{}/api/v1/experiments", h.admin), &[]).await.json();
    assert_eq!(list["experiments"].as_array().unwrap().len(), 2);
    assert_eq!(list["experiments"][0]["id"], id.as_str(), "newest first");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_experiment_restores_normal_traffic() {
    let upstream = MockUpstream::fixed("ok").await;
    let dir = tempfile::tempdir().unwrap();
    let h = experiment_gateway(upstream.addr, Some(dir.path()));
    let started = post_experiment(
        &h,
        r#"{"name": "outage drill", "route": "flaky", "fault": {"abort": {"percent": 100, "status": 503}}, "duration": "1h"}"#,
    )
    .await;
    let id = started.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(requests(&h, 3).await, 3);
    let running = experiment(&h, &id).await;
    h.stop().await;

    // A clean stop ends it.
    let h = experiment_gateway(upstream.addr, Some(dir.path()));
    let view = experiment(&h, &id).await;
    assert_eq!(view["state"], "aborted");
    assert!(view["reason"].as_str().unwrap().contains("stopped"), "{view}");
    assert_eq!(view["report"]["aborted"], 3, "the report survives");
    assert_eq!(requests(&h, 10).await, 0);
    h.stop().await;

    // A crash (the saved record still says running) is not resumed either.
    let mut store = levee::slo::store::Store::open(dir.path()).unwrap();
    store
        .save_experiment(&id, running["started_ms"].as_u64().unwrap(), &running.to_string())
        .unwrap();
    drop(store);
    let h = experiment_gateway(upstream.addr, Some(dir.path()));
    let view = experiment(&h, &id).await;
    assert_eq!(view["state"], "aborted");
    assert!(view["reason"].as_str().unwrap().contains("restarted"), "{view}");
    assert_eq!(requests(&h, 10).await, 0, "no fault after the restart");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delays_follow_their_share() {
    let upstream = MockUpstream::fixed("ok").await;
    let h = gateway(upstream.addr, "{ delay: { percent: 25, duration: 1ms } }", "");
    let client = client(false);
    for _ in 0..2000 {
        let answer = send(&client, http::Request::get(h.url("/")).body(empty()).unwrap()).await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    let metrics = get(&format!("{}/metrics", h.admin), &[]).await.text();
    let delayed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("levee_faults_injected_total{route=\"flaky\",kind=\"delay\"} "))
        .unwrap()
        .parse()
        .unwrap();
    // 25% of 2000 is 500, with a standard deviation of about 19.4: 400..600 is ±5.2 of them.
    assert!((400..600).contains(&delayed), "{delayed} delayed");
}
