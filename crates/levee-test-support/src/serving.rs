//! Mock upstreams that speak more than cleartext HTTP/1.1: TLS (with or without client
//! certificates), HTTP/2 (prior knowledge in cleartext, ALPN over TLS) and graceful
//! `GOAWAY`s; and a test certificate authority to issue their certificates.

use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::TestBody;

/// How a mock upstream speaks; the default is cleartext HTTP/1.1.
#[derive(Clone, Default)]
pub struct Serving {
    /// TLS with this server config (its ALPN included); `None`: cleartext.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Speak HTTP/2 as well (prior knowledge in cleartext, ALPN `h2` over TLS).
    pub http2: bool,
    /// Shut each connection down gracefully (an HTTP/2 `GOAWAY`) once it has received
    /// this many requests; the requests it took are still answered.
    pub goaway_after: Option<usize>,
}

impl Serving {
    pub(crate) fn is_plain(&self) -> bool {
        self.tls.is_none() && !self.http2 && self.goaway_after.is_none()
    }

    /// Cleartext HTTP/1.1 and HTTP/2 (prior knowledge).
    pub fn h2c() -> Serving {
        Serving {
            http2: true,
            ..Serving::default()
        }
    }
}

/// Requests being answered now, and the most there ever were at once.
#[derive(Default)]
pub(crate) struct Inflight {
    now: AtomicUsize,
    max: AtomicUsize,
}

pub(crate) struct InflightGuard<'a>(&'a Inflight);

impl Inflight {
    pub(crate) fn enter(&self) -> InflightGuard<'_> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        InflightGuard(self)
    }

    pub(crate) fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Serves one accepted connection as `serving` says, answering each request with
/// `answering(request, the client's certificate)`.
pub(crate) async fn serve_connection<F, Fut>(stream: TcpStream, serving: &Serving, answering: F)
where
    F: Fn(Request<Incoming>, Option<Bytes>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<TestBody>, Infallible>> + Send + 'static,
{
    let (io, client_cert): (Box<dyn Io>, Option<Bytes>) = match &serving.tls {
        Some(config) => {
            let Ok(tls) = tokio_rustls::TlsAcceptor::from(config.clone())
                .accept(stream)
                .await
            else {
                return;
            };
            let cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|cert| Bytes::copy_from_slice(cert.as_ref()));
            (Box::new(tls), cert)
        }
        None => (Box::new(stream), None),
    };
    let taken = Arc::new(AtomicUsize::new(0));
    let enough = Arc::new(tokio::sync::Notify::new());
    let limit = serving.goaway_after;
    let service = {
        let enough = enough.clone();
        service_fn(move |request| {
            let count = taken.fetch_add(1, Ordering::SeqCst) + 1;
            if Some(count) == limit {
                enough.notify_one();
            }
            answering(request, client_cert.clone())
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if !serving.http2 {
        builder = builder.http1_only();
    }
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    if limit.is_some() {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = enough.notified() => conn.as_mut().graceful_shutdown(),
        }
    }
    let _ = conn.await;
}

/// A certificate authority for tests: issues server and client certificates.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        TestCa { cert, key }
    }

    /// Writes the CA certificate as PEM into `dir`; returns its path.
    pub fn write_pem(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, self.cert.pem()).unwrap();
        path
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A certificate for `names` (DNS names or IP addresses) with the given purpose.
    fn issue(&self, names: &[&str], purpose: ExtendedKeyUsagePurpose) -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        for name in names {
            params.subject_alt_names.push(match name.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*name).try_into().unwrap()),
            });
        }
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("client"));
        params.extended_key_usages = vec![purpose];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert, key)
    }

    /// A rustls server config presenting a certificate for `names`, offering `alpn`, and
    /// (with `require_client_cert`) refusing clients without a certificate from this CA.
    pub fn server_config(
        &self,
        names: &[&str],
        alpn: &[&[u8]],
        require_client_cert: bool,
    ) -> Arc<rustls::ServerConfig> {
        let (cert, key) = self.issue(names, ExtendedKeyUsagePurpose::ServerAuth);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.der()).unwrap();
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut config = builder.with_single_cert(vec![cert.der().clone()], key).unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// Writes a client certificate named `name` and its key as PEM into `dir` (as
    /// `NAME.pem` and `NAME.key`); returns their paths and the certificate's DER.
    pub fn write_client(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf, Bytes) {
        let (cert, key) = self.issue(&[name], ExtendedKeyUsagePurpose::ClientAuth);
        let cert_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path, Bytes::copy_from_slice(cert.der()))
    }
}

/// HTTP/2 frames written and read by hand, for peers that misbehave on purpose.
pub mod h2_raw {
    use tokio::io::AsyncReadExt;

    /// The client connection preface.
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const HEADERS: u8 = 0x1;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;

    /// One frame as read.
    #[derive(Debug)]
    pub struct Frame {
        pub kind: u8,
        pub flags: u8,
        pub stream: u32,
        pub payload: Vec<u8>,
    }

    /// Reads one frame, or `None` when the connection ended.
    pub async fn read(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Option<Frame> {
        let mut head = [0u8; 9];
        stream.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await.ok()?;
        Some(Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload,
        })
    }

    /// The bytes of one frame.
    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut out = vec![len[1], len[2], len[3], kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// A `GOAWAY` naming `last_stream` with error code `code`.
    pub fn goaway(last_stream: u32, code: u32) -> Vec<u8> {
        let mut payload = last_stream.to_be_bytes().to_vec();
        payload.extend_from_slice(&code.to_be_bytes());
        frame(GOAWAY, 0, 0, &payload)
    }

    /// A response of status 200 with no body on `stream` (`:status: 200` is entry 8 of
    /// HPACK's static table, so the header block is the one byte 0x88).
    pub fn empty_ok(stream: u32) -> Vec<u8> {
        frame(HEADERS, END_HEADERS | END_STREAM, stream, &[0x88])
    }
}
