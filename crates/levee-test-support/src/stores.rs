//! Real shared stores and Levee replicas for cluster tests: a `redis-server` and a
//! PostgreSQL cluster (`initdb` + `pg_ctl`) started on free loopback ports in temporary
//! directories, and `levee run` processes. Each is stopped when dropped; every wait has a
//! deadline.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root its directory is given
//! to the `postgres` user and its commands run through `runuser -u postgres`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::DEADLINE;

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < DEADLINE * 3,
            "{what}: not ready within {:?}",
            DEADLINE * 3
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// A `redis-server` of the test's own, keeping nothing on disk.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            child: None,
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        wait_until("redis-server gone", || !port_open(self.port));
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server (is it installed?): {e}"));
        self.child = Some(child);
        wait_until("redis-server", || port_open(self.port));
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The directory holding PostgreSQL's programs (Debian puts them under a versioned path).
fn pg_bin(program: &str) -> PathBuf {
    let versioned = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path().join("bin").join(program))
        .filter(|p| p.exists())
        .max();
    versioned.unwrap_or_else(|| PathBuf::from(program))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A PostgreSQL cluster of the test's own, in a temporary directory, trusting local users.
pub struct PgServer {
    pub port: u16,
    dir: tempfile::TempDir,
    running: bool,
}

impl PgServer {
    pub fn start() -> PgServer {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("no temporary directory: {e}"));
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status();
            assert!(
                status.is_ok_and(|s| s.success()),
                "cannot give the directory to postgres"
            );
        }
        let data = dir.path().join("data");
        let data = data.to_string_lossy().into_owned();
        let out = pg_command(
            "initdb",
            &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut server = PgServer {
            port: free_port(),
            dir,
            running: false,
        };
        server.start_again();
        server
    }

    fn data(&self) -> String {
        self.dir.path().join("data").to_string_lossy().into_owned()
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server (again), waiting until it accepts connections.
    pub fn start_again(&mut self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("pg.log").to_string_lossy().into_owned();
        let out = pg_command(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        self.running = true;
    }

    /// Stops the server at once (`-m immediate`: connections are cut, as in a crash).
    pub fn stop(&mut self) {
        if self.running {
            let _ = pg_command("pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "stop"]);
            self.running = false;
        }
    }

    /// Runs SQL with `psql` and returns its unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> String {
        let psql = pg_bin("psql");
        let out = Command::new(psql)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-At",
                "-c",
                sql,
            ])
            .output()
            .unwrap_or_else(|e| panic!("cannot run psql: {e}"));
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn pg_command(program: &str, args: &[&str]) -> std::process::Output {
    let binary = pg_bin(program);
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(binary);
        c
    } else {
        Command::new(binary)
    };
    command
        .args(args)
        .current_dir(Path::new("/tmp"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// A `levee run` process, with its stdout (the JSON log) kept for the test to read.
pub struct Replica {
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    pub public: SocketAddr,
    pub admin: SocketAddr,
}

impl Replica {
    /// Starts `binary run --config config` with `env` added, and waits until it serves:
    /// `public` and `admin` are the ports the config binds.
    pub fn start(binary: &str, config: &Path, env: &[(&str, &str)], public: u16, admin: u16) -> Replica {
        let mut child = Command::new(binary)
            .args(["run", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        let lines: Arc<Mutex<Vec<String>>> = Default::default();
        if let Some(stdout) = child.stdout.take() {
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    sink.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                }
            });
        }
        let replica = Replica {
            child: Some(child),
            lines,
            public: SocketAddr::from(([127, 0, 0, 1], public)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
        };
        wait_until("levee replica", || port_open(public) && port_open(admin));
        replica
    }

    /// The log lines so far that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// Kills the process at once (SIGKILL): no drain, no clean hand-over.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.public)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}
