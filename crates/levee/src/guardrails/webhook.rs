//! The call to a webhook guardrail: the texts POSTed as JSON, a verdict back, within the
//! guardrail's timeout.
//!
//! Request: `{"guardrail", "stage": "request" | "response", "route", "consumer", "texts":
//! [...]}`. Answer (200): `{"action": "allow"}`, `{"action": "block"}`, or
//! `{"action": "rewrite", "texts": [...]}` with one text per text sent. Anything else
//! (another status, another shape, a timeout, no connection) is a failure, which the
//! guardrail's `fail` mode settles.

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;

use super::Context;
use crate::config::guardrails::{GuardStage, WebhookSpec};

/// A verdict is read up to this size (rewritten texts included).
const MAX_VERDICT_BYTES: usize = 8 << 20;

pub(super) enum Verdict {
    Allow,
    Block,
    Rewrite(Vec<String>),
}

#[derive(Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
enum Answer {
    Allow,
    Block,
    Rewrite { texts: Vec<String> },
}

pub(super) async fn ask(
    spec: &WebhookSpec,
    guardrail: &str,
    stage: GuardStage,
    texts: &[String],
    context: &Context<'_>,
) -> Result<Verdict, String> {
    let body = serde_json::json!({
        "guardrail": guardrail,
        "stage": stage.name(),
        "route": context.route,
        "consumer": context.consumer,
        "texts": texts,
    });
    let mut request = http::Request::post(spec.url.clone()).header(CONTENT_TYPE, "application/json");
    for (name, value) in &spec.headers {
        request = request.header(name, value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let call = async {
        let response = context.client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_VERDICT_BYTES)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("the webhook answered {status}"));
        }
        serde_json::from_slice::<Answer>(&bytes).map_err(|e| format!("unreadable verdict: {e}"))
    };
    let answer = tokio::time::timeout(spec.timeout, call)
        .await
        .map_err(|_| format!("no verdict within {:?}", spec.timeout))??;
    Ok(match answer {
        Answer::Allow => Verdict::Allow,
        Answer::Block => Verdict::Block,
        Answer::Rewrite { texts: new } if new.len() == texts.len() => Verdict::Rewrite(new),
        Answer::Rewrite { .. } => return Err("a rewrite must return one text per text sent".into()),
    })
}
