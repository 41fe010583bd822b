//! Guardrails on an AI gateway route over real sockets: a mock OpenAI provider that records
//! what it was sent and answers with personal data, and a mock guardrail webhook. Each PII
//! kind is masked in prompts before the provider sees them and in answers before the client
//! does, whole and streamed (split at every byte); `block` refuses with 400
//! `guardrail_blocked`; a webhook that times out follows its `fail` mode; every verdict is
//! in the call log and the metrics.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{call_of, Harness};
use http::StatusCode;
use levee_test_support::*;
use serde_json::{json, Value};

/// One of each kind, in running text.
const PERSONAL: &str = "Mail jane.doe@example.com or call +44 20 7946 0958; card 4111-1111-1111-1111, \
IBAN GB82 WEST 1234 5698 7654 32, SSN 123-45-6789, host 10.0.0.12 or fe80::1ff:fe23:4567:890a, \
key sk-proj-abcdefghijklmnopqrstuvwxyz012345.";
const MASKED: &str = "Mail [EMAIL] or call [PHONE]; card [CARD], IBAN [IBAN], SSN [SSN], host [IP] or [IP], \
key [SECRET].";

/// How the mock provider streams its answer: the texts of its content deltas.
type Deltas = Arc<Mutex<Vec<String>>>;

fn completion(text: &str) -> String {
    json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}
    })
    .to_string()
}

fn stream_of(deltas: &[String]) -> String {
    let chunk = |delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    };
    let mut out = chunk(json!({"role": "assistant", "content": ""}), Value::Null);
    for delta in deltas {
        out.push_str(&chunk(json!({ "content": delta }), Value::Null));
    }
    out.push_str(&chunk(json!({}), Value::from("stop")));
    out.push_str("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":20,\"total_tokens\":30}}\n\ndata: [DONE]\n\n");
    out
}

async fn provider(deltas: Deltas) -> MockUpstream {
    MockUpstream::start(move |seen| {
        let request: Value = serde_json::from_slice(&seen.body).unwrap_or_default();
        if request["stream"] == true {
            let body = stream_of(&deltas.lock().unwrap());
            // Cut into TCP writes that split events too.
            let chunks = body.as_bytes().chunks(53).map(Bytes::copy_from_slice).collect();
            Reply::ok("")
                .header("content-type", "text/event-stream")
                .chunks(chunks, Duration::ZERO)
        } else {
            Reply::ok(completion(&format!("Here you go. {PERSONAL}")))
                .header("content-type", "application/json")
        }
    })
    .await
}

