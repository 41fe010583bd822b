//! Which host a request is for, settled once before routing so that routing, access rules
//! and the request sent upstream all see the same one.
//!
//! A proxy that routes on one host and forwards another lets a client reach a host-based
//! route (or get past a host-based access rule) it was never meant to: the classic
//! "Host confusion" family of request smuggling. The rules are the RFCs':
//!
//! * HTTP/1.1 (RFC 9112 section 3.2): exactly one `Host`, whose value is a valid
//!   `uri-host [":" port]`; a request with none, with several, or with an invalid one is
//!   answered 400. A request in absolute form (`GET http://a.example/x`) is for the target's
//!   authority, which *replaces* `Host` (section 3.2.2).
//! * HTTP/1.0: `Host` is optional, but one that is there must be valid and alone.
//! * HTTP/2 (RFC 9113 section 8.3.1): the host is `:authority`; a `host` field that names
//!   another one makes the request malformed (400). Without `:authority`, `host` is required.
//!
//! Whatever the version, after [`settle`] the request carries exactly one valid `Host`
//! (unless it is an HTTP/1.0 request without one), equal to the URI's authority when there
//! is one. Like nginx, Levee also refuses an empty `Host` and a user name in the authority
//! (`http://user@host/`, which RFC 9110 section 4.2.4 says to treat as an error), and a
//! percent-encoded host name (routing compares names byte for byte; an upstream may decode).

use http::header::{HeaderValue, HOST};
use http::request::Parts;
use http::Version;

/// Why a request's host was refused (logged at debug level; the client gets a plain 400).
pub type HostProblem = &'static str;

/// Validates the request's host and makes `Host` the one the request is for (see the module
/// docs).
pub fn settle(parts: &mut Parts) -> Result<(), HostProblem> {
    let mut values = parts.headers.get_all(HOST).iter();
    let header = values.next().cloned();
    if values.next().is_some() {
        return Err("more than one Host header");
    }
    if let Some(value) = &header {
        if !valid_authority(value.as_bytes()) {
            return Err("invalid Host header");
        }
    }
    let authority = match parts.uri.authority() {
        Some(authority) if !valid_authority(authority.as_str().as_bytes()) => {
            return Err("invalid authority in the request target");
        }
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None => None,
    };
    match parts.version {
        Version::HTTP_2 | Version::HTTP_3 => match (&authority, &header) {
            (Some(a), Some(h)) if !a.as_bytes().eq_ignore_ascii_case(h.as_bytes()) => {
                return Err(":authority and host name different hosts");
            }
            (None, None) => return Err("neither :authority nor host"),
            _ => {}
        },
        Version::HTTP_11 if header.is_none() => return Err("no Host header"),
        _ => {}
    }
    // The target's authority wins over whatever Host said (RFC 9112 section 3.2.2).
    if let Some(authority) = authority {
        parts.headers.insert(HOST, authority);
    }
    Ok(())
}

/// `uri-host [":" port]` (RFC 9110 section 7.2, RFC 3986 section 3.2.2), not empty, no
/// user information.
fn valid_authority(value: &[u8]) -> bool {
    let (host, port) = match value.first() {
        Some(b'[') => match value.iter().position(|&b| b == b']') {
            Some(end) => {
                let (literal, rest) = value.split_at(end + 1);
                let inner = literal.get(1..end).unwrap_or_default();
                let v6 = std::str::from_utf8(inner)
                    .ok()
                    .is_some_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok());
                if !v6 {
                    return false;
                }
                (literal, rest)
            }
            None => return false,
        },
        _ => {
            let end = value.iter().position(|&b| b == b':').unwrap_or(value.len());
            let (name, rest) = value.split_at(end);
            if name.is_empty() || !valid_reg_name(name) {
                return false;
            }
            (name, rest)
        }
    };
    if host.is_empty() {
        return false;
    }
    match port.split_first() {
        None => true,
        // An empty port is allowed by the grammar (`port = *DIGIT`).
        Some((b':', digits)) => {
            digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit) && {
                let number = digits.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
                number <= 65_535
            }
        }
        Some(_) => false,
    }
}

