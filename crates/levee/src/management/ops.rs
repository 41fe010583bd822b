//! The management API's operations, with who may do them: every change is checked against
//! the caller's role, written with its audit entry in one transaction, and applied to this
//! process's directory before the answer goes out.
//!
//! Roles: an `admin` may do everything; a `team_admin` works only on its own team's
//! consumers, keys and subscriptions (and decides subscriptions to its team's services);
//! a `viewer` reads everything and changes nothing. An object of another team is refused
//! with 403; a missing one is 404 for every caller (key, token and subscription ids are
//! random, so that tells nothing useful). The token of `admin.token_env` is the bootstrap
//! `admin`.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value as Json};

use super::db::DbError;
use super::model::{self, Role, Team, Token};
use super::store::{self, AuditQuery, AuditRecord, Filter, Kind, Object};
use super::Management;
use crate::config::Config;

/// Who is calling the admin API.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    /// The token's id (`bootstrap` for the token of `admin.token_env`, `anonymous` when the
    /// admin API needs no token).
    pub id: String,
    pub role: Role,
    pub team: Option<String>,
}

impl Caller {
    pub fn bootstrap(id: &str) -> Caller {
        Caller {
            id: id.into(),
            role: Role::Admin,
            team: None,
        }
    }
}

/// Why an operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    ReadOnly(String),
    #[error("there is no management store: set data_dir (or cluster.postgres) in the config")]
    NoStore,
    #[error("the management store is unavailable: {0}")]
    Store(#[from] DbError),
}

impl OpError {
    /// The HTTP status and error code the admin API answers with.
    pub fn status_and_code(&self) -> (u16, &'static str) {
        match self {
            OpError::BadRequest(_) => (400, "bad_request"),
            OpError::Forbidden(_) => (403, "forbidden"),
            OpError::NotFound(_) => (404, "not_found"),
            OpError::Conflict(_) => (409, "conflict"),
            OpError::ReadOnly(_) => (409, "read_only"),
            OpError::NoStore => (503, "no_store"),
            OpError::Store(_) => (503, "store_unavailable"),
        }
    }
}

/// One caller's view of the management plane.
pub struct Ops<'a> {
    pub management: &'a Management,
    pub config: &'a Config,
    pub caller: &'a Caller,
}

/// What a change writes: the objects (their versions are stamped) and the audit entry.
pub(super) struct Change {
    pub objects: Vec<Object>,
    pub action: &'static str,
    pub kind: Kind,
    pub object_id: String,
    pub team: Option<String>,
    pub before: Option<Json>,
    pub after: Option<Json>,
}

pub(super) fn bad(message: impl Into<String>) -> OpError {
    OpError::BadRequest(message.into())
}

/// Parses a request body as `T` (unknown fields refused).
pub(super) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, OpError> {
    serde_json::from_slice(body).map_err(|e| bad(format!("The body is not valid: {e}.")))
}

/// Applies a JSON merge patch (RFC 7396, top level) limited to `editable` fields.
pub(super) fn merge(mut body: Json, patch: &[u8], editable: &[&str]) -> Result<Json, OpError> {
    let patch: Map<String, Json> = parse(patch)?;
    let Some(fields) = body.as_object_mut() else {
        return Err(bad("The stored object is not an object."));
    };
    for (field, value) in patch {
        if !editable.contains(&field.as_str()) {
            return Err(bad(format!(
                "`{field}` cannot be changed; changeable: {}.",
                editable.join(", ")
            )));
        }
        if value.is_null() {
            fields.remove(&field);
        } else {
            fields.insert(field, value);
        }
    }
    Ok(body)
}

pub(super) fn to_json<T: Serialize>(value: &T) -> Json {
    serde_json::to_value(value).unwrap_or(Json::Null)
}

pub(super) fn from_json<T: DeserializeOwned>(value: &Json) -> Result<T, OpError> {
    serde_json::from_value(value.clone()).map_err(|e| bad(format!("Not valid: {e}.")))
}

