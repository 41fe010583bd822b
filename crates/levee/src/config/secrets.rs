//! What a config names outside its own text, read in one step: the TLS certificate and key
//! files of listeners and upstreams, the JWT public key files, the environment variables that hold the
//! admin token, the JWT secret and the LLM providers' API keys, and (for `workers: auto`)
//! the number of cores the process may use.
//!
//! [`resolve_secrets`] reads them all before the sections are checked; each result carries
//! the message to report when it did not resolve, and validation reports it at the key it
//! concerns (and only where that key is checked at all). Nothing else in `config` touches
//! the file system or the environment (reading the config file itself aside).

use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::Path;

use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;

use super::file::{ConfigFile, Workers};
use super::spec::Secret;

/// Reads a certificate chain and its private key, and checks that they belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let cert_file =
        std::fs::File::open(cert).map_err(|e| format!("cannot read certificate {}: {e}", cert.display()))?;
    let chain: Vec<_> = rustls_pemfile::certs(&mut BufReader::new(cert_file))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate {} is not valid PEM: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no certificate", cert.display()));
    }
    let key_file =
        std::fs::File::open(key).map_err(|e| format!("cannot read private key {}: {e}", key.display()))?;
    let private = rustls_pemfile::private_key(&mut BufReader::new(key_file))
        .map_err(|e| format!("private key {} is not valid PEM: {e}", key.display()))?
        .ok_or_else(|| format!("{} holds no private key", key.display()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&private)
        .map_err(|e| format!("private key {} is not usable: {e}", key.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        format!(
            "private key {} does not match certificate {}: {e}",
            key.display(),
            cert.display()
        )
    })?;
    Ok(certified)
}

/// The certificates of a PEM file of certificate authorities (at least one).
pub fn load_ca_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let file = std::fs::File::open(path)
        .map_err(|e| format!("cannot read certificate authorities {}: {e}", path.display()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<_, _>>()
        .map_err(|e| {
            format!(
                "certificate authorities {} are not valid PEM: {e}",
                path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    let mut roots = rustls::RootCertStore::empty();
    let (_, rejected) = roots.add_parsable_certificates(certs.iter().cloned());
    if rejected > 0 {
        return Err(format!(
            "{} holds {rejected} certificate(s) that cannot be trust anchors",
            path.display()
        ));
    }
    Ok(certs)
}

/// A secret or file as resolved: the value, or the problem to report.
pub(super) type Resolved<T> = Result<T, String>;

/// Everything [`resolve_secrets`] read, each item with its value or its problem.
#[derive(Debug, Default)]
pub(super) struct Secrets {
    /// Per listener, in file order: `None` without `tls`, else whether its pair loads.
    pub tls: Vec<Option<Resolved<()>>>,
    /// `admin.token_env`, when given.
    pub admin_token: Option<Resolved<Secret>>,
    /// `jwt.secret_env`, when given.
    pub jwt_secret: Option<Resolved<Secret>>,
    /// `jwt.public_keys`, in order: each file's PEM.
    pub jwt_public_keys: Vec<Resolved<Vec<u8>>>,
    /// `llm.providers.NAME.api_key_env` by provider name, for the providers that give one.
    pub provider_keys: BTreeMap<String, Resolved<Secret>>,
    /// The cores this process may use (affinity and cgroup quota count, so the system is
    /// read), when `workers` is `auto` or not given.
    pub cores: Option<usize>,
    /// `cluster.redis.url_env` and `cluster.postgres.url_env`, when given.
    pub redis_url: Option<Resolved<Secret>>,
    pub postgres_url: Option<Resolved<Secret>>,
    /// This machine's host name, when `cluster` is given without a `node_id`.
    pub host_name: Option<String>,
    /// Per upstream with `tls`, by name: whether its `ca_file` and its client pair load.
    pub upstream_tls: BTreeMap<String, UpstreamTlsFiles>,
}

/// What an upstream's `tls` names, as read: each `None` when not given.
#[derive(Debug, Default)]
pub(super) struct UpstreamTlsFiles {
    pub ca_file: Option<Resolved<()>>,
    pub client_cert: Option<Resolved<()>>,
}

/// Reads every file and environment variable the config names (the one place validation
/// does so).
pub(super) fn resolve_secrets(file: &ConfigFile) -> Secrets {
    let tls = file
        .listeners
        .iter()
        .map(|l| {
            l.tls
                .as_ref()
                .map(|t| load_certified_key(Path::new(&t.cert), Path::new(&t.key)).map(|_| ()))
        })
        .collect();
    let admin_token = file
        .admin
        .as_ref()
        .and_then(|a| a.token_env.as_deref())
        .map(|name| env_secret(name, "admin.token_env"));
    let jwt = file.jwt.as_ref();
    let jwt_secret = jwt
        .and_then(|j| j.secret_env.as_deref())
        .map(|name| env_secret(name, "jwt.secret_env"));
    let jwt_public_keys = jwt
        .map(|j| j.public_keys.iter().map(|path| public_key(path)).collect())
        .unwrap_or_default();
    let provider_keys = file
        .llm
        .iter()
        .flat_map(|l| &l.providers)
        .filter_map(|(name, provider)| {
            let var = provider.api_key_env.as_deref()?;
            let key = env_secret(var, &format!("llm.providers.{name}.api_key_env"));
            Some((name.clone(), key))
        })
        .collect();
    let cores = matches!(file.workers, None | Some(Workers::Auto))
        .then(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let cluster = file.cluster.as_ref();
    let redis_url = cluster
        .and_then(|c| c.redis.as_ref()?.url_env.as_deref())
        .map(|name| env_secret(name, "cluster.redis.url_env"));
    let postgres_url = cluster
        .and_then(|c| c.postgres.as_ref()?.url_env.as_deref())
        .map(|name| env_secret(name, "cluster.postgres.url_env"));
    let host_name = cluster.filter(|c| c.node_id.is_none()).map(|_| host_name());
    let upstream_tls = file
        .upstreams
        .iter()
        .filter_map(|(name, u)| {
            let tls = u.tls.as_ref()?;
            let files = UpstreamTlsFiles {
                ca_file: tls
                    .ca_file
                    .as_deref()
                    .map(|path| load_ca_certs(Path::new(path)).map(|_| ())),
                client_cert: match (&tls.client_cert, &tls.client_key) {
                    (Some(cert), Some(key)) => {
                        Some(load_certified_key(Path::new(cert), Path::new(key)).map(|_| ()))
                    }
                    _ => None,
                },
            };
            Some((name.clone(), files))
        })
        .collect();
    Secrets {
        upstream_tls,
        tls,
        admin_token,
        jwt_secret,
        jwt_public_keys,
        provider_keys,
        cores,
        redis_url,
        postgres_url,
        host_name,
    }
}

/// The kernel's host name (`localhost` when it cannot be read).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The value of environment variable `name`, which the config names at `key`.
fn env_secret(name: &str, key: &str) -> Resolved<Secret> {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => Ok(Secret(value)),
        _ => Err(format!(
            "environment variable `{name}` ({key}) is not set or empty"
        )),
    }
}

/// The PEM of a JWT public key file, when it holds an RSA or EC public key.
fn public_key(path: &str) -> Resolved<Vec<u8>> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let usable = jsonwebtoken::DecodingKey::from_rsa_pem(&pem).is_ok()
        || jsonwebtoken::DecodingKey::from_ec_pem(&pem).is_ok();
    if usable {
        Ok(pem)
    } else {
        Err(format!("{path} holds no RSA or EC public key in PEM"))
    }
}
