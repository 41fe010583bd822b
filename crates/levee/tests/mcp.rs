//! The MCP gateway with the official MCP Python SDK on both sides: two servers (one over
//! Streamable HTTP, one a local process over stdio that Levee starts) federated into one
//! endpoint, and the SDK's client calling through it. scripts/test.sh installs the SDK in
//! the test virtualenv and names its Python in LEVEE_TEST_PYTHON.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::Harness;
use levee_test_support::*;
use serde_json::{json, Value};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/mcp")
        .join(name)
}

/// A free port on loopback (bound, read, released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `weather` server over Streamable HTTP, killed when dropped.
struct HttpServer(Child);

impl HttpServer {
    /// `transport`: `http` (Streamable HTTP) or `sse` (the older HTTP+SSE transport).
    async fn start(python: &str, transport: &str, port: u16) -> HttpServer {
        let child = Command::new(python)
            .arg(fixture("server.py"))
            .args(["weather", transport, &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = HttpServer(child);
        eventually("the weather server listens", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
        server
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Levee with the `weather` server on `port`, the `files` server it starts itself, and
/// `legacy` (the weather tools over the older transport) on `sse_port` when given.
fn gateway(python: &str, port: u16, sse_port: Option<u16>, data_dir: &std::path::Path) -> Harness {
    let legacy = sse_port
        .map(|p| {
            format!("    legacy: {{ url: \"http://127.0.0.1:{p}/sse\", transport: sse, timeout: 5s }}\n")
        })
        .unwrap_or_default();
    Harness::start(&format!(
        "data_dir: \"{}\"
consumers:
  - {{ name: alice, api_keys: [\"{}\"] }}
  - {{ name: bob, api_keys: [\"{}\"] }}
mcp:
  servers:
    weather: {{ url: \"http://127.0.0.1:{port}/mcp\", timeout: 5s }}
    files: {{ command: \"{python}\", args: [\"{}\", files, stdio], timeout: 5s }}
{legacy}  access:
    - {{ consumers: [bob], tools: [weather__forecast] }}
routes:
  - name: tools
    match: {{ path: /mcp }}
    mcp: true
    auth: api_key
",
        data_dir.display(),
        levee::auth::digest_of("alice-key"),
        levee::auth::digest_of("bob-key"),
        fixture("server.py").display()
    ))
}

/// Runs the SDK client as `key` with `calls`; what it saw.
async fn client(python: &str, url: &str, key: &str, calls: Value) -> Value {
    let (python, url, key) = (python.to_owned(), url.to_owned(), key.to_owned());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(fixture("client.py"))
            .args([url, key, calls.to_string()])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap()
}

fn python() -> Option<String> {
    let python = std::env::var("LEVEE_TEST_PYTHON").ok();
    if python.is_none() {
        common::missing_tool("LEVEE_TEST_PYTHON not set: the MCP tests are skipped");
    }
    python
}

/// Each tool call of the first test is a call-log record: server, tool, outcome, consumer.
async fn assert_tool_calls_logged(h: &Harness) {
    let calls_url = format!("{}/api/v1/calls?limit=200", h.admin);
    eventually("the tool calls are stored", || async {
        let calls = get(&calls_url, &[]).await.json()["calls"].clone();
        calls
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["upstream"].is_string())
            .count()
            >= 5
    })
    .await;
    let calls = get(&calls_url, &[]).await.json()["calls"].clone();
    let tool_calls: Vec<(String, String, String, Value)> = calls
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["upstream"].is_string())
        .map(|c| {
            let text = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
            (
                text("consumer"),
                text("upstream"),
                text("target"),
                c["error"].clone(),
            )
        })
        .collect();
    for expected in [
        ("alice", "weather", "weather__forecast", Value::Null),
        ("alice", "files", "files__read_note", Value::Null),
        ("alice", "legacy", "legacy__forecast", Value::Null),
        ("bob", "weather", "weather__forecast", Value::Null),
        ("bob", "weather", "weather__alerts", json!("refused")),
    ] {
        let expected = (
            expected.0.to_owned(),
            expected.1.to_owned(),
            expected.2.to_owned(),
            expected.3,
        );
        assert!(
            tool_calls.contains(&expected),
            "{expected:?} not in {tool_calls:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_lists_and_calls_both_servers_tools_and_a_key_sees_only_its_tool() {
    let Some(python) = python() else { return };
    let port = free_port();
    let _weather = HttpServer::start(&python, "http", port).await;
    let sse_port = free_port();
    let _legacy = HttpServer::start(&python, "sse", sse_port).await;
    let dir = tempfile::tempdir().unwrap();
    let h = gateway(&python, port, Some(sse_port), dir.path());
    let url = h.url("/mcp");
    let seen = client(
        &python,
        &url,
        "alice-key",
        json!([
            ["weather__forecast", {"city": "Oslo"}],
            ["files__read_note", {"name": "todo"}],
            ["nope__x", {}],
            ["legacy__forecast", {"city": "Bergen"}]
        ]),
    )
    .await;
    assert_eq!(
        seen["tools"],
        json!([
            "files__crash",
            "files__read_note",
            "legacy__alerts",
            "legacy__forecast",
            "weather__alerts",
            "weather__forecast"
        ]),
        "{seen}"
    );
    assert_eq!(
        seen["calls"][3]["text"], "Sunny in Bergen",
        "over the older transport: {seen}"
    );
    assert_eq!(seen["calls"][0]["text"], "Sunny in Oslo", "{seen}");
    assert!(
        seen["calls"][1]["text"]
            .as_str()
            .unwrap()
            .starts_with("note todo"),
        "{seen}"
    );
    assert!(
        seen["calls"][2]["refused"]
            .as_str()
            .unwrap()
            .contains("Unknown name"),
        "{seen}"
    );
    assert_eq!(
        seen["prompts"],
        json!(["legacy__packing", "weather__packing"]),
        "{seen}"
    );
    assert_eq!(seen["resources"], json!(["files+notes://today"]), "{seen}");

    // Bob's rule allows one tool: he sees it alone, and may call nothing else.
    let seen = client(
        &python,
        &url,
        "bob-key",
        json!([["weather__forecast", {"city": "Rome"}], ["weather__alerts", {"region": "x"}], ["files__read_note", {"name": "a"}]]),
    )
    .await;
    assert_eq!(seen["tools"], json!(["weather__forecast"]), "{seen}");
    assert_eq!(seen["calls"][0]["text"], "Sunny in Rome");
    assert!(
        seen["calls"][1]["refused"]
            .as_str()
            .unwrap()
            .contains("not allowed"),
        "{seen}"
    );
    assert!(
        seen["calls"][2]["refused"]
            .as_str()
            .unwrap()
            .contains("not allowed"),
        "{seen}"
    );

    assert_tool_calls_logged(&h).await;
    let metrics = get(&format!("{}/metrics", h.admin), &[]).await.text();
    assert!(
        metrics.contains("levee_mcp_tool_calls_total{route=\"tools\",server=\"weather\",outcome=\"ok\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("levee_mcp_server_up{server=\"files\"} 1"),
        "{metrics}"
    );
    common::promtool_accepts(&metrics);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_stdio_server_comes_back_and_a_down_server_leaves_the_others_usable() {
    let Some(python) = python() else { return };
    let port = free_port();
    let weather = HttpServer::start(&python, "http", port).await;
    let dir = tempfile::tempdir().unwrap();
    let h = gateway(&python, port, None, dir.path());
    let url = h.url("/mcp");
    let seen = client(&python, &url, "alice-key", json!([["files__crash", {}]])).await;
    assert!(
        seen["calls"][0]["refused"].is_string(),
        "the crash breaks the call: {seen}"
    );
    // Restarted with back-off: its tools come back, from a new process.
    let mut back = Value::Null;
    for _ in 0..50 {
        back = client(
            &python,
            &url,
            "alice-key",
            json!([["files__read_note", {"name": "n"}]]),
        )
        .await;
        let listed = back["tools"]
            .as_array()
            .unwrap()
            .contains(&json!("files__read_note"));
        if listed && back["calls"][0]["text"].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        back["tools"]
            .as_array()
            .unwrap()
            .contains(&json!("files__read_note")),
        "{back}"
    );
    assert!(
        back["calls"][0]["text"].as_str().unwrap().starts_with("note n"),
        "{back}"
    );

    // The HTTP server goes away: its tools drop out, the local server's keep working.
    drop(weather);
    let seen = client(
        &python,
        &url,
        "alice-key",
        json!([["files__read_note", {"name": "m"}], ["weather__forecast", {"city": "Oslo"}]]),
    )
    .await;
    assert_eq!(
        seen["tools"],
        json!(["files__crash", "files__read_note"]),
        "{seen}"
    );
    assert!(
        seen["calls"][0]["text"].as_str().unwrap().starts_with("note m"),
        "{seen}"
    );
    assert!(
        seen["calls"][1]["refused"].as_str().unwrap().contains("weather"),
        "{seen}"
    );
    let metrics = get(&format!("{}/metrics", h.admin), &[]).await.text();
    assert!(
        metrics.contains("levee_mcp_server_up{server=\"weather\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("levee_mcp_server_up{server=\"files\"} 1"),
        "{metrics}"
    );
}
