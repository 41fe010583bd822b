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
