//! What the gateway records, as written: the access log, the call log and tracing.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::duration::DurationStr;

/// The access log.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessLogFile {
    /// Write one JSON line per request to stdout. Default true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How many lines may wait for the writer before new ones are dropped (and counted in
    /// `levee_access_log_dropped_total`). Default 16384.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<usize>,
    /// Share of successful requests (status below 400) that get a line, from 0 to 1; errors
    /// are always logged. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_sample: Option<f64>,
}

fn default_true() -> bool {
    true
}

/// Call log settings.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CallLogFile {
    /// Record calls (when `data_dir` or `cluster.postgres` is set; with `cluster.postgres`
    /// the fleet's calls go to PostgreSQL). Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Records waiting for the writer at most; more are dropped and counted. Default 16384.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<usize>,
    /// Rows older than this are deleted. Default 7d.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<DurationStr>,
    /// Rows kept at most (the oldest go first). Default 1000000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rows: Option<u64>,
}

/// OpenTelemetry tracing settings.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TracingFile {
    /// The OTLP/HTTP collector: a base URL such as `http://127.0.0.1:4318` (spans are posted to
    /// `/v1/traces` under it) or a full URL ending in a path of its own. `http` or `https`.
    pub otlp_endpoint: String,
    /// Share of new traces recorded, from 0 to 1. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_ratio: Option<f64>,
    /// Follow the caller's sampling decision (the `traceparent` sampled flag) when there is
    /// one. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_based: Option<bool>,
    /// `service.name` of the exported spans. Default `levee`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// Requests whose spans may wait for export; past it spans are dropped and counted in
    /// `levee_trace_spans_dropped_total`. Default 8192.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<usize>,
    /// Spans sent per export request at most. Default 512.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// Longest wait before queued spans are sent. Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_interval: Option<DurationStr>,
    /// Give up on one export request after this long (its spans are dropped and counted).
    /// Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_timeout: Option<DurationStr>,
}
