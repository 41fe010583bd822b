//! The management plane: teams, consumers, virtual keys, admin tokens and subscriptions,
//! made and changed at run time through the admin API, kept in a store (SQLite under
//! `data_dir`, or the fleet's PostgreSQL in cluster mode) and read by the request path from
//! an in-memory [`Directory`].
//!
//! How a change reaches the request path: the admin API writes it to the store in one
//! transaction stamped with the store's next version ([`store`]), then applies it to this
//! process's directory at once. Every process (this one included, for changes another
//! replica made) polls the store's version every [`POLL_EVERY`] on its `levee-manage`
//! thread and applies only the rows written since the version it has. A key made on one
//! replica therefore works on every replica within a poll, and a revoked key stops
//! working as fast: the promise is one second, the poll is a fifth of it.
//!
//! The same thread writes each key's usage (requests, tokens, cost) to the store every
//! [`FLUSH_EVERY`], so spend is queryable per key, consumer and team, and a key's budget
//! survives a restart.

pub mod db;
pub mod directory;
mod keys;
pub mod model;
pub mod ops;
pub mod store;
mod subscriptions;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;

pub use directory::{Directory, KeyGrant};
use store::{Store, UsageDelta};

use crate::cluster::Cluster;
use crate::config::Config;

/// How often the store's version is checked.
pub const POLL_EVERY: Duration = Duration::from_millis(200);
/// How often usage is written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// The management plane of one process.
#[derive(Debug)]
pub struct Management {
    /// Set at start, or later by the poller when PostgreSQL was down at start.
    store: OnceLock<Store>,
    /// Whether the config names a store at all.
    configured: bool,
    directory: ArcSwap<Directory>,
    cluster: Option<Arc<Cluster>>,
    /// One catch-up at a time (the poller and the admin API's writes).
    syncing: Mutex<()>,
    /// Whether the last poll reached the store.
    reachable: AtomicBool,
}

impl Management {
    /// No store: only the config's consumers and keys exist, and the API says so.
    pub fn detached() -> Management {
        Management {
            store: OnceLock::new(),
            configured: false,
            directory: ArcSwap::from_pointee(Directory::default()),
            cluster: None,
            syncing: Mutex::new(()),
            reachable: AtomicBool::new(false),
        }
    }

    /// Opens the store `config` names and loads every object. In cluster mode a PostgreSQL
    /// that does not answer yet is not fatal: the poller keeps trying, and meanwhile only
    /// the config's keys work (logged).
    pub fn open(config: &Config, cluster: Option<&Arc<Cluster>>) -> Result<Management, String> {
        let sqlite = config
            .cluster
            .as_ref()
            .and_then(|c| c.postgres.as_ref())
            .is_none();
        let Some(db) = open_db(config)? else {
            return Ok(Management::detached());
        };
        let store = OnceLock::new();
        match Store::open(db) {
            Ok(opened) => {
                let _ = store.set(opened);
            }
            Err(error) if !sqlite => {
                tracing::warn!(%error, "the management store is not reachable yet: only the config's keys work until it is");
            }
            Err(error) => return Err(format!("management store: {error}")),
        }
        let management = Management {
            store,
            configured: true,
            directory: ArcSwap::from_pointee(Directory::default()),
            cluster: cluster.cloned(),
            syncing: Mutex::new(()),
            reachable: AtomicBool::new(false),
        };
        if let Err(error) = management.sync() {
            if sqlite {
                return Err(format!("management store: {error}"));
            }
            tracing::warn!(%error, "cannot read the management store yet");
        }
        Ok(management)
    }

    pub fn store(&self) -> Option<&Store> {
        self.store.get()
    }

    /// Whether the config names a store (reachable or not).
    pub fn configured(&self) -> bool {
        self.configured
    }

