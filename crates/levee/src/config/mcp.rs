//! The MCP gateway as validated: its servers (how each is reached, its limits) and its
//! access rules.

use std::sync::Arc;
use std::time::Duration;

use levee_resilience::BreakerConfig;

/// The `mcp` block.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct McpSpec {
    pub servers: Vec<McpServerSpec>,
    pub access: Vec<McpAccessSpec>,
}

/// One MCP server.
#[derive(Debug, Clone, PartialEq)]
pub struct McpServerSpec {
    pub name: Arc<str>,
    pub transport: McpTransport,
    pub timeout: Duration,
    /// (calls, per period).
    pub rate_limit: Option<(u32, Duration)>,
    pub breaker: Option<BreakerConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum McpTransport {
    /// Streamable HTTP at `url`.
    Http {
        url: http::Uri,
        headers: Vec<(http::HeaderName, http::HeaderValue)>,
    },
    /// The older HTTP+SSE transport: `url` is the event stream's endpoint.
    Sse {
        url: http::Uri,
        headers: Vec<(http::HeaderName, http::HeaderValue)>,
    },
    /// A local process over stdio.
    Stdio {
        command: String,
        args: Vec<String>,
        env: Vec<(String, String)>,
    },
}

/// Who a rule is for, and what it allows.
#[derive(Debug, Clone, PartialEq)]
pub struct McpAccessSpec {
    pub consumers: Vec<Arc<str>>,
    pub keys: Vec<Arc<str>>,
    pub teams: Vec<Arc<str>>,
    /// `None`: every server.
    pub servers: Option<Vec<Arc<str>>>,
    /// `None`: every tool of the allowed servers.
    pub tools: Option<Vec<Arc<str>>>,
}

/// The separator between a server's name and its tool's (or prompt's) name.
pub const PREFIX_SEPARATOR: &str = "__";
