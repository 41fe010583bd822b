//! AI gateway routes go through the same pipeline as proxied routes (issue 14): a provider's
//! bulkhead, load shedding, a route's static fallback, fault injection and a model canary
//! rolled back by its SLO's burn rate, each over real sockets, with errors in the shape the
//! client speaks (OpenAI's, or Anthropic's on the Messages API).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::time::Duration;

use common::Harness;
use http::StatusCode;
use levee_test_support::*;

const COMPLETION: &str = include_str!("fixtures/openai/chat_completion.json");

/// A mock OpenAI provider answering `status` (the recorded completion for 200) after `delay`.
async fn provider(status: u16, delay: Duration) -> MockUpstream {
    MockUpstream::start(move |_| {
        let reply = if status == 200 {
            Reply::ok(COMPLETION).header("content-type", "application/json")
        } else {
            Reply::status(status)
        };
        reply.delay(delay)
    })
    .await
}

/// Providers `p0`.. (one per address, with `provider_extra` in each) and the model `smart`
/// served by them in order, on the route `ai` (with `route_extra`), plus `extra` at the top.
fn gateway(addrs: &[std::net::SocketAddr], provider_extra: &str, route_extra: &str, extra: &str) -> Harness {
    std::env::set_var("LEVEE_TEST_OPENAI_KEY", "sk-test-123");
    let mut providers = String::new();
    let mut targets = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        providers.push_str(&format!(
            "    p{i}: {{ kind: openai, base_url: \"http://{addr}/v1\", api_key_env: LEVEE_TEST_OPENAI_KEY{provider_extra} }}\n"
        ));
        targets.push(format!("{{ provider: p{i}, model: gpt-4o }}"));
    }
    Harness::start(&format!(
        "{extra}llm:
  providers:
{providers}  models:
    - name: smart
      targets: [{}]
      circuit_breaker: {{ enabled: false }}
      timeouts: {{ first_token: 5s, total: 10s }}
routes:
  - name: ai
    match: {{ path_prefix: /v1 }}
    llm: true
{route_extra}",
        targets.join(", ")
    ))
}

fn chat_request(h: &Harness, path: &str) -> http::Request<TestBody> {
    http::Request::post(h.url(path))
        .header("content-type", "application/json")
        .body(full(
            serde_json::json!({"model": "smart", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]})
                .to_string(),
        ))
        .unwrap()
}

async fn chat(h: &Harness) -> Answer {
    send(&client(false), chat_request(h, "/v1/chat/completions")).await
}

/// Starts `n` chat requests and waits until `provider` holds all of them.
async fn in_flight(
    h: &Harness,
    provider: &MockUpstream,
    n: usize,
) -> Vec<tokio::task::JoinHandle<StatusCode>> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let request = chat_request(h, "/v1/chat/completions");
        tasks.push(tokio::spawn(
            async move { send(&client(false), request).await.status },
        ));
    }
    eventually("requests in flight at the provider", || async {
        provider.hits() == n
    })
    .await;
    tasks
}

