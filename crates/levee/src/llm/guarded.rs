//! The route's guardrails on the AI gateway's calls: on the prompt before any provider is
//! asked (so what is redacted never leaves), on a whole answer before the client, the
//! cache or a translation sees it, and on a streamed answer as it streams.
//!
//! The texts are the ones people and models write: the `content` of each message (a
//! string, or the `text` of its text parts), an embeddings `input`, and each choice's
//! answer text. Tool call arguments, images and audio are not looked at.
//!
//! A streamed answer ([`GuardedStream`]) runs its `pii` and `deny` guardrails on each
//! choice's `delta.content`, holding back only what a match still being written could take
//! (`guardrails::scan`), and lets the held text out with the chunk that finishes the
//! choice. A `block` there ends the stream with an error event (`guardrail_blocked`) in
//! place of the rest of the answer.

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use serde_json::{json, Map, Value};

use super::retell::{Retell, Retold};
use super::sse::Event;
use super::translate::{write_data, write_interrupted};
use super::usage::LlmCall;
use super::ApiError;
use crate::body::ResponseBody;
use crate::config::guardrails::{GuardAction, GuardStage, GuardrailSpec};
use crate::guardrails::{self, GuardVerdicts, Incremental, Refusal};

/// Choices a guarded stream follows at most (OpenAI's largest `n`).
const MAX_CHOICES: u64 = 128;

/// The refusal as the client's error.
pub fn refusal(refusal: Refusal) -> ApiError {
    match refusal {
        Refusal::Blocked { guardrail, stage } => {
            let what = match stage {
                GuardStage::Request => "request",
                GuardStage::Response => "answer",
            };
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "guardrail_blocked",
                format!("The {what} was blocked by the guardrail `{guardrail}`."),
            )
        }
        Refusal::Unavailable { guardrail } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            "guardrail_unavailable",
            format!("The guardrail `{guardrail}` could not check the call; retry later."),
        ),
    }
}

