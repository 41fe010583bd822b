//! The config file as written by people: serde types that mirror the YAML one to one.
//!
//! These types only describe shape (and generate the JSON Schema in `docs/levee.schema.json`);
//! they are never used at run time. `validate` turns them into the checked types of
//! [`super::spec`], which is where meaning (addresses, header names, compiled paths) lives.
//!
//! The types are split by section, in submodules re-exported here: every type is named
//! `config::file::X`.

mod auth;
mod cluster;
mod guardrails;
mod listeners;
mod llm;
mod mcp;
mod routes;
mod slo;
mod telemetry;
mod upstreams;

pub use auth::*;
pub use cluster::*;
pub use guardrails::*;
pub use listeners::*;
pub use llm::*;
pub use mcp::*;
pub use routes::*;
pub use slo::*;
pub use telemetry::*;
pub use upstreams::*;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use super::duration::DurationStr;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Where the gateway accepts client traffic.
    #[serde(default)]
    pub listeners: Vec<ListenerFile>,
    /// The admin listener (health, readiness, metrics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminFile>,
    /// Named groups of targets that routes send traffic to.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamFile>,
    /// Routes, matched in order: the first route whose match accepts a request takes it.
    #[serde(default)]
    pub routes: Vec<RouteFile>,
    /// Worker threads, each with its own event loop and listening socket: `auto` (one per
    /// core, the default) or a number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<Workers>,
    /// How long in-flight requests may run after SIGTERM/SIGINT before the process exits.
    /// Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_grace: Option<DurationStr>,
    /// The JSON access log written to stdout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLogFile>,
    /// Callers with credentials.
    #[serde(default)]
    pub consumers: Vec<ConsumerFile>,
    /// JSON Web Token settings for routes with `auth: jwt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtFile>,
    /// Directory for Levee's own data (the call log database). Without it (or
    /// `cluster.postgres`) there is no call log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<String>,
    /// The call log: one row per request in `data_dir/calls.sqlite3`, or with
    /// `cluster.postgres` in PostgreSQL for the whole fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_log: Option<CallLogFile>,
    /// The AI gateway: LLM providers and the model names clients use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<LlmFile>,
    /// The MCP gateway: MCP servers that `mcp: true` routes federate into one endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<McpFile>,
    /// OpenTelemetry traces: a span per request and per upstream attempt, exported over
    /// OTLP/HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingFile>,
    /// Load shedding: caps that protect the gateway itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsFile>,
    /// Service level objectives the gateway computes from its own traffic (see docs/slo.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slos: Vec<SloFile>,
    /// Where burn-rate alerts on the SLOs are sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerting: Option<AlertingFile>,
    /// Cluster mode: many replicas acting as one gateway through Redis and PostgreSQL
    /// (docs/cluster.md). Restart to change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterFile>,
}

/// `auto` or a positive number of worker threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    Auto,
    Count(usize),
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct WorkersVisitor;
        impl Visitor<'_> for WorkersVisitor {
            type Value = Workers;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`auto` or a number of worker threads from 1 to 256")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Workers, E> {
                if v == "auto" {
                    Ok(Workers::Auto)
                } else {
                    Err(E::custom(format!(
                        "invalid workers `{v}`: expected `auto` or a number from 1 to 256"
                    )))
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Workers, E> {
                match v {
                    1..=256 => Ok(Workers::Count(v as usize)),
                    _ => Err(E::custom(format!(
                        "invalid workers `{v}`: expected `auto` or a number from 1 to 256"
                    ))),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Workers, E> {
                Err(E::custom(format!(
                    "invalid workers `{v}`: expected `auto` or a number from 1 to 256"
                )))
            }
        }
        deserializer.deserialize_any(WorkersVisitor)
    }
}

impl Serialize for Workers {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Workers::Auto => serializer.serialize_str("auto"),
            Workers::Count(n) => serializer.serialize_u64(*n as u64),
        }
    }
}

impl JsonSchema for Workers {
    fn schema_name() -> Cow<'static, str> {
        "Workers".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "`auto` (one worker per core) or a number of worker threads.",
            "oneOf": [
                { "type": "string", "const": "auto" },
                { "type": "integer", "minimum": 1, "maximum": 256 }
            ]
        })
    }
}

/// The JSON Schema of the config file, as published in `docs/levee.schema.json`.
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(ConfigFile);
    schema.to_value()
}
