//! The management plane from the command line: `levee keys`, `teams`, `consumers`,
//! `subscriptions`, `tokens`, `catalog`, `audit` and `usage`, each an admin API call to a
//! running gateway (like `levee calls`). People get an aligned table, scripts `--json`: the
//! API's answer as it came. A refusal prints the API's message and exits 1.

mod keys;
mod subscriptions;
mod teams;

use std::process::ExitCode;

use clap::Subcommand;
use http::Method;
use serde_json::{Map, Value};

use crate::AdminArgs;

/// The management commands, flattened into `levee`'s own.
#[derive(Subcommand)]
pub enum Manage {
    /// Virtual API keys in the management store: create, list, show, revoke, rotate.
    Keys {
        #[command(subcommand)]
        action: keys::KeysAction,
    },
    /// Teams (tenants owning consumers, keys and published services).
    Teams {
        #[command(subcommand)]
        action: teams::TeamsAction,
    },
    /// Consumers (who calls: they hold keys and subscriptions).
    Consumers {
        #[command(subcommand)]
        action: teams::ConsumersAction,
    },
    /// Subscriptions of consumers to published services: request, approve, reject, cancel.
    Subscriptions {
        #[command(subcommand)]
        action: subscriptions::SubscriptionsAction,
    },
    /// Admin API tokens with a role (admin, team_admin, viewer).
    Tokens {
        #[command(subcommand)]
        action: teams::TokensAction,
    },
    /// Published services, their approval mode and versions.
    Catalog {
        #[command(flatten)]
        remote: Remote,
    },
    /// The audit log of changes made through the admin API, newest first.
    Audit {
        #[command(flatten)]
        remote: Remote,
        /// Only this kind of object: team, consumer, key, token, subscription.
        #[arg(long)]
        kind: Option<String>,
        /// Only this object (a name or an id).
        #[arg(long)]
        object_id: Option<String>,
        /// Only changes by this token id (`bootstrap`: the token of admin.token_env).
        #[arg(long)]
        actor: Option<String>,
        /// Only this action, e.g. key.revoke.
        #[arg(long)]
        action: Option<String>,
        /// From this time (RFC 3339 or ms since the epoch).
        #[arg(long)]
        since: Option<String>,
        /// Until this time (RFC 3339 or ms since the epoch).
        #[arg(long)]
        until: Option<String>,
        /// At most this many entries (1 to 1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Requests, tokens and cost of stored keys, summed per key, consumer or team.
    Usage {
        #[command(flatten)]
        remote: Remote,
        #[arg(long, default_value = "key", value_parser = ["key", "consumer", "team"])]
        group_by: String,
    },
}

/// Runs a management command.
pub fn run(command: Manage) -> ExitCode {
    match command {
        Manage::Keys { action } => keys::run(action),
        Manage::Teams { action } => teams::run_teams(action),
        Manage::Consumers { action } => teams::run_consumers(action),
        Manage::Tokens { action } => teams::run_tokens(action),
        Manage::Subscriptions { action } => subscriptions::run(action),
        Manage::Catalog { remote } => {
            remote.call(Method::GET, "/api/v1/catalog", None, subscriptions::catalog_table)
        }
        Manage::Audit {
            remote,
            kind,
            object_id,
            actor,
            action,
            since,
            until,
            limit,
        } => {
            let query = query(&[
                ("kind", kind),
                ("object_id", object_id),
                ("actor", actor),
                ("action", action),
                ("since", since),
                ("until", until),
                ("limit", Some(limit.to_string())),
            ]);
            remote.call(Method::GET, &format!("/api/v1/audit{query}"), None, audit_table)
        }
        Manage::Usage { remote, group_by } => {
            let query = query(&[("group_by", Some(group_by))]);
            remote.call(Method::GET, &format!("/api/v1/usage{query}"), None, usage_table)
        }
    }
}

/// Where the admin API is, how to authenticate, and how to print: every management command
/// takes these.
#[derive(clap::Args)]
pub struct Remote {
    #[command(flatten)]
    admin: AdminArgs,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl Remote {
    /// Sends `method path` (with `body`) and prints the answer: its JSON, or `view` of it.
    pub fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        view: impl Fn(&Value) -> String,
    ) -> ExitCode {
        let url = format!("{}{path}", self.admin.admin.trim_end_matches('/'));
        send(&self.admin, method, &url, body, self.json, view)
    }
}

/// Runs one admin API GET and prints JSON or a table (`levee calls`, `top`, `slo status`).
pub fn admin_command(admin: &AdminArgs, url: &str, json: bool, table: fn(&Value) -> String) -> ExitCode {
    send(admin, Method::GET, url, None, json, table)
}

/// Runs one admin API request and prints the answer's JSON or `view` of it; an error (the
/// API's message, or why it could not be reached) goes to stderr with exit code 1.
fn send(
    admin: &AdminArgs,
    method: Method,
    url: &str,
    body: Option<Value>,
    json: bool,
    view: impl Fn(&Value) -> String,
) -> ExitCode {
    let token = std::env::var(&admin.token_env).ok().filter(|t| !t.is_empty());
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("levee: {error}");
            return ExitCode::FAILURE;
        }
    };
    let answer = runtime.block_on(levee::admin_client::send_json(
        method,
        url,
        token.as_deref(),
        body,
    ));
    match answer {
        Ok(value) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
            } else {
                print!("{}", view(&value));
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("levee: {error}");
            ExitCode::FAILURE
        }
    }
}

