//! How a new connection to a target is made: TCP, then TLS when the upstream has `tls`,
//! then the HTTP/1.1 or HTTP/2 handshake its `protocol` (or, under `auto`, ALPN) chose.
//!
//! The pool and the health checker both connect through here, so a passing health check
//! has proved the very path requests take: the same name checked in the same certificate,
//! the same client certificate, the same protocol.
//!
//! TCP and TLS together must finish within the upstream's `connect_timeout`: a target that
//! accepts TCP but never answers the TLS handshake is a connect failure, not a hung request.
//! Certificates are trusted from the system's store (read once per process) unless the
//! upstream names its own `ca_file`; a client certificate for mutual TLS is read again when
//! its files change, checked at each new connection (two `stat` calls, against a handshake
//! that costs a thousand times more).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body::Body;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::config::secrets::load_ca_certs;
use crate::config::spec::{UpstreamHttp2Spec, UpstreamProtocol, UpstreamSpec, UpstreamTlsSpec};
use crate::tls::ReloadingCert;

/// A connection ready to carry requests.
pub enum Conn<B> {
    /// One exchange at a time.
    H1(http1::SendRequest<B>),
    /// Many streams at once; the sender is cloned for each.
    H2(http2::SendRequest<B>),
}

/// Why no connection could be had.
#[derive(Debug)]
pub enum ConnectError {
    /// Refused, unreachable, or the name did not resolve.
    Failed(std::io::Error),
    /// TCP (and TLS) did not finish within the connect timeout.
    TimedOut,
    /// The TLS handshake failed: a certificate not trusted or not for this name, a client
    /// certificate refused, no protocol in common.
    Tls(std::io::Error),
    /// The HTTP handshake failed (HTTP/1.1's does no I/O, so this is rare).
    Handshake(hyper::Error),
}

/// A target's address: parsed once when it is a socket address, resolved at each new
/// connection when it is a name (so a DNS change is followed).
#[derive(Debug, Clone)]
pub enum Resolved {
    Addr(SocketAddr),
    Name(String),
}

impl Resolved {
    pub fn new(addr: &str) -> Resolved {
        addr.parse()
            .map_or_else(|_| Resolved::Name(addr.to_owned()), Resolved::Addr)
    }

    async fn connect(&self) -> std::io::Result<TcpStream> {
        match self {
            Resolved::Addr(addr) => TcpStream::connect(addr).await,
            Resolved::Name(name) => TcpStream::connect(name.as_str()).await,
        }
    }
}

/// Where one target's connections go, and the name its certificate must carry.
#[derive(Debug, Clone)]
pub struct TargetAddr {
    pub resolved: Resolved,
    /// The TLS server name (`tls.sni`, else the target's host); `None` when it is not a
    /// valid name, which fails every TLS connect with a clear error.
    pub server_name: Option<ServerName<'static>>,
}

impl TargetAddr {
    pub fn new(addr: &str, host: &str, sni: Option<&str>) -> TargetAddr {
        // An IPv6 host is written in brackets in an authority, never in a server name.
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = sni.unwrap_or(host);
        TargetAddr {
            resolved: Resolved::new(addr),
            server_name: ServerName::try_from(name.to_owned()).ok(),
        }
    }
}

/// How one upstream connects: shared by every worker's pool and the health checker.
pub struct Transport {
    protocol: UpstreamProtocol,
    connect_timeout: Duration,
    http2: UpstreamHttp2Spec,
    tls: Option<TlsClient>,
}

