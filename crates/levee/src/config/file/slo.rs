//! Service level objectives and where their burn-rate alerts go, as written.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::duration::DurationStr;

/// One service level objective.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SloFile {
    /// Names the SLO in metrics, alerts and the admin API: letters, digits, `_`, `-`, `.`.
    pub name: String,
    /// The route whose requests are counted.
    pub route: String,
    /// Count only this consumer's requests on the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    /// Percent of good events, above 0 and below 100 (`99.9`).
    pub objective: f64,
    /// The compliance window the error budget covers, 1h to 90d. Default 30d.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<DurationStr>,
    /// What a good event is: `availability` (any status below 500) or
    /// `{ latency_below: 300ms }` (answered within the threshold).
    pub sli: SliFile,
    /// For `availability` on a route with gRPC calls: the gRPC statuses that make a call bad
    /// whatever its HTTP status (a failed call answers 200). Default: `unavailable`,
    /// `internal`, `unknown`, `deadline_exceeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bad_grpc_statuses: Option<Vec<String>>,
}

/// An SLI: `availability` or `{ latency_below: DURATION }`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum SliFile {
    Named(SliName),
    Latency(LatencySliFile),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SliName {
    /// Good: any status below 500 (429 and other client errors count as good).
    Availability,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LatencySliFile {
    /// Good: the whole answer was sent within this time.
    pub latency_below: DurationStr,
}

/// Burn-rate alert delivery.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertingFile {
    /// How often alert rules are checked against the burn rates (which are computed every
    /// second), 1s to 1m. Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation_interval: Option<DurationStr>,
    /// A Prometheus Alertmanager: alerts are POSTed to its `/api/v2/alerts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alertmanager: Option<AlertReceiverFile>,
    /// Receivers of Alertmanager-shaped webhook notifications.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<AlertReceiverFile>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertReceiverFile {
    /// `http` or `https` URL.
    pub url: String,
}
