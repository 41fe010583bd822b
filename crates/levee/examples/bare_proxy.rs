//! A featureless thread-per-core hyper proxy, for benchmarking the HTTP stack itself against
//! Levee: `cargo run --release --example bare_proxy -- LISTEN UPSTREAM [WORKERS]`.
//!
//! Env toggles add one Levee ingredient each, to price them separately: `BARE_AUTO` (the
//! HTTP/1 + h2c auto-detecting server), `BARE_HRT` (a header-read timeout timer), and
//! `BARE_TIMEOUT` (a per-request tokio timeout).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::convert::Infallible;
use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use socket2::{Domain, Socket, Type};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen: SocketAddr = args[1].parse().unwrap();
    let upstream: http::uri::Authority = args[2].parse().unwrap();
    let workers: usize = args.get(3).map(|w| w.parse().unwrap()).unwrap_or(2);
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let upstream = upstream.clone();
            std::thread::spawn(move || {
                let socket = Socket::new(Domain::for_address(listen), Type::STREAM, None).unwrap();
                socket.set_reuse_port(true).unwrap();
                socket.set_nonblocking(true).unwrap();
                socket.bind(&listen.into()).unwrap();
                socket.listen(1024).unwrap();
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(socket.into()).unwrap();
                    let mut connector = HttpConnector::new();
                    connector.set_nodelay(true);
                    let client: Client<_, Incoming> = Client::builder(TokioExecutor::new()).build(connector);
                    loop {
                        // A failed accept (out of descriptors) must not stop the peer mid-run.
                        let Ok((stream, _)) = listener.accept().await else {
                            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        let client = client.clone();
                        let upstream = upstream.clone();
                        tokio::spawn(async move {
                            let service = service_fn(move |mut req: http::Request<Incoming>| {
                                let client = client.clone();
                                let mut parts = http::uri::Parts::default();
                                parts.scheme = Some(http::uri::Scheme::HTTP);
                                parts.authority = Some(upstream.clone());
                                parts.path_and_query = req.uri().path_and_query().cloned();
                                *req.uri_mut() = http::Uri::from_parts(parts).unwrap_or_default();
                                async move {
                                    let fut = client.request(req);
                                    // A timeout answers 502 like any other failure.
                                    let res = if std::env::var_os("BARE_TIMEOUT").is_some() {
                                        tokio::time::timeout(std::time::Duration::from_secs(15), fut)
                                            .await
                                            .ok()
                                            .and_then(Result::ok)
                                    } else {
                                        fut.await.ok()
                                    };
                                    Ok::<_, Infallible>(match res {
                                        Some(r) => r.map(http_body_util::Either::Left),
                                        None => {
                                            let mut r = http::Response::new(http_body_util::Either::Right(
                                                http_body_util::Empty::<bytes::Bytes>::new(),
                                            ));
                                            *r.status_mut() = http::StatusCode::BAD_GATEWAY;
                                            r
                                        }
                                    })
                                }
                            });
                            if std::env::var_os("BARE_AUTO").is_some() {
                                let mut b =
                                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                                if std::env::var_os("BARE_HRT").is_some() {
                                    b.http1()
                                        .timer(hyper_util::rt::TokioTimer::new())
                                        .header_read_timeout(std::time::Duration::from_secs(30));
                                }
                                let _ = b
                                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                    .await;
                            } else {
                                let mut b = hyper::server::conn::http1::Builder::new();
                                if std::env::var_os("BARE_HRT").is_some() {
                                    b.timer(hyper_util::rt::TokioTimer::new())
                                        .header_read_timeout(std::time::Duration::from_secs(30));
                                }
                                let _ = b.serve_connection(TokioIo::new(stream), service).await;
                            }
                        });
                    }
                });
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}
