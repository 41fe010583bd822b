//! Every state of a client connection has a bound, over real sockets: an HTTP/2 connection
//! idle past `limits.http2_idle_timeout` is sent away, and a client stalled in the HTTP/2
//! preface, in the TLS handshake, or silent after either is cut at
//! `limits.header_read_timeout`, while normal requests (long ones included) are unaffected.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{single_upstream, Harness};
use http::StatusCode;
use levee_test_support::serving::h2_raw::{self, GOAWAY, HEADERS, PING, SETTINGS};
use levee_test_support::*;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HEADER_TIMEOUT: Duration = Duration::from_millis(300);
const IDLE_TIMEOUT: Duration = Duration::from_millis(400);

/// A gateway with short bounds, no PINGs (so only the bounds under test act), and a TLS
/// listener `secure` beside the plain `public` one.
fn gateway(upstream: &MockUpstream, dir: &std::path::Path) -> Harness {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.join("cert.pem"), generated.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), generated.key_pair.serialize_pem()).unwrap();
    std::fs::write(dir.join("cert.der"), generated.cert.der()).unwrap();
    Harness::start(&format!(
        "listeners:
  - {{ name: public, bind: 127.0.0.1:0 }}
  - name: secure
    bind: 127.0.0.1:0
    tls: {{ cert: \"{}\", key: \"{}\" }}
limits: {{ header_read_timeout: 300ms, http2_idle_timeout: 400ms, http2_keepalive_interval: 0s }}
{}",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display(),
        single_upstream(&[upstream.addr], "", "")
    ))
}

/// Reads until the peer closes; returns when that happened (or fails at the deadline).
async fn closed_after(stream: &mut (impl tokio::io::AsyncRead + Unpin), since: Instant) -> Duration {
    let mut sink = [0u8; 1024];
    tokio::time::timeout(DEADLINE, async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return since.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the gateway closed the connection")
}

/// `GET /slow` on stream 1: `:method GET`, `:scheme http` and `:path /` from HPACK's static
/// table, then `:path` and `:authority` as literals.
fn get_request(path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x04, path.len() as u8];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x01, 9]);
    block.extend_from_slice(b"localhost");
    h2_raw::frame(HEADERS, h2_raw::END_HEADERS | h2_raw::END_STREAM, 1, &block)
}

#[tokio::test]
async fn an_http2_connection_is_kept_while_a_request_runs_and_sent_away_once_idle() {
    // The answer takes longer than the idle timeout: a request in flight is not idleness.
    let upstream = MockUpstream::start(|_| Reply::ok("slow").delay(Duration::from_millis(700))).await;
    let dir = tempfile::tempdir().unwrap();
    let h = gateway(&upstream, dir.path());
    let mut client = tokio::net::TcpStream::connect(h.gateway().listener_addr("public").unwrap())
        .await
        .unwrap();
    client.write_all(h2_raw::PREFACE).await.unwrap();
    client
        .write_all(&h2_raw::frame(SETTINGS, 0, 0, &[]))
        .await
        .unwrap();
    client.write_all(&get_request("/slow")).await.unwrap();
    let mut answered_at = None;
    let mut goaway_at = None;
    tokio::time::timeout(DEADLINE, async {
        while let Some(frame) = h2_raw::read(&mut client).await {
            match frame.kind {
                SETTINGS if frame.flags & h2_raw::ACK == 0 => {
                    client
                        .write_all(&h2_raw::frame(SETTINGS, h2_raw::ACK, 0, &[]))
                        .await
                        .unwrap();
                }
                // A graceful GOAWAY is followed by a PING, whose answer lets the server
                // close knowing which streams the client saw.
                PING if frame.flags & h2_raw::ACK == 0 => {
                    let ack = h2_raw::frame(PING, h2_raw::ACK, 0, &frame.payload);
                    let _ = client.write_all(&ack).await;
                }
                GOAWAY => {
                    goaway_at.get_or_insert_with(Instant::now);
                }
                _ if frame.stream == 1 && frame.flags & h2_raw::END_STREAM != 0 => {
                    answered_at = Some(Instant::now());
                }
                _ => {}
            }
        }
    })
    .await
    .expect("the connection ended");
    let (answered, goaway) = (
        answered_at.expect("the slow answer"),
        goaway_at.expect("a GOAWAY"),
    );
    let idle = goaway.duration_since(answered);
    assert!(idle >= IDLE_TIMEOUT, "sent away after {idle:?} idle");
}

#[tokio::test]
async fn clients_stalled_before_their_first_request_are_cut_at_the_header_timeout() {
    let upstream = MockUpstream::fixed("ok").await;
    let dir = tempfile::tempdir().unwrap();
    let h = gateway(&upstream, dir.path());
    let plain = h.gateway().listener_addr("public").unwrap();
    let secure = h.gateway().listener_addr("secure").unwrap();

    // Half of the HTTP/2 preface, then nothing.
    let half_preface = async {
        let mut client = tokio::net::TcpStream::connect(plain).await.unwrap();
        let since = Instant::now();
        client.write_all(&h2_raw::PREFACE[..16]).await.unwrap();
        closed_after(&mut client, since).await
    };
    // The whole preface and SETTINGS, but never a stream.
    let no_stream = async {
        let mut client = tokio::net::TcpStream::connect(plain).await.unwrap();
        let since = Instant::now();
        client.write_all(h2_raw::PREFACE).await.unwrap();
        client
            .write_all(&h2_raw::frame(SETTINGS, 0, 0, &[]))
            .await
            .unwrap();
        closed_after(&mut client, since).await
    };
    // TCP to the TLS listener, and no handshake.
    let no_handshake = async {
        let mut client = tokio::net::TcpStream::connect(secure).await.unwrap();
        closed_after(&mut client, Instant::now()).await
    };
    // A complete TLS handshake, then silence.
    let silent_after_handshake = async {
        let der = std::fs::read(dir.path().join("cert.der")).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(der)).unwrap();
        let config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(secure).await.unwrap();
        let since = Instant::now();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        closed_after(&mut tls, since).await
    };
    // Meanwhile a normal client is served.
    let normal = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        get(&h.url("/"), &[]).await
    };
    let (half, none, no_tls, silent, answer) = tokio::join!(
        half_preface,
        no_stream,
        no_handshake,
        silent_after_handshake,
        normal
    );
    assert_eq!(answer.status, StatusCode::OK);
    for (what, after) in [
        ("half a preface", half),
        ("no stream", none),
        ("no TLS handshake", no_tls),
        ("silent after the TLS handshake", silent),
    ] {
        assert!(after >= HEADER_TIMEOUT, "{what}: cut after {after:?}");
    }
}
