//! TLS termination with rustls: certificates loaded from PEM files and reloaded from disk when
//! they change, without a restart and without dropping connections. Upstream client
//! certificates (mutual TLS) reload the same way.
//!
//! Each TLS listener gets a [`ReloadingCert`]: handshakes read the current certificate under a
//! read lock; a control-plane task checks the files' modification times every
//! `reload_interval` and swaps in the new pair once it parses and the key matches. A broken
//! file on disk (half-written by a renewal job, a key that does not fit) keeps the old pair
//! and is logged, so renewal mistakes never take the listener down. rustls speaks only TLS
//! 1.2 and 1.3; ALPN offers `h2` and `http/1.1`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::sync::watch;

pub use crate::config::secrets::load_certified_key;

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// A listener's certificate, swapped in place when the files change.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// Modification times of (cert, key) when last loaded.
    stamps: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

impl ReloadingCert {
    pub fn load(cert: &Path, key: &Path) -> Result<ReloadingCert, String> {
        let certified = load_certified_key(cert, key)?;
        Ok(ReloadingCert {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(Arc::new(certified)),
            stamps: Mutex::new((modified(cert), modified(key))),
        })
    }

    /// Reloads when either file changed; keeps the current pair if the new one is broken.
    pub fn reload_if_changed(&self) {
        let now = (modified(&self.cert), modified(&self.key));
        let Ok(mut stamps) = self.stamps.lock() else {
            return;
        };
        if *stamps == now {
            return;
        }
        match load_certified_key(&self.cert, &self.key) {
            Ok(certified) => {
                if let Ok(mut current) = self.current.write() {
                    *current = Arc::new(certified);
                }
                *stamps = now;
                tracing::info!(cert = %self.cert.display(), "certificate reloaded");
            }
            // Not recorded as seen: a half-written file is retried at the next check.
            Err(error) => tracing::warn!(%error, "certificate not reloaded; keeping the current one"),
        }
    }

    /// The pair in use now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// A rustls server config that always presents the current certificate.
    pub fn server_config(self: &Arc<Self>) -> Arc<ServerConfig> {
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map(|b| b.with_no_client_auth().with_cert_resolver(self.clone()))
                .unwrap_or_else(|_| {
                    ServerConfig::builder()
                        .with_no_client_auth()
                        .with_cert_resolver(self.clone())
                });
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl ReloadingCert {
    /// A rustls server config for QUIC (HTTP/3): TLS 1.3 only, ALPN `h3`, the same reloading
    /// certificate. No early data (0-RTT requests could be replayed).
    pub fn quic_server_config(self: &Arc<Self>) -> Result<ServerConfig, rustls::Error> {
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .with_no_client_auth()
                .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h3".to_vec()];
        config.max_early_data_size = 0;
        Ok(config)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Checks every certificate for changes every `interval` until `shutdown`.
pub async fn watch_certificates(
    certs: Vec<(Arc<ReloadingCert>, Duration)>,
    mut shutdown: watch::Receiver<bool>,
) {
    if certs.is_empty() {
        return;
    }
    let interval = certs
        .iter()
        .map(|(_, i)| *i)
        .min()
        .unwrap_or(Duration::from_secs(5));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = ticker.tick() => {
                for (cert, _) in &certs {
                    cert.reload_if_changed();
                }
            }
        }
    }
}
