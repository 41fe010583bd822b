//! `levee keys`: virtual API keys made, listed, shown, revoked and rotated.

use std::process::ExitCode;

use clap::Subcommand;
use http::Method;
use serde_json::{json, Value};

use super::{cell, field, key_value, object_view, query, segment, usd, Body, Remote};

#[derive(Subcommand)]
pub enum KeysAction {
    /// Make a key for a consumer; its secret is printed this once.
    Create {
        #[command(flatten)]
        remote: Remote,
        /// The consumer the key belongs to.
        #[arg(long)]
        consumer: String,
        /// A label for people.
        #[arg(long)]
        name: Option<String>,
        /// RFC 3339 time from which the key answers 401 `key_expired`.
        #[arg(long)]
        expires_at: Option<String>,
        /// Route names the key may call (default: every route).
        #[arg(long, value_delimiter = ',')]
        allowed_routes: Option<Vec<String>>,
        /// Model names the key may ask for (default: every model).
        #[arg(long, value_delimiter = ',')]
        allowed_models: Option<Vec<String>>,
        /// Request rate limit, e.g. `100/s`.
        #[arg(long)]
        rate_limit: Option<String>,
        /// Requests at once under the rate limit (default: the rate's count).
        #[arg(long, requires = "rate_limit")]
        burst: Option<u32>,
        /// LLM spend allowed per `--budget-per`, in US dollars.
        #[arg(long, requires = "budget_per")]
        budget_usd: Option<f64>,
        /// The budget's period, e.g. `30d`.
        #[arg(long, requires = "budget_usd")]
        budget_per: Option<String>,
        /// LLM tokens per minute.
        #[arg(long)]
        tpm: Option<u64>,
        /// Requests per minute on LLM routes.
        #[arg(long)]
        rpm: Option<u64>,
        /// `KEY=VALUE`, repeatable.
        #[arg(long, value_parser = key_value)]
        metadata: Vec<(String, String)>,
    },
    /// Keys with their usage, a page at a time.
    List {
        #[command(flatten)]
        remote: Remote,
        /// Only this consumer's keys.
        #[arg(long)]
        consumer: Option<String>,
        /// The page after this key id (printed below a full page).
        #[arg(long)]
        after: Option<String>,
        /// Keys per page (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// One key with its limits and usage.
    Show {
        #[command(flatten)]
        remote: Remote,
        id: String,
    },
    /// Revoke a key: it answers 401 `key_revoked` everywhere within a second.
    Revoke {
        #[command(flatten)]
        remote: Remote,
        id: String,
    },
    /// Make a new key in place of one; the old one keeps working for `--grace`.
    Rotate {
        #[command(flatten)]
        remote: Remote,
        id: String,
        /// How long the old key keeps working, e.g. `1h` (default: not at all).
        #[arg(long)]
        grace: Option<String>,
    },
}

pub fn run(action: KeysAction) -> ExitCode {
    match action {
        KeysAction::Create {
            remote,
            consumer,
            name,
            expires_at,
            allowed_routes,
            allowed_models,
            rate_limit,
            burst,
            budget_usd,
            budget_per,
            tpm,
            rpm,
            metadata,
        } => {
            let rate_limit = rate_limit.map(|rate| match burst {
                Some(burst) => json!({ "rate": rate, "burst": burst }),
                None => json!({ "rate": rate }),
            });
            let body = Body::default()
                .set("consumer", consumer)
                .opt("name", name)
                .opt("expires_at", expires_at)
                .opt("allowed_routes", allowed_routes)
                .opt("allowed_models", allowed_models)
                .opt("rate_limit", rate_limit)
                .budget(budget_usd, budget_per)
                .opt("tokens_per_minute", tpm)
                .opt("requests_per_minute", rpm)
                .metadata(metadata)
                .done();
            remote.call(Method::POST, "/api/v1/keys", Some(body), new_key_view)
        }
        KeysAction::List {
            remote,
            consumer,
            after,
            limit,
        } => {
            let query = query(&[
                ("consumer", consumer),
                ("after", after),
                ("limit", Some(limit.to_string())),
            ]);
            remote.call(Method::GET, &format!("/api/v1/keys{query}"), None, keys_table)
        }
        KeysAction::Show { remote, id } => remote.call(
            Method::GET,
            &format!("/api/v1/keys/{}", segment(&id)),
            None,
            object_view,
        ),
        KeysAction::Revoke { remote, id } => remote.call(
            Method::DELETE,
            &format!("/api/v1/keys/{}", segment(&id)),
            None,
            |key| {
                format!(
                    "Revoked key {} at {}.\n",
                    cell(key, "id"),
                    cell(key, "revoked_at")
                )
            },
        ),
        KeysAction::Rotate { remote, id, grace } => {
            let body = Body::default().opt("grace", grace.clone()).done();
            let path = format!("/api/v1/keys/{}/rotate", segment(&id));
            remote.call(Method::POST, &path, Some(body), |key| {
                let old = match &grace {
                    Some(grace) => format!("The old key {id} keeps working for {grace}.\n"),
                    None => format!("The old key {id} stops working now.\n"),
                };
                format!("{}{old}", new_key_view(key))
            })
        }
    }
}

/// A key just made: the secret on its own line, then the key's fields (without it).
fn new_key_view(key: &Value) -> String {
    let mut fields = key.clone();
    let secret = fields
        .as_object_mut()
        .and_then(|map| map.remove("key"))
        .and_then(|k| k.as_str().map(str::to_owned))
        .unwrap_or_default();
    format!("Key (shown once): {secret}\n\n{}", object_view(&fields))
}

/// The keys as a table; below a full page, how to ask for the next.
fn keys_table(value: &Value) -> String {
    let rows: Vec<Vec<String>> = field(value, "keys")
        .as_array()
        .into_iter()
        .flatten()
        .map(|k| {
            let usage = field(k, "usage");
            vec![
                cell(k, "id"),
                cell(k, "consumer"),
                cell(k, "team"),
                cell(k, "prefix"),
                cell(k, "name"),
                cell(k, "expires_at"),
                cell(k, "revoked_at"),
                cell(usage, "requests"),
                usd(field(usage, "cost_usd")),
            ]
        })
        .collect();
    let mut out = levee::admin_client::table(
        &[
            "id", "consumer", "team", "prefix", "name", "expires", "revoked", "requests", "cost usd",
        ],
        &rows,
    );
    if let Some(next) = field(value, "next_after").as_str() {
        out.push_str(&format!("(more: --after {next})\n"));
    }
    out
}
