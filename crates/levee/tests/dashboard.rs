//! The web dashboard over real sockets: its page and assets with their security and caching
//! headers and weight, then the app itself in headless Chromium (Python Playwright,
//! `tests/browser/dashboard.py`) against a gateway that has carried traffic, has a dead
//! target and a management store: sign-in, the overview's request count, the dead target
//! unhealthy, a key made and revoked in the UI, a subscription approved in the UI, an SLO's
//! burn-rate alert firing on the SLO page after failing traffic, and a viewer without any
//! mutating control. Any browser console error or failed request fails it.
//!
//! Needs Debian's `chromium` and Python `playwright` (scripts/test.sh installs both); without
//! them the browser part fails in CI and is skipped elsewhere. `LEVEE_SCREENSHOTS=1` writes
//! the screenshots to docs/img/.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::path::{Path, PathBuf};

use common::Harness;
use levee_test_support::*;

const ROOT: &str = "root-token-for-dashboard-tests";
const CHROMIUM: &str = "/usr/bin/chromium";
/// The config consumer ai-app's API key (the AI gateway page's scenario calls with it).
const AI_KEY: &str = "ai-app-key-for-dashboard-tests";
/// Requests sent through the gateway before the browser opens the overview.
const SENT: usize = 42;
/// The overview's whole page weight must stay under this (issue 17).
const PAGE_BUDGET: usize = 300 * 1024;

