//! The control-plane thread (`levee-control`), one for the whole process rather than one per
//! worker: health checks, certificate reloads and JWKS refreshes, following reloads like the
//! workers do.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

use super::workers::spawn_event_loop;
use super::StartError;
use crate::gateway::Gateway;
use crate::jwt::JwtVerifier;
use crate::tls::ReloadingCert;
use crate::upstream::Upstream;

/// Starts the control thread: it watches `certs` and follows the running config until
/// `shutdown` turns true.
pub(super) fn spawn(
    certs: Vec<(Arc<ReloadingCert>, Duration)>,
    gateway_rx: watch::Receiver<Arc<Gateway>>,
    shutdown: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, StartError> {
    spawn_event_loop("levee-control".into(), move || async move {
        tokio::join!(
            crate::tls::watch_certificates(certs, shutdown.clone()),
            follow_config(gateway_rx, shutdown),
        );
    })
}

/// Runs the health checks and the JWKS refresh of the running config, and after each reload
/// starts them for what changed: an upstream the new config took over unchanged keeps its
/// checks running (and their pass/fail counts).
async fn follow_config(mut gateway_rx: watch::Receiver<Arc<Gateway>>, mut shutdown: watch::Receiver<bool>) {
    let mut checks: Vec<(Arc<Upstream>, tokio::task::AbortHandle)> = Vec::new();
    let mut jwks: Option<(Arc<JwtVerifier>, tokio::task::AbortHandle)> = None;
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
