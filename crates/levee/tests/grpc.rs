//! gRPC end to end through Levee, with a real gRPC server and client (Python `grpcio`,
//! `tests/fixtures/grpc_peer.py`): every kind of call with its trailers, the gateway's own
//! refusals as gRPC statuses, `grpc-timeout`, retries on gRPC statuses, `grpc` health
//! checks, and gRPC-Web calls bridged to the gRPC upstream.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};

use common::Harness;
use levee::auth::digest_of;
use levee_test_support::*;
use serde_json::{json, Value};

const KEY: &str = "lvk_grpc_caller_0123456789";
const OTHER_KEY: &str = "lvk_grpc_other_0123456789";

fn python() -> Option<String> {
    let python = std::env::var("LEVEE_TEST_PYTHON").ok();
    if python.is_none() {
        common::missing_tool("LEVEE_TEST_PYTHON not set: the gRPC tests are skipped");
    }
    python
}

fn peer_script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/grpc_peer.py")
}

/// A `grpcio` server on loopback; it stops when this is dropped (its stdin closes).
struct GrpcServer {
    child: Child,
    addr: String,
}

impl GrpcServer {
    fn start(python: &str) -> GrpcServer {
        let mut child = Command::new(python)
            .arg(peer_script())
            .arg("server")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().strip_prefix("port ").expect("the server's port");
        GrpcServer {
            child,
            addr: format!("127.0.0.1:{port}"),
        }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes `calls` with the `grpcio` client against `addr`; one result per call.
async fn call(python: &str, addr: &str, calls: Value) -> Vec<Value> {
    let (python, addr) = (python.to_owned(), addr.to_owned());
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(python)
            .arg(peer_script())
            .arg("client")
            .arg(addr)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(calls.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
    })
    .await
    .unwrap()
}

fn levee_addr(h: &Harness) -> String {
    h.gateway().listener_addr("public").unwrap().to_string()
}

/// A gateway with routes chosen by the `x-case` header, all to the gRPC server `upstream`,
/// and a call log in `data_dir`.
fn gateway(upstream: &str, extra_upstream: &str, data_dir: &std::path::Path) -> Harness {
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    Harness::start(&format!(
        r#"data_dir: "{}"
consumers:
  - {{ name: caller, api_keys: ["{}"] }}
  - {{ name: other, api_keys: ["{}"] }}
upstreams:
  g:
    targets: ["{upstream}"]
    protocol: h2c
{extra_upstream}  gone:
    targets: ["{refused}"]
    protocol: h2c
routes:
  - name: auth
    match: {{ path_prefix: /, headers: {{ x-case: auth }} }}
    upstream: g
    auth: api_key
    consumers: [caller]
  - name: limited
    match: {{ path_prefix: /, headers: {{ x-case: limited }} }}
    upstream: g
    rate_limit: {{ rate: 1/m, burst: 1, key: route }}
  - name: down
    match: {{ path_prefix: /, headers: {{ x-case: down }} }}
    upstream: gone
  - name: capped
    match: {{ path_prefix: /, headers: {{ x-case: capped }} }}
    upstream: g
    retry: {{ attempts: 1, per_try_timeout: 300ms }}
  - name: flaky
    match: {{ path_prefix: /, headers: {{ x-case: flaky }} }}
    upstream: g
    retry: {{ attempts: 3, on: [grpc:unavailable], backoff: 10ms }}
  - name: grpc
    match: {{ path_prefix: /test.Echo/, headers: {{ x-case: plain }} }}
    upstream: g
"#,
        data_dir.display(),
        digest_of(KEY),
        digest_of(OTHER_KEY)
    ))
}

/// A gRPC server, a gateway in front of it, and the Python that runs the client.
struct Setup {
    python: String,
    server: GrpcServer,
    h: Harness,
    _data_dir: tempfile::TempDir,
}

impl Setup {
    /// `None` when Python (with grpcio) is not available here.
    fn start(extra_upstream: &str) -> Option<Setup> {
        let python = python()?;
        let server = GrpcServer::start(&python);
        let data_dir = tempfile::tempdir().unwrap();
        let h = gateway(&server.addr, extra_upstream, data_dir.path());
        Some(Setup {
            python,
            server,
            h,
            _data_dir: data_dir,
        })
    }

