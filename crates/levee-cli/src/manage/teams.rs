//! `levee teams`, `levee consumers` and `levee tokens`: who owns, who calls, who administers.

use std::process::ExitCode;

use clap::Subcommand;
use http::Method;
use serde_json::Value;

use super::{budget, cell, field, key_value, object_view, segment, Body, Remote};

#[derive(Subcommand)]
pub enum TeamsAction {
    /// Make a team (admin).
    Create {
        #[command(flatten)]
        remote: Remote,
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// LLM spend allowed to the team's keys together per `--budget-per`, in US dollars.
        #[arg(long, requires = "budget_per")]
        budget_usd: Option<f64>,
        /// The budget's period, e.g. `30d`.
        #[arg(long, requires = "budget_usd")]
        budget_per: Option<String>,
        /// `KEY=VALUE`, repeatable.
        #[arg(long, value_parser = key_value)]
        metadata: Vec<(String, String)>,
    },
    /// Every team (a team admin sees its own).
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// One team.
    Show {
        #[command(flatten)]
        remote: Remote,
        name: String,
    },
    /// Delete a team without consumers (admin).
    Delete {
        #[command(flatten)]
        remote: Remote,
        name: String,
    },
}

#[derive(Subcommand)]
pub enum ConsumersAction {
    /// Make a consumer.
    Create {
        #[command(flatten)]
        remote: Remote,
        name: String,
        /// The team owning it (a team admin may only name its own).
        #[arg(long)]
        team: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// `KEY=VALUE`, repeatable.
        #[arg(long, value_parser = key_value)]
        metadata: Vec<(String, String)>,
    },
    /// Every consumer, the config file's included (source `config`).
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// One consumer.
    Show {
        #[command(flatten)]
        remote: Remote,
        name: String,
    },
    /// Delete a consumer whose keys are all revoked.
    Delete {
        #[command(flatten)]
        remote: Remote,
        name: String,
    },
}

#[derive(Subcommand)]
pub enum TokensAction {
    /// Make an admin API token (admin); its secret is printed this once.
    Create {
        #[command(flatten)]
        remote: Remote,
        #[arg(long, value_parser = ["admin", "team_admin", "viewer"])]
        role: String,
        /// The team of a `team_admin` token.
        #[arg(long)]
        team: Option<String>,
        /// A label for people.
        #[arg(long)]
        name: Option<String>,
    },
    /// Every admin token (admin).
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// Revoke an admin token (admin).
    Revoke {
        #[command(flatten)]
        remote: Remote,
        id: String,
    },
}

pub fn run_teams(action: TeamsAction) -> ExitCode {
    match action {
        TeamsAction::Create {
            remote,
            name,
            description,
            budget_usd,
            budget_per,
            metadata,
        } => {
            let body = Body::default()
                .set("name", name)
                .opt("description", description)
                .budget(budget_usd, budget_per)
                .metadata(metadata)
                .done();
            remote.call(Method::POST, "/api/v1/teams", Some(body), object_view)
        }
        TeamsAction::List { remote } => remote.call(Method::GET, "/api/v1/teams", None, teams_table),
        TeamsAction::Show { remote, name } => remote.call(
            Method::GET,
            &format!("/api/v1/teams/{}", segment(&name)),
            None,
            object_view,
        ),
        TeamsAction::Delete { remote, name } => remote.call(
            Method::DELETE,
            &format!("/api/v1/teams/{}", segment(&name)),
            None,
            deleted,
        ),
    }
}

pub fn run_consumers(action: ConsumersAction) -> ExitCode {
    match action {
        ConsumersAction::Create {
            remote,
            name,
            team,
            description,
            metadata,
        } => {
            let body = Body::default()
                .set("name", name)
                .opt("team", team)
                .opt("description", description)
                .metadata(metadata)
                .done();
            remote.call(Method::POST, "/api/v1/consumers", Some(body), object_view)
        }
        ConsumersAction::List { remote } => {
            remote.call(Method::GET, "/api/v1/consumers", None, consumers_table)
        }
        ConsumersAction::Show { remote, name } => remote.call(
            Method::GET,
            &format!("/api/v1/consumers/{}", segment(&name)),
            None,
            object_view,
        ),
        ConsumersAction::Delete { remote, name } => remote.call(
            Method::DELETE,
            &format!("/api/v1/consumers/{}", segment(&name)),
            None,
            deleted,
        ),
    }
}

pub fn run_tokens(action: TokensAction) -> ExitCode {
    match action {
        TokensAction::Create {
            remote,
            role,
            team,
            name,
        } => {
            let body = Body::default()
                .set("role", role)
                .opt("team", team)
                .opt("name", name)
                .done();
            remote.call(Method::POST, "/api/v1/tokens", Some(body), new_token_view)
        }
        TokensAction::List { remote } => remote.call(Method::GET, "/api/v1/tokens", None, tokens_table),
        TokensAction::Revoke { remote, id } => remote.call(
            Method::DELETE,
            &format!("/api/v1/tokens/{}", segment(&id)),
            None,
            |token| {
                format!(
                    "Revoked token {} at {}.\n",
                    cell(token, "id"),
                    cell(token, "revoked_at")
                )
            },
        ),
    }
}

/// The answer of a delete: `{"deleted": name}`.
fn deleted(value: &Value) -> String {
    format!("Deleted {}.\n", cell(value, "deleted"))
}

fn teams_table(value: &Value) -> String {
    let rows: Vec<Vec<String>> = field(value, "teams")
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            vec![
                cell(t, "name"),
                budget(field(t, "budget")),
                cell(t, "created_at"),
                cell(t, "description"),
            ]
        })
        .collect();
    levee::admin_client::table(&["name", "budget usd", "created", "description"], &rows)
}

fn consumers_table(value: &Value) -> String {
    let rows: Vec<Vec<String>> = field(value, "consumers")
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            ["name", "team", "source", "created_at", "description"]
                .iter()
                .map(|k| cell(c, k))
                .collect()
        })
        .collect();
    levee::admin_client::table(&["name", "team", "source", "created", "description"], &rows)
}

/// A token just made: the secret on its own line, then the token's fields (without it).
fn new_token_view(token: &Value) -> String {
    let mut fields = token.clone();
    let secret = fields
        .as_object_mut()
        .and_then(|map| map.remove("token"))
        .and_then(|t| t.as_str().map(str::to_owned))
        .unwrap_or_default();
    format!("Token (shown once): {secret}\n\n{}", object_view(&fields))
}

fn tokens_table(value: &Value) -> String {
    let rows: Vec<Vec<String>> = field(value, "tokens")
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            ["id", "name", "role", "team", "prefix", "created_at", "revoked_at"]
                .iter()
                .map(|k| cell(t, k))
                .collect()
        })
        .collect();
    levee::admin_client::table(
        &["id", "name", "role", "team", "prefix", "created", "revoked"],
        &rows,
    )
}
