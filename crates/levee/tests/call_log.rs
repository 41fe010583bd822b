//! The call log: every request stored in SQLite off the hot path, queried by the admin API.
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

#[tokio::test]
async fn every_request_is_stored_and_can_be_filtered() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = MockUpstream::start(|seen| {
        if seen.uri.path() == "/bad" {
            Reply::status(503)
        } else {
            Reply::ok("ok")
        }
    })
    .await;
    let h = Harness::start(&format!(
        "data_dir: \"{}\"\nupstreams:\n  u:\n    targets: [\"{}\"]\nroutes:\n  - name: api\n    match: {{ path_prefix: /api }}\n    upstream: u\n  - name: rest\n    upstream: u\n",
        dir.path().display(),
        upstream.addr
    ));
    for path in ["/api/a", "/api/b", "/bad", "/c"] {
        get(
            &h.url(path),
            &[("x-request-id", &format!("id{}", path.replace('/', "-")))],
        )
        .await;
    }
    let calls = format!("{}/api/v1/calls", h.admin);
    eventually("four calls stored", || async {
        get(&calls, &[]).await.json()["calls"].as_array().map(|a| a.len()) == Some(4)
    })
    .await;
    let all = get(&calls, &[]).await.json();
    let rows = all["calls"].as_array().unwrap();
    assert_eq!(rows[0]["path"], "/c", "newest first");
    let bad = rows.iter().find(|r| r["path"] == "/bad").unwrap();
    assert_eq!(bad["status"], 503);
    assert_eq!(bad["route"], "rest");
    assert_eq!(bad["request_id"], "id-bad");
    assert_eq!(bad["target"], upstream.addr.to_string());
    assert_eq!(bad["attempts"], 1);
    assert!(bad["latency_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(bad["trace_id"].as_str().unwrap().len(), 32);

    let api = get(&format!("{calls}?route=api&limit=10"), &[]).await.json();
    assert_eq!(api["calls"].as_array().unwrap().len(), 2);
    let failed = get(&format!("{calls}?status=503"), &[]).await.json();
    assert_eq!(failed["calls"].as_array().unwrap().len(), 1);
    let future = get(&format!("{calls}?since=2999-01-01T00:00:00Z"), &[])
        .await
        .json();
    assert!(future["calls"].as_array().unwrap().is_empty());

    for (query, name) in [
        ("limit=0", "limit"),
        ("status=abc", "status"),
        ("since=yesterday", "since"),
        ("colour=red", "colour"),
    ] {
        let answer = get(&format!("{calls}?{query}"), &[]).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{query}");
        assert!(
            answer.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("`{name}`")),
            "{query}"
        );
    }
    let metrics = get(&format!("{}/metrics", h.admin), &[]).await.text();
    assert!(metrics.contains("levee_calllog_dropped_total 0"), "{metrics}");

    // Analytics over the same rows.
    let analytics = format!("{}/api/v1/analytics", h.admin);
    let by_route = get(&format!("{analytics}?group_by=route&bucket=1h"), &[])
        .await
        .json();
    assert_eq!(by_route["truncated"], false);
    let series = by_route["series"].as_array().unwrap();
    let total: u64 = series.iter().map(|c| c["requests"].as_u64().unwrap()).sum();
    assert_eq!(total, 4);
    let rest: Vec<_> = series.iter().filter(|c| c["group"] == "rest").collect();
    assert_eq!(
        rest.iter().map(|c| c["requests"].as_u64().unwrap()).sum::<u64>(),
        2
    );
    assert_eq!(rest.iter().map(|c| c["errors"].as_u64().unwrap()).sum::<u64>(), 1);
    for cell in series {
        assert!(cell["p99_ms"].as_f64().unwrap() >= cell["p50_ms"].as_f64().unwrap());
    }
    let by_status = get(&format!("{analytics}?group_by=status"), &[]).await.json();
    assert!(by_status["series"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["group"] == "503"));
    for (query, name) in [
        ("group_by=colour", "group_by"),
        ("bucket=2m", "bucket"),
        ("since=99&until=10", "until"),
        ("x=1", "x"),
    ] {
        let answer = get(&format!("{analytics}?{query}"), &[]).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{query}");
        assert!(
            answer.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("`{name}`")),
            "{query}"
        );
    }
}