/// `reg-name = *( unreserved / pct-encoded / sub-delims )`, without the percent-encoding:
/// routing compares host names byte for byte, so `%61dmin.example` would miss a route for
/// `admin.example` while an upstream that decodes it would serve that host.
fn valid_reg_name(name: &[u8]) -> bool {
    name.iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(version: Version, uri: &str, hosts: &[&str]) -> Parts {
        let mut builder = http::Request::builder().version(version).uri(uri);
        for host in hosts {
            builder = builder.header(HOST, *host);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn host_after(version: Version, uri: &str, hosts: &[&str]) -> Result<Option<String>, HostProblem> {
        let mut p = parts(version, uri, hosts);
        settle(&mut p)?;
        Ok(p.headers.get(HOST).map(|h| h.to_str().unwrap().to_string()))
    }

    #[test]
    fn http11_needs_one_valid_host() {
        let v = Version::HTTP_11;
        assert_eq!(
            host_after(v, "/", &["api.example.com"]),
            Ok(Some("api.example.com".into()))
        );
        assert_eq!(
            host_after(v, "/", &["api.example.com:8080"]),
            Ok(Some("api.example.com:8080".into()))
        );
        assert!(host_after(v, "/", &["[::1]:80"]).is_ok());
        assert!(host_after(v, "/", &["127.0.0.1"]).is_ok());
        assert!(host_after(v, "/", &["example.com:"]).is_ok(), "port = *DIGIT");
        assert_eq!(host_after(v, "/", &[]), Err("no Host header"));
        assert_eq!(host_after(v, "/", &["a", "b"]), Err("more than one Host header"));
        assert_eq!(host_after(v, "/", &["a", "a"]), Err("more than one Host header"));
        for bad in [
            "",
            "a b/c@d",
            "a/b",
            "user@host",
            "host:port",
            "host:123456",
            "host:70000",
            "[::1",
            "[zz]",
            "host:80:80",
            "a%zz",
            "%61dmin.example",
            ":80",
            "a\\b",
        ] {
            assert_eq!(host_after(v, "/", &[bad]), Err("invalid Host header"), "{bad:?}");
        }
    }

    #[test]
    fn absolute_form_replaces_host() {
        let v = Version::HTTP_11;
        assert_eq!(
            host_after(v, "http://a.example/py/x", &["b.example"]),
            Ok(Some("a.example".into()))
        );
        assert_eq!(
            host_after(v, "http://a.example:81/", &["a.example:81"]),
            Ok(Some("a.example:81".into()))
        );
        assert_eq!(host_after(v, "http://a.example/", &[]), Err("no Host header"));
        assert_eq!(
            host_after(v, "http://u@a.example/", &["a.example"]),
            Err("invalid authority in the request target")
        );
        // HTTP/1.0: Host optional, the absolute form still decides.
        assert_eq!(host_after(Version::HTTP_10, "/", &[]), Ok(None));
        assert_eq!(
            host_after(Version::HTTP_10, "http://a.example/", &[]),
            Ok(Some("a.example".into()))
        );
        assert_eq!(
            host_after(Version::HTTP_10, "/", &["a b"]),
            Err("invalid Host header")
        );
    }

    #[test]
    fn http2_authority_and_host_must_agree() {
        let v = Version::HTTP_2;
        assert_eq!(
            host_after(v, "http://a.example/", &[]),
            Ok(Some("a.example".into()))
        );
        assert_eq!(
            host_after(v, "http://a.example/", &["A.EXAMPLE"]),
            Ok(Some("a.example".into()))
        );
        assert_eq!(
            host_after(v, "http://a.example/", &["b.example"]),
            Err(":authority and host name different hosts")
        );
        assert_eq!(host_after(v, "/", &["b.example"]), Ok(Some("b.example".into())));
        assert_eq!(host_after(v, "/", &[]), Err("neither :authority nor host"));
    }
}