impl Ops<'_> {
    pub(super) fn store(&self) -> Result<&store::Store, OpError> {
        self.management.store().ok_or(OpError::NoStore)
    }

    /// Reads in one transaction.
    pub(super) fn read<T>(
        &self,
        work: impl FnOnce(&mut dyn super::db::Tx) -> Result<T, OpError>,
    ) -> Result<T, OpError> {
        self.store()?.transaction(work)
    }

    /// Makes a change: `decide` sees the store as of the change (changes are one at a time)
    /// and says what to write. The directory of this process has it on return.
    pub(super) fn change<T>(
        &self,
        decide: impl FnOnce(&mut dyn super::db::Tx) -> Result<(Change, T), OpError>,
    ) -> Result<T, OpError> {
        let caller = self.caller;
        let out = self.store()?.transaction(|tx| {
            let version = store::next_version(tx)?;
            let (change, out) = decide(tx)?;
            for object in &change.objects {
                let mut object = object.clone();
                object.version = version;
                store::put(tx, &object)?;
            }
            let audit = AuditRecord {
                actor: caller.id.clone(),
                role: caller.role.as_str().into(),
                team: change.team,
                action: change.action.into(),
                kind: change.kind,
                object_id: change.object_id,
                before: change.before,
                after: change.after,
            };
            store::record_audit(tx, version, &audit, model::now_ms())?;
            Ok::<_, OpError>(out)
        })?;
        if let Err(error) = self.management.sync() {
            tracing::warn!(%error, "a change was written but not yet applied here; the poller will");
        }
        Ok(out)
    }

    pub(super) fn is_admin(&self) -> bool {
        self.caller.role == Role::Admin
    }

    /// Refused unless the caller is an admin.
    pub(super) fn admin_only(&self) -> Result<(), OpError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(OpError::Forbidden("Only an admin may do this.".into()))
        }
    }

    /// Whether the caller may read objects of `team`.
    pub(super) fn may_read(&self, team: Option<&str>) -> Result<(), OpError> {
        match self.caller.role {
            Role::Admin | Role::Viewer => Ok(()),
            Role::TeamAdmin if team.is_some() && team == self.caller.team.as_deref() => Ok(()),
            Role::TeamAdmin => Err(OpError::Forbidden("This belongs to another team.".into())),
        }
    }

    /// Whether the caller may change objects of `team`.
    pub(super) fn may_write(&self, team: Option<&str>) -> Result<(), OpError> {
        match self.caller.role {
            Role::Admin => Ok(()),
            Role::Viewer => Err(OpError::Forbidden("A viewer token changes nothing.".into())),
            Role::TeamAdmin if team.is_some() && team == self.caller.team.as_deref() => Ok(()),
            Role::TeamAdmin => Err(OpError::Forbidden("This belongs to another team.".into())),
        }
    }

    /// The team a team admin's listings are limited to (`None`: everything).
    pub(super) fn scope(&self) -> Option<String> {
        match self.caller.role {
            Role::TeamAdmin => Some(self.caller.team.clone().unwrap_or_default()),
            _ => None,
        }
    }

    // ---- teams ----

    pub fn list_teams(&self) -> Result<Json, OpError> {
        let filter = Filter {
            team: self.scope(),
            limit: 10_000,
            ..Filter::default()
        };
        let teams = self.read(|tx| Ok(store::list(tx, Kind::Team, &filter)?))?;
        Ok(json!({ "teams": teams.into_iter().map(|(o, _)| o.body).collect::<Vec<_>>() }))
    }

    pub fn get_team(&self, name: &str) -> Result<Json, OpError> {
        self.may_read(Some(name))?;
        let team = self.read(|tx| Ok(store::get(tx, Kind::Team, name)?))?;
        team.filter(|t| !t.deleted)
            .map(|t| t.body)
            .ok_or_else(|| OpError::NotFound(format!("There is no team `{name}`.")))
    }

    pub fn create_team(&self, body: &[u8]) -> Result<Json, OpError> {
        self.admin_only()?;
        let mut team: Team = parse(body)?;
        model::check_name("team", &team.name).map_err(bad)?;
        if let Some(budget) = &team.budget {
            budget.parsed().map_err(bad)?;
        }
        team.created_at = model::rfc3339(model::now_ms());
        let body = to_json(&team);
        self.change(|tx| {
            if store::get(tx, Kind::Team, &team.name)?.is_some_and(|t| !t.deleted) {
                return Err(OpError::Conflict(format!("The team `{}` exists.", team.name)));
            }
            let object = object(Kind::Team, &team.name, Some(&team.name), None, None, body.clone());
            Ok((change("team.create", object, None), body))
        })
    }

    pub fn patch_team(&self, name: &str, patch: &[u8]) -> Result<Json, OpError> {
        self.admin_only()?;
        self.change(|tx| {
            let before = live(tx, Kind::Team, name)?;
            let body = merge(before.body.clone(), patch, &["description", "budget", "metadata"])?;
            let team: Team = from_json(&body)?;
            if let Some(budget) = &team.budget {
                budget.parsed().map_err(bad)?;
            }
            let after = Object {
                body: body.clone(),
                ..before.clone()
            };
            Ok((change("team.update", after, Some(before.body)), body))
        })
    }

    pub fn delete_team(&self, name: &str) -> Result<Json, OpError> {
        self.admin_only()?;
        self.change(|tx| {
            let before = live(tx, Kind::Team, name)?;
            let consumers = store::count(tx, Kind::Consumer, true, name)?;
            if consumers > 0 {
                return Err(OpError::Conflict(format!(
                    "The team `{name}` still has {consumers} consumer(s); delete or move them first."
                )));
            }
            let after = Object {
                deleted: true,
                ..before.clone()
            };
            let mut change = change("team.delete", after, Some(before.body));
            change.after = None;
            Ok((change, json!({ "deleted": name })))
        })
    }

    // ---- admin tokens ----

    pub fn list_tokens(&self) -> Result<Json, OpError> {
        self.admin_only()?;
        let filter = Filter {
            limit: 10_000,
            ..Filter::default()
        };
        let tokens = self.read(|tx| Ok(store::list(tx, Kind::Token, &filter)?))?;
        Ok(json!({ "tokens": tokens.into_iter().map(|(o, _)| o.body).collect::<Vec<_>>() }))
    }

    /// A new admin token: the secret is in the answer and nowhere else.
    pub fn create_token(&self, body: &[u8]) -> Result<Json, OpError> {
        self.admin_only()?;
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Input {
            #[serde(default)]
            name: String,
            role: Role,
            #[serde(default)]
            team: Option<String>,
        }
        let input: Input = parse(body)?;
        if (input.role == Role::TeamAdmin) != input.team.is_some() {
            return Err(bad("A team_admin token names its `team`; other roles name none."));
        }
        let secret = model::new_secret("lvadm_").map_err(bad)?;
        let token = Token {
            id: model::new_id("tok_").map_err(bad)?,
            name: input.name,
            role: input.role,
            team: input.team,
            prefix: model::shown_prefix(&secret),
            created_at: model::rfc3339(model::now_ms()),
            revoked_at: None,
        };
        let body = to_json(&token);
        let digest = crate::auth::digest_of(&secret);
        self.change(|tx| {
            if let Some(team) = &token.team {
                live(tx, Kind::Team, team)?;
            }
            let object = object(
                Kind::Token,
                &token.id,
                token.team.as_deref(),
                None,
                Some(digest),
                body.clone(),
            );
            Ok((change("token.create", object, None), ()))
        })?;
        let mut shown = body;
        if let Some(fields) = shown.as_object_mut() {
            fields.insert("token".into(), Json::String(secret));
        }
        Ok(shown)
    }

    pub fn revoke_token(&self, id: &str) -> Result<Json, OpError> {
        self.admin_only()?;
        self.change(|tx| {
            let before = live(tx, Kind::Token, id)?;
            let mut body = before.body.clone();
            if let Some(fields) = body.as_object_mut() {
                fields.insert("revoked_at".into(), Json::String(model::rfc3339(model::now_ms())));
            }
            let after = Object {
                body: body.clone(),
                ..before.clone()
            };
            Ok((change("token.revoke", after, Some(before.body)), body))
        })
    }

    // ---- audit and usage ----

    pub fn audit(&self, mut query: AuditQuery) -> Result<Json, OpError> {
        if let Some(team) = self.scope() {
            query.team = Some(team);
        }
        let entries = self.store()?.audit(&query)?;
        Ok(json!({ "entries": entries }))
    }

    pub fn usage(&self, group_by: &str) -> Result<Json, OpError> {
        if !matches!(group_by, "key" | "consumer" | "team") {
            return Err(bad("group_by is one of key, consumer, team."));
        }
        let team = self.scope();
        let rows = self.store()?.usage_by(group_by, team.as_deref())?;
        let groups: Vec<Json> = rows
            .into_iter()
            .map(|(group, usage)| {
                let mut row = to_json(&usage);
                if let Some(fields) = row.as_object_mut() {
                    fields.insert("group".into(), group.map_or(Json::Null, Json::String));
                }
                row
            })
            .collect();
        Ok(json!({ "group_by": group_by, "groups": groups }))
    }
}

/// An object to write (version stamped by [`Ops::change`]).
pub(super) fn object(
    kind: Kind,
    id: &str,
    team: Option<&str>,
    owner: Option<&str>,
    digest: Option<String>,
    body: Json,
) -> Object {
    Object {
        kind,
        id: id.into(),
        team: team.map(str::to_owned),
        owner: owner.map(str::to_owned),
        digest,
        body,
        deleted: false,
        version: 0,
    }
}

/// The change writing `object`, audited with `before` and the object's body after.
pub(super) fn change(action: &'static str, object: Object, before: Option<Json>) -> Change {
    Change {
        action,
        kind: object.kind,
        object_id: object.id.clone(),
        team: object.team.clone(),
        before,
        after: Some(object.body.clone()),
        objects: vec![object],
    }
}

/// The live object, or 404.
pub(super) fn live(tx: &mut dyn super::db::Tx, kind: Kind, id: &str) -> Result<Object, OpError> {
    store::get(tx, kind, id)?
        .filter(|o| !o.deleted)
        .ok_or_else(|| OpError::NotFound(format!("There is no {} `{id}`.", kind.as_str())))
}
