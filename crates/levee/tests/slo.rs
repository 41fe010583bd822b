//! SLOs: SLI, error budget and burn rates from known event sequences on a paused clock;
//! when the multiwindow burn-rate alerts fire and resolve; counts that survive a restart;
//! and, end to end over real sockets, a failing upstream paging a webhook receiver (and an
//! Alertmanager, when installed) and the resolved notification after recovery.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::Harness;
use levee::config::spec::{Sli, SloSpec};
use levee::slo::alerts::Severity;
use levee::slo::{Clock, SloEngine};
use levee_test_support::*;

fn spec(name: &str, objective: f64, sli: Sli) -> SloSpec {
    SloSpec {
        name: name.into(),
        route: "users".into(),
        consumer: None,
        upstream: None,
        release: None,
        alerts: true,
        objective,
        window: Duration::from_secs(30 * 86_400),
        sli,
        bad_grpc_statuses: None,
    }
}

/// `good` and `bad` events on route `users`, now.
fn feed(engine: &SloEngine, good: u64, bad: u64) {
    for _ in 0..good {
        engine.record(
            "users",
            None,
            Some("u"),
            200.into(),
            Duration::from_millis(5),
            false,
        );
    }
    for _ in 0..bad {
        engine.record(
            "users",
            None,
            Some("u"),
            503.into(),
            Duration::from_millis(5),
            false,
        );
    }
}

async fn minutes(n: u64) {
    tokio::time::advance(Duration::from_secs(60 * n)).await;
}

fn close(actual: f64, expected: f64) -> bool {
    (actual - expected).abs() < 1e-9 * expected.abs().max(1.0)
}

#[tokio::test(start_paused = true)]
async fn sli_budget_and_every_burn_rate_from_a_known_sequence() {
    let engine = SloEngine::new(Clock::starting_at(0), None);
    engine.apply(&[spec("users-availability", 99.9, Sli::Availability)]);
    // Minute 0: 1000 events, 10 bad. Minutes 1..=9: nothing. Minute 10: 1000 good.
    feed(&engine, 990, 10);
    minutes(10).await;
    feed(&engine, 1000, 0);
    // A 429 and a 404 are good for availability; a request on another route is not counted.
    engine.record("users", None, Some("u"), 429.into(), Duration::ZERO, false);
    engine.record("users", None, Some("u"), 404.into(), Duration::ZERO, false);
    engine.record("orders", None, Some("u"), 500.into(), Duration::ZERO, false);
    engine.evaluate();
    let slo = engine.get("users-availability").unwrap();
    let status = slo.status().unwrap();
    assert_eq!((status.window.total, status.window.bad), (2002, 10));
    assert!(close(status.sli.unwrap(), 1992.0 / 2002.0));
    // Budget: 0.1% of 2002 events = 2.002 bad allowed; 10 were bad.
    assert!(
        close(status.budget_remaining, 1.0 - 10.0 / 2.002),
        "{}",
        status.budget_remaining
    );
    assert!(close(status.budget_remaining_events, 2.002 - 10.0));
    // 5m covers minutes 6..=10 (no bad events); every longer window holds minute 0.
    let expected = [
        ("5m", 0.0),
        ("30m", 10.0 / 2002.0 / 0.001),
        ("1h", 10.0 / 2002.0 / 0.001),
        ("2h", 10.0 / 2002.0 / 0.001),
        ("6h", 10.0 / 2002.0 / 0.001),
        ("1d", 10.0 / 2002.0 / 0.001),
        ("3d", 10.0 / 2002.0 / 0.001),
    ];
    for (window, rate) in expected {
        let actual = status.burn_rate(window).unwrap();
        assert!(close(actual, rate), "{window}: {actual} != {rate}");
    }
    // Eleven minutes on, minute 0 leaves the 10-minute horizon of no window but the 5m one
    // holds only minute 21's events.
    minutes(11).await;
    feed(&engine, 0, 1);
    engine.evaluate();
    let status = slo.status().unwrap();
    assert!(close(status.burn_rate("5m").unwrap(), 1.0 / 0.001));
    assert!(close(status.burn_rate("30m").unwrap(), 11.0 / 2003.0 / 0.001));
}

