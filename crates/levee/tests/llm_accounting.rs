//! Exact accounting of LLM calls over real sockets: recorded provider answers with reasoning
//! and cached prompt tokens (OpenAI, Anthropic, Gemini) priced at their own rates in the call
//! log, the metrics and the client's usage; streams that break off reaching the client as an
//! error event, never as a clean end; and Levee's own time per LLM request.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::{call_of, Harness};
use http::StatusCode;
use levee_test_support::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const O3_ANSWER: &str = include_str!("fixtures/openai/chat_completion_reasoning.json");
const O3_STREAM: &str = include_str!("fixtures/openai/chat_completion_reasoning_stream.sse");
const CLAUDE_ANSWER: &str = include_str!("fixtures/anthropic/message_cache_thinking.json");
const CLAUDE_STREAM: &str = include_str!("fixtures/anthropic/stream_cache_thinking.sse");
const RESPONSE_STREAM: &str = include_str!("fixtures/openai/response_stream.sse");
const GEMINI_ANSWER: &str = include_str!("fixtures/gemini/generate_content_thoughts.json");

/// A mock provider replaying `answer`, or `stream` (split every 41 bytes) when asked to stream.
async fn replaying(answer: &'static str, stream: &'static str) -> MockUpstream {
    MockUpstream::start(move |seen| {
        let request: Value = serde_json::from_slice(&seen.body).unwrap_or_default();
        let streamed = request["stream"] == true || seen.uri.path().contains("stream");
        if streamed {
            let chunks = stream.as_bytes().chunks(41).map(Bytes::copy_from_slice).collect();
            Reply::ok("")
                .header("content-type", "text/event-stream")
                .chunks(chunks, Duration::from_millis(1))
        } else {
            Reply::ok(answer).header("content-type", "application/json")
        }
    })
    .await
}

/// A provider that starts a chunked SSE answer with `first`, then drops the connection, as a
/// crashed provider or a cut network does.
async fn cutting(first: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                read_request(&mut socket).await;
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                let chunk = format!("{:x}\r\n{first}\r\n", first.len());
                let _ = socket.write_all(format!("{head}{chunk}").as_bytes()).await;
                let _ = socket.flush().await;
                // Closed without the last chunk: the answer is cut.
            });
        }
    });
    addr
}

/// Reads one request (head, and a body of `content-length` bytes) from `socket`.
async fn read_request(socket: &mut tokio::net::TcpStream) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf)).await else {
            return;
        };
        if n == 0 {
            return;
        }
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen).to_lowercase();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if seen.len() >= end + 4 + length {
                return;
            }
        }
    }
}

