//! Hot reload: under continuous load, over real sockets, with the config file rewritten the
//! way deploy tools do it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::{write_atomically, Harness};
use http::StatusCode;
use levee_test_support::*;

fn routes(route_to: &str, a: std::net::SocketAddr, b: std::net::SocketAddr) -> String {
    format!(
        "workers: 2
upstreams:
  a:
    targets: [\"{a}\"]
  b:
    targets: [\"{b}\"]
routes:
  - name: x
    match: {{ path_prefix: /x }}
    upstream: {route_to}
"
    )
}

async fn metrics(h: &Harness) -> String {
    get(&format!("{}/metrics", h.admin), &[]).await.text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_reloads_under_load_fail_no_request_and_switch_routes() {
    let a = MockUpstream::fixed("a").await;
    let b = MockUpstream::fixed("b").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("levee.yaml");
    let h = Harness::start_file(&path, &routes("a", a.addr, b.addr));
    let load = Load::start(&h.url("/x"), 4);
    for i in 1..=100u64 {
        let target = if i % 2 == 1 { "b" } else { "a" };
        write_atomically(&path, &Harness::compose(&routes(target, a.addr, b.addr)));
        let answer = common::reload(&h).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        assert_eq!(answer.json()["version"], 1 + i);
        // The reload answers once every worker serves the new config.
        assert_eq!(get(&h.url("/x"), &[]).await.text(), target, "reload {i}");
    }
    let report = load.finish().await;
    assert!(
        report.failures.is_empty(),
        "failed requests: {:?}",
        &report.failures[..report.failures.len().min(5)]
    );
    assert!(report.ok > 100, "{report:?}");
    assert!(
        report.bodies.contains_key("a") && report.bodies.contains_key("b"),
        "{report:?}"
    );
    let text = metrics(&h).await;
    assert!(text.contains("levee_config_version 101"), "{text}");
    assert!(
        text.contains("levee_config_reloads_total{result=\"ok\"} 100"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_is_refused_under_load_and_the_old_routes_keep_answering() {
    let a = MockUpstream::fixed("a").await;
    let b = MockUpstream::fixed("b").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("levee.yaml");
    let h = Harness::start_file(&path, &routes("a", a.addr, b.addr));
    let load = Load::start(&h.url("/x"), 4);
    // Two problems: a route to an upstream that does not exist, and a misspelt key.
    let broken = Harness::compose(&routes("nowhere", a.addr, b.addr)).replace("path_prefix", "path_prefx");
    write_atomically(&path, &broken);
    let answer = common::reload(&h).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let body = answer.json();
    let errors: Vec<String> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_owned())
        .collect();
    let file = path.display().to_string();
    assert!(!errors.is_empty());
    assert!(
        errors.iter().all(|e| e.starts_with(&format!("{file}:"))),
        "FILE:LINE:COL: {errors:?}"
    );
    assert!(errors.iter().any(|e| e.contains("path_prefx")), "{errors:?}");
    assert_eq!(body["error"]["code"], "invalid_config");
    assert_eq!(
        get(&h.url("/x"), &[]).await.text(),
        "a",
        "the running config stays"
    );
    let report = load.finish().await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(report.bodies.keys().collect::<Vec<_>>(), ["a"]);
    let text = metrics(&h).await;
    assert!(text.contains("levee_config_version 1\n"), "{text}");
    assert!(
        text.contains("levee_config_reloads_total{result=\"error\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn listeners_and_other_process_settings_need_a_restart() {
    let a = MockUpstream::fixed("a").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("levee.yaml");
    let yaml = routes("a", a.addr, a.addr);
    let h = Harness::start_file(&path, &yaml);
    let changed = Harness::compose(&yaml).replace("workers: 2", "workers: 3");
    write_atomically(&path, &changed);
    let answer = common::reload(&h).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let errors = answer.json()["errors"].clone();
    let first = errors[0].as_str().unwrap();
    assert!(
        first.contains("`workers` changed") && first.contains("restart"),
        "{errors}"
    );
    assert!(first.starts_with(&format!("{}:", path.display())), "{first}");
}

#[tokio::test]
async fn unchanged_upstreams_keep_their_health_verdicts() {
    let live = MockUpstream::fixed("ok").await;
    let dead = refused_addr().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("levee.yaml");
    let yaml = |route: &str| {
        format!(
            "upstreams:
  checked:
    targets: [\"{}\", \"{dead}\"]
    health_check: {{ path: /, interval: 50ms, unhealthy_after: 1, healthy_after: 1 }}
routes:
  - name: {route}
    match: {{ path_prefix: / }}
    upstream: checked
",
            live.addr
        )
    };
    let h = Harness::start_file(&path, &yaml("first"));
    let upstreams = format!("{}/api/v1/upstreams", h.admin);
    let dead_healthy = |json: serde_json::Value| json["upstreams"][0]["targets"][1]["healthy"].as_bool();
    eventually("the dead target is marked unhealthy", || async {
        dead_healthy(get(&upstreams, &[]).await.json()) == Some(false)
    })
    .await;
    // A reload that changes only the route keeps the upstream, and with it the verdict: no
    // request goes to the dead target while it would be checked again.
    write_atomically(&path, &Harness::compose(&yaml("renamed")));
    assert_eq!(common::reload(&h).await.status, StatusCode::OK);
    assert_eq!(dead_healthy(get(&upstreams, &[]).await.json()), Some(false));
    for _ in 0..10 {
        assert_eq!(get(&h.url("/"), &[]).await.status, StatusCode::OK);
    }
    // The health checks keep running for it after the reload.
    eventually("checks still run", || async {
        get(&upstreams, &[]).await.json()["upstreams"][0]["targets"][0]["healthy"].as_bool() == Some(true)
    })
    .await;
}

#[tokio::test]
async fn a_reload_is_a_post_and_needs_the_admin_token() {
    let a = MockUpstream::fixed("a").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("levee.yaml");
    // A variable name no other test uses.
    std::env::set_var("LEVEE_TEST_RELOAD_TOKEN", "s3cret");
    let yaml = format!(
        "admin:\n  bind: 127.0.0.1:0\n  token_env: LEVEE_TEST_RELOAD_TOKEN\n{}",
        routes("a", a.addr, a.addr)
    );
    let h = Harness::start_file(&path, &yaml);
    let url = format!("{}/api/v1/config/reload", h.admin);
    let get_answer = get(&url, &[("authorization", "Bearer s3cret")]).await;
    assert_eq!(get_answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(get_answer.header("allow"), Some("POST"));
    assert_eq!(common::reload(&h).await.status, StatusCode::UNAUTHORIZED);
    let answer = send(
        &client(false),
        http::Request::post(&url)
            .header("authorization", "Bearer s3cret")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
}

#[tokio::test]
async fn unchanged_upstreams_keep_their_open_breakers() {
    let dead = refused_addr().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("levee.yaml");
    let yaml = |route: &str| {
        format!(
            "upstreams:
  fragile:
    targets: [\"{dead}\"]
    circuit_breaker: {{ consecutive_failures: 1, open_for: 10m }}
    outlier_detection: {{ enabled: false }}
routes:
  - name: {route}
    match: {{ path_prefix: / }}
    upstream: fragile
"
        )
    };
    let h = Harness::start_file(&path, &yaml("first"));
    let upstreams = format!("{}/api/v1/upstreams", h.admin);
    let circuit = |json: serde_json::Value| {
        json["upstreams"][0]["targets"][0]["circuit"]
            .as_str()
            .map(str::to_owned)
    };
    assert_eq!(get(&h.url("/"), &[]).await.status, StatusCode::BAD_GATEWAY);
    eventually("the breaker opens", || async {
        circuit(get(&upstreams, &[]).await.json()).as_deref() == Some("open")
    })
    .await;
    // A reload that only renames the route keeps the worker's breaker for this upstream.
    write_atomically(&path, &Harness::compose(&yaml("renamed")));
    assert_eq!(common::reload(&h).await.status, StatusCode::OK);
    assert_eq!(
        circuit(get(&upstreams, &[]).await.json()).as_deref(),
        Some("open")
    );
    // Changing the upstream's own block starts it fresh.
    write_atomically(
        &path,
        &Harness::compose(&yaml("renamed").replace("open_for: 10m", "open_for: 9m")),
    );
    assert_eq!(common::reload(&h).await.status, StatusCode::OK);
    assert_eq!(
        circuit(get(&upstreams, &[]).await.json()).as_deref(),
        Some("closed")
    );
}
