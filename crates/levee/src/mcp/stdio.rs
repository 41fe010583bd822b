//! A local MCP server: a child process spoken to in newline-delimited JSON-RPC over its
//! stdin and stdout, started, initialized, and restarted with back-off when it exits.
//!
//! One task (on the MCP thread) owns the process: it writes each call with an id of its own,
//! matches answers back by id, and answers the server's own requests (roots, sampling) with
//! "method not found", since Levee has no client behind it to ask. When the process exits,
//! every call waiting on it fails at once (the server is down, its breaker counts it) and
//! the process is started again after a back-off that doubles up to 10 s and starts over
//! once a run has lasted 30 s. Memory is bounded: the queue of calls, the calls waiting
//! for an answer, and the length of a line.

use std::collections::HashMap;
use std::process::Stdio as Piped;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{mpsc, oneshot};

use super::{client_info, McpError, PROTOCOL_VERSION};

/// Calls queued for the process at most.
const QUEUE: usize = 1024;
/// Calls waiting for an answer at most.
const MAX_PENDING: usize = 4096;
/// The longest line read from the server.
const MAX_LINE: usize = 16 << 20;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A run this long resets the back-off.
const STABLE_RUN: Duration = Duration::from_secs(30);

/// A call for the process: a method and its params, and where its answer goes (`None` for
/// a notification).
struct Call {
    method: String,
    params: Value,
    reply: Option<oneshot::Sender<Result<Value, McpError>>>,
}

/// The handle the rest of Levee holds.
pub struct StdioServer {
    calls: mpsc::Sender<Call>,
    pub up: Arc<AtomicBool>,
    /// A process is being started and initialized: calls wait for it (within their
    /// timeout) instead of failing, as they do while the server is down between starts.
    starting: Arc<AtomicBool>,
    pub starts: Arc<AtomicU64>,
}

/// How to start the program.
#[derive(Clone)]
pub struct Program {
    pub name: Arc<str>,
    pub command: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl StdioServer {
    /// Starts the supervisor on `runtime`; the process starts at once.
    pub fn start(program: Program, runtime: &tokio::runtime::Handle) -> StdioServer {
        let (calls, queue) = mpsc::channel(QUEUE);
        let up = Arc::new(AtomicBool::new(false));
        let starting = Arc::new(AtomicBool::new(true));
        let starts = Arc::new(AtomicU64::new(0));
        let state = State {
            up: up.clone(),
            starting: starting.clone(),
            starts: starts.clone(),
        };
        runtime.spawn(supervise(program, queue, state));
        StdioServer {
            calls,
            up,
            starting,
            starts,
        }
    }

    /// One request to the server, answered within `timeout`.
    pub async fn request(&self, method: &str, params: Value, timeout: Duration) -> Result<Value, McpError> {
        if !self.up.load(Ordering::Relaxed) && !self.starting.load(Ordering::Relaxed) {
            return Err(McpError::Unavailable(
                "the server's process is not running".into(),
            ));
        }
        let (reply, answer) = oneshot::channel();
        let call = Call {
            method: method.to_owned(),
            params,
            reply: Some(reply),
        };
        self.calls
            .try_send(call)
            .map_err(|_| McpError::Unavailable("the server's queue is full".into()))?;
        match tokio::time::timeout(timeout, answer).await {
            Err(_) => Err(McpError::Timeout),
            Ok(Err(_)) => Err(McpError::Unavailable("the server's process exited".into())),
            Ok(Ok(result)) => result,
        }
    }
}

/// The supervisor's view of the process, shared with the handle.
struct State {
    up: Arc<AtomicBool>,
    starting: Arc<AtomicBool>,
    starts: Arc<AtomicU64>,
}

async fn supervise(program: Program, mut queue: mpsc::Receiver<Call>, state: State) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = tokio::time::Instant::now();
        state.starts.fetch_add(1, Ordering::Relaxed);
        state.starting.store(true, Ordering::Relaxed);
        match spawn(&program) {
            Ok(child) => {
                run(&program, child, &mut queue, &state).await;
            }
            Err(error) => tracing::warn!(server = %program.name, %error, "MCP server could not be started"),
        }
        state.up.store(false, Ordering::Relaxed);
        state.starting.store(false, Ordering::Relaxed);
        if queue.is_closed() {
            return;
        }
        // Calls queued while it was down fail now rather than wait for the next process.
        while let Ok(call) = queue.try_recv() {
            if let Some(reply) = call.reply {
                let _ = reply.send(Err(McpError::Unavailable("the server's process exited".into())));
            }
        }
        if started.elapsed() >= STABLE_RUN {
            backoff = FIRST_BACKOFF;
        }
        tracing::warn!(server = %program.name, ?backoff, "MCP server exited; starting it again");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn spawn(program: &Program) -> std::io::Result<Child> {
    Command::new(&program.command)
        .args(&program.args)
        .envs(program.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Piped::piped())
        .stdout(Piped::piped())
        .stderr(Piped::null())
        .kill_on_drop(true)
        .spawn()
}

/// One run of the process: initialize, then serve calls until it exits.
async fn run(program: &Program, mut child: Child, queue: &mut mpsc::Receiver<Call>, state: &State) {
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return;
    };
    let mut lines = Lines::new(stdout);
    if let Err(error) = initialize(&mut stdin, &mut lines).await {
        tracing::warn!(server = %program.name, %error, "MCP server did not initialize");
        return;
    }
    state.up.store(true, Ordering::Relaxed);
    state.starting.store(false, Ordering::Relaxed);
    tracing::info!(server = %program.name, "MCP server started");
    let mut pending: HashMap<u64, oneshot::Sender<Result<Value, McpError>>> = HashMap::new();
    let mut next_id: u64 = 1;
    loop {
        tokio::select! {
            call = queue.recv() => {
                let Some(call) = call else { return };
                pending.retain(|_, reply| !reply.is_closed());
                let mut message = json!({ "jsonrpc": "2.0", "method": call.method, "params": call.params });
                match call.reply {
                    Some(reply) if pending.len() >= MAX_PENDING => {
                        let _ = reply.send(Err(McpError::Unavailable("too many calls waiting".into())));
                        continue;
                    }
                    Some(reply) => {
                        next_id += 1;
                        if let Some(object) = message.as_object_mut() {
                            object.insert("id".into(), Value::from(next_id));
                        }
                        pending.insert(next_id, reply);
                    }
                    None => {}
                }
                if write(&mut stdin, &message).await.is_err() {
                    break;
                }
            }
            line = lines.next() => {
                let Some(line) = line else { break };
                let Ok(message) = serde_json::from_slice::<Value>(&line) else { continue };
                answer(&message, &mut pending, &mut stdin).await;
            }
            _ = child.wait() => break,
        }
    }
    for (_, reply) in pending.drain() {
        let _ = reply.send(Err(McpError::Unavailable("the server's process exited".into())));
    }
}

