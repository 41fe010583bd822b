//! The `cluster` section: which shared stores the fleet uses, and this replica's name.
//!
//! Credentials only come from the environment: a URL written in the file may not carry a
//! password, so the file can be shown, logged and committed.

use super::Problems;
use crate::config::file::{ClusterFile, PostgresFile, RedisFile};
use crate::config::secrets::Resolved;
use crate::config::spec::*;

/// The resolved environment variables and host name the section needs.
pub(super) struct ClusterInputs {
    pub redis_url: Option<Resolved<Secret>>,
    pub postgres_url: Option<Resolved<Secret>>,
    pub host_name: Option<String>,
}

pub(super) fn check_cluster(
    c: &ClusterFile,
    listeners: &[ListenerSpec],
    inputs: ClusterInputs,
    p: &mut Problems,
) -> Option<ClusterSpec> {
    if c.redis.is_none() && c.postgres.is_none() {
        p.at(
            "cluster",
            "cluster needs `redis`, `postgres` or both (docs/cluster.md says which feature uses which)",
        );
    }
    let node_id = match &c.node_id {
        Some(id) => id.clone(),
        None => {
            let host = inputs.host_name.unwrap_or_else(|| "localhost".into());
            match listeners.first() {
                Some(l) => format!("{host}:{}", l.bind.port()),
                None => host,
            }
        }
    };
    let node_id_ok = !node_id.is_empty()
        && node_id.len() <= 128
        && node_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
    if !node_id_ok {
        p.at(
            "cluster.node_id",
            format!("node_id `{node_id}` must be 1 to 128 letters, digits, `_`, `-`, `.` or `:`"),
        );
    }
    let redis = c.redis.as_ref().and_then(|r| check_redis(r, inputs.redis_url, p));
    let postgres = c
        .postgres
        .as_ref()
        .and_then(|pg| check_postgres(pg, inputs.postgres_url, p));
    let heartbeat = c.heartbeat.map(|d| d.0).unwrap_or(DEFAULT_HEARTBEAT);
    if heartbeat < std::time::Duration::from_millis(100) || heartbeat > std::time::Duration::from_secs(60) {
        p.at("cluster.heartbeat", "cluster.heartbeat must be from 100ms to 60s");
    }
    Some(ClusterSpec {
        node_id,
        redis,
        postgres,
        heartbeat,
    })
}

/// The URL from `url` or `url_env` (exactly one), or `None` once the problem is reported.
fn store_url(
    section: &str,
    url: Option<&str>,
    url_env: Option<&str>,
    from_env: Option<Resolved<Secret>>,
    p: &mut Problems,
) -> Option<Secret> {
    match (url, url_env, from_env) {
        (Some(_), Some(_), _) => {
            p.at(section, format!("{section}: give `url` or `url_env`, not both"));
            None
        }
        (None, Some(_), Some(resolved)) => p.resolved(&format!("{section}.url_env"), resolved),
        (Some(url), None, _) => Some(Secret(url.to_owned())),
        _ => {
            p.at(
                section,
                format!("{section} needs `url_env` (or `url` without a password)"),
            );
            None
        }
    }
}

fn check_redis(r: &RedisFile, from_env: Option<Resolved<Secret>>, p: &mut Problems) -> Option<RedisSpec> {
    let url = store_url(
        "cluster.redis",
        r.url.as_deref(),
        r.url_env.as_deref(),
        from_env,
        p,
    )?;
    let at = if r.url.is_some() {
        "cluster.redis.url"
    } else {
        "cluster.redis.url_env"
    };
    if url.0.starts_with("rediss://") {
        p.at(at, "TLS to Redis (rediss://) is not supported yet: use redis:// on a trusted network (docs/cluster.md)");
        return None;
    }
    match redis::Client::open(url.0.as_str()) {
        Ok(client) => {
            let info = client.get_connection_info();
            if r.url.is_some() && info.redis_settings().password().is_some() {
                p.at(at, "the Redis URL carries a password: put the URL in an environment variable and name it in `url_env`");
            }
        }
        // The client's message may quote the URL, and with it a password: say only the shape.
        Err(_) => p.at(at, "not a Redis URL: expected redis://[:password@]host:port[/db]"),
    }
    let timeout = r.timeout.map(|d| d.0).unwrap_or(DEFAULT_REDIS_TIMEOUT);
    if timeout.is_zero() || timeout > std::time::Duration::from_secs(10) {
        p.at(
            "cluster.redis.timeout",
            "cluster.redis.timeout must be above zero and at most 10s",
        );
    }
    let backoff = r.backoff.map(|d| d.0).unwrap_or(DEFAULT_REDIS_BACKOFF);
    if backoff > std::time::Duration::from_secs(60) {
        p.at(
            "cluster.redis.backoff",
            "cluster.redis.backoff must be at most 60s",
        );
    }
    let key_prefix = r.key_prefix.clone().unwrap_or_else(|| "levee".into());
    let prefix_ok = !key_prefix.is_empty()
        && key_prefix.len() <= 64
        && key_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
    if !prefix_ok {
        p.at(
            "cluster.redis.key_prefix",
            "cluster.redis.key_prefix must be 1 to 64 letters, digits, `_`, `-`, `.` or `:`",
        );
    }
    Some(RedisSpec {
        url,
        timeout,
        backoff,
        key_prefix,
    })
}

fn check_postgres(
    pg: &PostgresFile,
    from_env: Option<Resolved<Secret>>,
    p: &mut Problems,
) -> Option<PostgresSpec> {
    let url = store_url(
        "cluster.postgres",
        pg.url.as_deref(),
        pg.url_env.as_deref(),
        from_env,
        p,
    )?;
    let at = if pg.url.is_some() {
        "cluster.postgres.url"
    } else {
        "cluster.postgres.url_env"
    };
    match url.0.parse::<tokio_postgres::Config>() {
        Ok(config) if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require => p.at(
            at,
            "TLS to PostgreSQL (sslmode=require) is not supported yet: use sslmode=disable or prefer on a trusted network (docs/cluster.md)",
        ),
        Ok(config) => {
            if pg.url.is_some() && config.get_password().is_some() {
                p.at(at, "the PostgreSQL connection string carries a password: put it in an environment variable and name it in `url_env`");
            }
        }
        Err(_) => p.at(
            at,
            "not a PostgreSQL connection string: expected postgres://user[:password]@host:port/db or `host=... user=... dbname=...`",
        ),
    }
    let timeout = pg.timeout.map(|d| d.0).unwrap_or(DEFAULT_POSTGRES_TIMEOUT);
    if timeout.is_zero() || timeout > std::time::Duration::from_secs(60) {
        p.at(
            "cluster.postgres.timeout",
            "cluster.postgres.timeout must be above zero and at most 60s",
        );
    }
    let batch = pg.batch.unwrap_or(DEFAULT_POSTGRES_BATCH);
    if batch == 0 || batch > 10_000 {
        p.at(
            "cluster.postgres.batch",
            "cluster.postgres.batch must be from 1 to 10000",
        );
    }
    Some(PostgresSpec { url, timeout, batch })
}
