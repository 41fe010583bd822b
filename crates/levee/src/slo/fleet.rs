//! SLO counts for the whole fleet (cluster mode with `cluster.redis`).
//!
//! Why: behind a load balancer each replica sees a third of the traffic, so a budget or a
//! burn rate computed from one replica's counts is not the service's. Each replica keeps
//! counting exactly as a single node does (its own ledger, saved to `data_dir`), and once a
//! second the `levee-slo` thread also adds the minutes it counted since the last second to
//! Redis and reads the fleet's minutes back into a second ledger, which the evaluation
//! uses instead of its own while Redis answers. Every replica's `/api/v1/slos`, burn rates,
//! alerts and canary decisions then read the same numbers.
//!
//! Layout in Redis (`P` is `cluster.redis.key_prefix`, `ID` a hash of the SLO's name and
//! definition, so a changed route, consumer or SLI starts a new history, as in
//! `slo.sqlite3`):
//!
//! - `P:slo:ID:DAY`: a hash per SLO and day (`DAY` = Unix minutes / 1440) with four fields
//!   per minute of the day (`tN`, `bN`, `iN`, `xN`: total, bad, injected, injected bad at
//!   minute `N` of the day), added to with `HINCRBY` and expiring when the SLO's ring (its
//!   window, at least three days) has passed the day.
//! - `P:slo:ID:late`: a counter bumped by a push that carries minutes older than the two
//!   latest (a replica back from a Redis outage with counts it kept meanwhile).
//! - `P:slo-push:NODE:SEQ`: marks a push as applied (kept a day), so a push whose answer
//!   was lost (a timeout) is retried without being counted twice.
//!
//! Reading is incremental: the whole ring once (one `HGETALL` per day, in a few calls), then
//! every second only the latest minutes (three behind the current one and one ahead, which
//! also covers clocks a minute apart), plus the `late` counter: when it moved, or when this
//! replica missed a sync, the whole ring is read again. A replica whose Redis calls fail
//! evaluates its own counts (the single-node behaviour), counts
//! `levee_cluster_fallback_total{component="slo"}` once per evaluation, logs the change
//! once, and keeps its unsent minutes (up to a day per SLO) for when Redis answers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use super::ledger::{Counts, Ledger};
use super::{SloEngine, SloState};
use crate::cluster::redis::RedisStore;
use crate::cluster::Cluster;

const MINUTES_PER_DAY: u64 = 1440;
/// Minutes before the current one read again every second.
const BEHIND: u64 = 3;
/// Minutes after the current one read every second (another replica's clock may be ahead).
const AHEAD: u64 = 1;
/// A pushed minute this many minutes or more behind the pusher's clock is late: it bumps
/// the SLO's `late` counter, and every replica reads the SLO's whole ring again.
const LATE_AFTER: u64 = 2;
/// How long a push's mark is kept (a retry after that could count twice).
const PUSH_MARK_TTL_MS: u64 = 86_400_000;
/// Day hashes read per call during a whole-ring read.
const DAYS_PER_CALL: usize = 2;
/// Whole-ring reads stop for this second once they took this long (the rest come next).
const RELOAD_BUDGET: Duration = Duration::from_millis(250);
/// At start, Redis not answering yet is only reported after this long.
const STARTUP_GRACE: Duration = Duration::from_secs(5);
/// The four counts of a minute, as field prefixes: total, bad, injected, injected bad.
const KINDS: [char; 4] = ['t', 'b', 'i', 'x'];

/// The Redis id of an SLO: its name and what it counts.
pub fn slo_id(name: &str, definition: &str) -> String {
    format!(
        "{:016x}",
        xxhash_rust::xxh3::xxh3_64(format!("{name}\n{definition}").as_bytes())
    )
}

/// The hash of an SLO's counts on `day`.
fn day_key(redis: &RedisStore, id: &str, day: u64) -> String {
    redis.key(&["slo", id, &day.to_string()])
}

fn late_key(redis: &RedisStore, id: &str) -> String {
    redis.key(&["slo", id, "late"])
}

/// The field of `minute`'s count of `kind` in its day's hash.
fn field(kind: char, minute: u64) -> String {
    format!("{kind}{}", minute % MINUTES_PER_DAY)
}

/// The count of `kind` in `counts`.
fn count_of(counts: &Counts, kind: char) -> u64 {
    match kind {
        't' => counts.total,
        'b' => counts.bad,
        'i' => counts.injected,
        _ => counts.injected_bad,
    }
}

