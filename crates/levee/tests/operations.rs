//! Admin endpoints, metrics, the access log and graceful shutdown.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::time::Duration;

use common::{single_upstream, Harness};
use http::StatusCode;
use levee_test_support::*;

#[tokio::test]
async fn health_readiness_and_unknown_admin_paths() {
    let upstream = MockUpstream::fixed("ok").await;
    let h = Harness::start(&single_upstream(&[upstream.addr], "", ""));
    assert_eq!(
        get(&format!("{}/healthz", h.admin), &[]).await.status,
        StatusCode::OK
    );
    let ready = get(&format!("{}/readyz", h.admin), &[]).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json()["status"], "ready");
    let missing = get(&format!("{}/nope", h.admin), &[]).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["error"]["code"], "not_found");
}

#[tokio::test]
async fn metrics_count_requests_and_upstream_attempts() {
    let upstream = MockUpstream::start(|seen| {
        if seen.uri.path() == "/fail" {
            Reply::status(500)
        } else {
            Reply::ok("ok")
        }
    })
    .await;
    let dead = refused_addr().await;
    let h = Harness::start(&format!(
        "upstreams:\n  good:\n    targets: [\"{}\"]\n  dead:\n    targets: [\"{dead}\"]\nroutes:\n  - name: to-dead\n    match: {{ path_prefix: /dead }}\n    upstream: dead\n  - name: main\n    upstream: good\n",
        upstream.addr
    ));
    for path in ["/a", "/b", "/fail", "/dead"] {
        get(&h.url(path), &[]).await;
    }
    send(
        &client(false),
        http::Request::post(h.url("/a")).body(full("x")).unwrap(),
    )
    .await;
    let url = format!("{}/metrics", h.admin);
    // Requests are recorded when their response body ends, which can trail the client by a
    // moment: poll.
    eventually("metrics include the last request", || async {
        get(&url, &[]).await.text().contains("method=\"POST\"")
    })
    .await;
    let metrics = get(&url, &[]).await;
    assert!(metrics
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = metrics.text();
    let target = upstream.addr.to_string();
    for line in [
        "levee_requests_total{route=\"main\",method=\"GET\",status=\"200\"} 2".to_string(),
        "levee_requests_total{route=\"main\",method=\"GET\",status=\"500\"} 1".to_string(),
        "levee_requests_total{route=\"main\",method=\"POST\",status=\"200\"} 1".to_string(),
        "levee_requests_total{route=\"to-dead\",method=\"GET\",status=\"502\"} 1".to_string(),
        "levee_request_duration_seconds_count{route=\"main\"} 4".to_string(),
        format!("levee_upstream_requests_total{{upstream=\"good\",target=\"{target}\",outcome=\"2xx\"}} 3"),
        format!("levee_upstream_requests_total{{upstream=\"good\",target=\"{target}\",outcome=\"5xx\"}} 1"),
        format!("levee_upstream_requests_total{{upstream=\"dead\",target=\"{dead}\",outcome=\"connect_error\"}} 1"),
        format!("levee_upstream_duration_seconds_count{{upstream=\"good\",target=\"{target}\"}} 4"),
        "levee_config_version 1".to_string(),
        "levee_request_overhead_seconds_count{route=\"main\"} 4".to_string(),
    ] {
        assert!(text.contains(&line), "missing `{line}` in:\n{text}");
    }
    common::promtool_accepts(&text);
}

#[tokio::test]
async fn the_overhead_metric_leaves_out_the_wait_for_the_upstream() {
    // An upstream that takes 300 ms: the request lasts that long, Levee's own share of it
    // is far less.
    let upstream = MockUpstream::start(|_| Reply::ok("slow").delay(Duration::from_millis(300))).await;
    let h = Harness::start(&format!(
        "upstreams:\n  slow:\n    targets: [\"{}\"]\nroutes:\n  - name: slow\n    upstream: slow\n",
        upstream.addr
    ));
    assert_eq!(get(&h.url("/"), &[]).await.status, StatusCode::OK);
    let url = format!("{}/metrics", h.admin);
    eventually("the request is recorded", || async {
        get(&url, &[])
            .await
            .text()
            .contains("levee_request_overhead_seconds_count{route=\"slow\"} 1")
    })
    .await;
    let text = get(&url, &[]).await.text();
    let sum = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}_sum{{route=\"slow\"}} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name}_sum in:\n{text}"))
    };
    let (total, overhead) = (
        sum("levee_request_duration_seconds"),
        sum("levee_request_overhead_seconds"),
    );
    assert!(total >= 0.3, "the request took {total} s");
    assert!(overhead < 0.1, "Levee's own time was {overhead} s of {total} s");
}