fn gateway(
    openai: SocketAddr,
    claude: SocketAddr,
    gemini: SocketAddr,
    data_dir: &std::path::Path,
) -> Harness {
    std::env::set_var("LEVEE_TEST_KEY", "sk-test");
    Harness::start(&format!(
        "data_dir: \"{}\"
llm:
  providers:
    openai: {{ kind: openai, base_url: \"http://{openai}/v1\", api_key_env: LEVEE_TEST_KEY }}
    claude: {{ kind: anthropic, base_url: \"http://{claude}\", api_key_env: LEVEE_TEST_KEY }}
    google: {{ kind: gemini, base_url: \"http://{gemini}\", api_key_env: LEVEE_TEST_KEY }}
  models:
    - {{ name: reasoner, targets: [{{ provider: openai, model: o3-mini }}] }}
    - {{ name: claude, targets: [{{ provider: claude, model: claude-sonnet-4-5 }}] }}
    - {{ name: gemini, targets: [{{ provider: google, model: gemini-2.5-flash }}] }}
routes:
  - name: ai
    match: {{ path_prefix: /v1 }}
    llm: true
",
        data_dir.display()
    ))
}

async fn chat(h: &Harness, body: Value) -> Answer {
    send(
        &client(false),
        http::Request::post(h.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(full(body.to_string()))
            .unwrap(),
    )
    .await
}

/// (prompt, completion, cached, cache_write, reasoning) of a call log row.
fn tokens(row: &Value) -> [u64; 5] {
    [
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
    ]
    .map(|k| row[k].as_u64().unwrap_or(u64::MAX))
}

fn assert_cost(row: &Value, expected: f64) {
    let cost = row["cost_usd"].as_f64().unwrap();
    assert!(
        (cost - expected).abs() < 1e-12,
        "cost {cost}, expected {expected}: {row}"
    );
}

/// The usage object of the last chunk of an SSE answer that carries one.
fn streamed_usage(text: &str) -> Value {
    text.split("\n\n")
        .filter_map(|f| f.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| c.get("usage").filter(|u| u.is_object()).cloned())
        .last()
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasoning_and_cached_tokens_are_counted_and_priced_at_their_own_rates() {
    let openai = replaying(O3_ANSWER, O3_STREAM).await;
    let claude = replaying(CLAUDE_ANSWER, CLAUDE_STREAM).await;
    let gemini = replaying(GEMINI_ANSWER, "").await;
    let dir = tempfile::tempdir().unwrap();
    let h = gateway(openai.addr, claude.addr, gemini.addr, dir.path());
    let ask = |model: &str, stream: bool| {
        json!({"model": model, "stream": stream, "stream_options": {"include_usage": true},
               "messages": [{"role": "user", "content": "Capital of France?"}]})
    };

    // OpenAI o3-mini: 2000 prompt tokens of which 1536 cached, 900 completion of which 704
    // reasoning. $1.10 / $0.55 cached / $4.40 per million.
    let o3_cost = (464.0 * 1.10 + 1536.0 * 0.55 + 900.0 * 4.40) / 1e6;
    for stream in [false, true] {
        let answer = chat(&h, ask("reasoner", stream)).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        let row = call_of(&h, &answer).await;
        assert_eq!(tokens(&row), [2000, 900, 1536, 0, 704], "stream {stream}: {row}");
        assert_cost(&row, o3_cost);
        assert!(row["error"].is_null(), "{row}");
    }

    // Anthropic: input 50 + cache read 1000 + cache write 200; 300 output, of which the
    // 153 bytes of thinking count 39. $3 / $0.30 read / $3.75 write / $15 per million.
    let claude_cost = (50.0 * 3.0 + 1000.0 * 0.30 + 200.0 * 3.75 + 300.0 * 15.0) / 1e6;
    for stream in [false, true] {
        let answer = chat(&h, ask("claude", stream)).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        let usage = if stream {
            streamed_usage(&answer.text())
        } else {
            answer.json()["usage"].clone()
        };
        // The client reads the details in OpenAI's shape, whoever answered.
        assert_eq!(usage["prompt_tokens"], 1250, "{usage}");
        assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 1000, "{usage}");
        assert_eq!(
            usage["completion_tokens_details"]["reasoning_tokens"], 39,
            "{usage}"
        );
        let row = call_of(&h, &answer).await;
        assert_eq!(tokens(&row), [1250, 300, 1000, 200, 39], "stream {stream}: {row}");
        assert_cost(&row, claude_cost);
    }

    // Gemini: 1200 prompt of which 1000 cached; 50 candidates + 250 thoughts.
    // $0.30 / $0.075 cached / $2.50 per million.
    let answer = chat(&h, ask("gemini", false)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.json()["usage"]["completion_tokens"], 300);
    let row = call_of(&h, &answer).await;
    assert_eq!(tokens(&row), [1200, 300, 1000, 0, 250], "{row}");
    assert_cost(&row, (200.0 * 0.30 + 1000.0 * 0.075 + 300.0 * 2.50) / 1e6);

    let text = get(&format!("{}/metrics", h.admin), &[]).await.text();
    let o3 = "provider=\"openai\",model=\"o3-mini\"";
    assert!(
        text.contains(&format!("levee_llm_tokens_total{{{o3},kind=\"prompt\"}} 4000")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "levee_llm_token_details_total{{{o3},kind=\"reasoning\"}} 1408"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "levee_llm_token_details_total{{{o3},kind=\"cached_prompt\"}} 3072"
        )),
        "{text}"
    );
    let sonnet = "provider=\"claude\",model=\"claude-sonnet-4-5\"";
    assert!(
        text.contains(&format!(
            "levee_llm_token_details_total{{{sonnet},kind=\"cache_write\"}} 400"
        )),
        "{text}"
    );
    // Levee's own time on each of the five LLM requests.
    assert!(
        text.contains("levee_llm_overhead_seconds_count{route=\"ai\"} 5"),
        "{text}"
    );
    common::promtool_accepts(&text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_breaks_off_ends_with_an_error_event_never_a_clean_end() {
    // OpenAI relayed as it is: the provider's connection dies after the first chunk.
    let first = O3_STREAM.split("\n\n").next().unwrap();
    let first: &'static str = Box::leak(format!("{first}\n\n").into_boxed_str());
    let openai = cutting(first).await;
    // Anthropic translated: the stream ends cleanly at the HTTP level but without
    // `message_stop` (cut after the text delta).
    let cut_at = CLAUDE_STREAM.find("event: message_delta").unwrap();
    let claude = replaying(CLAUDE_ANSWER, &CLAUDE_STREAM[..cut_at]).await;
    let gemini = replaying(GEMINI_ANSWER, "").await;
    let dir = tempfile::tempdir().unwrap();
    let h = gateway(openai, claude.addr, gemini.addr, dir.path());
    for model in ["reasoner", "claude"] {
        let answer = chat(
            &h,
            json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "the head was out before the cut");
        let text = answer.text();
        assert!(
            !text.contains("[DONE]"),
            "{model}: a cut stream must not end cleanly: {text}"
        );
        let last = text.trim_end().rsplit("\n\n").next().unwrap();
        let error: Value = serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(error["error"]["code"], "stream_interrupted", "{model}: {text}");
        let row = call_of(&h, &answer).await;
        assert_eq!(row["error"], "llm_stream_interrupted", "{model}: {row}");
    }
    // A relayed Responses API stream cut after its first events ends with the Responses
    // `error` event.
    let first_events: Vec<&str> = RESPONSE_STREAM.split("\n\n").take(4).collect();
    let first: &'static str = Box::leak(format!("{}\n\n", first_events.join("\n\n")).into_boxed_str());
    let responses = cutting(first).await;
    std::env::set_var("LEVEE_TEST_KEY", "sk-test");
    let r = Harness::start(&format!(
        "llm:
  providers:
    openai: {{ kind: openai, base_url: \"http://{responses}/v1\", api_key_env: LEVEE_TEST_KEY }}
  models:
    - {{ name: gpt, targets: [{{ provider: openai, model: gpt-4.1 }}] }}
routes:
  - name: ai
    match: {{ path_prefix: /v1 }}
    llm: true
"
    ));
    let answer = send(
        &client(false),
        http::Request::post(r.url("/v1/responses"))
            .header("content-type", "application/json")
            .body(full(
                json!({"model": "gpt", "input": "Hi", "stream": true}).to_string(),
            ))
            .unwrap(),
    )
    .await;
    let text = answer.text();
    assert!(text.starts_with("event: response.created"), "{text}");
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    assert!(last.starts_with("event: error\n"), "{text}");
    let error: Value = serde_json::from_str(last.split_once("data: ").unwrap().1).unwrap();
    assert_eq!(
        (error["type"].as_str(), error["code"].as_str()),
        (Some("error"), Some("stream_interrupted"))
    );
    assert_eq!(error["sequence_number"], 4, "numbered after the relayed events");

    // A client speaking Anthropic's Messages API gets Anthropic's `error` event instead.
    let answer = send(
        &client(false),
        http::Request::post(h.url("/v1/messages"))
            .header("content-type", "application/json")
            .body(full(
                json!({"model": "claude", "max_tokens": 64, "stream": true,
                       "messages": [{"role": "user", "content": "Hi"}]})
                .to_string(),
            ))
            .unwrap(),
    )
    .await;
    let text = answer.text();
    assert!(text.contains("event: error\n"), "{text}");
    assert!(!text.contains("message_stop"), "{text}");
}
