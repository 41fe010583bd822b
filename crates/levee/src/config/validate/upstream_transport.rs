//! How an upstream's connections are made: `protocol`, `tls` and `http2`, checked together
//! because each constrains the others (HTTP/2 over TLS needs `tls`, `h2c` refuses it).

use std::time::Duration;

use rustls::pki_types::ServerName;

use super::Problems;
use crate::config::file::{ProtocolFile, UpstreamFile};
use crate::config::secrets::UpstreamTlsFiles;
use crate::config::spec::*;

/// An upstream's (protocol, tls, http2) settings; `ok` is cleared on any problem.
pub(super) fn check_transport(
    u: &UpstreamFile,
    path: &str,
    files: Option<UpstreamTlsFiles>,
    p: &mut Problems,
    ok: &mut bool,
) -> (UpstreamProtocol, Option<UpstreamTlsSpec>, UpstreamHttp2Spec) {
    let before = p.errors.len();
    let protocol = match u.protocol {
        ProtocolFile::Http1 => UpstreamProtocol::Http1,
        ProtocolFile::H2 => UpstreamProtocol::H2,
        ProtocolFile::H2c => UpstreamProtocol::H2c,
        ProtocolFile::Auto => UpstreamProtocol::Auto,
    };
    match (protocol, u.tls.is_some()) {
        (UpstreamProtocol::H2, false) => p.at(
            &format!("{path}.protocol"),
            "protocol h2 is HTTP/2 over TLS: add `tls` (`tls: {}` for the defaults), or use h2c for HTTP/2 in cleartext",
        ),
        (UpstreamProtocol::H2c, true) => p.at(
            &format!("{path}.protocol"),
            "protocol h2c is HTTP/2 in cleartext, but this upstream has `tls`: use h2 (or auto) over TLS",
        ),
        _ => {}
    }
    let tls = u
        .tls
        .as_ref()
        .map(|t| check_tls(t, &format!("{path}.tls"), files.unwrap_or_default(), p));
    let http2 = check_http2(u, protocol, path, p);
    if p.errors.len() != before {
        *ok = false;
    }
    (protocol, tls, http2)
}

fn check_tls(
    t: &crate::config::file::UpstreamTlsFile,
    path: &str,
    files: UpstreamTlsFiles,
    p: &mut Problems,
) -> UpstreamTlsSpec {
    if let Some(sni) = &t.sni {
        if ServerName::try_from(sni.as_str()).is_err() {
            p.at(
                &format!("{path}.sni"),
                format!("invalid sni `{sni}`: expected a DNS name or an IP address"),
            );
        }
    }
    if let Some(loaded) = files.ca_file {
        p.resolved(&format!("{path}.ca_file"), loaded);
    }
    let client_cert = match (&t.client_cert, &t.client_key) {
        (Some(cert), Some(key)) => {
            if let Some(loaded) = files.client_cert {
                p.resolved(&format!("{path}.client_cert"), loaded);
            }
            Some((cert.into(), key.into()))
        }
        (Some(_), None) => {
            p.at(
                &format!("{path}.client_cert"),
                "client_cert needs client_key (the certificate's private key)",
            );
            None
        }
        (None, Some(_)) => {
            p.at(
                &format!("{path}.client_key"),
                "client_key needs client_cert (the certificate chain it belongs to)",
            );
            None
        }
        (None, None) => None,
    };
    let insecure_skip_verify = t.insecure_skip_verify.unwrap_or(false);
    if insecure_skip_verify && t.ca_file.is_some() {
        p.at(
            &format!("{path}.ca_file"),
            "ca_file is never used with insecure_skip_verify: true (no certificate is checked): remove one of them",
        );
    }
    UpstreamTlsSpec {
        sni: t.sni.clone(),
        ca_file: t.ca_file.as_ref().map(Into::into),
        client_cert,
        insecure_skip_verify,
    }
}

fn check_http2(
    u: &UpstreamFile,
    protocol: UpstreamProtocol,
    path: &str,
    p: &mut Problems,
) -> UpstreamHttp2Spec {
    let defaults = UpstreamHttp2Spec::default();
    let Some(file) = &u.http2 else {
        return defaults;
    };
    let path = format!("{path}.http2");
    if protocol == UpstreamProtocol::Http1 {
        p.at(
            &path,
            "http2 settings apply only to `protocol: h2`, `h2c` or `auto`; this upstream speaks http1",
        );
    }
    let max_concurrent_streams = file
        .max_concurrent_streams
        .unwrap_or(defaults.max_concurrent_streams);
    if max_concurrent_streams == 0 || max_concurrent_streams > 10_000 {
        p.at(
            &format!("{path}.max_concurrent_streams"),
            "max_concurrent_streams must be from 1 to 10000",
        );
    }
    let keepalive_interval = match file.keepalive_interval {
        Some(d) if d.0.is_zero() => None,
        Some(d) => Some(d.0),
        None => defaults.keepalive_interval,
    };
    let keepalive_timeout = file.keepalive_timeout.map_or(defaults.keepalive_timeout, |d| d.0);
    if keepalive_timeout == Duration::ZERO {
        p.at(
            &format!("{path}.keepalive_timeout"),
            "keepalive_timeout must be above zero (turn PINGs off with keepalive_interval: 0s)",
        );
    }
    UpstreamHttp2Spec {
        max_concurrent_streams,
        keepalive_interval,
        keepalive_timeout,
    }
}
