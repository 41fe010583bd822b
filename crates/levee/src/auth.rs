//! Authentication: who is calling, from the credential they present.
//!
//! API keys are stored only as SHA-256 digests. A presented key is hashed and compared with
//! every stored digest in constant time, with no early exit, so response timing says nothing
//! about how close a guess was. The upstream learns the caller's name in `x-consumer` and
//! never sees the key unless the route asks for it.

use std::sync::Arc;

use http::header::{HeaderName, AUTHORIZATION};
use http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

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
}

/// Every consumer's key digests, for lookups.
#[derive(Debug, Default)]
pub struct Credentials {
    keys: Vec<([u8; 32], Arc<str>)>,
}

impl Credentials {
    pub fn new(consumers: &[ConsumerSpec]) -> Credentials {
        let keys = consumers
            .iter()
            .flat_map(|c| c.key_digests.iter().map(|d| (*d, c.name.clone())))
            .collect();
        Credentials { keys }
    }

    /// The consumer whose key this is.
    pub fn consumer_for_key(&self, key: &str) -> Option<Arc<str>> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found = None;
        for (stored, name) in &self.keys {
            // Constant time per digest, and every digest is compared.
            if bool::from(stored.ct_eq(&digest)) {
                found = Some(name.clone());
            }
        }
        found
    }
}

/// Authenticates a request for a route: the consumer's name, or why not. On success the
/// request is rewritten for the upstream (credential removed unless forwarded, `x-consumer`
/// set).
pub fn authenticate(
    spec: &AuthSpec,
    credentials: &Credentials,
    parts: &mut Parts,
) -> Result<Option<Arc<str>>, AuthError> {
    let AuthSpec::ApiKey {
        header,
        allowed,
        forward_credentials,
    } = spec
    else {
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
    let consumer = credentials
        .consumer_for_key(presented)
        .ok_or(AuthError::Invalid)?;
    if let Some(allowed) = allowed {
        if !allowed.contains(&consumer) {
            return Err(AuthError::Forbidden);
        }
    }
    if !forward_credentials {
        parts.headers.remove(header.as_ref().unwrap_or(&AUTHORIZATION));
    }
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
