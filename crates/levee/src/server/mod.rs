//! Listening, worker threads and graceful shutdown: [`RunningGateway`] starts every thread of
//! a gateway and stops them in order. Each concern has its own file: binding sockets
//! (`listeners`), workers and the one way threads with an event loop start (`workers`),
//! accepting connections (`accept`), the control-plane thread (`control`), the writer threads
//! (`writers`) and the drain (`shutdown`).
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

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::admin;
use crate::chaos::experiments::Experiments;
use crate::config::Config;
use crate::gateway::Gateway;
use crate::observability::metrics::Metrics;
use crate::restart::Inherited;
use crate::slo::SloEngine;
use crate::state::{Reloader, SharedState};

mod accept;
mod bare_errors;
mod control;
mod http3;
mod lifetime;
mod listeners;
mod shutdown;
mod workers;
mod writers;

use listeners::Handoff;
use workers::{spawn_event_loop, Worker};
use writers::{WriterThreads, Writers};

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
    #[error("cluster: {message}")]
    Cluster { message: String },
    #[error("{message}")]
    Management { message: String },
    #[error("cannot start thread {name}: {source}")]
    Thread {
        name: String,
        #[source]
        source: io::Error,
    },
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
    /// The access log, call log and span export threads.
    writers: WriterThreads,
    /// The `levee-slo` thread and what stops it (after the workers, so it counts them all).
    slo: Option<(JoinHandle<()>, watch::Sender<bool>)>,
    /// The `levee-manage` thread (polls the management store, writes usage) and what stops it.
    manage: Option<(JoinHandle<()>, std::sync::mpsc::Sender<()>)>,
    /// The `levee-cluster` thread (store connections, heartbeats) and what stops it (last:
    /// the others use its connections until they end).
    cluster: Option<(JoinHandle<()>, watch::Sender<bool>)>,
    /// Copies of the listening sockets for a successor (zero-downtime restart); dropped when
    /// draining starts, so a stopping gateway refuses new connections instead of letting them
    /// wait in a queue nobody serves.
    handoff: Mutex<Option<Handoff>>,
    /// Set once a successor took over: the admin listener stops at once.
    handed_off: AtomicBool,
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
        inherited: Option<&mut Inherited>,
    ) -> Result<RunningGateway, StartError> {
        let workers = config.workers.max(1);
        // Bind everything first: a port conflict must fail the start, not a worker.
        let bound = listeners::bind_all(&config, workers, inherited)?;
        let admin_addr = bound.admin.as_ref().and_then(|l| l.local_addr().ok());

        crate::observability::process::mark_start();
        let metrics = Arc::new(Metrics::default());
        metrics.globals.config_version.store(1, Ordering::Relaxed);
        // Cluster mode first: in it the call log writes to the fleet's PostgreSQL, and SLO
        // counts are the fleet's.
        let cluster = start_cluster(&config)?;
        let (writers, calls) = Writers::start(&config, sink, &metrics, cluster.as_ref().map(|(c, _)| c))?;
        let shared = cluster.as_ref().is_some_and(|(c, _)| c.redis.is_some());
        let slo = start_slo_engine(&config, shared)?;
        // Experiments an earlier run left running are ended and reported.
        let experiments = Arc::new(Experiments::default());
        experiments.restore(&slo);
        let grace = config.shutdown_grace;
        let reloader = Reloader::new(config.source.clone());
        let (management, manage_thread) = start_management(&config, cluster.as_ref().map(|(c, _)| c))?;
        let gateway = Arc::new(
            Gateway::build_with(config, None, cluster.as_ref().map(|(c, _)| c.clone()))
                .with_management(management),
        );
        // Canaries rolled back by an earlier run stay rolled back, from the first request.
        let canaries: Vec<_> = gateway.canaries.iter().flatten().cloned().collect();
        crate::slo::canary::restore(&slo, &canaries);
        let (gateway_tx, gateway_rx) = watch::channel(gateway.clone());
        let state = Arc::new(SharedState {
            metrics: metrics.clone(),
            series: Default::default(),
            draining: AtomicBool::new(false),
            gateway: ArcSwap::new(gateway),
            gateway_tx,
            worker_upstreams: Mutex::new(vec![Vec::new(); workers]),
            worker_versions: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            calls,
            reloader,
            slo: slo.clone(),
            experiments: experiments.clone(),
            cluster: cluster.as_ref().map(|(c, _)| c.clone()),
        });

        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut worker_threads = Vec::new();
        for (id, sockets) in bound.per_worker.into_iter().enumerate() {
            let worker = Worker {
                id,
                sockets,
                gateway_rx: gateway_rx.clone(),
                recorder: writers.recorder(&metrics, &slo, &experiments),
                state: state.clone(),
                shutdown: shutdown_rx.clone(),
                grace,
            };
            worker_threads.push(worker.spawn()?);
        }
        // The workers hold the only senders now: when they exit, the writers drain and end.
        let writers = writers.into_threads();

        let control = control::spawn(bound.certs, gateway_rx.clone(), shutdown_rx)?;
        let slo_thread = {
            let (stop, stop_rx) = watch::channel(false);
            let external_url = admin_addr.map(|a| format!("http://{a}")).unwrap_or_default();
            let cluster = cluster.as_ref().map(|(c, _)| c.clone());
            let thread = spawn_event_loop("levee-slo".into(), move || {
                crate::supervisor::run(slo, experiments, gateway_rx, stop_rx, external_url, cluster)
            })?;
            (thread, stop)
        };
        let (admin_shutdown, admin_rx) = watch::channel(false);
        let admin = match bound.admin {
            Some(socket) => {
                let state = state.clone();
                let serve = move || admin::serve(socket, state, admin_rx);
                Some(spawn_event_loop("levee-admin".into(), serve)?)
            }
            None => None,
        };

        Ok(RunningGateway {
            listeners: bound.listeners,
            admin_addr,
            state,
            shutdown,
            admin_shutdown,
            workers: worker_threads,
            admin,
            control: Some(control),
            writers,
            slo: Some(slo_thread),
            manage: manage_thread,
            cluster: cluster.map(|(_, thread)| thread),
            handoff: Mutex::new(Some(bound.handoff)),
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
}

/// Cluster mode's handle and its `levee-cluster` thread, when the config has a `cluster`
/// block. The stores are reached in the background: a store that is down at start only
/// means local decisions until it answers.
#[allow(clippy::type_complexity)]
fn start_cluster(
    config: &Config,
) -> Result<
    Option<(
        Arc<crate::cluster::Cluster>,
        (JoinHandle<()>, watch::Sender<bool>),
    )>,
    StartError,
> {
    let Some(spec) = &config.cluster else {
        return Ok(None);
    };
    let cluster = Arc::new(
        crate::cluster::Cluster::new(spec).map_err(|e| StartError::Cluster {
            message: e.to_string(),
        })?,
    );
    cluster.set_config_hash(crate::reload::config_hash(config));
    let (stop, stop_rx) = watch::channel(false);
    let running = cluster.clone();
    let thread = spawn_event_loop("levee-cluster".into(), move || running.run(stop_rx))?;
    Ok(Some((cluster, (thread, stop))))
}

/// The management plane (keys, teams, subscriptions) from its store, and the `levee-manage`
/// thread that keeps it current, when the config names a store.
#[allow(clippy::type_complexity)]
fn start_management(
    config: &Config,
    cluster: Option<&Arc<crate::cluster::Cluster>>,
) -> Result<
    (
        Arc<crate::management::Management>,
        Option<(JoinHandle<()>, std::sync::mpsc::Sender<()>)>,
    ),
    StartError,
> {
    let management = Arc::new(
        crate::management::Management::open(config, cluster)
            .map_err(|message| StartError::Management { message })?,
    );
    if !management.configured() {
        return Ok((management, None));
    }
    let (stop, stop_rx) = std::sync::mpsc::channel();
    let running = management.clone();
    let config = config.clone();
    let thread = std::thread::Builder::new()
        .name("levee-manage".into())
        .spawn(move || running.run(&config, stop_rx))
        .map_err(|source| StartError::Thread {
            name: "levee-manage".into(),
            source,
        })?;
    Ok((management, Some((thread, stop))))
}

/// The SLO engine with the SLOs of `config`, and what `data_dir` kept of an earlier run
/// (counts, firing alerts); `shared`: its counts are also the fleet's (cluster mode with
/// Redis).
fn start_slo_engine(config: &Config, shared: bool) -> Result<Arc<SloEngine>, StartError> {
    let store = match &config.data_dir {
        Some(dir) => Some(
            crate::slo::store::Store::open(std::path::Path::new(dir))
                .map_err(|message| StartError::SloStore { message })?,
        ),
        None => None,
    };
    let slo = Arc::new(SloEngine::new(crate::slo::Clock::system(), store));
    if shared {
        slo.share_counts();
    }
    slo.apply(&config.slos);
    Ok(slo)
}