/// A JSON field, or null when absent.
pub fn field<'a>(value: &'a Value, key: &str) -> &'a Value {
    value.get(key).unwrap_or(&Value::Null)
}

/// A value as a table cell: `-` for null or nothing, strings bare, arrays joined by commas.
pub fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "-".into(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(","),
        Value::Object(map) if map.is_empty() => "-".into(),
        other => other.to_string(),
    }
}

/// A field of `value` as a table cell.
pub fn cell(value: &Value, key: &str) -> String {
    text(field(value, key))
}

/// A dollar amount with four decimals (`-` when absent).
pub fn usd(value: &Value) -> String {
    value.as_f64().map_or_else(|| "-".into(), |v| format!("{v:.4}"))
}

/// A budget `{usd, per}` as `50 per 30d`.
pub fn budget(value: &Value) -> String {
    match (field(value, "usd").as_f64(), field(value, "per").as_str()) {
        (Some(usd), Some(per)) => format!("{usd} per {per}"),
        _ => "-".into(),
    }
}

/// One object as `field value` lines (`id` and `name` first), nested objects flattened to
/// dotted names.
pub fn object_view(value: &Value) -> String {
    let mut rows = Vec::new();
    flatten("", value, &mut rows);
    rows.sort_by_key(|row| match row.first().map(String::as_str) {
        Some("id") => 0,
        Some("name") => 1,
        _ => 2,
    });
    levee::admin_client::table(&["field", "value"], &rows)
}

fn flatten(prefix: &str, value: &Value, rows: &mut Vec<Vec<String>>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, inner) in map {
                let name = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&name, inner, rows);
            }
        }
        other => rows.push(vec![prefix.to_owned(), text(other)]),
    }
}

/// A path segment: names and ids are plain already, anything else is percent-encoded.
pub fn segment(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `?a=b&...` of the pairs that have a value (empty when none has).
pub fn query(pairs: &[(&str, Option<String>)]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    let mut any = false;
    for (name, value) in pairs {
        if let Some(value) = value {
            query.append_pair(name, value);
            any = true;
        }
    }
    if any {
        format!("?{}", query.finish())
    } else {
        String::new()
    }
}

/// `KEY=VALUE` of a `--metadata` flag.
pub fn key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .filter(|(key, _)| !key.is_empty())
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("`{text}` is not KEY=VALUE"))
}

/// A JSON object being built from flags: absent flags leave no field.
#[derive(Default)]
pub struct Body(Map<String, Value>);

impl Body {
    pub fn set(mut self, name: &str, value: impl Into<Value>) -> Body {
        self.0.insert(name.to_owned(), value.into());
        self
    }

    pub fn opt(self, name: &str, value: Option<impl Into<Value>>) -> Body {
        match value {
            Some(value) => self.set(name, value),
            None => self,
        }
    }

    /// `budget: {usd, per}` when both are given (clap makes each need the other).
    pub fn budget(self, usd: Option<f64>, per: Option<String>) -> Body {
        match (usd, per) {
            (Some(usd), Some(per)) => self.set("budget", serde_json::json!({ "usd": usd, "per": per })),
            _ => self,
        }
    }

    /// `metadata: {key: value}` of `--metadata KEY=VALUE` flags, when there are any.
    pub fn metadata(self, pairs: Vec<(String, String)>) -> Body {
        if pairs.is_empty() {
            return self;
        }
        let map: Map<String, Value> = pairs.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
        self.set("metadata", map)
    }

    pub fn done(self) -> Value {
        Value::Object(self.0)
    }
}

fn audit_table(value: &Value) -> String {
    let rows: Vec<Vec<String>> = field(value, "entries")
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            ["time", "actor", "role", "action", "kind", "object_id", "team"]
                .iter()
                .map(|k| cell(e, k))
                .collect()
        })
        .collect();
    levee::admin_client::table(
        &["time", "actor", "role", "action", "kind", "object", "team"],
        &rows,
    )
}

fn usage_table(value: &Value) -> String {
    let rows: Vec<Vec<String>> = field(value, "groups")
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| {
            vec![
                cell(g, "group"),
                cell(g, "requests"),
                cell(g, "tokens"),
                usd(field(g, "cost_usd")),
                usd(field(g, "period_cost_usd")),
            ]
        })
        .collect();
    let group = field(value, "group_by").as_str().unwrap_or("group");
    levee::admin_client::table(&[group, "requests", "tokens", "cost usd", "period usd"], &rows)
}