    /// Makes `calls` through the gateway.
    async fn call(&self, calls: Value) -> Vec<Value> {
        call(&self.python, &levee_addr(&self.h), calls).await
    }
}

fn case(name: &str) -> Value {
    json!([["x-case", name]])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_call_passes_through_with_its_trailers() {
    let Some(setup) = Setup::start("") else { return };
    let h = &setup.h;
    let results = setup.call(
        json!([
            { "method": "Unary", "messages": ["hello"], "metadata": case("plain") },
            { "method": "ServerStream", "messages": ["3"], "metadata": case("plain") },
            { "method": "ClientStream", "messages": ["a", "b", "c"], "metadata": case("plain") },
            { "method": "Bidi", "messages": ["x", "y"], "metadata": case("plain") },
            { "method": "Unary", "messages": ["status:FAILED_PRECONDITION:not yet"], "metadata": case("plain") },
        ]),
    )
    .await;
    let expected = [
        vec!["hello"],
        vec!["msg-0", "msg-1", "msg-2"],
        vec!["a|b|c"],
        vec!["X", "Y"],
        vec![],
    ];
    for (result, messages) in results.iter().zip(expected) {
        assert_eq!(result["messages"], json!(messages), "{result}");
        assert_eq!(
            result["trailers"]["x-trailer"], "kept",
            "trailers intact: {result}"
        );
    }
    for result in &results[..4] {
        assert_eq!(result["code"], "OK", "{result}");
    }
    assert_eq!(results[4]["code"], "FAILED_PRECONDITION");
    assert_eq!(results[4]["details"], "not yet");

    // The calls' statuses are in the access log and the metrics.
    let log = h.access_log();
    let statuses: Vec<&Value> = log.iter().map(|l| &l["grpc_status"]).collect();
    assert_eq!(
        statuses,
        [&json!(0), &json!(0), &json!(0), &json!(0), &json!(9)],
        "{log:?}"
    );
    let metrics = get(&format!("{}/metrics", h.admin), &[]).await.text();
    for line in [
        "levee_grpc_requests_total{route=\"grpc\",grpc_code=\"OK\"} 4",
        "levee_grpc_requests_total{route=\"grpc\",grpc_code=\"FAILED_PRECONDITION\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    let calls = format!("{}/api/v1/calls", h.admin);
    eventually("the call log holds the five calls", || async {
        get(&calls, &[]).await.json()["calls"].as_array().map(Vec::len) == Some(5)
    })
    .await;
    let rows = get(&calls, &[]).await.json();
    let mut logged: Vec<i64> = rows["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["grpc_status"].as_i64().unwrap())
        .collect();
    logged.sort();
    assert_eq!(logged, [0, 0, 0, 0, 9]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_own_refusals_arrive_as_grpc_statuses() {
    let Some(setup) = Setup::start("") else { return };
    let unary = |metadata: Value| json!({ "method": "Unary", "messages": ["hi"], "metadata": metadata });
    let results = setup
        .call(json!([
            unary(case("auth")),
            unary(json!([
                ["x-case", "auth"],
                ["authorization", format!("Bearer {OTHER_KEY}")]
            ])),
            unary(json!([
                ["x-case", "auth"],
                ["authorization", format!("Bearer {KEY}")]
            ])),
            unary(case("limited")),
            unary(case("limited")),
            unary(case("down")),
            unary(case("nothing-matches")),
        ]))
        .await;
    let codes: Vec<&str> = results.iter().map(|r| r["code"].as_str().unwrap()).collect();
    assert_eq!(
        codes,
        [
            "UNAUTHENTICATED",
            "PERMISSION_DENIED",
            "OK",
            "OK",
            "RESOURCE_EXHAUSTED",
            "UNAVAILABLE",
            "UNIMPLEMENTED"
        ],
        "{results:#?}"
    );
    assert!(
        results[4]["details"].as_str().unwrap().contains("(rate_limited)"),
        "Levee's code is in the message: {}",
        results[4]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_is_honoured_and_capped_by_the_route() {
    let Some(setup) = Setup::start("") else { return };
    let results = setup
        .call(json!([
            // The client's deadline is shorter than the route's: the client's holds.
            { "method": "Unary", "messages": ["sleep:2"], "metadata": case("plain"), "timeout": 0.3 },
            // The route's per-try timeout (300ms) is shorter than the client's 5 s.
            { "method": "Unary", "messages": ["sleep:2"], "metadata": case("capped"), "timeout": 5.0 },
            { "method": "Unary", "messages": ["sleep:0.05"], "metadata": case("capped"), "timeout": 5.0 },
        ]))
        .await;
    let codes: Vec<&str> = results.iter().map(|r| r["code"].as_str().unwrap()).collect();
    assert_eq!(
        codes,
        ["DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED", "OK"],
        "{results:#?}"
    );
    // The second was cut by Levee (its own refusal names the code), not by the client.
    assert!(
        results[1]["details"]
            .as_str()
            .unwrap()
            .contains("upstream_timeout"),
        "{}",
        results[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_answered_unavailable_is_retried_when_the_route_says_so() {
    let Some(setup) = Setup::start("") else { return };
    let h = &setup.h;
    let results = setup
        .call(json!([
            // Fails twice with UNAVAILABLE, then succeeds: the third attempt answers.
            { "method": "Unary", "messages": ["flaky:a:2"], "metadata": case("flaky") },
            // Without the policy, the client sees the UNAVAILABLE.
            { "method": "Unary", "messages": ["flaky:b:1"], "metadata": case("plain") },
        ]))
        .await;
    assert_eq!(results[0]["code"], "OK", "{results:#?}");
    assert_eq!(results[0]["messages"], json!(["flaky:a:2"]));
    assert_eq!(results[1]["code"], "UNAVAILABLE");
    let metrics = get(&format!("{}/metrics", h.admin), &[]).await.text();
    assert!(
        metrics.contains("levee_retries_total{route=\"flaky\",reason=\"status\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_checks_mark_a_target_down_and_up() {
    let Some(setup) = Setup::start(
        "    health_check: { kind: grpc, interval: 50ms, unhealthy_after: 1, healthy_after: 1 }\n",
    ) else {
        return;
    };
    let (h, python, server) = (&setup.h, &setup.python, &setup.server);
    let upstreams = format!("{}/api/v1/upstreams", h.admin);
    let passing = || async {
        let json = get(&upstreams, &[]).await.json();
        let g = json["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == "g")
            .unwrap()
            .clone();
        g["targets"][0]["health_check_passing"].as_bool().unwrap()
    };
    let set = |status: &'static str| {
        let (python, addr) = (python.clone(), server.addr.clone());
        async move {
            let result = call(
                &python,
                &addr,
                json!([{ "method": "SetHealth", "messages": [status] }]),
            )
            .await;
            assert_eq!(result[0]["code"], "OK", "{result:?}");
        }
    };
    eventually("the target passes its gRPC health checks", || async {
        passing().await
    })
    .await;
    set("NOT_SERVING").await;
    eventually("NOT_SERVING marks the target down", || async { !passing().await }).await;
    set("SERVING").await;
    eventually("SERVING brings it back", || async { passing().await }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_web_call_is_bridged_to_the_grpc_upstream() {
    use base64::Engine;
    let Some(setup) = Setup::start("") else { return };
    let h = &setup.h;
    let message = levee::grpc::frame_message(b"from a browser");
    for (content_type, text) in [
        ("application/grpc-web+proto", false),
        ("application/grpc-web-text", true),
    ] {
        let body = if text {
            bytes::Bytes::from(base64::engine::general_purpose::STANDARD.encode(&message))
        } else {
            message.clone()
        };
        let request = http::Request::post(h.url("/test.Echo/Unary"))
            .header("content-type", content_type)
            .header("x-grpc-web", "1")
            .header("x-case", "plain")
            .body(full(body))
            .unwrap();
        let answer = send(&client(false), request).await;
        assert_eq!(answer.status, 200);
        let expected_type = if text {
            "application/grpc-web-text+proto"
        } else {
            "application/grpc-web+proto"
        };
        assert_eq!(answer.header("content-type"), Some(expected_type));
        let bytes = if text {
            base64::engine::general_purpose::STANDARD
                .decode(&answer.body)
                .unwrap()
        } else {
            answer.body.to_vec()
        };
        // The message, then the trailers as the body's last frame (flag 0x80).
        let (echoed, trailers) = bytes.split_at(message.len());
        assert_eq!(echoed, &message[..], "{content_type}");
        assert_eq!(trailers[0], 0x80, "{content_type}");
        let text = String::from_utf8_lossy(&trailers[5..]).to_string();
        assert!(text.contains("grpc-status: 0\r\n"), "{text}");
        assert!(text.contains("x-trailer: kept\r\n"), "{text}");
    }
    let log = h.access_log();
    assert!(log.iter().all(|l| l["grpc_status"] == 0), "{log:?}");
}
