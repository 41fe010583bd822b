//! The official OpenAI Python SDK against the AI gateway: chat (plain, streamed, with tools)
//! and embeddings, through Levee to a mock provider replaying recorded OpenAI answers.
//! scripts/test.sh installs the SDK in a virtualenv and names its Python in LEVEE_TEST_PYTHON.
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
use levee_test_support::*;

const COMPLETION: &str = include_str!("fixtures/openai/chat_completion.json");
const TOOL_CALL: &str = include_str!("fixtures/openai/chat_completion_tool_call.json");
const STREAM: &str = include_str!("fixtures/openai/chat_completion_stream.sse");
const EMBEDDINGS: &str = include_str!("fixtures/openai/embeddings.json");

const CLIENT: &str = r#"
import sys
from openai import OpenAI

client = OpenAI(base_url=sys.argv[1], api_key="levee-test", max_retries=0)

plain = client.chat.completions.create(model="smart", messages=[{"role": "user", "content": "Hi"}])
assert plain.choices[0].message.content == "Hello! How can I assist you today?", plain
assert plain.usage.total_tokens == 29, plain.usage

text = ""
usage = None
for chunk in client.chat.completions.create(
    model="smart", stream=True, messages=[{"role": "user", "content": "Hi"}]
):
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
    if chunk.usage:
        usage = chunk.usage
assert text == "Hello!", text
assert usage is not None and usage.completion_tokens == 2, usage

tools = [{
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
    },
}]
called = client.chat.completions.create(
    model="smart", tools=tools, messages=[{"role": "user", "content": "Weather in Boston?"}]
)
call = called.choices[0].message.tool_calls[0]
assert call.function.name == "get_current_weather", call
assert "Boston" in call.function.arguments, call
assert called.choices[0].finish_reason == "tool_calls"

vectors = client.embeddings.create(model="embed", input="The food was delicious")
assert len(vectors.data[0].embedding) == 3, vectors

try:
    client.chat.completions.create(model="no-such-model", messages=[])
    raise SystemExit("expected NotFoundError")
except Exception as error:  # the SDK maps the OpenAI-shaped 404 to its own exception
    assert type(error).__name__ == "NotFoundError", repr(error)

print("sdk ok")
"#;

/// Runs `script` with the test Python and `args`; the combined output, and whether it
/// succeeded.
async fn run_python(python: String, script: &'static str, args: Vec<String>) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("client.py");
    std::fs::write(&path, script).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(&path)
            .args(args)
            .env_remove("OPENAI_BASE_URL")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), report)
}

const CUT_CLIENT: &str = r#"
import sys
from openai import OpenAI, APIError

