//! The fleet's call log in PostgreSQL, statement by statement: writing a batch, the admin
//! API's two reads and retention, each one bounded call to [`PgStore::run`].
//!
//! Kept apart from the writer thread (`calls.rs`) so the SQL can be read, and its building
//! tested, on its own. The reads answer exactly what the SQLite store answers for the same
//! rows: the same filters, the same cells, the same nearest-rank percentiles
//! (`percentile_disc` is nearest rank), the same 200,000-row cut. Only the order of
//! `/api/v1/calls` differs, and only in its tie-break: newest by time, then by insertion,
//! where SQLite has one writer and orders by insertion alone.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::postgres::{PgError, PgStore};
use crate::observability::call_log::{
    now_ms, shared, Aggregate, AnalyticsQuery, CallQuery, CallRecord, GroupBy, MAX_ANALYTICS_ROWS,
};

/// The columns a call record is read from and written to, in this order.
const COLUMNS: &str = "node, time_ms, request_id, trace_id, route, consumer, method, path, status, error, \
     upstream, target, attempts, latency_ms, upstream_ms, bytes_in, bytes_out, \
     provider, model, prompt_tokens, completion_tokens, cost_usd, fault, grpc_status, \
     cached_tokens, cache_write_tokens, reasoning_tokens, guardrails";

/// One statement for a whole batch: each column arrives as an array, so the statement has
/// 28 parameters whatever the batch size (a row per parameter set would hit PostgreSQL's
/// 65,535-parameter limit at `batch: 2850`).
const INSERT: &str =
    "INSERT INTO levee_calls (node, time_ms, request_id, trace_id, route, consumer, method, \
     path, status, error, upstream, target, attempts, latency_ms, upstream_ms, bytes_in, bytes_out, \
     provider, model, prompt_tokens, completion_tokens, cost_usd, fault, grpc_status, \
     cached_tokens, cache_write_tokens, reasoning_tokens, guardrails)
     SELECT $1::text, * FROM UNNEST($2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], \
     $7::text[], $8::text[], $9::int4[], $10::text[], $11::text[], $12::text[], $13::int4[], \
     $14::float8[], $15::float8[], $16::int8[], $17::int8[], $18::text[], $19::text[], \
     $20::int8[], $21::int8[], $22::float8[], $23::text[], $24::int4[], $25::int8[], \
     $26::int8[], $27::int8[], $28::text[])";

/// How many rows the analytics scan would read, one more than the cut at most.
const SCANNED: &str = "SELECT count(*) FROM (SELECT 1 FROM levee_calls \
     WHERE time_ms >= $1 AND time_ms < $2 AND ($4::text IS NULL OR route = $4) LIMIT $3) AS scanned";

/// Rows deleted per retention statement, and statements per round at most: a round never
/// holds the connection for long, and a backlog is worked off over the next rounds.
const RETENTION_CHUNK: i64 = 10_000;
const RETENTION_CHUNKS: usize = 50;

/// A value bound to a statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Text(String),
    Int(i32),
    BigInt(i64),
}

impl Param {
    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Param::Text(text) => text,
            Param::Int(int) => int,
            Param::BigInt(int) => int,
        }
    }
}

/// The `/api/v1/calls` statement for `q`: only the filters it sets, newest first.
pub fn calls_sql(q: &CallQuery) -> (String, Vec<Param>) {
    let mut params = Vec::new();
    let mut clauses = Vec::new();
    let mut bind = |clause: &str, param: Param| {
        params.push(param);
        clauses.push(format!("{clause} ${}", params.len()));
    };
    if let Some(route) = &q.route {
        bind("route =", Param::Text(route.clone()));
    }
    if let Some(consumer) = &q.consumer {
        bind("consumer =", Param::Text(consumer.clone()));
    }
    if let Some(status) = q.status {
        bind("status =", Param::Int(i32::from(status)));
    }
    if let Some(since) = q.since_ms {
        bind("time_ms >=", Param::BigInt(since));
    }
    if let Some(until) = q.until_ms {
        bind("time_ms <", Param::BigInt(until));
    }
    let mut sql = format!("SELECT {COLUMNS} FROM levee_calls");
    if !clauses.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&clauses.join(" AND "));
    }
    params.push(Param::BigInt(i64::try_from(q.limit).unwrap_or(i64::MAX)));
    sql.push_str(&format!(
        " ORDER BY time_ms DESC, id DESC LIMIT ${}",
        params.len()
    ));
    (sql, params)
}

