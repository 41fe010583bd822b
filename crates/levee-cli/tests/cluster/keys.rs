//! The management plane of a fleet in PostgreSQL: a key made on one replica works on every
//! other within a second, a key revoked on one stops everywhere within a second, and every
//! replica answers the same objects and audit log.

use std::time::{Duration, Instant};

use levee_test_support::stores::PgServer;
use levee_test_support::{client, full, get, send, MockUpstream};
use serde_json::{json, Value};

use super::*;

const ROOT: &str = "fleet-root-token";

fn config(upstream: std::net::SocketAddr) -> String {
    format!(
        "listeners: [{{ name: public, bind: \"127.0.0.1:{{PUBLIC}}\" }}]
admin: {{ bind: \"127.0.0.1:{{ADMIN}}\", token_env: LEVEE_FLEET_TOKEN }}
access_log: {{ enabled: false }}
cluster:
  node_id: \"{{NODE}}\"
  postgres: {{ url_env: LEVEE_POSTGRES_URL, timeout: 1s }}
upstreams: {{ u: {{ targets: [\"{upstream}\"] }} }}
routes: [{{ name: all, upstream: u, auth: api_key }}]
"
    )
}

/// An admin API call as the bootstrap admin: status and JSON body.
async fn admin(replica: &Replica, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let request = http::Request::builder()
        .method(method)
        .uri(replica.admin_url(path))
        .header("authorization", format!("Bearer {ROOT}"))
        .body(full(body.map_or_else(String::new, |b| b.to_string())))
        .unwrap();
    let answer = send(&client(false), request).await;
    let json = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    (answer.status.as_u16(), json)
}

/// Polls `replica` with `key` until it answers `status`: how long that took.
async fn answers_within_a_second(replica: &Replica, key: &str, status: u16) -> Duration {
    let started = Instant::now();
    let bearer = format!("Bearer {key}");
    loop {
        let answer = get(&replica.url("/x"), &[("authorization", &bearer)]).await;
        if answer.status.as_u16() == status {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{} answered {} {}, not {status}, a second on",
            replica.url("/x"),
            answer.status,
            answer.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_made_on_one_replica_works_on_another_within_a_second_and_revoked_stops() {
    let pg = tokio::task::block_in_place(PgServer::start);
    let upstream = MockUpstream::fixed("ok").await;
    let env = [
        ("LEVEE_POSTGRES_URL", pg.url()),
        ("LEVEE_FLEET_TOKEN", ROOT.to_owned()),
    ];
    let fleet = tokio::task::block_in_place(|| Fleet::start(2, &config(upstream.addr), &env));
    let (one, two) = (&fleet.replicas[0], &fleet.replicas[1]);

    assert_eq!(
        admin(one, "POST", "/api/v1/teams", Some(json!({"name": "alpha"})))
            .await
            .0,
        201
    );
    let consumer = json!({"name": "alpha-app", "team": "alpha"});
    assert_eq!(
        admin(one, "POST", "/api/v1/consumers", Some(consumer)).await.0,
        201
    );
    let (status, made) = admin(
        one,
        "POST",
        "/api/v1/keys",
        Some(json!({"consumer": "alpha-app"})),
    )
    .await;
    assert_eq!(status, 201, "{made}");
    let (key, id) = (made["key"].as_str().unwrap(), made["id"].as_str().unwrap());

    let took = answers_within_a_second(two, key, 200).await;
    println!("a key made on replica 1 worked on replica 2 after {took:?}");
    assert_eq!(upstream.seen().last().unwrap().headers["x-consumer"], "alpha-app");

    // Revoked on the second replica: the first refuses it within a second.
    let (status, _) = admin(two, "DELETE", &format!("/api/v1/keys/{id}"), None).await;
    assert_eq!(status, 200);
    answers_within_a_second(one, key, 401).await;
    let refused = get(&one.url("/x"), &[("authorization", &format!("Bearer {key}"))]).await;
    assert_eq!(refused.json()["error"]["code"], "key_revoked");

    // Both replicas answer the same objects and the same audit log.
    let (_, on_one) = admin(one, "GET", "/api/v1/keys", None).await;
    let (_, on_two) = admin(two, "GET", "/api/v1/keys", None).await;
    assert_eq!(on_one, on_two);
    let (_, audit) = admin(one, "GET", "/api/v1/audit", None).await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["key.revoke", "key.create", "consumer.create", "team.create"]
    );
}