    /// The current snapshot.
    pub fn directory(&self) -> arc_swap::Guard<Arc<Directory>> {
        self.directory.load()
    }

    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// Applies what the store holds beyond this process's version. Returns whether anything
    /// changed. Blocks (off any event loop).
    pub fn sync(&self) -> Result<bool, db::DbError> {
        let Some(store) = self.store.get() else {
            return Ok(false);
        };
        let _one = self.syncing.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.directory.load_full();
        let result = store.version().and_then(|version| {
            if version <= current.version {
                return Ok(None);
            }
            let mut next = (*current).clone();
            if current.version == 0 {
                self.load_all(store, &mut next)?;
                // Pages are separate reads: a change committed while they ran may be seen
                // in part, so the next poll reads everything after the version read first
                // (applying a change twice is harmless).
                next.version = version;
                return Ok(Some(next));
            } else {
                let changes = store.changes_since(current.version)?;
                // What keys spent so far, for limiters built new (a key's or a team's
                // limits changed).
                let limits_changed = changes
                    .iter()
                    .any(|c| matches!(c.kind, store::Kind::Key | store::Kind::Team));
                let usage = if limits_changed {
                    usage_map(store)?
                } else {
                    HashMap::new()
                };
                next.apply(&changes, &self.context(&usage));
            }
            next.version = next.version.max(version);
            Ok(Some(next))
        });
        self.reachable.store(result.is_ok(), Ordering::Relaxed);
        match result? {
            Some(next) => {
                self.directory.store(Arc::new(next));
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The first load: every object, a page at a time (in (kind, id) order, so keys come
    /// before the teams whose budgets add up their spend), never all rows at once.
    fn load_all(&self, store: &Store, next: &mut Directory) -> Result<(), db::DbError> {
        const PAGE: i64 = 5_000;
        let usage = usage_map(store)?;
        let context = self.context(&usage);
        let mut after = (String::new(), String::new());
        loop {
            let page = store.page(&after, PAGE)?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = (last.kind.as_str().to_owned(), last.id.clone());
            next.apply(&page, &context);
            if (page.len() as i64) < PAGE {
                return Ok(());
            }
        }
    }

    fn context<'a>(&'a self, usage: &'a HashMap<String, store::Usage>) -> directory::Context<'a> {
        directory::Context {
            cluster: self.cluster.as_ref(),
            usage,
            now_ms: model::now_ms(),
        }
    }

    /// Writes the usage counted since the last flush; what cannot be written is kept for
    /// the next one.
    pub fn flush_usage(&self) {
        let Some(store) = self.store.get() else {
            return;
        };
        let directory = self.directory.load_full();
        let mut taken = Vec::new();
        let mut deltas = Vec::new();
        for key in directory.keys().filter(|k| !k.usage.is_idle()) {
            let counted = key.usage.take();
            if counted == (0, 0, 0.0) {
                continue;
            }
            deltas.push(UsageDelta {
                key_id: key.id.to_string(),
                consumer: key.consumer.to_string(),
                team: key.team.as_deref().map(str::to_owned),
                requests: i64::try_from(counted.0).unwrap_or(i64::MAX),
                tokens: i64::try_from(counted.1).unwrap_or(i64::MAX),
                cost_usd: counted.2,
                period_ms: key.budget_period_ms,
            });
            taken.push((key.clone(), counted));
        }
        if deltas.is_empty() {
            return;
        }
        if let Err(error) = store.add_usage(&deltas, model::now_ms()) {
            tracing::debug!(%error, "usage not written yet");
            for (key, counted) in taken {
                key.usage.put_back(counted);
            }
        }
    }

    /// The `levee-manage` thread: polls the store and flushes usage until `stop`.
    pub fn run(&self, config: &Config, stop: std::sync::mpsc::Receiver<()>) {
        let mut since_flush = Duration::ZERO;
        loop {
            match stop.recv_timeout(POLL_EVERY) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                _ => {
                    self.flush_usage();
                    return;
                }
            }
            if self.configured && self.store.get().is_none() {
                // PostgreSQL was down at start: try again.
                if let Ok(Some(db)) = open_db(config) {
                    if let Ok(store) = Store::open(db) {
                        let _ = self.store.set(store);
                    }
                }
            }
            if let Err(error) = self.sync() {
                tracing::debug!(%error, "management store not reachable");
            }
            since_flush += POLL_EVERY;
            if since_flush >= FLUSH_EVERY {
                since_flush = Duration::ZERO;
                self.flush_usage();
            }
        }
    }
}

fn usage_map(store: &Store) -> Result<HashMap<String, store::Usage>, db::DbError> {
    Ok(store.all_usage()?.into_iter().collect())
}

/// The database `config` names: the fleet's PostgreSQL, else SQLite under `data_dir`.
fn open_db(config: &Config) -> Result<Option<db::Db>, String> {
    let postgres = config.cluster.as_ref().and_then(|c| c.postgres.as_ref());
    let db = match (postgres, &config.data_dir) {
        (Some(pg), _) => {
            let mut pg_config: tokio_postgres::Config = pg
                .url
                .0
                .parse()
                .map_err(|_| "PostgreSQL connection string not usable".to_string())?;
            pg_config.connect_timeout(pg.timeout);
            if pg_config.get_application_name().is_none() {
                pg_config.application_name("levee-manage");
            }
            db::Db::postgres(pg_config, pg.timeout.max(Duration::from_secs(2)))
        }
        (None, Some(dir)) => db::Db::sqlite(&std::path::Path::new(dir).join("management.sqlite3")),
        (None, None) => return Ok(None),
    };
    db.map(Some).map_err(|e| e.to_string())
}
