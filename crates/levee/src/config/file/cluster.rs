//! The `cluster` section as written: the shared stores that make many replicas one gateway.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::duration::DurationStr;

/// Cluster mode: replicas share rate limits, LLM budgets, SLO state and the call log through
/// Redis and PostgreSQL (see docs/cluster.md). Without it every replica is on its own.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// This replica's name in the fleet. Default: the host name and the port of the first
    /// listener (`host:8080`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Redis: fleet-wide rate limits, LLM budgets and token limits, SLO counts, the alert
    /// leader's lease, canary decisions and experiments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisFile>,
    /// PostgreSQL: the fleet's call log (and analytics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresFile>,
    /// How often a replica says it is alive; it counts as gone after three missed beats.
    /// Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<DurationStr>,
}

/// Where Redis is and how long to wait for it.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisFile {
    /// The environment variable holding the URL (`redis://[:password@]host:port[/db]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_env: Option<String>,
    /// The URL itself, when it carries no password (`levee check` warns when it does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Longest wait for one answer; past it the replica decides alone. Default 50ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationStr>,
    /// After a failure, how long the replica decides alone before asking Redis again, so a
    /// flapping Redis does not add its timeout to every request. Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<DurationStr>,
    /// Prefix of every key Levee writes, so several fleets can share one Redis. Default
    /// `levee`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
}

/// Where PostgreSQL is.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresFile {
    /// The environment variable holding the connection string
    /// (`postgres://user:password@host:port/db` or `host=... user=...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_env: Option<String>,
    /// The connection string itself, when it carries no password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Longest wait to connect or for one statement. Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationStr>,
    /// Call records written per statement at most. Default 500.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
}
