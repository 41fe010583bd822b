//! Listening, worker threads and graceful shutdown.
//!
//! Levee runs one single-threaded event loop per core, each with its own `SO_REUSEPORT`
//! listening socket, its own upstream connection pools and its own metrics shard: the shape
//! of nginx and Envoy workers. The kernel spreads new connections across the sockets, and a
//! request never touches another core's state (see `docs/adr/0001-runtime-and-http-stack.md`
//! for the measurements behind this choice).
//!
//! Shutdown: readiness turns to 503, every worker stops accepting, open connections are told
//! to finish (HTTP/1 closes after the response in flight, HTTP/2 sends GOAWAY), and the
//! process waits up to the grace period for them.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::strict::HeadGuard;
use crate::tls::ReloadingCert;

use crate::admin;
use crate::config::Config;
use crate::gateway::{Gateway, LoadPermit, WorkerContext};
use crate::observability::access_log::AccessLog;
use crate::observability::call_log::{CallLog, Retention, SqliteStore};
use crate::observability::metrics::{Gauge, Metrics};
use crate::observability::otlp::{ExportThread, Exporter};
use crate::observability::traces::{Sampler, Tracer};
use crate::pipeline;
use crate::record::Recorder;
use crate::reload::Reloader;
use crate::restart::Inherited;
use crate::upstream::WorkerUpstream;

/// One worker's socket for one listener.
struct ListenerSocket {
    name: Arc<str>,
    socket: std::net::TcpListener,
    /// Present when the listener terminates TLS.
    tls: Option<TlsAcceptor>,
    /// This worker's share of the listener's connection cap.
    max_connections: Option<usize>,
}

/// Who is on the other end of a client connection.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub listener: Arc<str>,
    /// The connection arrived over TLS.
    pub tls: bool,
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({name}): {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("listener {name}: {message}")]
    Tls { name: String, message: String },
    #[error("call log: {message}")]
    CallLog { message: String },
    #[error("SLO store: {message}")]
    SloStore { message: String },
    #[error("cannot start thread {name}: {source}")]
    Thread {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// State the admin API and the workers share.
#[derive(Debug)]
pub struct SharedState {
    pub metrics: Arc<Metrics>,
    pub draining: AtomicBool,
    /// The running config, replaced whole by a reload.
    pub gateway: ArcSwap<Gateway>,
    /// Announces each applied config to the workers and the control thread.
    pub gateway_tx: watch::Sender<Arc<Gateway>>,
    /// Each worker's view of the upstreams (its load signals: in flight, peak EWMA), indexed
    /// by worker, for the admin API. Breakers are in the shared `Upstream`.
    pub worker_upstreams: std::sync::Mutex<Vec<Vec<Arc<WorkerUpstream>>>>,
    /// The config version each worker serves, indexed by worker.
    pub worker_versions: Vec<AtomicU64>,
    /// A read connection to the call log, when there is one.
    pub calls: Option<std::sync::Mutex<SqliteStore>>,
    pub reloader: Reloader,
    /// SLOs, alerts and chaos experiments.
    pub slo: Arc<crate::slo::SloEngine>,
}

/// Every worker's view of `upstream` (one per worker that serves a config holding it).
fn worker_views<'a>(
    workers: &'a [Vec<Arc<WorkerUpstream>>],
    upstream: &'a Arc<crate::upstream::Upstream>,
) -> impl Iterator<Item = &'a Arc<WorkerUpstream>> + 'a {
    workers
        .iter()
        .filter_map(move |w| w.iter().find(|view| Arc::ptr_eq(view.shared(), upstream)))
}

