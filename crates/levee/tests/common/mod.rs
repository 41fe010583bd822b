//! Starts a real gateway in-process on loopback port 0, with the access log captured.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use levee::{AccessLogSink, RunningGateway};

#[derive(Clone, Default)]
pub struct SharedBuf(pub Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub struct Harness {
    pub gateway: Option<RunningGateway>,
    pub logs: SharedBuf,
    /// `http://127.0.0.1:PORT` of the `public` listener.
    pub base: String,
    pub admin: String,
}

impl Harness {
    /// Starts a gateway from `yaml`; a `public` listener and the admin listener are added on
    /// port 0 unless the YAML declares its own.
    pub fn start(yaml: &str) -> Harness {
        let text = Harness::compose(yaml);
        let config =
            levee::load_str(&text, "test.yaml").unwrap_or_else(|e| panic!("config:\n{e}\n---\n{text}"));
        Harness::run(config)
    }

    /// Like [`Harness::start`], from a file (`path`, written with the composed YAML), so the
    /// gateway can reload it.
    pub fn start_file(path: &std::path::Path, yaml: &str) -> Harness {
        write_atomically(path, &Harness::compose(yaml));
        let config = levee::load_file(path).unwrap_or_else(|e| panic!("config:\n{e}"));
        Harness::run(config)
    }

    /// `yaml` with a `public` listener and the admin listener on port 0, one worker and a 5 s
    /// grace period, unless it sets them itself.
    pub fn compose(yaml: &str) -> String {
        let mut text = String::new();
        if !yaml.contains("listeners:") {
            text.push_str("listeners:\n  - name: public\n    bind: 127.0.0.1:0\n");
        }
        if !yaml.contains("admin:") {
            text.push_str("admin:\n  bind: 127.0.0.1:0\n");
        }
        if !yaml.contains("workers:") {
            text.push_str("workers: 1\n");
        }
        if !yaml.contains("shutdown_grace:") {
            text.push_str("shutdown_grace: 5s\n");
        }
        text.push_str(yaml);
        text
    }

    fn run(config: levee::Config) -> Harness {
        let logs = SharedBuf::default();
        let gateway = RunningGateway::start(config, AccessLogSink::Writer(Box::new(logs.clone()))).unwrap();
        let base = format!("http://{}", gateway.listener_addr("public").unwrap());
        let admin = format!("http://{}", gateway.admin_addr().unwrap());
        Harness {
            gateway: Some(gateway),
            logs,
            base,
            admin,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn gateway(&self) -> &RunningGateway {
        self.gateway.as_ref().unwrap()
    }

    /// Access log lines written so far, parsed.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        let bytes = self.logs.0.lock().unwrap().clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Stops the gateway from a blocking thread (joining workers must not block the test's
    /// event loop).
    pub async fn stop(mut self) {
        if let Some(gateway) = self.gateway.take() {
            tokio::task::spawn_blocking(move || gateway.stop()).await.unwrap();
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(gateway) = self.gateway.take() {
            // Dropping joins worker threads; do it off the test's event loop thread.
            std::thread::spawn(move || drop(gateway));
        }
    }
}

/// An upstreams+routes block with one upstream `u` of `targets` and a catch-all route.
pub fn single_upstream(targets: &[std::net::SocketAddr], extra_upstream: &str, extra_route: &str) -> String {
    let list: Vec<String> = targets.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "upstreams:\n  u:\n    targets: [{}]\n{extra_upstream}routes:\n  - name: all\n    match: {{ path_prefix: / }}\n    upstream: u\n{extra_route}",
        list.join(", ")
    )
}

/// Replaces `path` the way editors and deploy tools do: write a temporary file, then rename.
pub fn write_atomically(path: &std::path::Path, text: &str) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

/// `promtool check metrics` must report nothing. Skipped (with a note) only when promtool is
/// not installed; the project's test script installs it.
pub fn promtool_accepts(text: &str) {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        missing_tool("promtool not installed: exposition not linted");
        return;
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool: {report}"
    );
}

/// A tool a test needs is not installed: in CI (where scripts/test.sh installs every one)
/// that fails the test; elsewhere the check is skipped, saying so.
pub fn missing_tool(note: &str) {
    assert!(
        std::env::var("CI").is_err(),
        "a tool is missing in CI, where scripts/test.sh installs it: {note}"
    );
    eprintln!("{note}");
}

/// Runs `command` and fails the test with its output unless it exits 0; returns stdout.
pub fn run_ok(command: &mut std::process::Command) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `POST /api/v1/config/reload` without credentials.
pub async fn reload(h: &Harness) -> levee_test_support::Answer {
    use levee_test_support::{client, empty, send};
    send(
        &client(false),
        http::Request::post(format!("{}/api/v1/config/reload", h.admin))
            .body(empty())
            .unwrap(),
    )
    .await
}

/// An admin API call with `token` (none: no header) and an optional JSON body.
pub async fn admin_call(
    h: &Harness,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> levee_test_support::Answer {
    use levee_test_support::{client, empty, full, send};
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("{}{path}", h.admin));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let body = body.map_or_else(empty, |b| full(b.to_string()));
    send(&client(false), request.body(body).unwrap()).await
}

/// The call-log row of the request that got `answer` (by its `x-request-id`), polled until
/// the writer has stored it.
pub async fn call_of(h: &Harness, answer: &levee_test_support::Answer) -> serde_json::Value {
    let id = answer.header("x-request-id").unwrap().to_owned();
    let calls = format!("{}/api/v1/calls?limit=500", h.admin);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let all = levee_test_support::get(&calls, &[]).await.json()["calls"].clone();
        let found = all
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["request_id"] == id.as_str());
        if let Some(row) = found {
            return row.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "call {id} not stored");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
