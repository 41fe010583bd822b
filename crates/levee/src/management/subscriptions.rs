//! The service catalog and subscriptions (APIPark's model): routes with a `publish` block
//! are services; a consumer asks for access to one, and with `approval: manual` an admin of
//! the team owning the service approves or rejects it. Until approved, the consumer's calls
//! to the service answer 403 `subscription_required`.
//!
//! Who may do what: the consumer's team admin (or an admin) asks for and cancels a
//! subscription; the service's team admin (or an admin) approves and rejects. Both teams'
//! admins see it. Approving a rejected subscription and rejecting an approved one are both
//! allowed: the second is how access is taken back.

use std::collections::BTreeMap;

use serde_json::{json, Value as Json};

use super::model::{self, Subscription, SubscriptionState};
use super::ops::{bad, change, from_json, live, object, parse, to_json, OpError, Ops};
use super::store::{self, Filter, Kind, Object};
use crate::config::spec::{Approval, PublishSpec};

impl Ops<'_> {
    /// The published service `name`: its publish block (the first route's) and routes.
    fn service(&self, name: &str) -> Option<&PublishSpec> {
        self.config
            .routes
            .iter()
            .filter_map(|r| r.publish.as_ref())
            .find(|p| &*p.service == name)
    }

    /// Every published service with its versions (the routes publishing it).
    pub fn catalog(&self) -> Json {
        let mut services: BTreeMap<&str, (&PublishSpec, Vec<Json>)> = BTreeMap::new();
        for route in &self.config.routes {
            let Some(publish) = &route.publish else {
                continue;
            };
            let lifecycle = route.lifecycle.as_ref();
            let version = json!({
                "route": route.name.to_string(),
                "version": lifecycle.and_then(|l| l.version.as_deref()),
                "state": lifecycle.map_or("published", |l| l.state.name()),
                "sunset_at": lifecycle.and_then(|l| l.sunset_at).map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                "link": lifecycle.and_then(|l| l.link.clone()),
                "openapi": publish.openapi.clone(),
            });
            services
                .entry(&publish.service)
                .or_insert_with(|| (publish, Vec::new()))
                .1
                .push(version);
        }
        let services: Vec<Json> = services
            .into_iter()
            .map(|(name, (publish, versions))| {
                json!({
                    "service": name,
                    "team": publish.team.as_deref(),
                    "description": publish.description,
                    "approval": match publish.approval { Approval::Auto => "auto", Approval::Manual => "manual" },
                    "openapi": versions.iter().find_map(|v| v.get("openapi").and_then(Json::as_str)),
                    "versions": versions,
                })
            })
            .collect();
        json!({ "services": services })
    }

    /// Whether the caller may see a subscription: both teams' admins may.
    fn may_see(&self, s: &Subscription) -> Result<(), OpError> {
        self.may_read(s.consumer_team.as_deref())
            .or_else(|_| self.may_read(s.service_team.as_deref()))
    }

    pub fn list_subscriptions(&self, consumer: Option<&str>) -> Result<Json, OpError> {
        let filter = Filter {
            owner: consumer.map(str::to_owned),
            limit: 100_000,
            ..Filter::default()
        };
        let all = self.read(|tx| Ok(store::list(tx, Kind::Subscription, &filter)?))?;
        let visible: Vec<Json> = all
            .into_iter()
            .filter(|(o, _)| from_json::<Subscription>(&o.body).is_ok_and(|s| self.may_see(&s).is_ok()))
            .map(|(o, _)| o.body)
            .collect();
        Ok(json!({ "subscriptions": visible }))
    }

    pub fn get_subscription(&self, id: &str) -> Result<Json, OpError> {
        let object = self.read(|tx| live(tx, Kind::Subscription, id))?;
        self.may_see(&from_json(&object.body)?)?;
        Ok(object.body)
    }

    /// Asks for access to a service: approved at once with `approval: auto`, else pending.
    pub fn create_subscription(&self, body: &[u8]) -> Result<Json, OpError> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Input {
            consumer: String,
            service: String,
        }
        let input: Input = parse(body)?;
        let publish = self.service(&input.service).ok_or_else(|| {
            OpError::NotFound(format!("No route publishes the service `{}`.", input.service))
        })?;
        let auto = publish.approval == Approval::Auto;
        let service_team = publish.team.as_deref().map(str::to_owned);
        let id = model::new_id("sub_").map_err(bad)?;
        let from_config = self.config_consumer(&input.consumer).is_some();
        self.change(|tx| {
            let consumer_team = if from_config {
                None
            } else {
                live(tx, Kind::Consumer, &input.consumer)
                    .map_err(|_| bad(format!("There is no consumer `{}`.", input.consumer)))?
                    .team
            };
            self.may_write(consumer_team.as_deref())?;
            let mine = Filter {
                owner: Some(input.consumer.clone()),
                limit: 100_000,
                ..Filter::default()
            };
            let open = store::list(tx, Kind::Subscription, &mine)?
                .into_iter()
                .any(|(o, _)| {
                    from_json::<Subscription>(&o.body).is_ok_and(|s| {
                        s.service == input.service
                            && matches!(s.state, SubscriptionState::Pending | SubscriptionState::Approved)
                    })
                });
            if open {
                return Err(OpError::Conflict(format!(
                    "`{}` already has a pending or approved subscription to `{}`.",
                    input.consumer, input.service
                )));
            }
            let now = model::rfc3339(model::now_ms());
            let subscription = Subscription {
                id: id.clone(),
                consumer: input.consumer.clone(),
                consumer_team: consumer_team.clone(),
                service: input.service.clone(),
                service_team,
                state: if auto {
                    SubscriptionState::Approved
                } else {
                    SubscriptionState::Pending
                },
                reason: None,
                created_at: now.clone(),
                decided_at: auto.then(|| now.clone()),
                decided_by: auto.then(|| "auto".to_owned()),
            };
            let body = to_json(&subscription);
            let object = object(
                Kind::Subscription,
                &id,
                consumer_team.as_deref(),
                Some(&input.consumer),
                None,
                body.clone(),
            );
            Ok((change("subscription.create", object, None), body))
        })
    }

    /// Approves (`approve`) or rejects a subscription, with an optional `reason`.
    pub fn decide_subscription(&self, id: &str, approve: bool, body: &[u8]) -> Result<Json, OpError> {
        #[derive(serde::Deserialize, Default)]
        #[serde(deny_unknown_fields)]
        struct Input {
            #[serde(default)]
            reason: Option<String>,
        }
        let input: Input = if body.is_empty() {
            Input::default()
        } else {
            parse(body)?
        };
        self.change(|tx| {
            let before = live(tx, Kind::Subscription, id)?;
            let mut s: Subscription = from_json(&before.body)?;
            if self.may_write(s.service_team.as_deref()).is_err() {
                self.may_see(&s)?;
                return Err(OpError::Forbidden(
                    "Only an admin of the team owning the service decides its subscriptions.".into(),
                ));
            }
            let (to, allowed_from) = if approve {
                (
                    SubscriptionState::Approved,
                    [SubscriptionState::Pending, SubscriptionState::Rejected],
                )
            } else {
                (
                    SubscriptionState::Rejected,
                    [SubscriptionState::Pending, SubscriptionState::Approved],
                )
            };
            if !allowed_from.contains(&s.state) {
                return Err(OpError::Conflict(
                    format!("The subscription is {:?}.", s.state).to_lowercase(),
                ));
            }
            s.state = to;
            s.reason = input.reason.clone();
            s.decided_at = Some(model::rfc3339(model::now_ms()));
            s.decided_by = Some(self.caller.id.clone());
            let body = to_json(&s);
            let action = if approve {
                "subscription.approve"
            } else {
                "subscription.reject"
            };
            let after = Object {
                body: body.clone(),
                ..before.clone()
            };
            Ok((change(action, after, Some(before.body)), body))
        })
    }

    /// Cancels a subscription (the consumer's side): access ends within a poll.
    pub fn cancel_subscription(&self, id: &str) -> Result<Json, OpError> {
        self.change(|tx| {
            let before = live(tx, Kind::Subscription, id)?;
            let mut s: Subscription = from_json(&before.body)?;
            if self.may_write(s.consumer_team.as_deref()).is_err() {
                self.may_see(&s)?;
                return Err(OpError::Forbidden(
                    "Only an admin of the consumer's team cancels its subscriptions.".into(),
                ));
            }
            s.state = SubscriptionState::Cancelled;
            s.decided_at = Some(model::rfc3339(model::now_ms()));
            s.decided_by = Some(self.caller.id.clone());
            let body = to_json(&s);
            let after = Object {
                body: body.clone(),
                ..before.clone()
            };
            Ok((change("subscription.cancel", after, Some(before.body)), body))
        })
    }
}
