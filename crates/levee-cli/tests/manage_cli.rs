//! The management commands (`levee teams`, `consumers`, `keys`, `subscriptions`, `tokens`,
//! `catalog`, `audit`, `usage`) against a running `levee run` over real sockets: what they
//! make is obeyed by the data plane, tables never show a secret, `--json` is the API's
//! answer, and a refusal is the API's message with exit code 1.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use levee_test_support::*;
use serde_json::Value;

const LEVEE: &str = env!("CARGO_BIN_EXE_levee");
/// The gateway's bootstrap admin token (its `admin.token_env`).
const ROOT: &str = "root-token-for-cli-tests";

/// Kills the gateway if a test fails midway.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running gateway: its public and admin addresses.
struct Gateway {
    child: Running,
    public: String,
    admin: String,
}

/// Starts `levee run` with a management store, the bootstrap token [`ROOT`], a route `/api`
/// needing a key and a published service `orders` (team `alpha`, manual approval). No
/// consumer in the file: the keys are the store's.
async fn start(dir: &std::path::Path, upstream: std::net::SocketAddr) -> Gateway {
    let config = format!(
        r#"listeners: [{{ name: public, bind: 127.0.0.1:0 }}]
admin: {{ bind: 127.0.0.1:0, token_env: LEVEE_CLI_TEST_ROOT }}
data_dir: "{data}"
upstreams: {{ u: {{ targets: ["{upstream}"] }} }}
routes:
  - {{ name: api, match: {{ path_prefix: /api }}, upstream: u, auth: api_key }}
  - name: orders
    match: {{ path_prefix: /orders }}
    upstream: u
    auth: api_key
    publish: {{ service: orders, team: alpha, description: "Orders", approval: manual }}
"#,
        data = dir.join("data").display(),
    );
    let path = dir.join("levee.yaml");
    std::fs::write(&path, config).unwrap();
    let mut child = Running(
        Command::new(LEVEE)
            .args(["run", "--config"])
            .arg(&path)
            .env("LEVEE_CLI_TEST_ROOT", ROOT)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = follow(&mut child.0);
    let public = logged_addr(&lines, "listening").await;
    let admin = format!("http://{}", logged_addr(&lines, "admin listening").await);
    Gateway { child, public, admin }
}

/// The gateway's stdout lines, read in the background.
fn follow(child: &mut Child) -> Arc<Mutex<Vec<String>>> {
    let stdout = child.stdout.take().unwrap();
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// The `addr` field of the JSON log line whose message is `message`.
async fn logged_addr(lines: &Arc<Mutex<Vec<String>>>, message: &str) -> String {
    let needle = format!("\"message\":\"{message}\"");
    let find = || {
        lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(&needle))
            .cloned()
    };
    eventually(message, || std::future::ready(find().is_some())).await;
    serde_json::from_str::<Value>(&find().unwrap()).unwrap()["addr"]
        .as_str()
        .unwrap()
        .to_owned()
}

impl Gateway {
    /// `levee ARGS --admin URL` with `token` in `LEVEE_ADMIN_TOKEN` (none: unset).
    fn levee_as(&self, token: Option<&str>, args: &[&str]) -> Output {
        let mut command = Command::new(LEVEE);
        command.args(args).args(["--admin", &self.admin]);
        match token {
            Some(token) => command.env("LEVEE_ADMIN_TOKEN", token),
            None => command.env_remove("LEVEE_ADMIN_TOKEN"),
        };
        command.output().unwrap()
    }

    /// `levee ARGS` as the bootstrap admin, expecting success; its stdout.
    fn levee(&self, args: &[&str]) -> String {
        let out = self.levee_as(Some(ROOT), args);
        assert!(
            out.status.success(),
            "levee {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `levee ARGS --json` as the bootstrap admin: the parsed answer.
    fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        serde_json::from_str(&self.levee(&args)).unwrap()
    }

    /// Polls `path` with `key` until it answers `status` (and `code`, when given).
    async fn answers(&self, path: &str, key: &str, status: u16, code: Option<&str>) {
        let url = format!("http://{}{path}", self.public);
        let auth = format!("Bearer {key}");
        let what = format!("{path} answering {status} {code:?}");
        eventually(&what, || {
            let (url, auth) = (url.clone(), auth.clone());
            async move {
                let answer = get(&url, &[("authorization", &auth)]).await;
                let body: Value = serde_json::from_slice(&answer.body).unwrap_or_default();
                answer.status.as_u16() == status
                    && code.is_none_or(|c| body["error"]["code"].as_str() == Some(c))
            }
        })
        .await;
    }

    async fn stop(self) {
        let status = Command::new("kill")
            .args(["-s", "TERM", &self.child.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let mut child = self.child;
        let code = tokio::task::spawn_blocking(move || child.0.wait().unwrap().code())
            .await
            .unwrap();
        assert_eq!(code, Some(0));
    }
}

/// The secret on the `PREFIX (shown once): SECRET` line of a table answer.
fn shown_once(text: &str, what: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{what} (shown once): ")))
        .unwrap_or_else(|| panic!("no secret in: {text}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_made_on_the_command_line_work_rotate_and_revoke() {
    let upstream = MockUpstream::fixed("ok").await;
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), upstream.addr).await;

    let team = gw.levee(&[
        "teams",
        "create",
        "alpha",
        "--budget-usd",
        "50",
        "--budget-per",
        "30d",
    ]);
    assert!(team.contains("alpha") && team.contains("30d"), "{team}");
    let teams = gw.levee(&["teams", "list"]);
    assert!(
        teams.starts_with("name") && teams.contains("50 per 30d"),
        "{teams}"
    );
    gw.levee(&["consumers", "create", "shop-app", "--team", "alpha"]);
    let consumers = gw.levee(&["consumers", "list"]);
    assert!(
        consumers
            .lines()
            .any(|l| l.starts_with("shop-app") && l.contains("alpha")),
        "{consumers}"
    );

    // A key, its secret from --json; it opens the route at once.
    let made = gw.json(&[
        "keys",
        "create",
        "--consumer",
        "shop-app",
        "--name",
        "ci",
        "--rate-limit",
        "100/s",
    ]);
    let (secret, id, prefix) = (
        made["key"].as_str().unwrap().to_owned(),
        made["id"].as_str().unwrap().to_owned(),
        made["prefix"].as_str().unwrap().to_owned(),
    );
    assert!(secret.starts_with("lv_"), "{made}");
    assert_eq!(made["rate_limit"]["rate"], "100/s");
    gw.answers("/api/1", &secret, 200, None).await;
    gw.answers("/api/1", "lv_not-a-key", 401, None).await;

    // The table shows the prefix and never the secret.
    let list = gw.levee(&["keys", "list", "--consumer", "shop-app"]);
    let header = list.lines().next().unwrap();
    assert!(header.starts_with("id") && header.contains("prefix"), "{list}");
    assert!(list.contains(&prefix) && list.contains(&id), "{list}");
    assert!(
        !list.contains(&secret),
        "a listing never shows the secret: {list}"
    );
    let shown = gw.levee(&["keys", "show", &id]);
    assert!(
        shown.contains("usage.requests") && !shown.contains(&secret),
        "{shown}"
    );

    // Rotated with a grace period: both work; the table answer prints the new secret once.
    let rotated = gw.levee(&["keys", "rotate", &id, "--grace", "1h"]);
    let fresh = shown_once(&rotated, "Key");
    assert!(fresh.starts_with("lv_") && fresh != secret, "{rotated}");
    assert_eq!(rotated.matches(&fresh).count(), 1, "{rotated}");
    let fresh_id = gw.json(&["keys", "list", "--consumer", "shop-app"])["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["rotated_from"] == id.as_str())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    gw.answers("/api/2", &fresh, 200, None).await;
    gw.answers("/api/2", &secret, 200, None).await;

    // Revoked: 401 key_revoked.
    let revoked = gw.levee(&["keys", "revoke", &fresh_id]);
    assert!(
        revoked.starts_with(&format!("Revoked key {fresh_id} at ")),
        "{revoked}"
    );
    gw.answers("/api/3", &fresh, 401, Some("key_revoked")).await;
    gw.answers("/api/3", &secret, 200, None).await;

    subscribe_and_audit(&gw, &secret).await;
    gw.stop().await;
}

/// The consumer `shop-app` (with the key `secret`) subscribes to the published service
/// `orders`, approved on the command line; then the audit log has every change made so far.
async fn subscribe_and_audit(gw: &Gateway, secret: &str) {
    // A published service: the subscription is asked for, then approved.
    let catalog = gw.levee(&["catalog"]);
    assert!(
        catalog
            .lines()
            .any(|l| l.starts_with("orders") && l.contains("manual")),
        "{catalog}"
    );
    gw.answers("/orders/1", secret, 403, Some("subscription_required"))
        .await;
    let asked = gw.json(&[
        "subscriptions",
        "request",
        "--consumer",
        "shop-app",
        "--service",
        "orders",
    ]);
    assert_eq!(asked["state"], "pending", "{asked}");
    let sub = asked["id"].as_str().unwrap();
    let approved = gw.levee(&["subscriptions", "approve", sub, "--reason", "ok by ops"]);
    assert!(
        approved.contains("approved") && approved.contains("ok by ops"),
        "{approved}"
    );
    gw.answers("/orders/1", secret, 200, None).await;
    let subs = gw.levee(&["subscriptions", "list", "--consumer", "shop-app"]);
    assert!(
        subs.lines().any(|l| l.starts_with(sub) && l.contains("approved")),
        "{subs}"
    );

    // The audit log has every change, newest first; filtered by kind.
    let audit = gw.levee(&["audit"]);
    let actions: Vec<&str> = [
        "subscription.approve",
        "subscription.create",
        "key.revoke",
        "key.rotate",
        "key.create",
        "consumer.create",
        "team.create",
    ]
    .into_iter()
    .filter(|a| audit.contains(&format!(" {a} ")))
    .collect();
    assert_eq!(actions.len(), 7, "{audit}");
    let first_row = audit.lines().nth(1).unwrap();
    assert!(first_row.contains("subscription.approve"), "{audit}");
    let keys_only = gw.json(&["audit", "--kind", "key"]);
    let entries = keys_only["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "{keys_only}");
    assert!(entries.iter().all(|e| e["kind"] == "key"), "{keys_only}");
    let usage = gw.levee(&["usage", "--group-by", "consumer"]);
    assert!(usage.starts_with("consumer"), "{usage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_print_the_api_message_and_exit_1() {
    let upstream = MockUpstream::fixed("ok").await;
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), upstream.addr).await;
    gw.levee(&["consumers", "create", "reader-app"]);

    // A viewer reads but changes nothing.
    let made = gw.levee(&["tokens", "create", "--role", "viewer", "--name", "dashboards"]);
    let viewer = shown_once(&made, "Token");
    assert!(viewer.starts_with("lvadm_"), "{made}");
    let tokens = gw.levee(&["tokens", "list"]);
    assert!(
        tokens
            .lines()
            .any(|l| l.contains("dashboards") && l.contains("viewer")),
        "{tokens}"
    );
    assert!(!tokens.contains(&viewer), "{tokens}");
    let refused = gw.levee_as(Some(&viewer), &["keys", "create", "--consumer", "reader-app"]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("403") && stderr.contains("A viewer token changes nothing."),
        "{stderr}"
    );
    assert!(refused.stdout.is_empty());
    let read = gw.levee_as(Some(&viewer), &["consumers", "list"]);
    assert!(read.status.success());

    // The token from another variable with --token-env.
    let mut command = Command::new(LEVEE);
    let out = command
        .args([
            "teams",
            "list",
            "--admin",
            &gw.admin,
            "--token-env",
            "MY_LEVEE_TOKEN",
        ])
        .env("MY_LEVEE_TOKEN", ROOT)
        .env_remove("LEVEE_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // No token, a missing object, a bad body, a conflict: each the API's message, exit 1.
    let cases: [(Option<&str>, &[&str], &str); 4] = [
        (None, &["teams", "list"], "401"),
        (
            Some(ROOT),
            &["keys", "show", "key_nope"],
            "There is no key `key_nope`.",
        ),
        (
            Some(ROOT),
            &[
                "keys",
                "create",
                "--consumer",
                "reader-app",
                "--expires-at",
                "soon",
            ],
            "400",
        ),
        (Some(ROOT), &["consumers", "create", "reader-app"], "exists"),
    ];
    for (token, args, message) in cases {
        let out = gw.levee_as(token, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("levee: ") && stderr.contains(message),
            "{args:?}: {stderr}"
        );
    }

    // Revoked, the viewer's token opens nothing.
    let id = gw.json(&["tokens", "list"])["tokens"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    gw.levee(&["tokens", "revoke", &id]);
    let after = gw.levee_as(Some(&viewer), &["consumers", "list"]);
    assert_eq!(after.status.code(), Some(1));
    gw.stop().await;
}
