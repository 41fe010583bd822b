//! Accepting client connections on one worker's socket: the process-wide and per-listener
//! connection caps (a connection past them gets a canned 503), the first-byte wait and the
//! TLS handshake, then HTTP/1 or HTTP/2 on the connection's own task, with every request
//! handed to [`pipeline::handle`].

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::client_body::ClientBody;
use crate::gateway::{LoadPermit, WorkerContext};
use crate::pipeline;
use crate::state::{ConnInfo, SharedState};
use crate::strict::HeadGuard;

use super::bare_errors::ErrorRewriter;
use super::lifetime::{Drain, IdleWatch, Verdict};

/// What the accept loops of one worker share.
#[derive(Clone)]
pub(super) struct Serving {
    /// The worker's view of the running config, swapped whole by a reload.
    pub worker: Arc<ArcSwap<WorkerContext>>,
    pub builder: auto::Builder<TokioExecutor>,
    /// Tells open connections to finish when the worker drains.
    pub drain: Arc<Drain>,
    pub state: Arc<SharedState>,
}

/// A connection's places under the process-wide cap and its listener's cap, given back
/// when it ends.
pub(super) type Permits = (LoadPermit, Option<LoadPermit>);

/// Accepts connections on `listener` (named `name`, announcing HTTP/3 with `alt_svc`, with
/// TLS when `tls` is given, at most `max_connections` open on this worker) until `shutdown`
/// turns true.
pub(super) async fn accept_loop(
    listener: TcpListener,
    (name, alt_svc): (Arc<str>, Option<HeaderValue>),
    tls: Option<TlsAcceptor>,
    max_connections: Option<usize>,
    serving: Serving,
    mut shutdown: watch::Receiver<bool>,
) {
    // This worker's open connections on this listener.
    let listener_connections: Arc<AtomicUsize> = Arc::default();
    let globals = &serving.state.metrics.globals;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // Out of file descriptors or similar: back off briefly instead of spinning.
                tracing::warn!(%error, listener = %name, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        globals.connections_accepted.fetch_add(1, Ordering::Relaxed);
        let context = serving.worker.load_full();
        let Some(permits) = take_permits(&context, &listener_connections, max_connections) else {
            globals.shed.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(refuse_politely(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            info: Arc::new(ConnInfo::new(peer, name.clone(), tls.is_some())),
            worker: serving.worker.clone(),
            state: serving.state.clone(),
            builder: serving.builder.clone(),
            alt_svc: alt_svc.clone(),
            // The drain waits for every watcher (each bounded by the timeouts below).
            drain: serving.drain.watcher(),
            _permits: permits,
        };
        // Telling HTTP/1 from HTTP/2, and the TLS handshake, are bounded like a request
        // head, so a slow or silent client never holds a place forever.
        let timeout = context.limits.header_read_timeout;
        match &tls {
            None => tokio::spawn(connection.serve_plain(stream, timeout)),
            Some(acceptor) => tokio::spawn(connection.serve_tls(stream, acceptor.clone(), timeout)),
        };
    }
}

/// A place under the process-wide connection cap and, when the listener has one, under its
/// cap; `None` when either is full.
pub(super) fn take_permits(
    context: &WorkerContext,
    listener_connections: &Arc<AtomicUsize>,
    listener_cap: Option<usize>,
) -> Option<Permits> {
    let process = LoadPermit::try_take(&context.connections, context.limits.max_connections)?;
    match listener_cap {
        Some(cap) => LoadPermit::try_take(listener_connections, cap).map(|own| (process, Some(own))),
        None => Some((process, None)),
    }
}

/// An accepted connection with what its task needs to serve it.
struct Connection {
    info: Arc<ConnInfo>,
    worker: Arc<ArcSwap<WorkerContext>>,
    state: Arc<SharedState>,
    builder: auto::Builder<TokioExecutor>,
    alt_svc: Option<HeaderValue>,
    drain: watch::Receiver<()>,
    _permits: Permits,
}

impl Connection {
    /// Waits (at most `timeout`) for the first byte, then serves HTTP/1 or HTTP/2.
    async fn serve_plain(self, stream: TcpStream, timeout: Duration) {
        let mut probe = [0u8; 1];
        match tokio::time::timeout(timeout, stream.peek(&mut probe)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
        self.serve(stream).await;
    }

    /// Completes the TLS handshake (within `timeout`), then serves HTTP/1 or HTTP/2.
    async fn serve_tls(self, stream: TcpStream, acceptor: TlsAcceptor, timeout: Duration) {
        let peer = self.info.peer;
        let stream = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                tracing::debug!(%error, %peer, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        };
        self.serve(stream).await;
    }

    /// Serves requests on the connection until it ends or the drain closes it.
    async fn serve<S>(self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            info,
            worker,
            state,
            builder,
            alt_svc,
            mut drain,
            _permits,
        } = self;
        let peer = info.peer;
        let mut watch = IdleWatch::new(info.clone(), &worker.load().limits);
        // Each request takes the worker's context as it is when the request starts, and
        // keeps it to the end: a reload never changes the rules under a running request.
        let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let context = worker.load_full();
            let info = info.clone();
            let state = state.clone();
            let alt_svc = alt_svc.clone();
            // Boxed: the request's future holds every stage's state (several KiB), and
            // hyper moves the future it is given (into each HTTP/2 stream's task, into the
            // HTTP/1 dispatcher); a box makes each move a pointer's.
            Box::pin(async move {
                let http1 = request.version() < http::Version::HTTP_2;
                let mut response = pipeline::handle(&context, &info, request.map(ClientBody::Hyper)).await;
                // While draining, each HTTP/1 answer closes its connection (HTTP/2 gets a
                // GOAWAY from the graceful shutdown): a keep-alive client then opens a new
                // connection, to a successor or another instance, instead of racing the
                // final close of an idle connection with its next request.
                if http1
                    && response.status() != http::StatusCode::SWITCHING_PROTOCOLS
                    && state.draining.load(Ordering::Relaxed)
                {
                    response
                        .headers_mut()
                        .insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
                }
                if let Some(alt_svc) = alt_svc {
                    response.headers_mut().insert(http::header::ALT_SVC, alt_svc);
                }
                Ok::<_, Infallible>(response)
            })
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(ErrorRewriter::new(HeadGuard::new(stream))), service)
            .into_owned();
        tokio::pin!(connection);
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + watch.tick, watch.tick);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut drained = false;
        let ended = loop {
            tokio::select! {
                ended = connection.as_mut() => break ended,
                // The sender gone is a drain too (the worker is stopping).
                _ = drain.changed(), if !drained => {
                    drained = true;
                    watch.draining();
                    connection.as_mut().graceful_shutdown();
                }
                now = ticks.tick() => match watch.check(now) {
                    Verdict::Serve => {}
                    Verdict::Finish => connection.as_mut().graceful_shutdown(),
                    Verdict::Drop => {
                        tracing::debug!(%peer, "client connection closed: no request in time, or idle");
                        break Ok(());
                    }
                },
            }
        };
        if let Err(error) = ended {
            tracing::debug!(%error, %peer, "client connection ended with an error");
        }
    }
}

/// Answers a connection over the cap with a canned 503 and closes it without parsing the
/// request: the client learns why instead of seeing a reset, and the gateway spends almost
/// nothing (what the client sent is read and discarded, for at most a second).
async fn refuse_politely(mut stream: TcpStream) {
    use tokio::io::AsyncWriteExt;
    let response = crate::edge::connection_refusal();
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(&response).await;
        let _ = stream.shutdown().await;
        // Read what the client sent until it closes: closing with unread data would send a
        // reset that can destroy the 503 before the client reads it.
        let mut sink = [0u8; 4096];
        let mut total = 0usize;
        while let Ok(n) = tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await {
            total += n;
            if n == 0 || total > 64 * 1024 {
                break;
            }
        }
    })
    .await;
}
