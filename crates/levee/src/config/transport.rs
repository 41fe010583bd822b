//! How an upstream's connections are made, as checked: the protocol, TLS and HTTP/2
//! settings, kept beside `spec`, which holds every other section.

use std::time::Duration;

/// The protocol spoken to an upstream's targets (see `ProtocolFile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    /// HTTP/2 over TLS.
    H2,
    /// HTTP/2 in cleartext, prior knowledge.
    H2c,
    /// ALPN's choice over TLS; HTTP/1.1 in cleartext.
    Auto,
}

impl UpstreamProtocol {
    /// Whether connections may speak HTTP/2 (and so carry many requests at once).
    pub fn may_use_h2(self, tls: bool) -> bool {
        match self {
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::H2 | UpstreamProtocol::H2c => true,
            UpstreamProtocol::Auto => tls,
        }
    }
}

/// TLS to an upstream's targets; the files were read and checked when the config was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTlsSpec {
    /// The server name to send and verify; `None`: each target's host.
    pub sni: Option<String>,
    /// `None`: the system's root certificates.
    pub ca_file: Option<std::path::PathBuf>,
    /// (certificate chain, private key) for mutual TLS.
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    pub insecure_skip_verify: bool,
}

/// HTTP/2 connection settings toward an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamHttp2Spec {
    pub max_concurrent_streams: usize,
    /// `None`: no keep-alive PINGs.
    pub keepalive_interval: Option<Duration>,
    pub keepalive_timeout: Duration,
}

impl Default for UpstreamHttp2Spec {
    fn default() -> Self {
        UpstreamHttp2Spec {
            max_concurrent_streams: DEFAULT_H2_MAX_STREAMS,
            keepalive_interval: Some(DEFAULT_H2_KEEPALIVE_INTERVAL),
            keepalive_timeout: DEFAULT_H2_KEEPALIVE_TIMEOUT,
        }
    }
}

/// Streams per upstream HTTP/2 connection: the SETTINGS_MAX_CONCURRENT_STREAMS most servers
/// announce (nginx, Go, hyper's default is larger), so a connection is rarely over-filled.
pub const DEFAULT_H2_MAX_STREAMS: usize = 100;
pub const DEFAULT_H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
