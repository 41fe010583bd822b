//! Route rate limits over real sockets: 429s with the contract's headers, and accuracy.
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

fn config(upstream: std::net::SocketAddr, rate_limit: &str) -> String {
    format!(
        "upstreams:\n  u:\n    targets: [\"{upstream}\"]\nroutes:\n  - name: api\n    upstream: u\n    rate_limit: {rate_limit}\n"
    )
}

#[tokio::test]
async fn over_the_limit_answers_429_with_retry_after_and_ratelimit_headers() {
    let upstream = MockUpstream::fixed("ok").await;
    let h = Harness::start(&config(
        upstream.addr,
        "{ rate: 1/min, burst: 2, key: \"header:x-user\" }",
    ));
    let alice = [("x-user", "alice")];
    for remaining in ["1", "0"] {
        let answer = get(&h.url("/"), &alice).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.header("ratelimit-limit"), Some("2"));
        assert_eq!(answer.header("ratelimit-remaining"), Some(remaining));
        assert!(answer.header("ratelimit-reset").unwrap().parse::<u64>().unwrap() <= 120);
    }
    let refused = get(&h.url("/"), &alice).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.json()["error"]["code"], "rate_limited");
    let retry_after: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "retry-after {retry_after}");
    assert_eq!(refused.header("ratelimit-remaining"), Some("0"));
    assert_eq!(upstream.hits(), 2, "refused requests never reach the upstream");
    // Another key has its own allowance.
    assert_eq!(
        get(&h.url("/"), &[("x-user", "bob")]).await.status,
        StatusCode::OK
    );
    let metrics = get(&format!("{}/metrics", h.admin), &[]).await.text();
    assert!(
        metrics.contains("levee_rate_limited_total{route=\"api\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn accepted_requests_track_rate_times_time_plus_burst_at_three_times_the_rate() {
    let upstream = MockUpstream::fixed("ok").await;
    let (rate, burst) = (20.0, 5.0);
    let h = Harness::start(&config(upstream.addr, "{ rate: 20/s, burst: 5, key: route }"));
    let http = client(false);
    // 60 requests per second for 10 s, from one client, paced by a tokio interval.
    let mut ticker = tokio::time::interval(Duration::from_micros(16_667));
    let started = Instant::now();
    let mut accepted = 0u32;
    for _ in 0..600 {
        ticker.tick().await;
        let answer = send(&http, http::Request::get(h.url("/")).body(empty()).unwrap()).await;
        match answer.status {
            StatusCode::OK => accepted += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("unexpected {other}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let expected = rate * elapsed + burst;
    let error = (f64::from(accepted) - expected).abs() / expected;
    assert!(
        error <= 0.02,
        "accepted {accepted}, expected {expected:.1} over {elapsed:.2}s ({:.1}% off)",
        error * 100.0
    );
}
