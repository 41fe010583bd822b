//! Hostile input on raw sockets: request smuggling shapes, oversized heads and bodies, and
//! slow clients. Every malformed request must get a 400 and never reach the upstream.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::time::{Duration, Instant};

use common::{single_upstream, Harness};
use http::StatusCode;
use levee_test_support::serving::h2_raw::{self, GOAWAY, PING};
use levee_test_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn status_of(answer: &str) -> u16 {
    answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn smuggling_shapes_get_400_and_never_reach_the_upstream() {
    let upstream = MockUpstream::fixed("ok").await;
    let h = Harness::start(&single_upstream(&[upstream.addr], "", ""));
    let addr = h.gateway().listener_addr("public").unwrap();
    let cases: &[(&str, &[u8])] = &[
        (
            "Content-Length and Transfer-Encoding together",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "Transfer-Encoding before Content-Length",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        ),
        (
            "conflicting Content-Length",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        ),
        (
            "Content-Length list",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4, 5\r\n\r\nabcde",
        ),
        (
            "invalid chunk size",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        ),
        (
            "chunked not last",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        ),
        (
            "unknown transfer coding",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc",
        ),
        (
            "obs-fold header",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
        ),
        (
            "NUL in a header value",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Bad: a\0b\r\n\r\n",
        ),
        (
            "bare CR in a header value",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Bad: a\rb\r\n\r\n",
        ),
        (
            "space before the colon",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Bad : a\r\n\r\n",
        ),
        ("no HTTP version", b"GET /\r\n\r\n"),
    ];
    for (name, bytes) in cases {
        let answer = raw_exchange(addr, bytes).await;
        assert_eq!(status_of(&answer), 400, "{name}: {answer:?}");
        // Refused by hyper's parser or by the pipeline, every one is the contract's JSON
        // with a request id.
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        let head = head.to_ascii_lowercase();
        let id = head
            .lines()
            .find_map(|l| l.strip_prefix("x-request-id: "))
            .unwrap_or_else(|| panic!("{name}: no x-request-id in {head}"));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "bad_request", "{name}");
        assert_eq!(json["error"]["request_id"], id, "{name}");
    }
    assert_eq!(upstream.hits(), 0, "nothing malformed reached the upstream");
    assert_eq!(upstream.connections(), 0);
    assert_eq!(
        get(&h.url("/"), &[]).await.status,
        StatusCode::OK,
        "still serving"
    );
}

