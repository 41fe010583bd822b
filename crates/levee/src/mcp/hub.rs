//! The MCP servers behind the gateway, and the client sessions in front of it: one thread
//! of its own ("levee-mcp") runs every call to a server and owns the local servers'
//! processes, so workers only hand calls over and await their answers.
//!
//! Each server has a circuit breaker (connection failures, timeouts and broken answers
//! count; a JSON-RPC error from a server that answered does not) and may have a rate limit.
//! A client session (Levee's own `Mcp-Session-Id`) keeps one session per remote server,
//! opened on first use and opened again if the server forgot it; local servers have one
//! process, shared by every session. Sessions are bounded in number and expire when idle.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use levee_resilience::{CircuitBreaker, KeyedLimiter, Quota};
use serde_json::Value;
use tokio::time::Instant;

use super::http::{Remote, Session};
use super::sse::{Legacy, LegacySession};
use super::stdio::{Program, StdioServer};
use super::McpError;
use crate::config::mcp::{McpServerSpec, McpSpec, McpTransport};

/// Client sessions kept at most; past it, the one idle longest is forgotten.
const MAX_SESSIONS: usize = 10_000;
/// A session unused this long is forgotten.
const SESSION_IDLE: Duration = Duration::from_secs(3600);

/// One server.
pub struct Server {
    pub spec: McpServerSpec,
    way: Way,
    breaker: Option<CircuitBreaker>,
    limiter: Option<KeyedLimiter>,
    /// The last call reached it (remote servers; a local one is up while its process runs).
    reached: AtomicBool,
}

enum Way {
    Remote(Remote),
    Legacy(Legacy),
    Local(StdioServer),
}

/// A client session's session with one remote server.
#[derive(Clone)]
enum Upstream {
    Streamable(Session),
    Legacy(Arc<LegacySession>),
}

impl Server {
    /// Up: its breaker admits calls, and it answered last time (or its process runs).
    pub fn up(&self) -> bool {
        let admitted = self
            .breaker
            .as_ref()
            .is_none_or(|b| b.would_admit(Instant::now()));
        let alive = match &self.way {
            Way::Remote(_) | Way::Legacy(_) => self.reached.load(Ordering::Relaxed),
            Way::Local(process) => process.up.load(Ordering::Relaxed),
        };
        admitted && alive
    }

    /// Times its process was started (local servers).
    pub fn starts(&self) -> Option<u64> {
        match &self.way {
            Way::Local(process) => Some(process.starts.load(Ordering::Relaxed)),
            Way::Remote(_) | Way::Legacy(_) => None,
        }
    }
}

/// A client session: its sessions with remote servers, by server index.
struct ClientSession {
    used: Instant,
    remote: HashMap<usize, Upstream>,
}

