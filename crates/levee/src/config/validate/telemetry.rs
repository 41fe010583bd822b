//! The `access_log`, `call_log` and `tracing` sections: what the gateway records about the
//! requests it serves, and where it sends it.

use super::Problems;
use crate::config::file::{ConfigFile, TracingFile};
use crate::config::spec::*;

/// The JSON access log.
pub(super) fn check_access_log(file: &ConfigFile, p: &mut Problems) -> AccessLogSpec {
    let access_log = AccessLogSpec {
        enabled: file.access_log.as_ref().is_none_or(|a| a.enabled),
        queue: file
            .access_log
            .as_ref()
            .and_then(|a| a.queue)
            .unwrap_or(DEFAULT_ACCESS_LOG_QUEUE),
        success_sample: file
            .access_log
            .as_ref()
            .and_then(|a| a.success_sample)
            .unwrap_or(1.0),
    };
    if !(0.0..=1.0).contains(&access_log.success_sample) {
        p.at(
            "access_log.success_sample",
            "access_log.success_sample must be from 0 to 1",
        );
    }
    if access_log.queue == 0 || access_log.queue > 1_048_576 {
        p.at(
            "access_log.queue",
            "access_log.queue must be between 1 and 1048576",
        );
    }
    access_log
}

/// The call log: on when `data_dir` or `cluster.postgres` is set, unless turned off; with
/// `cluster.postgres` it is the fleet's, in PostgreSQL.
pub(super) fn check_call_log(file: &ConfigFile, p: &mut Problems) -> Option<CallLogSpec> {
    let postgres = file.cluster.as_ref().is_some_and(|c| c.postgres.is_some());
    let store = match (&file.data_dir, postgres) {
        (_, true) => Some(CallLogStore::Postgres),
        (Some(dir), false) => Some(CallLogStore::Sqlite(dir.into())),
        (None, false) => None,
    };
    let call_log = store.and_then(|store| {
        let settings = file.call_log.clone().unwrap_or_default();
        if settings.enabled == Some(false) {
            return None;
        }
        let spec = CallLogSpec {
            store,
            queue: settings.queue.unwrap_or(DEFAULT_CALL_LOG_QUEUE),
            max_age: settings.max_age.map(|d| d.0).unwrap_or(DEFAULT_CALL_LOG_MAX_AGE),
            max_rows: settings.max_rows.unwrap_or(DEFAULT_CALL_LOG_MAX_ROWS),
        };
        if spec.queue == 0 || spec.queue > 1_048_576 {
            p.at("call_log.queue", "call_log.queue must be from 1 to 1048576");
        }
        if spec.max_age.is_zero() || spec.max_rows == 0 {
            p.at("call_log", "call_log.max_age and max_rows must be above zero");
        }
        Some(spec)
    });
    if file.call_log.is_some() && file.data_dir.is_none() && !postgres {
        p.at(
            "call_log",
            "the call log needs `data_dir` (where its SQLite database lives) or `cluster.postgres`",
        );
    }
    call_log
}

/// The `tracing` section: a collector URL and sane batching numbers.
pub(super) fn check_tracing(t: &TracingFile, p: &mut Problems) -> Option<TracingSpec> {
    let endpoint = match t.otlp_endpoint.parse::<http::Uri>() {
        Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {
            otlp_traces_url(uri)
        }
        _ => None,
    };
    if endpoint.is_none() {
        p.at(
            "tracing.otlp_endpoint",
            format!(
                "`{}` is not an http(s) URL of an OTLP collector (like http://127.0.0.1:4318)",
                t.otlp_endpoint
            ),
        );
    }
    let sample_ratio = t.sample_ratio.unwrap_or(1.0);
    let queue = t.queue.unwrap_or(8192);
    let batch_size = t.batch_size.unwrap_or(512);
    let export_interval = t
        .export_interval
        .as_ref()
        .map_or(std::time::Duration::from_secs(1), |d| d.0);
    let export_timeout = t
        .export_timeout
        .as_ref()
        .map_or(std::time::Duration::from_secs(5), |d| d.0);
    let service_name = t.service_name.clone().unwrap_or_else(|| "levee".into());
    if !(0.0..=1.0).contains(&sample_ratio) {
        p.at("tracing.sample_ratio", "tracing.sample_ratio must be from 0 to 1");
    }
    if queue == 0 || queue > 1_048_576 {
        p.at("tracing.queue", "tracing.queue must be from 1 to 1048576");
    }
    if batch_size == 0 || batch_size > 65_536 {
        p.at("tracing.batch_size", "tracing.batch_size must be from 1 to 65536");
    }
    if export_interval.is_zero() || export_timeout.is_zero() {
        p.at(
            "tracing",
            "tracing.export_interval and export_timeout must be above zero",
        );
    }
    if service_name.is_empty() {
        p.at("tracing.service_name", "tracing.service_name must not be empty");
    }
    Some(TracingSpec {
        endpoint: endpoint?,
        sample_ratio,
        parent_based: t.parent_based.unwrap_or(true),
        service_name,
        queue,
        batch_size,
        export_interval,
        export_timeout,
    })
}

/// A base collector URL gets the OTLP/HTTP traces path; a URL with a path is used as is (the
/// same rule as `OTEL_EXPORTER_OTLP_ENDPOINT` versus `..._TRACES_ENDPOINT`).
fn otlp_traces_url(uri: http::Uri) -> Option<http::Uri> {
    if uri.path() != "/" || uri.query().is_some() {
        return Some(uri);
    }
    let mut parts = uri.into_parts();
    parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/v1/traces"));
    http::Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use crate::config::load_str;
    use crate::config::spec::CallLogStore;

    const BASE: &str = "listeners: [{ name: public, bind: \"127.0.0.1:0\" }]\n";
    const POSTGRES: &str = "cluster: { postgres: { url: \"postgres://levee@127.0.0.1:5432/levee\" } }\n";

    fn store(extra: &str) -> Option<CallLogStore> {
        let config = load_str(&format!("{BASE}{extra}"), "t.yaml").unwrap();
        config.call_log.map(|c| c.store)
    }

    #[test]
    fn the_call_log_is_in_postgres_whenever_the_cluster_has_one() {
        assert_eq!(store(""), None);
        assert_eq!(
            store("data_dir: /tmp/a\n"),
            Some(CallLogStore::Sqlite("/tmp/a".into()))
        );
        assert_eq!(store(POSTGRES), Some(CallLogStore::Postgres));
        assert_eq!(
            store(&format!("data_dir: /tmp/a\n{POSTGRES}")),
            Some(CallLogStore::Postgres)
        );
        assert_eq!(
            store(&format!("{POSTGRES}call_log: {{ queue: 8 }}\n")),
            Some(CallLogStore::Postgres)
        );
        assert_eq!(
            store(&format!("{POSTGRES}call_log: {{ enabled: false }}\n")),
            None
        );
        let refused = load_str(&format!("{BASE}call_log: {{ queue: 8 }}\n"), "t.yaml").unwrap_err();
        assert!(
            format!("{refused:?}")
                .contains("`data_dir` (where its SQLite database lives) or `cluster.postgres`"),
            "{refused:?}"
        );
    }
}
