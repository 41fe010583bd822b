//! Authentication: who is calling, from the credential they present.
//!
//! API keys are stored only as SHA-256 digests, and a presented key is found by its digest
//! in a hash map: one step for 10 keys or 100,000 (the management plane's keys are looked
//! up the same way, in the management plane's directory, whose docs say why a map lookup
//! leaks nothing useful about a key). The upstream learns the caller's name in `x-consumer` and
//! never sees the key unless the route asks for it.

use std::collections::HashMap;
use std::sync::Arc;

use http::header::{HeaderName, AUTHORIZATION};
use http::request::Parts;
use sha2::{Digest, Sha256};

use crate::config::spec::{AuthSpec, ConsumerSpec};

/// The header that tells the upstream who called; set (or removed) by the pipeline next to
/// its other headers, so a client-sent value never passes.
pub static X_CONSUMER: HeaderName = HeaderName::from_static("x-consumer");

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credential was presented")]
    Missing,
    #[error("the credential is not valid")]
    Invalid,
    #[error("the consumer is not allowed on this route")]
    Forbidden,
    #[error("the key has expired")]
    Expired,
    #[error("the key was revoked")]
    Revoked,
}

/// The config file's consumers' key digests, for lookups.
#[derive(Debug, Default)]
pub struct Credentials {
    keys: HashMap<[u8; 32], Arc<str>>,
}

impl Credentials {
    pub fn new(consumers: &[ConsumerSpec]) -> Credentials {
        let keys = consumers
            .iter()
            .flat_map(|c| c.key_digests.iter().map(|d| (*d, c.name.clone())))
            .collect();
        Credentials { keys }
    }

    /// The consumer whose key has this digest.
    pub fn consumer_for_digest(&self, digest: &[u8; 32]) -> Option<Arc<str>> {
        self.keys.get(digest).cloned()
    }

    /// The consumer whose key this is.
    pub fn consumer_for_key(&self, key: &str) -> Option<Arc<str>> {
        self.consumer_for_digest(&Sha256::digest(key.as_bytes()).into())
    }
}

/// The digest of the API key a request presents on a route with `auth: api_key`: `Ok(None)`
/// on any other route, `Missing` when there is none.
pub fn presented_key(spec: &AuthSpec, parts: &Parts) -> Result<Option<[u8; 32]>, AuthError> {
    let AuthSpec::ApiKey { header, .. } = spec else {
        return Ok(None);
    };
    let presented = match header {
        Some(name) => parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim),
        None => parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim),
    };
    let presented = presented.filter(|k| !k.is_empty()).ok_or(AuthError::Missing)?;
    Ok(Some(Sha256::digest(presented.as_bytes()).into()))
}

/// Admits `consumer` on an `api_key` route (its `allowed` list), then removes the key from
/// the request unless the route forwards it.
pub fn admit_api_key(spec: &AuthSpec, consumer: &Arc<str>, parts: &mut Parts) -> Result<(), AuthError> {
    let AuthSpec::ApiKey {
        header,
        allowed,
        forward_credentials,
    } = spec
    else {
        return Ok(());
    };
    if allowed.as_ref().is_some_and(|a| !a.contains(consumer)) {
        return Err(AuthError::Forbidden);
    }
    if !forward_credentials {
        parts.headers.remove(header.as_ref().unwrap_or(&AUTHORIZATION));
    }
    Ok(())
}

/// Authenticates a request with the config file's keys only: the consumer's name, or why
/// not (the pipeline also looks in the management plane's keys).
pub fn authenticate(
    spec: &AuthSpec,
    credentials: &Credentials,
    parts: &mut Parts,
) -> Result<Option<Arc<str>>, AuthError> {
    let Some(digest) = presented_key(spec, parts)? else {
        return Ok(None);
    };
    let consumer = credentials
        .consumer_for_digest(&digest)
        .ok_or(AuthError::Invalid)?;
    admit_api_key(spec, &consumer, parts)?;
    Ok(Some(consumer))
}

/// Authenticates a request on a route with `auth: jwt`: the token from
/// `Authorization: Bearer`, its consumer claim in `x-consumer`.
pub async fn authenticate_jwt(
    spec: &AuthSpec,
    verifier: Option<&crate::jwt::JwtVerifier>,
    parts: &mut Parts,
) -> Result<Option<Arc<str>>, AuthError> {
    let AuthSpec::Jwt {
        allowed,
        forward_credentials,
    } = spec
    else {
        return Ok(None);
    };
    let verifier = verifier.ok_or(AuthError::Invalid)?;
    let token = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(AuthError::Missing)?
        .to_owned();
    let consumer: Arc<str> = match verifier.verify(&token).await {
        Ok(name) => name.into(),
        Err(error) => {
            tracing::debug!(%error, "token refused");
            return Err(AuthError::Invalid);
        }
    };
    if allowed.as_ref().is_some_and(|a| !a.contains(&consumer)) {
        return Err(AuthError::Forbidden);
    }
    if !forward_credentials {
        parts.headers.remove(AUTHORIZATION);
    }
    Ok(Some(consumer))
}

/// A new random API key and its digest for the config (`levee key new`).
pub fn digest_of(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    format!("sha256:{}", crate::hex::encode(&digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_by_digest() {
        let key = "lvk_example";
        let digest = digest_of(key);
        assert!(digest.starts_with("sha256:") && digest.len() == 71);
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&digest[7 + 2 * i..9 + 2 * i], 16).unwrap();
        }
        let creds = Credentials::new(&[ConsumerSpec {
            name: "mobile".into(),
            key_digests: vec![bytes],
            llm_budget: None,
            llm_rate_limit: None,
        }]);
        assert_eq!(creds.consumer_for_key(key).as_deref(), Some("mobile"));
        assert_eq!(creds.consumer_for_key("lvk_other"), None);
    }
}