fn set_count(counts: &mut Counts, kind: char, value: u64) {
    match kind {
        't' => counts.total = value,
        'b' => counts.bad = value,
        'i' => counts.injected = value,
        _ => counts.injected_bad = value,
    }
}

/// Adds one field of `day`'s hash (`t123` = 7) to `minutes`; other fields are ignored.
fn parse_field(day: u64, name: &str, value: i64, minutes: &mut HashMap<u64, Counts>) {
    let mut chars = name.chars();
    let Some(kind) = chars.next().filter(|k| KINDS.contains(k)) else {
        return;
    };
    let Ok(offset) = chars.as_str().parse::<u64>() else {
        return;
    };
    if offset >= MINUTES_PER_DAY {
        return;
    }
    let minute = day * MINUTES_PER_DAY + offset;
    set_count(
        minutes.entry(minute).or_default(),
        kind,
        u64::try_from(value).unwrap_or(0),
    );
}

/// The minutes read again every second around `now`.
fn recent_minutes(now: u64) -> std::ops::RangeInclusive<u64> {
    now.saturating_sub(BEHIND)..=now + AHEAD
}

/// Whether a push of `minute` at `now` is late (others do not re-read it every second).
fn is_late(minute: u64, now: u64) -> bool {
    minute + LATE_AFTER <= now
}

/// When the day hash of `day` may go (Unix seconds): once a ring of `ring` minutes no
/// longer reaches its last minute, with an hour to spare.
fn expires_at(day: u64, ring: u64) -> u64 {
    ((day + 1) * MINUTES_PER_DAY + ring) * 60 + 3600
}

impl SloState {
    /// Whether this SLO evaluates the fleet's counts (cluster mode, Redis answering).
    pub fn evaluates_fleet(&self) -> bool {
        self.fleet.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }
}

/// One push of counts: the same push is sent again, unchanged, until Redis acknowledges it.
#[derive(Debug, Default)]
struct Push {
    seq: u64,
    /// Keys written (day hashes and `late` counters), with when each expires (Unix s).
    keys: Vec<(String, u64)>,
    /// (index into `keys`, field, increment); an empty field increments the key itself.
    ops: Vec<(usize, String, u64)>,
}

impl Push {
    fn key_index(&mut self, key: String, expires: u64) -> usize {
        match self.keys.iter().position(|(k, _)| *k == key) {
            Some(i) => {
                if let Some((_, e)) = self.keys.get_mut(i) {
                    *e = (*e).max(expires);
                }
                i
            }
            None => {
                self.keys.push((key, expires));
                self.keys.len() - 1
            }
        }
    }

    /// Adds an SLO's unsent minutes (`ring`: its ring's length in minutes).
    fn add(&mut self, redis: &RedisStore, id: &str, ring: u64, minutes: &[(u64, Counts)], now: u64) {
        let mut late = false;
        for (minute, counts) in minutes {
            let day = minute / MINUTES_PER_DAY;
            let key = self.key_index(day_key(redis, id, day), expires_at(day, ring));
            for kind in KINDS {
                let n = count_of(counts, kind);
                if n > 0 {
                    self.ops.push((key, field(kind, *minute), n));
                }
            }
            late |= is_late(*minute, now);
        }
        if late {
            let key = self.key_index(late_key(redis, id), expires_at(now / MINUTES_PER_DAY, ring));
            self.ops.push((key, String::new(), 1));
        }
    }
}

/// Applies a push once: `KEYS[1]` marks it applied; `KEYS[k]` (k >= 2) expire at `ARGV[k]`;
/// from `ARGV[#KEYS + 1]` on, triples (key index, field, increment).
static PUSH_SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
        if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
            return 0
        end
        local i = #KEYS + 1
        while i + 2 <= #ARGV do
            local key = KEYS[tonumber(ARGV[i])]
            if ARGV[i + 1] == '' then
                redis.call('INCRBY', key, ARGV[i + 2])
            else
                redis.call('HINCRBY', key, ARGV[i + 1], ARGV[i + 2])
            end
            i = i + 3
        end
        for k = 2, #KEYS do
            redis.call('EXPIREAT', KEYS[k], ARGV[k])
        end
        return 1
        ",
    )
});

/// Whether this replica evaluates the fleet's counts or its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Redis has not answered yet since the start.
    Starting,
    Fleet,
    Local,
}

/// One replica's side of the fleet's SLO counts, driven by the `levee-slo` thread.
#[derive(Debug)]
pub struct FleetCounts {
    redis: Arc<RedisStore>,
    cluster: Arc<Cluster>,
    /// Names this process's pushes (the node id and a random part: a restarted replica
    /// does not reuse its predecessor's marks).
    pusher: String,
    seq: u64,
    /// A push sent whose answer did not come: sent again, unchanged, first.
    inflight: Option<Push>,
    /// The `late` counter of each SLO (by id) as of its last whole-ring read.
    late_seen: HashMap<String, i64>,
    mode: Mode,
    started: tokio::time::Instant,
}

