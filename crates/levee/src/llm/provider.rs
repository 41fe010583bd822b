//! The provider interface: everything that differs between the APIs behind the gateway, one
//! implementation per `llm.providers[].kind`, found through [`provider_for`].
//!
//! Adding a provider takes a variant of [`LlmProviderKind`] (in `config::file`, with its
//! validation), one new file in `llm/` with a type implementing [`Provider`], and one line in
//! [`provider_for`].

use bytes::Bytes;
use http::StatusCode;
use serde::de::{Deserialize, DeserializeOwned, Deserializer};
use serde_json::{Map, Value};

use super::translate::Translate;
use super::usage::Usage;
use super::{anthropic, azure, gemini, openai, ApiError};
use crate::config::spec::LlmProviderKind;
use crate::config::spec::LlmProviderSpec;

/// What one provider API does differently from the others.
pub trait Provider: Send + Sync {
    /// The request for `endpoint` (`chat/completions` or `embeddings`) to provider model
    /// `model`, in this provider's API, or a client error when the API cannot express it
    /// (another target may).
    fn outgoing(
        &self,
        spec: &LlmProviderSpec,
        endpoint: &str,
        request: &Map<String, Value>,
        model: &str,
        stream: bool,
    ) -> Result<Outgoing, ApiError>;

    /// A whole successful answer in OpenAI's shape, with the usage the provider reported;
    /// `None` when the answer cannot be read (the next target may be tried).
    fn answer(&self, body: Bytes, model: &str, created: u64) -> Option<Answer>;

    /// An error answer (a 4xx the client gets) in OpenAI's error shape.
    fn error_answer(&self, body: Bytes) -> Bytes;

    /// The translator of this provider's stream into OpenAI chunks; `None` relays the stream
    /// as it is (it is OpenAI's SSE already). `include_usage`: the client asked for the usage
    /// chunk.
    fn stream_translator(&self, include_usage: bool, model: &str, created: u64)
        -> Option<Box<dyn Translate>>;

    /// The provider serves OpenAI's Responses API itself (`…/responses` is relayed to it);
    /// otherwise a Responses request is translated into a chat request for it.
    fn speaks_responses(&self) -> bool {
        false
    }

    /// What an answer with `status` means for the call. Connect failures and timeouts always
    /// move to the next target.
    fn verdict(&self, status: StatusCode) -> Verdict {
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            Verdict::NextTarget
        } else {
            Verdict::Final
        }
    }
}

/// The implementation for `kind`.
pub fn provider_for(kind: LlmProviderKind) -> &'static dyn Provider {
    match kind {
        LlmProviderKind::Openai | LlmProviderKind::OpenaiCompatible => &openai::OpenAi,
        LlmProviderKind::AzureOpenai => &azure::AzureOpenAi,
        LlmProviderKind::Anthropic => &anthropic::Anthropic,
        LlmProviderKind::Gemini => &gemini::Gemini,
    }
}

/// What one try sends to a provider (`POST`, with `Content-Type: application/json`).
#[derive(Debug)]
pub struct Outgoing {
    pub uri: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// A whole answer in OpenAI's shape.
#[derive(Debug)]
pub struct Answer {
    pub body: Bytes,
    /// As the provider reported it; `None` has Levee estimate it.
    pub usage: Option<Usage>,
}

/// Whether an answer's status ends the call or moves it to the next target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The answer goes to the client as it is (a success, or the client's own mistake).
    Final,
    /// The provider is unavailable or limiting: the next target is tried.
    NextTarget,
}

/// Everything but RFC 3986's unreserved characters.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A URL path segment or query value with everything but unreserved characters escaped.
pub fn percent_encode_segment(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, SEGMENT).to_string()
}

/// Field readers for provider answers that take what has the expected shape and skip the rest,
/// so an odd field never makes a whole answer unreadable.
pub mod lenient {
    use super::*;

