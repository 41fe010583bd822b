//! JWT auth over real sockets: HS256 from a secret, ES256 from a JWKS endpoint, rotation and
//! an identity provider that goes down.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use common::Harness;
use http::StatusCode;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use levee_test_support::*;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn claims(sub: &str, exp_offset: i64, aud: &str) -> serde_json::Value {
    serde_json::json!({
        "sub": sub,
        "iss": "https://idp.example",
        "aud": aud,
        "exp": (now() as i64 + exp_offset),
        "nbf": now() - 5,
    })
}

fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// An ES256 signing key and its JWK.
struct EcKey {
    encoding: EncodingKey,
    jwk: serde_json::Value,
}

fn ec_key(kid: &str) -> EcKey {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = pair.public_key_raw();
    assert_eq!(raw.len(), 65);
    EcKey {
        encoding: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
        jwk: serde_json::json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": b64url(&raw[1..33]), "y": b64url(&raw[33..65]),
        }),
    }
}

fn es256(key: &EcKey, kid: &str, claims: &serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.into());
    encode(&header, claims, &key.encoding).unwrap()
}

async fn call(h: &Harness, token: &str) -> Answer {
    get(&h.url("/"), &[("authorization", &format!("Bearer {token}"))]).await
}

#[tokio::test]
async fn hs256_tokens_are_checked_for_signature_time_issuer_and_audience() {
    std::env::set_var("LEVEE_TEST_JWT_SECRET", "a-long-shared-secret");
    let upstream = MockUpstream::fixed("ok").await;
    let h = Harness::start(&format!(
        "jwt:\n  algorithms: [HS256]\n  secret_env: LEVEE_TEST_JWT_SECRET\n  issuer: https://idp.example\n  audience: [api]\n  leeway: 1s\nupstreams:\n  u:\n    targets: [\"{}\"]\nroutes:\n  - name: api\n    upstream: u\n    auth: jwt\n",
        upstream.addr
    ));
    let sign = |secret: &str, claims: serde_json::Value| {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let good = call(&h, &sign("a-long-shared-secret", claims("alice", 60, "api"))).await;
    assert_eq!(good.status, StatusCode::OK);
    let seen = &upstream.seen()[0];
    assert_eq!(seen.headers["x-consumer"], "alice");
    assert!(seen.headers.get("authorization").is_none());

    let expired = sign("a-long-shared-secret", claims("alice", -60, "api"));
    let wrong_signature = sign("another-secret", claims("alice", 60, "api"));
    let wrong_audience = sign("a-long-shared-secret", claims("alice", 60, "other"));
    let mut wrong_issuer = claims("alice", 60, "api");
    wrong_issuer["iss"] = "https://evil.example".into();
    let wrong_issuer = sign("a-long-shared-secret", wrong_issuer);
    let mut not_yet = claims("alice", 600, "api");
    not_yet["nbf"] = (now() + 300).into();
    let not_yet = sign("a-long-shared-secret", not_yet);
    for (name, token) in [
        ("expired", expired.as_str()),
        ("wrong signature", &wrong_signature),
        ("wrong audience", &wrong_audience),
        ("wrong issuer", &wrong_issuer),
        ("not yet valid", &not_yet),
        ("garbage", "not.a.token"),
    ] {
        let answer = call(&h, token).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{name}");
        assert_eq!(answer.json()["error"]["code"], "unauthorized", "{name}");
    }
    assert_eq!(
        get(&h.url("/"), &[]).await.status,
        StatusCode::UNAUTHORIZED,
        "no token"
    );
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test]
async fn jwks_keys_rotate_and_survive_an_identity_provider_outage() {
    let first = ec_key("k1");
    let jwks = Arc::new(Mutex::new(
        serde_json::json!({ "keys": [first.jwk.clone()] }).to_string(),
    ));
    let served = jwks.clone();
    let idp = MockUpstream::start(move |_| {
        Reply::ok(served.lock().unwrap().clone()).header("content-type", "application/json")
    })
    .await;
    let upstream = MockUpstream::fixed("ok").await;
    let h = Harness::start(&format!(
        "jwt:\n  algorithms: [ES256]\n  jwks_url: http://{}/.well-known/jwks.json\n  jwks_refresh: 100ms\n  audience: [api]\nupstreams:\n  u:\n    targets: [\"{}\"]\nroutes:\n  - name: api\n    upstream: u\n    auth: jwt\n",
        idp.addr, upstream.addr
    ));
    let token = es256(&first, "k1", &claims("svc-a", 60, "api"));
    eventually("the JWKS is fetched", || async {
        call(&h, &token).await.status == StatusCode::OK
    })
    .await;
    assert_eq!(
        call(&h, &es256(&ec_key("k9"), "k9", &claims("x", 60, "api")))
            .await
            .status,
        StatusCode::UNAUTHORIZED,
        "unknown key"
    );

    // The provider rotates: a token with the new key id is accepted without a restart.
    let second = ec_key("k2");
    *jwks.lock().unwrap() =
        serde_json::json!({ "keys": [first.jwk.clone(), second.jwk.clone()] }).to_string();
    let rotated = es256(&second, "k2", &claims("svc-b", 60, "api"));
    eventually("the rotated key is picked up", || async {
        call(&h, &rotated).await.status == StatusCode::OK
    })
    .await;

    // The provider goes down: the last good key set keeps working.
    let fetches = idp.hits();
    idp.kill();
    eventually("refreshes are failing", || async {
        tokio::net::TcpStream::connect(idp.addr).await.is_err()
    })
    .await;
    for _ in 0..5 {
        assert_eq!(call(&h, &token).await.status, StatusCode::OK);
        assert_eq!(call(&h, &rotated).await.status, StatusCode::OK);
    }
    assert!(fetches >= 2);
}