/// The analytics statement: the first `$3` rows of the range by time (the cut SQLite makes),
/// added up per bucket (`$4` wide, aligned on the epoch as `rem_euclid` aligns them) and
/// group. The group expression is the SQLite store's, which is standard SQL.
pub fn analytics_sql(group_by: GroupBy) -> String {
    format!(
        "WITH scanned AS (
            SELECT time_ms, {group} AS grp, status, latency_ms, bytes_in, bytes_out,
                   COALESCE(prompt_tokens, 0) AS prompt_tokens,
                   COALESCE(completion_tokens, 0) AS completion_tokens,
                   COALESCE(cost_usd, 0) AS cost_usd
            FROM levee_calls WHERE time_ms >= $1 AND time_ms < $2 AND ($5::text IS NULL OR route = $5)
            ORDER BY time_ms LIMIT $3
        )
        SELECT time_ms - ((time_ms % $4) + $4) % $4 AS bucket, grp,
               count(*), count(*) FILTER (WHERE status >= 500),
               percentile_disc(ARRAY[0.5, 0.95, 0.99]::float8[]) WITHIN GROUP (ORDER BY latency_ms),
               sum(bytes_in)::int8, sum(bytes_out)::int8,
               sum(prompt_tokens)::int8, sum(completion_tokens)::int8, sum(cost_usd)::float8
        FROM scanned GROUP BY 1, 2",
        group = group_by.column()
    )
}

/// PostgreSQL text cannot hold NUL: such a character becomes U+FFFD instead of failing the
/// batch.
fn text(value: &str) -> String {
    if value.contains('\0') {
        value.replace('\0', "\u{fffd}")
    } else {
        value.to_owned()
    }
}

fn texts(values: &[CallRecord], field: impl Fn(&CallRecord) -> Option<&str>) -> Vec<Option<String>> {
    values.iter().map(|c| field(c).map(text)).collect()
}

fn big(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A batch as one array per column, in the order of [`INSERT`]'s parameters after `node`.
struct Columns {
    ints: [Vec<i64>; 3],
    int4: [Vec<i32>; 2],
    floats: Vec<f64>,
    texts: [Vec<Option<String>>; 12],
    /// Prompt, completion, cached, cache-write and reasoning tokens.
    optional_ints: [Vec<Option<i64>>; 5],
    optional_floats: [Vec<Option<f64>>; 2],
    grpc_status: Vec<Option<i32>>,
    guardrails: Vec<Option<String>>,
}

impl Columns {
    fn of(batch: &[CallRecord]) -> Columns {
        let time = batch.iter().map(|c| c.time_ms).collect();
        let status = batch.iter().map(|c| i32::from(c.status)).collect();
        let attempts = batch
            .iter()
            .map(|c| i32::try_from(c.attempts).unwrap_or(i32::MAX))
            .collect();
        Columns {
            ints: [
                time,
                batch.iter().map(|c| big(c.bytes_in)).collect(),
                batch.iter().map(|c| big(c.bytes_out)).collect(),
            ],
            int4: [status, attempts],
            floats: batch.iter().map(|c| c.latency_ms).collect(),
            texts: [
                texts(batch, |c| Some(&c.request_id)),
                texts(batch, |c| c.trace_id.as_deref()),
                texts(batch, |c| c.route.as_deref()),
                texts(batch, |c| c.consumer.as_deref()),
                texts(batch, |c| Some(&c.method)),
                texts(batch, |c| Some(&c.path)),
                texts(batch, |c| c.error.as_deref()),
                texts(batch, |c| c.upstream.as_deref()),
                texts(batch, |c| c.target.as_deref()),
                texts(batch, |c| c.provider.as_deref()),
                texts(batch, |c| c.model.as_deref()),
                texts(batch, |c| c.fault.as_deref()),
            ],
            optional_ints: [
                batch.iter().map(|c| c.prompt_tokens.map(big)).collect(),
                batch.iter().map(|c| c.completion_tokens.map(big)).collect(),
                batch.iter().map(|c| c.cached_tokens.map(big)).collect(),
                batch.iter().map(|c| c.cache_write_tokens.map(big)).collect(),
                batch.iter().map(|c| c.reasoning_tokens.map(big)).collect(),
            ],
            optional_floats: [
                batch.iter().map(|c| c.upstream_ms).collect(),
                batch.iter().map(|c| c.cost_usd).collect(),
            ],
            grpc_status: batch.iter().map(|c| c.grpc_status.map(i32::from)).collect(),
            guardrails: batch
                .iter()
                .map(|c| c.guardrails.as_ref().map(serde_json::Value::to_string))
                .collect(),
        }
    }

    /// The parameters of [`INSERT`], `node` first.
    fn params<'a>(&'a self, node: &'a String) -> [&'a (dyn ToSql + Sync); 28] {
        let [time, bytes_in, bytes_out] = &self.ints;
        let [status, attempts] = &self.int4;
        let [request_id, trace_id, route, consumer, method, path, error, upstream, target, provider, model, fault] =
            &self.texts;
        let [prompt, completion, cached, cache_write, reasoning] = &self.optional_ints;
        let [upstream_ms, cost] = &self.optional_floats;
        [
            node,
            time,
            request_id,
            trace_id,
            route,
            consumer,
            method,
            path,
            status,
            error,
            upstream,
            target,
            attempts,
            &self.floats,
            upstream_ms,
            bytes_in,
            bytes_out,
            provider,
            model,
            prompt,
            completion,
            cost,
            fault,
            &self.grpc_status,
            cached,
            cache_write,
            reasoning,
            &self.guardrails,
        ]
    }
}