struct TlsClient {
    /// `Err`: the files could not be loaded when the upstream was built (they were when the
    /// config was checked, so they changed since); every connect reports why.
    config: Result<TlsConnector, Arc<str>>,
    client_cert: Option<Arc<ReloadingCert>>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("protocol", &self.protocol)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Transport {
    pub fn new(spec: &UpstreamSpec) -> Transport {
        let tls = spec.tls.as_ref().map(|tls| {
            let client_cert = tls.client_cert.as_ref().and_then(|(cert, key)| {
                ReloadingCert::load(cert, key)
                    .map_err(|error| tracing::error!(upstream = %spec.name, %error, "client certificate not loaded"))
                    .ok()
                    .map(Arc::new)
            });
            let config = client_config(tls, spec.protocol, client_cert.clone())
                .map(|c| TlsConnector::from(Arc::new(c)))
                .map_err(|error| {
                    tracing::error!(upstream = %spec.name, %error, "TLS to the upstream cannot be set up");
                    Arc::from(error)
                });
            TlsClient { config, client_cert }
        });
        Transport {
            protocol: spec.protocol,
            connect_timeout: spec.connect_timeout,
            http2: spec.http2.clone(),
            tls,
        }
    }

    /// Plain HTTP/1.1 (for the pool's own tests).
    #[cfg(test)]
    pub fn cleartext_http1(connect_timeout: Duration) -> Transport {
        Transport {
            protocol: UpstreamProtocol::Http1,
            connect_timeout,
            http2: UpstreamHttp2Spec::default(),
            tls: None,
        }
    }

    /// HTTP/2 in cleartext (for the pool's own tests).
    #[cfg(test)]
    pub fn cleartext_h2c(connect_timeout: Duration) -> Transport {
        Transport {
            protocol: UpstreamProtocol::H2c,
            ..Transport::cleartext_http1(connect_timeout)
        }
    }

    /// Whether connections speak TLS.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether a connection may turn out to speak HTTP/2.
    pub fn may_use_h2(&self) -> bool {
        self.protocol.may_use_h2(self.tls.is_some())
    }

    pub fn max_streams(&self) -> usize {
        self.http2.max_concurrent_streams
    }

    /// Opens a connection to `target`: TCP and TLS within the connect timeout, then the
    /// HTTP handshake, its driver spawned on the current runtime.
    pub async fn connect<B>(&self, target: &TargetAddr) -> Result<Conn<B>, ConnectError>
    where
        B: Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let deadline = Instant::now() + self.connect_timeout;
        let tcp = tokio::time::timeout_at(deadline, target.resolved.connect())
            .await
            .map_err(|_| ConnectError::TimedOut)?
            .map_err(ConnectError::Failed)?;
        // Small requests and answers go out at once rather than waiting for an ACK.
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return self.handshake(tcp, self.protocol == UpstreamProtocol::H2c).await;
        };
        let connector = tls.config.as_ref().map_err(|e| tls_error(e.to_string()))?;
        let name = target.server_name.clone().ok_or_else(|| {
            tls_error("the target's host is not a valid TLS server name; set tls.sni".into())
        })?;
        if let Some(cert) = &tls.client_cert {
            cert.reload_if_changed();
        }
        let stream = tokio::time::timeout_at(deadline, connector.connect(name, tcp))
            .await
            .map_err(|_| ConnectError::TimedOut)?
            .map_err(ConnectError::Tls)?;
        let h2 = match self.protocol {
            UpstreamProtocol::H2 | UpstreamProtocol::H2c => true,
            UpstreamProtocol::Auto => stream.get_ref().1.alpn_protocol() == Some(b"h2"),
            UpstreamProtocol::Http1 => false,
        };
        self.handshake(stream, h2).await
    }

    async fn handshake<I, B>(&self, io: I, h2: bool) -> Result<Conn<B>, ConnectError>
    where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
        B: Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let io = TokioIo::new(io);
        if !h2 {
            let (sender, connection) = http1::handshake(io).await.map_err(ConnectError::Handshake)?;
            // The driver ends when the connection closes; its error was already seen by the
            // exchange it broke (or no exchange was running). With upgrades, a `101
            // Switching Protocols` can become a tunnel.
            tokio::spawn(async move {
                let _ = connection.with_upgrades().await;
            });
            return Ok(Conn::H1(sender));
        }
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder.timer(TokioTimer::new());
        if let Some(interval) = self.http2.keepalive_interval {
            builder
                .keep_alive_interval(interval)
                .keep_alive_timeout(self.http2.keepalive_timeout)
                .keep_alive_while_idle(true);
        }
        let (sender, connection) = builder.handshake(io).await.map_err(ConnectError::Handshake)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Conn::H2(sender))
    }
}

fn tls_error(message: String) -> ConnectError {
    ConnectError::Tls(std::io::Error::other(message))
}

/// The rustls client config of one upstream: its roots (or no verification), its client
/// certificate, and the ALPN protocols its `protocol` offers.
fn client_config(
    tls: &UpstreamTlsSpec,
    protocol: UpstreamProtocol,
    client_cert: Option<Arc<ReloadingCert>>,
) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let builder = if tls.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    } else {
        let roots = match &tls.ca_file {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                roots.add_parsable_certificates(load_ca_certs(path)?);
                roots
            }
            None => system_roots().clone(),
        };
        builder.with_root_certificates(roots)
    };
    let mut config = match client_cert {
        Some(cert) => {
            let mut config = builder.with_client_cert_resolver(Arc::new(ClientCert(cert)));
            // A resumed TLS 1.3 session carries the client identity it began with, so a
            // renewed certificate would never be shown: with client certificates every
            // connection makes a full handshake (connections are pooled, so that is rare).
            config.resumption = rustls::client::Resumption::disabled();
            config
        }
        None if tls.client_cert.is_some() => return Err("the client certificate could not be loaded".into()),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = match protocol {
        UpstreamProtocol::H2 => vec![b"h2".to_vec()],
        UpstreamProtocol::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        UpstreamProtocol::Http1 | UpstreamProtocol::H2c => vec![b"http/1.1".to_vec()],
    };
    Ok(config)
}

/// The system's trusted roots, read once per process; Mozilla's (compiled in) when the
/// system has none (a minimal container without a CA bundle).
fn system_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if roots.is_empty() {
            tracing::warn!("no system root certificates found; trusting Mozilla's roots (webpki-roots)");
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        roots
    })
}

/// Presents the current client certificate to every server that asks for one.
#[derive(Debug)]
struct ClientCert(Arc<ReloadingCert>);

impl ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// `insecure_skip_verify`: any certificate is accepted, but the handshake's signatures are
/// still checked, so the connection is at least bound to the key the server presented.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
