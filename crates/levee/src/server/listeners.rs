//! Binding every socket before anything serves: one `SO_REUSEPORT` socket per worker and
//! listener (or the ones a predecessor handed over), their TLS acceptors, and the admin socket.
//! A port conflict fails the start here, never a worker later.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use socket2::{Domain, Protocol, Socket, Type};
use tokio_rustls::TlsAcceptor;

use super::http3::QuicSocket;
use super::StartError;
use crate::config::spec::ListenerSpec;
use crate::config::Config;
use crate::restart::Inherited;
use crate::tls::ReloadingCert;

/// One worker's socket for one listener.
pub(super) struct ListenerSocket {
    pub name: Arc<str>,
    pub socket: TcpListener,
    /// Present when the listener terminates TLS.
    pub tls: Option<TlsAcceptor>,
    /// This worker's share of the listener's connection cap.
    pub max_connections: Option<usize>,
    /// This worker's UDP socket for HTTP/3, when the listener serves it.
    pub quic: Option<QuicSocket>,
    /// `Alt-Svc` for the listener's HTTP/1.1 and HTTP/2 answers, when it serves HTTP/3.
    pub alt_svc: Option<HeaderValue>,
}

/// The data-plane sockets by listener name, and the admin socket.
pub(super) type Handoff = (Vec<(Arc<str>, TcpListener)>, Option<TcpListener>);

/// Every socket the gateway serves on, bound.
pub(super) struct Bound {
    /// Each worker's sockets, indexed by worker.
    pub per_worker: Vec<Vec<ListenerSocket>>,
    /// Every listener's name and bound address.
    pub listeners: Vec<(Arc<str>, SocketAddr)>,
    /// The TLS certificates to watch for changes, each with its check interval.
    pub certs: Vec<(Arc<ReloadingCert>, Duration)>,
    pub admin: Option<TcpListener>,
    /// Copies of every socket, for a successor (zero-downtime restart).
    pub handoff: Handoff,
}

/// Binds every listener of `config` for `workers` workers, and the admin listener, taking
/// inherited sockets where their listener names and addresses match.
pub(super) fn bind_all(
    config: &Config,
    workers: usize,
    mut inherited: Option<&mut Inherited>,
) -> Result<Bound, StartError> {
    let mut bound = Bound {
        per_worker: (0..workers).map(|_| Vec::new()).collect(),
        listeners: Vec::new(),
        certs: Vec::new(),
        admin: None,
        handoff: (Vec::new(), None),
    };
    for spec in &config.listeners {
        let taken = inherited
            .as_mut()
            .and_then(|i| i.listeners.remove(&*spec.name))
            .filter(|sockets| sockets.iter().all(|s| same_address(s, spec.bind)))
            .unwrap_or_default();
        bind_listener(spec, workers, taken, &mut bound)?;
    }
    let inherited_admin = inherited
        .and_then(|i| i.admin.take())
        .filter(|s| config.admin.as_ref().is_some_and(|a| same_address(s, a.bind)));
    bound.admin = bind_admin(config, inherited_admin)?;
    bound.handoff.1 = bound.admin.as_ref().and_then(|s| s.try_clone().ok());
    Ok(bound)
}

/// Binds one listener (or takes its inherited sockets) and deals its sockets to the workers.
fn bind_listener(
    spec: &ListenerSpec,
    workers: usize,
    taken: Vec<TcpListener>,
    bound: &mut Bound,
) -> Result<(), StartError> {
    let cert = match &spec.tls {
        Some(tls) => {
            let cert =
                Arc::new(
                    ReloadingCert::load(&tls.cert, &tls.key).map_err(|message| StartError::Tls {
                        name: spec.name.to_string(),
                        message,
                    })?,
                );
            bound.certs.push((cert.clone(), tls.reload_interval));
            Some(cert)
        }
        None => None,
    };
    let acceptor = cert.as_ref().map(|c| TlsAcceptor::from(c.server_config()));
    let quic_tls = match (&cert, spec.http3) {
        (Some(cert), true) => Some(Arc::new(cert.quic_server_config().map_err(|e| {
            StartError::Tls {
                name: spec.name.to_string(),
                message: e.to_string(),
            }
        })?)),
        _ => None,
    };
    let bind_err = |source| StartError::Bind {
        name: spec.name.to_string(),
        addr: spec.bind,
        source,
    };
    let mut per_worker = taken;
    if per_worker.is_empty() {
        per_worker.push(bind_reuseport(spec.bind).map_err(bind_err)?);
    }
    let actual = per_worker
        .first()
        .map(|s| s.local_addr())
        .transpose()
        .map_err(bind_err)?
        .unwrap_or(spec.bind);
    bound.listeners.push((spec.name.clone(), actual));
    // One socket per worker: more workers than sockets join the same port group.
    while per_worker.len() < workers {
        per_worker.push(bind_reuseport(actual).map_err(bind_err)?);
    }
    for socket in &per_worker {
        bound
            .handoff
            .0
            .push((spec.name.clone(), socket.try_clone().map_err(bind_err)?));
    }
    let listener_cap = spec.max_connections.map(|m| m.div_ceil(workers).max(1));
    let alt_svc = quic_tls
        .as_ref()
        .and_then(|_| super::http3::alt_svc(actual.port()));
    // Fewer workers than inherited sockets: some workers serve more than one.
    let assigned = per_worker
        .into_iter()
        .enumerate()
        .map(|(i, socket)| (i % workers, socket));
    for (worker, socket) in assigned {
        let Some(slot) = bound.per_worker.get_mut(worker) else {
            continue;
        };
        // HTTP/3 sockets are never handed to a successor: a restart starts them afresh.
        let quic = match &quic_tls {
            Some(tls) => Some(QuicSocket {
                socket: super::http3::bind_udp(actual).map_err(bind_err)?,
                tls: tls.clone(),
            }),
            None => None,
        };
        // A worker-local copy of the name: it is cloned per request for the logs.
        slot.push(ListenerSocket {
            name: Arc::from(&*spec.name),
            socket,
            tls: acceptor.clone(),
            max_connections: listener_cap,
            quic,
            alt_svc: alt_svc.clone(),
        });
    }
    Ok(())
}

/// The admin socket: the inherited one, else a new one where the config says (none without
/// an `admin` block).
fn bind_admin(config: &Config, inherited: Option<TcpListener>) -> Result<Option<TcpListener>, StartError> {
    let socket = match &config.admin {
        Some(_) if inherited.is_some() => inherited,
        Some(admin) => {
            let bind_err = |source| StartError::Bind {
                name: "admin".into(),
                addr: admin.bind,
                source,
            };
            let listener = TcpListener::bind(admin.bind).map_err(bind_err)?;
            listener.set_nonblocking(true).map_err(bind_err)?;
            Some(listener)
        }
        None => None,
    };
    let addr = socket.as_ref().and_then(|l| l.local_addr().ok());
    if let (Some(addr), Some(admin)) = (addr, &config.admin) {
        if !addr.ip().is_loopback() && admin.token.is_none() {
            tracing::warn!(%addr, "the admin API is reachable beyond loopback without a token: set admin.token_env");
        }
    }
    Ok(socket)
}

/// Whether inherited `socket` is bound where the config says (any port when it says 0).
fn same_address(socket: &TcpListener, wanted: SocketAddr) -> bool {
    socket.local_addr().is_ok_and(|actual| {
        actual.ip() == wanted.ip() && (wanted.port() == 0 || actual.port() == wanted.port())
    })
}

fn bind_reuseport(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}
