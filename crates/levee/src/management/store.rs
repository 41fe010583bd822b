//! The management objects in their store: one table of versioned objects, the audit log and
//! the usage counters, with the same schema and migrations in SQLite and PostgreSQL.
//!
//! Every change takes the next number of one counter (`levee_mgmt_meta.version`) first, in
//! its transaction, and stamps the rows it writes with it. Taking the counter locks its row
//! until commit, so writers are one at a time and commit in version order: a reader that has
//! seen version N has seen every change up to N, and "what changed since N" is one indexed
//! query. That is how every worker and every replica catch up within a second (a poll of one
//! row, then only the changed rows), and why objects are never removed, only marked deleted.

use serde_json::Value as Json;

use super::db::{Db, DbError, Dialect, Tx, Value};

/// The schema, one migration per version, applied in order and never edited once released.
const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    "CREATE TABLE levee_mgmt_meta (id BIGINT PRIMARY KEY, version BIGINT NOT NULL);
     INSERT INTO levee_mgmt_meta (id, version) VALUES (1, 0);
     CREATE TABLE levee_objects (
         kind TEXT NOT NULL,
         id TEXT NOT NULL,
         team TEXT,
         owner TEXT,
         digest TEXT UNIQUE,
         body TEXT NOT NULL,
         deleted BIGINT NOT NULL,
         version BIGINT NOT NULL,
         PRIMARY KEY (kind, id)
     );
     CREATE INDEX levee_objects_version ON levee_objects (version);
     CREATE TABLE levee_audit (
         id BIGINT PRIMARY KEY,
         time_ms BIGINT NOT NULL,
         actor TEXT NOT NULL,
         role TEXT NOT NULL,
         team TEXT,
         action TEXT NOT NULL,
         kind TEXT NOT NULL,
         object_id TEXT NOT NULL,
         before TEXT,
         after TEXT
     );
     CREATE INDEX levee_audit_time ON levee_audit (time_ms);
     CREATE TABLE levee_usage (
         key_id TEXT PRIMARY KEY,
         consumer TEXT NOT NULL,
         team TEXT,
         requests BIGINT NOT NULL,
         tokens BIGINT NOT NULL,
         cost_usd DOUBLE PRECISION NOT NULL,
         period_start_ms BIGINT NOT NULL,
         period_cost_usd DOUBLE PRECISION NOT NULL
     );",
)];

/// Any number the same for every Levee: serialises migrations across replicas.
const MIGRATION_LOCK: i64 = 0x4c65_7665_6532; // "Levee2"

/// The kinds of object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Team,
    Consumer,
    Key,
    Token,
    Subscription,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Team => "team",
            Kind::Consumer => "consumer",
            Kind::Key => "key",
            Kind::Token => "token",
            Kind::Subscription => "subscription",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        Some(match text {
            "team" => Kind::Team,
            "consumer" => Kind::Consumer,
            "key" => Kind::Key,
            "token" => Kind::Token,
            "subscription" => Kind::Subscription,
            _ => return None,
        })
    }
}

/// One stored object.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub kind: Kind,
    pub id: String,
    /// The team it belongs to, for scoping a team admin.
    pub team: Option<String>,
    /// The consumer of a key or subscription.
    pub owner: Option<String>,
    /// `sha256:<hex>` of a key or token.
    pub digest: Option<String>,
    /// What the API shows: never a secret.
    pub body: Json,
    pub deleted: bool,
    pub version: i64,
}

/// Who changed what, for the audit log.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub actor: String,
    pub role: String,
    pub team: Option<String>,
    pub action: String,
    pub kind: Kind,
    pub object_id: String,
    pub before: Option<Json>,
    pub after: Option<Json>,
}

/// One audit log entry as listed.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct AuditEntry {
    pub id: i64,
    /// RFC 3339.
    pub time: String,
    pub actor: String,
    pub role: String,
    pub team: Option<String>,
    pub action: String,
    pub kind: String,
    pub object_id: String,
    pub before: Option<Json>,
    pub after: Option<Json>,
}

/// Filters of `GET /api/v1/audit`.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub kind: Option<String>,
    pub object_id: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub team: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub limit: i64,
}

