//! The fleet as one replica sees it: `GET /api/v1/cluster`, `levee cluster status`, the
//! cluster metrics, and `levee check` on the `cluster` block.

use levee_test_support::eventually;
use levee_test_support::stores::RedisServer;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_lists_the_fleet_and_warns_about_a_different_config() {
    let redis = RedisServer::start();
    let upstream = levee_test_support::MockUpstream::fixed("ok").await;
    let body = r#"listeners: [{ name: public, bind: "127.0.0.1:{PUBLIC}" }]
admin: { bind: "127.0.0.1:{ADMIN}" }
workers: 1
access_log: { enabled: false }
cluster: { node_id: "{NODE}", heartbeat: 200ms, redis: { url_env: LEVEE_REDIS_URL } }
upstreams: { u: { targets: ["UPSTREAM"] } }
routes: [{ name: r, match: { path_prefix: /r{NODE} }, upstream: u }]
"#
    .replace("UPSTREAM", &upstream.addr.to_string());
    // `{NODE}` in a path makes each replica's config differ.
    let fleet = Fleet::start(2, &body, &[("LEVEE_REDIS_URL", redis.url())]);
    let url = fleet.replicas[0].admin_url("/api/v1/cluster");
    eventually("both replicas in the roll", || {
        let url = url.clone();
        async move { admin_json(&url).await["nodes"].as_array().map(Vec::len) == Some(2) }
    })
    .await;
    let view = admin_json(&url).await;
    assert_eq!(view["node_id"], "gw-0");
    assert_eq!(view["replicas_alive"], 2);
    assert_eq!(view["redis"], true);
    assert_eq!(view["postgres"], serde_json::Value::Null);
    let ids: Vec<&str> = view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["gw-0", "gw-1"]);
    assert!(view["nodes"][0]["self"] == true && view["nodes"][1]["self"] == false);
    assert!(view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["alive"] == true && n["redis"] == true));
    let warnings = view["warnings"].as_array().unwrap();
    assert!(
        warnings.len() == 1 && warnings[0].as_str().unwrap().contains("2 different configs"),
        "{view}"
    );

    let metrics = levee_test_support::get(&fleet.replicas[1].admin_url("/metrics"), &[])
        .await
        .text();
    assert_eq!(metric(&metrics, "levee_cluster_nodes"), Some(2.0), "{metrics}");
    assert_eq!(
        metric(&metrics, "levee_cluster_store_up{store=\"redis\"}"),
        Some(1.0)
    );
    assert!(metrics.contains("levee_cluster_store_seconds_count{store=\"redis\"}"));

    let admin = format!("http://{}", fleet.replicas[1].admin);
    let out = std::process::Command::new(LEVEE)
        .args(["cluster", "status", "--admin", &admin])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(table.contains("gw-0") && table.contains("gw-1 (this)"), "{table}");
    assert!(
        table.contains("warning: replicas serve 2 different configs"),
        "{table}"
    );

    // A replica killed counts as gone after three missed heartbeats.
    let mut fleet = fleet;
    let gone = fleet.replicas.pop().unwrap();
    drop(gone);
    eventually("the killed replica counted as gone", || {
        let url = url.clone();
        async move { admin_json(&url).await["replicas_alive"] == 1 }
    })
    .await;
}

#[test]
fn check_reports_cluster_problems_at_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("levee.yaml");
    std::fs::write(
        &path,
        "listeners: [{ name: public, bind: \"127.0.0.1:0\" }]
routes: [{ name: r, fallback: { status: 200 } }]
cluster:
  node_id: \"bad id\"
  redis: { url: \"redis://:hunter2@127.0.0.1:6379\", timeout: 0s }
  postgres: { url_env: LEVEE_TEST_NOT_SET_ANYWHERE }
",
    )
    .unwrap();
    let out = std::process::Command::new(LEVEE)
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let file = path.display().to_string();
    assert!(
        errors.contains(&format!("{file}:4:12: node_id `bad id`")),
        "{errors}"
    );
    assert!(
        errors.contains(&format!("{file}:5:17: the Redis URL carries a password")),
        "{errors}"
    );
    assert!(
        errors.contains(&format!("{file}:5:61: cluster.redis.timeout")),
        "{errors}"
    );
    assert!(
        errors.contains(&format!(
            "{file}:6:24: environment variable `LEVEE_TEST_NOT_SET_ANYWHERE`"
        )),
        "{errors}"
    );
    assert!(
        !errors.contains("hunter2"),
        "the password is never printed: {errors}"
    );
}
