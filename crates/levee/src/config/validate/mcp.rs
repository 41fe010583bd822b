//! The `mcp` block: servers reached one way each (a URL or a command), names that can
//! prefix tools, limits that parse; access rules that name known servers; routes with
//! `mcp: true` that name known servers.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::policies::parse_rate;
use super::upstreams::check_breaker;
use super::Problems;
use crate::config::file::{McpFile, McpServerFile, McpTransportFile, RouteFile};
use crate::config::mcp::*;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) fn check_mcp(file: &McpFile, p: &mut Problems) -> McpSpec {
    let mut servers = Vec::new();
    for (name, server) in &file.servers {
        let at = format!("mcp.servers.{name}");
        let valid_name = !name.is_empty()
            && !name.contains(PREFIX_SEPARATOR)
            && !name.starts_with('_')
            && !name.ends_with('_')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid_name {
            p.at(&at, format!("server name `{name}`: letters, digits, `-` and single `_` inside only (it prefixes its tools as `{name}{PREFIX_SEPARATOR}tool`)"));
        }
        if let Some(spec) = check_server(name, server, &at, p) {
            servers.push(spec);
        }
    }
    let names: HashSet<&str> = file.servers.keys().map(String::as_str).collect();
    let mut access = Vec::new();
    for (i, rule) in file.access.iter().enumerate() {
        let at = format!("mcp.access[{i}]");
        if rule.consumers.is_empty() && rule.keys.is_empty() && rule.teams.is_empty() {
            p.at(&at, "an access rule names `consumers`, `keys` or `teams`");
        }
        for (j, server) in rule.servers.iter().flatten().enumerate() {
            if !names.contains(server.as_str()) {
                p.at(
                    &format!("{at}.servers[{j}]"),
                    format!("no MCP server named `{server}`"),
                );
            }
        }
        for (j, tool) in rule.tools.iter().flatten().enumerate() {
            let known = tool
                .split_once(PREFIX_SEPARATOR)
                .is_some_and(|(server, name)| names.contains(server) && !name.is_empty());
            if !known {
                p.at(
                    &format!("{at}.tools[{j}]"),
                    format!("`{tool}` is not `server{PREFIX_SEPARATOR}tool` for a server of `mcp.servers`"),
                );
            }
        }
        let shared = |list: &[String]| {
            list.iter()
                .map(|s| Arc::from(s.as_str()))
                .collect::<Vec<Arc<str>>>()
        };
        access.push(McpAccessSpec {
            consumers: shared(&rule.consumers),
            keys: shared(&rule.keys),
            teams: shared(&rule.teams),
            servers: rule.servers.as_deref().map(shared),
            tools: rule.tools.as_deref().map(shared),
        });
    }
    McpSpec { servers, access }
}

fn check_server(name: &str, server: &McpServerFile, at: &str, p: &mut Problems) -> Option<McpServerSpec> {
    let transport = match (&server.url, &server.command) {
        (Some(url), None) => {
            let url = match url.parse::<http::Uri>() {
                Ok(url) if matches!(url.scheme_str(), Some("http" | "https")) && url.host().is_some() => {
                    Some(url)
                }
                _ => {
                    p.at(&format!("{at}.url"), "an http:// or https:// URL");
                    None
                }
            };
            let headers = headers(server, at, p);
            match server.transport {
                Some(McpTransportFile::Sse) => McpTransport::Sse { url: url?, headers },
                _ => McpTransport::Http { url: url?, headers },
            }
        }
        (None, Some(command)) => {
            if server.transport.is_some() || !server.headers.is_empty() {
                p.at(at, "`transport` and `headers` are for servers with a `url`");
            }
            if command.trim().is_empty() {
                p.at(&format!("{at}.command"), "the program to start");
            }
            McpTransport::Stdio {
                command: command.clone(),
                args: server.args.clone(),
                env: server.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            }
        }
        _ => {
            p.at(at, format!("MCP server `{name}` needs exactly one of `url` (remote) and `command` (local, over stdio)"));
            return None;
        }
    };
    if server.url.is_some() && (!server.args.is_empty() || !server.env.is_empty()) {
        p.at(at, "`args` and `env` are for servers with a `command`");
    }
    let timeout = server.timeout.map_or(DEFAULT_TIMEOUT, |t| t.0);
    if timeout.is_zero() {
        p.at(&format!("{at}.timeout"), "must be above 0");
    }
    let rate_limit = server.rate_limit.as_deref().and_then(|rate| {
        parse_rate(rate)
            .map_err(|e| p.at(&format!("{at}.rate_limit"), e))
            .ok()
    });
    let mut ok = true;
    let breaker = check_breaker(
        server.circuit_breaker.as_ref(),
        &format!("{at}.circuit_breaker"),
        p,
        &mut ok,
    );
    Some(McpServerSpec {
        name: name.into(),
        transport,
        timeout,
        rate_limit,
        breaker,
    })
}

fn headers(server: &McpServerFile, at: &str, p: &mut Problems) -> Vec<(http::HeaderName, http::HeaderValue)> {
    let mut out = Vec::new();
    for (name, value) in &server.headers {
        match (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            (Ok(name), Ok(value)) => out.push((name, value)),
            _ => p.at(&format!("{at}.headers.{name}"), "not a valid header"),
        }
    }
    out
}

/// A route's `mcp: true` and `mcp_servers`: the servers it federates (indexes into
/// `mcp.servers`), or `None` for a route that is not an MCP endpoint.
pub(super) fn check_mcp_route(
    route: &RouteFile,
    path: &str,
    mcp: Option<&McpFile>,
    p: &mut Problems,
) -> Option<Arc<[Arc<str>]>> {
    if !route.mcp {
        if route.mcp_servers.is_some() {
            p.at(
                &format!("{path}.mcp_servers"),
                "`mcp_servers` is for routes with `mcp: true`",
            );
        }
        return None;
    }
    if route.llm {
        p.at(
            &format!("{path}.mcp"),
            "a route is an AI gateway (`llm: true`) or an MCP endpoint (`mcp: true`), not both",
        );
    }
    let Some(mcp) = mcp.filter(|m| !m.servers.is_empty()) else {
        p.at(
            &format!("{path}.mcp"),
            format!(
                "route `{}` is an MCP endpoint but `mcp.servers` names no server",
                route.name
            ),
        );
        return Some(Arc::from([]));
    };
    let servers: Vec<Arc<str>> = match &route.mcp_servers {
        None => mcp.servers.keys().map(|k| Arc::from(k.as_str())).collect(),
        Some(listed) => {
            for (i, name) in listed.iter().enumerate() {
                if !mcp.servers.contains_key(name) {
                    p.at(
                        &format!("{path}.mcp_servers[{i}]"),
                        format!("no MCP server named `{name}`"),
                    );
                }
            }
            listed.iter().map(|s| Arc::from(s.as_str())).collect()
        }
    };
    Some(servers.into())
}