/// Writes `batch` as served by `node`, in one statement.
pub async fn insert(pg: &PgStore, node: &str, batch: &[CallRecord]) -> Result<(), PgError> {
    let columns = Columns::of(batch);
    let node = text(node);
    pg.run(move |client| async move {
        client.execute(INSERT, &columns.params(&node)).await?;
        Ok(())
    })
    .await
}

fn record(row: &Row) -> Result<CallRecord, tokio_postgres::Error> {
    let count = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(CallRecord {
        node: shared(Some(row.try_get(0)?)),
        time_ms: row.try_get(1)?,
        request_id: row.try_get(2)?,
        trace_id: row.try_get(3)?,
        route: shared(row.try_get(4)?),
        consumer: shared(row.try_get(5)?),
        method: Cow::Owned(row.try_get(6)?),
        path: Arc::from(row.try_get::<_, String>(7)?),
        status: u16::try_from(row.try_get::<_, i32>(8)?).unwrap_or(0),
        error: row.try_get::<_, Option<String>>(9)?.map(Cow::Owned),
        upstream: shared(row.try_get(10)?),
        target: shared(row.try_get(11)?),
        attempts: u32::try_from(row.try_get::<_, i32>(12)?).unwrap_or(0),
        latency_ms: row.try_get(13)?,
        upstream_ms: row.try_get(14)?,
        bytes_in: count(row.try_get(15)?),
        bytes_out: count(row.try_get(16)?),
        provider: shared(row.try_get(17)?),
        model: shared(row.try_get(18)?),
        prompt_tokens: row.try_get::<_, Option<i64>>(19)?.map(count),
        completion_tokens: row.try_get::<_, Option<i64>>(20)?.map(count),
        cost_usd: row.try_get(21)?,
        fault: row.try_get::<_, Option<String>>(22)?.map(Cow::Owned),
        grpc_status: row
            .try_get::<_, Option<i32>>(23)?
            .and_then(|s| u16::try_from(s).ok()),
        cached_tokens: row.try_get::<_, Option<i64>>(24)?.map(count),
        cache_write_tokens: row.try_get::<_, Option<i64>>(25)?.map(count),
        reasoning_tokens: row.try_get::<_, Option<i64>>(26)?.map(count),
        guardrails: row
            .try_get::<_, Option<String>>(27)?
            .and_then(|text| serde_json::from_str(&text).ok()),
    })
}

/// `GET /api/v1/calls` for the fleet.
pub async fn query(pg: &PgStore, q: &CallQuery) -> Result<Vec<CallRecord>, PgError> {
    let (sql, params) = calls_sql(q);
    let rows = pg
        .run(move |client| async move {
            let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(Param::as_sql).collect();
            client.query(sql.as_str(), &params).await
        })
        .await?;
    rows.iter()
        .map(record)
        .collect::<Result<_, _>>()
        .map_err(PgError::Db)
}

