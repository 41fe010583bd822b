//! JSON Web Token checks: signature (HS256, RS256, ES256), `exp`/`nbf` with leeway, `iss` and
//! `aud` when configured, and a claim that names the consumer.
//!
//! Keys come from the config (a shared secret from the environment, PEM public keys) and from
//! a JWKS URL. The JWKS is fetched at start and refreshed in the background; a token signed
//! with a key id the gateway has not seen triggers one early refresh (at most every 10 s), so
//! an identity provider's key rotation needs no restart. When a fetch fails the last good key
//! set stays in use: an identity provider outage must not log everybody out.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use tokio::time::Instant;

use crate::config::spec::JwtSpec;

/// Why a token was refused (all map to 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("malformed token")]
    Malformed,
    #[error("algorithm not accepted")]
    Algorithm,
    #[error("no key matches the token")]
    UnknownKey,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("the consumer claim is missing")]
    NoConsumer,
}

/// A key with the id and algorithm family it may verify.
#[derive(Clone)]
struct Key {
    kid: Option<String>,
    key: DecodingKey,
    /// HS keys only verify HS tokens, and public keys never do: no algorithm confusion.
    symmetric: bool,
}

const MIN_REFRESH_GAP: Duration = Duration::from_secs(10);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// A JWKS larger than this is refused (bounded memory on a hostile endpoint).
const MAX_JWKS_BYTES: usize = 1024 * 1024;

pub struct JwtVerifier {
    spec: JwtSpec,
    static_keys: Vec<Key>,
    jwks: RwLock<Arc<Vec<Key>>>,
    /// Single flight for refreshes, with the time of the last on-demand one.
    refresh: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("jwks_url", &self.spec.jwks_url)
            .finish()
    }
}

impl JwtVerifier {
    /// The settings this verifier was built from.
    pub fn spec(&self) -> &JwtSpec {
        &self.spec
    }

    pub fn new(spec: JwtSpec) -> JwtVerifier {
        let mut static_keys = Vec::new();
        if let Some(secret) = &spec.secret {
            static_keys.push(Key {
                kid: None,
                key: DecodingKey::from_secret(secret.0.as_bytes()),
                symmetric: true,
            });
        }
        for pem in &spec.public_keys {
            let key = DecodingKey::from_rsa_pem(pem).or_else(|_| DecodingKey::from_ec_pem(pem));
            if let Ok(key) = key {
                static_keys.push(Key {
                    kid: None,
                    key,
                    symmetric: false,
                });
            }
        }
        JwtVerifier {
            spec,
            static_keys,
            jwks: RwLock::new(Arc::new(Vec::new())),
            refresh: tokio::sync::Mutex::new(None),
        }
    }

    pub fn jwks_refresh(&self) -> Option<Duration> {
        self.spec.jwks_url.as_ref().map(|_| self.spec.jwks_refresh)
    }

    /// Verifies `token` and returns the consumer it names.
    pub async fn verify(&self, token: &str) -> Result<String, JwtError> {
        match self.verify_with_current_keys(token) {
            Err(JwtError::UnknownKey) if self.spec.jwks_url.is_some() => {
                // Perhaps the provider rotated its keys: refresh once and try again.
                self.refresh_keys(false).await;
                self.verify_with_current_keys(token)
            }
            other => other,
        }
    }

    fn verify_with_current_keys(&self, token: &str) -> Result<String, JwtError> {
        let header = decode_header(token).map_err(|_| JwtError::Malformed)?;
        if !self.spec.algorithms.contains(&header.alg) {
            return Err(JwtError::Algorithm);
        }
        let symmetric = header.alg == Algorithm::HS256;
        let jwks = self.jwks.read().map(|k| k.clone()).unwrap_or_default();
        let candidates: Vec<&Key> = self
            .static_keys
            .iter()
            .chain(jwks.iter())
            .filter(|k| k.symmetric == symmetric)
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                (Some(_), None) => k.symmetric || self.spec.jwks_url.is_none(),
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err(JwtError::UnknownKey);
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.spec.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        if let Some(issuer) = &self.spec.issuer {
            validation.set_issuer(&[issuer]);
        }
        match &self.spec.audience {
            Some(audience) => validation.set_audience(audience),
            None => validation.validate_aud = false,
        }
        let mut last = JwtError::UnknownKey;
        for key in candidates {
            match decode::<serde_json::Value>(token, &key.key, &validation) {
                Ok(data) => {
                    return data
                        .claims
                        .get(&self.spec.consumer_claim)
                        .and_then(|v| v.as_str())
                        .filter(|v| !v.is_empty())
                        .map(str::to_owned)
                        .ok_or(JwtError::NoConsumer);
                }
                Err(error) => last = JwtError::Invalid(error.to_string()),
            }
        }
        Err(last)
    }

    /// Fetches the JWKS (single flight; `scheduled` refreshes ignore the minimum gap). A
    /// failed fetch keeps the current keys.
    pub async fn refresh_keys(&self, scheduled: bool) {
        let Some(url) = &self.spec.jwks_url else {
            return;
        };
        // The gap only limits refreshes asked for by tokens (whose key ids a client chooses);
        // the schedule does not count against it.
        let mut last_on_demand = self.refresh.lock().await;
        if !scheduled {
            if last_on_demand.is_some_and(|t| t.elapsed() < MIN_REFRESH_GAP) {
                return;
            }
            *last_on_demand = Some(Instant::now());
        }
        match tokio::time::timeout(FETCH_TIMEOUT, fetch_jwks(url)).await {
            Ok(Ok(keys)) => {
                tracing::info!(url = %url, keys = keys.len(), "JWKS refreshed");
                if let Ok(mut current) = self.jwks.write() {
                    *current = Arc::new(keys);
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(url = %url, %error, "JWKS fetch failed; keeping the last good keys")
            }
            Err(_) => tracing::warn!(url = %url, "JWKS fetch timed out; keeping the last good keys"),
        }
    }
}

async fn fetch_jwks(url: &http::Uri) -> Result<Vec<Key>, String> {
    let client: crate::outbound::OutboundClient<Empty<Bytes>> =
        crate::outbound::client(std::time::Duration::from_secs(10));
    let response = client.get(url.clone()).await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    let body = http_body_util::Limited::new(response.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let set: JwkSet = serde_json::from_slice(&body).map_err(|e| format!("not a JWKS: {e}"))?;
    Ok(set
        .keys
        .iter()
        .filter_map(|jwk| {
            let key = DecodingKey::from_jwk(jwk).ok()?;
            let symmetric = matches!(jwk.algorithm, jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_));
            Some(Key {
                kid: jwk.common.key_id.clone(),
                key,
                symmetric,
            })
        })
        .collect())
}

/// Fetches the JWKS at start and then every refresh interval, until the task is aborted (on
/// shutdown, or when a reload replaces the verifier).
pub async fn run_jwks_refresh(verifier: Arc<JwtVerifier>) {
    let Some(every) = verifier.jwks_refresh() else {
        return;
    };
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        verifier.refresh_keys(true).await;
    }
}
