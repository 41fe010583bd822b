//! The call log of a fleet in PostgreSQL: every replica answers `/api/v1/calls` and
//! `/api/v1/analytics` for all of them, PostgreSQL going down costs records (counted) but
//! never requests, and the PostgreSQL store answers exactly what the SQLite store answers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use levee::cluster::call_sql;
use levee::cluster::postgres::PgStore;
use levee::config::spec::{PostgresSpec, Secret};
use levee::observability::call_log::{
    now_ms, AnalyticsQuery, CallQuery, CallRecord, CallStore, GroupBy, SqliteStore,
};
use levee_test_support::stores::PgServer;
use levee_test_support::{eventually, get, Load, MockUpstream};
use serde_json::Value;

use super::*;

/// Replicas that share a call log in the PostgreSQL named by `LEVEE_POSTGRES_URL`.
fn config(upstream: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "listeners: [{{ name: public, bind: \"127.0.0.1:{{PUBLIC}}\" }}]
admin: {{ bind: \"127.0.0.1:{{ADMIN}}\" }}
access_log: {{ enabled: false }}
cluster:
  node_id: \"{{NODE}}\"
  postgres: {{ url_env: LEVEE_POSTGRES_URL, timeout: 1s }}
upstreams: {{ u: {{ targets: [\"{upstream}\"] }} }}
routes: [{{ name: all, upstream: u }}]
{extra}"
    )
}

/// GET on an admin URL: the status and the body as JSON (`null` when it is not JSON).
async fn admin_get(url: &str) -> (u16, Value) {
    let answer = get(url, &[]).await;
    let body = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    (answer.status.as_u16(), body)
}

/// The requests of every cell of an analytics answer, added up.
fn analytics_total(body: &Value) -> u64 {
    body["series"]
        .as_array()
        .map(|cells| cells.iter().filter_map(|c| c["requests"].as_u64()).sum())
        .unwrap_or(0)
}

/// Waits until `replica` says whether PostgreSQL answers it.
async fn postgres_up_is(replica: &Replica, up: bool) {
    let url = replica.admin_url("/api/v1/cluster");
    eventually(&format!("{url} says postgres is {up}"), || {
        let url = url.clone();
        async move { admin_get(&url).await.1["postgres"] == Value::Bool(up) }
    })
    .await;
}

async fn metrics_sum(fleet: &Fleet, series: &str) -> f64 {
    let mut sum = 0.0;
    for replica in &fleet.replicas {
        let text = get(&replica.admin_url("/metrics"), &[]).await.text();
        sum += metric(&text, series).unwrap_or(0.0);
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_through_every_replica_are_seen_and_counted_by_each() {
    let pg = tokio::task::block_in_place(PgServer::start);
    let upstream = MockUpstream::fixed("ok").await;
    let fleet = tokio::task::block_in_place(|| {
        Fleet::start(3, &config(upstream.addr, ""), &[("LEVEE_POSTGRES_URL", pg.url())])
    });
    const PER_REPLICA: usize = 20;
    for (i, replica) in fleet.replicas.iter().enumerate() {
        for n in 0..PER_REPLICA {
            let answer = get(&replica.url(&format!("/r{i}/{n}")), &[]).await;
            assert_eq!(answer.status, 200, "{}", answer.text());
        }
    }
    let sent = (PER_REPLICA * fleet.replicas.len()) as u64;
    // Each replica's analytics count the fleet's requests, once every replica has written.
    for replica in &fleet.replicas {
        let url = replica.admin_url("/api/v1/analytics?group_by=route&bucket=1d");
        eventually(&format!("{url} counts {sent} requests"), || {
            let url = url.clone();
            async move { analytics_total(&admin_get(&url).await.1) == sent }
        })
        .await;
        let (status, analytics) = admin_get(&url).await;
        assert_eq!(status, 200);
        let cells = analytics["series"].as_array().unwrap();
        assert_eq!(cells.len(), 1, "one route, one day: {analytics}");
        assert_eq!(cells[0]["group"], "all");
        assert_eq!(cells[0]["errors"], 0);
        assert_eq!(analytics["truncated"], false);

        let (status, calls) = admin_get(&replica.admin_url("/api/v1/calls?limit=1000")).await;
        assert_eq!(status, 200);
        let calls = calls["calls"].as_array().unwrap().clone();
        assert_eq!(calls.len() as u64, sent);
        let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
        for call in &calls {
            let node = call["node"].as_str().unwrap();
            let path = call["path"].as_str().unwrap();
            assert_eq!(
                format!("gw-{}", &path[2..3]),
                node,
                "served by the replica it was sent to: {call}"
            );
            *per_node.entry(node.to_owned()).or_default() += 1;
        }
        let expected: BTreeMap<String, usize> = (0..3).map(|i| (format!("gw-{i}"), PER_REPLICA)).collect();
        assert_eq!(per_node, expected);
        let times: Vec<i64> = calls.iter().map(|c| c["time_ms"].as_i64().unwrap()).collect();
        assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first: {times:?}");
    }
    // The command line reads the same admin API.
    let admin = fleet.replicas[2].admin_url("");
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new(LEVEE)
            .args(["calls", "--admin", &admin, "--route", "all", "--limit", "5"])
            .output()
            .unwrap()
    });
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(table.lines().next().unwrap().contains("node"), "{table}");
    assert_eq!(table.lines().filter(|l| l.contains("gw-")).count(), 5, "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_costs_records_not_requests_and_writing_resumes() {
    let mut pg = tokio::task::block_in_place(PgServer::start);
    let upstream = MockUpstream::fixed("ok").await;
    // A queue small enough to fill soon during the outage.
    let body = config(upstream.addr, "call_log: { queue: 256 }\n");
    let fleet = tokio::task::block_in_place(|| Fleet::start(2, &body, &[("LEVEE_POSTGRES_URL", pg.url())]));
    for replica in &fleet.replicas {
        postgres_up_is(replica, true).await;
    }
    let loads: Vec<Load> = fleet
        .replicas
        .iter()
        .map(|r| Load::start(&r.url("/load"), 2))
        .collect();
    let analytics = fleet.replicas[0].admin_url("/api/v1/analytics?bucket=1d");
    eventually("calls under load are written", || {
        let url = analytics.clone();
        async move { analytics_total(&admin_get(&url).await.1) > 0 }
    })
    .await;

    tokio::task::block_in_place(|| pg.stop());
    for replica in &fleet.replicas {
        postgres_up_is(replica, false).await;
    }
    // The queues fill up and then drop, counted twice: as call log drops and as fallbacks.
    let dropped = "levee_calllog_dropped_total";
    let fallbacks = "levee_cluster_fallback_total{component=\"call_log\"}";
    let replicas = &fleet;
    eventually("records dropped while PostgreSQL is down", move || async move {
        metrics_sum(replicas, dropped).await > 0.0 && metrics_sum(replicas, fallbacks).await > 0.0
    })
    .await;
    let (status, _) = admin_get(&fleet.replicas[1].admin_url("/api/v1/calls")).await;
    assert_eq!(status, 503, "no fleet call log to read while PostgreSQL is down");

    tokio::task::block_in_place(|| pg.start_again());
    for replica in &fleet.replicas {
        postgres_up_is(replica, true).await;
    }
    let mut report = levee_test_support::LoadReport::default();
    for load in loads {
        let part = load.finish().await;
        report.ok += part.ok;
        report.failures.extend(part.failures);
    }
    assert!(
        report.failures.is_empty(),
        "{:?}",
        &report.failures[..report.failures.len().min(5)]
    );
    assert!(report.ok > 0);
    assert_eq!(
        metrics_sum(&fleet, dropped).await,
        metrics_sum(&fleet, fallbacks).await,
        "every drop is a call_log fallback"
    );

    // Writing resumes: calls made after the restart reach the log, from both replicas. (A
    // queue still full of the load's records may drop the first ones, counted: so each round
    // sends one more call through each replica and looks for any of them.)
    let since = now_ms();
    let url = fleet.replicas[0].admin_url(&format!("/api/v1/calls?limit=1000&since={since}"));
    let sent = std::sync::atomic::AtomicUsize::new(0);
    let (fleet, sent) = (&fleet, &sent);
    eventually(
        "calls after the restart are written, from both replicas",
        move || {
            let url = url.clone();
            async move {
                let n = sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                for (i, replica) in fleet.replicas.iter().enumerate() {
                    let answer = get(&replica.url(&format!("/after/{i}/{n}")), &[]).await;
                    assert_eq!(answer.status, 200);
                }
                let (_, calls) = admin_get(&url).await;
                let nodes: std::collections::BTreeSet<&str> = calls["calls"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|c| c["path"].as_str().is_some_and(|p| p.starts_with("/after/")))
                    .filter_map(|c| c["node"].as_str())
                    .collect();
                nodes.len() == 2
            }
        },
    )
    .await;
}

/// Calls with known latencies, statuses, groups, tokens and cost (sums of quarters are exact
/// in any order), one every 997 ms, oldest first.
fn known_calls(start_ms: i64, n: i64) -> Vec<CallRecord> {
    (0..n)
        .map(|i| CallRecord {
            time_ms: start_ms + i * 997,
            request_id: format!("r{i}"),
            trace_id: Some(format!("{i:032x}")),
            route: (i % 5 != 0).then(|| format!("route-{}", i % 3).into()),
            consumer: (i % 2 == 0).then(|| "acme".into()),
            method: "GET".into(),
            path: format!("/p/{i}").into(),
            status: [200, 200, 404, 503, 200, 502][(i % 6) as usize],
            upstream: Some(if i % 4 == 0 { "b" } else { "a" }.into()),
            attempts: 1 + (i % 2) as u32,
            latency_ms: ((i * 37) % 101) as f64 + 0.5,
            upstream_ms: (i % 3 != 0).then_some(i as f64),
            bytes_in: i as u64 * 3,
            bytes_out: i as u64 * 7,
            prompt_tokens: (i % 7 == 0).then_some(i as u64),
            completion_tokens: (i % 7 == 0).then_some(2 * i as u64),
            cost_usd: (i % 7 == 0).then_some(i as f64 * 0.25),
            fault: (i % 11 == 0).then(|| "delay".into()),
            ..CallRecord::default()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_answers_what_sqlite_answers_for_the_same_calls() {
    let pg_server = tokio::task::block_in_place(PgServer::start);
    let pg = Arc::new(
        PgStore::new(&PostgresSpec {
            url: Secret(pg_server.url()),
            timeout: Duration::from_secs(5),
            batch: 100,
        })
        .unwrap(),
    );
    pg.probe().await;
    assert!(pg.is_up());
    let dir = tempfile::tempdir().unwrap();
    let mut sqlite = SqliteStore::open(&dir.path().join("calls.sqlite3")).unwrap();
    let start = now_ms() - 3_600_000;
    let calls = known_calls(start, 400);
    sqlite.insert(&calls).unwrap();
    for chunk in calls.chunks(100) {
        call_sql::insert(&pg, "gw-0", chunk).await.unwrap();
    }

    for group_by in [
        GroupBy::Route,
        GroupBy::Consumer,
        GroupBy::Upstream,
        GroupBy::Status,
    ] {
        for (bucket_ms, route) in [(60_000, None), (3_600_000, None), (60_000, Some("route-1"))] {
            let q = AnalyticsQuery {
                since_ms: start + 5_000,
                until_ms: start + 390_000,
                bucket_ms,
                group_by,
                route: route.map(str::to_owned),
            };
            let from_pg = call_sql::analytics(&pg, &q).await.unwrap();
            assert_eq!(from_pg, sqlite.analytics(&q).unwrap(), "{q:?}");
            assert!(!from_pg.0.is_empty());
        }
    }

    for q in [
        CallQuery {
            limit: 1000,
            ..CallQuery::default()
        },
        CallQuery {
            route: Some("route-1".into()),
            status: Some(503),
            limit: 1000,
            ..CallQuery::default()
        },
        CallQuery {
            consumer: Some("acme".into()),
            since_ms: Some(start + 10_000),
            until_ms: Some(start + 100_000),
            limit: 7,
            ..CallQuery::default()
        },
    ] {
        let mut from_pg = call_sql::query(&pg, &q).await.unwrap();
        assert!(from_pg.iter().all(|c| c.node.as_deref() == Some("gw-0")));
        from_pg.iter_mut().for_each(|c| c.node = None);
        assert_eq!(from_pg, sqlite.query(&q).unwrap(), "{q:?}");
    }

    // Retention: by age, then by count, the same rows as SQLite keeps.
    let old = known_calls(now_ms() - 3 * 86_400_000, 50);
    sqlite.insert(&old).unwrap();
    call_sql::insert(&pg, "gw-1", &old).await.unwrap();
    let day = Duration::from_secs(86_400);
    assert_eq!(
        call_sql::enforce_retention(&pg, day, 1_000_000).await.unwrap(),
        50
    );
    sqlite.enforce_retention(day, 1_000_000).unwrap();
    assert_eq!(call_sql::enforce_retention(&pg, day, 30).await.unwrap(), 370);
    sqlite.enforce_retention(day, 30).unwrap();
    let all = CallQuery {
        limit: 1000,
        ..CallQuery::default()
    };
    let kept: Vec<String> = call_sql::query(&pg, &all)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.request_id)
        .collect();
    let kept_by_sqlite: Vec<String> = sqlite
        .query(&all)
        .unwrap()
        .into_iter()
        .map(|c| c.request_id)
        .collect();
    assert_eq!(kept.len(), 30);
    assert_eq!(kept, kept_by_sqlite);
}
