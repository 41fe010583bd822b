//! The proxy core over real loopback sockets: forwarding, headers, protocols, streaming.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::convert::Infallible;

use bytes::Bytes;
use common::{single_upstream, Harness};
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use levee_test_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

fn is_hex(s: &str) -> bool {
    s.chars().all(|c| c.is_ascii_hexdigit())
}

#[tokio::test]
async fn forwards_and_rewrites_hop_by_hop_and_forwarding_headers() {
    let upstream = MockUpstream::start(|_| {
        Reply::ok("hello")
            .header("connection", "x-upstream-private")
            .header("x-upstream-private", "1")
            .header("keep-alive", "timeout=5")
    })
    .await;
    let h = Harness::start(&single_upstream(&[upstream.addr], "", ""));
    let answer = get(
        &h.url("/some/path?q=1"),
        &[
            ("host", "api.example.com"),
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "must-not-leak"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic abc"),
            ("x-forwarded-for", "10.1.2.3"),
            ("x-custom", "kept"),
        ],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text(), "hello");
    let seen = &upstream.seen()[0];
    assert_eq!(seen.uri.path_and_query().unwrap().as_str(), "/some/path?q=1");
    assert_eq!(seen.version, Version::HTTP_11);
    let header = |name: &str| seen.headers.get(name).map(|v| v.to_str().unwrap().to_string());
    assert_eq!(
        header("host").as_deref(),
        Some("api.example.com"),
        "Host is preserved"
    );
    assert_eq!(header("x-custom").as_deref(), Some("kept"));
    assert_eq!(
        header("x-secret"),
        None,
        "Connection-listed headers are hop-by-hop"
    );
    assert_eq!(header("te"), None);
    assert_eq!(header("proxy-authorization"), None);
    assert_eq!(header("x-forwarded-for").as_deref(), Some("10.1.2.3, 127.0.0.1"));
    assert_eq!(header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(header("x-forwarded-host").as_deref(), Some("api.example.com"));
    let request_id = header("x-request-id").unwrap();
    assert_eq!(request_id.len(), 32);
    assert!(is_hex(&request_id));
    assert_eq!(
        answer.header("x-request-id"),
        Some(request_id.as_str()),
        "the client sees the same id"
    );
    let traceparent = header("traceparent").unwrap();
    let fields: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(fields.len(), 4);
    assert_eq!(
        (fields[0], fields[1].len(), fields[2].len(), fields[3]),
        ("00", 32, 16, "01")
    );
    // Response hop-by-hop headers are dropped too.
    assert_eq!(answer.header("x-upstream-private"), None);
    assert_eq!(answer.header("keep-alive"), None);
}

#[tokio::test]
async fn keeps_the_clients_request_id_and_trace() {
    let upstream = MockUpstream::fixed("ok").await;
    let h = Harness::start(&single_upstream(&[upstream.addr], "", ""));
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let answer = get(
        &h.url("/"),
        &[
            ("x-request-id", "req-42"),
            ("traceparent", parent),
            ("tracestate", "congo=t61rcWkgMzE"),
        ],
    )
    .await;
    assert_eq!(answer.header("x-request-id"), Some("req-42"));
    let seen = &upstream.seen()[0];
    assert_eq!(seen.headers["x-request-id"], "req-42");
    let sent = seen.headers["traceparent"].to_str().unwrap();
    assert!(
        sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "same trace: {sent}"
    );
    assert!(sent.ends_with("-00"), "sampling flag kept: {sent}");
    assert!(
        !sent.contains("00f067aa0ba902b7"),
        "a new span id for this hop: {sent}"
    );
    assert_eq!(seen.headers["tracestate"], "congo=t61rcWkgMzE");
}

#[tokio::test]
async fn a_tracestate_without_a_valid_traceparent_is_not_forwarded() {
    let upstream = MockUpstream::fixed("ok").await;
    let h = Harness::start(&single_upstream(&[upstream.addr], "", ""));
    let broken = "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01";
    get(&h.url("/"), &[("traceparent", broken), ("tracestate", "congo=1")]).await;
    let seen = &upstream.seen()[0];
    let sent = seen.headers["traceparent"].to_str().unwrap();
    assert!(
        !sent.contains("4bf92f3577b34da6a3ce929d0e0e4736"),
        "a new trace: {sent}"
    );
    assert!(
        seen.headers.get("tracestate").is_none(),
        "the stray tracestate is dropped"
    );
}

#[tokio::test]
async fn http2_prior_knowledge_and_http1_share_a_listener() {
    let upstream = MockUpstream::fixed("both").await;
    let h = Harness::start(&single_upstream(&[upstream.addr], "", ""));
    let h2 = send(&client(true), Request::get(h.url("/h2")).body(empty()).unwrap()).await;
    assert_eq!(h2.status, StatusCode::OK);
    assert_eq!(h2.version, Version::HTTP_2);
    assert_eq!(h2.text(), "both");
    let h1 = get(&h.url("/h1"), &[]).await;
    assert_eq!(h1.version, Version::HTTP_11);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2);
    // The HTTP/2 request reaches the HTTP/1.1 upstream with a Host header from :authority.
    assert_eq!(seen[0].version, Version::HTTP_11);
    assert_eq!(seen[0].headers["host"], h.base.trim_start_matches("http://"));
}

