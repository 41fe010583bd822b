//! Azure OpenAI (`azure_openai` providers): OpenAI's API addressed to a deployment (the
//! target's model) with an `api-version` query and an `api-key` header; answers, errors and
//! streams are OpenAI's, handled as [`super::openai`] handles them.

use bytes::Bytes;
use serde_json::{Map, Value};

use super::openai;
use super::provider::{percent_encode_segment, Answer, Outgoing, Provider};
use super::translate::Translate;
use super::ApiError;
use crate::config::spec::LlmProviderSpec;

/// Providers of kind `azure_openai`.
#[derive(Debug)]
pub struct AzureOpenAi;

impl Provider for AzureOpenAi {
    fn outgoing(
        &self,
        spec: &LlmProviderSpec,
        endpoint: &str,
        request: &Map<String, Value>,
        model: &str,
        stream: bool,
    ) -> Result<Outgoing, ApiError> {
        let mut body = request.clone();
        openai::prepare(&mut body, model, stream && endpoint != "responses");
        // The Responses API is not under a deployment: the body's `model` names it.
        let uri = match endpoint {
            "responses" => format!(
                "{}/openai/responses?api-version={}",
                spec.base_url,
                percent_encode_segment(&spec.api_version)
            ),
            _ => format!(
                "{}/openai/deployments/{}/{endpoint}?api-version={}",
                spec.base_url,
                percent_encode_segment(model),
                percent_encode_segment(&spec.api_version)
            ),
        };
        Ok(Outgoing {
            uri,
            headers: spec
                .api_key
                .as_ref()
                .map(|k| ("api-key", k.0.clone()))
                .into_iter()
                .collect(),
            body: serde_json::to_vec(&body).unwrap_or_default(),
        })
    }

    fn answer(&self, body: Bytes, _model: &str, _created: u64) -> Option<Answer> {
        Some(openai::answer(body))
    }

    fn error_answer(&self, body: Bytes) -> Bytes {
        body
    }

    fn stream_translator(&self, _: bool, _: &str, _: u64) -> Option<Box<dyn Translate>> {
        None
    }

    fn speaks_responses(&self) -> bool {
        true
    }
}