client = OpenAI(base_url=sys.argv[1], api_key="levee-test", max_retries=0)
text = ""
try:
    for chunk in client.chat.completions.create(
        model="smart", stream=True, messages=[{"role": "user", "content": "Hi"}]
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    raise SystemExit("the cut stream ended as if whole: " + repr(text))
except APIError as error:
    assert "broke off" in str(error), repr(error)
    assert text == "Hello", text
print("cut ok")
"#;

/// A provider that sends the first events of a stream, then drops the connection.
async fn cutting_provider(first: String) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let first = first.clone();
            tokio::spawn(async move {
                // The request is small: its head and body arrive before the answer starts.
                let mut buf = vec![0u8; 65536];
                let _ = tokio::time::timeout(Duration::from_millis(200), socket.read(&mut buf)).await;
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                let chunk = format!("{:x}\r\n{first}\r\n", first.len());
                let _ = socket.write_all(format!("{head}{chunk}").as_bytes()).await;
                let _ = socket.flush().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_midway_reaches_the_openai_sdk_as_an_error() {
    let Ok(python) = std::env::var("LEVEE_TEST_PYTHON") else {
        common::missing_tool("LEVEE_TEST_PYTHON not set: the OpenAI SDK test is skipped");
        return;
    };
    // The recorded stream up to its first content ("Hello"), then the connection dies.
    let events: Vec<&str> = STREAM.split("\n\n").take(2).collect();
    let provider = cutting_provider(format!("{}\n\n", events.join("\n\n"))).await;
    let h = Harness::start(&format!(
        "llm:
  providers:
    local: {{ kind: openai_compatible, base_url: \"http://{provider}/v1\" }}
  models:
    - {{ name: smart, targets: [{{ provider: local, model: gpt-4o }}] }}
routes:
  - name: ai
    match: {{ path_prefix: /v1 }}
    llm: true
"
    ));
    let (ok, report) = run_python(python, CUT_CLIENT, vec![h.url("/v1")]).await;
    assert!(ok && report.contains("cut ok"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_works_against_levee() {
    let Ok(python) = std::env::var("LEVEE_TEST_PYTHON") else {
        common::missing_tool("LEVEE_TEST_PYTHON not set: the OpenAI SDK test is skipped");
        return;
    };
    let provider = MockUpstream::start(|seen| {
        let request: serde_json::Value = serde_json::from_slice(&seen.body).unwrap_or_default();
        if seen.uri.path().ends_with("/embeddings") {
            Reply::ok(EMBEDDINGS).header("content-type", "application/json")
        } else if request["stream"] == true {
            let chunks = STREAM.as_bytes().chunks(50).map(Bytes::copy_from_slice).collect();
            Reply::ok("")
                .header("content-type", "text/event-stream")
                .chunks(chunks, Duration::from_millis(1))
        } else if request.get("tools").is_some() {
            Reply::ok(TOOL_CALL).header("content-type", "application/json")
        } else {
            Reply::ok(COMPLETION).header("content-type", "application/json")
        }
    })
    .await;
    let h = Harness::start(&format!(
        "llm:
  providers:
    local: {{ kind: openai_compatible, base_url: \"http://{}/v1\" }}
  models:
    - {{ name: smart, targets: [{{ provider: local, model: gpt-4o }}] }}
    - {{ name: embed, targets: [{{ provider: local, model: text-embedding-3-small }}] }}
routes:
  - name: ai
    match: {{ path_prefix: /v1 }}
    llm: true
",
        provider.addr
    ));
    let (ok, report) = run_python(python, CLIENT, vec![h.url("/v1")]).await;
    assert!(ok && report.contains("sdk ok"), "{report}");
    // The tool definitions reached the provider unchanged.
    let with_tools = provider
        .seen()
        .into_iter()
        .find(|s| String::from_utf8_lossy(&s.body).contains("get_current_weather"))
        .unwrap();
    let sent: serde_json::Value = serde_json::from_slice(&with_tools.body).unwrap();
    assert_eq!(sent["tools"][0]["function"]["name"], "get_current_weather");
}

const RESPONSE: &str = include_str!("fixtures/openai/response.json");
const RESPONSE_STREAM: &str = include_str!("fixtures/openai/response_stream.sse");
const CLAUDE_MESSAGE: &str = include_str!("fixtures/anthropic/message.json");
const CLAUDE_STREAM: &str = include_str!("fixtures/anthropic/stream.sse");

const RESPONSES_CLIENT: &str = r#"
import json, sys
from openai import OpenAI

client = OpenAI(base_url=sys.argv[1], api_key="levee-test", max_retries=0)
expected = json.loads(sys.argv[2])
for model, (whole_text, streamed_text) in expected.items():
    plain = client.responses.create(model=model, instructions="Be brief.", input="Tell me a story.")
    assert plain.output_text == whole_text, (model, plain)
    assert plain.usage.total_tokens == plain.usage.input_tokens + plain.usage.output_tokens, plain.usage
    text, completed, types = "", None, []
    for event in client.responses.create(model=model, input=[{"role": "user", "content": "Hi"}], stream=True):
        types.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
        if event.type == "response.completed":
            completed = event.response
    assert text == streamed_text, (model, text)
    assert types[0] == "response.created" and types[-1] == "response.completed", types
    assert completed is not None and completed.usage.output_tokens > 0, completed
    print(model, plain.usage.input_tokens, plain.usage.output_tokens,
          completed.usage.input_tokens, completed.usage.output_tokens)
print("responses ok")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdks_responses_api_works_relayed_and_translated() {
    let Ok(python) = std::env::var("LEVEE_TEST_PYTHON") else {
        common::missing_tool("LEVEE_TEST_PYTHON not set: the OpenAI SDK test is skipped");
        return;
    };
    let chunked = |text: &'static str| text.as_bytes().chunks(61).map(Bytes::copy_from_slice).collect();
    let openai = MockUpstream::start(move |seen| {
        let request: serde_json::Value = serde_json::from_slice(&seen.body).unwrap_or_default();
        assert!(
            seen.uri.path().ends_with("/responses"),
            "relayed as a Responses call"
        );
        if request["stream"] == true {
            Reply::ok("")
                .header("content-type", "text/event-stream")
                .chunks(chunked(RESPONSE_STREAM), Duration::from_millis(1))
        } else {
            Reply::ok(RESPONSE).header("content-type", "application/json")
        }
    })
    .await;
    let claude = MockUpstream::start(move |seen| {
        let request: serde_json::Value = serde_json::from_slice(&seen.body).unwrap_or_default();
        if request["stream"] == true {
            Reply::ok("")
                .header("content-type", "text/event-stream")
                .chunks(chunked(CLAUDE_STREAM), Duration::from_millis(1))
        } else {
            Reply::ok(CLAUDE_MESSAGE).header("content-type", "application/json")
        }
    })
    .await;
    std::env::set_var("LEVEE_TEST_SDK_KEY", "sk-test");
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(&format!(
        "data_dir: \"{}\"
llm:
  providers:
    openai: {{ kind: openai, base_url: \"http://{}/v1\", api_key_env: LEVEE_TEST_SDK_KEY }}
    claude: {{ kind: anthropic, base_url: \"http://{}\", api_key_env: LEVEE_TEST_SDK_KEY }}
  models:
    - {{ name: gpt, targets: [{{ provider: openai, model: gpt-4.1 }}] }}
    - {{ name: claude, targets: [{{ provider: claude, model: claude-sonnet-4-5 }}] }}
routes:
  - name: ai
    match: {{ path_prefix: /v1 }}
    llm: true
",
        dir.path().display(),
        openai.addr,
        claude.addr
    ));
    let story = serde_json::from_str::<serde_json::Value>(RESPONSE).unwrap()["output"][0]["content"][0]
        ["text"]
        .clone();
    let expected = serde_json::json!({
        "gpt": [story, "Hi there! How can I assist you today?"],
        "claude": ["Hi! My name is Claude.", "Hello!"],
    });
    let (ok, report) = run_python(python, RESPONSES_CLIENT, vec![h.url("/v1"), expected.to_string()]).await;
    assert!(ok && report.contains("responses ok"), "{report}");
    // The SDK read the mocks' own figures, and the call log holds the same.
    assert!(report.contains("gpt 36 87 37 11"), "{report}");
    assert!(report.contains("claude 2095 503 25 15"), "{report}");
    let url = format!("{}/api/v1/calls?limit=10", h.admin);
    eventually("the four calls are stored", || async {
        get(&url, &[]).await.json()["calls"]
            .as_array()
            .is_some_and(|c| c.len() == 4)
    })
    .await;
    let calls = get(&url, &[]).await.json()["calls"].clone();
    let mut usage: Vec<(String, u64, u64)> = calls
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let tokens = |k: &str| c[k].as_u64().unwrap_or(0);
            (
                c["model"].as_str().unwrap_or("").to_owned(),
                tokens("prompt_tokens"),
                tokens("completion_tokens"),
            )
        })
        .collect();
    usage.sort();
    let expected_usage: Vec<(String, u64, u64)> = vec![
        ("claude-sonnet-4-5".into(), 25, 15),
        ("claude-sonnet-4-5".into(), 2095, 503),
        ("gpt-4.1".into(), 36, 87),
        ("gpt-4.1".into(), 37, 11),
    ];
    assert_eq!(usage, expected_usage);
    // The relayed request kept its shape; only the model changed.
    let sent: serde_json::Value = serde_json::from_slice(&openai.seen()[0].body).unwrap();
    assert_eq!(
        (sent["model"].as_str(), sent["instructions"].as_str()),
        (Some("gpt-4.1"), Some("Be brief."))
    );
    assert!(
        sent.get("stream_options").is_none(),
        "the Responses API has no include_usage"
    );
}
