//! Consumers and their virtual keys through the API: made, listed with their spend, changed,
//! rotated with a grace period and revoked.
//!
//! A key's secret is `lv_` and 64 hex digits from the OS's randomness, shown once in the
//! answer that makes it; the store keeps its SHA-256 digest and a short prefix to tell keys
//! apart. Consumers and keys of the config file are listed with `source: config` and cannot
//! be changed here: the file is their source of truth.

use serde_json::{json, Value as Json};

use super::model::{self, Consumer, Key};
use super::ops::{self, bad, change, from_json, live, merge, object, parse, to_json, OpError, Ops};
use super::store::{self, Filter, Kind, Object};

/// Fields a key's owner may change.
const KEY_EDITABLE: &[&str] = &[
    "name",
    "expires_at",
    "allowed_routes",
    "allowed_models",
    "rate_limit",
    "budget",
    "tokens_per_minute",
    "requests_per_minute",
    "metadata",
];

/// At most this many objects per page.
const MAX_PAGE: i64 = 1000;

impl Ops<'_> {
    pub(super) fn config_consumer(&self, name: &str) -> Option<&crate::config::spec::ConsumerSpec> {
        self.config.consumers.iter().find(|c| &*c.name == name)
    }

    // ---- consumers ----

    pub fn list_consumers(&self) -> Result<Json, OpError> {
        let filter = Filter {
            team: self.scope(),
            limit: 100_000,
            ..Filter::default()
        };
        let mut consumers: Vec<Json> = self
            .read(|tx| Ok(store::list(tx, Kind::Consumer, &filter)?))?
            .into_iter()
            .map(|(o, _)| o.body)
            .collect();
        if self.scope().is_none() {
            consumers.extend(
                self.config
                    .consumers
                    .iter()
                    .map(|c| config_consumer_view(&c.name)),
            );
        }
        Ok(json!({ "consumers": consumers }))
    }

    pub fn get_consumer(&self, name: &str) -> Result<Json, OpError> {
        if self.config_consumer(name).is_some() {
            self.may_read(None)?;
            return Ok(config_consumer_view(name));
        }
        let consumer = self.read(|tx| live(tx, Kind::Consumer, name))?;
        self.may_read(consumer.team.as_deref())?;
        Ok(consumer.body)
    }

    pub fn create_consumer(&self, body: &[u8]) -> Result<Json, OpError> {
        let mut consumer: Consumer = parse(body)?;
        self.may_write(consumer.team.as_deref())?;
        model::check_name("consumer", &consumer.name).map_err(bad)?;
        if self.config_consumer(&consumer.name).is_some() {
            return Err(OpError::Conflict(format!(
                "The consumer `{}` is defined in the config file.",
                consumer.name
            )));
        }
        consumer.created_at = model::rfc3339(model::now_ms());
        consumer.source = "api".into();
        let body = to_json(&consumer);
        self.change(|tx| {
            if let Some(team) = &consumer.team {
                live(tx, Kind::Team, team).map_err(|_| bad(format!("There is no team `{team}`.")))?;
            }
            if store::get(tx, Kind::Consumer, &consumer.name)?.is_some_and(|c| !c.deleted) {
                return Err(OpError::Conflict(format!(
                    "The consumer `{}` exists.",
                    consumer.name
                )));
            }
            let team = consumer.team.as_deref();
            let object = object(Kind::Consumer, &consumer.name, team, None, None, body.clone());
            Ok((change("consumer.create", object, None), body))
        })
    }

    pub fn patch_consumer(&self, name: &str, patch: &[u8]) -> Result<Json, OpError> {
        if self.config_consumer(name).is_some() {
            return Err(read_only(name));
        }
        let editable: &[&str] = if self.is_admin() {
            &["team", "description", "metadata"]
        } else {
            &["description", "metadata"]
        };
        self.change(|tx| {
            let before = live(tx, Kind::Consumer, name)?;
            self.may_write(before.team.as_deref())?;
            let body = merge(before.body.clone(), patch, editable)?;
            let consumer: Consumer = from_json(&body)?;
            if let Some(team) = consumer
                .team
                .as_ref()
                .filter(|t| before.team.as_ref() != Some(*t))
            {
                live(tx, Kind::Team, team).map_err(|_| bad(format!("There is no team `{team}`.")))?;
            }
            let after = Object {
                team: consumer.team.clone(),
                body: body.clone(),
                ..before.clone()
            };
            Ok((change("consumer.update", after, Some(before.body)), body))
        })
    }

    pub fn delete_consumer(&self, name: &str) -> Result<Json, OpError> {
        if self.config_consumer(name).is_some() {
            return Err(read_only(name));
        }
        self.change(|tx| {
            let before = live(tx, Kind::Consumer, name)?;
            self.may_write(before.team.as_deref())?;
            let keys = Filter {
                owner: Some(name.to_owned()),
                limit: 100_000,
                ..Filter::default()
            };
            let active = store::list(tx, Kind::Key, &keys)?
                .iter()
                .filter(|(k, _)| k.body.get("revoked_at").is_none_or(Json::is_null))
                .count();
            if active > 0 {
                return Err(OpError::Conflict(format!(
                    "The consumer `{name}` still has {active} key(s) that are not revoked; revoke them first."
                )));
            }
            let after = Object {
                deleted: true,
                ..before.clone()
            };
            let mut change = change("consumer.delete", after, Some(before.body));
            change.after = None;
            Ok((change, json!({ "deleted": name })))
        })
    }

    // ---- keys ----

    /// Keys (a page of at most `limit`, after the id `after`), each with its usage; the
    /// config's keys too on the first page of an unscoped listing.
    pub fn list_keys(
        &self,
        consumer: Option<&str>,
        after: Option<&str>,
        limit: Option<i64>,
    ) -> Result<Json, OpError> {
        let filter = Filter {
            team: self.scope(),
            owner: consumer.map(str::to_owned),
            after: after.map(str::to_owned),
            limit: limit.unwrap_or(100).clamp(1, MAX_PAGE),
        };
        let rows = self.read(|tx| Ok(store::list(tx, Kind::Key, &filter)?))?;
        let next = (rows.len() as i64 == filter.limit).then(|| rows.last().map(|(o, _)| o.id.clone()));
        let mut keys: Vec<Json> = rows
            .into_iter()
            .map(|(o, usage)| with_usage(o.body, usage))
            .collect();
        if self.scope().is_none() && after.is_none() {
            for c in self
                .config
                .consumers
                .iter()
                .filter(|c| consumer.is_none_or(|n| n == &*c.name))
            {
                for (i, digest) in c.key_digests.iter().enumerate() {
                    keys.push(json!({
                        "id": format!("config:{}:{i}", c.name),
                        "consumer": c.name.to_string(),
                        "prefix": format!("sha256:{}...", crate::hex::encode(digest.get(..4).unwrap_or(&[]))),
                        "source": "config",
                    }));
                }
            }
        }
        Ok(json!({ "keys": keys, "next_after": next.flatten() }))
    }

    pub fn get_key(&self, id: &str) -> Result<Json, OpError> {
        let (key, usage) = self.read(|tx| {
            let key = live(tx, Kind::Key, id)?;
            let usage = store::usage_of(tx, id)?;
            Ok((key, usage))
        })?;
        self.may_read(key.team.as_deref())?;
        Ok(with_usage(key.body, usage))
    }

    /// A new key: the secret is in the answer (`key`) and nowhere else.
    pub fn create_key(&self, body: &[u8]) -> Result<Json, OpError> {
        let input: Json = parse(body)?;
        // What the gateway sets itself.
        const SET_HERE: &[&str] = &[
            "id",
            "prefix",
            "created_at",
            "revoked_at",
            "rotated_to",
            "rotated_from",
            "source",
        ];
        if let Some(field) = SET_HERE.iter().find(|f| input.get(**f).is_some()) {
            return Err(bad(format!(
                "`{field}` is set by the gateway, not in the request."
            )));
        }
        let consumer = input
            .get("consumer")
            .and_then(Json::as_str)
            .ok_or_else(|| bad("`consumer` is required."))?
            .to_owned();
        let secret = model::new_secret("lv_").map_err(bad)?;
        let id = model::new_id("key_").map_err(bad)?;
        let from_config = self.config_consumer(&consumer).is_some();
        self.change(|tx| {
            let team = if from_config {
                None
            } else {
                let owner = live(tx, Kind::Consumer, &consumer)
                    .map_err(|_| bad(format!("There is no consumer `{consumer}`.")))?;
                owner.team
            };
            self.may_write(team.as_deref())?;
            let mut fields = input.clone();
            if let Some(map) = fields.as_object_mut() {
                let given = map.remove("team");
                if given.as_ref().is_some_and(|t| t.as_str() != team.as_deref()) {
                    return Err(bad("`team` must be the consumer's team (or left out)."));
                }
                map.insert("id".into(), Json::String(id.clone()));
                map.insert("team".into(), team.clone().map_or(Json::Null, Json::String));
                map.insert("prefix".into(), Json::String(model::shown_prefix(&secret)));
                map.insert("created_at".into(), Json::String(model::rfc3339(model::now_ms())));
            }
            let key: Key = from_json(&fields)?;
            check(&key)?;
            let body = to_json(&key);
            let digest = Some(crate::auth::digest_of(&secret));
            let object = object(
                Kind::Key,
                &id,
                team.as_deref(),
                Some(&consumer),
                digest,
                body.clone(),
            );
            Ok((change("key.create", object, None), body))
        })
        .map(|mut body| {
            if let Some(map) = body.as_object_mut() {
                map.insert("key".into(), Json::String(secret));
            }
            body
        })
    }

    pub fn patch_key(&self, id: &str, patch: &[u8]) -> Result<Json, OpError> {
        self.change(|tx| {
            let before = live(tx, Kind::Key, id)?;
            self.may_write(before.team.as_deref())?;
            if before.body.get("revoked_at").is_some_and(|v| !v.is_null()) {
                return Err(OpError::Conflict(format!("The key `{id}` is revoked.")));
            }
            let body = merge(before.body.clone(), patch, KEY_EDITABLE)?;
            check(&from_json::<Key>(&body)?)?;
            let after = Object {
                body: body.clone(),
                ..before.clone()
            };
            Ok((change("key.update", after, Some(before.body)), body))
        })
    }

    /// Revokes a key everywhere (within a poll); revoking twice changes nothing.
    pub fn revoke_key(&self, id: &str) -> Result<Json, OpError> {
        self.change(|tx| {
            let before = live(tx, Kind::Key, id)?;
            self.may_write(before.team.as_deref())?;
            let mut body = before.body.clone();
            if let Some(map) = body.as_object_mut() {
                if map.get("revoked_at").is_none_or(Json::is_null) {
                    map.insert("revoked_at".into(), Json::String(model::rfc3339(model::now_ms())));
                }
            }
            let after = Object {
                body: body.clone(),
                ..before.clone()
            };
            Ok((change("key.revoke", after, Some(before.body)), body))
        })
    }

    /// A new key in place of `id`, with the same consumer and limits; the old one keeps
    /// working for `grace` (default 0s), then answers `key_expired`.
    pub fn rotate_key(&self, id: &str, body: &[u8]) -> Result<Json, OpError> {
        #[derive(serde::Deserialize, Default)]
        #[serde(deny_unknown_fields)]
        struct Input {
            #[serde(default)]
            grace: Option<String>,
        }
        let input: Input = if body.is_empty() {
            Input::default()
        } else {
            parse(body)?
        };
        let grace = match &input.grace {
            Some(text) => {
                crate::config::duration::parse_duration(text).map_err(|e| bad(format!("grace: {e}")))?
            }
            None => std::time::Duration::ZERO,
        };
        let secret = model::new_secret("lv_").map_err(bad)?;
        let new_id = model::new_id("key_").map_err(bad)?;
        let now = model::now_ms();
        let shown = self.change(|tx| {
            let before = live(tx, Kind::Key, id)?;
            self.may_write(before.team.as_deref())?;
            let old: Key = from_json(&before.body)?;
            if old.revoked_at.is_some() || old.rotated_to.is_some() {
                return Err(OpError::Conflict(format!(
                    "The key `{id}` is revoked or rotated already."
                )));
            }
            let grace_end = now.saturating_add(i64::try_from(grace.as_millis()).unwrap_or(i64::MAX));
            let old_end = old.expires_at.as_deref().and_then(|t| model::parse_time(t).ok());
            let mut retired = old.clone();
            retired.expires_at = Some(model::rfc3339(old_end.map_or(grace_end, |e| e.min(grace_end))));
            retired.rotated_to = Some(new_id.clone());
            let mut fresh = old.clone();
            fresh.id = new_id.clone();
            fresh.prefix = model::shown_prefix(&secret);
            fresh.created_at = model::rfc3339(now);
            fresh.rotated_from = Some(id.to_owned());
            fresh.expires_at = old.expires_at.clone();
            let (retired_body, fresh_body) = (to_json(&retired), to_json(&fresh));
            let team = before.team.clone();
            let digest = Some(crate::auth::digest_of(&secret));
            let new_object = object(
                Kind::Key,
                &new_id,
                team.as_deref(),
                Some(&old.consumer),
                digest,
                fresh_body.clone(),
            );
            let mut change = change(
                "key.rotate",
                Object {
                    body: retired_body,
                    ..before.clone()
                },
                Some(before.body),
            );
            change.objects.push(new_object);
            change.after = Some(json!({ "old": change.after, "new": fresh_body }));
            Ok((change, fresh_body))
        })?;
        let mut shown = shown;
        if let Some(map) = shown.as_object_mut() {
            map.insert("key".into(), Json::String(secret));
        }
        Ok(shown)
    }
}

fn check(key: &Key) -> Result<(), OpError> {
    model::check_key(key).map_err(bad)
}

fn read_only(name: &str) -> OpError {
    OpError::ReadOnly(format!(
        "The consumer `{name}` is defined in the config file; change it there."
    ))
}

fn config_consumer_view(name: &str) -> Json {
    json!({ "name": name, "team": null, "source": "config" })
}

fn with_usage(mut body: Json, usage: Option<store::Usage>) -> Json {
    if let Some(map) = body.as_object_mut() {
        map.insert("usage".into(), ops::to_json(&usage.unwrap_or_default()));
    }
    body
}
