//! Each worker's own keep-alive connections to its upstreams' targets.
//!
//! Why not `hyper-util`'s pooled client: it is built to be shared between threads, so every
//! request takes its pool's mutex twice (checkout and checkin) and spawns a task that waits
//! for the connection to become idle again. Levee's workers never share connections (each
//! runs its own single-threaded runtime, as nginx's workers do), so the pool here is a plain
//! per-thread map: taking and returning a connection is a `Vec` pop and push on the worker's
//! own thread, with no lock, no channel and no task per request.
//!
//! Life of a connection:
//! - **checkout**: the most recently returned idle connection of the target (its socket is
//!   the warmest), skipping any that closed or sat idle longer than the upstream's
//!   `pool_idle_timeout`, and waiting for it to be ready (the dispatcher may not have
//!   finished the previous exchange when it was returned);
//! - **new**: a TCP connect bounded by `connect_timeout` (`TCP_NODELAY` on), an HTTP/1.1
//!   handshake, and the connection's driver spawned on the worker's runtime (with upgrades,
//!   so a `101 Switching Protocols` can become a tunnel);
//! - **return**: when the response body has been read to its end ([`PooledBody`] sees the
//!   last frame, or an empty body is dropped), the connection goes back to the pool, unless
//!   the pool already holds `pool_max_idle_per_target` idle ones for the target. A body
//!   dropped before its end closes the connection: what is left of that response would
//!   poison the next one.
//! - A request that finds a reused connection closed before anything was written (the
//!   upstream's keep-alive timer won the race) is sent again once on a new connection, as
//!   `hyper-util`'s `retry_canceled_requests` did.
//!
//! Memory is bounded: idle connections per (upstream, target) are capped, and each worker
//! sweeps out expired ones (and the pools of upstreams a reload removed) every few seconds.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

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