#[tokio::test]
async fn one_access_log_line_per_request_with_the_contract_fields() {
    let upstream = MockUpstream::fixed("hello").await;
    let h = Harness::start(&single_upstream(&[upstream.addr], "", ""));
    get(&h.url("/users/7?token=secret"), &[("x-request-id", "log-me")]).await;
    send(
        &client(false),
        http::Request::post(h.url("/upload")).body(full("12345")).unwrap(),
    )
    .await;
    get(&h.url("/x"), &[("x-request-id", "third")]).await;
    eventually("three access log lines", || async { h.access_log().len() == 3 }).await;
    let lines = h.access_log();
    let first = lines.iter().find(|l| l["request_id"] == "log-me").unwrap();
    assert_eq!(first["log"], "access");
    assert_eq!(first["route"], "all");
    assert_eq!(first["method"], "GET");
    assert_eq!(
        first["path"], "/users/7",
        "the query string (may hold secrets) is not logged"
    );
    assert_eq!(first["status"], 200);
    assert_eq!(first["upstream"], "u");
    assert_eq!(first["target"], upstream.addr.to_string());
    assert_eq!(first["bytes_out"], 5);
    assert_eq!(first["completed"], true);
    assert_eq!(first["client_ip"], "127.0.0.1");
    assert!(first["duration_ms"].as_f64().unwrap() >= first["upstream_ms"].as_f64().unwrap());
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(first["trace_id"].as_str().unwrap().len(), 32);
    let upload = lines.iter().find(|l| l["method"] == "POST").unwrap();
    assert_eq!(upload["bytes_in"], 5);
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_and_refuses_new_ones() {
    let upstream =
        MockUpstream::start(|_| Reply::ok("slow but complete").delay(Duration::from_millis(600))).await;
    let h = Harness::start(&single_upstream(&[upstream.addr], "", ""));
    let url = h.url("/slow");
    let in_flight = tokio::spawn(async move { get(&url, &[]).await });
    eventually("the request reached the upstream", || async {
        upstream.hits() == 1
    })
    .await;

    h.gateway().begin_shutdown();
    let ready = get(&format!("{}/readyz", h.admin), &[]).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json()["status"], "draining");
    let listener = h.gateway().listener_addr("public").unwrap();
    eventually("the listener stops accepting", || async {
        tokio::net::TcpStream::connect(listener).await.is_err()
    })
    .await;

    let answer = in_flight.await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text(), "slow but complete");
    h.stop().await;
}