/// The text slots of a request: each message's content (or its text parts) and an
/// embeddings input.
fn request_slots(request: &mut Map<String, Value>) -> Vec<&mut String> {
    let mut slots = Vec::new();
    for (key, value) in request.iter_mut() {
        match (key.as_str(), value) {
            ("messages", Value::Array(messages)) => {
                for message in messages {
                    match message.get_mut("content") {
                        Some(Value::String(text)) => slots.push(text),
                        Some(Value::Array(parts)) => slots.extend(parts.iter_mut().filter_map(text_part)),
                        _ => {}
                    }
                }
            }
            ("input" | "instructions", Value::String(text)) => slots.push(text),
            // Embeddings inputs, or Responses API input items (messages with text parts).
            ("input", Value::Array(items)) => {
                for item in items {
                    match item {
                        Value::String(text) => slots.push(text),
                        Value::Object(item) => match item.get_mut("content") {
                            Some(Value::String(text)) => slots.push(text),
                            Some(Value::Array(parts)) => slots.extend(parts.iter_mut().filter_map(text_part)),
                            _ => {}
                        },
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    slots
}

/// The text of a `{"type": "text", "text": ...}` content part (`input_text` and
/// `output_text` in the Responses API).
fn text_part(part: &mut Value) -> Option<&mut String> {
    let kind = part.get("type").and_then(Value::as_str);
    let is_text = matches!(kind, Some("text" | "input_text" | "output_text"));
    match part.get_mut("text") {
        Some(Value::String(text)) if is_text => Some(text),
        _ => None,
    }
}

/// The answer texts of a whole chat completion, or of a Response object.
fn answer_slots(answer: &mut Value) -> Vec<&mut String> {
    let Some(answer) = answer.as_object_mut() else {
        return Vec::new();
    };
    let mut slots = Vec::new();
    for (key, value) in answer.iter_mut() {
        match (key.as_str(), value) {
            ("output", Value::Array(output)) => {
                for item in output {
                    if let Some(Value::Array(parts)) = item.get_mut("content") {
                        slots.extend(parts.iter_mut().filter_map(text_part));
                    }
                }
            }
            ("choices", Value::Array(choices)) => {
                slots.extend(
                    choices
                        .iter_mut()
                        .filter_map(|c| match c.pointer_mut("/message/content") {
                            Some(Value::String(text)) => Some(text),
                            _ => None,
                        }),
                );
            }
            _ => {}
        }
    }
    slots
}

/// Runs `stage`'s guardrails over `slots`, writing back what they changed.
async fn check_slots(
    guardrails: &[GuardrailSpec],
    stage: GuardStage,
    slots: Vec<&mut String>,
    prompt_tokens: u64,
    context: &guardrails::Context<'_>,
    verdicts: &GuardVerdicts,
) -> Result<(), ApiError> {
    let mut texts: Vec<String> = slots.iter().map(|s| (**s).clone()).collect();
    guardrails::check(guardrails, stage, &mut texts, prompt_tokens, context, verdicts)
        .await
        .map_err(refusal)?;
    for (slot, text) in slots.into_iter().zip(texts) {
        if *slot != text {
            *slot = text;
        }
    }
    Ok(())
}

/// The prompt's guardrails, on the request as the client sent it.
pub async fn check_request(
    guardrails: &[GuardrailSpec],
    request: &mut Map<String, Value>,
    prompt_tokens: u64,
    context: &guardrails::Context<'_>,
    verdicts: &GuardVerdicts,
) -> Result<(), ApiError> {
    let slots = request_slots(request);
    check_slots(
        guardrails,
        GuardStage::Request,
        slots,
        prompt_tokens,
        context,
        verdicts,
    )
    .await
}

/// The answer's guardrails on a whole chat completion: the answer as it now reads, or the
/// refusal.
pub async fn check_answer(
    guardrails: &[GuardrailSpec],
    whole: &Bytes,
    context: &guardrails::Context<'_>,
    verdicts: &GuardVerdicts,
) -> Result<Option<Bytes>, ApiError> {
    let Ok(mut answer) = serde_json::from_slice::<Value>(whole) else {
        return Ok(None);
    };
    let before = answer.clone();
    check_slots(
        guardrails,
        GuardStage::Response,
        answer_slots(&mut answer),
        0,
        context,
        verdicts,
    )
    .await?;
    Ok((answer != before).then(|| Bytes::from(answer.to_string())))
}

/// One streamed choice's held text, one scanner per guardrail in order.
#[derive(Default)]
struct Choice {
    scanners: Vec<Incremental>,
}

/// A streamed chat completion with the answer's `pii` and `deny` guardrails applied.
pub struct GuardedStream {
    guardrails: Arc<[GuardrailSpec]>,
    verdicts: Arc<GuardVerdicts>,
    choices: std::collections::BTreeMap<u64, Choice>,
    /// `id`, `created` and `model` of the last chunk, for a chunk Levee adds.
    last: Map<String, Value>,
    ended: bool,
}

/// Why a guarded stream stops early: the guardrail that blocked.
struct Stop(Arc<str>);

impl GuardedStream {
    pub fn new(
        inner: ResponseBody,
        guardrails: Arc<[GuardrailSpec]>,
        verdicts: Arc<GuardVerdicts>,
        call: Option<Arc<LlmCall>>,
    ) -> Retold<GuardedStream> {
        let retell = GuardedStream {
            guardrails,
            verdicts,
            choices: Default::default(),
            last: Map::new(),
            ended: false,
        };
        Retold::new(inner, retell, call)
    }

    /// Feeds `text` of a choice through its guardrails (or lets all it holds out when
    /// `text` is `None`), returning what is final.
    fn pass(&mut self, index: u64, text: Option<&str>) -> Result<String, Stop> {
        let streaming = guardrails::streaming(&self.guardrails);
        let choice = self.choices.entry(index).or_default();
        choice.scanners.resize_with(streaming.len(), Incremental::default);
        let mut carried = text.map(str::to_owned);
        let flushing = text.is_none();
        let mut out = String::new();
        for ((guardrail, finder, action), scanner) in streaming.iter().zip(&mut choice.scanners) {
            let mut scanned = match carried.take() {
                Some(piece) => scanner.push(*finder, &piece),
                None => guardrails::Scanned::default(),
            };
            if flushing {
                let rest = scanner.finish(*finder);
                scanned.redacted.push_str(&rest.redacted);
                scanned.plain.push_str(&rest.plain);
                scanned.kinds.extend(rest.kinds);
            }
            note(&self.verdicts, guardrail, *action, &scanned.kinds);
            if !scanned.kinds.is_empty() && *action == GuardAction::Block {
                return Err(Stop(guardrail.name.clone()));
            }
            let next = match action {
                GuardAction::Redact => scanned.redacted,
                GuardAction::Log | GuardAction::Block => scanned.plain,
            };
            carried = Some(next);
        }
        out.push_str(&carried.unwrap_or_default());
        Ok(out)
    }
}

fn note(verdicts: &GuardVerdicts, guardrail: &GuardrailSpec, action: GuardAction, kinds: &[&'static str]) {
    if !kinds.is_empty() {
        verdicts.record(&guardrail.name, GuardStage::Response.name(), action.name(), kinds);
    }
}

/// The chunk as it goes out, with each choice's content passed through the guardrails
/// (`None`: nothing of it goes out).
fn guard_chunk(stream: &mut GuardedStream, mut chunk: Value) -> Result<Option<Value>, Stop> {
    for key in ["id", "created", "model", "object"] {
        if let Some(value) = chunk.get(key) {
            stream.last.insert(key.into(), value.clone());
        }
    }
    let Some(Value::Array(choices)) = chunk.get_mut("choices") else {
        return Ok(Some(chunk));
    };
    let mut kept = Vec::with_capacity(choices.len());
    for mut choice in std::mem::take(choices) {
        let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
        if index >= MAX_CHOICES {
            continue;
        }
        let text = choice
            .pointer("/delta/content")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let ends = choice.get("finish_reason").is_some_and(|r| !r.is_null())
            || choice.pointer("/delta/tool_calls").is_some();
        let mut out = match &text {
            Some(text) => stream.pass(index, Some(text))?,
            None => String::new(),
        };
        if ends {
            out.push_str(&stream.pass(index, None)?);
        }
        let Some(delta) = choice.get_mut("delta").and_then(Value::as_object_mut) else {
            kept.push(choice);
            continue;
        };
        if text.is_some() || !out.is_empty() {
            delta.insert("content".into(), Value::from(out.as_str()));
        }
        // A chunk that only carried text now held back says nothing yet.
        let empty = out.is_empty() && delta.keys().all(|k| k == "content") && !ends;
        if !empty {
            kept.push(choice);
        }
    }
    let any = !kept.is_empty();
    if let Some(Value::Array(choices)) = chunk.get_mut("choices") {
        *choices = kept;
    }
    Ok((any || chunk.get("usage").is_some_and(|u| !u.is_null())).then_some(chunk))
}

impl GuardedStream {
    /// Everything still held, as chunks of their own.
    fn flush_all(&mut self, out: &mut Vec<u8>) -> Result<(), Stop> {
        let indexes: Vec<u64> = self.choices.keys().copied().collect();
        for index in indexes {
            let text = self.pass(index, None)?;
            if text.is_empty() {
                continue;
            }
            let mut chunk = self.last.clone();
            chunk.insert(
                "choices".into(),
                json!([{ "index": index, "delta": { "content": text }, "finish_reason": null }]),
            );
            write_data(&Value::Object(chunk).to_string(), out);
        }
        Ok(())
    }

    fn guard_event(&mut self, event: &Event, out: &mut Vec<u8>) -> Result<(), Stop> {
        if event.data == "[DONE]" {
            self.flush_all(out)?;
            write_data("[DONE]", out);
            return Ok(());
        }
        let Ok(chunk) = serde_json::from_str::<Value>(&event.data) else {
            return Ok(());
        };
        if chunk.get("error").is_some() {
            self.flush_all(out)?;
            write_data(&event.data, out);
            return Ok(());
        }
        if let Some(chunk) = guard_chunk(self, chunk)? {
            write_data(&chunk.to_string(), out);
        }
        Ok(())
    }

    fn blocked(&mut self, stop: Stop, out: &mut Vec<u8>) {
        self.ended = true;
        let error = refusal(Refusal::Blocked {
            guardrail: stop.0,
            stage: GuardStage::Response,
        });
        let body = json!({"error": {"message": error.message, "type": error.kind, "code": error.code, "param": null}});
        write_data(&body.to_string(), out);
    }
}

impl Retell for GuardedStream {
    fn event(&mut self, event: &Event, out: &mut Vec<u8>) {
        if let Err(stop) = self.guard_event(event, out) {
            self.blocked(stop, out);
        }
    }

    /// What is still held goes out at the end; past an event too large to read, nothing
    /// can be checked, so the stream stops with an error event instead.
    fn end(&mut self, broke: Option<&str>, out: &mut Vec<u8>) {
        match broke {
            Some(why) => write_interrupted(why, out),
            None => {
                if let Err(stop) = self.flush_all(out) {
                    self.blocked(stop, out);
                }
            }
        }
        self.ended = true;
    }

    fn ended(&self) -> bool {
        self.ended
    }
}