/// OpenAI's error shape, with Levee's code.
fn assert_openai_error(answer: &Answer, status: StatusCode, code: &str) {
    assert_eq!(answer.status, status, "{}", answer.text());
    let json = answer.json();
    let error = &json["error"];
    assert_eq!(error["code"], code, "{json}");
    assert!(
        error["type"].is_string() && error["message"].is_string(),
        "{json}"
    );
    assert!(error.get("param").is_some(), "OpenAI's shape has `param`: {json}");
    assert!(answer.headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn a_providers_bulkhead_refuses_the_third_concurrent_call() {
    let slow = provider(200, Duration::from_millis(800)).await;
    let h = gateway(&[slow.addr], ", max_concurrent: 2", "", "");
    let held = in_flight(&h, &slow, 2).await;
    let answer = chat(&h).await;
    assert_openai_error(&answer, StatusCode::SERVICE_UNAVAILABLE, "upstream_unavailable");
    assert_eq!(slow.hits(), 2, "the third call never reached the provider");
    for task in held {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    let metrics = get(&format!("{}/metrics", h.admin), &[]).await.text();
    assert!(
        metrics.contains("levee_bulkhead_rejected_total{upstream=\"p0\"} 1"),
        "{metrics}"
    );
    // The places are given back when the answers end.
    assert_eq!(chat(&h).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_full_provider_passes_the_call_to_the_models_next_target() {
    let slow = provider(200, Duration::from_millis(800)).await;
    let spare = provider(200, Duration::ZERO).await;
    let h = gateway(&[slow.addr, spare.addr], ", max_concurrent: 1", "", "");
    let held = in_flight(&h, &slow, 1).await;
    let answer = chat(&h).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers["x-levee-provider"], "p1");
    assert_eq!((slow.hits(), spare.hits()), (1, 1));
    for task in held {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
}

#[tokio::test]
async fn load_shedding_refuses_ai_calls_past_the_inflight_cap_as_overloaded() {
    let slow = provider(200, Duration::from_millis(800)).await;
    let h = gateway(&[slow.addr], "", "", "limits: { max_inflight: 2 }\n");
    let held = in_flight(&h, &slow, 2).await;
    let answer = chat(&h).await;
    assert_openai_error(&answer, StatusCode::SERVICE_UNAVAILABLE, "overloaded");
    assert_eq!(answer.headers["retry-after"], "1");
    assert_eq!(answer.json()["error"]["type"], "api_error");
    // A client of the Messages API is refused in Anthropic's shape.
    let messages = send(&client(false), chat_request(&h, "/v1/messages")).await;
    assert_eq!(messages.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(messages.json()["type"], "error");
    assert_eq!(messages.json()["error"]["type"], "overloaded_error");
    assert_eq!(slow.hits(), 2);
    for task in held {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
}

#[tokio::test]
async fn the_routes_static_fallback_answers_when_every_model_target_fails() {
    let broken = provider(500, Duration::ZERO).await;
    let down = MockUpstream::start(|_| Reply::status(503)).await;
    let h = gateway(
        &[broken.addr, down.addr],
        "",
        "    fallback: { status: 200, body: '{\"choices\":[],\"degraded\":true}' }\n",
        "",
    );
    let answer = chat(&h).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["degraded"], true);
    assert_eq!(answer.headers["content-type"], "application/json");
    assert_eq!(
        (broken.hits(), down.hits()),
        (1, 1),
        "both targets were tried first"
    );
    eventually("the access log names the replaced failure", || async {
        h.access_log()
            .iter()
            .any(|line| line["fallback_for"] == 502 && line["route"] == "ai")
    })
    .await;
}

#[tokio::test]
async fn an_injected_fault_answers_before_any_provider_is_called() {
    let good = provider(200, Duration::ZERO).await;
    let h = gateway(
        &[good.addr],
        "",
        "    fault: { abort: { percent: 100, status: 503 } }\n",
        "",
    );
    let answer = chat(&h).await;
    assert_openai_error(&answer, StatusCode::SERVICE_UNAVAILABLE, "fault_injected");
    let messages = send(&client(false), chat_request(&h, "/v1/messages")).await;
    assert_eq!(messages.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(messages.json()["error"]["type"], "overloaded_error");
    assert_eq!(good.hits(), 0);
    let metrics = get(&format!("{}/metrics", h.admin), &[]).await.text();
    assert!(
        metrics.contains("levee_faults_injected_total{route=\"ai\",kind=\"abort\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_canary_is_rolled_back_by_its_slos_burn_rate() {
    std::env::set_var("LEVEE_TEST_OPENAI_KEY", "sk-test-123");
    let stable = provider(200, Duration::ZERO).await;
    let next = provider(500, Duration::ZERO).await;
    let h = Harness::start(&format!(
        "llm:
  providers:
    stable: {{ kind: openai, base_url: \"http://{}/v1\", api_key_env: LEVEE_TEST_OPENAI_KEY }}
    next: {{ kind: openai, base_url: \"http://{}/v1\", api_key_env: LEVEE_TEST_OPENAI_KEY }}
  models:
    - {{ name: smart, targets: [{{ provider: stable, model: gpt-4o }}] }}
    - name: smart-next
      targets: [{{ provider: next, model: gpt-5 }}]
      circuit_breaker: {{ enabled: false }}
routes:
  - name: ai
    match: {{ path_prefix: /v1 }}
    llm: true
    canary:
      model: smart-next
      instead_of: smart
      percent: 50
      rollback_if: {{ slo: ai-availability, burn_rate_above: 14.4, window: 5m, min_requests: 10 }}
slos:
  - {{ name: ai-availability, route: ai, objective: 99.9, sli: availability }}
",
        stable.addr, next.addr
    ));
    let canaries = format!("{}/api/v1/canaries", h.admin);
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let state = get(&canaries, &[]).await.json()["canaries"][0].clone();
        if state["state"] == "rolled_back" {
            assert_eq!(state["slo"], "ai-availability-canary", "{state}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never rolled back: {state}");
        for _ in 0..20 {
            chat(&h).await;
        }
    }
    assert!(next.hits() >= 10, "the canary model took its share first");
    // Rolled back: every request for `smart` goes to the stable model again.
    let canary_hits = next.hits();
    for _ in 0..30 {
        let answer = chat(&h).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.headers["x-levee-provider"], "stable");
    }
    assert_eq!(next.hits(), canary_hits);
}
