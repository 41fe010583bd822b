//! TLS and HTTP/2 toward upstreams, over real sockets: certificates from a test CA checked
//! and refused, mutual TLS, client certificates reloaded, health checks over TLS, HTTP/2
//! streams multiplexed over few connections, and `GOAWAY` losing no request.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{single_upstream, Harness};
use futures_util::future::join_all;
use http::{StatusCode, Version};
use levee_test_support::serving::h2_raw;
use levee_test_support::*;
use tokio::io::AsyncWriteExt;

const H2_AND_H1: &[&[u8]] = &[b"h2", b"http/1.1"];

/// A TLS upstream with a certificate from `ca` for `localhost` and 127.0.0.1, answering
/// with the HTTP version it was spoken to in.
async fn tls_upstream(ca: &TestCa, require_client_cert: bool) -> MockUpstream {
    let serving = Serving {
        tls: Some(ca.server_config(&["localhost", "127.0.0.1"], H2_AND_H1, require_client_cert)),
        http2: true,
        ..Serving::default()
    };
    MockUpstream::start_serving(serving, |seen| Reply::ok(format!("{:?}", seen.version))).await
}

/// A gateway in front of `upstream`, with `settings` (indented for the upstream) added.
fn gateway(upstream: &MockUpstream, settings: &str) -> Harness {
    Harness::start(&single_upstream(&[upstream.addr], settings, ""))
}

fn ca_file(dir: &Path, ca: &TestCa) -> String {
    ca.write_pem(dir).display().to_string()
}

async fn metrics(h: &Harness) -> String {
    get(&format!("{}/metrics", h.admin), &[]).await.text()
}

#[tokio::test]
async fn a_tls_upstream_whose_certificate_checks_out_answers_over_http1_or_h2_by_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Levee test CA");
    let upstream = tls_upstream(&ca, false).await;
    let ca_path = ca_file(dir.path(), &ca);

    // The target is an IP address: checked against the certificate's IP entry.
    let h1 = gateway(&upstream, &format!("    tls: {{ ca_file: \"{ca_path}\" }}\n"));
    let answer = get(&h1.url("/a"), &[]).await;
    assert_eq!(
        (answer.status, answer.text().as_str()),
        (StatusCode::OK, "HTTP/1.1")
    );

    // `auto` lets ALPN choose, and the server prefers h2; `sni` names the certificate.
    let h2 = gateway(
        &upstream,
        &format!("    protocol: auto\n    tls: {{ ca_file: \"{ca_path}\", sni: localhost }}\n"),
    );
    let answer = get(&h2.url("/a"), &[]).await;
    assert_eq!(
        (answer.status, answer.text().as_str()),
        (StatusCode::OK, "HTTP/2.0")
    );
    let seen = upstream.seen();
    let last = seen.last().unwrap();
    assert_eq!(
        last.uri.authority().map(|a| a.as_str()),
        last.headers.get("host").and_then(|h| h.to_str().ok())
    );
    assert_eq!(last.uri.scheme_str(), Some("https"));
}

#[tokio::test]
async fn a_certificate_for_another_name_or_from_an_untrusted_ca_is_refused_with_upstream_tls_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Levee test CA");
    let upstream = tls_upstream(&ca, false).await;
    let ca_path = ca_file(dir.path(), &ca);

    for settings in [
        // The certificate is for localhost and 127.0.0.1, not this name.
        format!("    tls: {{ ca_file: \"{ca_path}\", sni: api.example.com }}\n"),
        // The system's roots do not include the test CA.
        "    tls: {}\n".to_string(),
    ] {
        let h = gateway(&upstream, &settings);
        let answer = get(&h.url("/a"), &[]).await;
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{settings}");
        assert_eq!(answer.json()["error"]["code"], "upstream_tls_error", "{settings}");
        let metrics = metrics(&h).await;
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("levee_upstream_requests_total{")
                    && l.contains("outcome=\"tls_error\"")),
            "the failure is counted as tls_error:\n{metrics}"
        );
    }
    assert_eq!(upstream.hits(), 0, "no request reached an unverified upstream");
}

