//! Who may call: the `consumers` and their API key digests, the `jwt` settings, and each
//! route's `auth`.

use std::collections::HashSet;
use std::sync::Arc;

use http::HeaderName;

use super::Problems;
use crate::config::file::{AuthFile, ConfigFile, JwtFile, RouteFile};
use crate::config::secrets::Resolved;
use crate::config::spec::*;

/// `consumers`: unique names, API keys given as `sha256:` digests (each listed once), LLM
/// budgets and rate limits.
pub(super) fn check_consumers(file: &ConfigFile, p: &mut Problems) -> Vec<ConsumerSpec> {
    let mut out = Vec::new();
    let mut names = HashSet::new();
    let mut digests = HashSet::new();
    for (i, consumer) in file.consumers.iter().enumerate() {
        let path = format!("consumers[{i}]");
        if consumer.name.is_empty() || !names.insert(consumer.name.as_str()) {
            p.at(
                &format!("{path}.name"),
                format!("consumer name `{}` is empty or used twice", consumer.name),
            );
        }
        let mut key_digests = Vec::new();
        for (k, key) in consumer.api_keys.iter().enumerate() {
            match parse_digest(key) {
                Some(digest) => {
                    if !digests.insert(digest) {
                        p.at(&format!("{path}.api_keys[{k}]"), "this API key digest is listed twice");
                    }
                    key_digests.push(digest);
                }
                None => p.at(
                    &format!("{path}.api_keys[{k}]"),
                    "an API key must be given as `sha256:<64 hex digits>` (never the key itself; `levee key new` prints one)",
                ),
            }
        }
        let llm_budget = consumer.llm_budget.as_ref().map(|b| {
            if !(b.usd.is_finite() && b.usd >= 0.0) || b.per.0.is_zero() {
                p.at(
                    &format!("{path}.llm_budget"),
                    "llm_budget needs `usd` (not negative) and a `per` period above zero",
                );
            }
            (b.usd, b.per.0)
        });
        let llm_rate_limit = consumer.llm_rate_limit.as_ref().map(|l| {
            if l.tokens_per_minute == Some(0) || l.requests_per_minute == Some(0) {
                p.at(&format!("{path}.llm_rate_limit"), "limits must be above zero");
            }
            (l.tokens_per_minute, l.requests_per_minute)
        });
        out.push(ConsumerSpec {
            name: consumer.name.as_str().into(),
            key_digests,
            llm_budget,
            llm_rate_limit,
        });
    }
    out
}

fn parse_digest(text: &str) -> Option<[u8; 32]> {
    let mut digest = [0u8; 32];
    crate::hex::decode_into(text.strip_prefix("sha256:")?.as_bytes(), &mut digest)?;
    Some(digest)
}

