//! Hot reload: read the config file again, check it whole, compile it next to the running
//! one, then swap it in atomically.
//!
//! Any problem keeps the running config untouched and is reported in full (every
//! `FILE:LINE:COL: message`), counted in `levee_config_reloads_total{result="error"}` and
//! logged. A request that started before the swap finishes on the config it started with
//! (it holds its worker's old context); requests that start after it see only the new one.
//! The reload returns once every worker serves the new version, so a caller that gets
//! `200 {"version": N}` knows the next request is routed by config N.
//!
//! What a reload cannot change: the sockets and threads the process runs on (listeners, the
//! admin listener, workers, limits) and its writers (access log, call log, tracing). Those are
//! refused with a message pointing at the key, and take a restart (`kill -USR2` for one
//! without dropping connections). Everything else (routes, upstreams, consumers, JWT,
//! rate limits, retries, breakers) reloads, and an upstream whose block did not change keeps
//! its pools, health verdicts and breaker state (see [`crate::gateway`]).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::config::source_map::SourceMap;
use crate::config::{load_file, Config, ConfigErrors};
use crate::gateway::Gateway;
use crate::state::SharedState;

/// Why a reload was refused (the running config stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("this gateway was not started from a config file, so there is nothing to reload")]
    NoFile,
    #[error("{0}")]
    Invalid(ConfigErrors),
    #[error("{}", .0.join("\n"))]
    NeedsRestart(Vec<String>),
}

impl ReloadError {
    /// One message per problem, as the admin API returns them.
    pub fn messages(&self) -> Vec<String> {
        match self {
            ReloadError::Invalid(errors) => errors.0.iter().map(ToString::to_string).collect(),
            ReloadError::NeedsRestart(messages) => messages.clone(),
            ReloadError::NoFile => vec![self.to_string()],
        }
    }
}

/// Longest wait for every worker to take the new config before answering anyway.
const ADOPTION_WAIT: Duration = Duration::from_secs(2);

/// Reloads the config file; returns the new config version.
pub fn reload(state: &SharedState) -> Result<u64, ReloadError> {
    let _one_at_a_time = state.reloader.one_at_a_time();
    let result = apply(state);
    let globals = &state.metrics.globals;
    match &result {
        Ok(version) => {
            globals.config_reloads_ok.fetch_add(1, Ordering::Relaxed);
            tracing::info!(version, "config reloaded");
        }
        Err(error) => {
            globals.config_reloads_error.fetch_add(1, Ordering::Relaxed);
            tracing::error!(errors = ?error.messages(), "config reload refused; the running config is kept");
        }
    }
    result
}

fn apply(state: &SharedState) -> Result<u64, ReloadError> {
    let path = state.reloader.path().ok_or(ReloadError::NoFile)?;
    let config = load_file(path).map_err(ReloadError::Invalid)?;
    for warning in &config.warnings {
        tracing::warn!(%warning, "config warning");
    }
    let current = state.gateway.load_full();
    let needs_restart = restart_only_changes(&current.config, &config, path);
    if !needs_restart.is_empty() {
        return Err(ReloadError::NeedsRestart(needs_restart));
    }
    let version = current.version + 1;
    // Only a fleet compares hashes; printing a large config to hash it is not free.
    if let Some(cluster) = &state.cluster {
        cluster.set_config_hash(config_hash(&config));
    }
    let next = Arc::new(Gateway::build(config, Some(&current)).with_version(version));
    // A canary block that was rolled back before (going back to an earlier release) is
    // rolled back again before it takes a request.
    let canaries: Vec<_> = next.canaries.iter().flatten().cloned().collect();
    crate::slo::canary::restore(&state.slo, &canaries);
    state.gateway.store(next.clone());
    state
        .metrics
        .globals
        .config_version
        .store(version, Ordering::Relaxed);
    // Workers and the control thread pick it up from here.
    let _ = state.gateway_tx.send(next);
    wait_for_workers(state, version);
    Ok(version)
}

/// A hash of the config as written (secrets redacted): replicas of a fleet compare it to
/// find one that serves another config (`GET /api/v1/cluster`).
pub fn config_hash(config: &crate::config::spec::Config) -> u64 {
    xxhash_rust::xxh3::xxh3_64(config.shown.to_string().as_bytes())
}

/// Messages for each restart-only key whose value changed, positioned in the new file.
fn restart_only_changes(running: &Config, next: &Config, path: &Path) -> Vec<String> {
    let changed = running.restart_only_changes(next);
    if changed.is_empty() {
        return Vec::new();
    }
    let map = std::fs::read_to_string(path)
        .map(|text| SourceMap::build(&text))
        .ok();
    changed
        .into_iter()
        .map(|key| {
            let (line, col) = map
                .as_ref()
                .map(|m| m.key(key))
                .map_or((1, 1), |p| (p.line, p.col));
            format!(
                "{}:{line}:{col}: `{key}` changed, and it only takes effect on a restart (kill -USR2 restarts without dropping connections); nothing was reloaded",
                path.display()
            )
        })
        .collect()
}

/// Waits (bounded) until every running worker serves `version`.
fn wait_for_workers(state: &SharedState, version: u64) {
    let deadline = std::time::Instant::now() + ADOPTION_WAIT;
    while std::time::Instant::now() < deadline {
        let all = state
            .worker_versions
            .iter()
            .all(|v| v.load(Ordering::Acquire) >= version);
        if all || state.draining.load(Ordering::Relaxed) {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    tracing::warn!(
        version,
        "a worker took longer than {ADOPTION_WAIT:?} to take the new config"
    );
}

/// Reloads whenever the config file's contents change, checking every `interval` (on its own
/// thread, for the life of the process). Polling the contents rather than waiting for file
/// events works the same for editors that rewrite in place, editors and tools that replace
/// the file by renaming, and Kubernetes ConfigMap volumes (a symlink swap), and a file that
/// is touched but not changed does not cause a reload.
pub fn watch_file(state: Arc<SharedState>, interval: Duration) -> std::io::Result<()> {
    let Some(path) = state.reloader.path().map(Path::to_path_buf) else {
        return Err(std::io::Error::other("no config file to watch"));
    };
    let mut last = std::fs::read(&path).ok();
    std::thread::Builder::new()
        .name("levee-watch".into())
        .spawn(move || loop {
            std::thread::sleep(interval);
            if state.draining.load(Ordering::Relaxed) {
                return;
            }
            let now = std::fs::read(&path).ok();
            // A file that is briefly missing (mid-replace) is not a change to act on.
            if now.is_some() && now != last {
                last = now;
                tracing::info!(file = %path.display(), "config file changed");
                let _ = reload(&state);
            }
        })
        .map(drop)
}