#[tokio::test]
async fn shutdown_gives_up_after_the_grace_period() {
    let (silent, accepted, _task) = silent_upstream().await;
    let h = Harness::start(&format!(
        "shutdown_grace: 300ms\n{}",
        single_upstream(&[silent], "    timeouts: { request: 60s }\n", "")
    ));
    let url = h.url("/hang");
    let _stuck = tokio::spawn(async move {
        client(false)
            .request(http::Request::get(url).body(empty()).unwrap())
            .await
    });
    eventually("the request reached the upstream", || async {
        accepted.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    let started = std::time::Instant::now();
    h.stop().await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(5),
        "stop took {took:?}"
    );
}

#[tokio::test]
async fn two_workers_serve_one_port() {
    let upstream = MockUpstream::fixed("ok").await;
    let h = Harness::start(&format!(
        "workers: 2\n{}",
        single_upstream(&[upstream.addr], "", "")
    ));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let url = h.url("/");
        tasks.push(tokio::spawn(async move { get(&url, &[]).await.status }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
}

#[tokio::test]
async fn a_client_that_leaves_before_the_response_is_logged_as_499() {
    let (silent, accepted, _task) = silent_upstream().await;
    let h = Harness::start(&single_upstream(
        &[silent],
        "    timeouts: { request: 30s }\n",
        "",
    ));
    let addr = h.gateway().listener_addr("public").unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, b"GET /gone HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    eventually("the request reached the upstream", || async {
        accepted.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    drop(stream);
    eventually("the abandoned request is logged", || async {
        h.access_log().len() == 1
    })
    .await;
    let line = &h.access_log()[0];
    assert_eq!(line["status"], 499);
    assert_eq!(line["error"], "client_closed");
    assert_eq!(line["path"], "/gone");
    assert_eq!(line["completed"], false);
    let metrics = get(&format!("{}/metrics", h.admin), &[]).await.text();
    assert!(
        metrics.contains("levee_requests_total{route=\"all\",method=\"GET\",status=\"499\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn route_rewrites_cannot_remove_the_request_id() {
    let upstream = MockUpstream::fixed("ok").await;
    // Validation refuses rewriting x-request-id; other rewrites still apply before the
    // gateway's own headers.
    let bad = format!(
        "{}    response_headers: {{ remove: [x-request-id] }}\n",
        single_upstream(&[upstream.addr], "", "")
    );
    let err = levee::load_str(
        &format!("listeners: [{{ name: public, bind: 127.0.0.1:0 }}]\n{bad}"),
        "t.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("header `x-request-id` is managed by the gateway"),
        "{err}"
    );
}

#[tokio::test]
async fn sampled_access_logs_keep_every_error() {
    let upstream = MockUpstream::start(|seen| {
        if seen.uri.path() == "/bad" {
            Reply::status(500)
        } else {
            Reply::ok("ok")
        }
    })
    .await;
    let h = Harness::start(&format!(
        "access_log: {{ success_sample: 0 }}\n{}",
        single_upstream(&[upstream.addr], "", "")
    ));
    for path in ["/a", "/b", "/bad", "/c", "/bad"] {
        get(&h.url(path), &[]).await;
    }
    eventually("both errors logged", || async { h.access_log().len() == 2 }).await;
    assert!(h.access_log().iter().all(|l| l["status"] == 500));
}

#[tokio::test]
async fn process_metrics_are_exposed() {
    let upstream = MockUpstream::fixed("ok").await;
    let h = Harness::start(&single_upstream(&[upstream.addr], "", ""));
    let text = get(&format!("{}/metrics", h.admin), &[]).await.text();
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    assert!(value("process_resident_memory_bytes") > 1_000_000.0);
    assert!(value("process_open_fds") >= 3.0);
    assert!(value("process_cpu_seconds_total") >= 0.0);
    assert!(value("process_start_time_seconds") > 1.7e9);
}

/// Every metric family the gateway exposes (histograms with their series suffixes).
async fn exposed_metric_names(h: &Harness) -> std::collections::BTreeSet<String> {
    let text = get(&format!("{}/metrics", h.admin), &[]).await.text();
    let mut names = std::collections::BTreeSet::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let mut fields = line.split(' ');
        let (Some(name), Some(kind)) = (fields.next(), fields.next()) else {
            continue;
        };
        names.insert(name.to_string());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

fn repo_file(path: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Metric names (`levee_*`, `process_*`) used in a PromQL expression or a text.
fn metric_names_in(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("levee_") || word.starts_with("process_"))
        .map(str::to_owned)
        .collect()
}

fn exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "query" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_grafana_dashboard_and_the_docs_name_only_exposed_metrics() {
    let upstream = MockUpstream::fixed("ok").await;
    // With an SLO, a canary, an alert receiver, cluster mode (its Redis refuses: the
    // cluster families are exposed all the same) and an MCP server (never called), so that
    // their families are exposed too.
    let h = Harness::start(&format!(
        "{}mcp:\n  servers:\n    docs: {{ url: \"http://127.0.0.1:1/mcp\" }}\nslos:\n  - {{ name: all-availability, route: all, objective: 99.9, sli: availability }}\nalerting:\n  evaluation_interval: 1s\n  webhooks: [ {{ url: \"http://{}/hook\" }} ]\ncluster:\n  node_id: docs\n  redis: {{ url: \"redis://127.0.0.1:1/0\" }}\n",
        single_upstream(
            &[upstream.addr],
            &format!("  v2:\n    targets: [\"{}\"]\n", upstream.addr),
            "    canary: { upstream: v2, percent: 0 }\n"
        ),
        upstream.addr
    ));
    get(&h.url("/"), &[]).await;
    let metrics_url = format!("{}/metrics", h.admin);
    eventually("the SLO is evaluated", || async {
        get(&metrics_url, &[])
            .await
            .text()
            .contains("levee_slo_sli_ratio{")
    })
    .await;
    let exposed = exposed_metric_names(&h).await;

    let dashboard: serde_json::Value =
        serde_json::from_str(&repo_file("deploy/grafana/levee-dashboard.json"))
            .expect("the dashboard is JSON");
    let mut queries = Vec::new();
    exprs(&dashboard, &mut queries);
    assert!(
        queries.len() >= 10,
        "the dashboard has panels with queries: {queries:?}"
    );
    for query in &queries {
        for name in metric_names_in(query) {
            assert!(
                exposed.contains(&name),
                "the dashboard uses `{name}`, which Levee does not expose"
            );
        }
    }

    // Every exposed family is documented, and every documented example query uses real names.
    let docs = repo_file("docs/observability.md");
    for name in exposed
        .iter()
        .filter(|n| !n.ends_with("_bucket") && !n.ends_with("_sum") && !n.ends_with("_count"))
    {
        assert!(
            docs.contains(&format!("`{name}`")),
            "docs/observability.md does not document `{name}`"
        );
    }
    for name in metric_names_in(&docs) {
        let known = exposed.contains(&name)
            // Contract names of features not built yet may be mentioned as such.
            || name.starts_with("levee_llm_")
            || name == "levee_config_reloads_total";
        assert!(
            known,
            "docs/observability.md mentions `{name}`, which Levee does not expose"
        );
    }
}