/// A message from the server: an answer to one of ours, or a request of its own.
async fn answer(
    message: &Value,
    pending: &mut HashMap<u64, oneshot::Sender<Result<Value, McpError>>>,
    stdin: &mut ChildStdin,
) {
    let has_method = message.get("method").is_some();
    match (message.get("id"), has_method) {
        (Some(id), false) => {
            if let Some(reply) = id.as_u64().and_then(|id| pending.remove(&id)) {
                let _ = reply.send(super::result_of(message));
            }
        }
        (Some(id), true) => {
            let refusal = json!({ "jsonrpc": "2.0", "id": id, "error": { "code": -32601, "message": "Levee does not serve this request" } });
            let _ = write(stdin, &refusal).await;
        }
        _ => {} // A notification (progress, logging, list changed).
    }
}

async fn initialize(stdin: &mut ChildStdin, lines: &mut Lines) -> Result<(), String> {
    let request = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": { "protocolVersion": PROTOCOL_VERSION, "capabilities": {}, "clientInfo": client_info() },
    });
    write(stdin, &request).await.map_err(|e| e.to_string())?;
    let answered = async {
        while let Some(line) = lines.next().await {
            let Ok(message) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            if message.get("id") == Some(&Value::from(1)) && message.get("method").is_none() {
                return super::result_of(&message).map_err(|e| e.to_string());
            }
        }
        Err("the process closed its output".into())
    };
    tokio::time::timeout(Duration::from_secs(10), answered)
        .await
        .map_err(|_| "no answer to initialize within 10s".to_string())??;
    let initialized = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
    write(stdin, &initialized).await.map_err(|e| e.to_string())
}

async fn write(stdin: &mut ChildStdin, message: &Value) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(message).unwrap_or_default();
    line.push(b'\n');
    stdin.write_all(&line).await?;
    stdin.flush().await
}

/// Lines of the server's output, each at most [`MAX_LINE`] bytes (a longer one is skipped).
struct Lines {
    reader: BufReader<ChildStdout>,
    line: Vec<u8>,
    skipping: bool,
}

impl Lines {
    fn new(stdout: ChildStdout) -> Lines {
        Lines {
            reader: BufReader::new(stdout),
            line: Vec::new(),
            skipping: false,
        }
    }

    /// The next complete line (without its end); `None` at the end of the output.
    async fn next(&mut self) -> Option<Vec<u8>> {
        loop {
            let buffer = self.reader.fill_buf().await.ok()?;
            if buffer.is_empty() {
                return None;
            }
            let (taken, complete) = match buffer.iter().position(|b| *b == b'\n') {
                Some(end) => (end + 1, true),
                None => (buffer.len(), false),
            };
            if !self.skipping {
                let piece = buffer.get(..taken).unwrap_or_default();
                self.line
                    .extend_from_slice(piece.strip_suffix(b"\n").unwrap_or(piece));
                if self.line.len() > MAX_LINE {
                    self.line.clear();
                    self.skipping = true;
                }
            }
            self.reader.consume(taken);
            if complete {
                let skipped = std::mem::replace(&mut self.skipping, false);
                let line = std::mem::take(&mut self.line);
                if !skipped && !line.is_empty() {
                    return Some(line);
                }
            }
        }
    }
}
