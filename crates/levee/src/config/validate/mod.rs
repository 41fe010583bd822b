//! Turns a config file into a [`Config`], collecting every problem with its position.
//!
//! [`load`] reads the file, resolves the files and environment variables it names and the
//! core count `workers: auto` stands for (in one step, [`resolve_secrets`]: nothing else here
//! reads the system) and checks it section by section, each in a module of its own;
//! every problem is tied to the path of the value it is about, so one run reports them all.
//! A config that passes is then looked over for what is valid but probably not meant
//! ([`warnings`]).

mod auth;
mod chaos;
mod cluster;
mod guardrails;
mod lifecycle;
mod listeners;
mod llm;
mod mcp;
pub mod policies;
mod routes;
mod slo;
mod telemetry;
mod upstream_transport;
mod upstreams;
mod warnings;

pub use chaos::check_fault;

use super::file::{ConfigFile, Workers};
use super::parse::{self, Cuts};
use super::secrets::{resolve_secrets, Resolved, Secrets};
use super::source_map::LazySourceMap;
use super::spec::*;
use super::{ConfigError, ConfigErrors};
use auth::{check_consumers, check_jwt};
use cluster::{check_cluster, ClusterInputs};
use listeners::{check_admin, check_limits, check_listeners};
use llm::{check_llm, check_prompt_routes};
use routes::check_routes;
use slo::{check_alerting, check_canary_rollbacks, check_slos};
use telemetry::{check_access_log, check_call_log, check_tracing};
use upstreams::check_upstreams;

/// Collects problems, each tied to the path of the value it is about.
struct Problems<'a> {
    file: &'a str,
    map: LazySourceMap<'a>,
    /// What was cut from the document to get past its type errors, so that paths in what is
    /// left are reported where they were written.
    cuts: Cuts,
    errors: Vec<ConfigError>,
}

impl Problems<'_> {
    fn at(&mut self, path: &str, message: impl Into<String>) {
        let pos = self.map.value(&self.cuts.original(path));
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line: pos.line,
            col: pos.col,
            message: message.into(),
        });
    }

    /// The value of a secret or file as resolved, or `None` once its problem is reported at
    /// `path`.
    fn resolved<T>(&mut self, path: &str, item: Resolved<T>) -> Option<T> {
        item.map_err(|message| self.at(path, message)).ok()
    }
}

pub(super) fn load(text: &str, name: &str) -> Result<Config, ConfigErrors> {
    let map = LazySourceMap::new(text);
    let (file, mut errors, cuts) = parse::read(text, name, &map)?;
    let mut problems = Problems {
        file: name,
        map,
        cuts,
        errors: Vec::new(),
    };
    let config = file.and_then(|file| check(&file, &mut problems));
    errors.append(&mut problems.errors);
    if errors.is_empty() {
        if let Some(mut config) = config {
            let mut advice = Problems {
                file: name,
                map: problems.map,
                cuts: Cuts::default(),
                errors: Vec::new(),
            };
            warnings::warn(&config, &mut advice);
            advice.errors.sort_by_key(|e| (e.line, e.col));
            config.warnings = advice.errors;
            return Ok(config);
        }
    }
    errors.sort_by_key(|e| (e.line, e.col));
    Err(ConfigErrors(errors))
}

/// Checks every section, in the order their problems have always been collected in.
fn check(file: &ConfigFile, p: &mut Problems) -> Option<Config> {
    let Secrets {
        tls,
        admin_token,
        jwt_secret,
        jwt_public_keys,
        provider_keys,
        cores,
        redis_url,
        postgres_url,
        host_name,
        upstream_tls,
    } = resolve_secrets(file);
    let (listeners, binds) = check_listeners(file, tls, p);
    let admin = file
        .admin
        .as_ref()
        .and_then(|a| check_admin(a, &binds, admin_token, p));
    let (upstreams, upstream_index) = check_upstreams(file, upstream_tls, p);
    let consumers = check_consumers(file, p);
    let jwt = file
        .jwt
        .as_ref()
        .and_then(|j| check_jwt(j, jwt_secret, jwt_public_keys, p));
    let call_log = check_call_log(file, p);
    let tracing = file.tracing.as_ref().and_then(|t| check_tracing(t, p));
    let llm = file.llm.as_ref().and_then(|l| check_llm(l, provider_keys, p));
    let mcp = file.mcp.as_ref().map(|m| mcp::check_mcp(m, p));
    let mut routes = check_routes(file, &upstream_index, p);
    lifecycle::check_services(file, p);
    check_prompt_routes(llm.as_ref(), &routes, p);
    let (workers, workers_auto) = match file.workers {
        Some(Workers::Count(n)) => (n, false),
        None | Some(Workers::Auto) => (cores.unwrap_or(1), true),
    };
    let access_log = check_access_log(file, p);
    let limits = check_limits(file, p);
    let shutdown_grace = file.shutdown_grace.map(|d| d.0).unwrap_or(DEFAULT_SHUTDOWN_GRACE);
    let mut slos = check_slos(file, &routes, &consumers, p);
    check_canary_rollbacks(file, &mut routes, &mut slos, p);
    let alerting = file
        .alerting
        .as_ref()
        .map(|a| check_alerting(a, p))
        .unwrap_or_default();
    let cluster_inputs = ClusterInputs {
        redis_url,
        postgres_url,
        host_name,
    };
    let cluster = file
        .cluster
        .as_ref()
        .and_then(|c| check_cluster(c, &listeners, cluster_inputs, p));
    Some(Config {
        listeners,
        admin,
        upstreams,
        routes,
        workers,
        workers_auto,
        shutdown_grace,
        access_log,
        limits,
        consumers,
        jwt,
        data_dir: file.data_dir.as_ref().map(Into::into),
        call_log,
        tracing,
        llm,
        mcp,
        slos,
        alerting,
        cluster,
        shown: std::sync::Arc::new(super::shown::redacted(file)),
        restart_keys: restart_keys(file),
        source: None,
        warnings: Vec::new(),
    })
}

/// The restart-only top-level keys `file` sets.
fn restart_keys(file: &ConfigFile) -> Vec<&'static str> {
    [
        ("listeners", !file.listeners.is_empty()),
        ("admin", file.admin.is_some()),
        ("workers", file.workers.is_some()),
        ("limits", file.limits.is_some()),
        ("shutdown_grace", file.shutdown_grace.is_some()),
        ("access_log", file.access_log.is_some()),
        ("data_dir", file.data_dir.is_some()),
        ("call_log", file.call_log.is_some()),
        ("tracing", file.tracing.is_some()),
        ("cluster", file.cluster.is_some()),
    ]
    .into_iter()
    .filter_map(|(key, set)| set.then_some(key))
    .collect()
}

/// A name that is also a metric label value and a file-safe word: letters, digits, `_`,
/// `-`, `.`, at least one.
fn label_safe(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn global_max_body(file: &ConfigFile) -> u64 {
    file.limits
        .as_ref()
        .and_then(|l| l.max_body_bytes)
        .unwrap_or(DEFAULT_MAX_BODY_BYTES)
}