#[tokio::test]
async fn mutual_tls_is_accepted_with_the_client_certificate_and_refused_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Levee test CA");
    let upstream = tls_upstream(&ca, true).await;
    let ca_path = ca_file(dir.path(), &ca);
    let (cert, key, der) = ca.write_client(dir.path(), "levee-gateway");

    let with = gateway(
        &upstream,
        &format!(
            "    tls: {{ ca_file: \"{ca_path}\", client_cert: \"{}\", client_key: \"{}\" }}\n",
            cert.display(),
            key.display()
        ),
    );
    assert_eq!(get(&with.url("/a"), &[]).await.status, StatusCode::OK);
    assert_eq!(upstream.seen()[0].client_cert.as_ref(), Some(&der));

    let without = gateway(&upstream, &format!("    tls: {{ ca_file: \"{ca_path}\" }}\n"));
    let answer = get(&without.url("/a"), &[]).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.json()["error"]["code"], "upstream_tls_error");
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test]
async fn a_renewed_client_certificate_is_presented_on_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Levee test CA");
    let upstream = tls_upstream(&ca, true).await;
    let ca_path = ca_file(dir.path(), &ca);
    let (cert, key) = (dir.path().join("client.pem"), dir.path().join("client.key"));
    let install = |name: &str| {
        let (new_cert, new_key, der) = ca.write_client(dir.path(), name);
        std::fs::rename(new_key, &key).unwrap();
        std::fs::rename(new_cert, &cert).unwrap();
        der
    };
    let first = install("first");
    // No idle connections are kept: every request makes a new TLS connection.
    let h = gateway(
        &upstream,
        &format!(
            "    pool: {{ max_idle_per_target: 0 }}\n    tls: {{ ca_file: \"{ca_path}\", client_cert: \"{}\", client_key: \"{}\" }}\n",
            cert.display(),
            key.display()
        ),
    );
    assert_eq!(get(&h.url("/a"), &[]).await.status, StatusCode::OK);
    // Modification times must differ from the first pair's.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = install("second");
    assert_eq!(get(&h.url("/a"), &[]).await.status, StatusCode::OK);
    let presented: Vec<_> = upstream
        .seen()
        .into_iter()
        .map(|s| s.client_cert.unwrap())
        .collect();
    assert_eq!(presented, vec![first, second]);
}

#[tokio::test]
async fn health_checks_speak_tls_so_a_target_without_it_is_marked_down() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Levee test CA");
    let secure = tls_upstream(&ca, false).await;
    let plain = MockUpstream::fixed("plain").await;
    let ca_path = ca_file(dir.path(), &ca);
    let h = Harness::start(&single_upstream(
        &[secure.addr, plain.addr],
        &format!(
            "    tls: {{ ca_file: \"{ca_path}\" }}\n    health_check: {{ path: /healthz, interval: 50ms, unhealthy_after: 1, healthy_after: 1 }}\n"
        ),
        "",
    ));
    let upstreams = format!("{}/api/v1/upstreams", h.admin);
    eventually("the cleartext target fails its TLS health checks", || async {
        let json = get(&upstreams, &[]).await.json();
        json["upstreams"][0]["targets"][1]["health_check_passing"] == false
            && json["upstreams"][0]["targets"][0]["health_check_passing"] == true
    })
    .await;
    assert!(
        secure.seen().iter().any(|s| s.uri.path() == "/healthz"
            && s.headers
                .get("user-agent")
                .is_some_and(|u| u == "levee-health-check")),
        "the TLS target was checked over TLS"
    );
    for _ in 0..6 {
        assert_eq!(get(&h.url("/a"), &[]).await.text(), "HTTP/1.1");
    }
}

#[tokio::test]
async fn concurrent_requests_share_one_h2c_connection() {
    let upstream = MockUpstream::start_serving(Serving::h2c(), |seen| {
        Reply::ok(format!("{:?}", seen.version)).delay(Duration::from_millis(100))
    })
    .await;
    let h = gateway(&upstream, "    protocol: h2c\n");
    let url = h.url("/a");
    let answers = join_all((0..40).map(|_| get(&url, &[]))).await;
    assert!(answers
        .iter()
        .all(|a| a.status == StatusCode::OK && a.text() == "HTTP/2.0"));
    assert_eq!(upstream.connections(), 1, "one worker, one connection");
    assert!(
        upstream.max_inflight() >= 10,
        "the requests were multiplexed: {} at most at once",
        upstream.max_inflight()
    );
    assert!(upstream.seen().iter().all(|s| s.version == Version::HTTP_2));
}

