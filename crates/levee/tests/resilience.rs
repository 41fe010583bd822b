//! Retries, budgets, circuit breakers, bulkheads and fallbacks over real loopback sockets.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Harness;
use http::StatusCode;
use levee_test_support::*;

fn upstreams(targets: &[std::net::SocketAddr], extra: &str) -> String {
    let list: Vec<String> = targets.iter().map(|a| format!("\"{a}\"")).collect();
    format!("upstreams:\n  u:\n    targets: [{}]\n{extra}", list.join(", "))
}

/// An upstream that hangs (answers after 30 s) while the flag is set, and answers "back" at
/// once after it is cleared.
async fn hanging_upstream() -> (MockUpstream, Arc<AtomicBool>) {
    let hang = Arc::new(AtomicBool::new(true));
    let flag = hang.clone();
    let upstream = MockUpstream::start(move |_| {
        if flag.load(Ordering::SeqCst) {
            Reply::ok("late").delay(Duration::from_secs(30))
        } else {
            Reply::ok("back")
        }
    })
    .await;
    (upstream, hang)
}

/// A value from the metrics exposition, 0 when the series is absent.
async fn metric(h: &Harness, series: &str) -> f64 {
    let text = get(&format!("{}/metrics", h.admin), &[]).await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn retries_hide_a_flaky_target_within_the_budget() {
    let a = MockUpstream::fixed("a").await;
    let b = MockUpstream::fixed("b").await;
    // Target c fails 30% of its requests with 503, in a fixed pattern.
    let count = Arc::new(AtomicUsize::new(0));
    let n = count.clone();
    let c = MockUpstream::start(move |_| {
        if n.fetch_add(1, Ordering::SeqCst) % 10 < 3 {
            Reply::status(503)
        } else {
            Reply::ok("c")
        }
    })
    .await;
    let h = Harness::start(&format!(
        "{}routes:\n  - name: all\n    upstream: u\n    retry: {{ attempts: 3, on: [503], backoff: 1ms, budget: 0.2 }}\n",
        upstreams(&[a.addr, b.addr, c.addr], "")
    ));
    let requests = 600;
    let mut errors = 0;
    for _ in 0..requests {
        if get(&h.url("/"), &[]).await.status != StatusCode::OK {
            errors += 1;
        }
    }
    let sent = a.hits() + b.hits() + c.hits();
    let extra = sent - requests;
    assert!(
        errors * 100 < requests,
        "{errors} errors in {requests} (must be under 1%)"
    );
    assert!(extra > 0, "the flaky target's failures were retried");
    // The budget: 20% of the requests plus the floor of 1 retry/s over the 10 s window.
    assert!(
        extra <= requests / 5 + 10,
        "{extra} extra upstream requests for {requests}"
    );
    let retried = metric(&h, "levee_retries_total{route=\"all\",reason=\"status\"}").await;
    assert_eq!(retried as usize, extra, "every extra request is a counted retry");
}

#[tokio::test]
async fn the_budget_stops_a_retry_storm() {
    let down = MockUpstream::start(|_| Reply::status(503)).await;
    let h = Harness::start(&format!(
        "{}routes:\n  - name: all\n    upstream: u\n    retry: {{ attempts: 5, on: [5xx], backoff: 1ms, budget: 0.2, min_per_second: 0 }}\n",
        upstreams(&[down.addr], "    circuit_breaker: { enabled: false }\n")
    ));
    let requests = 100;
    for _ in 0..requests {
        assert_eq!(
            get(&h.url("/"), &[]).await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    // Without a budget 5 attempts each would be 500 requests; with it, at most 20% more.
    assert!(
        down.hits() <= requests + requests / 5,
        "{} upstream requests",
        down.hits()
    );
}

#[tokio::test]
async fn a_killed_target_is_avoided_and_taken_back_when_it_returns() {
    let a = MockUpstream::fixed("a").await;
    let b = MockUpstream::fixed("b").await;
    let c = MockUpstream::fixed("c").await;
    let h = Harness::start(&format!(
        "{}routes:\n  - name: all\n    upstream: u\n    retry: {{ attempts: 3, on: [connect_failure, reset], backoff: 1ms }}\n",
        upstreams(
            &[a.addr, b.addr, c.addr],
            "    circuit_breaker: { consecutive_failures: 3, open_for: 300ms }\n    outlier_detection: { consecutive_failures: 3, base_ejection: 500ms, max_ejection: 1s }\n"
        )
    ));
    let url = h.url("/");
    let sent = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Steady load from 4 clients until told to stop (bounded by a request cap).
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (url, sent, failed, stop) = (url.clone(), sent.clone(), failed.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let http = client(false);
            while !stop.load(Ordering::SeqCst) && sent.load(Ordering::SeqCst) < 50_000 {
                let request = http::Request::get(&url).body(empty()).unwrap();
                let ok = matches!(
                    tokio::time::timeout(DEADLINE, http.request(request)).await,
                    Ok(Ok(r)) if r.status() == StatusCode::OK
                );
                sent.fetch_add(1, Ordering::SeqCst);
                if !ok {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    eventually("load is flowing", || async { sent.load(Ordering::SeqCst) > 300 }).await;
    let b_addr = b.addr;
    b.kill();
    let killed_at = sent.load(Ordering::SeqCst);
    eventually("the breaker opens for the dead target", || async {
        metric(
            &h,
            &format!("levee_circuit_state{{upstream=\"u\",target=\"{b_addr}\"}}"),
        )
        .await
            == 2.0
    })
    .await;
    eventually("traffic continues without it", || async {
        sent.load(Ordering::SeqCst) > killed_at + 1000
    })
    .await;

    // The target comes back on its port: half-open probes find it and it gets traffic again.
    let back = MockUpstream::start_on(b_addr, |_| Reply::ok("b")).await;
    eventually("the returned target serves again", || async { back.hits() > 20 }).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let (sent, failed) = (sent.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    assert!(
        failed * 1000 <= sent,
        "{failed} of {sent} requests failed (must be at most 0.1%)"
    );
    let connect_errors = metric(
        &h,
        &format!(
            "levee_upstream_requests_total{{upstream=\"u\",target=\"{b_addr}\",outcome=\"connect_error\"}}"
        ),
    )
    .await;
    assert!(
        connect_errors < 50.0,
        "{connect_errors} attempts hit the dead target: after the breaker opened only probes should"
    );
    assert!(a.hits() > 0 && c.hits() > 0);
}

#[tokio::test]
async fn a_hung_upstream_trips_the_breaker_and_then_fails_fast() {
    let (upstream, hang) = hanging_upstream().await;
    let h = Harness::start(&format!(
        "{}routes:\n  - name: all\n    upstream: u\n",
        upstreams(
            &[upstream.addr],
            "    timeouts: { request: 200ms }\n    circuit_breaker: { consecutive_failures: 3, open_for: 500ms }\n"
        )
    ));
    for _ in 0..3 {
        let started = Instant::now();
        let answer = get(&h.url("/"), &[]).await;
        assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
        assert!(started.elapsed() >= Duration::from_millis(200));
    }
    // Open: fail fast, well under the timeout, without touching the upstream.
    let hits = upstream.hits();
    let started = Instant::now();
    let answer = get(&h.url("/"), &[]).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.json()["error"]["code"], "upstream_unavailable");
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(upstream.hits(), hits);
    let state = format!(
        "levee_circuit_state{{upstream=\"u\",target=\"{}\"}}",
        upstream.addr
    );
    assert_eq!(metric(&h, &state).await, 2.0);

    // The upstream recovers; after open_for a probe gets through and closes the breaker.
    hang.store(false, Ordering::SeqCst);
    eventually("a half-open probe succeeds", || async {
        get(&h.url("/"), &[]).await.status == StatusCode::OK
    })
    .await;
    assert_eq!(get(&h.url("/"), &[]).await.text(), "back");
    assert_eq!(metric(&h, &state).await, 0.0);
}

/// Starts `n` requests and waits until the (slow) upstream holds all of them.
async fn in_flight(
    h: &Harness,
    upstream: &MockUpstream,
    n: usize,
) -> Vec<tokio::task::JoinHandle<StatusCode>> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let url = h.url("/");
        tasks.push(tokio::spawn(async move { get(&url, &[]).await.status }));
    }
    eventually("requests in flight", || async { upstream.hits() == n }).await;
    tasks
}

#[tokio::test]
async fn a_full_bulkhead_refuses_at_once() {
    let upstream = MockUpstream::start(|_| Reply::ok("slow").delay(Duration::from_millis(800))).await;
    let h = Harness::start(&format!(
        "{}routes:\n  - name: all\n    upstream: u\n",
        upstreams(&[upstream.addr], "    max_concurrent: 2\n")
    ));
    let slow = in_flight(&h, &upstream, 2).await;
    assert_eq!(metric(&h, "levee_inflight_requests{upstream=\"u\"}").await, 2.0);
    let started = Instant::now();
    let answer = get(&h.url("/"), &[]).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.json()["error"]["code"], "upstream_unavailable");
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "refused at once, not queued"
    );
    for task in slow {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(
        upstream.hits(),
        2,
        "the refused request never reached the upstream"
    );
    assert_eq!(
        metric(&h, "levee_bulkhead_rejected_total{upstream=\"u\"}").await,
        1.0
    );
    eventually("the bulkhead empties", || async {
        metric(&h, "levee_inflight_requests{upstream=\"u\"}").await == 0.0
    })
    .await;
}

#[tokio::test]
async fn a_fallback_replaces_502_503_and_504() {
    let dead = refused_addr().await;
    let busy = MockUpstream::start(|_| Reply::status(503)).await;
    let h = Harness::start(&format!(
        r#"upstreams:
  dead:
    targets: ["{dead}"]
  busy:
    targets: ["{}"]
routes:
  - name: dead
    match: {{ path_prefix: /dead }}
    upstream: dead
    fallback: {{ status: 200, body: '{{"items":[],"degraded":true}}' }}
  - name: busy
    upstream: busy
    fallback: {{ body: '{{"error":"temporarily degraded"}}' }}
"#,
        busy.addr
    ));
    let answer = get(&h.url("/dead/x"), &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["degraded"], true);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert!(answer.header("x-request-id").is_some());
    let answer = get(&h.url("/x"), &[]).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.json()["error"], "temporarily degraded");
    eventually("two access log lines", || async { h.access_log().len() == 2 }).await;
    let log = h.access_log();
    let dead_line = log.iter().find(|l| l["route"] == "dead").unwrap();
    assert_eq!(dead_line["fallback_for"], 502);
    assert_eq!(dead_line["error"], "upstream_error");
    assert_eq!(dead_line["status"], 200);
}

#[tokio::test]
async fn bodies_are_replayed_on_retry_only_when_allowed_and_small() {
    let first = Arc::new(AtomicBool::new(true));
    let flag = first.clone();
    // Fails the first request it ever sees, then echoes bodies back.
    let upstream = MockUpstream::start(move |seen| {
        if flag.swap(false, Ordering::SeqCst) {
            Reply::status(503)
        } else {
            Reply::ok(seen.body.clone())
        }
    })
    .await;
    let route = |extra: &str| {
        format!(
            "{}routes:\n  - name: all\n    upstream: u\n    retry: {{ attempts: 2, on: [503], backoff: 1ms, max_replay_body: 1024 }}\n{extra}",
            upstreams(&[upstream.addr], "    circuit_breaker: { enabled: false }\n")
        )
    };
    let post = |h: &Harness, body: Vec<u8>| {
        let request = http::Request::post(h.url("/")).body(full(body)).unwrap();
        async move { send(&client(false), request).await }
    };

    // POST is not idempotent: no retry unless the route opts in.
    let h = Harness::start(&route(""));
    assert_eq!(
        post(&h, b"hello".to_vec()).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    drop(h);

    first.store(true, Ordering::SeqCst);
    let h = Harness::start(&route("    retry_non_idempotent: true\n"));
    let answer = post(&h, b"hello".to_vec()).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.text(),
        "hello",
        "the retried attempt carried the whole body"
    );

    // A body over max_replay_body is streamed once and never retried.
    first.store(true, Ordering::SeqCst);
    let big = vec![b'x'; 4096];
    assert_eq!(post(&h, big).await.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn active_health_checks_take_a_target_out_and_bring_it_back() {
    let a = MockUpstream::fixed("a").await;
    let status = Arc::new(AtomicUsize::new(200));
    let s = status.clone();
    let b = MockUpstream::start(move |seen| {
        if seen.uri.path() == "/healthz" {
            Reply::status(s.load(Ordering::SeqCst) as u16)
        } else {
            Reply::ok("b")
        }
    })
    .await;
    let h = Harness::start(&format!(
        "{}routes:\n  - name: all\n    upstream: u\n",
        upstreams(
            &[a.addr, b.addr],
            "    health_check: { path: /healthz, interval: 50ms, timeout: 500ms, unhealthy_after: 2, healthy_after: 2 }\n"
        )
    ));
    let healthy = format!("levee_target_healthy{{upstream=\"u\",target=\"{}\"}}", b.addr);
    eventually("b is checked", || async {
        b.seen()
            .iter()
            .any(|s| s.uri.path() == "/healthz" && s.headers["user-agent"] == "levee-health-check")
    })
    .await;
    assert_eq!(metric(&h, &healthy).await, 1.0);

    status.store(503, Ordering::SeqCst);
    eventually("b is marked unhealthy", || async {
        metric(&h, &healthy).await == 0.0
    })
    .await;
    for _ in 0..20 {
        assert_eq!(
            get(&h.url("/"), &[]).await.text(),
            "a",
            "no traffic to an unhealthy target"
        );
    }

    status.store(200, Ordering::SeqCst);
    eventually("b passes healthy_after checks", || async {
        metric(&h, &healthy).await == 1.0
    })
    .await;
    let mut answers = std::collections::HashSet::new();
    for _ in 0..10 {
        answers.insert(get(&h.url("/"), &[]).await.text());
    }
    assert!(answers.contains("b"), "b takes traffic again: {answers:?}");
}

#[tokio::test]
async fn a_tcp_health_check_notices_a_dead_target() {
    let a = MockUpstream::fixed("a").await;
    let b = MockUpstream::fixed("b").await;
    let h = Harness::start(&format!(
        "{}routes:\n  - name: all\n    upstream: u\n",
        upstreams(
            &[a.addr, b.addr],
            "    health_check: { interval: 50ms, unhealthy_after: 2 }\n"
        )
    ));
    let healthy = format!("levee_target_healthy{{upstream=\"u\",target=\"{}\"}}", b.addr);
    assert_eq!(metric(&h, &healthy).await, 1.0);
    b.kill();
    eventually("b is marked unhealthy", || async {
        metric(&h, &healthy).await == 0.0
    })
    .await;
    for _ in 0..10 {
        assert_eq!(get(&h.url("/"), &[]).await.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn a_failing_target_is_ejected_as_an_outlier() {
    let a = MockUpstream::fixed("a").await;
    let b = MockUpstream::fixed("b").await;
    let bad = MockUpstream::start(|_| Reply::status(500)).await;
    let h = Harness::start(&format!(
        "{}routes:\n  - name: all\n    upstream: u\n",
        upstreams(
            &[a.addr, b.addr, bad.addr],
            "    circuit_breaker: { enabled: false }\n    outlier_detection: { consecutive_failures: 3, base_ejection: 1h, max_ejection: 1h }\n"
        )
    ));
    let mut errors = 0;
    for _ in 0..60 {
        if get(&h.url("/"), &[]).await.status != StatusCode::OK {
            errors += 1;
        }
    }
    assert_eq!(bad.hits(), 3, "ejected after 3 failures in a row, for everyone");
    assert_eq!(errors, 3);
    let healthy = format!("levee_target_healthy{{upstream=\"u\",target=\"{}\"}}", bad.addr);
    assert_eq!(metric(&h, &healthy).await, 0.0);
}

#[tokio::test]
async fn load_shedding_refuses_requests_past_the_inflight_cap() {
    let upstream = MockUpstream::start(|_| Reply::ok("slow").delay(Duration::from_millis(600))).await;
    let h = Harness::start(&format!(
        "limits: {{ max_inflight: 2 }}\n{}routes:\n  - name: all\n    upstream: u\nslos:\n  - {{ name: all-availability, route: all, objective: 99.9, sli: availability }}\n",
        upstreams(&[upstream.addr], "")
    ));
    let slow = in_flight(&h, &upstream, 2).await;
    let started = Instant::now();
    let answer = get(&h.url("/"), &[]).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.json()["error"]["code"], "overloaded");
    assert!(started.elapsed() < Duration::from_millis(200));
    assert_eq!(metric(&h, "levee_shed_total").await, 1.0);
    for task in slow {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    // The shed request is its route's: its users saw a 503, so the route's SLO counts it.
    let slos = format!("{}/api/v1/slos", h.admin);
    eventually("the SLO counts the shed request", || async {
        let events = get(&slos, &[]).await.json()["slos"][0]["events"].clone();
        events["total"] == 3 && events["bad"] == 1
    })
    .await;
    assert_eq!(
        get(&h.url("/"), &[]).await.status,
        StatusCode::OK,
        "capacity is back"
    );
}

#[tokio::test]
async fn connections_past_the_cap_get_a_503_and_are_closed() {
    let upstream = MockUpstream::fixed("ok").await;
    let h = Harness::start(&format!(
        "limits: {{ max_connections: 2 }}\n{}routes:\n  - name: all\n    upstream: u\n",
        upstreams(&[upstream.addr], "")
    ));
    let addr = h.gateway().listener_addr("public").unwrap();
    let _held: Vec<tokio::net::TcpStream> = vec![
        tokio::net::TcpStream::connect(addr).await.unwrap(),
        tokio::net::TcpStream::connect(addr).await.unwrap(),
    ];
    eventually("both connections are counted", || async {
        metric(&h, "levee_connections_accepted_total").await == 2.0
    })
    .await;
    let answer = raw_exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.to_lowercase().contains("connection: close"), "{answer}");
    // The same JSON error shape as every other refusal, `type` included.
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["error"]["code"], "overloaded", "{answer}");
    assert_eq!(json["error"]["type"], "api_error", "{answer}");
    assert!(json["error"]["message"].is_string());
    assert_eq!(metric(&h, "levee_shed_total").await, 1.0);
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn the_admin_api_shows_each_targets_state() {
    let a = MockUpstream::fixed("a").await;
    let dead = refused_addr().await;
    let h = Harness::start(&format!(
        "{}routes:\n  - name: all\n    upstream: u\n",
        upstreams(
            &[a.addr, dead],
            "    circuit_breaker: { consecutive_failures: 1, open_for: 1h }\n"
        )
    ));
    for _ in 0..4 {
        get(&h.url("/"), &[]).await;
    }
    let answer = get(&format!("{}/api/v1/upstreams", h.admin), &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    let json = answer.json();
    let upstream = &json["upstreams"][0];
    assert_eq!(upstream["name"], "u");
    assert_eq!(upstream["max_concurrent"], 1024);
    let targets = upstream["targets"].as_array().unwrap();
    let by_addr = |addr: String| {
        targets
            .iter()
            .find(|t| t["addr"] == addr.as_str())
            .unwrap()
            .clone()
    };
    let good = by_addr(a.addr.to_string());
    assert_eq!(good["circuit"], "closed");
    assert_eq!(good["healthy"], true);
    assert_eq!(good["inflight"], 0);
    assert!(good["ewma_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(by_addr(dead.to_string())["circuit"], "open");
}

#[tokio::test]
async fn a_bulkhead_queue_waits_a_bounded_time_for_a_place() {
    let upstream = MockUpstream::start(|_| Reply::ok("slow").delay(Duration::from_millis(300))).await;
    let h = Harness::start(&format!(
        "{}routes:\n  - name: all\n    upstream: u\n",
        upstreams(
            &[upstream.addr],
            "    max_concurrent: 1\n    queue: { size: 1, timeout: 2s }\n"
        )
    ));
    let first = in_flight(&h, &upstream, 1).await;
    // The second waits in the queue and is served when the first finishes.
    let url = h.url("/");
    let queued = tokio::spawn(async move { get(&url, &[]).await.status });
    eventually("one request queued", || async {
        metric(&h, "levee_inflight_requests{upstream=\"u\"}").await == 1.0 && upstream.hits() == 1
    })
    .await;
    // The queue is full: a third is refused at once.
    let started = Instant::now();
    assert_eq!(
        get(&h.url("/"), &[]).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(started.elapsed() < Duration::from_millis(200));
    for task in first {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(queued.await.unwrap(), StatusCode::OK);
    assert_eq!(upstream.hits(), 2);
}

#[tokio::test]
async fn a_queued_request_gives_up_at_the_queue_timeout() {
    let upstream = MockUpstream::start(|_| Reply::ok("slow").delay(Duration::from_millis(1500))).await;
    let h = Harness::start(&format!(
        "{}routes:\n  - name: all\n    upstream: u\n",
        upstreams(
            &[upstream.addr],
            "    max_concurrent: 1\n    queue: { size: 5, timeout: 200ms }\n"
        )
    ));
    let _first = in_flight(&h, &upstream, 1).await;
    let started = Instant::now();
    assert_eq!(
        get(&h.url("/"), &[]).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_millis(1000),
        "{waited:?}"
    );
    assert_eq!(
        metric(&h, "levee_bulkhead_rejected_total{upstream=\"u\"}").await,
        1.0
    );
}

#[tokio::test]
async fn stale_if_error_serves_the_last_good_answer_for_a_while() {
    let down = Arc::new(AtomicBool::new(false));
    let flag = down.clone();
    let upstream = MockUpstream::start(move |seen| {
        if flag.load(Ordering::SeqCst) {
            Reply::status(503)
        } else {
            Reply::ok(format!("items at {}", seen.uri.path()))
                .header("content-type", "text/plain")
                .header(
                    "cache-control",
                    if seen.uri.path() == "/private" {
                        "private"
                    } else {
                        "max-age=5"
                    },
                )
        }
    })
    .await;
    let h = Harness::start(&format!(
        "{}routes:\n  - name: all\n    upstream: u\n    stale_if_error: {{ max_age: 1s }}\n",
        upstreams(&[upstream.addr], "    circuit_breaker: { enabled: false }\n")
    ));
    for path in ["/items", "/private"] {
        assert_eq!(get(&h.url(path), &[]).await.status, StatusCode::OK);
    }
    // Wait until the stored answer is complete (recorded when its body ended).
    eventually("both answers logged", || async { h.access_log().len() == 2 }).await;
    down.store(true, Ordering::SeqCst);

    let answer = get(&h.url("/items"), &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text(), "items at /items");
    assert_eq!(answer.header("x-levee-cache"), Some("stale"));
    assert_eq!(answer.header("content-type"), Some("text/plain"));
    assert!(answer.header("age").is_some());
    // Personal requests and private answers are never served from the store.
    assert_eq!(
        get(&h.url("/items"), &[("authorization", "Bearer x")])
            .await
            .status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        get(&h.url("/private"), &[]).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    eventually("access log marks the stale answer", || async {
        h.access_log()
            .iter()
            .any(|l| l["degraded"] == "stale" && l["fallback_for"] == 503)
    })
    .await;
    // Past max_age the failure shows through.
    eventually("the stored answer expires", || async {
        get(&h.url("/items"), &[]).await.status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
}

#[tokio::test]
async fn per_try_timeouts_move_a_slow_attempt_to_another_target() {
    let slow = MockUpstream::start(|_| Reply::ok("slow").delay(Duration::from_secs(5))).await;
    let fast = MockUpstream::fixed("fast").await;
    let h = Harness::start(&format!(
        "{}routes:\n  - name: all\n    upstream: u\n    retry: {{ attempts: 2, on: [timeout], per_try_timeout: 100ms, backoff: 1ms }}\n",
        upstreams(&[slow.addr, fast.addr], "    timeouts: { request: 10s }\n")
    ));
    for _ in 0..4 {
        let started = Instant::now();
        let answer = get(&h.url("/"), &[]).await;
        assert_eq!(answer.text(), "fast");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    assert!(slow.hits() >= 1, "the slow target was tried");
    assert!(metric(&h, "levee_retries_total{route=\"all\",reason=\"timeout\"}").await >= 1.0);
}

#[tokio::test]
async fn a_post_is_retried_only_when_it_never_left() {
    let dead = refused_addr().await;
    let good = MockUpstream::start(|seen| Reply::ok(seen.body.clone())).await;
    let h = Harness::start(&format!(
        "{}routes:\n  - name: all\n    upstream: u\n    retry: {{ attempts: 2, on: [connect_failure, 5xx], backoff: 1ms }}\n",
        upstreams(&[dead, good.addr], "")
    ));
    for _ in 0..4 {
        let request = http::Request::post(h.url("/orders"))
            .body(full("order-1"))
            .unwrap();
        let answer = send(&client(false), request).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "a refused connect is safe to retry"
        );
        assert_eq!(answer.text(), "order-1");
    }
}

#[tokio::test]
async fn when_every_target_fails_its_health_checks_traffic_still_flows() {
    let app = |name: &'static str| {
        move |seen: &Seen| {
            if seen.uri.path() == "/healthz" {
                Reply::status(503)
            } else {
                Reply::ok(name)
            }
        }
    };
    let a = MockUpstream::start(app("a")).await;
    let b = MockUpstream::start(app("b")).await;
    let h = Harness::start(&format!(
        "{}routes:\n  - name: all\n    upstream: u\n",
        upstreams(
            &[a.addr, b.addr],
            "    health_check: { path: /healthz, interval: 50ms, unhealthy_after: 1 }\n"
        )
    ));
    for target in [a.addr, b.addr] {
        let series = format!("levee_target_healthy{{upstream=\"u\",target=\"{target}\"}}");
        eventually("marked unhealthy", || async { metric(&h, &series).await == 0.0 }).await;
    }
    // Panic routing: health checks can be wrong; refusing everything would surely be.
    for _ in 0..4 {
        assert_eq!(get(&h.url("/"), &[]).await.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn an_abandoned_probe_does_not_wedge_the_breaker() {
    let mode = Arc::new(AtomicUsize::new(503));
    let m = mode.clone();
    let upstream = MockUpstream::start(move |_| match m.load(Ordering::SeqCst) {
        0 => Reply::ok("slow").delay(Duration::from_secs(30)),
        503 => Reply::status(503),
        _ => Reply::ok("ok"),
    })
    .await;
    let h = Harness::start(&format!(
        "{}routes:\n  - name: all\n    upstream: u\n",
        upstreams(
            &[upstream.addr],
            "    circuit_breaker: { consecutive_failures: 1, open_for: 200ms }\n"
        )
    ));
    assert_eq!(
        get(&h.url("/"), &[]).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let state = format!(
        "levee_circuit_state{{upstream=\"u\",target=\"{}\"}}",
        upstream.addr
    );
    assert_eq!(metric(&h, &state).await, 2.0);
    // Once half-open, a probe goes out and its client walks away mid-request.
    mode.store(0, Ordering::SeqCst);
    eventually("half-open", || async { metric(&h, &state).await == 1.0 }).await;
    let hits = upstream.hits();
    let addr = h.gateway().listener_addr("public").unwrap();
    let mut probe = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut probe, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    eventually("the probe reached the upstream", || async {
        upstream.hits() == hits + 1
    })
    .await;
    drop(probe);
    // The probe's slot is given back: the next request is admitted and closes the breaker.
    mode.store(200, Ordering::SeqCst);
    eventually("a new probe gets through", || async {
        get(&h.url("/"), &[]).await.status == StatusCode::OK
    })
    .await;
}

#[tokio::test]
async fn an_abandoned_wait_leaves_the_queue() {
    let upstream = MockUpstream::start(|_| Reply::ok("slow").delay(Duration::from_millis(800))).await;
    let h = Harness::start(&format!(
        "{}routes:\n  - name: all\n    upstream: u\n",
        upstreams(
            &[upstream.addr],
            "    max_concurrent: 1\n    queue: { size: 1, timeout: 5s }\n"
        )
    ));
    let first = in_flight(&h, &upstream, 1).await;
    // A client waits in the queue, then walks away.
    let addr = h.gateway().listener_addr("public").unwrap();
    let mut waiter = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut waiter, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    eventually("the waiter is queued", || async {
        metric(&h, "levee_connections_accepted_total").await == 2.0
    })
    .await;
    drop(waiter);
    for task in first {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    // Its place in the queue was given back: a new request may wait and be served.
    let url = h.url("/");
    let busy = tokio::spawn(async move { get(&url, &[]).await.status });
    eventually("the bulkhead is taken again", || async { upstream.hits() == 2 }).await;
    let second = vec![busy];
    let url = h.url("/");
    let queued = tokio::spawn(async move { get(&url, &[]).await.status });
    for task in second {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(queued.await.unwrap(), StatusCode::OK);
}

#[tokio::test]
async fn a_listener_cap_refuses_connections_past_it() {
    let upstream = MockUpstream::fixed("ok").await;
    let h = Harness::start(&format!(
        "listeners:\n  - name: public\n    bind: 127.0.0.1:0\n    max_connections: 1\n{}routes:\n  - name: all\n    upstream: u\n",
        upstreams(&[upstream.addr], "")
    ));
    let addr = h.gateway().listener_addr("public").unwrap();
    let _held = tokio::net::TcpStream::connect(addr).await.unwrap();
    eventually("the first connection is counted", || async {
        metric(&h, "levee_connections_accepted_total").await == 1.0
    })
    .await;
    let answer = raw_exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    drop(_held);
    eventually("a place frees up", || async {
        raw_exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 200")
    })
    .await;
}

/// One breaker per target for the whole process: with four workers (connections spread over
/// them by the kernel), a hung target opens its breaker after exactly the `min_requests`
/// failures the config names, whichever workers carried them; every later request fails
/// fast on every worker; half-open lets `half_open_probes` requests through in the whole
/// process, not per worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_breaker_per_target_across_workers() {
    let (upstream, hang) = hanging_upstream().await;
    let h = Harness::start(&format!(
        "workers: 4\n{}routes:\n  - name: all\n    upstream: u\n",
        upstreams(
            &[upstream.addr],
            "    timeouts: { request: 200ms }\n    circuit_breaker: { min_requests: 4, failure_rate: 0.5, consecutive_failures: 0, window: 60s, open_for: 1500ms, half_open_probes: 2 }\n"
        )
    ));
    // Each request on a new connection, so the kernel spreads them over the workers.
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(get(&h.url("/"), &[]).await.status.as_u16());
    }
    assert_eq!(
        statuses,
        [504, 504, 504, 504, 503, 503, 503, 503, 503, 503, 503, 503],
        "four timeouts open it for every worker"
    );
    assert_eq!(upstream.hits(), 4);
    let circuit = || async {
        let view = get(&format!("{}/api/v1/upstreams", h.admin), &[]).await.json();
        view["upstreams"][0]["targets"][0]["circuit"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(circuit().await, "open");

    // Half-open, still hung: of eight concurrent requests exactly two are probes.
    eventually("the breaker turns half-open", || async {
        circuit().await == "half_open"
    })
    .await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let url = h.url("/");
            tokio::spawn(async move { get(&url, &[]).await.status.as_u16() })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [503, 503, 503, 503, 503, 503, 504, 504],
        "two probes in all"
    );
    assert_eq!(upstream.hits(), 6);
    assert_eq!(circuit().await, "open", "a failed probe opens it again");

    // Recovered: two successful probes close it, and every worker sends again.
    hang.store(false, Ordering::SeqCst);
    eventually("the breaker turns half-open again", || async {
        circuit().await == "half_open"
    })
    .await;
    for _ in 0..8 {
        assert_eq!(get(&h.url("/"), &[]).await.text(), "back");
    }
    assert_eq!(circuit().await, "closed");
}