impl FleetCounts {
    pub fn new(cluster: Arc<Cluster>, redis: Arc<RedisStore>) -> FleetCounts {
        FleetCounts {
            pusher: format!("{}:{:08x}", cluster.node_id, fastrand::u32(..)),
            redis,
            cluster,
            seq: 0,
            inflight: None,
            late_seen: HashMap::new(),
            mode: Mode::Starting,
            started: tokio::time::Instant::now(),
        }
    }

    /// Adds this replica's new counts to the fleet's and reads the fleet's back into every
    /// SLO. Returns whether the fleet's counts are what the SLOs evaluate (false: Redis did
    /// not answer, and each SLO evaluates this replica's own counts).
    pub async fn sync(&mut self, engine: &SloEngine) -> bool {
        let slos = engine.slos();
        if slos.all.is_empty() {
            return true;
        }
        let now = engine.clock.minute();
        let answered = self.push(&slos.all, now).await && self.read(&slos.all, now).await;
        self.late_seen.retain(|id, _| {
            slos.all
                .iter()
                .any(|s| slo_id(&s.spec.name, &s.definition) == *id)
        });
        if answered {
            if self.mode != Mode::Fleet {
                tracing::info!("SLOs are evaluated on the fleet's counts (Redis)");
            }
            self.mode = Mode::Fleet;
            return true;
        }
        for slo in &slos.all {
            *slo.fleet.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        let report = match self.mode {
            Mode::Fleet => true,
            Mode::Starting => self.started.elapsed() >= STARTUP_GRACE,
            Mode::Local => false,
        };
        if report {
            tracing::warn!(
                "Redis is not answering: SLOs are evaluated on this replica's own counts, and no replica sends alerts, until it answers"
            );
            self.mode = Mode::Local;
        }
        if self.mode == Mode::Local {
            self.cluster.fallback("slo");
        }
        false
    }

    /// Sends the push that is waiting for an answer, then a new one with every SLO's
    /// unsent minutes. False when Redis did not answer (the counts wait for the next try).
    async fn push(&mut self, slos: &[Arc<SloState>], now: u64) -> bool {
        if let Some(push) = self.inflight.take() {
            if !self.send(&push).await {
                self.inflight = Some(push);
                return false;
            }
        }
        self.seq += 1;
        let mut push = Push {
            seq: self.seq,
            ..Push::default()
        };
        for slo in slos {
            let (minutes, ring) = {
                let mut tally = slo.lock_tally();
                slo.fold(&mut tally);
                (std::mem::take(&mut tally.unpushed), tally.ledger.minutes())
            };
            let id = slo_id(&slo.spec.name, &slo.definition);
            push.add(&self.redis, &id, ring, &minutes, now);
        }
        if push.ops.is_empty() {
            return true;
        }
        let sent = self.send(&push).await;
        if !sent {
            self.inflight = Some(push);
        }
        sent
    }

    async fn send(&self, push: &Push) -> bool {
        let mark = self.redis.key(&["slo-push", &self.pusher, &push.seq.to_string()]);
        let mut keys = vec![mark];
        let mut args = vec![PUSH_MARK_TTL_MS.to_string()];
        for (key, expires) in &push.keys {
            keys.push(key.clone());
            args.push(expires.to_string());
        }
        for (index, field, n) in &push.ops {
            // Lua counts from 1, and KEYS[1] is the mark.
            args.push((index + 2).to_string());
            args.push(field.clone());
            args.push(n.to_string());
        }
        self.redis
            .call_background(|mut conn| async move {
                let mut invocation = PUSH_SCRIPT.prepare_invoke();
                for key in &keys {
                    invocation.key(key);
                }
                for arg in &args {
                    invocation.arg(arg);
                }
                invocation.invoke_async::<i64>(&mut conn).await
            })
            .await
            .is_some()
    }

    /// Reads every SLO's `late` counter and latest minutes; reads the whole ring of those
    /// that have none yet or whose counter moved. False when Redis did not answer.
    async fn read(&mut self, slos: &[Arc<SloState>], now: u64) -> bool {
        let recent = recent_minutes(now);
        let mut pipe = redis::pipe();
        for slo in slos {
            let id = slo_id(&slo.spec.name, &slo.definition);
            pipe.cmd("GET").arg(late_key(&self.redis, &id));
            for day in recent.start() / MINUTES_PER_DAY..=recent.end() / MINUTES_PER_DAY {
                let mut cmd = redis::cmd("HMGET");
                cmd.arg(day_key(&self.redis, &id, day));
                for minute in recent.clone().filter(|m| m / MINUTES_PER_DAY == day) {
                    for kind in KINDS {
                        cmd.arg(field(kind, minute));
                    }
                }
                pipe.add_command(cmd);
            }
        }
        let Some(values) = self
            .redis
            .call_background(|mut conn| async move { pipe.query_async::<Vec<Value>>(&mut conn).await })
            .await
        else {
            return false;
        };
        let mut values = values.into_iter();
        let reload_started = tokio::time::Instant::now();
        for slo in slos {
            let id = slo_id(&slo.spec.name, &slo.definition);
            let late = values
                .next()
                .and_then(|v| redis::from_redis_value::<Option<i64>>(v).ok())
                .flatten()
                .unwrap_or(0);
            let mut latest: HashMap<u64, Counts> = recent.clone().map(|m| (m, Counts::default())).collect();
            for day in recent.start() / MINUTES_PER_DAY..=recent.end() / MINUTES_PER_DAY {
                let fields: Vec<Option<i64>> = values
                    .next()
                    .and_then(|v| redis::from_redis_value(v).ok())
                    .unwrap_or_default();
                let names = recent
                    .clone()
                    .filter(|m| m / MINUTES_PER_DAY == day)
                    .flat_map(|m| KINDS.map(|k| field(k, m)));
                for (name, value) in names.zip(fields) {
                    parse_field(day, &name, value.unwrap_or(0), &mut latest);
                }
            }
            if self.late_seen.get(&id) == Some(&late) {
                let mut fleet = slo.fleet.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(ledger) = fleet.as_mut() {
                    for (minute, counts) in latest {
                        ledger.set(minute, counts);
                    }
                    continue;
                }
            }
            if reload_started.elapsed() >= RELOAD_BUDGET {
                // The rest next second; these evaluate their own counts meanwhile.
                continue;
            }
            let Some(ledger) = self.read_ring(slo, &id, now).await else {
                return false;
            };
            *slo.fleet.lock().unwrap_or_else(|p| p.into_inner()) = Some(ledger);
            self.late_seen.insert(id, late);
        }
        true
    }

    /// The fleet's counts over the SLO's whole ring.
    async fn read_ring(&self, slo: &SloState, id: &str, now: u64) -> Option<Ledger> {
        let ring = slo.lock_tally().ledger.minutes();
        let first = now.saturating_sub(ring) / MINUTES_PER_DAY;
        let last = (now + AHEAD) / MINUTES_PER_DAY;
        let days: Vec<u64> = (first..=last).collect();
        let mut minutes: HashMap<u64, Counts> = HashMap::new();
        for chunk in days.chunks(DAYS_PER_CALL) {
            let mut pipe = redis::pipe();
            for day in chunk {
                pipe.cmd("HGETALL").arg(day_key(&self.redis, id, *day));
            }
            let hashes: Vec<Vec<(String, i64)>> = self
                .redis
                .call_background(|mut conn| async move { pipe.query_async(&mut conn).await })
                .await?;
            for (day, fields) in chunk.iter().zip(hashes) {
                for (name, value) in fields {
                    parse_field(*day, &name, value, &mut minutes);
                }
            }
        }
        let mut ledger = Ledger::new(ring);
        for (minute, counts) in minutes {
            ledger.set(minute, counts);
        }
        Some(ledger)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn counts(total: u64, bad: u64) -> Counts {
        Counts {
            total,
            bad,
            ..Counts::default()
        }
    }

    fn cluster() -> Arc<Cluster> {
        let spec = crate::config::spec::ClusterSpec {
            node_id: "gw-0".into(),
            redis: Some(crate::config::spec::RedisSpec {
                url: crate::config::spec::Secret("redis://127.0.0.1:1/0".into()),
                timeout: Duration::from_millis(50),
                backoff: Duration::from_secs(1),
                key_prefix: "t".into(),
            }),
            postgres: None,
            heartbeat: Duration::from_secs(1),
        };
        Arc::new(Cluster::new(&spec).unwrap())
    }

    fn slo_spec() -> crate::config::spec::SloSpec {
        crate::config::spec::SloSpec {
            name: "s".into(),
            route: "r".into(),
            consumer: None,
            upstream: None,
            release: None,
            alerts: true,
            objective: 99.0,
            window: Duration::from_secs(86_400),
            sli: crate::config::spec::Sli::Availability,
            bad_grpc_statuses: None,
        }
    }

    /// Redis not answering: the SLO evaluates the replica's own counts, the minutes wait for
    /// Redis, and the fallback is counted once per sync, after the start-up grace.
    #[tokio::test(start_paused = true)]
    async fn without_redis_a_replica_evaluates_its_own_counts_and_counts_the_fallback() {
        let cluster = cluster();
        let redis = cluster.redis.clone().unwrap();
        let engine = SloEngine::new(super::super::Clock::starting_at(1_700_000_000_000), None);
        engine.share_counts();
        engine.apply(&[slo_spec()]);
        engine.record("r", None, None, 500.into(), Duration::ZERO, false);
        let mut fleet = FleetCounts::new(cluster.clone(), redis);
        assert!(!fleet.sync(&engine).await);
        assert_eq!(cluster.fallbacks("slo"), 0, "not during the start-up grace");
        engine.evaluate();
        let slo = engine.get("s").unwrap();
        assert_eq!(slo.status().unwrap().window.total, 1, "its own count");
        tokio::time::advance(STARTUP_GRACE).await;
        assert!(!fleet.sync(&engine).await);
        assert!(!fleet.sync(&engine).await);
        assert_eq!(cluster.fallbacks("slo"), 2);
        // The minute waits for Redis, in the push sent again first.
        let waiting = fleet.inflight.as_ref().unwrap();
        assert_eq!(waiting.ops.len(), 2, "total and bad of one minute");
        assert!(slo.fleet.lock().unwrap().is_none());
    }

    #[test]
    fn a_minute_round_trips_through_its_fields() {
        let minute = 29_000_000;
        let written = Counts {
            total: 7,
            bad: 3,
            injected: 2,
            injected_bad: 1,
        };
        let mut read = HashMap::new();
        for kind in KINDS {
            let n = count_of(&written, kind);
            parse_field(
                minute / MINUTES_PER_DAY,
                &field(kind, minute),
                n as i64,
                &mut read,
            );
        }
        assert_eq!(read[&minute], written);
        // Foreign or malformed fields are ignored.
        parse_field(1, "q5", 1, &mut read);
        parse_field(1, "t9999", 1, &mut read);
        parse_field(1, "t", 1, &mut read);
        assert_eq!(read.len(), 1);
    }

    #[test]
    fn pushes_of_old_minutes_are_late_and_readers_cover_the_rest() {
        let now = 1_000_000;
        // What every reader reads each second, with a reader's clock up to a minute off
        // either way: everything a push does not flag as late.
        for reader in [now - 1, now, now + 1] {
            for minute in now - LATE_AFTER + 1..=now {
                assert!(!is_late(minute, now));
                assert!(recent_minutes(reader).contains(&minute), "{minute} at {reader}");
            }
        }
        assert!(is_late(now - LATE_AFTER, now));
        assert_eq!(recent_minutes(now).count() as u64, BEHIND + AHEAD + 1);
    }

    #[test]
    fn a_push_groups_minutes_by_day_and_flags_late_ones() {
        let redis = RedisStore::new(&crate::config::spec::RedisSpec {
            url: crate::config::spec::Secret("redis://127.0.0.1:1/0".into()),
            timeout: Duration::from_millis(50),
            backoff: Duration::from_secs(1),
            key_prefix: "p".into(),
        })
        .unwrap();
        let day = 20_000;
        let now = day * MINUTES_PER_DAY;
        let mut push = Push::default();
        // The last minute of yesterday and the first of today: two day hashes, no late flag.
        push.add(
            &redis,
            "s",
            4320,
            &[(now - 1, counts(2, 1)), (now, counts(3, 0))],
            now,
        );
        let keys: Vec<&str> = push.keys.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, [format!("p:slo:s:{}", day - 1), format!("p:slo:s:{day}")]);
        let expected = [(0, "t1439", 2), (0, "b1439", 1), (1, "t0", 3)];
        let ops: Vec<(usize, &str, u64)> = push.ops.iter().map(|(k, f, n)| (*k, f.as_str(), *n)).collect();
        assert_eq!(ops, expected);
        // Yesterday's hash expires when a three-day ring no longer reaches it.
        assert_eq!(push.keys[0].1, (day * MINUTES_PER_DAY + 4320) * 60 + 3600);
        let mut late = Push::default();
        late.add(&redis, "s", 4320, &[(now - 10, counts(1, 1))], now);
        assert_eq!(late.keys[1].0, "p:slo:s:late");
        assert_eq!(late.ops.last().unwrap(), &(1, String::new(), 1));
    }
}
