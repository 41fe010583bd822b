//! SLO counts and chaos experiments saved in `data_dir/slo.sqlite3`, so budgets and
//! experiment reports survive restarts.
//!
//! Counts are saved as increments (`total = total + ?`), not overwritten: during a
//! zero-downtime restart the old and the new process both count for a moment, and both
//! contributions are kept.

use std::path::Path;

use rusqlite::{params, Connection};

use super::ledger::Counts;

/// Experiments kept at most (the oldest finished ones go first).
pub const MAX_EXPERIMENTS: usize = 100;

#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creates) `dir/slo.sqlite3`.
    pub fn open(dir: &Path) -> Result<Store, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let path = dir.join("slo.sqlite3");
        let conn = Connection::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(1))
            .map_err(|e| e.to_string())?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS slo_events (
                 slo TEXT NOT NULL,
                 definition TEXT NOT NULL,
                 minute INTEGER NOT NULL,
                 total INTEGER NOT NULL,
                 bad INTEGER NOT NULL,
                 injected INTEGER NOT NULL,
                 injected_bad INTEGER NOT NULL,
                 PRIMARY KEY (slo, definition, minute)
             ) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS slo_events_by_minute ON slo_events (minute);
             CREATE TABLE IF NOT EXISTS slo_alerts (
                 slo TEXT NOT NULL,
                 definition TEXT NOT NULL,
                 severity TEXT NOT NULL,
                 firing_since INTEGER NOT NULL,
                 PRIMARY KEY (slo, definition, severity)
             );
             CREATE TABLE IF NOT EXISTS canary_rollbacks (
                 route TEXT NOT NULL,
                 definition TEXT NOT NULL,
                 at_ms INTEGER NOT NULL,
                 reason TEXT NOT NULL,
                 PRIMARY KEY (route, definition)
             );
             CREATE TABLE IF NOT EXISTS experiments (
                 id TEXT PRIMARY KEY,
                 started_ms INTEGER NOT NULL,
                 body TEXT NOT NULL
             );",
        )
        .map_err(|e| format!("cannot prepare {}: {e}", path.display()))?;
        Ok(Store { conn })
    }

    /// Adds `buckets` to what is saved for the SLO (old rows go hourly, in
    /// [`Store::forget_before`]).
    pub fn add(&mut self, slo: &str, definition: &str, buckets: &[(u64, Counts)]) -> Result<(), String> {
        let tx = self.conn.transaction().map_err(|e| e.to_string())?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO slo_events (slo, definition, minute, total, bad, injected, injected_bad)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (slo, definition, minute) DO UPDATE SET
                         total = total + excluded.total,
                         bad = bad + excluded.bad,
                         injected = injected + excluded.injected,
                         injected_bad = injected_bad + excluded.injected_bad",
                )
                .map_err(|e| e.to_string())?;
            for (minute, c) in buckets {
                insert
                    .execute(params![
                        slo,
                        definition,
                        to_i64(*minute),
                        to_i64(c.total),
                        to_i64(c.bad),
                        to_i64(c.injected),
                        to_i64(c.injected_bad)
                    ])
                    .map_err(|e| e.to_string())?;
            }
        }
        tx.commit().map_err(|e| e.to_string())
    }

    /// The saved buckets of the SLO after minute `since`.
    pub fn load(&self, slo: &str, definition: &str, since: u64) -> Result<Vec<(u64, Counts)>, String> {
        let mut select = self
            .conn
            .prepare_cached(
                "SELECT minute, total, bad, injected, injected_bad FROM slo_events
                 WHERE slo = ?1 AND definition = ?2 AND minute > ?3 ORDER BY minute",
            )
            .map_err(|e| e.to_string())?;
        let rows = select
            .query_map(params![slo, definition, to_i64(since)], |row| {
                Ok((
                    from_i64(row.get(0)?),
                    Counts {
                        total: from_i64(row.get(1)?),
                        bad: from_i64(row.get(2)?),
                        injected: from_i64(row.get(3)?),
                        injected_bad: from_i64(row.get(4)?),
                    },
                ))
            })
            .map_err(|e| e.to_string())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())
    }

    /// Records that an alert fires since `firing_since` (unix ms), or no longer fires.
    pub fn save_alert(
        &mut self,
        slo: &str,
        definition: &str,
        severity: &str,
        firing_since: Option<u64>,
    ) -> Result<(), String> {
        match firing_since {
            Some(since) => self.conn.execute(
                "INSERT INTO slo_alerts (slo, definition, severity, firing_since) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (slo, definition, severity) DO UPDATE SET firing_since = excluded.firing_since",
                params![slo, definition, severity, to_i64(since)],
            ),
            None => self.conn.execute(
                "DELETE FROM slo_alerts WHERE slo = ?1 AND definition = ?2 AND severity = ?3",
                params![slo, definition, severity],
            ),
        }
        .map(|_| ())
        .map_err(|e| e.to_string())
    }

    /// The alerts saved as firing for the SLO: (severity, since).
    pub fn alerts(&self, slo: &str, definition: &str) -> Result<Vec<(String, u64)>, String> {
        let mut select = self
            .conn
            .prepare_cached(
                "SELECT severity, firing_since FROM slo_alerts WHERE slo = ?1 AND definition = ?2",
            )
            .map_err(|e| e.to_string())?;
        let rows = select
            .query_map(params![slo, definition], |row| {
                Ok((row.get(0)?, from_i64(row.get(1)?)))
            })
            .map_err(|e| e.to_string())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())
    }

    /// Forgets every SLO's counts up to `minute`: SLOs removed from the config leave rows
    /// behind, and no window reaches back further than 90 days.
    pub fn forget_before(&mut self, minute: u64) -> Result<(), String> {
        self.conn
            .execute(
                "DELETE FROM slo_events WHERE minute <= ?1",
                params![to_i64(minute)],
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Remembers that the canary `definition` of `route` was rolled back.
    pub fn save_rollback(
        &mut self,
        route: &str,
        definition: &str,
        at_ms: u64,
        reason: &str,
    ) -> Result<(), String> {
        self.conn
            .execute(
                "INSERT INTO canary_rollbacks (route, definition, at_ms, reason) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (route, definition) DO UPDATE SET at_ms = excluded.at_ms, reason = excluded.reason",
                params![route, definition, to_i64(at_ms), reason],
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// When and why the canary `definition` of `route` was rolled back, if it was.
    pub fn rollback(&self, route: &str, definition: &str) -> Result<Option<(u64, String)>, String> {
        let mut select = self
            .conn
            .prepare_cached("SELECT at_ms, reason FROM canary_rollbacks WHERE route = ?1 AND definition = ?2")
            .map_err(|e| e.to_string())?;
        let mut rows = select
            .query_map(params![route, definition], |row| {
                Ok((from_i64(row.get(0)?), row.get(1)?))
            })
            .map_err(|e| e.to_string())?;
        rows.next().transpose().map_err(|e| e.to_string())
    }

    /// Saves an experiment (as JSON), keeping the newest [`MAX_EXPERIMENTS`] and every
    /// running one.
    pub fn save_experiment(&mut self, id: &str, started_ms: u64, body: &str) -> Result<(), String> {
        self.conn
            .execute(
                "INSERT INTO experiments (id, started_ms, body) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET body = excluded.body",
                params![id, to_i64(started_ms), body],
            )
            .map_err(|e| e.to_string())?;
        self.conn
            .execute(
                "DELETE FROM experiments WHERE json_extract(body, '$.state') != 'running' AND id NOT IN
                 (SELECT id FROM experiments ORDER BY started_ms DESC LIMIT ?1)",
                params![MAX_EXPERIMENTS as i64],
            )
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Every saved experiment's JSON, oldest first.
    pub fn experiments(&self) -> Result<Vec<String>, String> {
        let mut select = self
            .conn
            .prepare_cached("SELECT body FROM experiments ORDER BY started_ms")
            .map_err(|e| e.to_string())?;
        let rows = select
            .query_map([], |row| row.get(0))
            .map_err(|e| e.to_string())?;
        rows.collect::<Result<Vec<String>, _>>()
            .map_err(|e| e.to_string())
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn from_i64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}