fn gateway(
    dir: &Path,
    web: std::net::SocketAddr,
    flaky: [std::net::SocketAddr; 2],
    broken: std::net::SocketAddr,
    openai: std::net::SocketAddr,
) -> Harness {
    std::env::set_var("LEVEE_TEST_DASH_TOKEN", ROOT);
    let ai_key = {
        use sha2::Digest;
        let hash = sha2::Sha256::digest(AI_KEY.as_bytes());
        hash.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    Harness::start(&format!(
        r#"data_dir: {dir}
admin: {{ bind: 127.0.0.1:0, token_env: LEVEE_TEST_DASH_TOKEN }}
# The AI gateway page's: model `smart` tries a provider that answers 500 (the `broken`
# mock), then falls back to an OpenAI-shaped mock; consumer ai-app has a budget.
llm:
  providers:
    failing: {{ kind: openai, base_url: "http://{broken}/v1", api_key_env: LEVEE_TEST_DASH_TOKEN }}
    openai: {{ kind: openai, base_url: "http://{openai}/v1", api_key_env: LEVEE_TEST_DASH_TOKEN }}
  models:
    - name: smart
      targets: [{{ provider: failing, model: gpt-4o-mini }}, {{ provider: openai, model: gpt-4o }}]
  cache: {{ ttl: 10m }}
consumers:
  - name: ai-app
    api_keys: ["sha256:{ai_key}"]
    llm_budget: {{ usd: 5, per: 30d }}
upstreams:
  web:
    targets: ["{web}"]
  flaky:
    targets: ["{f0}", "{f1}"]
    health_check: {{ path: /, interval: 50ms, timeout: 500ms, unhealthy_after: 1, healthy_after: 1 }}
  broken:
    targets: ["{broken}"]
    outlier_detection: {{ enabled: false }}
    circuit_breaker: {{ enabled: false }}
routes:
  - name: ai
    match: {{ path_prefix: /v1 }}
    llm: true
    auth: api_key
  - name: web
    match: {{ path_prefix: /web }}
    upstream: web
  - name: flaky
    match: {{ path_prefix: /flaky }}
    upstream: flaky
  - name: api
    match: {{ path_prefix: /api }}
    upstream: web
    auth: api_key
  - name: orders
    match: {{ path_prefix: /orders }}
    upstream: web
    auth: api_key
    publish: {{ service: orders, team: alpha, description: "Orders", approval: manual }}
  - name: broken
    match: {{ path_prefix: /broken }}
    upstream: broken
slos:
  - name: broken-availability
    route: broken
    objective: 99
    window: 1h
    sli: availability
alerting:
  evaluation_interval: 1s
"#,
        dir = dir.display(),
        f0 = flaky[0],
        f1 = flaky[1],
    ))
}

/// The page and everything it loads: the security headers on each, the caching of each,
/// and the total weight (with the overview's API answer) under the budget.
async fn page_and_assets_are_served_safely(h: &Harness) -> usize {
    let page = get(&format!("{}/", h.admin), &[]).await;
    assert_eq!(page.status.as_u16(), 200);
    assert_eq!(page.header("cache-control"), Some("no-cache"));
    assert!(page.header("content-type").unwrap().starts_with("text/html"));
    let html = page.text();
    let assets: Vec<String> = html
        .split("\"/assets/")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().to_owned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(
        assets.iter().any(|a| a.starts_with("app.") && a.ends_with(".js")),
        "{html}"
    );
    assert!(
        assets
            .iter()
            .any(|a| a.starts_with("style.") && a.ends_with(".css")),
        "{html}"
    );
    let mut weight = html.len();
    secure(&page);
    for asset in &assets {
        let answer = get(&format!("{}/assets/{asset}", h.admin), &[]).await;
        assert_eq!(answer.status.as_u16(), 200, "{asset}");
        assert_eq!(
            answer.header("cache-control"),
            Some("public, max-age=31536000, immutable"),
            "{asset}"
        );
        secure(&answer);
        weight += answer.text().len();
    }
    let missing = get(&format!("{}/assets/app.0000000000000000.js", h.admin), &[]).await;
    assert_eq!(missing.status.as_u16(), 404);
    secure(&missing);
    let overview = get(
        &format!("{}/api/v1/overview", h.admin),
        &[("authorization", &format!("Bearer {ROOT}"))],
    )
    .await;
    assert_eq!(overview.status.as_u16(), 200, "{}", overview.text());
    weight += overview.text().len();
    assert!(weight < PAGE_BUDGET, "the overview weighs {weight} bytes");
    weight
}

fn secure(answer: &Answer) {
    assert_eq!(
        answer.header("content-security-policy"),
        Some(levee::admin::dashboard::CONTENT_SECURITY_POLICY)
    );
    assert_eq!(answer.header("x-frame-options"), Some("DENY"));
    assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(answer.header("referrer-policy"), Some("no-referrer"));
}

/// The Python with Playwright, or `None` (after failing in CI) when it or Chromium is
/// missing.
fn browser_python() -> Option<String> {
    let python = std::env::var("LEVEE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    if !Path::new(CHROMIUM).exists() {
        common::missing_tool("chromium is not installed (apt-get install chromium): browser tests skipped");
        return None;
    }
    let found = std::process::Command::new(&python)
        .args(["-c", "import playwright.sync_api"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !found {
        common::missing_tool(&format!(
            "Python playwright is not installed for {python} (pip install playwright): browser tests skipped"
        ));
        return None;
    }
    Some(python)
}

fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/img")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_in_a_real_browser() {
    let web = MockUpstream::fixed("ok").await;
    let flaky = [MockUpstream::fixed("ok").await, MockUpstream::fixed("ok").await];
    // Every answer 500: the SLO page's scenario sends traffic here until its alert fires.
    let broken = MockUpstream::start(|_| Reply::status(500)).await;
    let openai = MockUpstream::start(|_| {
        Reply::ok(include_str!("fixtures/openai/chat_completion.json"))
            .header("content-type", "application/json")
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let h = gateway(
        dir.path(),
        web.addr,
        [flaky[0].addr, flaky[1].addr],
        broken.addr,
        openai.addr,
    );

    for i in 0..SENT {
        let answer = get(&h.url(&format!("/web/{i}")), &[]).await;
        assert_eq!(answer.status.as_u16(), 200);
    }
    let weight = page_and_assets_are_served_safely(&h).await;
    println!("overview page weight: {weight} bytes (index.html, assets, the overview's answer)");

    // A dead target: its health check fails within a few intervals.
    flaky[1].kill();

    let Some(python) = browser_python() else {
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/dashboard.py");
    let mut command = std::process::Command::new(python);
    command
        .arg(&script)
        .arg("all")
        .env("LEVEE_ADMIN_URL", &h.admin)
        .env("LEVEE_GATEWAY_URL", &h.base)
        .env("LEVEE_ROOT_TOKEN", ROOT)
        .env("LEVEE_REQUESTS_SENT", SENT.to_string())
        .env("LEVEE_KILLED_TARGET", flaky[1].addr.to_string())
        .env("LEVEE_LIVE_TARGET", flaky[0].addr.to_string())
        .env("LEVEE_AI_KEY", AI_KEY)
        .env("LEVEE_CHROMIUM", CHROMIUM)
        .env("LEVEE_SCREENSHOT_DIR", screenshot_dir())
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1");
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    assert!(out.status.success(), "browser scenarios failed:\n{report}");
    h.stop().await;
}