#[tokio::test]
async fn oversized_heads_get_a_json_431() {
    let upstream = MockUpstream::fixed("ok").await;
    let h = Harness::start(&format!(
        "limits: {{ max_header_bytes: 2048 }}\n{}",
        single_upstream(&[upstream.addr], "", "")
    ));
    let big = "x".repeat(3000);
    let answer = get(&h.url("/"), &[("x-big", &big)]).await;
    assert_eq!(answer.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(answer.json()["error"]["code"], "headers_too_large");
    // Far past any sane size, hyper itself stops reading.
    let huge = "x".repeat(20_000);
    let addr = h.gateway().listener_addr("public").unwrap();
    let answer = raw_exchange(
        addr,
        format!("GET / HTTP/1.1\r\nHost: x\r\nX-Huge: {huge}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&answer), 431, "{answer:?}");
    // hyper's own refusal, rewritten into the contract: JSON with a request id.
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("\r\nx-request-id: "), "{head}");
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["error"]["code"], "headers_too_large");
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let upstream = MockUpstream::start(|seen| Reply::ok(format!("{} bytes", seen.body.len()))).await;
    let h = Harness::start(&format!(
        "limits: {{ max_body_bytes: 1000 }}\nupstreams:\n  u:\n    targets: [\"{}\"]\nroutes:\n  - name: small\n    match: {{ path_prefix: /small }}\n    upstream: u\n    max_body_bytes: 100\n  - name: all\n    upstream: u\n",
        upstream.addr
    ));
    let post = |path: &str, body: TestBody| {
        let request = http::Request::post(h.url(path)).body(body).unwrap();
        async move { send(&client(false), request).await }
    };
    // Declared too large: refused before any upstream work.
    let answer = post("/small", full(vec![b'a'; 200])).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.json()["error"]["code"], "body_too_large");
    assert_eq!(upstream.hits(), 0);
    // Streamed (chunked) past the limit: counted while streaming. Sent raw, in one write, so
    // the client reads the early 413 instead of tripping over the closed connection.
    let addr = h.gateway().listener_addr("public").unwrap();
    let mut chunked = b"POST /small HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..10 {
        chunked.extend_from_slice(b"32\r\n");
        chunked.extend_from_slice(&[b'a'; 50]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let answer = raw_exchange(addr, &chunked).await;
    assert_eq!(status_of(&answer), 413, "{answer}");
    // Within the limits: through.
    assert_eq!(post("/small", full(vec![b'a'; 100])).await.text(), "100 bytes");
    assert_eq!(post("/other", full(vec![b'a'; 900])).await.text(), "900 bytes");
}

#[tokio::test]
async fn slow_clients_do_not_stop_normal_requests() {
    let upstream = MockUpstream::fixed("ok").await;
    let h = Harness::start(&format!(
        "limits: {{ header_read_timeout: 1s }}\n{}",
        single_upstream(&[upstream.addr], "", "")
    ));
    let addr = h.gateway().listener_addr("public").unwrap();
    // Baseline latency without the attack.
    let mut baseline = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(get(&h.url("/"), &[]).await.status, StatusCode::OK);
        baseline = baseline.max(started.elapsed());
    }
    // 300 connections trickling a header a byte at a time.
    let mut tricklers = Vec::new();
    for _ in 0..300 {
        tricklers.push(tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
            for byte in head.iter() {
                if stream.write_all(&[*byte]).await.is_err() {
                    return true; // closed by the gateway
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            false
        }));
    }
    let mut worst = Duration::ZERO;
    for _ in 0..50 {
        let started = Instant::now();
        assert_eq!(get(&h.url("/"), &[]).await.status, StatusCode::OK);
        worst = worst.max(started.elapsed());
    }
    assert!(
        worst < baseline * 10 + Duration::from_millis(100),
        "worst {worst:?} under attack vs {baseline:?} before"
    );
    // Every trickling connection is cut at the header-read timeout.
    let mut closed = 0;
    for trickler in tricklers {
        if trickler.await.unwrap() {
            closed += 1;
        }
    }
    assert_eq!(closed, 300);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let upstream = MockUpstream::fixed("ok").await;
    let h = Harness::start(&format!(
        "limits: {{ header_read_timeout: 300ms }}\n{}",
        single_upstream(&[upstream.addr], "", "")
    ));
    let addr = h.gateway().listener_addr("public").unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Then nothing: the gateway hangs up on its own.
    let started = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut rest))
        .await
        .unwrap()
        .ok();
    assert!(started.elapsed() >= Duration::from_millis(250));
}

