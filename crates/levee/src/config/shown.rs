//! The config as the admin API shows it (`GET /api/v1/config`, `/api/v1/routes`): the file
//! as read, as JSON, with its secrets replaced by `<redacted>`. It is built once, when a
//! config is loaded ([`super::Config::shown`]), so that the file types stay in validation
//! and the running config holds only specs and this view.

use serde_json::Value;

use super::file::ConfigFile;

/// Keeps a receiver URL's scheme and authority: its path or query often carries a token
/// (chat webhooks do).
fn redact_url(url: &mut Value) {
    let shown = url
        .as_str()
        .and_then(|u| u.parse::<http::Uri>().ok())
        .and_then(|u| {
            // Host and port only: user information in the authority is a secret too.
            let port = u.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
            Some(format!("{}://{}{port}/<redacted>", u.scheme_str()?, u.host()?))
        });
    *url = Value::from(shown.unwrap_or_else(|| "<redacted>".into()));
}

/// Credential-bearing header names whose rewrite values are never shown.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api-key",
];

/// The config as read, with secrets replaced by `<redacted>`.
pub(super) fn redacted(file: &ConfigFile) -> Value {
    let mut value = serde_json::to_value(file).unwrap_or(Value::Null);
    if let Some(consumers) = value.get_mut("consumers").and_then(Value::as_array_mut) {
        for consumer in consumers {
            if let Some(keys) = consumer.get_mut("api_keys").and_then(Value::as_array_mut) {
                for key in keys {
                    *key = Value::from("<redacted>");
                }
            }
        }
    }
    // Receiver URLs often carry a token in their path or query (chat webhooks do): only
    // the scheme and authority are shown.
    if let Some(alerting) = value.get_mut("alerting") {
        if let Some(url) = alerting.pointer_mut("/alertmanager/url") {
            redact_url(url);
        }
        for hook in alerting
            .get_mut("webhooks")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if let Some(url) = hook.get_mut("url") {
                redact_url(url);
            }
        }
    }
    // Store URLs carry no password (validation refuses one), but their path and options
    // are nobody's business either.
    for store in ["/cluster/redis/url", "/cluster/postgres/url"] {
        if let Some(url) = value.pointer_mut(store) {
            redact_url(url);
        }
    }
    if let Some(routes) = value.get_mut("routes").and_then(Value::as_array_mut) {
        for route in routes {
            for side in ["request_headers", "response_headers"] {
                for action in ["set", "add"] {
                    let Some(headers) = route
                        .get_mut(side)
                        .and_then(|s| s.get_mut(action))
                        .and_then(Value::as_object_mut)
                    else {
                        continue;
                    };
                    for (name, header_value) in headers.iter_mut() {
                        if SECRET_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                            *header_value = Value::from("<redacted>");
                        }
                    }
                }
            }
            // Guardrail webhooks: a token may be in the URL or any header.
            for guardrail in route
                .get_mut("guardrails")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if let Some(webhook) = guardrail.get_mut("webhook") {
                    if let Some(url) = webhook.get_mut("url") {
                        redact_url(url);
                    }
                    redact_values(webhook.get_mut("headers"));
                }
            }
        }
    }
    // MCP servers: their headers and the environment of local ones carry credentials.
    for server in value
        .pointer_mut("/mcp/servers")
        .and_then(Value::as_object_mut)
        .into_iter()
        .flat_map(|servers| servers.values_mut())
    {
        redact_values(server.get_mut("headers"));
        redact_values(server.get_mut("env"));
    }
    value
}

/// Every value of a map, redacted (its keys stay, so the shape can be read).
fn redact_values(map: Option<&mut Value>) {
    for value in map
        .and_then(Value::as_object_mut)
        .into_iter()
        .flat_map(|m| m.values_mut())
    {
        *value = Value::from("<redacted>");
    }
}
