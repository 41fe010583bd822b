//! Test helpers that talk over real loopback sockets: scriptable mock upstreams, an HTTP
//! client, raw TCP exchanges, and addresses that refuse or never answer.
//!
//! Everything is bounded in time: helpers that wait take a deadline and fail loudly.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

pub mod serving;
pub mod stores;

pub use serving::{Serving, TestCa};

pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// The longest any helper waits before giving up.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A request as the mock upstream saw it (body read in full).
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Over TLS: the DER of the certificate the client presented, if any.
    pub client_cert: Option<Bytes>,
}

/// What a mock upstream answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: Vec<(String, String)>,
    /// Body chunks, sent `chunk_interval` apart.
    pub chunks: Vec<Bytes>,
    pub chunk_interval: Duration,
    /// Wait before sending the response headers.
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            headers: Vec::new(),
            chunks: Vec::new(),
            chunk_interval: Duration::ZERO,
            delay: Duration::ZERO,
        }
    }

    pub fn ok(body: impl Into<Bytes>) -> Reply {
        Reply::status(200).body(body)
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Reply {
        self.chunks = vec![body.into()];
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn delay(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    pub fn chunks(mut self, chunks: Vec<Bytes>, interval: Duration) -> Reply {
        self.chunks = chunks;
        self.chunk_interval = interval;
        self
    }
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

/// An HTTP/1.1 upstream on 127.0.0.1 that answers with a closure and records what it saw.
pub struct MockUpstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    inflight: Arc<serving::Inflight>,
    conn_tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl MockUpstream {
    /// Starts a mock that answers every request with `handler`.
    pub async fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> MockUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        MockUpstream::serve(listener, Serving::default(), Arc::new(handler))
    }

    /// Starts a mock that speaks as `serving` says (TLS, HTTP/2, GOAWAY after some requests).
    pub async fn start_serving(
        serving: Serving,
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> MockUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        MockUpstream::serve(listener, serving, Arc::new(handler))
    }

    /// Starts a mock on a given address (to bring a killed target back on its port).
    pub async fn start_on(
        addr: SocketAddr,
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> MockUpstream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(addr).unwrap();
        MockUpstream::serve(
            socket.listen(1024).unwrap(),
            Serving::default(),
            Arc::new(handler),
        )
    }

    fn serve(listener: TcpListener, serving: Serving, handler: Handler) -> MockUpstream {
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let connections: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let accepted = connections.clone();
        let conn_tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let tasks = conn_tasks.clone();
        let inflight: Arc<serving::Inflight> = Arc::default();
        let counted = inflight.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let handler = handler.clone();
                let log = log.clone();
                let counted = counted.clone();
                let serving = serving.clone();
                let conn = tokio::spawn(async move {
                    let answering = move |request: Request<Incoming>, client_cert: Option<Bytes>| {
                        let handler = handler.clone();
                        let log = log.clone();
                        let counted = counted.clone();
                        async move {
                            let _guard = counted.enter();
                            Ok::<_, Infallible>(answer(request, client_cert, handler, log).await)
                        }
                    };
                    if serving.is_plain() {
                        let service = service_fn(move |request| answering(request, None));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .with_upgrades()
                            .await;
                    } else {
                        serving::serve_connection(stream, &serving, answering).await;
                    }
                });
                tasks.lock().unwrap().push(conn.abort_handle());
            }
        });
        MockUpstream {
            addr,
            seen,
            connections,
            inflight,
            conn_tasks,
            task,
        }
    }

    /// Kills the mock like a crashed process: the port refuses connections and every open
    /// connection is closed.
    pub fn kill(&self) {
        self.task.abort();
        for task in self.conn_tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// A mock that answers 200 with `body` to everything.
    pub async fn fixed(body: &'static str) -> MockUpstream {
        MockUpstream::start(move |_| Reply::ok(body)).await
    }

    /// Everything seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The most requests this mock was answering at once.
    pub fn max_inflight(&self) -> usize {
        self.inflight.max()
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn answer(
    request: Request<Incoming>,
    client_cert: Option<Bytes>,
    handler: Handler,
    log: Arc<Mutex<Vec<Seen>>>,
) -> Response<TestBody> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let seen = Seen {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
        body,
        client_cert,
    };
    let reply = handler(&seen);
    log.lock().unwrap().push(seen);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let body: TestBody = if reply.chunk_interval.is_zero() {
        let all: Vec<u8> = reply.chunks.iter().flat_map(|c| c.iter().copied()).collect();
        Full::new(Bytes::from(all)).map_err(|e| match e {}).boxed()
    } else {
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>>(1);
        let chunks = reply.chunks.clone();
        let interval = reply.chunk_interval;
        tokio::spawn(async move {
            for (i, chunk) in chunks.into_iter().enumerate() {
                if i > 0 {
                    tokio::time::sleep(interval).await;
                }
                if tx.send(Ok(Frame::data(chunk))).await.is_err() {
                    return;
                }
            }
        });
        BodyExt::boxed(StreamBody::new(tokio_stream(rx)))
    };
    let mut response = Response::new(body);
    *response.status_mut() = reply.status;
    for (k, v) in &reply.headers {
        response.headers_mut().append(
            http::HeaderName::try_from(k.as_str()).unwrap(),
            http::HeaderValue::try_from(v.as_str()).unwrap(),
        );
    }
    response
}

fn tokio_stream<T>(rx: mpsc::Receiver<T>) -> tokio_stream::wrappers::ReceiverStream<T> {
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A loopback address where nothing listens (connections are refused). The port stays
/// bound (without listening) for the rest of the test process, so no other socket, such as
/// the gateway's own listener on port 0, can be given it.
pub async fn refused_addr() -> SocketAddr {
    static HELD: Mutex<Vec<socket2::Socket>> = Mutex::new(Vec::new());
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    HELD.lock().unwrap().push(socket);
    addr
}

/// An upstream that accepts connections and never answers. The counter says how many
/// connections it has accepted.
pub async fn silent_upstream() -> (
    SocketAddr,
    Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
    let counter = accepted.clone();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(stream);
        }
    });
    (addr, accepted, task)
}

