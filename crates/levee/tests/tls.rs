//! TLS termination over real sockets: ALPN, forwarded proto, certificate reload.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use common::Harness;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use levee_test_support::*;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;

/// Writes a fresh self-signed certificate for `localhost`; returns its DER.
fn write_cert(dir: &Path) -> Vec<u8> {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.join("cert.pem"), generated.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), generated.key_pair.serialize_pem()).unwrap();
    generated.cert.der().to_vec()
}

fn gateway(dir: &Path, upstream: std::net::SocketAddr, reload: &str) -> Harness {
    Harness::start(&format!(
        "listeners:\n  - name: public\n    bind: 127.0.0.1:0\n    tls: {{ cert: \"{}\", key: \"{}\", reload_interval: {reload} }}\nupstreams:\n  u:\n    targets: [\"{upstream}\"]\nroutes:\n  - name: all\n    upstream: u\n",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    ))
}

/// Connects with TLS trusting `trusted`, offering `alpn`; returns the stream.
async fn connect(
    h: &Harness,
    trusted: &[u8],
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    connect_trusting(h, &[trusted], alpn).await
}

async fn connect_trusting(
    h: &Harness,
    trusted: &[&[u8]],
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in trusted {
        roots.add(CertificateDer::from(cert.to_vec())).unwrap();
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(h.gateway().listener_addr("public").unwrap())
        .await
        .unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

#[tokio::test]
async fn terminates_tls_with_alpn_h2_and_http1() {
    let dir = tempfile::tempdir().unwrap();
    let der = write_cert(dir.path());
    let upstream = MockUpstream::fixed("secure").await;
    let h = gateway(dir.path(), upstream.addr, "5s");

    let tls = connect(&h, &der, &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let response = sender
        .send_request(
            Request::get("https://localhost/")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "secure");

    let tls = connect(&h, &der, &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let response = sender
        .send_request(
            Request::get("/")
                .header("host", "localhost")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(upstream
        .seen()
        .iter()
        .all(|s| s.headers["x-forwarded-proto"] == "https"));
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart_and_a_broken_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let first = write_cert(dir.path());
    let upstream = MockUpstream::fixed("ok").await;
    let h = gateway(dir.path(), upstream.addr, "50ms");
    let served = |tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>| -> Vec<u8> {
        tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    };
    assert_eq!(served(&connect(&h, &first, &[]).await), first);

    // A broken file on disk (a renewal job half-way) keeps the current certificate.
    std::fs::write(
        dir.path().join("cert.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    )
    .unwrap();
    for _ in 0..5 {
        assert_eq!(served(&connect(&h, &first, &[]).await), first);
    }
    // The renewed pair is picked up from disk.
    let second = write_cert(dir.path());
    eventually("the renewed certificate is served", || async {
        served(&connect_trusting(&h, &[&first, &second], &[]).await) == second
    })
    .await;
}

#[test]
fn a_listener_with_an_unreadable_certificate_is_refused_at_load() {
    let yaml = "listeners:\n  - name: public\n    bind: 127.0.0.1:0\n    tls: { cert: /nonexistent/cert.pem, key: /nonexistent/key.pem }\nroutes: []\n";
    let err = levee::load_str(yaml, "t.yaml").unwrap_err().to_string();
    assert!(err.starts_with("t.yaml:4:"), "{err}");
    assert!(
        err.contains("cannot read certificate /nonexistent/cert.pem"),
        "{err}"
    );
}
