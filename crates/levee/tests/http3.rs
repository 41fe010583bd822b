//! HTTP/3 for clients over real UDP sockets, with a real HTTP/3 client (quinn and h3):
//! answers through the same routes, auth and rate limits as HTTP/1.1 and HTTP/2, request
//! bodies both ways, and `Alt-Svc` announcing it on the TCP answers.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use common::Harness;
use levee::auth::digest_of;
use levee_test_support::*;
use rustls::pki_types::CertificateDer;

const KEY: &str = "lvk_http3_client_0123456789";

/// An HTTP/3 answer: status, headers and body.
struct H3Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
}

/// One HTTP/3 request to `addr` (trusting `ca`), on a connection of its own.
async fn h3_request(
    addr: SocketAddr,
    ca: &[u8],
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&'static str>,
) -> H3Answer {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca.to_vec())).unwrap();
    let mut tls =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let exchange = async {
        let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
        let (mut driver, mut send) = h3::client::new(h3_quinn::Connection::new(conn)).await.unwrap();
        let drive = tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("https://localhost:{}{path}", addr.port()));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut stream = send.send_request(request.body(()).unwrap()).await.unwrap();
        if let Some(body) = body {
            stream
                .send_data(Bytes::from_static(body.as_bytes()))
                .await
                .unwrap();
        }
        stream.finish().await.unwrap();
        let response = stream.recv_response().await.unwrap();
        let mut bytes = Vec::new();
        while let Some(mut chunk) = stream.recv_data().await.unwrap() {
            bytes.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
        }
        drop(stream);
        drop(send);
        let _ = drive.await;
        H3Answer {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: Bytes::from(bytes),
        }
    };
    let answer = tokio::time::timeout(DEADLINE, exchange)
        .await
        .expect("an HTTP/3 answer in time");
    endpoint.wait_idle().await;
    answer
}

/// A gateway with a TLS listener serving HTTP/3, an open route, an authenticated one and a
/// rate-limited one; returns it with the certificate's DER.
fn gateway(upstream: &MockUpstream, dir: &std::path::Path) -> (Harness, Vec<u8>) {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.join("cert.pem"), generated.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), generated.key_pair.serialize_pem()).unwrap();
    let h = Harness::start(&format!(
        r#"listeners:
  - name: public
    bind: 127.0.0.1:0
    tls: {{ cert: "{}", key: "{}" }}
    http3: true
consumers:
  - {{ name: mobile, api_keys: ["{}"] }}
upstreams:
  u:
    targets: ["{}"]
routes:
  - name: private
    match: {{ path_prefix: /private }}
    upstream: u
    auth: api_key
  - name: limited
    match: {{ path_prefix: /limited }}
    upstream: u
    rate_limit: {{ rate: 1/m, burst: 1, key: route }}
  - name: open
    upstream: u
"#,
        dir.join("cert.pem").display(),
        dir.join("key.pem").display(),
        digest_of(KEY),
        upstream.addr
    ));
    (h, generated.cert.der().to_vec())
}

#[tokio::test]
async fn http3_requests_take_the_same_routes_auth_and_rate_limits() {
    let upstream = MockUpstream::start(|seen| {
        Reply::ok(format!(
            "{} {} {}",
            seen.method,
            seen.uri.path(),
            String::from_utf8_lossy(&seen.body)
        ))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (h, ca) = gateway(&upstream, dir.path());
    let addr = h.gateway().listener_addr("public").unwrap();

    let answer = h3_request(addr, &ca, "GET", "/hello", &[], None).await;
    assert_eq!((answer.status, &answer.body[..]), (200, &b"GET /hello "[..]));
    assert!(answer.headers.contains_key("x-request-id"));
    let answer = h3_request(addr, &ca, "POST", "/echo", &[], Some("a body over QUIC")).await;
    assert_eq!(&answer.body[..], b"POST /echo a body over QUIC");

    // Auth: the same 401 JSON as over TCP, and the key lets the request through.
    let answer = h3_request(addr, &ca, "GET", "/private/x", &[], None).await;
    assert_eq!(answer.status, 401);
    let json: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(json["error"]["code"], "unauthorized");
    let bearer = format!("Bearer {KEY}");
    let answer = h3_request(
        addr,
        &ca,
        "GET",
        "/private/x",
        &[("authorization", &bearer)],
        None,
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(upstream.seen().last().unwrap().headers["x-consumer"], "mobile");

    // The route's rate limit counts HTTP/3 requests too.
    assert_eq!(
        h3_request(addr, &ca, "GET", "/limited", &[], None).await.status,
        200
    );
    let answer = h3_request(addr, &ca, "GET", "/limited", &[], None).await;
    assert_eq!(answer.status, 429);
    assert!(answer.headers.contains_key("retry-after"));

    // The access log says which protocol each request came on.
    let log = h.access_log();
    assert_eq!(
        log.iter().filter(|l| l["protocol"] == "HTTP/3").count(),
        6,
        "{log:?}"
    );
}

#[tokio::test]
async fn tcp_answers_announce_http3_with_alt_svc() {
    let upstream = MockUpstream::fixed("ok").await;
    let dir = tempfile::tempdir().unwrap();
    let (h, ca) = gateway(&upstream, dir.path());
    let addr = h.gateway().listener_addr("public").unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca)).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get("/")
        .header("host", "localhost")
        .body(empty())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["alt-svc"],
        format!("h3=\":{}\"; ma=86400", addr.port()).as_str()
    );
}

#[tokio::test]
async fn a_drain_lets_an_http3_request_in_flight_finish() {
    let upstream =
        MockUpstream::start(|_| Reply::ok("finished").delay(std::time::Duration::from_millis(500))).await;
    let dir = tempfile::tempdir().unwrap();
    let (h, ca) = gateway(&upstream, dir.path());
    let addr = h.gateway().listener_addr("public").unwrap();
    let drain = async {
        eventually("the slow request reached the upstream", || async {
            upstream.hits() == 1
        })
        .await;
        h.gateway().begin_shutdown();
    };
    let (answer, ()) = tokio::join!(h3_request(addr, &ca, "GET", "/slow", &[], None), drain);
    assert_eq!((answer.status, &answer.body[..]), (200, &b"finished"[..]));
}
