//! The `listeners`, `admin` and `limits` sections: where the gateway accepts traffic and
//! the caps that protect it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use super::{global_max_body, label_safe, Problems};
use crate::config::duration::DurationStr;
use crate::config::file::{AdminFile, ConfigFile, LimitsFile, TlsFile};
use crate::config::secrets::Resolved;
use crate::config::spec::*;

/// Every listener (`tls`: each one's resolved certificate pair, in file order), with the
/// addresses they bind.
pub(super) fn check_listeners(
    file: &ConfigFile,
    tls: Vec<Option<Resolved<()>>>,
    p: &mut Problems,
) -> (Vec<ListenerSpec>, HashSet<SocketAddr>) {
    if file.listeners.is_empty() {
        p.at("listeners", "at least one listener is required under `listeners`");
    }
    let mut listeners = Vec::new();
    let mut listener_names = HashSet::new();
    let mut binds = HashSet::new();
    for (i, (l, loaded)) in file.listeners.iter().zip(tls).enumerate() {
        let path = format!("listeners[{i}]");
        if !label_safe(&l.name) {
            p.at(
                &format!("{path}.name"),
                format!(
                    "listener name `{}` must be letters, digits, `_`, `-` or `.`",
                    l.name
                ),
            );
        }
        if !listener_names.insert(l.name.clone()) {
            p.at(
                &format!("{path}.name"),
                format!("duplicate listener name `{}`", l.name),
            );
        }
        if let Some(bind) = socket_addr(&l.bind, &format!("{path}.bind"), p) {
            if bind.port() != 0 && !binds.insert(bind) {
                p.at(&format!("{path}.bind"), format!("address {bind} is bound twice"));
            }
            let tls = l.tls.as_ref().and_then(|t| check_tls(t, loaded?, &path, p));
            if l.max_connections.is_some_and(|m| m == 0 || m > 10_000_000) {
                p.at(
                    &format!("{path}.max_connections"),
                    "max_connections must be from 1 to 10000000",
                );
            }
            let http3 = l.http3.unwrap_or(false);
            if http3 && l.tls.is_none() {
                p.at(
                    &format!("{path}.http3"),
                    "http3 needs tls: QUIC is always encrypted (add `tls: { cert, key }`)",
                );
            }
            listeners.push(ListenerSpec {
                name: l.name.as_str().into(),
                bind,
                tls,
                max_connections: l.max_connections,
                http3,
            });
        }
    }
    (listeners, binds)
}

/// A listener's `tls`, given whether its certificate pair loaded.
fn check_tls(t: &TlsFile, loaded: Resolved<()>, path: &str, p: &mut Problems) -> Option<TlsSpec> {
    if t.reload_interval.is_some_and(|d| d.0.is_zero()) {
        p.at(
            &format!("{path}.tls.reload_interval"),
            "reload_interval must be above zero",
        );
    }
    let spec = TlsSpec {
        cert: t.cert.clone().into(),
        key: t.key.clone().into(),
        reload_interval: t
            .reload_interval
            .map(|d| d.0)
            .unwrap_or(std::time::Duration::from_secs(5)),
    };
    p.resolved(&format!("{path}.tls.cert"), loaded).map(|()| spec)
}

/// The `admin` listener (`token`: its resolved `token_env`), on an address no listener uses.
pub(super) fn check_admin(
    a: &AdminFile,
    binds: &HashSet<SocketAddr>,
    token: Option<Resolved<Secret>>,
    p: &mut Problems,
) -> Option<AdminSpec> {
    let bind = socket_addr(&a.bind, "admin.bind", p)?;
    if bind.port() != 0 && binds.contains(&bind) {
        p.at(
            "admin.bind",
            format!("address {bind} is already used by a listener"),
        );
    }
    let token = token.and_then(|token| p.resolved("admin.token_env", token));
    Some(AdminSpec { bind, token })
}

/// The process-wide caps of `limits`.
pub(super) fn check_limits(file: &ConfigFile, p: &mut Problems) -> LimitsSpec {
    let limits = LimitsSpec {
        max_inflight: file
            .limits
            .as_ref()
            .and_then(|l| l.max_inflight)
            .unwrap_or(DEFAULT_MAX_INFLIGHT),
        max_connections: file
            .limits
            .as_ref()
            .and_then(|l| l.max_connections)
            .unwrap_or(DEFAULT_MAX_CONNECTIONS),
        max_header_bytes: file
            .limits
            .as_ref()
            .and_then(|l| l.max_header_bytes)
            .unwrap_or(DEFAULT_MAX_HEADER_BYTES),
        max_body_bytes: global_max_body(file),
        header_read_timeout: limit(file, |l| l.header_read_timeout).unwrap_or(DEFAULT_HEADER_READ_TIMEOUT),
        http2_keepalive_interval: Some(
            limit(file, |l| l.http2_keepalive_interval).unwrap_or(DEFAULT_HTTP2_KEEPALIVE_INTERVAL),
        )
        .filter(|d| !d.is_zero()),
        http2_keepalive_timeout: limit(file, |l| l.http2_keepalive_timeout)
            .unwrap_or(DEFAULT_HTTP2_KEEPALIVE_TIMEOUT),
        http2_idle_timeout: Some(limit(file, |l| l.http2_idle_timeout).unwrap_or(DEFAULT_HTTP2_IDLE_TIMEOUT))
            .filter(|d| !d.is_zero()),
    };
    if limits.http2_keepalive_timeout.is_zero() {
        p.at(
            "limits.http2_keepalive_timeout",
            "limits.http2_keepalive_timeout must be above zero",
        );
    }
    if !(1024..=1024 * 1024).contains(&limits.max_header_bytes) {
        p.at(
            "limits.max_header_bytes",
            "limits.max_header_bytes must be from 1024 to 1048576",
        );
    }
    if limits.header_read_timeout.is_zero() {
        p.at(
            "limits.header_read_timeout",
            "limits.header_read_timeout must be above zero",
        );
    }
    for (key, value) in [
        ("max_inflight", limits.max_inflight),
        ("max_connections", limits.max_connections),
    ] {
        if value == 0 || value > 10_000_000 {
            p.at(
                &format!("limits.{key}"),
                format!("limits.{key} must be from 1 to 10000000"),
            );
        }
    }
    limits
}

/// A duration in `limits`, if the file sets it.
fn limit(file: &ConfigFile, key: impl Fn(&LimitsFile) -> Option<DurationStr>) -> Option<Duration> {
    file.limits.as_ref().and_then(key).map(|d| d.0)
}

fn socket_addr(text: &str, path: &str, p: &mut Problems) -> Option<SocketAddr> {
    match text.parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            p.at(
                path,
                format!("invalid address `{text}`: expected IP:PORT such as 127.0.0.1:8080 or [::1]:8080"),
            );
            None
        }
    }
}