/// A key's usage not yet written.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageDelta {
    pub key_id: String,
    pub consumer: String,
    pub team: Option<String>,
    pub requests: i64,
    pub tokens: i64,
    pub cost_usd: f64,
    /// The key's budget period in ms (0: no budget, the period never restarts).
    pub period_ms: i64,
}

/// A key's usage as stored.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, schemars::JsonSchema)]
pub struct Usage {
    pub requests: i64,
    pub tokens: i64,
    pub cost_usd: f64,
    /// Spent in the current budget period.
    pub period_cost_usd: f64,
    pub period_start_ms: i64,
}

/// The management store.
#[derive(Debug)]
pub struct Store {
    db: Db,
}

const COLUMNS: &str = "kind, id, team, owner, digest, body, deleted, version";

impl Store {
    /// Opens the store and brings its schema up to date.
    pub fn open(db: Db) -> Result<Store, DbError> {
        let store = Store { db };
        store.migrate()?;
        Ok(store)
    }

    pub fn dialect(&self) -> Dialect {
        self.db.dialect()
    }

    fn migrate(&self) -> Result<(), DbError> {
        let dialect = self.db.dialect();
        self.db.transaction(|tx| {
            if dialect == Dialect::Postgres {
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[MIGRATION_LOCK.into()])?;
            }
            tx.execute(
                "CREATE TABLE IF NOT EXISTS levee_mgmt_migrations (version BIGINT PRIMARY KEY)",
                &[],
            )?;
            let applied = tx
                .one("SELECT COALESCE(MAX(version), 0) FROM levee_mgmt_migrations", &[])?
                .int()
                .unwrap_or(0);
            for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > applied) {
                for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                    tx.execute(statement, &[])?;
                }
                tx.execute(
                    "INSERT INTO levee_mgmt_migrations (version) VALUES ($1)",
                    &[(*version).into()],
                )?;
            }
            Ok(())
        })
    }

    /// Runs `work` in one transaction.
    pub fn transaction<T, E: From<DbError>>(
        &self,
        work: impl FnOnce(&mut dyn Tx) -> Result<T, E>,
    ) -> Result<T, E> {
        self.db.transaction(work)
    }

    /// The version of the last change.
    pub fn version(&self) -> Result<i64, DbError> {
        self.db.transaction(|tx| {
            Ok(tx
                .one("SELECT version FROM levee_mgmt_meta WHERE id = 1", &[])?
                .int()
                .unwrap_or(0))
        })
    }

    /// Every object written after `version`, oldest change first.
    pub fn changes_since(&self, version: i64) -> Result<Vec<Object>, DbError> {
        self.db.transaction(|tx| {
            let sql = format!("SELECT {COLUMNS} FROM levee_objects WHERE version > $1 ORDER BY version");
            let rows = tx.query(&sql, &[version.into()])?;
            Ok(rows.into_iter().filter_map(object).collect())
        })
    }

    /// A page of every object in (kind, id) order, after `after`: how the first load reads
    /// the store without holding every row at once.
    pub fn page(&self, after: &(String, String), limit: i64) -> Result<Vec<Object>, DbError> {
        self.db.transaction(|tx| {
            let sql = format!(
                "SELECT {COLUMNS} FROM levee_objects WHERE (kind, id) > (CAST($1 AS TEXT), CAST($2 AS TEXT))
                 ORDER BY kind, id LIMIT $3"
            );
            let rows = tx.query(
                &sql,
                &[after.0.as_str().into(), after.1.as_str().into(), limit.into()],
            )?;
            Ok(rows.into_iter().filter_map(object).collect())
        })
    }

    /// Every key's usage (for the data plane's budgets at start).
    pub fn all_usage(&self) -> Result<Vec<(String, Usage)>, DbError> {
        self.db.transaction(|tx| {
            let rows = tx.query(
                "SELECT key_id, requests, tokens, cost_usd, period_start_ms, period_cost_usd FROM levee_usage",
                &[],
            )?;
            Ok(rows.iter().filter_map(|r| Some((r.first()?.text()?.to_owned(), usage(r.get(1..)?)))).collect())
        })
    }

    /// Adds usage counted since the last flush. A key whose budget period is over starts a
    /// new one with this flush.
    pub fn add_usage(&self, deltas: &[UsageDelta], now_ms: i64) -> Result<(), DbError> {
        self.db.transaction(|tx| {
            for d in deltas {
                tx.execute(
                    "INSERT INTO levee_usage (key_id, consumer, team, requests, tokens, cost_usd, period_start_ms, period_cost_usd)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $6)
                     ON CONFLICT (key_id) DO UPDATE SET
                       requests = levee_usage.requests + excluded.requests,
                       tokens = levee_usage.tokens + excluded.tokens,
                       cost_usd = levee_usage.cost_usd + excluded.cost_usd,
                       period_cost_usd = CASE WHEN CAST($8 AS BIGINT) > 0 AND CAST($7 AS BIGINT) - levee_usage.period_start_ms >= CAST($8 AS BIGINT)
                           THEN excluded.cost_usd ELSE levee_usage.period_cost_usd + excluded.cost_usd END,
                       period_start_ms = CASE WHEN CAST($8 AS BIGINT) > 0 AND CAST($7 AS BIGINT) - levee_usage.period_start_ms >= CAST($8 AS BIGINT)
                           THEN $7 ELSE levee_usage.period_start_ms END",
                    &[
                        d.key_id.as_str().into(),
                        d.consumer.as_str().into(),
                        d.team.clone().into(),
                        d.requests.into(),
                        d.tokens.into(),
                        d.cost_usd.into(),
                        now_ms.into(),
                        d.period_ms.into(),
                    ],
                )?;
            }
            Ok(())
        })
    }

    /// Usage summed per `group` (`key_id`, `consumer` or `team`), optionally for one team.
    pub fn usage_by(&self, group: &str, team: Option<&str>) -> Result<Vec<(Option<String>, Usage)>, DbError> {
        let column = match group {
            "consumer" => "consumer",
            "team" => "team",
            _ => "key_id",
        };
        self.db.transaction(|tx| {
            let sql = format!(
                "SELECT {column}, CAST(SUM(requests) AS BIGINT), CAST(SUM(tokens) AS BIGINT), SUM(cost_usd),
                        CAST(MIN(period_start_ms) AS BIGINT), SUM(period_cost_usd)
                 FROM levee_usage WHERE (CAST($1 AS TEXT) IS NULL OR team = $1) GROUP BY {column} ORDER BY {column}"
            );
            let rows = tx.query(&sql, &[team.map(str::to_owned).into()])?;
            Ok(rows
                .iter()
                .filter_map(|r| Some((r.first()?.text().map(str::to_owned), usage(r.get(1..)?))))
                .collect())
        })
    }

    /// The audit log, newest first.
    pub fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, DbError> {
        self.db.transaction(|tx| {
            let rows = tx.query(
                "SELECT id, time_ms, actor, role, team, action, kind, object_id, before, after FROM levee_audit
                 WHERE (CAST($1 AS TEXT) IS NULL OR kind = $1) AND (CAST($2 AS TEXT) IS NULL OR object_id = $2)
                   AND (CAST($3 AS TEXT) IS NULL OR actor = $3) AND (CAST($4 AS TEXT) IS NULL OR action = $4)
                   AND (CAST($5 AS TEXT) IS NULL OR team = $5)
                   AND (CAST($6 AS BIGINT) IS NULL OR time_ms >= $6) AND (CAST($7 AS BIGINT) IS NULL OR time_ms <= $7)
                 ORDER BY id DESC LIMIT $8",
                &[
                    q.kind.clone().into(),
                    q.object_id.clone().into(),
                    q.actor.clone().into(),
                    q.action.clone().into(),
                    q.team.clone().into(),
                    q.since_ms.into(),
                    q.until_ms.into(),
                    q.limit.into(),
                ],
            )?;
            Ok(rows.iter().filter_map(|r| audit_entry(r)).collect())
        })
    }
}