/// The smuggling shape on a kept-alive connection: the guard follows the earlier request's
/// body to find the later head, and refuses it.
#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused_after_earlier_requests() {
    let upstream = MockUpstream::start(|seen| Reply::ok(seen.body.clone())).await;
    let h = Harness::start(&single_upstream(&[upstream.addr], "", ""));
    let addr = h.gateway().listener_addr("public").unwrap();
    let answer = raw_exchange(
        addr,
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloPOST /smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    let statuses: Vec<u16> = answer
        .match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| answer.get(i + 9..i + 12)?.parse().ok())
        .collect();
    assert_eq!(statuses, vec![200, 200, 400], "{answer}");
    let paths: Vec<String> = upstream.seen().iter().map(|s| s.uri.path().to_string()).collect();
    assert_eq!(
        paths,
        vec!["/a", "/b"],
        "the ambiguous request never reached the upstream"
    );
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_at_the_header_timeout() {
    let upstream = MockUpstream::fixed("ok").await;
    let h = Harness::start(&format!(
        "limits: {{ header_read_timeout: 300ms }}\n{}",
        single_upstream(&[upstream.addr], "", "")
    ));
    let addr = h.gateway().listener_addr("public").unwrap();
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, silent.read_to_end(&mut rest))
        .await
        .unwrap()
        .ok();
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn several_transfer_codings_are_refused_as_json_400() {
    let upstream = MockUpstream::fixed("ok").await;
    let h = Harness::start(&single_upstream(&[upstream.addr], "", ""));
    let addr = h.gateway().listener_addr("public").unwrap();
    for bytes in [
        &b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ] {
        let answer = raw_exchange(addr, bytes).await;
        assert_eq!(status_of(&answer), 400, "{answer}");
        assert!(answer.contains("\"bad_request\""), "{answer}");
        assert!(answer.to_lowercase().contains("connection: close"), "{answer}");
    }
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn an_oversized_body_does_not_count_against_the_upstream() {
    let upstream = MockUpstream::start(|seen| Reply::ok(format!("{}", seen.body.len()))).await;
    let h = Harness::start(&format!(
        "upstreams:\n  u:\n    targets: [\"{}\"]\n    circuit_breaker: {{ consecutive_failures: 2 }}\nroutes:\n  - name: all\n    upstream: u\n    max_body_bytes: 100\n",
        upstream.addr
    ));
    let addr = h.gateway().listener_addr("public").unwrap();
    let mut chunked = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..5 {
        chunked.extend_from_slice(b"32\r\n");
        chunked.extend_from_slice(&[b'a'; 50]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    for _ in 0..5 {
        let answer = raw_exchange(addr, &chunked).await;
        assert_eq!(status_of(&answer), 413, "{answer}");
    }
    // The target's breaker stayed closed: normal requests still pass.
    assert_eq!(get(&h.url("/"), &[]).await.status, StatusCode::OK);
}

/// RFC 9112 section 3.2: no Host, several, or an invalid one is a 400 with the JSON body,
/// and the upstream never hears of it; an absolute-form target is routed and forwarded by
/// its own authority, whatever Host says.
#[tokio::test]
async fn host_is_validated_and_the_absolute_form_decides_it() {
    let upstream = MockUpstream::start(|seen| {
        let host = seen
            .headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("-");
        let forwarded = seen
            .headers
            .get("x-forwarded-host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("-");
        let route = seen
            .headers
            .get("x-route")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("-");
        let hosts = seen.headers.get_all("host").iter().count();
        Reply::ok(format!("route={route} host={host} xfh={forwarded} hosts={hosts}"))
    })
    .await;
    let yaml = format!(
        "upstreams:\n  u:\n    targets: [\"{}\"]\nroutes:\n  - name: a\n    match: {{ host: a.example, path_prefix: /py }}\n    upstream: u\n    request_headers: {{ set: {{ x-route: a }} }}\n  - name: b\n    match: {{ host: b.example, path_prefix: /py }}\n    upstream: u\n    request_headers: {{ set: {{ x-route: b }} }}\n",
        upstream.addr
    );
    let h = Harness::start(&yaml);
    let addr = h.gateway().listener_addr("public").unwrap();
    let refused: &[(&str, &[u8])] = &[
        ("no Host", b"GET /py/x HTTP/1.1\r\n\r\n"),
        (
            "two Host headers",
            b"GET /py/x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
        ),
        ("invalid Host", b"GET /py/x HTTP/1.1\r\nHost: a b/c@d\r\n\r\n"),
        ("empty Host", b"GET /py/x HTTP/1.1\r\nHost: \r\n\r\n"),
        (
            "a port that is not one",
            b"GET /py/x HTTP/1.1\r\nHost: a.example:http\r\n\r\n",
        ),
        (
            "user information in the absolute form",
            b"GET http://me@a.example/py/x HTTP/1.1\r\nHost: a.example\r\n\r\n",
        ),
    ];
    for (name, bytes) in refused {
        let answer = raw_exchange(addr, bytes).await;
        assert_eq!(status_of(&answer), 400, "{name}: {answer:?}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        let json: serde_json::Value =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{name}: {e}: {answer}"));
        assert_eq!(json["error"]["code"], "bad_request", "{name}");
        assert!(json["error"]["request_id"].is_string(), "{name}");
    }
    assert_eq!(upstream.hits(), 0, "nothing refused reached the upstream");

    // Absolute form with another Host: routed by the URI's authority, forwarded with it.
    let answer = raw_exchange(
        addr,
        b"GET http://a.example/py/x HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert!(
        answer.ends_with("route=a host=a.example xfh=a.example hosts=1"),
        "the upstream sees the URI's authority: {answer}"
    );
    // HTTP/1.0 may leave Host out.
    let answer = raw_exchange(addr, b"GET http://b.example/py/x HTTP/1.0\r\n\r\n").await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert!(
        answer.ends_with("route=b host=b.example xfh=b.example hosts=1"),
        "{answer}"
    );
    assert_eq!(upstream.hits(), 2);
}

/// RFC 9113 section 8.3.1: an HTTP/2 request whose `host` names another host than its
/// `:authority` is malformed; a consistent one is forwarded with that host.
#[tokio::test]
async fn http2_authority_and_host_must_agree() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let upstream = MockUpstream::start(|seen| {
        let host = seen
            .headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("-");
        Reply::ok(format!("host={host}"))
    })
    .await;
    let h = Harness::start(&format!(
        "upstreams:\n  u:\n    targets: [\"{}\"]\nroutes:\n  - name: a\n    match: {{ host: a.example }}\n    upstream: u\n",
        upstream.addr
    ));
    let addr = h.gateway().listener_addr("public").unwrap();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut exchange = |host: Option<&'static str>| {
        let mut request = http::Request::get("http://a.example/x");
        if let Some(host) = host {
            request = request.header("host", host);
        }
        let request = request.body(Empty::<bytes::Bytes>::new()).unwrap();
        let sent = sender.send_request(request);
        async move {
            let response = tokio::time::timeout(DEADLINE, sent).await.unwrap().unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let (status, body) = exchange(Some("b.example")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"]["code"], "bad_request");
    assert_eq!(upstream.hits(), 0);
    assert_eq!(
        exchange(Some("a.example")).await,
        (StatusCode::OK, "host=a.example".into())
    );
    assert_eq!(exchange(None).await, (StatusCode::OK, "host=a.example".into()));
}

/// The HTTP/2 client preface, an empty SETTINGS frame, and the acknowledgement of the
/// server's SETTINGS: enough for the server to consider the connection open.
const H2_OPEN: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0\0\0\0\x04\x01\0\0\0\0";
fn h2_gateway(upstream: &MockUpstream) -> Harness {
    Harness::start(&format!(
        "limits: {{ http2_keepalive_interval: 200ms, http2_keepalive_timeout: 200ms }}\n{}",
        single_upstream(&[upstream.addr], "", "")
    ))
}

/// A raw connection to the gateway's listener with HTTP/2 opened on it.
async fn h2_client(h: &Harness) -> tokio::net::TcpStream {
    let mut client = tokio::net::TcpStream::connect(h.gateway().listener_addr("public").unwrap())
        .await
        .unwrap();
    client.write_all(H2_OPEN).await.unwrap();
    client
}

#[tokio::test]
async fn an_http2_client_that_stops_answering_pings_is_disconnected() {
    let upstream = MockUpstream::fixed("ok").await;
    let h = h2_gateway(&upstream);
    let mut client = h2_client(&h).await;
    // Read, never answer: the server asks with a PING, waits, and gives up on the connection.
    let mut seen = Vec::new();
    let ended = tokio::time::timeout(DEADLINE, async {
        while let Some(frame) = h2_raw::read(&mut client).await {
            seen.push(frame.kind);
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection stayed open; frames seen: {seen:?}");
    assert!(seen.contains(&PING), "a PING was sent before closing: {seen:?}");
}

#[tokio::test]
async fn an_http2_client_that_answers_pings_keeps_its_connection() {
    let upstream = MockUpstream::fixed("ok").await;
    let h = h2_gateway(&upstream);
    let mut client = h2_client(&h).await;
    // Three PINGs acknowledged in a row: each acknowledgement keeps the connection, so the
    // next PING comes instead of a GOAWAY or the end of the connection.
    let mut acknowledged = 0;
    tokio::time::timeout(DEADLINE, async {
        while acknowledged < 3 {
            let h2_raw::Frame {
                kind, flags, payload, ..
            } = h2_raw::read(&mut client)
                .await
                .expect("the connection stayed open");
            assert_ne!(kind, GOAWAY, "an answering client was sent away");
            if kind == PING && flags & 0x1 == 0 {
                let mut ack = vec![0, 0, 8, PING, 0x1, 0, 0, 0, 0];
                ack.extend_from_slice(&payload);
                client.write_all(&ack).await.unwrap();
                acknowledged += 1;
            }
        }
    })
    .await
    .expect("three PINGs within the deadline");
}