impl SharedState {
    /// `GET /api/v1/upstreams`: every target's health, breaker state, requests in flight (summed over workers) and peak-EWMA latency (the highest).
    pub fn upstreams_view(&self) -> crate::admin::api::Upstreams {
        use crate::admin::api::{TargetView, UpstreamView, Upstreams};
        let workers = self.worker_upstreams.lock().unwrap_or_else(|p| p.into_inner());
        let now = tokio::time::Instant::now();
        let gateway = self.gateway.load();
        let upstreams = gateway
            .upstreams
            .iter()
            .map(|upstream| {
                let now_ms = crate::upstream::health::millis_since(upstream.epoch, now);
                let targets = upstream
                    .spec
                    .targets
                    .iter()
                    .enumerate()
                    .map(|(t, target)| {
                        let views: Vec<_> = worker_views(&workers, upstream)
                            .filter_map(|w| w.targets.get(t))
                            .collect();
                        let circuit = upstream.circuit(t);
                        let health = upstream.health.get(t);
                        TargetView {
                            addr: target.addr.to_string(),
                            weight: target.weight,
                            healthy: health.is_some_and(|h| h.usable(now_ms)),
                            health_check_passing: health.is_some_and(|h| h.healthy()),
                            ejected: health.is_some_and(|h| h.ejected(now_ms)),
                            circuit: circuit.name(),
                            inflight: views.iter().map(|v| v.inflight()).sum::<usize>(),
                            ewma_ms: views.iter().map(|v| v.ewma_ms()).fold(0.0, f64::max),
                        }
                    })
                    .collect();
                UpstreamView {
                    name: upstream.spec.name.to_string(),
                    inflight: upstream.inflight(),
                    max_concurrent: upstream.spec.max_concurrent,
                    targets,
                }
            })
            .collect();
        Upstreams { upstreams }
    }

    /// Gauges read from live state: in-flight requests per upstream and the breaker state per
    /// target (0 closed, 1 half-open, 2 open).
    pub fn gauges(&self) -> Vec<Gauge> {
        let mut gauges = Vec::new();
        let gateway = self.gateway.load();
        for upstream in &gateway.upstreams {
            gauges.push(Gauge {
                name: "levee_inflight_requests",
                help: "Requests in flight to an upstream (what its bulkhead counts).",
                labels: vec![("upstream", upstream.spec.name.to_string())],
                value: upstream.inflight() as f64,
            });
        }
        let now = tokio::time::Instant::now();
        for upstream in &gateway.upstreams {
            let now_ms = crate::upstream::health::millis_since(upstream.epoch, now);
            for (target, health) in upstream.spec.targets.iter().zip(&upstream.health) {
                gauges.push(Gauge {
                    name: "levee_target_healthy",
                    help: "1 when the target passes its health checks and is not ejected as an outlier.",
                    labels: vec![
                        ("upstream", upstream.spec.name.to_string()),
                        ("target", target.addr.to_string()),
                    ],
                    value: if health.usable(now_ms) { 1.0 } else { 0.0 },
                });
            }
        }
        for canary in gateway.canaries.iter().flatten() {
            gauges.push(Gauge {
                name: "levee_canary_rolled_back",
                help: "1 once a route's canary was rolled back (every request goes to the route's own upstream), else 0.",
                labels: vec![("route", canary.route.to_string())],
                value: if canary.rolled_back().is_some() { 1.0 } else { 0.0 },
            });
        }
        for upstream in &gateway.upstreams {
            for (t, target) in upstream.spec.targets.iter().enumerate() {
                let state = upstream.circuit(t).gauge();
                gauges.push(Gauge {
                    name: "levee_circuit_state",
                    help: "Circuit breaker state per target: 0 closed, 1 half-open, 2 open.",
                    labels: vec![
                        ("upstream", upstream.spec.name.to_string()),
                        ("target", target.addr.to_string()),
                    ],
                    value: f64::from(state),
                });
            }
        }
        gauges
    }
}

/// Where access log lines go.
pub enum AccessLogSink {
    Stdout,
    Writer(Box<dyn io::Write + Send>),
}