#[tokio::test]
async fn without_a_data_dir_there_is_no_call_log() {
    let upstream = MockUpstream::fixed("ok").await;
    let h = Harness::start(&format!(
        "upstreams:\n  u:\n    targets: [\"{}\"]\nroutes:\n  - name: all\n    upstream: u\n",
        upstream.addr
    ));
    assert_eq!(
        get(&format!("{}/api/v1/calls", h.admin), &[]).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_stalled_store_costs_records_not_requests_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = MockUpstream::fixed("ok").await;
    let h = Harness::start(&format!(
        "data_dir: \"{}\"\ncall_log: {{ queue: 4 }}\nupstreams:\n  u:\n    targets: [\"{}\"]\nroutes:\n  - name: all\n    upstream: u\n",
        dir.path().display(),
        upstream.addr
    ));
    let calls = format!("{}/api/v1/calls", h.admin);
    let metrics = format!("{}/metrics", h.admin);
    let dropped = || async {
        let text = get(&metrics, &[]).await.text();
        text.lines()
            .find_map(|l| l.strip_prefix("levee_calllog_dropped_total "))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap()
    };

    // Another process holds the database's write lock: the writer stalls on it (and gives up
    // after its busy timeout), as it would on a disk that stopped answering.
    let blocker = rusqlite::Connection::open(dir.path().join("calls.sqlite3")).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    for i in 0..40 {
        let answer = get(&h.url(&format!("/while-stalled/{i}")), &[]).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "requests do not wait for the call log"
        );
    }
    eventually("records beyond the queue dropped and counted", || async {
        dropped().await >= 30
    })
    .await;

    // The store answers again: new calls are stored.
    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);
    // (A request made while the queue still holds the stalled records may itself be dropped,
    // so keep asking.)
    eventually("the call log recovered", || async {
        assert_eq!(get(&h.url("/after"), &[]).await.status, StatusCode::OK);
        get(&format!("{calls}?limit=5"), &[]).await.json()["calls"]
            .as_array()
            .is_some_and(|rows| rows.iter().any(|r| r["path"] == "/after"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_percentiles_follow_the_known_latencies_of_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    // /d/N waits N*10 ms; every fourth request fails.
    let upstream = MockUpstream::start(|seen| {
        let n: u64 = seen.uri.path().trim_start_matches("/d/").parse().unwrap_or(0);
        let reply = if n.is_multiple_of(4) {
            Reply::status(500)
        } else {
            Reply::ok("ok")
        };
        reply.delay(Duration::from_millis(n * 10))
    })
    .await;
    let h = Harness::start(&format!(
        "data_dir: \"{}\"\nupstreams:\n  u:\n    targets: [\"{}\"]\nroutes:\n  - name: timed\n    upstream: u\n",
        dir.path().display(),
        upstream.addr
    ));
    let requests: Vec<_> = (1..=20u64)
        .map(|n| {
            let url = h.url(&format!("/d/{n}"));
            tokio::spawn(async move { get(&url, &[]).await.status })
        })
        .collect();
    for request in requests {
        request.await.unwrap();
    }
    let calls = format!("{}/api/v1/calls?limit=100", h.admin);
    eventually("twenty calls stored", || async {
        get(&calls, &[]).await.json()["calls"].as_array().map(|a| a.len()) == Some(20)
    })
    .await;
    let answer = get(
        &format!("{}/api/v1/analytics?group_by=route&bucket=1d", h.admin),
        &[],
    )
    .await
    .json();
    let cells: Vec<&serde_json::Value> = answer["series"].as_array().unwrap().iter().collect();
    // One day bucket, unless the requests straddled midnight UTC.
    let requests: u64 = cells.iter().map(|c| c["requests"].as_u64().unwrap()).sum();
    let errors: u64 = cells.iter().map(|c| c["errors"].as_u64().unwrap()).sum();
    assert_eq!((requests, errors), (20, 5));
    if cells.len() == 1 {
        let cell = cells[0];
        assert_eq!(cell["error_rate"].as_f64().unwrap(), 0.25);
        // Nearest-rank percentiles of 10, 20, ..., 200 ms: 100, 190 and 200 ms. The gateway
        // measures each at least as long as the upstream waited, plus its own small overhead.
        for (name, floor) in [("p50_ms", 100.0), ("p95_ms", 190.0), ("p99_ms", 200.0)] {
            let value = cell[name].as_f64().unwrap();
            assert!(
                (floor..floor + 80.0).contains(&value),
                "{name} = {value}, expected from {floor} ms"
            );
        }
    }
}

/// A large analytics query runs off the admin event loop: while it reads 200,000 call-log
/// rows, `/healthz` and `/metrics` (liveness probes, scrapes) each answer within 200 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_analytics_query_does_not_stall_health_and_metrics() {
    use levee::observability::call_log::{CallRecord, CallStore, SqliteStore};
    let dir = tempfile::tempdir().unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    {
        let mut store = SqliteStore::open(&dir.path().join("calls.sqlite3")).unwrap();
        let rows: Vec<CallRecord> = (0..200_000i64)
            .map(|i| CallRecord {
                time_ms: now_ms - 1_800_000 + i * 9,
                request_id: format!("r{i}"),
                route: Some(format!("route-{}", i % 50).into()),
                method: "GET".into(),
                path: "/x".into(),
                status: if i % 10 == 0 { 503 } else { 200 },
                upstream: Some("u".into()),
                attempts: 1,
                latency_ms: (i % 997) as f64,
                bytes_out: 2,
                ..CallRecord::default()
            })
            .collect();
        store.insert(&rows).unwrap();
    }
    let upstream = MockUpstream::fixed("ok").await;
    let h = Harness::start(&format!(
        "data_dir: \"{}\"\nupstreams:\n  u:\n    targets: [\"{}\"]\nroutes:\n  - name: all\n    upstream: u\n",
        dir.path().display(),
        upstream.addr
    ));
    let analytics_url = format!("{}/api/v1/analytics?group_by=route&bucket=1m", h.admin);
    let started = std::time::Instant::now();
    let query = tokio::spawn(async move {
        let answer = get(&analytics_url, &[]).await;
        (answer, started.elapsed())
    });
    let mut probes = 0;
    let mut during = 0;
    while !query.is_finished() && probes < 200 {
        for path in ["/healthz", "/metrics"] {
            let sent = std::time::Instant::now();
            let answer = get(&format!("{}{path}", h.admin), &[]).await;
            let took = sent.elapsed();
            assert_eq!(answer.status, StatusCode::OK, "{path}");
            assert!(
                took < Duration::from_millis(200),
                "{path} took {took:?} during the query"
            );
            probes += 1;
            if !query.is_finished() {
                during += 1;
            }
        }
    }
    let (answer, query_took) = query.await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    let series = answer.json()["series"].as_array().unwrap().len();
    assert!(series > 0);
    assert!(
        during > 0,
        "the query ({query_took:?}) ended before any probe could run beside it"
    );
    eprintln!("analytics over 200,000 rows took {query_took:?}; {during} probes answered meanwhile");
}
