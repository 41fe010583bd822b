//! SLOs, alerts and canaries for the fleet: counts combined in Redis, one alert sender
//! elected by a lease (and another taking over when it is killed), canary rollbacks
//! decided once and obeyed by every replica.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use levee_test_support::stores::RedisServer;
use levee_test_support::{client, empty, send, MockUpstream, Reply};

use super::*;

/// The cluster block and listeners every replica shares.
const HEAD: &str = "listeners: [{ name: public, bind: \"127.0.0.1:{PUBLIC}\" }]
admin: { bind: \"127.0.0.1:{ADMIN}\" }
cluster:
  node_id: \"{NODE}\"
  redis: { url_env: LEVEE_REDIS_URL }
";

fn start_fleet(n: usize, body: &str, redis: &RedisServer) -> Fleet {
    let env = [("LEVEE_REDIS_URL", redis.url())];
    tokio::task::block_in_place(|| Fleet::start(n, &format!("{HEAD}{body}"), &env))
}

/// `n` GETs on `/`, spread round robin over `replicas`; returns how many were 5xx.
async fn traffic(replicas: &[&Replica], n: usize) -> usize {
    let client = client(false);
    let mut errors = 0;
    for i in 0..n {
        let replica = replicas[i % replicas.len()];
        let request = http::Request::get(replica.url("/")).body(empty()).unwrap();
        errors += usize::from(send(&client, request).await.status.is_server_error());
    }
    errors
}

/// The webhook notifications received so far with `alertname` and `status`.
fn notifications(receiver: &MockUpstream, alertname: &str, status: &str) -> Vec<serde_json::Value> {
    receiver
        .seen()
        .iter()
        .filter_map(|s| serde_json::from_slice::<serde_json::Value>(&s.body).ok())
        .filter(|b| b["status"] == status && b["alerts"][0]["labels"]["alertname"] == alertname)
        .collect()
}

/// Polls `condition` every 20 ms until it holds; fails after `limit`.
async fn within(limit: Duration, what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition().await {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the replica says it holds the alert lease (its own entry in `/api/v1/cluster`).
async fn leads(replica: &Replica) -> bool {
    let view = admin_json(&replica.admin_url("/api/v1/cluster")).await;
    view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["id"] == view["node_id"] && n["alert_leader"] == true)
}

/// The indexes of the replicas (among `alive`) that hold the lease.
async fn leaders(fleet: &Fleet, alive: &[usize]) -> Vec<usize> {
    let mut out = Vec::new();
    for &i in alive {
        if leads(&fleet.replicas[i]).await {
            out.push(i);
        }
    }
    out
}

async fn slo(replica: &Replica) -> serde_json::Value {
    admin_json(&replica.admin_url("/api/v1/slos")).await["slos"][0].clone()
}

const BURN: &str = "LeveeSLOErrorBudgetBurn";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_slo_burnt_across_the_fleet_alerts_once_and_resolves_once_after_the_leader_dies() {
    let redis = RedisServer::start();
    let failing = Arc::new(AtomicBool::new(false));
    let flag = failing.clone();
    let upstream = MockUpstream::start(move |_| {
        if flag.load(Ordering::SeqCst) {
            Reply::status(500)
        } else {
            Reply::ok("ok")
        }
    })
    .await;
    let receiver = MockUpstream::start(|_| Reply::ok("")).await;
    // A 90% objective: a 10% budget, so the page rules (burn above 14.4, or 6 with 60% bad)
    // cannot hold with 40% bad, and only the ticket alert fires: one firing notification.
    let body = format!(
        "upstreams:
  u: {{ targets: [\"{}\"], outlier_detection: {{ enabled: false }}, circuit_breaker: {{ enabled: false }} }}
routes:
  - {{ name: users, upstream: u }}
slos:
  - {{ name: users-availability, route: users, objective: 90, sli: availability }}
alerting:
  evaluation_interval: 1s
  webhooks: [ {{ url: \"http://{}/hook\" }} ]
",
        upstream.addr, receiver.addr
    );
    let mut fleet = start_fleet(3, &body, &redis);
    let all: Vec<&Replica> = fleet.replicas.iter().collect();

    // 30 good then 20 bad, spread over the three: every replica shows the fleet's 50.
    assert_eq!(traffic(&all, 30).await, 0);
    failing.store(true, Ordering::SeqCst);
    assert_eq!(traffic(&all, 20).await, 20);
    failing.store(false, Ordering::SeqCst);
    for replica in &all {
        within(
            Duration::from_secs(10),
            "the fleet's counts on every replica",
            async || {
                let slo = slo(replica).await;
                slo["events"]["total"] == 50 && slo["events"]["bad"] == 20
            },
        )
        .await;
    }

    // Burn 4 over every window: the ticket fires, sent once by the leader alone.
    within(Duration::from_secs(15), "a firing notification", async || {
        !notifications(&receiver, BURN, "firing").is_empty()
    })
    .await;
    let alive = [0, 1, 2];
    let mut leader = Vec::new();
    within(Duration::from_secs(5), "one alert leader", async || {
        leader = leaders(&fleet, &alive).await;
        leader.len() == 1
    })
    .await;
    let leader = leader[0];
    for replica in &all {
        // Every replica shows the alert firing (mirrored from Redis).
        within(
            Duration::from_secs(5),
            "the alert firing on every replica",
            async || slo(replica).await["alerts_firing"][0]["severity"] == "ticket",
        )
        .await;
    }

    // The leader dies: another takes the lease within two evaluation intervals.
    fleet.replicas[leader].kill();
    let killed = Instant::now();
    let rest: Vec<usize> = alive.into_iter().filter(|i| *i != leader).collect();
    within(Duration::from_secs(10), "a new alert leader", async || {
        leaders(&fleet, &rest).await.len() == 1
    })
    .await;
    let takeover = killed.elapsed();
    eprintln!("new alert leader after {takeover:?}");
    assert!(
        takeover < Duration::from_millis(2_500),
        "took over after {takeover:?}"
    );

    // Good traffic through the two left takes every burn rate to 1 or below: resolved.
    let survivors: Vec<&Replica> = rest.iter().map(|i| &fleet.replicas[*i]).collect();
    assert_eq!(traffic(&survivors, 200).await, 0);
    within(Duration::from_secs(15), "a resolved notification", async || {
        !notifications(&receiver, BURN, "resolved").is_empty()
    })
    .await;
    // Three more evaluations: nothing is sent again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let firing = notifications(&receiver, BURN, "firing");
    let resolved = notifications(&receiver, BURN, "resolved");
    assert_eq!(firing.len(), 1, "{firing:#?}");
    assert_eq!(resolved.len(), 1, "{resolved:#?}");
    assert_eq!(firing[0]["alerts"][0]["labels"]["severity"], "ticket");
    // The resolved one carries the firing one's start: the same alert, carried over.
    assert_eq!(
        resolved[0]["alerts"][0]["startsAt"],
        firing[0]["alerts"][0]["startsAt"]
    );
    for replica in &survivors {
        assert!(slo(replica).await["alerts_firing"].as_array().unwrap().is_empty());
    }
}

async fn canary(replica: &Replica) -> serde_json::Value {
    admin_json(&replica.admin_url("/api/v1/canaries")).await["canaries"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_rolled_back_once_is_obeyed_by_every_replica_within_two_seconds() {
    let redis = RedisServer::start();
    let stable = MockUpstream::fixed("stable").await;
    let v2 = MockUpstream::start(|_| Reply::status(503)).await;
    let receiver = MockUpstream::start(|_| Reply::ok("")).await;
    let body = format!(
        "upstreams:
  stable: {{ targets: [\"{}\"] }}
  v2: {{ targets: [\"{}\"], outlier_detection: {{ enabled: false }}, circuit_breaker: {{ enabled: false }} }}
routes:
  - name: users
    upstream: stable
    canary:
      upstream: v2
      percent: 30
      rollback_if: {{ slo: users-availability, burn_rate_above: 14.4, window: 5m, min_requests: 10 }}
slos:
  - {{ name: users-availability, route: users, objective: 99.9, sli: availability }}
alerting:
  webhooks: [ {{ url: \"http://{}/hook\" }} ]
",
        stable.addr, v2.addr, receiver.addr
    );
    let mut fleet = start_fleet(3, &body, &redis);
    let all: Vec<&Replica> = fleet.replicas.iter().collect();

    // Traffic over the three until one replica shows the rollback.
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        traffic(&all, 6).await;
        let mut rolled = None;
        for (i, replica) in all.iter().enumerate() {
            if canary(replica).await["state"] == "rolled_back" {
                rolled = Some(i);
            }
        }
        if let Some(i) = rolled {
            break i;
        }
        assert!(Instant::now() < deadline, "the canary was never rolled back");
    };
    let seen = Instant::now();
    let decision = canary(all[first]).await;
    // Every replica obeys within 2 s, with the same decision (made once).
    for replica in &all {
        within(
            Duration::from_secs(2).saturating_sub(seen.elapsed()),
            "every replica rolled back",
            async || canary(replica).await["state"] == "rolled_back",
        )
        .await;
    }
    eprintln!("every replica rolled back {:?} after the first", seen.elapsed());
    for replica in &all {
        let state = canary(replica).await;
        assert_eq!(state["rolled_back_at"], decision["rolled_back_at"]);
        assert_eq!(state["reason"], decision["reason"]);
    }
    // From then on the canary gets nothing, from any replica.
    let hits = v2.hits();
    assert_eq!(traffic(&all, 60).await, 0);
    assert_eq!(v2.hits(), hits, "the canary got requests after the rollback");

    // A replica restarted (no data_dir) takes no canary request before it learnt the
    // decision from Redis, and then shows it.
    fleet.replicas[2].kill();
    let restarted = tokio::task::block_in_place(|| fleet.spawn(2));
    fleet.replicas[2] = restarted;
    assert_eq!(traffic(&[&fleet.replicas[2]], 30).await, 0);
    assert_eq!(
        v2.hits(),
        hits,
        "the restarted replica sent requests to the canary"
    );
    within(
        Duration::from_secs(5),
        "the restarted replica shows the rollback",
        async || canary(&fleet.replicas[2]).await["rolled_back_at"] == decision["rolled_back_at"],
    )
    .await;

    // The rollback was notified once, by the leader.
    within(Duration::from_secs(10), "the rollback notification", async || {
        !notifications(&receiver, "LeveeCanaryRolledBack", "firing").is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        notifications(&receiver, "LeveeCanaryRolledBack", "firing").len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_each_replica_evaluates_its_own_counts_and_none_leads() {
    let mut redis = RedisServer::start();
    let upstream = MockUpstream::fixed("ok").await;
    let body = format!(
        "upstreams:
  u: {{ targets: [\"{}\"] }}
routes:
  - {{ name: users, upstream: u }}
slos:
  - {{ name: users-availability, route: users, objective: 99.9, sli: availability }}
alerting:
  evaluation_interval: 1s
",
        upstream.addr
    );
    let fleet = start_fleet(3, &body, &redis);
    let all: Vec<&Replica> = fleet.replicas.iter().collect();
    assert_eq!(traffic(&all, 30).await, 0);
    for replica in &all {
        within(
            Duration::from_secs(10),
            "the fleet's 30 on every replica",
            async || {
                let slo = slo(replica).await;
                slo["events"]["total"] == 30 && slo["counts"] == "fleet"
            },
        )
        .await;
    }
    within(Duration::from_secs(5), "one alert leader", async || {
        leaders(&fleet, &[0, 1, 2]).await.len() == 1
    })
    .await;

    // Redis gone: each replica evaluates what it counted itself (10 before, 10 during),
    // counts the fallback, says so once, and none leads alerting.
    redis.kill();
    assert_eq!(traffic(&all, 30).await, 0);
    for replica in &all {
        within(Duration::from_secs(10), "each replica's own 20", async || {
            let slo = slo(replica).await;
            slo["events"]["total"] == 20 && slo["counts"] == "replica"
        })
        .await;
        let metrics = levee_test_support::get(&replica.admin_url("/metrics"), &[])
            .await
            .text();
        let fallbacks = metric(&metrics, "levee_cluster_fallback_total{component=\"slo\"}");
        assert!(fallbacks.is_some_and(|n| n > 0.0), "{fallbacks:?}");
    }
    within(Duration::from_secs(5), "no alert leader", async || {
        leaders(&fleet, &[0, 1, 2]).await.is_empty()
    })
    .await;
    // Another second of evaluations: still one line each.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for replica in &all {
        assert_eq!(replica.log_lines("this replica's own counts").len(), 1);
    }

    // Redis back (empty): the counts kept during the outage reach it, and every replica
    // evaluates the fleet's again (the 30 before the outage went with Redis's memory).
    redis.restart();
    for replica in &all {
        within(Duration::from_secs(10), "the fleet's 30 again", async || {
            let slo = slo(replica).await;
            slo["events"]["total"] == 30 && slo["counts"] == "fleet"
        })
        .await;
    }
    within(Duration::from_secs(5), "an alert leader again", async || {
        leaders(&fleet, &[0, 1, 2]).await.len() == 1
    })
    .await;
}

async fn experiment(replica: &Replica, id: &str) -> serde_json::Value {
    let answer = levee_test_support::get(&replica.admin_url(&format!("/api/v1/experiments/{id}")), &[]).await;
    if answer.status != 200 {
        return serde_json::Value::Null;
    }
    serde_json::from_str(&answer.text()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_experiment_started_on_one_replica_runs_on_all_and_stops_from_any() {
    let redis = RedisServer::start();
    let upstream = MockUpstream::fixed("ok").await;
    let body = format!(
        "upstreams:
  u: {{ targets: [\"{}\"] }}
routes:
  - {{ name: users, upstream: u }}
slos:
  - {{ name: users-availability, route: users, objective: 99.9, sli: availability }}
",
        upstream.addr
    );
    let fleet = start_fleet(3, &body, &redis);
    let all: Vec<&Replica> = fleet.replicas.iter().collect();
    let started = send(
        &client(false),
        http::Request::post(all[0].admin_url("/api/v1/experiments"))
            .body(levee_test_support::full(
                r#"{"name": "fleet", "route": "users", "fault": {"abort": {"percent": 100, "status": 503}}, "duration": "1h"}"#,
            ))
            .unwrap(),
    )
    .await;
    assert_eq!(started.status, 201, "{}", started.text());
    let id = started.json()["id"].as_str().unwrap().to_owned();

    // Every replica runs it within two seconds: its requests get the injected 503.
    for replica in &all {
        within(
            Duration::from_secs(2),
            "the experiment on every replica",
            async || experiment(replica, &id).await["state"] == "running",
        )
        .await;
    }
    assert_eq!(traffic(&all, 30).await, 30);
    assert_eq!(upstream.hits(), 0, "aborted requests never reach the upstream");
    // Any replica shows the fleet's report.
    for replica in &all {
        within(
            Duration::from_secs(5),
            "the fleet's report everywhere",
            async || {
                let report = &experiment(replica, &id).await["report"];
                report["requests"] == 30 && report["aborted"] == 30
            },
        )
        .await;
    }

    // Stopped from another replica: it ends everywhere within two seconds.
    let stopped = send(
        &client(false),
        http::Request::delete(all[2].admin_url(&format!("/api/v1/experiments/{id}")))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(stopped.status, 200);
    for replica in &all {
        within(
            Duration::from_secs(2),
            "the experiment ended everywhere",
            async || {
                let view = experiment(replica, &id).await;
                view["state"] == "aborted" && view["reason"] == "stopped through the admin API"
            },
        )
        .await;
    }
    assert_eq!(traffic(&all, 30).await, 0);
}