/// A started gateway. Dropping it shuts it down (without waiting for the grace period to
/// pass unless connections are still busy).
pub struct RunningGateway {
    listeners: Vec<(Arc<str>, SocketAddr)>,
    admin_addr: Option<SocketAddr>,
    state: Arc<SharedState>,
    shutdown: watch::Sender<bool>,
    admin_shutdown: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
    admin: Option<JoinHandle<()>>,
    control: Option<JoinHandle<()>>,
    access_log: Option<JoinHandle<()>>,
    call_log: Option<JoinHandle<()>>,
    tracer: Option<ExportThread>,
    /// The `levee-slo` thread and what stops it (after the workers, so it counts them all).
    slo: Option<(JoinHandle<()>, watch::Sender<bool>)>,
    /// Copies of the listening sockets for a successor (zero-downtime restart); dropped when
    /// draining starts, so a stopping gateway refuses new connections instead of letting them
    /// wait in a queue nobody serves.
    handoff: std::sync::Mutex<Option<Handoff>>,
    /// Set once a successor took over: the admin listener stops at once.
    handed_off: AtomicBool,
}

/// The data-plane sockets by listener name, and the admin socket.
type Handoff = (
    Vec<(Arc<str>, std::net::TcpListener)>,
    Option<std::net::TcpListener>,
);

/// Whether inherited `socket` is bound where the config says (any port when it says 0).
fn same_address(socket: &std::net::TcpListener, wanted: SocketAddr) -> bool {
    socket.local_addr().is_ok_and(|actual| {
        actual.ip() == wanted.ip() && (wanted.port() == 0 || actual.port() == wanted.port())
    })
}

