//! The listeners, the admin listener and the process-wide `limits`, as written.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::duration::DurationStr;

/// A listening socket for client traffic (HTTP/1.1 and HTTP/2 cleartext on the same port).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerFile {
    /// A name for logs and metrics.
    pub name: String,
    /// `IP:PORT` to listen on, e.g. `127.0.0.1:8080` or `[::]:8080`. Port 0 picks a free port.
    pub bind: String,
    /// Terminate TLS on this listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFile>,
    /// Open connections on this listener at most (split evenly across workers), within the
    /// process-wide `limits.max_connections`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Also serve HTTP/3 (QUIC) on the same port number over UDP, advertised with `Alt-Svc`
    /// on HTTP/1.1 and HTTP/2 answers. Needs `tls`. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http3: Option<bool>,
}

/// TLS for a listener: PEM files, reloaded when they change.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// PEM certificate chain (leaf first).
    pub cert: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// How often the files are checked for changes. Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload_interval: Option<DurationStr>,
}

/// The admin listener.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// `IP:PORT` of the admin listener, e.g. `127.0.0.1:9901`.
    pub bind: String,
    /// Environment variable holding the admin token; when set, `/api/*` needs
    /// `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
}

/// Caps on the gateway's own load; past them new work is refused quickly with 503.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Requests in flight in the whole process (split evenly across workers). Default 16384.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_inflight: Option<usize>,
    /// Open client connections in the whole process (split evenly across workers); a
    /// connection past it gets a 503 and is closed. Default 65536.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Request line plus headers, in bytes; past it 431 `headers_too_large`. Default 65536.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_header_bytes: Option<usize>,
    /// Request body bytes on every route unless the route sets its own; past it 413
    /// `body_too_large`. Default 10485760 (10 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// Time a client has to send a request's headers, and to start the next request on a
    /// kept-alive connection (slowloris protection). Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_read_timeout: Option<DurationStr>,
    /// How often an HTTP/2 client connection that sent nothing is asked for a PING
    /// acknowledgement; `0s` sends none. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_keepalive_interval: Option<DurationStr>,
    /// How long an HTTP/2 client has to acknowledge a PING before its connection is closed.
    /// Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_keepalive_timeout: Option<DurationStr>,
    /// A client connection with no request in flight for this long is closed (HTTP/2 with a
    /// GOAWAY); `0s` keeps idle connections. Default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_idle_timeout: Option<DurationStr>,
}
