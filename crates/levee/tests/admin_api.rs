//! The admin REST API: routes, the redacted config, and the OpenAPI document that must
//! describe every admin route.
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

/// Every admin path of PRODUCT.md sections 5 and 10 that this build serves.
const ADMIN_PATHS: &[(&str, &str)] = &[
    ("get", "/"),
    ("get", "/assets/{id}"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/api/v1/whoami"),
    ("get", "/api/v1/overview"),
    ("get", "/api/v1/llm"),
    ("get", "/api/v1/upstreams"),
    ("get", "/api/v1/routes"),
    ("get", "/api/v1/config"),
    ("post", "/api/v1/config/reload"),
    ("get", "/api/v1/calls"),
    ("get", "/api/v1/analytics"),
    ("get", "/api/v1/slos"),
    ("get", "/api/v1/cluster"),
    ("get", "/api/v1/canaries"),
    ("get", "/api/v1/experiments"),
    ("post", "/api/v1/experiments"),
    ("get", "/api/v1/experiments/{id}"),
    ("delete", "/api/v1/experiments/{id}"),
    ("get", "/api/v1/teams"),
    ("post", "/api/v1/teams"),
    ("get", "/api/v1/teams/{id}"),
    ("patch", "/api/v1/teams/{id}"),
    ("delete", "/api/v1/teams/{id}"),
    ("get", "/api/v1/consumers"),
    ("post", "/api/v1/consumers"),
    ("get", "/api/v1/consumers/{id}"),
    ("patch", "/api/v1/consumers/{id}"),
    ("delete", "/api/v1/consumers/{id}"),
    ("get", "/api/v1/keys"),
    ("post", "/api/v1/keys"),
    ("get", "/api/v1/keys/{id}"),
    ("patch", "/api/v1/keys/{id}"),
    ("delete", "/api/v1/keys/{id}"),
    ("post", "/api/v1/keys/{id}/rotate"),
    ("get", "/api/v1/tokens"),
    ("post", "/api/v1/tokens"),
    ("delete", "/api/v1/tokens/{id}"),
    ("get", "/api/v1/subscriptions"),
    ("post", "/api/v1/subscriptions"),
    ("get", "/api/v1/subscriptions/{id}"),
    ("delete", "/api/v1/subscriptions/{id}"),
    ("post", "/api/v1/subscriptions/{id}/approve"),
    ("post", "/api/v1/subscriptions/{id}/reject"),
    ("get", "/api/v1/catalog"),
    ("get", "/api/v1/audit"),
    ("get", "/api/v1/usage"),
];

/// Whether an answer is the dispatcher's "no such endpoint" (a 404 from a handler about a
/// missing object is an answer of a served path).
fn unserved(answer: &Answer) -> bool {
    answer.status == StatusCode::NOT_FOUND && answer.text().contains("No such admin endpoint")
}

fn config(upstream: std::net::SocketAddr) -> String {
    format!(
        "upstreams:
  api:
    targets: [\"{upstream}\"]
consumers:
  - name: mobile
    api_keys: [\"sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae\"]
routes:
  - name: first
    match: {{ path_prefix: /a }}
    upstream: api
    request_headers:
      set: {{ authorization: \"Bearer upstream-secret\", x-team: checkout }}
  - name: second
    upstream: api
"
    )
}

#[tokio::test]
async fn the_openapi_document_is_valid_and_lists_every_admin_route() {
    let upstream = MockUpstream::fixed("ok").await;
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start_file(
        &dir.path().join("levee.yaml"),
        &format!(
            "data_dir: \"{}\"\n{}",
            dir.path().display(),
            config(upstream.addr)
        ),
    );
    let answer = get(&format!("{}/openapi.json", h.admin), &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    let document = answer.json();
    // It parses as an OpenAPI 3.0 document.
    let parsed: openapiv3::OpenAPI =
        serde_json::from_value(document.clone()).expect("a valid OpenAPI 3 document");
    assert!(parsed.openapi.starts_with("3.0"), "{}", parsed.openapi);

    // An experiment to show and stop through the `{id}` paths.
    let started = send(
        &client(false),
        http::Request::post(format!("{}/api/v1/experiments", h.admin))
            .body(full(r#"{"name": "probe", "route": "second", "fault": {"abort": {"percent": 0, "status": 503}}, "duration": "60s"}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(started.status, StatusCode::CREATED, "{}", started.text());
    let experiment = started.json()["id"].as_str().unwrap().to_owned();

    // Every admin route is in it, with its method, and answers (no 404 for a documented path).
    for (method, path) in ADMIN_PATHS {
        let item = parsed
            .paths
            .paths
            .get(*path)
            .unwrap_or_else(|| panic!("{path} is not documented"));
        let item = item.as_item().unwrap();
        let operation = match *method {
            "get" => item.get.as_ref(),
            "post" => item.post.as_ref(),
            "delete" => item.delete.as_ref(),
            "patch" => item.patch.as_ref(),
            _ => None,
        };
        assert!(operation.is_some(), "{method} {path} is not documented");
        let path = path.replace("{id}", &experiment);
        let request = http::Request::builder()
            .method(method.to_uppercase().as_str())
            .uri(format!("{}{path}", h.admin))
            .body(empty())
            .unwrap();
        let answer = send(&client(false), request).await;
        assert!(!unserved(&answer), "{method} {path}");
        assert_ne!(answer.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
    }
    let distinct: std::collections::BTreeSet<&str> = ADMIN_PATHS.iter().map(|(_, p)| *p).collect();
    assert_eq!(
        parsed.paths.paths.len(),
        distinct.len(),
        "no undocumented extras or missing routes"
    );
    // And the other way round: every operation the document lists is served (the document
    // and the dispatch are read from one table; this checks they stay that way).
    for (path, methods) in documented_methods(&document) {
        for method in methods {
            let request = http::Request::builder()
                .method(method.as_str())
                .uri(format!("{}{}", h.admin, path.replace("{id}", &experiment)))
                .body(empty())
                .unwrap();
            let answer = send(&client(false), request).await;
            assert!(!unserved(&answer), "{method} {path}");
            assert_ne!(answer.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        }
    }

    // The reference validator agrees (scripts/test.sh installs it in a virtualenv).
    openapi_spec_validator_accepts(&document);

    // Every schema reference resolves.
    let text = document.to_string();
    let schemas = document["components"]["schemas"].as_object().unwrap();
    for reference in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = reference.split('"').next().unwrap();
        assert!(schemas.contains_key(name), "dangling reference to {name}");
    }
    assert!(schemas.contains_key("Upstreams") && schemas.contains_key("CallRecord"));
}

#[tokio::test]
async fn routes_and_config_show_the_running_config_with_secrets_redacted() {
    let upstream = MockUpstream::fixed("ok").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("levee.yaml");
    let h = Harness::start_file(&path, &config(upstream.addr));

    let routes = get(&format!("{}/api/v1/routes", h.admin), &[]).await.json();
    assert_eq!(routes["version"], 1);
    let names: Vec<&str> = routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["first", "second"], "in match order");

    let active = get(&format!("{}/api/v1/config", h.admin), &[]).await;
    assert_eq!(active.status, StatusCode::OK);
    let text = active.text();
    assert!(!text.contains("upstream-secret"), "{text}");
    assert!(!text.contains("2c26b46b68ffc68f"), "{text}");
    let body = active.json();
    assert_eq!(body["version"], 1);
    assert_eq!(body["source"], path.display().to_string());
    assert_eq!(
        body["config"]["routes"][0]["request_headers"]["set"]["authorization"],
        "<redacted>"
    );
    assert_eq!(
        body["config"]["routes"][0]["request_headers"]["set"]["x-team"],
        "checkout"
    );
    assert_eq!(body["config"]["consumers"][0]["api_keys"][0], "<redacted>");

    // After a reload both show the new version.
    common::write_atomically(
        &path,
        &Harness::compose(&config(upstream.addr).replace("name: second", "name: third")),
    );
    let reloaded = common::reload(&h).await;
    assert_eq!(reloaded.json()["version"], 2);
    let routes = get(&format!("{}/api/v1/routes", h.admin), &[]).await.json();
    assert_eq!(
        (routes["version"].as_u64(), routes["routes"][1]["name"].as_str()),
        (Some(2), Some("third"))
    );
}

#[tokio::test]
async fn admin_errors_use_the_data_plane_error_shape() {
    let upstream = MockUpstream::fixed("ok").await;
    let h = Harness::start(&config(upstream.addr));
    let missing = get(&format!("{}/api/v1/nope", h.admin), &[]).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let body = missing.json();
    assert_eq!(body["error"]["code"], "not_found");
    assert!(body["error"]["request_id"].as_str().is_some());
    // A gateway started from text has no file to reload.
    let reload = common::reload(&h).await;
    assert_eq!(reload.status, StatusCode::BAD_REQUEST);
    assert!(reload.json()["errors"][0]
        .as_str()
        .unwrap()
        .contains("not started from a config file"));
}

#[tokio::test]
async fn a_method_an_admin_path_does_not_take_answers_405_with_the_methods_it_takes() {
    let upstream = MockUpstream::fixed("ok").await;
    let h = Harness::start(&config(upstream.addr));
    let document = get(&format!("{}/openapi.json", h.admin), &[]).await.json();
    let paths = documented_methods(&document);
    let distinct: std::collections::BTreeSet<&str> = ADMIN_PATHS.iter().map(|(_, p)| *p).collect();
    assert_eq!(paths.len(), distinct.len(), "every admin path is documented");
    for (path, methods) in paths {
        // What `Allow` must say: the documented methods, and HEAD wherever GET is.
        let mut allowed = methods.clone();
        if allowed.contains("GET") {
            allowed.insert("HEAD".into());
        }
        let url = format!("{}{}", h.admin, path.replace("{id}", "no-such-experiment"));
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            if allowed.contains(method) {
                continue;
            }
            let request = http::Request::builder()
                .method(method)
                .uri(&url)
                .body(empty())
                .unwrap();
            let answer = send(&client(false), request).await;
            assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            let allow: std::collections::BTreeSet<String> = answer
                .header("allow")
                .unwrap_or_else(|| panic!("{method} {path}: no Allow header"))
                .split(", ")
                .map(str::to_owned)
                .collect();
            assert_eq!(allow, allowed, "{method} {path}");
            let body = answer.json();
            assert_eq!(body["error"]["code"], "method_not_allowed", "{method} {path}");
            assert_eq!(body["error"]["type"], "invalid_request_error", "{method} {path}");
            assert!(body["error"]["request_id"].as_str().is_some(), "{method} {path}");
        }
    }
    // The order reads GET, HEAD first, then the path's other methods.
    let put = |path: &str| {
        let request = http::Request::put(format!("{}{path}", h.admin))
            .body(empty())
            .unwrap();
        async move { send(&client(false), request).await }
    };
    assert_eq!(
        put("/api/v1/experiments").await.header("allow"),
        Some("GET, HEAD, POST")
    );
    assert_eq!(
        put("/api/v1/experiments/e1").await.header("allow"),
        Some("GET, HEAD, DELETE")
    );
    assert_eq!(put("/api/v1/config/reload").await.header("allow"), Some("POST"));
    assert_eq!(put("/metrics").await.header("allow"), Some("GET, HEAD"));
    // A path no route serves is 404 whatever the method.
    assert_eq!(put("/api/v1/nope").await.status, StatusCode::NOT_FOUND);
}

/// Every path of the OpenAPI `document` with its methods, upper case.
fn documented_methods(
    document: &serde_json::Value,
) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    document["paths"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(path, item)| {
            let methods = item
                .as_object()
                .unwrap()
                .keys()
                .map(|m| m.to_uppercase())
                .collect();
            (path.clone(), methods)
        })
        .collect()
}

/// Runs openapi-spec-validator (Python) on `document` when the test command provided it
/// (`LEVEE_TEST_PYTHON`); required in CI.
fn openapi_spec_validator_accepts(document: &serde_json::Value) {
    let Ok(python) = std::env::var("LEVEE_TEST_PYTHON") else {
        common::missing_tool("LEVEE_TEST_PYTHON not set: openapi-spec-validator skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, document.to_string()).unwrap();
    common::run_ok(
        std::process::Command::new(python)
            .args(["-m", "openapi_spec_validator"])
            .arg(&file),
    );
}
