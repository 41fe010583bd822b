//! Cluster mode with real stores: `redis-server` and PostgreSQL started by the tests, and
//! several `levee` processes on loopback acting as one gateway. One test binary, one module
//! per concern; the helpers here start a fleet from one config.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod calls;
mod fleet_slo;
mod fleet_view;
mod keys;
mod limits;

use std::path::PathBuf;

use levee_test_support::stores::{free_port, Replica};

pub const LEVEE: &str = env!("CARGO_BIN_EXE_levee");

/// Replicas started from one config body. `{PUBLIC}` and `{ADMIN}` in the body are replaced
/// by each replica's own ports and `{NODE}` by its node id (`gw-0`, `gw-1`, ...).
pub struct Fleet {
    pub replicas: Vec<Replica>,
    pub dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    body: String,
}

impl Fleet {
    /// Starts `n` replicas with `env` (for example `LEVEE_REDIS_URL`).
    pub fn start(n: usize, body: &str, env: &[(&str, String)]) -> Fleet {
        let mut fleet = Fleet {
            replicas: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
            env: env.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect(),
            body: body.to_owned(),
        };
        for i in 0..n {
            let replica = fleet.spawn(i);
            fleet.replicas.push(replica);
        }
        fleet
    }

    /// Starts replica number `i` (new ports), for a fresh fleet member or a restart.
    pub fn spawn(&self, i: usize) -> Replica {
        let (public, admin) = (free_port(), free_port());
        let text = self
            .body
            .replace("{PUBLIC}", &public.to_string())
            .replace("{ADMIN}", &admin.to_string())
            .replace("{NODE}", &format!("gw-{i}"));
        let path: PathBuf = self.dir.path().join(format!("levee-{i}-{public}.yaml"));
        std::fs::write(&path, text).unwrap();
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Replica::start(LEVEE, &path, &env, public, admin)
    }
}

/// GET on an admin URL, as JSON.
pub async fn admin_json(url: &str) -> serde_json::Value {
    let answer = levee_test_support::get(url, &[]).await;
    assert_eq!(answer.status, 200, "{url}: {}", answer.text());
    serde_json::from_str(&answer.text()).unwrap()
}

/// The value of the metric line that starts with `series` (name and labels), if present.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l.as_bytes().get(series.len()) == Some(&b' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
