//! Rate limits and LLM budgets counted across the fleet in Redis, and what happens to them
//! when Redis dies and comes back.

use std::time::Duration;

use levee_test_support::stores::RedisServer;
use levee_test_support::{empty, eventually, MockUpstream};
use tokio::time::Instant;

use super::*;

/// One request of a paced load: when it was sent (from the start), its status (0: no
/// answer) and how long the answer took.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    pub at: Duration,
    pub status: u16,
    pub took: Duration,
}

/// Open-loop load: `rate` requests per second for `duration`, sent round robin to `urls`
/// each at its scheduled time (not waiting for earlier answers), with `headers`.
pub async fn paced(urls: &[String], headers: &[(&str, &str)], rate: u32, duration: Duration) -> Vec<Sent> {
    let client = levee_test_support::client(false);
    let start = Instant::now();
    let total = (f64::from(rate) * duration.as_secs_f64()) as u32;
    let mut tasks = Vec::new();
    for i in 0..total {
        let due = start + Duration::from_secs_f64(f64::from(i) / f64::from(rate));
        tokio::time::sleep_until(due).await;
        let mut request = http::Request::get(&urls[i as usize % urls.len()]);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(empty()).unwrap();
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let status = match tokio::time::timeout(Duration::from_secs(10), client.request(request)).await {
                Ok(Ok(response)) => {
                    let status = response.status().as_u16();
                    let _ = http_body_util::BodyExt::collect(response.into_body()).await;
                    status
                }
                _ => 0,
            };
            Sent {
                at: sent - start,
                status,
                took: sent.elapsed(),
            }
        }));
    }
    let mut sent = Vec::new();
    for task in tasks {
        sent.push(task.await.unwrap());
    }
    sent
}

fn count(sent: &[Sent], status: u16) -> usize {
    sent.iter().filter(|s| s.status == status).count()
}

/// Three routes' limits, with Redis' `timeout` and `backoff`.
fn fleet_config(upstream: std::net::SocketAddr, timeout: &str, backoff: &str) -> String {
    format!(
        r#"listeners: [{{ name: public, bind: "127.0.0.1:{{PUBLIC}}" }}]
admin: {{ bind: "127.0.0.1:{{ADMIN}}" }}
workers: 1
access_log: {{ enabled: false }}
cluster:
  node_id: "{{NODE}}"
  heartbeat: 200ms
  redis: {{ url_env: LEVEE_REDIS_URL, timeout: {timeout}, backoff: {backoff} }}
upstreams: {{ u: {{ targets: ["{upstream}"] }} }}
consumers: [{{ name: mobile, api_keys: ["{digest}"] }}]
routes:
  - name: shared
    match: {{ path_prefix: /shared }}
    upstream: u
    rate_limit: {{ rate: 50/s, burst: 10, key: route }}
  - name: per-consumer
    match: {{ path_prefix: /mine }}
    upstream: u
    auth: api_key
    rate_limit: {{ rate: 50/s, burst: 10, key: consumer }}
"#,
        digest = levee::auth::digest_of("mobile-key"),
    )
}