/// An upstream whose response body the test feeds chunk by chunk, and that reports each
/// request body chunk as it arrives.
async fn streaming_upstream(
    content_type: &'static str,
) -> (std::net::SocketAddr, mpsc::Receiver<Bytes>, mpsc::Sender<Bytes>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (req_chunk_tx, req_chunk_rx) = mpsc::channel::<Bytes>(16);
    let (resp_chunk_tx, resp_chunk_rx) = mpsc::channel::<Bytes>(16);
    let resp_rx = std::sync::Arc::new(tokio::sync::Mutex::new(Some(resp_chunk_rx)));
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let service = service_fn(move |request: Request<Incoming>| {
            let req_chunk_tx = req_chunk_tx.clone();
            let resp_rx = resp_rx.clone();
            async move {
                let mut body = request.into_body();
                // Report request chunks as they come, in the background.
                tokio::spawn(async move {
                    while let Some(Ok(frame)) = body.frame().await {
                        if let Ok(data) = frame.into_data() {
                            let _ = req_chunk_tx.send(data).await;
                        }
                    }
                });
                let rx = resp_rx.lock().await.take().unwrap();
                let mut response = Response::new(body_from(rx));
                response
                    .headers_mut()
                    .insert("content-type", content_type.parse().unwrap());
                Ok::<_, Infallible>(response)
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
    (addr, req_chunk_rx, resp_chunk_tx)
}

#[tokio::test]
async fn bodies_stream_both_ways_without_buffering() {
    let (addr, mut upstream_got, upstream_send) = streaming_upstream("application/octet-stream").await;
    let h = Harness::start(&single_upstream(&[addr], "", ""));
    let (client_send, body) = channel_body();
    let request = Request::post(h.url("/upload")).body(body).unwrap();
    let http = client(false);
    let response = tokio::spawn(async move { http.request(request).await });

    // Each request chunk reaches the upstream while the client is still sending.
    for chunk in ["first", "second"] {
        client_send.send(Bytes::from(chunk)).await.unwrap();
        let got = tokio::time::timeout(DEADLINE, upstream_got.recv())
            .await
            .expect("chunk forwarded before the body ended")
            .unwrap();
        assert_eq!(got, chunk);
    }
    // Each response chunk reaches the client while the upstream is still sending.
    upstream_send.send(Bytes::from("one")).await.unwrap();
    let response = tokio::time::timeout(DEADLINE, response)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let frame = tokio::time::timeout(DEADLINE, body.frame())
        .await
        .expect("first chunk before the body ended")
        .unwrap()
        .unwrap();
    assert_eq!(frame.into_data().unwrap(), "one");
    upstream_send.send(Bytes::from("two")).await.unwrap();
    let frame = tokio::time::timeout(DEADLINE, body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(frame.into_data().unwrap(), "two");
    drop(upstream_send);
    drop(client_send);
}

#[tokio::test]
async fn server_sent_events_pass_through_as_they_happen() {
    let (addr, _requests, events) = streaming_upstream("text/event-stream").await;
    let h = Harness::start(&single_upstream(&[addr], "", ""));
    let response = tokio::time::timeout(
        DEADLINE,
        client(false).request(
            Request::get(h.url("/events"))
                .header("accept", "text/event-stream")
                .body(empty())
                .unwrap(),
        ),
    );
    events.send(Bytes::from("data: one\n\n")).await.unwrap();
    let response = response.await.unwrap().unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    for event in ["data: one\n\n", "data: two\n\n"] {
        if event != "data: one\n\n" {
            events.send(Bytes::from(event)).await.unwrap();
        }
        let frame = tokio::time::timeout(DEADLINE, body.frame())
            .await
            .expect("event relayed at once")
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), event);
    }
}

/// A WebSocket-style upstream: answers the upgrade with 101, then echoes bytes.
async fn echo_upgrade_upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = service_fn(|mut request: Request<Incoming>| async move {
                assert_eq!(request.headers()["upgrade"], "websocket");
                let upgrade = hyper::upgrade::on(&mut request);
                tokio::spawn(async move {
                    let mut io = TokioIo::new(upgrade.await.unwrap());
                    let mut buf = [0u8; 64];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                let response = Response::builder()
                    .status(StatusCode::SWITCHING_PROTOCOLS)
                    .header("upgrade", "websocket")
                    .header("connection", "upgrade")
                    .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
                    .body(http_body_util::Empty::<Bytes>::new())
                    .unwrap();
                Ok::<_, Infallible>(response)
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn websocket_upgrade_tunnels_both_ways() {
    let addr = echo_upgrade_upstream().await;
    let h = Harness::start(&single_upstream(&[addr], "", ""));
    let gateway = h.gateway().listener_addr("public").unwrap();
    let mut stream = TcpStream::connect(gateway).await.unwrap();
    stream
        .write_all(
            b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            n,
            1,
            "connection closed during the handshake: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(head.contains("sec-websocket-accept"), "{head}");
    for message in [&b"ping"[..], b"second message"] {
        stream.write_all(message).await.unwrap();
        let mut echo = vec![0u8; message.len()];
        tokio::time::timeout(DEADLINE, stream.read_exact(&mut echo))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echo, message);
    }
}

#[tokio::test]
async fn malformed_requests_get_400_and_the_gateway_keeps_serving() {
    let upstream = MockUpstream::fixed("fine").await;
    let h = Harness::start(&single_upstream(&[upstream.addr], "", ""));
    let addr = h.gateway().listener_addr("public").unwrap();
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"\x00\x01\x02\x03\r\n\r\n",
    ] {
        let answer = raw_exchange(addr, garbage).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{:?} -> {answer:?}",
            String::from_utf8_lossy(garbage)
        );
    }
    assert_eq!(upstream.hits(), 0, "nothing malformed reached the upstream");
    assert_eq!(get(&h.url("/"), &[]).await.text(), "fine");
}

#[tokio::test]
async fn connections_to_upstreams_are_reused() {
    let upstream = MockUpstream::fixed("ok").await;
    let h = Harness::start(&single_upstream(&[upstream.addr], "", ""));
    for _ in 0..5 {
        assert_eq!(get(&h.url("/"), &[]).await.status, StatusCode::OK);
    }
    assert_eq!(upstream.hits(), 5);
    assert_eq!(
        upstream.connections(),
        1,
        "one pooled keep-alive connection served every request"
    );
}
