//! One MCP request across the route's servers: lists merged under prefixed names, calls
//! routed by their prefix, and the caller's access rules applied to both.
//!
//! Names: a tool or prompt `name` of server `s` is `s__name` to clients; a resource's
//! `uri` (or a template's `uriTemplate`) is `s+uri`. Access: the rules of `mcp.access`
//! that name the caller (its consumer, its key or its key's team) say which servers and
//! tools it may use; a caller no rule names may use every server of the route.

use std::sync::Arc;

use futures_util::future::join_all;
use serde_json::{json, Map, Value};

use super::{Backend, Hub, McpError};
use crate::config::mcp::{McpAccessSpec, PREFIX_SEPARATOR};
use crate::record::RequestRecord;

/// Pages of one server's list read at most.
const MAX_PAGES: usize = 16;

/// JSON-RPC error codes of Levee's own refusals.
const UNAVAILABLE: i64 = -32000;
const NOT_ALLOWED: i64 = -32003;
const INVALID_PARAMS: i64 = -32602;

/// How a list's items are named apart.
#[derive(Clone, Copy)]
enum Naming {
    /// `name` prefixed with `server__`.
    Name,
    /// This field (a URI) prefixed with `server+`.
    Uri(&'static str),
}

pub(super) struct Call<'a, 'b> {
    pub backend: &'a Backend<'b>,
    pub session: Arc<str>,
    pub record: &'a mut RequestRecord,
}

type Refusal = (i64, String);

impl Call<'_, '_> {
    pub async fn method(self, method: &str, params: Value) -> Result<Value, Refusal> {
        match method {
            "ping" => Ok(json!({})),
            "tools/list" => Ok(self.list(method, "tools", Naming::Name).await),
            "prompts/list" => Ok(self.list(method, "prompts", Naming::Name).await),
            "resources/list" => Ok(self.list(method, "resources", Naming::Uri("uri")).await),
            "resources/templates/list" => Ok(self
                .list(method, "resourceTemplates", Naming::Uri("uriTemplate"))
                .await),
            "tools/call" => self.call_tool(params).await,
            "prompts/get" => self.forward_named(method, params, "name", PREFIX_SEPARATOR).await,
            "resources/read" => self.forward_named(method, params, "uri", "+").await,
            _ => Err((-32601, format!("Method not found: `{method}`."))),
        }
    }

    /// The access rules that name the caller.
    fn rules(&self) -> Vec<&McpAccessSpec> {
        let caller = self.backend.caller;
        let named =
            |list: &[Arc<str>], who: Option<&str>| who.is_some_and(|w| list.iter().any(|n| &**n == w));
        self.backend
            .access
            .iter()
            .filter(|r| {
                named(&r.consumers, caller.consumer)
                    || named(&r.keys, caller.key)
                    || named(&r.teams, caller.team)
            })
            .collect()
    }

    fn server_allowed(rules: &[&McpAccessSpec], server: &str) -> bool {
        rules.is_empty() || rules.iter().any(|r| rule_has_server(r, server))
    }

    fn tool_allowed(rules: &[&McpAccessSpec], server: &str, tool: &str) -> bool {
        rules.is_empty()
            || rules.iter().any(|r| {
                rule_has_server(r, server) && r.tools.as_ref().is_none_or(|t| t.iter().any(|n| &**n == tool))
            })
    }

    /// The route's servers the caller may use: (index in the hub, name).
    fn servers(&self) -> Vec<(usize, Arc<str>)> {
        let rules = self.rules();
        self.backend
            .servers
            .iter()
            .filter(|name| Self::server_allowed(&rules, name))
            .filter_map(|name| Some((self.backend.hub.index(name)?, name.clone())))
            .collect()
    }

    /// A list method across the servers, merged; a server that fails is left out.
    async fn list(&self, method: &str, key: &'static str, naming: Naming) -> Value {
        let servers = self.servers();
        let hub = self.backend.hub;
        let lists = join_all(
            servers
                .iter()
                .map(|(index, name)| list_one(hub, *index, name, self.session.clone(), method, key)),
        )
        .await;
        let rules = self.rules();
        let mut merged = Vec::new();
        for ((_, server), items) in servers.iter().zip(lists) {
            for mut item in items {
                let Some(object) = item.as_object_mut() else {
                    continue;
                };
                match naming {
                    Naming::Name => {
                        let Some(name) = object.get("name").and_then(Value::as_str) else {
                            continue;
                        };
                        let prefixed = format!("{server}{PREFIX_SEPARATOR}{name}");
                        if key == "tools" && !Self::tool_allowed(&rules, server, &prefixed) {
                            continue;
                        }
                        object.insert("name".into(), Value::from(prefixed));
                    }
                    Naming::Uri(field) => {
                        let Some(uri) = object.get(field).and_then(Value::as_str) else {
                            continue;
                        };
                        let prefixed = format!("{server}+{uri}");
                        object.insert(field.into(), Value::from(prefixed));
                        if let Some(name) = object.get("name").and_then(Value::as_str) {
                            let name = format!("{server}{PREFIX_SEPARATOR}{name}");
                            object.insert("name".into(), Value::from(name));
                        }
                    }
                }
                merged.push(item);
            }
        }
        json!({ key: merged })
    }