/// The next version: taken first in a change's transaction, it also makes changes one at a
/// time (the counter's row stays locked until commit).
pub fn next_version(tx: &mut dyn Tx) -> Result<i64, DbError> {
    tx.one(
        "UPDATE levee_mgmt_meta SET version = version + 1 WHERE id = 1 RETURNING version",
        &[],
    )?
    .int()
    .ok_or_else(|| DbError::Unavailable("the version counter is missing".into()))
}

/// One object (deleted ones included).
pub fn get(tx: &mut dyn Tx, kind: Kind, id: &str) -> Result<Option<Object>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM levee_objects WHERE kind = $1 AND id = $2");
    let rows = tx.query(&sql, &[kind.as_str().into(), id.into()])?;
    Ok(rows.into_iter().next().and_then(object))
}

/// Which live objects to list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub team: Option<String>,
    pub owner: Option<String>,
    /// Only ids after this one (the previous page's last).
    pub after: Option<String>,
    pub limit: i64,
}

/// The live objects of `kind` that `filter` selects, by id, each with its usage (keys).
pub fn list(tx: &mut dyn Tx, kind: Kind, filter: &Filter) -> Result<Vec<(Object, Option<Usage>)>, DbError> {
    let columns = COLUMNS
        .split(", ")
        .map(|c| format!("o.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT {columns}, u.requests, u.tokens, u.cost_usd, u.period_start_ms, u.period_cost_usd
         FROM levee_objects o LEFT JOIN levee_usage u ON u.key_id = o.id
         WHERE o.kind = $1 AND o.deleted = 0 AND (CAST($2 AS TEXT) IS NULL OR o.team = $2)
           AND (CAST($3 AS TEXT) IS NULL OR o.owner = $3) AND (CAST($4 AS TEXT) IS NULL OR o.id > $4)
         ORDER BY o.id LIMIT $5"
    );
    let rows = tx.query(
        &sql,
        &[
            kind.as_str().into(),
            filter.team.clone().into(),
            filter.owner.clone().into(),
            filter.after.clone().into(),
            filter.limit.into(),
        ],
    )?;
    Ok(rows
        .into_iter()
        .filter_map(|mut row| {
            let tail = row.split_off(8.min(row.len()));
            let usage = tail
                .first()
                .is_some_and(|v| *v != Value::Null)
                .then(|| usage(&tail));
            Some((object(row)?, usage))
        })
        .collect())
}

/// One key's usage.
pub fn usage_of(tx: &mut dyn Tx, key_id: &str) -> Result<Option<Usage>, DbError> {
    let rows = tx.query(
        "SELECT requests, tokens, cost_usd, period_start_ms, period_cost_usd FROM levee_usage WHERE key_id = $1",
        &[key_id.into()],
    )?;
    Ok(rows.first().map(|r| usage(r)))
}

/// How many live objects of `kind` belong to `team` (`by_team`) or to the consumer `owner`.
pub fn count(tx: &mut dyn Tx, kind: Kind, by_team: bool, value: &str) -> Result<i64, DbError> {
    let column = if by_team { "team" } else { "owner" };
    let sql = format!("SELECT COUNT(*) FROM levee_objects WHERE kind = $1 AND deleted = 0 AND {column} = $2");
    Ok(tx
        .one(&sql, &[kind.as_str().into(), value.into()])?
        .int()
        .unwrap_or(0))
}

/// Writes `object` as it is (its `version` already stamped).
pub fn put(tx: &mut dyn Tx, object: &Object) -> Result<(), DbError> {
    tx.execute(
        "INSERT INTO levee_objects (kind, id, team, owner, digest, body, deleted, version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (kind, id) DO UPDATE SET team = excluded.team, owner = excluded.owner, digest = excluded.digest,
           body = excluded.body, deleted = excluded.deleted, version = excluded.version",
        &[
            object.kind.as_str().into(),
            object.id.as_str().into(),
            object.team.clone().into(),
            object.owner.clone().into(),
            object.digest.clone().into(),
            object.body.to_string().into(),
            i64::from(object.deleted).into(),
            object.version.into(),
        ],
    )?;
    Ok(())
}

/// Adds an audit entry numbered `version` (one change, one entry).
pub fn record_audit(tx: &mut dyn Tx, version: i64, audit: &AuditRecord, now_ms: i64) -> Result<(), DbError> {
    tx.execute(
        "INSERT INTO levee_audit (id, time_ms, actor, role, team, action, kind, object_id, before, after)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (id) DO NOTHING",
        &[
            version.into(),
            now_ms.into(),
            audit.actor.as_str().into(),
            audit.role.as_str().into(),
            audit.team.clone().into(),
            audit.action.as_str().into(),
            audit.kind.as_str().into(),
            audit.object_id.as_str().into(),
            audit.before.as_ref().map(Json::to_string).into(),
            audit.after.as_ref().map(Json::to_string).into(),
        ],
    )?;
    Ok(())
}

fn object(row: Vec<Value>) -> Option<Object> {
    let mut values = row.into_iter();
    let kind = Kind::parse(values.next()?.text()?)?;
    let id = values.next()?.text()?.to_owned();
    let team = values.next()?.text().map(str::to_owned);
    let owner = values.next()?.text().map(str::to_owned);
    let digest = values.next()?.text().map(str::to_owned);
    let body = serde_json::from_str(values.next()?.text()?).ok()?;
    let deleted = values.next()?.int()? != 0;
    let version = values.next()?.int()?;
    Some(Object {
        kind,
        id,
        team,
        owner,
        digest,
        body,
        deleted,
        version,
    })
}

fn usage(r: &[Value]) -> Usage {
    let int = |i: usize| r.get(i).and_then(Value::int).unwrap_or(0);
    let real = |i: usize| r.get(i).and_then(Value::real).unwrap_or(0.0);
    Usage {
        requests: int(0),
        tokens: int(1),
        cost_usd: real(2),
        period_start_ms: int(3),
        period_cost_usd: real(4),
    }
}

fn audit_entry(r: &[Value]) -> Option<AuditEntry> {
    let text = |i: usize| r.get(i).and_then(Value::text).map(str::to_owned);
    let json = |i: usize| text(i).and_then(|t| serde_json::from_str(&t).ok());
    Some(AuditEntry {
        id: r.first()?.int()?,
        time: super::model::rfc3339(r.get(1)?.int()?),
        actor: text(2)?,
        role: text(3)?,
        team: text(4),
        action: text(5)?,
        kind: text(6)?,
        object_id: text(7)?,
        before: json(8),
        after: json(9),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, version: i64) -> Object {
        Object {
            kind: Kind::Key,
            id: id.into(),
            team: None,
            owner: Some("c".into()),
            digest: Some(format!("sha256:{id}")),
            body: serde_json::json!({ "id": id }),
            deleted: false,
            version,
        }
    }

    #[test]
    fn pages_read_every_object_once_in_kind_and_id_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(Db::sqlite(&dir.path().join("m.sqlite3")).unwrap()).unwrap();
        // Two objects per change (as a rotation writes), so versions repeat across pages.
        store
            .transaction(|tx| {
                for n in 0..12 {
                    let version = next_version(tx)?;
                    put(tx, &key(&format!("key_{n:02}a"), version))?;
                    put(tx, &key(&format!("key_{n:02}b"), version))?;
                }
                let team = Object {
                    kind: Kind::Team,
                    id: "t".into(),
                    team: Some("t".into()),
                    ..key("t", next_version(tx)?)
                };
                put(tx, &team)?;
                Ok::<_, DbError>(())
            })
            .unwrap();
        assert_eq!(store.version().unwrap(), 13);
        let mut seen = Vec::new();
        let mut after = (String::new(), String::new());
        loop {
            let page = store.page(&after, 5).unwrap();
            let Some(last) = page.last() else { break };
            after = (last.kind.as_str().to_owned(), last.id.clone());
            seen.extend(page.into_iter().map(|o| (o.kind, o.id)));
        }
        assert_eq!(seen.len(), 25);
        // Keys before the team whose budget adds them up.
        assert_eq!(seen.last(), Some(&(Kind::Team, "t".to_owned())));
        let mut sorted = seen.clone();
        sorted.sort_by(|a, b| (a.0.as_str(), &a.1).cmp(&(b.0.as_str(), &b.1)));
        assert_eq!(seen, sorted);
        assert_eq!(store.changes_since(11).unwrap().len(), 3);
    }
}
