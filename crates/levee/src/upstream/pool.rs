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