thread_local! {
    /// (pool id, target index) -> idle connections, the most recently returned last.
    static IDLE: RefCell<HashMap<Key, Vec<Idle>, foldhash::fast::RandomState>> =
        RefCell::new(HashMap::default());
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One upstream's pool settings in a worker, and the id its connections are kept under.
#[derive(Debug)]
pub struct Pool {
    id: u64,
    max_idle: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
}

/// Why no connection could be had.
#[derive(Debug)]
pub enum ConnectError {
    /// Refused, unreachable, or the name did not resolve.
    Failed(std::io::Error),
    TimedOut,
    /// The HTTP/1.1 handshake failed (it does no I/O, so this is rare).
    Handshake(hyper::Error),
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum SendError {
    Connect(ConnectError),
    /// The connection failed or closed after (part of) the request may have been sent.
    Exchange(hyper::Error),
}

impl Pool {
    /// The id this pool's connections are kept under in each worker.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn new(max_idle: usize, idle_timeout: Duration, connect_timeout: Duration) -> Pool {
        Pool {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            max_idle,
            idle_timeout,
            connect_timeout,
        }
    }

    /// Sends `request` (origin-form URI, Host set) to target `index` at `addr`, on an idle
    /// connection or a new one, and returns the response whose body gives the connection
    /// back when it ends.
    pub async fn send(
        &self,
        index: usize,
        addr: &Resolved,
        request: Request<RequestBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        let key = (self.id, index);
        let (mut sender, reused) = match self.checkout(key).await {
            Some(sender) => (sender, true),
            None => (self.connect(addr).await.map_err(SendError::Connect)?, false),
        };
        let result = sender.try_send_request(request).await;
        let response = match result {
            Ok(response) => response,
            Err(mut error) => match error.take_message() {
                // Nothing was written on a connection that had closed: once more, afresh.
                Some(request) if reused => {
                    sender = self.connect(addr).await.map_err(SendError::Connect)?;
                    sender.send_request(request).await.map_err(SendError::Exchange)?
                }
                _ => return Err(SendError::Exchange(error.into_error())),
            },
        };
        // A connection switched to another protocol is the tunnel's now, never the pool's.
        let back = (response.status() != StatusCode::SWITCHING_PROTOCOLS).then(|| Return {
            key,
            sender,
            max_idle: self.max_idle,
            idle_timeout: self.idle_timeout,
        });
        Ok(response.map(|body| PooledBody { body, back }))
    }

    async fn checkout(&self, key: Key) -> Option<http1::SendRequest<RequestBody>> {
        loop {
            let idle = IDLE.with(|pools| pools.borrow_mut().get_mut(&key).and_then(Vec::pop))?;
            if idle.sender.is_closed() || idle.since.elapsed() >= self.idle_timeout {
                continue;
            }
            let mut sender = idle.sender;
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    async fn connect(&self, addr: &Resolved) -> Result<http1::SendRequest<RequestBody>, ConnectError> {
        let stream = tokio::time::timeout(self.connect_timeout, addr.connect())
            .await
            .map_err(|_| ConnectError::TimedOut)?
            .map_err(ConnectError::Failed)?;
        // Small requests and answers go out at once rather than waiting for an ACK.
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(ConnectError::Handshake)?;
        // The driver ends when the connection closes; its error was already seen by the
        // exchange it broke (or no exchange was running).
        tokio::spawn(async move {
            let _ = connection.with_upgrades().await;
        });
        Ok(sender)
    }
}

/// A target's address: parsed once when it is a socket address, resolved at each new
/// connection when it is a name (so a DNS change is followed).
#[derive(Debug, Clone)]
pub enum Resolved {
    Addr(SocketAddr),
    Name(String),
}

impl Resolved {
    pub fn new(addr: &str) -> Resolved {
        addr.parse()
            .map_or_else(|_| Resolved::Name(addr.to_owned()), Resolved::Addr)
    }

    async fn connect(&self) -> std::io::Result<TcpStream> {
        match self {
            Resolved::Addr(addr) => TcpStream::connect(addr).await,
            Resolved::Name(name) => TcpStream::connect(name.as_str()).await,
        }
    }
}

/// Drops this worker's expired idle connections, and every pool not in `live` (the pool
/// ids of the upstreams this worker still serves).
pub fn sweep(live: &[u64]) {
    let now = Instant::now();
    IDLE.with(|pools| {
        let mut pools = pools.borrow_mut();
        pools.retain(|(id, _), idle| {
            idle.retain(|c| !c.sender.is_closed() && now.saturating_duration_since(c.since) < c.idle_timeout);
            live.contains(id) && !idle.is_empty()
        });
    });
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
        let _ = IDLE.try_with(|pools| {
            let mut pools = pools.borrow_mut();
            let list = pools.entry(self.key).or_default();
            if list.len() < self.max_idle {
                list.push(idle);
            }
        });
    }
}

/// An upstream response body that returns its connection to the pool once read to the end.
pub struct PooledBody {
    body: Incoming,
    back: Option<Return>,
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
            // A broken body leaves a connection nobody can reuse.
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
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};

    use super::*;

    /// An origin on loopback answering `ok` over keep-alive; counts the connections it took.
    async fn origin() -> (Resolved, Arc<AtomicUsize>) {
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
        (Resolved::new(&addr), accepted)
    }

    async fn get(pool: &Pool, target: &Resolved) {
        let request = Request::builder()
            .uri("/")
            .header("host", "origin")
            .body(RequestBody::empty())
            .unwrap();
        let response = pool.send(0, target, request).await.unwrap();
        assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "ok");
    }

    fn idle(pool: &Pool) -> usize {
        IDLE.with(|pools| pools.borrow().get(&(pool.id(), 0)).map_or(0, Vec::len))
    }

    const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn a_connection_is_reused_until_its_idle_timeout_then_swept() {
        let (target, accepted) = origin().await;
        let pool = Pool::new(4, IDLE_TIMEOUT, Duration::from_secs(5));
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
        let pool = Pool::new(4, IDLE_TIMEOUT, Duration::from_secs(5));
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
        let kept = Pool::new(4, IDLE_TIMEOUT, Duration::from_secs(5));
        let gone = Pool::new(4, IDLE_TIMEOUT, Duration::from_secs(5));
        get(&kept, &target).await;
        get(&gone, &target).await;
        sweep(&[kept.id()]);
        assert_eq!((idle(&kept), idle(&gone)), (1, 0));
    }

    #[tokio::test]
    async fn idle_connections_per_target_are_capped() {
        let (target, accepted) = origin().await;
        let pool = Pool::new(2, IDLE_TIMEOUT, Duration::from_secs(5));
        // Three exchanges at once need three connections; only two are kept afterwards.
        tokio::join!(get(&pool, &target), get(&pool, &target), get(&pool, &target));
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        assert_eq!(idle(&pool), 2);
    }
}
