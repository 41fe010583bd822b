//! The AI gateway over real sockets: mock providers on loopback replay recorded OpenAI
//! answers (tests/fixtures/openai), and the tests check what the provider was sent, what the
//! client got, fallback, and the usage and cost recorded.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::Harness;
use http::StatusCode;
use levee_test_support::*;

const COMPLETION: &str = include_str!("fixtures/openai/chat_completion.json");
const STREAM: &str = include_str!("fixtures/openai/chat_completion_stream.sse");
const BAD_REQUEST: &str = include_str!("fixtures/openai/error_invalid_request.json");

/// A mock OpenAI-style provider: a whole answer, or the recorded stream when asked to stream.
async fn provider() -> MockUpstream {
    MockUpstream::start(|seen| {
        let request: serde_json::Value = serde_json::from_slice(&seen.body).unwrap_or_default();
        if request["stream"] == true {
            // The recorded stream, split into pieces that cut events in the middle.
            let bytes = STREAM.as_bytes();
            let chunks = bytes.chunks(37).map(Bytes::copy_from_slice).collect();
            Reply::ok("")
                .header("content-type", "text/event-stream")
                .chunks(chunks, Duration::from_millis(1))
        } else if request["temperature"] == 5 {
            Reply::status(400)
                .header("content-type", "application/json")
                .body(BAD_REQUEST)
        } else {
            Reply::ok(COMPLETION).header("content-type", "application/json")
        }
    })
    .await
}

fn gateway(targets: &[(&str, std::net::SocketAddr)]) -> Harness {
    gateway_with(targets, "")
}

fn gateway_with(targets: &[(&str, std::net::SocketAddr)], extra: &str) -> Harness {
    std::env::set_var("LEVEE_TEST_OPENAI_KEY", "sk-test-123");
    let mut providers = String::new();
    let mut list = Vec::new();
    for (i, (model, addr)) in targets.iter().enumerate() {
        providers.push_str(&format!(
            "    p{i}: {{ kind: openai, base_url: \"http://{addr}/v1\", api_key_env: LEVEE_TEST_OPENAI_KEY }}\n"
        ));
        list.push(format!("{{ provider: p{i}, model: {model} }}"));
    }
    Harness::start(&format!(
        "llm:
  providers:
{providers}  models:
    - name: smart
      targets: [{}]
      timeouts: {{ first_token: 2s, total: 10s }}
routes:
  - name: ai
    match: {{ path_prefix: /v1 }}
    llm: true
{extra}",
        list.join(", ")
    ))
}