    /// `tools/call`, routed by the tool's prefix and recorded as the request's call.
    async fn call_tool(self, params: Value) -> Result<Value, Refusal> {
        let name = params
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let (server, tool) = match self.target(&name, PREFIX_SEPARATOR) {
            Ok(target) => target,
            Err(refused) => {
                // A server of the route the caller may not use: recorded like a tool refused.
                let named = name
                    .split_once(PREFIX_SEPARATOR)
                    .map(|(s, _)| s)
                    .unwrap_or_default();
                if let Some(server) = self.backend.servers.iter().find(|s| ***s == *named).cloned() {
                    self.record.mcp_call = Some((server.clone(), Arc::from(name.as_str()), "refused"));
                    self.count(&server, "refused");
                }
                return Err(refused);
            }
        };
        let rules = self.rules();
        let server_name: Arc<str> = Arc::from(server.as_str());
        let record_as = |record: &mut RequestRecord, outcome: &'static str| {
            record.mcp_call = Some((server_name.clone(), Arc::from(name.as_str()), outcome));
        };
        if !Self::tool_allowed(&rules, &server, &name) {
            record_as(self.record, "refused");
            self.count(&server_name, "refused");
            return Err((
                NOT_ALLOWED,
                format!("The tool `{name}` is not allowed for this caller."),
            ));
        }
        let mut forwarded = params.as_object().cloned().unwrap_or_default();
        forwarded.insert("name".into(), Value::from(tool));
        let index = self.backend.hub.index(&server).ok_or_else(|| unknown(&name))?;
        let result = self
            .backend
            .hub
            .call(
                index,
                self.session.clone(),
                "tools/call",
                Value::Object(forwarded),
            )
            .await;
        let outcome = match &result {
            Ok(answer) if answer.get("isError") == Some(&Value::Bool(true)) => "tool_error",
            Ok(_) => "ok",
            Err(error) => error.outcome(),
        };
        record_as(self.record, outcome);
        self.count(&server_name, outcome);
        result.map_err(|e| refusal(&server, e))
    }

    fn count(&self, server: &Arc<str>, outcome: &'static str) {
        if let Some(route) = &self.record.route {
            self.backend.metrics.lock().ai.record_mcp(route, server, outcome);
        }
    }

    /// `prompts/get` and `resources/read`: `field` names the server by its prefix.
    async fn forward_named(
        &self,
        method: &str,
        params: Value,
        field: &str,
        separator: &str,
    ) -> Result<Value, Refusal> {
        let named = params
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let (server, original) = self.target(&named, separator)?;
        let mut forwarded: Map<String, Value> = params.as_object().cloned().unwrap_or_default();
        forwarded.insert(field.into(), Value::from(original));
        let index = self.backend.hub.index(&server).ok_or_else(|| unknown(&named))?;
        self.backend
            .hub
            .call(index, self.session.clone(), method, Value::Object(forwarded))
            .await
            .map_err(|e| refusal(&server, e))
    }

    /// The server a prefixed name points at (one the route federates and the caller may
    /// use), and the name the server knows.
    fn target(&self, named: &str, separator: &str) -> Result<(String, String), Refusal> {
        let (server, original) = named.split_once(separator).ok_or_else(|| unknown(named))?;
        let usable = self.servers().iter().any(|(_, s)| &**s == server);
        if !usable {
            let known = self.backend.servers.iter().any(|s| &**s == server);
            return Err(match known {
                true => (
                    NOT_ALLOWED,
                    format!("The MCP server `{server}` is not allowed for this caller."),
                ),
                false => unknown(named),
            });
        }
        Ok((server.to_owned(), original.to_owned()))
    }
}

fn rule_has_server(rule: &McpAccessSpec, server: &str) -> bool {
    rule.servers
        .as_ref()
        .is_none_or(|s| s.iter().any(|n| &**n == server))
}

fn unknown(named: &str) -> Refusal {
    (INVALID_PARAMS, format!("Unknown name `{named}`: names are `server{PREFIX_SEPARATOR}name` (resources `server+uri`) as listed."))
}

/// A server's failure as the client's JSON-RPC error; the server's own error as it is.
fn refusal(server: &str, error: McpError) -> Refusal {
    match error {
        McpError::Remote(error) => (
            error.get("code").and_then(Value::as_i64).unwrap_or(UNAVAILABLE),
            error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("The server refused.")
                .to_owned(),
        ),
        other => (
            UNAVAILABLE,
            format!("The MCP server `{server}` could not answer: {other}."),
        ),
    }
}

/// Every page of one server's list (empty when the server fails).
async fn list_one(
    hub: &Arc<Hub>,
    index: usize,
    name: &str,
    session: Arc<str>,
    method: &str,
    key: &str,
) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<Value> = None;
    for _ in 0..MAX_PAGES {
        let params = match &cursor {
            Some(cursor) => json!({ "cursor": cursor }),
            None => json!({}),
        };
        match hub.call(index, session.clone(), method, params).await {
            Ok(page) => {
                items.extend(
                    page.get(key)
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .cloned(),
                );
                cursor = page.get("nextCursor").filter(|c| !c.is_null()).cloned();
                if cursor.is_none() {
                    break;
                }
            }
            Err(McpError::Remote(_)) if items.is_empty() => break, // The server has no such list.
            Err(error) => {
                tracing::warn!(server = name, %error, "MCP server left out of {method}");
                return Vec::new();
            }
        }
    }
    items
}
