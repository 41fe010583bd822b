//! What clients see when upstreams fail: JSON errors with the contract's statuses, quickly.
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
use levee_test_support::*;

fn assert_error(answer: &Answer, status: StatusCode, code: &str) {
    assert_eq!(answer.status, status, "{}", answer.text());
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let json = answer.json();
    assert_eq!(json["error"]["code"], code);
    assert_eq!(
        json["error"]["request_id"].as_str(),
        answer.header("x-request-id")
    );
    // The public message never names internal addresses.
    assert!(!json["error"]["message"].as_str().unwrap().contains("127.0.0.1"));
}

#[tokio::test]
async fn a_dead_upstream_gets_502_quickly() {
    let dead = refused_addr().await;
    let h = Harness::start(&single_upstream(&[dead], "", ""));
    let started = Instant::now();
    let answer = get(&h.url("/"), &[]).await;
    assert_error(&answer, StatusCode::BAD_GATEWAY, "upstream_error");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused connections fail fast, not at a timeout"
    );
}

#[tokio::test]
async fn a_hung_upstream_gets_504_at_the_request_timeout() {
    let (silent, _accepted, _task) = silent_upstream().await;
    let h = Harness::start(&single_upstream(
        &[silent],
        "    timeouts: { request: 300ms }\n",
        "",
    ));
    let started = Instant::now();
    let answer = get(&h.url("/"), &[]).await;
    assert_error(&answer, StatusCode::GATEWAY_TIMEOUT, "upstream_timeout");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "not before the timeout"
    );
}

#[tokio::test]
async fn an_upstream_that_resets_gets_502() {
    let (resetting, _task) = resetting_upstream().await;
    let h = Harness::start(&single_upstream(&[resetting], "", ""));
    let answer = get(&h.url("/"), &[]).await;
    assert_error(&answer, StatusCode::BAD_GATEWAY, "upstream_error");
}

/// A listener whose accept queue is full never completes new handshakes: connects hang
/// until the connect timeout.
fn saturated_listener() -> (std::net::SocketAddr, Vec<std::net::TcpStream>, socket2::Socket) {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    // Fill the (tiny) accept queue; later SYNs are dropped by the kernel.
    let mut held = Vec::new();
    for _ in 0..8 {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        let _ = s.connect(&addr.into());
        held.push(std::net::TcpStream::from(s));
    }
    (addr, held, socket)
}

#[tokio::test]
async fn a_connect_that_hangs_gets_504_at_the_connect_timeout() {
    let (addr, _held, _listener) = saturated_listener();
    let h = Harness::start(&single_upstream(
        &[addr],
        "    timeouts: { connect: 200ms, request: 5s }\n",
        "",
    ));
    let started = Instant::now();
    let answer = get(&h.url("/"), &[]).await;
    assert_error(&answer, StatusCode::GATEWAY_TIMEOUT, "upstream_timeout");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(4),
        "took {took:?}"
    );
}

#[tokio::test]
async fn upstream_errors_are_relayed_not_replaced() {
    let upstream = MockUpstream::start(|_| Reply::status(503).body("{\"upstream\":\"busy\"}")).await;
    let h = Harness::start(&single_upstream(&[upstream.addr], "", ""));
    let answer = get(&h.url("/"), &[]).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.text(), "{\"upstream\":\"busy\"}");
}
