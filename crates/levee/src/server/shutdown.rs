//! Graceful shutdown: readiness turns to 503, every worker stops accepting, busy keep-alive
//! connections get one more answer (marked `Connection: close`), open connections are told
//! to finish (HTTP/1 closes after the response in flight, HTTP/2 sends GOAWAY), and the
//! process waits up to the grace period for them before stopping its other threads in order.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::lifetime::Drain;
use super::RunningGateway;

/// How long a draining worker keeps serving busy keep-alive connections (each answer closing
/// its connection) before idle connections are closed.
const DRAIN_LINGER: Duration = Duration::from_secs(1);

/// A worker's drain, once its listeners are closed: busy keep-alive connections get one
/// more answer, marked `Connection: close`, before idle ones are closed (Envoy's drain does
/// the same); then open connections get what is left of `grace` to finish.
pub(super) async fn drain(connections: &AtomicUsize, drain: Arc<Drain>, grace: Duration) {
    let drain_started = tokio::time::Instant::now();
    let linger = DRAIN_LINGER.min(grace);
    while connections.load(Ordering::Relaxed) > 0 && drain_started.elapsed() < linger {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let grace = grace.saturating_sub(drain_started.elapsed());
    // Let open connections finish what they are doing.
    if let Ok(drain) = Arc::try_unwrap(drain) {
        if tokio::time::timeout(grace, drain.drain()).await.is_err() {
            tracing::warn!(grace = ?grace, "shutdown grace period ended with connections still open");
        }
    }
}

impl RunningGateway {
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
        self.writers.join();
        // After the workers: the last usage they counted is written on the way out.
        if let Some((thread, stop)) = self.manage.take() {
            let _ = stop.send(());
            let _ = thread.join();
        }
        if let Some((thread, stop)) = self.cluster.take() {
            let _ = stop.send(true);
            let _ = thread.join();
        }
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        self.stop_inner();
    }
}
