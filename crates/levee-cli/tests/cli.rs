//! The `levee` binary: exit codes, `check` output, `run` with signals, and `demo`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use levee_test_support::*;

const LEVEE: &str = env!("CARGO_BIN_EXE_levee");

fn levee(args: &[&str]) -> std::process::Output {
    Command::new(LEVEE).args(args).output().unwrap()
}

fn write_config(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("levee.yaml");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    path.to_string_lossy().into_owned()
}

/// Kills the child if a test fails midway.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args(["-s", name, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits (off the event loop) for the child to exit and returns its exit code.
async fn exit_code(mut child: Running) -> Option<i32> {
    tokio::task::spawn_blocking(move || wait_exit(&mut child.0).code())
        .await
        .unwrap()
}

/// Waits for the child to exit, at most `DEADLINE`.
fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "levee did not exit in time");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn version_and_usage_errors() {
    let out = levee(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("levee "));
    let out = levee(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
}

#[test]
fn check_accepts_a_valid_file_and_lists_every_problem_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_config(
        &dir,
        "listeners: [{ name: p, bind: 127.0.0.1:0 }]\nupstreams: { u: { targets: [127.0.0.1:1] } }\nroutes: [{ name: r, upstream: u }]\n",
    );
    let out = levee(&["check", "--config", &good]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = write_config(
        &dir,
        "listeners: [{ name: p, bind: 127.0.0.1:0 }]\nupstreams: { u: { targets: [127.0.0.1:1] } }\nroutes:\n  - { name: r, upstream: nope }\n  - { name: r, upstream: u }\n",
    );
    let out = levee(&["check", "--config", &bad]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    for line in lines {
        let mut parts = line.splitn(4, ':');
        assert_eq!(parts.next(), Some(bad.as_str()));
        assert!(parts.next().unwrap().parse::<usize>().is_ok(), "{line}");
        assert!(parts.next().unwrap().parse::<usize>().is_ok(), "{line}");
        assert!(parts.next().unwrap().len() > 5, "{line}");
    }

    let out = levee(&["check", "--config", "/nonexistent/levee.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
}

#[test]
fn run_refuses_to_start_on_a_bad_config_or_a_taken_port() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write_config(
        &dir,
        "listeners: [{ name: p, bind: 127.0.0.1:0 }]\nroutes: [{ name: r, upstream: missing }]\n",
    );
    let out = levee(&["run", "--config", &bad]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown upstream `missing`"));

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cfg = write_config(
        &dir,
        &format!(
            "listeners: [{{ name: p, bind: 127.0.0.1:{port} }}]\nupstreams: {{ u: {{ targets: [127.0.0.1:1] }} }}\nroutes: [{{ name: r, upstream: u }}]\n"
        ),
    );
    let out = levee(&["run", "--config", &cfg]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot listen on"), "{stderr}");
}

/// Reads stdout lines in the background.
struct Lines(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Lines {
    fn follow(child: &mut Child) -> Lines {
        let stdout = child.stdout.take().unwrap();
        let lines: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Lines(lines)
    }

    fn find(&self, predicate: &impl Fn(&str) -> bool) -> Option<String> {
        self.0.lock().unwrap().iter().find(|l| predicate(l)).cloned()
    }

    async fn wait_for(&self, what: &str, predicate: impl Fn(&str) -> bool) -> String {
        eventually(what, || std::future::ready(self.find(&predicate).is_some())).await;
        self.find(&predicate).unwrap()
    }
}

/// Starts `levee run --config cfg` with stdout followed.
fn run_levee(cfg: &str) -> (Running, Lines) {
    let mut child = Running(
        Command::new(LEVEE)
            .args(["run", "--config", cfg])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = Lines::follow(&mut child.0);
    (child, lines)
}

/// The `addr` field of the JSON log line whose message is `message`.
async fn logged_addr(lines: &Lines, message: &str) -> String {
    let needle = format!("\"message\":\"{message}\"");
    let line = lines.wait_for(message, |l| l.contains(&needle)).await;
    serde_json::from_str::<serde_json::Value>(&line).unwrap()["addr"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_0() {
    let upstream = MockUpstream::start(|_| Reply::ok("finished").delay(Duration::from_millis(700))).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        &dir,
        &format!(
            "listeners: [{{ name: public, bind: 127.0.0.1:0 }}]\nadmin: {{ bind: 127.0.0.1:0 }}\nupstreams: {{ u: {{ targets: [\"{}\"] }} }}\nroutes: [{{ name: r, upstream: u }}]\n",
            upstream.addr
        ),
    );
    let (child, lines) = run_levee(&cfg);
    let public = logged_addr(&lines, "listening").await;
    let admin = logged_addr(&lines, "admin listening").await;

    let url = format!("http://{public}/slow");
    let in_flight = tokio::spawn(async move { get(&url, &[]).await });
    eventually("request reached the upstream", || {
        std::future::ready(upstream.hits() == 1)
    })
    .await;
    signal(&child.0, "TERM");
    // The signal is handled asynchronously: readiness turns 503 once it is.
    let readyz = format!("http://{admin}/readyz");
    eventually("readiness fails while draining", || async {
        get(&readyz, &[]).await.status == 503
    })
    .await;
    assert!(
        !in_flight.is_finished(),
        "readiness turned before the in-flight request ended"
    );

    let answer = in_flight.await.unwrap();
    assert_eq!(answer.text(), "finished", "the in-flight request completed");
    assert_eq!(exit_code(child).await, Some(0));
    // The access log line of the drained request was flushed before exit.
    let log = lines
        .wait_for("access log line", |l| l.contains("\"log\":\"access\""))
        .await;
    assert!(log.contains("\"path\":\"/slow\""), "{log}");
}

#[tokio::test]
async fn demo_serves_the_urls_it_prints() {
    let mut child = Running(
        Command::new(LEVEE)
            .args(["demo", "--port", "0", "--admin-port", "0"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = Lines::follow(&mut child.0);
    let gateway = lines
        .wait_for("gateway URL", |l| l.trim_start().starts_with("gateway:"))
        .await;
    let gateway = gateway.split_whitespace().nth(1).unwrap().to_string();
    // The printed commands run as printed: this binary is not on PATH, so the demo names it
    // by its path.
    let slo = lines
        .wait_for("the slo status hint", |l| l.contains(" slo status --admin "))
        .await;
    let words: Vec<&str> = slo.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "slo").unwrap();
    let program = words[..at].join(" ");
    assert_ne!(program, "levee", "{slo}");
    let status = Command::new(&program).args(&words[at..at + 4]).output().unwrap();
    assert!(
        status.status.success(),
        "{slo}: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(String::from_utf8_lossy(&status.stdout).contains("flaky-availability"));
    let healthy = get(&format!("{gateway}/healthy/hello"), &[]).await;
    assert_eq!(healthy.status, 200);
    assert_eq!(healthy.json()["upstream"], "healthy");
    // The flaky upstream fails a share of requests; the gateway answers every one.
    let mut statuses = std::collections::BTreeSet::new();
    for _ in 0..30 {
        statuses.insert(get(&format!("{gateway}/flaky/x"), &[]).await.status.as_u16());
    }
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(statuses.iter().any(|s| *s >= 500), "{statuses:?}");
    assert_eq!(get(&format!("{gateway}/nowhere"), &[]).await.status, 404);
    // With retries and a fallback the same upstream always answers 200.
    for _ in 0..20 {
        assert_eq!(get(&format!("{gateway}/retried/x"), &[]).await.status, 200);
    }
    signal(&child.0, "INT");
    assert_eq!(exit_code(child).await, Some(0));
}

#[tokio::test]
async fn a_second_signal_stops_without_waiting_for_the_drain() {
    let (silent, accepted, _task) = silent_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        &dir,
        &format!(
            "listeners: [{{ name: public, bind: 127.0.0.1:0 }}]\nshutdown_grace: 60s\nupstreams: {{ u: {{ targets: [\"{silent}\"], timeouts: {{ request: 60s }} }} }}\nroutes: [{{ name: r, upstream: u }}]\n"
        ),
    );
    let (mut child, lines) = run_levee(&cfg);
    let public = logged_addr(&lines, "listening").await;
    let url = format!("http://{public}/hang");
    let _stuck = tokio::spawn(async move {
        client(false)
            .request(http::Request::get(url).body(empty()).unwrap())
            .await
    });
    eventually("request reached the upstream", || {
        std::future::ready(accepted.load(std::sync::atomic::Ordering::SeqCst) == 1)
    })
    .await;
    signal(&child.0, "TERM");
    lines
        .wait_for("draining log line", |l| l.contains("\"draining\""))
        .await;
    signal(&child.0, "TERM");
    let started = std::time::Instant::now();
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut child.0))
        .await
        .unwrap();
    assert_eq!(status.code(), Some(1), "a forced stop is not a clean stop");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn key_new_prints_a_fresh_key_and_its_digest() {
    let first = String::from_utf8(levee(&["key", "new"]).stdout).unwrap();
    let second = String::from_utf8(levee(&["key", "new"]).stdout).unwrap();
    let field = |text: &str, name: &str| -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .to_string()
    };
    let key = field(&first, "key:");
    assert!(key.starts_with("lvk_") && key.len() == 68, "{key}");
    assert_eq!(field(&first, "digest:"), levee_digest(&key));
    assert_ne!(key, field(&second, "key:"), "keys are random");
}

fn levee_digest(key: &str) -> String {
    levee::auth::digest_of(key)
}

#[tokio::test]
async fn calls_and_top_read_a_running_gateway() {
    let upstream = MockUpstream::fixed("ok").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        &dir,
        &format!(
            "listeners: [{{ name: public, bind: 127.0.0.1:0 }}]\nadmin: {{ bind: 127.0.0.1:0 }}\ndata_dir: \"{}\"\nupstreams: {{ u: {{ targets: [\"{}\"] }} }}\nroutes: [{{ name: shop, upstream: u }}]\n",
            dir.path().join("data").display(),
            upstream.addr
        ),
    );
    let (child, lines) = run_levee(&cfg);
    let public = logged_addr(&lines, "listening").await;
    let admin = format!("http://{}", logged_addr(&lines, "admin listening").await);
    for path in ["/one", "/two", "/three"] {
        get(&format!("http://{public}{path}"), &[]).await;
    }
    let calls_json = {
        let admin = admin.clone();
        move || {
            let out = levee(&["calls", "--admin", &admin, "--json"]);
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
        }
    };
    eventually("three calls stored", || {
        let calls = calls_json.clone();
        async move {
            tokio::task::spawn_blocking(calls).await.unwrap()["calls"]
                .as_array()
                .map(|a| a.len())
                == Some(3)
        }
    })
    .await;
    let admin_for_table = admin.clone();
    let table =
        tokio::task::spawn_blocking(move || levee(&["calls", "--admin", &admin_for_table, "--limit", "2"]))
            .await
            .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    let lines_out: Vec<&str> = text.lines().collect();
    assert!(
        lines_out[0].starts_with("time") && lines_out[0].contains("status"),
        "{text}"
    );
    assert_eq!(lines_out.len(), 3, "header and two rows: {text}");
    assert!(lines_out[1].contains("/three"), "newest first: {text}");
    let top = tokio::task::spawn_blocking(move || levee(&["top", "--admin", &admin]))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&top.stdout);
    assert!(
        text.lines().any(|l| l.starts_with("shop") && l.contains(" 3 ")),
        "{text}"
    );
    signal(&child.0, "TERM");
    assert_eq!(exit_code(child).await, Some(0));
}

/// A config with a `public` and an admin listener on free ports, routing everything to
/// `upstream`.
fn simple_config(upstream: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "listeners: [{{ name: public, bind: 127.0.0.1:0 }}]\nadmin: {{ bind: 127.0.0.1:0 }}\nworkers: 2\nshutdown_grace: 5s\nupstreams: {{ u: {{ targets: [\"{upstream}\"] }} }}\nroutes: [{{ name: r, upstream: u }}]\n{extra}"
    )
}

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn sighup_and_a_watched_file_reload_the_config() {
    let first = MockUpstream::fixed("first").await;
    let second = MockUpstream::fixed("second").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&dir, &simple_config(first.addr, ""));
    let mut child = Running(
        Command::new(LEVEE)
            .args(["run", "--config", &cfg, "--watch"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = Lines::follow(&mut child.0);
    let public = logged_addr(&lines, "listening").await;
    let admin = logged_addr(&lines, "admin listening").await;
    let url = format!("http://{public}/");
    assert_eq!(get(&url, &[]).await.text(), "first");

    // A changed file is picked up by the watcher (replaced by rename, as editors do).
    let tmp = dir.path().join("next.yaml");
    std::fs::write(&tmp, simple_config(second.addr, "")).unwrap();
    std::fs::rename(&tmp, &cfg).unwrap();
    eventually("the watcher reloads the changed file", || async {
        get(&url, &[]).await.text() == "second"
    })
    .await;

    // SIGHUP reloads too; a broken file is refused and counted, the running config stays.
    std::fs::write(&cfg, "routes: [ this is not yaml").unwrap();
    signal(&child.0, "HUP");
    let metrics = format!("http://{admin}/metrics");
    eventually("the refused reload is counted", || async {
        let text = get(&metrics, &[]).await.text();
        metric(&text, "levee_config_reloads_total{result=\"error\"}").is_some_and(|n| n >= 1)
    })
    .await;
    assert_eq!(
        get(&url, &[]).await.text(),
        "second",
        "still serving the last good config"
    );
    std::fs::write(&cfg, simple_config(first.addr, "")).unwrap();
    signal(&child.0, "HUP");
    eventually("SIGHUP reloads", || async {
        get(&url, &[]).await.text() == "first"
    })
    .await;
    let text = get(&metrics, &[]).await.text();
    assert_eq!(metric(&text, "levee_config_version"), Some(3), "{text}");
    signal(&child.0, "TERM");
    assert_eq!(exit_code(child).await, Some(0));
}

fn pid_in(file: &std::path::Path) -> Option<u32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

fn alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped by its new parent) is gone for our purpose.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usr2_restarts_on_the_same_sockets_under_load_without_a_failed_request() {
    let upstream = MockUpstream::fixed("ok").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        &dir,
        &simple_config(upstream.addr, "access_log: { enabled: false }\n"),
    );
    let pid_file = dir.path().join("levee.pid");
    let mut child = Running(
        Command::new(LEVEE)
            .args(["run", "--config", &cfg, "--pid-file", pid_file.to_str().unwrap()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = Lines::follow(&mut child.0);
    let public = logged_addr(&lines, "listening").await;
    let admin = logged_addr(&lines, "admin listening").await;
    let old_pid = child.0.id();
    eventually("pid file written", || {
        std::future::ready(pid_in(&pid_file) == Some(old_pid))
    })
    .await;

    let load = Load::start(&format!("http://{public}/"), 4);
    tokio::time::sleep(Duration::from_millis(200)).await;
    signal(&child.0, "USR2");
    eventually("the successor wrote its pid", || {
        std::future::ready(pid_in(&pid_file).is_some_and(|p| p != old_pid))
    })
    .await;
    let new_pid = pid_in(&pid_file).unwrap();
    let status = tokio::task::spawn_blocking(move || {
        let status = wait_exit(&mut child.0);
        (status, child)
    })
    .await
    .unwrap();
    assert_eq!(status.0.code(), Some(0), "the old process drained and exited");
    // Traffic goes on against the successor on the same port.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = load.finish().await;
    assert!(
        report.failures.is_empty(),
        "{} failed, e.g. {:?}",
        report.failures.len(),
        report.failures.first()
    );
    assert!(report.ok > 50, "{report:?}");
    assert!(alive(new_pid));
    assert_eq!(get(&format!("http://{admin}/readyz"), &[]).await.status, 200);
    assert_eq!(get(&format!("http://{public}/"), &[]).await.text(), "ok");

    // The successor stops like any Levee.
    Command::new("kill")
        .args(["-TERM", &new_pid.to_string()])
        .status()
        .unwrap();
    eventually("the successor exits", || std::future::ready(!alive(new_pid))).await;
    assert!(!pid_file.exists(), "a clean stop removes its own pid file");
}

#[tokio::test]
async fn a_successor_that_cannot_start_leaves_the_old_process_serving() {
    let upstream = MockUpstream::fixed("ok").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&dir, &simple_config(upstream.addr, ""));
    let (child, lines) = run_levee(&cfg);
    let public = logged_addr(&lines, "listening").await;
    // The file on disk is broken by now: the successor refuses to start.
    std::fs::write(&cfg, "listeners: [").unwrap();
    signal(&child.0, "USR2");
    let failure = lines
        .wait_for("the failed restart is logged", |l| l.contains("restart failed"))
        .await;
    assert!(failure.contains("exited before it was ready"), "{failure}");
    assert_eq!(get(&format!("http://{public}/"), &[]).await.text(), "ok");
    assert!(alive(child.0.id()));
}

#[test]
fn check_reports_warnings_without_failing_and_speaks_json() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        &dir,
        "listeners: [{ name: p, bind: 127.0.0.1:0 }]\nupstreams:\n  lonely: { targets: [127.0.0.1:1] }\n  spare: { targets: [127.0.0.1:2, 127.0.0.1:3] }\nroutes:\n  - name: r\n    upstream: lonely\n    retry: { attempts: 3, budget: 1.0 }\n",
    );
    let out = levee(&["check", "--config", &cfg]);
    assert_eq!(out.status.code(), Some(0), "warnings do not fail the check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = stderr.lines().collect();
    assert_eq!(warnings.len(), 3, "{stderr}");
    for needle in [
        "one target and no health_check",
        "`spare` is not used by any route",
        "budget of 1",
    ] {
        let line = warnings
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle}: {stderr}"));
        assert!(
            line.starts_with(&format!("{cfg}:")) && line.contains(": warning: "),
            "{line}"
        );
    }
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 warning(s)"));

    let out = levee(&["check", "--config", &cfg, "--format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["valid"], true);
    assert_eq!(report["errors"].as_array().unwrap().len(), 0);
    let first = &report["warnings"][0];
    assert_eq!(first["file"], cfg.as_str());
    assert!(first["line"].as_u64().unwrap() > 0 && first["col"].as_u64().unwrap() > 0);
    assert_eq!(report["warnings"].as_array().unwrap().len(), 3);

    let bad = write_config(
        &dir,
        "listeners: [{ name: p, bind: 127.0.0.1:0 }]\nroutes: [{ name: r, upstream: nope }]\n",
    );
    let out = levee(&["check", "--config", &bad, "--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["valid"], false);
    assert!(report["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("unknown upstream `nope`"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_completes_every_in_flight_request() {
    let upstream = MockUpstream::start(|_| Reply::ok("done").delay(Duration::from_millis(600))).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        &dir,
        &simple_config(upstream.addr, "access_log: { enabled: false }\n"),
    );
    let (child, lines) = run_levee(&cfg);
    let public = logged_addr(&lines, "listening").await;
    // Twenty slow requests on their own connections, spread over both workers.
    let in_flight: Vec<_> = (0..20)
        .map(|i| {
            let url = format!("http://{public}/slow/{i}");
            tokio::spawn(async move { get(&url, &[]).await })
        })
        .collect();
    eventually("all twenty reached the upstream", || {
        std::future::ready(upstream.hits() == 20)
    })
    .await;
    signal(&child.0, "TERM");
    for request in in_flight {
        let answer = request.await.unwrap();
        assert_eq!((answer.status.as_u16(), answer.text().as_str()), (200, "done"));
    }
    assert_eq!(exit_code(child).await, Some(0));
}

#[tokio::test]
async fn usr2_starts_the_binary_now_on_disk_after_an_upgrade() {
    let upstream = MockUpstream::fixed("ok").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&dir, &simple_config(upstream.addr, ""));
    let binary = dir.path().join("levee");
    std::fs::copy(LEVEE, &binary).unwrap();
    let pid_file = dir.path().join("levee.pid");
    let mut child = Running(
        Command::new(&binary)
            .args(["run", "--config", &cfg, "--pid-file", pid_file.to_str().unwrap()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = Lines::follow(&mut child.0);
    let public = logged_addr(&lines, "listening").await;
    let old_pid = child.0.id();
    eventually("pid file written", || {
        std::future::ready(pid_in(&pid_file) == Some(old_pid))
    })
    .await;
    // An upgrade: the new build is renamed over the running one.
    let staged = dir.path().join("levee.new");
    std::fs::copy(LEVEE, &staged).unwrap();
    std::fs::rename(&staged, &binary).unwrap();
    signal(&child.0, "USR2");
    eventually("the successor wrote its pid", || {
        std::future::ready(pid_in(&pid_file).is_some_and(|p| p != old_pid))
    })
    .await;
    let new_pid = pid_in(&pid_file).unwrap();
    let image = std::fs::read_link(format!("/proc/{new_pid}/exe")).unwrap();
    assert_eq!(image, binary, "the successor runs the file now at the path");
    assert_eq!(get(&format!("http://{public}/"), &[]).await.text(), "ok");
    Command::new("kill")
        .args(["-TERM", &new_pid.to_string()])
        .status()
        .unwrap();
    eventually("the successor exits", || std::future::ready(!alive(new_pid))).await;
}

#[tokio::test]
async fn slo_status_reads_a_running_gateway_and_slo_rules_pass_promtool() {
    let upstream = MockUpstream::fixed("ok").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        &dir,
        &format!(
            "listeners: [{{ name: public, bind: 127.0.0.1:0 }}]\nadmin: {{ bind: 127.0.0.1:0 }}\nupstreams: {{ u: {{ targets: [\"{}\"] }} }}\nroutes: [{{ name: shop, upstream: u }}]\nslos:\n  - {{ name: shop-availability, route: shop, objective: 99.5, sli: availability }}\n  - {{ name: shop-latency, route: shop, objective: 99, window: 7d, sli: {{ latency_below: 250ms }} }}\n",
            upstream.addr
        ),
    );

    // The rules for this config pass promtool.
    let rules = levee(&["slo", "rules", "--config", &cfg]);
    assert!(
        rules.status.success(),
        "{}",
        String::from_utf8_lossy(&rules.stderr)
    );
    let text = String::from_utf8_lossy(&rules.stdout).into_owned();
    assert!(
        text.contains("levee_slo:error_ratio:rate5m") && text.contains("shop-latency"),
        "{text}"
    );
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, &text).unwrap();
    match std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => {
            assert!(std::env::var("CI").is_err(), "promtool is required in CI");
            eprintln!("promtool not installed: rules not checked");
        }
    }

    let (child, lines) = run_levee(&cfg);
    let public = logged_addr(&lines, "listening").await;
    let admin = format!("http://{}", logged_addr(&lines, "admin listening").await);
    for _ in 0..4 {
        get(&format!("http://{public}/"), &[]).await;
    }
    let status = move || {
        let out = levee(&["slo", "status", "--admin", &admin]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Evaluated once a second: the table shows both SLOs with all four events good.
    eventually("slo status shows the SLI", || {
        let status = status.clone();
        async move {
            let text = tokio::task::spawn_blocking(status).await.unwrap();
            text.lines().any(|l| {
                l.starts_with("shop-availability") && l.contains("99.500%") && l.contains("100.000%")
            }) && text.lines().any(|l| l.starts_with("shop-latency"))
        }
    })
    .await;
    let text = tokio::task::spawn_blocking(status).await.unwrap();
    assert!(text.lines().next().unwrap().starts_with("slo"), "{text}");
    signal(&child.0, "TERM");
    assert_eq!(exit_code(child).await, Some(0));
}

/// A file of 100,000 routes (and 10,000 upstreams, 1,000 consumers) is checked in one run,
/// and the one broken route at its very end is reported at its line. (How long it takes is
/// measured by bench/config.sh, not asserted here.)
#[test]
fn check_handles_a_hundred_thousand_routes() {
    use std::fmt::Write as _;
    let routes = 100_000;
    let mut text = String::from("listeners: [{ name: p, bind: 127.0.0.1:0 }]\nupstreams:\n");
    for u in 0..routes / 10 {
        writeln!(text, "  svc-{u}: {{ targets: [\"127.0.0.1:{}\"] }}", 20_000 + u).unwrap();
    }
    text.push_str("consumers:\n");
    for c in 0..routes / 100 {
        writeln!(
            text,
            "  - {{ name: tenant-{c}, api_keys: [\"sha256:{c:064x}\"] }}"
        )
        .unwrap();
    }
    text.push_str("routes:\n");
    for r in 0..routes {
        let upstream = if r == routes - 1 {
            "no-such-upstream".to_string()
        } else {
            format!("svc-{}", r % (routes / 10))
        };
        let tenant = r / 10;
        let matcher = match r % 4 {
            0 => format!("{{ host: t{tenant}.example.com, path_prefix: /api/v{} }}", r % 3),
            1 => format!("{{ host: t{tenant}.example.com, path: /health/{r} }}"),
            2 => format!(
                "{{ host: t{tenant}.example.com, path: \"/users/{{id}}/orders/{r}\", methods: [GET] }}"
            ),
            _ => format!("{{ path_prefix: /tenants/{tenant}/items/{r} }}"),
        };
        writeln!(
            text,
            "  - {{ name: route-{r}, match: {matcher}, upstream: {upstream} }}"
        )
        .unwrap();
    }
    let lines = text.lines().count();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, &text);
    let out = levee(&["check", "--config", &path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr.lines().collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].starts_with(&format!("{path}:{lines}:")) && errors[0].contains("no-such-upstream"),
        "{stderr}"
    );
}

/// `THP_enabled` of a process, from `/proc/PID/status` (Linux 5.0 and later).
fn huge_pages_enabled(pid: u32) -> Option<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("THP_enabled:"))?;
    Some(line.trim_start_matches("THP_enabled:").trim() == "1")
}

#[tokio::test]
async fn run_turns_transparent_huge_pages_off_unless_told_to_keep_them() {
    // A child inherits the flag: only a test process that has huge pages can tell.
    if huge_pages_enabled(std::process::id()) != Some(true) {
        eprintln!("skipped: this kernel does not report THP_enabled, or this process has THP off");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        &dir,
        "listeners: [{ name: public, bind: 127.0.0.1:0 }]\nupstreams: { u: { targets: [\"127.0.0.1:9\"] } }\nroutes: [{ name: r, upstream: u }]\n",
    );
    for (keep, expected) in [(false, false), (true, true)] {
        let mut command = Command::new(LEVEE);
        command.args(["run", "--config", &cfg]).stdout(Stdio::piped());
        if keep {
            command.env("MIMALLOC_ALLOW_THP", "1");
        } else {
            command.env_remove("MIMALLOC_ALLOW_THP");
        }
        let mut child = Running(command.spawn().unwrap());
        let lines = Lines::follow(&mut child.0);
        logged_addr(&lines, "listening").await;
        assert_eq!(
            huge_pages_enabled(child.0.id()),
            Some(expected),
            "MIMALLOC_ALLOW_THP set: {keep}"
        );
    }
}