    /// For `#[serde(default, deserialize_with = "lenient::option")]`: the field when it has
    /// `T`'s shape, else `None` (a string that is a number, say).
    pub fn option<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
        let value = Value::deserialize(d)?;
        Ok(serde_json::from_value(value).ok())
    }

    /// For `#[serde(default, deserialize_with = "lenient::present")]`: `Some` whenever the field
    /// is there (even `null`), holding `T`'s default when it has another shape.
    pub fn present<'de, D: Deserializer<'de>, T: DeserializeOwned + Default>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        let value = Value::deserialize(d)?;
        Ok(Some(serde_json::from_value(value).unwrap_or_default()))
    }

    /// A JSON array whose items are read as `T`, an item of another shape as `T`'s default.
    #[derive(Debug, Default)]
    pub struct Items<T>(pub Vec<T>);

    impl<'de, T: DeserializeOwned + Default> Deserialize<'de> for Items<T> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Items<T>, D::Error> {
            let values = Vec::<Value>::deserialize(d)?;
            Ok(Items(
                values
                    .into_iter()
                    .map(|v| serde_json::from_value(v).unwrap_or_default())
                    .collect(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Sample {
        #[serde(default, deserialize_with = "lenient::option")]
        text: Option<String>,
        #[serde(default, deserialize_with = "lenient::present")]
        count: Option<u64>,
        #[serde(default)]
        items: Option<lenient::Items<u64>>,
    }

    #[test]
    fn odd_fields_are_skipped_not_fatal() {
        let sample: Sample = serde_json::from_str(r#"{"text": 3, "count": "x", "items": [1, "a"]}"#).unwrap();
        assert_eq!(sample.text, None);
        assert_eq!(sample.count, Some(0));
        assert_eq!(sample.items.unwrap().0, vec![1, 0]);
        let sample: Sample = serde_json::from_str("{}").unwrap();
        assert_eq!((sample.text, sample.count), (None, None));
    }

    fn spec(kind: LlmProviderKind) -> LlmProviderSpec {
        LlmProviderSpec {
            name: "p".into(),
            kind,
            base_url: "http://h/v1".into(),
            api_key: Some(crate::config::spec::Secret("k".into())),
            api_version: "2024-10-21".into(),
            bulkhead: None,
        }
    }

    #[test]
    fn each_kind_addresses_its_own_api_and_refuses_what_it_cannot_express() {
        let request = serde_json::json!({"model": "smart", "messages": []});
        let request = request.as_object().unwrap();
        for (kind, uri, header) in [
            (
                LlmProviderKind::Openai,
                "http://h/v1/chat/completions",
                "authorization",
            ),
            (
                LlmProviderKind::OpenaiCompatible,
                "http://h/v1/chat/completions",
                "authorization",
            ),
            (
                LlmProviderKind::AzureOpenai,
                "http://h/v1/openai/deployments/m.1/chat/completions?api-version=2024-10-21",
                "api-key",
            ),
            (LlmProviderKind::Anthropic, "http://h/v1/v1/messages", "x-api-key"),
            (
                LlmProviderKind::Gemini,
                "http://h/v1/v1beta/models/m.1:generateContent",
                "x-goog-api-key",
            ),
        ] {
            let provider = provider_for(kind);
            let Ok(outgoing) = provider.outgoing(&spec(kind), "chat/completions", request, "m.1", false)
            else {
                panic!("{kind:?} refused a chat request");
            };
            assert_eq!(outgoing.uri, uri, "{kind:?}");
            assert!(
                outgoing.headers.iter().any(|(name, _)| *name == header),
                "{kind:?}"
            );
            let embeddings = provider.outgoing(&spec(kind), "embeddings", request, "m.1", false);
            let translated = matches!(kind, LlmProviderKind::Anthropic | LlmProviderKind::Gemini);
            assert_eq!(embeddings.is_err(), translated, "{kind:?}");
            assert_eq!(
                provider.stream_translator(true, "m.1", 0).is_some(),
                translated,
                "{kind:?}"
            );
        }
    }

    #[test]
    fn the_common_rule_retries_rate_limits_and_server_errors_only() {
        let provider = provider_for(LlmProviderKind::Openai);
        for (status, verdict) in [
            (StatusCode::OK, Verdict::Final),
            (StatusCode::BAD_REQUEST, Verdict::Final),
            (StatusCode::NOT_FOUND, Verdict::Final),
            (StatusCode::TOO_MANY_REQUESTS, Verdict::NextTarget),
            (StatusCode::INTERNAL_SERVER_ERROR, Verdict::NextTarget),
            (StatusCode::SERVICE_UNAVAILABLE, Verdict::NextTarget),
        ] {
            assert_eq!(provider.verdict(status), verdict, "{status}");
        }
    }
}
