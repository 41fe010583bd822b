//! Each worker's own connections to its upstreams' targets: HTTP/1.1 connections kept alive
//! between exchanges, and HTTP/2 connections shared by many requests at once.
//!
//! Why not `hyper-util`'s pooled client: it is built to be shared between threads, so every
//! request takes its pool's mutex twice (checkout and checkin) and spawns a task that waits
//! for the connection to become idle again. Levee's workers never share connections (each
//! runs its own single-threaded runtime, as nginx's workers do), so the pool here is a plain
//! per-thread map: taking and returning a connection is a `Vec` pop and push on the worker's
//! own thread, with no lock, no channel and no task per request.
//!
//! Life of an HTTP/1.1 connection:
//! - **checkout**: the most recently returned idle connection of the target (its socket is
//!   the warmest), skipping any that closed or sat idle longer than the upstream's
//!   `pool_idle_timeout`, and waiting for it to be ready (the dispatcher may not have
//!   finished the previous exchange when it was returned);
//! - **new**: opened by the upstream's [`Transport`] (TCP, TLS when configured, handshake);
//! - **return**: when the response body has been read to its end ([`PooledBody`] sees the
//!   last frame, or an empty body is dropped), the connection goes back to the pool, unless
//!   the pool already holds `pool_max_idle_per_target` idle ones for the target. A body
//!   dropped before its end closes the connection: what is left of that response would
//!   poison the next one.
//!
//! Life of an HTTP/2 connection: it stays in the pool while open, and each request takes one
//! of its stream slots (up to `http2.max_concurrent_streams`), given back when the response
//! body ends or is dropped. A request that finds every connection full opens another. While
//! a connection is being opened, the requests that arrive wait for it (one lock per target)
//! rather than each opening its own: a burst of 100 requests makes one connection, not 100.
//! A connection that received `GOAWAY` closes for new streams at once and stays open for its
//! streams until they end; streams above the server's last stream id come back as
//! [`SendError::Refused`], which the pipeline retries (the server never processed them). An
//! HTTP/2 connection with no stream open for longer than the idle timeout is dropped.
//!
//! A request that finds a reused connection closed before anything was written (the
//! upstream's keep-alive timer won the race) is sent again once on a new connection, as
//! `hyper-util`'s `retry_canceled_requests` did.
//!
//! Memory is bounded: idle HTTP/1.1 connections per (upstream, target) are capped, HTTP/2
//! connections are bounded by the requests in flight (the bulkhead) over their stream
//! limit, and each worker sweeps out expired ones (and the pools of upstreams a reload
//! removed) every few seconds.

