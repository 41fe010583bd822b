//! HTTP/3 for clients: QUIC (quinn) and HTTP/3 framing (h3) on a TLS listener's port over
//! UDP, each request handed to the same pipeline as HTTP/1.1 and HTTP/2 (ADR 0017).
//!
//! Like the TCP sockets, each worker has its own UDP socket in the port's `SO_REUSEPORT`
//! group and serves the connections the kernel gives it on its own thread. The kernel picks
//! the socket by the packet's addresses, so a client whose address changes (QUIC connection
//! migration) would land on another worker that does not know its connection: migration is
//! turned off, and such a client reconnects.
//!
//! A connection gets the same bounds as a TCP one (`lifetime`): the handshake within
//! `header_read_timeout`, a first request within it too, `http2_idle_timeout` with no
//! request in flight (then a GOAWAY), the connection caps, and QUIC keep-alives every
//! `http2_keepalive_interval` with an idle timeout of that plus `http2_keepalive_timeout`,
//! so a vanished client is noticed as a silent HTTP/2 one is. The drain sends every
//! connection a GOAWAY, refuses new ones, and waits for the requests in flight.

use std::net::{SocketAddr, UdpSocket};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use h3::server::{RequestResolver, RequestStream};
use http::{HeaderValue, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;

use super::accept::{take_permits, Permits, Serving};
use super::lifetime::{IdleWatch, Verdict};
use crate::client_body::{BoxError, ClientBody};
use crate::config::spec::LimitsSpec;
use crate::pipeline;
use crate::state::ConnInfo;

/// One worker's UDP socket for a listener's HTTP/3, and the TLS config for it.
pub(super) struct QuicSocket {
    pub socket: UdpSocket,
    pub tls: Arc<rustls::ServerConfig>,
}

/// Binds a UDP socket on `addr` in the port's `SO_REUSEPORT` group.
pub(super) fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// The `Alt-Svc` value announcing HTTP/3 on `port` of the same host.
pub(super) fn alt_svc(port: u16) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("h3=\":{port}\"; ma=86400")).ok()
}

type H3Connection = h3::server::Connection<h3_quinn::Connection, Bytes>;

/// QUIC transport limits from the gateway's: keep-alives and the idle timeout as for HTTP/2.
fn quinn_config(tls: Arc<rustls::ServerConfig>, limits: &LimitsSpec) -> Result<quinn::ServerConfig, String> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    let idle = limits
        .http2_keepalive_interval
        .map_or(Duration::from_secs(30), |every| {
            every + limits.http2_keepalive_timeout
        });
    transport
        .keep_alive_interval(limits.http2_keepalive_interval)
        .max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok())
        .max_concurrent_bidi_streams(100u32.into());
    config.transport_config(Arc::new(transport));
    config.migration(false);
    Ok(config)
}

/// Accepts QUIC connections on `socket` for listener `name` until `shutdown`, then lets the
/// drain finish them.
pub(super) async fn serve(
    socket: QuicSocket,
    name: Arc<str>,
    max_connections: Option<usize>,
    serving: Serving,
    mut shutdown: watch::Receiver<bool>,
) {
    let limits = serving.worker.load().limits;
    let endpoint = quinn_config(socket.tls, &limits).and_then(|config| {
        quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(config),
            socket.socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|e| e.to_string())
    });
    let endpoint = match endpoint {
        Ok(endpoint) => endpoint,
        Err(error) => {
            tracing::error!(%error, listener = %name, "HTTP/3 cannot be served");
            return;
        }
    };
    let listener_connections: Arc<AtomicUsize> = Arc::default();
    loop {
        let incoming = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            incoming = endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else { break };
        let context = serving.worker.load_full();
        let Some(permits) = take_permits(&context, &listener_connections, max_connections) else {
            serving.state.metrics.globals.shed.fetch_add(1, Ordering::Relaxed);
            incoming.refuse();
            continue;
        };
        let connection = QuicConnection {
            name: name.clone(),
            serving: serving.clone(),
            drain: serving.drain.watcher(),
            _permits: permits,
        };
        tokio::spawn(connection.serve(incoming));
    }
    // No new connections while the open ones finish.
    endpoint.set_server_config(None);
}

struct QuicConnection {
    name: Arc<str>,
    serving: Serving,
    drain: watch::Receiver<()>,
    _permits: Permits,
}