fn aggregate(row: &Row) -> Result<((i64, Option<String>), Aggregate), tokio_postgres::Error> {
    let count = |v: i64| u64::try_from(v).unwrap_or(0);
    let key = (row.try_get::<_, i64>(0)?, row.try_get::<_, Option<String>>(1)?);
    let requests = count(row.try_get(2)?);
    let errors = count(row.try_get(3)?);
    let percentiles: Vec<f64> = row.try_get(4)?;
    let at = |i: usize| percentiles.get(i).copied().unwrap_or(0.0);
    let sum = |i: usize| -> Result<u64, tokio_postgres::Error> {
        Ok(row.try_get::<_, Option<i64>>(i)?.map_or(0, count))
    };
    let cell = Aggregate {
        bucket_start_ms: key.0,
        group: key.1.clone(),
        requests,
        errors,
        error_rate: errors as f64 / requests.max(1) as f64,
        p50_ms: at(0),
        p95_ms: at(1),
        p99_ms: at(2),
        bytes_in: sum(5)?,
        bytes_out: sum(6)?,
        prompt_tokens: sum(7)?,
        completion_tokens: sum(8)?,
        cost_usd: row.try_get::<_, Option<f64>>(9)?.unwrap_or(0.0),
    };
    Ok((key, cell))
}

/// `GET /api/v1/analytics` for the fleet; the flag is true when the row cap cut the scan.
pub async fn analytics(pg: &PgStore, q: &AnalyticsQuery) -> Result<(Vec<Aggregate>, bool), PgError> {
    let sql = analytics_sql(q.group_by);
    let (since, until, bucket) = (q.since_ms, q.until_ms, q.bucket_ms.max(1));
    let route = q.route.clone();
    let cap = i64::try_from(MAX_ANALYTICS_ROWS).unwrap_or(i64::MAX);
    let (rows, scanned) = pg
        .run(move |client| async move {
            let more = cap.saturating_add(1);
            // Both on the one connection, pipelined.
            let (cell_params, scan_params): ([&(dyn ToSql + Sync); 5], [&(dyn ToSql + Sync); 4]) = (
                [&since, &until, &cap, &bucket, &route],
                [&since, &until, &more, &route],
            );
            let cells = client.query(sql.as_str(), &cell_params);
            let scanned = client.query_one(SCANNED, &scan_params);
            let (cells, scanned) = futures_util::future::try_join(cells, scanned).await?;
            Ok((cells, scanned.try_get::<_, i64>(0)?))
        })
        .await?;
    let mut cells = rows
        .iter()
        .map(aggregate)
        .collect::<Result<Vec<_>, _>>()
        .map_err(PgError::Db)?;
    // SQLite's order: by bucket, then group (no group first, then bytewise).
    cells.sort_by(|(a, _), (b, _)| a.cmp(b));
    let truncated = scanned > cap;
    Ok((cells.into_iter().map(|(_, cell)| cell).collect(), truncated))
}