use std::cell::RefCell;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme, Uri};
use http::{Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use tokio::time::Instant;

use super::transport::{Conn, ConnectError, TargetAddr, Transport};
use super::RequestBody;

/// How often each worker drops idle connections that expired.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

type Key = (u64, usize);

struct Idle {
    sender: http1::SendRequest<RequestBody>,
    since: Instant,
    /// The idle timeout of its upstream (for the sweep, which sees no spec).
    idle_timeout: Duration,
}

/// An HTTP/2 connection and the streams it carries now.
struct Shared {
    sender: http2::SendRequest<RequestBody>,
    streams: Arc<AtomicUsize>,
    /// When its last stream started: it counts as idle from then once no stream is open.
    last_used: Instant,
    idle_timeout: Duration,
}

impl Shared {
    fn expired(&self, now: Instant) -> bool {
        self.sender.is_closed()
            || (self.streams.load(Ordering::Relaxed) == 0
                && now.saturating_duration_since(self.last_used) >= self.idle_timeout)
    }
}

/// One target's connections in one worker.
#[derive(Default)]
struct TargetConns {
    /// Idle HTTP/1.1 connections, the most recently returned last.
    idle: Vec<Idle>,
    /// Open HTTP/2 connections.
    shared: Vec<Shared>,
    /// What the last new connection spoke (under `auto`, ALPN's choice).
    speaks_h2: Option<bool>,
    /// Held while a connection that may speak HTTP/2 is being opened.
    opening: Arc<tokio::sync::Mutex<()>>,
    /// When the last attempt to open one failed: requests that waited for it fail too
    /// rather than each trying again in turn (a dead target would make the last of a
    /// hundred waiters wait a hundred connect timeouts).
    open_failed_at: Option<Instant>,
}

thread_local! {
    /// (pool id, target index) -> that target's connections in this worker.
    static CONNS: RefCell<HashMap<Key, TargetConns, foldhash::fast::RandomState>> =
        RefCell::new(HashMap::default());
}

fn with_target<T>(key: Key, f: impl FnOnce(&mut TargetConns) -> T) -> T {
    CONNS.with(|conns| f(conns.borrow_mut().entry(key).or_default()))
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One upstream's pool settings in a worker, and the id its connections are kept under.
#[derive(Debug)]
pub struct Pool {
    id: u64,
    max_idle: usize,
    idle_timeout: Duration,
    transport: Arc<Transport>,
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum SendError {
    Connect(ConnectError),
    /// The connection failed or closed after (part of) the request may have been sent.
    Exchange(hyper::Error),
    /// An HTTP/2 server refused the stream (`REFUSED_STREAM`, or it was above the last
    /// stream id of a `GOAWAY`): it was certainly not processed.
    Refused(hyper::Error),
}

/// A connection taken for one exchange.
enum Lease {
    H1 {
        sender: http1::SendRequest<RequestBody>,
        reused: bool,
    },
    H2 {
        sender: http2::SendRequest<RequestBody>,
        slot: StreamSlot,
        reused: bool,
    },
}

/// How one exchange on a leased connection went.
enum Exchanged {
    Done(Result<Response<PooledBody>, SendError>),
    /// The reused connection had closed before the request was written: it can go again.
    Unsent(Request<RequestBody>),
}

impl Pool {
    /// The id this pool's connections are kept under in each worker.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn new(max_idle: usize, idle_timeout: Duration, transport: Arc<Transport>) -> Pool {
        Pool {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            max_idle,
            idle_timeout,
            transport,
        }
    }

    /// Sends `request` (origin-form URI, Host set) to target `index`, on a pooled connection
    /// or a new one, and returns the response whose body gives the connection (or its
    /// stream slot) back when it ends.
    pub async fn send(
        &self,
        index: usize,
        target: &TargetAddr,
        request: Request<RequestBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        let key = (self.id, index);
        let lease = self.lease(key, target).await?;
        match self.exchange(key, lease, request).await {
            Exchanged::Done(result) => result,
            // Nothing was written on a connection that had closed: once more, on a new
            // HTTP/1.1 connection or on whichever HTTP/2 connection has room (the closed
            // one no longer counts).
            Exchanged::Unsent(request) => {
                let lease = if self.transport.may_use_h2() {
                    self.lease(key, target).await?
                } else {
                    self.open(key, target).await?
                };
                match self.exchange(key, lease, request).await {
                    Exchanged::Done(result) => result,
                    Exchanged::Unsent(_) => Err(SendError::Connect(ConnectError::Failed(
                        std::io::Error::from(std::io::ErrorKind::ConnectionReset),
                    ))),
                }
            }
        }
    }

    /// A connection for one exchange: a pooled one when there is one, else a new one.
    async fn lease(&self, key: Key, target: &TargetAddr) -> Result<Lease, SendError> {
        let known_h1 = with_target(key, |t| t.speaks_h2 == Some(false));
        if !self.transport.may_use_h2() || known_h1 {
            if let Some(sender) = self.checkout(key).await {
                return Ok(Lease::H1 { sender, reused: true });
            }
            return self.open(key, target).await;
        }
        let max = self.transport.max_streams();
        if let Some(lease) = take_stream(key, max) {
            return Ok(lease);
        }
        // One opening at a time per target: whoever waited here may find room on the
        // connection the one before it opened.
        let opening = with_target(key, |t| t.opening.clone());
        let waiting_since = Instant::now();
        let _turn = opening.lock().await;
        if let Some(lease) = take_stream(key, max) {
            return Ok(lease);
        }
        if with_target(key, |t| t.open_failed_at.is_some_and(|at| at >= waiting_since)) {
            return Err(SendError::Connect(ConnectError::Failed(std::io::Error::other(
                "the connection this request waited for could not be opened",
            ))));
        }
        let opened = self.open(key, target).await;
        if opened.is_err() {
            with_target(key, |t| t.open_failed_at = Some(Instant::now()));
        }
        opened
    }

    /// A new connection; an HTTP/2 one joins the pool at once, with this exchange's stream.
    async fn open(&self, key: Key, target: &TargetAddr) -> Result<Lease, SendError> {
        // Boxed: a connect and TLS handshake's state (several KiB) would otherwise be held
        // inline by every exchange's future, though most exchanges find a pooled connection.
        let conn = Box::pin(self.transport.connect::<RequestBody>(target))
            .await
            .map_err(SendError::Connect)?;
        Ok(match conn {
            Conn::H1(sender) => {
                with_target(key, |t| t.speaks_h2 = Some(false));
                Lease::H1 {
                    sender,
                    reused: false,
                }
            }
            Conn::H2(sender) => {
                let streams = Arc::new(AtomicUsize::new(1));
                with_target(key, |t| {
                    t.speaks_h2 = Some(true);
                    t.shared.push(Shared {
                        sender: sender.clone(),
                        streams: streams.clone(),
                        last_used: Instant::now(),
                        idle_timeout: self.idle_timeout,
                    });
                });
                Lease::H2 {
                    sender,
                    slot: StreamSlot(streams),
                    reused: false,
                }
            }
        })
    }

    async fn exchange(&self, key: Key, lease: Lease, request: Request<RequestBody>) -> Exchanged {
        match lease {
            Lease::H1 { mut sender, reused } => match sender.try_send_request(origin_form(request)).await {
                Ok(response) => {
                    // A connection switched to another protocol is the tunnel's now.
                    let back = (response.status() != StatusCode::SWITCHING_PROTOCOLS).then(|| {
                        Back::Conn(Return {
                            key,
                            sender,
                            max_idle: self.max_idle,
                            idle_timeout: self.idle_timeout,
                        })
                    });
                    Exchanged::Done(Ok(response.map(|body| PooledBody { body, back })))
                }
                Err(mut error) => match error.take_message() {
                    Some(request) if reused => Exchanged::Unsent(request),
                    _ => Exchanged::Done(Err(exchange_error(error.into_error(), reused))),
                },
            },
            Lease::H2 {
                mut sender,
                slot,
                reused,
            } => {
                let request = self.absolute_form(request);
                match sender.try_send_request(request).await {
                    Ok(response) => Exchanged::Done(Ok(response.map(|body| PooledBody {
                        body,
                        back: Some(Back::Stream { _slot: slot }),
                    }))),
                    Err(mut error) => match error.take_message() {
                        Some(request) if reused => Exchanged::Unsent(request),
                        _ => Exchanged::Done(Err(exchange_error(error.into_error(), reused))),
                    },
                }
            }
        }
    }

    /// HTTP/2 carries the authority and scheme as pseudo-headers: the request's Host (the
    /// authority an HTTP/1.1 upstream would have seen) and the connection's scheme.
    fn absolute_form(&self, mut request: Request<RequestBody>) -> Request<RequestBody> {
        *request.version_mut() = Version::HTTP_2;
        if request.uri().scheme().is_some() {
            return request;
        }
        let authority = request
            .headers()
            .get(http::header::HOST)
            .and_then(|h| Authority::try_from(h.as_bytes()).ok());
        let scheme = if self.transport.tls() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        let mut parts = request.uri().clone().into_parts();
        parts.scheme = Some(scheme);
        parts.authority = authority;
        if parts.authority.is_some() {
            if let Ok(uri) = Uri::from_parts(parts) {
                *request.uri_mut() = uri;
            }
        }
        request
    }

    async fn checkout(&self, key: Key) -> Option<http1::SendRequest<RequestBody>> {
        loop {
            let idle = with_target(key, |t| t.idle.pop())?;
            if idle.sender.is_closed() || idle.since.elapsed() >= self.idle_timeout {
                continue;
            }
            let mut sender = idle.sender;
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }
}

/// A stream slot on one of the target's open HTTP/2 connections with room, dropping closed
/// ones on the way.
fn take_stream(key: Key, max: usize) -> Option<Lease> {
    with_target(key, |t| {
        t.shared.retain(|c| !c.sender.is_closed());
        let conn = t
            .shared
            .iter_mut()
            .find(|c| c.streams.load(Ordering::Relaxed) < max && c.sender.is_ready())?;
        conn.streams.fetch_add(1, Ordering::Relaxed);
        conn.last_used = Instant::now();
        Some(Lease::H2 {
            sender: conn.sender.clone(),
            slot: StreamSlot(conn.streams.clone()),
            reused: true,
        })
    })
}

/// HTTP/1.1 requests go out in origin form (an `auto` upstream's request may have been made
/// absolute for an HTTP/2 connection that then closed).
fn origin_form(mut request: Request<RequestBody>) -> Request<RequestBody> {
    *request.version_mut() = Version::HTTP_11;
    if request.uri().scheme().is_some() {
        if let Some(path) = request.uri().path_and_query().cloned() {
            *request.uri_mut() = Uri::from(path);
        }
    }
    request
}

/// What a failed exchange means: on a new TLS connection, a TLS alert is the server refusing
/// the handshake (in TLS 1.3 a client certificate is judged after the client has finished
/// its side, so the refusal arrives with the first read); an HTTP/2 refusal is retryable.
fn exchange_error(error: hyper::Error, reused: bool) -> SendError {
    if !reused {
        if let Some(alert) = tls_failure(&error) {
            return SendError::Connect(ConnectError::Tls(std::io::Error::other(alert)));
        }
    }
    if refused(&error) {
        SendError::Refused(error)
    } else {
        SendError::Exchange(error)
    }
}

/// The TLS error (an alert received or sent) somewhere in `error`'s causes.
fn tls_failure(error: &hyper::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(cause) = source {
        let inner = cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|e| e.downcast_ref::<rustls::Error>());
        if let Some(tls) = inner.or_else(|| cause.downcast_ref::<rustls::Error>()) {
            return Some(tls.to_string());
        }
        source = cause.source();
    }
    None
}

/// Whether an HTTP/2 stream error says the server never processed the stream: it refused
/// it, or it was above the last stream id of a graceful `GOAWAY` (RFC 9113 section 6.8).
/// A `GOAWAY` with an error code does not count: streams below its last id may have run.
fn refused(error: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(h2) = cause.downcast_ref::<h2::Error>() {
            return h2.is_remote()
                && match h2.reason() {
                    Some(h2::Reason::REFUSED_STREAM) => h2.is_reset(),
                    Some(h2::Reason::NO_ERROR) => h2.is_go_away(),
                    _ => false,
                };
        }
        source = cause.source();
    }
    false
}

/// Drops this worker's expired connections, and every pool not in `live` (the pool ids of
/// the upstreams this worker still serves).
pub fn sweep(live: &[u64]) {
    let now = Instant::now();
    CONNS.with(|conns| {
        let mut conns = conns.borrow_mut();
        conns.retain(|(id, _), target| {
            target
                .idle
                .retain(|c| !c.sender.is_closed() && now.saturating_duration_since(c.since) < c.idle_timeout);
            target.shared.retain(|c| !c.expired(now));
            // A target whose connection is being opened keeps its entry: the requests
            // waiting on its `opening` lock must find the connection where they look.
            let opening = Arc::strong_count(&target.opening) > 1;
            live.contains(id) && (opening || !(target.idle.is_empty() && target.shared.is_empty()))
        });
    });
}

/// One stream's place on a shared HTTP/2 connection, given back when dropped.
struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a response body gives back when it ends.
enum Back {
    /// An HTTP/1.1 connection, to the idle list.
    Conn(Return),
    /// A stream slot on an HTTP/2 connection (held for its `Drop`).
    Stream { _slot: StreamSlot },
}

impl Back {
    fn give_back(self) {
        if let Back::Conn(conn) = self {
            conn.give_back();
        }
    }
}

/// The connection an exchange used, to give back when its response has been read.
struct Return {
    key: Key,
    sender: http1::SendRequest<RequestBody>,
    max_idle: usize,
    idle_timeout: Duration,
}

impl Return {
    fn give_back(self) {
        if self.sender.is_closed() {
            return;
        }
        let idle = Idle {
            sender: self.sender,
            since: Instant::now(),
            idle_timeout: self.idle_timeout,
        };
        // `try_with`: a body dropped while the thread is being torn down has no pool to go to.
        let _ = CONNS.try_with(|conns| {
            let mut conns = conns.borrow_mut();
            let list = &mut conns.entry(self.key).or_default().idle;
            if list.len() < self.max_idle {
                list.push(idle);
            }
        });
    }
}

/// An upstream response body that gives its connection (or stream slot) back once read to
/// the end.
pub struct PooledBody {
    body: Incoming,
    back: Option<Back>,
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                if let Some(back) = self.back.take() {
                    back.give_back();
                }
            }
            // A broken body leaves a connection nobody can reuse (an HTTP/2 stream's slot
            // is freed by the drop).
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body with nothing left (a HEAD, 204 or 304 answer, or one whose last frame was
        // taken without polling for the end) can give its connection back.
        if let Some(back) = self.back.take() {
            if self.body.is_end_stream() {
                back.give_back();
            }
        }
    }
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody")
            .field("pooled", &self.back.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};

    use hyper_util::rt::TokioIo;

    use super::*;

    /// An origin on loopback answering `ok` over keep-alive; counts the connections it took.
    async fn origin() -> (TargetAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let answer = hyper::service::service_fn(|_| async {
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), answer),
                );
            }
        });
        (TargetAddr::new(&addr, "127.0.0.1", None), accepted)
    }

    async fn get(pool: &Pool, target: &TargetAddr) {
        let request = Request::builder()
            .uri("/")
            .header("host", "origin")
            .body(RequestBody::empty())
            .unwrap();
        let response = pool.send(0, target, request).await.unwrap();
        assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "ok");
    }

    fn idle(pool: &Pool) -> usize {
        CONNS.with(|conns| conns.borrow().get(&(pool.id(), 0)).map_or(0, |t| t.idle.len()))
    }

    const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

    fn http1() -> Arc<Transport> {
        Arc::new(Transport::cleartext_http1(Duration::from_secs(5)))
    }

    #[tokio::test]
    async fn a_connection_is_reused_until_its_idle_timeout_then_swept() {
        let (target, accepted) = origin().await;
        let pool = Pool::new(4, IDLE_TIMEOUT, http1());
        get(&pool, &target).await;
        get(&pool, &target).await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "the second request reused the first connection"
        );
        assert_eq!(idle(&pool), 1, "given back when its body ended");

        sweep(&[pool.id()]);
        assert_eq!(idle(&pool), 1, "a fresh connection survives the sweep");

        // Time moves only here: the connection has been idle past its timeout.
        tokio::time::pause();
        tokio::time::advance(IDLE_TIMEOUT + Duration::from_secs(1)).await;
        sweep(&[pool.id()]);
        assert_eq!(idle(&pool), 0, "the sweep dropped the expired connection");
        tokio::time::resume();
    }

    #[tokio::test]
    async fn checkout_skips_an_expired_connection_without_a_sweep() {
        let (target, accepted) = origin().await;
        let pool = Pool::new(4, IDLE_TIMEOUT, http1());
        get(&pool, &target).await;
        tokio::time::pause();
        tokio::time::advance(IDLE_TIMEOUT).await;
        tokio::time::resume();
        get(&pool, &target).await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "the expired connection was not used"
        );
        assert_eq!(idle(&pool), 1, "only the new connection is kept");
    }

    #[tokio::test]
    async fn the_sweep_drops_the_pools_of_upstreams_no_longer_served() {
        let (target, _) = origin().await;
        let kept = Pool::new(4, IDLE_TIMEOUT, http1());
        let gone = Pool::new(4, IDLE_TIMEOUT, http1());
        get(&kept, &target).await;
        get(&gone, &target).await;
        sweep(&[kept.id()]);
        assert_eq!((idle(&kept), idle(&gone)), (1, 0));
    }

    #[tokio::test]
    async fn idle_connections_per_target_are_capped() {
        let (target, accepted) = origin().await;
        let pool = Pool::new(2, IDLE_TIMEOUT, http1());
        // Three exchanges at once need three connections; only two are kept afterwards.
        tokio::join!(get(&pool, &target), get(&pool, &target), get(&pool, &target));
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        assert_eq!(idle(&pool), 2);
    }

    #[tokio::test]
    async fn the_sweep_keeps_a_target_whose_connection_is_being_opened() {
        let pool = Pool::new(2, IDLE_TIMEOUT, http1());
        let key = (pool.id(), 0);
        let present = || CONNS.with(|conns| conns.borrow().contains_key(&key));
        // A request holds the target's opening lock while its connection is made.
        let opening = with_target(key, |t| t.opening.clone());
        sweep(&[pool.id()]);
        assert!(
            present(),
            "the lock the waiting requests share survives the sweep"
        );
        drop(opening);
        sweep(&[pool.id()]);
        assert!(!present(), "an empty target is swept once nobody opens for it");
    }

    /// A loopback address whose accept queue is full: connections to it hang until their
    /// timeout (the listener, returned, must be kept).
    async fn unanswered() -> (TargetAddr, socket2::Socket, Vec<tokio::net::TcpStream>) {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into())
            .unwrap();
        socket.listen(0).unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        let mut held = Vec::new();
        for _ in 0..4 {
            if let Ok(Ok(stream)) =
                tokio::time::timeout(Duration::from_millis(100), tokio::net::TcpStream::connect(addr)).await
            {
                held.push(stream);
            }
        }
        (
            TargetAddr::new(&addr.to_string(), "127.0.0.1", None),
            socket,
            held,
        )
    }

    #[tokio::test]
    async fn requests_waiting_for_an_http2_connection_that_fails_fail_with_it() {
        let (target, _listener, _held) = unanswered().await;
        let transport = Arc::new(Transport::cleartext_h2c(Duration::from_millis(200)));
        let pool = Pool::new(4, IDLE_TIMEOUT, transport);
        let send = || {
            let request = Request::builder()
                .uri("/")
                .header("host", "origin")
                .body(RequestBody::empty())
                .unwrap();
            pool.send(0, &target, request)
        };
        let results = futures_util::future::join_all((0..4).map(|_| send())).await;
        let timed_out = results
            .iter()
            .filter(|r| matches!(r, Err(SendError::Connect(ConnectError::TimedOut))))
            .count();
        let waited = results
            .iter()
            .filter(|r| matches!(r, Err(SendError::Connect(ConnectError::Failed(_)))))
            .count();
        // One attempt timed out; the three that waited for it were not each tried in turn.
        assert_eq!((timed_out, waited), (1, 3), "{results:?}");
    }
}
