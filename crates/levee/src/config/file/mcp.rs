//! The MCP gateway as written: the `mcp` block (servers and access rules) and a route's
//! `mcp` and `mcp_servers` keys.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::CircuitBreakerFile;
use crate::config::duration::DurationStr;

/// MCP servers behind the gateway, and who may use what of them.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct McpFile {
    /// By name (letters, digits, `-`, and single `_` inside; the name prefixes its tools as
    /// `name__tool`).
    #[serde(default)]
    pub servers: BTreeMap<String, McpServerFile>,
    /// Who may use which servers and tools. A caller no rule names may use all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access: Vec<McpAccessFile>,
}

/// One MCP server: remote (`url`) or a local process spoken to over stdio (`command`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct McpServerFile {
    /// A remote server's endpoint (http or https).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// How the remote server is spoken to: `streamable_http` (the default) or `sse` (the
    /// older HTTP+SSE transport: `url` is its SSE endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<McpTransportFile>,
    /// Headers sent to a remote server (an `authorization`, say).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// A local server: the program Levee starts, restarts when it exits, and speaks to
    /// over its stdin and stdout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables for the program (added to Levee's own).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The longest wait for one answer of the server. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationStr>,
    /// Calls to this server allowed, e.g. `100/s` (all callers together).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<String>,
    /// The server's circuit breaker. On by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreakerFile>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum McpTransportFile {
    StreamableHttp,
    Sse,
}

/// One access rule: the callers it names may use only the servers and tools it lists.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct McpAccessFile {
    /// Consumers (by name) the rule is for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<String>,
    /// Virtual keys (by id) the rule is for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    /// Teams (by name) whose keys the rule is for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub teams: Vec<String>,
    /// The servers they may use (default: every server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub servers: Option<Vec<String>>,
    /// The tools they may see and call, as clients see them (`server__tool`); default: every
    /// tool of the servers they may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<String>>,
}