/// Waits until every replica sees all of them alive (so a fallback share is a third).
async fn wait_for_roll_call(fleet: &Fleet) {
    for replica in &fleet.replicas {
        let url = replica.admin_url("/api/v1/cluster");
        let n = fleet.replicas.len() as u64;
        eventually("every replica sees the whole fleet", || {
            let url = url.clone();
            async move { admin_json(&url).await["replicas_alive"] == n }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_one_route_limit_and_one_consumer_limit() {
    let redis = RedisServer::start();
    let upstream = MockUpstream::fixed("ok").await;
    let fleet = Fleet::start(
        3,
        &fleet_config(upstream.addr, "200ms", "1s"),
        &[("LEVEE_REDIS_URL", redis.url())],
    );
    wait_for_roll_call(&fleet).await;
    let shared: Vec<String> = fleet.replicas.iter().map(|r| r.url("/shared/x")).collect();
    let mine: Vec<String> = fleet.replicas.iter().map(|r| r.url("/mine/x")).collect();
    // Three times the rate for 10 s, on both routes at once.
    let (shared, mine) = tokio::join!(
        paced(&shared, &[], 150, Duration::from_secs(10)),
        paced(
            &mine,
            &[("authorization", "Bearer mobile-key")],
            150,
            Duration::from_secs(10)
        ),
    );
    // 50/s for 10 s plus the burst of 10, within 2%.
    for (name, sent) in [("route limit", &shared), ("consumer limit", &mine)] {
        let (ok, limited) = (count(sent, 200), count(sent, 429));
        eprintln!("{name}: {ok} accepted, {limited} limited");
        assert_eq!(ok + limited, sent.len(), "{name}: only 200 and 429 expected");
        assert!(
            (500..=520).contains(&ok),
            "{name}: {ok} accepted, expected 510 ± 2%"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dying_mid_load_fails_no_request_and_fleet_limiting_resumes_after_it() {
    let mut redis = RedisServer::start();
    let upstream = MockUpstream::fixed("ok").await;
    let fleet = Fleet::start(
        3,
        &fleet_config(upstream.addr, "200ms", "500ms"),
        &[("LEVEE_REDIS_URL", redis.url())],
    );
    wait_for_roll_call(&fleet).await;
    let urls: Vec<String> = fleet.replicas.iter().map(|r| r.url("/shared/x")).collect();
    let load_start = Instant::now();
    let load = tokio::spawn(async move { paced(&urls, &[], 150, Duration::from_secs(14)).await });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let killed_at = Instant::now();
    tokio::task::block_in_place(|| redis.kill());
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Without Redis every replica stays ready: it decides alone, it does not stop serving.
    for replica in &fleet.replicas {
        let ready = levee_test_support::get(&replica.admin_url("/readyz"), &[]).await;
        assert_eq!(ready.status, 200, "{}", ready.text());
        assert_eq!(
            admin_json(&replica.admin_url("/api/v1/cluster")).await["redis"],
            false
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::block_in_place(|| redis.restart());
    let restarted = Instant::now();
    // Every replica is back on the fleet-wide decision within 5 s.
    for replica in &fleet.replicas {
        let url = replica.admin_url("/api/v1/cluster");
        eventually("Redis up again for every replica", || {
            let url = url.clone();
            async move { admin_json(&url).await["redis"] == true }
        })
        .await;
    }
    let resumed_in = restarted.elapsed();
    assert!(
        resumed_in < Duration::from_secs(5),
        "fleet-wide limiting resumed after {resumed_in:?}"
    );
    let fallbacks =
        |text: &str| metric(text, "levee_cluster_fallback_total{component=\"rate_limit\"}").unwrap_or(0.0);
    let mut counted = Vec::new();
    for replica in &fleet.replicas {
        let text = levee_test_support::get(&replica.admin_url("/metrics"), &[])
            .await
            .text();
        counted.push(fallbacks(&text));
    }
    let sent = load.await.unwrap();
    let down_from = killed_at - load_start;
    // No request failed or went unanswered because Redis died.
    assert_eq!(
        count(&sent, 200) + count(&sent, 429),
        sent.len(),
        "only 200 and 429 expected"
    );
    let slowest = sent.iter().map(|s| s.took).max().unwrap();
    assert!(
        slowest < Duration::from_millis(50 + 950),
        "slowest answer took {slowest:?}"
    );
    assert!(
        counted.iter().all(|&n| n > 0.0),
        "each replica counted its local decisions: {counted:?}"
    );
    // While Redis was down each replica kept its third of the limit: about 50/s in all
    // (plus each replica's burst share of 4), never the 150/s sent.
    let outage = down_from + Duration::from_secs(1)..down_from + Duration::from_secs(5);
    let ok_in_outage = sent
        .iter()
        .filter(|s| outage.contains(&s.at) && s.status == 200)
        .count();
    eprintln!("slowest {slowest:?}, fallbacks {counted:?}, {ok_in_outage} accepted in the outage, resumed in {resumed_in:?}");
    assert!(
        (150..=240).contains(&ok_in_outage),
        "{ok_in_outage} accepted in 4 s without Redis"
    );
    // Once back, decisions are the fleet's again: the fallback count stands still.
    let mut later = Vec::new();
    for replica in &fleet.replicas {
        let text = levee_test_support::get(&replica.admin_url("/metrics"), &[])
            .await
            .text();
        later.push(fallbacks(&text));
    }
    assert_eq!(counted, later, "no local decisions after Redis came back");
}

/// An OpenAI chat completion using 29 tokens, as the provider's reference shows it.
const COMPLETION: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1733000000,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there!"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":19,"total_tokens":29}}"#;

/// At $100 per million tokens, one call of 29 tokens costs $0.0029.
const COST_PER_CALL: f64 = 29.0 * 100.0 / 1e6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_llm_budget_holds_for_the_whole_fleet() {
    let redis = RedisServer::start();
    let provider = MockUpstream::start(|_| {
        levee_test_support::Reply::ok(COMPLETION)
            .header("content-type", "application/json")
            .delay(Duration::from_millis(30))
    })
    .await;
    let body = format!(
        r#"listeners: [{{ name: public, bind: "127.0.0.1:{{PUBLIC}}" }}]
admin: {{ bind: "127.0.0.1:{{ADMIN}}" }}
workers: 1
access_log: {{ enabled: false }}
cluster:
  node_id: "{{NODE}}"
  heartbeat: 200ms
  redis: {{ url_env: LEVEE_REDIS_URL }}
llm:
  providers:
    p0: {{ kind: openai, base_url: "http://{addr}/v1", api_key_env: LEVEE_TEST_OPENAI_KEY }}
  models:
    - {{ name: smart, targets: [{{ provider: p0, model: gpt-4o }}] }}
  pricing:
    gpt-4o: {{ input: 100, output: 100 }}
consumers:
  - name: team
    api_keys: ["{digest}"]
    llm_budget: {{ usd: 0.05, per: 1h }}
routes:
  - {{ name: ai, match: {{ path_prefix: /v1 }}, llm: true, auth: api_key }}
"#,
        addr = provider.addr,
        digest = levee::auth::digest_of("team-key"),
    );
    let fleet = Fleet::start(
        3,
        &body,
        &[
            ("LEVEE_REDIS_URL", redis.url()),
            ("LEVEE_TEST_OPENAI_KEY", "sk-test".into()),
        ],
    );
    wait_for_roll_call(&fleet).await;
    let client = levee_test_support::client(false);
    let chat = |replica: usize| {
        let request = http::Request::post(fleet.replicas[replica].url("/v1/chat/completions"))
            .header("authorization", "Bearer team-key")
            .header("content-type", "application/json")
            .body(levee_test_support::full(
                r#"{"model":"smart","messages":[{"role":"user","content":"Hi"}]}"#,
            ))
            .unwrap();
        let client = client.clone();
        async move { levee_test_support::send(&client, request).await }
    };
    // Waves of 6 concurrent calls, two per replica, until every call of a wave is refused.
    const IN_FLIGHT: usize = 6;
    let (mut served, mut refused_waves) = (0, 0);
    for _ in 0..20 {
        let answers = futures_join_all((0..IN_FLIGHT).map(|i| chat(i % 3))).await;
        let ok = answers.iter().filter(|a| a.status == 200).count();
        for refused in answers.iter().filter(|a| a.status != 200) {
            assert_eq!(refused.status, 429, "{}", refused.text());
            assert_eq!(refused.json()["error"]["code"], "insufficient_quota");
        }
        served += ok;
        if ok == 0 {
            refused_waves += 1;
            break;
        }
    }
    assert_eq!(refused_waves, 1, "the budget ran out within 20 waves");
    let spent = served as f64 * COST_PER_CALL;
    eprintln!("{served} calls served, ${spent:.4} spent of $0.05");
    assert_eq!(
        provider.hits(),
        served,
        "refused calls never reached the provider"
    );
    // At most the calls in flight when it ran out go over (a single replica would allow 18).
    assert!(spent >= 0.05, "the budget was spent: ${spent}");
    assert!(
        spent <= 0.05 + IN_FLIGHT as f64 * COST_PER_CALL,
        "overspent: ${spent}"
    );
    // Once spent, every replica refuses.
    for i in 0..3 {
        let refused = chat(i).await;
        assert_eq!(refused.status, 429);
        assert_eq!(refused.json()["error"]["code"], "insufficient_quota");
    }
}

/// Runs the futures concurrently and returns their outputs in order.
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

/// A TCP relay to Redis that can stop passing bytes (a Redis that hangs, or a network that
/// drops packets), to see what a slow Redis costs requests.
struct FreezingRelay {
    addr: std::net::SocketAddr,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Copies bytes from `from` to `to`, holding them (for at most 30 s) while `frozen`.
async fn relay_bytes(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16384];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        for _ in 0..3000 {
            if !frozen.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
}

impl FreezingRelay {
    async fn start(to: std::net::SocketAddr) -> FreezingRelay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let addr = listener.local_addr().unwrap();
        let flag = frozen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(to).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(relay_bytes(client_read, server_write, flag.clone()));
                tokio::spawn(relay_bytes(server_read, client_write, flag.clone()));
            }
        });
        FreezingRelay { addr, frozen }
    }

    fn freeze(&self, frozen: bool) {
        self.frozen.store(frozen, std::sync::atomic::Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_redis_costs_one_timeout_per_backoff_not_one_per_request() {
    let redis = RedisServer::start();
    let relay = FreezingRelay::start(([127, 0, 0, 1], redis.port).into()).await;
    let upstream = MockUpstream::fixed("ok").await;
    let fleet = Fleet::start(
        1,
        &fleet_config(upstream.addr, "50ms", "1s"),
        &[("LEVEE_REDIS_URL", format!("redis://{}/0", relay.addr))],
    );
    wait_for_roll_call(&fleet).await;
    let urls = vec![fleet.replicas[0].url("/shared/x")];
    // Warm: the worker's own connection to Redis is open.
    paced(&urls, &[], 50, Duration::from_secs(1)).await;
    relay.freeze(true);
    let frozen = paced(&urls, &[], 100, Duration::from_secs(3)).await;
    relay.freeze(false);
    let waited = frozen
        .iter()
        .filter(|s| s.took >= Duration::from_millis(45))
        .count();
    let slowest = frozen.iter().map(|s| s.took).max().unwrap();
    eprintln!(
        "{waited} of {} requests waited for the timeout; slowest {slowest:?}",
        frozen.len()
    );
    assert_eq!(
        count(&frozen, 200) + count(&frozen, 429),
        frozen.len(),
        "no request failed"
    );
    // 3 s with a back-off of 1 s: a few requests pay the 50 ms timeout, not 300.
    assert!(
        (1..=8).contains(&waited),
        "{waited} requests waited for the hanging Redis"
    );
    assert!(slowest < Duration::from_millis(500), "slowest {slowest:?}");
    let url = fleet.replicas[0].admin_url("/api/v1/cluster");
    eventually("Redis counted as up again", || {
        let url = url.clone();
        async move { admin_json(&url).await["redis"] == true }
    })
    .await;
}