/// An upstream that accepts a connection, reads the request, then resets the connection.
pub async fn resetting_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let _ = stream.set_zero_linger();
            drop(stream);
        }
    });
    (addr, task)
}

/// An HTTP client for tests: HTTP/1.1, or HTTP/2 with prior knowledge.
pub fn client(http2: bool) -> Client<HttpConnector, TestBody> {
    let mut builder = Client::builder(TokioExecutor::new());
    builder.http2_only(http2);
    builder.build(HttpConnector::new())
}

/// A fully read response.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_like::Value {
        serde_like::parse(&self.body)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Re-exported JSON parsing so tests need not name serde_json themselves.
pub mod serde_like {
    pub type Value = serde_json::Value;
    pub fn parse(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
    }
}

/// Sends `request` and reads the whole response, within [`DEADLINE`].
pub async fn send(client: &Client<HttpConnector, TestBody>, request: Request<TestBody>) -> Answer {
    let response = tokio::time::timeout(DEADLINE, client.request(request))
        .await
        .expect("response headers within the deadline")
        .expect("a response");
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(DEADLINE, body.collect())
        .await
        .expect("body within the deadline")
        .expect("a complete body")
        .to_bytes();
    Answer {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    }
}

/// A GET over HTTP/1.1 with extra headers.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Answer {
    let mut builder = Request::get(url);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    send(&client(false), builder.body(empty()).unwrap()).await
}

pub fn empty() -> TestBody {
    Full::new(Bytes::new()).map_err(|e| match e {}).boxed()
}

pub fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into()).map_err(|e| match e {}).boxed()
}

/// A body fed from a channel: the test decides when each chunk goes out.
pub fn channel_body() -> (mpsc::Sender<Bytes>, TestBody) {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    (tx, body_from(rx))
}

/// A body whose chunks come from `rx`; it ends when every sender is dropped.
pub fn body_from(rx: mpsc::Receiver<Bytes>) -> TestBody {
    let (ftx, frx) = mpsc::channel::<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>>(4);
    tokio::spawn(async move {
        let mut rx = rx;
        while let Some(chunk) = rx.recv().await {
            if ftx.send(Ok(Frame::data(chunk))).await.is_err() {
                return;
            }
        }
    });
    BodyExt::boxed(StreamBody::new(tokio_stream(frx)))
}

/// Writes raw bytes to `addr` and reads until the peer closes or `DEADLINE` passes.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Polls `condition` every 10ms until it holds or `DEADLINE` passes.
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while tokio::time::Instant::now() < deadline {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Continuous GET traffic from a few keep-alive clients, for tests that change the gateway
/// under load (reloads, restarts). Bounded: every client stops after `MAX_PER_CLIENT`
/// requests even if never told to.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<LoadReport>>,
}

/// What a [`Load`] saw.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    /// Requests answered with a 2xx status.
    pub ok: usize,
    /// Everything else: the status or the transport error, per failed request.
    pub failures: Vec<String>,
    /// How often each response body was seen.
    pub bodies: std::collections::BTreeMap<String, usize>,
}

impl LoadReport {
    fn merge(&mut self, other: LoadReport) {
        self.ok += other.ok;
        self.failures.extend(other.failures);
        for (body, n) in other.bodies {
            *self.bodies.entry(body).or_default() += n;
        }
    }
}

const MAX_PER_CLIENT: usize = 200_000;

impl Load {
    /// Starts `clients` clients, each with its own keep-alive connection, sending GET `url`
    /// back to back.
    pub fn start(url: &str, clients: usize) -> Load {
        let stop: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let tasks = (0..clients)
            .map(|_| {
                let (url, stop) = (url.to_owned(), stop.clone());
                tokio::spawn(async move {
                    let client = client(false);
                    let mut report = LoadReport::default();
                    for _ in 0..MAX_PER_CLIENT {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            break;
                        }
                        let request = Request::get(&url).body(empty()).unwrap();
                        let outcome = tokio::time::timeout(DEADLINE, async {
                            let response = client.request(request).await.map_err(|e| format!("{e:?}"))?;
                            let status = response.status();
                            let body = response
                                .into_body()
                                .collect()
                                .await
                                .map_err(|e| format!("body: {e:?}"))?
                                .to_bytes();
                            Ok::<_, String>((status, body))
                        })
                        .await
                        .unwrap_or_else(|_| Err("no answer within the deadline".into()));
                        match outcome {
                            Ok((status, body)) if status.is_success() => {
                                report.ok += 1;
                                *report
                                    .bodies
                                    .entry(String::from_utf8_lossy(&body).into_owned())
                                    .or_default() += 1;
                            }
                            Ok((status, body)) => report
                                .failures
                                .push(format!("{status}: {}", String::from_utf8_lossy(&body))),
                            Err(error) => report.failures.push(error),
                        }
                    }
                    report
                })
            })
            .collect();
        Load { stop, tasks }
    }

    /// Stops the clients and adds up what they saw.
    pub async fn finish(self) -> LoadReport {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut total = LoadReport::default();
        for task in self.tasks {
            total.merge(task.await.unwrap());
        }
        total
    }
}
