//! Worker threads, and the one way the gateway starts a thread with an event loop.
//!
//! A worker runs one single-threaded event loop with its own view of the running config
//! (rebuilt on each reload, keeping what is unchanged), its own HTTP settings and an accept
//! loop per listener socket it was dealt; when told to stop it drains (see
//! [`super::shutdown`]).

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::lifetime::Drain;
use arc_swap::ArcSwap;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::accept::{accept_loop, Serving};
use super::listeners::ListenerSocket;
use super::StartError;
use crate::config::spec::LimitsSpec;
use crate::gateway::{Gateway, WorkerContext};
use crate::record::Recorder;
use crate::state::SharedState;

/// Starts thread `name` running the future `task` makes, on the thread's own
/// single-threaded event loop (workers, the control, SLO and admin threads).
pub(super) fn spawn_event_loop<F, Fut>(name: String, task: F) -> Result<JoinHandle<()>, StartError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let thread = name.clone();
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(
            move || match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime.block_on(task()),
                Err(error) => tracing::error!(%error, %thread, "thread could not start its event loop"),
            },
        )
        .map_err(|source| StartError::Thread { name, source })
}

/// Everything one worker starts with.
pub(super) struct Worker {
    pub id: usize,
    pub sockets: Vec<ListenerSocket>,
    pub gateway_rx: watch::Receiver<Arc<Gateway>>,
    pub recorder: Arc<Recorder>,
    pub state: Arc<SharedState>,
    pub shutdown: watch::Receiver<bool>,
    /// How long open connections get to finish once the worker drains.
    pub grace: Duration,
}

impl Worker {
    /// Starts the worker's thread (`levee-worker-<id>`).
    pub fn spawn(self) -> Result<JoinHandle<()>, StartError> {
        spawn_event_loop(format!("levee-worker-{}", self.id), move || self.run())
    }

    async fn run(self) {
        let Worker {
            id,
            sockets,
            mut gateway_rx,
            recorder,
            state,
            shutdown,
            grace,
        } = self;
        let gateway = gateway_rx.borrow_and_update().clone();
        let limits = gateway.config.limits;
        let context = Arc::new(ArcSwap::from_pointee(WorkerContext::new(
            gateway,
            recorder.clone(),
        )));
        adopt(&state, id, &context.load());
        let follower = tokio::spawn(follow_reloads(
            id,
            context.clone(),
            state.clone(),
            recorder,
            gateway_rx,
            shutdown.clone(),
        ));
        let serving = Serving {
            worker: context.clone(),
            builder: http_builder(&limits),
            drain: Arc::new(Drain::new()),
            state,
        };
        let drain = serving.drain.clone();
        let mut accept_loops = tokio::task::JoinSet::new();
        for ListenerSocket {
            name,
            socket,
            tls,
            max_connections,
            quic,
            alt_svc,
        } in sockets
        {
            if let Some(quic) = quic {
                let (serving, shutdown) = (serving.clone(), shutdown.clone());
                accept_loops.spawn(super::http3::serve(
                    quic,
                    name.clone(),
                    max_connections,
                    serving,
                    shutdown,
                ));
            }
            match TcpListener::from_std(socket) {
                Ok(listener) => {
                    let (serving, shutdown) = (serving.clone(), shutdown.clone());
                    accept_loops.spawn(accept_loop(
                        listener,
                        (name, alt_svc),
                        tls,
                        max_connections,
                        serving,
                        shutdown,
                    ));
                }
                Err(error) => tracing::error!(%error, listener = %name, "cannot register listener"),
            }
        }
        drop(serving);
        while accept_loops.join_next().await.is_some() {}
        follower.abort();
        let connections = context.load().connections.clone();
        super::shutdown::drain(&connections, drain, grace).await;
    }
}

/// Reloads: builds this worker's view of each new config (keeping what is unchanged) and
/// swaps it in; requests already running keep the view they started with. Also sweeps the
/// worker's idle upstream connections.
async fn follow_reloads(
    id: usize,
    context: Arc<ArcSwap<WorkerContext>>,
    state: Arc<SharedState>,
    recorder: Arc<Recorder>,
    mut gateway_rx: watch::Receiver<Arc<Gateway>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let every = crate::upstream::pool::SWEEP_EVERY;
    let mut sweep = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = gateway_rx.changed() => if changed.is_err() { return },
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = sweep.tick() => {
                // Idle upstream connections past their timeout, and those of upstreams a
                // reload removed, are closed on this worker's thread, which owns them.
                let live: Vec<u64> = context.load().upstreams.iter().map(|u| u.pool_id()).collect();
                crate::upstream::pool::sweep(&live);
                continue;
            }
        }
        let next = gateway_rx.borrow_and_update().clone();
        let previous = context.load_full();
        let rebuilt = WorkerContext::build(next, recorder.clone(), Some(&previous));
        context.store(Arc::new(rebuilt));
        adopt(&state, id, &context.load());
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

/// The worker's HTTP/1 and HTTP/2 settings, from the limits it started with.
fn http_builder(limits: &LimitsSpec) -> auto::Builder<TokioExecutor> {
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
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        // A client that stops acknowledging PINGs is gone: its connection is closed, and the
        // streams on it end (their records say so) instead of waiting forever.
        .keep_alive_interval(limits.http2_keepalive_interval)
        .keep_alive_timeout(limits.http2_keepalive_timeout);
    builder
}
