//! The admin API's role matrix over real sockets: every endpoint of the OpenAPI document,
//! called by an admin, a team admin of the object's team, a team admin of another team, a
//! viewer and nobody, each answered as designed (2xx, 403 or 401). Writes act on a fresh
//! object per call, so no call depends on another's effect.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use common::{admin_call, Harness};
use serde_json::{json, Value};

const ROOT: &str = "root-token-for-role-tests";

/// What a row's `{id}` stands for: a fixed object, or a fresh one made for each call.
#[derive(Clone, Copy)]
enum Id {
    None,
    Fixed(&'static str),
    Team,
    Consumer,
    Key,
    Token,
    Subscription,
}

/// One endpoint: method, path as in the OpenAPI document, what `{id}` is, the body, and
/// the status for [admin, team admin of the object's team, team admin of another team,
/// viewer, no token]. 0: any answer but 401 and 403 (the call is allowed; what it does
/// with this input is tested elsewhere).
struct Row {
    method: &'static str,
    path: &'static str,
    id: Id,
    body: Option<&'static str>,
    expect: [u16; 5],
}

const ADMIN_ONLY_READ: [u16; 5] = [200, 403, 403, 200, 401];
const ANY_ROLE_READS: [u16; 5] = [200, 200, 200, 200, 401];
const ADMIN_ONLY: [u16; 5] = [0, 403, 403, 403, 401];
const TEAM_READ: [u16; 5] = [200, 200, 403, 200, 401];
const TEAM_WRITE: [u16; 5] = [200, 200, 403, 403, 401];
const TEAM_CREATE: [u16; 5] = [201, 201, 403, 403, 401];

const fn r(
    method: &'static str,
    path: &'static str,
    id: Id,
    body: Option<&'static str>,
    expect: [u16; 5],
) -> Row {
    Row {
        method,
        path,
        id,
        body,
        expect,
    }
}

const ROWS: &[Row] = &[
    r("GET", "/api/v1/whoami", Id::None, None, ANY_ROLE_READS),
    r("GET", "/api/v1/overview", Id::None, None, ADMIN_ONLY_READ),
    r("GET", "/api/v1/llm", Id::None, None, ADMIN_ONLY_READ),
    r("GET", "/api/v1/upstreams", Id::None, None, ADMIN_ONLY_READ),
    r("GET", "/api/v1/routes", Id::None, None, ADMIN_ONLY_READ),
    r("GET", "/api/v1/config", Id::None, None, ADMIN_ONLY_READ),
    r("POST", "/api/v1/config/reload", Id::None, None, ADMIN_ONLY),
    r("GET", "/api/v1/calls", Id::None, None, ADMIN_ONLY_READ),
    r("GET", "/api/v1/analytics", Id::None, None, ADMIN_ONLY_READ),
    r("GET", "/api/v1/slos", Id::None, None, ADMIN_ONLY_READ),
    r("GET", "/api/v1/cluster", Id::None, None, ADMIN_ONLY_READ),
    r("GET", "/api/v1/canaries", Id::None, None, ADMIN_ONLY_READ),
    r("GET", "/api/v1/experiments", Id::None, None, ADMIN_ONLY_READ),
    r("POST", "/api/v1/experiments", Id::None, Some("{}"), ADMIN_ONLY),
    r(
        "GET",
        "/api/v1/experiments/{id}",
        Id::Fixed("none"),
        None,
        [404, 403, 403, 404, 401],
    ),
    r(
        "DELETE",
        "/api/v1/experiments/{id}",
        Id::Fixed("none"),
        None,
        ADMIN_ONLY,
    ),
    r("GET", "/api/v1/teams", Id::None, None, ANY_ROLE_READS),
    r(
        "POST",
        "/api/v1/teams",
        Id::None,
        Some(r#"{"name": "{fresh}"}"#),
        [201, 403, 403, 403, 401],
    ),
    r("GET", "/api/v1/teams/{id}", Id::Fixed("alpha"), None, TEAM_READ),
    r(
        "PATCH",
        "/api/v1/teams/{id}",
        Id::Fixed("alpha"),
        Some(r#"{"description": "x"}"#),
        [200, 403, 403, 403, 401],
    ),
    r(
        "DELETE",
        "/api/v1/teams/{id}",
        Id::Team,
        None,
        [200, 403, 403, 403, 401],
    ),
    r("GET", "/api/v1/consumers", Id::None, None, ANY_ROLE_READS),
    r(
        "POST",
        "/api/v1/consumers",
        Id::None,
        Some(r#"{"name": "{fresh}", "team": "alpha"}"#),
        TEAM_CREATE,
    ),
    r(
        "GET",
        "/api/v1/consumers/{id}",
        Id::Fixed("alpha-app"),
        None,
        TEAM_READ,
    ),
    r(
        "PATCH",
        "/api/v1/consumers/{id}",
        Id::Fixed("alpha-app"),
        Some(r#"{"description": "x"}"#),
        TEAM_WRITE,
    ),
    r("DELETE", "/api/v1/consumers/{id}", Id::Consumer, None, TEAM_WRITE),
    r("GET", "/api/v1/keys", Id::None, None, ANY_ROLE_READS),
    r(
        "POST",
        "/api/v1/keys",
        Id::None,
        Some(r#"{"consumer": "alpha-app"}"#),
        TEAM_CREATE,
    ),
    r("GET", "/api/v1/keys/{id}", Id::Key, None, TEAM_READ),
    r(
        "PATCH",
        "/api/v1/keys/{id}",
        Id::Key,
        Some(r#"{"name": "x"}"#),
        TEAM_WRITE,
    ),
    r("DELETE", "/api/v1/keys/{id}", Id::Key, None, TEAM_WRITE),
    r(
        "POST",
        "/api/v1/keys/{id}/rotate",
        Id::Key,
        Some(r#"{"grace": "1m"}"#),
        TEAM_CREATE,
    ),
    r("GET", "/api/v1/tokens", Id::None, None, [200, 403, 403, 403, 401]),
    r(
        "POST",
        "/api/v1/tokens",
        Id::None,
        Some(r#"{"role": "viewer"}"#),
        [201, 403, 403, 403, 401],
    ),
    r(
        "DELETE",
        "/api/v1/tokens/{id}",
        Id::Token,
        None,
        [200, 403, 403, 403, 401],
    ),
    r("GET", "/api/v1/subscriptions", Id::None, None, ANY_ROLE_READS),
    r(
        "POST",
        "/api/v1/subscriptions",
        Id::None,
        Some(r#"{"consumer": "{consumer}", "service": "orders"}"#),
        TEAM_CREATE,
    ),
    r(
        "GET",
        "/api/v1/subscriptions/{id}",
        Id::Subscription,
        None,
        TEAM_READ,
    ),
    r(
        "DELETE",
        "/api/v1/subscriptions/{id}",
        Id::Subscription,
        None,
        TEAM_WRITE,
    ),
    r(
        "POST",
        "/api/v1/subscriptions/{id}/approve",
        Id::Subscription,
        None,
        TEAM_WRITE,
    ),
    r(
        "POST",
        "/api/v1/subscriptions/{id}/reject",
        Id::Subscription,
        None,
        TEAM_WRITE,
    ),
    r("GET", "/api/v1/catalog", Id::None, None, ANY_ROLE_READS),
    r("GET", "/api/v1/audit", Id::None, None, ANY_ROLE_READS),
    r("GET", "/api/v1/usage", Id::None, None, ANY_ROLE_READS),
];

static FRESH: AtomicUsize = AtomicUsize::new(0);

fn fresh() -> String {
    format!("fresh-{}", FRESH.fetch_add(1, Ordering::Relaxed))
}

async fn root(h: &Harness, method: &str, path: &str, body: Value) -> Value {
    let answer = admin_call(h, method, path, Some(ROOT), Some(body)).await;
    assert!(answer.status.is_success(), "{method} {path}: {}", answer.text());
    answer.json()
}

/// A fresh consumer of team alpha.
async fn fresh_consumer(h: &Harness) -> String {
    let name = fresh();
    root(
        h,
        "POST",
        "/api/v1/consumers",
        json!({"name": name, "team": "alpha"}),
    )
    .await;
    name
}

/// What `{id}` is for one call (made as the bootstrap admin).
async fn resolve(h: &Harness, id: Id) -> String {
    match id {
        Id::None => String::new(),
        Id::Fixed(id) => id.to_owned(),
        Id::Team => {
            let name = fresh();
            root(h, "POST", "/api/v1/teams", json!({"name": name})).await;
            name
        }
        Id::Consumer => fresh_consumer(h).await,
        Id::Key => {
            let key = root(h, "POST", "/api/v1/keys", json!({"consumer": "alpha-app"})).await;
            key["id"].as_str().unwrap().to_owned()
        }
        Id::Token => {
            let token = root(h, "POST", "/api/v1/tokens", json!({"role": "viewer"})).await;
            token["id"].as_str().unwrap().to_owned()
        }
        Id::Subscription => {
            let consumer = fresh_consumer(h).await;
            let sub = root(
                h,
                "POST",
                "/api/v1/subscriptions",
                json!({"consumer": consumer, "service": "orders"}),
            )
            .await;
            sub["id"].as_str().unwrap().to_owned()
        }
    }
}

async fn token(h: &Harness, role: &str, team: Option<&str>) -> String {
    let made = root(h, "POST", "/api/v1/tokens", json!({"role": role, "team": team})).await;
    made["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn every_endpoint_answers_each_role_as_designed() {
    std::env::set_var("LEVEE_TEST_ROLES_TOKEN", ROOT);
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(&format!(
        r#"data_dir: {}
admin: {{ bind: 127.0.0.1:0, token_env: LEVEE_TEST_ROLES_TOKEN }}
upstreams:
  u:
    targets: ["127.0.0.1:9"]
routes:
  - name: orders
    match: {{ path_prefix: /orders }}
    upstream: u
    auth: api_key
    publish: {{ service: orders, team: alpha, approval: manual }}
"#,
        dir.path().display()
    ));
    for team in ["alpha", "gamma"] {
        root(&h, "POST", "/api/v1/teams", json!({"name": team})).await;
        root(
            &h,
            "POST",
            "/api/v1/consumers",
            json!({"name": format!("{team}-app"), "team": team}),
        )
        .await;
    }
    let roles = [
        ("admin", Some(ROOT.to_owned())),
        (
            "team_admin of alpha",
            Some(token(&h, "team_admin", Some("alpha")).await),
        ),
        (
            "team_admin of gamma",
            Some(token(&h, "team_admin", Some("gamma")).await),
        ),
        ("viewer", Some(token(&h, "viewer", None).await)),
        ("no token", None),
    ];

    // The matrix covers every operation the API documents.
    let document = admin_call(&h, "GET", "/openapi.json", None, None).await.json();
    let rows = ROWS;
    for (path, operations) in document["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            let method = method.to_uppercase();
            let covered = rows.iter().any(|r| r.path == path && r.method == method);
            assert!(
                covered || !path.starts_with("/api/"),
                "{method} {path} is not in the role matrix"
            );
        }
    }

    let mut failures = Vec::new();
    for row in rows {
        for ((role, token), expected) in roles.iter().zip(row.expect) {
            let id = resolve(&h, row.id).await;
            let path = row.path.replace("{id}", &id);
            let body = match row.body {
                Some(text) if text.contains("{consumer}") => {
                    Some(text.replace("{consumer}", &fresh_consumer(&h).await))
                }
                Some(text) => Some(text.replace("{fresh}", &fresh())),
                None => None,
            };
            let body = body.map(|b| serde_json::from_str::<Value>(&b).unwrap());
            let answer = admin_call(&h, row.method, &path, token.as_deref(), body).await;
            let got = answer.status.as_u16();
            let fine = match expected {
                0 => got != 401 && got != 403,
                want => got == want,
            };
            if !fine {
                failures.push(format!(
                    "{} {} as {role}: {got}, expected {expected}: {}",
                    row.method,
                    row.path,
                    answer.text()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // A wrong token is no token.
    assert_eq!(
        admin_call(&h, "GET", "/api/v1/keys", Some("lvadm_wrong"), None)
            .await
            .status
            .as_u16(),
        401
    );
    // A team admin's listings hold only its team's objects.
    let gamma = roles[2].1.as_deref();
    let keys = admin_call(&h, "GET", "/api/v1/keys", gamma, None).await.json();
    assert!(
        keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["team"] == "gamma"),
        "{keys}"
    );
    let consumers = admin_call(&h, "GET", "/api/v1/consumers", gamma, None)
        .await
        .json();
    let names: Vec<&str> = consumers["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["gamma-app"]);
    let audit = admin_call(&h, "GET", "/api/v1/audit", gamma, None).await.json();
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["team"] == "gamma"),
        "{audit}"
    );
    h.stop().await;
}
