//! A gRPC unary echo server and a load client with latency percentiles, for bench/protocols.sh:
//! gRPC through Levee against the same calls made directly.
//!
//!     grpc_bench echo 127.0.0.1:18281
//!     grpc_bench load http://127.0.0.1:18281/bench.Echo/Unary SECONDS CONNECTIONS STREAMS
//!
//! The server answers every call with the message it got and `grpc-status: 0` in the
//! trailers (HTTP/2 in cleartext, one thread). The client opens CONNECTIONS HTTP/2
//! connections with STREAMS calls in flight on each for SECONDS, checks every answer (status
//! 200, `grpc-status` 0, the message echoed) and prints one JSON line: calls, calls per
//! second, p50/p90/p99/max latency in milliseconds, errors.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    match args.get(1).map(String::as_str) {
        Some("echo") => runtime.block_on(echo(&args[2])),
        Some("load") => runtime.block_on(load(
            &args[2],
            args[3].parse().unwrap(),
            args[4].parse().unwrap(),
            args[5].parse().unwrap(),
        )),
        _ => eprintln!("usage: grpc_bench echo ADDR | load URL SECONDS CONNECTIONS STREAMS"),
    }
}

async fn echo(addr: &str) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                let message = request
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", HeaderValue::from_static("0"));
                let frames = futures_util::stream::iter([
                    Ok::<_, Infallible>(Frame::data(message)),
                    Ok(Frame::trailers(trailers)),
                ]);
                let mut response = Response::new(http_body_util::StreamBody::new(frames));
                response
                    .headers_mut()
                    .insert("content-type", HeaderValue::from_static("application/grpc"));
                Ok::<_, Infallible>(response)
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn load(url: &str, seconds: u64, connections: usize, streams: usize) {
    let uri: http::Uri = url.parse().unwrap();
    let authority = uri.authority().unwrap().to_string();
    let message = levee::grpc::frame_message(&[7u8; 64]);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let latencies = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let errors = Arc::new(Mutex::new(0u64));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let stream = tokio::net::TcpStream::connect(&authority).await.unwrap();
        let _ = stream.set_nodelay(true);
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        for _ in 0..streams {
            let (mut sender, uri, message) = (sender.clone(), uri.clone(), message.clone());
            let (latencies, errors) = (latencies.clone(), errors.clone());
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                while Instant::now() < deadline {
                    let request = Request::post(uri.clone())
                        .header("content-type", "application/grpc")
                        .header("te", "trailers")
                        .body(Full::new(message.clone()))
                        .unwrap();
                    let started = Instant::now();
                    if call(&mut sender, request, &message).await {
                        mine.push(started.elapsed());
                    } else {
                        *errors.lock().unwrap() += 1;
                    }
                }
                latencies.lock().unwrap().extend(mine);
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let mut all = latencies.lock().unwrap().clone();
    all.sort();
    let at = |q: f64| {
        let index = ((all.len() as f64 * q).ceil() as usize).clamp(1, all.len().max(1)) - 1;
        all.get(index).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{{\"calls\":{},\"rps\":{:.0},\"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3},\"errors\":{}}}",
        all.len(),
        all.len() as f64 / seconds as f64,
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0),
        *errors.lock().unwrap()
    );
}

/// One call; true when the answer is a success echoing `message`.
async fn call(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
    message: &Bytes,
) -> bool {
    let Ok(response) = sender.send_request(request).await else {
        return false;
    };
    if response.status() != 200 {
        return false;
    }
    let Ok(collected) = response.into_body().collect().await else {
        return false;
    };
    let ok = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .is_some_and(|s| s == "0");
    ok && collected.to_bytes() == *message
}