fn bind_reuseport(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Runs the health checks and the JWKS refresh of the running config, and after each reload
/// starts them for what changed: an upstream the new config took over unchanged keeps its
/// checks running (and their pass/fail counts).
async fn follow_config(mut gateway_rx: watch::Receiver<Arc<Gateway>>, mut shutdown: watch::Receiver<bool>) {
    let mut checks: Vec<(Arc<crate::upstream::Upstream>, tokio::task::AbortHandle)> = Vec::new();
    let mut jwks: Option<(Arc<crate::jwt::JwtVerifier>, tokio::task::AbortHandle)> = None;
    loop {
        let gateway = gateway_rx.borrow_and_update().clone();
        checks.retain(|(upstream, task)| {
            let kept = gateway.upstreams.iter().any(|u| Arc::ptr_eq(u, upstream));
            if !kept {
                task.abort();
            }
            kept
        });
        for upstream in &gateway.upstreams {
            if !checks.iter().any(|(u, _)| Arc::ptr_eq(u, upstream)) {
                let task = tokio::spawn(crate::upstream::health::check_upstream(upstream.clone()));
                checks.push((upstream.clone(), task.abort_handle()));
            }
        }
        let same_verifier = match (&jwks, &gateway.jwt) {
            (Some((running, _)), Some(current)) => Arc::ptr_eq(running, current),
            (None, None) => true,
            _ => false,
        };
        if !same_verifier {
            if let Some((_, task)) = jwks.take() {
                task.abort();
            }
            if let Some(verifier) = &gateway.jwt {
                let task = tokio::spawn(crate::jwt::run_jwks_refresh(verifier.clone()));
                jwks = Some((verifier.clone(), task.abort_handle()));
            }
        }
        tokio::select! {
            changed = gateway_rx.changed() => if changed.is_err() { break },
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
    for (_, task) in checks {
        task.abort();
    }
    if let Some((_, task)) = jwks {
        task.abort();
    }
}

/// Records that worker `id` now serves `context` (for the admin API, gauges and reloads).
fn adopt(state: &SharedState, id: usize, context: &WorkerContext) {
    if let Some(slot) = state
        .worker_upstreams
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_mut(id)
    {
        *slot = context.upstreams.clone();
    }
    if let Some(version) = state.worker_versions.get(id) {
        version.store(context.gateway.version, Ordering::Release);
    }
}

impl RunningGateway {
    /// Binds every listener, then starts the workers, the admin listener and the access log
    /// writer. Fails without serving anything if a socket cannot be bound.
    pub fn start(config: Config, sink: AccessLogSink) -> Result<RunningGateway, StartError> {
        RunningGateway::start_with(config, sink, None)
    }

    /// Like [`RunningGateway::start`], serving on sockets a predecessor handed over (a
    /// zero-downtime restart) where their listener names match; anything else is bound.
    pub fn start_with(
        config: Config,
        sink: AccessLogSink,
        mut inherited: Option<&mut Inherited>,
    ) -> Result<RunningGateway, StartError> {
        let workers = config.workers.max(1);
        let mut handoff: Vec<(Arc<str>, std::net::TcpListener)> = Vec::new();
        // Bind everything first: a port conflict must fail the start, not a worker.
        let mut sockets: Vec<Vec<ListenerSocket>> = (0..workers).map(|_| Vec::new()).collect();
        let mut listeners = Vec::new();
        let mut certs = Vec::new();
        for spec in &config.listeners {
            let acceptor = match &spec.tls {
                Some(tls) => {
                    let cert = Arc::new(ReloadingCert::load(&tls.cert, &tls.key).map_err(|message| {
                        StartError::Tls {
                            name: spec.name.to_string(),
                            message,
                        }
                    })?);
                    certs.push((cert.clone(), tls.reload_interval));
                    Some(TlsAcceptor::from(cert.server_config()))
                }
                None => None,
            };
            let bind_err = |source| StartError::Bind {
                name: spec.name.to_string(),
                addr: spec.bind,
                source,
            };
            let taken = inherited
                .as_mut()
                .and_then(|i| i.listeners.remove(&*spec.name))
                .filter(|sockets| sockets.iter().all(|s| same_address(s, spec.bind)))
                .unwrap_or_default();
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
            listeners.push((spec.name.clone(), actual));
            // One socket per worker: more workers than sockets join the same port group.
            while per_worker.len() < workers {
                per_worker.push(bind_reuseport(actual).map_err(bind_err)?);
            }
            for socket in &per_worker {
                handoff.push((spec.name.clone(), socket.try_clone().map_err(bind_err)?));
            }
            let listener_cap = spec.max_connections.map(|m| m.div_ceil(workers).max(1));
            // Fewer workers than inherited sockets: some workers serve more than one.
            let assigned = per_worker
                .into_iter()
                .enumerate()
                .map(|(i, socket)| (i % workers, socket));
            for (worker, socket) in assigned {
                let Some(slot) = sockets.get_mut(worker) else {
                    continue;
                };
                // A worker-local copy of the name: it is cloned per request for the logs.
                slot.push(ListenerSocket {
                    name: Arc::from(&*spec.name),
                    socket,
                    tls: acceptor.clone(),
                    max_connections: listener_cap,
                });
            }
        }
        let inherited_admin = inherited
            .as_mut()
            .and_then(|i| i.admin.take())
            .filter(|s| config.admin.as_ref().is_some_and(|a| same_address(s, a.bind)));
        let admin_socket = match &config.admin {
            Some(_) if inherited_admin.is_some() => inherited_admin,
            Some(admin) => {
                let listener =
                    std::net::TcpListener::bind(admin.bind).map_err(|source| StartError::Bind {
                        name: "admin".into(),
                        addr: admin.bind,
                        source,
                    })?;
                listener
                    .set_nonblocking(true)
                    .map_err(|source| StartError::Bind {
                        name: "admin".into(),
                        addr: admin.bind,
                        source,
                    })?;
                Some(listener)
            }
            None => None,
        };
        let admin_addr = admin_socket.as_ref().and_then(|l| l.local_addr().ok());
        let admin_handoff = admin_socket.as_ref().and_then(|s| s.try_clone().ok());
        if let (Some(addr), Some(admin)) = (admin_addr, &config.admin) {
            if !addr.ip().is_loopback() && admin.token.is_none() {
                tracing::warn!(%addr, "the admin API is reachable beyond loopback without a token: set admin.token_env");
            }
        }

        crate::observability::process::mark_start();
        let metrics = Arc::new(Metrics::default());
        metrics.globals.config_version.store(1, Ordering::Relaxed);
        let (access_log, access_log_thread) = if config.access_log.enabled {
            let sink: Box<dyn io::Write + Send> = match sink {
                AccessLogSink::Stdout => Box::new(io::stdout()),
                AccessLogSink::Writer(w) => w,
            };
            let (log, thread) = AccessLog::start(
                config.access_log.queue,
                config.access_log.success_sample,
                metrics.clone(),
                sink,
            )
            .map_err(|source| StartError::Thread {
                name: "access-log".into(),
                source,
            })?;
            (log, Some(thread))
        } else {
            (AccessLog::disabled(metrics.clone()), None)
        };
        let (call_log, call_log_thread, calls) = match &config.call_log {
            Some(spec) => {
                let retention = Retention {
                    max_age: spec.max_age,
                    max_rows: spec.max_rows,
                };
                let (log, thread) = CallLog::start(&spec.dir, spec.queue, retention, metrics.clone())
                    .map_err(|message| StartError::CallLog { message })?;
                let reader = log.reader().map_err(|message| StartError::CallLog { message })?;
                (Some(log), Some(thread), Some(reader))
            }
            None => (None, None, None),
        };
        let (tracer, tracer_thread) = match &config.tracing {
            Some(spec) => {
                let (exporter, thread) =
                    Exporter::start(spec, metrics.clone()).map_err(|source| StartError::Thread {
                        name: "otlp".into(),
                        source,
                    })?;
                let sampler = Sampler::new(spec.sample_ratio, spec.parent_based);
                (Some(Tracer { sampler, exporter }), Some(thread))
            }
            None => (None, None),
        };
        let slo_store = match &config.data_dir {
            Some(dir) => Some(
                crate::slo::store::Store::open(std::path::Path::new(dir))
                    .map_err(|message| StartError::SloStore { message })?,
            ),
            None => None,
        };
        let slo = Arc::new(crate::slo::SloEngine::new(crate::slo::Clock::system(), slo_store));
        slo.apply(&config.slos);
        slo.experiments.restore(&slo);
        let grace = config.shutdown_grace;
        let reloader = Reloader::new(config.source.clone());
        let gateway = Arc::new(Gateway::new(config));
        // Canaries rolled back by an earlier run stay rolled back, from the first request.
        let canaries: Vec<_> = gateway.canaries.iter().flatten().cloned().collect();
        crate::slo::canary::restore(&slo, &canaries);
        let (gateway_tx, gateway_rx) = watch::channel(gateway.clone());
        let state = Arc::new(SharedState {
            metrics: metrics.clone(),
            draining: AtomicBool::new(false),
            gateway: ArcSwap::new(gateway.clone()),
            gateway_tx,
            worker_upstreams: std::sync::Mutex::new(vec![Vec::new(); workers]),
            worker_versions: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            calls,
            reloader,
            slo: slo.clone(),
        });

        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut worker_threads = Vec::new();
        for (id, sockets) in sockets.into_iter().enumerate() {
            let recorder = Arc::new(Recorder {
                metrics: metrics.shard(),
                access_log: access_log.clone(),
                call_log: call_log.clone(),
                tracer: tracer.clone(),
                slo: slo.clone(),
            });
            let gateway_rx = gateway_rx.clone();
            let rx = shutdown_rx.clone();
            let state = state.clone();
            let name = format!("levee-worker-{id}");
            let thread = std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || worker_main(id, sockets, gateway_rx, recorder, state, rx, grace))
                .map_err(|source| StartError::Thread { name, source })?;
            worker_threads.push(thread);
        }
        // The workers hold the only senders now: when they exit, the writers drain and end.
        drop(access_log);
        drop(call_log);
        drop(tracer);

        // One control-plane thread for the whole process: health checks, certificate reloads
        // and JWKS refreshes, not one per worker. It follows reloads like the workers do.
        let control = {
            let rx = shutdown_rx.clone();
            let gateway_rx = gateway_rx.clone();
            let thread = std::thread::Builder::new()
                .name("levee-control".into())
                .spawn(
                    move || match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                        Ok(runtime) => runtime.block_on(async move {
                            tokio::join!(
                                crate::tls::watch_certificates(certs, rx.clone()),
                                follow_config(gateway_rx, rx),
                            );
                        }),
                        Err(error) => {
                            tracing::error!(%error, "control thread could not start its event loop")
                        }
                    },
                )
                .map_err(|source| StartError::Thread {
                    name: "control".into(),
                    source,
                })?;
            Some(thread)
        };
        let slo_thread = {
            let (stop, stop_rx) = watch::channel(false);
            let gateway_rx = gateway_rx.clone();
            let external_url = admin_addr.map(|a| format!("http://{a}")).unwrap_or_default();
            let thread = std::thread::Builder::new()
                .name("levee-slo".into())
                .spawn(
                    move || match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                        Ok(runtime) => {
                            runtime.block_on(crate::slo::run(slo, gateway_rx, stop_rx, external_url))
                        }
                        Err(error) => tracing::error!(%error, "SLO thread could not start its event loop"),
                    },
                )
                .map_err(|source| StartError::Thread {
                    name: "slo".into(),
                    source,
                })?;
            Some((thread, stop))
        };
        let (admin_shutdown, admin_rx) = watch::channel(false);
        let admin = match admin_socket {
            Some(socket) => {
                let state = state.clone();
                Some(
                    std::thread::Builder::new()
                        .name("levee-admin".into())
                        .spawn(move || admin::serve_blocking(socket, state, admin_rx))
                        .map_err(|source| StartError::Thread {
                            name: "admin".into(),
                            source,
                        })?,
                )
            }
            None => None,
        };

        Ok(RunningGateway {
            listeners,
            admin_addr,
            state,
            shutdown,
            admin_shutdown,
            workers: worker_threads,
            admin,
            control,
            access_log: access_log_thread,
            call_log: call_log_thread,
            tracer: tracer_thread,
            slo: slo_thread,
            handoff: std::sync::Mutex::new(Some((handoff, admin_handoff))),
            handed_off: AtomicBool::new(false),
        })
    }

    /// The bound address of the listener `name` (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.iter().find(|(n, _)| &**n == name).map(|(_, a)| *a)
    }

    /// Every listener's name and bound address.
    pub fn listeners(&self) -> &[(Arc<str>, SocketAddr)] {
        &self.listeners
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn state(&self) -> &Arc<SharedState> {
        &self.state
    }

    /// Reloads the config file the gateway was started from (SIGHUP, `--watch`).
    pub fn reload(&self) -> Result<u64, crate::reload::ReloadError> {
        crate::reload::reload(&self.state)
    }

    /// Starts a new Levee process from the binary on disk on these very sockets and returns
    /// once it serves (then drain this one with [`RunningGateway::stop`]). On any failure the
    /// successor is stopped and this gateway keeps serving.
    pub fn restart(&self, timeout: Duration) -> Result<(), crate::restart::RestartError> {
        let handoff = self.handoff.lock().unwrap_or_else(|p| p.into_inner());
        let Some((sockets, admin)) = handoff.as_ref() else {
            return Err(crate::restart::RestartError::Sockets(io::Error::other(
                "the gateway is stopping",
            )));
        };
        // The successor outlives this process: its handle is not waited for.
        let _successor = crate::restart::spawn_successor(sockets, admin.as_ref(), timeout)?;
        self.handed_off.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Starts draining: readiness fails and workers stop accepting. Returns at once.
    pub fn begin_shutdown(&self) {
        // The handoff copies would keep the sockets open with nobody accepting.
        self.handoff.lock().unwrap_or_else(|p| p.into_inner()).take();
        if self.handed_off.load(Ordering::SeqCst) {
            // The successor answers probes and scrapes now; this one would only say "draining".
            let _ = self.admin_shutdown.send(true);
        }
        self.state.draining.store(true, Ordering::SeqCst);
        let _ = self.shutdown.send(true);
    }

    /// Drains (if not already) and blocks until in-flight requests are done or the grace
    /// period has passed, then stops the admin listener and flushes the access log.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.begin_shutdown();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
        if let Some(control) = self.control.take() {
            let _ = control.join();
        }
        if let Some((thread, stop)) = self.slo.take() {
            let _ = stop.send(true);
            let _ = thread.join();
        }
        let _ = self.admin_shutdown.send(true);
        if let Some(admin) = self.admin.take() {
            let _ = admin.join();
        }
        if let Some(writer) = self.access_log.take() {
            let _ = writer.join();
        }
        if let Some(writer) = self.call_log.take() {
            let _ = writer.join();
        }
        if let Some(exporter) = self.tracer.take() {
            exporter.stop();
        }
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// How long a draining worker keeps serving busy keep-alive connections (each answer closing
/// its connection) before idle connections are closed.
const DRAIN_LINGER: Duration = Duration::from_secs(1);

fn worker_main(
    id: usize,
    sockets: Vec<ListenerSocket>,
    mut gateway_rx: watch::Receiver<Arc<Gateway>>,
    recorder: Arc<Recorder>,
    state: Arc<SharedState>,
    shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(error) => {
            tracing::error!(%error, "worker could not start its event loop");
            return;
        }
    };
    runtime.block_on(async move {
        let gateway = gateway_rx.borrow_and_update().clone();
        let limits = gateway.config.limits;
        let context = Arc::new(ArcSwap::from_pointee(WorkerContext::new(
            gateway,
            recorder.clone(),
        )));
        adopt(&state, id, &context.load());
        // Reloads: build this worker's view of each new config (keeping what is unchanged)
        // and swap it in; requests already running keep the view they started with.
        let follower = {
            let (context, state, mut shutdown) = (context.clone(), state.clone(), shutdown.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        changed = gateway_rx.changed() => if changed.is_err() { return },
                        _ = shutdown.wait_for(|stop| *stop) => return,
                    }
                    let next = gateway_rx.borrow_and_update().clone();
                    let previous = context.load_full();
                    let rebuilt = WorkerContext::build(next, recorder.clone(), Some(&previous));
                    context.store(Arc::new(rebuilt));
                    adopt(&state, id, &context.load());
                }
            })
        };
        let graceful = Arc::new(GracefulShutdown::new());
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            // Heads larger than the limit get the JSON 431 from the pipeline; this is hyper's
            // hard stop for heads so large they cannot even be parsed.
            .max_buf_size((2 * limits.max_header_bytes).max(8192))
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
        let mut accept_loops = tokio::task::JoinSet::new();
        for ListenerSocket {
            name,
            socket,
            tls,
            max_connections,
        } in sockets
        {
            match TcpListener::from_std(socket) {
                Ok(listener) => {
                    accept_loops.spawn(accept_loop(
                        listener,
                        name,
                        tls,
                        max_connections,
                        context.clone(),
                        builder.clone(),
                        graceful.clone(),
                        state.clone(),
                        shutdown.clone(),
                    ));
                }
                Err(error) => tracing::error!(%error, listener = %name, "cannot register listener"),
            }
        }
        while accept_loops.join_next().await.is_some() {}
        follower.abort();
        // Listeners are closed now. Busy keep-alive connections get one more answer, marked
        // `Connection: close`, before idle ones are closed (Envoy's drain does the same).
        let drain_started = tokio::time::Instant::now();
        let connections = context.load().connections.clone();
        let linger = DRAIN_LINGER.min(grace);
        while connections.load(Ordering::Relaxed) > 0 && drain_started.elapsed() < linger {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let grace = grace.saturating_sub(drain_started.elapsed());
        // Let open connections finish what they are doing.
        if let Ok(graceful) = Arc::try_unwrap(graceful) {
            if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
                tracing::warn!(grace = ?grace, "shutdown grace period ended with connections still open");
            }
        }
    });
}