#[tokio::test(start_paused = true)]
async fn latency_slis_consumers_and_injected_faults() {
    let engine = SloEngine::new(Clock::starting_at(0), None);
    let mut fast = spec("users-fast", 99.0, Sli::LatencyBelow(Duration::from_millis(300)));
    fast.consumer = Some("mobile".into());
    engine.apply(&[fast, spec("users-availability", 99.0, Sli::Availability)]);
    let event = |consumer, status: u16, elapsed_ms, injected| {
        engine.record(
            "users",
            Some(consumer),
            Some("u"),
            status.into(),
            Duration::from_millis(elapsed_ms),
            injected,
        )
    };
    event("mobile", 200, 299, false);
    event("mobile", 500, 10, true);
    event("mobile", 200, 300, false);
    event("web", 200, 3000, false);
    engine.evaluate();
    let fast = engine.get("users-fast").unwrap().status().unwrap();
    // Only mobile's three; a fast 500 is good for latency, the 300 ms answer is not.
    assert_eq!((fast.window.total, fast.window.bad), (3, 1));
    assert_eq!((fast.window.injected, fast.window.injected_bad), (1, 0));
    let all = engine.get("users-availability").unwrap().status().unwrap();
    assert_eq!((all.window.total, all.window.bad), (4, 1));
    assert_eq!((all.window.injected, all.window.injected_bad), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn grpc_calls_count_by_their_status_the_default_set_or_the_slos_own() {
    let engine = SloEngine::new(Clock::starting_at(0), None);
    let mut strict = spec("users-grpc-strict", 99.0, Sli::Availability);
    // RESOURCE_EXHAUSTED (8) counts too; DEADLINE_EXCEEDED (4) does not.
    strict.bad_grpc_statuses = Some(vec![14, 8]);
    engine.apply(&[strict, spec("users-availability", 99.0, Sli::Availability)]);
    for code in [0, 14, 13, 2, 4, 3, 8, 5] {
        let answered = levee::slo::Answered {
            status: 200,
            replaced: None,
            grpc_status: Some(code),
        };
        engine.record("users", None, Some("u"), answered, Duration::ZERO, false);
    }
    engine.evaluate();
    let default = engine.get("users-availability").unwrap().status().unwrap();
    // UNAVAILABLE, INTERNAL, UNKNOWN and DEADLINE_EXCEEDED, though every call answered 200.
    assert_eq!((default.window.total, default.window.bad), (8, 4));
    let strict = engine.get("users-grpc-strict").unwrap().status().unwrap();
    assert_eq!((strict.window.total, strict.window.bad), (8, 2));
}

/// Steps one minute at a time through a two-minute outage and returns, per severity, the
/// minutes at which the alert fired and resolved.
#[tokio::test(start_paused = true)]
async fn page_and_ticket_alerts_fire_and_resolve_when_the_windows_say() {
    let engine = SloEngine::new(Clock::starting_at(0), None);
    engine.apply(&[spec("users-availability", 99.9, Sli::Availability)]);
    let mut events: Vec<(u64, Severity, bool)> = Vec::new();
    for minute in 0..=430u64 {
        // 100 requests a minute; all fail in minutes 60 and 61.
        if (60..=61).contains(&minute) {
            feed(&engine, 0, 100);
        } else {
            feed(&engine, 100, 0);
        }
        engine.evaluate();
        for t in engine.step_alerts() {
            events.push((minute, t.severity, t.firing));
        }
        minutes(1).await;
    }
    // Page: at minute 60 the 1h window holds 100 bad of 6000 (burn 16.7) and the 5m one 100
    // of 500 (burn 200). The 5m window is clean from minute 66, but the 6h/30m pair (burn
    // above 6 in both) holds the page until the 30m window is clean at minute 91.
    // Ticket: the 3d/6h pair (burn above 1) holds until minute 61 leaves the 6h window at 421.
    assert_eq!(
        events,
        vec![
            (60, Severity::Page, true),
            (60, Severity::Ticket, true),
            (91, Severity::Page, false),
            (421, Severity::Ticket, false),
        ]
    );
    let firing = engine.firing();
    assert!(firing.is_empty(), "{firing:?}");
}

#[tokio::test(start_paused = true)]
async fn a_notification_has_the_alertmanager_webhook_shape() {
    let engine = SloEngine::new(Clock::starting_at(1_700_000_000_000), None);
    engine.apply(&[spec("users-availability", 99.9, Sli::Availability)]);
    feed(&engine, 0, 10);
    engine.evaluate();
    let transitions = engine.step_alerts();
    let page = transitions.iter().find(|t| t.severity == Severity::Page).unwrap();
    let body = levee::slo::alerts::webhook_body(page, "http://127.0.0.1:9901");
    assert_eq!(body["version"], "4");
    assert_eq!(body["status"], "firing");
    let alert = &body["alerts"][0];
    assert_eq!(alert["status"], "firing");
    assert_eq!(alert["labels"]["alertname"], "LeveeSLOErrorBudgetBurn");
    assert_eq!(alert["labels"]["slo"], "users-availability");
    assert_eq!(alert["labels"]["severity"], "page");
    assert_eq!(alert["startsAt"], "2023-11-14T22:13:20.000Z");
    assert_eq!(alert["endsAt"], "0001-01-01T00:00:00Z");
    assert!(alert["annotations"]["summary"]
        .as_str()
        .unwrap()
        .contains("14.4x"));
    assert!(body["groupLabels"].is_object() && body["commonLabels"]["slo"] == "users-availability");
}

#[tokio::test(start_paused = true)]
async fn counts_survive_a_restart_and_a_changed_sli_starts_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let store = || Some(levee::slo::store::Store::open(dir.path()).unwrap());
    let base = 1_700_000_000_000;
    {
        let engine = SloEngine::new(Clock::starting_at(base), store());
        engine.apply(&[spec("users-availability", 99.9, Sli::Availability)]);
        feed(&engine, 90, 10);
        engine.save();
        minutes(1).await;
        feed(&engine, 5, 0);
        engine.save();
    }
    // A new process an hour later (the clock reads the same wall time plus an hour).
    let engine = SloEngine::new(Clock::starting_at(base + 3_600_000), store());
    engine.apply(&[
        spec("users-availability", 99.9, Sli::Availability),
        spec(
            "users-latency",
            99.9,
            Sli::LatencyBelow(Duration::from_millis(100)),
        ),
    ]);
    engine.evaluate();
    let status = engine.get("users-availability").unwrap().status().unwrap();
    assert_eq!((status.window.total, status.window.bad), (105, 10));
    assert_eq!(status.burn_rate("5m"), Some(0.0));
    // Another SLO never counted those events.
    let other = engine.get("users-latency").unwrap().status().unwrap();
    assert_eq!(other.window.total, 0);
    assert_eq!(other.sli, None);
    assert_eq!(other.budget_remaining, 1.0);
    // The same name with another definition does not inherit the counts either.
    let engine = SloEngine::new(Clock::starting_at(base + 3_600_000), store());
    let mut changed = spec("users-availability", 99.9, Sli::Availability);
    changed.route = "orders".into();
    engine.apply(&[changed]);
    engine.evaluate();
    assert_eq!(
        engine
            .get("users-availability")
            .unwrap()
            .status()
            .unwrap()
            .window
            .total,
        0
    );
}

/// A mock upstream that answers 200 until `failing` is set, then 503.
async fn switchable_upstream() -> (MockUpstream, Arc<AtomicBool>) {
    let failing = Arc::new(AtomicBool::new(false));
    let flag = failing.clone();
    let upstream = MockUpstream::start(move |_| {
        if flag.load(Ordering::SeqCst) {
            Reply::status(503)
        } else {
            Reply::ok("ok")
        }
    })
    .await;
    (upstream, failing)
}

/// One route `users` over `upstream` with a 99.9% availability SLO evaluated every second;
/// the upstream's breaker and ejection are off so the test alone decides what fails.
fn slo_config(upstream: std::net::SocketAddr, alerting: &str) -> String {
    format!(
        "upstreams:\n  u:\n    targets: [\"{upstream}\"]\n    outlier_detection: {{ enabled: false }}\n    circuit_breaker: {{ enabled: false }}\nroutes:\n  - name: users\n    match: {{ path_prefix: / }}\n    upstream: u\nslos:\n  - name: users-availability\n    route: users\n    objective: 99.9\n    window: 30d\n    sli: availability\nalerting:\n  evaluation_interval: 1s\n{alerting}"
    )
}

/// `n` GETs from four keep-alive clients; returns how many were answered 5xx.
async fn traffic(url: &str, n: usize) -> usize {
    let mut tasks = Vec::new();
    for part in 0..4 {
        let url = url.to_owned();
        tasks.push(tokio::spawn(async move {
            let client = client(false);
            let mut errors = 0;
            for _ in (part..n).step_by(4) {
                let answer = send(&client, http::Request::get(&url).body(empty()).unwrap()).await;
                errors += usize::from(answer.status.is_server_error());
            }
            errors
        }));
    }
    let mut errors = 0;
    for task in tasks {
        errors += task.await.unwrap();
    }
    errors
}

fn webhook_alerts(receiver: &MockUpstream) -> Vec<serde_json::Value> {
    receiver
        .seen()
        .iter()
        .map(|s| serde_json::from_slice::<serde_json::Value>(&s.body).unwrap())
        .collect()
}

fn has(alerts: &[serde_json::Value], severity: &str, status: &str) -> bool {
    alerts.iter().any(|body| {
        body["status"] == status
            && body["alerts"][0]["labels"]["severity"] == severity
            && body["alerts"][0]["labels"]["slo"] == "users-availability"
            && body["alerts"][0]["labels"]["alertname"] == "LeveeSLOErrorBudgetBurn"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_upstream_pages_the_webhook_and_recovery_resolves_it() {
    let (upstream, failing) = switchable_upstream().await;
    let receiver = MockUpstream::start(|_| Reply::ok("")).await;
    let h = Harness::start(&slo_config(
        upstream.addr,
        &format!("  webhooks: [ {{ url: \"http://{}/hook\" }} ]\n", receiver.addr),
    ));
    assert_eq!(traffic(&h.url("/"), 200).await, 0);
    failing.store(true, Ordering::SeqCst);
    assert_eq!(traffic(&h.url("/"), 10).await, 10);
    failing.store(false, Ordering::SeqCst);
    // 10 bad of 210: burn 47 over 5m and 1h, so the next evaluation (each second) pages.
    eventually("a page alert at the webhook", || async {
        has(&webhook_alerts(&receiver), "page", "firing")
    })
    .await;
    let seen = receiver.seen();
    let hook = seen.iter().find(|s| s.uri.path() == "/hook").unwrap();
    assert_eq!(hook.method, http::Method::POST);
    assert_eq!(hook.headers["content-type"], "application/json");
    let slos = get(&format!("{}/api/v1/slos", h.admin), &[]).await.json();
    let slo = &slos["slos"][0];
    assert_eq!(slo["name"], "users-availability");
    assert_eq!(slo["events"]["bad"], 10);
    assert!(slo["alerts_firing"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["severity"] == "page"));
    let metrics = get(&format!("{}/metrics", h.admin), &[]).await.text();
    for line in [
        "levee_slo_alert_firing{slo=\"users-availability\",severity=\"page\"} 1",
        "levee_slo_requests_total{slo=\"users-availability\",result=\"bad\"} 10",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    assert!(metrics.contains("levee_slo_burn_rate{slo=\"users-availability\",window=\"5m\"}"));
    common::promtool_accepts(&metrics);

    // Recovery: 2000 good answers take the 5m and 30m burn rates below 14.4 and 6.
    assert_eq!(traffic(&h.url("/"), 2000).await, 0);
    eventually("a resolved notification", || async {
        has(&webhook_alerts(&receiver), "page", "resolved")
    })
    .await;
    let resolved = webhook_alerts(&receiver)
        .into_iter()
        .find(|b| b["status"] == "resolved")
        .unwrap();
    assert_ne!(resolved["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_is_down_is_retried_and_counted_never_fatal() {
    let (upstream, failing) = switchable_upstream().await;
    let down = refused_addr().await;
    let h = Harness::start(&slo_config(
        upstream.addr,
        &format!("  webhooks: [ {{ url: \"http://{down}/hook\" }} ]\n"),
    ));
    failing.store(true, Ordering::SeqCst);
    assert_eq!(traffic(&h.url("/"), 20).await, 20);
    let metrics_url = format!("{}/metrics", h.admin);
    let retried = "levee_alert_notifications_total{receiver=\"webhook-0\",result=\"retried\"} ";
    eventually("failed deliveries counted", || async {
        get(&metrics_url, &[])
            .await
            .text()
            .lines()
            .any(|l| l.starts_with(retried) && !l.ends_with(" 0"))
    })
    .await;
    // Requests are served all along.
    failing.store(false, Ordering::SeqCst);
    assert_eq!(traffic(&h.url("/"), 50).await, 0);
    h.stop().await;
}

/// The Alertmanager binary, if installed (Debian: `prometheus-alertmanager`).
fn alertmanager_binary() -> Option<&'static str> {
    ["prometheus-alertmanager", "alertmanager"]
        .into_iter()
        .find(|name| {
            std::process::Command::new(name)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_reach_a_real_alertmanager() {
    let Some(binary) = alertmanager_binary() else {
        common::missing_tool("alertmanager not installed: skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("alertmanager.yml");
    std::fs::write(
        &config,
        "route:\n  receiver: quiet\nreceivers:\n  - name: quiet\n",
    )
    .unwrap();
    let port = {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap().port()
    };
    let alertmanager = std::process::Command::new(binary)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.path={}", dir.path().display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = Kill(alertmanager);
    let am = format!("http://127.0.0.1:{port}");
    eventually("alertmanager is ready", || async {
        let url = format!("{am}/-/ready");
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
            && get(&url, &[]).await.status.is_success()
    })
    .await;

    let (upstream, failing) = switchable_upstream().await;
    let h = Harness::start(&slo_config(
        upstream.addr,
        &format!("  alertmanager: {{ url: \"{am}\" }}\n"),
    ));
    failing.store(true, Ordering::SeqCst);
    assert_eq!(traffic(&h.url("/"), 20).await, 20);
    let alerts_url = format!("{am}/api/v2/alerts");
    eventually("the page alert in Alertmanager", || async {
        let answer = get(&alerts_url, &[]).await;
        answer.status.is_success()
            && answer.json().as_array().is_some_and(|alerts| {
                alerts.iter().any(|a| {
                    a["labels"]["alertname"] == "LeveeSLOErrorBudgetBurn"
                        && a["labels"]["slo"] == "users-availability"
                        && a["labels"]["severity"] == "page"
                        && a["status"]["state"] == "active"
                })
            })
    })
    .await;
    h.stop().await;
}

/// `levee slo rules` output passes `promtool check rules`, and `promtool test rules` shows
/// Prometheus firing and resolving the same alerts as the built-in evaluation for the same
/// two-minute outage (page from the outage to when the 30m window is clean, ticket on).
#[test]
fn the_prometheus_rules_pass_promtool_and_alert_like_the_gateway() {
    if std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_err()
    {
        common::missing_tool("promtool not installed: skipped");
        return;
    }
    let slo = spec("users-availability", 99.9, Sli::Availability);
    let rules = levee::slo::rules::prometheus_rules(std::slice::from_ref(&slo)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rules_path = dir.path().join("levee-slo-rules.yaml");
    std::fs::write(&rules_path, &rules).unwrap();
    common::run_ok(
        std::process::Command::new("promtool")
            .args(["check", "rules"])
            .arg(&rules_path),
    );

    // The expected alerts carry the rules' own labels and annotations.
    let parsed: serde_json::Value = serde_yaml_ng::from_str(&rules).unwrap();
    let alert = |severity: &str| {
        let rule = parsed["groups"][1]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["labels"]["severity"] == severity)
            .unwrap()
            .clone();
        serde_json::json!({ "exp_labels": rule["labels"], "exp_annotations": rule["annotations"] })
    };
    let (page, ticket) = (alert("page"), alert("ticket"));
    // 100 good requests a minute; 100 bad ones in each of minutes 60 and 61.
    let tests = serde_json::json!({
        "rule_files": [rules_path.display().to_string()],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                { "series": "levee_slo_requests_total{slo=\"users-availability\",result=\"good\"}", "values": "0+100x400" },
                { "series": "levee_slo_requests_total{slo=\"users-availability\",result=\"bad\"}", "values": "0x59 100 200 200x340" },
            ],
            "alert_rule_test": [
                { "eval_time": "59m", "alertname": "LeveeSLOErrorBudgetBurn", "exp_alerts": [] },
                { "eval_time": "61m", "alertname": "LeveeSLOErrorBudgetBurn", "exp_alerts": [page, ticket] },
                { "eval_time": "85m", "alertname": "LeveeSLOErrorBudgetBurn", "exp_alerts": [page, ticket] },
                { "eval_time": "95m", "alertname": "LeveeSLOErrorBudgetBurn", "exp_alerts": [ticket] },
            ],
        }],
    });
    let tests_path = dir.path().join("levee-slo-rules-test.yaml");
    std::fs::write(&tests_path, serde_yaml_ng::to_string(&tests).unwrap()).unwrap();
    common::run_ok(
        std::process::Command::new("promtool")
            .args(["test", "rules"])
            .arg(&tests_path),
    );
}

#[tokio::test(start_paused = true)]
async fn a_firing_alert_survives_a_restart_and_resolves_when_its_slo_goes() {
    let dir = tempfile::tempdir().unwrap();
    let store = || Some(levee::slo::store::Store::open(dir.path()).unwrap());
    let base = 1_700_000_000_000;
    {
        let engine = SloEngine::new(Clock::starting_at(base), store());
        engine.apply(&[spec("users-availability", 99.9, Sli::Availability)]);
        feed(&engine, 0, 50);
        engine.evaluate();
        assert_eq!(engine.step_alerts().len(), 2, "page and ticket fire");
        engine.save();
    }
    // The next process knows the page fires (since the first one's time) and sends no
    // second "firing"; when the burn stops it sends "resolved".
    let engine = SloEngine::new(Clock::starting_at(base + 10_000), store());
    engine.apply(&[spec("users-availability", 99.9, Sli::Availability)]);
    engine.evaluate();
    assert!(
        engine.step_alerts().is_empty(),
        "still firing, nothing new to say"
    );
    let firing = engine.firing();
    assert!(firing
        .iter()
        .any(|t| t.severity == Severity::Page && t.starts_at_ms == base));
    // Removing the SLO resolves its alerts.
    let resolved = engine.apply(&[]);
    assert_eq!(resolved.len(), 2);
    assert!(resolved
        .iter()
        .all(|t| !t.firing && t.ends_at_ms == Some(base + 10_000)));
    // And a later process no longer has them.
    let engine = SloEngine::new(Clock::starting_at(base + 20_000), store());
    engine.apply(&[spec("users-availability", 99.9, Sli::Availability)]);
    engine.evaluate();
    assert!(engine.firing().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_new_objective_keeps_the_counts_and_a_new_slo_starts_empty() {
    let engine = SloEngine::new(Clock::starting_at(0), None);
    engine.apply(&[spec("users-availability", 99.9, Sli::Availability)]);
    feed(&engine, 99, 1);
    engine.evaluate();
    assert!(close(
        engine
            .get("users-availability")
            .unwrap()
            .status()
            .unwrap()
            .budget_remaining,
        1.0 - 1.0 / 0.1
    ));
    // Objective loosened to 99: the same 100 events, a larger budget.
    engine.apply(&[
        spec("users-availability", 99.0, Sli::Availability),
        spec(
            "users-latency",
            99.0,
            Sli::LatencyBelow(Duration::from_millis(50)),
        ),
    ]);
    feed(&engine, 100, 0);
    engine.evaluate();
    let status = engine.get("users-availability").unwrap().status().unwrap();
    assert_eq!((status.window.total, status.window.bad), (200, 1));
    assert!(close(status.budget_remaining, 1.0 - 1.0 / 2.0));
    let latency = engine.get("users-latency").unwrap().status().unwrap();
    assert_eq!(latency.window.total, 100, "counts only what came after it");
    // A shorter window over the same events keeps them (in a ring of the new size).
    let mut weekly = spec("users-availability", 99.0, Sli::Availability);
    weekly.window = Duration::from_secs(7 * 86_400);
    engine.apply(&[weekly]);
    engine.evaluate();
    let status = engine.get("users-availability").unwrap().status().unwrap();
    assert_eq!((status.window.total, status.window.bad), (200, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_an_slo_and_its_counting_starts() {
    let (upstream, _failing) = switchable_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("levee.yaml");
    let without = format!(
        "upstreams:\n  u:\n    targets: [\"{}\"]\nroutes:\n  - name: users\n    upstream: u\n",
        upstream.addr
    );
    let h = Harness::start_file(&path, &without);
    let slos_url = format!("{}/api/v1/slos", h.admin);
    assert_eq!(get(&slos_url, &[]).await.json()["slos"], serde_json::json!([]));
    common::write_atomically(
        &path,
        &Harness::compose(&format!(
            "{without}slos:\n  - {{ name: users-availability, route: users, objective: 99.9, sli: availability }}\n"
        )),
    );
    let reloaded = common::reload(&h).await;
    assert_eq!(reloaded.status, http::StatusCode::OK, "{}", reloaded.text());
    // The SLO thread takes the new config within a second; requests after that count.
    eventually("the SLO appears", || async {
        get(&slos_url, &[]).await.json()["slos"][0]["name"] == "users-availability"
    })
    .await;
    assert_eq!(traffic(&h.url("/"), 8).await, 0);
    eventually("the requests are counted", || async {
        get(&slos_url, &[]).await.json()["slos"][0]["events"]["total"] == 8
    })
    .await;
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_slo_on_one_upstream_judges_what_it_answered_even_behind_a_fallback() {
    let engine = SloEngine::new(Clock::starting_at(0), None);
    let mut canary = spec("users-availability-canary", 99.9, Sli::Availability);
    canary.upstream = Some("v2".into());
    engine.apply(&[canary, spec("users-availability", 99.9, Sli::Availability)]);
    // v2 answered 503; the route's fallback answered the client 200.
    let hidden = levee::slo::Answered {
        status: 200,
        replaced: Some(503),
        grpc_status: None,
    };
    engine.record("users", None, Some("v2"), hidden, Duration::ZERO, false);
    engine.record("users", None, Some("stable"), 200.into(), Duration::ZERO, false);
    engine.evaluate();
    let canary = engine.get("users-availability-canary").unwrap().status().unwrap();
    assert_eq!(
        (canary.window.total, canary.window.bad),
        (1, 1),
        "only v2's request, judged by v2's 503"
    );
    let route = engine.get("users-availability").unwrap().status().unwrap();
    assert_eq!(
        (route.window.total, route.window.bad),
        (2, 0),
        "the clients got 200s"
    );
}