/// A webhook that rewrites texts to upper case, blocks texts with "forbidden", and answers
/// after 2 s when the text asks it to be slow.
async fn webhook() -> MockUpstream {
    MockUpstream::start(|seen| {
        let asked: Value = serde_json::from_slice(&seen.body).unwrap_or_default();
        let texts: Vec<String> = asked["texts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| t.as_str().unwrap_or_default().to_owned())
            .collect();
        let all = texts.join(" ");
        let verdict = if all.contains("forbidden") {
            json!({"action": "block"})
        } else if all.contains("shout") {
            json!({"action": "rewrite", "texts": texts.iter().map(|t| t.to_uppercase()).collect::<Vec<_>>()})
        } else {
            json!({"action": "allow"})
        };
        let reply = Reply::ok(verdict.to_string()).header("content-type", "application/json");
        if all.contains("slowly") {
            reply.delay(Duration::from_secs(2))
        } else {
            reply
        }
    })
    .await
}

fn gateway(provider: SocketAddr, webhook: SocketAddr, dir: &std::path::Path) -> Harness {
    Harness::start(&format!(
        "data_dir: \"{}\"
llm:
  providers:
    local: {{ kind: openai_compatible, base_url: \"http://{provider}/v1\" }}
  models:
    - {{ name: smart, targets: [{{ provider: local, model: gpt-4o }}] }}
routes:
  - name: ai
    match: {{ path_prefix: /v1 }}
    llm: true
    guardrails:
      - {{ name: words, deny: {{ words: [classified, top secret] }}, on: [request] }}
      - {{ name: size, max_prompt_tokens: 400 }}
      - {{ name: personal, pii: [all] }}
  - name: checked-open
    match: {{ path_prefix: /open }}
    llm: true
    guardrails:
      - {{ name: review, webhook: {{ url: \"http://{webhook}/check\", timeout: 200ms, fail: open }}, on: [request] }}
  - name: checked-closed
    match: {{ path_prefix: /closed }}
    llm: true
    guardrails:
      - {{ name: review, webhook: {{ url: \"http://{webhook}/check\", timeout: 200ms, fail: closed }}, on: [request] }}
",
        dir.display()
    ))
}

async fn chat(h: &Harness, prefix: &str, body: Value) -> Answer {
    send(
        &client(false),
        http::Request::post(h.url(&format!("{prefix}/chat/completions")))
            .header("content-type", "application/json")
            .body(full(body.to_string()))
            .unwrap(),
    )
    .await
}

fn ask(text: &str, stream: bool) -> Value {
    json!({"model": "smart", "stream": stream, "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": text}]}
    ]})
}

/// The content the client got from an SSE answer, and whether it ended with `[DONE]`.
fn streamed_text(text: &str) -> (String, bool) {
    let mut content = String::new();
    for data in text.split("\n\n").filter_map(|f| f.strip_prefix("data: ")) {
        if let Ok(chunk) = serde_json::from_str::<Value>(data) {
            if let Some(piece) = chunk["choices"][0]["delta"]["content"].as_str() {
                content.push_str(piece);
            }
        }
    }
    (content, text.trim_end().ends_with("data: [DONE]"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_data_is_masked_in_prompts_and_answers_whole_and_streamed() {
    let deltas: Deltas = Arc::default();
    let openai = provider(deltas.clone()).await;
    let hook = webhook().await;
    let dir = tempfile::tempdir().unwrap();
    let h = gateway(openai.addr, hook.addr, dir.path());

    // The prompt: masked before the provider sees it.
    let answer = chat(&h, "/v1", ask(PERSONAL, false)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let sent: Value = serde_json::from_slice(&openai.seen()[0].body).unwrap();
    assert_eq!(sent["messages"][1]["content"][0]["text"], MASKED);
    assert_eq!(sent["messages"][0]["content"], "Be brief.");
    // The whole answer: masked before the client sees it.
    assert_eq!(
        answer.json()["choices"][0]["message"]["content"],
        format!("Here you go. {MASKED}")
    );
    let row = call_of(&h, &answer).await;
    let verdicts = row["guardrails"].as_array().unwrap();
    let stages: Vec<(&str, &str)> = verdicts
        .iter()
        .map(|v| (v["stage"].as_str().unwrap(), v["action"].as_str().unwrap()))
        .collect();
    assert_eq!(stages, [("request", "redact"), ("response", "redact")], "{row}");
    assert_eq!(
        verdicts[0]["found"],
        json!(["email", "phone", "card", "iban", "ssn", "ip", "secret"]),
        "{row}"
    );

    // Streamed: the answer cut into two deltas at every byte, and one character a delta.
    let answer_text = format!("Sure: {PERSONAL} Bye.");
    let expected = format!("Sure: {MASKED} Bye.");
    let mut cuts: Vec<Vec<String>> = (1..answer_text.len())
        .filter(|at| answer_text.is_char_boundary(*at))
        .map(|at| vec![answer_text[..at].to_owned(), answer_text[at..].to_owned()])
        .collect();
    cuts.push(answer_text.chars().map(String::from).collect());
    for split in cuts {
        *deltas.lock().unwrap() = split.clone();
        let answer = chat(&h, "/v1", ask("Hello", true)).await;
        assert_eq!(answer.status, StatusCode::OK);
        let (content, done) = streamed_text(&answer.text());
        assert_eq!(
            content,
            expected,
            "split {:?}",
            split.iter().map(String::len).collect::<Vec<_>>()
        );
        assert!(done, "the stream ends as the provider's did");
    }
    let metrics = get(&format!("{}/metrics", h.admin), &[]).await.text();
    assert!(
        metrics
            .contains("levee_guardrail_actions_total{route=\"ai\",guardrail=\"personal\",action=\"redact\"}"),
        "{metrics}"
    );
    common::promtool_accepts(&metrics);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_answer_400_naming_the_guardrail_and_never_reach_the_provider() {
    let openai = provider(Arc::default()).await;
    let hook = webhook().await;
    let dir = tempfile::tempdir().unwrap();
    let h = gateway(openai.addr, hook.addr, dir.path());
    for (text, guardrail) in [
        ("This is Top Secret material.", "words"),
        (&*"many words ".repeat(200), "size"),
    ] {
        let answer = chat(&h, "/v1", ask(text, false)).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        let error = &answer.json()["error"];
        assert_eq!(error["code"], "guardrail_blocked");
        assert_eq!(
            error["message"],
            format!("The request was blocked by the guardrail `{guardrail}`.")
        );
        assert!(
            !answer.text().contains("Top Secret"),
            "the refusal never repeats the text"
        );
        let row = call_of(&h, &answer).await;
        assert_eq!(row["guardrails"][0]["action"], "block", "{row}");
        assert_eq!(row["status"], 400);
    }
    // Whole words only: "classifieds" is not "classified".
    let answer = chat(&h, "/v1", ask("Read the classifieds.", false)).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(openai.hits(), 1, "blocked prompts never reached the provider");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_allows_rewrites_blocks_and_when_slow_follows_its_fail_mode() {
    let openai = provider(Arc::default()).await;
    let hook = webhook().await;
    let dir = tempfile::tempdir().unwrap();
    let h = gateway(openai.addr, hook.addr, dir.path());
    let answer = chat(&h, "/open", ask("please shout this", false)).await;
    assert_eq!(answer.status, StatusCode::OK);
    let sent: Value = serde_json::from_slice(&openai.seen().last().unwrap().body).unwrap();
    assert_eq!(sent["messages"][1]["content"][0]["text"], "PLEASE SHOUT THIS");
    assert_eq!(sent["messages"][0]["content"], "BE BRIEF.");
    let asked: Value = serde_json::from_slice(&hook.seen()[0].body).unwrap();
    assert_eq!(asked["stage"], "request");
    assert_eq!(asked["route"], "checked-open");
    assert_eq!(asked["guardrail"], "review");

    let answer = chat(&h, "/open", ask("a forbidden thing", false)).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.json()["error"]["code"], "guardrail_blocked");

    // A prompt with no text (an image only) is not sent to the service.
    let asked = hook.seen().len();
    let image = json!({"model": "smart", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    ]}]});
    let answer = chat(&h, "/open", image).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(hook.seen().len(), asked, "the webhook was asked about no text");

    // Slower than the 200 ms timeout: open lets it through, closed refuses.
    let hits = openai.hits();
    let answer = chat(&h, "/open", ask("answer slowly", false)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(openai.hits(), hits + 1);
    assert_eq!(call_of(&h, &answer).await["guardrails"][0]["action"], "fail_open");
    let answer = chat(&h, "/closed", ask("answer slowly", false)).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.json()["error"]["code"], "guardrail_unavailable");
    assert_eq!(openai.hits(), hits + 1, "fail closed: the provider is not asked");
    assert_eq!(
        call_of(&h, &answer).await["guardrails"][0]["action"],
        "fail_closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_guardrail_on_a_stream_ends_it_with_an_error_event() {
    let deltas: Deltas = Arc::new(Mutex::new(vec![
        "The card is 4111 1111 ".into(),
        "1111 1111, done.".into(),
    ]));
    let openai = provider(deltas).await;
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(&format!(
        "data_dir: \"{}\"
llm:
  providers:
    local: {{ kind: openai_compatible, base_url: \"http://{}/v1\" }}
  models:
    - {{ name: smart, targets: [{{ provider: local, model: gpt-4o }}] }}
routes:
  - name: ai
    match: {{ path_prefix: /v1 }}
    llm: true
    guardrails:
      - {{ name: cards, pii: [card], action: block, on: [response] }}
",
        dir.path().display(),
        openai.addr
    ));
    let answer = chat(&h, "/v1", ask("Hello", true)).await;
    let text = answer.text();
    let (content, done) = streamed_text(&text);
    assert!(!done, "{text}");
    assert_eq!(content, "The card is", "nothing of the card went out: {text}");
    assert!(text.contains("\"code\":\"guardrail_blocked\""), "{text}");
    let row = call_of(&h, &answer).await;
    assert_eq!(row["status"], 200, "the client got its 200 before the block");
    assert_eq!(row["error"], "guardrail_blocked");
    assert_eq!(
        row["guardrails"],
        json!([{"guardrail": "cards", "stage": "response", "action": "block", "found": ["card"]}])
    );
}