/// Deletes rows older than `max_age`, then the oldest beyond `max_rows`, in chunks (each
/// chunk skips rows another replica is deleting right then); returns the rows deleted.
pub async fn enforce_retention(pg: &PgStore, max_age: Duration, max_rows: u64) -> Result<u64, PgError> {
    let age = i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
    let cutoff = now_ms().saturating_sub(age);
    let mut deleted = delete_chunks(
        pg,
        "DELETE FROM levee_calls WHERE id IN
           (SELECT id FROM levee_calls WHERE time_ms < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
        cutoff,
    )
    .await?;
    let newest: Option<i64> = pg
        .run(|client| async move {
            client
                .query_one("SELECT max(id) FROM levee_calls", &[])
                .await?
                .try_get(0)
        })
        .await?;
    if let Some(newest) = newest {
        let last_dropped = newest.saturating_sub(big(max_rows));
        if last_dropped > 0 {
            deleted += delete_chunks(
                pg,
                "DELETE FROM levee_calls WHERE id IN
                   (SELECT id FROM levee_calls WHERE id <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
                last_dropped,
            )
            .await?;
        }
    }
    Ok(deleted)
}

async fn delete_chunks(pg: &PgStore, sql: &'static str, bound: i64) -> Result<u64, PgError> {
    let mut deleted = 0;
    for _ in 0..RETENTION_CHUNKS {
        let n = pg
            .run(|client| async move { client.execute(sql, &[&bound, &RETENTION_CHUNK]).await })
            .await?;
        deleted += n;
        if n < u64::try_from(RETENTION_CHUNK).unwrap_or(0) {
            break;
        }
    }
    Ok(deleted)
}

/// Whether a failed write is worth trying again with the same batch: PostgreSQL was not
/// reachable, did not answer in time, or refused for a passing reason (connection lost,
/// shutting down, out of connections, a conflict). Anything else is about the rows.
pub fn retryable(error: &PgError) -> bool {
    match error {
        PgError::NotConnected | PgError::Timeout(_) => true,
        PgError::Db(error) => error
            .code()
            .is_none_or(|state| matches!(state.code().get(..2), Some("08" | "40" | "53" | "57"))),
        PgError::Config => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_calls_statement_binds_only_the_filters_given() {
        let (sql, params) = calls_sql(&CallQuery {
            limit: 100,
            ..CallQuery::default()
        });
        assert_eq!(
            sql,
            format!("SELECT {COLUMNS} FROM levee_calls ORDER BY time_ms DESC, id DESC LIMIT $1")
        );
        assert_eq!(params, [Param::BigInt(100)]);

        let (sql, params) = calls_sql(&CallQuery {
            route: Some("api".into()),
            status: Some(503),
            since_ms: Some(10),
            until_ms: Some(20),
            limit: 5,
            ..CallQuery::default()
        });
        assert!(
            sql.ends_with(
                "WHERE route = $1 AND status = $2 AND time_ms >= $3 AND time_ms < $4 \
                 ORDER BY time_ms DESC, id DESC LIMIT $5"
            ),
            "{sql}"
        );
        assert_eq!(
            params,
            [
                Param::Text("api".into()),
                Param::Int(503),
                Param::BigInt(10),
                Param::BigInt(20),
                Param::BigInt(5)
            ]
        );

        let (sql, params) = calls_sql(&CallQuery {
            consumer: Some("o'brien; DROP TABLE levee_calls".into()),
            limit: 1,
            ..CallQuery::default()
        });
        assert!(
            sql.contains("WHERE consumer = $1 ORDER BY"),
            "values are bound, never spliced: {sql}"
        );
        assert_eq!(params.len(), 2);
    }

    #[test]
    fn analytics_group_by_the_same_expression_as_sqlite() {
        for (group_by, expression) in [
            (GroupBy::Route, "route AS grp"),
            (GroupBy::Consumer, "consumer AS grp"),
            (GroupBy::Upstream, "upstream AS grp"),
            (GroupBy::Status, "CAST(status AS TEXT) AS grp"),
            (GroupBy::Model, "model AS grp"),
        ] {
            let sql = analytics_sql(group_by);
            assert!(sql.contains(expression), "{sql}");
            assert!(
                sql.contains("ORDER BY time_ms LIMIT $3"),
                "the cut is by time: {sql}"
            );
            assert!(sql.contains("percentile_disc(ARRAY[0.5, 0.95, 0.99]"), "{sql}");
        }
    }

    #[test]
    fn a_batch_becomes_one_array_per_column() {
        let batch = [
            CallRecord {
                time_ms: 7,
                request_id: "a\0b".into(),
                status: 200,
                attempts: 2,
                bytes_in: u64::MAX,
                prompt_tokens: Some(3),
                route: Some("r".into()),
                ..CallRecord::default()
            },
            CallRecord {
                time_ms: 8,
                status: 503,
                ..CallRecord::default()
            },
        ];
        let columns = Columns::of(&batch);
        assert_eq!(columns.ints[0], [7, 8]);
        assert_eq!(columns.ints[1], [i64::MAX, 0], "a count past i64 saturates");
        assert_eq!(columns.int4, [vec![200, 503], vec![2, 0]]);
        assert_eq!(columns.texts[0], [Some("a\u{fffd}b".into()), Some(String::new())]);
        assert_eq!(columns.texts[2], [Some("r".into()), None]);
        assert_eq!(columns.optional_ints[0], [Some(3), None]);
        let node = "gw-0".to_owned();
        assert_eq!(columns.params(&node).len(), INSERT.matches("::").count());
    }

    #[test]
    fn only_passing_failures_keep_the_batch() {
        assert!(retryable(&PgError::NotConnected));
        assert!(retryable(&PgError::Timeout(Duration::from_secs(1))));
        assert!(!retryable(&PgError::Config));
    }
}
