//! `levee subscriptions` and `levee catalog`: published services and who may call them.

use std::process::ExitCode;

use clap::Subcommand;
use http::Method;
use serde_json::Value;

use super::{cell, field, object_view, query, segment, text, Body, Remote};

#[derive(Subcommand)]
pub enum SubscriptionsAction {
    /// Ask for a consumer's access to a published service (approved at once with
    /// `approval: auto`, else pending).
    Request {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        consumer: String,
        #[arg(long)]
        service: String,
    },
    /// The subscriptions the caller may see.
    List {
        #[command(flatten)]
        remote: Remote,
        /// Only this consumer's subscriptions.
        #[arg(long)]
        consumer: Option<String>,
    },
    /// One subscription.
    Show {
        #[command(flatten)]
        remote: Remote,
        id: String,
    },
    /// Approve a subscription (an admin of the service's team).
    Approve {
        #[command(flatten)]
        remote: Remote,
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Reject a subscription, or take back an approved one (the service's team).
    Reject {
        #[command(flatten)]
        remote: Remote,
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Cancel a subscription (the consumer's team).
    Cancel {
        #[command(flatten)]
        remote: Remote,
        id: String,
    },
}

pub fn run(action: SubscriptionsAction) -> ExitCode {
    let path = |id: &str, verb: &str| format!("/api/v1/subscriptions/{}{verb}", segment(id));
    match action {
        SubscriptionsAction::Request {
            remote,
            consumer,
            service,
        } => {
            let body = Body::default()
                .set("consumer", consumer)
                .set("service", service)
                .done();
            remote.call(Method::POST, "/api/v1/subscriptions", Some(body), object_view)
        }
        SubscriptionsAction::List { remote, consumer } => {
            let query = query(&[("consumer", consumer)]);
            remote.call(
                Method::GET,
                &format!("/api/v1/subscriptions{query}"),
                None,
                subscriptions_table,
            )
        }
        SubscriptionsAction::Show { remote, id } => {
            remote.call(Method::GET, &path(&id, ""), None, object_view)
        }
        SubscriptionsAction::Approve { remote, id, reason } => {
            let body = Body::default().opt("reason", reason).done();
            remote.call(Method::POST, &path(&id, "/approve"), Some(body), object_view)
        }
        SubscriptionsAction::Reject { remote, id, reason } => {
            let body = Body::default().opt("reason", reason).done();
            remote.call(Method::POST, &path(&id, "/reject"), Some(body), object_view)
        }
        SubscriptionsAction::Cancel { remote, id } => {
            remote.call(Method::DELETE, &path(&id, ""), None, object_view)
        }
    }
}

fn subscriptions_table(value: &Value) -> String {
    let rows: Vec<Vec<String>> = field(value, "subscriptions")
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            [
                "id",
                "consumer",
                "service",
                "state",
                "consumer_team",
                "service_team",
                "decided_by",
                "reason",
            ]
            .iter()
            .map(|k| cell(s, k))
            .collect()
        })
        .collect();
    levee::admin_client::table(
        &[
            "id",
            "consumer",
            "service",
            "state",
            "consumer team",
            "service team",
            "decided by",
            "reason",
        ],
        &rows,
    )
}

/// `levee catalog`: one row per service, its versions as `route (version, state)`.
pub fn catalog_table(value: &Value) -> String {
    let rows: Vec<Vec<String>> = field(value, "services")
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let versions: Vec<String> = field(s, "versions")
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| {
                    let version = field(v, "version");
                    if version.is_null() {
                        format!("{} ({})", text(field(v, "route")), text(field(v, "state")))
                    } else {
                        format!(
                            "{} ({}, {})",
                            text(field(v, "route")),
                            text(version),
                            text(field(v, "state"))
                        )
                    }
                })
                .collect();
            vec![
                cell(s, "service"),
                cell(s, "team"),
                cell(s, "approval"),
                if versions.is_empty() {
                    "-".into()
                } else {
                    versions.join(", ")
                },
                cell(s, "description"),
            ]
        })
        .collect();
    levee::admin_client::table(&["service", "team", "approval", "versions", "description"], &rows)
}