#[allow(clippy::too_many_arguments)]
async fn accept_loop(
    listener: TcpListener,
    name: Arc<str>,
    tls: Option<TlsAcceptor>,
    max_connections: Option<usize>,
    worker: Arc<ArcSwap<WorkerContext>>,
    builder: auto::Builder<TokioExecutor>,
    graceful: Arc<GracefulShutdown>,
    state: Arc<SharedState>,
    mut shutdown: watch::Receiver<bool>,
) {
    // This worker's open connections on this listener.
    let listener_connections: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
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
        state
            .metrics
            .globals
            .connections_accepted
            .fetch_add(1, Ordering::Relaxed);
        let context = worker.load_full();
        let permits =
            LoadPermit::try_take(&context.connections, context.limits.max_connections).and_then(|process| {
                match max_connections {
                    Some(cap) => {
                        LoadPermit::try_take(&listener_connections, cap).map(|own| (process, Some(own)))
                    }
                    None => Some((process, None)),
                }
            });
        let Some(connection_permit) = permits else {
            state.metrics.globals.shed.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(refuse_politely(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = Arc::new(ConnInfo {
            peer,
            listener: name.clone(),
            tls: tls.is_some(),
        });
        // Each request takes the worker's context as it is when the request starts, and
        // keeps it to the end: a reload never changes the rules under a running request.
        let (service_worker, service_state) = (worker.clone(), state.clone());
        let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let context = service_worker.load_full();
            let conn = conn.clone();
            let state = service_state.clone();
            async move {
                let http1 = request.version() < http::Version::HTTP_2;
                let mut response = pipeline::handle(&context, &conn, request).await;
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
                Ok::<_, Infallible>(response)
            }
        });
        match &tls {
            None => {
                // Telling HTTP/1 from HTTP/2 waits for the first bytes with no timeout of its
                // own: a client that connects and sends nothing must not hold a place forever.
                // A watcher, not the shutdown handle: the drain waits for it (bounded by the
                // timeouts below) and the handle stays unique for the worker to trigger.
                let (builder, watcher) = (builder.clone(), graceful.watcher());
                let first_byte_timeout = context.limits.header_read_timeout;
                tokio::spawn(async move {
                    let mut probe = [0u8; 1];
                    match tokio::time::timeout(first_byte_timeout, stream.peek(&mut probe)).await {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => return,
                    }
                    let connection = builder
                        .serve_connection_with_upgrades(TokioIo::new(HeadGuard::new(stream)), service)
                        .into_owned();
                    if let Err(error) = watcher.watch(connection).await {
                        tracing::debug!(%error, %peer, "client connection ended with an error");
                    }
                    drop(connection_permit);
                });
            }
            Some(acceptor) => {
                // The handshake runs in the connection's task, bounded like a request head,
                // so a slow or silent TLS client never holds up the accept loop.
                let (acceptor, builder, watcher) = (acceptor.clone(), builder.clone(), graceful.watcher());
                let handshake_timeout = context.limits.header_read_timeout;
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await
                    {
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
                    let connection = builder
                        .serve_connection_with_upgrades(TokioIo::new(HeadGuard::new(stream)), service)
                        .into_owned();
                    if let Err(error) = watcher.watch(connection).await {
                        tracing::debug!(%error, %peer, "client connection ended with an error");
                    }
                    drop(connection_permit);
                });
            }
        }
    }
}

/// Answers a connection over the cap with a canned 503 and closes it without parsing the
/// request: the client learns why instead of seeing a reset, and the gateway spends almost
/// nothing (what the client sent is read and discarded, for at most a second).
async fn refuse_politely(mut stream: tokio::net::TcpStream) {
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