impl QuicConnection {
    async fn serve(mut self, incoming: quinn::Incoming) {
        let limits = self.serving.worker.load().limits;
        let Ok(Ok(conn)) = tokio::time::timeout(limits.header_read_timeout, incoming).await else {
            return;
        };
        let info = Arc::new(ConnInfo::new(conn.remote_address(), self.name.clone(), true));
        let mut builder = h3::server::builder();
        builder.max_field_section_size(u64::try_from(limits.max_header_bytes).unwrap_or(u64::MAX));
        let Ok(mut h3) = builder.build(h3_quinn::Connection::new(conn.clone())).await else {
            return;
        };
        let mut watch = IdleWatch::new(info.clone(), &limits);
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + watch.tick, watch.tick);
        let mut requests = tokio::task::JoinSet::new();
        let (mut drained, mut finishing) = (false, false);
        loop {
            tokio::select! {
                accepted = h3.accept() => match accepted {
                    Ok(Some(resolver)) => {
                        requests.spawn(serve_request(resolver, info.clone(), self.serving.clone()));
                    }
                    Ok(None) | Err(_) => break,
                },
                Some(_) = requests.join_next(), if !requests.is_empty() => {}
                _ = self.drain.changed(), if !drained => {
                    drained = true;
                    watch.draining();
                    finishing = goaway(&mut h3).await;
                }
                now = ticks.tick() => match watch.check(now) {
                    Verdict::Serve => {}
                    Verdict::Finish => finishing = goaway(&mut h3).await,
                    Verdict::Drop => break,
                },
            }
            if finishing && requests.is_empty() {
                break;
            }
        }
        // The answers' last packets get a few round trips to be acknowledged before the
        // connection closes (dropping it sends CONNECTION_CLOSE at once).
        tokio::time::sleep((conn.rtt() * 3).min(Duration::from_millis(200))).await;
    }
}

/// Sends a GOAWAY: requests already taken finish, later ones are refused (the client
/// retries them on a new connection). Returns true: the connection is finishing.
async fn goaway(h3: &mut H3Connection) -> bool {
    let _ = h3.shutdown(1).await;
    true
}

/// One HTTP/3 request through the pipeline, its answer streamed back.
async fn serve_request(
    resolver: RequestResolver<h3_quinn::Connection, Bytes>,
    info: Arc<ConnInfo>,
    serving: Serving,
) {
    let context = serving.worker.load_full();
    let resolved = tokio::time::timeout(context.limits.header_read_timeout, resolver.resolve_request()).await;
    let Ok(Ok((request, stream))) = resolved else {
        return;
    };
    let (mut send, recv) = stream.split();
    let request = request.map(|()| ClientBody::boxed(H3Body::new(recv)));
    let response = pipeline::handle(&context, &info, request).await;
    let (mut parts, mut body) = response.into_parts();
    // Connection-specific headers do not exist in HTTP/3 (RFC 9114 section 4.2).
    crate::headers::remove_hop_by_hop(&mut parts.headers, false);
    if send.send_response(Response::from_parts(parts, ())).await.is_err() {
        return;
    }
    while let Some(frame) = body.frame().await {
        let sent = match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => send.send_data(data).await,
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => send.send_trailers(trailers).await,
                    Err(_) => Ok(()),
                },
            },
            Err(_) => {
                send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                return;
            }
        };
        if sent.is_err() {
            return;
        }
    }
    let _ = send.finish().await;
}

/// An HTTP/3 request body: its data, then its trailers.
struct H3Body {
    stream: RequestStream<h3_quinn::RecvStream, Bytes>,
    data_done: bool,
    done: bool,
}

impl H3Body {
    fn new(stream: RequestStream<h3_quinn::RecvStream, Bytes>) -> H3Body {
        H3Body {
            stream,
            data_done: false,
            done: false,
        }
    }
}

impl Body for H3Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if !self.data_done {
            match ready!(self.stream.poll_recv_data(cx)) {
                Ok(Some(mut data)) => {
                    let bytes = data.copy_to_bytes(data.remaining());
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                Ok(None) => self.data_done = true,
                Err(error) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(Box::new(error))));
                }
            }
        }
        let trailers = ready!(self.stream.poll_recv_trailers(cx));
        self.done = true;
        Poll::Ready(match trailers {
            Ok(Some(trailers)) => Some(Ok(Frame::trailers(trailers))),
            Ok(None) => None,
            Err(error) => Some(Err(Box::new(error))),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