#[tokio::test]
async fn a_connection_at_its_stream_limit_makes_the_pool_open_another() {
    let upstream = MockUpstream::start_serving(Serving::h2c(), |_| {
        Reply::ok("slow").delay(Duration::from_millis(400))
    })
    .await;
    let h = gateway(
        &upstream,
        "    protocol: h2c\n    http2: { max_concurrent_streams: 2 }\n",
    );
    let url = h.url("/a");
    let answers = join_all((0..6).map(|_| get(&url, &[]))).await;
    assert!(answers.iter().all(|a| a.status == StatusCode::OK));
    assert_eq!(upstream.max_inflight(), 6);
    assert_eq!(upstream.connections(), 3, "six streams at two per connection");
}

/// An HTTP/2 server that takes the first connection's first three streams, then sends
/// `GOAWAY` naming stream 1 as the last it processes, answers stream 1 only, and serves
/// later connections normally.
async fn goaway_upstream() -> (std::net::SocketAddr, MockUpstream) {
    let normal = MockUpstream::start_serving(Serving::h2c(), |_| Reply::ok("second connection")).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let forward_to = normal.addr;
    tokio::spawn(async move {
        let (mut first, _) = listener.accept().await.unwrap();
        let mut preface = [0u8; 24];
        tokio::io::AsyncReadExt::read_exact(&mut first, &mut preface)
            .await
            .unwrap();
        assert_eq!(&preface[..], h2_raw::PREFACE);
        first
            .write_all(&h2_raw::frame(h2_raw::SETTINGS, 0, 0, &[]))
            .await
            .unwrap();
        let mut streams = Vec::new();
        while streams.len() < 3 {
            let frame = h2_raw::read(&mut first).await.expect("the client's frames");
            match frame.kind {
                h2_raw::SETTINGS if frame.flags & h2_raw::ACK == 0 => {
                    first
                        .write_all(&h2_raw::frame(h2_raw::SETTINGS, h2_raw::ACK, 0, &[]))
                        .await
                        .unwrap();
                }
                h2_raw::HEADERS => streams.push(frame.stream),
                _ => {}
            }
        }
        assert_eq!(streams, [1, 3, 5], "three streams on one connection");
        first.write_all(&h2_raw::goaway(1, 0)).await.unwrap();
        first.write_all(&h2_raw::empty_ok(1)).await.unwrap();
        // Later connections go to the normal server.
        let held = tokio::spawn(async move { while h2_raw::read(&mut first).await.is_some() {} });
        while let Ok((mut client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut server = tokio::net::TcpStream::connect(forward_to).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
        held.abort();
    });
    (addr, normal)
}

#[tokio::test]
async fn streams_above_the_last_stream_id_of_a_goaway_are_retried_on_a_new_connection() {
    let (addr, normal) = goaway_upstream().await;
    // No retry policy: refused streams are retried whatever the route says.
    let h = Harness::start(&single_upstream(&[addr], "    protocol: h2c\n", ""));
    let url = h.url("/a");
    let answers = join_all((0..3).map(|_| get(&url, &[]))).await;
    let mut bodies: Vec<String> = answers
        .iter()
        .map(|a| {
            assert_eq!(a.status, StatusCode::OK, "{}", a.text());
            a.text()
        })
        .collect();
    bodies.sort();
    assert_eq!(bodies, ["", "second connection", "second connection"]);
    assert_eq!(normal.hits(), 2, "only the refused streams were sent again");
    let metrics = metrics(&h).await;
    assert!(
        metrics.lines().any(|l| l.starts_with("levee_retries_total{")
            && l.contains("reason=\"refused_stream\"")
            && l.ends_with(" 2")),
        "both retries counted:\n{metrics}"
    );
}

#[tokio::test]
async fn an_upstream_going_away_gracefully_under_load_loses_no_request() {
    // Each connection says GOAWAY after 25 requests (and still answers the ones it took).
    let serving = Serving {
        goaway_after: Some(25),
        ..Serving::h2c()
    };
    let upstream = MockUpstream::start_serving(serving, |_| Reply::ok("ok")).await;
    let h = Harness::start(&format!(
        "workers: 2\n{}",
        single_upstream(&[upstream.addr], "    protocol: h2c\n", "")
    ));
    let load = Load::start(&h.url("/a"), 16);
    eventually("the upstream went away at least 8 times", || async {
        upstream.connections() >= 9
    })
    .await;
    let report = load.finish().await;
    assert!(report.failures.is_empty(), "lost requests: {:?}", report.failures);
    assert!(report.ok >= 8 * 25, "{} requests", report.ok);
}
