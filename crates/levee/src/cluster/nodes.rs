//! The fleet's roll call: every replica writes a heartbeat to Redis (its id, version, config
//! hash, which stores it reaches, whether it leads alerting), and reads everyone's. How many
//! are alive decides each replica's share of a limit when Redis stops answering, so the
//! count kept is the last one seen, not zero.
//!
//! Leases (for the one alert sender, say) are Redis keys set only when absent and renewed
//! only by their holder, with an expiry: a holder that dies loses the lease when it expires.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::redis::RedisStore;

/// One replica as its heartbeat describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NodeInfo {
    pub id: String,
    pub version: String,
    /// The hash of the config the replica serves (hex): replicas should agree.
    pub config_hash: String,
    /// Unix milliseconds of the heartbeat.
    pub last_heartbeat_ms: u64,
    pub started_ms: u64,
    pub redis: bool,
    pub postgres: bool,
    /// Holds the alerting lease: evaluates SLOs for the fleet and sends notifications.
    pub alert_leader: bool,
    /// Heard from within three heartbeats (filled in by the reader, not sent).
    #[serde(default)]
    pub alive: bool,
    /// The replica that answered (filled in by the reader, not sent).
    #[serde(default, rename = "self")]
    pub this: bool,
}

/// Heartbeats older than this are removed from the roll (the replica is long gone).
const FORGET_AFTER_MS: u64 = 3_600_000;

/// Writes `me` and reads the whole roll; `None` when Redis does not answer.
pub async fn beat(redis: &RedisStore, me: &NodeInfo) -> Option<Vec<NodeInfo>> {
    let key = redis.key(&["nodes"]);
    let json = serde_json::to_string(me).ok()?;
    let id = me.id.clone();
    let all: Vec<(String, String)> = redis
        .call_background(|mut conn| async move {
            redis::pipe()
                .hset(&key, &id, json)
                .ignore()
                .hgetall(&key)
                .query_async::<(Vec<(String, String)>,)>(&mut conn)
                .await
                .map(|(all,)| all)
        })
        .await?;
    let mut nodes = Vec::new();
    let mut stale = Vec::new();
    for (id, json) in all {
        match serde_json::from_str::<NodeInfo>(&json) {
            Ok(node) if me.last_heartbeat_ms.saturating_sub(node.last_heartbeat_ms) < FORGET_AFTER_MS => {
                nodes.push(node)
            }
            _ => stale.push(id),
        }
    }
    if !stale.is_empty() {
        let key = redis.key(&["nodes"]);
        let _: Option<()> = redis
            .call_background(|mut conn| async move {
                redis::cmd("HDEL")
                    .arg(&key)
                    .arg(stale)
                    .query_async(&mut conn)
                    .await
            })
            .await;
    }
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    Some(nodes)
}

/// The key of the lease `name` (`prefix:lease:NAME`), for scripts that check who holds it.
pub fn lease_key(redis: &RedisStore, name: &str) -> String {
    redis.key(&["lease", name])
}

/// Takes or renews the lease `name` for `holder`, for `ttl_ms`. `Some(true)`: `holder` holds
/// it now; `Some(false)`: another does; `None`: Redis did not answer (the caller must act as
/// if it did not hold it: two leaders are worse than none for a moment).
pub async fn lease(redis: &RedisStore, name: &str, holder: &str, ttl_ms: u64) -> Option<bool> {
    static SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
        redis::Script::new(
            r"
            local current = redis.call('GET', KEYS[1])
            if current == false then
                redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
                return 1
            elseif current == ARGV[1] then
                redis.call('PEXPIRE', KEYS[1], ARGV[2])
                return 1
            end
            return 0
            ",
        )
    });
    let key = lease_key(redis, name);
    let holder = holder.to_owned();
    redis
        .call_background(|mut conn| async move {
            SCRIPT
                .key(key)
                .arg(holder)
                .arg(ttl_ms)
                .invoke_async::<i64>(&mut conn)
                .await
        })
        .await
        .map(|held| held == 1)
}

/// Gives up the lease `name` if `holder` holds it (a clean stop hands over at once).
pub async fn release(redis: &RedisStore, name: &str, holder: &str) {
    static SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
        redis::Script::new(
            r"
            if redis.call('GET', KEYS[1]) == ARGV[1] then
                return redis.call('DEL', KEYS[1])
            end
            return 0
            ",
        )
    });
    let key = lease_key(redis, name);
    let holder = holder.to_owned();
    let _: Option<i64> = redis
        .call_background(|mut conn| async move { SCRIPT.key(key).arg(holder).invoke_async(&mut conn).await })
        .await;
}