async fn chat(h: &Harness, body: serde_json::Value) -> Answer {
    send(
        &client(false),
        http::Request::post(h.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(full(body.to_string()))
            .unwrap(),
    )
    .await
}

async fn metrics(h: &Harness) -> String {
    get(&format!("{}/metrics", h.admin), &[]).await.text()
}

#[tokio::test]
async fn a_chat_completion_goes_to_the_provider_model_with_its_key_and_is_accounted() {
    let openai = provider().await;
    let h = gateway(&[("gpt-4o", openai.addr)]);
    let answer = chat(
        &h,
        serde_json::json!({"model": "smart", "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.json()["choices"][0]["message"]["content"],
        "Hello! How can I assist you today?"
    );
    assert_eq!(answer.header("x-levee-provider"), Some("p0"));
    assert_eq!(answer.header("x-levee-model"), Some("gpt-4o"));
    assert!(answer.header("x-request-id").is_some());
    let seen = &openai.seen()[0];
    assert_eq!(seen.uri.path(), "/v1/chat/completions");
    assert_eq!(seen.headers["authorization"], "Bearer sk-test-123");
    let sent: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(
        sent["model"], "gpt-4o",
        "the alias is rewritten to the provider's model"
    );
    assert_eq!(sent["messages"][0]["content"], "Hi");
    eventually("usage recorded", || async {
        metrics(&h)
            .await
            .contains("levee_llm_tokens_total{provider=\"p0\",model=\"gpt-4o\",kind=\"completion\"} 10")
    })
    .await;
    let text = metrics(&h).await;
    assert!(
        text.contains("levee_llm_tokens_total{provider=\"p0\",model=\"gpt-4o\",kind=\"prompt\"} 19"),
        "{text}"
    );
    // 19 x $2.50 + 10 x $10 per million tokens.
    assert!(
        text.contains("levee_llm_cost_usd_total{provider=\"p0\",model=\"gpt-4o\"} 0.0001475"),
        "{text}"
    );
}

#[tokio::test]
async fn a_stream_is_relayed_whole_and_its_usage_is_taken_from_the_last_chunk() {
    let openai = provider().await;
    let h = gateway(&[("gpt-4o-mini", openai.addr)]);
    let answer = chat(
        &h,
        serde_json::json!({"model": "smart", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("content-type"), Some("text/event-stream"));
    assert_eq!(answer.text(), STREAM, "the stream arrives byte for byte");
    let sent: serde_json::Value = serde_json::from_slice(&openai.seen()[0].body).unwrap();
    assert_eq!(
        sent["stream_options"]["include_usage"], true,
        "usage is asked for"
    );
    eventually("streamed usage recorded", || async {
        let text = metrics(&h).await;
        text.contains("kind=\"prompt\"} 9") && text.contains("kind=\"completion\"} 2")
    })
    .await;
}

#[tokio::test]
async fn failures_before_the_answer_move_to_the_next_target() {
    let rate_limited = MockUpstream::start(|_| Reply::status(429)).await;
    let broken = MockUpstream::start(|_| Reply::status(503)).await;
    let slow = MockUpstream::start(|_| Reply::ok(COMPLETION).delay(Duration::from_secs(5))).await;
    let down = refused_addr().await;
    let openai = provider().await;
    let h = gateway(&[
        ("a", down),
        ("b", rate_limited.addr),
        ("c", broken.addr),
        ("d", slow.addr),
        ("gpt-4o", openai.addr),
    ]);
    let answer = chat(&h, serde_json::json!({"model": "smart", "messages": []})).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("x-levee-provider"), Some("p4"));
    assert_eq!(
        (rate_limited.hits(), broken.hits(), slow.hits(), openai.hits()),
        (1, 1, 1, 1)
    );
    let text = metrics(&h).await;
    for line in [
        "levee_upstream_requests_total{upstream=\"p0\",target=\"a\",outcome=\"connect_error\"} 1",
        "levee_upstream_requests_total{upstream=\"p1\",target=\"b\",outcome=\"4xx\"} 1",
        "levee_upstream_requests_total{upstream=\"p2\",target=\"c\",outcome=\"5xx\"} 1",
        "levee_upstream_requests_total{upstream=\"p3\",target=\"d\",outcome=\"timeout\"} 1",
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    // The call is counted as a fallback of the model that answered, in the metric (once
    // the response is recorded) and in GET /api/v1/llm.
    eventually("the fallback counted", || async {
        metrics(&h)
            .await
            .contains("levee_llm_fallbacks_total{provider=\"p4\",model=\"gpt-4o\"} 1")
    })
    .await;
    let llm = get(&format!("{}/api/v1/llm", h.admin), &[]).await.json();
    assert_eq!(llm["models"][0]["fallbacks"], 1, "{llm}");
}

#[tokio::test]
async fn a_client_error_is_returned_as_it_is_without_fallback() {
    let first = provider().await;
    let second = provider().await;
    let h = gateway(&[("gpt-4o", first.addr), ("gpt-4o", second.addr)]);
    let answer = chat(
        &h,
        serde_json::json!({"model": "smart", "temperature": 5, "messages": []}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.json()["error"]["type"], "invalid_request_error");
    assert_eq!(answer.json()["error"]["param"], "temperature");
    assert_eq!((first.hits(), second.hits()), (1, 0));
}

#[tokio::test]
async fn when_every_target_fails_the_error_is_openai_shaped() {
    let broken = MockUpstream::start(|_| Reply::status(500)).await;
    let h = gateway(&[("gpt-4o", broken.addr)]);
    let answer = chat(&h, serde_json::json!({"model": "smart", "messages": []})).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    let error = &answer.json()["error"];
    assert_eq!(
        (error["type"].as_str(), error["code"].as_str()),
        (Some("api_error"), Some("upstream_error"))
    );
    assert!(error["message"].as_str().unwrap().len() > 10);

    let unknown = chat(&h, serde_json::json!({"model": "gpt-5-ultra", "messages": []})).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.json()["error"]["code"], "model_not_found");
    let bad = send(
        &client(false),
        http::Request::post(h.url("/v1/chat/completions"))
            .body(full("not json"))
            .unwrap(),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json()["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn models_lists_the_configured_names() {
    let openai = provider().await;
    let h = gateway(&[("gpt-4o", openai.addr)]);
    let answer = get(&h.url("/v1/models"), &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    let body = answer.json();
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][0]["id"], "smart");
    assert_eq!(body["data"][0]["object"], "model");
}

#[tokio::test]
async fn a_client_leaving_mid_stream_cancels_the_provider_call_and_usage_is_still_counted() {
    // A provider that streams one content chunk every 50 ms, for a long time.
    let chunk = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"tok\"},\"finish_reason\":null}]}\n\n";
    // A raw provider, so the test sees when its connection is dropped: it writes a chunk
    // every 50 ms for ten seconds, and notes when a write fails (the gateway hung up on it).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endless = listener.local_addr().unwrap();
    let cancelled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let noticed = cancelled.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let mut buf = vec![0u8; 65536];
        let _ = stream.read(&mut buf).await;
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
        if stream.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for _ in 0..200 {
            let frame = format!("{:x}\r\n{chunk}\r\n", chunk.len());
            if stream.write_all(frame.as_bytes()).await.is_err() || stream.flush().await.is_err() {
                noticed.store(true, std::sync::atomic::Ordering::SeqCst);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let h = gateway(&[("gpt-4o", endless)]);
    let addr = h.gateway().listener_addr("public").unwrap();
    let body =
        r#"{"model":"smart","stream":true,"messages":[{"role":"user","content":"Tell me a long story"}]}"#;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    // Read until three content chunks arrived, then hang up.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while seen.windows(3).filter(|w| w == b"tok").count() < 3 {
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&buf[..n]);
    }
    drop(stream);
    eventually("the provider's call is cancelled", || {
        std::future::ready(cancelled.load(std::sync::atomic::Ordering::SeqCst))
    })
    .await;
    eventually("usage of the cut stream recorded", || async {
        let text = metrics(&h).await;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(
                    "levee_llm_tokens_total{provider=\"p0\",model=\"gpt-4o\",kind=\"completion\"} ",
                )
            })
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| (3..200).contains(&n))
    })
    .await;
    let text = metrics(&h).await;
    let prompt = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("levee_llm_tokens_total{provider=\"p0\",model=\"gpt-4o\",kind=\"prompt\"} ")
        })
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap();
    assert!(
        prompt > 0,
        "the prompt is estimated when the provider could not report it"
    );
    assert!(
        text.contains("levee_requests_total{route=\"ai\",method=\"POST\",status=\"200\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn the_call_log_and_the_access_log_carry_provider_model_tokens_and_cost() {
    let openai = provider().await;
    let dir = tempfile::tempdir().unwrap();
    let h = gateway_with(
        &[("gpt-4o", openai.addr)],
        &format!("data_dir: \"{}\"\n", dir.path().display()),
    );
    let answer = chat(
        &h,
        serde_json::json!({"model": "smart", "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let calls = format!("{}/api/v1/calls", h.admin);
    eventually("the call is stored", || async {
        get(&calls, &[]).await.json()["calls"]
            .as_array()
            .is_some_and(|c| c.len() == 1)
    })
    .await;
    let call = get(&calls, &[]).await.json()["calls"][0].clone();
    assert_eq!(
        (call["provider"].as_str(), call["model"].as_str()),
        (Some("p0"), Some("gpt-4o"))
    );
    assert_eq!(
        (call["prompt_tokens"].as_u64(), call["completion_tokens"].as_u64()),
        (Some(19), Some(10))
    );
    assert!((call["cost_usd"].as_f64().unwrap() - 0.0001475).abs() < 1e-12);
    let analytics = get(&format!("{}/api/v1/analytics?group_by=route", h.admin), &[])
        .await
        .json();
    let cell = &analytics["series"][0];
    assert_eq!(
        (cell["prompt_tokens"].as_u64(), cell["completion_tokens"].as_u64()),
        (Some(19), Some(10))
    );
    let by_model = get(&format!("{}/api/v1/analytics?group_by=model", h.admin), &[])
        .await
        .json();
    let cell = &by_model["series"][0];
    assert_eq!(cell["group"], "gpt-4o", "{by_model}");
    assert!((cell["cost_usd"].as_f64().unwrap() - 0.0001475).abs() < 1e-12);
    let log = h.access_log().into_iter().find(|l| l["route"] == "ai").unwrap();
    assert_eq!(log["llm"]["provider"], "p0");
    assert_eq!(log["llm"]["usage_reported"], true);
    assert_eq!(log["llm"]["completion_tokens"], 10);
}

const CLAUDE_MESSAGE: &str = include_str!("fixtures/anthropic/message.json");
const CLAUDE_TOOL_USE: &str = include_str!("fixtures/anthropic/message_tool_use.json");
const CLAUDE_STREAM: &str = include_str!("fixtures/anthropic/stream.sse");
const CLAUDE_ERROR: &str = include_str!("fixtures/anthropic/error_invalid_request.json");

/// A mock Anthropic Messages API replaying the recorded answers.
async fn claude() -> MockUpstream {
    MockUpstream::start(|seen| {
        let request: serde_json::Value = serde_json::from_slice(&seen.body).unwrap_or_default();
        if request["stream"] == true {
            let chunks = CLAUDE_STREAM
                .as_bytes()
                .chunks(41)
                .map(Bytes::copy_from_slice)
                .collect();
            Reply::ok("")
                .header("content-type", "text/event-stream")
                .chunks(chunks, Duration::from_millis(1))
        } else if request["temperature"] == 5 {
            Reply::status(400)
                .header("content-type", "application/json")
                .body(CLAUDE_ERROR)
        } else if request.get("tools").is_some() {
            Reply::ok(CLAUDE_TOOL_USE).header("content-type", "application/json")
        } else {
            Reply::ok(CLAUDE_MESSAGE).header("content-type", "application/json")
        }
    })
    .await
}

fn claude_gateway(addr: std::net::SocketAddr) -> Harness {
    std::env::set_var("LEVEE_TEST_ANTHROPIC_KEY", "sk-ant-test");
    Harness::start(&format!(
        "llm:
  providers:
    claude: {{ kind: anthropic, base_url: \"http://{addr}\", api_key_env: LEVEE_TEST_ANTHROPIC_KEY }}
  models:
    - name: smart
      targets: [{{ provider: claude, model: claude-sonnet-4-5 }}]
routes:
  - name: ai
    match: {{ path_prefix: /v1 }}
    llm: true
"
    ))
}

#[tokio::test]
async fn anthropic_answers_in_the_openai_shape() {
    let provider = claude().await;
    let h = claude_gateway(provider.addr);
    let answer = chat(
        &h,
        serde_json::json!({"model": "smart", "messages": [
            {"role": "system", "content": "You are Claude."},
            {"role": "user", "content": "Who are you?"}
        ]}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let body = answer.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["content"], "Hi! My name is Claude.");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["prompt_tokens"], 2095);
    assert_eq!(answer.header("x-levee-provider"), Some("claude"));
    let seen = &provider.seen()[0];
    assert_eq!(seen.uri.path(), "/v1/messages");
    assert_eq!(seen.headers["x-api-key"], "sk-ant-test");
    assert_eq!(seen.headers["anthropic-version"], "2023-06-01");
    let sent: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(sent["system"], "You are Claude.");
    assert_eq!(sent["model"], "claude-sonnet-4-5");
    assert_eq!(
        sent["max_tokens"], 4096,
        "Anthropic needs max_tokens; a default is sent"
    );
    eventually("usage recorded", || async {
        metrics(&h).await.contains(
            "levee_llm_tokens_total{provider=\"claude\",model=\"claude-sonnet-4-5\",kind=\"completion\"} 503",
        )
    })
    .await;
}

#[tokio::test]
async fn anthropic_tool_use_becomes_tool_calls_and_errors_keep_their_message() {
    let provider = claude().await;
    let h = claude_gateway(provider.addr);
    let answer = chat(
        &h,
        serde_json::json!({"model": "smart",
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
            "messages": [{"role": "user", "content": "Weather in SF?"}]}),
    )
    .await;
    let message = &answer.json()["choices"][0]["message"];
    assert_eq!(message["tool_calls"][0]["function"]["name"], "get_weather");
    let arguments: serde_json::Value = serde_json::from_str(
        message["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(arguments["location"], "San Francisco, CA");
    assert_eq!(answer.json()["choices"][0]["finish_reason"], "tool_calls");
    let sent: serde_json::Value = serde_json::from_slice(&provider.seen()[0].body).unwrap();
    assert_eq!(
        sent["tools"][0]["input_schema"],
        serde_json::json!({"type": "object"})
    );

    let refused = chat(
        &h,
        serde_json::json!({"model": "smart", "temperature": 5, "messages": []}),
    )
    .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(refused.json()["error"]["type"], "invalid_request_error");
    assert!(refused.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("roles must alternate"));
}

#[tokio::test]
async fn an_anthropic_stream_arrives_as_openai_chunks_with_usage() {
    let provider = claude().await;
    let h = claude_gateway(provider.addr);
    let answer = chat(
        &h,
        serde_json::json!({"model": "smart", "stream": true, "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let text = answer.text();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let chunks: Vec<serde_json::Value> = text
        .split("\n\n")
        .filter_map(|f| f.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "Hello!");
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 15);
    eventually("streamed usage recorded", || async {
        let text = metrics(&h).await;
        text.contains("model=\"claude-sonnet-4-5\",kind=\"prompt\"} 25")
            && text.contains("model=\"claude-sonnet-4-5\",kind=\"completion\"} 15")
    })
    .await;
}

#[tokio::test]
async fn deterministic_requests_are_answered_from_the_cache() {
    let openai = provider().await;
    std::env::set_var("LEVEE_TEST_OPENAI_KEY", "sk-test-123");
    let h = Harness::start(&format!(
        "llm:
  providers:
    p0: {{ kind: openai, base_url: \"http://{}/v1\", api_key_env: LEVEE_TEST_OPENAI_KEY }}
  models:
    - {{ name: smart, targets: [{{ provider: p0, model: gpt-4o }}] }}
  cache: {{ ttl: 1m }}
routes:
  - name: ai
    match: {{ path_prefix: /v1 }}
    llm: true
",
        openai.addr
    ));
    let request = serde_json::json!({"model": "smart", "temperature": 0, "messages": [{"role": "user", "content": "Hi"}]});
    let first = chat(&h, request.clone()).await;
    assert_eq!(first.header("x-levee-cache"), Some("miss"));
    // Same request, keys in another order: served from memory.
    let reordered = serde_json::json!({"messages": [{"content": "Hi", "role": "user"}], "model": "smart", "temperature": 0});
    let second = chat(&h, reordered).await;
    assert_eq!(second.header("x-levee-cache"), Some("hit"));
    assert_eq!(second.header("x-levee-provider"), Some("p0"));
    assert_eq!(second.text(), first.text());
    assert_eq!(openai.hits(), 1, "the provider was called once");
    // Not deterministic: not cached, and no cache header.
    let warm = chat(
        &h,
        serde_json::json!({"model": "smart", "temperature": 0.7, "messages": []}),
    )
    .await;
    assert_eq!(warm.header("x-levee-cache"), None);
    assert_eq!(openai.hits(), 2);
    let text = metrics(&h).await;
    assert!(text.contains("levee_llm_cache_total{result=\"hit\"} 1"), "{text}");
    assert!(
        text.contains("levee_llm_cache_total{result=\"miss\"} 1"),
        "{text}"
    );
}

/// A gateway whose consumer `team` (key `team-key`) has the given LLM limits.
fn limited_gateway(addr: std::net::SocketAddr, consumer_limits: &str) -> Harness {
    std::env::set_var("LEVEE_TEST_OPENAI_KEY", "sk-test-123");
    let digest = {
        use sha2::Digest;
        let hash = sha2::Sha256::digest(b"team-key");
        hash.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    Harness::start(&format!(
        "llm:
  providers:
    p0: {{ kind: openai, base_url: \"http://{addr}/v1\", api_key_env: LEVEE_TEST_OPENAI_KEY }}
  models:
    - {{ name: smart, targets: [{{ provider: p0, model: gpt-4o }}] }}
  pricing:
    gpt-4o: {{ input: 100000, output: 100000 }}
consumers:
  - name: team
    api_keys: [\"sha256:{digest}\"]
{consumer_limits}
routes:
  - name: ai
    match: {{ path_prefix: /v1 }}
    llm: true
    auth: api_key
"
    ))
}

async fn team_chat(h: &Harness, body: serde_json::Value) -> Answer {
    send(
        &client(false),
        http::Request::post(h.url("/v1/chat/completions"))
            .header("authorization", "Bearer team-key")
            .body(full(body.to_string()))
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn a_spent_budget_refuses_the_next_call_in_the_openai_shape() {
    let openai = provider().await;
    // Each call costs 29 tokens x $0.10 = $2.90 at this price; the budget is $1 an hour.
    let h = limited_gateway(openai.addr, "    llm_budget: { usd: 1, per: 1h }");
    let request = serde_json::json!({"model": "smart", "messages": [{"role": "user", "content": "Hi"}]});
    assert_eq!(team_chat(&h, request.clone()).await.status, StatusCode::OK);
    let refused = team_chat(&h, request).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    let error = &refused.json()["error"];
    assert_eq!(
        (error["type"].as_str(), error["code"].as_str()),
        (Some("insufficient_quota"), Some("insufficient_quota"))
    );
    assert!(refused.header("retry-after").is_some());
    assert_eq!(openai.hits(), 1, "the refused call never reached the provider");
    // GET /api/v1/llm shows the budget spent: $2.90 of $1, nothing left.
    let llm = get(&format!("{}/api/v1/llm", h.admin), &[]).await.json();
    let budget = &llm["budgets"][0];
    assert_eq!(
        (
            budget["scope"].as_str(),
            budget["name"].as_str(),
            budget["period"].as_str()
        ),
        (Some("consumer"), Some("team"), Some("1h")),
        "{llm}"
    );
    assert!(
        (budget["spent_usd"].as_f64().unwrap() - 2.9).abs() < 1e-9,
        "{llm}"
    );
    assert_eq!(budget["remaining_usd"], 0.0);
}

#[tokio::test]
async fn tokens_per_minute_reserve_max_tokens_and_settle_with_real_usage() {
    let openai = provider().await;
    let h = limited_gateway(openai.addr, "    llm_rate_limit: { tokens_per_minute: 120 }");
    // Each call reserves its max_tokens (50) plus ~10 for the prompt, and uses 29.
    let request = serde_json::json!({"model": "smart", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]});
    for _ in 0..3 {
        assert_eq!(team_chat(&h, request.clone()).await.status, StatusCode::OK);
    }
    // 120 - 3 x 29 = 33 left: a fourth reservation of ~60 does not fit.
    let refused = team_chat(&h, request).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.json()["error"]["code"], "rate_limit_exceeded");
    assert!(refused.header("retry-after").is_some());
    assert_eq!(openai.hits(), 3);
}

#[tokio::test]
async fn a_prompt_endpoint_renders_its_template_and_names_missing_variables() {
    let openai = provider().await;
    std::env::set_var("LEVEE_TEST_OPENAI_KEY", "sk-test-123");
    let h = Harness::start(&format!(
        "llm:
  providers:
    p0: {{ kind: openai, base_url: \"http://{}/v1\", api_key_env: LEVEE_TEST_OPENAI_KEY }}
  models:
    - {{ name: smart, targets: [{{ provider: p0, model: gpt-4o }}] }}
  prompts:
    - name: summarize
      path: /prompts/summarize
      model: smart
      template: \"Summarize in {{{{words}}}} words:\\n\\n{{{{text}}}}\"
routes:
  - name: ai
    match: {{ path_prefix: /v1 }}
    llm: true
  - name: prompts
    match: {{ path_prefix: /prompts }}
    llm: true
",
        openai.addr
    ));
    let run = |body: serde_json::Value| {
        let url = h.url("/prompts/summarize");
        async move {
            send(
                &client(false),
                http::Request::post(url).body(full(body.to_string())).unwrap(),
            )
            .await
        }
    };
    let answer = run(serde_json::json!({"variables": {"words": 5, "text": "Levee is a gateway."}})).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let body = answer.json();
    assert_eq!(body["output"], "Hello! How can I assist you today?");
    assert_eq!(body["usage"]["total_tokens"], 29);
    assert_eq!(answer.header("x-levee-provider"), Some("p0"));
    let sent: serde_json::Value = serde_json::from_slice(&openai.seen()[0].body).unwrap();
    assert_eq!(
        sent["messages"][0]["content"],
        "Summarize in 5 words:\n\nLevee is a gateway."
    );
    assert_eq!(sent["model"], "gpt-4o");

    let missing = run(serde_json::json!({"variables": {"words": 5}})).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert!(
        missing.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`text`"),
        "{}",
        missing.text()
    );
    assert_eq!(openai.hits(), 1, "nothing is sent for an incomplete prompt");
}

#[tokio::test]
async fn azure_openai_is_addressed_by_deployment_and_api_version() {
    let azure = provider().await;
    std::env::set_var("LEVEE_TEST_AZURE_KEY", "azure-key");
    let h = Harness::start(&format!(
        "llm:
  providers:
    azure: {{ kind: azure_openai, base_url: \"http://{}\", api_key_env: LEVEE_TEST_AZURE_KEY, api_version: 2024-10-21 }}
  models:
    - {{ name: smart, targets: [{{ provider: azure, model: my-gpt-4o }}] }}
routes:
  - name: ai
    match: {{ path_prefix: /v1 }}
    llm: true
",
        azure.addr
    ));
    let answer = chat(
        &h,
        serde_json::json!({"model": "smart", "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let seen = &azure.seen()[0];
    assert_eq!(seen.uri.path(), "/openai/deployments/my-gpt-4o/chat/completions");
    assert_eq!(seen.uri.query(), Some("api-version=2024-10-21"));
    assert_eq!(seen.headers["api-key"], "azure-key");
    assert!(seen.headers.get("authorization").is_none());
}

#[tokio::test]
async fn nothing_is_retried_once_the_stream_has_started() {
    // The first provider sends one chunk, then breaks the connection.
    let chunk = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"par\"},\"finish_reason\":null}]}\n\n";
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let breaking = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = vec![0u8; 65536];
            let _ = stream.read(&mut buf).await;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n",
                chunk.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = stream.set_zero_linger();
            drop(stream);
        }
    });
    let spare = provider().await;
    let h = gateway(&[("gpt-4o", breaking), ("gpt-4o", spare.addr)]);
    let response = client(false)
        .request(
            http::Request::post(h.url("/v1/chat/completions"))
                .body(full(r#"{"model":"smart","stream":true,"messages":[]}"#))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-levee-provider"], "p0");
    use http_body_util::BodyExt;
    let body = response.into_body().collect().await;
    // The client gets the started stream and then the break, not a second answer.
    if let Ok(collected) = body {
        let text = String::from_utf8_lossy(&collected.to_bytes()).into_owned();
        assert!(text.contains("par") && !text.contains("Hello"), "{text}");
    }
    assert_eq!(spare.hits(), 0, "no fallback after the first streamed byte");
}

/// A gateway with one model over `targets` (model names are the target labels) and `model_extra`.
fn strategy_gateway(targets: &[(&str, std::net::SocketAddr, u32)], model_extra: &str) -> Harness {
    let mut providers = String::new();
    let mut list = Vec::new();
    for (i, (model, addr, weight)) in targets.iter().enumerate() {
        providers.push_str(&format!(
            "    p{i}: {{ kind: openai_compatible, base_url: \"http://{addr}/v1\" }}\n"
        ));
        list.push(format!("{{ provider: p{i}, model: {model}, weight: {weight} }}"));
    }
    Harness::start(&format!(
        "llm:
  providers:
{providers}  models:
    - name: smart
      targets: [{}]
{model_extra}
routes:
  - name: ai
    match: {{ path_prefix: /v1 }}
    llm: true
",
        list.join(", ")
    ))
}

#[tokio::test]
async fn a_failing_target_is_skipped_once_its_breaker_opens() {
    let failing = MockUpstream::start(|_| Reply::status(500)).await;
    let good = provider().await;
    let h = strategy_gateway(
        &[("a", failing.addr, 1), ("b", good.addr, 1)],
        "      circuit_breaker: { consecutive_failures: 2, open_for: 1m }",
    );
    for _ in 0..5 {
        let answer = chat(&h, serde_json::json!({"model": "smart", "messages": []})).await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    assert_eq!(
        (failing.hits(), good.hits()),
        (2, 5),
        "after two failures the breaker opens"
    );
}

#[tokio::test]
async fn lowest_latency_prefers_the_faster_target_once_measured() {
    let slow = MockUpstream::start(|_| {
        Reply::ok(COMPLETION)
            .header("content-type", "application/json")
            .delay(Duration::from_millis(150))
    })
    .await;
    let fast = provider().await;
    let h = strategy_gateway(
        &[("slow", slow.addr, 1), ("fast", fast.addr, 1)],
        "      strategy: lowest_latency",
    );
    for _ in 0..6 {
        assert_eq!(
            chat(&h, serde_json::json!({"model": "smart", "messages": []}))
                .await
                .status,
            StatusCode::OK
        );
    }
    // Both are measured once (the unmeasured count as fastest), then the fast one serves.
    assert_eq!((slow.hits(), fast.hits()), (1, 5));
}

#[tokio::test]
async fn weighted_first_tries_follow_the_weights() {
    let heavy = provider().await;
    let light = provider().await;
    let h = strategy_gateway(
        &[("heavy", heavy.addr, 3), ("light", light.addr, 1)],
        "      strategy: weighted",
    );
    for _ in 0..400 {
        assert_eq!(
            chat(&h, serde_json::json!({"model": "smart", "messages": []}))
                .await
                .status,
            StatusCode::OK
        );
    }
    // 3:1, so about 300 of 400; 250..350 is more than seven standard deviations wide.
    assert!(
        (250..350).contains(&heavy.hits()),
        "{} / {}",
        heavy.hits(),
        light.hits()
    );
    assert_eq!(heavy.hits() + light.hits(), 400);
}

const GEMINI_ANSWER: &str = include_str!("fixtures/gemini/generate_content.json");
const GEMINI_CALL: &str = include_str!("fixtures/gemini/generate_content_function_call.json");
const GEMINI_STREAM: &str = include_str!("fixtures/gemini/stream.sse");
const GEMINI_ERROR: &str = include_str!("fixtures/gemini/error_invalid_argument.json");

#[tokio::test]
async fn gemini_answers_calls_streams_and_errors_in_the_openai_shape() {
    let gemini = MockUpstream::start(|seen| {
        let request: serde_json::Value = serde_json::from_slice(&seen.body).unwrap_or_default();
        if seen.uri.path().ends_with(":streamGenerateContent") {
            let chunks = GEMINI_STREAM
                .as_bytes()
                .chunks(29)
                .map(Bytes::copy_from_slice)
                .collect();
            Reply::ok("")
                .header("content-type", "text/event-stream")
                .chunks(chunks, Duration::from_millis(1))
        } else if request["generationConfig"]["temperature"] == 5 {
            Reply::status(400)
                .header("content-type", "application/json")
                .body(GEMINI_ERROR)
        } else if request.get("tools").is_some() {
            Reply::ok(GEMINI_CALL).header("content-type", "application/json")
        } else {
            Reply::ok(GEMINI_ANSWER).header("content-type", "application/json")
        }
    })
    .await;
    std::env::set_var("LEVEE_TEST_GEMINI_KEY", "gemini-key");
    let h = Harness::start(&format!(
        "llm:
  providers:
    google: {{ kind: gemini, base_url: \"http://{}\", api_key_env: LEVEE_TEST_GEMINI_KEY }}
  models:
    - {{ name: smart, targets: [{{ provider: google, model: gemini-2.5-flash }}] }}
routes:
  - name: ai
    match: {{ path_prefix: /v1 }}
    llm: true
",
        gemini.addr
    ));
    let plain = chat(
        &h,
        serde_json::json!({"model": "smart", "messages": [
        {"role": "system", "content": "Be nice."}, {"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(plain.status, StatusCode::OK, "{}", plain.text());
    assert_eq!(
        plain.json()["choices"][0]["message"]["content"],
        "Hello! How can I help you today?"
    );
    assert_eq!(plain.json()["usage"]["total_tokens"], 14);
    let seen = &gemini.seen()[0];
    assert_eq!(seen.uri.path(), "/v1beta/models/gemini-2.5-flash:generateContent");
    assert_eq!(seen.headers["x-goog-api-key"], "gemini-key");
    let sent: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(sent["systemInstruction"]["parts"][0]["text"], "Be nice.");

    let called = chat(&h, serde_json::json!({"model": "smart",
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        "messages": [{"role": "user", "content": "Weather?"}]})).await;
    let call = &called.json()["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    assert!(call["function"]["arguments"].as_str().unwrap().contains("Boston"));
    assert_eq!(called.json()["choices"][0]["finish_reason"], "tool_calls");

    let streamed = chat(
        &h,
        serde_json::json!({"model": "smart", "stream": true,
        "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    let text = streamed.text();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let content: String = text
        .split("\n\n")
        .filter_map(|f| f.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<serde_json::Value>(d).unwrap())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(content, "Hello there! How can I help?");
    assert!(gemini.seen().iter().any(|s| s.uri.query() == Some("alt=sse")));

    let refused = chat(
        &h,
        serde_json::json!({"model": "smart", "temperature": 5, "messages": []}),
    )
    .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(refused.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("temperature"));
    eventually("gemini usage recorded", || async {
        metrics(&h).await.contains(
            "levee_llm_tokens_total{provider=\"google\",model=\"gemini-2.5-flash\",kind=\"completion\"} 28",
        )
    })
    .await;
}

#[tokio::test]
async fn clients_speaking_the_messages_api_are_answered_in_its_shape() {
    let openai = provider().await;
    let h = gateway(&[("gpt-4o", openai.addr)]);
    let post = |body: serde_json::Value| {
        let url = h.url("/v1/messages");
        async move {
            send(
                &client(false),
                http::Request::post(url)
                    .header("anthropic-version", "2023-06-01")
                    .body(full(body.to_string()))
                    .unwrap(),
            )
            .await
        }
    };
    let answer = post(
        serde_json::json!({"model": "smart", "max_tokens": 50, "system": "Be brief.",
        "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let message = answer.json();
    assert_eq!(message["type"], "message");
    assert_eq!(
        message["content"][0]["text"],
        "Hello! How can I assist you today?"
    );
    assert_eq!(message["stop_reason"], "end_turn");
    assert_eq!(message["usage"]["input_tokens"], 19);
    let sent: serde_json::Value = serde_json::from_slice(&openai.seen()[0].body).unwrap();
    assert_eq!(
        sent["messages"][0],
        serde_json::json!({"role": "system", "content": "Be brief."})
    );

    let streamed = post(
        serde_json::json!({"model": "smart", "max_tokens": 50, "stream": true,
        "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    let text = streamed.text();
    let kinds: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
    assert_eq!(kinds.first(), Some(&"message_start"), "{text}");
    assert_eq!(kinds.last(), Some(&"message_stop"), "{text}");
    assert!(kinds.contains(&"content_block_delta"));
    assert!(text.contains("\"text\":\"Hello\""), "{text}");
    assert!(text.contains("\"output_tokens\":2"), "{text}");

    let unknown = post(serde_json::json!({"model": "nope", "max_tokens": 5, "messages": []})).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.json()["type"], "error");
}