/// The servers, the sessions, and the thread their calls run on.
pub struct Hub {
    pub spec: McpSpec,
    pub servers: Vec<Arc<Server>>,
    runtime: tokio::runtime::Handle,
    client: super::http::Client,
    sessions: Mutex<HashMap<Arc<str>, ClientSession>>,
    ids: AtomicU64,
    /// Dropped with the hub: the thread stops, and local servers' processes are killed.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("servers", &self.servers.len())
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// Starts the thread and the local servers' processes.
    pub fn start(spec: &McpSpec) -> std::io::Result<Hub> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("levee-mcp".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = handle_tx.send(Err(error));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(runtime.handle().clone()));
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        let runtime = handle_rx
            .recv()
            .map_err(|_| std::io::Error::other("the MCP thread did not start"))??;
        let servers = spec
            .servers
            .iter()
            .map(|s| Arc::new(server(s, &runtime)))
            .collect();
        Ok(Hub {
            spec: spec.clone(),
            servers,
            client: crate::outbound::client(Duration::from_secs(10)),
            runtime,
            sessions: Mutex::new(HashMap::new()),
            ids: AtomicU64::new(1),
            _stop: stop,
        })
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.servers.iter().position(|s| &*s.spec.name == name)
    }

    /// Starts a client session.
    pub fn open_session(&self, id: Arc<str>) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        sessions.retain(|_, s| now.duration_since(s.used) < SESSION_IDLE);
        if sessions.len() >= MAX_SESSIONS {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, s)| s.used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            id,
            ClientSession {
                used: now,
                remote: HashMap::new(),
            },
        );
    }

    /// Whether the client session is known (and marks it used).
    pub fn knows_session(&self, id: &str) -> bool {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        match sessions.get_mut(id) {
            Some(session) => {
                session.used = Instant::now();
                true
            }
            None => false,
        }
    }

    /// Ends a client session, and its sessions with remote servers.
    pub fn close_session(&self, id: &str) -> bool {
        let removed = self.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        let Some(session) = removed else { return false };
        for (index, remote) in session.remote {
            // A legacy session ends as it drops (its stream closes).
            let Upstream::Streamable(remote) = remote else {
                continue;
            };
            if let Some(Way::Remote(way)) = self.servers.get(index).map(|s| &s.way) {
                let client = self.client.clone();
                let (url, headers) = (way.url.clone(), way.headers.clone());
                self.runtime.spawn(async move {
                    Remote { url, headers }.close(&client, &remote).await;
                });
            }
        }
        true
    }

    /// One call to server `index` in client session `session`.
    pub async fn call(
        self: &Arc<Self>,
        index: usize,
        session: Arc<str>,
        method: &str,
        params: Value,
    ) -> Result<Value, McpError> {
        let server = self.servers.get(index).cloned().ok_or(McpError::NoServer)?;
        if let Some(limiter) = &server.limiter {
            if !limiter.check("", Instant::now()).allowed {
                return Err(McpError::RateLimited);
            }
        }
        let permit = match &server.breaker {
            Some(breaker) => Some(breaker.try_acquire(Instant::now()).ok_or(McpError::CircuitOpen)?),
            None => None,
        };
        let hub = self.clone();
        let method = method.to_owned();
        let timeout = server.spec.timeout;
        let work = {
            let server = server.clone();
            async move {
                match tokio::time::timeout(
                    timeout,
                    hub.call_on_thread(&server, index, &session, &method, params),
                )
                .await
                {
                    Ok(result) => result,
                    Err(_) => Err(McpError::Timeout),
                }
            }
        };
        let result = self
            .runtime
            .spawn(work)
            .await
            .unwrap_or_else(|_| Err(McpError::Unavailable("the MCP thread stopped".into())));
        let reached = !matches!(
            result,
            Err(McpError::Unavailable(_) | McpError::Timeout | McpError::Protocol(_))
        );
        server.reached.store(reached, Ordering::Relaxed);
        if let (Some(breaker), Some(permit)) = (&server.breaker, permit) {
            breaker.record(permit, reached, Instant::now());
        }
        result
    }

    async fn call_on_thread(
        &self,
        server: &Server,
        index: usize,
        session: &Arc<str>,
        method: &str,
        params: Value,
    ) -> Result<Value, McpError> {
        if let Way::Local(process) = &server.way {
            return process.request(method, params, server.spec.timeout).await;
        }
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        for _ in 0..2 {
            let upstream = match self.remote_session(session, index) {
                Some(upstream) => upstream,
                None => {
                    let opened = self.open_remote(&server.way).await?;
                    self.keep_remote_session(session, index, opened.clone());
                    opened
                }
            };
            let answered = match (&server.way, &upstream) {
                (Way::Remote(remote), Upstream::Streamable(upstream)) => {
                    remote
                        .request(&self.client, upstream, id, method, params.clone())
                        .await
                }
                (Way::Legacy(legacy), Upstream::Legacy(upstream)) => {
                    legacy
                        .request(&self.client, upstream, id, method, params.clone())
                        .await
                }
                _ => Err(McpError::SessionExpired),
            };
            match answered {
                Err(McpError::SessionExpired) => self.forget_remote_session(session, index),
                other => return other,
            }
        }
        Err(McpError::Unavailable(
            "the server keeps forgetting its session".into(),
        ))
    }

    /// A new session with a remote server.
    async fn open_remote(&self, way: &Way) -> Result<Upstream, McpError> {
        match way {
            Way::Remote(remote) => Ok(Upstream::Streamable(remote.open(&self.client).await?)),
            Way::Legacy(legacy) => {
                let id = self.ids.fetch_add(1, Ordering::Relaxed);
                Ok(Upstream::Legacy(Arc::new(legacy.open(&self.client, id).await?)))
            }
            Way::Local(_) => Err(McpError::NoServer),
        }
    }

    fn remote_session(&self, session: &str, index: usize) -> Option<Upstream> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.get(session)?.remote.get(&index).cloned()
    }

    fn keep_remote_session(&self, session: &Arc<str>, index: usize, upstream: Upstream) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let entry = sessions.entry(session.clone()).or_insert_with(|| ClientSession {
            used: Instant::now(),
            remote: HashMap::new(),
        });
        entry.remote.insert(index, upstream);
    }

    fn forget_remote_session(&self, session: &str, index: usize) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = sessions.get_mut(session) {
            entry.remote.remove(&index);
        }
    }
}

fn server(spec: &McpServerSpec, runtime: &tokio::runtime::Handle) -> Server {
    let way = match &spec.transport {
        McpTransport::Http { url, headers } => Way::Remote(Remote {
            url: url.clone(),
            headers: headers.clone(),
        }),
        McpTransport::Sse { url, headers } => Way::Legacy(Legacy {
            url: url.clone(),
            headers: headers.clone(),
        }),
        McpTransport::Stdio { command, args, env } => Way::Local(StdioServer::start(
            Program {
                name: spec.name.clone(),
                command: command.clone(),
                args: args.clone(),
                env: env.clone(),
            },
            runtime,
        )),
    };
    Server {
        breaker: spec
            .breaker
            .clone()
            .map(|c| CircuitBreaker::new(c, Instant::now())),
        limiter: spec
            .rate_limit
            .map(|(count, period)| KeyedLimiter::new(Quota::new(count, period, count.max(1)), 1)),
        reached: AtomicBool::new(true),
        spec: spec.clone(),
        way,
    }
}