/// The `jwt` settings (`secret`, `public_keys`: its resolved `secret_env` and key files).
pub(super) fn check_jwt(
    file: &JwtFile,
    secret: Option<Resolved<Secret>>,
    public_keys: Vec<Resolved<Vec<u8>>>,
    p: &mut Problems,
) -> Option<JwtSpec> {
    use jsonwebtoken::Algorithm;
    let before = p.errors.len();
    let mut algorithms = Vec::new();
    let names = file
        .algorithms
        .clone()
        .unwrap_or_else(|| vec!["RS256".into(), "ES256".into()]);
    for (i, name) in names.iter().enumerate() {
        match name.parse::<Algorithm>() {
            Ok(alg) if matches!(alg, Algorithm::HS256 | Algorithm::RS256 | Algorithm::ES256) => {
                algorithms.push(alg)
            }
            _ => p.at(
                &format!("jwt.algorithms[{i}]"),
                format!("unsupported algorithm `{name}`: use HS256, RS256 or ES256"),
            ),
        }
    }
    let secret = secret.and_then(|secret| p.resolved("jwt.secret_env", secret));
    if algorithms.contains(&Algorithm::HS256) && file.secret_env.is_none() {
        p.at(
            "jwt.algorithms",
            "HS256 needs a shared secret: set jwt.secret_env",
        );
    }
    let public_keys: Vec<Vec<u8>> = public_keys
        .into_iter()
        .enumerate()
        .filter_map(|(i, pem)| p.resolved(&format!("jwt.public_keys[{i}]"), pem))
        .collect();
    let jwks_url = file
        .jwks_url
        .as_ref()
        .and_then(|url| match url.parse::<http::Uri>() {
            Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {
                Some(uri)
            }
            _ => {
                p.at(
                    "jwt.jwks_url",
                    format!("invalid jwks_url `{url}`: expected an http(s) URL"),
                );
                None
            }
        });
    if file.jwks_refresh.is_some_and(|d| d.0.is_zero()) {
        p.at("jwt.jwks_refresh", "jwks_refresh must be above zero");
    }
    if secret.is_none() && public_keys.is_empty() && file.jwks_url.is_none() {
        p.at("jwt", "jwt needs keys: secret_env, public_keys or jwks_url");
    }
    if p.errors.len() != before {
        return None;
    }
    Some(JwtSpec {
        algorithms,
        issuer: file.issuer.clone(),
        audience: file.audience.clone(),
        secret,
        public_keys,
        jwks_url,
        jwks_refresh: file
            .jwks_refresh
            .map(|d| d.0)
            .unwrap_or(std::time::Duration::from_secs(300)),
        consumer_claim: file.consumer_claim.clone().unwrap_or_else(|| "sub".into()),
        leeway: file
            .leeway
            .map(|d| d.0)
            .unwrap_or(std::time::Duration::from_secs(30)),
    })
}

/// A route's `auth`, and the keys that go with it (`api_key_header`, `consumers`,
/// `forward_credentials`).
pub(super) fn check_auth(
    route: &RouteFile,
    path: &str,
    file: &ConfigFile,
    consumer_names: &HashSet<&str>,
    p: &mut Problems,
) -> AuthSpec {
    let extra = route.api_key_header.is_some() || route.consumers.is_some() || route.forward_credentials;
    match route.auth {
        AuthFile::None => {
            if extra {
                p.at(
                    &format!("{path}.auth"),
                    "api_key_header, consumers and forward_credentials need `auth: api_key`",
                );
            }
            AuthSpec::None
        }
        AuthFile::Jwt => {
            if file.jwt.is_none() {
                p.at(
                    &format!("{path}.auth"),
                    "auth: jwt needs the top-level `jwt` settings",
                );
            }
            if route.api_key_header.is_some() {
                p.at(
                    &format!("{path}.api_key_header"),
                    "api_key_header is for auth: api_key",
                );
            }
            AuthSpec::Jwt {
                allowed: route
                    .consumers
                    .as_ref()
                    .map(|list| list.iter().map(|n| Arc::from(n.as_str())).collect()),
                forward_credentials: route.forward_credentials,
            }
        }
        AuthFile::ApiKey => {
            // Keys come from the config's consumers, or from the management store (made
            // through the admin API) when there is one.
            let store =
                file.data_dir.is_some() || file.cluster.as_ref().is_some_and(|c| c.postgres.is_some());
            if !store && file.consumers.iter().all(|c| c.api_keys.is_empty()) {
                p.at(
                    &format!("{path}.auth"),
                    "auth: api_key needs at least one consumer with an API key (or a management store: data_dir or cluster.postgres, for keys made through the admin API)",
                );
            }
            let header = route
                .api_key_header
                .as_ref()
                .and_then(|h| match HeaderName::try_from(h.as_str()) {
                    Ok(name) => Some(name),
                    Err(_) => {
                        p.at(
                            &format!("{path}.api_key_header"),
                            format!("invalid header name `{h}`"),
                        );
                        None
                    }
                });
            let allowed = route.consumers.as_ref().map(|list| {
                list.iter()
                    .enumerate()
                    .filter_map(|(i, name)| {
                        if consumer_names.contains(name.as_str()) {
                            Some(Arc::from(name.as_str()))
                        } else {
                            p.at(
                                &format!("{path}.consumers[{i}]"),
                                format!("unknown consumer `{name}`"),
                            );
                            None
                        }
                    })
                    .collect()
            });
            AuthSpec::ApiKey {
                header,
                allowed,
                forward_credentials: route.forward_credentials,
            }
        }
    }
}
